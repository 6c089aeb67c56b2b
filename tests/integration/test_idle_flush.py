"""A busy stream is not idle: with a backlog, no photo may be declared noise by the idle flush
(``pending_idle_s``) before the last photo has been clustered."""

from __future__ import annotations

from collections import defaultdict

import pytest
from kafka_support import AssignmentReader, photo_events, photo_ids, produce_events

from core.codes import to_bytes
from core.synth import planted_codes
from streams.kafka_io import ensure_topics

pytestmark = pytest.mark.kafka

N_PHOTOS = 60_000


def test_no_idle_flush_while_a_backlog_is_processed(settings_factory, worker_factory):
    # one window per batch event of 500 photos, so that one take of events makes many windows
    settings = settings_factory(window_size=500, pending_idle_s=1.0)
    ensure_topics(settings)
    codes, _, _ = planted_codes(N_PHOTOS, 300, flip_prob=0.1, random_state=4)
    ids = photo_ids(0, N_PHOTOS)
    produce_events(settings, photo_events(ids, to_bytes(codes), batch_size=500))  # the backlog
    worker = worker_factory(settings, name="backlog")
    reader = AssignmentReader(settings)
    try:
        result = reader.collect(ids, timeout=150, workers=[worker])
    finally:
        reader.close()
    by_window = defaultdict(set)
    for event in result.final.values():
        by_window[event["window"]].add(event["outcome"])
    data_windows = [w for w, outcomes in by_window.items() if outcomes - {"noise"}]
    noise_only = sorted(w for w, outcomes in by_window.items() if outcomes == {"noise"})
    early = [w for w in noise_only if w < max(data_windows)]
    n_early = sum(1 for e in result.final.values() if e["window"] in set(early))
    assert not early, (f"{n_early} photos declared noise by idle flushes (windows {early}) while windows up to "
                       f"{max(data_windows)} were still to come")
