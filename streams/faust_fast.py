"""A cheaper per-record path through Faust (faust-streaming 0.15.3, aiokafka driver).

Faust hands every Kafka record to the agents' channels in ``Consumer._drain_messages``, which
awaits each delivery as ``Service.wait_first(callback(message), suspend_flow.wait())``: four tasks
and an ``asyncio.wait`` per record, so that a delivery blocked on a full channel (or on suspended
flow) can be abandoned when a rebalance suspends the flow. Once a channel is full, every record
waits for one free slot, and the fetcher and the agent hand over the records one by one.

:class:`Consumer` keeps that rule and drops the per-record cost:

* a record that cannot block (flow active, the producer buffer below its limit, room in every
  channel of its partition) is delivered by a plain ``await``; anything else goes Faust's way;
* once a channel is full, the fetcher waits until the channel is down to its pressure-drop size
  (or the flow is suspended), then delivers the next records straight in again;
* a fetch request waits at most ``FETCH_MAX_WAIT_MS`` at the broker for new records (Faust fixes
  1,500 ms). aiokafka keeps one fetch request in flight per broker, for the partitions with nothing
  buffered at the time: a partition that gets records meanwhile (the unjoined topic, which the join
  stage writes while the input backlog is being worked off) waits until that request returns.

:class:`RawSchema` turns a record into an event without Faust's serializer registry (the topics
carry bytes that the stages decode themselves), and :class:`LightMonitor` keeps of Faust's Monitor
only what Faust itself reads (read offsets, and the streams' last inbound time for its
slow-processing warnings).
"""

from __future__ import annotations

import asyncio
from time import monotonic
from typing import Any

import faust
from faust.sensors import Monitor
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as _aiokafka

# How often a fetcher that found a channel full looks whether it has drained.
ROOM_POLL_S = 0.002
FETCH_MAX_WAIT_MS = 100


class ConsumerThread(_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read when the consumer starts its fetcher
        return consumer


class Consumer(_aiokafka.Consumer):
    _producer_buffer: Any = None
    _producer_pending: Any = None

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - runs in a worker
        # Consumer._drain_messages of faust-streaming 0.15.3; only the delivery differs.
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        can_deliver_now = self._can_deliver_now
        suspended = self.suspend_flow.is_set
        yield_every = 100
        num_since_yield = 0
        sleep = asyncio.sleep
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                ait = getmany(timeout=1.0)
                # Sleeping because sometimes getmany is called in a loop never releasing to the event loop
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in ait:
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await sleep(0)
                            num_since_yield = 0
                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            if gap > 1 and r_offset:
                                if acks_enabled_for(message.topic):
                                    await self._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None:
                                if self._n_acked >= commit_every:
                                    self._n_acked = 0
                                    await self.commit()
                            direct = not suspended() and can_deliver_now(tp)
                            if not direct and not suspended():
                                await self._wait_for_room(tp)
                                direct = not suspended() and can_deliver_now(tp)
                            if direct:
                                await callback(message)
                            else:
                                await self.wait_first(callback(message), self.suspend_flow.wait())
                            set_read_offset(tp, offset)
                        else:
                            self.log.dev("DROPPED MESSAGE ROFF %r: k=%r v=%r", offset, message.key, message.value)
                    unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)

    def buffer_fill(self, topic: str) -> float:
        """How full the fullest channel of ``topic``'s partitions is (0 to 1; 0 if none is known)."""
        fill = 0.0
        for tp in list(self.app.topics._tp_to_callback):
            if tp.topic == topic:
                for channel in self._channels(tp) or ():
                    queue = channel.queue
                    if queue.maxsize:
                        fill = max(fill, queue.qsize() / queue.maxsize)
        return fill

    def _channels(self, tp: Any) -> Any:
        """The channels the conductor delivers ``tp`` to (None: not known, e.g. without Cython)."""
        return getattr(self.app.topics._tp_to_callback.get(tp), "channels", None)

    def _can_deliver_now(self, tp: Any) -> bool:
        """True if delivering a record of ``tp`` cannot block: flow active, the producer buffer not
        over its limit (the conductor waits for it otherwise), the conductor's callback map not
        being rebuilt (a lock), room in every channel of ``tp``."""
        app = self.app
        if not app.flow_control.is_active() or app.topics._tp_to_callback_lock.locked() or self._producer_over_limit():
            return False
        channels = self._channels(tp)
        if channels is None:
            return False
        for channel in channels:
            if channel.queue.full():
                return False
        return True

    def _producer_over_limit(self) -> bool:
        # ProducerBuffer.size reads a setting on every call; its queue is read directly instead.
        buffer = self._producer_buffer
        if buffer is None:
            buffer = self._producer_buffer = self.app.producer.buffer
            if not self.app.conf.producer_threaded:
                self._producer_pending = buffer.pending
        pending = self._producer_pending
        size = pending.qsize() if pending is not None else buffer.size
        return size > buffer.max_messages

    async def _wait_for_room(self, tp: Any) -> None:
        """Until every channel of ``tp`` is down to its pressure-drop size, the flow is suspended,
        or the consumer stops."""
        channels = self._channels(tp)
        if not channels:
            return
        suspended, stopped = self.suspend_flow.is_set, self._stopped.is_set
        while not (suspended() or stopped()):
            if all(channel.queue.qsize() <= channel.queue.pressure_drop_size for channel in channels):
                return
            await asyncio.sleep(ROOM_POLL_S)


class Transport(_aiokafka.Transport):
    Consumer = Consumer


class RawSchema(faust.Schema):
    """Key and value as the record's bytes, which is what ``raw`` serializers with ``bytes`` types
    give, without a look-up in Faust's serializer registry for every record."""

    def compile(self, app: Any, *, on_key_decode_error: Any = None, on_value_decode_error: Any = None,
                default_propagate: bool = False) -> Any:
        event_type = app.conf.Event

        async def decode(message: Any, *, propagate: bool = default_propagate) -> Any:
            return event_type(app, message.key, message.value, message.headers, message)

        return decode


class LightMonitor(Monitor):
    """Faust's Monitor without its per-event statistics, which nothing of photoclust reads."""

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        self.tp_read_offsets[tp] = offset

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> None:
        self.stream_inbound_time[tp] = monotonic()
        return None

    def on_stream_event_out(self, tp: Any, offset: int, stream: Any, event: Any, state: Any = None) -> None:
        pass

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        pass


__all__ = ["Consumer", "ConsumerThread", "LightMonitor", "RawSchema", "Transport"]
