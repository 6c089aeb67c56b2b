"""Tests for core.itq: the ITQ algorithm's guarantees, its code layout and its input checks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.codes import check_codes, unpack_bits
from core.itq import ITQ, NotFittedError


def _features(n: int = 400, f: int = 96, seed: int = 0, dtype=np.float64) -> np.ndarray:
    """Anisotropic Gaussian features, so PCA directions are well separated."""
    rng = np.random.default_rng(seed)
    scales = np.linspace(3.0, 0.2, f)
    return (rng.standard_normal((n, f)) * scales + 5.0).astype(dtype)


def _blobs(n_blobs: int = 6, per_blob: int = 60, f: int = 128, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_blobs, f)) * 4.0
    labels = np.repeat(np.arange(n_blobs), per_blob)
    x = centers[labels] + rng.standard_normal((labels.size, f))
    return x, labels


def _hamming_matrix(codes: np.ndarray) -> np.ndarray:
    bits = unpack_bits(codes).astype(np.int32)
    return bits.shape[1] - (bits @ bits.T + (1 - bits) @ (1 - bits).T)


def _direct_loss(model: ITQ, x: np.ndarray, rotation: np.ndarray, b_rotation: np.ndarray) -> float:
    v = (x - model.mean_) @ model.components_
    b = np.where(v @ b_rotation >= 0, 1.0, -1.0)
    return float(np.sum((b - v @ rotation) ** 2))


# -- algorithm ------------------------------------------------------------------------------------


def test_loss_history_is_non_increasing_and_has_one_entry_per_iteration():
    model = ITQ(n_bits=64, n_iter=25, random_state=3).fit(_features())
    losses = np.asarray(model.loss_history_)
    assert len(model.loss_history_) == 25
    assert all(isinstance(value, float) for value in model.loss_history_)
    assert np.all(losses >= 0)
    # Exact arithmetic gives a non-increasing sequence; allow only float rounding.
    assert np.all(np.diff(losses) <= 1e-9 * losses[:-1])
    assert losses[-1] < losses[0]


def test_loss_history_matches_the_quantization_loss_definition():
    x = _features()
    previous = ITQ(n_bits=64, n_iter=4, random_state=5).fit(x)
    model = ITQ(n_bits=64, n_iter=5, random_state=5).fit(x)
    # After iteration 5: B = sign(V R_4), and the loss is ||B - V R_5||^2.
    expected = _direct_loss(model, x, model.rotation_, previous.rotation_)
    assert model.loss_history_[-1] == pytest.approx(expected, rel=1e-10)
    assert model.loss_history_[:4] == pytest.approx(previous.loss_history_, rel=1e-12)


def test_iterations_reduce_loss_below_random_rotation():
    x = _features(seed=2)
    start = ITQ(n_bits=64, n_iter=0, random_state=9).fit(x)
    fitted = ITQ(n_bits=64, n_iter=30, random_state=9).fit(x)
    assert start.loss_history_ == []
    random_loss = _direct_loss(start, x, start.rotation_, start.rotation_)
    assert fitted.loss_history_[-1] < random_loss


def test_fitted_attributes_shapes_and_orthogonality():
    x = _features(n=300, f=80)
    model = ITQ(n_bits=64, n_iter=10, random_state=0).fit(x)
    assert model.n_features_in_ == 80
    assert model.mean_.shape == (80,)
    np.testing.assert_allclose(model.mean_, x.mean(axis=0))
    assert model.components_.shape == (80, 64)
    assert model.rotation_.shape == (64, 64)
    np.testing.assert_allclose(model.components_.T @ model.components_, np.eye(64), atol=1e-10)
    np.testing.assert_allclose(model.rotation_.T @ model.rotation_, np.eye(64), atol=1e-10)
    # Components are ordered by decreasing variance of the projections.
    variances = (((x - model.mean_) @ model.components_) ** 2).mean(axis=0)
    assert np.all(np.diff(variances) <= 1e-9)


@pytest.mark.parametrize("n_bits", [64, 128, 256])
def test_code_width_and_layout(n_bits):
    x = _features(n=n_bits + 10, f=n_bits + 4, seed=n_bits)
    model = ITQ(n_bits=n_bits, n_iter=3, random_state=1)
    codes = model.fit_transform(x)
    assert codes.dtype == np.uint64
    assert codes.shape == (x.shape[0], n_bits // 64)
    assert codes.flags.c_contiguous
    check_codes(codes, n_bits=n_bits)
    # Bit j is 1 exactly where the j-th rotated projection is >= 0.
    z = ((x - model.mean_) @ model.components_) @ model.rotation_
    np.testing.assert_array_equal(unpack_bits(codes), (z >= 0).astype(np.uint8))


def test_transform_of_training_data_equals_fit_transform():
    x = _features(n=500, f=70, seed=4, dtype=np.float32)
    model = ITQ(n_bits=64, n_iter=8, random_state=11)
    codes = model.fit_transform(x)
    np.testing.assert_array_equal(model.transform(x), codes)
    np.testing.assert_array_equal(ITQ(n_bits=64, n_iter=8, random_state=11).fit(x).transform(x), codes)


def test_same_seed_gives_identical_results_and_different_seeds_differ():
    x = _features(seed=6)
    a = ITQ(n_bits=64, n_iter=6, random_state=42).fit(x)
    b = ITQ(n_bits=64, n_iter=6, random_state=42).fit(x)
    c = ITQ(n_bits=64, n_iter=6, random_state=43).fit(x)
    np.testing.assert_array_equal(a.rotation_, b.rotation_)
    assert a.loss_history_ == b.loss_history_
    np.testing.assert_array_equal(a.transform(x), b.transform(x))
    assert not np.array_equal(a.rotation_, c.rotation_)


def test_generator_random_state_is_accepted_and_consumed():
    x = _features(seed=7)
    a = ITQ(n_bits=64, n_iter=3, random_state=np.random.default_rng(5)).fit(x)
    b = ITQ(n_bits=64, n_iter=3, random_state=np.random.default_rng(5)).fit(x)
    np.testing.assert_array_equal(a.rotation_, b.rotation_)
    ITQ(n_bits=64, n_iter=3).fit(x)  # None: fresh entropy, just has to work


def test_same_blob_codes_are_closer_than_different_blob_codes():
    x, labels = _blobs()
    codes = ITQ(n_bits=64, n_iter=20, random_state=0).fit_transform(x)
    dist = _hamming_matrix(codes)
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~np.eye(labels.size, dtype=bool)
    within = dist[same & off_diagonal].mean()
    between = dist[~same].mean()
    assert within < 0.5 * between
    # And each code's nearest other code is almost always from its own blob.
    nearest = np.where(off_diagonal, dist, dist.max() + 1).argmin(axis=1)
    assert np.mean(labels[nearest] == labels) > 0.95


def test_state_round_trip_is_exact():
    x = _features(seed=8)
    model = ITQ(n_bits=64, n_iter=5, random_state=2).fit(x)
    state = model.get_state()
    for key, value in state.items():
        assert isinstance(value, (np.ndarray, int, float, str)), key
    restored = ITQ.from_state(state)
    np.testing.assert_array_equal(restored.mean_, model.mean_)
    np.testing.assert_array_equal(restored.components_, model.components_)
    np.testing.assert_array_equal(restored.rotation_, model.rotation_)
    assert restored.loss_history_ == model.loss_history_
    assert restored.n_features_in_ == model.n_features_in_
    assert (restored.n_bits, restored.n_iter, restored.random_state) == (64, 5, 2)
    np.testing.assert_array_equal(restored.transform(x), model.transform(x))
    # The state holds copies: mutating it does not change the model.
    state["rotation"][:] = 0
    assert np.any(model.rotation_ != 0)


def test_from_state_rejects_inconsistent_state():
    state = ITQ(n_bits=64, n_iter=2, random_state=0).fit(_features()).get_state()
    with pytest.raises(ValueError, match="missing keys"):
        ITQ.from_state({k: v for k, v in state.items() if k != "rotation"})
    with pytest.raises(ValueError, match="rotation"):
        ITQ.from_state({**state, "rotation": np.eye(128)})
    with pytest.raises(ValueError, match="kind"):
        ITQ.from_state({**state, "kind": "BKMeans"})
    with pytest.raises(TypeError, match="dict"):
        ITQ.from_state([1, 2])


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_extra=st.integers(0, 40), f_extra=st.integers(0, 20))
def test_random_inputs_give_valid_codes_and_monotone_loss(seed, n_extra, f_extra):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((64 + n_extra, 64 + f_extra)) * rng.uniform(0.1, 10.0, 64 + f_extra)
    model = ITQ(n_bits=64, n_iter=5, random_state=seed)
    codes = model.fit_transform(x)
    assert codes.shape == (x.shape[0], 1)
    losses = np.asarray(model.loss_history_)
    assert np.all(np.diff(losses) <= 1e-9 * losses[:-1])
    np.testing.assert_array_equal(model.transform(x), codes)


# -- validation ------------------------------------------------------------------------------------


def test_init_only_stores_arguments():
    model = ITQ(n_bits=100, n_iter=-1, random_state="nope")  # no error until fit
    assert (model.n_bits, model.n_iter, model.random_state) == (100, -1, "nope")


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"n_bits": 100}, ValueError, r"n_bits=100 is not supported; choose one of \(64, 128, 256, 512\)"),
        ({"n_bits": 64.0}, ValueError, "n_bits=64.0"),
        ({"n_iter": -1}, ValueError, "n_iter=-1"),
        ({"n_iter": 2.5}, TypeError, "n_iter=2.5"),
        ({"n_iter": True}, TypeError, "n_iter=True"),
        ({"random_state": "seed"}, TypeError, "random_state='seed'"),
        ({"random_state": -3}, ValueError, "random_state=-3"),
    ],
)
def test_bad_parameters_raise_clear_errors(kwargs, error, message):
    params = {"n_bits": 64, "n_iter": 2, "random_state": 0, **kwargs}
    with pytest.raises(error, match=message):
        ITQ(**params).fit(_features())


def test_bad_features_raise_clear_errors():
    model = ITQ(n_bits=64, n_iter=2, random_state=0)
    with pytest.raises(TypeError, match="floating-point"):
        model.fit(np.ones((100, 80), dtype=np.int64))
    with pytest.raises(ValueError, match="2-D"):
        model.fit(np.ones(100))
    with pytest.raises(ValueError, match="no rows"):
        model.fit(np.ones((0, 80)))
    x = _features()
    x[17, 3] = np.nan
    x[40, 0] = np.inf
    with pytest.raises(ValueError, match="row 17 is not finite"):
        model.fit(x)
    with pytest.raises(ValueError, match="40 columns but n_bits=64"):
        model.fit(_features(f=40))
    with pytest.raises(ValueError, match="50 rows but n_bits=64"):
        model.fit(_features(n=50))


def test_transform_checks_fitted_and_feature_count():
    x = _features()
    with pytest.raises(NotFittedError, match="not fitted"):
        ITQ(n_bits=64).transform(x)
    with pytest.raises(NotFittedError):
        ITQ(n_bits=64).get_state()
    model = ITQ(n_bits=64, n_iter=2, random_state=0).fit(x)
    with pytest.raises(ValueError, match="95 columns but ITQ was fitted on 96"):
        model.transform(x[:, :95])
    bad = x[:5].copy()
    bad[2, 1] = np.inf
    with pytest.raises(ValueError, match="row 2 is not finite"):
        model.transform(bad)
