"""``photoclust hash``: turn image files into 256-bit perceptual hashes (Meta's PDQ).

PDQ (https://github.com/facebook/ThreatExchange/tree/main/pdq) is the standard 256-bit perceptual
hash for photo matching; two hashes of the same picture after resizing, re-encoding or mild edits
differ in few bits, and Meta's customary match threshold is a Hamming distance of 31 or less.
The Python bindings come from PyPI ``pdqhash``, images are decoded with Pillow. Both are imported
only when the command runs, so the rest of the CLI works without them.

Output: one ``id,hex`` line per image (64 lowercase hex digits, PDQ's canonical hex order, the
format every other photoclust command reads), to stdout or ``--output``, or published straight to
the input topic with ``--to-kafka``. The id of an image is its path as found (the argument, joined
with the path below it when a folder is searched), percent-escaped where the ``id,hex`` format
needs it: ``%``, ``,``, line breaks and tabs, a leading ``#`` and leading/trailing spaces.

Folders are searched recursively in sorted order; hidden files and folders (names starting with
``.``) inside them are skipped, explicitly named files never are. Every file found is tried:
files that are missing, unreadable, or not images Pillow can decode are reported on stderr by
name, skipped, and make the command exit 1 once everything else is done.

The image is hashed as stored: converted to RGB (the first frame of animations, alpha dropped),
no EXIF rotation, no resizing, which is what Meta's reference hasher does. PDQ also returns a
quality score (0-100); hashes with quality below 50 are counted in the summary as low quality
(flat or nearly blank images, whose hashes match each other too easily).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import click

from .cli import CommandFailed, InputError, quiet_option

LOW_QUALITY = 50  # PDQ's own threshold: below it a hash is not reliable for matching
HASH_KINDS = ("pdq",)


def _need(module: str, package: str) -> Any:
    """Import ``module`` or fail with exit 1 naming the PyPI ``package`` to install."""
    from importlib import import_module

    try:
        return import_module(module)
    except ImportError as e:
        raise CommandFailed(
            f"'photoclust hash' needs the Python package {package!r}, which is not importable ({e}); "
            f"install it with: pip install {package}"
        ) from None


def escape_id(text: str) -> str:
    """A path as an id that survives the ``id,hex`` line format unchanged (see the module doc)."""
    out = text.replace("%", "%25").replace(",", "%2C").replace("\n", "%0A").replace("\r", "%0D").replace("\t", "%09")
    if out.startswith("#"):
        out = "%23" + out[1:]
    stripped = out.lstrip(" ")
    out = "%20" * (len(out) - len(stripped)) + stripped
    stripped = out.rstrip(" ")
    return stripped + "%20" * (len(out) - len(stripped))


def iter_files(paths: tuple[str, ...]) -> Iterator[str]:
    """Each path given, or every non-hidden file below it if it is a folder (sorted, recursive).

    Paths that do not exist are yielded as they are, so that hashing reports them as failures.
    """
    for path in paths:
        if not os.path.isdir(path):
            yield path
            continue
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if not name.startswith("."):
                    yield os.path.join(root, name)


class PdqHasher:
    """PDQ hash of one image file: ``(hex, quality)``; raises ``ValueError`` with the reason."""

    def __init__(self) -> None:
        self.np = _need("numpy", "numpy")
        self.pdqhash = _need("pdqhash", "pdqhash")
        self.Image = _need("PIL.Image", "pillow")

    def __call__(self, path: str) -> tuple[str, int]:
        np, Image = self.np, self.Image
        if not os.path.exists(path):
            raise ValueError("no such file or folder")
        if not os.path.isfile(path):
            raise ValueError("not a regular file")
        try:
            with Image.open(path) as image:
                image.seek(0)
                rgb = image.convert("RGB")
                pixels = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
        except Image.DecompressionBombError as e:
            raise ValueError(f"image too large: {e}") from None
        except Image.UnidentifiedImageError:
            raise ValueError("not an image file Pillow can read") from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            # Truncated or corrupt data, permission denied, I/O errors.
            raise ValueError(getattr(e, "strerror", None) or str(e) or type(e).__name__) from None
        if pixels.ndim != 3 or pixels.shape[0] == 0 or pixels.shape[1] == 0:
            raise ValueError(f"image has no pixels (shape {pixels.shape})")
        bits, quality = self.pdqhash.compute(pixels)
        # pdqhash returns bit 255 first, which is the order of PDQ's canonical hex string.
        return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes().hex(), int(quality)


def _kafka_options(func: Any) -> Any:
    """The ``produce`` command's Settings options (``--bootstrap-servers``, ``--input-topic``, ...)."""
    from .kafka_cli import _settings_options

    return _settings_options(func)


@click.command("hash")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--kind", type=click.Choice(HASH_KINDS), default="pdq", show_default=True,
              help="Hash function: pdq = Meta's PDQ, 256 bits.")
@click.option("--output", "-o", "output_path", type=click.Path(dir_okay=False, allow_dash=True), default="-",
              show_default=True, help="Where to write the id,hex lines ('-' = stdout).")
@click.option("--header/--no-header", default=False, show_default=True, help="Start the output with an 'id,hex' line.")
@click.option("--to-kafka", is_flag=True,
              help="Publish the hashes to the input topic instead of writing id,hex lines (Kafka settings "
              "as for 'photoclust produce').")
@click.option("--batch-size", type=click.IntRange(min=0), default=0, show_default=True,
              help="With --to-kafka: photos per batch event; 0 sends one event per photo.")
@quiet_option
@_kafka_options
def hash_command(paths: tuple[str, ...], kind: str, output_path: str, header: bool, to_kafka: bool,
                 batch_size: int, quiet: bool, **params: Any) -> None:
    """Compute the PDQ perceptual hash of image files (PATHS: files or folders, searched recursively).

    \b
    Writes one "id,hex" line per image: the file's path and its 64-hex-digit (256-bit) hash, e.g.
      photos/cat.jpg,f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22
    Files that are missing, unreadable or not images are reported on stderr and skipped; the exit
    status is then 1. Needs the Python packages pdqhash and pillow.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    hasher = PdqHasher()  # fails with exit 1 before any work if pdqhash or Pillow is missing
    settings = None
    if to_kafka:
        from .kafka_cli import _settings

        settings = _settings(params)
        if settings.n_bits != 256:
            raise InputError(f"PDQ hashes have 256 bits but the worker is configured for n_bits={settings.n_bits}")
        if output_path != "-" or header:
            raise InputError("--to-kafka publishes the hashes; do not combine it with --output or --header")

    files = list(iter_files(paths))
    if not files:
        raise InputError(f"no files found in {', '.join(paths)}")

    console = Console(stderr=True)
    progress = Progress(TextColumn("hashing"), BarColumn(bar_width=30), MofNCompleteColumn(),
                        TextColumn("{task.fields[failed]} failed"), TimeElapsedColumn(),
                        console=console, disable=quiet, transient=False)
    ids: list[str] = []
    hashes: list[str] = []
    failed: list[str] = []
    low_quality = 0
    out = None
    if not to_kafka:
        out = click.open_file(output_path, "w", encoding="utf-8", lazy=False)
    started = time.perf_counter()
    try:
        if out is not None and header:
            out.write("id,hex\n")
        with progress:
            task = progress.add_task("hash", total=len(files), failed=0)
            for path in files:
                try:
                    hex_, quality = hasher(path)
                except ValueError as e:
                    failed.append(path)
                    progress.console.print(f"photoclust hash: skipped {path}: {e}", highlight=False, markup=False)
                else:
                    low_quality += quality < LOW_QUALITY
                    if out is not None:
                        out.write(f"{escape_id(path)},{hex_}\n")
                    else:
                        ids.append(escape_id(path))
                        hashes.append(hex_)
                progress.update(task, advance=1, failed=len(failed))
    finally:
        if out is not None and output_path != "-":
            out.close()
        elif out is not None:
            out.flush()
    seconds = time.perf_counter() - started
    n_ok = len(files) - len(failed)

    if settings is not None and ids:
        from .kafka_io import ensure_topics, produce_photos

        ensure_topics(settings)
        tracker = produce_photos(settings, ids, [bytes.fromhex(h) for h in hashes], batch_size=batch_size)
        if not quiet:
            console.print(f"delivered {tracker.delivered} events to {settings.input_topic}, {tracker.failed} failed",
                          highlight=False)
        if tracker.failed:
            raise CommandFailed(f"{tracker.failed} events were not delivered: {tracker.first_error}")

    if not quiet:
        console.print(f"hashed {n_ok} of {len(files)} files in {seconds:.2f} s ({low_quality} with PDQ quality "
                      f"< {LOW_QUALITY}), {len(failed)} failed", highlight=False)
    if failed:
        shown = ", ".join(failed[:10]) + (f" and {len(failed) - 10} more" if len(failed) > 10 else "")
        raise CommandFailed(f"{len(failed)} of {len(files)} files could not be hashed: {shown}")
