"""Security on a real broker: SASL settings reach every Kafka client the project creates, from one
Settings object, and the password shows up nowhere.

A private broker (broker.sh on its own ports and data dir) gets, besides broker.sh's PLAINTEXT
listener (its readiness check), a SASL_PLAINTEXT and a SASL_SSL listener (SASL/PLAIN, TLS with a
test CA) that accept the one user ``photoclust``. Each listener advertises its own address, so a
client given the SASL address and ignoring the security settings cannot talk to the broker at all
(checked first, together with wrong passwords and an untrusted certificate).

The worker then runs on those listeners only: Faust's consumer, producer and topic admin
(aiokafka), the topic creation at start-up, the output producer, the restore-time consumer and the
lag probe of /metrics (confluent-kafka) must all authenticate, or the photos would get no outcome,
the worker would not become ready, or /metrics would count lag scrape errors. Worker A runs on
SASL_PLAINTEXT; worker B restores A's state and carries on over SASL_SSL. The CLI (``lag``, ``tail``,
``produce``) runs with the same settings from the environment. Finally the password is searched for
in the worker logs, /stats, /metrics, /health, /ready, /clusters/0 and every CLI output.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiokafka
import pytest
from confluent_kafka import Producer
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from kafka_support import (
    REPO,
    AssignmentReader,
    PrivateBroker,
    WorkerProcess,
    free_port,
    labels_of,
    noisy_copies,
    photo_events,
    photo_ids,
    produce_events,
    settings_env,
    wait_for,
)
from prometheus_client.parser import text_string_to_metric_families

from core.codes import to_bytes
from core.purity import purity
from core.synth import planted_codes
from streams.app import _credentials
from streams.config import Settings

pytestmark = pytest.mark.kafka

HOST = "127.0.0.1"
USER = "photoclust"
PASSWORD = "s3cr3t-Hunter2-9f1c"
WRONG_PASSWORD = "wr0ng-Hunter2-c1f9"
N_PHOTOS = 3000
N_MORE = 600
N_CLUSTERS = 15
AUTHENTICATED = f"Authenticated as {USER} via PLAIN"  # aiokafka's INFO line after a SASL handshake


# -- the broker ---------------------------------------------------------------------------------------


def _make_tls(directory: Path) -> tuple[Path, Path]:
    """A test CA and a broker certificate for 127.0.0.1 signed by it: (ca.pem, keystore.pem)."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the test CA of the SASL_SSL listener", pytrace=False)
    directory.mkdir(parents=True)

    def openssl(*args: str) -> None:
        result = subprocess.run(["openssl", *args], cwd=directory, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"openssl {' '.join(args)}:\n{result.stderr}"

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=photoclust-test-ca")
    openssl("req", *ec, "-keyout", "broker.key", "-out", "broker.csr", "-subj", f"/CN={HOST}")
    (directory / "san.cnf").write_text(f"subjectAltName=IP:{HOST}\n")
    openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "broker.pem", "-days", "2", "-extfile", "san.cnf")
    keystore = directory / "keystore.pem"  # Kafka's PEM keystore: PKCS#8 key, then the certificate
    keystore.write_text((directory / "broker.key").read_text() + (directory / "broker.pem").read_text())
    return directory / "ca.pem", keystore


@dataclass
class SecureBroker:
    broker: PrivateBroker
    sasl_port: int
    ssl_port: int
    ca_file: Path
    log_file: Path

    def sasl(self, **changes: Any) -> dict[str, Any]:
        """Settings fields for the SASL_PLAINTEXT listener."""
        return {"bootstrap_servers": f"{HOST}:{self.sasl_port}", "security_protocol": "SASL_PLAINTEXT",
                "sasl_mechanism": "PLAIN", "sasl_username": USER, "sasl_password": PASSWORD, **changes}

    def sasl_ssl(self, **changes: Any) -> dict[str, Any]:
        """Settings fields for the SASL_SSL listener."""
        return self.sasl(bootstrap_servers=f"{HOST}:{self.ssl_port}", security_protocol="SASL_SSL",
                         ssl_cafile=str(self.ca_file), **changes)

    def log_size(self) -> int:
        return self.log_file.stat().st_size

    def log_since(self, offset: int) -> str:
        with open(self.log_file, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("secure-kafka")
    ca_file, keystore = _make_tls(root / "tls")
    broker = PrivateBroker(root / "kafka")
    taken = {broker.port, broker.controller_port}
    sasl_port = ssl_port = broker.port
    while sasl_port in taken:
        sasl_port = free_port()
    while ssl_port in taken | {sasl_port}:
        ssl_port = free_port()
    listeners = (f"PLAINTEXT://{HOST}:{broker.port},CONTROLLER://{HOST}:{broker.controller_port},"
                 f"SASL_PLAINTEXT://{HOST}:{sasl_port},SASL_SSL://{HOST}:{ssl_port}")
    jaas = f'org.apache.kafka.common.security.plain.PlainLoginModule required user_{USER}="{PASSWORD}";'
    broker.config = [  # later lines of server.properties win: these replace broker.sh's listeners
        f"listeners={listeners}",
        f"advertised.listeners={listeners}",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,"
        "SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL",
        "sasl.enabled.mechanisms=PLAIN",
        f"listener.name.sasl_plaintext.plain.sasl.jaas.config={jaas}",
        f"listener.name.sasl_ssl.plain.sasl.jaas.config={jaas}",
        "listener.name.sasl_ssl.ssl.keystore.type=PEM",
        f"listener.name.sasl_ssl.ssl.keystore.location={keystore}",
    ]
    try:
        broker.run("start", "--fresh")
        yield SecureBroker(broker, sasl_port, ssl_port, ca_file, root / "kafka" / "broker.log")
    finally:
        broker.run("stop")


# -- helpers ------------------------------------------------------------------------------------------


def _produce_one(settings: Settings, topic: str) -> str | None:
    """Produce one record with a confluent-kafka producer; None if delivered, else the errors seen."""
    errors: list[str] = []
    delivered: list[Any] = []
    producer = Producer(settings.confluent_config(**{
        "message.timeout.ms": 10_000, "log_level": 0, "error_cb": lambda e: errors.append(str(e))}))
    producer.produce(topic, b"probe", on_delivery=lambda err, msg: delivered.append(err))
    deadline = time.monotonic() + 20
    while not delivered and not errors and time.monotonic() < deadline:  # a refusal is reported at once
        producer.poll(0.1)
    if len(delivered) == 1 and delivered[0] is None:  # (KafkaError == None raises inside confluent-kafka)
        return None
    return "; ".join(errors + [str(e) for e in delivered]) or "no delivery report within 20 s"


def _faust_client_connects(settings: Settings) -> str | None:
    """Start an aiokafka producer with the worker's Faust credentials; None if it connected."""
    async def run() -> str | None:
        producer = aiokafka.AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, request_timeout_ms=10_000,
                                             **credentials_to_aiokafka_auth(_credentials(settings)))
        try:
            await asyncio.wait_for(producer.start(), 30)
            return None
        except Exception as e:  # noqa: BLE001 - any failure to connect is the answer
            return f"{type(e).__name__}: {e}"
        finally:
            await producer.stop()

    return asyncio.run(run())


def _cli(settings: Settings, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """``python -m streams ARGS`` with the settings in the environment (PHOTOCLUST_*) only."""
    return subprocess.run([sys.executable, "-m", "streams", *args], env=settings_env(settings), cwd=REPO, text=True,
                          capture_output=True, timeout=timeout)


def _get(worker: WorkerProcess, path: str) -> str:
    url = f"http://127.0.0.1:{worker.settings.web_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode()
    except urllib.error.HTTPError as e:  # /ready answers 503 while not ready: still a page to search
        return e.read().decode()


def _pages(worker: WorkerProcess) -> dict[str, str]:
    return {f"{worker.name} {path}": _get(worker, path) for path in ("/stats", "/metrics", "/health", "/ready",
                                                                     "/clusters/0")}


def _metric(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


def _wait_lag_zero(worker: WorkerProcess, committed: int) -> str:
    """Wait until the worker's own lag probe (/metrics) reports its input partition fully committed."""
    where = {"topic": worker.settings.input_topic, "partition": "0"}

    def done() -> str | None:
        text = _get(worker, "/metrics")
        ok = (_metric(text, "photoclust_consumer_lag", **where) == 0
              and _metric(text, "photoclust_consumer_committed_offset", **where) == committed)
        return text if ok else None

    text = wait_for(done, 90, what=f"worker {worker.name}: /metrics lag 0 at committed offset {committed}")
    assert _metric(text, "photoclust_lag_scrape_errors_total") == 0, "the lag probe failed at least once"
    return text


def _assert_no_secret(texts: dict[str, str]) -> None:
    leaks = [name for name, text in texts.items() if PASSWORD in text]
    assert not leaks, f"the SASL password appears in: {leaks}"


# -- tests --------------------------------------------------------------------------------------------


def test_the_sasl_listeners_authenticate(secure_broker: SecureBroker, settings_factory: Any, tmp_path: Path) -> None:
    """The negative controls: without these, a worker that works would prove nothing."""
    good = settings_factory(**secure_broker.sasl())
    good_tls = settings_factory(**secure_broker.sasl_ssl())
    topic = f"{good.app_id}.probe"
    assert _produce_one(good, topic) is None
    assert _produce_one(good_tls, topic) is None
    assert _faust_client_connects(good) is None
    assert _faust_client_connects(good_tls) is None

    wrong = good.replace(sasl_password=WRONG_PASSWORD)
    error = _produce_one(wrong, topic)
    assert error is not None and "Authentication failed" in error, error
    error = _produce_one(good_tls.replace(sasl_password=WRONG_PASSWORD), topic)
    assert error is not None and "Authentication failed" in error, error
    assert _faust_client_connects(wrong) is not None
    # a client that ignores the security settings cannot use the SASL listener at all
    error = _produce_one(Settings(bootstrap_servers=good.bootstrap_servers), topic)
    assert error is not None, "a PLAINTEXT client was served by the SASL_PLAINTEXT listener"
    assert _faust_client_connects(Settings(bootstrap_servers=good.bootstrap_servers)) is not None
    # TLS is verified: the broker's certificate is not trusted without the test CA
    untrusted = good_tls.replace(ssl_cafile=str(tmp_path / "not-the-ca.pem"))
    Path(untrusted.ssl_cafile).write_text((secure_broker.ca_file.parent / "broker.pem").read_text())
    error = _produce_one(untrusted, topic)
    assert error is not None, "the SASL_SSL listener's certificate was accepted without its CA"

    # the CLI with a wrong password fails, and shows neither password
    result = _cli(wrong, "lag", "--json", "--topic", topic, timeout=120)
    assert result.returncode != 0, result.stdout
    _assert_no_secret({"lag (wrong password) stdout": result.stdout, "lag (wrong password) stderr": result.stderr})
    assert WRONG_PASSWORD not in result.stdout + result.stderr
    tail = _cli(wrong, "tail", "--max", "1", "--idle-timeout", "60", timeout=120)
    assert tail.returncode == 1 and "Authentication failed" in tail.stderr, (tail.returncode, tail.stderr[-2000:])
    _assert_no_secret({"tail (wrong password) stdout": tail.stdout, "tail (wrong password) stderr": tail.stderr})
    assert WRONG_PASSWORD not in tail.stdout + tail.stderr


def test_worker_and_cli_run_over_sasl_and_sasl_ssl(secure_broker: SecureBroker, settings_factory: Any,
                                                   worker_factory: Any) -> None:
    settings = settings_factory(**secure_broker.sasl())
    assert settings.confluent_config()["security.protocol"] == "SASL_PLAINTEXT"
    broker_log_start = secure_broker.log_size()
    texts: dict[str, str] = {}

    # -- worker A over SASL_PLAINTEXT -------------------------------------------------------------
    worker_a = worker_factory(settings, name="A")
    codes, truth, centers = planted_codes(N_PHOTOS, N_CLUSTERS, flip_prob=0.1, random_state=4)
    ids = photo_ids(0, N_PHOTOS)
    produce_events(settings, photo_events(ids, to_bytes(codes)))
    reader = AssignmentReader(settings)
    try:
        result = reader.collect(ids, timeout=180, workers=[worker_a])
    finally:
        reader.close()
    assert set(result.final) == set(ids)
    assert purity(labels_of(result, ids), truth, ignore_noise=True) >= 0.95
    texts["A /metrics (lag 0)"] = _wait_lag_zero(worker_a, committed=N_PHOTOS)
    stats_a = wait_for(lambda: (s := worker_a.stats()) and s["pending"] == 0 and s, 60, what="A: pending pool empty")
    assert stats_a["ready"] and stats_a["clusters"] >= N_CLUSTERS and stats_a["lag_errors"] == 0, stats_a
    texts.update(_pages(worker_a))

    # -- the CLI with the same settings, from the environment ---------------------------------------
    lag = _cli(settings, "lag", "--json")
    assert lag.returncode == 0, lag.stderr
    lag_json = json.loads(lag.stdout.strip().splitlines()[-1])
    assert lag_json["group"] == settings.app_id and lag_json["total_lag"] == 0, lag_json
    assert [p["committed"] for p in lag_json["partitions"]] == [N_PHOTOS], lag_json
    tail = _cli(settings, "tail", "--max", str(N_PHOTOS), "--idle-timeout", "60")
    assert tail.returncode == 0, tail.stderr
    tailed = [json.loads(line) for line in tail.stdout.splitlines() if line.strip()]
    assert {event["id"] for event in tailed} == set(ids), f"tail printed {len(tailed)} events"
    cli_topic = f"{settings.input_topic}.cli"
    produce = _cli(settings, "produce", "--synthetic", "200", "--input-topic", cli_topic)
    assert produce.returncode == 0, produce.stderr
    assert f"delivered 200 events to {cli_topic}, 0 failed" in produce.stderr, produce.stderr
    for name, run in (("lag", lag), ("tail", tail), ("produce", produce)):
        texts[f"cli {name} stdout"], texts[f"cli {name} stderr"] = run.stdout, run.stderr

    assert worker_a.stop() == 0, worker_a.log_tail()

    # -- worker B restores A's state and carries on over SASL_SSL -----------------------------------
    tls = settings.replace(**secure_broker.sasl_ssl(web_port=free_port()))
    assert tls.confluent_config()["security.protocol"] == "SASL_SSL"
    worker_b = worker_factory(tls, name="B")
    stats_b = worker_b.stats()
    assert stats_b["clusters"] == stats_a["clusters"], (stats_a, stats_b)
    more_ids = photo_ids(N_PHOTOS, N_MORE)
    more_truth = truth[:N_MORE]
    produce_events(tls, photo_events(more_ids, to_bytes(noisy_copies(centers, more_truth, 0.1, seed=5))))
    reader = AssignmentReader(tls)
    try:
        more = reader.collect(more_ids, timeout=180, workers=[worker_b])
    finally:
        reader.close()
    outcomes = Counter(more.final[i]["outcome"] for i in more_ids)
    assert outcomes["joined"] >= 0.9 * N_MORE, f"B did not restore A's clusters: {outcomes}"
    texts["B /metrics (lag 0)"] = _wait_lag_zero(worker_b, committed=N_PHOTOS + N_MORE)
    texts.update(_pages(worker_b))
    lag_tls = _cli(tls, "lag", "--json")
    assert lag_tls.returncode == 0, lag_tls.stderr
    assert json.loads(lag_tls.stdout.strip().splitlines()[-1])["total_lag"] == 0, lag_tls.stdout
    texts["cli lag (SASL_SSL) stdout"], texts["cli lag (SASL_SSL) stderr"] = lag_tls.stdout, lag_tls.stderr
    assert worker_b.stop() == 0, worker_b.log_tail()

    # -- every client authenticated, and no secret anywhere -----------------------------------------
    for worker in (worker_a, worker_b):
        log = worker.log_path.read_text(errors="replace")
        texts[f"{worker.name} log"] = log
        # Faust's clients (aiokafka) log each SASL handshake; the producer and consumer at least
        assert log.count(AUTHENTICATED) >= 2, f"worker {worker.name}: {log.count(AUTHENTICATED)} SASL logins"
        assert "Traceback" not in log, worker.log_tail(80)
    broker_log = secure_broker.log_since(broker_log_start)
    for symptom in ("Failed authentication", "during SASL handshake", "SSL handshake failed"):
        assert symptom not in broker_log, f"the broker saw a client fail to authenticate: {symptom!r}"
    for page in ("A /stats", "B /stats"):
        assert json.loads(texts[page])["lag_errors"] == 0, texts[page]
    _assert_no_secret(texts)
    assert PASSWORD not in repr(settings) and PASSWORD not in repr(tls)
    assert PASSWORD not in json.dumps(settings.redacted())


def test_no_secret_in_a_debug_log(secure_broker: SecureBroker, settings_factory: Any, worker_factory: Any) -> None:
    """aiokafka logs every request at DEBUG, the SASL/PLAIN authentication bytes included: the worker
    masks its secrets in every log record."""
    worker = worker_factory(settings_factory(**secure_broker.sasl(log_level="debug")), name="debug")
    assert worker.stop() == 0, worker.log_tail()
    log = worker.log_path.read_text(errors="replace")
    assert AUTHENTICATED in log
    _assert_no_secret({"debug log": log})
