"""Dead letters are bounded and part of their event's commit sequence (real broker).

* A batch event of 100,000 nil rows is one dead letter (counting the rows, listing the first
  reasons), and valid photos sent after it are still assigned.
* A dead letter the broker refuses (the dead-letter topic's max.message.bytes is smaller than the
  record) stops the worker before it commits past the bad event: the group's committed offset
  stays at or below it. Once the topic takes the record, a restarted worker writes it and
  carries on, so nothing is lost.
"""

from __future__ import annotations

import os

import msgpack
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic
from kafka_support import READY_TIMEOUT_S, AssignmentReader, DeadLetterReader, photo_events, photo_ids, produce_events, wait_for

from core.codes import to_bytes
from core.synth import planted_codes
from streams.codecs import MAX_DLQ_REASONS, MAX_DLQ_VALUE_BYTES

pytestmark = pytest.mark.kafka


def _outcomes_and_one_dead_letter(settings, ids, worker):
    """Wait for every id's outcome and for (at least) one dead letter; returns both."""
    letters_reader, assignments_reader = DeadLetterReader(settings), AssignmentReader(settings)
    try:
        result = assignments_reader.collect(ids, timeout=90, workers=[worker])
        return result, letters_reader.collect(1, timeout=30, workers=[worker])
    finally:
        letters_reader.close()
        assignments_reader.close()


def test_a_batch_of_100000_bad_rows_is_one_dead_letter(settings_factory, worker_factory):
    settings = settings_factory()
    worker = worker_factory(settings, name="bomb")
    codes, _, _ = planted_codes(2000, 20, flip_prob=0.1, random_state=3)
    ids, hashes = photo_ids(0, 2000), to_bytes(codes)
    bomb = msgpack.packb({"batch": [None] * 100_000})
    placed = produce_events(settings, [(b"bomb", bomb)] + photo_events(ids, hashes, batch_size=500))

    result, letters = _outcomes_and_one_dead_letter(settings, ids, worker)
    assert len(letters) == 1, f"{len(letters)} dead letters for one bad event"
    letter = letters[0]
    assert (letter["partition"], letter["offset"]) == placed[0]
    assert letter["bad_rows"] == 100_000
    assert len(letter["reasons"]) == MAX_DLQ_REASONS
    assert [row for row, _ in letter["reasons"]] == list(range(MAX_DLQ_REASONS))
    assert letter["value"] == bomb[:MAX_DLQ_VALUE_BYTES] and letter["value_size"] == len(bomb)
    assert not [i for i in ids if i not in result.final], "valid photos after the bomb were not assigned"
    stats = wait_for(lambda: (s := worker.stats()) and s["dlq_rows"] == 100_000 and s, 30, what="/stats dlq_rows")
    assert stats["dlq_events"] == 0, stats
    worker.check_alive()


def _committed(settings, partition: int = 0) -> int:
    consumer = Consumer(settings.confluent_config(**{"group.id": settings.app_id, "isolation.level": "read_uncommitted"}))
    try:
        return consumer.committed([TopicPartition(settings.input_topic, partition)], timeout=10)[0].offset
    finally:
        consumer.close()


def test_a_refused_dead_letter_stops_the_commit_before_its_event(settings_factory, worker_factory):
    settings = settings_factory()
    admin = AdminClient(settings.confluent_config())
    # Every dead letter carries (up to 64 KiB of) its event: 2,000 random (incompressible) bytes of
    # it do not fit in 1,000.
    topic = NewTopic(settings.dlq_topic, 1, 1, config={"max.message.bytes": "1000"})
    for future in admin.create_topics([topic]).values():
        future.result(30)
    codes, _, _ = planted_codes(3000, 30, flip_prob=0.1, random_state=4)
    ids, hashes = photo_ids(0, 3000), to_bytes(codes)
    good = photo_events(ids, hashes, batch_size=500)
    bad = (b"too-big", msgpack.packb({"id": 1, "hash": b"x", "pad": os.urandom(2000)}))
    placed = produce_events(settings, good[:2] + [bad] + good[2:])
    bad_offset = placed[2][1]

    worker = worker_factory(settings, name="refused", wait=False)
    worker.proc.wait(READY_TIMEOUT_S + 60)
    assert worker.proc.returncode != 0, "the worker carried on after the broker refused a dead letter"
    committed = _committed(settings)
    assert committed <= bad_offset, f"offset {committed} committed past the event {bad_offset} whose dead letter was refused"

    # The topic now takes it: a new worker writes the dead letter and assigns every photo.
    entry = ConfigEntry("max.message.bytes", "1048576", incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource(ConfigResource.Type.TOPIC, settings.dlq_topic, incremental_configs=[entry])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)
    worker_2 = worker_factory(settings, name="after")
    result, letters = _outcomes_and_one_dead_letter(settings, ids, worker_2)
    assert [(d["offset"], d["reason"]) for d in letters] == [(bad_offset, letters[0]["reason"])], letters
    assert "field 'id'" in letters[0]["reason"], letters[0]["reason"]
    assert not [i for i in ids if i not in result.final]
