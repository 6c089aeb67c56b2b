"""The dead letters of a batch of input events: one record per bad event, kept until the batch's
commit sequence sends them (and the broker acknowledges them) before its offsets are committed."""

from __future__ import annotations

from typing import Any

from .codecs import MAX_DLQ_VALUE_BYTES, encode_dlq


class DeadLetters:
    """Records for the dead-letter topic, and how many events and batch rows they reject."""

    def __init__(self) -> None:
        self.records: list[tuple[bytes | None, bytes]] = []
        self.bad_events = 0  # events rejected whole
        self.bad_rows = 0  # rejected rows of batch events

    def add(self, message: Any, errors: list[tuple[int | None, str]]) -> None:
        """The one dead letter of ``message`` (a Faust message) with its ``(row, reason)`` problems."""
        value = encode_dlq(errors, message.topic, message.partition, message.offset, message.key, message.value)
        # The record carries the original key (cut, with its size); the Kafka key is cut too, or a
        # multi-megabyte key would exceed the producer's request size.
        key = message.key[:MAX_DLQ_VALUE_BYTES] if message.key is not None else None
        self.records.append((key, value))
        rows = sum(1 for row, _ in errors if row is not None)
        self.bad_rows += rows
        self.bad_events += 0 if rows else 1

    def count_into(self, counters: dict[str, Any]) -> None:
        """Add to ``dlq_events`` / ``dlq_rows``, once the records are acknowledged."""
        counters["dlq_events"] += self.bad_events
        counters["dlq_rows"] += self.bad_rows
