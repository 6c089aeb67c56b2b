"""Binary codes: the one representation every part of photoclust shares.

A batch of N codes of D bits is a C-contiguous ``uint64[N, D/64]`` array. Word ``w`` holds bytes
``8w .. 8w+7`` of the code's byte string in big-endian order, so the hex string of a code is simply
the hex of its words written one after the other, and bit ``j`` of the code (``unpack_bits``) is
bit ``j`` of ``np.unpackbits`` of its bytes. Every converter here checks its input and says which
row is wrong and why, because these functions sit right behind user files and Kafka events.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._validation import is_int

SUPPORTED_BITS: tuple[int, ...] = (64, 128, 256, 512)
DEFAULT_BITS = 256
_BIG_ENDIAN_U64 = np.dtype(">u8")


def check_n_bits(n_bits: int) -> int:
    """Return ``n_bits`` if it is a supported code width, else raise ``ValueError``."""
    if not is_int(n_bits) or int(n_bits) not in SUPPORTED_BITS:
        raise ValueError(f"n_bits={n_bits!r} is not supported; choose one of {SUPPORTED_BITS}")
    return int(n_bits)


def n_words(n_bits: int) -> int:
    """Number of uint64 words that hold one code of ``n_bits`` bits."""
    return check_n_bits(n_bits) // 64


def check_codes(codes: np.ndarray, n_bits: int | None = None, name: str = "codes") -> np.ndarray:
    """Validate a ``uint64[N, D/64]`` code array and return it C-contiguous.

    ``n_bits`` (optional) pins the width; otherwise any supported width is accepted.
    """
    if not isinstance(codes, np.ndarray):
        raise TypeError(f"{name} must be a numpy array of uint64, got {type(codes).__name__}")
    if codes.dtype != np.uint64:
        raise TypeError(
            f"{name} must have dtype uint64 (use core.codes.from_uint8 for byte codes), got {codes.dtype}"
        )
    if codes.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n_codes, n_bits/64], got shape {codes.shape}")
    width = codes.shape[1] * 64
    if width not in SUPPORTED_BITS:
        raise ValueError(f"{name} has {codes.shape[1]} words = {width} bits; supported widths are {SUPPORTED_BITS}")
    if n_bits is not None and width != check_n_bits(n_bits):
        raise ValueError(f"{name} are {width}-bit codes, expected {n_bits}-bit")
    return np.ascontiguousarray(codes)


def code_bits(codes: np.ndarray) -> int:
    """Width in bits of a validated code array."""
    return int(codes.shape[1]) * 64


def from_uint8(data: np.ndarray) -> np.ndarray:
    """``uint8[N, D/8]`` bytes (as hashes are usually stored) to ``uint64[N, D/64]`` codes."""
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        got = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise TypeError(f"expected a uint8 array of shape [n_codes, n_bits/8], got {got}")
    if data.shape[1] * 8 not in SUPPORTED_BITS:
        raise ValueError(
            f"rows have {data.shape[1]} bytes = {data.shape[1] * 8} bits; supported widths are {SUPPORTED_BITS}"
        )
    data = np.ascontiguousarray(data)
    return data.view(_BIG_ENDIAN_U64).astype(np.uint64).reshape(data.shape[0], data.shape[1] // 8)


def to_uint8(codes: np.ndarray) -> np.ndarray:
    """``uint64[N, D/64]`` codes to ``uint8[N, D/8]`` bytes (inverse of :func:`from_uint8`)."""
    codes = check_codes(codes)
    return codes.astype(_BIG_ENDIAN_U64).view(np.uint8).reshape(codes.shape[0], codes.shape[1] * 8)


def unpack_bits(codes: np.ndarray) -> np.ndarray:
    """Codes to a ``uint8[N, D]`` array of 0/1 bits, most significant bit of byte 0 first."""
    return np.unpackbits(to_uint8(codes), axis=1)


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """A ``[N, D]`` array of 0/1 (or booleans) to codes (inverse of :func:`unpack_bits`)."""
    bits = np.asarray(bits)
    if bits.ndim != 2 or bits.shape[1] not in SUPPORTED_BITS:
        raise ValueError(f"bits must have shape [n_codes, D] with D in {SUPPORTED_BITS}, got {bits.shape}")
    if bits.dtype != np.bool_ and np.any((bits != 0) & (bits != 1)):
        raise ValueError("bits must hold only 0 and 1")
    return from_uint8(np.packbits(bits.astype(np.uint8, copy=False), axis=1))


_BYTES_ONLY = frozenset((bytes,))


def from_bytes(items: Sequence[bytes], n_bits: int = DEFAULT_BITS) -> np.ndarray:
    """A sequence of raw ``n_bits/8``-byte hashes to codes; the error names the first bad row."""
    n_bytes = check_n_bits(n_bits) // 8
    if set(map(type, items)) <= _BYTES_ONLY and set(map(len, items)) <= {n_bytes}:
        # The common case, checked with C-level passes: all bytes of the right length.
        buffer = np.frombuffer(b"".join(items), dtype=np.uint8)
        return from_uint8(buffer.reshape(len(items), n_bytes))
    for row, item in enumerate(items):
        if not isinstance(item, (bytes, bytearray, memoryview)):
            raise TypeError(f"row {row}: hash must be bytes, got {type(item).__name__}")
        if len(item) != n_bytes:
            raise ValueError(f"row {row}: hash has {len(item)} bytes, expected {n_bytes} for {n_bits}-bit codes")
    buffer = np.frombuffer(b"".join(bytes(i) for i in items), dtype=np.uint8)
    return from_uint8(buffer.reshape(len(items), n_bytes))


def to_bytes(codes: np.ndarray) -> list[bytes]:
    """Codes to one ``bytes`` object per row."""
    return [row.tobytes() for row in to_uint8(codes)]


_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def hex_error(text: object, n_bits: int) -> str | None:
    """Why ``text`` is not a valid ``n_bits`` hex code, or ``None`` if it is."""
    n_hex = n_bits // 4
    if not isinstance(text, str):
        return f"hash must be a hex string, got {type(text).__name__}"
    if len(text) != n_hex:
        return f"hash has {len(text)} hex digits, expected {n_hex} for {n_bits}-bit codes"
    if not _HEX_DIGITS.issuperset(text):
        bad = next(c for c in text if c not in _HEX_DIGITS)
        return f"hash has a non-hex character {bad!r} at position {text.index(bad)}"
    return None


def from_hex(items: Sequence[str], n_bits: int = DEFAULT_BITS) -> np.ndarray:
    """Hex strings (``n_bits/4`` digits each, either case) to codes; the error names the first bad row."""
    n_bits = check_n_bits(n_bits)
    for row, text in enumerate(items):
        problem = hex_error(text, n_bits)
        if problem is not None:
            raise ValueError(f"row {row}: {problem}")
    if len(items) == 0:
        return np.zeros((0, n_bits // 64), dtype=np.uint64)
    joined = bytes.fromhex("".join(items))
    return from_uint8(np.frombuffer(joined, dtype=np.uint8).reshape(len(items), n_bits // 8))


def to_hex(codes: np.ndarray) -> list[str]:
    """Codes to lowercase hex strings, one per row."""
    return [row.tobytes().hex() for row in to_uint8(codes)]
