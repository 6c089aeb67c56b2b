"""The ``photoclust`` command line: one click group, thin commands over :mod:`core`.

Layout (so that more commands can be added without touching the rest):

* **Shared options** are defined once below as decorators (``seed_option``, ``bits_option``,
  ``json_option``, ``quiet_option``, ...), each with its ``PHOTOCLUST_*`` environment variable.
  A new command reuses them by stacking the decorators.
* **Errors**: raise :class:`InputError` (exit 2) for anything the user got wrong and
  :class:`CommandFailed` (exit 1) for runtime failures. :class:`streams.files.InputFileError`
  and ``ValueError`` from core parameter checks (inside :func:`user_errors`) become exit 2;
  any other exception is reported in one line with exit 1 (``--debug`` / ``PHOTOCLUST_DEBUG=1``
  re-raises it with its traceback).
* **Adding commands**: decorate with ``@main.command()`` here, or write the command in its own
  module and add ``"name": "module:attribute"`` to :data:`LAZY_COMMANDS`, which imports the module
  only when the command is used (or listed by ``--help``). Use the lazy route for commands whose
  imports are heavy or optional (Kafka clients), so offline commands never import them.
* Heavy imports (core, numba, rich) happen inside the command functions, keeping ``--help`` fast.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import import_module, metadata
from pathlib import Path
from typing import Any

import click

from streams.files import InputFileError

ENV_PREFIX = "PHOTOCLUST_"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

# Commands implemented in other modules, imported on first use: {"name": "module:attribute"}.
# Example: "broker": "streams.kafka_cli:broker".
LAZY_COMMANDS: dict[str, str] = {
    name: f"streams.kafka_cli:{name}" for name in ("broker", "worker", "produce", "tail", "lag", "demo")
}
LAZY_COMMANDS["hash"] = "streams.hash_cli:hash_command"


# -- errors -------------------------------------------------------------------------------------


class InputError(click.ClickException):
    """A user mistake in an input file or a parameter value (exit status 2)."""

    exit_code = EXIT_USAGE


class CommandFailed(click.ClickException):
    """A runtime failure: cannot write output, internal error, ... (exit status 1)."""

    exit_code = EXIT_FAILURE


@contextmanager
def user_errors() -> Iterator[None]:
    """Report bad input files and ``ValueError`` from core parameter checks as user errors (exit 2).

    Wrap only calls whose ``ValueError`` means "the user gave a bad value", never a whole command.
    """
    try:
        yield
    except InputFileError as e:
        raise InputError(str(e)) from None
    except ValueError as e:
        raise InputError(str(e)) from None


def _version() -> str:
    try:
        return metadata.version("photoclust")
    except metadata.PackageNotFoundError:  # running from a source checkout
        try:
            import tomllib

            pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
            return str(tomllib.loads(pyproject.read_text())["project"]["version"])
        except (OSError, KeyError, ValueError):
            return "unknown"


class PhotoclustGroup(click.Group):
    """A group that loads :data:`LAZY_COMMANDS` on demand and never shows a traceback."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(LAZY_COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None or cmd_name not in LAZY_COMMANDS:
            return command
        module_name, _, attribute = LAZY_COMMANDS[cmd_name].partition(":")
        try:
            command = getattr(import_module(module_name), attribute)
        except ImportError as e:
            return _unavailable_command(cmd_name, f"{type(e).__name__}: {e}")
        self.add_command(command, cmd_name)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except InputFileError as e:
            raise InputError(str(e)) from None
        except Exception as e:
            if ctx.params.get("debug"):
                raise
            if isinstance(e, OSError):
                raise CommandFailed(str(e)) from None
            raise CommandFailed(
                f"unexpected {type(e).__name__}: {e} (run with --debug or {ENV_PREFIX}DEBUG=1 for a traceback)"
            ) from None


def _unavailable_command(name: str, reason: str) -> click.Command:
    def fail() -> None:
        raise CommandFailed(f"command {name!r} is unavailable: {reason}")

    return click.Command(name, callback=fail, help=f"(unavailable: {reason})", short_help="(unavailable)")


# -- shared options (defined once; stack them on any command) -------------------------------------


def _check_bits(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    from core.codes import SUPPORTED_BITS

    if value is not None and value not in SUPPORTED_BITS:
        raise click.BadParameter(f"{value} is not a supported code width; choose one of {SUPPORTED_BITS}")
    return value


bits_option = click.option(
    "--bits",
    "n_bits",
    type=int,
    default=None,
    callback=_check_bits,
    envvar=f"{ENV_PREFIX}N_BITS",  # the same variable streams.config reads
    show_envvar=True,
    help="Code width in bits: 64, 128, 256 or 512. New codes default to 256; input codes default "
    "to the file's width (given, it must match).",
)
seed_option = click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=None,
    envvar=f"{ENV_PREFIX}SEED",
    show_envvar=True,
    help="Random seed (non-negative); the same seed reproduces the same result. Default: fresh randomness.",
)
json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    envvar=f"{ENV_PREFIX}JSON",
    show_envvar=True,
    help="Print the summary as one JSON object on stdout (the table then goes to stderr).",
)
quiet_option = click.option(
    "-q",
    "--quiet",
    is_flag=True,
    envvar=f"{ENV_PREFIX}QUIET",
    show_envvar=True,
    help="No progress bar and no summary table (JSON output is unaffected).",
)
debug_option = click.option(
    "--debug",
    is_flag=True,
    envvar=f"{ENV_PREFIX}DEBUG",
    show_envvar=True,
    help="Show Python tracebacks for unexpected errors.",
)


def input_file_argument(name: str, metavar: str) -> Any:
    """A positional input file that must exist (click reports a missing file with exit 2)."""
    return click.argument(name, metavar=metavar, type=click.Path(exists=True, dir_okay=False, readable=True))


# -- output helpers -----------------------------------------------------------------------------


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def _stdout_console() -> Any:
    from rich.console import Console

    return Console()


def _prepare_prefix(prefix: str) -> str:
    """Make sure the directory of an output prefix exists."""
    parent = Path(prefix).parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CommandFailed(f"cannot create output directory {parent}: {e.strerror or e}") from None
    return prefix


def _save_npy(path: str, array: Any) -> None:
    """``numpy.save`` to exactly ``path`` (numpy would otherwise append ``.npy``)."""
    import numpy as np

    with open(path, "wb") as f:
        np.save(f, array)


def emit_summary(title: str, summary: dict[str, Any], as_json: bool, quiet: bool) -> None:
    """A two-column rich table (stdout; stderr with ``--json``) and/or the JSON line (stdout)."""
    if not quiet:
        from rich.table import Table

        table = Table(title=title, show_header=False, title_justify="left")
        table.add_column("field", style="bold")
        table.add_column("value", justify="right")
        for key, value in summary.items():
            if isinstance(value, dict):
                continue
            if isinstance(value, float):
                value = f"{value:.4f}" if abs(value) < 1e4 else f"{value:,.1f}"
            elif isinstance(value, int) and not isinstance(value, bool):
                value = f"{value:,}"
            table.add_row(key.replace("_", " "), str(value))
        for key, path in summary.get("outputs", {}).items():
            table.add_row(f"output {key}", str(path))
        (_stderr_console() if as_json else _stdout_console()).print(table)
    if as_json:
        click.echo(json.dumps(summary, sort_keys=False))


# -- the group ----------------------------------------------------------------------------------


@click.group(
    name="photoclust",
    cls=PhotoclustGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(_version(), "-V", "--version", prog_name="photoclust")
@debug_option
def main(debug: bool) -> None:
    """Cluster 256-bit binary photo hashes with Bk-means (Hamming k-means).

    Codes are read from .npy files (uint8 [N, D/8] bytes or uint64 [N, D/64]) or from text
    files of "id,hash" lines with D/4 hex digits per hash.

    \b
    Exit status:
      0  success
      1  runtime failure (cannot write output, internal error)
      2  usage or input error (bad option, missing or malformed input file)
    """


# -- synth --------------------------------------------------------------------------------------


@main.command()
@click.argument("out_prefix", type=click.Path(dir_okay=False))
@click.option("--samples", "-n", type=click.IntRange(min=1), default=10_000, show_default=True, help="Number of codes.")
@click.option("--clusters", "-k", type=click.IntRange(min=1), default=100, show_default=True, help="Number of planted clusters.")
@bits_option
@click.option(
    "--flip-prob",
    type=click.FloatRange(0.0, 1.0),
    default=0.1,
    show_default=True,
    help="Probability that each bit of a sample differs from its cluster's center.",
)
@seed_option
@click.option("--csv/--no-csv", "write_csv", default=True, show_default=True, help="Also write OUT_PREFIX.csv (id,hash lines).")
@json_option
@quiet_option
def synth(
    out_prefix: str,
    samples: int,
    clusters: int,
    n_bits: int | None,
    flip_prob: float,
    seed: int | None,
    write_csv: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Write synthetic codes with planted clusters (and the truth) to OUT_PREFIX.*

    \b
    OUT_PREFIX.codes.npy    uint8 [N, D/8] codes
    OUT_PREFIX.truth.npy    int64 [N] planted cluster of each code
    OUT_PREFIX.centers.npy  uint8 [K, D/8] planted centers
    OUT_PREFIX.csv          id,hash lines (ids p000000000, p000000001, ...)
    """
    import numpy as np

    from core.codes import DEFAULT_BITS, to_uint8
    from core.synth import planted_codes
    from streams.files import make_ids, write_hex_csv

    n_bits = DEFAULT_BITS if n_bits is None else n_bits
    if clusters > samples:
        raise click.BadParameter(f"{clusters} clusters need at least as many samples, got --samples {samples}", param_hint="'--clusters'")
    started = time.perf_counter()
    with user_errors():
        codes, truth, centers = planted_codes(samples, clusters, n_bits=n_bits, flip_prob=flip_prob, random_state=seed)
    _prepare_prefix(out_prefix)
    outputs = {
        "codes": f"{out_prefix}.codes.npy",
        "truth": f"{out_prefix}.truth.npy",
        "centers": f"{out_prefix}.centers.npy",
    }
    _save_npy(outputs["codes"], to_uint8(codes))
    _save_npy(outputs["truth"], truth.astype(np.int64, copy=False))
    _save_npy(outputs["centers"], to_uint8(centers))
    if write_csv:
        outputs["csv"] = f"{out_prefix}.csv"
        write_hex_csv(outputs["csv"], make_ids(samples), codes)
    summary = {
        "n_samples": samples,
        "n_clusters": clusters,
        "n_bits": n_bits,
        "flip_prob": flip_prob,
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 4),
        "outputs": outputs,
    }
    emit_summary("photoclust synth", summary, as_json, quiet)


# -- cluster ------------------------------------------------------------------------------------


@main.command()
@input_file_argument("input_path", "INPUT")
@click.option("-k", "--clusters", "n_clusters", type=click.IntRange(min=1), required=True, help="Number of clusters.")
@bits_option
@click.option("--max-iter", type=click.IntRange(min=1), default=20, show_default=True, help="Maximum Bk-means iterations.")
@click.option(
    "--tol",
    type=click.FloatRange(0.0, 1.0),
    default=1e-4,
    show_default=True,
    help="Stop when at most this fraction of codes changed cluster in an iteration.",
)
@click.option(
    "--init",
    type=click.Choice(["random", "linked", "k-means++"]),
    default="random",
    show_default=True,
    help="Initial centers: k random codes; one in each of the k largest groups of near-duplicate "
    "codes (fast and pure for fine clusterings, k near n/10); or k-means++ seeding (k passes; for "
    "modest k).",
)
@click.option(
    "--assign",
    type=click.Choice(["auto", "mih", "brute"]),
    default="auto",
    show_default=True,
    help="Nearest-center search; all give identical labels, they differ in speed.",
)
@seed_option
@click.option(
    "--out",
    "-o",
    "out_prefix",
    type=click.Path(dir_okay=False),
    default=None,
    help="Output prefix. Default: INPUT without its suffix.",
)
@click.option(
    "--truth",
    "truth_path",
    type=click.Path(exists=True, dir_okay=False, readable=True),
    default=None,
    help="int .npy of true labels (one per code): adds purity and NMI to the summary.",
)
@json_option
@quiet_option
def cluster(
    input_path: str,
    n_clusters: int,
    n_bits: int | None,
    max_iter: int,
    tol: float,
    init: str,
    assign: str,
    seed: int | None,
    out_prefix: str | None,
    truth_path: str | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Cluster the codes in INPUT with Bk-means into K clusters.

    INPUT is a .npy of uint8 [N, D/8] or uint64 [N, D/64] codes, or a text file of "id,hash"
    lines (optional header "id,hash"; blank lines and lines starting with # are skipped).

    \b
    Writes PREFIX.assignments.csv  id,cluster,distance
           PREFIX.labels.npy       int64 [N]
           PREFIX.centers.npy      uint8 [K, D/8]
           PREFIX.centers.csv      cluster,hash,size
    """
    import numpy as np

    from core.bkmeans import BKMeans
    from core.codes import to_hex, to_uint8
    from core.hamming import paired_distances
    from streams.files import load_npy_labels, read_codes, write_lines

    console = _stderr_console()
    started = time.perf_counter()
    with user_errors():
        data = read_codes(input_path, n_bits)
        truth = load_npy_labels(truth_path, len(data), "labels") if truth_path else None
    read_seconds = time.perf_counter() - started
    n = len(data)
    if n_clusters > n:
        raise click.BadParameter(f"{n_clusters} clusters requested but {input_path} has only {n} codes", param_hint="'-k'")

    fit_seconds, model = _fit_with_progress(
        console,
        quiet,
        BKMeans,
        data.codes,
        dict(n_clusters=n_clusters, max_iter=max_iter, tol=tol, init=init, assign=assign, random_state=seed),
        label=f"Bk-means k={n_clusters:,} on {n:,} × {data.n_bits}-bit codes",
    )
    labels = np.asarray(model.labels_, dtype=np.int64)
    centers = model.cluster_centers_
    distances = paired_distances(data.codes, centers[labels])
    sizes = np.bincount(labels, minlength=n_clusters)

    out_prefix = _prepare_prefix(out_prefix or str(Path(input_path).with_suffix("")))
    outputs = {
        "assignments": f"{out_prefix}.assignments.csv",
        "labels": f"{out_prefix}.labels.npy",
        "centers": f"{out_prefix}.centers.npy",
        "centers_csv": f"{out_prefix}.centers.csv",
    }
    write_lines(
        outputs["assignments"],
        "id,cluster,distance",
        [f"{i},{c},{d}" for i, c, d in zip(data.id_list(), labels.tolist(), distances.tolist())],
    )
    _save_npy(outputs["labels"], labels)
    _save_npy(outputs["centers"], to_uint8(centers))
    write_lines(
        outputs["centers_csv"],
        "cluster,hash,size",
        [f"{c},{h},{s}" for c, (h, s) in enumerate(zip(to_hex(centers), sizes.tolist()))],
    )

    history = getattr(model, "history_", [])
    summary: dict[str, Any] = {
        "input": input_path,
        "n_samples": n,
        "n_bits": data.n_bits,
        "n_clusters": n_clusters,
        "iterations": int(model.n_iter_),
        "converged": bool(history) and history[-1].n_changed <= tol * n and int(model.n_iter_) > 1,
        "inertia": int(model.inertia_),
        "mean_distance": float(distances.mean()),
        "empty_clusters": int(np.count_nonzero(sizes == 0)),
        "seconds": round(fit_seconds, 4),
        "read_seconds": round(read_seconds, 4),
    }
    if truth is not None:
        from core.purity import normalized_mutual_info, purity

        summary["purity"] = purity(labels, truth)
        summary["nmi"] = normalized_mutual_info(labels, truth)
    summary["outputs"] = outputs
    emit_summary("photoclust cluster", summary, as_json, quiet)


def _fit_with_progress(console: Any, quiet: bool, estimator: Any, codes: Any, params: dict, label: str) -> tuple[float, Any]:
    """Fit a BKMeans-like estimator with a rich progress bar fed by its ``callback``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    max_iter = params["max_iter"]
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
    )
    if not quiet:
        console.print(label, highlight=False)
    task = progress.add_task("Bk-means", total=max_iter, status="initializing")

    def on_iteration(info: Any) -> None:
        status = f"changed {info.changed_fraction:.3%}, inertia {info.inertia:,}"
        progress.update(task, completed=info.iteration, status=status)
        if not quiet:
            progress.console.print(f"iteration {info.iteration:3d}: {status}  ({info.seconds:.3f} s)", highlight=False)

    with user_errors():
        model = estimator(callback=on_iteration, **params)
    started = time.perf_counter()
    with progress:
        model.fit(codes)  # click validated every parameter: a ValueError here is a bug (exit 1)
        progress.update(task, total=model.n_iter_, completed=model.n_iter_)
    return time.perf_counter() - started, model


# -- encode -------------------------------------------------------------------------------------


@main.command()
@input_file_argument("features_path", "FEATURES")
@bits_option
@click.option("--iters", type=click.IntRange(min=0), default=50, show_default=True, help="ITQ rotation iterations (0: random rotation).")
@seed_option
@click.option(
    "--output",
    "-o",
    "output_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Codes .npy (uint8 [N, D/8]). Default: FEATURES without suffix + .codes.npy.",
)
@click.option(
    "--model",
    "model_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also save the fitted ITQ model (.npz of ITQ.get_state(): mean, components, rotation, ...).",
)
@json_option
@quiet_option
def encode(
    features_path: str,
    n_bits: int | None,
    iters: int,
    seed: int | None,
    output_path: str | None,
    model_path: str | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Hash float FEATURES (.npy [N, F], F >= bits) to binary codes with ITQ."""
    import numpy as np

    from core.codes import DEFAULT_BITS, to_uint8
    from core.itq import ITQ
    from streams.files import load_npy_features

    n_bits = DEFAULT_BITS if n_bits is None else n_bits
    with user_errors():
        features = load_npy_features(features_path)
    n, n_features = features.shape
    if n_features < n_bits:
        raise InputError(
            f"{features_path}: has {n_features} feature columns but --bits {n_bits}: ITQ needs at least as many "
            f"features as bits; use --bits <= {n_features}"
        )
    if n < n_bits:
        raise InputError(f"{features_path}: has {n} rows but --bits {n_bits}: ITQ needs at least {n_bits} samples")
    started = time.perf_counter()
    with user_errors():
        model = ITQ(n_bits=n_bits, n_iter=iters, random_state=seed)
        status = None if quiet else _stderr_console().status(f"ITQ: {n:,} × {n_features} features → {n_bits} bits")
        if status is not None:
            with status:
                codes = model.fit_transform(features)
        else:
            codes = model.fit_transform(features)
    seconds = time.perf_counter() - started

    output_path = output_path or f"{Path(features_path).with_suffix('')}.codes.npy"
    _prepare_prefix(output_path)
    _save_npy(output_path, to_uint8(codes))
    outputs = {"codes": output_path}
    if model_path:
        _prepare_prefix(model_path)
        with open(model_path, "wb") as f:
            np.savez(f, **model.get_state())
        outputs["model"] = model_path
    losses = list(getattr(model, "loss_history_", []))
    summary: dict[str, Any] = {
        "input": features_path,
        "n_samples": int(n),
        "n_features": int(n_features),
        "n_bits": n_bits,
        "iterations": iters,
        "final_loss": float(losses[-1]) if losses else None,
        "seconds": round(seconds, 4),
        "outputs": outputs,
    }
    emit_summary("photoclust encode", summary, as_json, quiet)


if __name__ == "__main__":  # pragma: no cover
    main(prog_name="photoclust")
