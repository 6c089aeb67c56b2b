"""The found stage: the paper's Algorithm 2 after the join, on the one worker that owns the single
partition of ``photoclust-unjoined``. It is the only writer of centers.

Photos that the join stage could not join arrive in batch events; they fill a window of n photos
(or less, once the oldest has waited ``max_wait_s``). One coroutine clusters the closed windows in
order, off the event loop, while the agent fills the next one; bounded queues give backpressure.
Each window runs through :meth:`core.online.OnlineClusterer.process`: join against every center (a
center may be newer than the join stage's copy), Bk-means into n/10 centers, the r and t filters,
and the pending pool. A second coroutine takes the clustered windows, in order, through the commit
sequence (outcomes, new center blocks, state records), so that window k is encoded, sent and
committed while window k+1 is clustered: the records that read the clusterer are made in the core
thread before it moves on.
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
from core.online import OnlineClusterer, Outcome, WindowResult
from core.warmup import warm_up

from .codecs import JOINS_KEY, PhotoDecoder, decode_joins, encode_retirements, window_records
from .commit import CommitSequence, Record, finish_in_flight
from .config import Settings
from .crash import crash_worker
from .dead_letters import DeadLetters
from .input_order import InputOrderGuard
from .kafka_io import catch_up, watermarks_of
from .replica import CentersReplica
from .state import (
    CENTERS_PREFIX,
    META_KEY,
    PENDING_CHUNK,
    center_records,
    n_pending_chunks,
    restore_clusterer,
    state_records,
    stored_carry,
    stored_input_positions,
)
from .store import LocalStore

log = logging.getLogger("photoclust.found")


def _evicted(app: Any) -> bool:
    """True if the group has already dropped this member: aiokafka resets its generation when a
    heartbeat or a join finds the member unknown or its generation stale."""
    try:
        return app.consumer._thread._ensure_consumer()._coordinator.generation < 0
    except AttributeError:  # another transport, or not started: assume an ordinary rebalance
        return False


@dataclass
class Window:
    """Photos waiting to be clustered, the join stage's join counts, and the messages to ack once done."""

    ids: list[str] = field(default_factory=list)
    hashes: list[bytes] = field(default_factory=list)
    ts_in: list[float] = field(default_factory=list)
    joins: list[tuple[np.ndarray, np.ndarray, float]] = field(default_factory=list)
    n_joined_elsewhere: int = 0  # photos of this part of the stream that the join stage joined
    carry_after: int = 0  # joined photos of its last join counts that belong to the windows after it
    split: tuple[str, int, int, int] | None = None  # (topic, partition, offset, rows taken) of an event
    # whose remaining photos went to the next window; it is acknowledged with that one
    messages: list[Any] = field(default_factory=list)
    dead_letters: DeadLetters = field(default_factory=DeadLetters)
    opened: float = 0.0  # monotonic time of the first message
    flush_pending: bool = False  # an idle stream's pending pool is declared noise
    generation: int = 0  # the ownership of the unjoined partition it was filled under

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def empty(self) -> bool:
        return not (self.messages or self.ids or self.joins)


@dataclass
class _Clustered:
    """A clustered window: its result, and the records read off the clusterer as that window left it
    (the next window is clustered while this one goes through the commit sequence)."""

    result: WindowResult | None
    centers: list[Record] = field(default_factory=list)
    retired: list[Record] = field(default_factory=list)
    state: list[Record] = field(default_factory=list)
    seconds: float = 0.0  # clustering, as the event loop saw it


class FoundStage:
    """Owns the authoritative clusterer; the ``found_clusters`` agent only calls into it."""

    def __init__(self, settings: Settings, app: Any, store: LocalStore, replica: CentersReplica,
                 commit: CommitSequence, input_order: InputOrderGuard,
                 resume_offset: Callable[[str, int], int] | None = None) -> None:
        self.settings = settings
        # where the group resumes the unjoined partition (blocking; the worker's kept consumer)
        self.resume_offset = resume_offset
        self.app = app
        self.store = store
        self.replica = replica
        self.commit = commit
        self.input_order = input_order
        # Forwarded photos were validated by the join stage; decoding them again costs little and
        # keeps a foreign producer on the internal topic from crashing the founder.
        self.decoder = PhotoDecoder(n_bits=settings.n_bits)
        self.clusterer: OnlineClusterer | None = None
        self.window = Window()
        self._queue: asyncio.Queue[Window] | None = None
        # clustered windows waiting for their commit sequence
        self._clustered: asyncio.Queue[tuple[Window, _Clustered]] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="photoclust-core")
        self._ready = asyncio.Event()
        self._last_event = time.monotonic()
        self._idle_flushed = True
        self._windows_in_flight = 0
        self._pending_chunks = 0
        self._stopping = False
        # Ownership of the unjoined partition: Kafka assigns it to one worker of the group, the
        # founder. Each loss of it starts a new generation; a window of an older one is never
        # published (the partition's next owner clusters its photos).
        self.owner = False
        self._generation = 0
        self._revoking = False
        self._dirty = False  # the clusterer holds a window whose results were not published
        self._committed_offset: int | None = None  # of the unjoined partition, by this worker's last commit
        self._restore_task: asyncio.Task | None = None
        self.replica_loaded = asyncio.Event()  # set by the worker once its copy of the centers runs
        # per unjoined partition, the next (offset, row) the state does not hold yet
        self._input_positions: dict[tuple[str, int], tuple[int, int]] = {}
        # joined photos counted for the window after the last one clustered (Window.carry_after)
        self._carry = 0
        self._dead_letters_logged = 0
        self._cluster_task: asyncio.Task | None = None
        self._publish_task: asyncio.Task | None = None
        self.counters: dict[str, Any] = {
            "windows": 0, "photos_in": 0, "events_in": 0, "dlq_events": 0, "dlq_rows": 0,
            "outcomes": {o.name.lower(): 0 for o in Outcome if o is not Outcome.HELD},
            "last_window": None, "replays_skipped": 0, "restore_seconds": None,
            "restores": 0, "kept_state": 0, "ready_at": None, "cpu_seconds": 0.0,
            "retired": 0, "joins_to_retired": 0,
        }

    # -- ownership of the unjoined partition ------------------------------------------------------
    def on_assigned(self, assigned: Any) -> None:
        """A rebalance gave this worker ``assigned`` (its whole assignment): if the unjoined
        partition is in it, this worker is the founder and restores the found stage."""
        if not any(tp.topic == self.settings.unjoined_topic for tp in assigned):
            if not self.owner:
                self.clusterer = None  # another worker founds: the memory goes back
            return
        self.owner, self._revoking = True, False
        self.counters["assigned_at"] = time.time()
        log.info("event=founder_assigned generation=%d", self._generation)
        self._restore_task = asyncio.get_running_loop().create_task(self.restore())

    async def on_revoked(self, revoked: Any, timeout: float) -> None:
        """The unjoined partition is being revoked: finish the windows already closed while their
        offsets are still this worker's to commit, then stop founding. The window being filled is
        dropped uncommitted; the partition's next owner takes its photos from the commit."""
        if not (self.owner and any(tp.topic == self.settings.unjoined_topic for tp in revoked)):
            return
        self._revoking = True
        if self._restore_task is not None and not self._restore_task.done():
            self._restore_task.cancel()  # a later assignment restores again
        # Finishing is right in an ordinary rebalance: the partition moves on only once this
        # worker has rejoined. A worker that the group had already dropped (no heartbeat for
        # session_timeout_s: a long pause) learns of it only now, after another worker took the
        # partition over: it must not publish anything more.
        evicted = _evicted(self.app)
        if evicted:
            log.warning("event=founder_evicted action='drop the windows in flight' reason='the group dropped this "
                        "worker before the rebalance (no heartbeat within session_timeout_s)'")
        finished = await self._finish_windows(timeout) if self._ready.is_set() and not evicted else False
        self.owner = False
        self._generation += 1
        self._ready.clear()
        self.window = Window(generation=self._generation)
        if not finished:
            self._dirty = self.clusterer is not None
        log.info("event=founder_revoked generation=%d windows_finished=%s", self._generation, finished)

    # -- start-up ---------------------------------------------------------------------------------
    async def restore(self) -> None:
        """Rebuild the clusterer from the centers and state topics (off the event loop), then start
        clustering.

        A restore that fails or takes longer than ``restore_timeout_s`` (broker away, inconsistent
        state) crashes the worker with the reason in its log, so that it exits non-zero and its
        supervisor restarts it; until clustering runs, /health answers 503.
        """
        timeout = self.settings.restore_timeout_s
        started = time.monotonic()
        try:
            await asyncio.wait_for(self._restore(), timeout=timeout)
        except asyncio.CancelledError:
            log.info("event=restore_cancelled reason='the unjoined partition was revoked'")
            raise
        except Exception as e:
            reason = f"not done within restore_timeout_s={timeout:g}" if isinstance(e, asyncio.TimeoutError) else repr(e)
            log.error("event=restore_failed action=exit reason=%r", reason)
            await crash_worker(self.app, RuntimeError(f"restore failed: {reason}"), "restore failed")
            return
        self.counters["restore_seconds"] = round(time.monotonic() - started, 3)
        self.counters["ready_at"] = time.time()
        if self._queue is None:
            self._queue = asyncio.Queue(maxsize=1)
            self._clustered = asyncio.Queue(maxsize=1)
        self._last_event = time.monotonic()
        if self._cluster_task is None:
            self._cluster_task = asyncio.get_running_loop().create_task(self._cluster_windows())
            self._publish_task = asyncio.get_running_loop().create_task(self._publish_windows())
        self._ready.set()
        log.info("event=founder_ready generation=%d restore_seconds=%.3f since_assigned_s=%.3f",
                 self._generation, self.counters["restore_seconds"], time.time() - self.counters["assigned_at"])

    async def _restore(self) -> None:
        loop = asyncio.get_running_loop()
        await self.replica_loaded.wait()
        # Compile or load the Numba kernels now, not inside the first window.
        await loop.run_in_executor(self._executor, warm_up, self.settings.n_bits)
        # Millions of centers take seconds to read and index: never on the event loop, which must
        # keep answering heartbeats and the web port meanwhile.
        if await loop.run_in_executor(self._executor, self._state_is_current):
            self.counters["kept_state"] += 1
            log.info("event=state_kept reason='no other worker founded since this one did' clusters=%d",
                     self.clusterer.n_clusters_)
        else:
            self.clusterer, self._input_positions, self._carry = await loop.run_in_executor(self._executor,
                                                                                            self._rebuild)
            self.counters["restores"] += 1
        self._dirty = False
        self.window = self._window_after_last_clustered()
        self._pending_chunks = (self.clusterer.n_pending_ + PENDING_CHUNK - 1) // PENDING_CHUNK
        log.info("event=state_restored clusters=%d pending=%d windows=%d", self.clusterer.n_clusters_,
                 self.clusterer.n_pending_, self.clusterer.n_windows_)

    def _window_after_last_clustered(self) -> Window:
        """The window that follows the last one clustered: it starts with the join counts that one
        carried past its end."""
        return Window(generation=self._generation, n_joined_elsewhere=self._carry)

    def _state_is_current(self) -> bool:
        """True if the clusterer in memory is still the group's state: this worker founded last, it
        published every window it clustered, and no one has committed on the unjoined partition
        or added a center since (a rebalance that hands the partition back to its owner)."""
        if self.clusterer is None or self._dirty or self._committed_offset is None:
            return False
        s = self.settings
        if self.resume_offset(s.unjoined_topic, 0) != self._committed_offset:
            return False
        _, centers_end = watermarks_of(s, s.centers_topic)
        self.replica.wait_for(centers_end, timeout=s.restore_timeout_s)
        return np.array_equal(self.replica.index.cluster_ids_, self.clusterer.cluster_ids_)

    def _rebuild(self) -> tuple[OnlineClusterer, dict[tuple[str, int], tuple[int, int]], int]:
        """Read both topics to their current end, then rebuild the clusterer with this worker's
        settings; also the unjoined-topic positions the state reflects (events below them are in
        the state already: skipped, not re-clustered), and the join counts it carries into the
        next window."""
        s = self.settings
        deadline = time.monotonic() + s.restore_timeout_s
        _, centers_end = watermarks_of(s, s.centers_topic)
        self.replica.wait_for(centers_end, timeout=max(0.0, deadline - time.monotonic()))
        catch_up(s, self.store, s.state_topic, timeout=max(1.0, deadline - time.monotonic()))
        centers = (value for _, value in self.store.items(s.centers_topic, CENTERS_PREFIX))
        clusterer, changes = restore_clusterer(centers, lambda key: self.store.get(s.state_topic, key),
                                               self.clusterer_params())
        for name, old, new in changes:
            log.info("event=setting_changed name=%s stored=%r new=%r", name, old, new)
        self._committed_offset = self.resume_offset(s.unjoined_topic, 0)
        meta = self.store.get(s.state_topic, META_KEY)
        return clusterer, stored_input_positions(meta), stored_carry(meta)

    def clusterer_params(self) -> dict[str, Any]:
        s = self.settings
        # A window may overshoot window_size by one forwarded batch event, which is never split.
        return dict(n_bits=s.n_bits, window_size=s.window_size + self.decoder.max_batch_rows,
                    new_centers_ratio=s.new_centers_ratio, radius=s.radius, min_cluster_size=s.min_cluster_size,
                    pending_capacity=s.pending_capacity, max_iter=s.max_iter,
                    max_centers=s.max_centers or None, max_idle=s.max_idle_s or None, random_state=s.seed)

    async def wait_ready(self) -> None:
        await self._ready.wait()

    @property
    def ready(self) -> bool:
        """The clusterer is rebuilt and clustering runs."""
        return self._ready.is_set() and self.clustering_alive()

    def clustering_alive(self) -> bool:
        """Liveness: the coroutine that clusters windows has not died, and a founder has one (from
        the end of its first restore on); a worker that never founded needs none."""
        if self._cluster_task is not None:
            return not (self._cluster_task.done() or (self._publish_task is not None and self._publish_task.done()))
        return not self.owner

    # -- stopping -----------------------------------------------------------------------------------
    async def drain(self, timeout: float) -> bool:
        """Finish the windows already closed, so that their offsets can be committed on the way out.

        The window still being filled is neither clustered nor acknowledged: its photos have no
        outcome yet and are redelivered to the next founder, so a graceful stop emits no duplicate.
        Returns False if the closed windows did not finish within ``timeout`` seconds.
        """
        self._stopping = True
        drained = await self._finish_windows(timeout)
        log.info("event=drain drained=%s windows_in_flight=%d parked_photos=%d", drained,
                 self._windows_in_flight, len(self.window))
        return drained

    def close(self) -> None:
        """Wait for the core thread's current task (a window, a restore) to end; take no new one."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def _finish_windows(self, timeout: float) -> bool:
        return await finish_in_flight(lambda: self._windows_in_flight, self.clustering_alive, timeout)

    # -- the window ---------------------------------------------------------------------------------
    async def add_events(self, events: list[Any]) -> None:
        # Events of the unjoined partition taken around a rebalance: they wait for this worker to
        # be the founder again (or are dropped by the offset guard, if another worker went on).
        await self._ready.wait()
        self._last_event = time.monotonic()
        for event in events:
            message = event.message
            if not await self.input_order.accept(message):
                continue
            self.counters["events_in"] += 1
            tp = (message.topic, message.partition)
            next_offset, next_row = self._input_positions.get(tp, (-1, 0))
            if message.offset < next_offset:  # in the stored state already: skip, do not re-cluster
                self.counters["replays_skipped"] += 1
                continue
            first_row = next_row if message.offset == next_offset else 0
            if message.key == JOINS_KEY:
                window = self._open_window()
                window.messages.append(message)
                try:
                    window.joins.append(decode_joins(message.value))
                    window.n_joined_elsewhere += int(window.joins[-1][1].sum())
                except ValueError as e:
                    window.dead_letters.add(message, [(None, str(e))])
                await self._close_if_full(window)
                continue
            decoded = self.decoder.decode(message.value, message.key)
            if None in decoded.ts:
                missing_ts = [row for row, ts in enumerate(decoded.ts) if ts is None]
                errors = decoded.errors + [(row, f"row {row}: a forwarded photo needs its ts_in") for row in missing_ts]
                rows: Any = [row for row, ts in enumerate(decoded.ts) if ts is not None][first_row:]
            else:  # every row usable: a range, which _add_rows takes without a pass per row
                errors, rows = decoded.errors, range(first_row, len(decoded.ts))
            await self._add_rows(message, decoded, rows, first_row, errors)
        self._last_event = time.monotonic()

    def _open_window(self) -> Window:
        """The window being filled, its clock started by its first content."""
        window = self.window
        window.generation = self._generation
        if window.empty:
            window.opened = time.monotonic()
        return window

    async def _add_rows(self, message: Any, decoded: Any, rows: list[int] | range, taken: int,
                        errors: list[tuple[int | None, str]]) -> None:
        """Put an event's photos into windows of exactly n: an event that does not fit is split, and
        acknowledged (with its dead letter, if any) by the window that takes its last photo. The
        window that takes its first photos records how many (``split``), so that a restart skips
        exactly those."""
        while True:
            window = self._open_window()
            room = self.settings.window_size - (len(window) + window.n_joined_elsewhere)
            part = rows if self._holding or room >= len(rows) else rows[:max(room, 0)]
            if type(part) is range and part.step == 1:  # a slice of each column, not a pass per row
                window.ids.extend(decoded.ids[part.start:part.stop])
                window.hashes.extend(decoded.hashes[part.start:part.stop])
                window.ts_in.extend(decoded.ts[part.start:part.stop])
            else:
                window.ids.extend(decoded.ids[row] for row in part)
                window.hashes.extend(decoded.hashes[row] for row in part)
                window.ts_in.extend(decoded.ts[row] for row in part)
            rows, taken = rows[len(part):], taken + len(part)
            if not rows:
                window.messages.append(message)
                if errors:
                    window.dead_letters.add(message, errors)
                await self._close_if_full(window)
                return
            window.split = (message.topic, message.partition, message.offset, taken)
            await self._close_window()

    async def _close_if_full(self, window: Window) -> None:
        """A window is n photos of the stream, as in the paper: those the join stage joined count
        too, so that windows close as often as with one stage, and the pending pool is retried.
        Join counts past the window's end count for the windows after it (one closes for each n of
        them), so that windows keep ending every n photos of the stream."""
        while len(window) + window.n_joined_elsewhere >= self.settings.window_size and not self._holding:
            await self._close_window()
            window = self.window

    async def flush_if_due(self) -> None:
        """Close a partial window once it is old; give an idle stream's pending photos their outcome."""
        if not self._ready.is_set() or self._holding:
            return
        window, now = self.window, time.monotonic()
        if not window.empty and now - window.opened >= self.settings.max_wait_s:
            await self._close_window()
            self._idle_flushed = False
        elif (window.empty and self.settings.pending_idle_s > 0 and not self._idle_flushed
              and self._windows_in_flight == 0 and now - self._last_event >= self.settings.pending_idle_s):
            # Held-back photos are retried only with new photos; on a stream that went quiet they
            # would wait forever, so they are declared noise and their consumers get an answer.
            self._idle_flushed = True
            assert self._queue is not None
            await self._queue.put(Window(flush_pending=True, generation=self._generation))

    @property
    def _holding(self) -> bool:
        """No window closes while the worker stops or the unjoined partition is being revoked."""
        return self._stopping or self._revoking

    async def _close_window(self) -> None:
        window = self.window
        window.carry_after = max(0, len(window) + window.n_joined_elsewhere - self.settings.window_size)
        self.window = Window(generation=self._generation, n_joined_elsewhere=window.carry_after)
        self._idle_flushed = False
        assert self._queue is not None
        # Counted from here until clustered: a backlog being worked off is not an idle stream.
        self._windows_in_flight += 1
        await self._queue.put(window)
        self._last_event = time.monotonic()

    async def _cluster_windows(self) -> None:
        """Clusters the closed windows in order and hands each to :meth:`_publish_windows`: window
        k+1 is clustered while window k is sent, acknowledged and committed."""
        assert self._queue is not None and self._clustered is not None
        loop = asyncio.get_running_loop()
        while True:
            window = await self._queue.get()
            try:
                if window.generation != self._generation:  # closed before the partition was revoked
                    self._window_done(window)
                    continue
                started = time.perf_counter()
                clustered = await loop.run_in_executor(self._executor, self._process, window)
                clustered.seconds = time.perf_counter() - started
                await self._clustered.put((window, clustered))
            except Exception as e:  # a failed window must not be acked: crash so it is redelivered
                await self._window_failed(e)
                raise

    async def _publish_windows(self) -> None:
        """The clustered windows' commit sequences, one window after the other, in window order."""
        assert self._clustered is not None
        while True:
            window, clustered = await self._clustered.get()
            try:
                if window.generation != self._generation:
                    # The partition was revoked while this window was clustered: its next owner
                    # clusters these photos, and this clusterer is rebuilt before it founds again.
                    self._dirty = True
                    self._window_done(window)
                    continue
                started = time.perf_counter()
                await self._publish(window, clustered)
                result = clustered.result
                if not window.flush_pending:
                    if result is not None:
                        self._log_window(result, len(window), clustered.seconds, time.perf_counter() - started)
                    self._last_event = time.monotonic()
                self._window_done(window)
            except Exception as e:  # a failed window must not be acked: crash so it is redelivered
                await self._window_failed(e)
                raise

    def _window_done(self, window: Window) -> None:
        """A closed window leaves the count of windows in flight (an idle flush never entered it)."""
        if not window.flush_pending:
            self._windows_in_flight -= 1

    async def _window_failed(self, error: Exception) -> None:
        log.exception("event=window_failed")
        await crash_worker(self.app, error, "window failed: its photos are redelivered after a restart")

    def _process(self, window: Window) -> _Clustered:
        """(in the core thread) The core call of a window, then the records that read the clusterer,
        before the next window changes it."""
        started = time.thread_time()
        try:
            result = self._process_window(window)
            return self._records_of(window, result)
        finally:
            self.counters["cpu_seconds"] += time.thread_time() - started

    def _process_window(self, window: Window) -> WindowResult | None:
        clusterer = self.clusterer
        for clusters, counts, ts in window.joins:
            # A copy that had not yet read a retirement may still join the retired center.
            self.counters["joins_to_retired"] += clusterer.record_joins(clusters, counts, ts)
        if window.flush_pending:
            return clusterer.flush(time.time()) if clusterer.n_pending_ else None
        if not window.ids and not clusterer.n_pending_:
            return None
        # A window of join counts only still retries the pending pool: where the join stage takes
        # every photo, held-back photos would otherwise wait for the idle flush and become noise.
        codes = from_bytes(window.hashes, self.settings.n_bits) if window.ids else np.zeros(
            (0, self.settings.n_bits // 64), dtype=np.uint64)
        return clusterer.process(window.ids, codes, time.time())

    def _records_of(self, window: Window, result: WindowResult | None) -> _Clustered:
        """(in the core thread) A window's new center blocks, retirements and state records."""
        clustered = _Clustered(result)
        self._carry = window.carry_after
        touched = [clusters for clusters, _, _ in window.joins]
        if result is not None:
            changed = np.concatenate((result.new_cluster_ids, result.retired))
            if changed.shape[0]:
                clustered.centers = center_records(self.clusterer, changed, result.window)
            clustered.retired = encode_retirements(result.retired, result.retired_sizes, result.retired_created_ts,
                                                   result.retired_updated_ts, result.window, result.now)
            touched += [result.touched_clusters, result.retired]
            for message in window.messages:
                tp = (message.topic, message.partition)
                self._input_positions[tp] = max(self._input_positions.get(tp, (0, 0)), (message.offset + 1, 0))
            if window.split is not None:
                topic, partition, offset, taken = window.split
                self._input_positions[(topic, partition)] = (offset, taken)
        if result is not None or window.joins:
            clustered.state = state_records(self.clusterer, np.concatenate(touched) if touched else np.zeros(0, np.int64),
                                            self._input_positions, self._pending_chunks, self._carry)
            # The next window's state drops the pending chunks this one leaves unused. Set before this
            # window is committed: a failed commit stops the worker.
            self._pending_chunks = n_pending_chunks(clustered.state)
        return clustered

    async def _publish(self, window: Window, clustered: _Clustered) -> None:
        """The window's commit sequence: dead letters, new center blocks, outcomes, then state."""
        s = self.settings
        result = clustered.result
        outputs: list[Record] = []
        if result is not None:
            # (in the found stage's publish thread: the event loop stays free)
            outputs = await self.commit.prepare(s.unjoined_topic, window_records, result, window.ts_in, time.time())
        # Retirements after the center blocks that drop them: a consumer told of one finds the
        # block already without it.
        await self.commit.commit([(s.dlq_topic, window.dead_letters.records), (s.centers_topic, clustered.centers),
                                  (s.output_topic, outputs), (s.retired_topic, clustered.retired),
                                  (s.state_topic, clustered.state)],
                                 window.messages, s.unjoined_topic, source_partition=0)
        if window.messages:
            self._committed_offset = max(message.offset for message in window.messages) + 1
        window.dead_letters.count_into(self.counters)
        if result is not None:
            final_outcomes = result.outcome[result.is_final]
            counts = self.counters["outcomes"]
            for outcome in (Outcome.JOINED, Outcome.FOUNDED, Outcome.NOISE):
                counts[outcome.name.lower()] += int(np.count_nonzero(final_outcomes == outcome))
            self.counters["retired"] += int(result.retired.shape[0])
            if window.flush_pending:
                log.info("event=idle_flush idle_s=%.0f noise=%d", s.pending_idle_s, result.n_noise)

    def _log_window(self, result: WindowResult, n_photos: int, seconds: float, publish_seconds: float) -> None:
        self.counters["windows"] += 1
        self.counters["photos_in"] += n_photos
        self.counters["last_window"] = {
            "window": result.window, "photos": n_photos, "seconds": round(seconds, 3),
            "publish_seconds": round(publish_seconds, 3),
            "joined": result.n_joined, "founded": result.n_founded, "held": result.n_held, "noise": result.n_noise,
            "new_clusters": result.n_new_clusters, "retired": int(result.retired.shape[0]),
        }
        dead_letters = self.counters["dlq_events"] + self.counters["dlq_rows"]
        log.info("event=window_clustered window=%d photos=%d seconds=%.3f publish_seconds=%.3f joined=%d founded=%d "
                 "held=%d noise=%d new_clusters=%d retired=%d clusters=%d pending=%d dead_letters=%d",
                 result.window, n_photos, seconds, publish_seconds, result.n_joined, result.n_founded,
                 result.n_held, result.n_noise, result.n_new_clusters, int(result.retired.shape[0]),
                 result.n_clusters, result.n_pending,
                 dead_letters - self._dead_letters_logged)
        self._dead_letters_logged = dead_letters

    # -- look-ups -----------------------------------------------------------------------------------
    def cluster(self, cluster_id: int) -> dict[str, Any] | None:
        """One cluster's center and figures (size and last join counted over both stages)."""
        clusterer = self.clusterer
        if clusterer is None:
            return None
        row = int(clusterer.rows_of(np.array([cluster_id]))[0])
        if row < 0:  # never founded, or retired
            return None
        return {
            "cluster": cluster_id,
            "center": clusterer.centers_[row].astype(">u8").tobytes().hex(),
            "size": int(clusterer.sizes_[row]),
            "created_ts": float(clusterer.created_ts_[row]),
            "updated_ts": float(clusterer.updated_ts_[row]),
        }

    def stats(self) -> dict[str, Any]:
        clusterer = self.clusterer
        return {
            **self.counters,
            "role": "founder" if self.owner else "joiner",
            "ready": self.ready,
            "windows_in_flight": self._windows_in_flight,
            "clusters": clusterer.n_clusters_ if clusterer is not None else 0,
            "next_cluster_id": clusterer.next_cluster_id_ if clusterer is not None else 0,
            "pending": clusterer.n_pending_ if clusterer is not None else 0,
            "window_fill": len(self.window),
        }
