"""Faults on the real broker: a worker killed mid-window, a graceful stop, a broker restart.

Every photo produced must get a final outcome, none may be lost, and the duplicates a fault can
cause are counted and bounded:

* SIGKILL: Kafka redelivers every event after the group's last committed offset; the restarted
  worker skips those its restored state already reflects (the state records carry their input
  offsets). Only photos whose outcome was "in flight" -- emitted by a window whose state and
  offsets were not yet written -- can get a second outcome; with exactly_once, none.
* SIGTERM: the worker finishes its closed windows, commits and exits 0; the partial window is
  redelivered but had no outcome yet, so the restart emits no duplicate.
* Broker restart: the worker reconnects by itself and carries on.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter

import numpy as np
import pytest
from kafka_support import (
    AssignmentReader,
    DeadLetterReader,
    PrivateBroker,
    centers_history,
    get_json,
    free_port,
    labels_of,
    photo_events,
    photo_ids,
    produce_events,
    wait_for,
)

from core.codes import to_bytes
from core.purity import purity
from core.synth import planted_codes
from streams.kafka_io import consumer_lag

pytestmark = [pytest.mark.kafka, pytest.mark.faults]

N_PHOTOS = 40_000
N_CENTERS = 200
FLIP = 0.1
BATCH = 250
WINDOW = 5_000


def _stream(seed: int, new_clusters_later: bool = False) -> tuple[list[str], list[tuple[bytes, bytes]], np.ndarray]:
    """The photos, in batch events, and their true clusters. ``new_clusters_later``: the photos of
    half of the clusters come first, those of the other half after them."""
    codes, truth, _ = planted_codes(N_PHOTOS, N_CENTERS, flip_prob=FLIP, random_state=seed)
    if new_clusters_later:
        order = np.argsort(truth >= N_CENTERS // 2, kind="stable")
        codes, truth = codes[order], truth[order]
    ids = photo_ids(0, N_PHOTOS)
    return ids, photo_events(ids, to_bytes(codes), batch_size=BATCH), truth


def _produce_slowly(settings, events, per_second: float) -> threading.Thread:
    """Produce ``events`` in the background at about ``per_second`` events a second; the thread's
    ``placed`` holds their (partition, offset), in order."""
    def run() -> None:
        step = max(1, int(per_second / 10))
        for start in range(0, len(events), step):
            thread.placed += produce_events(settings, events[start:start + step])
            time.sleep(0.1)

    thread = threading.Thread(target=run, daemon=True)
    thread.placed = []
    thread.start()
    return thread


def _all_dead_letters(settings, n: int) -> list[dict]:
    reader = DeadLetterReader(settings)
    try:
        return reader.collect(n, timeout=60)
    finally:
        reader.close()


def _committed(settings) -> int:
    rows = consumer_lag(settings)
    assert len(rows) == 1, rows
    return rows[0].committed or 0


def _wait_mid_window(worker, timeout: float = 60.0) -> dict:
    """Poll /stats until a window is being clustered or published, i.e. mid-window."""
    deadline = time.monotonic() + timeout
    stats = None
    while time.monotonic() < deadline:
        stats = worker.stats()
        if stats and stats["windows"] >= 1 and stats["windows_in_flight"] > 0:
            return stats
        time.sleep(0.02)
    raise AssertionError(f"never saw a window in flight within {timeout:.0f}s (last /stats {stats})\n{worker.log_tail()}")


# exactly_once lost 500 of 40,000 outcomes in 2 of its first 10 runs, to a Faust recovery race
# (the first events after the committed offset never reached the agent). The worker now takes each
# partition's events strictly in offset order and seeks back on a gap (its rules are unit-tested
# in tests/test_input_order.py); the race has not recurred in the runs since.


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_sigkill_mid_window_loses_nothing(settings_factory, worker_factory, guarantee, record_property):
    settings = settings_factory(window_size=WINDOW, pending_idle_s=3.0, processing_guarantee=guarantee)
    # The slow half's photos belong to clusters that the first half did not have: the join stage
    # cannot join them, so the windows being killed hold photos to cluster (a window of join
    # counts alone passes too quickly to be caught in flight).
    ids, events, truth = _stream(seed=21, new_clusters_later=True)
    first = len(events) // 2
    worker_a = worker_factory(settings, name="A")
    placed = produce_events(settings, events[:first])
    wait_for(lambda: (s := worker_a.stats()) and s["windows"] >= 2, 120, what="worker A: two windows done")
    # A bad event after every 10th event of the slow half: dead letters in flight at the kill too.
    slow = [event for n, event in enumerate(events[first:])
            for event in ([event, (b"bad", b"\xc1 not msgpack")] if n % 10 == 0 else [event])]
    producer = _produce_slowly(settings, slow, per_second=40)
    stats_at_kill = _wait_mid_window(worker_a)
    worker_a.kill()
    producer.join(120)
    assert not producer.is_alive(), "the producer did not finish"
    committed = _committed(settings)

    reader = AssignmentReader(settings)
    try:
        reader.drain(10)
        outcomes_a = dict(reader.result.final)
        worker_b = worker_factory(settings, name="B")
        try:
            result = reader.collect(ids, timeout=180, workers=[worker_b])
        except AssertionError:
            print("B /stats:", worker_b.stats())
            raise
        wait_for(lambda: (s := worker_b.stats()) and s["pending"] == 0 and s, 60, what="worker B: pending pool empty")
        reader.drain(10)
    finally:
        reader.close()

    # A photo's outcome was "in flight" when A emitted it for an input event whose offset it had not
    # committed (the join stage), or in a window whose state and offsets it had not committed (the
    # found stage): B redoes both and may emit those outcomes again.
    restored = re.search(r"event=state_restored clusters=\d+ pending=\d+ windows=(\d+)", worker_b.log_path.read_text())
    assert restored, worker_b.log_tail()
    first_window_b = int(restored.group(1))
    photo_placed = placed + [where for (key, _), where in zip(slow, producer.placed) if key != b"bad"]
    bad_offsets = [where[1] for (key, _), where in zip(slow, producer.placed) if key == b"bad"]
    uncommitted = {ids[i] for i in range(len(ids)) if photo_placed[i // BATCH][1] >= committed}
    in_flight = {photo for photo, event in outcomes_a.items()
                 if event["window"] >= first_window_b or photo in uncommitted}
    duplicates = sum(result.duplicates.values())
    record_property("duplicates", duplicates)
    record_property("in_flight_photos", len(in_flight))
    print(f"[{guarantee}] killed at {stats_at_kill['windows']} windows done, {stats_at_kill['windows_in_flight']} in "
          f"flight; committed offset {committed}; B restarted at window {first_window_b}; {len(in_flight)} photos had "
          f"an uncommitted outcome; {duplicates} duplicate outcomes")

    missing = [i for i in ids if i not in result.final]
    assert not missing, f"{len(missing)} photos lost after the SIGKILL, e.g. {missing[:5]}"
    assert set(result.final) == set(ids), "outcomes for ids never produced"
    outside = [i for i in result.duplicates if i not in in_flight]
    assert not outside, f"duplicates of photos whose outcome A had committed: {outside[:5]}"
    assert all(n == 1 for n in result.duplicates.values()), result.duplicates.most_common(3)
    if guarantee == "exactly_once":
        assert duplicates == 0, f"exactly_once: {duplicates} duplicate outcomes, e.g. {result.duplicates.most_common(5)}"
    labels = labels_of(result, ids)
    assert purity(labels, truth, ignore_noise=True) >= 0.95

    # Every bad event has its dead letter; only one whose offset A had not committed may have two,
    # and none with exactly_once.
    letters = Counter(letter["offset"] for letter in _all_dead_letters(settings, len(bad_offsets)))
    assert set(letters) == set(bad_offsets), (sorted(letters), bad_offsets)
    twice = [offset for offset, n in letters.items() if n > 1]
    assert all(offset >= committed for offset in twice), (twice, committed)
    if guarantee == "exactly_once":
        assert not twice, f"exactly_once: dead letters written twice for offsets {twice}"

    # No cluster id ever had two centers in the public centers topic, and the restarted worker
    # serves exactly its centers.
    history = centers_history(settings)
    n_clusters = worker_b.stats()["clusters"]
    assert len(history) == n_clusters, (len(history), n_clusters)
    for cluster_id in range(n_clusters):
        served = get_json(f"http://127.0.0.1:{settings.web_port}/clusters/{cluster_id}")
        assert served is not None and served["center"] == history[cluster_id], (cluster_id, served)


def test_graceful_stop_commits_and_restart_emits_no_duplicates(settings_factory, worker_factory):
    settings = settings_factory(window_size=WINDOW, pending_idle_s=3.0)
    ids, events, truth = _stream(seed=22)
    first = len(events) // 2
    worker_a = worker_factory(settings, name="A")
    produce_events(settings, events[:first])
    wait_for(lambda: (s := worker_a.stats()) and s["windows"] >= 2, 120, what="worker A: two windows done")
    producer = _produce_slowly(settings, events[first:], per_second=40)
    _wait_mid_window(worker_a)
    started = time.monotonic()
    code = worker_a.stop(timeout=90)
    print(f"graceful stop took {time.monotonic() - started:.1f}s")
    assert code == 0, f"worker A exited {code} after SIGTERM\n{worker_a.log_tail()}"
    assert "event=drain drained=True" in worker_a.log_path.read_text(), worker_a.log_tail()
    producer.join(120)
    assert not producer.is_alive(), "the producer did not finish"

    worker_b = worker_factory(settings.replace(web_port=free_port()), name="B")
    reader = AssignmentReader(settings)
    try:
        result = reader.collect(ids, timeout=180, workers=[worker_b])
    finally:
        reader.close()
    assert sum(result.duplicates.values()) == 0, (
        f"a graceful stop must not cause duplicates: {result.duplicates.most_common(5)}")
    assert set(result.final) == set(ids)
    assert purity(labels_of(result, ids), truth, ignore_noise=True) >= 0.95


def test_worker_survives_a_broker_restart(settings_factory, worker_factory, tmp_path):
    broker = PrivateBroker(tmp_path / "kafka")
    broker.run("start", "--fresh")
    worker = None
    try:
        settings = settings_factory(bootstrap_servers=broker.bootstrap, window_size=WINDOW, pending_idle_s=3.0)
        ids, events, truth = _stream(seed=23)
        first = len(events) // 2
        worker = worker_factory(settings, name="W")
        produce_events(settings, events[:first])
        wait_for(lambda: (s := worker.stats()) and s["windows"] >= 2, 120, what="two windows done")
        broker.run("stop")
        time.sleep(5)
        worker.check_alive()
        broker.run("start")
        produce_events(settings, events[first:])
        reader = AssignmentReader(settings)
        try:
            result = reader.collect(ids, timeout=240, workers=[worker])
        finally:
            reader.close()
        worker.check_alive()
        assert set(result.final) == set(ids), "photos lost across the broker restart"
        print(f"broker restart: {sum(result.duplicates.values())} duplicate outcomes, "
              f"outcomes {Counter(e['outcome'] for e in result.final.values())}")
        assert purity(labels_of(result, ids), truth, ignore_noise=True) >= 0.95
        wait_for(lambda: (s := worker.stats()) and s["ready"], 60, what="worker ready again")
    finally:
        if worker is not None:
            worker.stop()
        broker.run("stop")
