"""Kafka-facing commands: broker, worker, produce, tail, lag and the end-to-end demo."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import click

from .cli import CommandFailed, InputError, json_option, main, user_errors
from .config import Settings

BROKER_SCRIPT = Path(__file__).resolve().parents[1] / "deploy" / "kafka" / "broker.sh"


# -- settings options: one click option per Settings field, generated once ----------------------------


def _settings_options(func: Any = None, *, exclude: tuple[str, ...] = ()) -> Any:
    """Add ``--<field>`` for every Settings field but ``exclude``; unset flags fall back to env, then
    defaults. A command whose own option has a field's name excludes that field."""
    if func is None:
        return lambda f: _settings_options(f, exclude=exclude)
    for f in reversed(dataclasses.fields(Settings)):
        if f.name in exclude:
            continue
        kind = {"int": int, "float": float}.get(str(f.type), str)
        choice = None
        if f.name == "processing_guarantee":
            choice = click.Choice(["at_least_once", "exactly_once"])
        func = click.option(
            "--" + f.name.replace("_", "-"), f.name, type=choice or kind, default=None,
            help=f"[env PHOTOCLUST_{f.name.upper()}; default {f.default!r}]",
        )(func)
    return func


def _settings(params: dict[str, Any]) -> Settings:
    names = {f.name for f in dataclasses.fields(Settings)}
    with user_errors():
        return Settings.load({k: v for k, v in params.items() if k in names})


# -- broker -------------------------------------------------------------------------------------


def _broker(*args: str, check: bool = True, capture: bool = False) -> subprocess.CompletedProcess:
    if not BROKER_SCRIPT.exists():
        raise CommandFailed(f"{BROKER_SCRIPT} not found: the broker commands need a source checkout")
    result = subprocess.run(["bash", str(BROKER_SCRIPT), *args], text=True,
                            stdout=subprocess.PIPE if capture else None)
    if check and result.returncode != 0:
        raise CommandFailed(f"broker.sh {' '.join(args)} failed with exit code {result.returncode}")
    return result


@main.group()
def broker() -> None:
    """The local single-node Apache Kafka broker (KRaft) from deploy/kafka."""


@broker.command("start")
@click.option("--port", type=int, default=None, help="Listener port (default 19092).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Log and metadata directory.")
@click.option("--fresh", is_flag=True, help="Delete the data directory first.")
def broker_start(port: int | None, data_dir: str | None, fresh: bool) -> None:
    """Fetch the Kafka jars (once), format storage, start, wait until ready; prints host:port."""
    args = ["start"] + (["--port", str(port)] if port else []) + (["--data-dir", data_dir] if data_dir else [])
    _broker(*args, *(["--fresh"] if fresh else []))


@broker.command("stop")
@click.option("--port", type=int, default=None)
@click.option("--data-dir", type=click.Path(file_okay=False), default=None)
def broker_stop(port: int | None, data_dir: str | None) -> None:
    """Stop the local broker (SIGTERM, then SIGKILL after 30 s)."""
    _broker("stop", *(["--port", str(port)] if port else []), *(["--data-dir", data_dir] if data_dir else []))


@broker.command("status")
@click.option("--port", type=int, default=None)
def broker_status(port: int | None) -> None:
    """Exit 0 and print the address if the local broker runs."""
    result = _broker("status", *(["--port", str(port)] if port else []), check=False)
    sys.exit(result.returncode)


# -- worker -------------------------------------------------------------------------------------


@main.command()
@_settings_options
def worker(**params: Any) -> None:
    """Run the stream processor until SIGINT/SIGTERM."""
    settings = _settings(params)
    from .app import FixedSettingChanged, run_worker

    sys.argv = [sys.argv[0]]  # Faust's worker parses argv itself
    try:
        run_worker(settings)
    except FixedSettingChanged as e:  # refused before Faust starts: exit 2, never a crash loop
        raise InputError(str(e)) from None


# -- produce / tail / lag ------------------------------------------------------------------------


@main.command()
@click.argument("input_path", required=False, type=click.Path(dir_okay=False))
@click.option("--synthetic", type=click.IntRange(min=1), default=None, help="Publish N planted photos instead.")
@click.option("--clusters", type=click.IntRange(min=1), default=None, help="Planted clusters (default N/200).")
@click.option("--flip-prob", type=click.FloatRange(0, 1), default=0.1, show_default=True)
@click.option("--truth-out", type=click.Path(dir_okay=False), default=None,
              help="Where to save the planted truth (.npy; default <prefix>.truth.npy next to nothing: required for --synthetic scoring).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the planted photos.")
@click.option("--batch-size", type=click.IntRange(min=0), default=0, show_default=True,
              help="Photos per batch event; 0 sends one event per photo.")
@click.option("--rate", type=click.FloatRange(min=0), default=0.0, help="Photos per second (0: unlimited).")
@_settings_options(exclude=("seed",))  # a producer does not cluster: --seed is the planted photos'
def produce(input_path: str | None, synthetic: int | None, clusters: int | None, flip_prob: float,
            truth_out: str | None, seed: int, batch_size: int, rate: float, **params: Any) -> None:
    """Publish photo hashes from INPUT (id,hex lines or .npy) or --synthetic N to the input topic."""
    from rich.progress import Progress

    from core.codes import to_bytes

    settings = _settings(params)
    if (input_path is None) == (synthetic is None):
        raise InputError("give either INPUT or --synthetic N")
    if synthetic is not None:
        ids, codes, truth = _planted(synthetic, clusters, settings.n_bits, flip_prob, seed)
        if truth_out:
            import numpy as np

            np.save(truth_out, truth)
    else:
        from .files import read_codes

        loaded = read_codes(input_path, settings.n_bits)
        ids, codes = loaded.ids, loaded.codes
    from .kafka_io import ensure_topics, produce_photos

    ensure_topics(settings)
    with Progress(transient=False) as progress:
        task = progress.add_task("producing", total=len(ids))
        tracker = produce_photos(settings, ids, to_bytes(codes), batch_size=batch_size, rate=rate,
                                 on_progress=lambda n: progress.advance(task, n))
    click.echo(f"delivered {tracker.delivered} events to {settings.input_topic}, {tracker.failed} failed", err=True)
    if tracker.failed:
        raise CommandFailed(f"{tracker.failed} events were not delivered: {tracker.first_error}")


def _planted(n: int, clusters: int | None, n_bits: int, flip_prob: float, seed: int) -> tuple[list[str], Any, Any]:
    from core.synth import planted_codes

    codes, truth, _ = planted_codes(n, clusters or max(1, n // 200), n_bits=n_bits, flip_prob=flip_prob,
                                    random_state=seed)
    return [f"p{i:09d}" for i in range(n)], codes, truth


@main.command()
@click.option("--from-beginning/--latest", default=True, show_default=True)
@click.option("--max", "max_events", type=click.IntRange(min=1), default=None, help="Stop after N events.")
@click.option("--idle-timeout", type=float, default=None, help="Stop after S seconds without events.")
@_settings_options
def tail(from_beginning: bool, max_events: int | None, idle_timeout: float | None, **params: Any) -> None:
    """Print assignment events (one JSON object per line) as they come."""
    from .kafka_io import iter_assignments

    from confluent_kafka import KafkaException

    settings = _settings(params)
    try:
        for count, event in enumerate(iter_assignments(settings, from_beginning=from_beginning,
                                                       idle_timeout=idle_timeout), start=1):
            click.echo(json.dumps(event))
            if max_events is not None and count >= max_events:
                break
    except KafkaException as e:
        raise CommandFailed(f"reading {settings.output_topic} from {settings.bootstrap_servers} failed: "
                            f"{e.args[0].str() if e.args else e}") from None


@main.command()
@click.option("--group", default=None, help="Consumer group (default: the worker's app id).")
@click.option("--topic", "topics", multiple=True, help="Topics (default: the input topic).")
@json_option
@_settings_options
def lag(group: str | None, topics: tuple[str, ...], as_json: bool, **params: Any) -> None:
    """Consumer-group lag per partition: committed offset, log-end offset, lag."""
    from .kafka_io import consumer_lag

    settings = _settings(params)
    with user_errors():
        rows = consumer_lag(settings, group, topics or None)
    if as_json:
        click.echo(json.dumps({"group": group or settings.app_id, "total_lag": sum(r.lag for r in rows),
                               "partitions": [r.as_dict() for r in rows]}))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG", title=f"group {group or settings.app_id}")
    for r in rows:
        table.add_row(r.topic, str(r.partition), "-" if r.committed is None else str(r.committed), str(r.log_end), str(r.lag))
    Console().print(table)


# -- demo -----------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


class _AssignmentCollector(threading.Thread):
    """Reads the assignment topic in the background and keeps one entry per photo id."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.final: dict[str, dict[str, Any]] = {}
        self.duplicates = 0
        self.last_seen = 0.0
        self._stopping = threading.Event()

    def run(self) -> None:
        from confluent_kafka import Consumer

        from .codecs import decode_assignment

        consumer = Consumer(self.settings.confluent_config(**{
            "group.id": f"photoclust-demo-reader-{time.time_ns()}", "auto.offset.reset": "earliest",
            "enable.auto.commit": False}))
        consumer.subscribe([self.settings.output_topic])
        try:
            while not self._stopping.is_set():
                for message in consumer.consume(10_000, timeout=0.2):
                    if message.error():
                        continue
                    event = decode_assignment(message.value())
                    if event["id"] in self.final:
                        self.duplicates += 1
                    self.final[event["id"]] = event
                    self.last_seen = time.monotonic()
        finally:
            consumer.close()

    def stop(self) -> None:
        self._stopping.set()
        self.join(10)


@dataclasses.dataclass
class _DemoWorker:
    """One worker process of the demo's group, and its last /stats answer."""

    name: str
    proc: subprocess.Popen
    log_path: Path
    web_port: int
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def stats_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}/stats"

    def refresh(self) -> dict[str, Any]:
        """Ask /stats again; keep the last answer while the worker does not answer."""
        self.stats = _get_json(self.stats_url) or self.stats
        return self.stats

    @property
    def role(self) -> str:
        """The role /stats reports: founder (owns the unjoined partition, founds the clusters) or
        joiner; "?" where /stats does not say."""
        return str(self.stats.get("role") or "?")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise CommandFailed(f"{self.name} exited with code {self.proc.returncode}; see {self.log_path}")


def _start_worker(settings: Settings, name: str, log_path: Path) -> _DemoWorker:
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           **{f"PHOTOCLUST_{k.upper()}": str(v) for k, v in dataclasses.asdict(settings).items()}}
    with open(log_path, "w") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([sys.executable, "-m", "streams", "worker"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    return _DemoWorker(name, proc, log_path, settings.web_port)


def _stop_workers(workers: list[_DemoWorker], timeout: float = 60.0) -> None:
    """SIGTERM every worker at once (each drains its closed windows), SIGKILL those still running
    after ``timeout``; also when the wait itself is interrupted (a second Ctrl-C)."""
    for w in workers:
        if w.proc.poll() is None:
            w.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    try:
        for w in workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.proc.wait(max(0.0, deadline - time.monotonic()))
    finally:
        for w in workers:
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()


def _founder(workers: list[_DemoWorker]) -> _DemoWorker | None:
    """The worker that founds the clusters: the one whose /stats says so; where /stats has no role,
    the one whose found stage took the most events (the others' found stage is idle)."""
    named = [w for w in workers if w.stats.get("role") == "founder"]
    if named:
        return named[0]
    if len(workers) == 1:
        return workers[0]
    busiest = max(workers, key=lambda w: (w.stats.get("found") or {}).get("events_in", 0))
    return busiest if (busiest.stats.get("found") or {}).get("events_in", 0) > 0 else None


def _group_settled(settings: Settings, members: int) -> bool:
    """The worker group is Stable with ``members`` members (no rebalance pending). True where the
    broker cannot describe groups: then readiness alone decides."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(settings.confluent_config())
    try:
        (future,) = admin.describe_consumer_groups([settings.app_id], request_timeout=5).values()
        group = future.result(timeout=10)
    except Exception:  # an older broker, a missing ACL: not worth failing the demo for
        return True
    finally:
        admin.poll(0)
    return group.state.name == "STABLE" and len(group.members) == members


def _group_ready(workers: list[_DemoWorker]) -> bool:
    """Every worker answers /stats and is ready, or reports itself a joiner (whose found stage waits
    for the unjoined partition), and at least one is ready."""
    stats = [w.refresh() for w in workers]
    return (all(s and (s.get("ready") or s.get("role") == "joiner") for s in stats)
            and any(s.get("ready") for s in stats))


@main.command()
@click.option("--photos", type=click.IntRange(min=1), default=200_000, show_default=True)
@click.option("--clusters", type=click.IntRange(min=1), default=None, help="Planted clusters (default photos/200).")
@click.option("--flip-prob", type=click.FloatRange(0, 0.5), default=0.1, show_default=True)
@click.option("--window", "window_size", type=click.IntRange(min=1), default=20_000, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=0), default=0, show_default=True,
              help="Photos per batch event; 0 sends one event per photo.")
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--workers", "n_workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes in the group; the input topic gets at least this many partitions.")
@click.option("--timeout", type=float, default=600.0, show_default=True, help="Give up after S seconds.")
@click.option("--workdir", type=click.Path(file_okay=False), default="out/demo", show_default=True)
@json_option
def demo(photos: int, clusters: int | None, flip_prob: float, window_size: int, batch_size: int, seed: int,
         n_workers: int, timeout: float, workdir: str, as_json: bool) -> None:
    """Stream planted photos through a real broker and worker(s); print a summary at the end.

    Uses KAFKA_BOOTSTRAP_SERVERS if set, else starts the local broker (and stops it afterwards).
    With --workers N, N worker processes share one consumer group: each joins the photos of the
    input partitions Kafka gives it, and the one that owns the unjoined partition founds the
    clusters. Every worker and the broker are stopped at the end, also after an error or Ctrl-C.
    """
    import numpy as np
    from rich.console import Console, Group
    from rich.live import Live
    from rich.table import Table

    from core.codes import to_bytes
    from core.purity import purity

    from .kafka_io import consumer_lag, ensure_topics, produce_photos

    console = Console(stderr=True)
    run = f"demo-{int(time.time())}"
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    with user_errors():  # e.g. a bad setting in the environment
        base = Settings.load()
        base = base.replace(partitions=max(base.partitions, n_workers))
    workers: list[_DemoWorker] = []
    # Whatever fails from here on (Ctrl-C included), the workers and a broker this command started are
    # stopped again: the callbacks run last-registered first, so the workers stop before the broker.
    with contextlib.ExitStack() as cleanup:
        if threading.current_thread() is threading.main_thread():
            # SIGTERM to the demo itself unwinds like Ctrl-C, through the cleanup below
            previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
            cleanup.callback(signal.signal, signal.SIGTERM, previous)
        if not os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
            console.print("[bold]starting the local Kafka broker[/bold] (deploy/kafka/broker.sh)")
            status = _broker("status", check=False, capture=True)
            if status.returncode != 0:
                status = _broker("start", capture=True)
                cleanup.callback(_broker, "stop", check=False)
            # broker.sh prints the address it listens on last (PHOTOCLUST_KAFKA_PORT may move it off 19092)
            base = base.replace(bootstrap_servers=status.stdout.strip().splitlines()[-1])
        settings = base.with_topic_prefix(
            run, window_size=window_size,
            max_wait_s=2.0, pending_idle_s=3.0, data_dir=str(work / run), seed=seed,
        )
        ensure_topics(settings)
        cleanup.callback(_stop_workers, workers)
        ports: set[int] = set()
        for i in range(1, n_workers + 1):
            while (port := _free_port()) in ports:
                pass
            ports.add(port)
            # one worker keeps the demo's original layout; a group has a data dir and a log per worker
            name, data_dir, log_path = (("worker", work / run, work / f"{run}.worker.log") if n_workers == 1 else
                                        (f"worker-{i}", work / run / f"worker-{i}", work / f"{run}.worker-{i}.log"))
            workers.append(_start_worker(settings.replace(data_dir=str(data_dir), web_port=port), name, log_path))
        collector = _AssignmentCollector(settings)
        collector.start()
        cleanup.callback(collector.stop)
        deadline = time.monotonic() + timeout
        what = "the worker" if n_workers == 1 else f"the {n_workers} workers"
        with console.status(f"waiting for {what} to be ready"):
            while not (_group_ready(workers) and (n_workers == 1 or _group_settled(settings, n_workers))):
                for w in workers:
                    w.check_alive()
                if time.monotonic() > deadline:
                    slow = [w for w in workers if not w.stats.get("ready")] or workers
                    raise CommandFailed(f"{what} did not become ready; see "
                                        f"{', '.join(str(w.log_path) for w in slow)}")
                time.sleep(0.5)
        ids, codes, truth = _planted(photos, clusters, settings.n_bits, flip_prob, seed)
        hashes = to_bytes(codes)
        produced = [0]
        t0 = time.perf_counter()

        def progress() -> Table | Group:
            for w in workers:
                w.refresh()
            founder = _founder(workers)
            group = founder.stats if founder is not None else {}
            stats = [w.stats for w in workers]
            table = Table("produced", "assigned", "clusters", "pending", "windows", "dlq", title=f"photoclust demo: {run}")
            table.add_row(f"{produced[0]:,}/{photos:,}", f"{len(collector.final):,}", str(group.get("clusters", "?")),
                          str(group.get("pending", "?")),
                          str(sum(s.get("windows", 0) for s in stats)) if any(stats) else "?",
                          str(sum(s.get("dlq_events", 0) + s.get("dlq_rows", 0) for s in stats)))
            if n_workers == 1:
                return table
            per_worker = Table("worker", "role", "ready", "photos in", "joined", "forwarded", "windows", "port")
            for w in workers:
                join = w.stats.get("join") or {}
                state = "yes" if w.stats.get("ready") else "no"
                if w.proc.poll() is not None:
                    state = f"exited {w.proc.returncode}"
                per_worker.add_row(w.name, w.role, state, f"{join.get('photos_in', 0):,}", f"{join.get('joined', 0):,}",
                                   f"{join.get('forwarded', 0):,}", str(w.stats.get("windows", 0)), str(w.web_port))
            return Group(table, per_worker)

        with Live(progress(), console=console, refresh_per_second=2) as live:
            producer_thread = threading.Thread(target=lambda: produce_photos(
                settings, ids, hashes, batch_size=batch_size,
                on_progress=lambda n: produced.__setitem__(0, produced[0] + n)), daemon=True)
            producer_thread.start()
            while len(collector.final) < photos:
                for w in workers:
                    w.check_alive()
                if time.monotonic() > deadline:
                    raise CommandFailed(f"only {len(collector.final)} of {photos} photos were assigned within {timeout}s")
                live.update(progress())
                time.sleep(0.5)
            elapsed = time.perf_counter() - t0
            final_lag = None
            while time.monotonic() < deadline:
                final_lag = sum(r.lag for r in consumer_lag(settings))
                live.update(progress())
                if final_lag == 0:
                    break
                time.sleep(0.5)
        if not console.is_terminal:
            console.line()  # Live ends its last frame with a newline only on a terminal
        for w in workers:  # the last counters, before the workers stop
            w.refresh()
        founder = _founder(workers)
    # here every worker has exited (and a broker this command started is stopped)
    labels = np.array([collector.final[i]["cluster"] if collector.final[i]["cluster"] is not None else -1 for i in ids])
    outcomes = Counter(event["outcome"] for event in collector.final.values())
    per_worker = [{
        "worker": w.name, "role": w.role, "photos_in": (w.stats.get("join") or {}).get("photos_in"),
        "joined": (w.stats.get("join") or {}).get("joined"), "forwarded": (w.stats.get("join") or {}).get("forwarded"),
        "windows": w.stats.get("windows"), "exit_code": w.proc.returncode, "log": str(w.log_path),
    } for w in workers]
    group_stats = founder.stats if founder is not None else {}
    summary = {
        "photos": photos,
        "outcomes": dict(outcomes),
        "clusters": int(group_stats.get("clusters", len(set(labels[labels >= 0].tolist())))),
        "purity": round(purity(labels, truth, ignore_noise=True), 4) if (labels >= 0).any() else None,
        "noise_fraction": round(float(np.mean(labels < 0)), 4),
        "throughput_per_s": round(photos / elapsed, 1),
        "seconds": round(elapsed, 2),
        "final_lag": final_lag,
        "duplicate_outcomes": collector.duplicates,
        "windows": (sum(w.stats.get("windows", 0) for w in workers)
                    if any("windows" in w.stats for w in workers) else None),
        "batch_size": batch_size,
        "workers": n_workers,
        "partitions": settings.partitions,
    }
    if n_workers == 1:
        summary["worker_log"] = str(workers[0].log_path)
    table = Table("", "", title="photoclust demo summary")
    for key, value in summary.items():
        table.add_row(key, json.dumps(value) if isinstance(value, dict) else str(value))
    console.print(table)
    if n_workers > 1:
        table = Table("worker", "role", "photos in", "joined", "forwarded", "windows", "exit", "log",
                      title="per worker (join stage: photos in, joined at once, forwarded to the founder)")
        for row in per_worker:
            table.add_row(*(str("-" if row[k] is None else row[k]) for k in
                            ("worker", "role", "photos_in", "joined", "forwarded", "windows", "exit_code", "log")))
        console.print(table)
    stuck = [row["worker"] for row in per_worker if row["exit_code"] != 0]
    if stuck:
        console.print(f"[yellow]not stopped cleanly (exit code other than 0): {', '.join(stuck)}; "
                      f"see the logs[/yellow]")
    if as_json:
        click.echo(json.dumps({**summary, "per_worker": per_worker}))
    if final_lag != 0:
        raise CommandFailed(f"consumer lag did not reach 0 (last seen {final_lag})")
