"""The clusterer's state as table records (streams/state.py): pure, no Kafka needed."""

import numpy as np
import pytest

from core.online import OnlineClusterer
from core.synth import planted_codes
from streams import state


def _windows(n_windows=4, per_window=3000):
    codes, _, _ = planted_codes(n_windows * per_window, 60, flip_prob=0.1, random_state=3)
    ids = [f"photo-{i}-\u00e9" for i in range(len(codes))]
    return [(ids[w * per_window:(w + 1) * per_window], codes[w * per_window:(w + 1) * per_window])
            for w in range(n_windows)]


def _apply(store, records):
    for key, value in records:
        if value is None:
            store.pop(key, None)
        else:
            store[key] = value


def test_records_restore_a_clusterer_that_continues_identically(monkeypatch):
    monkeypatch.setattr(state, "CENTER_BLOCK", 16)  # many blocks, so partial rewrites are exercised
    monkeypatch.setattr(state, "PENDING_CHUNK", 7)
    windows = _windows()
    live = OnlineClusterer(window_size=5000, radius=60, min_cluster_size=5, random_state=1)
    store: dict[bytes, bytes] = {}
    previous_chunks = 0
    for ids, codes in windows[:3]:
        result = live.process(ids, codes, now=1.0)
        records = state.state_records(live, result)
        chunks = state.n_pending_chunks(records)
        _apply(store, records[:-1] + state.stale_pending_keys(previous_chunks, chunks) + records[-1:])
        previous_chunks = chunks
    restored = state.restore_clusterer(store)
    assert np.array_equal(restored.centers_, live.centers_)
    assert np.array_equal(restored.sizes_, live.sizes_)
    assert restored.pending_ids_ == live.pending_ids_
    record = state.cluster_record(store, 0)
    assert record["cluster"] == 0 and record["size"] == int(live.sizes_[0]) and len(record["center"]) == 64
    ids, codes = windows[3]
    a, b = live.process(ids, codes, now=2.0), restored.process(ids, codes, now=2.0)
    assert np.array_equal(a.cluster, b.cluster) and np.array_equal(a.outcome, b.outcome) and a.ids == b.ids


def test_missing_block_is_named():
    live = OnlineClusterer(window_size=5000, radius=60, min_cluster_size=5, random_state=1)
    ids, codes = _windows(1)[0]
    store = dict(state.state_records(live, live.process(ids, codes, now=1.0)))
    del store[state.center_key(0)]
    with pytest.raises(ValueError, match=r"record b'centers/0' is missing"):
        state.restore_clusterer(store)


def test_no_state_gives_none():
    assert state.restore_clusterer({}) is None


def test_input_positions_travel_with_the_state():
    ids, codes = _windows(1)[0]
    live = OnlineClusterer(window_size=5000, radius=60, min_cluster_size=5, random_state=1)
    result = live.process(ids, codes, now=1.0)
    store: dict[bytes, bytes] = {}
    assert state.stored_input_positions(store) == {}
    _apply(store, state.state_records(live, result, {("photo-hashes", 1): 250, ("photo-hashes", 0): 40}))
    assert state.stored_input_positions(store) == {("photo-hashes", 0): 40, ("photo-hashes", 1): 250}
    _apply(store, state.state_records(live, None))  # a state written without positions has none
    assert state.stored_input_positions(store) == {}
