"""Synthetic binary codes with a known ("planted") clustering.

Real photo hashes come without ground truth, so every quality number photoclust reports
(purity, NMI, recall of the true centers) is first checked on data where the answer is known:
``k`` random centers, each sample a noisy copy of one of them. The noise model — every bit
flipped independently with probability ``flip_prob`` — is the one under which Hamming distance
is the natural dissimilarity, so a correct Bk-means must recover the centers once ``flip_prob``
is well below 1/2.

Generating the noise is the expensive part (one random decision per bit: 256M for 1M codes of
256 bits), so it is drawn directly as packed 64-bit words, see :func:`bernoulli_words`.
"""

from __future__ import annotations

import numpy as np

from ._random import check_random_state
from ._validation import check_int, check_real

from core.codes import DEFAULT_BITS, check_n_bits

# Words drawn per block when generating noise: bounds the temporary memory (a few × 8 MB)
# independently of the number of samples. Part of the output definition: changing it changes
# which random words end up where, so keep it fixed for reproducibility across versions.
_BLOCK_WORDS = 1 << 20
# After this many binary digits of p, at most a few bits per word are still undecided, so the
# remaining levels only touch the words that still need random bits.
_DENSE_LEVELS = 8


def _binary_digits(p: float) -> list[int]:
    """The finite binary expansion 0.d1 d2 d3 ... of a float ``p`` in (0, 1).

    Every double is a dyadic rational, so the expansion terminates (at most 1074 digits) and
    doubling/subtracting is exact in floating point.
    """
    digits = []
    frac = float(p)
    while frac > 0.0:
        frac *= 2.0
        if frac >= 1.0:
            digits.append(1)
            frac -= 1.0
        else:
            digits.append(0)
    return digits


def bernoulli_words(n_words: int, p: float, rng: np.random.Generator) -> np.ndarray:
    """``uint64[n_words]`` whose 64·n bits are independent Bernoulli(``p``), exactly.

    Why not ``rng.random(...) < p``: that costs one double per bit (about 2 s for 1M × 256 bits).
    Instead each bit compares an infinite stream of fair random bits U = 0.u1 u2 ... with the
    binary expansion of ``p``, most significant digit first, 64 bits at a time: at the first digit
    where they differ the bit is decided (1 iff U < p). Half of the undecided bits are decided per
    digit, so after a few full-width digits only a small set of words still needs random bits.
    This is exact for every float ``p`` (no rounding of p to 24 or 53 bits of a uniform), and
    costs a few random words per output word.
    """
    out = np.zeros(n_words, dtype=np.uint64)
    if p <= 0.0 or n_words == 0:
        return out
    if p >= 1.0:
        out[:] = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
        return out
    digits = _binary_digits(p)
    bit_gen = rng.bit_generator
    for start in range(0, n_words, _BLOCK_WORDS):
        stop = min(n_words, start + _BLOCK_WORDS)
        result = np.zeros(stop - start, dtype=np.uint64)
        undecided = np.full(stop - start, np.uint64(0xFFFF_FFFF_FFFF_FFFF))
        index = None  # positions (in this block) of words with undecided bits, once compacted
        for level, digit in enumerate(digits):
            u = bit_gen.random_raw(undecided.size)
            if digit:
                # Undecided bits with u == 0 < digit are now known to be below p: set them.
                decided_ones = undecided & ~u
                if index is None:
                    result |= decided_ones
                else:
                    result[index] |= decided_ones
                undecided &= u
            else:
                # u == 1 > digit: U > p, the bit stays 0.
                undecided &= ~u
            if index is None:
                if level + 1 == _DENSE_LEVELS:
                    index = np.flatnonzero(undecided)
                    undecided = undecided[index]
            else:
                keep = undecided != 0
                index = index[keep]
                undecided = undecided[keep]
            if undecided.size == 0:
                break
        # Bits still undecided after the last digit have U's prefix equal to p's finite
        # expansion, hence U >= p: they stay 0.
        out[start:stop] = result
    return out


def planted_codes(
    n_samples: int,
    n_clusters: int,
    n_bits: int = DEFAULT_BITS,
    flip_prob: float = 0.1,
    random_state: None | int | np.random.Generator = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes scattered around ``n_clusters`` random centers, with the true assignment.

    Returns ``(codes uint64[N, W], truth int64[N], true_centers uint64[k, W])`` where
    ``W = n_bits / 64``. Sample ``i`` is ``true_centers[truth[i]]`` with each bit flipped
    independently with probability ``flip_prob``, so its expected Hamming distance to its own
    center is ``flip_prob · n_bits`` and to another (uniformly random) center ``n_bits / 2``.

    Cluster sizes are as equal as possible (they differ by at most one: the ``i``-th generated
    sample goes to cluster ``i % k``) so that metrics are not dominated by one big cluster; the
    order is then shuffled so that no algorithm can profit from the samples arriving grouped.
    ``flip_prob`` may be anything in [0, 1]; values above 1/2 scatter samples around the
    complement of their center.
    """
    n_samples = check_int("n_samples", n_samples, 1)
    n_clusters = check_int("n_clusters", n_clusters, 1)
    if n_clusters > n_samples:
        raise ValueError(
            f"n_clusters={n_clusters} exceeds n_samples={n_samples}; every planted cluster needs a sample"
        )
    n_bits = check_n_bits(n_bits)
    flip_prob = check_real("flip_prob", flip_prob, 0, 1)
    rng = check_random_state(random_state)

    n_w = n_bits // 64
    true_centers = rng.integers(0, np.iinfo(np.uint64).max, size=(n_clusters, n_w), dtype=np.uint64, endpoint=True)
    truth = np.arange(n_samples, dtype=np.int64) % n_clusters
    rng.shuffle(truth)
    codes = bernoulli_words(n_samples * n_w, flip_prob, rng).reshape(n_samples, n_w)
    codes ^= true_centers[truth]
    return codes, truth, true_centers
