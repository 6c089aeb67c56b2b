"""deploy/monitoring/ agrees with the worker: every PromQL expression of the Grafana dashboard and
the alert rules names only metrics of ``streams.exposition.METRICS`` (plus Prometheus' ``up``), the
dashboard shows the key metrics, and the Prometheus / Grafana / compose wiring points at files that
exist. No broker, no PyYAML (not a dependency): the YAML files are read with regular expressions.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from streams.config import Settings
from streams.exposition import METRICS

REPO = Path(__file__).resolve().parents[1]
MONITORING = REPO / "deploy" / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "photoclust.json"
ALERTS = MONITORING / "alerts.yml"
COMPOSE = REPO / "docker-compose.yml"

BUILTIN = {"up"}  # series Prometheus itself writes for every target
KNOWN = set(METRICS) | BUILTIN
PREFIXED = re.compile(r"\b(?:photoclust|process)_\w+")
PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
                "bool", "offset", "inf", "nan"}


# ------------------------------------------------------------------------------------------ helpers

def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords, label
    names, durations or Grafana variables."""
    s = re.sub(r"\$\{?\w+\}?", " ", expr)                                   # Grafana variables
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', " ", s)   # strings
    s = re.sub(r"\{[^}]*\}", " ", s)                                         # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)                                        # ranges, subqueries
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)  # label lists
    s = re.sub(r"(?<![\w:])\d[\w.]*", " ", s)                                # numbers, durations
    names = set()
    for m in re.finditer(r"([A-Za-z_:][\w:]*)(\s*\()?", s):
        ident, call = m.group(1), m.group(2)
        if call or ident.lower() in PROMQL_WORDS:
            continue
        names.add(ident)
    return names


def unknown_names(expr: str) -> set[str]:
    prefixed = set(PREFIXED.findall(expr))
    return (prefixed | promql_metric_names(expr)) - KNOWN


def iter_panels(panels: list[dict]):
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> list[tuple[str, str]]:
    return [(panel.get("title", "?"), target["expr"])
            for panel in iter_panels(dashboard()["panels"])
            for target in panel.get("targets", []) if target.get("expr")]


def yaml_values(text: str, key: str) -> list[str]:
    """Values of ``key:`` in a YAML text, single-line or block scalar (``|``, ``>``), unquoted."""
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines):
        m = re.match(rf"^\s*(?:-\s+)?({re.escape(key)}):\s*(.*?)\s*$", line)
        if not m:
            continue
        indent, value = m.start(1), m.group(2)  # indent: the key's column
        if value in ("|", "|-", ">", ">-"):
            block = []
            for nxt in lines[i + 1:]:
                if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= indent:
                    break
                block.append(nxt.strip())
            value = " ".join(b for b in block if b)
        elif quoted := re.match(r"^([\"'])(.*)\1(?:\s+#.*)?$", value):
            value = quoted.group(2)
        else:
            value = re.sub(r"\s+#.*$", "", value)
        out.append(value)
    return out


def alert_exprs() -> list[str]:
    return yaml_values(ALERTS.read_text(), "expr")


def compose_mounts() -> dict[str, str]:
    """host path (relative, as written) -> container path, for every bind mount in docker-compose.yml."""
    mounts = {}
    for m in re.finditer(r"^\s*-\s+\"?(\./[^:\s\"]+):([^:\s\"]+)(?::ro|:rw)?\"?\s*$", COMPOSE.read_text(), re.M):
        mounts[m.group(1)] = m.group(2)
    return mounts


# ------------------------------------------------------------------------------------------ the checker itself

def test_checker_finds_wrong_names():
    assert promql_metric_names('sum by (topic) (rate(photoclust_photos_total{job="$job"}[$__rate_interval]))') \
        == {"photoclust_photos_total"}
    assert promql_metric_names("up == 0 or absent(up{job='x'}) and x_bytes > 2e9 offset 5m") == {"up", "x_bytes"}
    assert unknown_names("rate(photoclust_photos_totl[5m])") == {"photoclust_photos_totl"}
    assert unknown_names("max by (topic, partition) (photoclust_consumer_lag)") == set()
    assert unknown_names("node_load1 > 2") == {"node_load1"}
    assert yaml_values("  - expr: |\n      a\n        and b\n    for: 5m\n  - expr: 'c > 1'  # x\n", "expr") \
        == ["a and b", "c > 1"]


# ------------------------------------------------------------------------------------------ dashboard

def test_dashboard_identity_and_datasource():
    d = dashboard()
    assert d["uid"] == "photoclust"
    assert d["title"] == "photoclust worker"
    assert d["schemaVersion"] >= 36
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = list(iter_panels(d["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in panels:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel.get("title")
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel.get("title")
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"], panel["title"]


def test_dashboard_exprs_use_only_declared_metrics():
    exprs = dashboard_exprs()
    assert len(exprs) >= 15
    bad = {(title, expr): sorted(unknown_names(expr)) for title, expr in exprs if unknown_names(expr)}
    assert not bad, f"dashboard queries name metrics that streams.exposition.METRICS does not declare: {bad}"
    for title, expr in exprs:
        assert promql_metric_names(expr), f"{title}: no metric in {expr!r}"
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            m = re.match(r"label_values\(\s*([^,{)\s]+)", var["definition"])
            assert m and m.group(1) in KNOWN, var["definition"]


def test_dashboard_covers_key_metrics():
    used = set().union(*(promql_metric_names(expr) for _, expr in dashboard_exprs()))
    key = {name for name in METRICS if "lag" in name or "offset" in name}  # consumer lag and offsets
    key |= {"photoclust_photos_total", "photoclust_dead_letters_total",     # outcomes
            "photoclust_up", "photoclust_ready", "process_resident_memory_bytes"}
    assert key <= set(METRICS)
    assert {"photoclust_consumer_lag", "photoclust_log_end_offset"} <= key
    missing = key - used
    assert not missing, f"dashboard does not show {sorted(missing)}"


# ------------------------------------------------------------------------------------------ alerts

def test_alert_exprs_use_only_declared_metrics():
    text = ALERTS.read_text()
    exprs = alert_exprs()
    names = yaml_values(text, "alert")
    assert len(exprs) == len(names) >= 5
    assert len(set(names)) == len(names), "duplicate alert names"
    bad = {expr: sorted(unknown_names(expr)) for expr in exprs if unknown_names(expr)}
    assert not bad, f"alert rules name metrics that streams.exposition.METRICS does not declare: {bad}"
    used = set().union(*(promql_metric_names(expr) for expr in exprs))
    assert {"up", "photoclust_ready", "photoclust_consumer_lag", "photoclust_dead_letters_total",
            "photoclust_last_window_seconds"} <= used


# ------------------------------------------------------------------------------------------ prometheus

@pytest.mark.parametrize("name", ["prometheus.yml", "prometheus.compose.yml"])
def test_prometheus_config(name):
    path = MONITORING / name
    text = path.read_text()
    assert Settings().web_port == 6066
    assert yaml_values(text, "job_name") == ["photoclust"]
    assert yaml_values(text, "metrics_path") == ["/metrics"]
    assert "15s" in yaml_values(text, "scrape_interval")
    if name == "prometheus.yml":  # one worker on this host
        assert re.search(r'targets:\s*\[\s*"127\.0\.0\.1:6066"\s*\]', text), f"{name}: no target 127.0.0.1:6066"
    else:  # every replica of the compose service `worker` (--scale worker=N), found by DNS
        assert "static_configs" not in text, f"{name}: a static target reaches one replica only"
        assert re.search(r'names:\s*\[\s*"worker"\s*\]', text), f"{name}: no DNS name worker"
        assert yaml_values(text, "type") == ["A"]
        assert yaml_values(text, "port") == ["6066"]
    rule_files = yaml_values(text, "rule_files")
    assert rule_files == ["[alerts.yml]"], rule_files
    assert (path.parent / "alerts.yml").is_file()


def test_compose_wires_monitoring():
    text = COMPOSE.read_text()
    mounts = compose_mounts()
    assert mounts["./deploy/monitoring/prometheus.compose.yml"] == "/etc/prometheus/prometheus.yml"
    assert mounts["./deploy/monitoring/alerts.yml"] == "/etc/prometheus/alerts.yml"  # next to the config
    assert mounts["./deploy/monitoring/grafana/provisioning"] == "/etc/grafana/provisioning"
    for host in mounts:
        assert (REPO / host).exists(), f"docker-compose.yml mounts missing {host}"
    assert re.search(r"^\s+PHOTOCLUST_WEB_HOST:\s*\"?0\.0\.0\.0\"?\s*$", text, re.M), \
        "the compose worker must bind 0.0.0.0 for the prometheus service to scrape it"
    assert len(re.findall(r'profiles:\s*\["monitoring"\]', text)) == 2


def compose_service(name: str) -> str:
    """The lines of one service of docker-compose.yml (from ``  name:`` to the next service)."""
    m = re.search(rf"^  {re.escape(name)}:\n(.*?)(?=^  \S|^\S|\Z)", COMPOSE.read_text(), re.M | re.S)
    assert m, f"docker-compose.yml has no service {name}"
    return m.group(1)


def test_compose_worker_can_scale():
    """`docker compose up --scale worker=N`: nothing two replicas of the worker would both claim."""
    worker = compose_service("worker")
    assert not re.search(r"^\s+container_name:", worker, re.M)
    ports = re.findall(r'^\s+-\s+"?([\d.:-]+)"?\s*(?:#.*)?$', worker.split("ports:", 1)[-1], re.M)
    assert any(port.endswith(":6066") for port in ports), ports
    for port in ports:  # [host-ip:][host-port:]container-port; no host port: a free one per replica
        host_port = port.split(":")[-2] if ":" in port else ""
        assert host_port == "" or "-" in host_port, f"fixed host port in {port!r}: a second replica cannot bind it"
    # the data dir: one anonymous volume per replica, never a named volume or bind mount they would share
    assert re.search(r"^\s+PHOTOCLUST_DATA_DIR:\s*/data/", worker, re.M)
    assert re.search(r'^\s+-\s+"?/data"?\s*(?:#.*)?$', worker, re.M)
    assert not re.search(r'^\s+-\s+"?[^\s:"]+:/data', worker, re.M)


# ------------------------------------------------------------------------------------------ grafana provisioning

def test_grafana_provisioning_points_at_the_dashboards():
    provider = (MONITORING / "grafana" / "provisioning" / "dashboards" / "photoclust.yml").read_text()
    assert yaml_values(provider, "type") == ["file"]
    (path,) = yaml_values(provider, "path")
    # the container path is where docker-compose.yml mounts deploy/monitoring/grafana/dashboards
    host = {container: host for host, container in compose_mounts().items()}[path]
    assert (REPO / host).resolve() == DASHBOARD.parent.resolve()
    assert DASHBOARD.is_file()
    datasource = (MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    assert yaml_values(datasource, "type") == ["prometheus"]
    assert yaml_values(datasource, "url") == ["${PROMETHEUS_URL}"]
    assert re.search(r"^\s+PROMETHEUS_URL:\s*http://prometheus:9090\s*$", COMPOSE.read_text(), re.M)
