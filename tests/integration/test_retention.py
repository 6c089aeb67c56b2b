"""Retiring centers on a real broker (max_centers): a retired center leaves the founder's clusterer
and every copy, its block loses it in the centers topic, the retired topic says so, and its id is
never handed out again: photos near it found a new cluster. A restart from the topics alone holds
exactly the centers that were held.

Phase 1 clusters photos of true centers A, phase 2 photos of new true centers B (which push the
least recently joined A clusters out), phase 3 photos of A again.
"""

from __future__ import annotations

import urllib.error
import urllib.request

import numpy as np
import pytest
from kafka_support import (
    AssignmentReader,
    TopicReader,
    centers_history,
    free_port,
    get_json,
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
from streams.codecs import decode_retirement

pytestmark = pytest.mark.kafka

N_PHASE = 15_000
N_TRUE = 50
MAX_CENTERS = 80
FLIP = 0.08


def _settled_copy(worker, n_photos):
    """/stats once the stages are done with ``n_photos`` and the worker's copy of the centers holds
    what the clusterer holds (every retirement read)."""
    stats = settled(worker, n_photos)
    if stats and stats["replica"]["lag"] == 0 and stats["replica"]["centers"] == stats["clusters"]:
        return stats
    return None


def _status(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def _retirements(settings):
    reader = TopicReader(settings, settings.retired_topic)
    events = []
    try:
        while not reader.at_end():
            events += [decode_retirement(m.value()) for m in reader.poll(0.5)]
    finally:
        reader.close()
    return events


def test_retired_centers_leave_everywhere_and_their_ids_are_never_reused(settings_factory, worker_factory, tmp_path):
    settings = settings_factory(max_centers=MAX_CENTERS)
    codes_a, truth_a, centers_a = planted_codes(N_PHASE, N_TRUE, flip_prob=FLIP, random_state=21)
    codes_b, truth_b, _ = planted_codes(N_PHASE, N_TRUE, flip_prob=FLIP, random_state=22)
    truth_c = np.arange(N_PHASE) % N_TRUE
    codes_c = noisy_copies(centers_a, truth_c, FLIP, seed=23)
    phases = [(photo_ids(i * N_PHASE, N_PHASE), codes) for i, codes in enumerate((codes_a, codes_b, codes_c))]
    worker = worker_factory(settings, name="A")
    reader = AssignmentReader(settings)
    next_ids = []
    try:
        for i, (ids, codes) in enumerate(phases):
            produce_events(settings, photo_events(ids, to_bytes(codes), batch_size=500))
            reader.collect(ids, timeout=180, workers=[worker])
            stats = wait_for(lambda: _settled_copy(worker, (i + 1) * N_PHASE), 60, what=f"phase {i + 1} settled")
            assert stats["clusters"] <= MAX_CENTERS and stats["replica"]["centers"] <= MAX_CENTERS, stats
            next_ids.append(stats["found"]["next_cluster_id"])
        result = reader.result
    finally:
        reader.close()
    assert sum(result.duplicates.values()) == 0 and not result.bad

    retired = _retirements(settings)
    retired_ids = [event["cluster"] for event in retired]
    assert len(retired_ids) == len(set(retired_ids)) > 0, "each center is retired once"
    assert stats["found"]["retired"] == len(retired_ids)
    history = centers_history(settings)  # also asserts that no id ever had two centers
    assert sorted(history) == list(range(next_ids[-1])), "ids are handed out in order, each once"
    assert len(history) - len(retired_ids) == stats["clusters"]

    # Phase 3 (photos of the A centers, after the retirements of phase 2 were read): no photo joins
    # a retired center, and every cluster it founds has a new id.
    events_3 = [result.final[i] for i in phases[2][0]]
    clusters_3 = {e["cluster"] for e in events_3 if e["cluster"] is not None}
    retired_before_3 = {event["cluster"] for event in retired if event["window"] < min(e["window"] for e in events_3)}
    assert not clusters_3 & retired_before_3
    founded_3 = {e["cluster"] for e in events_3 if e["outcome"] == "founded"}
    assert founded_3 and min(founded_3) >= next_ids[1], (sorted(founded_3)[:5], next_ids)
    all_ids = phases[0][0] + phases[1][0] + phases[2][0]
    labels = labels_of(result, all_ids)
    truth = np.concatenate((truth_a, truth_b + N_TRUE, truth_c))
    assert purity(labels, truth, ignore_noise=True) >= 0.95

    # The founder and a fresh copy agree: a retired cluster is gone, a held one answers.
    port = worker.settings.web_port
    held = sorted(set(history) - set(retired_ids))
    assert _status(port, f"/clusters/{retired_ids[0]}") == 404 and _status(port, f"/clusters/{held[0]}") == 200
    figures = get_json(f"http://127.0.0.1:{port}/clusters/{held[-1]}")
    code = worker.stop()
    assert code == 0, worker.log_tail()
    restarted = worker_factory(settings.replace(web_port=free_port(), data_dir=str(tmp_path / "fresh")), name="B")
    restored = restarted.stats()
    assert restored["clusters"] == stats["clusters"] and restored["found"]["next_cluster_id"] == next_ids[-1]
    assert restored["replica"]["centers"] == stats["clusters"]
    port = restarted.settings.web_port
    assert _status(port, f"/clusters/{retired_ids[0]}") == 404
    assert get_json(f"http://127.0.0.1:{port}/clusters/{held[-1]}") == figures
    print(f"retired {len(retired_ids)}, held {stats['clusters']}, next ids by phase {next_ids}, "
          f"founded in phase 3 {len(founded_3)}")
