"""Many workers in one consumer group, on the real broker (issue #13): the join stage spreads over
the input partitions, and Kafka makes the owner of the one unjoined partition the founder.

Each test starts real worker processes. A founder that dies or leaves hands the partition to
another worker, which restores the found stage from the topics and goes on with the same cluster
ids: the checks read the whole history of the centers topic and every outcome.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka_support import (
    Assignments,
    WorkerProcess,
    centers_history,
    collect_outcomes,
    free_port,
    get_json,
    labels_of,
    photo_events,
    photo_ids,
    produce_events,
    wait_for,
)

from core.codes import to_bytes
from core.purity import purity
from core.synth import planted_codes
from streams.config import Settings
from streams.replica import HOLD_ENV

pytestmark = pytest.mark.kafka

PARTITIONS = 6
FLIP = 0.1
# The group notices a killed worker after this long: the floor of a failover.
SESSION_TIMEOUT_S = 6.0


def _group_settings(settings_factory: Any, **overrides: Any) -> Settings:
    return settings_factory(partitions=PARTITIONS, session_timeout_s=SESSION_TIMEOUT_S, **overrides)


def _start_group(settings: Settings, worker_factory: Any, tmp_path: Path, n: int, prefix: str = "w",
                 env: dict[str, dict[str, str]] | None = None) -> list[WorkerProcess]:
    """n workers of one group (own data dir and web port each), all ready, one of them the founder."""
    workers = [_start_worker(settings, worker_factory, tmp_path, f"{prefix}{i}", wait=False,
                             env=(env or {}).get(f"{prefix}{i}")) for i in range(n)]
    for worker in workers:
        worker.wait_ready()
    wait_for(lambda: _founder(workers), 60, what="one founder in the group")
    return workers


def _start_worker(settings: Settings, worker_factory: Any, tmp_path: Path, name: str, wait: bool = True,
                  env: dict[str, str] | None = None) -> WorkerProcess:
    return worker_factory(settings.replace(data_dir=str(tmp_path / name), web_port=free_port()), name=name,
                          wait=wait, env=env)


def _founder(workers: list[WorkerProcess]) -> WorkerProcess | None:
    """The one live worker whose found stage owns the unjoined partition and is ready."""
    founders = [w for w in workers if w.alive() and (s := w.stats()) and s["role"] == "founder" and s["ready"]]
    return founders[0] if len(founders) == 1 else None


def _check_outcomes(settings: Settings, result: Assignments, ids: list[str], codes: np.ndarray) -> dict[int, str]:
    """Every id has its final outcome, and each names a cluster whose one center (over the whole
    history of the centers topic) lies at the outcome's distance from the photo."""
    assert not result.bad, result.bad[:3]
    missing = set(ids) - set(result.final)
    assert not missing, f"{len(missing)} photos lost, e.g. {sorted(missing)[:5]}"
    history = centers_history(settings)  # raises if a cluster id ever had two centers
    hashes = dict(zip(ids, to_bytes(codes)))
    wrong = []
    for photo_id, event in result.final.items():
        if event["cluster"] is None:
            continue
        center = history.get(event["cluster"])
        distance = None if center is None else _hamming(hashes[photo_id], bytes.fromhex(center))
        if distance != event["distance"]:
            wrong.append((photo_id, event["cluster"], event["distance"], distance))
    assert not wrong, f"{len(wrong)} outcomes name a cluster whose center is not at their distance: {wrong[:3]}"
    return history


def _hamming(a: bytes, b: bytes) -> int:
    return int.from_bytes(bytes(x ^ y for x, y in zip(a, b)), "big").bit_count()


def _produce_slowly(settings: Settings, events: list[tuple[bytes, bytes]], chunk: int, pause_s: float) -> None:
    for start in range(0, len(events), chunk):
        produce_events(settings, events[start:start + chunk])
        time.sleep(pause_s)


def _new_clusters_throughout(n_photos: int, n_clusters: int, seed: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A planted stream whose clusters appear in turn (photos ordered by cluster, in three groups,
    shuffled within each): every part of the stream has photos the join stage cannot join, so the
    founder is always in the middle of some window."""
    codes, truth, _ = planted_codes(n_photos, n_clusters, flip_prob=FLIP, random_state=seed)
    rng = np.random.default_rng(seed)
    group = truth * 3 // n_clusters
    order = np.lexsort((rng.random(n_photos), group))
    return photo_ids(0, n_photos), codes[order], truth[order]


def _kill_mid_window(settings: Settings, founder: WorkerProcess, events: list[tuple[bytes, bytes]]) -> int:
    """Produce ``events`` slowly until the founder is in the middle of a window, SIGKILL it there;
    returns how many events were produced."""
    for start in range(0, len(events), 5):
        produce_events(settings, events[start:start + 5])
        stats = founder.stats() or {}
        if stats.get("window_fill"):
            founder.kill()
            return start + 5
        time.sleep(0.05)
    raise AssertionError(f"the founder was never seen in the middle of a window\n{founder.log_tail()}")


def test_three_workers_on_six_partitions_cluster_as_one_worker_does(settings_factory, worker_factory, tmp_path):
    """The same planted stream of 300k photos through 1 worker and through 3: every id has exactly
    one outcome, purity within 0.005, the cluster count within 2 %, no cluster id with two centers."""
    n_photos = 300_000
    codes, truth, _ = planted_codes(n_photos, 1500, flip_prob=FLIP, random_state=41)
    ids = photo_ids(0, n_photos)
    events = photo_events(ids, to_bytes(codes), batch_size=500)
    runs = {}
    for n_workers in (1, 3):
        settings = _group_settings(settings_factory, window_size=20_000, pending_idle_s=3.0, seed=3)
        workers = _start_group(settings, worker_factory, tmp_path, n_workers, prefix=f"g{n_workers}-")
        produce_events(settings, events)
        result = collect_outcomes(settings, ids, timeout=300, workers=workers)
        history = _check_outcomes(settings, result, ids, codes)
        labels = labels_of(result, ids)
        joined_by = [w.stats()["join"]["photos_in"] for w in workers]
        runs[n_workers] = dict(purity=purity(labels, truth, ignore_noise=True), clusters=len(history),
                               duplicates=sum(result.duplicates.values()), photos_in=joined_by)
        for worker in workers:
            worker.stop()
    print(f"1 worker: {runs[1]}; 3 workers: {runs[3]}")
    assert runs[1]["duplicates"] == runs[3]["duplicates"] == 0
    assert all(n > 0 for n in runs[3]["photos_in"]), "every worker of the three took a share of the input"
    assert abs(runs[3]["purity"] - runs[1]["purity"]) <= 0.005
    assert abs(runs[3]["clusters"] - runs[1]["clusters"]) <= 0.02 * runs[1]["clusters"]


def test_sigkill_a_joiner_then_the_founder_loses_nothing(settings_factory, worker_factory, tmp_path):
    """SIGKILL a worker that only joins, then the founder mid-window: the group rebalances, another
    worker restores the found stage and founds on with new ids; every photo gets its outcome."""
    n_photos = 60_000
    ids, codes, truth = _new_clusters_throughout(n_photos, 600, seed=42)
    events = photo_events(ids, to_bytes(codes), batch_size=100)
    settings = _group_settings(settings_factory, window_size=4000)
    workers = _start_group(settings, worker_factory, tmp_path, 3)
    third = len(events) // 3
    _produce_slowly(settings, events[:third], chunk=20, pause_s=0.05)
    joiner = next(w for w in workers if w is not _founder(workers))
    joiner.kill()
    _produce_slowly(settings, events[third:2 * third], chunk=20, pause_s=0.05)
    founder = wait_for(lambda: _founder(workers), 60, what="a founder after the joiner's death")
    produced = 2 * third + _kill_mid_window(settings, founder, events[2 * third:])
    killed_at = time.time()
    produce_events(settings, events[produced:])
    survivor = wait_for(lambda: _founder(workers), 90, what="a new founder")
    failover_s = survivor.stats()["found"]["ready_at"] - killed_at
    result = collect_outcomes(settings, ids, timeout=180, workers=[survivor])
    _check_outcomes(settings, result, ids, codes)
    labels = labels_of(result, ids)
    print(f"failover: {failover_s:.1f} s from SIGKILL to the new founder's restored state "
          f"(session timeout {SESSION_TIMEOUT_S:g} s); {sum(result.duplicates.values())} duplicate outcomes "
          f"(in-flight work of the killed workers); purity {purity(labels, truth, ignore_noise=True):.4f}")
    assert "event=founder_ready" in survivor.log_path.read_text()
    assert purity(labels, truth, ignore_noise=True) >= 0.95


def test_workers_join_and_leave_during_a_run(settings_factory, worker_factory, tmp_path):
    """A worker that joins is ready only once its copy of the centers caught up; the founder leaves
    with SIGTERM and hands over. Nothing is lost, and a graceful hand-over duplicates nothing."""
    n_photos = 45_000
    codes, truth, _ = planted_codes(n_photos, 450, flip_prob=FLIP, random_state=43)
    ids = photo_ids(0, n_photos)
    events = photo_events(ids, to_bytes(codes), batch_size=100)
    settings = _group_settings(settings_factory, window_size=4000)
    workers = _start_group(settings, worker_factory, tmp_path, 2)
    third = len(events) // 3
    produce_events(settings, events[:third])
    founder = _founder(workers)
    wait_for(lambda: founder.stats()["clusters"] > 0, 60, what="the first centers")
    published = len(centers_history(settings))
    newcomer = _start_worker(settings, worker_factory, tmp_path, "new", wait=False)
    stats = newcomer.wait_ready()
    assert stats["join"]["centers"] >= published, (stats["join"], published)
    workers.append(newcomer)
    _produce_slowly(settings, events[third:2 * third], chunk=50, pause_s=0.05)
    assert founder.stop() == 0
    produce_events(settings, events[2 * third:])
    survivor = wait_for(lambda: _founder(workers), 90, what="a new founder after the old one left")
    result = collect_outcomes(settings, ids, timeout=180, workers=[w for w in workers if w is not founder])
    _check_outcomes(settings, result, ids, codes)
    labels = labels_of(result, ids)
    print(f"new worker ready with {stats['join']['centers']} centers ({published} published before it started); "
          f"new founder {survivor.name}; {sum(result.duplicates.values())} duplicates; "
          f"purity {purity(labels, truth, ignore_noise=True):.4f}")
    assert sum(result.duplicates.values()) == 0, result.duplicates.most_common(3)
    assert purity(labels, truth, ignore_noise=True) >= 0.95
    # Any worker answers /clusters/<id> with the whole cluster's figures: a joiner from the topics.
    joiner = next(w for w in workers if w.alive() and w is not survivor)
    for cluster_id in (0, len(centers_history(settings)) // 2):
        wait_for(lambda: (a := _cluster(joiner, cluster_id)) and a == _cluster(survivor, cluster_id), 30,
                 what=f"cluster {cluster_id} the same on the joiner {joiner.name} and the founder")
        assert _cluster(joiner, cluster_id)["size"] > 0


def _cluster(worker: WorkerProcess, cluster_id: int) -> dict[str, Any] | None:
    return get_json(f"http://127.0.0.1:{worker.settings.web_port}/clusters/{cluster_id}")


def test_a_stale_copy_only_forwards_more(settings_factory, worker_factory, tmp_path):
    """One worker's centers reader is held back for 30 s: its photos of known clusters go to the
    founder, which joins them; no extra center appears and purity stays the same."""
    n_clusters, per_phase = 200, 20_000
    codes, truth, _ = planted_codes(2 * per_phase, n_clusters, flip_prob=FLIP, random_state=44)
    ids = photo_ids(0, 2 * per_phase)
    events = photo_events(ids, to_bytes(codes), batch_size=100)
    settings = _group_settings(settings_factory, window_size=per_phase, pending_idle_s=3.0)
    workers = _start_group(settings, worker_factory, tmp_path, 2, env={"w1": {HOLD_ENV: "30"}})
    held = workers[1]
    started = time.monotonic()
    half = len(events) // 2
    produce_events(settings, events[:half])  # phase 1 founds the clusters
    first = collect_outcomes(settings, ids[:per_phase], timeout=60, workers=workers)
    clusters_after_phase_1 = len(centers_history(settings))
    assert held.stats()["join"]["centers"] == 0, "the held copy must not have the new centers yet"
    before = held.stats()["join"]
    produce_events(settings, events[half:])  # phase 2: the same clusters again
    result = collect_outcomes(settings, ids, timeout=60, workers=workers)
    after = held.stats()["join"]
    assert time.monotonic() - started < 30, "phase 2 ran after the hold ended; the test proves nothing"
    _check_outcomes(settings, result, ids, codes)
    labels = labels_of(result, ids)
    phase_2 = slice(per_phase, None)
    held_photos = after["photos_in"] - before["photos_in"]
    print(f"phase 1: {clusters_after_phase_1} clusters, purity {purity(labels_of(first, ids[:per_phase]), truth[:per_phase], ignore_noise=True):.4f}; "
          f"phase 2: the held worker took {held_photos} photos and forwarded {after['forwarded'] - before['forwarded']}; "
          f"clusters now {len(centers_history(settings))}; purity {purity(labels[phase_2], truth[phase_2], ignore_noise=True):.4f}")
    assert held_photos > 0 and after["forwarded"] - before["forwarded"] == held_photos
    assert len(centers_history(settings)) == clusters_after_phase_1, "a stale copy made extra centers"
    outcomes = {result.final[i]["outcome"] for i in ids[per_phase:]}
    assert outcomes == {"joined"}, outcomes
    assert purity(labels[phase_2], truth[phase_2], ignore_noise=True) >= purity(
        labels_of(first, ids[:per_phase]), truth[:per_phase], ignore_noise=True) - 0.005


def test_exactly_once_with_three_workers_and_a_sigkill(settings_factory, worker_factory, tmp_path):
    """exactly_once over 6 partitions: one transaction per source partition; SIGKILL the founder
    mid-window. The assignment topic, read committed, holds exactly one outcome per photo."""
    n_photos = 30_000
    ids, codes, truth = _new_clusters_throughout(n_photos, 300, seed=45)
    events = photo_events(ids, to_bytes(codes), batch_size=100)
    settings = _group_settings(settings_factory, window_size=3000, processing_guarantee="exactly_once")
    workers = _start_group(settings, worker_factory, tmp_path, 3)
    half = len(events) // 2
    _produce_slowly(settings, events[:half], chunk=20, pause_s=0.05)
    founder = _founder(workers)
    produced = half + _kill_mid_window(settings, founder, events[half:])
    produce_events(settings, events[produced:])
    survivor = wait_for(lambda: _founder(workers), 90, what="a new founder")
    result = collect_outcomes(settings, ids, timeout=180, workers=[w for w in workers if w is not founder])
    _check_outcomes(settings, result, ids, codes)
    print(f"exactly_once: {len(result.final)} photos, {result.events} outcome events, new founder {survivor.name}")
    assert sum(result.duplicates.values()) == 0, result.duplicates.most_common(3)
    assert result.events == n_photos


@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
def test_a_paused_founder_that_comes_back_is_fenced(settings_factory, worker_factory, tmp_path, guarantee):
    """The founder stops answering mid-window (SIGSTOP) for longer than the session timeout: the
    group gives its partition to another worker, which founds on. When the old founder resumes, it
    must not publish its window: its transaction is fenced by the new owner's (same transactional
    id), and it drops what it had in flight. No cluster id gets two centers; every photo one outcome."""
    n_photos = 24_000
    ids, codes, truth = _new_clusters_throughout(n_photos, 240, seed=46)
    events = photo_events(ids, to_bytes(codes), batch_size=100)
    settings = _group_settings(settings_factory, window_size=3000, processing_guarantee=guarantee)
    workers = _start_group(settings, worker_factory, tmp_path, 2)
    zombie = _founder(workers)
    half = len(events) // 2
    produce_events(settings, events[:half // 2])
    for start in range(half // 2, half, 5):
        produce_events(settings, events[start:start + 5])
        if (zombie.stats() or {}).get("windows_in_flight"):
            break
        time.sleep(0.02)
    zombie.pause()
    try:
        survivor = wait_for(lambda: _founder(workers), 90, what="a new founder while the old one is paused")
        produce_events(settings, events[start + 5:])
        wait_for(lambda: (s := survivor.stats()) and s["found"]["windows"] >= 2, 60, what="the new founder's windows")
    finally:
        zombie.resume()
    result = collect_outcomes(settings, ids, timeout=180, workers=[survivor])
    _check_outcomes(settings, result, ids, codes)  # no cluster id with two centers
    log = zombie.log_path.read_text()
    fenced, evicted = "ProducerFenced" in log, "event=founder_evicted" in log
    print(f"zombie {zombie.name}: fenced {fenced} (then exit code {zombie.proc.poll()}), evicted logged {evicted}; "
          f"{sum(result.duplicates.values())} duplicates")
    assert evicted or fenced, zombie.log_tail()
    if guarantee == "exactly_once":
        assert sum(result.duplicates.values()) == 0, result.duplicates.most_common(3)
