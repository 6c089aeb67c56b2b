"""Tests for core.synth: planted clusters have the promised shape, balance and noise rate."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.codes import check_codes, unpack_bits
from core.synth import bernoulli_words, planted_codes


def _flip_fraction(codes: np.ndarray, truth: np.ndarray, centers: np.ndarray) -> float:
    return float(unpack_bits(codes ^ centers[truth]).mean())


@pytest.mark.parametrize("n_bits", [64, 128, 256, 512])
def test_shapes_and_dtypes(n_bits):
    codes, truth, centers = planted_codes(1000, 7, n_bits=n_bits, flip_prob=0.05, random_state=0)
    assert codes.shape == (1000, n_bits // 64) and codes.dtype == np.uint64 and codes.flags.c_contiguous
    assert truth.shape == (1000,) and truth.dtype == np.int64
    assert centers.shape == (7, n_bits // 64) and centers.dtype == np.uint64 and centers.flags.c_contiguous
    check_codes(codes, n_bits=n_bits)
    check_codes(centers, n_bits=n_bits)
    assert truth.min() >= 0 and truth.max() < 7


@pytest.mark.parametrize("n_samples, n_clusters", [(1000, 7), (10, 10), (5, 1), (101, 4)])
def test_cluster_sizes_are_balanced_and_order_is_shuffled(n_samples, n_clusters):
    _, truth, _ = planted_codes(n_samples, n_clusters, random_state=1)
    sizes = np.bincount(truth, minlength=n_clusters)
    assert sizes.sum() == n_samples
    assert sizes.max() - sizes.min() <= 1
    assert sizes.min() >= 1
    if n_clusters > 1 and n_samples >= 100:
        assert not np.array_equal(truth, np.arange(n_samples) % n_clusters)


@pytest.mark.parametrize("flip_prob", [0.1, 0.02, 0.3, 0.5])
def test_empirical_flip_rate_matches_flip_prob(flip_prob):
    # 10_000 x 256 = 2.56M bits: the standard deviation of the rate is below 3.2e-4.
    codes, truth, centers = planted_codes(10_000, 50, n_bits=256, flip_prob=flip_prob, random_state=2)
    assert abs(_flip_fraction(codes, truth, centers) - flip_prob) < 0.005


def test_flips_are_independent_across_bit_positions_and_samples():
    codes, truth, centers = planted_codes(20_000, 20, n_bits=128, flip_prob=0.2, random_state=3)
    flips = unpack_bits(codes ^ centers[truth]).astype(np.float64)
    per_position = flips.mean(axis=0)  # each of 128 positions: ~0.2 with sd 0.0028
    assert np.all(np.abs(per_position - 0.2) < 0.02)
    per_sample = flips.sum(axis=1)  # Binomial(128, 0.2): variance 20.48
    assert per_sample.var() == pytest.approx(128 * 0.2 * 0.8, rel=0.1)
    # Neighbouring bits are uncorrelated.
    corr = np.corrcoef(flips[:, :-1].ravel(), flips[:, 1:].ravel())[0, 1]
    assert abs(corr) < 0.01


def test_zero_and_one_flip_probabilities_are_exact():
    codes, truth, centers = planted_codes(500, 5, flip_prob=0.0, random_state=4)
    np.testing.assert_array_equal(codes, centers[truth])
    codes, truth, centers = planted_codes(500, 5, flip_prob=1.0, random_state=4)
    np.testing.assert_array_equal(codes, ~centers[truth])


def test_centers_have_uniform_bits():
    _, _, centers = planted_codes(4000, 4000, n_bits=256, flip_prob=0.1, random_state=5)
    assert abs(unpack_bits(centers).mean() - 0.5) < 0.005


def test_samples_are_closest_to_their_own_center():
    codes, truth, centers = planted_codes(2000, 16, n_bits=256, flip_prob=0.1, random_state=6)
    bits = unpack_bits(codes).astype(np.int32)
    center_bits = unpack_bits(centers).astype(np.int32)
    dist = bits.sum(1)[:, None] + center_bits.sum(1)[None, :] - 2 * bits @ center_bits.T
    np.testing.assert_array_equal(dist.argmin(axis=1), truth)


def test_same_seed_is_repeatable_and_different_seeds_differ():
    a = planted_codes(3000, 9, flip_prob=0.15, random_state=123)
    b = planted_codes(3000, 9, flip_prob=0.15, random_state=123)
    c = planted_codes(3000, 9, flip_prob=0.15, random_state=124)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    g1 = planted_codes(300, 3, random_state=np.random.default_rng(8))
    g2 = planted_codes(300, 3, random_state=np.random.default_rng(8))
    for x, y in zip(g1, g2):
        np.testing.assert_array_equal(x, y)
    planted_codes(10, 2)  # None: fresh entropy, just has to work


@settings(max_examples=30, deadline=None)
@given(
    n_words=st.integers(0, 3000),
    p=st.floats(0.0, 1.0, allow_nan=False),
    seed=st.integers(0, 2**32 - 1),
)
def test_bernoulli_words_shape_and_rate(n_words, p, seed):
    words = bernoulli_words(n_words, p, np.random.default_rng(seed))
    assert words.shape == (n_words,) and words.dtype == np.uint64
    n_bits = 64 * n_words
    if n_bits:
        rate = np.unpackbits(words.view(np.uint8)).mean()
        # Within 6 standard deviations (plus a little slack for p near 0 or 1).
        assert abs(rate - p) <= 6 * np.sqrt(p * (1 - p) / n_bits) + 1e-3
    np.testing.assert_array_equal(words, bernoulli_words(n_words, p, np.random.default_rng(seed)))


def test_bernoulli_words_exact_for_dyadic_and_tiny_probabilities():
    rng = np.random.default_rng(9)
    half = bernoulli_words(50_000, 0.5, rng)
    assert abs(np.unpackbits(half.view(np.uint8)).mean() - 0.5) < 0.003
    tiny = bernoulli_words(50_000, 1e-300, rng)
    assert not tiny.any()
    three_quarters = bernoulli_words(50_000, 0.75, rng)
    assert abs(np.unpackbits(three_quarters.view(np.uint8)).mean() - 0.75) < 0.003


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"n_samples": 0}, ValueError, "n_samples=0 must be >= 1"),
        ({"n_samples": 10.0}, TypeError, "n_samples=10.0 must be an integer"),
        ({"n_clusters": 0}, ValueError, "n_clusters=0 must be >= 1"),
        ({"n_clusters": True}, TypeError, "n_clusters=True must be an integer"),
        ({"n_clusters": 11}, ValueError, "n_clusters=11 exceeds n_samples=10"),
        ({"n_bits": 100}, ValueError, r"n_bits=100 is not supported; choose one of \(64, 128, 256, 512\)"),
        ({"flip_prob": 1.5}, ValueError, r"flip_prob=1.5 must be between 0 and 1"),
        ({"flip_prob": -0.1}, ValueError, "flip_prob=-0.1"),
        ({"flip_prob": float("nan")}, ValueError, "flip_prob=nan"),
        ({"flip_prob": "0.1"}, TypeError, "flip_prob='0.1'"),
        ({"random_state": "x"}, TypeError, "random_state='x'"),
        ({"random_state": -1}, ValueError, "random_state=-1"),
    ],
)
def test_bad_parameters_raise_clear_errors(kwargs, error, message):
    params = {"n_samples": 10, "n_clusters": 2, "n_bits": 256, "flip_prob": 0.1, "random_state": 0, **kwargs}
    with pytest.raises(error, match=message):
        planted_codes(**params)
