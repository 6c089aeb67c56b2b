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
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from typing import Any, TypeVar

from .config import Settings

Record = tuple[bytes | None, bytes | None]
T = TypeVar("T")
log = logging.getLogger("photoclust")


def _next_offsets(messages: list[Any]) -> dict[Any, int]:
    """The offset to commit per partition: one past the last message taken."""
    offsets: dict[Any, int] = {}
    for message in messages:
        offsets[message.tp] = max(offsets.get(message.tp, 0), message.offset + 1)
    return offsets


async def finish_in_flight(in_flight: Callable[[], int], alive: Callable[[], bool], timeout: float) -> bool:
    """Wait until a stage has committed all the work it took (``in_flight()`` is 0), its task died,
    or ``timeout`` seconds passed; True if nothing is left in flight."""
    deadline = time.monotonic() + timeout
    while in_flight() and alive() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return in_flight() == 0


class CommitSequence:
    """Sends records and commits offsets for the agents of one Faust app (one per process)."""

    def __init__(self, settings: Settings, app: Any) -> None:
        self.settings = settings
        self.app = app
        # At-least-once output: per source topic (one per stage), a thread and a librdkafka producer
        # of its own, so that one stage's sends and flushes never queue behind the other's.
        self._lanes: dict[str, _Lane] = {}
        # With exactly_once, a commit commits the transactions of every input partition, so one
        # stage's commit must not catch another stage's records half sent.
        self._lock = asyncio.Lock()

    @property
    def exactly_once(self) -> bool:
        return self.settings.processing_guarantee == "exactly_once"

    async def commit(self, batches: list[tuple[str, list[Record]]], messages: list[Any], source_topic: str,
                     source_partition: int | None = None) -> None:
        """Run the sequence for ``messages`` (of ``source_topic``) whose results are ``batches``:
        ``(topic, records)`` pairs, sent in that order. With exactly_once, ``messages`` come from
        one partition (``source_partition``, which names it also when there are no messages),
        whose transaction takes the records and the offsets."""
        offsets = _next_offsets(messages)
        async with self._lock if self.exactly_once else contextlib.nullcontext():
            transactional_id = (self._transactional_id(source_topic, offsets, source_partition)
                                if self.exactly_once else None)
            sent = False
            for topic, records in batches:
                if records:
                    await self._send_all(topic, records, transactional_id, source_topic)
                    sent = True
            consumer = self.app.consumer
            if self.exactly_once:
                await self.app.producer.flush()
            # Explicit offsets rather than Faust's acks: Faust forgets the acks of a partition as it
            # is revoked, before the stages can finish their work in flight, and its bookkeeping
            # then stops committing that partition once it comes back. An offset at or below what
            # the group committed (after a revocation, the next owner may have gone further) is
            # not committed again. Faust leaves out partitions this worker no longer owns.
            committed = consumer._committed_offset
            offsets = {tp: offset for tp, offset in offsets.items()
                       if committed.get(tp) is None or offset > committed[tp]}
            if offsets:
                await consumer._commit_offsets(offsets)
            elif sent and transactional_id is not None:
                # Records without input offsets (an idle stream's pending photos declared noise):
                # their transaction is committed all the same, or no one would ever read them.
                producer = consumer.transactions.producer
                await producer.commit_transaction(transactional_id)
                await producer.maybe_begin_transaction(transactional_id)

    def _transactional_id(self, source_topic: str, offsets: dict[Any, int], source_partition: int | None) -> str:
        """Faust runs one Kafka transaction per source partition, named "<app id>-<topic group>-<p>"
        (and fences an older holder of the name when it starts it: a zombie's commit fails)."""
        partitions = {tp.partition for tp in offsets} | ({source_partition} if source_partition is not None else set())
        if len(partitions) != 1:
            raise ValueError(f"an exactly_once commit takes events of one partition, got partitions {sorted(partitions)}")
        return f"{self.app.conf.id}-{self.app.assignor.group_for_topic(source_topic)}-{partitions.pop()}"

    async def _send_all(self, topic: str, records: list[Record], transactional_id: str | None,
                        source_topic: str) -> None:
        """Hand records to a producer and wait until the broker has them all; a failed delivery raises.

        At-least-once output goes through a librdkafka (confluent-kafka) producer in a thread, which
        costs a small fraction of Faust's per-record send (tests/benchmarks/README.md). Exactly-once
        output must join the Kafka transaction that also commits the input offsets (Faust's
        transactional producer of the source partition), so that a crash aborts records and
        offsets together.
        """
        if transactional_id is not None:
            producer = self.app.consumer.transactions.producer
            pending = [await producer.send(topic, key, value, None, None, None, transactional_id=transactional_id)
                       for key, value in records]
            for future in pending:
                await future  # raises the delivery error, if any
            return
        lane = self._lane(source_topic)
        await asyncio.get_running_loop().run_in_executor(lane.thread, lane.publish, topic, records)

    async def prepare(self, source_topic: str, build: Callable[..., T], *args: Any) -> T:
        """``build(*args)`` in the publish thread of ``source_topic``'s stage: a stage's records
        encoded there keep the event loop free and come out in the order of its sends."""
        return await asyncio.get_running_loop().run_in_executor(self._lane(source_topic).thread, build, *args)

    async def connect(self, timeout: float = 30.0) -> None:
        """Build the at-least-once publishers and have them read the cluster's metadata now: a fresh
        producer's first publish otherwise waits about 0.5 s (measured on the local broker), on the
        first batch of events. Best effort: a broker that is away is the first publish's to report."""
        if self.exactly_once:
            return
        loop = asyncio.get_running_loop()
        for source_topic in (self.settings.input_topic, self.settings.unjoined_topic):
            lane = self._lane(source_topic)
            try:
                await loop.run_in_executor(lane.thread, lane.connect, timeout)
            except Exception as e:
                log.warning("event=publisher_connect_failed error=%r", str(e))
                return

    def _lane(self, source_topic: str) -> _Lane:
        lane = self._lanes.get(source_topic)
        if lane is None:
            lane = self._lanes[source_topic] = _Lane(self.settings, len(self._lanes))
        return lane


class _Lane:
    """One stage's at-least-once output: a thread, and a confluent-kafka publisher built in it on first use."""

    def __init__(self, settings: Settings, number: int) -> None:
        self.settings = settings
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"photoclust-publish-{number}")
        self._publisher: Any = None

    def connect(self, timeout: float) -> None:
        self._publisher_of().producer.list_topics(timeout=timeout)

    def publish(self, topic: str, records: list[Record]) -> None:
        self._publisher_of().publish(topic, records)

    def _publisher_of(self) -> Any:
        if self._publisher is None:
            from .kafka_io import RecordPublisher

            self._publisher = RecordPublisher(self.settings)
        return self._publisher
