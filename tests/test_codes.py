import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from core import codes as C


@pytest.mark.parametrize("n_bits", C.SUPPORTED_BITS)
def test_round_trips(n_bits):
    rng = np.random.default_rng(n_bits)
    raw = rng.integers(0, 256, (50, n_bits // 8), dtype=np.uint8)
    codes = C.from_uint8(raw)
    assert codes.shape == (50, n_bits // 64) and codes.dtype == np.uint64
    assert np.array_equal(C.to_uint8(codes), raw)
    assert np.array_equal(C.from_hex(C.to_hex(codes), n_bits), codes)
    assert np.array_equal(C.from_bytes(C.to_bytes(codes), n_bits), codes)
    assert np.array_equal(C.unpack_bits(codes), np.unpackbits(raw, axis=1))
    assert np.array_equal(C.pack_bits(C.unpack_bits(codes)), codes)


def test_hex_is_big_endian_words():
    codes = C.from_hex(["0123456789abcdef" * 4])
    assert codes[0, 0] == 0x0123456789ABCDEF
    assert C.to_hex(codes) == ["0123456789abcdef" * 4]
    assert C.unpack_bits(C.from_hex(["8" + "0" * 63]))[0, 0] == 1


def test_hex_errors_name_row_and_problem():
    good = "ab" * 32
    with pytest.raises(ValueError, match=r"row 1: hash has 63 hex digits, expected 64"):
        C.from_hex([good, good[:-1]])
    with pytest.raises(ValueError, match=r"row 2: hash has a non-hex character 'g' at position 5"):
        C.from_hex([good, good, "abcab" + "g" * 59])
    with pytest.raises(ValueError, match=r"row 0: hash must be a hex string, got int"):
        C.from_hex([5])


def test_bytes_errors():
    with pytest.raises(ValueError, match=r"row 1: hash has 31 bytes, expected 32"):
        C.from_bytes([b"x" * 32, b"x" * 31])
    with pytest.raises(TypeError, match=r"row 0: hash must be bytes"):
        C.from_bytes(["x" * 32])


def test_check_codes_errors():
    with pytest.raises(TypeError, match="dtype uint64"):
        C.check_codes(np.zeros((3, 4), np.int64))
    with pytest.raises(ValueError, match="must be 2-D"):
        C.check_codes(np.zeros(4, np.uint64))
    with pytest.raises(ValueError, match="3 words = 192 bits"):
        C.check_codes(np.zeros((2, 3), np.uint64))
    with pytest.raises(ValueError, match="are 256-bit codes, expected 64-bit"):
        C.check_codes(np.zeros((2, 4), np.uint64), 64)
    with pytest.raises(ValueError, match="n_bits=100 is not supported"):
        C.check_n_bits(100)
    with pytest.raises(ValueError, match="bits must hold only 0 and 1"):
        C.pack_bits(np.full((1, 64), 2))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(min_size=8, max_size=8), min_size=1, max_size=20))
def test_64_bit_bytes_round_trip(items):
    codes = C.from_bytes(items, 64)
    assert C.to_bytes(codes) == items
    assert np.array_equal(C.unpack_bits(codes), np.unpackbits(np.frombuffer(b"".join(items), np.uint8).reshape(-1, 8), axis=1))
