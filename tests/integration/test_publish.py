"""The worker's output producer on the real broker: a window's records all arrive, and a record the
broker refuses fails the publish, so that the window is not acknowledged (its photos are then
redelivered). Delivery reports come only for failures, so this is the test that they still come."""

from __future__ import annotations

import os

import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from kafka_support import TopicReader, wait_for

from streams.kafka_io import RecordPublisher

pytestmark = pytest.mark.kafka


def _create_topics(settings, *topics: NewTopic) -> None:
    admin = AdminClient(settings.confluent_config())
    for future in admin.create_topics(list(topics)).values():
        future.result(timeout=30)


def test_publish_delivers_every_record_and_fails_on_a_refused_one(settings_factory) -> None:
    settings = settings_factory()
    roomy, tight = settings.output_topic, settings.output_topic + ".tight"
    _create_topics(settings, NewTopic(roomy, 2, 1),
                   NewTopic(tight, 1, 1, config={"max.message.bytes": "2000"}))
    publisher = RecordPublisher(settings)

    records = [(f"photo-{i}".encode(), f"value-{i}".encode()) for i in range(5000)]
    publisher.publish(roomy, records)
    reader = TopicReader(settings, roomy)
    seen: dict[bytes, bytes] = {}

    def read_all() -> bool:
        seen.update((m.key(), m.value()) for m in reader.poll())
        return len(seen) >= len(records)

    wait_for(read_all, timeout=60, what="the published records")
    reader.close()
    assert seen == dict(records)

    # 5,000 random bytes do not compress below the topic's 2,000-byte limit: the broker refuses them.
    with pytest.raises(RuntimeError, match=r"0 records undelivered, [12] failed: \[.*(too large|TOO_LARGE)"):
        publisher.publish(tight, [(b"small", b"fits"), (b"big", os.urandom(5000))])
    # The next publish starts with no failures carried over.
    publisher.publish(tight, [(b"small", b"fits")])
