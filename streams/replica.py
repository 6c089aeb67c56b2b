"""This process's read-only copy of the cluster centers, read from the compacted centers topic.

Every worker holds one, as Kafka Streams' GlobalKTable does, and the join stage joins against it.
A thread reads partition 0 of ``photoclust-centers`` from the offset the local store holds (from the
start with a fresh data dir), puts each center block into the store and into a
:class:`core.centers.CenterIndex`, and once it has reached the end it has seen at start it counts as
caught up and goes on tailing the topic. A copy that lags only holds fewer centers: a photo it does
not join goes to the found stage, which joins it against every center. So a stale copy costs extra
work, never a second center for a photo.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque

import numpy as np
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from core.centers import CenterIndex

from .config import Settings
from .kafka_io import watermarks
from .state import CENTERS_PREFIX, CenterBlock, center_update
from .store import LocalStore

log = logging.getLogger("photoclust.replica")
POLL_S = 0.2
BATCH = 500
WATERMARK_EVERY_S = 2.0
# Fault injection, for the tests of a copy that lags: once caught up, the reader waits this many
# seconds before it reads on. Not a setting: no deployment wants it.
HOLD_ENV = "PHOTOCLUST_FAULT_HOLD_CENTERS_S"
DELAYS_KEPT = 1000  # the newest center blocks' delays, for /stats percentiles


class CentersReplica:
    """Center blocks from the centers topic into the local store and a :class:`CenterIndex`."""

    def __init__(self, settings: Settings, store: LocalStore) -> None:
        self.settings = settings
        self.topic = settings.centers_topic
        self.store = store
        self.index = CenterIndex(settings.n_bits)
        self._lock = threading.Lock()  # the reader adds centers while the join stage searches
        self.caught_up = threading.Event()
        self.position = store.next_offset(self.topic)  # next offset of the topic not yet applied
        self.high_watermark = -1
        self.windows_seen = 0  # found-stage windows whose centers this copy holds
        self.error: BaseException | None = None
        # seconds from a center block's creation on the founder to its arrival in this copy
        self._delays: deque[float] = deque(maxlen=DELAYS_KEPT)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- life cycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Load the blocks the store holds, then read and tail the topic in a thread."""
        self._apply_blocks(list(self.store.items(self.topic, CENTERS_PREFIX)))
        log.info("event=centers_loaded source=local_store centers=%d next_offset=%d", self.index.n_centers_,
                 self.position)
        self._thread = threading.Thread(target=self._run, name="photoclust-centers", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def lag(self) -> int | None:
        """Records of the topic not yet in this copy (None before the first look at the topic)."""
        return None if self.high_watermark < 0 else max(0, self.high_watermark - self.position)

    def stats(self) -> dict[str, object]:
        delays = np.asarray(self._delays)
        return {"centers": self.index.n_centers_, "lag": self.lag, "position": self.position,
                "center_delay_s": {"n": int(delays.size),
                                   "p50": round(float(np.percentile(delays, 50)), 3) if delays.size else None,
                                   "p99": round(float(np.percentile(delays, 99)), 3) if delays.size else None}}

    def wait_for(self, offset: int, timeout: float) -> None:
        """Block until every record below ``offset`` is applied; raise TimeoutError or the reader's error."""
        deadline = time.monotonic() + timeout
        while self.position < offset:
            if self.error is not None:
                raise RuntimeError(f"the centers reader failed: {self.error!r}") from self.error
            if time.monotonic() > deadline:
                raise TimeoutError(f"the copy of {self.topic} reached offset {self.position}, not {offset}, "
                                   f"within {timeout:g} s")
            time.sleep(0.05)

    # -- the join stage's call --------------------------------------------------------------------
    def join(self, codes: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, int]:
        """``(labels, distances, windows_seen)``: nearest held center within ``radius`` per code."""
        with self._lock:
            labels, distances = self.index.join(codes, radius)
            return labels, distances, self.windows_seen

    # -- the reader thread ------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._read()
        except BaseException as e:  # /health reports a dead reader; the join stage stops with it
            self.error = e
            log.exception("event=centers_reader_failed")

    def _read(self) -> None:
        consumer = Consumer(self.settings.confluent_config(**{
            "group.id": f"{self.settings.app_id}-centers-reader", "enable.auto.commit": False,
            "enable.partition.eof": True, "isolation.level": "read_committed"}))
        try:
            tp = TopicPartition(self.topic, 0)
            low, self.high_watermark = watermarks(consumer, tp)
            start_end = self.high_watermark
            if self.position < low:  # a fresh store, or records compacted away under an old one
                self.position = low
            consumer.assign([TopicPartition(self.topic, 0, self.position)])
            if self.position >= start_end:
                self._set_caught_up()
            hold_s = float(os.environ.get(HOLD_ENV) or 0)
            checked = time.monotonic()
            while not self._stop.is_set():
                if hold_s and self.caught_up.is_set():
                    log.warning("event=centers_reader_held seconds=%g reason=%s", hold_s, HOLD_ENV)
                    self._stop.wait(hold_s)
                    hold_s = 0.0
                messages = consumer.consume(BATCH, POLL_S)
                records, at_end = [], False
                for message in messages:
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            # The end of what read_committed may read: past transaction markers too.
                            at_end, self.position = True, max(self.position, message.offset())
                        elif error.fatal():
                            raise KafkaException(error)
                        else:  # the broker away, a leader election: librdkafka retries by itself
                            log.warning("event=centers_reader_error error=%r", error.str())
                        continue
                    records.append((message.key(), message.value()))
                    self.position = message.offset() + 1
                if records:
                    self.store.apply(self.topic, records, self.position)
                    blocks = self._apply_blocks([(key, value) for key, value in records
                                                 if key is not None and key.startswith(CENTERS_PREFIX)])
                    if self.caught_up.is_set():  # blocks read at start say nothing about propagation
                        now = time.time()
                        self._delays.extend(now - float(block.created.max()) for block in blocks if len(block.created))
                if at_end:
                    self.high_watermark = max(self.high_watermark, self.position)
                elif time.monotonic() - checked > WATERMARK_EVERY_S:  # for the lag gauge
                    checked = time.monotonic()
                    try:
                        self.high_watermark = watermarks(consumer, tp, timeout=5.0)[1]
                    except KafkaException as e:  # the broker away: the gauge waits, reading goes on
                        log.warning("event=centers_watermark_failed error=%r", str(e))
                if not self.caught_up.is_set() and (at_end or self.position >= start_end):
                    self._set_caught_up()
        finally:
            consumer.close()

    def _apply_blocks(self, records: list[tuple[bytes, bytes | None]]) -> list[CenterBlock]:
        """Apply center-block records (tombstones too) to the index; returns the decoded blocks."""
        if not records:
            return []
        updates, blocks = [], []
        for key, value in records:
            update, block = center_update(key, value, self.settings.n_bits)
            updates.append(update)
            if block is not None:
                blocks.append(block)
        # A retirement rebuilds the index (linear in the centers held): the join stage waits meanwhile.
        with self._lock:
            self.index.update(updates)
            self.windows_seen = max([self.windows_seen] + [block.window + 1 for block in blocks])
        return blocks

    def _set_caught_up(self) -> None:
        log.info("event=centers_caught_up centers=%d next_offset=%d", self.index.n_centers_, self.position)
        self.caught_up.set()


__all__ = ["CentersReplica"]
