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
                 resume_offset: Callable[[Any], Awaitable[int | None]] | None = None,
                 gaps_after_start: bool = False) -> None:
        """``consumer_of()`` returns Faust's consumer (which exists only once the app runs);
        ``resume_offset(tp)`` where the group resumes a partition that Faust's consumer has no
        committed offset for (yet): the group's committed offset asked of the broker, else the
        first offset of the partition (default: the first offset, asked of Faust's consumer, whose
        thread may first sit out a fetch wait of up to 1.5 s). ``gaps_after_start``: once a
        partition's first event since its assignment was taken, a gap is accepted as it comes
        (read_committed: every transaction leaves a marker, an aborted one its records, so gaps
        are the rule, and the race below happens only at the start)."""
        self._consumer_of = consumer_of
        self._resume_offset = resume_offset or self._log_start_from_faust
        # Next input offset the window takes, per partition, and the partitions being re-fetched after
        # Faust lost events: [highest offset seen since the seek, offset the last re-fetch began with].
        self._next_offset: dict[tuple[str, int], int] = {}
        self._refetching: dict[tuple[str, int], list[int]] = {}
        self._gaps_after_start = gaps_after_start
        self._started: set[tuple[str, int]] = set()  # partitions that took an event since assignment

    async def _log_start_from_faust(self, tp: Any) -> int | None:
        return (await self._consumer_of().earliest_offsets(tp)).get(tp)

    def on_rebalance(self) -> None:
        """Faust seeks every assigned partition to its committed offset: no re-fetch is pending."""
        self._refetching.clear()
        self._started.clear()

    def forget(self, partitions: Any) -> None:
        """Partitions revoked from this worker: when one comes back, its events are taken from the
        group's committed offset again, which may lie *before* what this worker took (work in
        flight at the revocation was not committed, and the next owner redoes it)."""
        for tp in partitions:
            self._next_offset.pop((tp.topic, tp.partition), None)
            self._refetching.pop((tp.topic, tp.partition), None)
            self._started.discard((tp.topic, tp.partition))

    def accept_next(self, message: Any) -> bool:
        """True, and taken, if ``message`` is the offset expected next of a partition already taking
        events (the rule of :meth:`accept`, which this answers without a coroutine for nearly every
        event); False means "not decided here": ask :meth:`accept`."""
        key = (message.topic, message.partition)
        expected = self._next_offset.get(key)
        if expected is None or message.offset != expected:
            return False
        committed = self._consumer_of()._committed_offset.get(message.tp)
        if committed is not None and committed > expected:
            return False
        self._take(key, expected)
        return True

    def _take(self, key: tuple[str, int], offset: int) -> None:
        """``offset`` of partition ``key`` is taken: the next one is expected, no re-fetch pending."""
        self._next_offset[key] = offset + 1
        if self._refetching:
            self._refetching.pop(key, None)
        self._started.add(key)

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
            # Faust's consumer learns the committed offset only when it seeks the partition, which
            # may come after the first events; the broker knows it (and a group with no committed
            # offset starts at the log start: consumer_auto_offset_reset).
            if committed is None:
                committed = await self._resume_offset(message.tp)
            expected = committed if committed is not None else offset
        elif committed is not None and committed > expected:  # another worker took the events in between
            expected = committed
        if offset == expected or (offset > expected and self._gaps_after_start and key in self._started):
            self._take(key, offset)
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
            self._take(key, offset)
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
