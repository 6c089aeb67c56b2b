"""50,000 planted photos through a real broker and a worker subprocess: one final outcome each."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from kafka_support import OUTCOMES, AssignmentReader, labels_of, photo_events, photo_ids, produce_events, wait_for

from core.codes import to_bytes
from core.purity import purity
from core.synth import planted_codes
from streams.kafka_io import consumer_lag

pytestmark = pytest.mark.kafka

N_PHOTOS = 50_000
N_CLUSTERS = 250


def test_every_photo_gets_one_final_outcome(settings_factory, worker_factory):
    settings = settings_factory()
    worker = worker_factory(settings, name="e2e")
    codes, truth, _ = planted_codes(N_PHOTOS, N_CLUSTERS, flip_prob=0.1, random_state=20240501)
    ids = photo_ids(0, N_PHOTOS)
    hashes = to_bytes(codes)
    half = N_PHOTOS // 2
    # first half as single events, second half as batch events of 500 rows
    events = photo_events(ids[:half], hashes[:half]) + photo_events(ids[half:], hashes[half:], batch_size=500)
    assert len(produce_events(settings, events)) == half + half // 500

    reader = AssignmentReader(settings)
    try:
        result = reader.collect(ids, timeout=150, workers=[worker])
    finally:
        reader.close()

    assert not result.bad, f"undecodable assignment events: {result.bad[:3]}"
    missing = [i for i in ids if i not in result.final]
    assert not missing, f"{len(missing)} photos without an outcome, e.g. {missing[:5]}"
    unexpected = set(result.final) - set(ids)
    assert not unexpected, f"outcomes for ids never produced: {sorted(unexpected)[:5]}"
    assert sum(result.duplicates.values()) == 0, (
        f"{sum(result.duplicates.values())} duplicate outcomes in a run without faults, "
        f"e.g. {result.duplicates.most_common(3)}")
    assert result.events == N_PHOTOS

    outcomes = Counter(e["outcome"] for e in result.final.values())
    assert set(outcomes) <= OUTCOMES, outcomes
    labels = labels_of(result, ids)
    noise_fraction = float(np.mean(labels < 0))
    assert noise_fraction < 0.05, f"noise fraction {noise_fraction:.4f}; outcomes {dict(outcomes)}"
    score = purity(labels, truth, ignore_noise=True)
    assert score >= 0.95, f"purity {score:.4f}; outcomes {dict(outcomes)}"
    distances = np.array([e["distance"] for e in result.final.values() if e["outcome"] != "noise"])
    assert distances.max() <= settings.radius, f"max distance {distances.max()} > radius {settings.radius}"
    for event in result.final.values():
        if event["outcome"] == "noise":
            assert event["cluster"] is None and event["distance"] is None, event

    def lag_is_zero():
        rows = consumer_lag(settings)
        return rows if rows and all(r.lag == 0 and r.committed is not None for r in rows) else None

    rows = wait_for(lag_is_zero, timeout=60, what="consumer lag 0 on the input topic")
    assert sum(r.log_end for r in rows) == len(events)
    stats = worker.stats()
    assert stats is not None and stats["ready"], stats
    assert stats["photos_in"] == N_PHOTOS, stats
    assert stats["dlq_events"] == 0 and stats["dlq_rows"] == 0, stats
    assert sum(stats["outcomes"].values()) == N_PHOTOS, stats
    worker.check_alive()
