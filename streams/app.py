"""The Faust app: topics, agents and web views, declared once from one Settings object.

The flow reads top to bottom:

    photo-hashes --(join_photos: decode, join within r against this worker's copy of the centers)
        --> cluster-assignments ("joined", at once)
        --> photoclust-unjoined (one partition: the photos that joined nothing, and join counts)
            --(found_clusters: window, core.OnlineClusterer in a thread)
            --> cluster-assignments ("founded", "joined", "noise")
            --> photoclust-centers (public, compacted: center blocks) --> every worker's copy
            --> photoclust-state (compacted: cluster sizes, pending pool, meta)
    bad events --> photo-hashes.dlq (one record per event, with the reasons)

Each stage sends its records and waits for the broker's acknowledgements before it commits its input
offsets (:mod:`streams.commit`), so a crash never loses a photo. State flows one way: the found
stage writes the two compacted topics, and every worker reads them back into its local store.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from aiohttp.web import Response

from core.codes import from_hex, hex_error

from .commit import CommitSequence
from .config import SECRET_FIELDS, Settings
from .exposition import CONTENT_TYPE, render, resident_memory_bytes
from .faust_fast import LightMonitor, RawSchema, Transport
from .found import FoundStage
from .input_order import InputOrderGuard
from .join import JoinStage
from .kafka_io import ResumeOffsets
from .replica import CentersReplica
from .state import CHANGEABLE_PARAMS, FIXED_PARAMS
from .store import LocalStore

log = logging.getLogger("photoclust")
# Keys and values are bytes we (de)serialise ourselves, so that undecodable input reaches the
# dead-letter topic instead of crashing Faust's decoder. RawSchema gives them as they are without a
# look-up in Faust's serializer registry per record; these settings say the same to Faust.
RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
# Faust's ack bookkeeping holds one list entry per message; take events in bounded batches. A take
# that does not fill waits TAKE_WITHIN_S for more: with batch events (2,000 of them are a million
# photos) every take waits it out, once per stage, so it is kept short.
TAKE_BATCH = 2_000
TAKE_WITHIN_S = 0.05
LAG_REFRESH_S = 5.0
# Offsets are committed by the stages' commit sequences, right after their records are
# acknowledged; Faust's own periodic commit could commit a transaction that holds half of a
# stage's records, so it is pushed out of the way.
FAUST_COMMIT_INTERVAL_S = 24 * 3600.0


class PhotoclustApp(faust.App):
    """A Faust app that lets the found stage finish its closed windows before Faust stops the
    consumer, so that a graceful stop (SIGTERM, Ctrl-C) commits every window it emitted outcomes for."""

    photoclust: "Worker | None" = None

    def _new_transport(self) -> Any:
        """Faust's aiokafka transport, with the cheaper hand-over of records to the agents of
        :mod:`streams.faust_fast`."""
        return Transport(self.conf.broker_consumer, self)

    async def on_stop(self) -> None:
        if self.photoclust is not None:
            timeout = self.photoclust.settings.drain_timeout_s
            await self.photoclust.join.drain(timeout)
            await self.photoclust.found.drain(timeout)
            await asyncio.get_running_loop().run_in_executor(None, self.photoclust.close)
        await super().on_stop()


@dataclass
class Worker:
    """Everything one worker process is made of; built once by :func:`create_app`."""

    settings: Settings
    app: faust.App
    store: LocalStore
    replica: CentersReplica
    join: JoinStage
    found: FoundStage
    lag_rows: list[Any] | None = None  # the group's lag per input partition, refreshed by a timer
    lag_errors: int = 0
    rebalances: int = 0
    assigned: bool = False  # the group has given this worker its share (maybe no partition) once
    _lag_probe: Any = None
    resume_offsets: ResumeOffsets | None = None  # the offset guard's broker look-ups

    async def start(self) -> None:
        """Load this worker's copy of the centers (off the loop) and connect the stages' publisher;
        the found stage restores when Kafka assigns this worker the unjoined partition."""
        connecting = asyncio.ensure_future(self.join.commit.connect())
        await asyncio.get_running_loop().run_in_executor(None, self.replica.start)
        self.found.replica_loaded.set()
        await connecting

    def close(self) -> None:
        """Stop the centers reader, then close the local store once the found stage's thread (a
        restore may still read the store) is done: an orderly close, not one at interpreter exit."""
        self.replica.stop()
        self.found.close()
        if self.resume_offsets is not None:
            self.resume_offsets.close()
        if self.replica.alive:  # stuck in a call to the broker: it may still write to the store
            log.warning("event=store_left_open reason='the centers reader did not stop within 10 s'")
            return
        self.store.close()
        log.info("event=store_closed")

    def on_assigned(self, assigned: Any) -> None:
        self.rebalances += 1
        self.assigned = True
        self.join.resume()
        self.found.on_assigned(assigned)

    async def on_revoked(self, revoked: Any) -> None:
        """Finish both stages' work in flight while its offsets are still this worker's to commit."""
        timeout = self.settings.drain_timeout_s
        await asyncio.gather(self.join.pause(timeout), self.found.on_revoked(revoked, timeout))

    async def refresh_lag(self) -> None:
        """Ask the broker for the group's committed and log-end offsets (off the event loop)."""
        try:
            self.lag_rows = await asyncio.get_running_loop().run_in_executor(None, self._lag_rows_blocking)
        except Exception as e:  # the broker may be away; /metrics says so and the worker carries on
            self.lag_errors += 1
            self.lag_rows = None
            log.warning("event=lag_query_failed error=%r", str(e))

    def _lag_rows_blocking(self) -> list[Any]:
        if self._lag_probe is None:
            from .kafka_io import LagProbe

            self._lag_probe = LagProbe(self.settings, topics=[self.settings.input_topic, self.settings.unjoined_topic],
                                       timeout=10.0)
        return self._lag_probe.rows()

    @property
    def ready(self) -> bool:
        """Its copy of the centers caught up, its share assigned, and, on the founder, the found
        stage restored."""
        return self.join.ready and self.assigned and (self.found.ready or not self.found.owner)

    async def cluster(self, cluster_id: int) -> dict[str, Any] | None:
        """One cluster's figures: from the founder's clusterer on the founder; elsewhere from the
        centers and state topics, read into this worker's store (the state topic on demand)."""
        if self.found.owner:
            return self.found.cluster(cluster_id)
        from .kafka_io import catch_up
        from .state import stored_cluster

        s, store = self.settings, self.store

        def look_up() -> dict[str, Any] | None:
            catch_up(s, store, s.state_topic, timeout=30.0)
            return stored_cluster(cluster_id, lambda key: store.get(s.centers_topic, key),
                                  lambda key: store.get(s.state_topic, key))

        return await asyncio.get_running_loop().run_in_executor(None, look_up)

    @property
    def unjoined_lag(self) -> int | None:
        """Photo events waiting for the founder: the alarm that it falls behind."""
        rows = [row for row in self.lag_rows or () if row.topic == self.settings.unjoined_topic]
        return sum(row.lag for row in rows) if rows else None

    def stats(self) -> dict[str, Any]:
        """The counters of both stages, as /stats and /metrics show them."""
        join, found = self.join.counters, self.found.stats()
        outcomes = dict(found["outcomes"])
        outcomes["joined"] += join["joined"]
        clusterer = self.found.clusterer
        return {
            **found,
            "ready": self.ready,
            "role": found["role"],
            "unjoined_lag": self.unjoined_lag,
            "events_in": join["events_in"],
            "photos_in": join["photos_in"],
            "outcomes": outcomes,
            "dlq_events": join["dlq_events"] + found["dlq_events"],
            "dlq_rows": join["dlq_rows"] + found["dlq_rows"],
            "join": {**join, "centers": self.replica.index.n_centers_, "centers_lag": self.replica.lag},
            "found": {name: found[name] for name in ("events_in", "photos_in", "outcomes", "windows", "cpu_seconds",
                                                     "restores", "kept_state", "restore_seconds", "ready_at",
                                                     "retired", "joins_to_retired", "next_cluster_id")},
            "replica": self.replica.stats(),
            "rebalances": self.rebalances,
            "lag_errors": self.lag_errors,
            "rss_bytes": resident_memory_bytes(),
            # What the clusterer runs with: the settings, also after a restart that changed them.
            "clustering": ({name: getattr(clusterer, name) for name in (*FIXED_PARAMS, *CHANGEABLE_PARAMS)}
                           if clusterer is not None else None),
        }


def create_app(settings: Settings) -> Worker:
    app = PhotoclustApp(
        settings.app_id,
        broker=settings.broker_url,
        broker_credentials=_credentials(settings),
        datadir=settings.data_dir,
        topic_replication_factor=1,
        topic_partitions=settings.partitions,
        processing_guarantee=settings.processing_guarantee,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=FAUST_COMMIT_INTERVAL_S,
        broker_commit_every=1 << 40,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.session_timeout_s / 4,
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        producer_max_request_size=8 * 1024 * 1024,
        producer_linger_ms=10,
        producer_max_batch_size=512 * 1024,
        producer_compression_type="lz4",
        stream_wait_empty=False,
        # Per-event costs (tests/benchmarks/README.md, profile_perevent.py): Faust's repaired Cython
        # stream iterator takes events already queued without awaiting the channel; the Monitor
        # keeps no per-event statistics.
        cython_optimizations=True,
        Monitor=LightMonitor,
        version=1,
    )
    input_topic = app.topic(settings.input_topic, schema=RawSchema(**RAW), partitions=settings.partitions)
    unjoined_topic = app.topic(settings.unjoined_topic, schema=RawSchema(**RAW), partitions=1)
    store = LocalStore(Path(settings.data_dir) / "store")
    replica = CentersReplica(settings, store)
    commit = CommitSequence(settings, app)
    # One guard for both stages' source partitions; it reads Faust's consumer, which exists only
    # once the app runs.
    resume_offsets = ResumeOffsets(settings)

    async def resume_offset(tp: Any) -> int:
        """Where the group resumes a partition, asked of the broker directly (off the event loop)."""
        return await asyncio.get_running_loop().run_in_executor(None, resume_offsets, tp.topic, tp.partition)

    input_order = InputOrderGuard(lambda: app.consumer, resume_offset=resume_offset,
                                  gaps_after_start=settings.processing_guarantee == "exactly_once")
    join = JoinStage(settings, app, replica, commit, input_order,
                     found_backlog=functools.partial(resume_offsets.lag, settings.unjoined_topic, 0, 5.0),
                     input_buffer_fill=lambda: app.consumer.buffer_fill(settings.input_topic))
    found = FoundStage(settings, app, store, replica, commit, input_order, resume_offsets)
    worker = Worker(settings, app, store, replica, join, found, resume_offsets=resume_offsets)
    app.photoclust = worker

    @app.agent(input_topic)
    async def join_photos(stream: faust.StreamT) -> None:
        """event -> join against the centers copy -> joined outcomes, the rest forwarded."""
        await join.wait_ready()
        async for events in stream.noack_take(TAKE_BATCH, within=TAKE_WITHIN_S):
            await join.process(events)

    @app.agent(unjoined_topic)
    async def found_clusters(stream: faust.StreamT) -> None:
        """forwarded photos -> window -> core -> founded/joined/noise outcomes and new centers."""
        await found.wait_ready()
        async for events in stream.noack_take(TAKE_BATCH, within=TAKE_WITHIN_S):
            await found.add_events(events)

    @app.timer(interval=0.5)
    async def flush_aged_window() -> None:
        """A slow stream still progresses: cluster a partial window once it is old enough."""
        await found.flush_if_due()

    @app.timer(interval=LAG_REFRESH_S)
    async def refresh_lag() -> None:
        """Consumer lag for /metrics, as ``kafka-consumer-groups --describe`` computes it."""
        await worker.refresh_lag()

    @app.task
    async def start_stages() -> None:
        await worker.start()

    @app.on_partitions_revoked.connect
    async def on_revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
        await worker.on_revoked(revoked)
        input_order.forget(revoked)

    @app.on_partitions_assigned.connect
    async def on_assigned(sender: Any, assigned: Any, **kwargs: Any) -> None:
        input_order.on_rebalance()  # Faust seeks every assigned partition to its committed offset
        log.info("event=rebalance assigned=%s", ",".join(sorted(f"{tp.topic}:{tp.partition}" for tp in assigned)))
        worker.on_assigned(assigned)

    @app.page("/health")
    async def health(web: Any, request: Any) -> Response:
        """Liveness: this answer proves the event loop runs; the agents, the clustering task and the
        centers reader must be alive too."""
        checks = {"event_loop": True, "clustering": found.clustering_alive(), "joining": join.alive(),
                  "centers_reader": replica.alive,
                  "agents": all(_agent_alive(agent) for agent in (join_photos, found_clusters))}
        return web.json({"ok": all(checks.values()), **checks}, status=200 if all(checks.values()) else 503)

    @app.page("/ready")
    async def ready(web: Any, request: Any) -> Response:
        """Readiness: the group gave this worker its share, the centers copy caught up and, on the
        founder, the clusterer rebuilt."""
        checks = {
            "partitions_assigned": worker.assigned,
            "centers_caught_up": replica.caught_up.is_set(),
            "index_rebuilt": found.ready or not found.owner,
            "not_rebalancing": not app.rebalancing,
        }
        return web.json({"ready": all(checks.values()), **checks}, status=200 if all(checks.values()) else 503)

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Response:
        return web.text(render(worker.stats(), worker.lag_rows), headers={"Content-Type": CONTENT_TYPE})

    @app.page("/stats")
    async def stats(web: Any, request: Any) -> Response:
        return web.json(worker.stats())

    @app.page("/match/{hash_hex}")
    async def match(web: Any, request: Any, hash_hex: str) -> Response:
        """The nearest cluster within r of one hash, from this worker's copy of the centers; the
        photo is not published (what a hash matcher such as Meta's HMA answers)."""
        problem = hex_error(hash_hex, settings.n_bits)
        if problem is not None:
            return web.json({"error": problem}, status=400)
        if not replica.caught_up.is_set():
            return web.json({"error": "this worker's copy of the centers is still loading"}, status=503)
        code = from_hex([hash_hex], settings.n_bits)
        # in a thread: the centers reader may hold the copy while it indexes a large block
        labels, distances, _ = await asyncio.get_running_loop().run_in_executor(
            None, replica.join, code, settings.radius)
        joined = bool(labels[0] >= 0)
        return web.json({"cluster": int(labels[0]) if joined else None,
                         "distance": int(distances[0]) if joined else None, "centers": replica.index.n_centers_})

    @app.page("/clusters/{cluster_id}")
    async def cluster(web: Any, request: Any, cluster_id: str) -> Response:
        # isdigit() alone accepts digits such as '²' that int() refuses: ASCII digits only.
        if not (cluster_id.isascii() and cluster_id.isdigit()):
            return web.json({"error": f"cluster id must be a non-negative integer, got {cluster_id!r}"}, status=400)
        record = await worker.cluster(int(cluster_id))
        if record is None:
            return web.json({"error": f"no cluster {cluster_id}"}, status=404)
        return web.json(record)

    return worker


def _agent_alive(agent: Any) -> bool:
    """An agent is alive while one of its actors' tasks runs (Faust keeps them in ``_actors``)."""
    tasks = [getattr(actor, "actor_task", None) for actor in list(agent._actors)]
    return any(task is not None and not task.done() for task in tasks)


def _credentials(settings: Settings) -> Any:
    if settings.sasl_mechanism:
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password,
            mechanism=settings.sasl_mechanism,
            ssl_context=_ssl_context(settings),
        )
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        return faust.SSLCredentials(_ssl_context(settings))
    return None


def _ssl_context(settings: Settings) -> Any:
    if settings.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    import ssl

    context = ssl.create_default_context(cafile=settings.ssl_cafile or None)
    if settings.ssl_certfile:
        context.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile or None, settings.ssl_key_password or None)
    return context


# glibc serves allocations below its mmap threshold from the heap, and raises that threshold (up to
# 32 MiB) each time a large block is freed: the arrays the clusterer and the copy of the centers
# regrow window after window then come from the heap and leave holes it never returns. A fixed
# threshold keeps every array above it in its own mapping, returned to the system when freed.
# tests/benchmarks/bench_memory.py, RSS per million centers of a clusterer grown window by window:
# 201 MB by default, 123 with a 4 MiB threshold, 124 with 128 KiB; 4 MiB leaves the join and
# Bk-means times as they were (128 KiB made them 1.1x slower: every temporary array was mapped anew).
MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def use_fixed_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold at :data:`MMAP_THRESHOLD_BYTES`; False where there is no glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):  # another C library (musl, macOS): its own allocator
        return False


def run_worker(settings: Settings) -> None:
    """Run the stream processor until it is stopped (SIGINT/SIGTERM)."""
    from .kafka_io import ensure_topics

    use_fixed_mmap_threshold()

    # Faust only subscribes to topics that exist when it starts; create them so that a worker
    # started before its first producer still sees every event.
    ensure_topics(settings)
    refuse_fixed_setting_changes(settings)
    _hide_secrets_in_logs(settings)
    photoclust = create_app(settings)
    worker = faust.Worker(photoclust.app, loglevel=settings.log_level)
    worker.execute_from_commandline()


class FixedSettingChanged(Exception):
    """A setting that the stored state fixes differs from the worker's (exit code 2)."""


def refuse_fixed_setting_changes(settings: Settings) -> None:
    """Refuse to start, before Faust starts, when the stored state was made with another ``n_bits``:
    its centers cannot be used, and a worker that started anyway would fail on every restart."""
    from .kafka_io import latest_value
    from .state import FIXED_PARAMS, META_KEY, param_changes, stored_params

    stored = stored_params(latest_value(settings, settings.state_topic, META_KEY))
    if stored is None:
        return
    refused = param_changes(stored, {name: getattr(settings, name) for name in FIXED_PARAMS}, FIXED_PARAMS)
    if refused:
        raise FixedSettingChanged("; ".join(
            f"{name}={new} differs from {old}, the {name} of the state stored in topic {settings.state_topic!r}; "
            f"start with {name}={old}, or with another app_id and state_topic for a new clustering"
            for name, old, new in refused))


def _hide_secrets_in_logs(settings: Settings) -> None:
    """Mask the secrets in every log record of this process, whatever its logger and level: aiokafka
    logs each request at DEBUG, the SASL/PLAIN authentication bytes (with the password) included."""
    secrets = [getattr(settings, name) for name in SECRET_FIELDS if getattr(settings, name)]
    # as given, and as a repr of its bytes or of the string would show it
    forms = sorted({form for s in secrets for form in (s, repr(s.encode())[2:-1], repr(s)[1:-1]) if form},
                   key=len, reverse=True)
    if not forms:
        return
    make_record = logging.getLogRecordFactory()

    def record_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a broken record is the logging module's to report
            return record
        if any(form in message for form in forms):
            for form in forms:
                message = message.replace(form, "***")
            record.msg, record.args = message, ()
        return record

    logging.setLogRecordFactory(record_factory)


__all__ = ["Worker", "create_app", "run_worker"]
