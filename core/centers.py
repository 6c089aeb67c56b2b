"""The join step of online clustering, on its own: find each code's nearest center within a radius.

The online clusterer (:class:`core.online.OnlineClusterer`) joins every window against the centers
it founded. A stream front end that spreads the join over many processes gives each of them a
read-only copy of the centers instead: :class:`CenterIndex`, which follows the founded and retired
centers block by block and answers exactly what the clusterer's own join would answer for the
centers it holds. A copy that lags only holds fewer centers: a code it does not join goes on to the
clusterer, which joins it against all of them.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ._validation import is_int
from .bkmeans import FAR, PROBE_COST_IN_PAIRS
from .codes import check_codes, check_n_bits
from .hamming import nearest_brute
from .mih import MultiIndexHash

NO_CLUSTER = -1


def rows_of(held_ids: np.ndarray, cluster_ids: np.ndarray) -> np.ndarray:
    """The position of each of ``cluster_ids`` in the ascending ``held_ids``, -1 where it is not
    held (retired, or never founded)."""
    cluster_ids = np.asarray(cluster_ids, dtype=np.int64)
    rows = np.searchsorted(held_ids, cluster_ids)
    held = rows < held_ids.shape[0]
    held[held] = held_ids[rows[held]] == cluster_ids[held]
    return np.where(held, rows, -1)


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
    """A read-only copy of the cluster centers, kept up to date block by block, searched by :meth:`join`.

    Parameters
    ----------
    n_bits : int
        Code width (64, 128, 256 or 512).

    Centers arrive in blocks of consecutive cluster ids, as a compacted topic of center blocks
    delivers them: each block states which centers of its id range are held now, so a block read
    again adds its new centers and drops its retired ones. Blocks may come in any order (compaction
    reorders them); the index holds its rows in cluster-id order whatever the order, so that ties
    go to the lowest id as in the clusterer's own join.
    """

    def __init__(self, n_bits: int = 256) -> None:
        self.n_bits = n_bits
        self.n_bits_ = check_n_bits(n_bits)
        self._index = MultiIndexHash().fit(np.zeros((0, self.n_bits_ // 64), dtype=np.uint64))
        self._ids = np.zeros(0, dtype=np.int64)  # row -> cluster id, ascending

    @property
    def n_centers_(self) -> int:
        return int(self._index.n_items_)

    @property
    def centers_(self) -> np.ndarray:
        """``uint64[n_centers_, n_bits/64]``, row ``i`` the center of cluster ``cluster_ids_[i]`` (read-only)."""
        return self._index.codes_

    @property
    def cluster_ids_(self) -> np.ndarray:
        """``int64[n_centers_]``, ascending: the ids of the held centers (read-only)."""
        view = self._ids.view()
        view.flags.writeable = False
        return view

    def update(self, blocks: Iterable[tuple[int, int, np.ndarray, np.ndarray]]) -> tuple[int, int]:
        """Apply blocks ``(lo, hi, cluster_ids, codes)``: the held centers with ids in ``[lo, hi)``
        are now exactly ``cluster_ids`` (ascending) with ``codes``. Of several blocks for one
        ``lo`` the last counts. Returns ``(added, dropped)``.

        Appending centers newer than every held one is cheap; dropping centers, or adding one
        below a held id, rebuilds the index (linear in the centers held). Raises ``ValueError``,
        changing nothing, if a held center id comes with another code: cluster ids never change
        meaning, so that is a corrupt or foreign source.
        """
        latest: dict[int, tuple[int, int, np.ndarray, np.ndarray]] = {}
        for lo, hi, ids, codes in blocks:
            latest[int(lo)] = self._check_block(lo, hi, ids, codes)
        ordered = [latest[lo] for lo in sorted(latest)]
        for (_, hi, _, _), (lo, _, _, _) in zip(ordered, ordered[1:]):
            if lo < hi:
                raise ValueError(f"blocks [.., {hi}) and [{lo}, ..) overlap")
        held = self._ids
        appended, spans, dropped, in_order = [], [], 0, True
        for lo, hi, ids, codes in ordered:
            a, b = np.searchsorted(held, [lo, hi])
            spans.append((a, b))
            both, mine, theirs = np.intersect1d(held[a:b], ids, assume_unique=True, return_indices=True)
            if both.shape[0] and not np.array_equal(self._index.codes_[a + mine], codes[theirs]):
                bad = int(both[np.flatnonzero(np.any(self._index.codes_[a + mine] != codes[theirs], axis=1))[0]])
                raise ValueError(f"center {bad} arrived with another code than the one already held; "
                                 "a cluster id must never change its center")
            dropped += int(b - a) - both.shape[0]
            new = np.ones(ids.shape[0], dtype=np.bool_)
            new[theirs] = False
            if new.any() and held.shape[0] and ids[new][0] <= held[-1]:
                in_order = False
            appended.append((ids[new], codes[new]))
        added = sum(ids.shape[0] for ids, _ in appended)
        if dropped == 0 and in_order:
            if added:
                self._index.add(np.concatenate([codes for _, codes in appended]))
                self._ids = np.concatenate([held] + [ids for ids, _ in appended])
            return added, 0
        keep = np.ones(held.shape[0], dtype=np.bool_)
        for a, b in spans:  # the held rows of every block applied: replaced by the block's rows
            keep[a:b] = False
        ids = np.concatenate([held[keep]] + [block[2] for block in ordered])
        codes = np.concatenate([self._index.codes_[keep]] + [block[3] for block in ordered])
        order = np.argsort(ids, kind="stable")
        self._index = MultiIndexHash().fit(codes[order])
        self._ids = ids[order]
        return added, dropped

    def _check_block(self, lo: object, hi: object, ids: np.ndarray,
                     codes: np.ndarray) -> tuple[int, int, np.ndarray, np.ndarray]:
        if not is_int(lo) or not is_int(hi) or not 0 <= lo <= hi:
            raise ValueError(f"block bounds lo={lo!r}, hi={hi!r} must be integers with 0 <= lo <= hi")
        codes = check_codes(codes, self.n_bits_, name="codes")
        ids = np.asarray(ids)
        if ids.ndim != 1 or ids.shape[0] != codes.shape[0] or (ids.shape[0] and ids.dtype.kind not in "iu"):
            raise ValueError(f"cluster_ids must be {codes.shape[0]} integers, one per code, got {ids.dtype} {ids.shape}")
        ids = ids.astype(np.int64)
        if ids.shape[0] and (ids[0] < lo or ids[-1] >= hi or np.any(np.diff(ids) <= 0)):
            raise ValueError(f"cluster_ids must ascend within [{lo}, {hi})")
        return int(lo), int(hi), ids, codes

    def join(self, codes: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
        """Nearest held center within ``radius`` of each code: ``(cluster ids, distances)``, -1 / -1
        where none is; see :func:`join_within`."""
        codes = check_codes(codes, self.n_bits_, name="codes")
        if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or not 0 <= radius <= self.n_bits_:
            raise ValueError(f"radius={radius!r} must be an integer between 0 and n_bits={self.n_bits_}")
        rows, distances = join_within(self._index, codes, int(radius))
        labels = np.full(rows.shape[0], NO_CLUSTER, dtype=np.int64)
        found = rows >= 0
        labels[found] = self._ids[rows[found]]
        return labels, distances

    def __repr__(self) -> str:
        return f"CenterIndex(n_bits={self.n_bits!r})"
