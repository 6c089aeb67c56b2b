"""The join step of online clustering, on its own: find each code's nearest center within a radius.

The online clusterer (:class:`core.online.OnlineClusterer`) joins every window against the centers
it founded. A stream front end that spreads the join over many processes gives each of them a
read-only copy of the centers instead: :class:`CenterIndex`, which grows in cluster-id order as
centers are founded and answers exactly what the clusterer's own join would answer for the centers
it holds. A copy that lags only holds fewer centers: a code it does not join goes on to the
clusterer, which joins it against all of them.
"""

from __future__ import annotations

import numpy as np

from .bkmeans import FAR, PROBE_COST_IN_PAIRS
from .codes import check_codes, check_n_bits
from .hamming import nearest_brute
from .mih import MultiIndexHash

NO_CLUSTER = -1


def join_within(index: MultiIndexHash, codes: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Nearest indexed center within ``radius`` of every code: ``(labels, distances)``, -1 / -1 where
    there is none; ties go to the lowest center id.

    Why not just ``MultiIndexHash.nearest(max_distance=radius)``: a code with no center within
    ``radius`` makes MIH probe every bucket out to ``radius // m`` bits in each substring, which at
    ``radius ~ n_bits / 4`` costs more than scanning all centers, and on web data most codes join
    nothing. So each code gets an MIH budget worth one linear scan (the Bk-means calibration
    ``PROBE_COST_IN_PAIRS``); codes that exhaust it are scanned. Both paths are exact, so the
    answer does not depend on which one ran.
    """
    n, n_centers = codes.shape[0], index.n_items_
    labels = np.full(n, NO_CLUSTER, dtype=np.int64)
    best = np.full(n, FAR, dtype=np.int32)
    if n == 0 or n_centers == 0:
        return labels, np.full(n, -1, dtype=np.int32)
    rows = np.arange(n, dtype=np.int64)
    budget = int(n_centers / PROBE_COST_IN_PAIRS)
    if budget >= index.n_substrings_:  # MIH can at least probe the exact buckets
        _, resolved = index.search_into(codes, rows, labels, best, max_distance=radius, probe_budget=budget)
        scan = rows[~resolved]
    else:
        scan = rows
    if scan.shape[0]:
        labels[scan], best[scan] = nearest_brute(codes[scan], index.codes_)
    missing = (labels < 0) | (best > radius)
    labels[missing] = NO_CLUSTER
    best[missing] = -1
    return labels, best


class CenterIndex:
    """A read-only copy of the cluster centers: grown in cluster-id order, searched by :meth:`join`.

    Parameters
    ----------
    n_bits : int
        Code width (64, 128, 256 or 512).

    Centers arrive in blocks that start at a given cluster id (as a compacted topic of center blocks
    delivers them, a block possibly again with more rows). Rows the index already holds are checked,
    not added twice; a block that starts beyond the next id is kept until the gap is filled.
    """

    def __init__(self, n_bits: int = 256) -> None:
        self.n_bits = n_bits
        self.n_bits_ = check_n_bits(n_bits)
        self._index = MultiIndexHash().fit(np.zeros((0, self.n_bits_ // 64), dtype=np.uint64))
        self._waiting: dict[int, np.ndarray] = {}  # first id -> codes, for blocks beyond a gap

    @property
    def n_centers_(self) -> int:
        return int(self._index.n_items_)

    @property
    def centers_(self) -> np.ndarray:
        """``uint64[n_centers_, n_bits/64]``, row ``c`` the center of cluster ``c`` (read-only)."""
        return self._index.codes_

    def add_block(self, first_id: int, codes: np.ndarray) -> int:
        """Add the centers ``first_id, first_id + 1, ...``; returns how many were new.

        Raises ``ValueError`` if a known center id comes with another code: cluster ids never change
        meaning, so that is a corrupt or foreign source.
        """
        if isinstance(first_id, bool) or not isinstance(first_id, (int, np.integer)) or first_id < 0:
            raise ValueError(f"first_id={first_id!r} must be an integer >= 0")
        codes = check_codes(codes, self.n_bits_, name="codes")
        self._waiting[int(first_id)] = codes
        before = self.n_centers_
        while True:
            n = self.n_centers_
            ready = [first for first in self._waiting if first <= n]
            if not ready:
                break
            for first in sorted(ready):
                block = self._waiting.pop(first)
                known = min(n - first, block.shape[0])
                if known and not np.array_equal(block[:known], self._index.codes_[first:first + known]):
                    row = first + int(np.flatnonzero(np.any(block[:known] != self._index.codes_[first:first + known],
                                                            axis=1))[0])
                    raise ValueError(f"center {row} arrived with another code than the one already held; "
                                     "a cluster id must never change its center")
                if block.shape[0] > known:
                    self._index.add(block[known:])
                n = self.n_centers_
        return self.n_centers_ - before

    def join(self, codes: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
        """Nearest held center within ``radius`` of each code (-1 / -1: none); see :func:`join_within`."""
        codes = check_codes(codes, self.n_bits_, name="codes")
        if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or not 0 <= radius <= self.n_bits_:
            raise ValueError(f"radius={radius!r} must be an integer between 0 and n_bits={self.n_bits_}")
        return join_within(self._index, codes, int(radius))

    def __repr__(self) -> str:
        return f"CenterIndex(n_bits={self.n_bits!r})"
