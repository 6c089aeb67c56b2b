"""The input offset-order guard: the window takes each input partition's events strictly in offset
order, starting at the group's committed offset.

It exists because of a race in Faust (0.15.3), described in :meth:`InputOrderGuard.accept`. It
reads three things of Faust's consumer: ``_committed_offset``, ``earliest_offsets()`` (or a faster look-up) and
``seek_wait()``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("photoclust.window")


class InputOrderGuard:
    """Decides, event by event, whether an input message is the next one of its partition."""

    def __init__(self, consumer_of: Callable[[], Any],
                 log_start: Callable[[Any], Awaitable[int | None]] | None = None) -> None:
        """``consumer_of()`` returns Faust's consumer (which exists only once the app runs);
        ``log_start(tp)`` the first offset of a partition (default: ask Faust's consumer, whose
        thread may first sit out a fetch wait of up to 1.5 s)."""
        self._consumer_of = consumer_of
        self._log_start = log_start or self._log_start_from_faust
        # Next input offset the window takes, per partition, and the partitions being re-fetched after
        # Faust lost events: [highest offset seen since the seek, offset the last re-fetch began with].
        self._next_offset: dict[tuple[str, int], int] = {}
        self._refetching: dict[tuple[str, int], list[int]] = {}

    async def _log_start_from_faust(self, tp: Any) -> int | None:
        return (await self._consumer_of().earliest_offsets(tp)).get(tp)

    def on_rebalance(self) -> None:
        """Faust seeks every assigned partition to its committed offset: no re-fetch is pending."""
        self._refetching.clear()

    async def accept(self, message: Any) -> bool:
        """True if ``message`` is the next offset of its partition; otherwise it is dropped unacked.

        Faust (0.15.3) can hand the agent a partition's events with a gap after a (re)assignment:
        ``Recovery.on_recovery_completed`` resumes the input partitions *before* it awaits
        ``perform_seek()``, so the running fetcher delivers the first records (from the committed
        offset on) into the agent's queue, and ``flow_control.resume()`` then clears that queue; the
        re-fetch that follows the seek is dropped by the consumer, whose read offset the rest of the
        stale batch had already moved past (all but its last record, delivered twice). The first
        events after the committed offset never reached the agent, and acking the later ones let
        Faust commit past them (its ``_new_offset`` accepts a gap of one), or stall its commits (a
        larger gap: no window's outcomes ever became visible with exactly_once).

        So the window takes each partition's events strictly in offset order, starting at the
        committed offset: an offset already taken (a duplicate delivery) is skipped, and a gap
        seeks the partition back to the missing offset and drops what comes until it arrives. A
        record delivered twice means the re-fetch was dropped again: seek again. A gap that two
        re-fetches in a row begin at the same record is real (transaction markers, aborted or
        compacted records hold no event): it is accepted.
        """
        key, offset = (message.topic, message.partition), message.offset
        committed = self._consumer_of()._committed_offset.get(message.tp)
        expected = self._next_offset.get(key)
        if expected is None:
            # A group with no committed offset starts at the log start (consumer_auto_offset_reset).
            if committed is None:
                committed = await self._log_start(message.tp)
            expected = committed if committed is not None else offset
        elif committed is not None and committed > expected:  # another worker took the events in between
            expected = committed
        if offset == expected:
            self._next_offset[key] = offset + 1
            self._refetching.pop(key, None)
            return True
        if offset < expected:
            log.debug("event=input_redelivered topic=%s partition=%d offset=%d next=%d",
                      message.topic, message.partition, offset, expected)
            return False
        refetch = self._refetching.get(key)
        if refetch is not None and offset > refetch[0]:  # events after the gap, fetched before the seek
            refetch[0] = offset
            return False
        if refetch is not None and offset == refetch[1]:  # no record between expected and offset
            log.info("event=input_gap_confirmed topic=%s partition=%d offsets=%d-%d",
                     message.topic, message.partition, expected, offset - 1)
            self._next_offset[key] = offset + 1
            self._refetching.pop(key, None)
            return True
        self._refetching[key] = [offset, offset if refetch is not None else -1]
        log.warning("event=input_gap topic=%s partition=%d offset=%d expected=%d action=seek%s",
                    message.topic, message.partition, offset, expected, "" if refetch is None else " again")
        try:
            await self._consumer_of().seek_wait({message.tp: expected})
        except Exception as e:  # e.g. the partition was revoked meanwhile: its new owner starts at the commit
            log.warning("event=input_seek_failed topic=%s partition=%d error=%r", message.topic, message.partition, e)
            self._refetching.pop(key, None)
        return False
