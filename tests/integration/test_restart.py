"""A worker that restarts (with its RocksDB data, or with it wiped) keeps its clusters.

Worker A clusters 20,000 planted photos and stops (SIGTERM). Worker B starts with the same app id
and topics: it must restore the same clusters (from its local store, or from the centers and state
topics alone when the data dir is fresh), and 10,000 new photos from the same true centers must join those clusters.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from kafka_support import (
    READY_TIMEOUT_S,
    AssignmentReader,
    collect_outcomes,
    free_port,
    labels_of,
    noisy_copies,
    photo_events,
    photo_ids,
    produce_events,
    settled,
    wait_for,
)

from core.codes import to_bytes
from core.purity import purity
from core.synth import planted_codes
from streams.kafka_io import consumer_lag

pytestmark = pytest.mark.kafka

N_FIRST = 20_000
N_SECOND = 10_000
N_CENTERS = 100
FLIP = 0.1


def _wait_lag_zero(settings, timeout=60.0):
    def done():
        rows = consumer_lag(settings)
        return rows if rows and all(r.committed is not None and r.lag == 0 for r in rows) else None

    return wait_for(done, timeout, what=f"lag 0 for group {settings.app_id}")


@pytest.mark.parametrize("data_dir", ["same", "fresh"])
def test_restart_keeps_clusters(settings_factory, worker_factory, tmp_path, data_dir):
    settings_a = settings_factory(pending_idle_s=2.0)
    codes, truth, centers = planted_codes(N_FIRST, N_CENTERS, flip_prob=FLIP, random_state=7)
    ids = photo_ids(0, N_FIRST)

    # -- phase 1: worker A ------------------------------------------------------------------------
    worker_a = worker_factory(settings_a, name="A")
    produce_events(settings_a, photo_events(ids, to_bytes(codes), batch_size=500))
    reader = AssignmentReader(settings_a)
    try:
        reader.collect(ids, timeout=120, workers=[worker_a])
        _wait_lag_zero(settings_a)
        stats_a = wait_for(lambda: (s := worker_a.stats()) and s["pending"] == 0 and s, 30,
                           what="worker A: empty pending pool")
        n_clusters_a = stats_a["clusters"]
        assert n_clusters_a > 0, stats_a
        labels_1 = labels_of(reader.result, ids)
        assert purity(labels_1, truth, ignore_noise=True) >= 0.95
        probe = [0, n_clusters_a - 1]
        records_a = {c: _get_cluster(worker_a, c) for c in probe}
        assert all(records_a.values()), records_a

        code = worker_a.stop()
        assert code is not None, "worker A did not exit"
        assert code == 0, f"worker A exited with code {code} after SIGTERM\n{worker_a.log_tail()}"

        # -- restart: worker B ----------------------------------------------------------------------
        changes = {"web_port": free_port()}
        if data_dir == "fresh":
            changes["data_dir"] = str(tmp_path / "data-fresh")
        settings_b = settings_a.replace(**changes)
        worker_b = worker_factory(settings_b, name="B")
        stats_b = worker_b.stats()
        assert stats_b["clusters"] == n_clusters_a, (
            f"worker B restored {stats_b['clusters']} clusters, A had {n_clusters_a} ({data_dir} data dir)")
        assert stats_b["pending"] == 0, stats_b
        for c, record in records_a.items():
            assert _get_cluster(worker_b, c) == record, f"cluster {c} differs after the restart"

        # -- phase 2: new photos from the same true centers ---------------------------------------
        truth_2 = np.arange(N_SECOND) % N_CENTERS
        np.random.default_rng(8).shuffle(truth_2)
        codes_2 = noisy_copies(centers, truth_2, FLIP, seed=9)
        ids_2 = photo_ids(N_FIRST, N_SECOND)
        produce_events(settings_b, photo_events(ids_2, to_bytes(codes_2), batch_size=500))
        result = reader.collect(ids_2, timeout=120, workers=[worker_b])
        _wait_lag_zero(settings_b)
    finally:
        reader.close()

    assert sum(result.duplicates.values()) == 0, (
        f"duplicate outcomes after a clean restart: {result.duplicates.most_common(5)}")
    events_2 = [result.final[i] for i in ids_2]
    outcomes_2 = Counter(e["outcome"] for e in events_2)
    old_joins = sum(e["outcome"] == "joined" and e["cluster"] < n_clusters_a for e in events_2)
    assert old_joins >= 0.95 * N_SECOND, (
        f"only {old_joins} of {N_SECOND} new photos joined a cluster of before the restart; "
        f"outcomes {dict(outcomes_2)}, clusters before: {n_clusters_a}, after: {worker_b.stats()['clusters']}")

    # each phase-1 cluster stands for the true center most of its phase-1 members came from
    majority = {}
    for cluster in np.unique(labels_1[labels_1 >= 0]):
        majority[int(cluster)] = Counter(truth[labels_1 == cluster].tolist()).most_common(1)[0][0]
    labels_2 = labels_of(result, ids_2)
    disagree = [(ids_2[i], int(labels_2[i]), int(truth_2[i])) for i in range(N_SECOND)
                if labels_2[i] in majority and majority[int(labels_2[i])] != truth_2[i]]
    assert not disagree, f"{len(disagree)} new photos joined a cluster of another true center: {disagree[:5]}"
    both = purity(np.concatenate((labels_1, labels_2)), np.concatenate((truth, truth_2)), ignore_noise=True)
    assert both >= 0.95, f"purity across both phases {both:.4f}"
    worker_b.check_alive()


def _get_cluster(worker, cluster_id):
    from kafka_support import get_json

    return get_json(f"http://127.0.0.1:{worker.settings.web_port}/clusters/{cluster_id}")


def test_pending_pool_survives_restart(settings_factory, worker_factory):
    """Photos held back when A stops are restored by B and get their final outcome there, once."""
    settings_a = settings_factory(pending_idle_s=0.0)  # never declare an idle pool noise
    codes, _, _ = planted_codes(10_000, 50, flip_prob=FLIP, random_state=5)
    ids, hashes = photo_ids(0, 10_000), to_bytes(codes)
    worker_a = worker_factory(settings_a, name="A")
    produce_events(settings_a, photo_events(ids[:5000], hashes[:5000], batch_size=500))
    stats_a = wait_for(lambda: settled(worker_a, 5000), 60,
                       what="worker A: first 5000 photos clustered")
    _wait_lag_zero(settings_a)
    assert stats_a["pending"] > 0, f"nothing was held back, the test needs a pending pool: {stats_a}"
    assert worker_a.stop() == 0, worker_a.log_tail()

    settings_b = settings_a.replace(web_port=free_port())
    worker_b = worker_factory(settings_b, name="B")
    stats_b = worker_b.stats()
    assert (stats_b["clusters"], stats_b["pending"]) == (stats_a["clusters"], stats_a["pending"]), (stats_a, stats_b)
    produce_events(settings_b, photo_events(ids[5000:], hashes[5000:], batch_size=500))
    reader = AssignmentReader(settings_b)
    try:
        result = reader.collect(ids, timeout=90, workers=[worker_b])
    finally:
        reader.close()
    assert sum(result.duplicates.values()) == 0, result.duplicates.most_common(5)
    assert result.events == len(ids)
    held = [i for i in ids[:5000] if result.final[i]["window"] > 0]
    assert len(held) == stats_a["pending"], "the photos held by A got their outcome from B's windows"
    assert all(result.final[i]["outcome"] in ("joined", "founded") for i in held), Counter(
        result.final[i]["outcome"] for i in held)


def test_changed_settings_are_applied_after_a_restart(settings_factory, worker_factory):
    """A restart takes the new radius and window size (and logs them); another n_bits is refused
    with exit code 2 before the worker starts, instead of a crash loop."""
    settings_a = settings_factory(window_size=2000)
    codes, truth, centers = planted_codes(4000, 40, flip_prob=FLIP, random_state=9)
    ids = photo_ids(0, 4000)
    worker_a = worker_factory(settings_a, name="A")
    produce_events(settings_a, photo_events(ids, to_bytes(codes), batch_size=500))
    wait_for(lambda: settled(worker_a, 4000), 60, what="worker A: 4000 photos")
    _wait_lag_zero(settings_a)
    stats_a = worker_a.stats()
    assert stats_a["clustering"]["radius"] == 64 and stats_a["clusters"] > 0, stats_a
    assert worker_a.stop() == 0, worker_a.log_tail()

    # -- B: radius 8 and a window of 3000. Copies of the same centers (about 26 bits away) joined
    # A's clusters at radius 64; at radius 8 they no longer can.
    settings_b = settings_a.replace(web_port=free_port(), radius=8, window_size=3000)
    worker_b = worker_factory(settings_b, name="B")
    clustering = worker_b.stats()["clustering"]
    assert clustering["radius"] == 8, clustering
    assert clustering["window_size"] == 3000 + 100_000, clustering  # plus one batch event of headroom
    log = worker_b.log_path.read_text()
    assert "event=setting_changed name=radius stored=64 new=8" in log, worker_b.log_tail()
    assert "event=setting_changed name=window_size stored=102000 new=103000" in log, worker_b.log_tail()
    ids_2 = photo_ids(4000, 2000)
    codes_2 = noisy_copies(centers, truth[:2000], FLIP, seed=10)
    produce_events(settings_b, photo_events(ids_2, to_bytes(codes_2), batch_size=500))
    result = collect_outcomes(settings_b, ids_2, timeout=90, workers=[worker_b])
    old_joins = sum(result.final[i]["outcome"] == "joined" and result.final[i]["cluster"] < stats_a["clusters"]
                    for i in ids_2)
    assert old_joins < 20, f"{old_joins} of 2000 photos joined an old cluster at radius 8"
    assert worker_b.stop() == 0, worker_b.log_tail()

    # -- C: 128-bit codes cannot use the stored 256-bit centers
    worker_c = worker_factory(settings_a.replace(web_port=free_port(), n_bits=128), name="C", wait=False)
    assert worker_c.proc.wait(READY_TIMEOUT_S + 60) == 2, worker_c.log_tail()
    log = worker_c.log_path.read_text()
    assert "n_bits=128 differs from 256" in log, worker_c.log_tail()


def test_a_corrupted_state_record_makes_the_worker_exit(settings_factory, worker_factory):
    """A meta record that handed out cluster ids whose center blocks are missing: the restore fails, and the
    worker exits non-zero with the reason, instead of serving /health without clustering."""
    import msgpack

    from core.online import OnlineClusterer
    from streams.state import META_KEY, state_records

    settings = settings_factory(restore_timeout_s=60.0)
    clusterer = OnlineClusterer(n_bits=256, window_size=105_000, random_state=0)
    meta = msgpack.unpackb(state_records(clusterer)[-1][1])
    meta["n_clusters"] = meta["next_cluster_id"] = 5000  # but no center block is stored
    from streams.kafka_io import ensure_topics

    ensure_topics(settings)
    produce_events(settings, [(META_KEY, msgpack.packb(meta))], topic=settings.state_topic)
    worker = worker_factory(settings, name="corrupt", wait=False)
    assert worker.proc.wait(READY_TIMEOUT_S + 60) != 0, worker.log_tail()
    log = worker.log_path.read_text()
    assert "event=restore_failed" in log and "handed out cluster ids up to 4999 but the centers topic holds ids only below 0" in log, worker.log_tail()
