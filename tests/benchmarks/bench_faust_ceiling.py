"""Faust's own ceiling on this machine: how many single events per second an agent that does
nothing with them can take from the local broker. A script, not a pytest test.

The worker's single-event throughput (bench_stream.py) is bounded by this: Faust 0.15.3 turns
every Kafka record into a message and an event, runs sensors, and waits on the agent's queue for
each one. This measures that cost alone, so the worker's figure can be read against it. Two
agents are timed on the same backlog of N single events (about 100 bytes, as photo-hash events):

* take : ``stream.noack_take(2000, within=0.25)`` and an ack per event (the worker's loop);
* plain: ``async for event in stream.events()`` (Faust acks).

Usage:
    python tests/benchmarks/bench_faust_ceiling.py [--events 200000] [--out tests/benchmarks/results]
Broker: ``KAFKA_BOOTSTRAP_SERVERS`` or 127.0.0.1:19092 (``bash deploy/kafka/broker.sh start``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # streams/, from a source checkout
BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")
AGENTS = ("take", "plain")


def run_agent(topic: str, n_events: int, agent: str) -> None:
    """The Faust app, in its own process: counts n_events, prints RESULT <seconds>, exits."""
    import faust

    app = faust.App(f"ceiling-{topic}-{agent}", broker=f"kafka://{BOOTSTRAP}", store="memory://",
                    web_enabled=False, consumer_auto_offset_reset="earliest", topic_partitions=1,
                    stream_wait_empty=False)
    source = app.topic(topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    counted = {"n": 0, "started": 0.0}

    def count(n: int) -> None:
        if not counted["started"]:
            counted["started"] = time.perf_counter()
        counted["n"] += n
        if counted["n"] >= n_events:
            print(f"RESULT {time.perf_counter() - counted['started']:.4f}", flush=True)
            os._exit(0)

    if agent == "take":
        @app.agent(source)
        async def take(stream):
            async for events in stream.noack_take(2000, within=0.25):
                for event in events:
                    event.message.ack(app.consumer)
                count(len(events))
    else:
        @app.agent(source)
        async def plain(stream):
            async for _ in stream.events():
                count(1)

    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    app.main()


def produce_backlog(topic: str, n_events: int) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    from streams.config import Settings
    from streams.kafka_io import RecordPublisher

    admin = AdminClient(Settings(bootstrap_servers=BOOTSTRAP).confluent_config())
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    value = os.urandom(90)
    RecordPublisher(Settings(bootstrap_servers=BOOTSTRAP)).publish(
        topic, [(f"photo-{i:09d}".encode(), value) for i in range(n_events)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--out", default="tests/benchmarks/results")
    ap.add_argument("--agent", choices=AGENTS, help=argparse.SUPPRESS)
    ap.add_argument("--topic", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.agent:
        run_agent(args.topic, args.events, args.agent)
        return

    results = {}
    for agent in AGENTS:
        topic = f"faust-ceiling-{uuid.uuid4().hex[:10]}"
        produce_backlog(topic, args.events)
        done = subprocess.run([sys.executable, __file__, "--agent", agent, "--topic", topic, "--events", str(args.events)],
                              capture_output=True, text=True, timeout=1200)
        lines = [line for line in (done.stdout + done.stderr).splitlines() if "RESULT" in line]
        if not lines:
            raise RuntimeError(f"agent {agent} gave no result:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        seconds = float(lines[-1].split("RESULT")[-1])
        results[agent] = {"events": args.events, "seconds": round(seconds, 3), "events_per_s": round(args.events / seconds, 1)}
        print(f"{agent:6s} {args.events:,} events in {seconds:.2f} s: {args.events / seconds:,.0f} events/s", flush=True)

    import faust

    record = {
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "started_utc": datetime.now(timezone.utc).isoformat(),
        "machine": {"nproc": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "faust": faust.__version__, "loadavg": os.getloadavg()},
        "bootstrap": BOOTSTRAP,
        "results": results,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"faust_ceiling_{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(record, indent=1))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
