"""Fixtures for the integration tests against a REAL Kafka broker (never a mock).

* ``kafka_bootstrap`` (session): ``KAFKA_BOOTSTRAP_SERVERS`` if set, else the local broker of
  ``deploy/kafka/broker.sh start --fresh`` (port ``PHOTOCLUST_KAFKA_PORT``, default 19092), stopped
  at the end of the session only if this fixture started it (a broker.sh broker that already runs
  on that port is reused as it is). A broker that cannot start FAILS the tests (with broker.sh's
  output); it never skips them.
* ``settings_factory``: unique app id / topics (uuid) per call, data dir under ``tmp_path``.
* ``worker_factory``: starts ``python -m streams worker`` subprocesses, waits for ``/stats``
  ``"ready": true``, stops them (SIGTERM, then SIGKILL) at teardown; on failure every worker's log
  tail is attached to the report.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from kafka_support import BROKER_SH, REPO, WorkerProcess, unique_settings  # noqa: E402

from streams.config import Settings  # noqa: E402

_broker_failure: str | None = None


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    global _broker_failure
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    if _broker_failure is not None:  # do not retry a broken start for every test
        pytest.fail(_broker_failure, pytrace=False)
    # A broker of broker.sh already running on this port (someone's dev broker) is reused, never
    # wiped or stopped: every test uses its own uuid-named topics and consumer groups.
    status = subprocess.run(["bash", str(BROKER_SH), "status"], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=60)
    if status.returncode == 0 and status.stdout.strip():
        yield status.stdout.strip().splitlines()[-1]
        return
    result = subprocess.run(["bash", str(BROKER_SH), "start", "--fresh"], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    lines = result.stdout.strip().splitlines()
    address = lines[-1].strip() if lines else ""
    if result.returncode != 0 or ":" not in address:
        _broker_failure = (f"the local Kafka broker did not start (broker.sh start --fresh exited "
                           f"{result.returncode}); its output:\n{result.stdout}")
        pytest.fail(_broker_failure, pytrace=False)
    try:
        yield address
    finally:
        subprocess.run(["bash", str(BROKER_SH), "stop"], cwd=REPO, timeout=120,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture
def settings_factory(kafka_bootstrap: str, tmp_path: Path) -> Callable[..., Settings]:
    counter = iter(range(1_000_000))

    def make(**overrides: Any) -> Settings:
        overrides.setdefault("data_dir", str(tmp_path / f"data-{next(counter)}"))
        return unique_settings(kafka_bootstrap, Path(overrides.pop("data_dir")), **overrides)

    return make


@pytest.fixture
def worker_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """``start(settings, name="A", wait=True)`` -> a running, ready :class:`WorkerProcess`."""
    workers: list[WorkerProcess] = []
    request.node._photoclust_workers = workers

    def start(settings: Settings, name: str | None = None, wait: bool = True,
              env: dict[str, str] | None = None) -> WorkerProcess:
        name = name or f"worker{len(workers)}"
        worker = WorkerProcess(name, settings, tmp_path / f"{name}.log", extra_env=env or {})
        workers.append(worker)
        worker.start()
        if wait:
            worker.wait_ready()
        return worker

    yield start
    for worker in workers:
        worker.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for worker in getattr(item, "_photoclust_workers", []):
            report.sections.append((f"photoclust worker {worker.name} ({report.when})", worker.log_tail(80)))
