"""Online clustering of a stream of binary photo hashes (Gong et al., CVPR 2015, Algorithm 2).

A web-scale stream never fits in one Bk-means run, so it is clustered one window at a time:

1. The window's items, together with the *pending pool* (items held back by earlier windows, which
   get another chance), are matched against every existing center with multi-index hashing. An item
   within Hamming distance ``radius`` of a center joins the nearest one (ties: lowest cluster id).
2. The items that joined nothing are clustered with Bk-means into ``new_centers_ratio`` times as many
   clusters as there are items. Members farther than ``radius`` from their Bk-means center are held
   back; a Bk-means cluster with fewer than ``min_cluster_size`` members within ``radius`` is dropped
   and all its members are held back. Every surviving cluster is *founded*: its center is appended to
   the center set under the next sequential cluster id.
3. Held-back items wait in the pending pool, which is bounded (``pending_capacity``, optionally
   ``pending_max_windows``); items pushed out of it are declared noise.
4. Optionally (``max_centers``, ``max_idle``; off by default, as in the paper) centers are *retired*
   at the end of a window, least recently joined first: a retired center leaves the index and every
   array, so memory and search time stay bounded on a stream that runs for years. Its cluster id is
   never handed out again (ids keep counting up), so a photo near a retired center founds a new
   cluster with a new id.

Why centers never move once founded: downstream consumers key everything by cluster id, and a center
that drifted would silently change what an id means and make earlier joins inconsistent with later
ones. Moving a center by majority vote would also need the per-bit vote counts of every cluster
(``n_bits`` counters per center: 1 KiB per center at 256 bits, a gigabyte per million clusters) to be
kept and persisted. A founded center is the majority of at least ``min_cluster_size`` members, which
is already a good estimate of the true center (with 10 members and bit noise 0.1, each center bit is
wrong with probability ~0.002).

Nothing is ever dropped silently. Each window's :class:`WindowResult` has exactly one row per input
item (JOINED, FOUNDED, HELD, or NOISE when the pool had no room for it at all), plus one row for every
earlier held item that reached its final outcome in this window (JOINED, FOUNDED, or NOISE after
eviction/expiry). So every item gets exactly one final outcome (JOINED, FOUNDED or NOISE), possibly
preceded by one HELD row in the window that first saw it; :meth:`OnlineClusterer.flush` declares the
remaining pool noise.

Everything is pure, synchronous and deterministic: with the same ``random_state`` and the same
inputs (including ``now``) the outcomes are identical, also across :meth:`~OnlineClusterer.export_state`
/ :meth:`~OnlineClusterer.from_state`, because the Bk-means seed of window ``w`` is derived from the
root seed and ``w`` alone.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np

from ._validation import check_int, check_real
from .bkmeans import BKMeans
from .centers import NO_CLUSTER, join_within, rows_of
from .codes import DEFAULT_BITS, check_codes, check_n_bits
from .hamming import paired_distances
from .mih import MultiIndexHash

STATE_FORMAT = 2  # 2: cluster ids of the held centers, and the next id (ids of retired centers are gone)
_READABLE_STATE_FORMATS = (1, 2)  # 1: no retirement, the row of a center was its id
_SEED_LIMIT = 1 << 64  # seeds are stored as (msgpack-able) unsigned 64-bit integers
_ID_ENCODING = ("utf-8", "surrogatepass")  # round-trips every Python str, lone surrogates included


class Outcome(IntEnum):
    """What happened to an item in a window (stored as ``np.uint8`` in :class:`WindowResult`)."""

    JOINED = 0  # within ``radius`` of an existing center: final
    FOUNDED = 1  # member of a cluster founded in this window: final
    HELD = 2  # waiting in the pending pool; a later window reports its final outcome
    NOISE = 3  # evicted from (or never admitted to) the pending pool, or flushed: final


@dataclass(frozen=True, eq=False)
class WindowResult:
    """The outcome of one window, as flat arrays (cheap for millions of items).

    Rows ``0 .. n_new - 1`` are this window's input items in input order (outcome JOINED, FOUNDED,
    HELD, or NOISE if the pending pool could not take them); rows ``n_new ..`` are items held back by
    earlier windows that reached their final outcome now, oldest first (``first_window`` tells when
    they arrived). ``cluster`` and ``distance`` are -1 unless the item JOINED or FOUNDED a cluster.
    """

    window: int  # 0-based number of this window (flush() counts as a window)
    ids: list[str]
    outcome: np.ndarray  # uint8, values of Outcome
    cluster: np.ndarray  # int64, cluster id or -1
    distance: np.ndarray  # int32, Hamming distance to the cluster's center or -1
    first_seen: np.ndarray  # float64, the ``now`` of the window that first saw the item
    first_window: np.ndarray  # int64, the window that first saw the item
    n_new: int  # number of input items of this window (the first n_new rows)
    now: float  # timestamp used for this window
    n_joined: int
    n_founded: int
    n_held: int
    n_noise: int
    n_new_clusters: int  # clusters founded in this window: ids next_cluster_id - n_new_clusters ..
    n_clusters: int  # centers held after this window (after retirement)
    next_cluster_id: int  # the next id a new cluster gets: ids below it were handed out once
    retired: np.ndarray  # int64, ids of the centers retired at the end of this window, ascending
    retired_sizes: np.ndarray  # int64, their sizes_ when retired
    retired_created_ts: np.ndarray  # float64, their created_ts_
    retired_updated_ts: np.ndarray  # float64, their updated_ts_ (the last join)
    n_pending: int  # pending pool size after this window
    n_candidates: int  # items that went to Bk-means (joined nothing)
    n_bkmeans_clusters: int  # k of this window's Bk-means run (0 if it did not run)
    seconds: float

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def new_cluster_ids(self) -> np.ndarray:
        """Ids of the clusters founded in this window."""
        return np.arange(self.next_cluster_id - self.n_new_clusters, self.next_cluster_id, dtype=np.int64)

    @property
    def touched_clusters(self) -> np.ndarray:
        """Sorted ids of clusters whose size/updated_ts changed (joined or founded): the rows a
        key-value table of centers has to rewrite after this window."""
        return np.unique(self.cluster[self.cluster >= 0])

    @property
    def is_final(self) -> np.ndarray:
        """Boolean mask of rows that carry an item's final outcome (everything except HELD)."""
        return self.outcome != Outcome.HELD


def _encode_ids(ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Ids as one UTF-8 blob plus byte offsets: numpy ``<U`` arrays would drop trailing NULs."""
    encoded = [s.encode(*_ID_ENCODING) for s in ids]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    if encoded:
        np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)), out=offsets[1:])
    blob = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
    return blob, offsets


def _decode_ids(blob: np.ndarray, offsets: np.ndarray) -> list[str]:
    raw = blob.tobytes()
    bounds = offsets.tolist()
    return [raw[a:b].decode(*_ID_ENCODING) for a, b in zip(bounds[:-1], bounds[1:])]


class OnlineClusterer:
    """Cluster a stream of binary codes window by window, with stable cluster ids.

    Parameters
    ----------
    n_bits : int
        Code width (64, 128, 256 or 512).
    window_size : int
        Most input items one :meth:`process` call accepts. The stream layer decides when a window is
        complete (full or timed out); a window may be smaller, never larger, so memory stays bounded.
    new_centers_ratio : float in (0, 1]
        Bk-means runs with ``max(1, round(ratio * n_candidates))`` clusters on the items that joined
        nothing (the paper's choice; 0.1 gives clusters of ~10 on average, so a true cluster with many
        members in one window is split into several clusters, each founded separately).
    radius : int in [0, n_bits] or None
        Hamming radius for joining a center and for being counted as a member of a new cluster.
        None means ``n_bits // 4`` (64 for 256 bits). Why: with per-bit noise p a member lies
        ~Binomial(n_bits, p) from its center (25.6 ± 4.8 at p = 0.1, 256 bits) while unrelated codes
        lie ~n_bits/2 (128 ± 8) apart, so n_bits/4 is about 8 standard deviations from both and admits
        members up to p ≈ 0.17. Larger radii make the MIH join search slower.
    min_cluster_size : int >= 1
        A new cluster is founded only with at least this many members within ``radius`` in its
        window (the paper's ``t``; 10 by default).
    pending_capacity : int >= 0 or None
        Most items in the pending pool; None means ``window_size``, so a Bk-means run sees at most
        twice a window. On overflow the oldest items (by arrival: window, then input position) are
        evicted as NOISE. 0 turns every held-back item into NOISE at once.
    pending_max_windows : int >= 0 or None
        An item first seen in window ``w`` is retried in windows ``w + 1 .. w + pending_max_windows``
        and becomes NOISE at the end of window ``w + pending_max_windows`` if still unclustered
        (0: never retried). None: no age limit, only the capacity bound.
    max_iter : int >= 1
        Bk-means iterations per window.
    max_centers : int >= 1 or None
        Most centers held. When a window's new centers take the count above it, the least recently
        joined centers (oldest ``updated_ts_``, then lowest id) are retired until ``max_centers``
        remain; a center joined or founded in the window itself is kept (its photos' outcomes name
        it), so a window that touches more than ``max_centers`` centers leaves that many held until
        a later window. None (the default, as in the paper): no limit.
    max_idle : float > 0 or None
        A center not joined (nor founded) for longer than this, in the units of ``now`` (seconds),
        is retired at the end of the next window. None (the default): no limit.
    random_state : None, int in [0, 2**64) or numpy Generator
        Root seed, resolved once at first use into ``seed_`` (None draws fresh entropy; a Generator is
        drawn from once) and saved by :meth:`export_state`. Window ``w`` seeds Bk-means with
        ``SeedSequence(seed_, spawn_key=(w,))``, so results do not depend on history or restarts.

    Attributes (available after first use)
    ----------
    centers_ : uint64[C, n_bits/64], read-only; row ``i`` is the center of cluster ``cluster_ids_[i]``
        (cluster ``i`` itself while nothing was retired)
    cluster_ids_ : int64[C], ascending: the ids of the held centers
    sizes_ : int64[C], items that joined or founded each cluster
    created_ts_, updated_ts_ : float64[C], ``now`` of the founding / latest joining window
    n_clusters_ : int, centers held (C)
    next_cluster_id_ : int, the id the next new cluster gets; ``next_cluster_id_ - n_clusters_``
        centers were retired
    n_windows_, n_pending_ : int
    pending_ids_, pending_codes_, pending_first_seen_, pending_first_window_ : the pending pool,
        oldest first
    seed_ : int

    Notes
    -----
    Duplicate ids (a producer resending a photo after a crash) are not detected: every occurrence is
    processed as a separate photo and gets its own row and final outcome, and counts in ``sizes_``.
    Keeping a seen-id set would cost memory proportional to the whole stream; deduplicate upstream
    (or downstream by id) where it matters.

    Parameters are re-read and re-validated on every call; ``n_bits`` and the seed are fixed at
    first use.
    """

    def __init__(
        self,
        n_bits: int = DEFAULT_BITS,
        window_size: int = 1_000_000,
        new_centers_ratio: float = 0.1,
        radius: int | None = None,
        min_cluster_size: int = 10,
        pending_capacity: int | None = None,
        pending_max_windows: int | None = None,
        max_iter: int = 10,
        max_centers: int | None = None,
        max_idle: float | None = None,
        random_state: Any = None,
    ) -> None:
        self.n_bits = n_bits
        self.window_size = window_size
        self.new_centers_ratio = new_centers_ratio
        self.radius = radius
        self.min_cluster_size = min_cluster_size
        self.pending_capacity = pending_capacity
        self.pending_max_windows = pending_max_windows
        self.max_iter = max_iter
        self.max_centers = max_centers
        self.max_idle = max_idle
        self.random_state = random_state

    # -- validation and lazy state ----------------------------------------------------------------
    def _validate(self) -> None:
        """Check every parameter; set the resolved values (``radius_``, ``pending_capacity_``...)."""
        n_bits = check_n_bits(self.n_bits)
        if hasattr(self, "n_bits_") and n_bits != self.n_bits_:
            raise ValueError(f"n_bits={n_bits} cannot change after first use (the centers are {self.n_bits_}-bit)")
        window_size = check_int("window_size", self.window_size, 1)
        ratio = self.new_centers_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real):
            raise TypeError(f"new_centers_ratio must be a real number, got {ratio!r} ({type(ratio).__name__})")
        if not 0.0 < float(ratio) <= 1.0:  # also rejects NaN
            raise ValueError(f"new_centers_ratio={ratio!r} must be in (0, 1]")
        radius = n_bits // 4 if self.radius is None else check_int("radius", self.radius, 0, n_bits)
        min_cluster_size = check_int("min_cluster_size", self.min_cluster_size, 1)
        capacity = (
            window_size if self.pending_capacity is None else check_int("pending_capacity", self.pending_capacity, 0)
        )
        max_windows = (
            None if self.pending_max_windows is None else check_int("pending_max_windows", self.pending_max_windows, 0)
        )
        max_iter = check_int("max_iter", self.max_iter, 1)
        max_centers = None if self.max_centers is None else check_int("max_centers", self.max_centers, 1)
        max_idle = None if self.max_idle is None else check_real("max_idle", self.max_idle, 0, low_open=True,
                                                                 unit="seconds")
        if not hasattr(self, "seed_"):
            seed = self._resolve_seed(self.random_state)
        # Only now that everything passed, store the resolved values.
        self.n_bits_ = n_bits
        self.window_size_ = window_size
        self.new_centers_ratio_ = float(ratio)
        self.radius_ = radius
        self.min_cluster_size_ = min_cluster_size
        self.pending_capacity_ = capacity
        self.pending_max_windows_ = max_windows
        self.max_iter_ = max_iter
        self.max_centers_ = max_centers
        self.max_idle_ = max_idle
        if not hasattr(self, "seed_"):
            self.seed_ = seed

    @staticmethod
    def _resolve_seed(random_state: Any) -> int:
        if random_state is None:
            return int(np.random.SeedSequence().generate_state(1, dtype=np.uint64)[0])
        if isinstance(random_state, np.random.Generator):
            return int(random_state.integers(0, _SEED_LIMIT, dtype=np.uint64))
        if isinstance(random_state, bool) or not isinstance(random_state, (int, np.integer)):
            raise TypeError(
                f"random_state must be None, an int or a numpy Generator, got {type(random_state).__name__}"
            )
        if not 0 <= int(random_state) < _SEED_LIMIT:
            raise ValueError(f"random_state={random_state} must be in [0, 2**64)")
        return int(random_state)

    def _ready(self) -> None:
        """Validate, and create the empty cluster state on first use."""
        self._validate()
        if hasattr(self, "_index"):
            return
        w = self.n_bits_ // 64
        self._index = MultiIndexHash().fit(np.zeros((0, w), dtype=np.uint64))
        # Row i of the index and of the arrays below is cluster _ids[i]; ids ascend with the rows,
        # so "lowest row" (the index's tie rule) is "lowest cluster id".
        self._ids = np.zeros(0, dtype=np.int64)
        self._next_id = 0
        self._sizes = np.zeros(0, dtype=np.int64)
        self._created_ts = np.zeros(0, dtype=np.float64)
        self._updated_ts = np.zeros(0, dtype=np.float64)
        self.n_windows_ = 0
        self._pending_ids: list[str] = []
        self._pending_codes = np.zeros((0, w), dtype=np.uint64)
        self._pending_first_seen = np.zeros(0, dtype=np.float64)
        self._pending_first_window = np.zeros(0, dtype=np.int64)

    # -- read-only views of the state -------------------------------------------------------------
    @staticmethod
    def _readonly(array: np.ndarray) -> np.ndarray:
        view = array.view()
        view.flags.writeable = False
        return view

    @property
    def centers_(self) -> np.ndarray:
        self._ready()
        return self._index.codes_

    @property
    def sizes_(self) -> np.ndarray:
        self._ready()
        return self._readonly(self._sizes)

    @property
    def created_ts_(self) -> np.ndarray:
        self._ready()
        return self._readonly(self._created_ts)

    @property
    def updated_ts_(self) -> np.ndarray:
        self._ready()
        return self._readonly(self._updated_ts)

    @property
    def cluster_ids_(self) -> np.ndarray:
        self._ready()
        return self._readonly(self._ids)

    @property
    def n_clusters_(self) -> int:
        self._ready()
        return int(self._sizes.shape[0])

    @property
    def next_cluster_id_(self) -> int:
        self._ready()
        return self._next_id

    def rows_of(self, cluster_ids: np.ndarray) -> np.ndarray:
        """The row of each cluster id in ``centers_`` and the other arrays, -1 where the center is
        not held (retired, or never founded)."""
        self._ready()
        return rows_of(self._ids, cluster_ids)

    @property
    def n_pending_(self) -> int:
        self._ready()
        return len(self._pending_ids)

    @property
    def pending_ids_(self) -> list[str]:
        self._ready()
        return list(self._pending_ids)

    @property
    def pending_codes_(self) -> np.ndarray:
        self._ready()
        return self._readonly(self._pending_codes)

    @property
    def pending_first_seen_(self) -> np.ndarray:
        self._ready()
        return self._readonly(self._pending_first_seen)

    @property
    def pending_first_window_(self) -> np.ndarray:
        self._ready()
        return self._readonly(self._pending_first_window)

    # -- input checks -----------------------------------------------------------------------------
    @staticmethod
    def _check_ids(ids: Sequence[str], name: str = "ids") -> list[str]:
        if isinstance(ids, (str, bytes)):
            raise TypeError(f"{name} must be a sequence of str, got a single {type(ids).__name__}")
        ids = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
        for row, value in enumerate(ids):
            if not isinstance(value, str):
                raise TypeError(f"{name}[{row}] must be a str, got {type(value).__name__}")
        return ids

    def _check_now(self, now: float | None) -> float:
        return time.time() if now is None else check_real("now", now, unit="seconds")

    def _window_rng(self, window: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence(self.seed_, spawn_key=(window,)))

    # -- the algorithm ----------------------------------------------------------------------------
    def process(self, ids: Sequence[str], codes: np.ndarray, now: float | None = None) -> WindowResult:
        """Cluster one window of items (``ids[i]`` has code ``codes[i]``) plus the pending pool.

        ``now`` (seconds, e.g. the window's event time; default ``time.time()``) stamps new items'
        ``first_seen`` and the clusters' ``created_ts``/``updated_ts``; pass it explicitly for
        reproducible state. An empty window is allowed: it only retries the pending pool.
        The state is changed only after every step succeeded.
        """
        started = time.perf_counter()
        self._ready()
        ids = self._check_ids(ids)
        codes = check_codes(codes, self.n_bits_, name="codes")
        n = len(ids)
        if codes.shape[0] != n:
            raise ValueError(f"len(ids)={n} does not match len(codes)={codes.shape[0]}")
        if n > self.window_size_:
            raise ValueError(f"len(ids)={n} exceeds window_size={self.window_size_}")
        now = self._check_now(now)
        window = self.n_windows_
        radius = self.radius_

        # Rows 0 .. P-1 are the pending pool (oldest first), rows P .. N-1 this window's items.
        n_pool = len(self._pending_ids)
        n_all = n_pool + n
        all_codes = np.concatenate((self._pending_codes, codes)) if n_pool else codes
        outcome = np.full(n_all, Outcome.HELD, dtype=np.uint8)
        cluster = np.full(n_all, NO_CLUSTER, dtype=np.int64)
        distance = np.full(n_all, -1, dtype=np.int32)
        n_old = self.n_clusters_

        # 1. Join the nearest existing center within radius (ties: lowest cluster id).
        join_counts = np.zeros(n_old, dtype=np.int64)
        if n_all and n_old:
            nearest, dist = self._join(all_codes, radius)
            joined = nearest >= 0
            outcome[joined] = Outcome.JOINED
            cluster[joined] = nearest[joined]
            distance[joined] = dist[joined]
            join_counts = np.bincount(nearest[joined], minlength=n_old)

        # 2. Bk-means on the rest; found the clusters with enough members within radius.
        rest = np.flatnonzero(outcome == Outcome.HELD)
        k = 0
        new_centers = np.zeros((0, all_codes.shape[1]), dtype=np.uint64)
        new_sizes = np.zeros(0, dtype=np.int64)
        if rest.shape[0]:
            rest_codes = all_codes[rest]
            k = min(rest.shape[0], max(1, int(math.floor(rest.shape[0] * self.new_centers_ratio_ + 0.5))))
            model = BKMeans(
                n_clusters=k, max_iter=self.max_iter_, init="linked", random_state=self._window_rng(window)
            ).fit(rest_codes)
            labels = model.labels_
            dist = paired_distances(rest_codes, model.cluster_centers_[labels])
            within = dist <= radius
            members = np.bincount(labels[within], minlength=k)
            keep = members >= self.min_cluster_size_
            n_new_clusters = int(np.count_nonzero(keep))
            if n_new_clusters:
                new_id = np.full(k, NO_CLUSTER, dtype=np.int64)
                new_id[keep] = np.arange(n_old, n_old + n_new_clusters, dtype=np.int64)
                founded = within & keep[labels]
                rows = rest[founded]
                outcome[rows] = Outcome.FOUNDED
                cluster[rows] = new_id[labels[founded]]
                distance[rows] = dist[founded]
                new_centers = model.cluster_centers_[keep]
                new_sizes = members[keep]

        # 3. Bound the pending pool: expire by age, then evict the oldest beyond capacity.
        first_seen = np.concatenate((self._pending_first_seen, np.full(n, now, dtype=np.float64)))
        first_window = np.concatenate((self._pending_first_window, np.full(n, window, dtype=np.int64)))
        if self.pending_max_windows_ is not None:
            expired = (outcome == Outcome.HELD) & (window - first_window >= self.pending_max_windows_)
            outcome[expired] = Outcome.NOISE
        held = np.flatnonzero(outcome == Outcome.HELD)
        overflow = held.shape[0] - self.pending_capacity_
        if overflow > 0:  # rows are in arrival order, so the first ones are the oldest
            outcome[held[:overflow]] = Outcome.NOISE
            held = held[overflow:]

        # 4. Result rows: every new item, then the pool items that reached a final outcome.
        resolved = np.flatnonzero(outcome[:n_pool] != Outcome.HELD)
        rows = np.concatenate((np.arange(n_pool, n_all, dtype=np.int64), resolved))
        pool_ids = self._pending_ids
        result_ids = ids + [pool_ids[i] for i in resolved.tolist()]
        kept_ids = [pool_ids[i] if i < n_pool else ids[i - n_pool] for i in held.tolist()]

        # 5. Commit the new state. Rows so far index the held centers then the new ones: as ids now.
        n_new_clusters = int(new_sizes.shape[0])
        new_ids = np.arange(self._next_id, self._next_id + n_new_clusters, dtype=np.int64)
        result_cluster = cluster[rows]
        assigned = result_cluster >= 0
        result_cluster[assigned] = np.concatenate((self._ids, new_ids))[result_cluster[assigned]]
        if n_old:
            self._sizes = self._sizes + join_counts
            self._updated_ts = np.where(join_counts > 0, now, self._updated_ts)
        if n_new_clusters:
            self._index.add(new_centers)
            self._ids = np.concatenate((self._ids, new_ids))
            self._next_id += n_new_clusters
            self._sizes = np.concatenate((self._sizes, new_sizes))
            stamps = np.full(n_new_clusters, now, dtype=np.float64)
            self._created_ts = np.concatenate((self._created_ts, stamps))
            self._updated_ts = np.concatenate((self._updated_ts, stamps))
        self._pending_ids = kept_ids
        self._pending_codes = all_codes[held]
        self._pending_first_seen = first_seen[held]
        self._pending_first_window = first_window[held]
        self.n_windows_ = window + 1
        retired = self._retire(now)
        return self._result(
            window, result_ids, outcome[rows], result_cluster, distance[rows], first_seen[rows],
            first_window[rows], n, now, n_new_clusters, int(rest.shape[0]), k, started, retired,
        )

    def _retire(self, now: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Retire the centers that ``max_idle`` and ``max_centers`` ask for; returns their ids,
        sizes, created and updated times.

        Why a rebuild of the index rather than holes in it: a retired center must stop answering
        joins at once, and compacting keeps every row live, so searches stay as fast as for an index
        that never held it (the rebuild is linear: about 0.3 s per million centers held).
        """
        retire = np.zeros(self._ids.shape[0], dtype=np.bool_)
        if self.max_idle_ is not None:
            retire |= now - self._updated_ts > self.max_idle_
        if self.max_centers_ is not None:
            excess = int(np.count_nonzero(~retire)) - self.max_centers_
            # Never a center joined or founded in this window: its photos' outcomes name it.
            candidates = np.flatnonzero(~retire & (self._updated_ts < now))
            if excess > 0:  # least recently joined first; lexsort's last key is the primary one
                order = np.lexsort((self._ids[candidates], self._updated_ts[candidates]))
                retire[candidates[order[:excess]]] = True
        retired = (self._ids[retire], self._sizes[retire], self._created_ts[retire], self._updated_ts[retire])
        if not retired[0].shape[0]:
            return retired
        keep = ~retire
        self._index = MultiIndexHash().fit(self._index.codes_[keep])
        self._ids = self._ids[keep]
        self._sizes = self._sizes[keep]
        self._created_ts = self._created_ts[keep]
        self._updated_ts = self._updated_ts[keep]
        return retired

    def _join(self, codes: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
        """Nearest center within ``radius`` of every code (-1 / -1 if none; ties: lowest id)."""
        return join_within(self._index, codes, radius)

    def record_joins(self, clusters: np.ndarray, counts: np.ndarray, now: float) -> int:
        """Count joins made elsewhere, by a copy of the centers (``core.centers.CenterIndex``):
        ``counts[i]`` photos joined cluster ``clusters[i]`` at time ``now``. So that ``sizes_`` and
        ``updated_ts_`` stay the whole cluster's figures when the join is spread over processes.

        A copy may still hold a center that was retired here since (it drops it once it reads the
        retirement): those joins are not counted, since the cluster has no figures any more, and
        their number is returned. Nothing changes if an argument is refused."""
        self._ready()
        clusters = _check_vector("clusters", clusters, np.int64, None)
        counts = _check_vector("counts", counts, np.int64, clusters.shape[0])
        now = self._check_now(now)
        if clusters.shape[0] == 0:
            return 0
        bad = np.flatnonzero((clusters < 0) | (clusters >= self._next_id))
        if bad.shape[0]:
            raise ValueError(f"cluster {int(clusters[bad[0]])} does not exist (ids below {self._next_id} were "
                             "handed out)")
        if np.any(counts < 1):
            raise ValueError(f"counts must be >= 1, got {int(counts.min())}")
        rows = self.rows_of(clusters)
        held = rows >= 0
        sizes = self._sizes.copy()
        np.add.at(sizes, rows[held], counts[held])
        updated = self._updated_ts.copy()
        updated[rows[held]] = np.maximum(updated[rows[held]], now)
        self._sizes, self._updated_ts = sizes, updated
        return int(counts[~held].sum())

    def flush(self, now: float | None = None) -> WindowResult:
        """Declare the whole pending pool NOISE (at shutdown, if the pool is not to be persisted).

        Counts as a window: ``n_windows_`` advances, so window numbers stay unique.
        """
        started = time.perf_counter()
        self._ready()
        now = self._check_now(now)
        window = self.n_windows_
        ids, first_seen, first_window = self._pending_ids, self._pending_first_seen, self._pending_first_window
        n_pool = len(ids)
        self._pending_ids = []
        self._pending_codes = np.zeros((0, self.n_bits_ // 64), dtype=np.uint64)
        self._pending_first_seen = np.zeros(0, dtype=np.float64)
        self._pending_first_window = np.zeros(0, dtype=np.int64)
        self.n_windows_ = window + 1
        return self._result(
            window, ids, np.full(n_pool, Outcome.NOISE, dtype=np.uint8),
            np.full(n_pool, NO_CLUSTER, dtype=np.int64), np.full(n_pool, -1, dtype=np.int32),
            first_seen, first_window, 0, now, 0, 0, 0, started,
            (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0)),
        )

    def _result(
        self, window, ids, outcome, cluster, distance, first_seen, first_window, n_new, now,
        n_new_clusters, n_candidates, k, started, retired,
    ) -> WindowResult:
        counts = np.bincount(outcome, minlength=len(Outcome))
        return WindowResult(
            window=window,
            ids=ids,
            outcome=outcome,
            cluster=cluster,
            distance=distance,
            first_seen=first_seen,
            first_window=first_window,
            n_new=n_new,
            now=now,
            n_joined=int(counts[Outcome.JOINED]),
            n_founded=int(counts[Outcome.FOUNDED]),
            n_held=int(counts[Outcome.HELD]),
            n_noise=int(counts[Outcome.NOISE]),
            n_new_clusters=n_new_clusters,
            n_clusters=self.n_clusters_,
            next_cluster_id=self._next_id,
            retired=retired[0],
            retired_sizes=retired[1],
            retired_created_ts=retired[2],
            retired_updated_ts=retired[3],
            n_pending=len(self._pending_ids),
            n_candidates=n_candidates,
            n_bkmeans_clusters=k,
            seconds=time.perf_counter() - started,
        )

    # -- restore paths ----------------------------------------------------------------------------
    def add_centers(
        self,
        centers: np.ndarray,
        sizes: np.ndarray,
        created_ts: np.ndarray,
        updated_ts: np.ndarray,
        cluster_ids: np.ndarray | None = None,
    ) -> np.ndarray:
        """Append centers with their bookkeeping; returns their cluster ids.

        For rebuilding from a key-value table of centers: pass them sorted by cluster id. Without
        ``cluster_ids`` they get the next free ids; with them, the ids must ascend and start at or
        above ``next_cluster_id_`` (gaps are the ids of retired centers), since an id is never
        handed out twice.
        """
        self._ready()
        centers = check_codes(centers, self.n_bits_, name="centers")
        c = centers.shape[0]
        arrays = {}
        for name, value, dtype in (("sizes", sizes, np.int64), ("created_ts", created_ts, np.float64),
                                   ("updated_ts", updated_ts, np.float64)):
            arrays[name] = _check_vector(name, value, dtype, c)
        if np.any(arrays["sizes"] < 0):
            raise ValueError(f"sizes must be >= 0, got {int(arrays['sizes'].min())}")
        for name in ("created_ts", "updated_ts"):
            if not np.all(np.isfinite(arrays[name])):
                raise ValueError(f"{name} must be finite")
        if cluster_ids is None:
            ids = np.arange(self._next_id, self._next_id + c, dtype=np.int64)
        else:
            ids = _check_ids_ascending("cluster_ids", cluster_ids, c, self._next_id)
        if c:
            self._index.add(centers)
            self._ids = np.concatenate((self._ids, ids))
            self._next_id = int(ids[-1]) + 1
            self._sizes = np.concatenate((self._sizes, arrays["sizes"]))
            self._created_ts = np.concatenate((self._created_ts, arrays["created_ts"]))
            self._updated_ts = np.concatenate((self._updated_ts, arrays["updated_ts"]))
        return ids

    def export_state(self, include_centers: bool = True) -> dict[str, Any]:
        """Everything :meth:`from_state` needs, as numpy arrays and plain scalars (no pickle).

        Keys: the resolved parameters (``n_bits``, ``window_size``, ``new_centers_ratio``, ``radius``,
        ``min_cluster_size``, ``pending_capacity``, ``pending_max_windows`` (int or None),
        ``max_iter``, ``max_centers``, ``max_idle`` (None or a number), ``random_state`` = ``seed_``),
        ``format_version``, ``n_windows``, ``next_cluster_id``; the held clusters (``cluster_ids``
        int64[C], ``centers`` uint64[C, W], ``sizes`` int64, ``created_ts``, ``updated_ts`` float64); and the
        pending pool (``pending_codes``, ``pending_first_seen``, ``pending_first_window``, and the ids
        as ``pending_ids_blob`` uint8 = UTF-8 (surrogatepass) of all ids concatenated, with
        ``pending_ids_offsets`` int64[P+1] byte offsets). Arrays are copies.
        ``include_centers=False`` leaves out the cluster arrays (a caller that stores centers in
        blocks reads them through the read-only ``centers_`` views instead of copying them all).
        """
        self._ready()
        blob, offsets = _encode_ids(self._pending_ids)
        return {
            "format_version": STATE_FORMAT,
            "n_bits": self.n_bits_,
            "window_size": self.window_size_,
            "new_centers_ratio": self.new_centers_ratio_,
            "radius": self.radius_,
            "min_cluster_size": self.min_cluster_size_,
            "pending_capacity": self.pending_capacity_,
            "pending_max_windows": self.pending_max_windows_,
            "max_iter": self.max_iter_,
            "max_centers": self.max_centers_,
            "max_idle": self.max_idle_,
            "random_state": self.seed_,
            "n_windows": self.n_windows_,
            "next_cluster_id": self._next_id,
            **({
                "cluster_ids": self._ids.copy(),
                "centers": self._index.codes_.copy(),
                "sizes": self._sizes.copy(),
                "created_ts": self._created_ts.copy(),
                "updated_ts": self._updated_ts.copy(),
            } if include_centers else {}),
            "pending_ids_blob": blob,
            "pending_ids_offsets": offsets,
            "pending_codes": self._pending_codes.copy(),
            "pending_first_seen": self._pending_first_seen.copy(),
            "pending_first_window": self._pending_first_window.copy(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "OnlineClusterer":
        """Rebuild a clusterer from :meth:`export_state`; it continues exactly where that one was."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict, got {type(state).__name__}")
        if state.get("format_version") not in _READABLE_STATE_FORMATS:
            raise ValueError(f"state format_version={state.get('format_version')!r} is not supported "
                             f"(expected one of {_READABLE_STATE_FORMATS})")
        if state["format_version"] == 1:  # before retirement: no retention, the rows are the ids
            n_centers = len(state["centers"]) if "centers" in state else 0
            state = {"max_centers": None, "max_idle": None, "cluster_ids": np.arange(n_centers, dtype=np.int64),
                     "next_cluster_id": n_centers, **state}
        missing = sorted(set(_STATE_KEYS) - set(state))
        if missing:
            raise ValueError(f"state is missing keys {missing}")
        params = {name: state[key] for name, key in _PARAM_KEYS.items()}
        for name, value in params.items():  # msgpack/numpy may hand back numpy scalars
            if isinstance(value, np.generic):
                params[name] = value.item()
        clusterer = cls(**params)
        clusterer._ready()
        n_windows = check_int("state n_windows", state["n_windows"], 0)
        centers = check_codes(np.asarray(state["centers"]), clusterer.n_bits_, name="state centers")
        c = centers.shape[0]
        cluster_ids = _check_ids_ascending("state cluster_ids", state["cluster_ids"], c, 0)
        next_id = check_int("state next_cluster_id", state["next_cluster_id"],
                            ("the highest cluster id + 1", int(cluster_ids[-1]) + 1 if c else 0))
        sizes = _check_vector("state sizes", state["sizes"], np.int64, c)
        created = _check_vector("state created_ts", state["created_ts"], np.float64, c)
        updated = _check_vector("state updated_ts", state["updated_ts"], np.float64, c)
        offsets = _check_vector("state pending_ids_offsets", state["pending_ids_offsets"], np.int64, None)
        blob = np.asarray(state["pending_ids_blob"])
        if blob.dtype != np.uint8 or blob.ndim != 1:
            raise ValueError(f"state pending_ids_blob must be a 1-D uint8 array, got {blob.dtype} {blob.shape}")
        if offsets.shape[0] < 1 or offsets[0] != 0 or offsets[-1] != blob.shape[0] or np.any(np.diff(offsets) < 0):
            raise ValueError("state pending_ids_offsets must rise from 0 to len(pending_ids_blob)")
        p = offsets.shape[0] - 1
        pending_codes = check_codes(np.asarray(state["pending_codes"]), clusterer.n_bits_, name="state pending_codes")
        if pending_codes.shape[0] != p:
            raise ValueError(f"state pending_codes has {pending_codes.shape[0]} rows but there are {p} pending ids")
        first_seen = _check_vector("state pending_first_seen", state["pending_first_seen"], np.float64, p)
        first_window = _check_vector("state pending_first_window", state["pending_first_window"], np.int64, p)
        clusterer._index = MultiIndexHash().fit(centers)
        clusterer._ids, clusterer._next_id = cluster_ids.copy(), next_id
        clusterer._sizes, clusterer._created_ts, clusterer._updated_ts = sizes.copy(), created.copy(), updated.copy()
        clusterer.n_windows_ = n_windows
        clusterer._pending_ids = _decode_ids(blob, offsets)
        clusterer._pending_codes = pending_codes.copy()
        clusterer._pending_first_seen = first_seen.copy()
        clusterer._pending_first_window = first_window.copy()
        return clusterer

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n_bits={self.n_bits!r}, window_size={self.window_size!r}, "
            f"new_centers_ratio={self.new_centers_ratio!r}, radius={self.radius!r}, "
            f"min_cluster_size={self.min_cluster_size!r}, pending_capacity={self.pending_capacity!r}, "
            f"pending_max_windows={self.pending_max_windows!r}, max_iter={self.max_iter!r}, "
            f"max_centers={self.max_centers!r}, max_idle={self.max_idle!r}, random_state={self.random_state!r})"
        )


_PARAM_KEYS = {
    "n_bits": "n_bits",
    "window_size": "window_size",
    "new_centers_ratio": "new_centers_ratio",
    "radius": "radius",
    "min_cluster_size": "min_cluster_size",
    "pending_capacity": "pending_capacity",
    "pending_max_windows": "pending_max_windows",
    "max_iter": "max_iter",
    "max_centers": "max_centers",
    "max_idle": "max_idle",
    "random_state": "random_state",
}
_STATE_KEYS = (
    "format_version", *_PARAM_KEYS.values(), "n_windows", "next_cluster_id", "cluster_ids", "centers", "sizes", "created_ts", "updated_ts",
    "pending_ids_blob", "pending_ids_offsets", "pending_codes", "pending_first_seen", "pending_first_window",
)


def _check_vector(name: str, value: object, dtype: type, length: int | None) -> np.ndarray:
    """A 1-D array of ``dtype`` (safe casts only) with the expected length."""
    array = np.asarray(value)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if array.shape[0] == 0:
        array = array.astype(dtype)
    elif not np.can_cast(array.dtype, dtype, casting="same_kind"):
        raise TypeError(f"{name} must have a {np.dtype(dtype)} compatible dtype, got {array.dtype}")
    else:
        array = array.astype(dtype, copy=False)
    if length is not None and array.shape[0] != length:
        raise ValueError(f"{name} has {array.shape[0]} entries, expected {length}")
    return array


def _check_ids_ascending(name: str, value: object, length: int, low: int) -> np.ndarray:
    """Cluster ids as int64: ``length`` of them, strictly ascending, the first at least ``low``."""
    ids = _check_vector(name, value, np.int64, length)
    if length and ids[0] < low:
        raise ValueError(f"{name}[0]={int(ids[0])} but ids below {low} were handed out already; "
                         "a cluster id is never reused")
    steps = np.flatnonzero(np.diff(ids) <= 0)
    if steps.shape[0]:
        raise ValueError(f"{name}[{int(steps[0]) + 1}]={int(ids[steps[0] + 1])} does not rise above "
                         f"{name}[{int(steps[0])}]={int(ids[steps[0]])}; cluster ids must ascend")
    return ids
