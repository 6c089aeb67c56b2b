"""``photoclust demo`` stops the broker it started, also when it fails before its worker starts."""

from __future__ import annotations

import os
import subprocess

import pytest
from click.testing import CliRunner
from kafka_support import BROKER_SH, REPO, free_port

import streams.kafka_io
from streams.cli import main

pytestmark = pytest.mark.kafka


def _broker_status(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(BROKER_SH), "status"], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=60)


def test_demo_stops_its_broker_when_topic_creation_fails(monkeypatch, tmp_path) -> None:
    port = str(free_port())
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("PHOTOCLUST_KAFKA_PORT", port)
    env = {**os.environ, "PHOTOCLUST_KAFKA_PORT": port}
    assert _broker_status(env).returncode != 0, f"a broker already listens on {port}"

    def refuse(settings, timeout: float = 30.0) -> None:
        assert settings.bootstrap_servers.endswith(f":{port}")  # the demo's own broker was up
        raise RuntimeError("topic creation refused by the test")

    monkeypatch.setattr(streams.kafka_io, "ensure_topics", refuse)
    try:
        result = CliRunner().invoke(main, ["demo", "--photos", "10", "--workdir", str(tmp_path)])
        assert result.exit_code != 0
        assert "topic creation refused by the test" in repr(result.exception) + result.output
        assert _broker_status(env).returncode != 0, "the demo left its broker running"
    finally:
        subprocess.run(["bash", str(BROKER_SH), "stop"], cwd=REPO, env=env, capture_output=True, timeout=120)
