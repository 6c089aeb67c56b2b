"""Helpers for the integration tests against a real Kafka broker: worker subprocesses, readers of
the assignment and dead-letter topics, planted data. Imported by conftest.py and the test modules.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from streams.codecs import decode_assignment, decode_dlq, encode_batch, encode_photo
from streams.config import Settings
from streams.kafka_io import make_producer, produce_waiting

REPO = Path(__file__).resolve().parents[2]
BROKER_SH = REPO / "deploy" / "kafka" / "broker.sh"
READY_TIMEOUT_S = 90.0
OUTCOMES = {"joined", "founded", "noise"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unique_settings(bootstrap: str, data_dir: Path, **overrides: Any) -> Settings:
    """Settings with a fresh app id and topics (uuid), small windows, quick flushes; one input
    partition (what the single-worker tests reason about; the tests of many workers ask for more)."""
    run = f"it-{uuid.uuid4().hex[:12]}"
    values: dict[str, Any] = dict(
        bootstrap_servers=bootstrap,
        partitions=1,
        window_size=5000,
        max_wait_s=1.0,
        pending_idle_s=2.0,
        data_dir=str(data_dir),
        web_port=free_port(),
        log_level="info",
    )
    values.update(overrides)
    return Settings().with_topic_prefix(run, **values)


def settings_env(settings: Settings) -> dict[str, str]:
    """The process environment that makes ``Settings.load()`` return ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHOTOCLUST_") or k.startswith("PHOTOCLUST_KAFKA_")}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    env["PYTHONUNBUFFERED"] = "1"
    env.update({f"PHOTOCLUST_{k.upper()}": str(v) for k, v in dataclasses.asdict(settings).items()})
    return env


def get_json(url: str, timeout: float = 2.0) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


def tail_text(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"<no log: {e}>"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class WorkerProcess:
    """One ``python -m streams worker`` subprocess and its log file."""

    name: str
    settings: Settings
    log_path: Path
    proc: subprocess.Popen | None = None
    exit_code: int | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def stats_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.web_port}/stats"

    @property
    def env(self) -> dict[str, str]:
        return {**settings_env(self.settings), **self.extra_env}

    def start(self) -> "WorkerProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "streams", "worker"], env=self.env, cwd=REPO,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stats(self) -> dict[str, Any] | None:
        return get_json(self.stats_url)

    def log_tail(self, lines: int = 60) -> str:
        return f"----- last {lines} lines of {self.name} log {self.log_path} -----\n{tail_text(self.log_path, lines)}"

    def check_alive(self) -> None:
        if not self.alive():
            code = None if self.proc is None else self.proc.returncode
            raise AssertionError(f"worker {self.name} exited with code {code}\n{self.log_tail()}")

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            stats = self.stats()
            if stats and stats.get("ready"):
                return stats
            if time.monotonic() > deadline:
                raise AssertionError(f"worker {self.name} not ready within {timeout:.0f}s (last /stats: {stats})\n"
                                     f"{self.log_tail()}")
            time.sleep(0.5)

    def kill(self) -> None:
        """SIGKILL the worker's whole process group: no chance to commit, flush or close anything."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self.exit_code = self.proc.returncode

    def pause(self) -> None:
        """SIGSTOP the worker's process group: a long pause (GC, a stalled VM) that the group sees as death."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self, timeout: float = 45.0) -> int | None:
        """SIGTERM, wait, then SIGKILL; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with open(self.log_path, "a") as log:
                    log.write(f"\n[test harness] worker did not exit {timeout:.0f}s after SIGTERM: SIGKILL\n")
                self.proc.kill()
                self.proc.wait(30)
        self.exit_code = self.proc.returncode
        return self.exit_code


class PrivateBroker:
    """A broker of broker.sh on this test's own (port, controller port, data dir), so that restarting
    or reconfiguring it disturbs no other test.

    ``config`` holds extra ``key=value`` lines for server.properties (broker.sh ``--config``; they
    come after broker.sh's own lines, so they override them), passed on every start.
    """

    def __init__(self, data_dir: Path, config: Iterable[str] = ()) -> None:
        self.port, self.controller_port = free_port(), free_port()
        self.args = ["--port", str(self.port), "--controller-port", str(self.controller_port),
                     "--data-dir", str(data_dir)]
        self.config = list(config)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def run(self, command: str, *extra: str) -> None:
        config = [arg for kv in self.config for arg in ("--config", kv)] if command == "start" else []
        result = subprocess.run(["bash", str(BROKER_SH), command, *self.args, *config, *extra], cwd=REPO,
                                text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
        assert result.returncode == 0, f"broker.sh {command} exited {result.returncode}:\n{result.stdout}"


# -- data ---------------------------------------------------------------------------------------------


def photo_ids(start: int, n: int) -> list[str]:
    return [f"p{i:09d}" for i in range(start, start + n)]


def noisy_copies(true_centers: np.ndarray, truth: np.ndarray, flip_prob: float, seed: int) -> np.ndarray:
    """Fresh samples of the given true centers: each bit flipped with probability ``flip_prob``."""
    from core.synth import bernoulli_words

    rng = np.random.default_rng(seed)
    n, w = len(truth), true_centers.shape[1]
    return true_centers[truth] ^ bernoulli_words(n * w, flip_prob, rng).reshape(n, w)


def produce_events(settings: Settings, events: Iterable[tuple[bytes | None, bytes | None]],
                   producer: Producer | None = None, topic: str | None = None) -> list[tuple[int, int]]:
    """Produce (key, value) events to the input topic (or ``topic``) in order and wait for every delivery.

    Returns the (partition, offset) of each event, in input order.
    """
    producer = producer or make_producer(settings)
    errors: list[str] = []
    placed: dict[int, tuple[int, int]] = {}

    def on_delivery(index: int) -> Any:
        def report(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(f"event {index}: {err}")
            else:
                placed[index] = (msg.partition(), msg.offset())
        return report

    n = 0
    for key, value in events:
        produce_waiting(producer, topic or settings.input_topic, value, key, on_delivery=on_delivery(n))
        producer.poll(0)
        n += 1
    remaining = producer.flush(60)
    assert remaining == 0, f"{remaining} events still undelivered after 60 s"
    assert not errors, f"{len(errors)} deliveries failed, first: {errors[0]}"
    return [placed[i] for i in range(n)]


def photo_events(ids: list[str], hashes: list[bytes], batch_size: int = 0) -> list[tuple[bytes, bytes]]:
    """Single events (batch_size 0) or batch events of ``batch_size`` rows."""
    if not batch_size:
        return [(i.encode(), encode_photo(i, h)) for i, h in zip(ids, hashes)]
    return [(ids[s].encode(), encode_batch(list(zip(ids[s:s + batch_size], hashes[s:s + batch_size]))))
            for s in range(0, len(ids), batch_size)]


# -- readers ------------------------------------------------------------------------------------------


class TopicReader:
    """Reads one topic from the beginning (all partitions assigned, no group commits)."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.settings = settings
        self.topic = topic
        self.consumer = Consumer(settings.confluent_config(**{
            "group.id": f"it-reader-{uuid.uuid4().hex}", "enable.auto.commit": False,
            "auto.offset.reset": "earliest", "fetch.max.bytes": 64 * 1024 * 1024}))
        metadata = self.consumer.list_topics(topic, timeout=30)
        partitions = sorted(metadata.topics[topic].partitions)
        self.partitions = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions]
        self.consumer.assign(self.partitions)

    def poll(self, timeout: float = 0.5) -> list[Any]:
        messages = self.consumer.consume(10_000, timeout=timeout)
        out = []
        for message in messages:
            if message.error():
                raise AssertionError(f"consumer error on {self.topic}: {message.error()}")
            out.append(message)
        return out

    def at_end(self) -> bool:
        """True when the reader's position has reached the high watermark of every partition."""
        positions = self.consumer.position([TopicPartition(self.topic, tp.partition) for tp in self.partitions])
        for tp in positions:
            _, high = self.consumer.get_watermark_offsets(TopicPartition(self.topic, tp.partition), timeout=10)
            if high > 0 and (tp.offset < 0 or tp.offset < high):
                return False
        return True

    def close(self) -> None:
        self.consumer.close()


@dataclass
class Assignments:
    """Every assignment event read so far, by photo id."""

    final: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: int = 0
    duplicates: Counter = field(default_factory=Counter)  # id -> number of extra outcomes
    bad: list[str] = field(default_factory=list)  # undecodable values

    def add(self, value: bytes) -> None:
        self.events += 1
        try:
            event = decode_assignment(value)
        except ValueError as e:
            self.bad.append(str(e))
            return
        if event["id"] in self.final:
            self.duplicates[event["id"]] += 1
        self.final[event["id"]] = event


class AssignmentReader(TopicReader):
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, settings.output_topic)
        self.result = Assignments()

    def collect(self, expected: Iterable[str], timeout: float, workers: Iterable[WorkerProcess] = ()) -> Assignments:
        """Read until every id of ``expected`` has an outcome (then drain to the log end) or time out."""
        missing = set(expected) - set(self.result.final)
        workers = list(workers)
        deadline = time.monotonic() + timeout
        while missing:
            for message in self.poll():
                self.result.add(message.value())
                key = message.key()
                missing.discard(key.decode() if key is not None else None)
            if missing:
                missing -= set(self.result.final)  # ids whose event keys differ from the id
            for worker in workers:
                worker.check_alive()
            if time.monotonic() > deadline:
                tails = "\n".join(w.log_tail() for w in workers)
                raise AssertionError(
                    f"{len(missing)} ids without an outcome after {timeout:.0f}s "
                    f"(e.g. {sorted(missing)[:5]}); {len(self.result.final)} have one\n"
                    f"{[w.stats() for w in workers]}\n{tails}")
        self.drain()
        return self.result

    def drain(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.poll(0.2):
                self.result.add(message.value())
            if self.at_end():
                return


class DeadLetterReader(TopicReader):
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, settings.dlq_topic)
        self.letters: list[dict[str, Any]] = []

    def collect(self, n: int, timeout: float, workers: Iterable[WorkerProcess] = ()) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        workers = list(workers)
        while len(self.letters) < n:
            for message in self.poll():
                self.letters.append(decode_dlq(message.value()))
            for worker in workers:
                worker.check_alive()
            if time.monotonic() > deadline:
                tails = "\n".join(w.log_tail() for w in workers)
                reasons = [(d["offset"], d["row"], d["reason"]) for d in self.letters]
                raise AssertionError(f"only {len(self.letters)} of {n} dead letters after {timeout:.0f}s: {reasons}\n"
                                     f"{tails}")
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not self.at_end():  # anything unexpected after them
            for message in self.poll(0.2):
                self.letters.append(decode_dlq(message.value()))
        return self.letters


def centers_history(settings: Settings, timeout: float = 60.0) -> dict[int, str]:
    """Every center ever published in the centers topic (its whole log, not only what compaction
    keeps), as hex by cluster id. Raises AssertionError if a cluster id ever had two different codes:
    cluster ids must never be handed out twice."""
    from streams.state import decode_center_block

    reader = TopicReader(settings, settings.centers_topic)
    centers: dict[int, str] = {}
    conflicts: list[str] = []
    try:
        deadline = time.monotonic() + timeout
        while not reader.at_end() and time.monotonic() < deadline:
            for message in reader.poll(0.5):
                if message.value() is None:  # a tombstone: every center of the block retired
                    continue
                block = decode_center_block(message.value())
                for cluster_id, code in zip(block.cluster_ids.tolist(), block.codes):
                    text = code.astype(">u8").tobytes().hex()
                    if centers.setdefault(cluster_id, text) != text:
                        conflicts.append(f"cluster {cluster_id}: {centers[cluster_id]} and, in window {block.window}, {text}")
    finally:
        reader.close()
    assert not conflicts, f"{len(conflicts)} cluster ids with two centers, e.g. {conflicts[:3]}"
    return centers


def labels_of(result: Assignments, ids: list[str]) -> np.ndarray:
    """Cluster id per photo, -1 for noise (and for a missing id)."""
    out = np.full(len(ids), -1, dtype=np.int64)
    for i, photo_id in enumerate(ids):
        event = result.final.get(photo_id)
        if event is not None and event["cluster"] is not None:
            out[i] = event["cluster"]
    return out


def collect_outcomes(settings: Settings, ids: list[str], timeout: float,
                     workers: Iterable[WorkerProcess] = ()) -> "Assignments":
    """Read the assignment topic from the start until every id has its final outcome."""
    reader = AssignmentReader(settings)
    try:
        return reader.collect(ids, timeout=timeout, workers=workers)
    finally:
        reader.close()


def settled(worker: "WorkerProcess", n_photos: int) -> dict[str, Any] | None:
    """The worker's /stats once both stages are done with ``n_photos`` valid photos: the join stage
    took them all and the found stage clustered every one it forwarded (None before that)."""
    stats = worker.stats()
    if (stats and stats["photos_in"] == n_photos and stats["found"]["photos_in"] >= stats["join"]["forwarded"]
            and stats["windows_in_flight"] == 0 and stats["window_fill"] == 0):
        return stats
    return None


def wait_for(predicate: Any, timeout: float, interval: float = 0.5, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout:.0f}s (last value: {last!r})")
