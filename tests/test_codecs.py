"""Wire formats (streams.codecs): round trips, every rejection with its reason, and robustness."""

import math

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.codes import from_bytes, from_hex
from core.online import OnlineClusterer, Outcome
from core.synth import planted_codes
from streams.codecs import (
    FORWARD_CHUNK_BYTES,
    MAX_DLQ_REASONS,
    MAX_DLQ_VALUE_BYTES,
    DecodeResult,
    PhotoDecoder,
    decode_assignment,
    decode_dlq,
    decode_joins,
    encode_forwarded,
    encode_joins,
    encode_assignments,
    encode_batch,
    encode_dlq,
    encode_photo,
    window_records,
)

H32 = bytes(range(32))  # a valid 256-bit raw hash
X64 = H32.hex()  # the same as 64 hex digits


def reasons(result: DecodeResult) -> list[str]:
    return [reason for _, reason in result.errors]


def only_error(result: DecodeResult) -> str:
    assert result.ids == [] and result.hashes == [] and result.ts == []
    assert len(result.errors) == 1 and result.errors[0][0] is None, result.errors
    return result.errors[0][1]


def single(**fields) -> bytes:
    return msgpack.packb(fields)


# -- round trips ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n_bits", [64, 128, 256, 512])
def test_single_round_trip_raw_and_hex(n_bits):
    rng = np.random.default_rng(n_bits)
    dec = PhotoDecoder(n_bits=n_bits)
    h = rng.bytes(n_bits // 8)
    for wire in (h, h.hex(), h.hex().upper()):
        r = dec.decode(encode_photo("photo-1", wire, 1.7e9))
        assert (r.ids, r.hashes, r.ts, r.errors) == (["photo-1"], [h], [1.7e9], [])
    r = dec.decode(encode_photo("photo-1", h))
    assert r.ts == [None] and r.errors == []
    r = dec.decode(encode_photo("photo-1", h, 12))  # int seconds become float
    assert r.ts == [12.0] and type(r.ts[0]) is float


@pytest.mark.parametrize("n_bits", [64, 256])
@pytest.mark.parametrize("as_hex", [False, True])
def test_batch_round_trip_feeds_from_bytes(n_bits, as_hex):
    rng = np.random.default_rng(7)
    hashes = [rng.bytes(n_bits // 8) for _ in range(50)]
    rows = [(f"id{i}", h.hex() if as_hex else h, 1000.0 + i) for i, h in enumerate(hashes)]
    r = PhotoDecoder(n_bits=n_bits).decode(encode_batch(rows))
    assert r.errors == []
    assert r.ids == [f"id{i}" for i in range(50)]
    assert r.hashes == hashes
    assert r.ts == [1000.0 + i for i in range(50)]
    np.testing.assert_array_equal(from_bytes(r.hashes, n_bits), from_hex([h.hex() for h in hashes], n_bits))


def test_batch_rows_with_and_without_ts_mixed():
    rows = [("a", H32), ("b", X64, 5), ("c", H32, None), ("d", H32, 7.5)]
    r = PhotoDecoder().decode(encode_batch(rows))
    assert r.errors == []
    assert r.ids == ["a", "b", "c", "d"]
    assert r.hashes == [H32] * 4
    assert r.ts == [None, 5.0, None, 7.5]


def test_batch_without_any_ts_and_with_int_ts():
    r = PhotoDecoder().decode(encode_batch([("a", H32), ("b", H32)]))
    assert r.ts == [None, None] and r.errors == []
    r = PhotoDecoder().decode(msgpack.packb({"batch": [["a", H32, 1], ["b", H32, 2.5]]}))
    assert r.ts == [1.0, 2.5] and all(type(t) is float for t in r.ts)


def test_unusual_but_valid_inputs():
    dec = PhotoDecoder()
    # unknown keys are ignored (forward compatibility), also in a batch event
    r = dec.decode(single(id="x", hash=H32, ts=1.0, source="cam", v=2))
    assert r.ids == ["x"] and r.errors == []
    r = dec.decode(msgpack.packb({"batch": [["x", H32]], "producer": "p1"}))
    assert r.ids == ["x"] and r.errors == []
    # the key may differ from the id: the value's id wins
    r = dec.decode(encode_photo("from-value", H32), key=b"something-else")
    assert r.ids == ["from-value"] and r.errors == []
    # nil ts means absent; a msgpack timestamp extension is accepted
    assert dec.decode(single(id="x", hash=H32, ts=None)).ts == [None]
    stamp = msgpack.packb({"id": "x", "hash": H32, "ts": msgpack.Timestamp(1_700_000_000, 500_000_000)})
    assert dec.decode(stamp).ts == [1_700_000_000.5]
    # non-ASCII ids (measured in UTF-8 bytes), spaces, and bytearray/memoryview values
    r = dec.decode(encode_photo("фото 📷", H32))
    assert r.ids == ["фото 📷"] and r.errors == []
    assert dec.decode(bytearray(encode_photo("x", H32))).ids == ["x"]
    assert dec.decode(memoryview(encode_photo("x", H32))).ids == ["x"]
    r = PhotoDecoder(max_id_bytes=4).decode(encode_photo("éé", H32))  # 4 UTF-8 bytes: fits
    assert r.ids == ["éé"]


# -- whole-event rejections -----------------------------------------------------------------------


def test_empty_and_non_bytes_events():
    dec = PhotoDecoder()
    assert only_error(dec.decode(None)) == "event is empty (no value)"
    assert only_error(dec.decode(b"")) == "event is empty (0 bytes)"
    assert only_error(dec.decode("text")) == "event value must be bytes, got str"


def test_event_too_large():
    dec = PhotoDecoder()
    assert only_error(dec.decode(b"\x00" * 2_000_000)) == "event of 2,000,000 bytes exceeds max_event_bytes=1,048,576"
    event = encode_photo("x", H32)
    assert "exceeds max_event_bytes=10" in only_error(PhotoDecoder(max_event_bytes=10).decode(event))


def test_invalid_msgpack():
    dec = PhotoDecoder()
    assert only_error(dec.decode(b"\xc1")).startswith("not valid msgpack: malformed data")
    truncated = encode_photo("x", H32)[:-5]
    assert only_error(dec.decode(truncated)) == "not valid msgpack: Unpack failed: incomplete input"
    assert only_error(dec.decode(b"\x91" * 5000)) == "not valid msgpack: nested too deeply"
    bad_timestamp = b"\xc7\x03\xff\x00\x00\x00"
    assert only_error(dec.decode(bad_timestamp)).startswith("not valid msgpack: invalid timestamp")


def _bad_utf8(event: dict, good: str, bad: bytes) -> bytes:
    """``event`` packed, then the wire bytes of the string ``good`` replaced by ``bad`` (same length)."""
    packed = msgpack.packb(event)
    assert len(good.encode()) == len(bad) and packed.count(good.encode()) == 1
    return packed.replace(good.encode(), bad)


def test_invalid_utf8_in_an_id_rejects_that_row_only():
    dec = PhotoDecoder()
    # {"id": <ff fe>}: the id names the problem (it used to be "not valid msgpack" for the event)
    reason = only_error(dec.decode(b"\x81\xa2id\xa2\xff\xfe"))
    assert reason == "field 'id': id is not valid UTF-8 (invalid byte 0xff at byte 0)"
    event = _bad_utf8({"id": "photo-XY", "hash": H32}, "photo-XY", b"photo-\xc3(")
    assert only_error(dec.decode(event)) == "field 'id': id is not valid UTF-8 (invalid byte 0xc3 at byte 6)"
    # an encoded surrogate (CESU-8 style) is not valid UTF-8 either
    event = _bad_utf8({"id": "é-ABC", "hash": H32}, "ABC", b"\xed\xa0\x80")
    assert only_error(dec.decode(event)) == "field 'id': id is not valid UTF-8 (invalid byte 0xed at byte 3)"
    # in a batch, the other rows are kept
    batch = _bad_utf8({"batch": [["ok0", H32], ["bad-ZZ", H32], ["ok2", X64, 2.0]]}, "bad-ZZ", b"bad-\xff\xfe")
    r = dec.decode(batch)
    assert r.ids == ["ok0", "ok2"] and r.hashes == [H32, H32] and r.ts == [None, 2.0]
    assert r.errors == [(1, "row 1: field 'id': id is not valid UTF-8 (invalid byte 0xff at byte 4)")]


def test_invalid_utf8_elsewhere():
    dec = PhotoDecoder()
    # a hex hash
    event = _bad_utf8({"id": "x", "hash": "ab" * 31 + "QQ"}, "QQ", b"\xc3\xc3")
    assert only_error(dec.decode(event)) == "field 'hash': hash is not valid UTF-8 (invalid byte 0xc3 at byte 62)"
    batch = _bad_utf8({"batch": [["ok0", H32], ["r1", "cd" * 31 + "QQ"]]}, "QQ", b"\xff\xff")
    r = dec.decode(batch)
    assert r.ids == ["ok0"]
    assert r.errors == [(1, "row 1: field 'hash': hash is not valid UTF-8 (invalid byte 0xff at byte 62)")]
    # an unknown field, or an unknown map key, is ignored like any unknown field
    r = dec.decode(_bad_utf8({"id": "x", "hash": H32, "source": "cam-QQ"}, "cam-QQ", b"cam-\xff\xfe"))
    assert r.ids == ["x"] and r.errors == []
    r = dec.decode(_bad_utf8({"id": "x", "hash": H32, "QQsrc": 1}, "QQsrc", b"\xff\xffsrc"))
    assert r.ids == ["x"] and r.errors == []
    # a string ts is the wrong type whatever its bytes
    event = _bad_utf8({"id": "x", "hash": H32, "ts": "QQ"}, "QQ", b"\xff\xff")
    assert only_error(dec.decode(event)) == "field 'ts': ts must be a number of seconds since the epoch, got string"
    # a key that should have been "id" but is not valid UTF-8 is not "id"
    event = _bad_utf8({"iQ": "x", "hash": H32}, "iQ", b"i\xff")
    assert only_error(dec.decode(event)) == "field 'id': missing"


def test_trailing_bytes():
    event = encode_photo("x", H32) + b"\x01\x02\x03"
    assert only_error(PhotoDecoder().decode(event)) == "event has 3 trailing bytes after the first msgpack value"


@pytest.mark.parametrize(
    "value, reason",
    [
        ([1, 2], "event must be a msgpack map, got array"),
        (5, "event must be a msgpack map, got integer"),
        ("id", "event must be a msgpack map, got string"),
        (None, "event must be a msgpack map, got nil"),
        ({"name": "x"}, "event map has neither 'id' and 'hash' (single photo) nor 'batch'"),
        ({}, "event map has neither 'id' and 'hash' (single photo) nor 'batch'"),
        ({"batch": [["x", H32]], "id": "x"}, "event has both 'batch' and 'id'/'hash'; send a single photo or a batch"),
        ({"batch": {"x": H32}}, "field 'batch': must be an array of rows, got map"),
        ({"batch": H32}, "field 'batch': must be an array of rows, got binary"),
        ({"batch": []}, "empty batch"),
    ],
)
def test_event_shape_errors(value, reason):
    assert only_error(PhotoDecoder().decode(msgpack.packb(value))) == reason


def test_ext_types_are_named_as_such_not_as_arrays():
    # msgpack.ExtType is a namedtuple; the reasons must not call it an array
    ext = msgpack.ExtType(5, b"xy")
    dec = PhotoDecoder()
    assert only_error(dec.decode(msgpack.packb(ext))) == "event must be a msgpack map, got ext type 5"
    assert only_error(dec.decode(single(id=ext, hash=H32))) == "field 'id': id must be a string, got ext type 5"
    assert only_error(dec.decode(single(id="x", hash=ext))) == (
        "field 'hash': hash must be 32 raw bytes or a 64-digit hex string, got ext type 5"
    )
    assert only_error(dec.decode(single(id="x", hash=H32, ts=ext))) == (
        "field 'ts': ts must be a number of seconds since the epoch, got ext type 5"
    )
    reason = only_error(dec.decode(msgpack.packb({"batch": ext})))
    assert reason == "field 'batch': must be an array of rows, got ext type 5"
    r = dec.decode(msgpack.packb({"batch": [["a", H32], ext]}))
    assert r.ids == ["a"] and r.errors == [(1, "row 1: must be an array [id, hash] or [id, hash, ts], got ext type 5")]


def test_too_many_batch_rows():
    dec = PhotoDecoder(max_batch_rows=3)
    assert only_error(dec.decode(encode_batch([("x", H32)] * 4))) == "batch has 4 rows, more than max_batch_rows=3"
    reason = only_error(dec.decode(encode_batch([("x", H32)] * 10)))
    assert reason.startswith("event holds an array longer than max_batch_rows=3")
    assert dec.decode(encode_batch([("x", H32)] * 3)).ids == ["x"] * 3


def test_too_many_map_keys():
    event = msgpack.packb({f"k{i}": i for i in range(2000)} | {"id": "x", "hash": H32})
    assert only_error(PhotoDecoder().decode(event)).startswith("event holds a map with more than 1,024 keys")


def test_unhashable_map_key_is_handled():
    # {[1]: 2}: an array as a map key, legal msgpack
    r = PhotoDecoder().decode(b"\x81\x91\x01\x02")
    assert only_error(r) == "event map has neither 'id' and 'hash' (single photo) nor 'batch'"


# -- field rejections -----------------------------------------------------------------------------


SINGLE_ERRORS = [
    ({"hash": H32}, "field 'id': missing"),
    ({"id": 17, "hash": H32}, "field 'id': id must be a string, got integer"),
    ({"id": b"raw", "hash": H32}, "field 'id': id must be a string, got binary"),
    ({"id": "", "hash": H32}, "field 'id': id is empty"),
    ({"id": "x" * 513, "hash": H32}, "field 'id': id has 513 UTF-8 bytes, more than max_id_bytes=512"),
    ({"id": "é" * 300, "hash": H32}, "field 'id': id has 600 UTF-8 bytes, more than max_id_bytes=512"),
    ({"id": "a\x00b", "hash": H32}, "field 'id': id contains the control character '\\x00' at position 1"),
    ({"id": "ab\n", "hash": H32}, "field 'id': id contains the control character '\\n' at position 2"),
    ({"id": "é\x85", "hash": H32}, "field 'id': id contains the control character '\\x85' at position 1"),
    ({"id": "x"}, "field 'hash': missing"),
    ({"id": "x", "hash": None}, "field 'hash': hash must be 32 raw bytes or a 64-digit hex string, got nil"),
    ({"id": "x", "hash": 12345}, "field 'hash': hash must be 32 raw bytes or a 64-digit hex string, got integer"),
    ({"id": "x", "hash": [1, 2]}, "field 'hash': hash must be 32 raw bytes or a 64-digit hex string, got array"),
    ({"id": "x", "hash": H32[:31]}, "field 'hash': hash has 31 bytes, expected 32 for 256-bit codes"),
    ({"id": "x", "hash": H32 + b"\x00"}, "field 'hash': hash has 33 bytes, expected 32 for 256-bit codes"),
    ({"id": "x", "hash": X64[:63]}, "field 'hash': hash has 63 hex digits, expected 64 for 256-bit codes"),
    ({"id": "x", "hash": ""}, "field 'hash': hash has 0 hex digits, expected 64 for 256-bit codes"),
    ({"id": "x", "hash": X64[:10] + "g" + X64[11:]}, "field 'hash': hash has a non-hex character 'g' at position 10"),
    ({"id": "x", "hash": X64[:10] + " " + X64[11:]}, "field 'hash': hash has a non-hex character ' ' at position 10"),
    ({"id": "x", "hash": H32, "ts": "2024-01-01"}, "field 'ts': ts must be a number of seconds since the epoch, got string"),
    ({"id": "x", "hash": H32, "ts": True}, "field 'ts': ts must be a number of seconds since the epoch, got boolean"),
    ({"id": "x", "hash": H32, "ts": -1}, "field 'ts': ts must not be negative, got -1.0"),
    ({"id": "x", "hash": H32, "ts": -0.5}, "field 'ts': ts must not be negative, got -0.5"),
    ({"id": "x", "hash": H32, "ts": math.nan}, "field 'ts': ts must be finite, got nan"),
    ({"id": "x", "hash": H32, "ts": math.inf}, "field 'ts': ts must be finite, got inf"),
]


@pytest.mark.parametrize("fields, reason", SINGLE_ERRORS)
def test_single_event_field_errors(fields, reason):
    assert only_error(PhotoDecoder().decode(msgpack.packb(fields))) == reason


@pytest.mark.parametrize("fields, reason", [(f, r) for f, r in SINGLE_ERRORS if "id" in f and "hash" in f])
def test_the_same_field_errors_in_a_batch_row(fields, reason):
    row = [fields["id"], fields["hash"]] + ([fields["ts"]] if "ts" in fields else [])
    r = PhotoDecoder().decode(msgpack.packb({"batch": [["ok0", H32], row, ["ok2", X64, 3]]}))
    assert r.ids == ["ok0", "ok2"] and r.hashes == [H32, H32] and r.ts == [None, 3.0]
    assert r.errors == [(1, f"row 1: {reason}")]


def test_64_bit_messages():
    dec = PhotoDecoder(n_bits=64)
    assert only_error(dec.decode(single(id="x", hash=H32))) == "field 'hash': hash has 32 bytes, expected 8 for 64-bit codes"
    assert only_error(dec.decode(single(id="x", hash=X64))) == "field 'hash': hash has 64 hex digits, expected 16 for 64-bit codes"
    assert only_error(dec.decode(single(id="x", hash=1))) == (
        "field 'hash': hash must be 8 raw bytes or a 16-digit hex string, got integer"
    )


def test_batch_keeps_good_rows_in_order():
    rows = [
        ["r0", H32, 1.0],
        ["r1", X64[:63]],  # bad hash
        "not a row",
        ["r3", H32, 3.0, "extra"],
        ["r4"],
        ["r5", X64.upper()],
        ["", H32],
        ["r7", H32, -3],
        ["r8", H32, 8],
        7,
    ]
    r = PhotoDecoder().decode(msgpack.packb({"batch": rows}))
    assert r.ids == ["r0", "r5", "r8"]
    assert r.hashes == [H32, H32, H32]
    assert r.ts == [1.0, None, 8.0]
    assert r.errors == [
        (1, "row 1: field 'hash': hash has 63 hex digits, expected 64 for 256-bit codes"),
        (2, "row 2: must be an array [id, hash] or [id, hash, ts], got string"),
        (3, "row 3: must be an array [id, hash] or [id, hash, ts], got 4 elements"),
        (4, "row 4: must be an array [id, hash] or [id, hash, ts], got 1 elements"),
        (6, "row 6: field 'id': id is empty"),
        (7, "row 7: field 'ts': ts must not be negative, got -3.0"),
        (9, "row 9: must be an array [id, hash] or [id, hash, ts], got integer"),
    ]


def test_constructor_checks_its_settings():
    with pytest.raises(ValueError, match="n_bits=100"):
        PhotoDecoder(n_bits=100)
    for name in ("max_event_bytes", "max_id_bytes", "max_batch_rows"):
        with pytest.raises(ValueError, match=name):
            PhotoDecoder(**{name: 0})


# -- robustness: decode never raises --------------------------------------------------------------


def check_well_formed(result: DecodeResult, n_bytes: int = 32) -> None:
    assert isinstance(result, DecodeResult)
    assert len(result.ids) == len(result.hashes) == len(result.ts)
    assert all(type(i) is str and i for i in result.ids)
    for i in result.ids:
        i.encode("utf-8")  # strictly: no surrogate escapes of bad UTF-8 in an accepted id
    assert all(type(h) is bytes and len(h) == n_bytes for h in result.hashes)
    assert all(t is None or (type(t) is float and 0 <= t < math.inf) for t in result.ts)
    for row, reason in result.errors:
        assert row is None or (type(row) is int and row >= 0)
        assert type(reason) is str and reason and not reason.startswith("internal error")


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_decode_never_raises_on_random_bytes(data):
    check_well_formed(PhotoDecoder().decode(data))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_decode_never_raises_on_mutated_valid_events(noise):
    event = encode_batch([("a", H32, 1.0), ("b", X64)])
    position = len(noise) % len(event)
    mutated = event[:position] + noise + event[position + len(noise) // 2 :]
    check_well_formed(PhotoDecoder().decode(mutated))


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=70)
    | st.binary(max_size=40)
    | st.sampled_from([H32, X64, "x", "", "a\x00", H32[:31], X64[:63], -1, 1.5])
)
nested = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=5) | st.sampled_from(["id", "hash", "ts", "batch"]), children, max_size=5),
    max_leaves=25,
)
rows = st.lists(scalars, min_size=0, max_size=4) | scalars
events = st.one_of(
    nested,
    st.fixed_dictionaries({"id": scalars, "hash": scalars}, optional={"ts": scalars, "x": nested}),
    st.fixed_dictionaries({"batch": st.lists(rows, max_size=8) | nested}),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events)
def test_decode_never_raises_on_random_structures(event):
    check_well_formed(PhotoDecoder().decode(msgpack.packb(event)))


row_values = st.tuples(
    st.sampled_from(["ok", "é", "", "a\x01", "x" * 600, 5, None, b"id"]),
    st.sampled_from([H32, X64, X64.upper(), H32[:5], X64[:3] + "z" + X64[4:], 7, None]),
    st.sampled_from([None, 0, 1, 2.5, -1, math.nan, "t", False, 2**64 - 1, "absent"]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(row_values, min_size=1, max_size=12))
def test_batch_rows_agree_with_single_events(rows_):
    """The column-wise fast path, the row loop and single events give the same verdicts."""
    dec = PhotoDecoder()
    wire_rows = [[i, h] if t == "absent" else [i, h, t] for i, h, t in rows_]
    result = dec.decode(msgpack.packb({"batch": wire_rows}))
    check_well_formed(result)
    expected_ids, expected_hashes, expected_ts, expected_errors = [], [], [], []
    for n, (i, h, t) in enumerate(rows_):
        fields = {"id": i, "hash": h} if t == "absent" else {"id": i, "hash": h, "ts": t}
        one = dec.decode(msgpack.packb(fields))
        expected_ids += one.ids
        expected_hashes += one.hashes
        expected_ts += one.ts
        expected_errors += [(n, f"row {n}: {reason}") for _, reason in one.errors]
    assert result.ids == expected_ids
    assert result.hashes == expected_hashes
    assert result.ts == expected_ts
    assert result.errors == expected_errors


# -- encoders -------------------------------------------------------------------------------------


def test_input_encoders_check_types():
    with pytest.raises(TypeError, match="id must be a str"):
        encode_photo(5, H32)
    with pytest.raises(TypeError, match="hash must be bytes or a hex string"):
        encode_photo("x", 5)
    with pytest.raises(TypeError, match="ts must be a number"):
        encode_photo("x", H32, "now")
    with pytest.raises(ValueError, match="empty batch"):
        encode_batch([])
    with pytest.raises(ValueError, match="row 1: expected"):
        encode_batch([("a", H32), ("b",)])
    assert msgpack.unpackb(encode_photo("x", bytearray(H32), np.float64(2.0))) == {"id": "x", "hash": H32, "ts": 2.0}


def test_assignments_round_trip_from_codes_and_names():
    ids = ["a", "b", "c"]
    codes = np.array([Outcome.JOINED, Outcome.FOUNDED, Outcome.NOISE], dtype=np.uint8)
    clusters = np.array([4, 9, -1])
    distances = np.array([3, 0, -1], dtype=np.int32)
    values = encode_assignments(ids, codes, clusters, distances, 12, np.array([1.0, 2.0, 3.0]), 10.5)
    expected = [
        {"id": "a", "cluster": 4, "distance": 3, "outcome": "joined", "window": 12, "ts_in": 1.0, "ts_out": 10.5},
        {"id": "b", "cluster": 9, "distance": 0, "outcome": "founded", "window": 12, "ts_in": 2.0, "ts_out": 10.5},
        {"id": "c", "cluster": None, "distance": None, "outcome": "noise", "window": 12, "ts_in": 3.0, "ts_out": 10.5},
    ]
    assert [decode_assignment(v) for v in values] == expected
    assert [msgpack.unpackb(v) for v in values] == expected  # plain msgpack maps
    by_name = encode_assignments(
        ids, ["joined", "founded", "noise"], [4, 9, None], [3, 0, None], 12, [1.0, 2.0, 3.0], [10.5] * 3
    )
    assert by_name == values
    assert encode_assignments(ids, [Outcome.JOINED, Outcome.FOUNDED, Outcome.NOISE], clusters, distances, 12, [1, 2, 3], 10.5) == values
    assert encode_assignments([], [], [], [], 0, [], 1.0) == []


def test_assignments_reject_held_and_inconsistent_rows():
    one = dict(clusters=[1], distances=[2], window=0, ts_in=1.0, ts_out=2.0)
    with pytest.raises(ValueError, match="HELD is not final"):
        encode_assignments(["a"], np.array([Outcome.HELD], dtype=np.uint8), **one)
    with pytest.raises(ValueError, match="'held' is not final"):
        encode_assignments(["a"], ["held"], **one)
    with pytest.raises(ValueError, match="unknown outcome 'lost'"):
        encode_assignments(["a"], ["lost"], **one)
    with pytest.raises(ValueError, match="unknown outcome code 9"):
        encode_assignments(["a"], [9], **one)
    with pytest.raises(ValueError, match="row 0: a noise row"):
        encode_assignments(["a"], ["noise"], **one)
    with pytest.raises(ValueError, match="row 1: a joined/founded row"):
        encode_assignments(["a", "b"], ["joined", "founded"], [1, -1], [2, -1], 0, 1.0, 2.0)
    with pytest.raises(ValueError, match="expected \\(2,\\)"):
        encode_assignments(["a", "b"], ["joined", "joined"], [1], [2, 2], 0, 1.0, 2.0)
    with pytest.raises(ValueError, match="window=-1"):
        encode_assignments(["a"], ["joined"], [1], [2], -1, 1.0, 2.0)
    with pytest.raises(ValueError, match="ts_out=nan must be finite"):
        encode_assignments(["a"], ["joined"], [1], [2], 0, 1.0, math.nan)
    with pytest.raises(TypeError, match="row 0: id must be a str"):
        encode_assignments([7], ["joined"], [1], [2], 0, 1.0, 2.0)


def test_assignments_large_batch():
    n = 100_000
    rng = np.random.default_rng(1)
    outcome = rng.choice(np.array([0, 1, 3], dtype=np.uint8), n)
    cluster = np.where(outcome == 3, -1, rng.integers(0, 10**6, n))
    distance = np.where(outcome == 3, -1, rng.integers(0, 65, n))
    ids = [f"p{i}" for i in range(n)]
    values = encode_assignments(ids, outcome, cluster, distance, 3, rng.random(n), 5.0)
    assert len(values) == n
    for i in (0, n // 2, n - 1):
        got = decode_assignment(values[i])
        assert got["id"] == ids[i] and got["outcome"] == ("joined", "founded", None, "noise")[outcome[i]]
        assert got["cluster"] == (None if outcome[i] == 3 else cluster[i])


def test_decode_assignment_rejects_garbage():
    with pytest.raises(ValueError, match="not valid msgpack"):
        decode_assignment(b"\xc1")
    with pytest.raises(ValueError, match="must be a msgpack map"):
        decode_assignment(msgpack.packb([1]))
    with pytest.raises(ValueError, match="lacks field"):
        decode_assignment(msgpack.packb({"id": "a"}))
    good = {"id": "a", "cluster": 1, "distance": 2, "outcome": "joined", "window": 0, "ts_in": 1.0, "ts_out": 2.0}
    with pytest.raises(ValueError, match="unknown outcome 'held'"):
        decode_assignment(msgpack.packb(good | {"outcome": "held"}))
    with pytest.raises(ValueError, match="'cluster': must be nil for noise"):
        decode_assignment(msgpack.packb(good | {"outcome": "noise"}))


# -- dead letters ---------------------------------------------------------------------------------


def test_dlq_round_trip():
    value = b"\xc1garbage"
    record = decode_dlq(encode_dlq([(None, "not valid msgpack: x")], "photo-hashes", 3, 12345, b"k1", value))
    assert record == {
        "reason": "not valid msgpack: x",
        "row": None,
        "bad_rows": 0,
        "reasons": [[None, "not valid msgpack: x"]],
        "topic": "photo-hashes",
        "partition": 3,
        "offset": 12345,
        "key": b"k1",
        "value": value,
        "key_truncated": False,
        "value_truncated": False,
    }
    record = decode_dlq(encode_dlq([(2, "row 2: field 'id': id is empty")], "t", 0, 0, None, None))
    assert record["row"] == 2 and record["bad_rows"] == 1 and record["key"] is None and record["value"] is None


def test_dlq_is_one_bounded_record_per_event():
    """100,000 bad rows give one record that counts them all and lists the first few reasons."""
    errors = [(row, f"row {row}: field 'id': missing") for row in range(100_000)]
    value = msgpack.packb({"batch": [None] * 100_000})
    raw = encode_dlq(errors, "t", 0, 7, b"k", value)
    assert len(raw) < MAX_DLQ_VALUE_BYTES + MAX_DLQ_REASONS * 5000
    record = decode_dlq(raw)
    assert record["bad_rows"] == 100_000
    assert record["reasons"] == [[row, f"row {row}: field 'id': missing"] for row in range(MAX_DLQ_REASONS)]
    assert (record["row"], record["reason"]) == (0, "row 0: field 'id': missing")
    long_reason = decode_dlq(encode_dlq([(None, "x" * 10_000)], "t", 0, 7, None, None))
    assert len(long_reason["reason"]) == 4096 and len(long_reason["reasons"][0][1]) == 4096


def test_dlq_reads_records_of_one_problem_each():
    """Dead letters written before one record per event had no ``reasons``/``bad_rows``."""
    old = msgpack.packb({"reason": "row 3: bad", "row": 3, "topic": "t", "partition": 0, "offset": 1,
                         "key": None, "value": None})
    record = decode_dlq(old)
    assert record["reasons"] == [[3, "row 3: bad"]] and record["bad_rows"] == 1


def test_dlq_truncates_large_values():
    value = bytes(range(256)) * 1000  # 256,000 bytes
    raw = encode_dlq([(None, "event of 256,000 bytes exceeds ...")], "t", 0, 7, b"k", value)
    assert len(raw) < MAX_DLQ_VALUE_BYTES + 1024
    record = msgpack.unpackb(raw)
    assert record["value"] == value[:MAX_DLQ_VALUE_BYTES]
    assert record["value_truncated"] is True and record["value_size"] == 256_000
    assert "key_truncated" not in record  # flags only when truncated
    exact = msgpack.unpackb(encode_dlq([(None, "r")], "t", 0, 7, None, value[:MAX_DLQ_VALUE_BYTES]))
    assert "value_truncated" not in exact and len(exact["value"]) == MAX_DLQ_VALUE_BYTES
    big_key = decode_dlq(encode_dlq([(None, "r")], "t", 0, 7, b"k" * 70_000, b"v"))
    assert big_key["key_truncated"] is True and big_key["key_size"] == 70_000
    small = decode_dlq(encode_dlq([(None, "r")], "t", 0, 7, None, b"0123456789", max_value_bytes=4))
    assert small["value"] == b"0123" and small["value_size"] == 10


def test_dlq_checks_arguments():
    with pytest.raises(TypeError, match="reason must be a str"):
        encode_dlq([(None, None)], "t", 0, 0, None, b"")
    with pytest.raises(ValueError, match="non-empty sequence"):
        encode_dlq([], "t", 0, 0, None, b"")
    with pytest.raises(TypeError, match="offset must be an integer"):
        encode_dlq([(None, "r")], "t", 0, "5", None, b"")
    with pytest.raises(ValueError, match="row=-1"):
        encode_dlq([(-1, "r")], "t", 0, 0, None, b"")
    with pytest.raises(ValueError, match="lacks field"):
        decode_dlq(msgpack.packb({"reason": "r"}))


ascii_ids = st.text(st.characters(min_codepoint=0, max_codepoint=127), min_size=0, max_size=6)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(ascii_ids, min_size=1, max_size=10),
    st.sampled_from(["raw", "hex", "HEX", "short", "mixed"]),
    st.sampled_from(["absent", "float", "int", "mixed", "nil", "negative", "nan"]),
)
def test_column_fast_path_matches_row_loop(ids, hash_kind, ts_kind):
    """Batches shaped for the column-wise path decode exactly like the row-by-row loop."""
    dec = PhotoDecoder(max_id_bytes=5)
    rows = []
    for n, rid in enumerate(ids):
        h = {"raw": H32, "hex": X64, "HEX": X64.upper(), "short": H32[:-1], "mixed": (H32, X64)[n % 2]}[hash_kind]
        ts = {"absent": None, "float": 1.5 * n, "int": n, "mixed": (n, 0.5)[n % 2], "nil": None,
              "negative": -float(n), "nan": math.nan if n == 1 else 1.0}[ts_kind]
        rows.append([rid, h] if ts_kind == "absent" else [rid, h, ts])
    event = msgpack.packb({"batch": rows})
    batch = msgpack.unpackb(event, use_list=False)["batch"]
    by_rows = dec._decode_batch_rows(batch)
    assert dec.decode(event) == by_rows
    bulk = dec._decode_batch_bulk(batch)
    if bulk is not None:
        assert bulk == by_rows and bulk.errors == []
    elif not by_rows.errors:
        assert hash_kind == "mixed" or ts_kind == "nil"  # only mixed columns leave the fast path when all is valid


@pytest.mark.parametrize("rows", [[("a", H32), ("b", H32)], [("a", X64, 1), ("b", X64.upper(), 2.5)], [("a", H32, 0.0)]])
def test_plain_batches_take_the_column_fast_path(rows):
    dec = PhotoDecoder()
    batch = msgpack.unpackb(encode_batch(rows), use_list=False)["batch"]
    assert dec._decode_batch_bulk(batch) == dec._decode_batch_rows(batch)
    assert dec._decode_batch_bulk(batch).errors == []


# -- the unjoined topic ---------------------------------------------------------------------------


def test_forwarded_photos_decode_as_batch_events_with_their_ts_in():
    ids = [f"p{i}" for i in range(25_000)] + ["\u00e9" * 250]  # a long non-ASCII id at the end
    hashes = [bytes([i % 256]) * 32 for i in range(len(ids))]
    ts = [1000.0 + i for i in range(len(ids))]
    events = encode_forwarded(ids, hashes, ts)
    assert len(events) >= 3 and all(len(event) <= FORWARD_CHUNK_BYTES + 4096 for event in events)
    decoder = PhotoDecoder()
    decoded = [decoder.decode(event) for event in events]
    assert all(not d.errors for d in decoded)
    assert [i for d in decoded for i in d.ids] == ids
    assert [h for d in decoded for h in d.hashes] == hashes
    assert [t for d in decoded for t in d.ts] == ts
    assert encode_forwarded([], [], []) == []


def test_join_counts_round_trip_and_are_checked():
    value = encode_joins(np.array([3, 9]), np.array([2, 1]), 123.5)
    clusters, counts, ts = decode_joins(value)
    assert clusters.tolist() == [3, 9] and counts.tolist() == [2, 1] and ts == 123.5
    with pytest.raises(ValueError, match="must be 1-D of one length"):
        encode_joins(np.array([1, 2]), np.array([1]), 0.0)
    with pytest.raises(ValueError, match="join counts field 'counts'"):
        decode_joins(msgpack.packb({"clusters": b"\x00" * 8, "counts": "x", "ts": 1.0}))
    with pytest.raises(ValueError, match="3 clusters but 1 counts"):
        decode_joins(msgpack.packb({"clusters": b"\x00" * 24, "counts": b"\x00" * 8, "ts": 1.0}))
    with pytest.raises(ValueError, match="'ts'"):
        decode_joins(msgpack.packb({"clusters": b"", "counts": b"", "ts": float("nan")}))


def test_window_records_key_the_final_outcomes_and_keep_a_retried_photos_first_ts():
    """New photos carry the ts_in given for them; a pending photo that gets its outcome in a later
    window carries the time the window that first saw it ran; held photos get no record yet."""
    rng = np.random.default_rng(3)
    clusterer = OnlineClusterer(window_size=400, new_centers_ratio=0.05, radius=40, min_cluster_size=10,
                                pending_capacity=200, random_state=0)
    planted, _, _ = planted_codes(300, 15, flip_prob=0.05, random_state=1)
    loners = rng.integers(0, 2**63, size=(40, 4), dtype=np.int64).astype(np.uint64)
    first = np.concatenate((planted[:200], loners))
    ids1 = [f"a-{i}" for i in range(len(first))]
    ts1 = (1000.0 + np.arange(len(first))).tolist()
    result1 = clusterer.process(ids1, first, now=5000.0)
    records1 = window_records(result1, ts1, 7000.0)
    final1 = [result1.ids[i] for i in np.flatnonzero(result1.is_final)]
    assert [key.decode() for key, _ in records1] == final1
    assert result1.n_held > 0  # the loners wait in the pending pool
    for key, value in records1:
        row = decode_assignment(value)
        assert row["id"] == key.decode() and row["ts_in"] == ts1[ids1.index(row["id"])] and row["ts_out"] == 7000.0

    ids2 = [f"b-{i}" for i in range(100)]
    ts2 = (2000.0 + np.arange(100)).tolist()
    result2 = clusterer.process(ids2, planted[200:], now=6000.0)
    records2 = window_records(result2, ts2, 8000.0)
    assert [key.decode() for key, _ in records2] == [result2.ids[i] for i in np.flatnonzero(result2.is_final)]
    retried = [decode_assignment(value) for key, value in records2 if key.startswith(b"a-")]
    assert retried  # pending photos of window 1 got their outcome in window 2
    assert all(row["ts_in"] == 5000.0 for row in retried)
    assert all(row["ts_in"] == ts2[ids2.index(row["id"])] for key, value in records2 if key.startswith(b"b-")
               for row in [decode_assignment(value)])
