"""librdkafka's log lines go through Python logging (logger ``photoclust.librdkafka``), never raw to
stderr (``%3|1733...|FAIL|rdkafka#producer-1| ...``), where they broke the demo's live screen.

Each check runs in a subprocess, since librdkafka writes its raw lines to file descriptor 2 from
its own threads, which pytest's capturing would not see. The clients connect to a closed local
port, so they log connection failures quickly; no broker is needed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Clients as the worker and the CLI build them: a one-shot AdminClient (never polled), a consumer
# that only reads offsets (LagProbe), and a producer polled for two seconds.
_CLIENTS = """
import json, logging, sys, time
from streams.config import Settings
from streams.kafka_io import consumer_lag, ensure_topics, make_producer

class Records(logging.Handler):
    def emit(self, record):
        print(json.dumps({"name": record.name, "level": record.levelname, "message": record.getMessage()}),
              flush=True)

logging.getLogger().addHandler(Records())
logging.getLogger().setLevel(logging.DEBUG)
settings = Settings(bootstrap_servers=sys.argv[1])
for one_shot in (lambda: ensure_topics(settings, timeout=1), lambda: consumer_lag(settings, timeout=1)):
    try:
        one_shot()
    except Exception as e:
        print(f"expected failure: {e}", file=sys.stderr)
producer = make_producer(settings)
deadline = time.monotonic() + 2
while time.monotonic() < deadline:
    producer.poll(0.1)
"""


def _closed_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, text=True, capture_output=True, timeout=120)


def _raw_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("%")]


def test_librdkafka_logs_arrive_as_python_log_records() -> None:
    address = _closed_address()
    result = _run("-c", _CLIENTS, address)
    assert result.returncode == 0, result.stderr
    assert not _raw_lines(result.stderr), f"raw librdkafka lines on stderr:\n{result.stderr}"
    records = [json.loads(line) for line in result.stdout.splitlines()]
    failures = [r for r in records if r["name"] == "photoclust.librdkafka" and r["level"] == "ERROR"
                and f"Connect to ipv4#{address} failed" in r["message"]]
    assert failures, f"no connection error among the log records: {records}"
    assert any("rdkafka#producer" in r["message"] for r in failures), failures


def test_cli_stderr_has_no_raw_librdkafka_lines() -> None:
    """``photoclust tail`` against a closed port: the connection errors reach stderr as log records
    (the logging module's last-resort handler), not as librdkafka's raw lines."""
    address = _closed_address()
    result = _run("-m", "streams", "tail", "--bootstrap-servers", address, "--idle-timeout", "2")
    assert result.returncode == 0, result.stderr
    assert not _raw_lines(result.stderr), f"raw librdkafka lines on stderr:\n{result.stderr}"
    assert f"Connect to ipv4#{address} failed" in result.stderr, result.stderr
    assert result.stdout == ""
