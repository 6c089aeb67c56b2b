"""The found stage's records (streams/state.py): pure, no Kafka needed. Center blocks for the public
centers topic; cluster stats, pending pool and meta for the state topic; and the rebuild."""

import msgpack
import numpy as np
import pytest
from helpers import recurring_stream

from core.online import OnlineClusterer
from core.synth import planted_codes
from streams import state

PARAMS = dict(n_bits=256, window_size=5000, new_centers_ratio=0.1, radius=60, min_cluster_size=5,
              pending_capacity=5000, max_iter=10, random_state=1)


def _windows(n_windows=4, per_window=3000):
    codes, _, _ = planted_codes(n_windows * per_window, 60, flip_prob=0.1, random_state=3)
    ids = [f"photo-{i}-\u00e9" for i in range(len(codes))]
    return [(ids[w * per_window:(w + 1) * per_window], codes[w * per_window:(w + 1) * per_window])
            for w in range(n_windows)]


class Topics:
    """The two compacted topics as dicts (the newest value of each key)."""

    def __init__(self) -> None:
        self.centers: dict[bytes, bytes] = {}
        self.state: dict[bytes, bytes] = {}
        self.chunks = 0

    def write(self, clusterer: OnlineClusterer, result, positions=None) -> None:
        self.write_centers(clusterer, result)
        records = state.state_records(clusterer, np.concatenate((result.touched_clusters, result.retired)),
                                      positions, self.chunks)
        self.chunks = state.n_pending_chunks(records)
        self._apply(self.state, records)

    def write_centers(self, clusterer: OnlineClusterer, result) -> None:
        self._apply(self.centers, state.center_records(
            clusterer, np.concatenate((result.new_cluster_ids, result.retired)), result.window))

    @staticmethod
    def _apply(topic: dict, records) -> None:
        for key, value in records:
            if value is None:
                topic.pop(key, None)
            else:
                topic[key] = value

    def restore(self, **params):
        return state.restore_clusterer(self.centers.values(), self.state.get, {**PARAMS, **params})


def _live():
    return OnlineClusterer(**{**PARAMS, "window_size": 5000})


def test_records_restore_a_clusterer_that_continues_identically(monkeypatch):
    monkeypatch.setattr(state, "CENTER_BLOCK", 16)  # many blocks, so partial rewrites are exercised
    monkeypatch.setattr(state, "PENDING_CHUNK", 7)
    windows = _windows()
    live, topics = _live(), Topics()
    for ids, codes in windows[:3]:
        topics.write(live, live.process(ids, codes, now=1.0))
    live.record_joins(np.array([0, 3]), np.array([5, 1]), 1.5)  # joins counted by a join stage
    result = live.process(windows[2][0][:10], windows[2][1][:10], now=1.6)
    topics.write(live, result)
    restored, changes = topics.restore()
    assert changes == []
    assert np.array_equal(restored.centers_, live.centers_)
    assert np.array_equal(restored.sizes_, live.sizes_)
    assert np.array_equal(restored.updated_ts_, live.updated_ts_)
    assert np.array_equal(restored.created_ts_, live.created_ts_)
    assert restored.pending_ids_ == live.pending_ids_
    assert restored.n_windows_ == live.n_windows_
    ids, codes = windows[3]
    a, b = live.process(ids, codes, now=2.0), restored.process(ids, codes, now=2.0)
    assert np.array_equal(a.cluster, b.cluster) and np.array_equal(a.outcome, b.outcome) and a.ids == b.ids


def test_center_blocks_are_the_public_format():
    live = _live()
    ids, codes = _windows(1)[0]
    result = live.process(ids, codes, now=7.0)
    records = state.center_records(live, live.cluster_ids_, result.window)
    assert [key for key, _ in records] == [state.center_key(b) for b in range(len(records))]
    value = msgpack.unpackb(records[0][1])
    assert set(value) == {"format", "n_bits", "first", "count", "rows", "codes", "created", "window"}
    n = min(live.n_clusters_, state.CENTER_BLOCK)
    codes0 = np.frombuffer(value["codes"], dtype="<u8").reshape(-1, 4)
    assert np.array_equal(codes0, live.centers_[:n]) and value["first"] == 0 and value["window"] == 0
    assert np.array_equal(np.frombuffer(value["created"], dtype="<f8"), np.full(n, 7.0))
    assert value["count"] == n and np.array_equal(np.frombuffer(value["rows"], dtype="<u2"), np.arange(n))
    block = state.decode_center_block(records[0][1])
    assert block.first == 0 and np.array_equal(block.codes, live.centers_[:n]) and block.window == 0
    assert np.array_equal(block.cluster_ids, np.arange(n)) and block.count == n
    with pytest.raises(ValueError, match="not a center block"):
        state.decode_center_block(msgpack.packb({"format": 1}))
    # Format 1, written before retirement: every row held.
    old = state.decode_center_block(msgpack.packb({k: v for k, v in {**value, "format": 1}.items()
                                                   if k not in ("count", "rows")}))
    assert np.array_equal(old.cluster_ids, block.cluster_ids) and old.count == n


def test_centers_without_their_window_state_are_kept():
    """A crash after the center blocks were acknowledged but before the window's meta: the centers
    stay (a copy may have used them), so their ids are never handed out again."""
    live, topics = _live(), Topics()
    codes, truth, _ = planted_codes(6000, 60, flip_prob=0.1, random_state=3)
    ids = [f"photo-{i}" for i in range(len(codes))]
    first = np.flatnonzero(truth < 30)  # window 2 brings photos of 30 other clusters
    second = np.flatnonzero(truth >= 30)
    ids_1, codes_1 = [ids[i] for i in first], codes[first]
    ids_2, codes_2 = [ids[i] for i in second], codes[second]
    topics.write(live, live.process(ids_1, codes_1, now=1.0))
    result = live.process(ids_2, codes_2, now=2.0)
    assert result.n_new_clusters > 0
    topics.write_centers(live, result)
    restored, _ = topics.restore()
    assert restored.n_clusters_ == live.n_clusters_
    assert np.array_equal(restored.centers_, live.centers_)
    new = slice(result.n_clusters - result.n_new_clusters, result.n_clusters)
    assert np.all(restored.sizes_[new] == 0)  # their stats never arrived
    assert restored.n_windows_ == live.n_windows_  # the window numbers go on after the blocks' window


def test_missing_records_are_named():
    live, topics = _live(), Topics()
    ids, codes = _windows(1)[0]
    topics.write(live, live.process(ids, codes, now=1.0))
    del topics.centers[state.center_key(0)]
    with pytest.raises(ValueError, match="handed out cluster ids up to .* but the centers topic holds ids only below 0"):
        topics.restore()
    topics = Topics()
    lonely = np.random.default_rng(0).integers(0, 1 << 63, (10, 4), dtype=np.uint64)  # too few to found
    topics.write(live, live.process([f"lonely-{i}" for i in range(10)], lonely, now=2.0))
    assert topics.state.get(state.pending_key(0)) is not None
    del topics.state[state.pending_key(0)]
    topics.centers = dict(state.center_records(live, live.cluster_ids_, 0))
    with pytest.raises(ValueError, match=r"b'pending/0' is missing"):
        topics.restore()


def test_changed_settings_apply_and_n_bits_is_refused():
    live, topics = _live(), Topics()
    ids, codes = _windows(1)[0]
    topics.write(live, live.process(ids, codes, now=1.0))
    restored, changes = topics.restore(radius=8, window_size=9000, random_state=99)
    assert sorted(changes) == [("radius", 60, 8), ("window_size", 5000, 9000)]
    assert restored.radius == 8 and restored.window_size == 9000
    assert restored.random_state == 1  # the stored seed stays
    with pytest.raises(ValueError, match="n_bits=128 differs from the stored state's n_bits=256"):
        topics.restore(n_bits=128)


def test_no_state_gives_a_new_clusterer():
    restored, changes = Topics().restore()
    assert restored.n_clusters_ == 0 and restored.n_windows_ == 0 and changes == []


def test_input_positions_travel_with_the_state():
    ids, codes = _windows(1)[0]
    live, topics = _live(), Topics()
    assert state.stored_input_positions(None) == {}
    topics.write(live, live.process(ids, codes, now=1.0), {("unjoined", 0): (250, 17)})
    assert state.stored_input_positions(topics.state[state.META_KEY]) == {("unjoined", 0): (250, 17)}


def test_the_carry_into_the_next_window_travels_with_the_state():
    ids, codes = _windows(1)[0]
    live = _live()
    assert state.stored_carry(None) == 0
    records = state.state_records(live, live.process(ids, codes, now=1.0).touched_clusters, carry=37)
    assert state.stored_carry(dict(records)[state.META_KEY]) == 37


def test_retired_centers_leave_both_topics_and_the_restore_continues_identically(monkeypatch):
    """Retirement rewrites the blocks without the retired centers, tombstones a full block once all
    of it is retired, and a restore (or a copy) from what compaction keeps is the live clusterer."""
    from core.centers import CenterIndex

    monkeypatch.setattr(state, "CENTER_BLOCK", 16)
    ids, codes, _ = recurring_stream(8, 2000, 200, seed=6, per_window=40)
    params = {**PARAMS, "max_centers": 60, "max_idle": None}
    live, topics = OnlineClusterer(**params), Topics()
    retired = []
    for w in range(7):
        result = live.process(ids[w * 2000:(w + 1) * 2000], codes[w * 2000:(w + 1) * 2000], now=float(w))
        topics.write(live, result)
        retired += result.retired.tolist()
    assert len(retired) > 100 and live.next_cluster_id_ > live.n_clusters_ == 60
    tombstoned = {block for block in range(live.next_cluster_id_ // 16) if state.center_key(block) not in topics.centers}
    assert tombstoned and all(state.stats_key(block) not in topics.state for block in tombstoned)
    restored, _ = topics.restore(max_centers=60)
    for name in ("cluster_ids_", "centers_", "sizes_", "created_ts_", "updated_ts_"):
        assert np.array_equal(getattr(restored, name), getattr(live, name)), name
    assert restored.next_cluster_id_ == live.next_cluster_id_
    a = live.process(ids[14000:], codes[14000:], now=7.0)
    b = restored.process(ids[14000:], codes[14000:], now=7.0)
    assert np.array_equal(a.cluster, b.cluster) and np.array_equal(a.retired, b.retired)
    assert a.new_cluster_ids.size == 0 or a.new_cluster_ids[0] == live.next_cluster_id_ - a.n_new_clusters > max(retired)
    # A copy read from the compacted topic, blocks in any order, holds exactly the held centers.
    topics.write(live, a)
    copy = CenterIndex(256)
    records = list(topics.centers.items()) + [(state.center_key(block), None) for block in tombstoned]
    for i in np.random.default_rng(0).permutation(len(records)):
        copy.update([state.center_update(*records[i], 256)[0]])
    assert np.array_equal(copy.cluster_ids_, live.cluster_ids_) and np.array_equal(copy.centers_, live.centers_)
    # The figures a joiner answers: none for a retired cluster, the live ones for a held one.
    get_center, get_state = topics.centers.get, topics.state.get
    assert state.stored_cluster(retired[0], get_center, get_state) is None
    held = int(live.cluster_ids_[-1])
    figures = state.stored_cluster(held, get_center, get_state)
    assert figures["size"] == live.sizes_[-1] and figures["updated_ts"] == live.updated_ts_[-1]
