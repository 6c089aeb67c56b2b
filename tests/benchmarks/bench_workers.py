"""Scaling benchmark: 1, 2, 3 ... identical ``photoclust worker`` processes in one consumer group (issue 13).

A script, not a pytest test (pytest collects only ``test_*.py``). For every event kind (``single``:
one photo per event; ``batch``: ``--batch-size`` photos per event) and every group size of
``--workers``, on fresh topics (uuid app id and topic prefix; the input topic has ``--partitions``
partitions):

1. The N workers are started on the empty topics; the script waits until every one is ready and
   the group is stable (every /ready true, no new rebalance for 2 s).
2. Warm-up (``--warmup`` photos, default one window): the first photos of the planted stream are
   produced and clustered until each has its outcome (held ones at the idle flush) and every
   worker's copy holds every center. The measured part then runs as a stream that already has its
   clusters (most photos join in the join stages); ``--warmup 0`` measures a cold start, where a
   backlog is forwarded whole to the founder (the join stages outrun the first window).
3. The rest of the stream. ``--feed backlog`` (default): the workers are paused (SIGSTOP to each
   worker's process group), the rest is produced, and they are resumed (SIGCONT): the clock starts
   there, with all N workers owning their partitions. (Workers started on a produced backlog would
   not do: the first one ready takes every partition.) ``--feed live``: the rest is produced while
   they consume it; the clock starts at the first produce.
4. The clock ends at the last outcome that arrives on the assignment topic (as in
   ``bench_stream.py``) once /stats of the group says everything was processed: the join stages
   took all photos, the found stage clustered every forwarded photo, no window in flight or being
   filled. Photos still held in the pending pool get their outcome ``--pending-idle-s`` later
   (idle flush, as noise); that wait is not on the clock. photos/s = measured photos / clock. The
   first outcome's time and the first-to-last-outcome rate are in the JSON too.
5. After the idle flush: every photo id must have exactly one outcome (missing and duplicate ids
   are counted and printed, never hidden), purity/NMI against the planted labels.
6. Per worker, from /stats (growth over the measured part): photos joined and forwarded, role,
   found.photos_in (the founder's share of the stream), stage CPU seconds (``join.cpu_seconds``,
   ``found.cpu_seconds``), the center propagation delay (``replica.center_delay_s``); fields the
   worker does not serve yet are "n/a".
   Measured by the script whatever the worker serves: process CPU (utime+stime of
   ``/proc/<pid>/stat``) over the clocked interval, peak RSS (VmHWM), the machine's other CPU use.

Failover (``--failover``, on by default, for every group of 2 or more workers): a fresh run of the
same kind; once ``--kill-at`` of the measured photos have an outcome, the worker whose /stats role is
"founder" is SIGKILLed. Measured: seconds from the kill until a surviving worker reports role
founder, until it is also ready (and its ``found.ready_at``), until it clustered its first window,
the longest gap without any outcome, and whether every photo still got an outcome. Without the
"role" field the failover is skipped with a note (``--failover-infer`` infers the founder from the
found-stage counters instead, labelled as inferred).

Ratios are against the 1-worker run of the same event kind in the same invocation. Saves
``results/workers_<UTC timestamp>.json`` (``workers_quick_...`` with ``--quick``) and a PNG of
photos/s against workers next to it when matplotlib is installed.

Usage:
    python tests/benchmarks/bench_workers.py                       # 200k photos, 1 2 3 workers, failover
    python tests/benchmarks/bench_workers.py --quick               # 40k photos
    python tests/benchmarks/bench_workers.py --workers 1 2 --photos 6000 --clusters 60 --window 2000 --no-failover
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "integration"))

import kafka_support as ks  # noqa: E402
from bench_stream import machine, proc_status  # noqa: E402
from report import save_report  # noqa: E402

from confluent_kafka import Consumer, TopicPartition  # noqa: E402

from core.codes import to_bytes  # noqa: E402
from core.purity import normalized_mutual_info, purity  # noqa: E402
from core.synth import planted_codes  # noqa: E402
from streams.config import Settings  # noqa: E402
from streams.kafka_io import ensure_topics  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
# /stats fields this script reads when the worker serves them (added with issue 13); printed as
# "n/a" otherwise, and listed in the report as missing.
OPTIONAL_FIELDS = ("role", "join.cpu_seconds", "found.cpu_seconds", "replica.center_delay_s", "unjoined_lag",
                   "found.restore_seconds", "found.ready_at")
STABLE_S = 2.0  # the group is stable once every /ready is true and no rebalance counter moved this long
# Faust's consumer session timeout is 60 s by default: a longer pause could cost a rebalance.
PAUSE_WARN_S = 20.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def field(stats: dict[str, Any] | None, dotted: str) -> Any:
    """``stats["a"]["b"]`` for "a.b"; None if any part is absent."""
    value: Any = stats
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def fmt(value: Any, spec: str = "", na: str = "n/a") -> str:
    return na if value is None else format(value, spec)


# -- measuring the processes --------------------------------------------------------------------------


def process_cpu_s(pid: int) -> float | None:
    """utime + stime of the process (all its threads) and of its waited-for children, in seconds."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = text.rsplit(")", 1)[1].split()  # rest[0] is field 3 (state); utime is field 14
    return sum(int(x) for x in rest[11:15]) / CLK_TCK


def machine_busy_s() -> float:
    """Core-seconds the whole machine spent busy since boot (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as f:
        values = [int(x) for x in f.readline().split()[1:9]]
    return (sum(values) - values[3] - values[4]) / CLK_TCK


class GroupMonitor:
    """Polls /stats and the process CPU of every live worker; keeps the latest /stats and a history."""

    def __init__(self, workers: list[ks.WorkerProcess]) -> None:
        self.workers = workers
        self.last: dict[str, dict[str, Any]] = {}
        self.cpu: dict[str, list[tuple[float, float]]] = {w.name: [] for w in workers}
        self.busy: list[tuple[float, float]] = []
        self.peak_rss: dict[str, int] = {}
        self.max_unjoined_lag: dict[str, Any] = {}
        self.fields_seen: set[str] = set()

    def poll(self) -> dict[str, dict[str, Any]]:
        now = time.time()
        self.busy.append((now, machine_busy_s()))
        for w in self.workers:
            if not w.alive():
                continue
            cpu = process_cpu_s(w.proc.pid)
            if cpu is not None:
                self.cpu[w.name].append((time.time(), cpu))
            stats = w.stats()
            if stats is None:  # a busy event loop answered too late: keep the last answer
                continue
            self.last[w.name] = stats
            self.fields_seen.update(name for name in OPTIONAL_FIELDS if field(stats, name) is not None)
            self.peak_rss[w.name] = max(self.peak_rss.get(w.name, 0), stats.get("rss_bytes") or 0)
            lag = stats.get("unjoined_lag")
            if isinstance(lag, (int, float)):
                self.max_unjoined_lag[w.name] = max(self.max_unjoined_lag.get(w.name, lag), lag)
        return self.last

    @staticmethod
    def at(series: list[tuple[float, float]], t: float) -> float | None:
        """The value of the last sample taken at or before ``t`` (the first sample if none)."""
        if not series:
            return None
        best = series[0][1]
        for ts, value in series:
            if ts > t:
                break
            best = value
        return best

    def cpu_between(self, name: str, t0: float, t1: float) -> float | None:
        a, b = self.at(self.cpu[name], t0), self.at(self.cpu[name], t1)
        return None if a is None or b is None else round(b - a, 3)

    def busy_between(self, t0: float, t1: float) -> float | None:
        a, b = self.at(self.busy, t0), self.at(self.busy, t1)
        return None if a is None or b is None else b - a


def group_settled(stats: list[dict[str, Any] | None], n: int) -> bool:
    """The join stages took all n photos, the found stage clustered every photo they forwarded, and no
    window is in flight or being filled (held photos may wait in the pending pool)."""
    if any(s is None for s in stats):
        return False
    took = sum((field(s, "join.photos_in") or 0) + (field(s, "join.dlq_rows") or 0) for s in stats)
    forwarded = sum(field(s, "join.forwarded") or 0 for s in stats)
    clustered = sum(field(s, "found.photos_in") or 0 for s in stats)
    busy = sum((s.get("windows_in_flight") or 0) + (s.get("window_fill") or 0) for s in stats)
    return took >= n and clustered >= forwarded and busy == 0


# -- reading the assignment topic ---------------------------------------------------------------------


class OutcomeReader(threading.Thread):
    """Reads the assignment topic from the start (kafka_support's AssignmentReader) in a thread and keeps
    the arrival time, partition, offset, outcome and ts_out of every event."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True)
        self.reader = ks.AssignmentReader(settings)
        self.lock = threading.Lock()
        self.arrival: list[float] = []
        self.partition: list[int] = []
        self.offset: list[int] = []
        self.outcome: list[str] = []
        self.ts_out: list[float] = []
        self.next_offset: dict[int, int] = {}
        self.error: str | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        result = self.reader.result
        try:
            while not self._halt.is_set():
                messages = self.reader.poll(0.2)
                if not messages:
                    continue
                now = time.time()
                with self.lock:
                    for m in messages:
                        result.add(m.value())
                        key = m.key()
                        event = result.final.get(key.decode("utf-8", "replace")) if key is not None else None
                        self.arrival.append(now)
                        self.partition.append(m.partition())
                        self.offset.append(m.offset())
                        self.outcome.append(event["outcome"] if event else "?")
                        self.ts_out.append(float(event["ts_out"]) if event else float("nan"))
                        self.next_offset[m.partition()] = max(self.next_offset.get(m.partition(), 0), m.offset() + 1)
        except Exception as e:  # reported by the run, which then fails
            self.error = f"{type(e).__name__}: {e}"
        finally:
            self.reader.close()

    def n_ids(self) -> int:
        with self.lock:
            return len(self.reader.result.final)

    def missing(self, ids: set[str]) -> set[str]:
        with self.lock:
            return ids - self.reader.result.final.keys()

    def reached(self, highs: dict[int, int]) -> bool:
        with self.lock:
            return all(self.next_offset.get(p, 0) >= h for p, h in highs.items() if h > 0)

    def first_arrival(self, t: float) -> float | None:
        """The first arrival at or after ``t``."""
        with self.lock:
            return next((a for a in self.arrival if a >= t), None)

    def last_arrival_below(self, highs: dict[int, int]) -> float | None:
        """The newest arrival among the events below ``highs`` (partition -> offset)."""
        with self.lock:
            times = [t for t, p, o in zip(self.arrival, self.partition, self.offset) if o < highs.get(p, 0)]
        return max(times) if times else None

    def after(self, t: float) -> dict[str, Any]:
        """Events produced (ts_out) after ``t``: first arrival, first found-stage-only outcome (founded
        or noise), and the longest gap between arrivals from ``t`` on (the wait for the final idle
        flush, about pending_idle_s, is one of these gaps)."""
        with self.lock:
            arrivals = np.asarray(self.arrival)
            ts_out = np.asarray(self.ts_out)
            outcomes = list(self.outcome)
        new = np.flatnonzero(ts_out > t)
        found_only = [i for i in new if outcomes[i] in ("founded", "noise")]
        later = arrivals[arrivals >= t]
        gaps = np.diff(np.concatenate(([t], np.sort(later)))) if later.size else np.zeros(0)
        return {"first_outcome_s": round(float(arrivals[new].min()) - t, 3) if new.size else None,
                "first_founded_or_noise_s": round(float(arrivals[found_only].min()) - t, 3) if found_only else None,
                "max_gap_s": round(float(gaps.max()), 3) if gaps.size else None}

    def finish(self) -> None:
        self._halt.set()
        self.join(30)


def high_watermarks(settings: Settings, topic: str) -> dict[int, int]:
    consumer = Consumer(settings.confluent_config(**{"group.id": f"bench-hw-{os.getpid()}-{time.time_ns()}"}))
    try:
        parts = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    finally:
        consumer.close()


# -- one run ------------------------------------------------------------------------------------------


class Run:
    """Fresh topics, N workers in one group, a reader of the assignment topic, optionally a producer."""

    def __init__(self, args: argparse.Namespace, n_workers: int, data: dict[str, Any], kind: str) -> None:
        self.args, self.n_workers, self.data, self.kind = args, n_workers, data, kind
        self.n = len(data["ids"])
        self.n_warmup = min(args.warmup, self.n)
        self.n_measured = self.n - self.n_warmup
        self.settings = ks.unique_settings(
            args.bootstrap, Path(args.workdir), window_size=args.window, max_wait_s=args.max_wait_s,
            pending_idle_s=args.pending_idle_s, partitions=args.partitions, seed=args.seed)
        self.dir = Path(args.workdir) / self.settings.app_id
        ports: set[int] = set()
        while len(ports) < n_workers:
            ports.add(ks.free_port())
        self.workers = [ks.WorkerProcess(f"w{i}", self.settings.replace(data_dir=str(self.dir / f"w{i}"),
                                                                        web_port=port), self.dir / f"w{i}.log")
                        for i, port in enumerate(sorted(ports))]
        self.monitor = GroupMonitor(self.workers)
        self.reader: OutcomeReader | None = None
        self.producer: threading.Thread | None = None
        self.produce: dict[str, Any] = {}
        self.ready_s: dict[str, float] = {}
        self.vmhwm: dict[str, int] = {}
        self.killed: set[str] = set()
        self.notes: list[str] = []
        self.t0: float | None = None  # clock start: workers resumed on the backlog, or first produce
        self.rebalances_at_start = 0
        self.stats_at_start: dict[str, dict[str, Any]] = {}
        self.warmup: dict[str, Any] = {}

    def events(self, part: slice) -> list[tuple[bytes, bytes]]:
        return ks.photo_events(self.data["ids"][part], self.data["hashes"][part],
                               self.args.batch_size if self.kind == "batch" else 0)

    def _produce(self, events: list[tuple[bytes, bytes]]) -> None:
        started = time.time()
        try:
            ks.produce_events(self.settings, events)
        except BaseException as e:
            self.produce["error"] = f"{type(e).__name__}: {e}"
        self.produce.update({"events": len(events), "started": started, "seconds": round(time.time() - started, 3)})

    def start(self) -> None:
        """Workers ready and the group stable, the warm-up part done, then the measured part of the
        stream (paused backlog or live); sets ``t0``."""
        ensure_topics(self.settings)
        self.reader = OutcomeReader(self.settings)
        self.reader.start()
        t_spawn = time.time()
        for w in self.workers:
            w.start()
        deadline = time.monotonic() + self.args.ready_timeout
        while len(self.ready_s) < len(self.workers):
            for w in self.workers:
                w.check_alive()
                if w.name not in self.ready_s and (w.stats() or {}).get("ready"):
                    self.ready_s[w.name] = round(time.time() - t_spawn, 2)
            self.monitor.poll()
            if time.monotonic() > deadline:
                raise RuntimeError(f"not every worker ready within {self.args.ready_timeout:.0f} s: {self.ready_s}\n"
                                   + "\n".join(w.log_tail(30) for w in self.workers))
            time.sleep(0.2)
        log(f"  {len(self.workers)} worker(s) ready after {max(self.ready_s.values()):.1f} s")
        self.wait_stable()
        if self.n_warmup:
            self.run_warmup()
        events = self.events(slice(self.n_warmup, None))
        self.stats_at_start = {name: stats for name, stats in self.monitor.poll().items()}
        self.rebalances_at_start = sum(s.get("rebalances") or 0 for s in self.stats_at_start.values())
        if self.args.feed == "live":
            self.producer = threading.Thread(target=self._produce, args=(events,), daemon=True)
            self.producer.start()
            while "started" not in self.produce:
                time.sleep(0.01)
            self.t0 = self.produce["started"]
            return
        # Backlog: the group is formed (every worker owns its partitions), then paused (SIGSTOP) while
        # the whole stream is produced, and resumed: the clock starts with all N workers consuming.
        # Workers started after producing would not do: the first one ready takes every partition.
        log(f"  producing the backlog with the workers paused: {self.n_measured:,} photos in {len(events):,} events")
        self.signal(signal.SIGSTOP)
        try:
            self._produce(events)
        finally:
            self.signal(signal.SIGCONT)
            self.t0 = time.time()
        if "error" in self.produce:
            raise RuntimeError(f"backlog produce failed: {self.produce['error']}")
        if self.produce["seconds"] > PAUSE_WARN_S:
            self.notes.append(f"workers paused {self.produce['seconds']:.0f} s while producing: heartbeats may have "
                              f"lapsed (see the rebalance count)")

    def run_warmup(self) -> None:
        """The first ``n_warmup`` photos, until each has its outcome (held ones at the idle flush) and
        every worker's copy holds every center: the measured part then starts with the clusters of a
        stream already running (most photos join in the join stages) and an empty pending pool."""
        started = time.time()
        log(f"  warm-up: {self.n_warmup:,} photos")
        ks.produce_events(self.settings, self.events(slice(0, self.n_warmup)))
        deadline = time.monotonic() + self.args.timeout
        self.wait_settled(deadline, self.n_warmup)
        self.wait_outcomes(deadline, set(self.data["ids"][:self.n_warmup]))
        while True:
            self.check()
            stats = [self.monitor.poll().get(w.name) or {} for w in self.workers]
            clusters = max(s.get("clusters") or 0 for s in stats)
            copies = [field(s, "join.centers") or 0 for s in stats]
            if min(copies) >= clusters:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the workers' copies hold {copies} centers, the founder {clusters}")
            time.sleep(self.args.poll_s)
        missing = len(self.reader.missing(set(self.data["ids"][:self.n_warmup])))
        self.warmup = {"photos": self.n_warmup, "seconds": round(time.time() - started, 2), "clusters": clusters,
                       "missing_after_warmup": missing}
        log(f"  warm-up done in {self.warmup['seconds']} s: {clusters:,} clusters")

    def signal(self, sig: int) -> None:
        for w in self.workers:
            if w.alive():
                os.killpg(w.proc.pid, sig)

    def wait_stable(self) -> None:
        """Every worker's /ready (partitions assigned, not rebalancing) and no new rebalance for STABLE_S."""
        deadline = time.monotonic() + self.args.ready_timeout
        last, since = None, time.monotonic()
        while time.monotonic() < deadline:
            ready = [ks.get_json(f"http://127.0.0.1:{w.settings.web_port}/ready") for w in self.workers]
            counts = tuple((w.stats() or {}).get("rebalances") for w in self.workers)
            if counts != last or not all(r and r.get("ready") for r in ready):
                last, since = counts, time.monotonic()
            elif time.monotonic() - since >= STABLE_S:
                return
            time.sleep(0.2)
        self.notes.append("group not stable before producing (a rebalance may fall inside the clock)")

    def check(self) -> None:
        for w in self.workers:
            if w.name not in self.killed:
                w.check_alive()
        if self.reader is not None and self.reader.error:
            raise RuntimeError(f"assignment reader failed: {self.reader.error}")
        if "error" in self.produce:
            raise RuntimeError(f"producer failed: {self.produce['error']}")

    def wait_settled(self, deadline: float, n: int) -> None:
        while True:
            self.check()
            last = self.monitor.poll()
            if group_settled([last.get(w.name) for w in self.workers], n):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"timeout: the group did not process {n:,} photos; /stats "
                                   f"{ {name: summary(s) for name, s in last.items()} }\n"
                                   + "\n".join(w.log_tail(30) for w in self.workers))
            time.sleep(self.args.poll_s)

    def wait_outcomes(self, deadline: float, ids: set[str]) -> None:
        """Until every id has an outcome (held photos get theirs at the idle flush), then to the log end."""
        while self.reader.missing(ids) and time.monotonic() < deadline:
            self.check()
            self.monitor.poll()
            time.sleep(self.args.poll_s)
        highs = high_watermarks(self.settings, self.settings.output_topic)
        end = time.monotonic() + 15
        while not self.reader.reached(highs) and time.monotonic() < end:
            time.sleep(0.1)

    def stop(self) -> None:
        for w in self.workers:
            if w.alive():
                self.vmhwm[w.name] = proc_status(w.proc.pid).get("VmHWM", self.vmhwm.get(w.name, 0))
        threads = [threading.Thread(target=w.stop, daemon=True) for w in self.workers if w.proc is not None]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        if self.producer is not None:
            self.producer.join(120)
        if self.reader is not None:
            self.reader.finish()

    def quality(self) -> dict[str, Any]:
        """One final outcome per id? Purity and NMI against the planted labels."""
        result = self.reader.reader.result
        ids, id_set = self.data["ids"], self.data["id_set"]
        missing = id_set - result.final.keys()
        unexpected = result.final.keys() - id_set
        out: dict[str, Any] = {
            "assignment_events": result.events, "ids_with_outcome": len(result.final), "missing": len(missing),
            "missing_examples": sorted(missing)[:5], "duplicate_ids": len(result.duplicates),
            "duplicate_events": sum(result.duplicates.values()), "unexpected_ids": len(unexpected),
            "undecodable": len(result.bad),
            "outcomes": {o: sum(1 for e in result.final.values() if e["outcome"] == o) for o in sorted(ks.OUTCOMES)},
        }
        out["exactly_one_each"] = not (missing or result.duplicates or unexpected or result.bad)
        labels = ks.labels_of(result, ids)
        truth = self.data["truth"]
        out["noise_fraction"] = round(float(np.mean(labels < 0)), 4)
        out["purity_noise_as_cluster"] = round(purity(labels, truth), 4)
        if (labels >= 0).any():
            out["purity"] = round(purity(labels, truth, ignore_noise=True), 4)
            out["nmi"] = round(normalized_mutual_info(labels, truth, ignore_noise=True), 4)
        out["clusters"] = int(len(np.unique(labels[labels >= 0])))
        return out

    def per_worker(self, t0: float | None, t1: float | None) -> list[dict[str, Any]]:
        """Per worker: the counters of the measured part (growth since the warm-up ended) and the totals."""
        rows = []
        for w in self.workers:
            s = self.monitor.last.get(w.name) or {}
            before = self.stats_at_start.get(w.name) or {}

            def grown(name: str) -> Any:
                end = field(s, name)
                return None if end is None else round(end - (field(before, name) or 0), 3)

            delay = field(s, "replica.center_delay_s") or {}
            rows.append({
                "name": w.name, "pid": w.proc.pid if w.proc else None, "web_port": w.settings.web_port,
                "log": str(w.log_path), "ready_s": self.ready_s.get(w.name), "role": s.get("role"),
                "photos_in": grown("join.photos_in"), "joined": grown("join.joined"),
                "forwarded": grown("join.forwarded"), "found_photos_in": grown("found.photos_in"),
                "found_windows": grown("found.windows"), "join_cpu_s": grown("join.cpu_seconds"),
                "found_cpu_s": grown("found.cpu_seconds"),
                "totals": {name: field(s, name) for name in (
                    "join.events_in", "join.photos_in", "join.joined", "join.forwarded", "found.events_in",
                    "found.photos_in", "found.windows", "join.cpu_seconds", "found.cpu_seconds")},
                "dlq_rows": s.get("dlq_rows"), "centers": field(s, "join.centers"), "clusters": s.get("clusters"),
                "centers_lag": field(s, "join.centers_lag"), "rebalances": s.get("rebalances"),
                "found_restore_s": field(s, "found.restore_seconds"), "found_ready_at": field(s, "found.ready_at"),
                "center_delay_p50_s": delay.get("p50"), "center_delay_p99_s": delay.get("p99"),
                "center_delay_n": delay.get("n"), "max_unjoined_lag": self.monitor.max_unjoined_lag.get(w.name),
                "process_cpu_clocked_s": self.monitor.cpu_between(w.name, t0, t1) if t0 and t1 else None,
                "process_cpu_total_s": (self.monitor.cpu[w.name] or [(0, None)])[-1][1],
                "vmhwm_mb": round(self.vmhwm.get(w.name, 0) / 2**20, 1) or None,
                "peak_stats_rss_mb": round(self.monitor.peak_rss.get(w.name, 0) / 2**20, 1) or None,
                "exit_code": w.exit_code,
            })
        return rows


def summary(s: dict[str, Any] | None) -> dict[str, Any]:
    s = s or {}
    return {"join": s.get("join"), "found": s.get("found"), "windows_in_flight": s.get("windows_in_flight"),
            "window_fill": s.get("window_fill"), "pending": s.get("pending"), "role": s.get("role")}


def founder_of(rows: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """The founder by role; without the role field, the worker whose found stage clustered the most."""
    by_role = [r for r in rows if r["role"] == "founder"]
    if by_role:
        r, how = by_role[0], "role"
    else:
        def clustered(row: dict[str, Any]) -> int:
            return row["totals"].get("found.photos_in") or 0

        r = max(rows, key=clustered)
        if not clustered(r):
            return {"name": None, "how": "none: no role field and no found-stage photos"}
        how = "inferred from found.photos_in (no role field)"
    return {"name": r["name"], "how": how, "found_photos_in": r["found_photos_in"],
            "share": round((r["found_photos_in"] or 0) / n, 4)}


def throughput_run(args: argparse.Namespace, kind: str, n_workers: int, data: dict[str, Any]) -> dict[str, Any]:
    run = Run(args, n_workers, data, kind)
    result: dict[str, Any] = {"kind": kind, "workers": n_workers, "feed": args.feed, "photos": run.n,
                              "app_id": run.settings.app_id, "input_topic": run.settings.input_topic}
    t_end = None
    try:
        run.start()
        deadline = time.monotonic() + args.timeout
        run.wait_settled(deadline, run.n)
        highs = high_watermarks(run.settings, run.settings.output_topic)
        while not run.reader.reached(highs):
            run.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the reader did not reach the assignment topic's end {highs}")
            time.sleep(0.05)
        t_end = run.reader.last_arrival_below(highs)
        run.monitor.poll()  # the counters at the end of the clock
        settled_stats = {w.name: summary(run.monitor.last.get(w.name)) for w in run.workers}
        log(f"  processed; waiting up to {args.pending_idle_s + 30:.0f} s for the idle flush of held photos")
        run.wait_outcomes(time.monotonic() + args.pending_idle_s + 30, data["id_set"])
        result["settled_stats"] = settled_stats
    except Exception as e:  # keep what was measured; the table shows the error
        result["error"] = f"{type(e).__name__}: {e}"[:4000]
        log(f"  FAILED: {result['error'][:1500]}")
    finally:
        run.monitor.poll()
        run.stop()
    t0 = run.t0
    rows = run.per_worker(t0, t_end)
    result.update({"warmup": run.warmup, "measured_photos": run.n_measured, "ready_s": run.ready_s,
                   "per_worker": rows, "notes": run.notes,
                   "produce": {k: v for k, v in run.produce.items() if k != "started"},
                   "fields_seen": sorted(run.monitor.fields_seen)})
    if run.reader is not None and run.reader.reader.result.events:
        result["quality"] = run.quality()
    if t0 is None or t_end is None or t_end <= t0:
        return result
    n, seconds = run.n_measured, t_end - t0
    t_first = run.reader.first_arrival(t0)
    cpu = [r["process_cpu_clocked_s"] for r in rows if r["process_cpu_clocked_s"] is not None]
    busy = run.monitor.busy_between(t0, t_end)
    join_cpu = [r["join_cpu_s"] for r in rows if r["join_cpu_s"] is not None]
    found_cpu = [r["found_cpu_s"] for r in rows if r["found_cpu_s"] is not None]
    forwarded = sum(r["forwarded"] or 0 for r in rows)
    result.update({
        "clock": ("workers resumed on the backlog -> last outcome" if args.feed == "backlog"
                  else "first produce -> last outcome"),
        "seconds": round(seconds, 3), "photos_per_s": round(n / seconds, 1),
        "first_outcome_s": round(t_first - t0, 3) if t_first else None,
        "first_to_last_outcome_photos_per_s": round(n / (t_end - t_first), 1) if t_first and t_end > t_first else None,
        "founder": founder_of(rows, n),
        "rebalances": sum(r["rebalances"] or 0 for r in rows) - run.rebalances_at_start,
        "process_cpu_s": round(sum(cpu), 3) if cpu else None,
        "process_cpu_us_per_photo": round(1e6 * sum(cpu) / n, 1) if cpu else None,
        "worker_cores": round(sum(cpu) / seconds, 2) if cpu else None,
        "other_cores": round((busy - sum(cpu)) / seconds, 2) if busy is not None and cpu else None,
        # the stage fields: their growth over the measured part (from the end of the warm-up)
        "join_cpu_us_per_photo": round(1e6 * sum(join_cpu) / n, 1) if join_cpu else None,
        "found_cpu_us_per_photo": round(1e6 * sum(found_cpu) / n, 1) if found_cpu else None,
        "found_cpu_us_per_forwarded_photo": (round(1e6 * sum(found_cpu) / forwarded, 1)
                                             if found_cpu and forwarded else None),
        "forwarded_fraction": round(forwarded / n, 4),
    })
    return result


# -- failover -----------------------------------------------------------------------------------------


def failover_run(args: argparse.Namespace, kind: str, n_workers: int, data: dict[str, Any]) -> dict[str, Any]:
    run = Run(args, n_workers, data, kind)
    result: dict[str, Any] = {"kind": kind, "workers": n_workers, "feed": args.feed, "photos": run.n,
                              "kill_at": args.kill_at, "app_id": run.settings.app_id}
    t_kill = None
    try:
        run.start()
        deadline = time.monotonic() + args.timeout
        while run.reader.n_ids() < run.n_warmup + args.kill_at * run.n_measured:
            run.check()
            run.monitor.poll()
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {run.reader.n_ids():,} outcomes before the timeout")
            time.sleep(0.05)
        last = run.monitor.poll()
        roles = {name: s.get("role") for name, s in last.items()}
        founders = [w for w in run.workers if roles.get(w.name) == "founder"]
        how = "role"
        if not founders and args.failover_infer:
            busy = [w for w in run.workers if (field(last.get(w.name), "found.events_in") or 0) > 0]
            founders, how = busy[:1], "inferred: the worker whose found stage took events (no role field)"
        if not founders:
            result["skipped"] = ("no worker reports a 'role' in /stats (this worker version does not serve it yet)"
                                 if not any(roles.values()) else f"no worker has role founder: {roles}")
            return result
        founder = founders[0]
        survivors = [w for w in run.workers if w is not founder]
        base = {w.name: (field(last.get(w.name), "found.windows") or 0, field(last.get(w.name), "found.events_in") or 0)
                for w in survivors}
        run.vmhwm[founder.name] = proc_status(founder.proc.pid).get("VmHWM", 0)
        result.update({"founder_killed": founder.name, "founder_by": how, "outcomes_at_kill": run.reader.n_ids()})
        t_kill = time.time()
        run.killed.add(founder.name)
        founder.kill()
        log(f"  SIGKILLed the founder {founder.name} ({how}) at {result['outcomes_at_kill']:,} outcomes")
        end = time.monotonic() + args.failover_timeout
        # Until the new founder is ready and clustered a window. Once every photo has its outcome there
        # may be no window left to cluster: then only until it is ready (by role; inferred: stop).
        while (("kill_to_founder_ready_s" not in result or "kill_to_first_window_s" not in result)
               and time.monotonic() < end
               and not (("kill_to_founder_ready_s" in result or how != "role")
                        and not run.reader.missing(data["id_set"]))):
            run.check()
            stats = run.monitor.poll()
            since = round(time.time() - t_kill, 2)
            for w in survivors:
                s = stats.get(w.name)
                if s is None:
                    continue
                windows, taken = field(s, "found.windows") or 0, field(s, "found.events_in") or 0
                if not (s.get("role") == "founder" if how == "role"
                        else taken > base[w.name][1] or windows > base[w.name][0]):
                    continue
                if "new_founder" not in result:
                    result.update({"new_founder": w.name, "kill_to_role_founder_s": since})
                at = field(s, "found.ready_at")
                if s.get("ready") and (at is None or at >= t_kill) and "kill_to_founder_ready_s" not in result:
                    result["kill_to_founder_ready_s"] = since
                    result["kill_to_ready_at_s"] = round(at - t_kill, 2) if at is not None else None
                if windows > base[w.name][0] and "kill_to_first_window_s" not in result:
                    result["kill_to_first_window_s"] = since
            time.sleep(0.1)
        log(f"  new founder {result.get('new_founder')}: role after {fmt(result.get('kill_to_role_founder_s'))} s, "
            f"ready after {fmt(result.get('kill_to_founder_ready_s'))} s, "
            f"first window after {fmt(result.get('kill_to_first_window_s'))} s")
        run.wait_outcomes(time.monotonic() + args.failover_timeout + args.pending_idle_s, data["id_set"])
        try:  # a cluster id handed out twice (two founders, or a stale copy) fails this
            result["centers_published"] = len(ks.centers_history(run.settings))
            result["center_ids_consistent"] = True
        except AssertionError as e:
            result["center_ids_consistent"] = False
            result["center_id_conflicts"] = str(e)[:1000]
    except Exception as e:
        result["error"] = f"{type(e).__name__}: {e}"[:4000]
        log(f"  FAILED: {result['error'][:1500]}")
    finally:
        run.monitor.poll()
        run.stop()
    if t_kill is not None:
        flow = run.reader.after(t_kill)
        result.update({"kill_to_first_outcome_s": flow["first_outcome_s"],
                       "kill_to_first_founded_or_noise_s": flow["first_founded_or_noise_s"],
                       "max_gap_after_kill_s": flow["max_gap_s"]})
    result["per_worker"] = run.per_worker(None, None)
    if run.reader is not None and run.reader.reader.result.events and "skipped" not in result:
        result["quality"] = run.quality()
    return result


# -- report -------------------------------------------------------------------------------------------


def table(report: dict[str, Any]) -> list[str]:
    runs = report["runs"]
    base = {r["kind"]: r.get("photos_per_s") for r in runs if r["workers"] == 1}
    lines = []
    hdr = (f"{'kind':<6} {'N':>2} {'photos/s':>9} {'x 1w':>6} {'seconds':>8} {'1st out':>7} {'missing':>7} "
           f"{'dup ids':>7} {'purity':>6} {'noise':>6} {'founder':>8} {'fwd':>6} {'join us':>7} {'found us':>8} "
           f"{'proc us':>7} {'cores':>5} {'other':>5} {'rebal':>5}")
    lines += ["throughput of the measured part (after the warm-up); us = CPU microseconds per measured photo: "
              "join/found from the stage fields, proc = worker processes (/proc)",
              hdr, "-" * len(hdr)]
    for r in runs:
        q = r.get("quality") or {}
        b = base.get(r["kind"])
        ratio = f"{r['photos_per_s'] / b:.2f}" if b and r.get("photos_per_s") else "n/a"
        founder = r.get("founder") or {}
        share = founder.get("share")
        lines.append(
            f"{r['kind']:<6} {r['workers']:>2} {fmt(r.get('photos_per_s'), ',.0f'):>9} {ratio:>6} "
            f"{fmt(r.get('seconds'), '.2f'):>8} {fmt(r.get('first_outcome_s'), '.2f'):>7} "
            f"{fmt(q.get('missing')):>7} {fmt(q.get('duplicate_ids')):>7} "
            f"{fmt(q.get('purity'), '.3f'):>6} {fmt(q.get('noise_fraction'), '.3f'):>6} "
            f"{(fmt(share, '.1%') + ('*' if founder.get('how', '').startswith('inferred') else '')):>8} "
            f"{fmt(r.get('forwarded_fraction'), '.1%'):>6} {fmt(r.get('join_cpu_us_per_photo'), '.1f'):>7} "
            f"{fmt(r.get('found_cpu_us_per_photo'), '.1f'):>8} {fmt(r.get('process_cpu_us_per_photo'), '.0f'):>7} "
            f"{fmt(r.get('worker_cores'), '.2f'):>5} {fmt(r.get('other_cores'), '.2f'):>5} "
            f"{fmt(r.get('rebalances')):>5}")
        if r.get("error"):
            lines.append(f"       ERROR: {r['error'][:300]}")
    if any((r.get("founder") or {}).get("how", "").startswith("inferred") for r in runs):
        lines.append("* founder inferred from found.photos_in (no 'role' in /stats)")
    hdr = (f"{'kind':<6} {'N':>2} {'worker':<6} {'role':<8} {'ready s':>7} {'joined':>8} {'forwarded':>9} "
           f"{'found in':>8} {'CPU s':>7} {'delay p50':>9} {'p99':>7} {'VmHWM MB':>8}")
    lines += ["", "per worker, measured part (CPU s = process CPU over the clock; delay = center propagation, s)",
              hdr, "-" * len(hdr)]
    for r in runs:
        for w in r.get("per_worker", []):
            lines.append(
                f"{r['kind']:<6} {r['workers']:>2} {w['name']:<6} {fmt(w['role']):<8} {fmt(w['ready_s'], '.1f'):>7} "
                f"{fmt(w['joined'], ','):>8} {fmt(w['forwarded'], ','):>9} {fmt(w['found_photos_in'], ','):>8} "
                f"{fmt(w['process_cpu_clocked_s'], '.2f'):>7} {fmt(w['center_delay_p50_s'], '.3f'):>9} "
                f"{fmt(w['center_delay_p99_s'], '.3f'):>7} {fmt(w['vmhwm_mb'], '.0f'):>8}")
    if report["failover"]:
        hdr = (f"{'kind':<6} {'N':>2} {'killed':<6} {'new':<6} {'->role':>7} {'->ready':>7} {'->window':>8} "
               f"{'->found out':>11} {'max gap':>7} {'missing':>7} {'dup ids':>7} {'center ids':>10}")
        lines += ["", "failover (seconds from SIGKILL of the founder)", hdr, "-" * len(hdr)]
        for f in report["failover"]:
            if f.get("skipped"):
                lines.append(f"{f['kind']:<6} {f['workers']:>2} skipped: {f['skipped']}")
                continue
            q = f.get("quality") or {}
            lines.append(
                f"{f['kind']:<6} {f['workers']:>2} {fmt(f.get('founder_killed')):<6} {fmt(f.get('new_founder')):<6} "
                f"{fmt(f.get('kill_to_role_founder_s'), '.1f'):>7} {fmt(f.get('kill_to_founder_ready_s'), '.1f'):>7} "
                f"{fmt(f.get('kill_to_first_window_s'), '.1f'):>8} "
                f"{fmt(f.get('kill_to_first_founded_or_noise_s'), '.1f'):>11} "
                f"{fmt(f.get('max_gap_after_kill_s'), '.1f'):>7} {fmt(q.get('missing')):>7} "
                f"{fmt(q.get('duplicate_ids')):>7} {center_ids(f):>10}")
            if f.get("founder_by", "role") != "role":
                lines.append(f"       founder {f['founder_by']}")
            if f.get("error"):
                lines.append(f"       ERROR: {f['error'][:300]}")
    missing = report["stats_fields_missing"]
    lines += ["", "stats fields not served by these workers (n/a above): " + (", ".join(missing) or "none"),
              f"loadavg before {report['loadavg_before']}, after {report['loadavg_after']}; "
              f"nproc {report['machine']['nproc']}"]
    return lines


def center_ids(f: dict[str, Any]) -> str:
    consistent = f.get("center_ids_consistent")
    return "n/a" if consistent is None else ("ok" if consistent else "CONFLICT")


def plot(report: dict[str, Any], path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        return f"plot skipped: matplotlib is not installed in this venv ({e}); pip install -e '.[bench]'"
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind in report["args"]["kinds"]:
        points = sorted((r["workers"], r["photos_per_s"]) for r in report["runs"]
                        if r["kind"] == kind and r.get("photos_per_s"))
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"{kind} events")
    ax.set_xlabel("workers in the group")
    ax.set_ylabel("photos/s (measured part, after the warm-up)")
    ax.set_xticks(report["args"]["workers"])
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    a = report["args"]
    ax.set_title(f"{a['photos']:,} photos, window {a['window']:,}, {a['feed']}, {report['machine']['nproc']} cores",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"plot: {path}"


# -- main ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3], help="group sizes to measure (default 1 2 3)")
    ap.add_argument("--kinds", nargs="+", choices=["single", "batch"], default=["single", "batch"],
                    help="event kinds: one photo per event, or --batch-size photos per event")
    ap.add_argument("--batch-size", type=int, default=500, help="photos per batch event (default 500)")
    ap.add_argument("--photos", type=int, default=None, help="photos per run (default 200000; quick 40000)")
    ap.add_argument("--clusters", type=int, default=None, help="planted clusters (default 2000; quick 400)")
    ap.add_argument("--window", type=int, default=None, help="window_size (default 20000; quick 4000)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="photos clustered before the clock starts (default: one window; 0: start cold)")
    ap.add_argument("--flip-prob", type=float, default=0.1, help="planted noise per bit (default 0.1)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--partitions", type=int, default=6, help="input (and assignment) topic partitions (default 6)")
    ap.add_argument("--feed", choices=["backlog", "live"], default="backlog",
                    help="backlog: produce everything, then start the workers; live: produce while they consume")
    ap.add_argument("--max-wait-s", type=float, default=5.0, help="max_wait_s of the workers (default 5)")
    ap.add_argument("--pending-idle-s", type=float, default=5.0,
                    help="pending_idle_s: held photos become noise this long after the stream ends (default 5)")
    ap.add_argument("--failover", action=argparse.BooleanOptionalAction, default=True,
                    help="also a founder-kill run for every group of 2+ workers (default on)")
    ap.add_argument("--kill-at", type=float, default=0.3,
                    help="kill the founder once this fraction of the measured photos has an outcome (default 0.3)")
    ap.add_argument("--failover-infer", action="store_true",
                    help="without a 'role' in /stats, infer the founder from the found-stage counters")
    ap.add_argument("--failover-timeout", type=float, default=300.0,
                    help="seconds allowed for the takeover (default 300)")
    ap.add_argument("--ready-timeout", type=float, default=180.0, help="seconds for the workers to become ready")
    ap.add_argument("--timeout", type=float, default=1200.0, help="per-run timeout in seconds (default 1200)")
    ap.add_argument("--poll-s", type=float, default=0.2, help="/stats polling interval (default 0.2)")
    ap.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092"))
    ap.add_argument("--workdir", default=str(REPO / "out" / "bench_workers"), help="worker data dirs and logs")
    ap.add_argument("--out", default=str(REPO / "tests" / "benchmarks" / "results"))
    ap.add_argument("--quick", action="store_true", help="40k photos, 400 clusters, 4k windows (explicit flags win)")
    args = ap.parse_args(argv)
    args.photos = args.photos or (40_000 if args.quick else 200_000)
    args.clusters = args.clusters or (400 if args.quick else 2_000)
    args.window = args.window or (4_000 if args.quick else 20_000)
    args.warmup = args.window if args.warmup is None else args.warmup
    args.workers = sorted(set(args.workers))
    Path(args.workdir).mkdir(parents=True, exist_ok=True)

    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "started_unix": time.time(),
        "machine": machine(), "loadavg_before": list(os.getloadavg()), "args": vars(args), "runs": [], "failover": []}
    log(f"generating {args.photos:,} planted photos around {args.clusters:,} centers")
    codes, truth, _ = planted_codes(args.photos, args.clusters, flip_prob=args.flip_prob, random_state=args.seed)
    ids = ks.photo_ids(0, args.photos)
    data = {"ids": ids, "id_set": set(ids), "hashes": to_bytes(codes), "truth": truth}
    for kind in args.kinds:
        for n in args.workers:
            log(f"[{kind}, {n} worker(s)] throughput run")
            r = throughput_run(args, kind, n, data)
            report["runs"].append(r)
            log(f"[{kind}, {n} worker(s)] {fmt(r.get('photos_per_s'), ',.0f')} photos/s, "
                f"missing {fmt((r.get('quality') or {}).get('missing'))}")
    role_served = any(w.get("role") for r in report["runs"] for w in r.get("per_worker", []))
    if args.failover:
        for kind in args.kinds:
            for n in (n for n in args.workers if n >= 2):
                if report["runs"] and not role_served and not args.failover_infer:
                    report["failover"].append({"kind": kind, "workers": n, "skipped": (
                        "no worker reported a 'role' in /stats in the throughput runs (not served by this "
                        "worker version yet); --failover-infer infers the founder instead")})
                    continue
                log(f"[{kind}, {n} workers] failover run")
                report["failover"].append(failover_run(args, kind, n, data))
    seen = set().union(*(r.get("fields_seen", []) for r in report["runs"])) if report["runs"] else set()
    report["stats_fields_missing"] = [name for name in OPTIONAL_FIELDS if name not in seen]
    report["loadavg_after"] = list(os.getloadavg())
    report["finished_unix"] = time.time()
    base = {r["kind"]: r.get("photos_per_s") for r in report["runs"] if r["workers"] == 1}
    report["ratios_vs_1_worker"] = {f"{r['kind']}:{r['workers']}": round(r["photos_per_s"] / base[r["kind"]], 3)
                                    for r in report["runs"] if base.get(r["kind"]) and r.get("photos_per_s")}
    report["table"] = table(report)
    print("\n".join(report["table"]))
    path = save_report(args.out, "workers_quick" if args.quick else "workers", report)
    print(plot(report, path.with_suffix(".png")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
