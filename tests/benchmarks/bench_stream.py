"""End-to-end stream benchmark: one photoclust worker (Faust) on the local Kafka broker.

A script, not a pytest test (pytest collects only ``test_*.py``). For each event mode (single-photo
events, batch events of ``--batch-size`` rows) it measures, each run on fresh uuid topics:

* backlog  : N planted photos are produced first; the worker is then started and the clock runs
             from worker-ready (/stats "ready") to the arrival of the last assignment event
             (consume throughput).
* baseline : the same backlog read by a plain confluent-kafka loop (Consumer.consume(10000),
             PhotoDecoder, the same windowing rule, core OnlineClusterer.process with the worker's
             parameters, window_records (the worker's encoding), a confluent Producer, a synchronous offset commit
             after each window). Clock: first consume call to the last window's flush+commit.
             No state topic is written: this is "the ceiling Faust costs us".
* live-max : worker ready first, then the producer runs concurrently as fast as it can; clock
             from the first produce to the last assignment.
* live-rate: as live-max but at a fixed rate (``--rate-fraction`` x the backlog throughput);
             every event carries ts = time.time() at produce time, so ts_out - ts_in of the
             assignment events is the produce-to-assignment latency (p50/p99).

The worker's peak RSS (VmHWM of its process) is read at the end of every worker run. ``--big``
adds a backlog run with 1,000,000-photo windows (``--big-photos``, batch events by default).

pending_idle_s is 0 (held photos are never flushed as noise), so "the last assignment" is the
output of the window that contains the N-th photo; held photos (no outcome yet) are counted.

Usage:
    python tests/benchmarks/bench_stream.py --photos 200000 --window 100000 --batch-size 500 \
        --modes single batch --out tests/benchmarks/results [--quick] [--big]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "integration"))

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402

import kafka_support as ks  # noqa: E402
from core.codes import from_bytes, to_bytes  # noqa: E402
from core.online import OnlineClusterer  # noqa: E402
from core.synth import planted_codes  # noqa: E402
from streams.codecs import PhotoDecoder, decode_assignment, encode_batch, encode_photo, window_records  # noqa: E402
from streams.config import Settings  # noqa: E402
from streams.kafka_io import RecordPublisher, ensure_topics, make_producer, produce_waiting  # noqa: E402

TARGETS = {
    "single_100k": ("n=100,000 windows, single-photo events: >= 20,000 photos/s", 20_000.0),
    "batch_100k": ("n=100,000 windows, batch events: >= 200,000 photos/s", 200_000.0),
    "big_1m": ("n=1,000,000 windows: >= 4,200 photos/s with worker RSS < 2 GB", 4_200.0),
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- data and events -----------------------------------------------------------------------------


def planted(n: int, flip_prob: float, seed: int) -> tuple[list[str], list[bytes]]:
    codes, _, _ = planted_codes(n, max(1, n // 200), n_bits=256, flip_prob=flip_prob, random_state=seed)
    return [f"p{i:09d}" for i in range(n)], to_bytes(codes)


def encode_events(ids: list[str], hashes: list[bytes], batch_size: int, ts: float | None) -> list[tuple[bytes, bytes, int]]:
    """(key, value, photos) per event; single events if batch_size is 0."""
    if not batch_size:
        return [(i.encode(), encode_photo(i, h, ts=ts), 1) for i, h in zip(ids, hashes)]
    out = []
    for s in range(0, len(ids), batch_size):
        rows = [(i, h, ts) if ts is not None else (i, h) for i, h in zip(ids[s:s + batch_size], hashes[s:s + batch_size])]
        out.append((ids[s].encode(), encode_batch(rows), len(rows)))
    return out


class Producing:
    """Produces to the input topic (optionally rate-limited, ts = produce time) and times it."""

    def __init__(self, settings: Settings, ids: list[str], hashes: list[bytes], batch_size: int,
                 rate: float = 0.0, stamp: bool = True) -> None:
        self.settings, self.ids, self.hashes, self.batch_size = settings, ids, hashes, batch_size
        self.rate, self.stamp = rate, stamp
        self.t_first: float | None = None
        self.t_done: float | None = None
        self.delivered = 0
        self.errors: list[str] = []
        self.thread: threading.Thread | None = None

    def _report(self, err: Any, msg: Any) -> None:
        if err is None:
            self.delivered += 1
        elif len(self.errors) < 5:
            self.errors.append(str(err))

    def run(self) -> None:
        producer = make_producer(self.settings)
        topic, n, step = self.settings.input_topic, len(self.ids), max(self.batch_size, 1)
        poll = producer.poll
        self.t_first = time.time()
        started = time.perf_counter()
        for s in range(0, n, step):
            ts = time.time() if self.stamp else None
            if self.batch_size:
                chunk = slice(s, min(s + step, n))
                rows = [(i, h, ts) if ts is not None else (i, h) for i, h in zip(self.ids[chunk], self.hashes[chunk])]
                key, value, k = self.ids[s].encode(), encode_batch(rows), len(rows)
            else:
                key, value, k = self.ids[s].encode(), encode_photo(self.ids[s], self.hashes[s], ts=ts), 1
            produce_waiting(producer, topic, value, key, on_delivery=self._report)
            poll(0)
            if self.rate > 0:
                ahead = (s + k) / self.rate - (time.perf_counter() - started)
                if ahead > 0:
                    time.sleep(ahead)
        producer.flush(120)
        self.t_done = time.time()

    def start(self) -> "Producing":
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    def summary(self) -> dict[str, Any]:
        seconds = (self.t_done or time.time()) - (self.t_first or time.time())
        events = (len(self.ids) + max(self.batch_size, 1) - 1) // max(self.batch_size, 1)
        return {"events": events, "delivered": self.delivered, "errors": self.errors,
                "seconds": round(seconds, 3), "photos_per_s": round(len(self.ids) / seconds, 1) if seconds else None}


class OutputReader(threading.Thread):
    """Reads an output topic from the beginning; keeps (arrival wall time, ts_in, ts_out) per event."""

    def __init__(self, settings: Settings, topic: str) -> None:
        super().__init__(daemon=True)
        self.consumer = Consumer(settings.confluent_config(**{
            "group.id": f"bench-reader-{uuid.uuid4().hex}", "enable.auto.commit": False,
            "auto.offset.reset": "earliest", "fetch.max.bytes": 64 * 1024 * 1024}))
        self.topic = topic
        parts = sorted(self.consumer.list_topics(topic, timeout=30).topics[topic].partitions)
        self.tps = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts]
        self.consumer.assign(self.tps)
        self.values: list[bytes] = []
        self.arrivals: list[float] = []
        self.last_arrival: float | None = None
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        try:
            while not self.stop_flag.is_set():
                messages = self.consumer.consume(10_000, timeout=0.1)
                if not messages:
                    continue
                now = time.time()
                good = [m.value() for m in messages if not m.error()]
                with self.lock:
                    self.values.extend(good)
                    self.arrivals.extend([now] * len(good))
                    if good:
                        self.last_arrival = now
        finally:
            self.consumer.close()

    def count(self) -> int:
        with self.lock:
            return len(self.values)

    def finish(self) -> None:
        self.stop_flag.set()
        self.join(15)


def output_end(settings: Settings, topic: str) -> int:
    c = Consumer(settings.confluent_config(**{"group.id": f"bench-hw-{uuid.uuid4().hex}"}))
    try:
        parts = c.list_topics(topic, timeout=30).topics[topic].partitions
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
    finally:
        c.close()


def latencies(values: list[bytes], arrivals: list[float] | None = None) -> dict[str, Any]:
    lat = []
    outcomes: dict[str, int] = {}
    w0_end = None
    for j, v in enumerate(values):
        e = decode_assignment(v)
        lat.append(e["ts_out"] - e["ts_in"])
        outcomes[e["outcome"]] = outcomes.get(e["outcome"], 0) + 1
        if arrivals is not None and e["window"] == 0:
            w0_end = arrivals[j] if w0_end is None else max(w0_end, arrivals[j])
    a = np.asarray(lat)
    if not len(a):
        return {"outcomes": outcomes, "window0_last_arrival": w0_end}
    return {"outcomes": outcomes, "window0_last_arrival": w0_end, "latency_s": {
        "p50": round(float(np.percentile(a, 50)), 3), "p90": round(float(np.percentile(a, 90)), 3),
        "p99": round(float(np.percentile(a, 99)), 3), "max": round(float(a.max()), 3),
        "mean": round(float(a.mean()), 3)}}


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmHWM", "VmRSS")):
                name, value = line.split(":", 1)
                out[name] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


# -- runs ------------------------------------------------------------------------------------------


RUN_IDS: list[str] = []  # of this benchmark's runs: their topics are deleted at the end


def run_settings(args: argparse.Namespace, tag: str, window: int, max_wait_s: float) -> Settings:
    run = f"bench-{tag}-{uuid.uuid4().hex[:10]}"
    RUN_IDS.append(run)
    ahead = {} if args.forward_ahead_windows is None else {"forward_ahead_windows": args.forward_ahead_windows}
    return Settings().with_topic_prefix(
        run, bootstrap_servers=args.bootstrap, window_size=window, max_wait_s=max_wait_s, pending_idle_s=0.0,
        data_dir=str(Path(args.workdir) / run), web_port=ks.free_port(), seed=args.seed, log_level="info", **ahead,
    )


def run_worker(args: argparse.Namespace, kind: str, batch_size: int, ids: list[str], hashes: list[bytes],
               window: int, rate: float = 0.0, settings: Settings | None = None) -> tuple[dict[str, Any], Settings]:
    """kind: backlog (settings given, topic already filled), live-max or live-rate."""
    n = len(ids)
    if settings is None:
        settings = run_settings(args, kind, window, args.live_max_wait_s)
        ensure_topics(settings)
    worker = ks.WorkerProcess(kind, settings, Path(args.workdir) / f"{settings.app_id}.worker.log")
    reader = OutputReader(settings, settings.output_topic)
    reader.start()
    result: dict[str, Any] = {"kind": kind, "batch_size": batch_size, "photos": n, "window": window,
                              "max_wait_s": settings.max_wait_s, "input_topic": settings.input_topic}
    producing = None
    try:
        t_spawn = time.time()
        worker.start()
        deadline = time.monotonic() + 120
        while not (worker.stats() or {}).get("ready"):
            worker.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker not ready\n{worker.log_tail()}")
            time.sleep(0.1)
        t_ready = time.time()
        result["startup_s"] = round(t_ready - t_spawn, 2)
        if kind != "backlog":
            producing = Producing(settings, ids, hashes, batch_size, rate=rate, stamp=True).start()
        deadline = time.monotonic() + args.timeout
        stats: dict[str, Any] = {}
        while True:
            worker.check_alive()
            stats = worker.stats() or stats
            # Every photo was taken by the join stage, and every photo it forwarded was clustered
            # by the found stage (or is held in its pending pool).
            forwarded = stats.get("join", {}).get("forwarded", 0)
            if (stats.get("photos_in", 0) + stats.get("dlq_rows", 0) >= n
                    and stats.get("found", {}).get("photos_in", 0) >= forwarded):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"timeout: /stats {stats}\n{worker.log_tail()}")
            time.sleep(0.1)
        end = output_end(settings, settings.output_topic)
        while reader.count() < end and time.monotonic() < deadline:
            time.sleep(0.05)
        status = proc_status(worker.proc.pid)
        stats = worker.stats() or stats
    finally:
        if producing is not None:
            producing.join(120)
        reader.finish()
        worker.stop()
    t_start = t_ready if kind == "backlog" else producing.t_first
    seconds = reader.last_arrival - t_start
    result.update({
        "clock": "worker ready -> last assignment" if kind == "backlog" else "first produce -> last assignment",
        "seconds": round(seconds, 3), "photos_per_s": round(n / seconds, 1),
        "assignments": reader.count(), "held_at_end": stats.get("pending"), "clusters": stats.get("clusters"),
        "windows": stats.get("windows"), "dlq": stats.get("dlq_events", 0) + stats.get("dlq_rows", 0),
        "last_window": stats.get("last_window"),
        "worker_vmhwm_mb": round(status.get("VmHWM", 0) / 2**20, 1),
        "worker_vmrss_mb": round(status.get("VmRSS", 0) / 2**20, 1),
        "worker_exit_code": worker.exit_code, "worker_log": str(worker.log_path),
    })
    if producing is not None:
        result["producer"] = producing.summary()
        result["target_rate"] = rate or None
    lat = latencies(reader.values, reader.arrivals)
    w0_end = lat.pop("window0_last_arrival")
    if kind == "live-rate":
        result.update(lat)
    else:
        result["outcomes"] = lat["outcomes"]
    if kind == "backlog" and w0_end is not None and n > window and reader.last_arrival > w0_end:
        # Steady state: the photos after the first window (N - window; exact when the batch size
        # divides the window) over the time from window 0's last assignment to the last one.
        result["after_window0"] = {"photos": n - window, "seconds": round(reader.last_arrival - w0_end, 3),
                                   "photos_per_s": round((n - window) / (reader.last_arrival - w0_end), 1)}
    return result, settings


def run_baseline(args: argparse.Namespace, settings: Settings, n: int, batch_size: int) -> dict[str, Any]:
    """The plain confluent-kafka loop on the worker's backlog topic (read from the beginning)."""
    s = settings
    out_topic = f"{s.input_topic}.baseline-out"
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(s.confluent_config())
    for f in admin.create_topics([NewTopic(out_topic, s.partitions, 1)]).values():
        f.result(30)
    decoder = PhotoDecoder(n_bits=s.n_bits)
    clusterer = OnlineClusterer(
        n_bits=s.n_bits, window_size=s.window_size + decoder.max_batch_rows, new_centers_ratio=s.new_centers_ratio,
        radius=s.radius, min_cluster_size=s.min_cluster_size, pending_capacity=s.pending_capacity,
        max_iter=s.max_iter, random_state=s.seed)
    consumer = Consumer(s.confluent_config(**{
        "group.id": f"{s.app_id}-baseline", "enable.auto.commit": False, "auto.offset.reset": "earliest",
        "fetch.max.bytes": 64 * 1024 * 1024}))
    parts = sorted(consumer.list_topics(s.input_topic, timeout=30).topics[s.input_topic].partitions)
    consumer.assign([TopicPartition(s.input_topic, p, OFFSET_BEGINNING) for p in parts])
    publisher = RecordPublisher(s)  # the worker's own output path: raises if a record fails
    ids: list[str] = []
    hashes: list[bytes] = []
    ts_in: list[float] = []
    offsets: dict[int, int] = {}
    opened = 0.0
    done = windows = assigned = 0
    timings = {"consume_decode": 0.0, "process": 0.0, "publish_commit": 0.0}

    def close_window() -> None:
        nonlocal ids, hashes, ts_in, offsets, done, windows, assigned
        t0 = time.perf_counter()
        codes = from_bytes(hashes, s.n_bits)
        result = clusterer.process(ids, codes, time.time())
        t1 = time.perf_counter()
        records = window_records(result, ts_in, time.time())  # the worker's own encoding
        publisher.publish(out_topic, records)
        consumer.commit(offsets=[TopicPartition(s.input_topic, p, o) for p, o in offsets.items()], asynchronous=False)
        timings["process"] += t1 - t0
        timings["publish_commit"] += time.perf_counter() - t1
        done += len(ids)
        windows += 1
        assigned += len(records)
        ids, hashes, ts_in, offsets = [], [], [], {}

    deadline = time.monotonic() + args.timeout
    w0: list[float] = []
    t_start = time.time()
    try:
        while done < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"baseline timeout after {done} photos")
            tc = time.perf_counter()
            messages = consumer.consume(10_000, timeout=0.25)
            for m in messages:
                if m.error():
                    continue
                if not ids:
                    opened = time.monotonic()
                d = decoder.decode(m.value(), m.key())
                if d.ids:
                    default_ts = m.timestamp()[1] / 1000.0
                    ids.extend(d.ids)
                    hashes.extend(d.hashes)
                    ts_in.extend(default_ts if t is None else t for t in d.ts)
                offsets[m.partition()] = m.offset() + 1
                if len(ids) >= s.window_size:
                    timings["consume_decode"] += time.perf_counter() - tc
                    close_window()
                    if windows == 1:
                        w0.append(time.time())
                    tc = time.perf_counter()
            timings["consume_decode"] += time.perf_counter() - tc
            if ids and (time.monotonic() - opened >= s.max_wait_s):
                close_window()
                if windows == 1:
                    w0.append(time.time())
        t_end = time.time()
    finally:
        consumer.close()
    seconds = t_end - t_start
    return {"kind": "baseline", "batch_size": batch_size, "photos": n, "window": s.window_size,
            "max_wait_s": s.max_wait_s, "clock": "first consume -> last window flushed + committed",
            "seconds": round(seconds, 3), "photos_per_s": round(n / seconds, 1), "windows": windows,
            "assignments": assigned, "held_at_end": clusterer.n_pending_, "clusters": clusterer.n_clusters_,
            "phase_seconds": {k: round(v, 3) for k, v in timings.items()},
            **({"after_window0": {"photos": n - s.window_size, "seconds": round(t_end - w0[0], 3),
                                  "photos_per_s": round((n - s.window_size) / (t_end - w0[0]), 1)}}
               if w0 and n > s.window_size and t_end > w0[0] else {})}


def backlog_topic(args: argparse.Namespace, tag: str, window: int, ids: list[str], hashes: list[bytes],
                  batch_size: int) -> tuple[Settings, dict[str, Any]]:
    settings = run_settings(args, tag, window, args.backlog_max_wait_s)
    ensure_topics(settings)
    p = Producing(settings, ids, hashes, batch_size, stamp=True)
    p.run()
    if p.errors or p.delivered == 0:
        raise RuntimeError(f"backlog produce failed: {p.errors}")
    return settings, p.summary()


def drop_run_topics(bootstrap: str) -> int:
    """Delete the topics of this benchmark's runs (Faust's own included): a broker that keeps the
    gigabytes of every earlier run was measured slower (worker/loop 0.55-0.82 in runs after a
    session's benchmarks and tests had left 1,333 topics, 0.84-0.94 once they were deleted)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topics = [t for t in admin.list_topics(timeout=30).topics if any(run in t for run in RUN_IDS)]
    for future in admin.delete_topics(topics, operation_timeout=60).values() if topics else ():
        future.result()
    return len(topics)


# -- main ------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import confluent_kafka
    import faust

    cpu = ""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = 0
    try:
        mem = int(next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal"))) * 1024
    except (OSError, StopIteration):
        pass
    return {"nproc": os.cpu_count(), "sched_affinity": len(os.sched_getaffinity(0)), "cpu": cpu,
            "mem_gb": round(mem / 2**30, 1), "platform": platform.platform(), "python": platform.python_version(),
            "faust": getattr(faust, "__version__", "?"), "confluent_kafka": confluent_kafka.version()[0],
            "librdkafka": confluent_kafka.libversion()[0]}


def verdict(value: float | None, target: float) -> str:
    return "n/a" if value is None else ("MET" if value >= target else "NOT MET")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=None, help="photos per run (default 200000; quick 40000)")
    ap.add_argument("--window", type=int, default=None, help="window size (default 100000; quick 20000)")
    ap.add_argument("--batch-size", type=int, default=500, help="rows per batch event in batch mode")
    ap.add_argument("--modes", nargs="*", choices=["single", "batch"], default=["single", "batch"])
    ap.add_argument("--kinds", nargs="+", choices=["backlog", "baseline", "live-max", "live-rate"],
                    default=["backlog", "baseline", "live-max", "live-rate"])
    ap.add_argument("--rate-fraction", type=float, default=0.5,
                    help="live-rate runs at this fraction of the mode's backlog throughput")
    ap.add_argument("--rate", type=float, default=None, help="fixed live-rate photos/s (overrides --rate-fraction)")
    ap.add_argument("--backlog-max-wait-s", type=float, default=60.0,
                    help="max_wait_s of backlog/baseline runs (large: windows are full)")
    ap.add_argument("--live-max-wait-s", type=float, default=5.0, help="max_wait_s of live runs (project default 5)")
    ap.add_argument("--forward-ahead-windows", type=float, default=None,
                    help="the worker's forward_ahead_windows (default: the project's; 0: the join stage never holds back)")
    ap.add_argument("--big", action="store_true", help="also a backlog run with --big-window windows")
    ap.add_argument("--big-window", type=int, default=1_000_000)
    ap.add_argument("--big-photos", type=int, default=1_000_000)
    ap.add_argument("--big-mode", choices=["single", "batch"], default="batch")
    ap.add_argument("--flip-prob", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--timeout", type=float, default=1200.0, help="per-run timeout (s)")
    ap.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092"))
    ap.add_argument("--workdir", default=str(REPO / "out" / "bench_stream"))
    ap.add_argument("--out", default=str(REPO / "tests" / "benchmarks" / "results"))
    ap.add_argument("--keep-topics", action="store_true", help="keep the runs' topics (deleted at the end by default)")
    ap.add_argument("--quick", action="store_true", help="40k photos, 20k windows (explicit flags still win)")
    args = ap.parse_args(argv)
    args.photos = args.photos or (40_000 if args.quick else 200_000)
    args.window = args.window or (20_000 if args.quick else 100_000)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)

    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "started_utc": datetime.now(timezone.utc).isoformat(),
        "machine": machine(), "loadavg_before": list(os.getloadavg()), "args": vars(args), "runs": {}}
    from core.warmup import warm_up

    warm_up(256)  # the baseline's Numba kernels compile here, not inside its first window
    ids, hashes = [], []
    if args.modes:
        log(f"generating {args.photos:,} planted photos")
        ids, hashes = planted(args.photos, args.flip_prob, args.seed)
    for mode in args.modes:
        bs = args.batch_size if mode == "batch" else 0
        runs: dict[str, Any] = {}
        report["runs"][mode] = runs
        try:
            if {"backlog", "baseline"} & set(args.kinds):
                log(f"[{mode}] producing the backlog of {args.photos:,} photos")
                settings, prod = backlog_topic(args, mode, args.window, ids, hashes, bs)
                runs["backlog_produce"] = prod
                log(f"[{mode}] backlog produced at {prod['photos_per_s']:,} photos/s")
                if "backlog" in args.kinds:
                    runs["backlog"], _ = run_worker(args, "backlog", bs, ids, hashes, args.window, settings=settings)
                    log(f"[{mode}] worker backlog: {runs['backlog']['photos_per_s']:,} photos/s")
                if "baseline" in args.kinds:
                    runs["baseline"] = run_baseline(args, settings, args.photos, bs)
                    log(f"[{mode}] baseline: {runs['baseline']['photos_per_s']:,} photos/s")
            if "live-max" in args.kinds:
                runs["live-max"], _ = run_worker(args, "live-max", bs, ids, hashes, args.window)
                log(f"[{mode}] worker live-max: {runs['live-max']['photos_per_s']:,} photos/s")
            if "live-rate" in args.kinds:
                ref = (runs.get("backlog") or runs.get("live-max") or {}).get("photos_per_s") or 5000.0
                rate = args.rate or round(args.rate_fraction * ref, -2)
                runs["live-rate"], _ = run_worker(args, "live-rate", bs, ids, hashes, args.window, rate=rate)
                log(f"[{mode}] worker live-rate at {rate:,.0f}/s: latency {runs['live-rate'].get('latency_s')}")
        except Exception as e:  # keep what was measured
            runs["error"] = f"{type(e).__name__}: {e}"[:4000]
            log(f"[{mode}] FAILED: {runs['error'][:2000]}")
    if args.big:
        bs = args.batch_size if args.big_mode == "batch" else 0
        runs = {}
        report["runs"]["big"] = runs
        try:
            log(f"[big] generating {args.big_photos:,} photos, window {args.big_window:,}")
            bids, bhashes = planted(args.big_photos, args.flip_prob, args.seed + 1)
            settings, runs["backlog_produce"] = backlog_topic(args, "big", args.big_window, bids, bhashes, bs)
            del bhashes
            runs["backlog"], _ = run_worker(args, "backlog", bs, bids, [], args.big_window, settings=settings)
            log(f"[big] worker backlog: {runs['backlog']['photos_per_s']:,} photos/s, "
                f"VmHWM {runs['backlog']['worker_vmhwm_mb']} MB")
        except Exception as e:
            runs["error"] = f"{type(e).__name__}: {e}"[:4000]
            log(f"[big] FAILED: {runs['error'][:2000]}")
    report["loadavg_after"] = list(os.getloadavg())
    if not args.keep_topics:
        try:
            log(f"deleted the {drop_run_topics(args.bootstrap)} topics of this benchmark's runs")
        except Exception as e:  # the results stand without it
            log(f"could not delete this benchmark's topics: {e}")
    report["finished_utc"] = datetime.now(timezone.utc).isoformat()

    # -- table, ratios, targets
    lines = []
    hdr = f"{'mode':<7} {'run':<10} {'photos':>9} {'window':>9} {'seconds':>8} {'photos/s':>10} {'windows':>7} " \
          f"{'assigned':>9} {'held':>7} {'p50 s':>7} {'p99 s':>7} {'VmHWM MB':>9} {'after-w0/s':>10}"
    lines += [hdr, "-" * len(hdr)]
    for mode, runs in report["runs"].items():
        for kind in ("backlog", "baseline", "live-max", "live-rate"):
            r = runs.get(kind)
            if not r:
                continue
            lat = r.get("latency_s") or {}
            label = kind if kind != "live-rate" else f"live@{int(r.get('target_rate') or 0)}"
            lines.append(f"{mode:<7} {label:<10} {r['photos']:>9,} {r['window']:>9,} {r['seconds']:>8.2f} "
                         f"{r['photos_per_s']:>10,.0f} {r.get('windows') or 0:>7} {r.get('assignments') or 0:>9,} "
                         f"{r.get('held_at_end') or 0:>7,} {lat.get('p50', ''):>7} {lat.get('p99', ''):>7} "
                         f"{r.get('worker_vmhwm_mb', ''):>9} "
                         f"{(r.get('after_window0') or {}).get('photos_per_s', ''):>10}")
        if runs.get("error"):
            lines.append(f"{mode:<7} ERROR: {runs['error'][:200]}")
    ratios = {}
    for mode in args.modes:
        runs = report["runs"].get(mode, {})
        if runs.get("backlog") and runs.get("baseline"):
            ratios[mode] = round(runs["backlog"]["photos_per_s"] / runs["baseline"]["photos_per_s"], 3)
            lines.append(f"{mode}: worker/baseline backlog throughput = {ratios[mode]:.3f}")
            a, b = runs["backlog"].get("after_window0"), runs["baseline"].get("after_window0")
            if a and b:
                ratios[f"{mode}_after_window0"] = round(a["photos_per_s"] / b["photos_per_s"], 3)
                lines.append(f"{mode}: worker/baseline after window 0 = {ratios[f'{mode}_after_window0']:.3f}")
    report["worker_over_baseline"] = ratios
    targets = {}
    for mode, key in (("single", "single_100k"), ("batch", "batch_100k")):
        runs = report["runs"].get(mode, {})
        text, goal = TARGETS[key]
        for kind in ("backlog", "live-max"):
            r = runs.get(kind)
            if r:
                v = verdict(r["photos_per_s"], goal)
                if args.window != 100_000:
                    v += f" (measured with window {args.window:,}, target is for 100,000)"
                targets[f"{key}:{kind}"] = {"target": text, "measured": r["photos_per_s"], "verdict": v}
    big = report["runs"].get("big", {}).get("backlog")
    if big:
        ok = big["photos_per_s"] >= 4_200 and big["worker_vmhwm_mb"] < 2048
        targets["big_1m:backlog"] = {"target": TARGETS["big_1m"][0], "measured": big["photos_per_s"],
                                     "vmhwm_mb": big["worker_vmhwm_mb"],
                                     "verdict": ("MET" if ok else "NOT MET") + (
                                         f" (window {big['window']:,})" if big["window"] != 1_000_000 else "")}
    report["targets"] = targets
    lines.append("")
    lines.append("targets (information only):")
    for k, t in targets.items():
        lines.append(f"  {k:<22} {t['verdict']:<8} measured {t['measured']:,.0f} photos/s"
                     + (f", VmHWM {t['vmhwm_mb']} MB" if "vmhwm_mb" in t else "") + f"  [{t['target']}]")
    lines.append(f"loadavg before {report['loadavg_before']}, after {report['loadavg_after']}; "
                 f"nproc {report['machine']['nproc']}")
    report["table"] = lines
    print("\n".join(lines))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"stream_{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
