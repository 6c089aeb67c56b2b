import numpy as np
import pytest

from core.bkmeans import BKMeans, kmeans_plusplus
from core.codes import unpack_bits
from helpers import flip_bits, random_codes, reference_distances

try:
    from core.purity import purity
except ImportError:  # pragma: no cover
    purity = None


def planted(n, k, p, n_bits=256, seed=0):
    rng = np.random.default_rng(seed)
    centers = random_codes(rng, k, n_bits)
    truth = rng.permutation(np.arange(n) % k)
    return flip_bits(rng, centers[truth], p), truth


def _per_iteration(method, codes, k, **kw):
    snapshots = []
    model = BKMeans(k, assign=method, callback=lambda info: snapshots.append(info.labels.copy()), **kw).fit(codes)
    return model, snapshots


@pytest.mark.parametrize("init", ["linked", "random"])
@pytest.mark.parametrize("n_bits,p", [(256, 0.1), (256, 0.25), (64, 0.1), (128, 0.3)])
def test_mih_auto_and_brute_agree_label_for_label(n_bits, p, init):
    codes, _ = planted(3000, 60, p, n_bits, seed=n_bits)
    runs = {
        m: _per_iteration(m, codes, 60, max_iter=8, tol=0, init=init, random_state=4)
        for m in ("brute", "mih", "auto")
    }
    brute, brute_snaps = runs["brute"]
    for method in ("mih", "auto"):
        model, snaps = runs[method]
        assert len(snaps) == len(brute_snaps)
        for a, b in zip(snaps, brute_snaps):
            assert np.array_equal(a, b)
        assert np.array_equal(model.labels_, brute.labels_)
        assert np.array_equal(model.cluster_centers_, brute.cluster_centers_)
        assert model.inertia_ == brute.inertia_


def test_labels_are_exact_nearest_and_objective_never_increases():
    codes, _ = planted(2000, 40, 0.15, seed=1)
    # Random seeds, so that the rounds have work to do (linked seeds start near convergence).
    model = BKMeans(40, max_iter=15, tol=0, init="random", random_state=0).fit(codes)
    d = reference_distances(codes, model.cluster_centers_)
    assert np.array_equal(model.labels_, d.argmin(axis=1))
    assert model.inertia_ == int(d.min(axis=1).sum())
    inertias = [h.inertia for h in model.history_] + [model.inertia_]
    assert all(b <= a for a, b in zip(inertias, inertias[1:]))
    assert inertias[-1] < inertias[0]


def test_centers_are_majority_votes_of_members():
    codes, _ = planted(1500, 30, 0.2, seed=2)
    # Stop after a round without the final re-assignment so the centers are votes of labels_:
    # with tol=1 the fit stops after round 2, and the last labels are those the centers were voted from.
    snaps = []
    model = BKMeans(30, max_iter=3, tol=0, random_state=1, callback=lambda i: snaps.append(i.labels.copy())).fit(codes)
    labels = snaps[-1]
    bits = unpack_bits(codes).astype(np.int64)
    center_bits = unpack_bits(model.cluster_centers_)
    for c in range(30):
        members = bits[labels == c]
        if len(members) == 0:
            continue
        ones = 2 * members.sum(axis=0)
        decided = ones != len(members)
        assert np.array_equal(center_bits[c][decided], (ones > len(members))[decided])


def test_seeded_runs_repeat_exactly_and_seeds_matter():
    codes, _ = planted(2000, 50, 0.1, seed=3)
    a = BKMeans(50, random_state=11, init="k-means++").fit(codes)
    b = BKMeans(50, random_state=11, init="k-means++").fit(codes)
    c = BKMeans(50, random_state=12, init="k-means++").fit(codes)
    assert np.array_equal(a.labels_, b.labels_) and np.array_equal(a.cluster_centers_, b.cluster_centers_)
    assert not np.array_equal(a.cluster_centers_, c.cluster_centers_)


def test_kmeans_plusplus_returns_distinct_chosen_codes_and_repeats():
    codes, _ = planted(3000, 40, 0.1, seed=6)
    centers, indices = kmeans_plusplus(codes, 40, random_state=3)
    assert centers.shape == (40, 4) and np.array_equal(centers, codes[indices])
    assert np.unique(indices).shape[0] == 40
    again, again_indices = kmeans_plusplus(codes, 40, random_state=3)
    assert np.array_equal(indices, again_indices)
    with pytest.raises(ValueError, match=r"n_clusters=0 must be between 1 and n_samples=3000"):
        kmeans_plusplus(codes, 0)


def test_given_centers_give_the_same_fit_as_the_init_that_chose_them():
    """init=array is how the paper experiment starts every method from the same centers."""
    codes, _ = planted(3000, 40, 0.15, seed=7)
    _, indices = kmeans_plusplus(codes, 40, random_state=5)
    given = BKMeans(40, max_iter=10, tol=0, init=codes[np.sort(indices)]).fit(codes)
    drawn = BKMeans(40, max_iter=10, tol=0, init="k-means++", random_state=5).fit(codes)
    assert np.array_equal(given.labels_, drawn.labels_)
    assert np.array_equal(given.cluster_centers_, drawn.cluster_centers_)


@pytest.mark.parametrize("init", [np.zeros((3, 4), np.uint64), np.zeros((2, 4), np.int64), np.zeros((2, 2), np.uint64)])
def test_bad_init_array(init):
    with pytest.raises(ValueError, match=r"init array must be uint64 of shape \(n_clusters, n_bits/64\) = \(2, 4\)"):
        BKMeans(2, init=init).fit(np.zeros((3, 4), np.uint64))


@pytest.mark.skipif(purity is None, reason="core.purity not available")
@pytest.mark.parametrize("init", ["linked", "random", "k-means++"])
def test_planted_purity(init):
    codes, truth = planted(10000, 100, 0.1, seed=5)
    model = BKMeans(100, max_iter=20, init=init, random_state=0).fit(codes)
    assert purity(model.labels_, truth) >= 0.95


def test_empty_clusters_are_reseeded_and_predict_matches():
    rng = np.random.default_rng(0)
    codes = np.repeat(random_codes(rng, 5, 256), 20, axis=0)  # only 5 distinct codes, k = 8
    codes = np.concatenate([codes, random_codes(rng, 3, 256)])
    model = BKMeans(8, max_iter=10, random_state=0).fit(codes)
    assert np.array_equal(model.predict(codes), model.labels_)
    assert model.cluster_centers_.shape == (8, 4)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"n_clusters": 8}, ValueError, r"n_clusters=8 must be <= n_samples=3"),
        ({"n_clusters": 0}, ValueError, r"n_clusters=0 must be >= 1"),
        ({"n_clusters": 2, "max_iter": 0}, ValueError, r"max_iter=0 must be >= 1"),
        ({"n_clusters": 2, "tol": -1}, ValueError, r"tol=-1 must be a number in \[0, 1\]"),
        ({"n_clusters": 2, "init": "kmeans"}, ValueError, r"init='kmeans' is not one of \['k-means\+\+', 'linked', 'random'\]"),
        ({"n_clusters": 2, "assign": "faiss"}, ValueError, r"assign='faiss' is not one of"),
        ({"n_clusters": 2.5}, TypeError, r"n_clusters=2.5 must be an integer"),
        ({"n_clusters": 2, "random_state": "x"}, TypeError, r"random_state='x' must be None, a non-negative int"),
    ],
)
def test_bad_parameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        BKMeans(**kwargs).fit(np.zeros((3, 4), np.uint64))


def test_bad_codes():
    with pytest.raises(TypeError, match="dtype uint64"):
        BKMeans(2).fit(np.zeros((3, 32), np.uint8))
    with pytest.raises(RuntimeError, match="not fitted"):
        BKMeans(2).predict(np.zeros((3, 4), np.uint64))


@pytest.mark.parametrize("gather", [0.05, 1.0])
@pytest.mark.parametrize("subset", [False, True])
def test_search_near_candidates_is_exact(subset, gather, monkeypatch):
    """Elkan's bound: the nearest center lies within twice the candidate's distance of the candidate."""
    import core.bkmeans as bk
    from core._kernels import FAR

    monkeypatch.setattr(bk, "MAX_GATHER_FRACTION", gather)
    monkeypatch.setattr(bk, "SPARE_NEIGHBOURS", 3)
    rng = np.random.default_rng(7)
    base = random_codes(rng, 12, 128)
    centers = flip_bits(rng, base[rng.integers(0, 12, 80)], 0.05)
    centers[10] = centers[3]  # duplicate centers: ties go to the lowest id
    codes = flip_bits(rng, centers[rng.integers(0, 80, 2000)], 0.08)
    d = reference_distances(codes, centers)
    labels = rng.integers(0, 80, 2000).astype(np.int64)  # candidates, some far from the point
    labels[:1000] = d[:1000].argsort(axis=1, kind="stable")[:, 1]  # near but not nearest
    best = d[np.arange(2000), labels].astype(np.int32)
    before_labels, before_best = labels.copy(), best.copy()
    rows = np.arange(2000, dtype=np.int64)
    if subset:  # only the targets may beat the candidate; ``lower`` bounds the others
        targets = np.sort(rng.choice(80, 30, replace=False)).astype(np.int64)
        others = np.setdiff1d(np.arange(80), targets)
        allowed = np.isin(np.arange(80), targets)[None, :] | (np.arange(80)[None, :] == labels[:, None])
        reachable = np.where(allowed, d, FAR)
        lower = np.where(np.isin(np.arange(80), others)[None, :] & ~allowed, d, FAR).min(axis=1).astype(np.int32)
        left = bk._near_candidates(codes, rows, centers, labels, best, lower, targets)
    else:
        reachable = d
        lower = np.full(2000, FAR, dtype=np.int32)
        left = bk._near_candidates(codes, rows, centers, labels, best, lower)
    if gather == 1.0:
        assert left.shape[0] == 0
    else:  # some candidates have too many centers near them: those rows are left as they were
        assert 0 < left.shape[0] < 2000
        assert np.array_equal(labels[left], before_labels[left]) and np.array_equal(best[left], before_best[left])
    done = np.setdiff1d(rows, left)
    nearest = reachable.argmin(axis=1)  # lowest id among equals
    assert np.array_equal(labels[done], nearest[done])
    assert np.array_equal(best[done], reachable[done, nearest[done]])
    runner_up = np.where(np.arange(80) == nearest[:, None], FAR, d).min(axis=1)
    assert np.all(lower[done] <= runner_up[done])  # a true lower bound on every other center


def test_linked_init_seeds_about_one_center_per_planted_cluster():
    from core.bkmeans import _init_linked

    from core.hamming import hamming_distances

    codes, truth = planted(6000, 150, 0.05, seed=8)
    centers, labels, best = _init_linked(codes, 150, np.random.default_rng(0))
    d = hamming_distances(codes, centers)
    # A uniform draw of 150 codes serves about 63 % of the planted clusters.
    assert _served_clusters(codes, truth, centers) >= 0.95 * 150
    has = labels >= 0
    assert has.mean() > 0.9
    assert np.array_equal(best[has], d[np.flatnonzero(has), labels[has]])
    again = _init_linked(codes, 150, np.random.default_rng(0))
    assert all(np.array_equal(x, y) for x, y in zip((centers, labels, best), again))


def _served_clusters(codes, truth, centers):
    """How many planted clusters some center serves (holds most of its nearest codes from)."""
    from core.hamming import hamming_distances

    nearest = hamming_distances(codes, centers).argmin(axis=1)
    return np.unique([np.bincount(truth[nearest == c]).argmax() for c in np.unique(nearest)]).shape[0]


def test_linked_init_adds_rounds_of_tables_where_codes_are_far_apart(monkeypatch):
    import core.bkmeans as bk

    # p = 0.2: members of a cluster are 82 bits apart, so few share one of the first round's
    # substrings; further rounds over permuted bits link the rest, within the budget.
    codes, truth = planted(60000, 6000, 0.2, seed=8)
    served = {}
    for budget in (0.0, 1.0):
        monkeypatch.setattr(bk, "LINK_BUDGET", budget)
        centers, labels, _ = bk._init_linked(codes, 6000, np.random.default_rng(0))
        served[budget] = _served_clusters(codes, truth, centers)
    assert served[1.0] >= 0.97 * 6000
    assert served[1.0] > served[0.0]


@pytest.mark.parametrize("distinct", [3, 400])
def test_linked_init_fills_with_codes_where_few_groups_link(distinct):
    from core.bkmeans import _init_linked

    rng = np.random.default_rng(9)
    codes = np.repeat(random_codes(rng, distinct, 256), 1200 // distinct, axis=0)  # 3 groups, or none linked
    centers, labels, best = _init_linked(codes, 20, np.random.default_rng(1))
    assert centers.shape == (20, 4)
    model = BKMeans(20, max_iter=5, init="linked", random_state=1).fit(codes)
    d = reference_distances(codes, model.cluster_centers_)
    assert np.array_equal(model.labels_, d.argmin(axis=1))
