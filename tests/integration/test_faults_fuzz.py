"""Bad input at volume: 10,000 malformed events mixed into a stream of ~26,500 valid photos.

A seeded generator makes malformed events of many kinds (random bytes, truncated msgpack, wrong
top-level types, missing or wrong-typed fields, wrong hash widths, huge ids, invalid UTF-8, empty
batches, batches whose rows are partly or all bad, tombstones, nested garbage, oversized events, a
9 MiB key) and knows for each one, in advance, the dead letter it must produce: one record per
malformed event, listing its problems (``row`` None for the whole event, else the bad batch rows,
the first 16 of them) each with a substring of its reason, and counting its bad rows. Valid
photos come as single events, batch events, the good rows of mixed batches, and unusual-but-valid
events (unknown extra fields, hex hashes, timestamps, non-ASCII and 512-byte ids, odd keys).

Checked against a real broker and a worker subprocess (2 input partitions): every expected dead
letter is in the dead-letter topic (matched by partition and offset) with its reasons and the
original key and value (cut to 64 KiB as the codec does), no other dead letter is there, every
valid photo has exactly one outcome and no other id has one, the worker stays up and none of its
agents crashes (its log is watched: Faust restarts a crashed agent in a live process), and its
/stats counts (dlq_events, dlq_rows, photos_in, events_in) match. Takes about 30-40 s.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest
from kafka_support import AssignmentReader, DeadLetterReader, make_producer, produce_events, wait_for

from core.codes import to_bytes
from core.synth import planted_codes
from streams.codecs import MAX_DLQ_REASONS, MAX_DLQ_VALUE_BYTES, decode_dlq, encode_batch, encode_photo

pytestmark = [pytest.mark.kafka, pytest.mark.faults]

SEED = 4_2024_06
N_MALFORMED = 10_000
N_POOL = 30_000  # planted codes available for valid photos (not all are used)
N_SINGLE = 9_000  # valid photos as single events
N_BATCHED = 9_000  # valid photos in batch events of BATCH_ROWS
BATCH_ROWS = 100
N_UNUSUAL = 600  # unusual but valid single events
MAX_EVENT = 1 << 20  # PhotoDecoder's default max_event_bytes
MAX_ID = 512  # PhotoDecoder's default max_id_bytes
MAX_ROWS = 100_000  # PhotoDecoder's default max_batch_rows
# Message keys are not checked, only carried to the dead-letter topic: a key larger than the
# worker's producer requests (8 MiB) but within the broker's message.max.bytes (16 MiB here).
HUGE_KEY = 9 * 1024 * 1024
SHAPE = "must be an array [id, hash] or [id, hash, ts], got"
NOT_MSGPACK = "not valid msgpack"
# What random bytes that do not even parse may be called (see _random_bytes).
UNPARSABLE = (NOT_MSGPACK, f"event holds an array longer than max_batch_rows={MAX_ROWS:,}",
              "event holds a map with more than 1,024 keys")

# Malformed events per kind; they add up to N_MALFORMED.
KINDS = {
    "random_bytes": 1500,
    "fixint_then_junk": 300,
    "reserved_c1": 200,
    "truncated": 1200,
    "wrong_top_type": 800,
    "event_shape": 600,
    "bad_id": 900,
    "bad_hash": 1500,
    "bad_ts": 400,
    "huge_id": 300,
    "empty_batch": 300,
    "mixed_batch": 1000,
    "all_bad_batch": 200,
    "tombstone": 200,
    "empty_value": 100,
    "nested_garbage": 494,
    "oversized": 5,
    "huge_key": 1,
}

# Values of every msgpack type but string, with their names in the decoder's reasons.
OTHER_TYPES: list[tuple[Any, str]] = [
    (None, "nil"), (True, "boolean"), (False, "boolean"), (17, "integer"), (-5, "integer"),
    (2**64 - 1, "integer"), (1.5, "float"), (b"raw", "binary"), ([1, 2], "array"), ([], "array"),
    ({"a": 1}, "map"), ({}, "map"), (msgpack.Timestamp(1_700_000_000, 0), "timestamp"),
    (msgpack.ExtType(5, b"xy"), "ext type 5"),
]
CONTROL_CHARS = ["\x00", "\n", "\t", "\x1f", "\x7f", "\x85", "\x9f"]
NON_HEX = ["g", "x", "Z", " ", "-", ":", "é", "\u00a0"]


def pack(obj: Any) -> bytes:
    """msgpack; str with surrogate escapes (U+DC80-U+DCFF) become their raw, invalid-UTF-8 bytes."""
    return msgpack.packb(obj, unicode_errors="surrogateescape")


def wire_type(value: Any) -> str:
    """The decoder's name of a decoded msgpack value's type (its documented reasons use these)."""
    if isinstance(value, msgpack.Timestamp):
        return "timestamp"
    if isinstance(value, msgpack.ExtType):
        return f"ext type {value.code}"
    names = {type(None): "nil", bool: "boolean", int: "integer", float: "float", str: "string",
             bytes: "binary", list: "array", tuple: "array", dict: "map"}
    return names[type(value)]


@dataclass
class Event:
    """One input event and what the worker must make of it."""

    key: bytes | None
    value: bytes | None
    kind: str
    letters: list[tuple[int | None, tuple[str, ...]]] = field(default_factory=list)  # (row, reason alternatives)
    good: list[str] = field(default_factory=list)  # ids of the valid photos it holds


class Fuzz:
    """The seeded generator: valid photos drawn from planted codes, malformed events by kind."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        codes, _, _ = planted_codes(N_POOL, 150, flip_prob=0.1, random_state=seed)
        self.pool = to_bytes(codes)
        self.valid_ids: list[str] = []
        self.serial = 0

    # -- building blocks ------------------------------------------------------------------------

    def take(self, id_: str | None = None) -> tuple[str, bytes]:
        """A fresh valid photo: a unique id (``id_`` if given) and a planted hash."""
        n = len(self.valid_ids)
        assert n < N_POOL, "the pool of planted codes is used up"
        photo_id = id_ if id_ is not None else f"p{n:09d}"
        self.valid_ids.append(photo_id)
        return photo_id, self.pool[n]

    def bad_id(self) -> str:
        """An id string that no valid photo has (for malformed events and rows)."""
        self.serial += 1
        return f"bad-{self.serial:07d}"

    def random_hash(self) -> bytes:
        return self.rng.randbytes(32)

    def key_for(self, text: str) -> bytes | None:
        r = self.rng.random()
        if r < 0.05:
            return None
        if r < 0.10:
            return self.rng.randbytes(self.rng.randint(1, 40))  # any bytes: keys are not checked
        return text.encode("utf-8", "surrogateescape")

    def good_row(self) -> tuple[list[Any], str]:
        photo_id, h = self.take()
        wire: Any = h
        r = self.rng.random()
        if r < 0.2:
            wire = h.hex()
        elif r < 0.3:
            wire = h.hex().upper()
        row = [photo_id, wire]
        r = self.rng.random()
        if r < 0.2:
            row.append(1.7e9 + self.rng.random() * 1e6)
        elif r < 0.3:
            row.append(self.rng.randint(0, 2**32))
        elif r < 0.35:
            row.append(None)
        return row, photo_id

    def hash_problem(self) -> tuple[Any, str]:
        """A wrong hash and the decoder's reason (after "field 'hash': ")."""
        rng = self.rng
        r = rng.random()
        if r < 0.3:
            n = rng.choice([0, 1, 8, 16, 31, 33, 40, 63, 64, 100, 1000])
            return rng.randbytes(n), f"hash has {n} bytes, expected 32 for 256-bit codes"
        if r < 0.6:
            n = rng.choice([0, 1, 16, 32, 62, 63, 65, 66, 128, 500])
            return rng.randbytes(n // 2 + 1).hex()[:n], f"hash has {n} hex digits, expected 64 for 256-bit codes"
        if r < 0.8:
            text, position, char = self.random_hash().hex(), rng.randrange(64), rng.choice(NON_HEX)
            return (text[:position] + char + text[position + 1:],
                    f"hash has a non-hex character {char!r} at position {position}")
        if r < 0.9:  # 64 characters, one of them a byte that is not valid UTF-8
            text, position, byte = self.random_hash().hex(), rng.randrange(64), rng.randrange(0x80, 0x100)
            return (text[:position] + chr(0xDC00 + byte) + text[position + 1:],
                    f"hash is not valid UTF-8 (invalid byte 0x{byte:02x} at byte {position})")
        value, name = rng.choice([t for t in OTHER_TYPES if t[1] != "binary"])
        return value, f"hash must be 32 raw bytes or a 64-digit hex string, got {name}"

    def id_problem(self) -> tuple[Any, str]:
        """A wrong id and the decoder's reason (after "field 'id': ")."""
        rng = self.rng
        r = rng.random()
        if r < 0.3:
            value, name = rng.choice(OTHER_TYPES)
            return value, f"id must be a string, got {name}"
        if r < 0.4:
            return "", "id is empty"
        if r < 0.65:
            base, char = self.bad_id(), rng.choice(CONTROL_CHARS)
            position = rng.randrange(len(base) + 1)
            return (base[:position] + char + base[position:],
                    f"id contains the control character {char!r} at position {position}")
        if r < 0.8:
            prefix = rng.choice(["", "é-", "фото-", "📷"]) + self.bad_id()
            byte = rng.randrange(0x80, 0x100)  # a lone byte >= 0x80 followed by ASCII (or nothing) never decodes
            suffix = rng.choice(["", "-tail", "x"])
            return (prefix + chr(0xDC00 + byte) + suffix,
                    f"id is not valid UTF-8 (invalid byte 0x{byte:02x} at byte {len(prefix.encode())})")
        # too long: ASCII or multi-byte, just over the limit or far over it
        unit = rng.choice(["x", "é", "📷"])
        n_units = rng.choice([MAX_ID // len(unit.encode()) + 1, rng.randint(600, 3000)])
        text = self.bad_id() + unit * n_units
        size = len(text.encode())
        return text, f"id has {size:,} UTF-8 bytes, more than max_id_bytes={MAX_ID}"

    def ts_problem(self) -> tuple[Any, str]:
        rng = self.rng
        r = rng.random()
        if r < 0.35:
            value = rng.choice([-1, -0.5, -1e9, -(2**63)])
            return value, f"ts must not be negative, got {float(value)}"
        if r < 0.6:
            value = rng.choice([math.nan, math.inf, -math.inf])
            return value, f"ts must be finite, got {value}"
        value, name = rng.choice([t for t in OTHER_TYPES if t[1] not in ("nil", "integer", "float", "timestamp")]
                                 + [("2024-01-01", "string")])
        return value, f"ts must be a number of seconds since the epoch, got {name}"

    def bad_row(self, i: int) -> tuple[Any, str]:
        """A bad batch row at index ``i`` and its full reason."""
        rng = self.rng
        r = rng.random()
        if r < 0.15:
            value, name = rng.choice([t for t in OTHER_TYPES if t[1] != "array"] + [("row", "string")])
            return value, f"row {i}: {SHAPE} {name}"
        if r < 0.3:
            n = rng.choice([0, 1, 4, 5, 9])
            row = ([self.bad_id(), self.random_hash(), 1.0, "extra", 0, 0, 0, 0, 0])[:n]
            return row, f"row {i}: {SHAPE} {n} elements"
        if r < 0.55:
            value, reason = self.id_problem()
            return [value, self.random_hash()], f"row {i}: field 'id': {reason}"
        if r < 0.85:
            value, reason = self.hash_problem()
            return [self.bad_id(), value], f"row {i}: field 'hash': {reason}"
        value, reason = self.ts_problem()
        return [self.bad_id(), self.random_hash(), value], f"row {i}: field 'ts': {reason}"

    # -- malformed events by kind ----------------------------------------------------------------

    def malformed(self, kind: str) -> Event:
        return getattr(self, f"_{kind}")(kind)

    def _one(self, kind: str, key: bytes | None, value: bytes | None, *reasons: str) -> Event:
        return Event(key, value, kind, [(None, tuple(reasons))])

    def _random_bytes(self, kind: str) -> Event:
        """Random bytes; an independent plain msgpack parse says which reason they must get."""
        while True:
            data = self.rng.randbytes(self.rng.randint(1, 400))
            try:
                obj = msgpack.unpackb(data, raw=False, use_list=False, strict_map_key=False,
                                     unicode_errors="surrogateescape")
            except msgpack.ExtraData as exc:
                extra = len(exc.extra)
                expected: tuple[str, ...] = (f"event has {extra} trailing bytes after the first msgpack value",)
            except Exception:
                expected = UNPARSABLE
            else:
                if isinstance(obj, dict):
                    continue  # a random map could even be valid; such luck is not this kind
                expected = (f"event must be a msgpack map, got {wire_type(obj)}",)
            return self._one(kind, self.rng.randbytes(8), data, *expected)

    def _fixint_then_junk(self, kind: str) -> Event:
        data = bytes([self.rng.randrange(0x80)]) + self.rng.randbytes(self.rng.randint(1, 200))
        return self._one(kind, b"junk", data, f"event has {len(data) - 1} trailing bytes after the first msgpack value")

    def _reserved_c1(self, kind: str) -> Event:
        data = b"\xc1" + self.rng.randbytes(self.rng.randint(0, 200))
        return self._one(kind, b"c1", data, "not valid msgpack: malformed data")

    def _truncated(self, kind: str) -> Event:
        """A proper prefix of a complete msgpack value is always incomplete input."""
        if self.rng.random() < 0.6:
            full = encode_photo(self.bad_id(), self.random_hash(), self.rng.choice([None, 1.7e9]))
        else:
            rows = [(self.bad_id(), self.random_hash()) for _ in range(self.rng.randint(1, 50))]
            full = encode_batch(rows)
        cut = self.rng.randint(1, len(full) - 1)
        return self._one(kind, b"truncated", full[:cut], "not valid msgpack: Unpack failed: incomplete input")

    def _wrong_top_type(self, kind: str) -> Event:
        value, name = self.rng.choice(
            [t for t in OTHER_TYPES if t[1] != "map"]
            + [(self.bad_id(), "string"), ([self.bad_id(), self.random_hash()], "array"),
               ([{"id": self.bad_id(), "hash": self.random_hash()}], "array")])
        return self._one(kind, b"top", pack(value), f"event must be a msgpack map, got {name}")

    def _event_shape(self, kind: str) -> Event:
        rng, h = self.rng, self.random_hash()
        options = [
            ({"hash": h}, "field 'id': missing"),
            ({"hash": h, "ts": 1.0, "source": "cam"}, "field 'id': missing"),
            ({"id": self.bad_id()}, "field 'hash': missing"),
            ({}, "event map has neither 'id' and 'hash' (single photo) nor 'batch'"),
            ({"name": "x", "photo": h}, "event map has neither 'id' and 'hash' (single photo) nor 'batch'"),
            ({"ID": self.bad_id(), "HASH": h}, "event map has neither 'id' and 'hash' (single photo) nor 'batch'"),
            ({"batch": [[self.bad_id(), h]], "id": self.bad_id()},
             "event has both 'batch' and 'id'/'hash'; send a single photo or a batch"),
            ({"batch": [[self.bad_id(), h]], "hash": h},
             "event has both 'batch' and 'id'/'hash'; send a single photo or a batch"),
        ]
        value, name = rng.choice([t for t in OTHER_TYPES if t[1] != "array"] + [("rows", "string")])
        options.append(({"batch": value}, f"field 'batch': must be an array of rows, got {name}"))
        event, reason = rng.choice(options)
        return self._one(kind, self.key_for("shape"), pack(event), reason)

    def _bad_id(self, kind: str) -> Event:
        value, reason = self.id_problem()
        event: dict[str, Any] = {"id": value, "hash": self.random_hash()}
        if self.rng.random() < 0.3:
            event["ts"] = 1.7e9
        key = self.key_for(value if isinstance(value, str) and len(value) < 100 else "bad-id")
        return self._one(kind, key, pack(event), f"field 'id': {reason}")

    def _bad_hash(self, kind: str) -> Event:
        value, reason = self.hash_problem()
        photo_id = self.bad_id()
        return self._one(kind, self.key_for(photo_id), pack({"id": photo_id, "hash": value}), f"field 'hash': {reason}")

    def _bad_ts(self, kind: str) -> Event:
        value, reason = self.ts_problem()
        photo_id = self.bad_id()
        event = {"id": photo_id, "hash": self.random_hash(), "ts": value}
        return self._one(kind, self.key_for(photo_id), pack(event), f"field 'ts': {reason}")

    def _huge_id(self, kind: str) -> Event:
        """Ids far over max_id_bytes; some of 100 KiB and more, keyed by themselves (cut in the DLQ)."""
        rng = self.rng
        if rng.random() < 0.15:
            size = rng.choice([100 * 1024, rng.randint(70_000, 300_000)])
        else:
            size = rng.randint(MAX_ID + 1, 5000)
        photo_id = self.bad_id()
        photo_id += "h" * (size - len(photo_id))
        event = pack({"id": photo_id, "hash": self.random_hash()})
        key = photo_id.encode() if rng.random() < 0.5 else b"huge-id"
        return self._one(kind, key, event, f"field 'id': id has {size:,} UTF-8 bytes, more than max_id_bytes={MAX_ID}")

    def _empty_batch(self, kind: str) -> Event:
        event: dict[str, Any] = {"batch": []}
        if self.rng.random() < 0.3:
            event["producer"] = "p1"
        return self._one(kind, self.key_for("empty"), pack(event), "empty batch")

    def _batch(self, kind: str, p_good: float) -> Event:
        """A batch of 2-30 rows; each row good with probability ``p_good`` (at least one good row
        if ``p_good`` > 0, at least one bad row always)."""
        rng = self.rng
        n = rng.randint(2, 30)
        good_at = {i for i in range(n) if rng.random() < p_good}
        if p_good > 0 and not good_at:
            good_at.add(rng.randrange(n))
        if len(good_at) == n:
            good_at.discard(rng.randrange(n))
        rows, letters, good = [], [], []
        for i in range(n):
            if i in good_at:
                row, photo_id = self.good_row()
                good.append(photo_id)
            else:
                row, reason = self.bad_row(i)
                letters.append((i, (reason,)))
            rows.append(row)
        event: dict[str, Any] = {"batch": rows}
        if rng.random() < 0.2:
            event["producer"] = "fuzz"
        return Event(self.key_for(good[0] if good else "all-bad"), pack(event), kind, letters, good)

    def _mixed_batch(self, kind: str) -> Event:
        return self._batch(kind, p_good=0.5)

    def _all_bad_batch(self, kind: str) -> Event:
        return self._batch(kind, p_good=0.0)

    def _tombstone(self, kind: str) -> Event:
        return self._one(kind, self.key_for("tombstone"), None, "event is empty (no value)")

    def _empty_value(self, kind: str) -> Event:
        return self._one(kind, self.key_for("empty-value"), b"", "event is empty (0 bytes)")

    def _nested_garbage(self, kind: str) -> Event:
        rng, h = self.rng, self.random_hash()
        r = rng.random()
        if r < 0.15:  # arrays nested deeper than msgpack's stack
            depth = rng.randint(1025, 5000)
            return self._one(kind, b"deep", b"\x91" * depth + b"\xc0", "not valid msgpack: nested too deeply")
        if r < 0.25:  # nested, but not too deeply: still not a map
            depth = rng.randint(1, 1000)
            return self._one(kind, b"deep", b"\x91" * depth + b"\xc0", "event must be a msgpack map, got array")
        if r < 0.35:  # a map as a map key
            return self._one(kind, b"map-key", b"\x81" + pack({"k": rng.randint(0, 99)}) + pack("v"),
                             "not valid msgpack: TypeError: unhashable type")
        if r < 0.45:  # an invalid timestamp extension as ts
            event = pack({"id": self.bad_id(), "hash": h, "ts": 0})
            assert event.endswith(b"\xa2ts\x00")
            return self._one(kind, b"bad-ext", event[:-1] + b"\xc7\x03\xff\x00\x00\x00",
                             "not valid msgpack: invalid timestamp")
        if r < 0.55:
            value = {"nested": [1, {"deeper": [h, None]}], "n": rng.randint(0, 9)}
            return self._one(kind, b"nested", pack({"id": value, "hash": h}),
                             "field 'id': id must be a string, got map")
        if r < 0.65:
            event = {"id": self.bad_id(), "hash": [list(h[:16]), {"rest": h[16:]}]}
            return self._one(kind, b"nested", pack(event),
                             "field 'hash': hash must be 32 raw bytes or a 64-digit hex string, got array")
        if r < 0.75:  # a row nested one level too deep: an array of one element
            rows = [[[self.bad_id(), h]], [[[[self.bad_id()]]], h]]
            letters = [(0, (f"row 0: {SHAPE} 1 elements",)),
                       (1, ("row 1: field 'id': id must be a string, got array",))]
            return Event(b"nested", pack({"batch": rows}), kind, letters)
        if r < 0.85:  # valid event followed by more
            junk = pack({"id": self.bad_id(), "hash": h}) + rng.randbytes(rng.randint(1, 50))
            first = pack({"id": self.bad_id(), "hash": h, "extra": [1, 2, {"x": None}]})
            return self._one(kind, b"trailing", first + junk,
                             f"event has {len(junk)} trailing bytes after the first msgpack value")
        if r < 0.9:  # more map keys than any event may have
            event = {f"k{i}": i for i in range(rng.randint(1025, 1500))} | {"id": self.bad_id(), "hash": h}
            return self._one(kind, b"wide", pack(event), "event holds a map with more than 1,024 keys")
        if r < 0.95:  # one row too many: the batch itself says so
            event = b"\x81" + pack("batch") + b"\xdd" + (MAX_ROWS + 1).to_bytes(4, "big") + b"\xc0" * (MAX_ROWS + 1)
            return self._one(kind, b"long", event,
                             f"batch has {MAX_ROWS + 1:,} rows, more than max_batch_rows={MAX_ROWS:,}")
        # two rows too many: msgpack is told not to allocate it
        event = b"\x81" + pack("batch") + b"\xdd" + (MAX_ROWS + 2).to_bytes(4, "big") + b"\xc0" * (MAX_ROWS + 2)
        return self._one(kind, b"long", event, f"event holds an array longer than max_batch_rows={MAX_ROWS:,}")

    def _oversized(self, kind: str) -> Event:
        size = self.rng.randint(MAX_EVENT + 1, 2 * MAX_EVENT)
        head = pack({"id": self.bad_id(), "hash": self.random_hash(), "pad": b""})[:-2]  # "pad": bin8 of 0 bytes
        assert head.endswith(b"\xa3pad")
        value = head + b"\xc6" + (size - len(head) - 5).to_bytes(4, "big")
        value += self.rng.randbytes(size - len(value))
        assert len(value) == size
        return self._one(kind, b"oversized", value, f"event of {size:,} bytes exceeds max_event_bytes={MAX_EVENT:,}")

    def _huge_key(self, kind: str) -> Event:
        key = f"huge-key-{self.serial}-".encode().ljust(HUGE_KEY, b"k")
        return self._one(kind, key, b"\xc1", "not valid msgpack: malformed data")

    # -- valid events ------------------------------------------------------------------------------

    def singles(self, n: int) -> list[Event]:
        out = []
        for _ in range(n):
            photo_id, h = self.take()
            out.append(Event(photo_id.encode(), encode_photo(photo_id, h), "valid_single", good=[photo_id]))
        return out

    def batches(self, n_rows: int, rows_per_batch: int) -> list[Event]:
        out = []
        for _ in range(n_rows // rows_per_batch):
            rows = [self.take() for _ in range(rows_per_batch)]
            out.append(Event(rows[0][0].encode(), encode_batch(rows), "valid_batch", good=[r[0] for r in rows]))
        return out

    def unusual(self, n: int) -> list[Event]:
        """Valid events that take the decoder's slow paths; every one must be assigned."""
        rng, out = self.rng, []
        for i in range(n):
            r = i % 12
            photo_id = None
            if r == 0:
                photo_id = f"фото-{i:05d}-📷"
            elif r == 1:  # exactly max_id_bytes, ASCII
                photo_id = f"u{i:06d}".ljust(MAX_ID, "x")
            elif r == 2:  # exactly max_id_bytes, two bytes per character
                photo_id = f"{i:06d}".ljust(3 + MAX_ID // 2, "é")
                assert len(photo_id.encode()) == MAX_ID
            elif r == 3:  # not Cc, so allowed: no-break space, zero-width space, line separator
                photo_id = f"u{i:06d}\u00a0a\u200bb\u2028c"
            elif r == 4:
                photo_id = f"photo #{i} / ok ?"
            photo_id, h = self.take(photo_id)
            event: dict[str, Any] = {"id": photo_id, "hash": h}
            key: bytes | None = photo_id.encode()
            if r == 5:
                event["hash"] = h.hex().upper()
            elif r == 6:
                event |= {"source": "cam-7", "v": 2, "meta": {"nested": [1, {"x": None}], "b": b"\x00"}}
            elif r == 7:  # an unknown field that is not valid UTF-8 is ignored like any unknown field
                event["note"] = "caf\udce9 " + chr(0xDC80 + rng.randrange(0x80))
            elif r == 8:
                event["ts"] = rng.choice([msgpack.Timestamp(1_700_000_000, 500), 0, 2**64 - 1, 1.7e9, None])
            elif r == 9:
                key = None
            elif r == 10:
                # keys are not checked (a valid event's outcome is keyed by its id)
                key = {10: rng.randbytes(100 * 1024), 130: b"k" * HUGE_KEY}.get(i, b"another-key")
            elif r == 11:  # a batch event of two unusual rows
                second, h2 = self.take()
                event = {"batch": [[photo_id, h.hex(), None], [second, h2, msgpack.Timestamp(1, 0)]],
                         "producer": {"name": "fuzz", "version": [1, 2]}}
                out.append(Event(key, pack(event), "valid_unusual", good=[photo_id, second]))
                continue
            out.append(Event(key, pack(event), "valid_unusual", good=[photo_id]))
        return out


class TimedDeadLetterReader(DeadLetterReader):
    """Also keeps the Kafka timestamp (ms) of every dead letter, for the throughput."""

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self.stamps: list[int] = []

    def poll(self, timeout: float = 0.5) -> list[Any]:
        messages = super().poll(timeout)
        self.stamps.extend(m.timestamp()[1] for m in messages)
        return messages

    def collect_until_quiet(self, n: int, timeout: float, quiet_s: float, workers: list[Any]) -> list[dict[str, Any]]:
        """Read until ``n`` letters are in (then to the end of the topic), or until none came for
        ``quiet_s`` seconds at the end of the topic: fewer letters than expected are then reported
        by the comparison, one by one, instead of a long wait and a list of everything."""
        deadline = time.monotonic() + timeout
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            messages = self.poll()
            self.letters.extend(decode_dlq(m.value()) for m in messages)
            for worker in workers:
                worker.check_alive()
            if messages:
                last_new = time.monotonic()
            elif self.at_end() and (len(self.letters) >= n or time.monotonic() - last_new > quiet_s):
                break
        return self.letters


class Watched:
    """A worker whose ``check_alive`` also fails as soon as its log says that an agent or the app
    crashed: Faust restarts a crashed agent inside a process that stays up, so a live process alone
    does not show that the stream is still processed."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self._read = 0  # bytes of the log scanned (whole lines only)
        self.crash: str | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.worker, name)

    def check_alive(self) -> None:
        self.worker.check_alive()
        if self.crash is None:
            with open(self.worker.log_path, "rb") as log:
                log.seek(self._read)
                data = log.read()
            end = data.rfind(b"\n") + 1
            self._read += end
            lines = data[:end].decode("utf-8", "replace").splitlines()
            self.crash = next((line for line in lines if "Crashed reason=" in line), None)
        if self.crash is not None:
            raise AssertionError(f"worker {self.worker.name} is up, but something in it crashed: "
                                 f"{self.crash[:600]}\n{self.worker.log_tail(80)}")


def build_stream() -> tuple[list[Event], list[str]]:
    """The whole input, shuffled, and the ids of every valid photo in it."""
    assert sum(KINDS.values()) == N_MALFORMED
    fuzz = Fuzz(SEED)
    events = fuzz.singles(N_SINGLE) + fuzz.batches(N_BATCHED, BATCH_ROWS) + fuzz.unusual(N_UNUSUAL)
    for kind, count in KINDS.items():
        events += [fuzz.malformed(kind) for _ in range(count)]
    fuzz.rng.shuffle(events)
    valid_ids = fuzz.valid_ids
    assert len(set(valid_ids)) == len(valid_ids)
    assert sorted(valid_ids) == sorted(i for e in events for i in e.good)
    return events, valid_ids


def test_ten_thousand_malformed_events_in_a_valid_stream(settings_factory, worker_factory):
    events, valid_ids = build_stream()
    malformed = [e for e in events if e.letters]
    assert len(malformed) == N_MALFORMED
    n_event_letters = sum(1 for e in events for row, _ in e.letters if row is None)
    n_row_letters = sum(1 for e in events for row, _ in e.letters if row is not None)
    n_mixed_good = sum(len(e.good) for e in events if e.kind == "mixed_batch")
    print(f"\n{len(events):,} events: {N_MALFORMED:,} malformed, one dead letter each ({n_event_letters:,} rejected "
          f"whole, {n_row_letters:,} bad rows), {len(valid_ids):,} valid photos ({n_mixed_good:,} of them in mixed batches)")

    settings = settings_factory(window_size=5000, partitions=2)
    worker = Watched(worker_factory(settings, name="fuzz"))
    producer = make_producer(settings, **{"message.max.bytes": 15 * 1024 * 1024})  # broker: 16 MiB
    placed: list[tuple[int, int]] = []
    started = time.monotonic()
    for start in range(0, len(events), 2000):  # in chunks, checking the worker between them
        chunk = events[start:start + 2000]
        placed += produce_events(settings, [(e.key, e.value) for e in chunk], producer=producer)
        worker.check_alive()
    produced = time.monotonic()

    letters_reader, assignments_reader = TimedDeadLetterReader(settings), AssignmentReader(settings)
    try:
        result = assignments_reader.collect(valid_ids, timeout=240, workers=[worker])
        assigned = time.monotonic()
        letters = letters_reader.collect_until_quiet(N_MALFORMED, timeout=120, quiet_s=10,
                                                     workers=[worker])
        lettered = time.monotonic()
    finally:
        letters_reader.close()
        assignments_reader.close()
    stamps = letters_reader.stamps
    span = (max(stamps) - min(stamps)) / 1000 if len(stamps) > 1 else math.nan
    print(f"produced in {produced - started:.1f}s; all outcomes read {assigned - started:.1f}s and all dead letters "
          f"{lettered - started:.1f}s after the first event was sent; {len(stamps):,} dead letters written over "
          f"{span:.1f}s (~{len(stamps) / span:,.0f}/s, interleaved with the valid stream)")

    # -- the dead-letter topic holds exactly the expected letters: one per malformed event
    by_place: dict[tuple[int, int], dict[str, Any]] = {}
    duplicated = []
    for letter in letters:
        place = (letter["partition"], letter["offset"])
        if place in by_place:
            duplicated.append(place)
        by_place[place] = letter
    assert not duplicated, f"{len(duplicated)} events dead-lettered more than once, e.g. {duplicated[:5]}"
    expected_places = set()
    problems: list[str] = []
    for event, place in zip(events, placed):
        if not event.letters:
            continue
        expected_places.add(place)
        letter = by_place.get(place)
        if letter is None:
            problems.append(f"{event.kind}: no dead letter at {place} for value {event.value[:80]!r}"
                            if event.value is not None else f"{event.kind}: no dead letter at {place}")
            continue
        listed = event.letters[:MAX_DLQ_REASONS]
        if [row for row, _ in letter["reasons"]] != [row for row, _ in listed]:
            problems.append(f"{event.kind} at {place}: rows {[r for r, _ in letter['reasons']]}, "
                            f"expected {[r for r, _ in listed]}")
        for (row, reasons), (_, reason) in zip(listed, letter["reasons"]):
            if not any(text in reason for text in reasons):
                problems.append(f"{event.kind} at {place} row {row}: reason {reason!r} has none of {reasons}")
        n_bad_rows = sum(row is not None for row, _ in event.letters)
        if letter["bad_rows"] != n_bad_rows:
            problems.append(f"{event.kind} at {place}: bad_rows {letter['bad_rows']}, expected {n_bad_rows}")
        if letter["topic"] != settings.input_topic:
            problems.append(f"{event.kind} at {place}: topic {letter['topic']!r}")
        for name, original in (("key", event.key), ("value", event.value)):
            if original is not None and len(original) > MAX_DLQ_VALUE_BYTES:
                ok = (letter[name] == original[:MAX_DLQ_VALUE_BYTES] and letter[f"{name}_truncated"] is True
                      and letter.get(f"{name}_size") == len(original))
            else:
                ok = letter[name] == original and not letter[f"{name}_truncated"]
            if not ok:
                problems.append(f"{event.kind} at {place}: the dead letter's {name} is not the original "
                                f"({len(original or b'')} bytes, got {len(letter[name] or b'')})")
    assert not problems, f"{len(problems)} problems with expected dead letters, e.g.:\n" + "\n".join(problems[:20])
    unexpected = [(place, by_place[place]["reason"]) for place in sorted(set(by_place) - expected_places, key=str)]
    assert not unexpected, f"{len(unexpected)} unexpected dead letters, e.g. {unexpected[:10]}"
    assert len(letters) == N_MALFORMED, (len(letters), N_MALFORMED)

    # -- every valid photo (the good rows of mixed batches too) has exactly one outcome, nothing else has one
    assert not result.bad, f"undecodable assignment events: {result.bad[:3]}"
    missing = [i for i in valid_ids if i not in result.final]
    assert not missing, f"{len(missing)} valid photos without an outcome, e.g. {missing[:5]}"
    never_valid = set(result.final) - set(valid_ids)
    assert not never_valid, f"outcomes for ids that were never valid photos: {sorted(never_valid)[:10]}"
    assert sum(result.duplicates.values()) == 0, f"ids with several outcomes: {result.duplicates.most_common(5)}"

    # -- the worker is alive and counted it all
    worker.check_alive()
    expected_stats = {"dlq_events": n_event_letters, "dlq_rows": n_row_letters, "photos_in": len(valid_ids),
                      "events_in": len(events)}

    def counted() -> dict[str, Any] | None:
        stats = worker.stats()
        return stats if stats and all(stats.get(k) == v for k, v in expected_stats.items()) else None

    try:
        stats = wait_for(counted, timeout=30, what=f"/stats counts {expected_stats}")
    except AssertionError:
        raise AssertionError(f"/stats {worker.stats()} does not count {expected_stats}") from None
    assert stats["ready"], stats
    worker.check_alive()
