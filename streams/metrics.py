"""The worker's numbers in the Prometheus text format (``/metrics``), built from the same counters
as ``/stats`` so that the two never disagree, plus consumer lag per partition.

Every metric the worker exports is declared once in :data:`METRICS`; the Grafana dashboard and the
Prometheus config in ``deploy/monitoring/`` use these names (a test checks it).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .kafka_io import PartitionLag

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str  # counter | gauge
    help: str


METRICS = {m.name: m for m in (
    Metric("photoclust_up", "gauge", "1 while the worker's event loop answers."),
    Metric("photoclust_ready", "gauge", "1 when partitions are assigned, tables recovered and the index rebuilt."),
    Metric("photoclust_windows_total", "counter", "Windows clustered since the worker started."),
    Metric("photoclust_events_total", "counter", "Input events read (single or batch events)."),
    Metric("photoclust_photos_in_total", "counter", "Valid photos clustered, counted when their window is done."),
    Metric("photoclust_photos_total", "counter", "Final outcomes emitted, by outcome."),
    Metric("photoclust_dead_letters_total", "counter", "Dead letters written, by kind (event or batch row)."),
    Metric("photoclust_clusters", "gauge", "Cluster centers held by the online clusterer."),
    Metric("photoclust_pending_photos", "gauge", "Photos held back in the pending pool."),
    Metric("photoclust_window_fill", "gauge", "Photos in the window being filled."),
    Metric("photoclust_windows_in_flight", "gauge", "Closed windows not yet clustered and published."),
    Metric("photoclust_last_window_photos", "gauge", "Photos in the last clustered window."),
    Metric("photoclust_last_window_seconds", "gauge", "Seconds the last window took in the core clusterer."),
    Metric("photoclust_last_window_publish_seconds", "gauge",
           "Seconds the last window's outcomes and state took to be acknowledged by the broker."),
    Metric("photoclust_rebalances_total", "counter", "Consumer group rebalances seen by this worker."),
    Metric("photoclust_consumer_lag", "gauge",
           "Messages not yet committed by the worker's group, per input partition (log end - committed)."),
    Metric("photoclust_consumer_committed_offset", "gauge", "The group's committed offset, per input partition."),
    Metric("photoclust_log_end_offset", "gauge", "Log-end offset, per input partition."),
    Metric("photoclust_lag_scrape_errors_total", "counter", "Lag queries to the broker that failed."),
    Metric("process_resident_memory_bytes", "gauge", "Resident set size of the worker process."),
)}


def render(stats: Mapping[str, Any], lag: Sequence[PartitionLag] | None) -> str:
    """The exposition text for one scrape. ``lag`` is None when the broker could not be asked."""
    out: list[str] = []

    def emit(name: str, samples: Iterable[tuple[Mapping[str, Any], float]]) -> None:
        metric = METRICS[name]
        out.append(f"# HELP {name} {metric.help}")
        out.append(f"# TYPE {name} {metric.kind}")
        for labels, value in samples:
            out.append(f"{name}{_labels(labels)} {_number(value)}")

    last = stats.get("last_window") or {}
    emit("photoclust_up", [({}, 1)])
    emit("photoclust_ready", [({}, bool(stats.get("ready")))])
    emit("photoclust_windows_total", [({}, stats.get("windows", 0))])
    emit("photoclust_events_total", [({}, stats.get("events_in", 0))])
    emit("photoclust_photos_in_total", [({}, stats.get("photos_in", 0))])
    emit("photoclust_photos_total", [({"outcome": k}, v) for k, v in sorted(stats.get("outcomes", {}).items())])
    emit("photoclust_dead_letters_total", [({"kind": "event"}, stats.get("dlq_events", 0)),
                                           ({"kind": "row"}, stats.get("dlq_rows", 0))])
    emit("photoclust_clusters", [({}, stats.get("clusters", 0))])
    emit("photoclust_pending_photos", [({}, stats.get("pending", 0))])
    emit("photoclust_window_fill", [({}, stats.get("window_fill", 0))])
    emit("photoclust_windows_in_flight", [({}, stats.get("windows_in_flight", 0))])
    emit("photoclust_last_window_photos", [({}, last.get("photos", 0))])
    emit("photoclust_last_window_seconds", [({}, last.get("seconds", 0))])
    emit("photoclust_last_window_publish_seconds", [({}, last.get("publish_seconds", 0))])
    emit("photoclust_rebalances_total", [({}, stats.get("rebalances", 0))])
    rows = lag or []
    emit("photoclust_consumer_lag", [(_tp(r), r.lag) for r in rows])
    emit("photoclust_consumer_committed_offset", [(_tp(r), r.committed) for r in rows if r.committed is not None])
    emit("photoclust_log_end_offset", [(_tp(r), r.log_end) for r in rows])
    emit("photoclust_lag_scrape_errors_total", [({}, stats.get("lag_errors", 0))])
    emit("process_resident_memory_bytes", [({}, stats.get("rss_bytes", 0))])
    return "\n".join(out) + "\n"


def resident_memory_bytes() -> int:
    """Current RSS of this process (Linux /proc; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _tp(row: PartitionLag) -> dict[str, Any]:
    return {"topic": row.topic, "partition": row.partition}


def _labels(labels: Mapping[str, Any]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escape(value)}"' for key, value in labels.items()) + "}"


def _escape(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


__all__ = ["CONTENT_TYPE", "METRICS", "Metric", "render", "resident_memory_bytes"]
