"""/metrics text: the Prometheus exposition format, built from the same counters as /stats."""

from __future__ import annotations

import re

from streams.kafka_io import PartitionLag
from streams.metrics import METRICS, render

SAMPLE = re.compile(r'^([a-z_]+)(\{[^}]*\})? (-?[0-9.e+]+)$')

STATS = {
    "windows": 7, "events_in": 120, "photos_in": 35_000, "dlq_events": 3, "dlq_rows": 2,
    "outcomes": {"joined": 30_000, "founded": 4_000, "noise": 500},
    "last_window": {"photos": 5000, "seconds": 1.25, "publish_seconds": 0.5},
    "rebalances": 1, "lag_errors": 0, "ready": True, "windows_in_flight": 1,
    "clusters": 812, "pending": 77, "window_fill": 1234, "rss_bytes": 209_715_200,
}


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) [a-z_]+ .+$", line), line
            continue
        match = SAMPLE.match(line)
        assert match, f"not a valid sample line: {line!r}"
        out[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return out


def test_every_declared_metric_is_exposed_with_help_and_type():
    text = render(STATS, [PartitionLag("photo-hashes", 0, 90, 100, 10)])
    for name, metric in METRICS.items():
        assert f"# HELP {name} " in text and f"# TYPE {name} {metric.kind}\n" in text, name


def test_values_come_from_the_stats_counters():
    samples = _samples(render(STATS, [PartitionLag("photo-hashes", 0, 90, 100, 10),
                                      PartitionLag("photo-hashes", 1, None, 50, 50)]))
    assert samples["photoclust_windows_total"] == 7
    assert samples['photoclust_photos_total{outcome="joined"}'] == 30_000
    assert samples['photoclust_photos_total{outcome="noise"}'] == 500
    assert samples['photoclust_dead_letters_total{kind="event"}'] == 3
    assert samples['photoclust_dead_letters_total{kind="row"}'] == 2
    assert samples["photoclust_clusters"] == 812 and samples["photoclust_pending_photos"] == 77
    assert samples["photoclust_ready"] == 1 and samples["photoclust_windows_in_flight"] == 1
    assert samples["photoclust_last_window_seconds"] == 1.25
    assert samples['photoclust_consumer_lag{topic="photo-hashes",partition="0"}'] == 10
    assert samples['photoclust_consumer_lag{topic="photo-hashes",partition="1"}'] == 50
    # a partition without a committed offset has no committed sample (not a fake 0)
    assert 'photoclust_consumer_committed_offset{topic="photo-hashes",partition="1"}' not in samples
    assert samples['photoclust_consumer_committed_offset{topic="photo-hashes",partition="0"}'] == 90
    assert samples["process_resident_memory_bytes"] == 209_715_200


def test_no_lag_samples_when_the_broker_could_not_be_asked():
    samples = _samples(render({**STATS, "lag_errors": 4}, None))
    assert not any(k.startswith("photoclust_consumer_lag{") for k in samples)
    assert samples["photoclust_lag_scrape_errors_total"] == 4


def test_label_values_are_escaped():
    text = render(STATS, [PartitionLag('we"ird\\topic', 0, 1, 2, 1)])
    assert 'photoclust_consumer_lag{topic="we\\"ird\\\\topic",partition="0"} 1' in text
