"""Wire formats of photoclust's Kafka topics (msgpack) and their validation: pure functions, no I/O.

Input topic (default ``photo-hashes``); key = photo id (UTF-8), value = a msgpack map, either

* a single photo ``{"id": str, "hash": hash, "ts": seconds}`` or
* a batch ``{"batch": [[id, hash], [id, hash, ts], ...]}`` (rows are 2- or 3-element arrays),

where ``hash`` is ``n_bits/8`` raw bytes (msgpack bin) or ``n_bits/4`` hex digits (msgpack str,
either case) and ``ts`` (optional; nil means absent) is epoch seconds: a non-negative finite int or
float, or a msgpack timestamp extension.

Output topic (default ``cluster-assignments``); key = photo id, value = ``{"id": str, "cluster":
int | None, "distance": int | None, "outcome": "joined" | "founded" | "noise", "window": int,
"ts_in": float, "ts_out": float}`` (cluster and distance are None exactly for noise).

Dead-letter topic (default ``photo-hashes.dlq``); one record per bad event (a whole event rejected,
or a batch event with bad rows); key = the original key, value = ``{"reason": str, "row": int | None,
"bad_rows": int, "reasons": [[row | None, str], ...], "topic": str, "partition": int, "offset": int,
"key": bytes | None, "value": bytes | None}``. ``reason``/``row`` are the first problem (``row`` None:
the whole event), ``bad_rows`` counts the rejected rows of a batch (0 for a whole event) and
``reasons`` holds the first ``MAX_DLQ_REASONS`` problems. ``value`` (and ``key``) are cut to
``max_value_bytes`` (64 KiB) with ``"value_truncated": True, "value_size": <original size>``
(``key_truncated``/``key_size``) when larger. So a batch of 100,000 bad rows is one record of at
most ~130 KiB, not 100,000 records that each carry the event.

Decoding rules (:class:`PhotoDecoder`), chosen so that one bad producer cannot stall or crash the
stream and nothing is dropped without a reason:

* :meth:`PhotoDecoder.decode` never raises, whatever the bytes: every problem becomes an entry of
  :attr:`DecodeResult.errors`, ``(row, reason)``, ``row`` being the index within a batch or None
  for a problem with the whole event (or with a single-photo event). Reasons are short sentences
  naming the field, e.g. ``row 3: field 'hash': hash has 63 hex digits, expected 64 for 256-bit codes``.
* A batch keeps its good rows (in order); only the bad rows are reported.
* Unknown extra keys of the event map are ignored (forward compatibility: producers may add
  fields such as ``"source"`` before consumers know them). A map holding both ``"batch"`` and
  ``"id"``/``"hash"`` is rejected as ambiguous.
* The message key is not checked against ``"id"``: the value's ``"id"`` is authoritative (a key
  that differs is accepted; producers may key by something else to steer partitioning, and batch
  events have one key for many ids). The key is only carried to the dead-letter topic.
* Ids must be non-empty strings of at most ``max_id_bytes`` UTF-8 bytes without control
  characters (Unicode category Cc: U+0000-U+001F, U+007F-U+009F), because ids end up in message
  keys, logs and files. Other Unicode is accepted as is (no normalisation). Duplicate ids are not
  checked here.
* A msgpack string that is not valid UTF-8 does not make the whole event unreadable: it is decoded
  with ``surrogateescape`` and judged where it stands. As an id or a hash it rejects its row only
  (``field 'id': id is not valid UTF-8 (invalid byte 0xff at byte 3)``), so a batch keeps its
  other rows; as an unknown field (or map key) it is ignored like any unknown field. No accepted
  id ever holds such an escape, so every accepted id encodes to UTF-8 strictly.
* Hostile input is bounded: the event size is checked before parsing, and msgpack is told the
  longest string/bin/array/map it may allocate (arrays: ``max_batch_rows + 1``; maps: 1,024 keys).

Hot paths avoid per-row regexes and function calls: a batch row of an ASCII id and a raw (or hex)
hash is validated with a handful of C-level type/length checks; only bad or unusual rows take the
slow path that works out the reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import msgpack
import numpy as np

from core.codes import DEFAULT_BITS, check_n_bits, hex_error
from core.online import Outcome, WindowResult

__all__ = [
    "DecodeResult",
    "PhotoDecoder",
    "MAX_DLQ_VALUE_BYTES",
    "MAX_DLQ_REASONS",
    "MAX_MAP_KEYS",
    "OUTCOME_NAMES",
    "encode_photo",
    "encode_batch",
    "encode_assignments",
    "assignment_records",
    "window_records",
    "decode_assignment",
    "encode_dlq",
    "decode_dlq",
    "PHOTOS_KEY",
    "JOINS_KEY",
    "FORWARD_CHUNK_ROWS",
    "FORWARD_CHUNK_BYTES",
    "encode_forwarded",
    "encode_joins",
    "decode_joins",
]

MAX_DLQ_VALUE_BYTES = 64 * 1024
MAX_DLQ_REASONS = 16  # problems listed in one dead letter; ``bad_rows`` still counts them all
MAX_MAP_KEYS = 1024  # most keys in any map of an input event (3 are used; the rest is room for growth)
MAX_REASON_CHARS = 4096
OUTCOME_NAMES: dict[Outcome, str] = {Outcome.JOINED: "joined", Outcome.FOUNDED: "founded", Outcome.NOISE: "noise"}
_OUTCOME_BY_NAME = {name: outcome for outcome, name in OUTCOME_NAMES.items()}
_INF = math.inf
_MISSING = object()


@dataclass(slots=True)
class DecodeResult:
    """Decoded rows as parallel columns (row ``i`` is ``ids[i], hashes[i], ts[i]``) plus the rejects.

    ``hashes`` are raw ``n_bits/8``-byte strings (hex input is converted), ready for
    ``core.codes.from_bytes`` on a whole window at once. ``ts[i]`` is None when the producer gave
    none. ``errors`` holds ``(row, reason)``: ``row`` is the index within a batch event, or None when
    the whole event (or a single-photo event) is rejected.
    """

    ids: list[str] = field(default_factory=list)
    hashes: list[bytes] = field(default_factory=list)
    ts: list[float | None] = field(default_factory=list)
    errors: list[tuple[int | None, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


class _Rejected:
    """Why an event could not even be unpacked."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


_TUPLE_ONLY = frozenset({tuple})
_STR_ONLY = frozenset({str})
_BYTES_ONLY = frozenset({bytes})
_FLOAT_ONLY = frozenset({float})
_NUMBER_TYPES = frozenset({float, int})
_TWO = frozenset({2})
_THREE = frozenset({3})


def _wire_type(value: object) -> str:
    """The msgpack name of a decoded value's type, for error messages."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "binary"
    if isinstance(value, msgpack.ExtType):  # before arrays: an ExtType is a namedtuple
        return f"ext type {value.code}"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "map"
    if isinstance(value, msgpack.Timestamp):
        return "timestamp"
    return type(value).__name__


def _check_limit(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")
    return int(value)


class PhotoDecoder:
    """Decodes input events into compact columns; collects bad rows with reasons.

    One decoder is meant to be reused for every event (it holds only its settings); ``decode`` is
    pure and thread-safe.
    """

    def __init__(
        self,
        n_bits: int = DEFAULT_BITS,
        max_event_bytes: int = 1 << 20,
        max_id_bytes: int = 512,
        max_batch_rows: int = 100_000,
    ) -> None:
        self.n_bits = check_n_bits(n_bits)
        self.n_bytes = self.n_bits // 8
        self.n_hex = self.n_bits // 4
        self.max_event_bytes = _check_limit("max_event_bytes", max_event_bytes)
        self.max_id_bytes = _check_limit("max_id_bytes", max_id_bytes)
        self.max_batch_rows = _check_limit("max_batch_rows", max_batch_rows)

    def __repr__(self) -> str:
        return (
            f"PhotoDecoder(n_bits={self.n_bits}, max_event_bytes={self.max_event_bytes}, "
            f"max_id_bytes={self.max_id_bytes}, max_batch_rows={self.max_batch_rows})"
        )

    # -- events -----------------------------------------------------------------------------------

    def decode(self, value: bytes | None, key: bytes | None = None) -> DecodeResult:
        """Decode one event value. Never raises: problems are returned in ``errors``.

        ``key`` (the Kafka message key) is accepted for symmetry with the wire format but not
        checked: the value's ``"id"`` is authoritative (see the module docstring).
        """
        try:
            event = self._parse(value)
            if type(event) is _Rejected:
                return DecodeResult([], [], [], [(None, event.reason)])
            return self._decode_event(event)
        except Exception as exc:  # pragma: no cover - a safety net: one odd event must not kill the stream
            reason = f"internal error while decoding the event: {type(exc).__name__}: {exc}"
            return DecodeResult([], [], [], [(None, reason[:MAX_REASON_CHARS])])

    def _parse(self, value: object) -> Any:
        """The unpacked event, or a :class:`_Rejected` saying why there is none."""
        if value is None:
            return _Rejected("event is empty (no value)")
        if type(value) is not bytes:
            if not isinstance(value, (bytearray, memoryview)):
                return _Rejected(f"event value must be bytes, got {type(value).__name__}")
            value = bytes(value)
        size = len(value)
        if size == 0:
            return _Rejected("event is empty (0 bytes)")
        if size > self.max_event_bytes:
            return _Rejected(f"event of {size:,} bytes exceeds max_event_bytes={self.max_event_bytes:,}")
        try:
            return msgpack.unpackb(
                value,
                raw=False,
                use_list=False,  # tuples: cheaper than lists, and the decoder never mutates them
                strict_map_key=False,
                # Bad UTF-8 in one string must not cost the whole event (a batch its good rows):
                # it becomes lone surrogates U+DC80-U+DCFF, which no valid UTF-8 ever decodes to,
                # and the field checks reject them where they matter (ids and hashes).
                unicode_errors="surrogateescape",
                max_str_len=self.max_event_bytes,
                max_bin_len=self.max_event_bytes,
                max_ext_len=self.max_event_bytes,
                # One more than allowed, so that a slightly too long batch gets the precise message.
                max_array_len=self.max_batch_rows + 1,
                max_map_len=MAX_MAP_KEYS,
            )
        except msgpack.ExtraData as exc:
            extra = len(exc.extra) if isinstance(getattr(exc, "extra", None), (bytes, bytearray)) else "some"
            problem = f"event has {extra} trailing bytes after the first msgpack value"
        except msgpack.StackError:
            problem = "not valid msgpack: nested too deeply"
        except msgpack.FormatError:
            problem = "not valid msgpack: malformed data (reserved type byte 0xc1 or bad format)"
        except ValueError as exc:
            text = str(exc)
            if "max_array_len" in text:
                problem = f"event holds an array longer than max_batch_rows={self.max_batch_rows:,} (msgpack: {text})"
            elif "max_map_len" in text:
                problem = f"event holds a map with more than {MAX_MAP_KEYS:,} keys (msgpack: {text})"
            else:
                problem = f"not valid msgpack: {text or type(exc).__name__}"
        except Exception as exc:  # TypeError (unhashable map key), OverflowError, ... : all mean bad input
            problem = f"not valid msgpack: {type(exc).__name__}: {exc}"
        return _Rejected(problem[:MAX_REASON_CHARS])

    def _decode_event(self, event: Any) -> DecodeResult:
        if type(event) is not dict:
            return DecodeResult([], [], [], [(None, f"event must be a msgpack map, got {_wire_type(event)}")])
        rid = event.get("id", _MISSING)
        h = event.get("hash", _MISSING)
        if "batch" in event:
            if rid is not _MISSING or h is not _MISSING:
                reason = "event has both 'batch' and 'id'/'hash'; send a single photo or a batch"
                return DecodeResult([], [], [], [(None, reason)])
            return self._decode_batch(event["batch"])
        if rid is _MISSING and h is _MISSING:
            reason = "event map has neither 'id' and 'hash' (single photo) nor 'batch'"
            return DecodeResult([], [], [], [(None, reason)])
        ts = event.get("ts")
        # Fast path for the common single event: an ASCII id, a raw or hex hash, no or a float ts.
        if type(rid) is str and rid.isascii() and 0 < len(rid) <= self.max_id_bytes and rid.isprintable():
            raw = None
            if type(h) is bytes:
                if len(h) == self.n_bytes:
                    raw = h
            elif type(h) is str and len(h) == self.n_hex:
                try:
                    raw = bytes.fromhex(h)
                except ValueError:
                    pass
                if raw is not None and len(raw) != self.n_bytes:  # fromhex skips whitespace
                    raw = None
            if raw is not None:
                if ts is None:
                    return DecodeResult([rid], [raw], [None], [])
                if type(ts) is float and 0.0 <= ts < _INF:
                    return DecodeResult([rid], [raw], [ts], [])
        row = self._check_row(rid, h, ts)
        if type(row) is str:
            return DecodeResult([], [], [], [(None, row)])
        return DecodeResult([row[0]], [row[1]], [row[2]], [])

    def _decode_batch(self, batch: Any) -> DecodeResult:
        if type(batch) is not tuple:
            reason = f"field 'batch': must be an array of rows, got {_wire_type(batch)}"
            return DecodeResult([], [], [], [(None, reason)])
        n_rows = len(batch)
        if n_rows == 0:
            return DecodeResult([], [], [], [(None, "empty batch")])
        if n_rows > self.max_batch_rows:
            reason = f"batch has {n_rows:,} rows, more than max_batch_rows={self.max_batch_rows:,}"
            return DecodeResult([], [], [], [(None, reason)])
        result = self._decode_batch_bulk(batch)
        return result if result is not None else self._decode_batch_rows(batch)

    def _decode_batch_bulk(self, batch: tuple) -> DecodeResult | None:
        """The common case, all rows alike and valid, checked column-wise with C-level passes.

        Returns None as soon as anything is unusual; :meth:`_decode_batch_rows` then goes row by
        row and says what is wrong.
        """
        if set(map(type, batch)) != _TUPLE_ONLY:
            return None
        shapes = set(map(len, batch))
        if shapes == _THREE:
            ids, hashes, stamps = zip(*batch)
        elif shapes == _TWO:
            ids, hashes = zip(*batch)
            stamps = None
        else:
            return None
        # ids: ASCII, printable, 1 .. max_id_bytes characters (= bytes, being ASCII). Joined, the
        # ids are checked in two scans of one string rather than two method calls per id; join
        # takes only str (msgpack gives no subclass of it).
        try:
            all_ids = "".join(ids)
        except TypeError:
            return None
        if not all_ids.isascii() or not all_ids.isprintable() or "" in ids or max(map(len, ids)) > self.max_id_bytes:
            return None
        # hashes: all raw bytes of the right length, or all hex strings of the right length
        hash_types = set(map(type, hashes))
        if hash_types == _BYTES_ONLY:
            if set(map(len, hashes)) != {self.n_bytes}:
                return None
            raw_hashes = list(hashes)
        elif hash_types == _STR_ONLY:
            if set(map(len, hashes)) != {self.n_hex}:
                return None
            try:
                joined = bytes.fromhex("".join(hashes))
            except ValueError:
                return None
            n_bytes = self.n_bytes
            if len(joined) != n_bytes * len(batch):  # fromhex skips whitespace, so check the length
                return None
            raw_hashes = [joined[i : i + n_bytes] for i in range(0, len(joined), n_bytes)]
        else:
            return None
        # ts: plain non-negative finite numbers (ints are converted to float)
        if stamps is None:
            ts_list: list[float | None] = [None] * len(batch)
        else:
            ts_types = set(map(type, stamps))
            if not ts_types <= _NUMBER_TYPES:
                return None
            try:
                seconds = np.fromiter(stamps, dtype=np.float64, count=len(stamps))
            except OverflowError:  # an int beyond any float
                return None
            # non-negative and finite: NaN fails both comparisons
            if not ((seconds >= 0.0) & (seconds < _INF)).all():
                return None
            ts_list = list(stamps) if ts_types == _FLOAT_ONLY else seconds.tolist()
        return DecodeResult(list(ids), raw_hashes, ts_list, [])

    def _decode_batch_rows(self, batch: tuple) -> DecodeResult:
        """Row by row: keeps the good rows in order and reports each bad one."""
        result = DecodeResult([], [], [], [])
        errors = result.errors
        add_id, add_hash, add_ts = result.ids.append, result.hashes.append, result.ts.append
        n_bytes, n_hex, max_id = self.n_bytes, self.n_hex, self.max_id_bytes
        fromhex = bytes.fromhex
        for i, row in enumerate(batch):
            # Plain well-formed rows pass with C-level checks only; anything else goes to
            # _check_row, which says what is wrong (or accepts the unusual but valid row).
            if type(row) is tuple:
                n = len(row)
                if n == 2:
                    rid, h = row
                    ts = None
                elif n == 3:
                    rid, h, ts = row
                else:
                    errors.append((i, f"row {i}: must be an array [id, hash] or [id, hash, ts], got {n} elements"))
                    continue
            else:
                errors.append((i, f"row {i}: must be an array [id, hash] or [id, hash, ts], got {_wire_type(row)}"))
                continue
            if (
                type(rid) is str
                and rid.isascii()
                and 0 < len(rid) <= max_id
                and rid.isprintable()
                and (ts is None or ((type(ts) is float or type(ts) is int) and 0 <= ts < _INF))
            ):
                if type(h) is bytes and len(h) == n_bytes:
                    add_id(rid)
                    add_hash(h)
                    add_ts(None if ts is None else float(ts))
                    continue
                if type(h) is str and len(h) == n_hex:
                    try:
                        raw = fromhex(h)
                    except ValueError:
                        raw = b""
                    if len(raw) == n_bytes:
                        add_id(rid)
                        add_hash(raw)
                        add_ts(None if ts is None else float(ts))
                        continue
            checked = self._check_row(rid, h, ts)
            if type(checked) is str:
                errors.append((i, f"row {i}: {checked}"))
            else:
                add_id(checked[0])
                add_hash(checked[1])
                add_ts(checked[2])
        return result

    # -- fields (slow path: exact reasons) --------------------------------------------------------

    def _check_row(self, rid: object, h: object, ts: object) -> tuple[str, bytes, float | None] | str:
        """A valid row as ``(id, raw hash, ts)``, or the reason (naming the field) it is invalid."""
        problem = self._id_problem(rid)
        if problem is not None:
            return f"field 'id': {problem}"
        raw = self._hash_bytes(h)
        if type(raw) is str:
            return f"field 'hash': {raw}"
        stamp = _timestamp(ts)
        if type(stamp) is str:
            return f"field 'ts': {stamp}"
        return rid, raw, stamp  # type: ignore[return-value]

    def _id_problem(self, rid: object) -> str | None:
        if rid is _MISSING:
            return "missing"
        if type(rid) is not str:
            return f"id must be a string, got {_wire_type(rid)}"
        if not rid:
            return "id is empty"
        if rid.isascii():
            size = len(rid)
        else:
            problem = _utf8_problem(rid)
            if problem is not None:
                return f"id {problem}"
            size = len(rid.encode("utf-8"))
        if size > self.max_id_bytes:
            return f"id has {size:,} UTF-8 bytes, more than max_id_bytes={self.max_id_bytes:,}"
        if not rid.isprintable():
            for position, char in enumerate(rid):
                code = ord(char)
                if code < 0x20 or 0x7F <= code < 0xA0:
                    return f"id contains the control character {char!r} at position {position}"
        return None

    def _hash_bytes(self, h: object) -> bytes | str:
        if h is _MISSING:
            return "missing"
        if type(h) is bytes:
            if len(h) == self.n_bytes:
                return h
            return f"hash has {len(h)} bytes, expected {self.n_bytes} for {self.n_bits}-bit codes"
        if type(h) is str:
            problem = None if h.isascii() else _utf8_problem(h)
            if problem is not None:
                return f"hash {problem}"
            problem = hex_error(h, self.n_bits)
            if problem is not None:
                return problem
            raw = bytes.fromhex(h)  # hex_error vouched for length and digits
            return raw if len(raw) == self.n_bytes else "hash is not a valid hex string"
        return (
            f"hash must be {self.n_bytes} raw bytes or a {self.n_hex}-digit hex string, got {_wire_type(h)}"
        )


def _utf8_problem(text: str) -> str | None:
    """Why a decoded msgpack string was not valid UTF-8 on the wire (None if it was).

    The unpacker decodes with ``surrogateescape``, so each undecodable byte is a lone surrogate
    U+DC80-U+DCFF; the offset reported is that byte's offset within the string's wire bytes.
    """
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as exc:
        char = text[exc.start]
        offset = len(text[: exc.start].encode("utf-8", "surrogateescape"))
        if 0xDC80 <= ord(char) <= 0xDCFF:
            return f"is not valid UTF-8 (invalid byte 0x{ord(char) - 0xDC00:02x} at byte {offset})"
        return f"is not valid UTF-8 (lone surrogate U+{ord(char):04X} at character {exc.start})"


def _timestamp(ts: object) -> float | None | str:
    """``ts`` as float seconds (None if absent), or the reason it is invalid."""
    if ts is None:
        return None
    if isinstance(ts, msgpack.Timestamp):
        value = ts.to_unix()
    elif isinstance(ts, bool) or not isinstance(ts, (int, float)):
        return f"ts must be a number of seconds since the epoch, got {_wire_type(ts)}"
    else:
        try:
            value = float(ts)
        except OverflowError:
            return "ts is too large"
    if not math.isfinite(value):
        return f"ts must be finite, got {value}"
    if value < 0:
        return f"ts must not be negative, got {value}"
    return value


# -- input encoders (producers, tests) ------------------------------------------------------------


def _hash_for_wire(h: object) -> bytes | str:
    if isinstance(h, str):
        return h
    if isinstance(h, (bytes, bytearray, memoryview)):
        return bytes(h)
    raise TypeError(f"hash must be bytes or a hex string, got {type(h).__name__}")


def _ts_for_wire(ts: object) -> float | None:
    if ts is None:
        return None
    if isinstance(ts, bool) or not isinstance(ts, (int, float, np.integer, np.floating)):
        raise TypeError(f"ts must be a number of seconds, got {type(ts).__name__}")
    return float(ts)


def encode_photo(id: str, hash: bytes | str, ts: float | None = None) -> bytes:
    """One single-photo input event. ``hash`` is raw bytes or hex; ``ts`` is omitted when None.

    Only types are checked here (lengths and content are the decoder's job).
    """
    if not isinstance(id, str):
        raise TypeError(f"id must be a str, got {type(id).__name__}")
    event: dict[str, Any] = {"id": id, "hash": _hash_for_wire(hash)}
    stamp = _ts_for_wire(ts)
    if stamp is not None:
        event["ts"] = stamp
    return msgpack.packb(event)


def encode_batch(rows: Iterable[Sequence[Any]]) -> bytes:
    """One batch input event from ``(id, hash)`` or ``(id, hash, ts)`` rows (a None ts is omitted)."""
    packed: list[list[Any]] = []
    for i, row in enumerate(rows):
        if len(row) not in (2, 3):
            raise ValueError(f"row {i}: expected (id, hash) or (id, hash, ts), got {len(row)} elements")
        rid = row[0]
        if not isinstance(rid, str):
            raise TypeError(f"row {i}: id must be a str, got {type(rid).__name__}")
        stamp = _ts_for_wire(row[2]) if len(row) == 3 else None
        h = _hash_for_wire(row[1])
        packed.append([rid, h] if stamp is None else [rid, h, stamp])
    if not packed:
        raise ValueError("empty batch: a batch event needs at least one row")
    return msgpack.packb({"batch": packed})


# -- output topic ---------------------------------------------------------------------------------


def _outcome_codes(outcomes: Any, n: int) -> np.ndarray:
    """Outcome names or codes to a uint8 array (vectorised); HELD and unknown values raise ValueError."""
    array = outcomes if isinstance(outcomes, np.ndarray) else np.asarray(list(outcomes))
    if array.shape != (n,):
        raise ValueError(f"outcomes has shape {array.shape}, expected ({n},) (one per id)")
    if n == 0:
        return np.zeros(0, dtype=np.uint8)
    if array.dtype.kind in "iu":
        codes = array.astype(np.int64, copy=False)
    elif array.dtype.kind == "U":
        names, inverse = np.unique(array, return_inverse=True)
        lookup = []
        for name in names.tolist():
            if name not in _OUTCOME_BY_NAME:
                row = int(np.flatnonzero(array == name)[0])
                if name == "held":
                    raise ValueError(f"row {row}: outcome 'held' is not final and is never emitted")
                raise ValueError(f"row {row}: unknown outcome {name!r}; expected one of {sorted(_OUTCOME_BY_NAME)}")
            lookup.append(int(_OUTCOME_BY_NAME[name]))
        codes = np.asarray(lookup, dtype=np.int64)[inverse.reshape(-1)]
    else:
        raise ValueError(f"outcomes must be names or integer Outcome codes, got dtype {array.dtype}")
    held = np.flatnonzero(codes == Outcome.HELD)
    if held.size:
        raise ValueError(f"row {held[0]}: outcome HELD is not final and is never emitted")
    unknown = np.flatnonzero(~np.isin(codes, [int(o) for o in OUTCOME_NAMES]))
    if unknown.size:
        raise ValueError(f"row {unknown[0]}: unknown outcome code {codes[unknown[0]]}")
    return codes.astype(np.uint8)


def _int_column(name: str, values: Any, n: int) -> np.ndarray:
    """Cluster ids / distances to int64, None becoming -1."""
    if not isinstance(values, np.ndarray):
        values = [-1 if v is None else v for v in values]
    array = np.asarray(values)
    if array.shape != (n,):
        raise ValueError(f"{name} has shape {array.shape}, expected ({n},) (one per id)")
    if n and array.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers (or None), got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def _float_column(name: str, values: Any, n: int) -> float | list[float]:
    """A scalar (shared by every row) or one finite float per row."""
    if np.ndim(values) == 0:
        if isinstance(values, bool) or not isinstance(values, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name} must be a number of seconds, got {type(values).__name__}")
        scalar = float(values)
        if not math.isfinite(scalar):
            raise ValueError(f"{name}={scalar} must be finite")
        return scalar
    array = np.asarray(values, dtype=np.float64)
    if array.shape != (n,):
        raise ValueError(f"{name} has shape {array.shape}, expected ({n},) (one per id) or a scalar")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite")
    return array.tolist()


def encode_assignments(
    ids: Sequence[str],
    outcome_names_or_codes: Any,
    clusters: Any,
    distances: Any,
    window: int,
    ts_in: float | Sequence[float] | np.ndarray,
    ts_out: float | Sequence[float] | np.ndarray,
) -> list[bytes]:
    """Output-topic values, one per id, in order.

    ``outcome_names_or_codes``: "joined"/"founded"/"noise" or :class:`~core.online.Outcome` codes
    (e.g. ``WindowResult.outcome``); HELD is not final and raises ValueError, so pass only final
    rows (``result.is_final``). ``clusters`` / ``distances``: ints, -1 or None for noise (as in
    :class:`~core.online.WindowResult`); they must be >= 0 for joined/founded and -1/None for
    noise. ``window``: int. ``ts_in`` / ``ts_out``: epoch seconds, a scalar for every row or one
    per row. Everything is validated before anything is encoded (ValueError/TypeError).
    """
    ids = ids if isinstance(ids, list) else list(ids)
    n = len(ids)
    for i, rid in enumerate(ids):
        if type(rid) is not str:
            raise TypeError(f"row {i}: id must be a str, got {type(rid).__name__}")
    codes = _outcome_codes(outcome_names_or_codes, n)
    cluster = _int_column("clusters", clusters, n)
    distance = _int_column("distances", distances, n)
    noise = codes == Outcome.NOISE
    bad = np.flatnonzero(noise & ((cluster != -1) | (distance != -1)))
    if bad.size:
        raise ValueError(f"row {bad[0]}: a noise row must have cluster and distance -1/None")
    bad = np.flatnonzero(~noise & ((cluster < 0) | (distance < 0)))
    if bad.size:
        raise ValueError(f"row {bad[0]}: a joined/founded row needs cluster >= 0 and distance >= 0")
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 0:
        raise ValueError(f"window={window!r} must be an integer >= 0")
    t_in = _float_column("ts_in", ts_in, n)
    t_out = _float_column("ts_out", ts_out, n)

    pack = msgpack.Packer().pack
    head = b"\x87" + pack("id")  # fixmap of 7 entries, then the "id" key
    k_cluster, k_distance, k_window, k_ts_in, k_ts_out = map(pack, ("cluster", "distance", "window", "ts_in", "ts_out"))
    # Everything after the cluster id: per outcome, the "outcome" pair is a constant.
    outcome_pair = {int(o): pack("outcome") + pack(name) for o, name in OUTCOME_NAMES.items()}
    noise_middle = k_cluster + pack(None) + k_distance + pack(None) + outcome_pair[int(Outcome.NOISE)]
    window_pair = k_window + pack(int(window))
    ts_in_parts = repeat(k_ts_in + pack(t_in)) if isinstance(t_in, float) else [k_ts_in + pack(t) for t in t_in]
    ts_out_parts = repeat(k_ts_out + pack(t_out)) if isinstance(t_out, float) else [k_ts_out + pack(t) for t in t_out]
    noise_code = int(Outcome.NOISE)
    out: list[bytes] = []
    add = out.append
    for rid, o, c, d, a, b in zip(ids, codes.tolist(), cluster.tolist(), distance.tolist(), ts_in_parts, ts_out_parts):
        if o == noise_code:
            middle = noise_middle
        else:
            middle = k_cluster + pack(c) + k_distance + pack(d) + outcome_pair[o]
        add(head + pack(rid) + middle + window_pair + a + b)
    return out


def assignment_records(
    ids: Sequence[str],
    outcome_names_or_codes: Any,
    clusters: Any,
    distances: Any,
    window: int,
    ts_in: float | Sequence[float] | np.ndarray,
    ts_out: float | Sequence[float] | np.ndarray,
) -> list[tuple[bytes, bytes]]:
    """Output-topic records: the photo id (UTF-8) as key, :func:`encode_assignments`' value."""
    ids = ids if isinstance(ids, list) else list(ids)
    values = encode_assignments(ids, outcome_names_or_codes, clusters, distances, window, ts_in, ts_out)
    return [(photo_id.encode("utf-8", "surrogatepass"), value) for photo_id, value in zip(ids, values)]


def window_records(result: WindowResult, ts_new: Sequence[float] | np.ndarray, ts_out: float) -> list[tuple[bytes, bytes]]:
    """Output-topic records of a window's final outcomes. ``ts_new``: the ts_in of the window's new
    photos (its first ``result.n_new`` rows); a pending photo retried keeps the time it was first seen."""
    final = np.flatnonzero(result.is_final)
    n_pending = len(result) - result.n_new
    ts_in = np.where(np.arange(len(result)) < result.n_new,
                     np.concatenate((np.asarray(ts_new, dtype=np.float64), np.zeros(n_pending))), result.first_seen)
    return assignment_records([result.ids[i] for i in final], result.outcome[final], result.cluster[final],
                              result.distance[final], result.window, ts_in[final], ts_out)


_ASSIGNMENT_FIELDS = ("id", "cluster", "distance", "outcome", "window", "ts_in", "ts_out")


def _unpack_map(value: object, what: str) -> dict:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise ValueError(f"{what} must be bytes, got {type(value).__name__}")
    try:
        obj = msgpack.unpackb(value, raw=False, strict_map_key=False)
    except Exception as exc:
        raise ValueError(f"{what} is not valid msgpack: {type(exc).__name__}: {exc}") from exc
    if type(obj) is not dict:
        raise ValueError(f"{what} must be a msgpack map, got {_wire_type(obj)}")
    return obj


def decode_assignment(value: bytes) -> dict:
    """Parse and check one output-topic value; raises ValueError if it is not a valid assignment."""
    obj = _unpack_map(value, "assignment")
    missing = [name for name in _ASSIGNMENT_FIELDS if name not in obj]
    if missing:
        raise ValueError(f"assignment lacks field(s) {missing}")
    outcome = obj["outcome"]
    if outcome not in _OUTCOME_BY_NAME:
        raise ValueError(f"assignment field 'outcome': unknown outcome {outcome!r}")
    if type(obj["id"]) is not str:
        raise ValueError(f"assignment field 'id': must be a string, got {_wire_type(obj['id'])}")
    for name in ("cluster", "distance"):
        v = obj[name]
        if outcome == "noise":
            if v is not None:
                raise ValueError(f"assignment field {name!r}: must be nil for noise, got {v!r}")
        elif type(v) is not int or v < 0:
            raise ValueError(f"assignment field {name!r}: must be an integer >= 0, got {v!r}")
    if type(obj["window"]) is not int or obj["window"] < 0:
        raise ValueError(f"assignment field 'window': must be an integer >= 0, got {obj['window']!r}")
    for name in ("ts_in", "ts_out"):
        if type(obj[name]) not in (int, float) or not math.isfinite(obj[name]):
            raise ValueError(f"assignment field {name!r}: must be a finite number, got {obj[name]!r}")
    return obj


# -- dead-letter topic ----------------------------------------------------------------------------


def _cut(data: bytes | bytearray | memoryview | None, name: str, limit: int, record: dict) -> None:
    if data is None:
        record[name] = None
        return
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{name} must be bytes or None, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > limit:
        record[name] = data[:limit]
        record[f"{name}_truncated"] = True
        record[f"{name}_size"] = len(data)
    else:
        record[name] = data


def encode_dlq(
    errors: Sequence[tuple[int | None, str]],
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    max_value_bytes: int = MAX_DLQ_VALUE_BYTES,
) -> bytes:
    """The one dead-letter record of a bad event: ``errors`` are its ``(row, reason)`` problems, as
    :attr:`DecodeResult.errors` lists them (``row`` None: the whole event is rejected).

    ``value`` (the original event bytes, None for a tombstone) and ``key`` are kept up to
    ``max_value_bytes``; longer ones are cut and flagged with ``<name>_truncated``/``<name>_size``,
    so a dead letter always fits in a Kafka message. Each reason is cut to 4,096 characters and
    only the first ``MAX_DLQ_REASONS`` are listed.
    """
    if isinstance(errors, (str, bytes)) or not errors:
        raise ValueError("errors must be a non-empty sequence of (row, reason) pairs")
    listed = []
    for row, reason in errors[:MAX_DLQ_REASONS]:
        if not isinstance(reason, str):
            raise TypeError(f"reason must be a str, got {type(reason).__name__}")
        if row is not None and (isinstance(row, bool) or not isinstance(row, (int, np.integer)) or row < 0):
            raise ValueError(f"row={row!r} must be None or an integer >= 0")
        listed.append([None if row is None else int(row), reason[:MAX_REASON_CHARS]])
    for name, number in (("partition", partition), ("offset", offset)):
        if isinstance(number, bool) or not isinstance(number, (int, np.integer)):
            raise TypeError(f"{name} must be an integer, got {number!r}")
    limit = _check_limit("max_value_bytes", max_value_bytes)
    record: dict[str, Any] = {
        "reason": listed[0][1],
        "row": listed[0][0],
        "bad_rows": sum(1 for row, _ in errors if row is not None),
        "reasons": listed,
        "topic": str(topic),
        "partition": int(partition),
        "offset": int(offset),
    }
    _cut(key, "key", limit, record)
    _cut(value, "value", limit, record)
    return msgpack.packb(record)


_DLQ_FIELDS = ("reason", "row", "topic", "partition", "offset", "key", "value")


def decode_dlq(value: bytes) -> dict:
    """Parse one dead-letter value (raises ValueError if it is not one)."""
    obj = _unpack_map(value, "dead letter")
    missing = [name for name in _DLQ_FIELDS if name not in obj]
    if missing:
        raise ValueError(f"dead letter lacks field(s) {missing}")
    if type(obj["reason"]) is not str:
        raise ValueError(f"dead letter field 'reason': must be a string, got {_wire_type(obj['reason'])}")
    for name in ("key", "value"):
        if obj[name] is not None and type(obj[name]) is not bytes:
            raise ValueError(f"dead letter field {name!r}: must be binary or nil, got {_wire_type(obj[name])}")
    obj.setdefault("key_truncated", False)
    obj.setdefault("value_truncated", False)
    # Records written before one record per event held exactly one problem.
    obj.setdefault("reasons", [[obj["row"], obj["reason"]]])
    obj.setdefault("bad_rows", 0 if obj["row"] is None else 1)
    return obj


# -- the unjoined topic (join stage -> found stage) ------------------------------------------------
# Internal, one partition. Key PHOTOS_KEY: a batch event of the input format whose rows all carry
# their ts_in, ``{"batch": [[id, hash, ts_in], ...]}``. Key JOINS_KEY: how many photos the join
# stage joined to each cluster, ``{"clusters": bin int64 LE, "counts": bin int64 LE, "ts": float}``.

PHOTOS_KEY = b"photos"
JOINS_KEY = b"joins"
# A forwarded event holds at most this many rows and about this many bytes: below the 1 MiB that
# Kafka's default max.message.bytes and the decoder's max_event_bytes allow, whatever the ids.
FORWARD_CHUNK_ROWS = 1_000
FORWARD_CHUNK_BYTES = 256 * 1024
_FORWARD_ROW_OVERHEAD = 16  # msgpack array, str and bin headers, and the float of one row


def encode_forwarded(ids: Sequence[str], hashes: Sequence[bytes], ts_in: Sequence[float]) -> list[bytes]:
    """Batch events of photos the join stage validated already (ids, raw hashes, float ts_in), cut
    into events of at most ``FORWARD_CHUNK_ROWS`` rows and about ``FORWARD_CHUNK_BYTES``."""
    events, rows, size = [], [], 0
    for photo_id, h, ts in zip(ids, hashes, ts_in):
        row_size = len(photo_id) * 4 if not photo_id.isascii() else len(photo_id)
        row_size += len(h) + _FORWARD_ROW_OVERHEAD
        if rows and (len(rows) >= FORWARD_CHUNK_ROWS or size + row_size > FORWARD_CHUNK_BYTES):
            events.append(msgpack.packb({"batch": rows}))
            rows, size = [], 0
        rows.append([photo_id, h, float(ts)])
        size += row_size
    if rows:
        events.append(msgpack.packb({"batch": rows}))
    return events


def encode_joins(clusters: np.ndarray, counts: np.ndarray, ts: float) -> bytes:
    """Join counts per cluster id (both int64 arrays of one length) at time ``ts``."""
    clusters, counts = np.asarray(clusters, dtype="<i8"), np.asarray(counts, dtype="<i8")
    if clusters.shape != counts.shape or clusters.ndim != 1:
        raise ValueError(f"clusters {clusters.shape} and counts {counts.shape} must be 1-D of one length")
    return msgpack.packb({"clusters": clusters.tobytes(), "counts": counts.tobytes(), "ts": float(ts)})


def decode_joins(value: bytes | None) -> tuple[np.ndarray, np.ndarray, float]:
    """``(clusters, counts, ts)`` of a join-counts event; ValueError naming the field if it is not one."""
    obj = _unpack_map(value, "join counts")
    for name in ("clusters", "counts"):
        if type(obj.get(name)) is not bytes or len(obj[name]) % 8:
            raise ValueError(f"join counts field {name!r}: must be binary of int64 values")
    clusters = np.frombuffer(obj["clusters"], dtype="<i8").astype(np.int64)
    counts = np.frombuffer(obj["counts"], dtype="<i8").astype(np.int64)
    if clusters.shape != counts.shape:
        raise ValueError(f"join counts: {clusters.shape[0]} clusters but {counts.shape[0]} counts")
    ts = obj.get("ts")
    if type(ts) not in (int, float) or not math.isfinite(ts):
        raise ValueError(f"join counts field 'ts': must be a finite number, got {ts!r}")
    return clusters, counts, float(ts)


_RETIRED_FIELDS = ("cluster", "size", "created_ts", "updated_ts", "window", "ts")


def encode_retirements(clusters: np.ndarray, sizes: np.ndarray, created_ts: np.ndarray, updated_ts: np.ndarray,
                       window: int, ts: float) -> list[tuple[bytes, bytes]]:
    """Retired-topic records, one per retired center: key the cluster id (ASCII), value a msgpack
    map ``{"cluster", "size", "created_ts", "updated_ts" (its last join), "window", "ts"}``."""
    return [(str(c).encode(), msgpack.packb({"cluster": c, "size": n, "created_ts": created, "updated_ts": updated,
                                             "window": int(window), "ts": float(ts)}))
            for c, n, created, updated in zip(np.asarray(clusters).tolist(), np.asarray(sizes).tolist(),
                                              np.asarray(created_ts).tolist(), np.asarray(updated_ts).tolist())]


def decode_retirement(value: bytes) -> dict:
    """Parse and check one retired-topic value; ValueError naming the field if it is not one."""
    obj = _unpack_map(value, "retirement")
    missing = [name for name in _RETIRED_FIELDS if name not in obj]
    if missing:
        raise ValueError(f"retirement lacks field(s) {missing}")
    for name in ("cluster", "size", "window"):
        if type(obj[name]) is not int or obj[name] < 0:
            raise ValueError(f"retirement field {name!r}: must be an integer >= 0, got {obj[name]!r}")
    for name in ("created_ts", "updated_ts", "ts"):
        if type(obj[name]) not in (int, float) or not math.isfinite(obj[name]):
            raise ValueError(f"retirement field {name!r}: must be a finite number, got {obj[name]!r}")
    return obj
