"""Profile the per-event path with py-spy: a bare Faust agent, and the photoclust worker, each taking
a backlog of single-photo events (or, for the worker, batch events: ``--batch-size``). A script, not
a pytest test.

For each target, N single events are produced to a fresh topic first; the process is started, and
py-spy attaches to it once it has begun to take events (so that imports and the group join stay out
of the profile) and samples until it has taken all N:

* ceiling: ``bench_faust_ceiling.py``'s ``take`` agent (``noack_take(2000)``, an ack per event);
  it has begun once its group has committed an offset.
* worker : ``python -m streams worker`` (bench_stream.py's settings: 6 input partitions,
  ``pending_idle_s=0``, windows of ``--window``); it has begun once /stats counts an event, and it
  is done once every photo was taken and every forwarded photo clustered. With ``--batch-size B``
  (0: single events) the ``--events`` photos go out in batch events of B rows, made by
  bench_stream.py's own producer.

``--threads all`` samples every thread that is not idle (py-spy without ``--gil``) instead of the GIL
holder only: whether the join thread, the publish thread, the found stage's thread and the event
loop run at once. Either way, the CPU seconds each OS thread of the worker used while profiled
(``/proc/<pid>/task/*/stat``) go to ``<target>.threads_cpu.txt`` and ``profile.json``.

Written to ``--out`` (default ``tests/benchmarks/results/profile_<UTC timestamp>/``), per target:
``<target>.raw.txt`` (py-spy's folded stacks, ``-F -t --gil``: aggregated by function, with thread
names, only the thread holding the GIL, so about Python CPU time), ``<target>.svg`` (a flame graph of it) and ``<target>.table.txt`` (samples per thread, self
and total time per function, top 25, and self time by module), plus ``profile.json``.

Usage:
    python tests/benchmarks/profile_perevent.py [--targets ceiling worker] [--events 100000]
    python tests/benchmarks/profile_perevent.py --targets worker --events 1000000 --batch-size 500 \
        --window 100000 [--threads all]
    python tests/benchmarks/profile_perevent.py render X.raw.txt     # SVG and table of a raw file
Broker: ``KAFKA_BOOTSTRAP_SERVERS`` or 127.0.0.1:19092.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(HERE))
BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")
PY_SPY = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
# Frames of these (standard library) modules are not "where the time goes": self time below them is
# charged to the nearest caller outside them.
STDLIB = re.compile(r"^(asyncio/|threading\.py|selectors\.py|contextlib\.py|weakref\.py|_weakrefset\.py|"
                    r"concurrent/|queue\.py|socket\.py|ssl\.py|functools\.py|typing\.py|abc\.py|enum\.py|"
                    r"<frozen |logging/|collections/|copy\.py|heapq\.py|random\.py|contextvars)")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- folded stacks -> table and flame graph --------------------------------------------------------


def read_folded(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def frame_file(frame: str) -> str:
    m = re.search(r"\(([^()]*):\d+\)$", frame)
    return m.group(1) if m else frame


def thread_label(frame: str) -> str:
    """'thread (1234): MainThread' -> 'MainThread'; Faust's and the stages' threads keep their names."""
    return frame.split(": ", 1)[1] if frame.startswith("thread (") and ": " in frame else frame


def table(stacks: list[tuple[list[str], int]], top: int = 25) -> str:
    total = sum(n for _, n in stacks) or 1
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    modules: Counter[str] = Counter()
    for frames, n in stacks:
        threads[thread_label(frames[0])] += n
        body = frames[1:] if frames and frames[0].startswith("thread (") else frames
        if not body:
            continue
        self_t[body[-1]] += n
        for f in set(body):
            incl[f] += n
        owner = next((f for f in reversed(body) if not STDLIB.match(frame_file(f))), body[-1])
        modules[frame_file(owner)] += n

    def pct(n: int) -> str:
        return f"{100.0 * n / total:6.1f}%"

    lines = [f"samples: {total} (py-spy --gil: the thread holding the GIL, about Python CPU time; with --threads"
             " all: every thread py-spy does not find idle, which counts threads waiting in a queue or epoll)", "",
             "samples per thread:"]
    lines += [f"  {pct(n)} {n:>7}  {name}" for name, n in threads.most_common()]
    lines += ["", f"top {top} functions by self time:", f"  {'self':>7} {'total':>7}  function (file:first line)"]
    lines += [f"  {pct(n)} {pct(incl[f])}  {f}" for f, n in self_t.most_common(top)]
    lines += ["", f"top {top} functions by total time:", f"  {'total':>7} {'self':>7}  function (file:first line)"]
    lines += [f"  {pct(n)} {pct(self_t[f])}  {f}" for f, n in incl.most_common(top)]
    lines += ["", "self time by module (standard-library frames charged to their nearest caller outside it):"]
    lines += [f"  {pct(n)}  {m}" for m, n in modules.most_common(top)]
    return "\n".join(lines) + "\n"


def flamegraph_svg(stacks: list[tuple[list[str], int]], title: str, width: int = 1800) -> str:
    """A static flame graph (root at the bottom); each frame's <title> holds its samples and share."""
    root: dict[str, Any] = {"n": 0, "kids": {}}
    for frames, n in stacks:
        node = root
        node["n"] += n
        for f in frames:
            node = node["kids"].setdefault(f, {"n": 0, "kids": {}})
            node["n"] += n
    total = root["n"] or 1

    def depth(node: dict[str, Any]) -> int:
        return 1 + max((depth(k) for k in node["kids"].values()), default=0)

    row, pad = 16, 40
    levels = depth(root)
    height = levels * row + pad + 10
    scale = (width - 20) / total
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace" '
           f'font-size="11">', f'<rect width="100%" height="100%" fill="#f8f8f8"/>',
           f'<text x="10" y="20" font-size="14">{html.escape(title)} ({total} samples)</text>']

    def color(name: str) -> str:
        h = sum(map(ord, frame_file(name))) % 60
        return f"hsl({h + (0 if 'faust' in name or 'mode/' in name else 190 if 'streams/' in name else 20)},70%,60%)"

    def draw(name: str, node: dict[str, Any], x: float, level: int) -> None:
        w = node["n"] * scale
        if w < 0.3:
            return
        y = height - 10 - (level + 1) * row
        label = html.escape(name)
        out.append(f'<g><title>{label} ({node["n"]} samples, {100.0 * node["n"] / total:.2f}%)</title>'
                   f'<rect x="{x + 10:.1f}" y="{y}" width="{w:.1f}" height="{row - 1}" fill="{color(name)}"/>')
        chars = int(w / 6.6)
        if chars >= 3:
            text = name if len(name) <= chars else name[:chars - 2] + ".."
            out.append(f'<text x="{x + 12:.1f}" y="{y + 11}">{html.escape(text)}</text>')
        out.append("</g>")
        for kid_name, kid in sorted(node["kids"].items()):
            draw(kid_name, kid, x, level + 1)
            x += kid["n"] * scale

    x = 0.0
    for name, node in sorted(root["kids"].items()):
        draw(name, node, x, 0)
        x += node["n"] * scale
    out.append("</svg>")
    return "\n".join(out)


def render(raw: Path, title: str | None = None) -> tuple[Path, Path]:
    stacks = read_folded(raw)
    stem = raw.name.removesuffix(".raw.txt")
    svg, txt = raw.with_name(f"{stem}.svg"), raw.with_name(f"{stem}.table.txt")
    svg.write_text(flamegraph_svg(stacks, title or stem))
    txt.write_text(table(stacks))
    return svg, txt


# -- runs --------------------------------------------------------------------------------------------


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) so far of each OS thread of ``pid``, with its name (comm)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return out


def python_thread_names(pid: int) -> dict[int, str]:
    """OS thread id -> Python thread name, from ``py-spy dump`` (Python 3.11 names no OS thread)."""
    try:
        out = subprocess.run([PY_SPY, "dump", "--nonblocking", "--pid", str(pid)], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {int(m.group(1)): m.group(2) for m in re.finditer(r'^Thread (\d+) \(\w+\): "(.*)"$', out, re.M)}


class Spy:
    """py-spy attached to a pid; stopped with SIGINT (it then writes its file)."""

    def __init__(self, pid: int, raw: Path, rate: int, gil: bool = True) -> None:
        self.raw = raw
        # --gil: only samples of the thread holding the GIL, i.e. Python CPU time; py-spy's idle
        # detection misses threads blocked in queue.get() or epoll, which would swamp the table.
        # Without it (--threads all), every thread py-spy does not find idle, GIL or not.
        self.proc = subprocess.Popen([PY_SPY, "record", "--pid", str(pid), "-F", "-t", *(["--gil"] if gil else []),
                                      "-f", "raw", "-r", str(rate), "-o", str(raw)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.started = time.perf_counter()
        self.cpu_before = thread_cpu(pid)
        self.pid = pid
        self.cpu_used: dict[str, float] = {}

    def stop(self) -> float:
        seconds = time.perf_counter() - self.started
        after = thread_cpu(self.pid)
        names = python_thread_names(self.pid)  # OS threads not named here are librdkafka's, RocksDB's, Numba's
        used: Counter[str] = Counter()
        for tid, (name, cpu) in after.items():
            used[f"{names.get(tid, name)} ({tid})"] = round(cpu - self.cpu_before.get(tid, (name, 0.0))[1], 2)
        self.cpu_used = {k: v for k, v in used.most_common() if v > 0}
        self.cpu_used["_total"] = round(sum(v for k, v in self.cpu_used.items()), 2)
        self.cpu_used["_wall"] = round(seconds, 2)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=60)
        log(f"py-spy: {out.strip().splitlines()[0] if out.strip() else '(no output)'}")
        return seconds


def profile_ceiling(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from confluent_kafka import Consumer, TopicPartition

    from bench_faust_ceiling import produce_backlog
    from streams.config import Settings

    topic = f"faust-ceiling-{uuid.uuid4().hex[:10]}"
    log(f"[ceiling] producing {args.events:,} single events to {topic}")
    produce_backlog(topic, args.events)
    proc = subprocess.Popen([sys.executable, str(HERE / "bench_faust_ceiling.py"), "--agent", "take", "--topic", topic,
                             "--events", str(args.events)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    probe = Consumer(Settings(bootstrap_servers=BOOTSTRAP).confluent_config(**{"group.id": f"ceiling-{topic}-take"}))
    spy = None
    try:
        deadline = time.monotonic() + 120
        committed = -1
        while committed <= 0:  # Faust commits the acked offsets every 2.8 s: it has begun
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ceiling agent did not start:\n{proc.stdout.read()[-3000:] if proc.stdout else ''}")
            committed = probe.committed([TopicPartition(topic, 0)], timeout=10)[0].offset
            time.sleep(0.2)
        log(f"[ceiling] agent began (committed offset {committed:,}); attaching py-spy")
        spy = Spy(proc.pid, out / "ceiling.raw.txt", args.rate, gil=args.threads == "gil")
        output, _ = proc.communicate(timeout=args.timeout)
        seconds = spy.stop()
    finally:
        probe.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result = [line for line in output.splitlines() if "RESULT" in line]
    agent_s = float(result[-1].split("RESULT")[-1]) if result else None
    return {"topic": topic, "events": args.events, "from_committed_offset": committed, "profiled_s": round(seconds, 2),
            "agent_seconds": agent_s, "events_per_s": round(args.events / agent_s, 1) if agent_s else None}


def profile_worker(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    import kafka_support as ks
    from bench_stream import backlog_topic, planted, run_settings  # noqa: F401

    from core.warmup import warm_up

    warm_up(256)  # fills Numba's cache of this checkout: the worker loads its kernels instead of compiling
    workdir = REPO / "out" / "profile_perevent"  # the worker's data dir and log, not kept with the results
    bench_args = argparse.Namespace(bootstrap=BOOTSTRAP, workdir=str(workdir), seed=7, backlog_max_wait_s=60.0)
    ids, hashes = planted(args.events, 0.1, 7)
    what = f"batch events of {args.batch_size}" if args.batch_size else "single events"
    log(f"[worker] producing {args.events:,} photos in {what}")
    settings, produced = backlog_topic(bench_args, "profile", args.window, ids, hashes, args.batch_size)
    worker = ks.WorkerProcess("profile", settings, workdir / f"{settings.app_id}.worker.log")
    spy = None
    try:
        worker.start()
        deadline = time.monotonic() + 180
        stats: dict[str, Any] = {}
        while not stats.get("events_in"):
            worker.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker took no event\n{worker.log_tail()}")
            stats = worker.stats() or {}
            time.sleep(0.05)
        first, first_photos = stats["events_in"], stats.get("photos_in", 0)
        log(f"[worker] began ({first:,} events taken); attaching py-spy to pid {worker.proc.pid}")
        spy = Spy(worker.proc.pid, out / "worker.raw.txt", args.rate, gil=args.threads == "gil")
        t0 = time.perf_counter()
        deadline = time.monotonic() + args.timeout
        while True:
            worker.check_alive()
            stats = worker.stats() or stats
            forwarded = stats.get("join", {}).get("forwarded", 0)
            if (stats.get("photos_in", 0) + stats.get("dlq_rows", 0) >= args.events
                    and stats.get("found", {}).get("photos_in", 0) >= forwarded):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"timeout: /stats {stats}\n{worker.log_tail()}")
            time.sleep(0.1)
        seconds = time.perf_counter() - t0
        spy.stop()
        thread_cpu_used = spy.cpu_used
        spy = None
    finally:
        if spy is not None:
            spy.stop()
        worker.stop()
    (out / "worker.threads_cpu.txt").write_text(
        "CPU seconds per OS thread of the worker while profiled (/proc/<pid>/task/*/stat)\n"
        + "".join(f"  {v:>8.2f}  {k}\n" for k, v in thread_cpu_used.items()))
    return {"input_topic": settings.input_topic, "worker_log": str(worker.log_path), "photos": args.events,
            "batch_size": args.batch_size, "window": args.window, "thread_cpu_s": thread_cpu_used,
            "partitions": settings.partitions, "produce": produced, "events_before_attach": first,
            "photos_before_attach": first_photos, "profiled_s": round(seconds, 2),
            "photos_per_s_while_profiled": round((args.events - first_photos) / seconds, 1),
            "join": stats.get("join"), "found_cpu_seconds": stats.get("found", {}).get("cpu_seconds")}


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["render"]:
        for raw in argv[1:]:
            print(*render(Path(raw)))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", nargs="+", choices=["ceiling", "worker"], default=["ceiling", "worker"])
    ap.add_argument("--events", type=int, default=100_000, help="photos (the worker: in --batch-size events)")
    ap.add_argument("--batch-size", type=int, default=0,
                    help="worker: rows per batch event (bench_stream.py's batch events); 0: single events")
    ap.add_argument("--threads", choices=["gil", "all"], default="gil",
                    help="gil: the thread holding the GIL only (py-spy --gil); all: every thread not idle")
    ap.add_argument("--window", type=int, default=20_000, help="the worker's window size")
    ap.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--out", default=None, help="default: tests/benchmarks/results/profile_<UTC timestamp>")
    args = ap.parse_args(argv)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out or HERE / "results" / f"profile_{stamp}")
    out.mkdir(parents=True, exist_ok=True)
    import faust

    report: dict[str, Any] = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "started_utc": stamp,
                              "faust": faust.__version__, "nproc": os.cpu_count(), "loadavg_before": os.getloadavg(),
                              "runs": {}}
    for target in args.targets:
        run = profile_ceiling if target == "ceiling" else profile_worker
        report["runs"][target] = run(args, out)
        what = (f"{args.events:,} photos in batch events of {args.batch_size}" if args.batch_size and target == "worker"
                else f"{args.events:,} single events")
        svg, txt = render(out / f"{target}.raw.txt", f"{target}: {what}, threads: {args.threads}")
        log(f"[{target}] {report['runs'][target]}\n  {svg}\n  {txt}")
    report["loadavg_after"] = os.getloadavg()
    (out / "profile.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
