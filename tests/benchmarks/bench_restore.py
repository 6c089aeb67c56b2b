"""Restore benchmark: how long a worker takes to become ready with N centers (default 1,000,000).

The centers and state topics of a fresh run are filled with the records of a clusterer holding N
random centers (what a found stage would have written), then a real worker process
(``python -m streams worker``) is started twice:

1. with a fresh data dir: it reads both topics from the start into its local store;
2. again, with the data dir the first run left: it reads only what the store does not hold yet.

For each start it reports the seconds from process start to ``/stats`` ready, the found stage's own
``restore_seconds``, and the worker's RSS. The broker is ``--bootstrap`` (default: the local
broker of ``deploy/kafka/broker.sh``, which must be running). Saves
``tests/benchmarks/results/restore_<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "integration"))

import kafka_support as ks  # noqa: E402
from report import save_report  # noqa: E402

from core.online import OnlineClusterer  # noqa: E402
from streams.config import Settings  # noqa: E402
from streams.kafka_io import ensure_topics, make_producer, produce_waiting  # noqa: E402
from streams.state import center_records, state_records  # noqa: E402


def fill_topics(settings: Settings, n_centers: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    clusterer = OnlineClusterer(n_bits=settings.n_bits, window_size=settings.window_size + 100_000, random_state=seed)
    codes = rng.integers(0, np.iinfo(np.uint64).max, (n_centers, settings.n_bits // 64), dtype=np.uint64,
                         endpoint=True)
    now = time.time()
    clusterer.add_centers(codes, rng.integers(10, 100, n_centers), np.full(n_centers, now), np.full(n_centers, now))
    centers = center_records(clusterer, clusterer.cluster_ids_, window=0)
    state = state_records(clusterer)
    producer = make_producer(settings, **{"linger.ms": 20})
    started = time.perf_counter()
    for topic, records in ((settings.centers_topic, centers), (settings.state_topic, state)):
        for key, value in records:
            produce_waiting(producer, topic, value, key)
    assert producer.flush(120) == 0, "records still undelivered"
    return {"records": len(centers) + len(state), "bytes": sum(len(v) for _, v in centers + state),
            "produce_seconds": round(time.perf_counter() - started, 2)}


def start_until_ready(settings: Settings, name: str, workdir: Path, timeout: float, expected: int) -> dict[str, float]:
    worker = ks.WorkerProcess(name, settings, workdir / f"{name}.log")
    started = time.monotonic()
    worker.start()
    try:
        stats = worker.wait_ready(timeout)
        ready_s = time.monotonic() - started
        stats = worker.stats() or stats
        result = {"process_start_to_ready_s": round(ready_s, 2), "restore_seconds": stats.get("restore_seconds"),
                  "clusters": stats["clusters"], "rss_mb": round(stats["rss_bytes"] / 2**20, 1)}
    finally:
        worker.stop()
    if result["clusters"] != expected:
        raise AssertionError(f"{name}: {result['clusters']} clusters restored\n{worker.log_tail()}")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--centers", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092"))
    ap.add_argument("--workdir", default=str(REPO / "out" / "bench_restore"))
    ap.add_argument("--out", default=str(REPO / "tests" / "benchmarks" / "results"))
    args = ap.parse_args(argv)

    run = f"restore-{uuid.uuid4().hex[:10]}"
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    settings = Settings().with_topic_prefix(run, bootstrap_servers=args.bootstrap, data_dir=str(workdir / run),
                                            web_port=ks.free_port(), log_level="info")
    ensure_topics(settings)
    filled = fill_topics(settings, args.centers, args.seed)
    print(f"{args.centers:,} centers: {filled['records']:,} records, {filled['bytes'] / 2**20:.0f} MiB "
          f"produced in {filled['produce_seconds']} s")
    fresh = start_until_ready(settings, "fresh", workdir, args.timeout, args.centers)
    print(f"fresh data dir (reads both topics): ready {fresh['process_start_to_ready_s']} s after process start, "
          f"restore {fresh['restore_seconds']} s, RSS {fresh['rss_mb']} MB")
    local = start_until_ready(settings.replace(web_port=ks.free_port()), "local", workdir, args.timeout, args.centers)
    print(f"local store (data dir kept): ready {local['process_start_to_ready_s']} s after process start, "
          f"restore {local['restore_seconds']} s, RSS {local['rss_mb']} MB")
    save_report(args.out, "restore", {"centers": args.centers, "filled": filled, "fresh_data_dir": fresh,
                                      "local_store": local, "machine": os.uname().nodename, "nproc": os.cpu_count()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
