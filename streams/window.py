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
from .metrics import resident_memory_bytes
from .state import (
    CENTERS_PREFIX,
    cluster_record,
    n_pending_chunks,
    restore_clusterer,
    stale_pending_keys,
    state_records,
    stored_input_positions,
)

log = logging.getLogger("photoclust.window")


@dataclass
class Window:
    """Decoded photos waiting to be clustered, and the messages to ack once they are."""

    ids: list[str] = field(default_factory=list)
    hashes: list[bytes] = field(default_factory=list)
    ts_in: list[float] = field(default_factory=list)
    messages: list[Any] = field(default_factory=list)
    opened: float = 0.0  # monotonic time of the first message
    flush_pending: bool = False  # an idle stream's pending pool is declared noise

    def __len__(self) -> int:
        return len(self.ids)


class ClusteringWorker:
    """Owns the core clusterer and the current window; the agents only call into it."""

    def __init__(self, settings: Settings, app: Any, output_topic: Any, dlq_topic: Any, state_topic: Any,
                 tables: tuple[Any, Any]) -> None:
        self.settings = settings
        self.app = app
        self.output_topic = output_topic
        self.dlq_topic = dlq_topic
        self.state_topic = state_topic
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
        # Next input offset the window takes, per partition, and the partitions being re-fetched after
        # Faust lost events ([highest offset seen since the seek, offset the last re-fetch began with]):
        # see _in_sequence.
        self._next_offset: dict[tuple[str, int], int] = {}
        self._refetching: dict[tuple[str, int], list[int]] = {}
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
        """Wait until the tables hold every state record, then rebuild the clusterer from them."""
        loop = asyncio.get_running_loop()
        # Compile or load the Numba kernels now, not inside the first window.
        await loop.run_in_executor(self._executor, warm_up, self.settings.n_bits)
        await self.app.tables.recovery.completed.wait()
        last_record = await loop.run_in_executor(None, self._last_state_record_offset)
        while self._state_applied < last_record:
            await asyncio.sleep(0.1)
        tables = _TableView(self.centers_table, self.clusterer_table)
        restored = restore_clusterer(tables)
        # Events below these offsets are already in the restored state (their window's state was
        # written, its offsets not yet committed when the last worker died): skip, do not re-cluster.
        self._input_positions = stored_input_positions(tables)
        self.clusterer = restored if restored is not None else self._new_clusterer()
        if restored is not None:
            self._pending_chunks = (restored.n_pending_ + 4095) // 4096
        log.info("event=state_restored clusters=%d pending=%d windows=%d",
                 self.clusterer.n_clusters_ if restored else 0, restored.n_pending_ if restored else 0,
                 restored.n_windows_ if restored else 0)
        self._queue = asyncio.Queue(maxsize=1)
        self._last_event = time.monotonic()
        self._cluster_task = asyncio.get_running_loop().create_task(self._cluster_windows())
        self._ready.set()

    def _new_clusterer(self) -> OnlineClusterer:
        s = self.settings
        return OnlineClusterer(
            n_bits=s.n_bits, window_size=s.window_size + self.decoder.max_batch_rows,
            new_centers_ratio=s.new_centers_ratio, radius=s.radius, min_cluster_size=s.min_cluster_size,
            pending_capacity=s.pending_capacity, max_iter=s.max_iter, random_state=s.seed,
        )

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

    async def wait_ready(self) -> None:
        await self._ready.wait()

    @property
    def ready(self) -> bool:
        """The clusterer is rebuilt from the tables and clustering runs."""
        return self._ready.is_set() and self._cluster_task is not None and not self._cluster_task.done()

    def clustering_alive(self) -> bool:
        """False once the coroutine that clusters windows has died (liveness)."""
        return self._cluster_task is None or not self._cluster_task.done()

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
        self._refetching.clear()  # Faust seeks every assigned partition to its committed offset
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
            if not await self._in_sequence(message):
                continue
            self.counters["events_in"] += 1
            if message.offset < self._input_positions.get((message.topic, message.partition), -1):
                message.ack(self.app.consumer)
                self.counters["replays_skipped"] += 1
                continue
            decoded = self.decoder.decode(message.value, message.key)
            for row, reason in decoded.errors:
                await self._dead_letter(message, row, reason)
            # Only now take the window: while a dead letter was being sent, the timer may have
            # closed the previous one, and this message and its rows must not join a window
            # that is already being clustered.
            window = self.window
            if not window.messages:
                window.opened = time.monotonic()
            window.messages.append(message)
            if decoded.ids:
                default_ts = message.timestamp or time.time()
                window.ids.extend(decoded.ids)
                window.hashes.extend(decoded.hashes)
                window.ts_in.extend(default_ts if ts is None else ts for ts in decoded.ts)
                if len(window) >= self.settings.window_size and not self._stopping:
                    await self._close_window()
        self._last_event = time.monotonic()

    async def _in_sequence(self, message: Any) -> bool:
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
        committed = self.app.consumer._committed_offset.get(message.tp)
        expected = self._next_offset.get(key)
        if expected is None:
            # A group with no committed offset starts at the log start (consumer_auto_offset_reset).
            if committed is None:
                committed = (await self.app.consumer.earliest_offsets(message.tp)).get(message.tp)
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
            await self.app.consumer.seek_wait({message.tp: expected})
        except Exception as e:  # e.g. the partition was revoked meanwhile: its new owner starts at the commit
            log.warning("event=input_seek_failed topic=%s partition=%d error=%r", message.topic, message.partition, e)
            self._refetching.pop(key, None)
        return False

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

    async def _dead_letter(self, message: Any, row: int | None, reason: str) -> None:
        value = encode_dlq(reason, row, message.topic, message.partition, message.offset, message.key, message.value)
        # The record carries the original key (cut, with its size); the Kafka key is cut too, or a
        # multi-megabyte key would exceed the producer's request size and crash the agent.
        key = message.key[:MAX_DLQ_VALUE_BYTES] if message.key is not None else None
        if self.settings.processing_guarantee == "exactly_once":
            await self._send_all(self.settings.dlq_topic, [(key, value)])
        else:
            await self.dlq_topic.send(key=key, value=value)
        self.counters["dlq_rows" if row is not None else "dlq_events"] += 1
        log.debug("dead-lettered %s[%d]@%d: %s", message.topic, message.partition, message.offset, reason)

    async def _cluster_windows(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            window = await self._queue.get()
            try:
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
                await self.app.crash(RuntimeError("window failed"))
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
        }


class _TableView:
    """``get(key)`` over the two tables, for :func:`restore_clusterer`."""

    def __init__(self, centers: Any, clusterer: Any) -> None:
        self._centers, self._clusterer = centers, clusterer

    def get(self, key: bytes, default: Any = None) -> Any:
        table = self._centers if key.startswith(CENTERS_PREFIX) else self._clusterer
        return table.get(key, default)
