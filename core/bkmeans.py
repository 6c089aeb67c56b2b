"""Bk-means: k-means in Hamming space with binary centers (Gong et al., CVPR 2015).

Each center is the per-bit majority vote of its members, which minimises the summed Hamming
distance to them. Assignment is exact in every mode; the modes differ only in how much work they
skip:

* ``"brute"`` scans every center for every point, every iteration (the baseline).
* ``"mih"`` keeps per-point bounds across iterations and searches the points whose bounds fail with
  multi-index hashing over the centers.
* ``"auto"`` keeps the same bounds and, point by point, searches with MIH where the distance to
  beat is short enough for MIH to pay and with a linear scan where it is not.

The bounds (after Hamerly): each point keeps the exact distance ``u`` to its own center and a lower
bound ``l`` on the distance to every other center. When centers move, a single global drift is
useless (a few centers move 50+ bits while most move none), so each iteration splits the centers by
their own drift: centers that moved more than ``tau`` are checked explicitly for every point, and the
bound of all the others only drops by ``tau``. ``tau`` is chosen every iteration to minimise the
estimated work. A point whose ``u`` is strictly below ``l - tau`` cannot prefer any unmoved center,
so only the moved ones are checked for it.

Where a point must be searched, its current center ``a`` at distance ``u`` narrows the search
(Elkan's bound): any center as near as ``a`` lies within ``2u`` of ``a``. So the points that share a
center are searched together: one pass over the centers gathers those within twice the largest
``u`` of ``a``, and each point scans only those. Where clusters are well apart, they are a handful.

The "linked" init seeds one center in each of the k largest groups of near-duplicate codes
(substring-bucket links, nearest first), which gives every point a close first candidate; a
uniform draw leaves about a third of the planted clusters without a seed at 10 codes per cluster,
and their points then need exhaustive searches round after round.
"""

from __future__ import annotations

import time
from collections.abc import Callable
import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _kernels
from ._random import check_random_state
from ._validation import check_int
from .codes import check_codes
from .mih import MultiIndexHash

FAR = int(_kernels.FAR)
# A bucket probe or candidate check in MIH is a dependent memory access; it costs about as much as
# this many code-to-center distances in a linear scan (shared/anchors.md: 15-30).
PROBE_COST_IN_PAIRS = 20.0
# Points without a candidate tried with MIH first, to decide whether MIH pays for the rest.
BLIND_SAMPLE = 256


@dataclass(frozen=True)
class IterationInfo:
    """What one Bk-means iteration did; passed to ``callback`` and kept in ``history_``."""

    iteration: int
    n_changed: int
    changed_fraction: float
    inertia: int
    n_searched: int
    n_moved_centers: int
    seconds: float
    # Read-only view of the labels after this iteration's assignment: valid only inside the
    # callback (later iterations overwrite it; copy it to keep it). None in ``history_``.
    labels: np.ndarray | None


# What an init hands to the first assignment: the initial centers, and for each point a candidate
# center with its exact distance (-1 / FAR where it has none). A point with a close candidate is
# settled by a short search among the centers near it (``_near_candidates``) instead of a scan.
Seeding = tuple[np.ndarray, np.ndarray, np.ndarray]


def _seeded_points(codes: np.ndarray, chosen: np.ndarray) -> Seeding:
    """Centers that are the data points ``chosen`` (ascending): each is its own candidate at 0."""
    labels = np.full(codes.shape[0], -1, dtype=np.int64)
    best = np.full(codes.shape[0], FAR, dtype=np.int32)
    labels[chosen] = np.arange(chosen.shape[0])
    best[chosen] = 0
    return codes[chosen], labels, best  # fancy indexing copies


def _init_random(codes: np.ndarray, k: int, rng: np.random.Generator) -> Seeding:
    """k distinct data points, uniformly."""
    return _seeded_points(codes, np.sort(rng.choice(codes.shape[0], size=k, replace=False)))


def kmeans_plusplus(codes: np.ndarray, n_clusters: int, random_state: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Greedy D^2 seeding (Arthur & Vassilvitskii; scikit-learn's variant) with Hamming distance.

    Returns ``(centers, indices)`` as scikit-learn's ``kmeans_plusplus`` does: the chosen codes and
    their row numbers in ``codes`` (in the order chosen). Each step draws ``2 + log(k)`` candidates
    with probability proportional to the squared distance to the nearest chosen center and keeps
    the one that lowers the potential most; plain D^2 seeding lands two seeds in one planted
    cluster too often. Costs about ``k log k`` passes over the data, so it is only practical for
    modest k. Use it to start several methods from the same centers (``BKMeans(init=centers)``).
    """
    codes = check_codes(codes)
    n = codes.shape[0]
    k = check_int("n_clusters", n_clusters, 1, ("n_samples", n))
    rng = check_random_state(random_state)
    n_trials = 2 + int(np.log(k))
    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = rng.integers(n)
    dist = np.full(n, FAR, dtype=np.int32)
    potentials = np.empty(n_trials, dtype=np.int64)
    _kernels.lower_min_distance(codes, codes, chosen[0], dist)
    for c in range(1, k):
        weights = np.cumsum(dist.astype(np.float64) ** 2)
        if weights[-1] == 0.0:  # fewer distinct codes than k: any code not chosen yet will do
            remaining = np.setdiff1d(np.arange(n), chosen[:c])
            chosen[c] = remaining[rng.integers(remaining.shape[0])]
            continue
        trials = np.minimum(np.searchsorted(weights, rng.random(n_trials) * weights[-1], side="right"), n - 1)
        _kernels.seeding_potentials(codes, dist, trials, potentials)
        chosen[c] = trials[np.argmin(potentials)]  # the first of equal potentials, as scikit-learn
        _kernels.lower_min_distance(codes, codes, chosen[c], dist)
    return codes[chosen], chosen


def _init_kmeans_pp(codes: np.ndarray, k: int, rng: np.random.Generator) -> Seeding:
    """:func:`kmeans_plusplus` seeds."""
    return _seeded_points(codes, np.sort(kmeans_plusplus(codes, k, rng)[1]))


def _init_given(codes: np.ndarray, centers: np.ndarray) -> Seeding:
    """Centers given by the caller: no point has a candidate yet, so the first round scans."""
    n = codes.shape[0]
    return np.array(centers, dtype=np.uint64, order="C"), np.full(n, -1, dtype=np.int64), np.full(n, FAR, dtype=np.int32)


# Linked init. Codes are linked when they are nearer than unrelated codes of the same data ever
# are: the radius sits this many deviations below the median distance of random pairs (80 bits for
# uniform 256-bit codes, which come that near with odds of 1e-9 per pair), and never below a quarter
# of the code width, so that near-duplicates always link. Planted clusters with bits flipped at
# p = 0.2 have members 82 +- 7.5 bits apart: the nearer pairs link. A looser radius (5 deviations)
# linked more pairs but also unrelated ones, whose chains merged clusters: at 1M codes and 100k
# planted clusters 76 % of the clusters got a seed of their own, against 98 % at 6 deviations.
LINK_RADIUS_DEVIATIONS = 6.0
LINK_RADIUS_FRACTION = 0.25
# Random pairs drawn to estimate the median distance and its spread.
LINK_RADIUS_SAMPLE = 4096
# Substring tables over the codes with about this many codes per bucket: every pair in a bucket is
# compared, so this sets the cost, about 16 x 15 / 2 comparisons per bucket and table.
LINK_BUCKET_SIZE = 16
# In a larger bucket (codes that share a common substring) each code is compared with this many
# of its bucket neighbours only, which bounds the cost on skewed data.
LINK_WINDOW = 64
# Links kept per code: its nearest few. A few random links per code already connect a cluster, and
# keeping every link costs memory in proportion to the cluster sizes (33M links for 1M codes in
# clusters of 100).
LINKS_PER_CODE = 4
# Rounds of tables over freshly permuted bits are added until this fraction of the codes has at
# least LINKS_WANTED links, or the comparisons reach LINK_BUDGET of one exhaustive assignment
# (n * k). Where codes are far apart (p = 0.2) one round of disjoint substrings links few of them;
# each further round samples other bits.
LINKS_WANTED = 2
LINK_COVERAGE = 0.65
LINK_BUDGET = 0.05
# A group stops growing at this multiple of the mean cluster size n/k, so that chains of links
# (single linkage) cannot swallow several clusters into one seed.
LINK_GROUP_CAP = 4


def _link_radius(codes: np.ndarray, rng: np.random.Generator) -> int:
    """The link radius: ``LINK_RADIUS_DEVIATIONS`` robust deviations below the median distance of
    random pairs of ``codes``, and at least ``LINK_RADIUS_FRACTION`` of the code width."""
    n, n_bits = codes.shape[0], codes.shape[1] * 64
    floor = int(LINK_RADIUS_FRACTION * n_bits)
    if n < 2:
        return floor
    first = rng.integers(n, size=LINK_RADIUS_SAMPLE)
    second = (first + rng.integers(1, n, size=LINK_RADIUS_SAMPLE)) % n  # never the same code
    d = np.empty(LINK_RADIUS_SAMPLE, dtype=np.int32)
    _kernels.paired_distances(codes[first], codes[second], d)
    median = float(np.median(d))
    spread = 1.4826 * float(np.median(np.abs(d - median)))  # the deviation, were d normal
    return max(floor, int(median - LINK_RADIUS_DEVIATIONS * spread))


def _init_linked(codes: np.ndarray, k: int, rng: np.random.Generator) -> Seeding:
    """One seed in each of the k largest groups of linked codes; random points for the rest.

    Two codes are linked when they share a substring exactly (the buckets of multi-index tables
    over the codes, a bit-sampling LSH) and lie within the link radius of each other (see
    :func:`_link_radius`); each code keeps its ``LINKS_PER_CODE`` nearest links. Where the first
    round of tables leaves too few codes linked, rounds over randomly permuted bits follow, within
    ``LINK_BUDGET``. Groups grow along the links, nearest first, up to ``LINK_GROUP_CAP * n / k``
    codes. The
    k largest groups (ties: random order) each give one random member as a seed, and every member
    of a seeded group starts with that seed as its candidate center. Where codes form clusters
    this puts about one seed in each of the k largest instead of the zero or several that a uniform
    draw puts there (at 10 codes per cluster a uniform draw misses 37 % of them), so the first
    assignments are short searches and fewer rounds are needed. It costs a few substring tables
    over the codes and about ``LINK_BUCKET_SIZE`` comparisons per code and table. Where nothing
    links (codes farther apart than the radius), it is the random init.
    """
    n, n_bits = codes.shape[0], codes.shape[1] * 64
    key_bits = min(max(round(np.log2(max(n, 2) / LINK_BUCKET_SIZE)), 8), 20)
    m = min(max(n_bits // key_bits, -(-n_bits // 20)), n_bits // 2)
    radius = _link_radius(codes, rng)
    partner = np.full((n, LINKS_PER_CODE), -1, dtype=np.int32)
    partner_d = np.zeros((n, LINKS_PER_CODE), dtype=np.int16)
    round_cost = m * n * LINK_BUCKET_SIZE
    rounds = max(1, int(LINK_BUDGET * n * k // round_cost))
    view = codes  # the first round's substrings are the codes' own consecutive bits
    for round_ in range(rounds):
        if round_:  # later rounds: substrings of randomly permuted bits
            view = np.empty_like(codes)
            _kernels.permute_bits(codes, rng.permutation(n_bits), view)
        tables = MultiIndexHash(n_substrings=m).fit(view)
        _kernels.bucket_links(view, tables._sub_len, tables._table_base, tables._block_start, tables._bucket_offset,
                              tables._block_shift, tables._items, radius,
                              LINK_WINDOW, np.full(m, 64, dtype=np.int64),  # parallel slices of each table's buckets
                              partner, partner_d)
        del tables
        if np.mean(partner[:, LINKS_WANTED - 1] >= 0) >= LINK_COVERAGE:
            break
    del view
    found = partner >= 0
    a = np.repeat(np.arange(n, dtype=np.int32), LINKS_PER_CODE)[found.ravel()]
    b = partner[found]
    d = partner_d[found]
    del partner, partner_d, found

    parent = np.empty(n, dtype=np.int64)
    size = np.empty(n, dtype=np.int64)
    cap = max(2, int(LINK_GROUP_CAP * n / k))
    _kernels.capped_groups(a, b, np.argsort(d, kind="stable"), cap, parent, size)
    # Each group's seed is its member that comes first in a random order; groups by size, then
    # by that order.
    order = rng.permutation(n)  # rank -> point
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    seed_rank = np.full(n, n, dtype=np.int64)
    np.minimum.at(seed_rank, parent, rank)
    roots = np.flatnonzero(parent == np.arange(n))
    by_size = np.lexsort((seed_rank[roots], -size[roots]))[:k]
    seeded_roots = roots[by_size]
    chosen = order[seed_rank[seeded_roots]]
    if chosen.shape[0] < k:  # fewer groups than k: random other codes fill the rest
        others = np.setdiff1d(np.arange(n, dtype=np.int64), chosen)
        chosen = np.concatenate((chosen, rng.choice(others, size=k - chosen.shape[0], replace=False)))
    centers, labels, best = _seeded_points(codes, np.sort(chosen))
    # A seeded group's center is the majority vote of its members (its seed's bit on ties), which
    # sits nearer to them than any one member does, and every member starts from it.
    center_of_root = np.full(n, -1, dtype=np.int64)
    center_of_root[seeded_roots] = labels[order[seed_rank[seeded_roots]]]
    members = np.flatnonzero(center_of_root[parent] >= 0)
    labels[members] = center_of_root[parent[members]]
    offsets = np.empty(k + 1, dtype=np.int64)
    by_center = np.empty(members.shape[0], dtype=np.int64)
    _kernels.members_by_label(labels[members], k, offsets, by_center)
    by_center = members[by_center]
    voted = np.empty_like(centers)
    _kernels.majority_centers(codes, offsets, by_center, centers, voted, np.empty(k, dtype=np.int64))
    member_best = np.empty(members.shape[0], dtype=np.int32)
    _kernels.paired_distances(codes[members], voted[labels[members]], member_best)
    best[members] = member_best
    return voted, labels, best


INIT_METHODS: dict[str, Callable[[np.ndarray, int, np.random.Generator], Seeding]] = {
    "random": _init_random,
    "k-means++": _init_kmeans_pp,
    "linked": _init_linked,
}
ASSIGN_METHODS = ("auto", "mih", "brute")


# A candidate's neighbours are gathered with one pass over the centers, so the search pays only
# where several points share a candidate; elsewhere MIH or a scan per point costs less.
MIN_ROWS_PER_SOURCE = 2.0
# Gathered neighbours per candidate at most, as a fraction of the centers: a point that would have
# to scan more is scanned against all of them instead (by the vectorised scan).
MAX_GATHER_FRACTION = 0.25
# Neighbours (and bits of radius) a point scans beyond the ones it must, for a tighter bound on
# the rest: the bound decides whether the point is searched again next round.
SPARE_NEIGHBOURS = 256
SPARE_BITS = 32


def _near_candidates(
    points: np.ndarray,
    rows: np.ndarray,
    centers: np.ndarray,
    labels: np.ndarray,
    best: np.ndarray,
    lower: np.ndarray,
    targets: np.ndarray | None = None,
) -> np.ndarray:
    """Exact search of ``points[rows]`` among the centers near their candidate (Elkan's bound).

    ``labels``/``best`` hold each row's candidate and its exact distance. ``targets`` (center ids,
    ascending) are the centers that may beat the candidate; None means all of them, and then
    ``lower`` is recomputed from scratch, else it must already bound every other center. Returns
    the rows it left alone, for another search: all of them where too few rows share a candidate,
    else those whose candidate has too many centers within twice their distance.
    """
    if rows.shape[0] == 0:
        return rows
    k = centers.shape[0]
    candidates = labels[rows]
    counts = np.bincount(candidates, minlength=k)
    sources = np.flatnonzero(counts).astype(np.int64)
    if rows.shape[0] < MIN_ROWS_PER_SOURCE * sources.shape[0]:
        return rows
    if targets is None:
        targets = np.arange(k, dtype=np.int64)
        targets_t = np.ascontiguousarray(centers.T)
        lower[rows] = FAR
    else:
        targets_t = np.ascontiguousarray(centers[targets].T)
    offsets = np.concatenate(([0], np.cumsum(counts[sources]))).astype(np.int64)
    members = rows[np.argsort(candidates, kind="stable")]
    max_gather = max(1, int(MAX_GATHER_FRACTION * targets.shape[0]))
    left = np.zeros(points.shape[0], dtype=np.bool_)
    _kernels.nearest_near_candidates(points, centers, sources, offsets, members, targets_t, targets, max_gather,
                                     SPARE_NEIGHBOURS, SPARE_BITS, labels, best, lower, left)
    return rows[left[rows]]


class _Assigner:
    """Exact nearest-center assignment with a per-point choice of MIH or linear scan."""

    def __init__(self, method: str, points: np.ndarray) -> None:
        self.method = method
        self.points = points
        self.index = MultiIndexHash()

    def set_centers(self, centers: np.ndarray) -> None:
        self.centers = centers
        self.centers_t = np.ascontiguousarray(centers.T)  # the scan kernel reads word columns
        if self.method != "brute":
            self.index.fit(centers)

    def search(self, rows: np.ndarray, labels: np.ndarray, best: np.ndarray, lower: np.ndarray) -> None:
        """Nearest center of ``points[rows]``. ``labels``/``best`` may hold a candidate (the current
        center and its exact distance) or -1/FAR; on exit they hold the nearest, and ``lower`` the
        exact or bounded distance to the runner-up."""
        if rows.shape[0] == 0:
            return
        k = self.centers.shape[0]
        if self.method == "brute":
            _kernels.nearest_scan(self.points, rows, self.centers_t, labels, best, lower)
            return
        with_candidate = best[rows] < FAR
        rows = np.concatenate(
            (_near_candidates(self.points, rows[with_candidate], self.centers, labels, best, lower),
             rows[~with_candidate])
        )
        if self.method == "mih":
            low, _ = self.index.search_into(self.points, rows, labels, best)
            lower[rows] = low[rows]
            return
        # auto: MIH only where settling the candidate costs less than scanning all k centers.
        budget = int(k / PROBE_COST_IN_PAIRS)
        candidate = best[rows]
        needed = np.where(candidate < FAR, self.index.probes_to_settle(np.minimum(candidate, FAR - 1)), 0)
        use_mih = needed <= budget if budget >= self.index.n_substrings_ else np.zeros(rows.shape[0], bool)
        blind = use_mih & (candidate >= FAR)
        if blind.sum() > 2 * BLIND_SAMPLE:
            # Points without a candidate (the first iteration) can only try MIH within the budget
            # and scan when it runs out, which costs more than a plain scan when most run out
            # (1M x 100k planted at p=0.1: 364 s against about 200 s). A sample decides.
            blind_rows = np.flatnonzero(blind)
            sample = blind_rows[:: blind_rows.shape[0] // BLIND_SAMPLE][:BLIND_SAMPLE]
            _, ok = self.index.search_into(self.points, rows[sample], labels, best, probe_budget=budget)
            if ok[rows[sample]].mean() < 0.5:
                use_mih[blind_rows] = False
        mih_rows, scan_rows = rows[use_mih], rows[~use_mih]
        if mih_rows.shape[0]:
            low, ok = self.index.search_into(self.points, mih_rows, labels, best, probe_budget=budget)
            lower[mih_rows] = low[mih_rows]
            failed = mih_rows[~ok[mih_rows]]
            if failed.shape[0]:
                scan_rows = np.concatenate((scan_rows, failed))
        if scan_rows.shape[0]:
            _kernels.nearest_scan(self.points, scan_rows, self.centers_t, labels, best, lower)


class BKMeans:
    """Binary k-means in Hamming space.

    Parameters
    ----------
    n_clusters : int
        Number of centers ``k`` (1 <= k <= number of codes).
    max_iter : int
        Maximum number of assignment + update rounds.
    tol : float
        Stop when the fraction of points that changed cluster in a round is at most ``tol``.
    init : {"random", "linked", "k-means++"} or uint64[k, n_bits/64]
        "random" picks k distinct data points. "linked" seeds one center in each of the k largest
        groups of near-duplicate codes, random codes where there are fewer groups (see
        :func:`_init_linked`): for fine clusterings such as the paper's k = n/10, where clusters
        are groups of near-duplicates, it is much faster and purer (the online clusterer uses it);
        for a few coarse clusters it scores like "random" and costs a round of substring tables.
        "k-means++" does D^2 seeding (:func:`kmeans_plusplus`; k passes over the data, so it is
        only practical for modest k). An array gives the initial centers themselves (copied), for
        example to start other methods from the same centers.
    assign : {"auto", "mih", "brute"}
        How nearest centers are found; every mode gives identical labels (see the module docstring).
    random_state : None, int or numpy Generator
        Seed for the init and for nothing else; the same seed gives the same result.
    callback : callable, optional
        Called with an :class:`IterationInfo` after every round (progress bars).

    Attributes
    ----------
    cluster_centers_ : uint64[k, n_bits/64]
    labels_ : int64[N], nearest center of each training code (ties: lowest center index)
    inertia_ : int, summed Hamming distance of the codes to their centers
    n_iter_ : int, rounds run
    history_ : list of IterationInfo

    Notes
    -----
    A center bit whose vote is tied keeps its previous value. An empty cluster is re-seeded with
    the code that is farthest from its own center (ties: lowest index), one distinct code per empty
    cluster, in cluster order. After the last round the labels are recomputed against the final
    centers, so ``labels_`` are always the nearest ``cluster_centers_``.
    """

    def __init__(
        self,
        n_clusters: int = 8,
        max_iter: int = 20,
        tol: float = 1e-4,
        init: str = "random",
        assign: str = "auto",
        random_state: Any = None,
        callback: Callable[[IterationInfo], None] | None = None,
    ) -> None:
        self.n_clusters = n_clusters
        self.max_iter = max_iter
        self.tol = tol
        self.init = init
        self.assign = assign
        self.random_state = random_state
        self.callback = callback

    def _validate(self, codes: np.ndarray) -> np.ndarray:
        codes = check_codes(codes)
        n = codes.shape[0]
        for name in ("n_clusters", "max_iter"):
            check_int(name, getattr(self, name), 1)
        if n == 0:
            raise ValueError("codes is empty; Bk-means needs at least one code")
        check_int("n_clusters", self.n_clusters, high=("n_samples", n))
        if isinstance(self.tol, bool) or not isinstance(self.tol, (int, float, np.floating)) or not 0 <= self.tol <= 1:
            raise ValueError(f"tol={self.tol!r} must be a number in [0, 1]")
        if isinstance(self.init, np.ndarray):
            if self.init.dtype != np.uint64 or self.init.shape != (self.n_clusters, codes.shape[1]):
                raise ValueError(
                    f"init array must be uint64 of shape (n_clusters, n_bits/64) = ({self.n_clusters}, "
                    f"{codes.shape[1]}), got {self.init.dtype} of shape {self.init.shape}"
                )
        elif not isinstance(self.init, str) or self.init not in INIT_METHODS:
            raise ValueError(f"init={self.init!r} is not one of {sorted(INIT_METHODS)} or an array of centers")
        if self.assign not in ASSIGN_METHODS:
            raise ValueError(f"assign={self.assign!r} is not one of {list(ASSIGN_METHODS)}")
        if self.callback is not None and not callable(self.callback):
            raise TypeError("callback must be callable")
        return codes

    def fit(self, codes: np.ndarray) -> "BKMeans":
        """Cluster ``codes`` (uint64[N, n_bits/64])."""
        codes = self._validate(codes)
        rng = check_random_state(self.random_state)
        n, k = codes.shape[0], int(self.n_clusters)
        if isinstance(self.init, np.ndarray):
            centers, labels, best = _init_given(codes, self.init)
        else:
            centers, labels, best = INIT_METHODS[self.init](codes, k, rng)
        assigner = _Assigner(self.assign, codes)
        assigner.set_centers(centers)

        lower = np.full(n, FAR, dtype=np.int32)
        all_rows = np.arange(n, dtype=np.int64)
        offsets = np.empty(k + 1, dtype=np.int64)
        order = np.empty(n, dtype=np.int64)
        sizes = np.empty(k, dtype=np.int64)
        drift: np.ndarray | None = None
        self.history_: list[IterationInfo] = []

        for iteration in range(1, self.max_iter + 1):
            started = time.perf_counter()
            previous = labels.copy()
            n_searched, n_moved = self._assign_step(assigner, all_rows, labels, best, lower, drift)
            n_changed = int(np.count_nonzero(labels != previous))
            # Update: majority vote (tied bits keep their old value), then re-seed empty clusters.
            new_centers = np.empty_like(centers)
            _kernels.members_by_label(labels, k, offsets, order)
            _kernels.majority_centers(codes, offsets, order, centers, new_centers, sizes)
            self._reseed_empty(codes, new_centers, sizes, best)
            drift = np.empty(k, dtype=np.int32)
            _kernels.paired_distances(centers, new_centers, drift)
            centers = new_centers
            assigner.set_centers(centers)
            self._record(iteration, n_changed, n, best, n_searched, n_moved, started, labels)
            if iteration > 1 and n_changed <= self.tol * n:
                break
        if drift is not None and drift.any():
            # Labels against the final centers, so that labels_ are the nearest cluster_centers_.
            self._assign_step(assigner, all_rows, labels, best, lower, drift)

        self.cluster_centers_ = centers
        self.labels_ = labels
        self.inertia_ = int(best.sum(dtype=np.int64))
        self.n_iter_ = len(self.history_)
        self.n_features_in_ = codes.shape[1] * 64
        return self

    def _assign_step(
        self,
        assigner: _Assigner,
        all_rows: np.ndarray,
        labels: np.ndarray,
        best: np.ndarray,
        lower: np.ndarray,
        drift: np.ndarray | None,
    ) -> tuple[int, int]:
        """Exact assignment; returns (points searched in full, centers checked explicitly)."""
        centers = assigner.centers
        if drift is None or self.assign == "brute":
            # A full search: from the init's candidates in the first round, from nothing in brute.
            if self.assign == "brute":
                best[:] = FAR
                labels[:] = -1
            assigner.search(all_rows, labels, best, lower)
            return all_rows.shape[0], 0
        _kernels.labelled_distances(assigner.points, centers, labels, best)
        tau = _choose_tau(drift, best, lower, centers.shape[0])
        moved = np.flatnonzero(drift > tau).astype(np.int64)
        lower -= tau
        safe = best < lower
        safe_rows = np.flatnonzero(safe).astype(np.int64)
        if moved.shape[0] and safe_rows.shape[0]:
            unsettled = _near_candidates(assigner.points, safe_rows, centers, labels, best, lower, moved)
            if unsettled.shape[0]:  # too few points per center: each checks every moved center
                moved_t = np.ascontiguousarray(centers[moved].T)
                _kernels.nearest_among(assigner.points, unsettled, moved_t, moved, labels, best, lower)
        search_rows = np.flatnonzero(~safe).astype(np.int64)
        assigner.search(search_rows, labels, best, lower)
        return search_rows.shape[0], moved.shape[0]

    @staticmethod
    def _reseed_empty(codes: np.ndarray, centers: np.ndarray, sizes: np.ndarray, best: np.ndarray) -> None:
        empty = np.flatnonzero(sizes == 0)
        if empty.shape[0] == 0:
            return
        # Farthest codes first, lowest index among equals (a stable sort on -distance).
        farthest = np.argsort(-best.astype(np.int64), kind="stable")[: empty.shape[0]]
        centers[empty] = codes[farthest]

    def _record(self, iteration, n_changed, n, best, n_searched, n_moved, started, labels) -> None:
        view = labels.view()
        view.flags.writeable = False
        info = IterationInfo(
            iteration=iteration,
            n_changed=n_changed,
            changed_fraction=n_changed / n,
            inertia=int(best.sum(dtype=np.int64)),
            n_searched=int(n_searched),
            n_moved_centers=int(n_moved),
            seconds=time.perf_counter() - started,
            labels=view,
        )
        if self.callback is not None:
            self.callback(info)
        self.history_.append(dataclasses.replace(info, labels=None))

    def predict(self, codes: np.ndarray) -> np.ndarray:
        """Nearest fitted center of each code (exact; ties: lowest center index)."""
        if not hasattr(self, "cluster_centers_"):
            raise RuntimeError("this BKMeans is not fitted yet; call fit(codes) first")
        codes = check_codes(codes, self.n_features_in_)
        n = codes.shape[0]
        labels = np.full(n, -1, dtype=np.int64)
        best = np.full(n, FAR, dtype=np.int32)
        lower = np.empty(n, dtype=np.int32)
        assigner = _Assigner(self.assign, codes)
        assigner.set_centers(self.cluster_centers_)
        assigner.search(np.arange(n, dtype=np.int64), labels, best, lower)
        return labels

    def fit_predict(self, codes: np.ndarray) -> np.ndarray:
        return self.fit(codes).labels_


def _choose_tau(drift: np.ndarray, best: np.ndarray, lower: np.ndarray, k: int) -> int:
    """The drift threshold ``tau`` that minimises the estimated distance computations.

    With threshold t, the points whose bound gap ``lower - best`` is at most t are searched in full
    (about k distances each) and every other point is checked against the centers that moved more
    than t. Distances are small integers, so both counts come from histograms in linear time.
    """
    n = best.shape[0]
    top = int(drift.max()) + 1
    moved_upto = np.cumsum(np.bincount(drift, minlength=top))  # centers with drift <= t
    n_moved = k - moved_upto
    gap = np.clip(lower.astype(np.int64) - best, -1, top) + 1
    failed = np.cumsum(np.bincount(gap, minlength=top + 2))[1 : top + 1]  # points with gap <= t
    # The search near candidates (``_near_candidates``) costs one pass over the targets per
    # candidate center, and there are at most k candidates.
    cost = np.minimum(n - failed, k).astype(np.float64) * n_moved + np.minimum(failed, k).astype(np.float64) * k
    return int(np.argmin(cost))
