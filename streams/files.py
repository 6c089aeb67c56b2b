"""Reading and writing the files users hand to photoclust (front-end I/O, no Kafka).

Two input formats hold codes:

* ``.npy``: ``uint8[N, D/8]`` bytes (the usual way hashes are stored) or ``uint64[N, D/64]``
  codes in the :mod:`core.codes` layout. Recognised by the numpy magic bytes, not the suffix.
* text: one ``id,hash`` line per code, ``hash`` being ``D/4`` hex digits. A first line
  ``id,hash`` (or ``id,hex``) is a header and skipped, as are blank lines and lines whose first
  non-blank character is ``#``. Whitespace around fields is ignored.

Every problem is raised as :class:`InputFileError`, whose message names the file, the line
(1-based, counting every physical line) and the field, e.g.
``data.csv line 7, field hash: hash has 63 hex digits, expected 64 for 256-bit codes``.
The front ends (the CLI, the Kafka ``produce`` command) turn it into a user error.

The text parser is vectorised where it matters for millions of lines: fields are split with
C-level string methods, lengths are checked with numpy, and all hashes are decoded by a single
``bytes.fromhex`` call. Only when that call fails is the file scanned line by line (to say where).
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from operator import methodcaller
from pathlib import Path

import numpy as np

from core.codes import DEFAULT_BITS, SUPPORTED_BITS, check_n_bits, from_uint8, hex_error, to_hex, to_uint8

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
HEADER_NAMES = (("id", "hash"), ("id", "hex"))
ID_PREFIX = "p"
ID_DIGITS = 9

PathLike = str | os.PathLike[str]


class InputFileError(ValueError):
    """A user-supplied file is unreadable or malformed; the message says where and why."""

    def __init__(self, path: PathLike, problem: str, line: int | None = None, field: str | None = None) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        self.line = line
        self.field = field
        where = self.path
        if line is not None:
            where += f" line {line}"
        if field is not None:
            where += f", field {field}" if line is not None else f" field {field}"
        super().__init__(f"{where}: {problem}")


@dataclass
class CodeFile:
    """Codes read from a file: ``codes`` is ``uint64[N, D/64]``; ``ids`` is None for ``.npy``."""

    codes: np.ndarray
    ids: list[str] | None
    n_bits: int
    path: str

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    def id_list(self) -> list[str]:
        """The ids from the file, or :func:`make_ids` row ids for ``.npy`` input."""
        return self.ids if self.ids is not None else make_ids(len(self))


def make_ids(n: int, start: int = 0) -> list[str]:
    """Row ids ``p000000000, p000000001, ...`` (the ids ``synth`` writes)."""
    return [f"{ID_PREFIX}{i:0{ID_DIGITS}d}" for i in range(start, start + n)]


def _magic(path: PathLike) -> bytes:
    with open(path, "rb") as f:
        return f.read(8)


def read_codes(path: PathLike, n_bits: int | None = None) -> CodeFile:
    """Codes from a ``.npy`` or an ``id,hash`` text file (see the module docstring).

    ``n_bits`` pins the code width; by default it comes from the file.
    """
    if n_bits is not None:
        n_bits = check_n_bits(n_bits)
    try:
        magic = _magic(path)
    except OSError as e:
        raise InputFileError(path, f"cannot read file: {e.strerror or e}") from None
    if magic.startswith(ZIP_MAGIC):
        raise InputFileError(path, "is a zip/.npz archive; expected a .npy array or a text file of id,hash lines")
    return load_npy_codes(path, n_bits) if magic.startswith(NPY_MAGIC) else read_hex_csv(path, n_bits)


# -- .npy ---------------------------------------------------------------------------------------


def load_npy(path: PathLike) -> np.ndarray:
    """``np.load`` without pickles; any failure becomes an :class:`InputFileError`."""
    try:
        arr = np.load(path, allow_pickle=False)
    except OSError as e:
        raise InputFileError(path, f"cannot read file: {e.strerror or e}") from None
    except (ValueError, EOFError) as e:
        raise InputFileError(path, f"not a valid .npy file ({e})") from None
    if not isinstance(arr, np.ndarray):  # an .npz archive
        arr.close()
        raise InputFileError(path, "is an .npz archive; expected a single array saved with numpy.save (.npy)")
    return arr


def load_npy_codes(path: PathLike, n_bits: int | None = None) -> CodeFile:
    """Codes from an ``.npy`` of ``uint8[N, D/8]`` bytes or ``uint64[N, D/64]`` words."""
    arr = load_npy(path)
    expected = (
        f"expected codes as uint8 [n_codes, D/8] or uint64 [n_codes, D/64] with D in {SUPPORTED_BITS}"
    )
    got = f"got a {arr.dtype} array of shape {arr.shape}"
    if arr.ndim != 2 or arr.dtype not in (np.uint8, np.uint64):
        raise InputFileError(path, f"{expected}; {got}")
    bits_per_item = 8 if arr.dtype == np.uint8 else 64
    width = arr.shape[1] * bits_per_item
    if width not in SUPPORTED_BITS:
        raise InputFileError(path, f"rows are {width} bits wide; {expected}; {got}")
    if n_bits is not None and width != n_bits:
        raise InputFileError(path, f"holds {width}-bit codes, expected {n_bits}-bit codes")
    if arr.shape[0] == 0:
        raise InputFileError(path, f"contains no codes ({got})")
    codes = from_uint8(arr) if arr.dtype == np.uint8 else np.ascontiguousarray(arr)
    return CodeFile(codes=codes, ids=None, n_bits=width, path=os.fspath(path))


def load_npy_labels(path: PathLike, n: int, name: str = "labels") -> np.ndarray:
    """A 1-D integer array of length ``n`` (e.g. ground-truth labels) as int64."""
    arr = load_npy(path)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise InputFileError(path, f"expected {name} as a 1-D integer array, got a {arr.dtype} array of shape {arr.shape}")
    if arr.shape[0] != n:
        raise InputFileError(path, f"has {arr.shape[0]} {name} but the codes have {n} rows")
    return arr.astype(np.int64, copy=False)


def load_npy_features(path: PathLike) -> np.ndarray:
    """A 2-D real-valued feature matrix (integers and booleans are converted to float64)."""
    arr = load_npy(path)
    if arr.ndim != 2 or arr.dtype.kind not in "fiub":
        raise InputFileError(
            path, f"expected features as a 2-D float array [n_samples, n_features], got a {arr.dtype} array of shape {arr.shape}"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputFileError(path, f"contains no features (shape {arr.shape})")
    if arr.dtype.kind != "f":
        arr = arr.astype(np.float64)
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        col = int(np.argmin(np.isfinite(arr[row])))
        raise InputFileError(path, f"row {row}, column {col} is {arr[row, col]!r}; features must be finite")
    return arr


# -- id,hash text -------------------------------------------------------------------------------


def _decode_text(data: bytes, path: PathLike) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise InputFileError(
            path, f"not UTF-8 text (byte 0x{data[e.start]:02x} at column {column}); expected id,hash lines", line=line
        ) from None


def read_hex_csv(path: PathLike, n_bits: int | None = None) -> CodeFile:
    """Codes and ids from a text file of ``id,hash`` lines (see the module docstring)."""
    if n_bits is not None:
        n_bits = check_n_bits(n_bits)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise InputFileError(path, f"cannot read file: {e.strerror or e}") from None
    parsed = _parse_plain(data, n_bits)
    if parsed is None:  # not plain, or not well-formed: the general parser explains what is wrong
        parsed = parse_hex_lines(_decode_text(data, path), path, n_bits)
    ids, codes, n_bits = parsed
    return CodeFile(codes=codes, ids=ids, n_bits=n_bits, path=os.fspath(path))


# Characters stripped around lines and fields (both parsers must agree on them).
_BLANKS = " \t\r"


def _region_bytes(arr: np.ndarray, begin: np.ndarray, end: np.ndarray) -> bytes:
    """The bytes of the sorted, disjoint ranges ``[begin[i], end[i])`` of ``arr``, concatenated."""
    bounds = np.empty(2 * begin.size, dtype=np.intp)
    bounds[0::2] = begin
    bounds[1::2] = end
    lengths = np.diff(np.concatenate(([0], bounds, [arr.size])))
    inside = np.zeros(bounds.size + 1, dtype=np.bool_)
    inside[1::2] = True
    return arr[np.repeat(inside, lengths)].tobytes()


def _parse_plain(data: bytes, n_bits: int | None) -> tuple[list[str], np.ndarray, int] | None:
    """Fast path with numpy over the raw bytes, for plain well-formed files.

    Plain: no spaces or tabs, carriage returns only before newlines, no byte-order mark. Blank
    lines, ``#`` comments and the header are allowed. Returns None for anything else (including
    every malformed file), so that :func:`parse_hex_lines` can say where the problem is; on the
    inputs it accepts, it returns exactly what :func:`parse_hex_lines` would.
    """
    arr = np.frombuffer(data, dtype=np.uint8)
    size = arr.size
    if size == 0 or data.startswith(b"\xef\xbb\xbf") or (arr == 32).any() or (arr == 9).any():
        return None
    newlines = np.flatnonzero(arr == 10)
    starts = np.concatenate(([0], newlines + 1))
    ends = np.concatenate((newlines, [size]))
    cr = (ends > starts) & (arr[np.maximum(ends - 1, 0)] == 13)
    if int(np.count_nonzero(cr)) != int(np.count_nonzero(arr == 13)):
        return None
    ends = ends - cr
    keep = ends > starts
    comment = arr[starts[keep]] == ord("#")
    if comment.any() and (arr >= 0x80).any():
        return None  # comments are not decoded here: let the text parser check their UTF-8
    keep[keep] = ~comment
    starts, ends = starts[keep], ends[keep]
    if starts.size and tuple(data[starts[0] : ends[0]].decode("utf-8", "replace").lower().split(",")) in HEADER_NAMES:
        starts, ends = starts[1:], ends[1:]
    n = starts.size
    if n == 0:
        return None
    commas = np.flatnonzero(arr == ord(","))
    first = np.searchsorted(commas, starts)
    if not np.array_equal(np.searchsorted(commas, ends) - first, np.ones(n, dtype=np.intp)):
        return None
    comma = commas[first]
    hex_len = ends - comma - 1
    if n_bits is None:
        n_bits = int(hex_len[0]) * 4
        if n_bits not in SUPPORTED_BITS:
            return None
    n_hex = n_bits // 4
    if (comma == starts).any() or (hex_len != n_hex).any():
        return None
    try:
        raw = bytes.fromhex(_region_bytes(arr, comma + 1, ends).decode("latin-1"))
        # ids contain no comma: "id1,id2,...,idn," decodes and splits in one call each
        ids = _region_bytes(arr, starts, comma + 1).decode("utf-8").split(",")[:-1]
    except ValueError:  # a non-hex digit, or an id that is not UTF-8
        return None
    if len(raw) != n * (n_bits // 8):  # fromhex skips ASCII whitespace such as \x0b
        return None
    codes = from_uint8(np.frombuffer(raw, dtype=np.uint8).reshape(n, n_bits // 8))
    return ids, codes, n_bits


def parse_hex_lines(
    text: str, path: PathLike = "<input>", n_bits: int | None = None, first_line: int = 1
) -> tuple[list[str], np.ndarray, int]:
    """Parse ``id,hash`` lines; returns ``(ids, codes uint64[N, D/64], n_bits)``.

    ``path`` and ``first_line`` (the line number of the first line of ``text``) are only used in
    error messages, so a caller may feed a large file chunk by chunk.
    """
    gc_was_enabled = gc.isenabled()
    gc.disable()  # millions of small strings and no cycles: collection passes would only cost time
    try:
        return _parse_hex_lines(text, path, n_bits, first_line)
    finally:
        if gc_was_enabled:
            gc.enable()


def _parse_hex_lines(
    text: str, path: PathLike, n_bits: int | None, first_line: int
) -> tuple[list[str], np.ndarray, int]:
    numbered = [
        (number, line)
        for number, line in enumerate((line.strip(_BLANKS) for line in text.split("\n")), first_line)
        if line and line[0] != "#"
    ]
    if numbered:
        header = tuple(field.strip(_BLANKS).lower() for field in numbered[0][1].split(","))
        if header in HEADER_NAMES:
            numbered = numbered[1:]
    if not numbered:
        what = "is empty" if not text.strip(_BLANKS + "\n") else "has no id,hash lines (only blank lines, comments or a header)"
        raise InputFileError(path, f"{what}; expected one id,hash line per code")
    line_numbers, rows = zip(*numbered)
    n = len(rows)

    # Structural checks, vectorised: count of commas, empty ids, hash lengths.
    n_commas = np.fromiter(map(methodcaller("count", ","), rows), dtype=np.int64, count=n)
    parts = [row.partition(",") for row in rows]
    ids = [p[0].rstrip(_BLANKS) for p in parts]
    hexes = [p[2].strip(_BLANKS) for p in parts]
    hex_len = np.fromiter(map(len, hexes), dtype=np.int64, count=n)
    id_len = np.fromiter(map(len, ids), dtype=np.int64, count=n)

    if n_bits is None:
        n_bits = _infer_bits(hex_len, n_commas, line_numbers, path)
    else:
        n_bits = check_n_bits(n_bits)
    n_hex = n_bits // 4

    bad = (n_commas != 1) | (id_len == 0) | (hex_len != n_hex)
    first_structural = int(np.argmax(bad)) if bad.any() else n

    # Decode every hash before the first structural error in one call; only if that fails, look
    # for the first bad hex digit line by line.
    joined = "".join(hexes[:first_structural])
    try:
        raw = bytes.fromhex(joined)
        ok = len(raw) == first_structural * (n_bits // 8)  # fromhex skips whitespace: be strict
    except ValueError:
        ok = False
    if not ok:
        for i in range(first_structural):
            problem = hex_error(hexes[i], n_bits)
            if problem is not None:
                raise InputFileError(path, problem, line=line_numbers[i], field="hash")
        raise AssertionError("bytes.fromhex failed but every hash looks valid")  # pragma: no cover
    if first_structural < n:
        i = first_structural
        raise _row_error(path, line_numbers[i], int(n_commas[i]), ids[i], hexes[i], n_bits)

    codes = from_uint8(np.frombuffer(raw, dtype=np.uint8).reshape(n, n_bits // 8))
    return list(ids), codes, n_bits


def _row_error(path: PathLike, line: int, n_commas: int, id_: str, hex_: str, n_bits: int) -> InputFileError:
    if n_commas == 0:
        return InputFileError(path, "missing; expected 2 fields id,hash separated by a comma, got 1 field", line, "hash")
    if n_commas > 1:
        return InputFileError(path, f"unexpected extra field: expected 2 fields id,hash, got {n_commas + 1}", line, "3")
    if not id_:
        return InputFileError(path, "id is empty", line, "id")
    if not hex_:
        return InputFileError(path, f"hash is empty, expected {n_bits // 4} hex digits for {n_bits}-bit codes", line, "hash")
    problem = hex_error(hex_, n_bits)
    assert problem is not None
    return InputFileError(path, problem, line, "hash")


def _infer_bits(hex_len: np.ndarray, n_commas: np.ndarray, line_numbers: tuple[int, ...], path: PathLike) -> int:
    """Code width from the first well-formed line's hash."""
    candidates = np.flatnonzero((n_commas == 1) & (hex_len > 0))
    if candidates.size == 0:
        return DEFAULT_BITS  # every line is malformed: the caller reports line 1
    j = int(candidates[0])
    length = int(hex_len[j])
    if length * 4 in SUPPORTED_BITS:
        return length * 4
    if j > 0:
        return DEFAULT_BITS  # an earlier line is malformed: the caller reports it
    options = ", ".join(str(b // 4) for b in SUPPORTED_BITS)
    raise InputFileError(
        path,
        f"hash has {length} hex digits; expected one of {options} (for {', '.join(map(str, SUPPORTED_BITS))}-bit codes)",
        line_numbers[0],
        "hash",
    )


# -- writers ------------------------------------------------------------------------------------


def write_lines(path: PathLike, header: str, lines: list[str]) -> None:
    """A text file: ``header``, then ``lines``, newline-terminated."""
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(header + "\n")
        if lines:
            f.write("\n".join(lines))
            f.write("\n")


def write_hex_csv(path: PathLike, ids: list[str], codes: np.ndarray) -> None:
    """An ``id,hash`` file readable by :func:`read_hex_csv`."""
    write_lines(path, "id,hash", [f"{i},{h}" for i, h in zip(ids, to_hex(codes))])


def save_codes_npy(path: PathLike, codes: np.ndarray) -> None:
    """Codes as ``uint8[N, D/8]`` bytes (the interchange format)."""
    np.save(path, to_uint8(codes))
