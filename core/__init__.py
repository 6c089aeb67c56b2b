"""photoclust.core: clustering of binary photo hashes on numpy arrays.

Knows nothing of Kafka, Faust or asyncio, so that any batch or stream front end can use it.
"""

from .bkmeans import BKMeans, IterationInfo, kmeans_plusplus
from .codes import DEFAULT_BITS, SUPPORTED_BITS
from .hamming import hamming_distances, nearest_brute
from .itq import ITQ
from .purity import normalized_mutual_info, purity
from .mih import MultiIndexHash
from .online import OnlineClusterer, Outcome, WindowResult
from .synth import planted_codes

__all__ = [
    "BKMeans",
    "DEFAULT_BITS",
    "ITQ",
    "IterationInfo",
    "MultiIndexHash",
    "OnlineClusterer",
    "Outcome",
    "SUPPORTED_BITS",
    "WindowResult",
    "hamming_distances",
    "kmeans_plusplus",
    "nearest_brute",
    "normalized_mutual_info",
    "planted_codes",
    "purity",
]
