"""The one place that checks integer and real-number parameters.

A wrong type raises ``TypeError`` and a value out of range ``ValueError``; every message names the
parameter and shows the value (``max_iter=0 must be >= 1``, ``n_clusters=8 must be <= n_samples=3``).
A bound is a number or a ``(name, number)`` pair, shown as ``name=number``. ``bool`` is never
accepted as a number, numpy scalars are.

Bounds are compared as ``value < low`` (``<=`` when open), so NaN fails none of them: it is refused
as not finite (``finite=True``, the default of :func:`check_real`).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

Bound = int | float | tuple[str, int | float] | None


def is_int(value: object) -> bool:
    """An ``int`` or numpy integer, and not a ``bool``."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_int(name: str, value: object, low: Bound = None, high: Bound = None) -> int:
    """``value`` as an ``int``, if it is an integer (not a bool) with ``low <= value <= high``."""
    if not is_int(value):
        raise TypeError(f"{name}={value!r} must be an integer, not {type(value).__name__}")
    return check_range(name, int(value), low, high)


def check_real(
    name: str,
    value: object,
    low: Bound = None,
    high: Bound = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    finite: bool = True,
    unit: str | None = None,
) -> float:
    """``value`` as a ``float``, if it is a real number (not a bool) within the bounds; ``unit`` is
    named in the type error (``now='x' must be a real number (seconds), not str``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        unit_text = f" ({unit})" if unit else ""
        raise TypeError(f"{name}={value!r} must be a real number{unit_text}, not {type(value).__name__}")
    return check_range(name, float(value), low, high, low_open=low_open, high_open=high_open, finite=finite)


def check_range(
    name: str,
    value: Any,
    low: Bound = None,
    high: Bound = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    finite: bool = False,
) -> Any:
    """``value`` unchanged if it lies within the bounds (and is finite, with ``finite``); the type is
    not checked (a value that cannot be compared raises the comparison's ``TypeError``)."""
    low_value, low_text = _bound(low)
    high_value, high_text = _bound(high)
    below = low is not None and (value <= low_value if low_open else value < low_value)
    above = high is not None and (value >= high_value if high_open else value > high_value)
    if below or above:
        if low is None:
            wanted = f"{'<' if high_open else '<='} {high_text}"
        elif high is None:
            wanted = f"{'>' if low_open else '>='} {low_text}"
        elif low_open or high_open:
            wanted = f"in {'(' if low_open else '['}{low_text}, {high_text}{')' if high_open else ']'}"
        else:
            wanted = f"between {low_text} and {high_text}"
        raise ValueError(f"{name}={value} must be {wanted}")
    if finite and not isinstance(value, numbers.Integral) and not math.isfinite(value):
        raise ValueError(f"{name}={value} must be finite")
    return value


def _bound(bound: Bound) -> tuple[int | float | None, str]:
    if isinstance(bound, tuple):
        label, number = bound
        return number, f"{label}={number}"
    return bound, f"{bound}"


__all__ = ["check_int", "check_range", "check_real", "is_int"]
