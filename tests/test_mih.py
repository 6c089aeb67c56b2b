import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from core.hamming import hamming_distances
from core.mih import MultiIndexHash
from helpers import flip_bits, random_codes, reference_distances


def _clustered(rng, n_items, n_queries, n_bits, p):
    items = random_codes(rng, n_items, n_bits)
    queries = flip_bits(rng, items[rng.integers(0, n_items, n_queries)], p)
    return items, queries


def _check_nearest(index, items, queries, max_distance=None):
    ref = reference_distances(queries, items)
    labels, dist = index.nearest(queries, max_distance=max_distance)
    best = ref.argmin(axis=1)
    best_d = ref[np.arange(len(queries)), best]
    if max_distance is not None:
        missing = best_d > max_distance
        best, best_d = np.where(missing, -1, best), np.where(missing, -1, best_d)
    assert np.array_equal(labels, best)
    assert np.array_equal(dist, best_d)


def _check_range(index, items, queries, radius):
    ref = reference_distances(queries, items)
    offsets, idx, dist = index.range_search(queries, radius)
    for q in range(len(queries)):
        expected = np.flatnonzero(ref[q] <= radius)
        expected = expected[np.lexsort((expected, ref[q, expected]))]
        assert np.array_equal(idx[offsets[q]:offsets[q + 1]], expected)
        assert np.array_equal(dist[offsets[q]:offsets[q + 1]], ref[q, expected])


@settings(max_examples=60, deadline=None)
@given(
    n_bits=st.sampled_from([64, 128, 256, 512]),
    n_items=st.integers(0, 300),
    n_queries=st.integers(1, 40),
    p=st.sampled_from([0.0, 0.02, 0.1, 0.3, 0.5]),
    n_duplicates=st.integers(0, 10),
    m=st.one_of(st.just("auto"), st.integers(4, 16)),
    seed=st.integers(0, 2**32 - 1),
)
def test_nearest_and_range_equal_brute_force(n_bits, n_items, n_queries, p, n_duplicates, m, seed):
    rng = np.random.default_rng(seed)
    items, queries = _clustered(rng, max(n_items, 1), n_queries, n_bits, p)
    items = items[:n_items]
    if n_items and n_duplicates:  # duplicate items make exact ties that must go to the lowest index
        items = np.concatenate([items, items[rng.integers(0, n_items, n_duplicates)]])
    m = m if m == "auto" or n_bits // m <= 20 else "auto"
    index = MultiIndexHash(n_substrings=m).fit(items)
    if len(items) == 0:
        labels, dist = index.nearest(queries)
        assert (labels == -1).all() and (dist == -1).all()
        assert index.range_search(queries, 10)[0][-1] == 0
        return
    _check_nearest(index, items, queries)
    radius = int(rng.integers(0, n_bits // 2))
    _check_nearest(index, items, queries, max_distance=radius)
    _check_range(index, items, queries, radius)


@pytest.mark.parametrize("n_bits", [64, 256])
def test_add_keeps_answers_exact(n_bits):
    rng = np.random.default_rng(3)
    items, queries = _clustered(rng, 2000, 200, n_bits, 0.1)
    index = MultiIndexHash().fit(items[:100])
    for start in range(100, 2000, 150):  # windows of new centers, as the online clusterer adds them
        ids = index.add(items[start:start + 150])
        assert ids[0] == start
        seen = items[:index.n_items_]
        _check_nearest(index, seen, queries)
        _check_range(index, seen, queries, n_bits // 8)
    assert np.array_equal(index.codes_, items)


def test_searches_that_scanned_a_rebuild_worth_of_untabled_items_rebuild_first():
    from core.mih import SCAN_PAIRS_PER_ITEM

    rng = np.random.default_rng(4)
    items, queries = _clustered(rng, 4200, 400, 256, 0.1)
    index = MultiIndexHash().fit(items[:4000])
    index.add(items[4000:])  # 200 items: below the rebuild fraction, so they are scanned
    assert index._n_tabled == 4000
    per_search = len(queries) * 200
    searches = SCAN_PAIRS_PER_ITEM * 4200 // per_search  # the last search that still scans
    for _ in range(searches):
        _check_nearest(index, items, queries)
    assert index._n_tabled == 4000
    _check_range(index, items, queries, 40)  # one more: the scans would pass a rebuild's cost
    assert index._n_tabled == 4200
    _check_nearest(index, items, queries)


def test_adversarial_all_equal_and_far():
    zeros = np.zeros((50, 4), np.uint64)
    index = MultiIndexHash().fit(zeros)
    labels, dist = index.nearest(np.full((3, 4), np.iinfo(np.uint64).max, np.uint64))
    assert (labels == 0).all() and (dist == 256).all()
    offsets, idx, _ = index.range_search(zeros[:2], 0)
    assert np.array_equal(idx, np.concatenate([np.arange(50), np.arange(50)]))


@pytest.mark.parametrize("n_items, n_equal, layout", [
    (3000, 0, (np.uint8, 6)),  # about one item per bucket: uint8 offsets in blocks of 64 buckets
    (3000, 400, (np.uint16, 8)),  # a bucket of 400: uint8 would need blocks of one bucket
    (70_000, 70_000, (np.uint8, 0)),  # a bucket of 70,000 overflows uint16 too: one bucket per block
])
def test_crowded_buckets_change_the_table_layout_not_the_answers(n_items, n_equal, layout):
    rng = np.random.default_rng(11)
    items, queries = _clustered(rng, n_items, 40, 256, 0.05)
    items[:n_equal] = items[0]  # equal codes share a bucket in every table
    index = MultiIndexHash().fit(items)
    assert (index._bucket_offset.dtype, index._block_shift) == (np.dtype(layout[0]), layout[1])
    ref = hamming_distances(queries, items)
    labels, dist = index.nearest(queries)
    assert np.array_equal(labels, ref.argmin(axis=1))
    assert np.array_equal(dist, ref.min(axis=1))
    offsets, idx, _ = index.range_search(queries[:5], 20)
    for q in range(5):
        assert np.array_equal(np.sort(idx[offsets[q]:offsets[q + 1]]), np.flatnonzero(ref[q] <= 20))


def test_state_round_trip():
    rng = np.random.default_rng(5)
    items, queries = _clustered(rng, 500, 50, 256, 0.1)
    index = MultiIndexHash().fit(items)
    restored = MultiIndexHash.from_state(index.get_state())
    assert np.array_equal(restored.nearest(queries)[0], index.nearest(queries)[0])


def test_errors():
    with pytest.raises(ValueError, match="n_substrings=3 must be between 13 and 128"):
        MultiIndexHash(n_substrings=3).fit(np.zeros((2, 4), np.uint64))
    with pytest.raises(RuntimeError, match="not fitted"):
        MultiIndexHash().nearest(np.zeros((2, 4), np.uint64))
    index = MultiIndexHash().fit(np.zeros((2, 4), np.uint64))
    with pytest.raises(ValueError, match="radius=300 must be between 0 and 256"):
        index.range_search(np.zeros((1, 4), np.uint64), 300)
    with pytest.raises(ValueError, match="queries are 64-bit codes, expected 256-bit"):
        index.nearest(np.zeros((1, 1), np.uint64))
