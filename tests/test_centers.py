"""The join step on its own (core.centers): a copy of the centers that follows founded and retired
centers block by block and joins exactly as a brute-force scan would, and the found step's counting of joins made elsewhere."""

from __future__ import annotations

import numpy as np
import pytest

from core.centers import CenterIndex, join_within
from core.hamming import hamming_distances
from core.mih import MultiIndexHash
from core.online import OnlineClusterer
from core.synth import planted_codes


def _reference_join(centers: np.ndarray, codes: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Nearest center within radius by a full distance matrix (ties: lowest id), -1/-1 for none."""
    if centers.shape[0] == 0:
        return np.full(codes.shape[0], -1), np.full(codes.shape[0], -1)
    d = hamming_distances(codes, centers)
    labels = np.argmin(d, axis=1)
    best = d[np.arange(codes.shape[0]), labels]
    far = best > radius
    return np.where(far, -1, labels), np.where(far, -1, best)


@pytest.mark.parametrize("radius", [0, 20, 64, 128])
def test_join_within_matches_a_full_scan(radius):
    codes, _, centers = planted_codes(3000, 200, flip_prob=0.1, random_state=1)
    index = MultiIndexHash().fit(centers)
    labels, distances = join_within(index, codes, radius)
    expected_labels, expected_distances = _reference_join(centers, codes, radius)
    np.testing.assert_array_equal(labels, expected_labels)
    np.testing.assert_array_equal(distances, expected_distances)


def block(centers: np.ndarray, lo: int, hi: int, ids=None) -> tuple[int, int, np.ndarray, np.ndarray]:
    """The block ``[lo, hi)`` holding ``ids`` (default: every id of it below len(centers))."""
    ids = np.arange(lo, min(hi, len(centers))) if ids is None else np.asarray(ids, dtype=np.int64)
    return lo, hi, ids, centers[ids]


def test_center_index_holds_ids_in_order_from_blocks_in_any_order():
    codes, _, centers = planted_codes(2000, 300, flip_prob=0.1, random_state=2)
    index = CenterIndex(256)
    # Blocks of 100 arrive out of order, one of them twice and one first with fewer rows.
    assert index.update([block(centers, 100, 200)]) == (100, 0)
    assert index.update([block(centers[:50], 0, 100)]) == (50, 0)  # below held ids: a rebuild
    assert index.update([block(centers, 0, 100), block(centers, 200, 300)]) == (150, 0)
    assert index.update([block(centers, 200, 300)]) == (0, 0)
    np.testing.assert_array_equal(index.centers_, centers)
    np.testing.assert_array_equal(index.cluster_ids_, np.arange(300))
    labels, distances = index.join(codes, 64)
    expected = _reference_join(centers, codes, 64)
    np.testing.assert_array_equal(labels, expected[0])
    np.testing.assert_array_equal(distances, expected[1])


def test_retired_centers_leave_the_copy_and_joins_give_cluster_ids():
    codes, _, centers = planted_codes(3000, 300, flip_prob=0.1, random_state=5)
    index = CenterIndex(256)
    index.update([block(centers, lo, lo + 100) for lo in (0, 100, 200)])
    held = np.setdiff1d(np.arange(300), np.r_[5:60, 150:200, 250])
    # Block 100 loses its upper half, block 0 most of it, block 200 one center; block 0 twice:
    # the last one counts.
    assert index.update([block(centers, 0, 100, np.arange(100)), block(centers, 100, 200, held[(held >= 100) & (held < 200)]),
                         block(centers, 200, 300, held[held >= 200]), block(centers, 0, 100, held[held < 100])]) == (0, 106)
    np.testing.assert_array_equal(index.cluster_ids_, held)
    np.testing.assert_array_equal(index.centers_, centers[held])
    labels, distances = index.join(codes, 64)
    rows, expected_distances = _reference_join(centers[held], codes, 64)
    np.testing.assert_array_equal(labels, np.where(rows >= 0, held[rows], -1))
    np.testing.assert_array_equal(distances, expected_distances)
    assert index.update([(0, 100, np.zeros(0, np.int64), np.zeros((0, 4), np.uint64))]) == (0, 45)  # a tombstone
    assert index.cluster_ids_.min() >= 100


def test_a_center_id_never_changes_its_code():
    _, _, centers = planted_codes(40, 20, flip_prob=0.1, random_state=3)
    index = CenterIndex(256)
    index.update([block(centers, 0, 10)])
    changed = np.concatenate((centers[:3], centers[13:14], centers[4:12]))
    with pytest.raises(ValueError, match="center 3 arrived with another code"):
        index.update([block(centers, 10, 20), (0, 10, np.arange(10), changed[:10])])
    assert index.n_centers_ == 10  # a refused update changes nothing


def test_center_index_checks_its_arguments():
    index = CenterIndex(256)
    one = np.zeros((1, 4), np.uint64)
    with pytest.raises(ValueError, match="lo=-1"):
        index.update([(-1, 10, np.array([0]), one)])
    with pytest.raises(ValueError, match=r"must ascend within \[0, 10\)"):
        index.update([(0, 10, np.array([10]), one)])
    with pytest.raises(ValueError, match="one per code"):
        index.update([(0, 10, np.array([1, 2]), one)])
    with pytest.raises(ValueError, match="overlap"):
        index.update([(0, 10, np.array([1]), one), (5, 20, np.array([6]), one)])
    with pytest.raises(ValueError, match="radius=300"):
        index.join(one, 300)
    labels, distances = index.join(np.zeros((3, 4), np.uint64), 64)  # no centers yet: nothing joins
    assert labels.tolist() == [-1] * 3 and distances.tolist() == [-1] * 3


def test_a_copy_that_lags_joins_a_subset_and_never_another_cluster():
    """What a lagging copy joins, the full set joins to a center at least as near; the rest is left
    to the found stage."""
    codes, _, centers = planted_codes(3000, 100, flip_prob=0.1, random_state=4)
    full, lagging = CenterIndex(256), CenterIndex(256)
    full.update([block(centers, 0, 100)])
    lagging.update([block(centers[:60], 0, 100)])
    full_labels, full_distances = full.join(codes, 64)
    labels, distances = lagging.join(codes, 64)
    joined = labels >= 0
    assert 0 < joined.sum() < (full_labels >= 0).sum()
    assert np.all(full_distances[joined] <= distances[joined])


def test_record_joins_adds_to_sizes_and_last_join():
    codes, _, _ = planted_codes(2000, 20, flip_prob=0.1, random_state=5)
    clusterer = OnlineClusterer(window_size=2000, min_cluster_size=5, random_state=0)
    clusterer.process([str(i) for i in range(2000)], codes, now=100.0)
    n = clusterer.n_clusters_
    assert n > 0
    sizes = clusterer.sizes_.copy()
    clusterer.record_joins(np.array([0, n - 1]), np.array([3, 4]), 200.0)
    assert clusterer.sizes_[0] == sizes[0] + 3 and clusterer.sizes_[n - 1] == sizes[n - 1] + 4
    assert clusterer.updated_ts_[0] == 200.0 and clusterer.updated_ts_[n - 1] == 200.0
    if n > 2:
        assert clusterer.updated_ts_[1] == 100.0
    with pytest.raises(ValueError, match=f"cluster {n} does not exist"):
        clusterer.record_joins(np.array([n]), np.array([1]), 300.0)
    with pytest.raises(ValueError, match="counts must be >= 1"):
        clusterer.record_joins(np.array([0]), np.array([0]), 300.0)
    assert clusterer.sizes_[0] == sizes[0] + 3  # a refused call changes nothing
