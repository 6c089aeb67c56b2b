"""Hamming distances between binary codes: the plain Python API over the Numba kernels."""

from __future__ import annotations

import numpy as np

from . import _kernels
from .codes import check_codes


def _check_pair(a: np.ndarray, b: np.ndarray, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    a = check_codes(a, name=names[0])
    b = check_codes(b, name=names[1])
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{names[0]} are {a.shape[1] * 64}-bit codes but {names[1]} are {b.shape[1] * 64}-bit codes"
        )
    return a, b


def hamming_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All pairwise distances: ``int32[len(a), len(b)]``."""
    a, b = _check_pair(a, b, ("a", "b"))
    out = np.empty((a.shape[0], b.shape[0]), dtype=np.int32)
    _kernels.pairwise_distances(a, b, out)
    return out


def paired_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-by-row distances ``d(a[i], b[i])``: ``int32[len(a)]``."""
    a, b = _check_pair(a, b, ("a", "b"))
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"a has {a.shape[0]} rows but b has {b.shape[0]}")
    out = np.empty(a.shape[0], dtype=np.int32)
    _kernels.paired_distances(a, b, out)
    return out


SCAN_BLOCK = 1 << 16  # centers transposed at a time by nearest_brute: 2 MiB at 256 bits


def nearest_brute(points: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exhaustive nearest center of every point; ties go to the lowest center index.

    Returns ``(labels int64[N], distances int32[N])``; with no centers, labels are -1.

    The scan kernel reads the centers transposed; they are transposed ``SCAN_BLOCK`` at a time, so a
    scan against a million centers (a join's fallback) does not allocate a second copy of all of
    them (32 MB at 256 bits, which glibc then tends to keep).
    """
    points, centers = _check_pair(points, centers, ("points", "centers"))
    n = points.shape[0]
    labels = np.full(n, -1, dtype=np.int64)
    best = np.full(n, _kernels.FAR, dtype=np.int32)
    if n and centers.shape[0]:
        rows = np.arange(n, dtype=np.int64)
        block_labels = np.empty(n, dtype=np.int64)
        block_best = np.empty(n, dtype=np.int32)
        second = np.empty(n, dtype=np.int32)
        for start in range(0, centers.shape[0], SCAN_BLOCK):
            block_t = np.ascontiguousarray(centers[start:start + SCAN_BLOCK].T)
            _kernels.nearest_scan(points, rows, block_t, block_labels, block_best, second)
            nearer = block_best < best  # strictly: on a tie the earlier block's lower index stays
            labels[nearer] = block_labels[nearer] + start
            best[nearer] = block_best[nearer]
    best[labels < 0] = -1
    return labels, best
