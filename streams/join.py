"""The join stage: the first step of the paper's Algorithm 2, on every worker, over the input partitions
this worker owns.

For each batch of input events: decode them (one dead letter per bad event), join each photo within
radius r of a center this worker's copy holds (``joined`` outcome, out at once), and forward the
rest, in batch events, to the single-partition ``photoclust-unjoined`` topic, where the found stage
clusters them. The join counts per cluster go there too, so that the found stage, the one writer of
the clusters' state, keeps every cluster's size and last join. The join stage never creates a
center.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.codes import from_bytes
from core.online import Outcome

from .codecs import (
    FORWARD_CHUNK_BYTES,
    FORWARD_CHUNK_ROWS,
    JOINS_KEY,
    PHOTOS_KEY,
    PhotoDecoder,
    assignment_records,
    encode_forwarded,
    encode_joins,
)
from .commit import CommitSequence, Record, finish_in_flight
from .config import Settings
from .crash import crash_worker
from .dead_letters import DeadLetters
from .input_order import InputOrderGuard
from .replica import CentersReplica

log = logging.getLogger("photoclust")

# A take of batch events is joined and committed in batches of about this many bytes of input
# (4 MB: some 100,000 photos in batch events of 500), so that the first photos of a backlog reach
# the found stage while the rest is still being decoded, and the join of one batch runs while the
# previous one is sent. Single-photo events (about 60 bytes) are never cut by it.
JOIN_BATCH_BYTES = 4 * 1024 * 1024
# How often a join stage that holds back reads the found stage's backlog again.
HOLD_BACK_POLL_S = 0.02
# The join stage holds back only while Faust's buffer of its input is less full than this: a full
# buffer stops Faust's hand-over of every partition of the worker, the unjoined one too, and a
# found stage that gets no photos would never catch up (seen: the demo's single events stalled).
HOLD_BACK_MAX_BUFFER_FILL = 0.5


@dataclass
class _Batch:
    """Decoded input events on their way through the join and the commit sequence."""

    messages: list[Any] = field(default_factory=list)
    value_bytes: int = 0  # of the messages' values
    dead: DeadLetters = field(default_factory=DeadLetters)
    ids: list[str] = field(default_factory=list)
    hashes: list[bytes] = field(default_factory=list)
    ts_in: list[float] = field(default_factory=list)
    # Batch events whose value can be forwarded as it is if none of their photos joins:
    # (first row, end row, value), in row order.
    whole: list[tuple[int, int, bytes]] = field(default_factory=list)


def _forwardable(value: bytes, decoded: Any) -> bool:
    """An input batch event the found stage may take as it is: no bad row, a ts in every row (the
    found stage needs each photo's ts_in), and within a forwarded event's bounds."""
    return (not decoded.errors and len(decoded.ids) <= FORWARD_CHUNK_ROWS and len(value) <= FORWARD_CHUNK_BYTES
            and None not in decoded.ts)


class JoinStage:
    """Joins input photos against this worker's copy of the centers; the ``join_photos`` agent calls it."""

    def __init__(self, settings: Settings, app: Any, replica: CentersReplica, commit: CommitSequence,
                 input_order: InputOrderGuard, found_backlog: Callable[[], int] | None = None,
                 input_buffer_fill: Callable[[], float] = lambda: 0.0) -> None:
        self.settings = settings
        self.app = app
        self.replica = replica
        self.commit = commit
        self.input_order = input_order
        # Records of the unjoined topic the found stage has not committed (blocking: asks the broker).
        self.found_backlog = found_backlog
        self.input_buffer_fill = input_buffer_fill  # how full Faust's buffer of the input is (0 to 1)
        self._backlog_read: tuple[int, float] | None = None  # (records, monotonic time read)
        self._forwarded_records = 0  # records this stage sent to the unjoined topic
        self._forwarded_since_read = 0
        self.decoder = PhotoDecoder(n_bits=settings.n_bits)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="photoclust-join")
        self._queue: asyncio.Queue[_Batch] | None = None
        self._joined: asyncio.Queue[tuple[_Batch, tuple[tuple | None, list[Record], int]]] | None = None
        self._tasks: list[asyncio.Task] = []
        self._in_flight = 0  # batches taken and not yet committed
        self._stopping = False
        self._paused = False
        # One batch per partition with exactly_once: each partition's events commit in its own
        # transaction (streams.commit).
        self._batch_per_partition = settings.processing_guarantee == "exactly_once"
        self.counters: dict[str, Any] = {"events_in": 0, "photos_in": 0, "joined": 0, "forwarded": 0,
                                         "dlq_events": 0, "dlq_rows": 0, "cpu_seconds": 0.0, "held_back_s": 0.0}

    async def wait_ready(self) -> None:
        """Until this worker's copy of the centers has read the topic to the end it saw at start."""
        await asyncio.get_running_loop().run_in_executor(None, self.replica.caught_up.wait)

    @property
    def ready(self) -> bool:
        return self.replica.caught_up.is_set() and self.replica.alive

    async def process(self, events: list[Any]) -> None:
        """Queue a take of input events in batches; the joining and the commit sequence run in
        tasks of their own, in order, while the agent takes the next events (bounded queues give
        backpressure). A failure stops the worker: the events are then not acknowledged."""
        if self._stopping or self._paused:  # not committed: the partition's next owner takes these events
            return
        if not self._tasks:
            self._queue, self._joined = asyncio.Queue(maxsize=2), asyncio.Queue(maxsize=1)
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._join_batches()), loop.create_task(self._commit_batches())]
        for batch in await self._batches(events):
            assert self._queue is not None
            self._in_flight += 1
            await self._queue.put(batch)

    async def drain(self, timeout: float) -> bool:
        """Finish the batches already taken, so that a graceful stop commits what it sent, and take
        no new one: nothing is sent after the stop began."""
        self._stopping = True
        return await self._finish_in_flight(timeout)

    async def pause(self, timeout: float) -> bool:
        """Partitions are being revoked: finish the batches already taken (their offsets are still
        this worker's to commit) and take none until :meth:`resume`. Events taken meanwhile are
        dropped uncommitted; whoever owns their partition next takes them from the commit."""
        self._paused = True
        return await self._finish_in_flight(timeout)

    def resume(self) -> None:
        self._paused = False

    async def _finish_in_flight(self, timeout: float) -> bool:
        return await finish_in_flight(lambda: self._in_flight, self.alive, timeout)

    def alive(self) -> bool:
        """False once the task that joins or the one that commits has died (liveness)."""
        return not any(task.done() for task in self._tasks)

    async def _batches(self, events: list[Any]) -> list[_Batch]:
        """The events the offset guard lets through, in batches (one per partition with exactly_once)."""
        batches: list[_Batch] = []
        open_batches: dict[Any, _Batch] = {}
        by_partition = self._batch_per_partition
        accept_next, accept = self.input_order.accept_next, self.input_order.accept
        for event in events:
            message = event.message
            if not (accept_next(message) or await accept(message)):
                continue
            key = message.tp if by_partition else None
            batch = open_batches.get(key)
            if batch is None or batch.value_bytes >= JOIN_BATCH_BYTES:
                batch = open_batches[key] = _Batch()
                batches.append(batch)
            batch.messages.append(message)
            batch.value_bytes += len(message.value or b"")
        return batches

    def _decode(self, batch: _Batch) -> None:
        """(in the join thread, off the event loop, which meanwhile feeds the found stage) The
        batch's photos, and a dead letter per bad event."""
        decode = self.decoder.decode
        for message in batch.messages:
            decoded = decode(message.value, message.key)
            if decoded.errors:
                batch.dead.add(message, decoded.errors)
            ids = decoded.ids
            if len(ids) == 1:  # a single-photo event
                ts = decoded.ts[0]
                batch.ids.append(ids[0])
                batch.hashes.append(decoded.hashes[0])
                batch.ts_in.append(ts if ts is not None else message.timestamp or time.time())
            elif ids:
                if _forwardable(message.value, decoded):
                    start = len(batch.ids)
                    batch.whole.append((start, start + len(ids), message.value))
                    batch.ts_in.extend(decoded.ts)
                else:
                    default_ts = message.timestamp or time.time()
                    batch.ts_in.extend(default_ts if ts is None else ts for ts in decoded.ts)
                batch.ids.extend(ids)
                batch.hashes.extend(decoded.hashes)

    async def _join_batches(self) -> None:
        """Joins the queued batches in order, in the join thread, and hands each to
        :meth:`_commit_batches`: batch k+1 is joined while batch k is sent and committed."""
        assert self._queue is not None and self._joined is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._queue.get()
            try:
                await self._hold_back()
                joined = await loop.run_in_executor(self._executor, self._join, batch)
            except Exception as e:
                await self._failed(e)
                raise
            await self._joined.put((batch, joined))

    async def _commit_batches(self) -> None:
        """The joined batches' commit sequences, one batch after the other, in the order taken."""
        assert self._joined is not None
        s = self.settings
        while True:
            batch, (joined, forwards, n_joined) = await self._joined.get()
            try:
                # The outcomes are encoded in the stage's publish thread, which the join thread
                # would otherwise wait for: it joins the next batch meanwhile.
                outputs = await self.commit.prepare(s.input_topic, assignment_records, *joined) if joined else []
                await self.commit.commit([(s.dlq_topic, batch.dead.records), (s.output_topic, outputs),
                                          (s.unjoined_topic, forwards)], batch.messages, s.input_topic)
            except Exception as e:
                await self._failed(e)
                raise
            self._in_flight -= 1
            counters = self.counters
            counters["events_in"] += len(batch.messages)
            counters["photos_in"] += len(batch.ids)
            counters["joined"] += n_joined
            counters["forwarded"] += len(batch.ids) - n_joined
            self._forwarded_records += len(forwards)
            self._forwarded_since_read += len(forwards)
            batch.dead.count_into(counters)

    async def _hold_back(self) -> None:
        """Wait while the found stage is more than ``forward_ahead_windows`` windows of forwarded
        photos behind: the unjoined partition's records after the group's committed offset, against
        the records that many windows take at this stage's photos per forwarded record.

        A backlog is forwarded much faster than it is clustered: without this, every photo of it
        would reach the found stage before the first window's centers reached this stage, to be
        decoded and joined a second time there. Held back, this stage joins them itself. The
        backlog is read from the broker only when the records sent since the last reading could
        have taken it past the limit. Never while the stage stops or hands its partitions over,
        nor once Faust's buffer of the input is half full (a full one would stop the hand-over of
        the unjoined partition's records too, and the found stage could never catch up), and a
        backlog that cannot be read does not hold anything back.
        """
        ahead = self.settings.forward_ahead_windows
        if not ahead or self.found_backlog is None or not self._forwarded_records:
            return
        limit = ahead * self.settings.window_size * self._forwarded_records / max(1, self.counters["forwarded"])
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            while not (self._stopping or self._paused or self.input_buffer_fill() >= HOLD_BACK_MAX_BUFFER_FILL):
                now = time.monotonic()
                if self._backlog_read is not None and self._backlog_read[0] + self._forwarded_since_read <= limit:
                    return
                if self._backlog_read is None or now - self._backlog_read[1] >= HOLD_BACK_POLL_S:
                    self._backlog_read = (await loop.run_in_executor(None, self.found_backlog), now)
                    self._forwarded_since_read = 0
                    continue
                await asyncio.sleep(HOLD_BACK_POLL_S)
        except Exception as e:
            log.warning("event=found_backlog_unread error=%r action='not held back'", str(e))
            self._backlog_read = None
        finally:
            self.counters["held_back_s"] += time.monotonic() - started

    async def _failed(self, error: Exception) -> None:
        await crash_worker(self.app, error, "join stage failed: its events are redelivered after a restart")

    def _join(self, batch: _Batch) -> tuple[tuple | None, list[Record], int]:
        """(in the join thread) the joined photos' outcomes (:func:`assignment_records`' arguments),
        and the forwarded rest with the join counts."""
        started = time.thread_time()
        try:
            self._decode(batch)
            if not batch.ids:
                return None, [], 0
            return self._join_codes(batch.ids, batch.hashes, batch.ts_in, batch.whole)
        finally:
            self.counters["cpu_seconds"] += time.thread_time() - started

    def _join_codes(self, ids: list[str], hashes: list[bytes], ts_in: list[float],
                    whole: list[tuple[int, int, bytes]] = ()) -> tuple[tuple | None, list[Record], int]:
        codes = from_bytes(hashes, self.settings.n_bits)
        labels, distances, windows_seen = self.replica.join(codes, self.settings.radius)
        joined = np.flatnonzero(labels >= 0)
        now = time.time()
        outcomes = None
        forwards: list[Record] = []
        if joined.shape[0]:
            outcomes = ([ids[i] for i in joined], np.full(joined.shape[0], Outcome.JOINED, dtype=np.uint8),
                        labels[joined], distances[joined], windows_seen, np.asarray(ts_in)[joined], now)
            clusters, counts = np.unique(labels[joined], return_counts=True)
            forwards.append((JOINS_KEY, encode_joins(clusters, counts, now)))
        unjoined = labels < 0
        if whole and joined.shape[0]:
            # Only events none of whose photos joined go on as they are.
            joined_before = np.concatenate(([0], np.cumsum(~unjoined)))
            whole = [w for w in whole if joined_before[w[1]] == joined_before[w[0]]]
        # The forwarded photos in row order (the found stage fills its windows in that order): an
        # input event none of whose photos joined is forwarded as it is, since re-encoding its rows
        # would give the found stage, whose decoder is the same, the same rows; the other photos
        # are encoded into forwarded events.
        position = 0
        for start, end, value in [*whole, (len(ids), len(ids), None)]:
            rest = (np.flatnonzero(unjoined[position:start]) + position).tolist()
            if rest:
                forwards += [(PHOTOS_KEY, event) for event in encode_forwarded(
                    [ids[i] for i in rest], [hashes[i] for i in rest], [ts_in[i] for i in rest])]
            if value is not None:
                forwards.append((PHOTOS_KEY, value))
            position = end
        return outcomes, forwards, int(joined.shape[0])
