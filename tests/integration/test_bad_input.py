"""Bad events interleaved with good ones: each bad event/row reaches the dead-letter topic with a
reason that names the problem, the good photos (and the good rows of a mixed batch) are clustered,
and the worker stays up."""

from __future__ import annotations

import os

import msgpack
import pytest
from kafka_support import AssignmentReader, DeadLetterReader, photo_ids, produce_events

from core.codes import to_bytes
from core.synth import planted_codes
from streams.codecs import encode_photo

pytestmark = pytest.mark.kafka

N_VALID = 3000
OVERSIZED_BYTES = 2 * 1024 * 1024


def test_bad_events_go_to_the_dead_letter_topic(settings_factory, worker_factory):
    settings = settings_factory()
    worker = worker_factory(settings, name="bad-input")
    codes, _, _ = planted_codes(N_VALID, 15, flip_prob=0.1, random_state=11)
    ids = photo_ids(0, N_VALID)
    hashes = to_bytes(codes)
    good = hashes[0]
    mixed_ids = ids[-3:]  # the good rows of the mixed batch
    oversized = msgpack.packb({"id": "oversized", "hash": good, "pad": os.urandom(OVERSIZED_BYTES)})

    # (key, value, [(row, reason substring), ...]) -- an empty list: a valid event
    bad: list[tuple[bytes | None, bytes | None, list[tuple[int | None, str]]]] = [
        (b"not-msgpack", b"\xc1 this is not msgpack", [(None, "not valid msgpack")]),
        (b"a-list", msgpack.packb(["p1", good]), [(None, "must be a msgpack map, got array")]),
        (b"no-id", msgpack.packb({"hash": good}), [(None, "field 'id': missing")]),
        (b"short-hash", msgpack.packb({"id": "short-hash", "hash": good[:31]}),
         [(None, "field 'hash': hash has 31 bytes, expected 32")]),
        (b"bad-hex", msgpack.packb({"id": "bad-hex", "hash": "zz" + good.hex()[2:]}),
         [(None, "field 'hash': hash has a non-hex character 'z'")]),
        (b"int-id", msgpack.packb({"id": 12345, "hash": good}), [(None, "field 'id': id must be a string, got integer")]),
        (b"float-hash", msgpack.packb({"id": "float-hash", "hash": 1.5}),
         [(None, "field 'hash': hash must be 32 raw bytes or a 64-digit hex string, got float")]),
        (b"empty-batch", msgpack.packb({"batch": []}), [(None, "empty batch")]),
        (b"mixed-batch", msgpack.packb({"batch": [
            [mixed_ids[0], hashes[-3]], [mixed_ids[1], hashes[-2]], [7, good],
            [mixed_ids[2], hashes[-1]], ["mixed-short", good[:31]]]}),
         [(2, "row 2: field 'id': id must be a string, got integer"),
          (4, "row 4: field 'hash': hash has 31 bytes, expected 32")]),
        (b"oversized", oversized, [(None, f"event of {len(oversized):,} bytes exceeds max_event_bytes=1,048,576")]),
        (b"tombstone", None, [(None, "event is empty (no value)")]),
        (b"zero-bytes", b"", [(None, "event is empty (0 bytes)")]),
    ]
    # valid photos as single events, with one bad event after every 250 of them
    events, expected = [], []
    valid = [(i.encode(), encode_photo(i, h)) for i, h in zip(ids[:-3], hashes[:-3])]
    per_gap = len(valid) // len(bad) + 1
    for n, (key, value, problems) in enumerate(bad):
        events += valid[n * per_gap:(n + 1) * per_gap]
        expected.append((len(events), key, value, problems))
        events.append((key, value))
    events += valid[len(bad) * per_gap:]
    assert len(events) == N_VALID - 3 + len(bad)
    placed = produce_events(settings, events)

    letters_reader, assignments_reader = DeadLetterReader(settings), AssignmentReader(settings)
    try:
        n_letters = len(expected)
        letters = letters_reader.collect(n_letters, timeout=90, workers=[worker])
        result = assignments_reader.collect(ids, timeout=90, workers=[worker])
    finally:
        letters_reader.close()
        assignments_reader.close()

    by_place = {(d["partition"], d["offset"]): d for d in letters}
    assert len(letters) == n_letters == len(by_place), (
        f"expected {n_letters} dead letters, one per bad event, got {len(letters)}: "
        f"{[(d['offset'], d['reasons']) for d in letters]}")
    for index, key, value, problems in expected:
        partition, offset = placed[index]
        letter = by_place.get((partition, offset))
        assert letter is not None, f"no dead letter for event {key!r} (partition {partition}, offset {offset})"
        assert [row for row, _ in letter["reasons"]] == [row for row, _ in problems], (key, letter["reasons"])
        for (row, text), (_, reason) in zip(problems, letter["reasons"]):
            assert text in reason, f"{key!r} row {row}: reason {reason!r} lacks {text!r}"
        assert (letter["row"], letter["reason"]) == tuple(letter["reasons"][0]), letter
        assert letter["bad_rows"] == sum(row is not None for row, _ in problems), letter
        assert letter["topic"] == settings.input_topic, letter["topic"]
        assert letter["key"] == key, (letter["key"], key)
        if value is not None and len(value) > 64 * 1024:
            assert letter["value_truncated"] is True and letter["value_size"] == len(value), key
            assert letter["value"] == value[:64 * 1024]
        else:
            assert letter["value"] == value and not letter["value_truncated"], key

    missing = [i for i in ids if i not in result.final]
    assert not missing, f"{len(missing)} valid photos without an outcome, e.g. {missing[:5]}"
    assert all(i in result.final for i in mixed_ids), "the good rows of the mixed batch were not assigned"
    unexpected = set(result.final) - set(ids)
    assert not unexpected, f"outcomes for ids that were never valid photos: {sorted(unexpected)}"
    assert sum(result.duplicates.values()) == 0, result.duplicates.most_common(3)

    worker.check_alive()
    stats = worker.stats()
    assert stats is not None and stats["ready"], "the worker's /stats does not respond after the bad input"
    assert stats["dlq_events"] == len(bad) - 1 and stats["dlq_rows"] == 2, stats
    assert stats["photos_in"] == N_VALID, stats
