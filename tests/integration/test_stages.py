"""The worker's two stages on the real broker: the same outcomes as core alone, and cluster ids that
are never handed out twice, even after a SIGKILL and a restart from a fresh data dir."""

from __future__ import annotations

import time

import numpy as np
import pytest
from kafka_support import (
    centers_history,
    collect_outcomes,
    free_port,
    get_json,
    labels_of,
    photo_events,
    photo_ids,
    produce_events,
    settled,
    wait_for,
)

from core.codes import to_bytes
from core.online import OnlineClusterer
from core.purity import purity
from core.synth import planted_codes
from streams.codecs import encode_batch

pytestmark = pytest.mark.kafka

N_PHOTOS = 40_000
N_CENTERS = 100
WINDOW = 5000
FLIP = 0.1


def test_the_stages_give_what_core_alone_gives(settings_factory, worker_factory):
    """The first window is one batch event, so that both see the same window 0 (whose clusters then
    have the same ids); the rest is joined by the join stage against the copy of those centers, and
    by core alone window by window. Every photo should get the same cluster."""
    codes, truth, _ = planted_codes(N_PHOTOS, N_CENTERS, flip_prob=FLIP, random_state=31)
    ids, hashes = photo_ids(0, N_PHOTOS), to_bytes(codes)
    # n/50 centers per window: about one per planted cluster in a window, so that window 0 founds
    # nearly every cluster and the comparison does not hinge on how later windows are cut.
    settings = settings_factory(window_size=WINDOW, new_centers_ratio=0.02, pending_capacity=WINDOW, seed=5)
    worker = worker_factory(settings, name="stages")
    produce_events(settings, [(b"first", encode_batch(zip(ids[:WINDOW], hashes[:WINDOW])))])
    stats = wait_for(lambda: (s := worker.stats()) and s["windows"] >= 1 and s["join"]["centers"] == s["clusters"]
                     and s, 60, what="window 0 clustered and its centers in the copy")
    produce_events(settings, photo_events(ids[WINDOW:], hashes[WINDOW:], batch_size=500))
    result = collect_outcomes(settings, ids, timeout=120, workers=[worker])
    assert sum(result.duplicates.values()) == 0, result.duplicates.most_common(3)
    stats = wait_for(lambda: (s := worker.stats()) and s["pending"] == 0 and s, 30, what="pending pool empty")
    labels = labels_of(result, ids)

    core = OnlineClusterer(window_size=WINDOW, new_centers_ratio=0.02, radius=settings.radius,
                           min_cluster_size=settings.min_cluster_size, pending_capacity=WINDOW,
                           max_iter=settings.max_iter, random_state=5)
    core_labels = np.full(N_PHOTOS, -1, dtype=np.int64)
    row_of = {photo_id: row for row, photo_id in enumerate(ids)}

    def record(window) -> None:
        for row in np.flatnonzero(window.is_final):
            core_labels[row_of[window.ids[row]]] = window.cluster[row]

    for start in range(0, N_PHOTOS, WINDOW):
        record(core.process(ids[start:start + WINDOW], codes[start:start + WINDOW], now=1.0))
    record(core.flush(now=2.0))

    stage_purity = purity(labels, truth, ignore_noise=True)
    core_purity = purity(core_labels, truth, ignore_noise=True)
    same = np.mean(labels == core_labels)
    print(f"stages: purity {stage_purity:.4f}, {stats['clusters']} clusters, "
          f"{stats['join']['joined']} joined by the join stage, {stats['join']['forwarded']} forwarded; "
          f"core alone: purity {core_purity:.4f}, {core.n_clusters_} clusters; same cluster for {same:.2%}")
    assert abs(stage_purity - core_purity) <= 0.005
    assert stats["clusters"] == core.n_clusters_
    assert same >= 0.99, f"only {same:.2%} of the photos got the cluster core alone gives them"
    assert stats["join"]["joined"] >= 0.8 * (N_PHOTOS - WINDOW), stats["join"]  # the join stage did the joining


def test_sigkill_then_a_fresh_data_dir_hands_out_no_cluster_id_twice(settings_factory, worker_factory, tmp_path):
    """Kill the worker while it founds clusters, restart it with its data dir gone: it rebuilds from
    the topics alone, and no cluster id ever stands for two centers."""
    codes, truth, _ = planted_codes(30_000, 600, flip_prob=FLIP, random_state=32)
    ids, hashes = photo_ids(0, 30_000), to_bytes(codes)
    settings = settings_factory(window_size=3000, pending_idle_s=3.0)
    worker_a = worker_factory(settings, name="A")
    events = photo_events(ids, hashes, batch_size=300)
    produce_events(settings, events[:40])
    wait_for(lambda: (s := worker_a.stats()) and s["windows"] >= 2, 120, what="worker A: two windows")
    for start in range(40, len(events), 5):  # a slow stream, so that A dies mid-window
        produce_events(settings, events[start:start + 5])
        stats = worker_a.stats() or {}
        if stats.get("windows_in_flight"):
            break
        time.sleep(0.05)
    worker_a.kill()
    produce_events(settings, events[start + 5:])

    worker_b = worker_factory(settings.replace(data_dir=str(tmp_path / "fresh"), web_port=free_port()), name="B")
    result = collect_outcomes(settings, ids, timeout=180, workers=[worker_b])
    history = centers_history(settings)  # raises if a cluster id ever had two centers
    stats = wait_for(lambda: (s := worker_b.stats()) and s["clusters"] == len(history) and s, 60,
                     what="worker B holds every published center")
    for cluster_id in sorted(set(np.random.default_rng(0).integers(0, len(history), 50).tolist())):
        served = get_json(f"http://127.0.0.1:{worker_b.settings.web_port}/clusters/{cluster_id}")
        assert served is not None and served["center"] == history[cluster_id], (cluster_id, served)
    labels = labels_of(result, ids)
    print(f"killed with {len(history)} centers published; B: {stats['clusters']} clusters, "
          f"{sum(result.duplicates.values())} duplicate outcomes")
    assert set(result.final) == set(ids)
    assert purity(labels, truth, ignore_noise=True) >= 0.95


def _get(url: str) -> tuple[int, dict]:
    import json
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_match_answers_from_the_copy_of_the_centers(settings_factory, worker_factory):
    """GET /match/<hex> gives the nearest cluster within r from the worker's copy, without
    publishing the photo; bad input gets a 400 that says what is wrong."""
    codes, truth, centers = planted_codes(3000, 20, flip_prob=FLIP, random_state=33)
    ids = photo_ids(0, 3000)
    settings = settings_factory(window_size=3000)
    worker = worker_factory(settings, name="match")
    produce_events(settings, photo_events(ids, to_bytes(codes), batch_size=500))
    wait_for(lambda: (s := settled(worker, 3000)) and s["join"]["centers"] == s["clusters"] > 0, 60,
             what="3000 photos clustered, and every center in the worker's copy")
    base = f"http://127.0.0.1:{settings.web_port}"
    rng = np.random.default_rng(0)
    probe = centers[3:4].copy()
    probe[0, 0] ^= np.uint64(0b1011)  # a planted center with 3 bits flipped
    status, answer = _get(f"{base}/match/{to_bytes(probe)[0].hex()}")
    assert status == 200 and answer["cluster"] is not None, answer
    cluster = _get(f"{base}/clusters/{answer['cluster']}")[1]
    center = np.frombuffer(bytes.fromhex(cluster["center"]), dtype=">u8").astype(np.uint64)
    expected = int(sum(bin(int(a) ^ int(b)).count("1") for a, b in zip(center, probe[0])))
    assert answer["distance"] == expected <= settings.radius, (answer, expected)
    far = rng.integers(0, np.iinfo(np.uint64).max, (1, 4), dtype=np.uint64, endpoint=True)
    status, answer = _get(f"{base}/match/{to_bytes(far)[0].hex()}")
    assert status == 200 and answer == {"cluster": None, "distance": None, "centers": answer["centers"]}, answer
    assert answer["centers"] == worker.stats()["clusters"]
    for bad, text in (("abc", "hash has 3 hex digits, expected 64"), ("zz" * 32, "non-hex character 'z'")):
        status, answer = _get(f"{base}/match/{bad}")
        assert status == 400 and text in answer["error"], (bad, status, answer)
    # nothing was published for the probes
    assert worker.stats()["photos_in"] == 3000
