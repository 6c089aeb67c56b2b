"""The two baselines of the paper that photoclust does not ship: KDk-means and k-medoids.

**KDk-means** (Philbin et al.'s approximate k-means, the paper's "KDk-means"): float k-means on
the 0/1 codes whose assignment step searches the centers with a forest of randomized kd-trees
(FLANN's scheme, Silpa-Anan & Hartley) instead of scanning them all:

* every iteration, each of ``n_trees`` trees is built over the current centers expressed in its
  own random rotation of the 256-dim space (0/1 data split on raw axes would give degenerate
  splits); a node splits at the mean of a dimension drawn at random among the 5 of highest
  variance, down to leaves of at most ``leaf_size`` centers;
* a point descends all trees, the branches it did not take go into one priority queue shared by
  the trees (keyed by the squared distance to the splitting plane), and the search goes on from
  the closest unexplored branch until ``checks`` distinct centers have had their exact distance
  computed. The nearest of those wins: approximate, exact only when ``checks`` >= k;
* update: the mean of the members (float centers, as in k-means); an empty cluster keeps its
  center.

**k-medoids** in Hamming distance, alternating (Voronoi iteration; Park & Jun): assign every code
to its nearest medoid (exact scan), then make each cluster's medoid the member whose summed
Hamming distance to the cluster's members is smallest. For clusters larger than ``max_candidates``
the candidates are a random sample (plus the current medoid, so that the sum never rises on the
sample), and sums are taken over at most ``max_reference`` sampled members: only the k=10 settings
of these experiments have such clusters.

Both start from given data points (``init``: row numbers), so that the experiment starts every
method from the same centers; without ``init`` they start from the random points
``BKMeans(init="random")`` draws with the same seed.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from core.hamming import hamming_distances, nearest_brute


def init_indices(n: int, k: int, seed: int) -> np.ndarray:
    """The data points ``BKMeans(init="random", random_state=seed)`` starts from."""
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def _start(init: np.ndarray | None, n: int, k: int, seed: int) -> np.ndarray:
    if init is None:
        return init_indices(n, k, seed)
    init = np.asarray(init, dtype=np.int64)
    if init.shape != (k,) or np.unique(init).shape[0] != k or init.min() < 0 or init.max() >= n:
        raise ValueError(f"init must be {k} distinct row numbers in [0, {n}), got shape {init.shape}")
    return init


# -- randomized kd-tree forest ----------------------------------------------------------------------


def random_rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def build_tree(points: np.ndarray, leaf_size: int, rng: np.random.Generator, top_dims: int = 5):
    """One randomized kd-tree over ``points`` [k, d] (already rotated).

    Returns arrays indexed by node: split_dim (-1 for a leaf), split_val, left, right, start, end
    (the leaf's range in ``order``), and ``order`` (point indices, leaves contiguous).
    """
    k = points.shape[0]
    max_nodes = 2 * k + 1
    split_dim = np.full(max_nodes, -1, np.int64)
    split_val = np.zeros(max_nodes, np.float32)
    left = np.full(max_nodes, -1, np.int64)
    right = np.full(max_nodes, -1, np.int64)
    start = np.zeros(max_nodes, np.int64)
    end = np.zeros(max_nodes, np.int64)
    order = np.arange(k, dtype=np.int64)
    n_nodes = 1
    stack = [(0, 0, k)]
    while stack:
        node, lo, hi = stack.pop()
        start[node], end[node] = lo, hi
        if hi - lo <= leaf_size:
            continue
        members = order[lo:hi]
        sample = points[members[:100]]
        var = sample.var(axis=0)
        best = np.argsort(var)[::-1][:top_dims]
        dim = int(best[rng.integers(len(best))])
        if var[dim] <= 0.0:  # all equal: a leaf, whatever its size
            continue
        values = points[members, dim]
        val = float(values.mean())
        mask = values < val
        n_left = int(mask.sum())
        if n_left == 0 or n_left == hi - lo:
            continue
        order[lo:hi] = np.concatenate([members[mask], members[~mask]])
        split_dim[node], split_val[node] = dim, val
        left[node], right[node] = n_nodes, n_nodes + 1
        n_nodes += 2
        stack.append((left[node], lo, lo + n_left))
        stack.append((right[node], lo + n_left, hi))
    return split_dim, split_val, left, right, start, end, order


@njit(cache=True, inline="always")
def _heap_push(pri, node, tree, size, p, nd, tr):
    if size >= pri.shape[0]:
        return size  # full: drop (only the farthest branches are ever dropped in practice)
    i = size
    pri[i], node[i], tree[i] = p, nd, tr
    while i > 0:
        parent = (i - 1) // 2
        if pri[parent] <= pri[i]:
            break
        pri[parent], pri[i] = pri[i], pri[parent]
        node[parent], node[i] = node[i], node[parent]
        tree[parent], tree[i] = tree[i], tree[parent]
        i = parent
    return size + 1


@njit(cache=True, inline="always")
def _heap_pop(pri, node, tree, size):
    size -= 1
    pri[0], node[0], tree[0] = pri[size], node[size], tree[size]
    i = 0
    while True:
        a, b, m = 2 * i + 1, 2 * i + 2, i
        if a < size and pri[a] < pri[m]:
            m = a
        if b < size and pri[b] < pri[m]:
            m = b
        if m == i:
            break
        pri[m], pri[i] = pri[i], pri[m]
        node[m], node[i] = node[i], node[m]
        tree[m], tree[i] = tree[i], tree[m]
        i = m
    return size


@njit(parallel=True, cache=True, fastmath=True)
def forest_search(x, rotated, centers, split_dim, split_val, left, right, start, end, order, checks, labels, best):
    """Approximate nearest center of every row of ``x`` (see the module docstring).

    ``rotated`` [T, N, d]: the points in each tree's rotation; tree arrays are [T, max_nodes];
    ``order`` [T, k]. Writes ``labels`` and the squared distance ``best``.
    """
    n, d = x.shape
    k = centers.shape[0]
    n_trees = rotated.shape[0]
    chunk = 256
    n_chunks = (n + chunk - 1) // chunk
    for ch in prange(n_chunks):
        seen = np.full(k, -1, np.int64)
        cap = 4096
        pri = np.empty(cap, np.float32)
        hnode = np.empty(cap, np.int64)
        htree = np.empty(cap, np.int64)
        for i in range(ch * chunk, min(n, (ch + 1) * chunk)):
            size = 0
            n_checked = 0
            best_d = np.inf
            best_c = -1
            for t in range(n_trees):
                size = _heap_push(pri, hnode, htree, size, np.float32(0.0), 0, t)
            # Trees are entered first (priority 0) in order, then the closest unexplored branches.
            while size > 0 and n_checked < checks:
                p = pri[0]
                nd = hnode[0]
                t = htree[0]
                size = _heap_pop(pri, hnode, htree, size)
                if p >= best_d:
                    continue
                # Descend to a leaf, queueing the other side of each split.
                while split_dim[t, nd] >= 0:
                    diff = rotated[t, i, split_dim[t, nd]] - split_val[t, nd]
                    if diff < 0:
                        near, far = left[t, nd], right[t, nd]
                    else:
                        near, far = right[t, nd], left[t, nd]
                    size = _heap_push(pri, hnode, htree, size, p + diff * diff, far, t)
                    nd = near
                for j in range(start[t, nd], end[t, nd]):
                    c = order[t, j]
                    if seen[c] == i:
                        continue
                    seen[c] = i
                    n_checked += 1
                    s = np.float32(0.0)
                    for f in range(d):
                        delta = x[i, f] - centers[c, f]
                        s += delta * delta
                    if s < best_d or (s == best_d and c < best_c):
                        best_d = s
                        best_c = c
            labels[i] = best_c
            best[i] = best_d


class KDKMeans:
    """k-means with randomized kd-forest assignment (see the module docstring)."""

    def __init__(self, n_clusters: int, max_iter: int = 20, n_trees: int = 4, checks: int = 32,
                 leaf_size: int = 4, random_state: int = 0, init: np.ndarray | None = None) -> None:
        self.n_clusters = n_clusters
        self.init = init
        self.max_iter = max_iter
        self.n_trees = n_trees
        self.checks = checks
        self.leaf_size = leaf_size
        self.random_state = random_state

    def fit(self, x: np.ndarray) -> "KDKMeans":
        """``x``: float32 [N, d] (the 0/1 bits as floats)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        n, d = x.shape
        k = self.n_clusters
        rng = np.random.default_rng([self.random_state, 1])
        rotations = [random_rotation(d, rng) for _ in range(self.n_trees)]
        rotated = np.stack([x @ r for r in rotations])
        centers = x[_start(self.init, n, k, self.random_state)].copy()
        labels = np.full(n, -1, np.int64)
        best = np.empty(n, np.float32)
        self.n_iter_ = 0
        for _ in range(self.max_iter):
            previous = labels.copy()
            self._assign(x, rotated, rotations, centers, labels, best, rng)
            self.n_iter_ += 1
            counts = np.bincount(labels, minlength=k).astype(np.float32)
            sums = np.zeros((k, d), np.float32)
            _scatter_add(sums, labels, x)
            nonempty = counts > 0
            centers[nonempty] = sums[nonempty] / counts[nonempty, None]
            if np.array_equal(previous, labels):
                break
        self._assign(x, rotated, rotations, centers, labels, best, rng)
        self.labels_, self.cluster_centers_, self.inertia_ = labels, centers, float(best.sum())
        return self

    def _assign(self, x, rotated, rotations, centers, labels, best, rng) -> None:
        k, d = centers.shape
        trees = [build_tree(centers @ r, self.leaf_size, rng) for r in rotations]
        arrays = [np.stack([tree[i] for tree in trees]) for i in range(7)]
        forest_search(x, rotated, centers, *arrays, self.checks, labels, best)


@njit(cache=True)
def _scatter_add(sums, labels, x):
    for i in range(x.shape[0]):
        c = labels[i]
        for f in range(x.shape[1]):
            sums[c, f] += x[i, f]


# -- k-medoids ------------------------------------------------------------------------------------


class HammingKMedoids:
    """Alternating k-medoids in Hamming distance on uint64 codes (see the module docstring)."""

    def __init__(self, n_clusters: int, max_iter: int = 20, max_candidates: int = 1000,
                 max_reference: int = 2000, random_state: int = 0, init: np.ndarray | None = None) -> None:
        self.n_clusters = n_clusters
        self.init = init
        self.max_iter = max_iter
        self.max_candidates = max_candidates
        self.max_reference = max_reference
        self.random_state = random_state

    def fit(self, codes: np.ndarray) -> "HammingKMedoids":
        n, k = codes.shape[0], self.n_clusters
        rng = np.random.default_rng([self.random_state, 2])
        medoids = _start(self.init, n, k, self.random_state)
        self.n_iter_ = 0
        for _ in range(self.max_iter):
            labels, _ = nearest_brute(codes, codes[medoids])
            self.n_iter_ += 1
            order = np.argsort(labels, kind="stable")
            bounds = np.searchsorted(labels[order], np.arange(k + 1))
            new = medoids.copy()
            for c in range(k):
                members = order[bounds[c] : bounds[c + 1]]
                if members.shape[0] <= 1:
                    continue
                candidates = members
                if members.shape[0] > self.max_candidates:
                    candidates = np.union1d(rng.choice(members, self.max_candidates, replace=False), [medoids[c]])
                reference = members
                if members.shape[0] > self.max_reference:
                    reference = rng.choice(members, self.max_reference, replace=False)
                sums = hamming_distances(codes[candidates], codes[reference]).sum(axis=1, dtype=np.int64)
                current = np.flatnonzero(candidates == medoids[c])
                choice = int(np.argmin(sums))
                # Keep the current medoid unless a candidate is strictly better (no cycling on ties).
                if current.shape[0] and sums[current[0]] <= sums[choice]:
                    continue
                new[c] = candidates[choice]
            if np.array_equal(new, medoids):
                break
            medoids = new
        labels, dist = nearest_brute(codes, codes[medoids])
        self.medoid_indices_, self.labels_, self.inertia_ = medoids, labels, int(dist.sum())
        return self
