"""Compile (or load from Numba's cache) every kernel before any timed or latency-bound work.

The first call of each Numba kernel compiles it, which takes seconds; a stream worker must not pay
that inside its first window, and a benchmark must not time it.
"""

from __future__ import annotations

import numpy as np

from . import _kernels
from .bkmeans import ASSIGN_METHODS, INIT_METHODS, BKMeans
from .hamming import hamming_distances
from .mih import MultiIndexHash
from .online import OnlineClusterer
from .synth import planted_codes


def warm_up(n_bits: int = 256) -> None:
    """Run every kernel once on tiny planted data of ``n_bits``-bit codes."""
    codes, _, _ = planted_codes(400, 8, n_bits=n_bits, flip_prob=0.1, random_state=0)
    for method in ASSIGN_METHODS:
        BKMeans(8, max_iter=3, assign=method, init="random", random_state=0).fit(codes).predict(codes[:10])
    for init in INIT_METHODS:
        BKMeans(8, max_iter=2, init=init, random_state=0).fit(codes)
    hamming_distances(codes[:4], codes[:4])
    clusterer = OnlineClusterer(n_bits=n_bits, window_size=400, radius=n_bits // 4, min_cluster_size=5,
                                random_state=0)
    clusterer.process([str(i) for i in range(200)], codes[:200], now=0.0)
    clusterer.process([str(i) for i in range(200, 400)], codes[200:], now=1.0)
    MultiIndexHash().fit(codes).range_search(codes[:4], n_bits // 8)
    # Crowded buckets (many equal substrings) make MIH tables with uint16 bucket offsets: the same
    # kernels, compiled for that width too.
    crowded = np.concatenate((np.repeat(codes[:1], 300, axis=0), codes))
    index = MultiIndexHash().fit(crowded)
    index.nearest(codes[:4])
    index.range_search(codes[:4], n_bits // 8)
    BKMeans(8, max_iter=2, init="linked", random_state=0).fit(crowded)
    # Bk-means moves points among a few centers only in larger runs.
    rows = np.arange(4, dtype=np.int64)
    _kernels.nearest_among(codes, rows, np.ascontiguousarray(codes[:3].T), np.arange(3, dtype=np.int64),
                           np.zeros(400, dtype=np.int64), np.full(400, 1 << 10, dtype=np.int32),
                           np.full(400, 1 << 10, dtype=np.int32))
