"""The worker's numbers in the Prometheus text format (``/metrics``), built from the same counters
as ``/stats`` so that the two never disagree, plus consumer lag per partition and
``prometheus_client``'s standard ``process_*`` and ``python_*`` metrics.

Every metric of the worker, and the standard ones that ``deploy/monitoring/`` uses, is declared once
in :data:`METRICS`; the Grafana dashboard and the Prometheus config there use these names (a test
checks it).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, GCCollector, PlatformCollector,
                               ProcessCollector, generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .kafka_io import PartitionLag

CONTENT_TYPE = CONTENT_TYPE_LATEST
PARTITION = ("topic", "partition")


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str  # counter | gauge
    help: str
    labels: tuple[str, ...] = ()


METRICS = {m.name: m for m in (
    Metric("photoclust_up", "gauge", "1 while the worker's event loop answers."),
    Metric("photoclust_ready", "gauge", "1 when partitions are assigned, the centers copy caught up and the index rebuilt."),
    Metric("photoclust_windows_total", "counter", "Windows clustered since the worker started."),
    Metric("photoclust_events_total", "counter", "Input events read (single or batch events)."),
    Metric("photoclust_photos_in_total", "counter", "Valid photos clustered, counted when their window is done."),
    Metric("photoclust_photos_total", "counter", "Final outcomes emitted, by outcome.", ("outcome",)),
    Metric("photoclust_dead_letters_total", "counter", "Dead letters written, by kind (event or batch row).",
           ("kind",)),
    Metric("photoclust_clusters", "gauge", "Cluster centers held by the online clusterer."),
    Metric("photoclust_retired_centers_total", "counter",
           "Centers retired (max_centers, max_idle_s) by this worker's found stage since it started."),
    Metric("photoclust_pending_photos", "gauge", "Photos held back in the pending pool."),
    Metric("photoclust_window_fill", "gauge", "Photos in the window being filled."),
    Metric("photoclust_windows_in_flight", "gauge", "Closed windows not yet clustered and published."),
    Metric("photoclust_last_window_photos", "gauge", "Photos in the last clustered window."),
    Metric("photoclust_last_window_seconds", "gauge", "Seconds the last window took in the core clusterer."),
    Metric("photoclust_last_window_publish_seconds", "gauge",
           "Seconds the last window's outcomes and state took to be acknowledged by the broker."),
    Metric("photoclust_rebalances_total", "counter", "Consumer group rebalances seen by this worker."),
    Metric("photoclust_consumer_lag", "gauge",
           "Messages not yet committed by the worker's group, per partition of the input and unjoined topics "
           "(log end - committed).", PARTITION),
    Metric("photoclust_consumer_committed_offset", "gauge",
           "The group's committed offset, per partition of the input and unjoined topics.", PARTITION),
    Metric("photoclust_log_end_offset", "gauge", "Log-end offset, per partition of the input and unjoined topics.",
           PARTITION),
    Metric("photoclust_founder", "gauge", "1 while this worker owns the unjoined partition (it founds clusters)."),
    Metric("photoclust_unjoined_lag", "gauge",
           "Events of photoclust-unjoined the founder has not committed: the alarm that it falls behind."),
    Metric("photoclust_join_photos_total", "counter",
           "Photos of this worker's input partitions, by what the join stage did (joined or forwarded).",
           ("result",)),
    Metric("photoclust_centers_copy", "gauge", "Centers in this worker's copy of the centers topic."),
    Metric("photoclust_centers_copy_lag", "gauge", "Records of the centers topic not yet in this worker's copy."),
    Metric("photoclust_center_delay_seconds", "gauge",
           "Seconds from a center block's founding to its arrival in this worker's copy (newest 1000 blocks).",
           ("quantile",)),
    Metric("photoclust_stage_cpu_seconds_total", "counter",
           "Thread CPU seconds spent in each stage's core work (join, found).", ("stage",)),
    Metric("photoclust_lag_scrape_errors_total", "counter", "Lag queries to the broker that failed."),
    # Written by prometheus_client's ProcessCollector (Linux /proc), not by WorkerCollector.
    Metric("process_resident_memory_bytes", "gauge", "Resident memory size in bytes."),
)}

Samples = Iterable[tuple[Sequence[Any], float]]  # (label values in the order of Metric.labels, value)


class WorkerCollector(Collector):
    """The worker's metric families for one scrape, from a ``/stats`` snapshot and the lag rows.

    ``lag`` is None when the broker could not be asked: the lag families then have no samples (not
    a fake 0) and ``photoclust_lag_scrape_errors_total`` counts the failure.
    """

    def __init__(self, stats: Mapping[str, Any], lag: Sequence[PartitionLag] | None) -> None:
        self.stats, self.lag = stats, lag

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats, rows = self.stats, self.lag or []
        last = stats.get("last_window") or {}
        yield _one("photoclust_up", 1)
        yield _one("photoclust_ready", bool(stats.get("ready")))
        yield _one("photoclust_windows_total", stats.get("windows", 0))
        yield _one("photoclust_events_total", stats.get("events_in", 0))
        yield _one("photoclust_photos_in_total", stats.get("photos_in", 0))
        yield _family("photoclust_photos_total", [((k,), v) for k, v in sorted(stats.get("outcomes", {}).items())])
        yield _family("photoclust_dead_letters_total", [(("event",), stats.get("dlq_events", 0)),
                                                        (("row",), stats.get("dlq_rows", 0))])
        yield _one("photoclust_clusters", stats.get("clusters", 0))
        yield _one("photoclust_retired_centers_total", stats.get("retired", 0))
        yield _one("photoclust_pending_photos", stats.get("pending", 0))
        yield _one("photoclust_window_fill", stats.get("window_fill", 0))
        yield _one("photoclust_windows_in_flight", stats.get("windows_in_flight", 0))
        yield _one("photoclust_last_window_photos", last.get("photos", 0))
        yield _one("photoclust_last_window_seconds", last.get("seconds", 0))
        yield _one("photoclust_last_window_publish_seconds", last.get("publish_seconds", 0))
        yield _one("photoclust_rebalances_total", stats.get("rebalances", 0))
        yield _family("photoclust_consumer_lag", [((r.topic, r.partition), r.lag) for r in rows])
        yield _family("photoclust_consumer_committed_offset",
                      [((r.topic, r.partition), r.committed) for r in rows if r.committed is not None])
        yield _family("photoclust_log_end_offset", [((r.topic, r.partition), r.log_end) for r in rows])
        yield _one("photoclust_lag_scrape_errors_total", stats.get("lag_errors", 0))
        join, found, replica = stats.get("join", {}), stats.get("found", {}), stats.get("replica", {})
        yield _one("photoclust_founder", stats.get("role") == "founder")
        yield _family("photoclust_unjoined_lag", [((), stats["unjoined_lag"])] if stats.get("unjoined_lag") is not None else [])
        yield _family("photoclust_join_photos_total", [(("joined",), join.get("joined", 0)),
                                                       (("forwarded",), join.get("forwarded", 0))])
        yield _one("photoclust_centers_copy", replica.get("centers", 0))
        yield _family("photoclust_centers_copy_lag", [((), replica["lag"])] if replica.get("lag") is not None else [])
        delays = replica.get("center_delay_s") or {}
        yield _family("photoclust_center_delay_seconds",
                      [((q,), delays[key]) for q, key in (("0.5", "p50"), ("0.99", "p99")) if delays.get(key) is not None])
        yield _family("photoclust_stage_cpu_seconds_total", [(("join",), join.get("cpu_seconds", 0.0)),
                                                             (("found",), found.get("cpu_seconds", 0.0))])


def build_registry(stats: Mapping[str, Any], lag: Sequence[PartitionLag] | None) -> CollectorRegistry:
    """A registry for one scrape: the worker's families plus the standard process (RSS, CPU seconds,
    open fds, start time), Python platform and GC ones. Built per scrape, so that :func:`render`
    depends only on its arguments; the collectors are cheap to create."""
    registry = CollectorRegistry()
    registry.register(WorkerCollector(stats, lag))
    for standard in (ProcessCollector, PlatformCollector, GCCollector):
        standard(registry=registry)
    return registry


def render(stats: Mapping[str, Any], lag: Sequence[PartitionLag] | None) -> str:
    """The exposition text for one scrape. ``lag`` is None when the broker could not be asked."""
    return generate_latest(build_registry(stats, lag)).decode()


def resident_memory_bytes() -> int:
    """Current RSS of this process (Linux /proc; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _one(name: str, value: float) -> CounterMetricFamily | GaugeMetricFamily:
    return _family(name, [((), value)])


def _family(name: str, samples: Samples) -> CounterMetricFamily | GaugeMetricFamily:
    metric = METRICS[name]
    # CounterMetricFamily drops the declared name's "_total" and generate_latest() appends it again,
    # so a counter is exposed under exactly its declared name.
    family = (CounterMetricFamily if metric.kind == "counter" else GaugeMetricFamily)(
        name, metric.help, labels=metric.labels)
    for labels, value in samples:
        family.add_metric([str(label) for label in labels], value)
    return family


__all__ = ["CONTENT_TYPE", "METRICS", "Metric", "WorkerCollector", "build_registry", "render",
           "resident_memory_bytes"]
