"""core._validation: the one check of integer and real parameters (types, bounds, messages)."""

from __future__ import annotations

import math
import re
from fractions import Fraction

import numpy as np
import pytest

from core._validation import check_int, check_range, check_real, is_int


def test_is_int_takes_ints_and_numpy_integers_but_no_bools() -> None:
    assert all(is_int(v) for v in (0, -3, 2**70, np.int8(1), np.uint64(5)))
    assert not any(is_int(v) for v in (True, np.bool_(True), 1.0, np.float64(1), "1", None, Fraction(1)))


def test_check_int_returns_a_plain_int() -> None:
    value = check_int("k", np.int32(7), 1, 10)
    assert value == 7 and type(value) is int


@pytest.mark.parametrize(("value", "low", "high", "error", "message"), [
    (2.5, None, None, TypeError, "k=2.5 must be an integer, not float"),
    (True, None, None, TypeError, "k=True must be an integer, not bool"),
    ("3", None, None, TypeError, "k='3' must be an integer, not str"),
    (0, 1, None, ValueError, "k=0 must be >= 1"),
    (np.int64(-1), 0, None, ValueError, "k=-1 must be >= 0"),
    (11, None, 10, ValueError, "k=11 must be <= 10"),
    (300, 0, 256, ValueError, "k=300 must be between 0 and 256"),
    (8, 1, ("n_samples", 3), ValueError, "k=8 must be between 1 and n_samples=3"),
    (8, None, ("n_samples", 3), ValueError, "k=8 must be <= n_samples=3"),
])
def test_check_int_refusals_name_the_parameter_and_value(value, low, high, error, message) -> None:
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        check_int("k", value, low, high)


def test_check_real() -> None:
    assert check_real("p", np.float32(0.5), 0, 1) == 0.5 and type(check_real("p", 1, 0, 1)) is float
    assert check_real("p", Fraction(1, 4), 0, 1) == 0.25
    assert check_real("t", math.inf, finite=False) == math.inf
    with pytest.raises(TypeError, match=r"^p=True must be a real number, not bool$"):
        check_real("p", True)
    with pytest.raises(TypeError, match=r"^now='x' must be a real number \(seconds\), not str$"):
        check_real("now", "x", unit="seconds")
    with pytest.raises(ValueError, match=r"^p=nan must be finite$"):
        check_real("p", math.nan, 0, 1)
    with pytest.raises(ValueError, match=r"^p=1.5 must be between 0 and 1$"):
        check_real("p", 1.5, 0, 1)
    with pytest.raises(ValueError, match=r"^r=0.0 must be in \(0, 1\]$"):
        check_real("r", 0.0, 0, 1, low_open=True)
    with pytest.raises(ValueError, match=r"^r=1.0 must be in \[0, 1\)$"):
        check_real("r", 1.0, 0, 1, high_open=True)
    with pytest.raises(ValueError, match=r"^s=0.0 must be > 0$"):
        check_real("s", 0.0, 0, low_open=True)
    with pytest.raises(ValueError, match=r"^s=1.0 must be < 1$"):
        check_real("s", 1.0, high=1, high_open=True)


def test_check_range_checks_bounds_only() -> None:
    """No type check (Settings keeps accepting what it accepted); NaN fails no bound, ``finite``
    refuses it; the value is returned as given."""
    assert check_range("x", 2.5, 1) == 2.5 and check_range("x", True, 1) is True
    assert math.isnan(check_range("x", math.nan, 0, low_open=True))
    with pytest.raises(ValueError, match=r"^x=nan must be finite$"):
        check_range("x", math.nan, 0, 1, finite=True)
    with pytest.raises(ValueError, match=r"^x=inf must be in \(0, 1\]$"):
        check_range("x", math.inf, 0, 1, low_open=True, finite=True)
    with pytest.raises(ValueError, match=r"^x=-1 must be between 0 and n_bits=256$"):
        check_range("x", -1, 0, ("n_bits", 256))
    assert check_range("x", 10**400, 0, finite=True) == 10**400  # a big int is finite, not an overflow
    with pytest.raises(TypeError):  # the comparison's own error
        check_range("x", "a", 1)
