"""The Faust app: topics, tables, agents and web views, declared once from one Settings object.

The flow reads top to bottom:

    photo-hashes --(cluster_photos: decode, window)--> core.OnlineClusterer (in a thread)
        --> cluster-assignments (one final outcome per photo)
        --> photoclust-state (center blocks, pending pool, meta) --(store_state)--> RocksDB tables
    bad events --> photo-hashes.dlq (with the reason)

Offsets of the input topic are acknowledged only after a window's outcomes and state records are
acknowledged by the broker, so a crash never loses a photo (at-least-once; see the README for
what a restart can duplicate).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import faust
from aiohttp.web import Response

from .config import SECRET_FIELDS, Settings
from .exposition import CONTENT_TYPE, render
from .window import ClusteringWorker

log = logging.getLogger("photoclust")
# Keys and values are bytes we (de)serialise ourselves, so that undecodable input reaches the
# dead-letter topic instead of crashing Faust's decoder. (faust.Schema(...) passed as schema= was
# not honoured for topics here: values were still JSON-decoded.)
RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
RAW_TABLE = {"key_type": bytes, "value_type": bytes}  # Faust picks the raw codec for bytes
# Faust's ack bookkeeping holds one list entry per message; take events in bounded batches.
TAKE_BATCH = 2_000
TAKE_WITHIN_S = 0.25
LAG_REFRESH_S = 5.0


class PhotoclustApp(faust.App):
    """A Faust app that lets the worker finish its closed windows before Faust stops the consumer,
    so that a graceful stop (SIGTERM, Ctrl-C) commits every window it emitted outcomes for."""

    clustering_worker: ClusteringWorker | None = None

    async def on_stop(self) -> None:
        if self.clustering_worker is not None:
            await self.clustering_worker.drain(self.clustering_worker.settings.drain_timeout_s)
        await super().on_stop()


@dataclass
class Photoclust:
    """Everything the worker process is made of; built once by :func:`create_app`."""

    settings: Settings
    app: faust.App
    input_topic: Any
    output_topic: Any
    dlq_topic: Any
    state_topic: Any
    centers_table: Any
    clusterer_table: Any
    worker: ClusteringWorker


def create_app(settings: Settings) -> Photoclust:
    app = PhotoclustApp(
        settings.app_id,
        broker=settings.broker_url,
        broker_credentials=_credentials(settings),
        store="rocksdb://",
        datadir=settings.data_dir,
        topic_replication_factor=1,
        topic_partitions=settings.partitions,
        processing_guarantee=settings.processing_guarantee,
        consumer_auto_offset_reset="earliest",
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        producer_max_request_size=8 * 1024 * 1024,
        producer_linger_ms=10,
        producer_max_batch_size=512 * 1024,
        producer_compression_type="lz4",
        stream_wait_empty=False,
        version=1,
    )
    input_topic = app.topic(settings.input_topic, **RAW, partitions=settings.partitions)
    output_topic = app.topic(settings.output_topic, **RAW, partitions=settings.partitions)
    dlq_topic = app.topic(settings.dlq_topic, **RAW, partitions=1)
    state_topic = app.topic(settings.state_topic, **RAW, partitions=1, compacting=True)
    centers_table = app.Table(
        "centers", **RAW_TABLE, partitions=1, options=_table_options(),
        help="Cluster centers in blocks of 1024 clusters: codes, sizes, created/updated times.",
    )
    clusterer_table = app.Table(
        "clusterer", **RAW_TABLE, partitions=1, options=_table_options(),
        help="The online clusterer's meta record and pending pool chunks.",
    )
    worker = ClusteringWorker(settings, app, (centers_table, clusterer_table))
    app.clustering_worker = worker
    parts = Photoclust(settings, app, input_topic, output_topic, dlq_topic, state_topic,
                       centers_table, clusterer_table, worker)

    @app.agent(input_topic)
    async def cluster_photos(stream: faust.StreamT) -> None:
        """event -> window -> core -> assignment. Events are acked when their window is done."""
        await worker.wait_ready()
        async for events in stream.noack_take(TAKE_BATCH, within=TAKE_WITHIN_S):
            await worker.add_events(events)

    @app.agent(state_topic)
    async def store_state(stream: faust.StreamT) -> None:
        """Apply state records to the RocksDB tables, each write in its own event's context."""
        async for event in stream.events():
            worker.apply_state_record(event.key, event.value, event.message.offset)

    @app.timer(interval=0.5)
    async def flush_aged_window() -> None:
        """A slow stream still progresses: cluster a partial window once it is old enough."""
        await worker.flush_if_due()

    @app.timer(interval=LAG_REFRESH_S)
    async def refresh_lag() -> None:
        """Consumer lag for /metrics, as ``kafka-consumer-groups --describe`` computes it."""
        await worker.refresh_lag()

    @app.task
    async def restore_state() -> None:
        await worker.restore()

    @app.on_partitions_assigned.connect
    async def log_rebalance(sender: Any, assigned: Any, **kwargs: Any) -> None:
        worker.on_rebalance(assigned)

    @app.page("/health")
    async def health(web: Any, request: Any) -> Response:
        """Liveness: this answer proves the event loop runs; the agents' tasks must be alive too."""
        checks = {"event_loop": True, "clustering": worker.clustering_alive(),
                  "agents": all(_agent_alive(agent) for agent in (cluster_photos, store_state))}
        return web.json({"ok": all(checks.values()), **checks}, status=200 if all(checks.values()) else 503)

    @app.page("/ready")
    async def ready(web: Any, request: Any) -> Response:
        """Readiness: partitions assigned, tables recovered, the clusterer and its index rebuilt."""
        assigned = _assigned_partitions(app)
        checks = {
            "partitions_assigned": any(tp.topic == settings.input_topic for tp in assigned),
            "tables_recovered": app.tables.recovery.completed.is_set(),
            "index_rebuilt": worker.ready,
            "not_rebalancing": not app.rebalancing,
        }
        return web.json({"ready": all(checks.values()), **checks}, status=200 if all(checks.values()) else 503)

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Response:
        return web.text(render(worker.stats(), worker.lag_rows), headers={"Content-Type": CONTENT_TYPE})

    @app.page("/stats")
    async def stats(web: Any, request: Any) -> Response:
        return web.json(worker.stats())

    @app.page("/clusters/{cluster_id}")
    async def cluster(web: Any, request: Any, cluster_id: str) -> Response:
        # isdigit() alone accepts digits such as '²' that int() refuses: ASCII digits only.
        if not (cluster_id.isascii() and cluster_id.isdigit()):
            return web.json({"error": f"cluster id must be a non-negative integer, got {cluster_id!r}"}, status=400)
        record = worker.cluster(int(cluster_id))
        if record is None:
            return web.json({"error": f"no cluster {cluster_id}"}, status=404)
        return web.json(record)

    return parts


def _table_options() -> dict[str, Any]:
    """RocksDB options of one table (a fresh dict each: Faust pops keys from the one it gets).

    Faust's defaults give every table a 2 GB block cache and 3 x 64 MB write buffers; the tables
    are read only on restore and by /clusters, and a window rewrites the center blocks it
    touched, so small buffers keep the worker's memory bounded (see bench_soak.py).
    """
    return {"driver": "rocksdict", "block_cache_size": 64 * 1024 * 1024,
            "write_buffer_size": 32 * 1024 * 1024, "max_write_buffer_number": 2}


def _agent_alive(agent: Any) -> bool:
    """An agent is alive while one of its actors' tasks runs (Faust keeps them in ``_actors``)."""
    tasks = [getattr(actor, "actor_task", None) for actor in list(agent._actors)]
    return any(task is not None and not task.done() for task in tasks)


def _assigned_partitions(app: faust.App) -> set[Any]:
    try:
        return set(app.consumer.assignment())
    except Exception:  # the consumer has not started yet
        return set()


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


def run_worker(settings: Settings) -> None:
    """Run the stream processor until it is stopped (SIGINT/SIGTERM)."""
    from .kafka_io import ensure_topics

    # Faust only subscribes to topics that exist when it starts; create them so that a worker
    # started before its first producer still sees every event.
    ensure_topics(settings)
    refuse_fixed_setting_changes(settings)
    _hide_secrets_in_logs(settings)
    parts = create_app(settings)
    worker = faust.Worker(parts.app, loglevel=settings.log_level)
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


__all__ = ["Photoclust", "create_app", "run_worker"]
