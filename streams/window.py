"""The worker's window: events in, compact columns, one core call per window, outcomes out.

The agent hands every batch of events to :meth:`ClusteringWorker.add_events`, which decodes them
into plain lists (no Faust event objects are kept, only their messages, for the ack), routes bad
events to the dead-letter topic, and queues the window once it is full or old. One coroutine
clusters the queued windows in order, off the event loop, while the agent keeps filling the next
window; a bounded queue gives backpressure.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from confluent_kafka import Consumer, KafkaError, TopicPartition

from core.codes import from_bytes
from core.online import OnlineClusterer, Outcome, WindowResult
from core.warmup import warm_up

from .codecs import MAX_DLQ_VALUE_BYTES, PhotoDecoder, encode_assignments, encode_dlq
from .config import Settings
from .input_order import InputOrderGuard
from .exposition import resident_memory_bytes
from .state import (
    CENTERS_PREFIX,
    CHANGEABLE_PARAMS,
    FIXED_PARAMS,
    PENDING_CHUNK,
    cluster_record,
    n_pending_chunks,
    param_changes,
    restore_clusterer,
    stale_pending_keys,
    state_records,
    stored_input_positions,
)

log = logging.getLogger("photoclust.window")
CRASH_GRACE_S = 20.0
EXIT_CRASHED = 1


def _exit_now(reason: Exception) -> None:
    log.critical("event=crash_exit reason=%r action='orderly stop took longer than %gs: exit now'", str(reason),
                 CRASH_GRACE_S)
    logging.shutdown()
    os._exit(EXIT_CRASHED)


@dataclass
class Window:
    """Decoded photos waiting to be clustered, and the messages to ack once they are."""

    ids: list[str] = field(default_factory=list)
    hashes: list[bytes] = field(default_factory=list)
    ts_in: list[float] = field(default_factory=list)
    messages: list[Any] = field(default_factory=list)
    # One record per bad event, sent and acknowledged with the window's outcomes before its
    # offsets are committed: a dead letter the broker refused never lets the commit pass its event.
    dead_letters: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    bad_events: int = 0  # events rejected whole
    bad_rows: int = 0  # rejected rows of batch events
    opened: float = 0.0  # monotonic time of the first message
    flush_pending: bool = False  # an idle stream's pending pool is declared noise

    def __len__(self) -> int:
        return len(self.ids)


class ClusteringWorker:
    """Owns the core clusterer and the current window; the agents only call into it."""

    def __init__(self, settings: Settings, app: Any, tables: tuple[Any, Any]) -> None:
        self.settings = settings
        self.app = app
        self.centers_table, self.clusterer_table = tables
        self.decoder = PhotoDecoder(n_bits=settings.n_bits)
        self.clusterer: OnlineClusterer | None = None
        self.window = Window()
        self._queue: asyncio.Queue[Window] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="photoclust-core")
        self._publish_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="photoclust-publish")
        self._publisher: Any = None  # RecordPublisher (confluent-kafka) for at-least-once output
        self._ready = asyncio.Event()
        self._state_applied = -1
        self._last_event = time.monotonic()
        self._idle_flushed = True
        self._windows_in_flight = 0
        self._pending_chunks = 0
        self._stopping = False
        self._input_positions: dict[tuple[str, int], int] = {}  # next offset per input partition, in the state
        self._input_order: InputOrderGuard | None = None  # built on first use: Faust's consumer exists by then
        self._dead_letters_logged = 0
        self._cluster_task: asyncio.Task | None = None
        self._lag_probe: Any = None
        self.lag_rows: list[Any] | None = None  # the group's lag per input partition, refreshed by a timer
        self.counters: dict[str, Any] = {
            "windows": 0, "photos_in": 0, "events_in": 0, "dlq_events": 0, "dlq_rows": 0,
            "outcomes": {o.name.lower(): 0 for o in Outcome if o is not Outcome.HELD},
            "last_window": None, "rebalances": 0, "lag_errors": 0, "replays_skipped": 0,
        }

    # -- start-up ---------------------------------------------------------------------------------
    async def restore(self) -> None:
        """Rebuild the clusterer from the tables (off the event loop), then start clustering.

        A restore that fails or takes longer than ``restore_timeout_s`` (broker away, inconsistent
        state) crashes the worker with the reason in its log, so that it exits non-zero and its
        supervisor restarts it; until clustering runs, /health answers 503.
        """
        timeout = self.settings.restore_timeout_s
        try:
            await asyncio.wait_for(self._restore(), timeout=timeout)
        except Exception as e:
            reason = f"not done within restore_timeout_s={timeout:g}" if isinstance(e, asyncio.TimeoutError) else repr(e)
            log.error("event=restore_failed action=exit reason=%r", reason)
            await self._crash(RuntimeError(f"restore failed: {reason}"))
            return
        self._queue = asyncio.Queue(maxsize=1)
        self._last_event = time.monotonic()
        self._cluster_task = asyncio.get_running_loop().create_task(self._cluster_windows())
        self._ready.set()

    async def _restore(self) -> None:
        loop = asyncio.get_running_loop()
        # Compile or load the Numba kernels now, not inside the first window.
        await loop.run_in_executor(self._executor, warm_up, self.settings.n_bits)
        await self.app.tables.recovery.completed.wait()
        last_record = await loop.run_in_executor(None, self._last_state_record_offset)
        while self._state_applied < last_record:
            await asyncio.sleep(0.1)
        # Millions of centers take seconds to decode and index: never on the event loop, which
        # must keep answering heartbeats and the web port meanwhile.
        self.clusterer, self._input_positions = await loop.run_in_executor(self._executor, self._rebuild)
        self._pending_chunks = (self.clusterer.n_pending_ + PENDING_CHUNK - 1) // PENDING_CHUNK
        log.info("event=state_restored clusters=%d pending=%d windows=%d", self.clusterer.n_clusters_,
                 self.clusterer.n_pending_, self.clusterer.n_windows_)

    def _rebuild(self) -> tuple[OnlineClusterer, dict[tuple[str, int], int]]:
        """The clusterer of the stored state with this worker's settings, and the input positions
        the state reflects (events below them are in the state already: skipped, not re-clustered)."""
        tables = _TableView(self.centers_table, self.clusterer_table)
        restored = restore_clusterer(tables)
        wanted = self._clusterer_params()
        if restored is None:
            return OnlineClusterer(**wanted), {}
        stored = {name: getattr(restored, name) for name in wanted}
        refused = param_changes(stored, wanted, FIXED_PARAMS)
        if refused:  # run_worker refuses this before the worker starts; a state that changed since is caught here
            raise ValueError("; ".join(f"{name}={new} differs from the stored state's {name}={old}"
                                       for name, old, new in refused))
        for name, old, new in param_changes(stored, wanted, CHANGEABLE_PARAMS):
            log.info("event=setting_changed name=%s stored=%r new=%r", name, old, new)
            setattr(restored, name, new)
        return restored, stored_input_positions(tables)

    async def _crash(self, reason: Exception) -> None:
        """Stop the worker with a non-zero exit code, so that its supervisor restarts it.

        Faust's stop after a crash was seen to hang in its consumer's shutdown (after a failed
        restore), leaving a process that neither clusters nor exits: a watchdog ends the process
        if the orderly stop takes longer than ``CRASH_GRACE_S``.
        """
        watchdog = threading.Timer(CRASH_GRACE_S, _exit_now, args=(reason,))
        watchdog.daemon = True
        watchdog.start()
        await self.app.crash(reason)

    def _clusterer_params(self) -> dict[str, Any]:
        s = self.settings
        # A window may overshoot window_size by one batch event, which is never split.
        return dict(n_bits=s.n_bits, window_size=s.window_size + self.decoder.max_batch_rows,
                    new_centers_ratio=s.new_centers_ratio, radius=s.radius, min_cluster_size=s.min_cluster_size,
                    pending_capacity=s.pending_capacity, max_iter=s.max_iter, random_state=s.seed)

    def _last_state_record_offset(self) -> int:
        """Offset of the last committed state record the tables have yet to apply (-1: none).

        Read, not computed from the log-end offset: with exactly_once the log ends with
        transaction markers (and aborted records) that no consumer ever sees.
        """
        consumer = Consumer(self.settings.confluent_config(**{
            "group.id": self.settings.app_id, "enable.auto.commit": False, "enable.partition.eof": True,
            "isolation.level": "read_committed", "auto.offset.reset": "earliest"}))
        try:
            tp = TopicPartition(self.settings.state_topic, 0)
            committed = consumer.committed([tp], timeout=30)[0].offset
            low, high = consumer.get_watermark_offsets(tp, timeout=30)
            start = committed if committed >= 0 else low
            if start >= high:
                return -1
            consumer.assign([TopicPartition(self.settings.state_topic, 0, start)])
            last = -1
            while True:
                message = consumer.poll(30)
                if message is None:
                    raise RuntimeError(f"reading {self.settings.state_topic} from offset {start} timed out")
                if message.error():
                    if message.error().code() == KafkaError._PARTITION_EOF:
                        return last
                    raise RuntimeError(f"reading {self.settings.state_topic}: {message.error()}")
                last = message.offset()
        finally:
            consumer.close()

    @property
    def input_order(self) -> InputOrderGuard:
        if self._input_order is None:
            self._input_order = InputOrderGuard(self.app.consumer)
        return self._input_order

    async def wait_ready(self) -> None:
        await self._ready.wait()

    @property
    def ready(self) -> bool:
        """The clusterer is rebuilt from the tables and clustering runs."""
        return self._ready.is_set() and self._cluster_task is not None and not self._cluster_task.done()

    def clustering_alive(self) -> bool:
        """True while the coroutine that clusters windows runs: not before the restore is done,
        nor after it died (liveness)."""
        return self._cluster_task is not None and not self._cluster_task.done()

    # -- stopping -----------------------------------------------------------------------------------
    async def drain(self, timeout: float) -> bool:
        """Finish the windows already closed, so that their offsets can be committed on the way out.

        The window still being filled is neither clustered nor acknowledged: its photos have no
        outcome yet and are redelivered to the next worker, so a graceful stop emits no duplicate.
        Returns False if the closed windows did not finish within ``timeout`` seconds.
        """
        self._stopping = True
        deadline = time.monotonic() + timeout
        while self._windows_in_flight and self.clustering_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        drained = self._windows_in_flight == 0
        log.info("event=drain drained=%s windows_in_flight=%d parked_photos=%d", drained,
                 self._windows_in_flight, len(self.window))
        return drained

    # -- lag ----------------------------------------------------------------------------------------
    async def refresh_lag(self) -> None:
        """Ask the broker for the group's committed and log-end offsets (off the event loop)."""
        try:
            self.lag_rows = await asyncio.get_running_loop().run_in_executor(None, self._lag_rows_blocking)
        except Exception as e:  # the broker may be away; /metrics says so and the worker carries on
            self.counters["lag_errors"] += 1
            self.lag_rows = None
            log.warning("event=lag_query_failed error=%r", str(e))

    def _lag_rows_blocking(self) -> list[Any]:
        if self._lag_probe is None:
            from .kafka_io import LagProbe

            self._lag_probe = LagProbe(self.settings, timeout=10.0)
        return self._lag_probe.rows()

    def on_rebalance(self, assigned: Any) -> None:
        self.counters["rebalances"] += 1
        self.input_order.on_rebalance()
        log.info("event=rebalance assigned=%s", ",".join(sorted(f"{tp.topic}:{tp.partition}" for tp in assigned)))

    # -- state records ------------------------------------------------------------------------------
    def apply_state_record(self, key: bytes, value: bytes | None, offset: int) -> None:
        table = self.centers_table if key.startswith(CENTERS_PREFIX) else self.clusterer_table
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
        self._state_applied = offset

    def cluster(self, cluster_id: int) -> dict[str, Any] | None:
        return cluster_record(self.centers_table, cluster_id)

    # -- the window ---------------------------------------------------------------------------------
    async def add_events(self, events: list[Any]) -> None:
        self._last_event = time.monotonic()
        for event in events:
            message = event.message
            if not await self.input_order.accept(message):
                continue
            self.counters["events_in"] += 1
            if message.offset < self._input_positions.get((message.topic, message.partition), -1):
                message.ack(self.app.consumer)
                self.counters["replays_skipped"] += 1
                continue
            decoded = self.decoder.decode(message.value, message.key)
            window = self.window
            if not window.messages:
                window.opened = time.monotonic()
            window.messages.append(message)
            if decoded.errors:
                self._add_dead_letter(window, message, decoded.errors)
            if decoded.ids:
                default_ts = message.timestamp or time.time()
                window.ids.extend(decoded.ids)
                window.hashes.extend(decoded.hashes)
                window.ts_in.extend(default_ts if ts is None else ts for ts in decoded.ts)
                if len(window) >= self.settings.window_size and not self._stopping:
                    await self._close_window()
        self._last_event = time.monotonic()

    async def flush_if_due(self) -> None:
        """Close a partial window once it is old; give an idle stream's pending photos their outcome."""
        if not self._ready.is_set() or self._stopping:
            return
        window, now = self.window, time.monotonic()
        if window.messages and now - window.opened >= self.settings.max_wait_s:
            await self._close_window()
            self._idle_flushed = False
        elif (not window.messages and self.settings.pending_idle_s > 0 and not self._idle_flushed
              and self._windows_in_flight == 0 and now - self._last_event >= self.settings.pending_idle_s):
            # Held-back photos are retried only with new photos; on a stream that went quiet they
            # would wait forever, so they are declared noise and their consumers get an answer.
            self._idle_flushed = True
            assert self._queue is not None
            await self._queue.put(Window(flush_pending=True))

    async def _close_window(self) -> None:
        window, self.window = self.window, Window()
        self._idle_flushed = False
        assert self._queue is not None
        # Counted from here until clustered: a backlog being worked off is not an idle stream.
        self._windows_in_flight += 1
        await self._queue.put(window)
        self._last_event = time.monotonic()

    @staticmethod
    def _add_dead_letter(window: Window, message: Any, errors: list[tuple[int | None, str]]) -> None:
        value = encode_dlq(errors, message.topic, message.partition, message.offset, message.key, message.value)
        # The record carries the original key (cut, with its size); the Kafka key is cut too, or a
        # multi-megabyte key would exceed the producer's request size and crash the agent.
        key = message.key[:MAX_DLQ_VALUE_BYTES] if message.key is not None else None
        window.dead_letters.append((key, value))
        bad_rows = sum(1 for row, _ in errors if row is not None)
        window.bad_rows += bad_rows
        window.bad_events += 0 if bad_rows else 1
        log.debug("dead-lettered %s[%d]@%d: %d problem(s), first: %s", message.topic, message.partition,
                  message.offset, len(errors), errors[0][1])

    async def _cluster_windows(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            window = await self._queue.get()
            # The commit sequence of a window: its dead letters, outcomes and state records are
            # sent and acknowledged by the broker (any refusal raises), and only then are its input
            # offsets acked and committed (with exactly_once, all of it is one transaction).
            try:
                if window.dead_letters:
                    await self._send_all(self.settings.dlq_topic, window.dead_letters)
                    self.counters["dlq_events"] += window.bad_events
                    self.counters["dlq_rows"] += window.bad_rows
                if window.flush_pending and self.clusterer.n_pending_:
                    result = await loop.run_in_executor(self._executor, self.clusterer.flush, time.time())
                    await self._publish(result, np.zeros(0))
                    log.info("event=idle_flush idle_s=%.0f noise=%d", self.settings.pending_idle_s, result.n_noise)
                if window.ids:
                    codes = from_bytes(window.hashes, self.settings.n_bits)
                    now = time.time()
                    started = time.perf_counter()
                    result = await loop.run_in_executor(self._executor, self.clusterer.process, window.ids, codes, now)
                    clustered = time.perf_counter()
                    for message in window.messages:
                        tp = (message.topic, message.partition)
                        self._input_positions[tp] = max(self._input_positions.get(tp, 0), message.offset + 1)
                    await self._publish(result, np.asarray(window.ts_in, dtype=np.float64))
                    self._log_window(result, len(window), clustered - started, time.perf_counter() - clustered)
                await self.app.producer.flush()
                consumer = self.app.consumer
                for message in window.messages:
                    message.ack(consumer)
                # Commit now rather than on Faust's timer: a crash then repeats at most the window
                # being clustered (and, with exactly_once, the window's outputs and offsets are
                # one Kafka transaction).
                await consumer.commit()
                if not window.flush_pending:
                    self._windows_in_flight -= 1
                    self._last_event = time.monotonic()
            except Exception:  # a failed window must not be acked: crash so it is redelivered
                log.exception("event=window_failed action=crash reason='its photos are redelivered after a restart'")
                await self._crash(RuntimeError("window failed"))
                raise

    async def _publish(self, result: WindowResult, ts_in_new: np.ndarray) -> None:
        final = np.flatnonzero(result.is_final)
        ts_in = np.where(np.arange(len(result)) < result.n_new,
                         np.concatenate((ts_in_new, np.zeros(len(result) - result.n_new))), result.first_seen)
        ids = [result.ids[i] for i in final]
        values = encode_assignments(ids, result.outcome[final], result.cluster[final], result.distance[final],
                                    result.window, ts_in[final], time.time())
        outputs = [(photo_id.encode("utf-8", "surrogatepass"), value) for photo_id, value in zip(ids, values)]
        records = state_records(self.clusterer, result, self._input_positions)
        chunks = n_pending_chunks(records)
        records = records[:-1] + stale_pending_keys(self._pending_chunks, chunks) + records[-1:]
        self._pending_chunks = chunks
        await self._send_all(self.settings.output_topic, outputs)
        await self._send_all(self.settings.state_topic, records)
        counts = self.counters["outcomes"]
        counts["joined"] += int(np.count_nonzero(result.outcome[final] == Outcome.JOINED))
        counts["founded"] += int(np.count_nonzero(result.outcome[final] == Outcome.FOUNDED))
        counts["noise"] += int(np.count_nonzero(result.outcome[final] == Outcome.NOISE))

    async def _send_all(self, topic: str, records: list[tuple[bytes, bytes | None]]) -> None:
        """Hand records to a producer and wait until the broker has them all.

        Faust's ``Topic.send`` cost about 0.5 ms per record here (20,000 outcomes took 11 s) and
        its aiokafka producer about 30 us, so at-least-once output goes through a librdkafka
        (confluent-kafka) producer, about 1-2 us per record, run in a thread. Exactly-once output
        must join the Kafka transaction that also commits the input offsets (Faust's transactional
        producer of the input partition), so that a crash aborts outcomes, state records and
        offsets together. Any failed delivery raises, and the window is then not acknowledged.
        """
        if self.settings.processing_guarantee == "exactly_once":
            transactions = self.app.consumer.transactions
            # Faust names the transaction of input partition p "<app id>-<topic group>-<p>";
            # exactly_once runs with one input partition (Settings checks it).
            transactional_id = f"{self.app.conf.id}-{self.app.assignor.group_for_topic(self.settings.input_topic)}-0"
            pending = [await transactions.producer.send(topic, key, value, None, None, None,
                                                        transactional_id=transactional_id)
                       for key, value in records]
            for future in pending:
                await future  # raises the delivery error, if any
            return
        await asyncio.get_running_loop().run_in_executor(self._publish_thread, self._produce_blocking, topic, records)

    def _produce_blocking(self, topic: str, records: list[tuple[bytes, bytes | None]]) -> None:
        if self._publisher is None:
            from .kafka_io import RecordPublisher

            self._publisher = RecordPublisher(self.settings)
        self._publisher.publish(topic, records)

    def _log_window(self, result: WindowResult, n_photos: int, seconds: float, publish_seconds: float) -> None:
        self.counters["windows"] += 1
        self.counters["photos_in"] += n_photos
        self.counters["last_window"] = {
            "window": result.window, "photos": n_photos, "seconds": round(seconds, 3),
            "publish_seconds": round(publish_seconds, 3),
            "joined": result.n_joined, "founded": result.n_founded, "held": result.n_held, "noise": result.n_noise,
            "new_clusters": result.n_new_clusters,
        }
        dead_letters = self.counters["dlq_events"] + self.counters["dlq_rows"]
        log.info("event=window_clustered window=%d photos=%d seconds=%.3f publish_seconds=%.3f joined=%d founded=%d "
                 "held=%d noise=%d new_clusters=%d clusters=%d pending=%d dead_letters=%d dead_letters_total=%d",
                 result.window, n_photos, seconds, publish_seconds, result.n_joined, result.n_founded,
                 result.n_held, result.n_noise, result.n_new_clusters, result.n_clusters, result.n_pending,
                 dead_letters - self._dead_letters_logged, dead_letters)
        self._dead_letters_logged = dead_letters

    def stats(self) -> dict[str, Any]:
        clusterer = self.clusterer
        return {
            **self.counters,
            "ready": self.ready,
            "windows_in_flight": self._windows_in_flight,
            "rss_bytes": resident_memory_bytes(),
            "clusters": clusterer.n_clusters_ if clusterer is not None and hasattr(clusterer, "n_bits_") else 0,
            "pending": clusterer.n_pending_ if clusterer is not None and hasattr(clusterer, "n_bits_") else 0,
            "window_fill": len(self.window),
            # What the clusterer runs with: the settings, also after a restart that changed them.
            "clustering": ({name: getattr(clusterer, name) for name in (*FIXED_PARAMS, *CHANGEABLE_PARAMS)}
                           if clusterer is not None else None),
        }


class _TableView:
    """``get(key)`` over the two tables, for :func:`restore_clusterer`."""

    def __init__(self, centers: Any, clusterer: Any) -> None:
        self._centers, self._clusterer = centers, clusterer

    def get(self, key: bytes, default: Any = None) -> Any:
        table = self._centers if key.startswith(CENTERS_PREFIX) else self._clusterer
        return table.get(key, default)
