"""External clustering quality: purity and normalized mutual information.

These are the two numbers the Bk-means paper reports against labelled data, and the ones
photoclust's benchmarks track on planted data (:mod:`core.synth`). Both are computed from the
non-zero cells of the contingency table only, found by sorting (or, for small ranges,
counting) one int64 key per item, so they run in O(N log N) time and O(N) memory even with
millions of clusters and classes — a dense ``n_clusters × n_classes`` table would not fit.

Noise: the online clusterer may leave items unassigned, labelled ``NOISE_LABEL`` (-1). By
default -1 is just another label value (all noise items form one "cluster", which is usually
impure and so is penalized). With ``ignore_noise=True`` those items are dropped before scoring,
which measures quality over clustered items only, as the paper does; report the fraction of
noise alongside in that case.
"""

from __future__ import annotations

from math import log

import numpy as np

NOISE_LABEL = -1


def _check_labelings(labels: object, truth: object, ignore_noise: bool) -> tuple[np.ndarray, np.ndarray]:
    """Both labelings as 1-D integer arrays of equal, non-zero length (after dropping noise)."""
    arrays = []
    for name, value in (("labels", labels), ("truth", truth)):
        arr = np.asarray(value)
        # An empty list has no integer dtype to show; it is reported as empty below instead.
        if arr.dtype.kind not in "iu" and arr.size > 0:
            raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")
        if arr.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
        arrays.append(arr)
    labels_arr, truth_arr = arrays
    if labels_arr.shape[0] != truth_arr.shape[0]:
        raise ValueError(
            f"labels and truth must have the same length, got {labels_arr.shape[0]} and {truth_arr.shape[0]}"
        )
    if labels_arr.shape[0] == 0:
        raise ValueError("labels and truth are empty; need at least one item")
    if not isinstance(ignore_noise, (bool, np.bool_)):
        raise TypeError(f"ignore_noise={ignore_noise!r} must be a bool")
    if ignore_noise:
        keep = labels_arr != NOISE_LABEL
        labels_arr, truth_arr = labels_arr[keep], truth_arr[keep]
        if labels_arr.shape[0] == 0:
            raise ValueError(f"every item is labelled noise ({NOISE_LABEL}); nothing is left to score")
    return labels_arr, truth_arr


def _dense_index(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Map arbitrary integers to 0..K-1 preserving order; returns (index, K).

    Cluster ids are usually small non-negative integers, so a bincount over the value range
    (O(N), no sort) does the job; sparse or huge values fall back to one sort.
    """
    low, high = int(values.min()), int(values.max())
    if high - low <= 4 * values.shape[0] + 1024:
        if values.dtype == np.uint64:  # may exceed int64: shift first, exactly, in uint64
            shifted = (values - values.min()).astype(np.int64)
        else:
            shifted = values.astype(np.int64) - low
        present = np.bincount(shifted, minlength=high - low + 1) > 0
        rank = np.cumsum(present, dtype=np.int64) - 1
        return rank[shifted], int(rank[-1]) + 1
    order = np.argsort(values)
    ordered = values[order]
    new_group = np.empty(values.shape[0], dtype=np.int64)
    new_group[0] = 0
    np.not_equal(ordered[1:], ordered[:-1], out=new_group[1:])
    index = np.empty(values.shape[0], dtype=np.int64)
    index[order] = np.cumsum(new_group)
    return index, int(index[order[-1]]) + 1


def _contingency(labels: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sparse contingency table.

    Returns ``(cell_cluster, cell_class, cell_count, cluster_sizes, class_sizes)`` for the
    non-zero cells, sorted by cluster then class.
    """
    cluster_idx, n_clusters = _dense_index(labels)
    class_idx, n_classes = _dense_index(truth)
    # n_clusters * n_classes <= N^2 < 2^63 for any N that fits in memory.
    keys = cluster_idx * n_classes + class_idx
    n_cells = n_clusters * n_classes
    if n_cells <= 4 * keys.shape[0] + 1024:
        table = np.bincount(keys, minlength=n_cells)
        keys = np.flatnonzero(table)
        cell_count = table[keys]
    else:
        keys, cell_count = np.unique(keys, return_counts=True)
    cell_cluster, cell_class = np.divmod(keys, n_classes)
    cluster_sizes = np.bincount(cluster_idx, minlength=n_clusters)
    class_sizes = np.bincount(class_idx, minlength=n_classes)
    return cell_cluster, cell_class, cell_count, cluster_sizes, class_sizes


def purity(labels: object, truth: object, ignore_noise: bool = False) -> float:
    """Fraction of items that belong to the majority true class of their cluster.

    In (0, 1]; 1 means every cluster is pure. Purity alone rewards over-splitting (singleton
    clusters score 1), so read it together with :func:`normalized_mutual_info`. Label values are
    arbitrary integers; only the grouping matters. See the module docstring for ``ignore_noise``.
    """
    labels_arr, truth_arr = _check_labelings(labels, truth, ignore_noise)
    cell_cluster, _, cell_count, _, _ = _contingency(labels_arr, truth_arr)
    # Cells are sorted by cluster: each cluster's cells form one run starting at these offsets.
    starts = np.flatnonzero(np.r_[True, cell_cluster[1:] != cell_cluster[:-1]])
    majority = np.maximum.reduceat(cell_count, starts)
    return float(majority.sum()) / labels_arr.shape[0]


def _entropy(sizes: np.ndarray) -> float:
    sizes = sizes[sizes > 0].astype(np.float64)
    if sizes.size == 1:
        return 0.0
    total = float(sizes.sum())
    return float(-np.sum((sizes / total) * (np.log(sizes) - log(total))))


def normalized_mutual_info(labels: object, truth: object, ignore_noise: bool = False) -> float:
    """Mutual information of the two labelings divided by the mean of their entropies.

    This is scikit-learn's ``normalized_mutual_info_score`` with its default arithmetic-mean
    normalization, including its conventions for degenerate cases, so numbers are comparable
    with published ones: 1.0 when both labelings put everything in one group, 0.0 when only one
    of them does. Symmetric in its arguments, invariant to renaming labels, in [0, 1].
    See the module docstring for ``ignore_noise``.
    """
    labels_arr, truth_arr = _check_labelings(labels, truth, ignore_noise)
    cell_cluster, cell_class, cell_count, cluster_sizes, class_sizes = _contingency(labels_arr, truth_arr)
    if cluster_sizes.size == 1 and class_sizes.size == 1:
        return 1.0
    if cluster_sizes.size == 1 or class_sizes.size == 1:
        return 0.0
    n = float(labels_arr.shape[0])
    counts = cell_count.astype(np.float64)
    p_cell = counts / n
    outer = cluster_sizes[cell_cluster].astype(np.float64) * class_sizes[cell_class].astype(np.float64)
    # sum_ij p_ij * log(N n_ij / (a_i b_j)), arranged as scikit-learn does for the same rounding.
    terms = p_cell * (np.log(counts) - log(n)) + p_cell * (-np.log(outer) + 2.0 * log(n))
    terms = np.where(np.abs(terms) < np.finfo(np.float64).eps, 0.0, terms)
    mi = max(float(terms.sum()), 0.0)
    if mi == 0.0:
        return 0.0
    normalizer = (_entropy(cluster_sizes) + _entropy(class_sizes)) / 2.0
    return mi / normalizer
