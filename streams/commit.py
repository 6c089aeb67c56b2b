"""The commit sequence: the one order in which a stage's results become visible, for both guarantees.

1. Send the records of a batch of input events (outcomes, forwarded photos, dead letters, state)
   and wait until the broker has acknowledged every one; a refused record raises.
2. Acknowledge the input events and commit their offsets. With exactly_once, the records and the
   offsets are one Kafka transaction, committed here.

A crash before step 2 redelivers the events (at_least_once: their records may be sent again;
exactly_once: the transaction is aborted), and never commits an offset past an event whose records,
dead letters included, the broker did not take.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .config import Settings

Record = tuple[bytes | None, bytes | None]


class CommitSequence:
    """Sends records and commits offsets for the agents of one Faust app (one per process)."""

    def __init__(self, settings: Settings, app: Any) -> None:
        self.settings = settings
        self.app = app
        self._publish_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="photoclust-publish")
        self._publisher: Any = None  # RecordPublisher (confluent-kafka), built on first use
        # With exactly_once, a commit commits the transactions of every input partition, so one
        # stage's commit must not catch another stage's records half sent.
        self._lock = asyncio.Lock()

    @property
    def exactly_once(self) -> bool:
        return self.settings.processing_guarantee == "exactly_once"

    async def commit(self, batches: list[tuple[str, list[Record]]], messages: list[Any], source_topic: str) -> None:
        """Run the sequence for ``messages`` (of ``source_topic``) whose results are ``batches``:
        ``(topic, records)`` pairs, sent in that order."""
        async with self._lock if self.exactly_once else contextlib.nullcontext():
            for topic, records in batches:
                if records:
                    await self._send_all(topic, records, source_topic)
            consumer = self.app.consumer
            if self.exactly_once:
                await self.app.producer.flush()
            for message in messages:
                message.ack(consumer)
            await consumer.commit()

    async def _send_all(self, topic: str, records: list[Record], source_topic: str) -> None:
        """Hand records to a producer and wait until the broker has them all; a failed delivery raises.

        At-least-once output goes through a librdkafka (confluent-kafka) producer in a thread, which
        costs a small fraction of Faust's per-record send (tests/benchmarks/README.md). Exactly-once
        output must join the Kafka transaction that also commits the input offsets (Faust's
        transactional producer of the source partition), so that a crash aborts records and
        offsets together.
        """
        if self.exactly_once:
            transactions = self.app.consumer.transactions
            # Faust names the transaction of partition p "<app id>-<topic group>-<p>"; exactly_once
            # runs with one partition per source topic (Settings checks it).
            transactional_id = f"{self.app.conf.id}-{self.app.assignor.group_for_topic(source_topic)}-0"
            pending = [await transactions.producer.send(topic, key, value, None, None, None,
                                                        transactional_id=transactional_id)
                       for key, value in records]
            for future in pending:
                await future  # raises the delivery error, if any
            return
        await asyncio.get_running_loop().run_in_executor(self._publish_thread, self._publish_blocking, topic, records)

    def _publish_blocking(self, topic: str, records: list[Record]) -> None:
        if self._publisher is None:
            from .kafka_io import RecordPublisher

            self._publisher = RecordPublisher(self.settings)
        self._publisher.publish(topic, records)
