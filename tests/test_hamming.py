import numpy as np
import pytest

from core.hamming import hamming_distances, nearest_brute, paired_distances
from helpers import random_codes, reference_distances, reference_nearest


@pytest.mark.parametrize("n_bits", [64, 128, 256, 512])
def test_distances_match_unpackbits(n_bits):
    rng = np.random.default_rng(n_bits)
    a, b = random_codes(rng, 40, n_bits), random_codes(rng, 30, n_bits)
    expected = reference_distances(a, b)
    assert np.array_equal(hamming_distances(a, b), expected)
    assert np.array_equal(paired_distances(a, a[::-1]), reference_distances(a, a[::-1]).diagonal())


def test_nearest_ties_go_to_lowest_index():
    rng = np.random.default_rng(1)
    centers = random_codes(rng, 50, 256)
    centers[30] = centers[7]  # duplicate: the lower index must win
    points = np.concatenate([centers[[30, 7]], random_codes(rng, 100, 256)])
    labels, dist = nearest_brute(points, centers)
    ref_labels, ref_dist = reference_nearest(points, centers)
    assert np.array_equal(labels, ref_labels) and np.array_equal(dist, ref_dist)
    assert labels[0] == 7 and labels[1] == 7


@pytest.mark.parametrize("block", [1, 7, 64, 1 << 16])
def test_nearest_brute_in_blocks_of_centers_equals_one_scan(monkeypatch, block):
    from core import hamming

    monkeypatch.setattr(hamming, "SCAN_BLOCK", block)
    rng = np.random.default_rng(8)
    centers = random_codes(rng, 150, 128)
    centers[100:] = centers[:50]  # the same center again in a later block: the lower id must win
    points = np.concatenate((centers[[0, 49, 120]], random_codes(rng, 40, 128)))
    labels, dist = nearest_brute(points, centers)
    ref_labels, ref_dist = reference_nearest(points, centers)
    assert np.array_equal(labels, ref_labels) and np.array_equal(dist, ref_dist)
    assert labels[:3].tolist() == [0, 49, 20]


def test_width_mismatch_is_an_error():
    with pytest.raises(ValueError, match="256-bit codes but centers are 64-bit"):
        nearest_brute(np.zeros((1, 4), np.uint64), np.zeros((1, 1), np.uint64))


@pytest.mark.parametrize("n_bits", [64, 256, 512])
def test_permute_bits_moves_each_bit_and_keeps_distances(n_bits):
    from core import _kernels
    from core.codes import unpack_bits

    rng = np.random.default_rng(n_bits)
    codes = random_codes(rng, 50, n_bits)
    source = rng.permutation(n_bits)
    out = np.empty_like(codes)
    _kernels.permute_bits(codes, source, out)
    assert np.array_equal(unpack_bits(out), unpack_bits(codes)[:, source])
    assert np.array_equal(reference_distances(out, out), reference_distances(codes, codes))


def test_seeding_kernels_match_reference_distances():
    """k-means++ seeding: the potential of each candidate and the distance update, against numpy."""
    from core import _kernels

    rng = np.random.default_rng(9)
    codes = random_codes(rng, 300, 256)
    full = reference_distances(codes, codes)
    dist = full[:, 7].astype(np.int32)
    trials = np.array([3, 7, 150, 299], dtype=np.int64)
    potentials = np.empty(4, dtype=np.int64)
    _kernels.seeding_potentials(codes, dist, trials, potentials)
    expected = [int((np.minimum(dist, full[:, t]).astype(np.int64) ** 2).sum()) for t in trials]
    assert potentials.tolist() == expected
    _kernels.lower_min_distance(codes, codes, 150, dist)
    assert np.array_equal(dist, np.minimum(full[:, 7], full[:, 150]))
