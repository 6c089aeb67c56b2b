"""The one place that turns a user's ``random_state`` into a numpy Generator."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._validation import check_int, is_int


def check_random_state(random_state: Any) -> np.random.Generator:
    """None (fresh entropy), a non-negative int seed, or a Generator (used as is).

    Estimators call this once per ``fit`` so that the same seed always gives the same result.
    """
    if isinstance(random_state, np.random.Generator):
        return random_state
    if random_state is None:
        return np.random.default_rng()
    if is_int(random_state):
        return np.random.default_rng(check_int("random_state", random_state, 0))
    raise TypeError(
        f"random_state={random_state!r} must be None, a non-negative int or a numpy.random.Generator"
    )
