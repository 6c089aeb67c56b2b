"""Plain-numpy references that the Numba kernels are checked against."""

import numpy as np

from core.codes import unpack_bits


def reference_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All-pairs Hamming distances via np.unpackbits (slow, obviously right)."""
    bits_a = unpack_bits(a).astype(np.int32)
    bits_b = unpack_bits(b).astype(np.int32)
    return (bits_a[:, None, :] != bits_b[None, :, :]).sum(axis=2)


def reference_nearest(points: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = reference_distances(points, centers)
    labels = d.argmin(axis=1)  # argmin returns the first (lowest index) minimum
    return labels, d[np.arange(len(points)), labels]


def random_codes(rng: np.random.Generator, n: int, n_bits: int) -> np.ndarray:
    return rng.integers(0, 2**64, (n, n_bits // 64), dtype=np.uint64, endpoint=False)


def flip_bits(rng: np.random.Generator, codes: np.ndarray, p: float) -> np.ndarray:
    from core.codes import pack_bits

    bits = unpack_bits(codes)
    return pack_bits(bits ^ (rng.random(bits.shape) < p))


def recurring_stream(n_windows: int, window: int, n_true: int, seed: int = 8, per_window: int = 10,
                     flip: float = 0.08) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(ids, codes, truth)``: windows of photos of ``per_window`` true clusters each, drawn at
    random from ``n_true``, so that centers go untouched for a while and true clusters come back
    (for retiring centers)."""
    from core.synth import planted_codes

    rng = np.random.default_rng(seed)
    _, _, true_centers = planted_codes(n_true, n_true, random_state=seed)
    truth = np.concatenate([rng.choice(rng.choice(n_true, per_window, replace=False), window)
                            for _ in range(n_windows)])
    return [f"photo-{i}" for i in range(len(truth))], flip_bits(rng, true_centers[truth], flip), truth
