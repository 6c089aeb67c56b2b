"""Iterative Quantization (ITQ): real-valued image features to short binary codes.

Bk-means clusters binary codes, but many photo collections start out as float descriptors (CNN
activations, GIST, ...). ITQ (Gong, Lazebnik, Gordo, Perronnin, TPAMI 2013) is the hashing the
Bk-means paper builds on: PCA keeps the ``n_bits`` highest-variance directions, then a learned
rotation spreads variance so that taking signs loses as little as possible. Keeping it in
photoclust lets users produce codes whose Hamming distances reflect feature distances.

Conventions (shared by ``fit``, ``transform`` and ``fit_transform``):

* ``V = (X - mean_) @ components_`` are the PCA projections, ``Z = V @ rotation_``.
* The binary matrix of the paper is ``B = sign(Z)`` with ``sign(0) = +1``; bit ``j`` of a code
  is 1 exactly where ``B[:, j] = +1``, i.e. where ``Z[:, j] >= 0``. Mapping 0 to +1 keeps the
  B-step optimal (a zero is equally far from -1 and +1), so the loss stays monotone.
* Bit ``j`` is column ``j`` of ``Z`` in the layout of :func:`core.codes.pack_bits`.
"""

from __future__ import annotations

import numpy as np

from ._random import check_random_state
from ._validation import check_int, is_int

from core.codes import DEFAULT_BITS, check_n_bits, pack_bits

_STATE_KIND = "ITQ"
_STATE_VERSION = 1
# Rows processed at once when projecting: bounds float64 temporaries for large inputs. Both
# fit and transform use the same blocks, so transform(X) reproduces fit_transform(X) bit for bit.
_BLOCK_ROWS = 65536


class NotFittedError(ValueError, AttributeError):
    """Raised when a method needing fitted state is called before ``fit`` (as in scikit-learn)."""


def _check_features(features: object, n_features: int | None = None) -> np.ndarray:
    """Features as a validated 2-D float array; errors name the offending row or dtype."""
    x = np.asarray(features)
    if x.dtype.kind != "f":
        raise TypeError(
            f"features must be a floating-point array, got dtype {x.dtype}; convert with .astype(np.float32)"
        )
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D [n_samples, n_features], got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"features has no rows (shape {x.shape}); need at least one sample")
    if n_features is not None and x.shape[1] != n_features:
        raise ValueError(f"features has {x.shape[1]} columns but ITQ was fitted on {n_features}")
    finite_rows = np.isfinite(x).all(axis=1)
    if not finite_rows.all():
        row = int(np.argmin(finite_rows))
        col = int(np.argmin(np.isfinite(x[row])))
        raise ValueError(f"features row {row} is not finite (column {col} is {x[row, col]!r})")
    return x


def _project(x: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    """PCA projections ``(x - mean) @ components`` in float64, block by block."""
    out = np.empty((x.shape[0], components.shape[1]), dtype=np.float64)
    for start in range(0, x.shape[0], _BLOCK_ROWS):
        block = x[start : start + _BLOCK_ROWS].astype(np.float64) - mean
        np.matmul(block, components, out=out[start : start + _BLOCK_ROWS])
    return out


def _encode_block(v: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """Codes of one block of projections; bit = 1 where ``v @ rotation >= 0`` (sign(0) = +1)."""
    return pack_bits((v @ rotation) >= 0.0)


def _random_rotation(n: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-distributed orthogonal matrix: QR of a Gaussian, signs fixed by R's diagonal."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    signs = np.sign(np.diag(r))
    signs[signs == 0] = 1.0
    return q * signs


def _procrustes(b: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, float]:
    """The orthogonal R minimizing ||B - V R||_F for fixed B, and max tr(B^T V R).

    ||B - VR||^2 = ||B||^2 + ||V||^2 - 2 tr(B^T V R) since R is orthogonal. With
    B^T V = U S W^T, tr(B^T V R) = tr(S W^T R U) is maximal, equal to sum(S), when W^T R U = I,
    i.e. R = W U^T = (U W^T)^T. Returning sum(S) gives the loss without another N x n_bits pass.
    """
    u, s, wt = np.linalg.svd(b.T @ v)
    return wt.T @ u.T, float(np.sum(s))


class ITQ:
    """Iterative Quantization hashing: PCA to ``n_bits`` dimensions, then a learned rotation.

    Parameters
    ----------
    n_bits : code width, one of ``core.codes.SUPPORTED_BITS``.
    n_iter : number of alternating (B-step, rotation-step) iterations; 50 is the paper's
        setting, 0 keeps the random rotation (a "PCA + random rotation" baseline).
    random_state : None, a non-negative int seed or a ``numpy.random.Generator``; it only
        drives the initial rotation.

    Fitted attributes: ``mean_`` [F], ``components_`` [F, n_bits] (PCA directions by decreasing
    variance, each with its largest-magnitude entry positive so results do not depend on the
    LAPACK build), ``rotation_`` [n_bits, n_bits], ``loss_history_`` (quantization loss
    ``||B - V R||_F^2`` after each iteration, non-increasing up to float rounding) and
    ``n_features_in_``.
    """

    def __init__(
        self,
        n_bits: int = DEFAULT_BITS,
        n_iter: int = 50,
        random_state: None | int | np.random.Generator = None,
    ) -> None:
        self.n_bits = n_bits
        self.n_iter = n_iter
        self.random_state = random_state

    # -- fitting -------------------------------------------------------------------------------

    def _check_params(self) -> tuple[int, int]:
        n_bits = check_n_bits(self.n_bits)
        return n_bits, check_int("n_iter", self.n_iter, 0)

    def _fit(self, features: object) -> np.ndarray:
        """Fit and return the PCA projections of the training data (reused for its codes)."""
        n_bits, n_iter = self._check_params()
        x = _check_features(features)
        n_samples, n_features = x.shape
        if n_features < n_bits:
            raise ValueError(
                f"features has {n_features} columns but n_bits={n_bits}: PCA cannot produce more "
                f"dimensions than there are features; use n_bits <= {n_features} or richer features"
            )
        if n_samples < n_bits:
            raise ValueError(
                f"features has {n_samples} rows but n_bits={n_bits}: need at least n_bits samples "
                "to estimate n_bits principal directions"
            )
        rng = check_random_state(self.random_state)

        mean = np.zeros(n_features, dtype=np.float64)
        for start in range(0, n_samples, _BLOCK_ROWS):
            mean += x[start : start + _BLOCK_ROWS].sum(axis=0, dtype=np.float64)
        mean /= n_samples
        scatter = np.zeros((n_features, n_features), dtype=np.float64)
        for start in range(0, n_samples, _BLOCK_ROWS):
            block = x[start : start + _BLOCK_ROWS].astype(np.float64) - mean
            scatter += block.T @ block
        _, eigenvectors = np.linalg.eigh(scatter / n_samples)
        components = eigenvectors[:, ::-1][:, :n_bits].copy()
        # Eigenvectors are defined up to sign; pin it so results are stable across platforms.
        pivot = np.argmax(np.abs(components), axis=0)
        components *= np.where(components[pivot, np.arange(n_bits)] < 0, -1.0, 1.0)

        v = _project(x, mean, components)
        rotation = _random_rotation(n_bits, rng)
        losses: list[float] = []
        # ||B||^2 + ||V||^2 is constant: B has entries +-1 and R preserves norms.
        constant = float(v.size) + float(np.sum(v * v))
        z = v @ rotation
        for iteration in range(n_iter):
            # B-step: the nearest +-1 matrix to VR is its sign (0 -> +1, equally near).
            b = np.where(z >= 0.0, 1.0, -1.0)
            # R-step (orthogonal Procrustes). Each step can only lower ||B - VR||^2, so the
            # loss recorded after the pair is non-increasing; once B stops changing, R and the
            # loss repeat exactly.
            rotation, trace = _procrustes(b, v)
            losses.append(constant - 2.0 * trace)
            if iteration + 1 < n_iter:
                z = v @ rotation

        self.mean_ = mean
        self.components_ = components
        self.rotation_ = rotation
        self.loss_history_ = losses
        self.n_features_in_ = n_features
        return v

    def fit(self, features: object) -> ITQ:
        """Learn the PCA directions and rotation from float features ``[N, F]``."""
        self._fit(features)
        return self

    def fit_transform(self, features: object) -> np.ndarray:
        """Fit and return the training codes, reusing the training projections."""
        v = self._fit(features)
        n_words = self.rotation_.shape[1] // 64
        codes = np.empty((v.shape[0], n_words), dtype=np.uint64)
        for start in range(0, v.shape[0], _BLOCK_ROWS):
            codes[start : start + _BLOCK_ROWS] = _encode_block(v[start : start + _BLOCK_ROWS], self.rotation_)
        return codes

    # -- encoding -----------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "rotation_"):
            raise NotFittedError("this ITQ instance is not fitted yet; call fit(features) first")

    def transform(self, features: object) -> np.ndarray:
        """Encode float features ``[N, F]`` as ``uint64[N, n_bits/64]`` codes."""
        self._check_fitted()
        x = _check_features(features, n_features=self.n_features_in_)
        n_words = self.rotation_.shape[1] // 64
        codes = np.empty((x.shape[0], n_words), dtype=np.uint64)
        for start in range(0, x.shape[0], _BLOCK_ROWS):
            v = _project(x[start : start + _BLOCK_ROWS], self.mean_, self.components_)
            codes[start : start + _BLOCK_ROWS] = _encode_block(v, self.rotation_)
        return codes

    # -- persistence (no pickle) ----------------------------------------------------------------

    def get_state(self) -> dict[str, np.ndarray | int | float | str]:
        """Everything needed to rebuild this fitted model exactly, as plain arrays and scalars."""
        self._check_fitted()
        state: dict[str, np.ndarray | int | float | str] = {
            "kind": _STATE_KIND,
            "version": _STATE_VERSION,
            "n_bits": int(self.rotation_.shape[1]),
            "n_iter": int(self.n_iter),
            "n_features_in": int(self.n_features_in_),
            "mean": self.mean_.copy(),
            "components": self.components_.copy(),
            "rotation": self.rotation_.copy(),
            "loss_history": np.asarray(self.loss_history_, dtype=np.float64),
        }
        if is_int(self.random_state):
            state["random_state"] = int(self.random_state)
        return state

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray | int | float | str]) -> ITQ:
        """Rebuild a fitted model from :meth:`get_state`; checks the pieces fit together."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict from ITQ.get_state(), got {type(state).__name__}")
        missing = [
            key
            for key in ("kind", "version", "n_bits", "n_iter", "n_features_in", "mean", "components", "rotation",
                        "loss_history")
            if key not in state
        ]
        if missing:
            raise ValueError(f"state is missing keys {missing}; was it produced by ITQ.get_state()?")
        if state["kind"] != _STATE_KIND:
            raise ValueError(f"state kind={state['kind']!r} is not {_STATE_KIND!r}")
        if int(state["version"]) != _STATE_VERSION:
            raise ValueError(f"state version={state['version']!r} is not supported (expected {_STATE_VERSION})")
        n_bits = check_n_bits(int(state["n_bits"]))
        n_features = int(state["n_features_in"])
        expected = {
            "mean": (n_features,),
            "components": (n_features, n_bits),
            "rotation": (n_bits, n_bits),
        }
        arrays = {}
        for key, shape in expected.items():
            arr = np.asarray(state[key])
            if arr.shape != shape or arr.dtype.kind != "f":
                raise ValueError(f"state[{key!r}] must be a float array of shape {shape}, got {arr.dtype} {arr.shape}")
            arrays[key] = np.array(arr, dtype=np.float64, order="C")
        losses = np.asarray(state["loss_history"], dtype=np.float64)
        if losses.ndim != 1:
            raise ValueError(f"state['loss_history'] must be 1-D, got shape {losses.shape}")
        model = cls(n_bits=n_bits, n_iter=int(state["n_iter"]), random_state=state.get("random_state"))
        model.mean_ = arrays["mean"]
        model.components_ = arrays["components"]
        model.rotation_ = arrays["rotation"]
        model.loss_history_ = [float(x) for x in losses]
        model.n_features_in_ = n_features
        return model

    def __repr__(self) -> str:
        return f"ITQ(n_bits={self.n_bits!r}, n_iter={self.n_iter!r}, random_state={self.random_state!r})"
