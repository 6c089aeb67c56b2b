"""Multi-index hashing (Norouzi, Punjani & Fleet, CVPR 2012) over a growing set of binary codes.

Exact nearest-neighbour and range search in Hamming space. The codes are cut into ``m`` disjoint
substrings and each substring indexes a CSR bucket table (flat numpy arrays, no Python dicts; the
bucket starts compacted to about a byte per bucket, see ``core._kernels``). By
the pigeonhole principle, an item whose distance from the query is below ``m * (s + 1)`` matches the
query within ``s`` bits in at least one substring, so probing every table out to radius ``s``
settles every such item; the search grows ``s`` until the nearest candidate is settled.

Items added after the tables were built are scanned directly until they make up a fixed fraction
of the index, or until scanning them has cost about what rebuilding would; then the tables are
rebuilt (a counting sort, linear time), so adding one window of centers at a time costs amortised
linear time, many searches never pay for a long scan, and every answer stays exact.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import _kernels
from ._validation import check_int, is_int
from .codes import check_codes

MAX_SUBSTRING_BITS = 20  # a table has 2**bits buckets: 20 bits is ~1.1 MiB of bucket starts per table
# The widths a compact table's bucket offsets may take, with the most buckets per block for each:
# one int32 block start per 64 buckets adds 1/16 byte per bucket to a uint8 offset, and at ~1 item
# per bucket a block holds ~64 items, well within the 255 a uint8 offset allows. uint16 is for
# crowded buckets (many equal substrings), where uint8 would need blocks of very few buckets.
OFFSET_WIDTHS = ((np.uint8, 6), (np.uint16, 8))
UNLIMITED = np.iinfo(np.int64).max
MAX_ITEMS = 2**31 - 1  # item ids are stored as int32
GROWTH = 1.25  # the code buffer grows by this factor: at most 25 % spare capacity, amortised copies
# Rebuilding the tables costs about 300 ns per item here, scanning an untabled item for one query
# 0.5-1.4 ns: once the searches since the last build have scanned this many (query, untabled item)
# pairs per item, they have cost about a rebuild, and the next search rebuilds first. Without it a
# window of 100k queries scanned up to 12.5 % of 400k centers one by one: 14 s instead of 2 s
# (tests/benchmarks/bench_retention.py, retention off).
SCAN_PAIRS_PER_ITEM = 256


def auto_n_substrings(n_bits: int, n_items: int) -> int:
    """m ~ n_bits / log2(n_items) (Norouzi et al.), so that a bucket holds about one item."""
    m = round(n_bits / max(math.log2(max(n_items, 1)), 4.0))
    return int(min(max(m, math.ceil(n_bits / MAX_SUBSTRING_BITS), 1), n_bits // 2))


class MultiIndexHash:
    """Exact Hamming-space search index over a set of codes that may grow.

    Parameters
    ----------
    n_substrings : "auto" or int
        Number of substrings ``m``. "auto" picks ``m`` from the code width and the number of items
        at every rebuild; an int must leave substrings of 2 to 20 bits.
    rebuild_fraction : float
        Items added since the last build are scanned linearly until they exceed this fraction of
        the tabled items; then the tables are rebuilt.

    Ties between equally distant items go to the lowest item index, as in a brute-force scan.
    """

    def __init__(self, n_substrings: int | str = "auto", rebuild_fraction: float = 0.125) -> None:
        self.n_substrings = n_substrings
        self.rebuild_fraction = rebuild_fraction

    # -- building -------------------------------------------------------------------------------
    def _validate_params(self, n_bits: int) -> None:
        m = self.n_substrings
        if isinstance(m, str):
            if m != "auto":
                raise ValueError(f"n_substrings={m!r} must be 'auto' or an integer")
        elif not is_int(m):
            raise TypeError(f"n_substrings must be 'auto' or an integer, got {type(m).__name__}")
        elif not (math.ceil(n_bits / MAX_SUBSTRING_BITS) <= m <= n_bits // 2):
            raise ValueError(
                f"n_substrings={m} must be between {math.ceil(n_bits / MAX_SUBSTRING_BITS)} and "
                f"{n_bits // 2} for {n_bits}-bit codes (substrings of 2 to {MAX_SUBSTRING_BITS} bits)"
            )
        if not (0.0 < float(self.rebuild_fraction) <= 1.0):
            raise ValueError(f"rebuild_fraction={self.rebuild_fraction!r} must be in (0, 1]")

    def fit(self, codes: np.ndarray) -> "MultiIndexHash":
        """Index ``codes`` as items ``0 .. len(codes) - 1``."""
        codes = check_codes(codes)
        self._validate_params(codes.shape[1] * 64)
        if codes.shape[0] > MAX_ITEMS:
            raise ValueError(f"an index holds at most {MAX_ITEMS} items (ids are int32), got {codes.shape[0]}")
        self.n_bits_ = codes.shape[1] * 64
        self._buffer = np.array(codes, dtype=np.uint64, order="C", copy=True)
        self.n_items_ = codes.shape[0]
        self._build()
        return self

    def add(self, codes: np.ndarray) -> np.ndarray:
        """Append items; returns their ids ``n_items_ .. n_items_ + len(codes) - 1``."""
        self._check_fitted()
        codes = check_codes(codes, self.n_bits_)
        start, stop = self.n_items_, self.n_items_ + codes.shape[0]
        if stop > MAX_ITEMS:
            raise ValueError(f"an index holds at most {MAX_ITEMS} items (ids are int32), {stop} asked for")
        if stop > self._buffer.shape[0]:
            grown = np.empty((max(stop, int(GROWTH * self._buffer.shape[0]), 1024), self._buffer.shape[1]), np.uint64)
            grown[:start] = self._buffer[:start]
            self._buffer = grown
        self._buffer[start:stop] = codes
        self.n_items_ = stop
        if stop - self._n_tabled > self.rebuild_fraction * max(self._n_tabled, 1024):
            self._build()
        return np.arange(start, stop, dtype=np.int64)

    @property
    def codes_(self) -> np.ndarray:
        """The indexed codes, ``uint64[n_items_, n_bits_/64]`` (a read-only view)."""
        self._check_fitted()
        view = self._buffer[: self.n_items_]
        view.flags.writeable = False
        return view

    def _build(self) -> None:
        n = self.n_items_
        m = auto_n_substrings(self.n_bits_, n) if self.n_substrings == "auto" else int(self.n_substrings)
        lengths = np.full(m, self.n_bits_ // m, dtype=np.int64)
        lengths[: self.n_bits_ % m] += 1
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        self._sub_word = (starts // 64).astype(np.int64)
        self._sub_shift = (starts % 64).astype(np.int64)
        self._sub_len = lengths
        codes = self._buffer[:n]
        dtype, block_shift = self._offset_layout(codes, lengths)
        block = 1 << block_shift
        entries = -(-((1 << lengths) + 1) // block) * block  # 2**len + 1 per table, in whole blocks
        self._table_base = np.concatenate(([0], np.cumsum(entries))).astype(np.int64)
        self._block_start = self._bucket_offset = self._items = None  # the old tables go first (peak memory)
        self._block_shift = block_shift
        self._block_start = np.empty(self._table_base[-1] >> block_shift, dtype=np.int32)
        self._bucket_offset = np.empty(self._table_base[-1], dtype=dtype)
        self._items = np.empty(m * n, dtype=np.int32)
        _kernels.build_tables(codes, self._sub_word, self._sub_shift, lengths, self._table_base, block_shift,
                              self._block_start, self._bucket_offset, self._items)
        self._n_tabled = n
        self._scanned_pairs = 0
        self.n_substrings_ = m

    def _offset_layout(self, codes: np.ndarray, lengths: np.ndarray) -> tuple[type, int]:
        """The bucket offset width and block shift that take the fewest bytes per bucket."""
        spans = np.array([np.iinfo(dtype).max for dtype, _ in OFFSET_WIDTHS], dtype=np.int64)
        max_shifts = np.array([shift for _, shift in OFFSET_WIDTHS], dtype=np.int64)
        fits = np.empty((lengths.shape[0], spans.shape[0]), dtype=np.int64)
        _kernels.table_block_shifts(codes, self._sub_word, self._sub_shift, lengths, spans, max_shifts, fits)
        shifts = fits.min(axis=0)
        cost = [np.dtype(dtype).itemsize + 4 / 2.0**shift for (dtype, _), shift in zip(OFFSET_WIDTHS, shifts)]
        best = int(np.argmin(cost))
        return OFFSET_WIDTHS[best][0], int(shifts[best])

    def _tables(self) -> tuple:
        """The tables as the search kernels take them, after the item codes: substring layout,
        compact CSR tables and how many items they hold."""
        return (self._sub_word, self._sub_shift, self._sub_len, self._table_base, self._block_start,
                self._bucket_offset, self._block_shift, self._items, self._n_tabled)

    def _before_search(self, n_queries: int) -> None:
        """Rebuild first if scanning the untabled items for these queries would bring the scans
        since the last build beyond the cost of a rebuild (see :data:`SCAN_PAIRS_PER_ITEM`)."""
        untabled = self.n_items_ - self._n_tabled
        if untabled:
            self._scanned_pairs += n_queries * untabled
            if self._scanned_pairs > SCAN_PAIRS_PER_ITEM * self.n_items_:
                self._build()

    def _check_fitted(self) -> None:
        if not hasattr(self, "n_items_"):
            raise RuntimeError("this MultiIndexHash is not fitted yet; call fit(codes) first")

    def _check_queries(self, queries: np.ndarray) -> np.ndarray:
        self._check_fitted()
        return check_codes(queries, self.n_bits_, name="queries")

    # -- searching ------------------------------------------------------------------------------
    def search_into(
        self,
        queries: np.ndarray,
        rows: np.ndarray,
        labels: np.ndarray,
        best: np.ndarray,
        max_distance: int = _kernels.FAR,
        probe_budget: int = UNLIMITED,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Low-level exact nearest for ``queries[rows]``, for callers that keep bounds (Bk-means).

        ``labels``/``best`` hold a candidate (or -1 / FAR) on entry and the nearest on exit.
        Returns ``(lower, resolved)`` indexed by query row: ``lower`` bounds the distance to every
        item other than the winner; where ``resolved`` is False the probe budget ran out and the
        row's answer is not exact (scan it instead).
        """
        n = queries.shape[0]
        lower = np.full(n, _kernels.FAR, dtype=np.int32)
        resolved = np.ones(n, dtype=np.bool_)
        if rows.shape[0] and self.n_items_:
            self._before_search(rows.shape[0])
            _kernels.mih_nearest(
                queries, rows, self._buffer[: self.n_items_], *self._tables(),
                int(max_distance), int(probe_budget), labels, best, lower, resolved,
            )
        return lower, resolved

    def probes_to_settle(self, distance: np.ndarray) -> np.ndarray:
        """Bucket probes an exact search needs to settle a candidate at ``distance`` (per element).

        Lets a caller choose, point by point, between this index and a linear scan.
        """
        self._check_fitted()
        m = self.n_substrings_
        length = int(self._sub_len.min())
        # probes through radius s: m * sum_{t<=s} C(length, t); the search settles d at s = d // m.
        per_radius = np.array([m * math.comb(length, t) for t in range(length + 1)], dtype=np.float64)
        cumulative = np.cumsum(per_radius)
        s = np.minimum(np.asarray(distance) // m, length)
        return cumulative[s]

    def nearest(self, queries: np.ndarray, max_distance: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact nearest item of each query: ``(indices int64, distances int32)``.

        Ties go to the lowest item index. With ``max_distance``, queries with no item that close
        get -1 / -1 (and the search stops early). An empty index gives -1 / -1.
        """
        queries = self._check_queries(queries)
        limit = _kernels.FAR if max_distance is None else check_int("max_distance", max_distance, 0, self.n_bits_)
        n = queries.shape[0]
        labels = np.full(n, -1, dtype=np.int64)
        best = np.full(n, _kernels.FAR, dtype=np.int32)
        self.search_into(queries, np.arange(n, dtype=np.int64), labels, best, max_distance=limit)
        missing = (labels < 0) | (best > limit)
        labels[missing] = -1
        best[missing] = -1
        return labels, best

    def range_search(self, queries: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every item within ``radius`` of each query, as CSR ``(offsets, indices, distances)``.

        The items of query ``q`` are ``indices[offsets[q]:offsets[q + 1]]``, sorted by distance and
        then by index.
        """
        queries = self._check_queries(queries)
        radius = check_int("radius", radius, 0, self.n_bits_)
        n = queries.shape[0]
        offsets = np.zeros(n + 1, dtype=np.int64)
        no_idx = np.empty(0, dtype=np.int64)
        no_dist = np.empty(0, dtype=np.int32)
        if n == 0 or self.n_items_ == 0:
            return offsets, no_idx, no_dist
        self._before_search(n)
        args = (queries, self._buffer[: self.n_items_], *self._tables(), radius, offsets)
        _kernels.mih_range(*args, no_idx, no_dist, False)
        np.cumsum(offsets, out=offsets)
        indices = np.empty(offsets[-1], dtype=np.int64)
        distances = np.empty(offsets[-1], dtype=np.int32)
        _kernels.mih_range(*args, indices, distances, True)
        query_of = np.repeat(np.arange(n), np.diff(offsets))
        order = np.lexsort((indices, distances, query_of))
        return offsets, indices[order], distances[order]

    # -- state ----------------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """Everything needed to rebuild an identical index (tables are derived, not saved)."""
        self._check_fitted()
        return {
            "codes": self.codes_.copy(),
            "n_substrings": self.n_substrings,
            "rebuild_fraction": float(self.rebuild_fraction),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "MultiIndexHash":
        m = state["n_substrings"]
        m = m if isinstance(m, str) else int(m)
        return cls(n_substrings=m, rebuild_fraction=float(state["rebuild_fraction"])).fit(state["codes"])
