"""/metrics text: the Prometheus exposition format, built from the same counters as /stats.

The text is read back with prometheus_client's own parser, so these tests check what Prometheus
sees (names, types, labels, values), not how the lines happen to be spelt.
"""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.exposition import CONTENT_TYPE, METRICS, render, resident_memory_bytes
from streams.kafka_io import PartitionLag

STATS = {
    "windows": 7, "events_in": 120, "photos_in": 35_000, "dlq_events": 3, "dlq_rows": 2,
    "outcomes": {"joined": 30_000, "founded": 4_000, "noise": 500},
    "last_window": {"photos": 5000, "seconds": 1.25, "publish_seconds": 0.5},
    "rebalances": 1, "lag_errors": 0, "ready": True, "windows_in_flight": 1,
    "clusters": 812, "pending": 77, "window_fill": 1234, "rss_bytes": 209_715_200,
    "role": "founder", "unjoined_lag": 42,
    "join": {"joined": 30_000, "forwarded": 5_000, "cpu_seconds": 3.5},
    "found": {"cpu_seconds": 7.25},
    "replica": {"centers": 800, "lag": 2, "center_delay_s": {"n": 10, "p50": 0.4, "p99": 1.5}},
}
LAG = [PartitionLag("photo-hashes", 0, 90, 100, 10), PartitionLag("photo-hashes", 1, None, 50, 50)]
LAG_FAMILIES = ("photoclust_consumer_lag", "photoclust_consumer_committed_offset", "photoclust_log_end_offset")


def _families(text: str) -> dict[str, object]:
    """Exposed name -> parsed family. The parser names a counter family without its ``_total``;
    the samples (what Prometheus stores) keep it, as do the # HELP and # TYPE lines."""
    out = {}
    for family in text_string_to_metric_families(text):
        name = family.name + "_total" if family.type == "counter" else family.name
        assert name not in out, f"{name} exposed twice"
        out[name] = family
    return out


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    """(sample name, labels) -> value, each series once."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in out, f"{key} exposed twice"
            out[key] = sample.value
    return out


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_every_declared_metric_is_exposed_once_with_its_type_and_labels():
    text = render(STATS, LAG)
    families = _families(text)
    for name, metric in METRICS.items():
        family = families[name]
        assert family.type == metric.kind, name
        assert family.documentation, name
        assert f"# HELP {name} " in text and f"# TYPE {name} {metric.kind}\n" in text, name
        for sample in family.samples:
            assert sample.name == name, f"{sample.name}: a counter must not be renamed (no _total_total)"
            assert set(sample.labels) == set(metric.labels), name
    assert "_total_total" not in text


def test_values_come_from_the_stats_counters():
    samples = _samples(render(STATS, LAG))
    assert _value(samples, "photoclust_up") == 1 and _value(samples, "photoclust_ready") == 1
    assert _value(samples, "photoclust_windows_total") == 7
    assert _value(samples, "photoclust_events_total") == 120
    assert _value(samples, "photoclust_photos_in_total") == 35_000
    assert _value(samples, "photoclust_photos_total", outcome="joined") == 30_000
    assert _value(samples, "photoclust_photos_total", outcome="founded") == 4_000
    assert _value(samples, "photoclust_photos_total", outcome="noise") == 500
    assert _value(samples, "photoclust_dead_letters_total", kind="event") == 3
    assert _value(samples, "photoclust_dead_letters_total", kind="row") == 2
    assert _value(samples, "photoclust_clusters") == 812 and _value(samples, "photoclust_pending_photos") == 77
    assert _value(samples, "photoclust_window_fill") == 1234
    assert _value(samples, "photoclust_windows_in_flight") == 1
    assert _value(samples, "photoclust_last_window_photos") == 5000
    assert _value(samples, "photoclust_last_window_seconds") == 1.25
    assert _value(samples, "photoclust_last_window_publish_seconds") == 0.5
    assert _value(samples, "photoclust_rebalances_total") == 1
    assert _value(samples, "photoclust_lag_scrape_errors_total") == 0


def test_lag_per_partition():
    samples = _samples(render(STATS, LAG))
    p0, p1 = {"topic": "photo-hashes", "partition": "0"}, {"topic": "photo-hashes", "partition": "1"}
    assert _value(samples, "photoclust_consumer_lag", **p0) == 10
    assert _value(samples, "photoclust_consumer_lag", **p1) == 50
    assert _value(samples, "photoclust_log_end_offset", **p0) == 100
    assert _value(samples, "photoclust_log_end_offset", **p1) == 50
    assert _value(samples, "photoclust_consumer_committed_offset", **p0) == 90
    # a partition without a committed offset has no committed sample (not a fake 0)
    assert ("photoclust_consumer_committed_offset", frozenset(p1.items())) not in samples


def test_no_lag_samples_when_the_broker_could_not_be_asked():
    families = _families(render({**STATS, "lag_errors": 4}, None))
    for name in LAG_FAMILIES:  # declared (HELP/TYPE) but without samples: no fake 0 lag
        assert families[name].samples == [], name
    assert families["photoclust_lag_scrape_errors_total"].samples[0].value == 4


def test_empty_stats_give_zeros_not_errors():
    samples = _samples(render({}, []))
    assert _value(samples, "photoclust_up") == 1 and _value(samples, "photoclust_ready") == 0
    assert _value(samples, "photoclust_windows_total") == 0
    assert not any(name == "photoclust_photos_total" for name, _ in samples)


def test_process_metrics_come_from_the_process_collector_once():
    samples = _samples(render(STATS, LAG))  # _samples fails on a series exposed twice
    # this process's RSS, read when scraped (as /stats' rss_bytes is), not the snapshot's value
    rss = _value(samples, "process_resident_memory_bytes")
    assert rss == pytest.approx(resident_memory_bytes(), rel=0.2)
    assert _value(samples, "process_cpu_seconds_total") > 0
    assert _value(samples, "process_open_fds") > 0


@pytest.mark.parametrize("topic", ['we"ird\\topic', "line\nbreak"])
def test_label_values_are_escaped(topic):
    samples = _samples(render(STATS, [PartitionLag(topic, 0, 1, 2, 1)]))
    assert _value(samples, "photoclust_consumer_lag", topic=topic, partition="0") == 1


def test_content_type_is_the_prometheus_text_format():
    assert CONTENT_TYPE.startswith("text/plain; version=") and "charset=utf-8" in CONTENT_TYPE


def test_the_group_metrics_say_who_founds_and_how_far_each_copy_lags():
    samples = _samples(render(STATS, LAG))
    assert _value(samples, "photoclust_founder") == 1
    assert _value(samples, "photoclust_unjoined_lag") == 42
    assert _value(samples, "photoclust_join_photos_total", result="forwarded") == 5000
    assert _value(samples, "photoclust_centers_copy") == 800 and _value(samples, "photoclust_centers_copy_lag") == 2
    assert _value(samples, "photoclust_center_delay_seconds", quantile="0.99") == 1.5
    assert _value(samples, "photoclust_stage_cpu_seconds_total", stage="found") == 7.25
    joiner = _samples(render({**STATS, "role": "joiner", "unjoined_lag": None, "replica": {}}, None))
    assert _value(joiner, "photoclust_founder") == 0
    # unknown is no sample, not a fake 0
    assert not any(name in ("photoclust_unjoined_lag", "photoclust_centers_copy_lag") for name, _ in joiner)
