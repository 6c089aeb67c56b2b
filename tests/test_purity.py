"""Tests for core.purity against hand-computed values and an independent slow reference."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.purity import NOISE_LABEL, normalized_mutual_info, purity


def _reference_purity(labels, truth) -> float:
    by_cluster: dict[int, Counter] = {}
    for label, cls in zip(labels, truth):
        by_cluster.setdefault(int(label), Counter())[int(cls)] += 1
    return sum(max(c.values()) for c in by_cluster.values()) / len(labels)


def _reference_nmi(labels, truth) -> float:
    """Textbook NMI with arithmetic-mean normalization, in plain Python (scikit-learn's definition)."""
    n = len(labels)
    a = Counter(int(x) for x in labels)
    b = Counter(int(x) for x in truth)
    if len(a) == 1 and len(b) == 1:
        return 1.0
    joint = Counter(zip((int(x) for x in labels), (int(x) for x in truth)))
    mi = sum(c / n * math.log(n * c / (a[i] * b[j])) for (i, j), c in joint.items())
    h_a = -sum(c / n * math.log(c / n) for c in a.values())
    h_b = -sum(c / n * math.log(c / n) for c in b.values())
    if mi <= 1e-15:
        return 0.0
    return mi / ((h_a + h_b) / 2)


labelings = st.integers(1, 60).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(-1, 6), min_size=n, max_size=n),
        st.lists(st.integers(0, 5), min_size=n, max_size=n),
    )
)


# -- hand-computed values ---------------------------------------------------------------------------


def test_small_hand_computed_case():
    labels = [0, 0, 1, 1]
    truth = [0, 0, 0, 1]
    # Cluster 0 = {a, a}, cluster 1 = {a, b}: majority counts 2 + 1.
    assert purity(labels, truth) == 0.75
    # MI = 1/2 ln(4*2/(2*3)) + 1/4 ln(4*1/(2*3)) + 1/4 ln(4*1/(2*1)),
    # H(labels) = ln 2, H(truth) = -(3/4 ln 3/4 + 1/4 ln 1/4).
    mi = 0.5 * math.log(4 / 3) + 0.25 * math.log(2 / 3) + 0.25 * math.log(2)
    h_labels = math.log(2)
    h_truth = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    expected = mi / ((h_labels + h_truth) / 2)
    assert expected == pytest.approx(0.3437110184854508, abs=1e-15)
    assert normalized_mutual_info(labels, truth) == pytest.approx(expected, abs=1e-12)


def test_perfect_clustering_scores_one_regardless_of_label_names():
    truth = np.array([0, 0, 1, 1, 2, 2, 2])
    labels = np.array([7, 7, -1, -1, 3, 3, 3])
    assert purity(labels, truth) == 1.0
    assert normalized_mutual_info(labels, truth) == pytest.approx(1.0, abs=1e-12)
    assert normalized_mutual_info(truth, truth) == pytest.approx(1.0, abs=1e-12)


def test_independent_labelings_score_zero_nmi():
    # A full factorial design: every (cluster, class) pair equally often -> MI exactly 0.
    labels = np.repeat(np.arange(4), 6)
    truth = np.tile(np.arange(3), 8)
    assert normalized_mutual_info(labels, truth) == 0.0
    assert purity(labels, truth) == pytest.approx(1 / 3)


def test_large_random_independent_labelings_have_nmi_near_zero():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 200_000)
    truth = rng.integers(0, 10, 200_000)
    assert 0.0 <= normalized_mutual_info(labels, truth) < 1e-3


def test_degenerate_cases_follow_scikit_learn_conventions():
    # Both labelings a single group: perfect agreement.
    assert normalized_mutual_info([5, 5, 5], [1, 1, 1]) == 1.0
    # Only one a single group: no information.
    assert normalized_mutual_info([0, 0, 0, 0], [0, 1, 2, 3]) == 0.0
    assert normalized_mutual_info([0, 1, 2, 3], [0, 0, 0, 0]) == 0.0
    # One item.
    assert purity([3], [9]) == 1.0
    assert normalized_mutual_info([3], [9]) == 1.0


def test_singleton_clusters_have_purity_one_but_nmi_below_one():
    truth = np.array([0, 0, 0, 1, 1, 1])
    labels = np.arange(6)
    assert purity(labels, truth) == 1.0
    assert normalized_mutual_info(labels, truth) < 1.0


# -- noise -------------------------------------------------------------------------------------------


def test_noise_is_an_ordinary_label_by_default():
    labels = np.array([0, 0, 0, NOISE_LABEL, NOISE_LABEL, 1])
    truth = np.array([0, 0, 1, 0, 1, 1])
    # Clusters: {0: [0,0,1]} -> 2, {-1: [0,1]} -> 1, {1: [1]} -> 1.
    assert purity(labels, truth) == pytest.approx(4 / 6)
    assert normalized_mutual_info(labels, truth) == pytest.approx(_reference_nmi(labels, truth), abs=1e-12)


def test_ignore_noise_drops_items_labelled_minus_one():
    labels = np.array([0, 0, 0, NOISE_LABEL, NOISE_LABEL, 1])
    truth = np.array([0, 0, 1, 0, 1, 1])
    # Remaining: {0: [0,0,1]} -> 2, {1: [1]} -> 1, out of 4 clustered items.
    assert purity(labels, truth, ignore_noise=True) == pytest.approx(3 / 4)
    keep = labels != NOISE_LABEL
    assert normalized_mutual_info(labels, truth, ignore_noise=True) == pytest.approx(
        normalized_mutual_info(labels[keep], truth[keep]), abs=1e-15
    )
    # Noise in the *truth* is not special.
    assert purity(truth - 1, labels + 1, ignore_noise=True) == purity(truth[truth != 0] - 1, labels[truth != 0] + 1)


def test_ignore_noise_with_only_noise_is_an_error():
    with pytest.raises(ValueError, match="every item is labelled noise"):
        purity([-1, -1], [0, 1], ignore_noise=True)
    with pytest.raises(ValueError, match="every item is labelled noise"):
        normalized_mutual_info([-1, -1], [0, 1], ignore_noise=True)


# -- properties ------------------------------------------------------------------------------------------


@settings(max_examples=120, deadline=None)
@given(labelings)
def test_matches_independent_reference(pair):
    labels, truth = pair
    assert purity(labels, truth) == pytest.approx(_reference_purity(labels, truth), abs=1e-12)
    assert normalized_mutual_info(labels, truth) == pytest.approx(_reference_nmi(labels, truth), abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(labelings, st.randoms(use_true_random=False))
def test_invariant_to_renaming_labels_and_symmetric(pair, rnd):
    labels, truth = (np.asarray(x, dtype=np.int64) for x in pair)
    names = np.arange(-1, 7)
    renamed = np.array(rnd.sample(range(1000, 2000), len(names)))
    new_labels = renamed[np.searchsorted(names, labels)]
    new_truth = np.asarray(truth) * -13 + 4
    assert purity(new_labels, new_truth) == pytest.approx(purity(labels, truth), abs=1e-12)
    nmi = normalized_mutual_info(labels, truth)
    assert normalized_mutual_info(new_labels, new_truth) == pytest.approx(nmi, abs=1e-12)
    assert normalized_mutual_info(truth, labels) == pytest.approx(nmi, abs=1e-12)
    assert -1e-12 <= nmi <= 1.0 + 1e-12


@settings(max_examples=60, deadline=None)
@given(labelings)
def test_purity_is_at_least_the_majority_class_share(pair):
    labels, truth = pair
    n_classes = len(set(truth))
    p = purity(labels, truth)
    majority = max(Counter(truth).values()) / len(truth)
    assert majority - 1e-12 <= p <= 1.0
    assert p >= 1.0 / n_classes - 1e-12


def test_unsigned_and_mixed_integer_dtypes_are_accepted():
    labels = np.array([0, 0, 1, 1], dtype=np.uint8)
    truth = np.array([0, 0, 0, 1], dtype=np.int32)
    assert purity(labels, truth) == 0.75
    assert normalized_mutual_info(labels, truth) == pytest.approx(0.3437110184854508, abs=1e-12)


@pytest.mark.parametrize("scale", [1, 10**12])
def test_sparse_and_extreme_label_values_use_the_same_definition(scale):
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 40, 3000)
    labels = np.where(rng.random(3000) < 0.7, truth, rng.integers(-1, 300, 3000)) * scale
    assert purity(labels, truth) == pytest.approx(_reference_purity(labels, truth), abs=1e-12)
    assert normalized_mutual_info(labels, truth) == pytest.approx(_reference_nmi(labels, truth), abs=1e-9)
    extreme_u64 = np.array([2**64 - 1, 2**64 - 1, 2**64 - 2, 0], dtype=np.uint64)
    extreme_i8 = np.array([-128, 127, 127, 0], dtype=np.int8)
    assert purity(extreme_u64, extreme_i8) == 0.75
    assert normalized_mutual_info(extreme_u64, extreme_i8) == pytest.approx(
        _reference_nmi([3, 3, 2, 0], [-128, 127, 127, 0]), abs=1e-12
    )


# -- validation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", [purity, normalized_mutual_info])
def test_bad_inputs_raise_clear_errors(metric):
    with pytest.raises(ValueError, match="same length, got 3 and 2"):
        metric([0, 1, 2], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        metric([], [])
    with pytest.raises(TypeError, match="labels must be an integer array, got dtype float64"):
        metric([0.0, 1.0], [0, 1])
    with pytest.raises(TypeError, match="truth must be an integer array, got dtype bool"):
        metric([0, 1], [True, False])
    with pytest.raises(ValueError, match=r"labels must be 1-D, got shape \(2, 2\)"):
        metric([[0, 1], [1, 0]], [0, 1])
    with pytest.raises(TypeError, match="ignore_noise"):
        metric([0, 1], [0, 1], ignore_noise="yes")
