"""Settings (streams/config.py) and how its security settings reach every Kafka client, without a broker.

* validation: each bad value is refused with a message naming the field (and never a secret);
* precedence: defaults < ``KAFKA_BOOTSTRAP_SERVERS`` < ``PHOTOCLUST_*`` < overrides (flags);
* one configuration, two client families: ``confluent_config()`` (librdkafka) and the Faust
  credentials of ``streams.app`` give every client the same protocol, mechanism and user; the real
  Faust consumer/producer objects are built from an app and inspected;
* secrets are masked by ``redacted()`` and ``repr``;
* a source check: every confluent-kafka client constructed under ``streams/`` takes
  ``settings.confluent_config(...)``, no aiokafka client is built directly, and the Faust app gets
  ``broker_credentials=_credentials(settings)``.
"""

from __future__ import annotations

import ast
import asyncio
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import faust
import pytest
from confluent_kafka import KafkaException, Producer
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from streams.app import _credentials, create_app
from streams.config import LIBRDKAFKA_LOGGER, SASL_MECHANISMS, SECURITY_PROTOCOLS, Settings

STREAMS = Path(__file__).resolve().parents[1] / "streams"
PASSWORD = "s3cr3t-Hunter2-9f1c"
KEY_PASSWORD = "k3y-Pass-77ab"
SASL = {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_username": "photoclust",
        "sasl_password": PASSWORD}


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A self-signed certificate (also used as the CA file) and its key, encrypted with KEY_PASSWORD."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-passout", f"pass:{KEY_PASSWORD}"],
                   check=True, capture_output=True, timeout=60)
    return {"ssl_cafile": str(cert), "ssl_certfile": str(cert), "ssl_keyfile": str(key),
            "ssl_key_password": KEY_PASSWORD}


# -- validation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "message"), [
    ({"partitions": 0}, "partitions=0 must be >= 1"),
    ({"window_size": 0}, "window_size=0 must be >= 1"),
    ({"min_cluster_size": 0}, "min_cluster_size=0 must be >= 1"),
    ({"max_iter": 0}, "max_iter=0 must be >= 1"),
    ({"web_port": 0}, "web_port=0 must be >= 1"),
    ({"new_centers_ratio": 0}, "new_centers_ratio=0 must be in (0, 1]"),
    ({"new_centers_ratio": 1.5}, "new_centers_ratio=1.5 must be in (0, 1]"),
    ({"radius": -1}, "radius=-1 must be between 0 and n_bits=256"),
    ({"radius": 257}, "radius=257 must be between 0 and n_bits=256"),
    ({"pending_capacity": -1}, "pending_capacity=-1 must be >= 0"),
    ({"pending_idle_s": -1.0}, "pending_idle_s=-1.0 must be >= 0"),
    ({"max_wait_s": 0.0}, "max_wait_s=0.0 must be > 0"),
    ({"processing_guarantee": "exactly-once"}, "processing_guarantee='exactly-once' is not one of"),
    ({"session_timeout_s": 5.0}, "session_timeout_s=5.0 must be between 6 and 1800"),
    ({"session_timeout_s": 2000}, "session_timeout_s=2000 must be between 6 and 1800"),
    ({"security_protocol": "TLS"}, "security_protocol='TLS' is not one of"),
    ({"security_protocol": "sasl_plaintext", "sasl_mechanism": "PLAIN"},
     "security_protocol='sasl_plaintext' is not one of"),
    ({"security_protocol": "SASL_PLAINTEXT"}, "security_protocol='SASL_PLAINTEXT' needs sasl_mechanism"),
    ({"security_protocol": "SASL_SSL", "sasl_password": PASSWORD}, "security_protocol='SASL_SSL' needs sasl_mechanism"),
    ({"sasl_mechanism": "PLAIN", "sasl_username": "u", "sasl_password": PASSWORD},
     "sasl_mechanism='PLAIN' needs security_protocol 'SASL_PLAINTEXT' or 'SASL_SSL', got 'PLAINTEXT'"),
    ({"security_protocol": "SSL", "sasl_mechanism": "PLAIN", "sasl_password": PASSWORD},
     "sasl_mechanism='PLAIN' needs security_protocol 'SASL_PLAINTEXT' or 'SASL_SSL', got 'SSL'"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "GSSAPI"}, "sasl_mechanism='GSSAPI' is not one of"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "plain"}, "sasl_mechanism='plain' is not one of"),
    ({"ssl_cafile": "/etc/ca.pem"}, "ssl_cafile set, but security_protocol='PLAINTEXT' does not use TLS"),
    ({**SASL, "ssl_certfile": "c.pem", "ssl_key_password": PASSWORD},
     "ssl_certfile, ssl_key_password set, but security_protocol='SASL_PLAINTEXT' does not use TLS"),
])
def test_invalid_settings_are_refused_with_a_clear_message(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        Settings(**overrides)
    assert message in str(excinfo.value)
    assert PASSWORD not in str(excinfo.value), "a validation message shows a secret"


@pytest.mark.parametrize("overrides", [
    {},
    SASL,
    {**SASL, "sasl_mechanism": "SCRAM-SHA-256"},
    {**SASL, "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "ssl_cafile": "/etc/ca.pem"},
    {"security_protocol": "SSL", "ssl_cafile": "/etc/ca.pem", "ssl_certfile": "c.pem", "ssl_keyfile": "k.pem"},
    {"processing_guarantee": "exactly_once", "partitions": 1},
    {"processing_guarantee": "exactly_once", "partitions": 6},
])
def test_valid_settings_are_accepted(overrides: dict[str, Any]) -> None:
    assert Settings(**overrides).replace() == Settings(**overrides)


def test_exactly_once_takes_many_partitions_also_from_the_environment() -> None:
    # each input partition commits in its own transaction (streams.commit)
    settings = Settings.load(environ={"PHOTOCLUST_PROCESSING_GUARANTEE": "exactly_once", "PHOTOCLUST_PARTITIONS": "3"})
    assert (settings.processing_guarantee, settings.partitions) == ("exactly_once", 3)


# -- precedence ---------------------------------------------------------------------------------------


def test_defaults_then_environment_then_overrides() -> None:
    assert Settings.load(environ={}) == Settings()
    env = {"PHOTOCLUST_APP_ID": "from-env", "PHOTOCLUST_WINDOW_SIZE": "123", "PHOTOCLUST_MAX_WAIT_S": "2.5",
           "PHOTOCLUST_SECURITY_PROTOCOL": "SASL_SSL", "PHOTOCLUST_SASL_MECHANISM": "SCRAM-SHA-512",
           "PHOTOCLUST_SASL_USERNAME": "env-user", "PHOTOCLUST_SASL_PASSWORD": PASSWORD,
           "PHOTOCLUST_RADIUS": "", "UNRELATED": "x"}
    s = Settings.load(environ=env)
    assert (s.app_id, s.window_size, s.max_wait_s) == ("from-env", 123, 2.5)
    assert type(s.window_size) is int and type(s.max_wait_s) is float
    assert (s.security_protocol, s.sasl_mechanism, s.sasl_username, s.sasl_password) == (
        "SASL_SSL", "SCRAM-SHA-512", "env-user", PASSWORD)
    assert s.radius == Settings().radius, "an empty variable must fall back to the default"
    flags = {"app_id": "from-flag", "window_size": None, "sasl_password": "flag-password"}
    s = Settings.load(flags, environ=env)
    assert (s.app_id, s.window_size, s.sasl_password) == ("from-flag", 123, "flag-password"), (
        "a flag wins over the environment; an unset flag (None) does not")


def test_bootstrap_servers_precedence() -> None:
    default = Settings().bootstrap_servers
    assert Settings.load(environ={"KAFKA_BOOTSTRAP_SERVERS": ""}).bootstrap_servers == default
    assert Settings.load(environ={"KAFKA_BOOTSTRAP_SERVERS": "k:1"}).bootstrap_servers == "k:1"
    both = {"KAFKA_BOOTSTRAP_SERVERS": "k:1", "PHOTOCLUST_BOOTSTRAP_SERVERS": "p:2"}
    assert Settings.load(environ=both).bootstrap_servers == "p:2"
    assert Settings.load({"bootstrap_servers": "f:3"}, environ=both).bootstrap_servers == "f:3"


def test_load_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"KAFKA_BOOTSTRAP_SERVERS": "k:9", "PHOTOCLUST_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                        "PHOTOCLUST_SASL_MECHANISM": "PLAIN", "PHOTOCLUST_SASL_USERNAME": "photoclust",
                        "PHOTOCLUST_SASL_PASSWORD": PASSWORD}.items():
        monkeypatch.setenv(name, value)
    s = Settings.load()
    assert s.bootstrap_servers == "k:9"
    assert s.confluent_config()["sasl.password"] == PASSWORD


@pytest.mark.parametrize(("name", "raw", "kind"), [("PARTITIONS", "two", "int"), ("MAX_WAIT_S", "soon", "float")])
def test_an_unparsable_environment_value_names_its_variable(name: str, raw: str, kind: str) -> None:
    with pytest.raises(ValueError, match=f"PHOTOCLUST_{name}='{raw}' is not a valid {kind}"):
        Settings.load(environ={f"PHOTOCLUST_{name}": raw})


# -- secrets ------------------------------------------------------------------------------------------


def test_secrets_are_masked_in_redacted_and_repr() -> None:
    s = Settings(**{**SASL, "security_protocol": "SASL_SSL"}, ssl_key_password=KEY_PASSWORD, ssl_cafile="/etc/ca.pem")
    red = s.redacted()
    assert red["sasl_password"] == "***" and red["ssl_key_password"] == "***"
    assert red["sasl_username"] == "photoclust" and red["ssl_cafile"] == "/etc/ca.pem"
    assert set(red) == set(Settings.__dataclass_fields__)
    for text in (repr(s), str(s), repr(red), str(s.replace(app_id="x"))):
        assert PASSWORD not in text and KEY_PASSWORD not in text, text
    assert "photoclust" in repr(s), "repr keeps the non-secret fields"
    assert Settings().redacted()["sasl_password"] == "", "an empty secret stays visibly empty"
    assert s.sasl_password == PASSWORD, "redacted() must not change the settings themselves"


# -- one configuration, every client ------------------------------------------------------------------


def test_plaintext_confluent_config_has_no_security_keys() -> None:
    config = Settings(bootstrap_servers="a:1,b:2").confluent_config(**{"group.id": "g"})
    assert config == {"bootstrap.servers": "a:1,b:2", "logger": LIBRDKAFKA_LOGGER, "group.id": "g"}


def test_sasl_reaches_confluent_config() -> None:
    config = Settings(bootstrap_servers="b:1", **SASL).confluent_config(**{"acks": "all"})
    assert config == {"bootstrap.servers": "b:1", "logger": LIBRDKAFKA_LOGGER, "security.protocol": "SASL_PLAINTEXT",
                      "sasl.mechanism": "PLAIN", "sasl.username": "photoclust", "sasl.password": PASSWORD,
                      "acks": "all"}


def test_ssl_reaches_confluent_config(tls_files: dict[str, str]) -> None:
    config = Settings(**{**SASL, "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256"},
                      **tls_files).confluent_config()
    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.mechanism"] == "SCRAM-SHA-256"
    assert (config["ssl.ca.location"], config["ssl.certificate.location"], config["ssl.key.location"],
            config["ssl.key.password"]) == (tls_files["ssl_cafile"], tls_files["ssl_certfile"],
                                            tls_files["ssl_keyfile"], KEY_PASSWORD)


def _combinations(tls_files: dict[str, str]) -> list[Settings]:
    out = [Settings(), Settings(security_protocol="SSL", **tls_files), Settings(security_protocol="SSL")]
    for protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        for mechanism in SASL_MECHANISMS:
            tls = tls_files if protocol == "SASL_SSL" else {}
            out.append(Settings(**{**SASL, "security_protocol": protocol, "sasl_mechanism": mechanism}, **tls))
    assert {s.security_protocol for s in out} == set(SECURITY_PROTOCOLS)
    return out


def test_librdkafka_accepts_every_generated_configuration(tls_files: dict[str, str]) -> None:
    """librdkafka checks keys and values, and loads the CA, certificate and key, when a client is made."""
    for settings in _combinations(tls_files):
        producer = Producer(settings.confluent_config(**{"log_level": 0}))
        assert producer.flush(0) == 0
    bad_key_password = Settings(security_protocol="SSL", **{**tls_files, "ssl_key_password": "wrong"})
    with pytest.raises(KafkaException):
        Producer(bad_key_password.confluent_config(**{"log_level": 0}))


def test_faust_credentials_follow_the_same_settings(tls_files: dict[str, str]) -> None:
    assert _credentials(Settings()) is None
    sasl = _credentials(Settings(**SASL))
    assert isinstance(sasl, faust.SASLCredentials)
    assert (sasl.mechanism.value, sasl.username, sasl.password, sasl.ssl_context) == (
        "PLAIN", "photoclust", PASSWORD, None)
    assert PASSWORD not in repr(sasl)
    scram_ssl = _credentials(Settings(**{**SASL, "security_protocol": "SASL_SSL",
                                         "sasl_mechanism": "SCRAM-SHA-512"}, **tls_files))
    assert isinstance(scram_ssl, faust.SASLCredentials) and scram_ssl.mechanism.value == "SCRAM-SHA-512"
    assert isinstance(scram_ssl.ssl_context, ssl.SSLContext)
    tls = _credentials(Settings(security_protocol="SSL", **tls_files))
    assert isinstance(tls, faust.SSLCredentials)
    assert tls.context.verify_mode == ssl.CERT_REQUIRED and tls.context.check_hostname
    # the CA file was loaded into the context (our self-signed certificate is its only CA)
    assert [dict(x[0] for x in ca["subject"]) for ca in tls.context.get_ca_certs()] == [{"commonName": "127.0.0.1"}]
    with pytest.raises(ssl.SSLError):  # the key password reaches load_cert_chain
        _credentials(Settings(security_protocol="SSL", **{**tls_files, "ssl_key_password": "wrong"}))


def test_both_client_families_read_one_meaning(tls_files: dict[str, str]) -> None:
    """For every accepted combination, Faust's aiokafka clients and librdkafka use the same protocol,
    mechanism, user and password."""
    for settings in _combinations(tls_files):
        theirs = settings.confluent_config()
        faust_auth = credentials_to_aiokafka_auth(_credentials(settings))
        assert faust_auth["security_protocol"] == theirs.get("security.protocol", "PLAINTEXT"), settings
        assert faust_auth.get("sasl_mechanism") == theirs.get("sasl.mechanism"), settings
        assert faust_auth.get("sasl_plain_username") == theirs.get("sasl.username"), settings
        assert faust_auth.get("sasl_plain_password") == theirs.get("sasl.password"), settings
        assert (faust_auth.get("ssl_context") is not None) == settings.security_protocol.endswith("SSL"), settings


_AUTH_ATTRS = ("_security_protocol", "_sasl_mechanism", "_sasl_plain_username", "_sasl_plain_password")


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_the_faust_apps_real_clients_get_the_credentials(tmp_path: Path, guarantee: str) -> None:
    """Build the worker's Faust app and the aiokafka clients Faust would start (no connection)."""
    settings = Settings(**{**SASL, "sasl_mechanism": "SCRAM-SHA-256"}, processing_guarantee=guarantee,
                        data_dir=str(tmp_path / "data"))
    expected = ("SASL_PLAINTEXT", "SCRAM-SHA-256", "photoclust", PASSWORD)

    async def check() -> None:
        app = create_app(settings).app
        assert isinstance(app.conf.broker_credentials, faust.SASLCredentials)
        thread = app.consumer._thread
        consumers = [thread._create_worker_consumer(app.transport), thread._create_client_consumer(app.transport)]
        producers = [app.producer._new_producer()]
        if guarantee == "exactly_once":
            producers.append(app.producer._new_producer(transactional_id="photoclust-test-0"))
        try:
            for client in [c._client for c in consumers] + [p.client for p in producers]:
                assert tuple(getattr(client, a) for a in _AUTH_ATTRS) == expected, client
        finally:
            for consumer in consumers:
                await consumer.stop()
            for producer in producers:
                await producer.stop()

    asyncio.run(check())


# -- source check: no client bypasses the one configuration -------------------------------------------

CONFLUENT_CLIENTS = {"Consumer", "Producer", "AdminClient", "DeserializingConsumer", "SerializingProducer"}
KAFKA_MODULES = ("confluent_kafka", "aiokafka", "kafka")


def _kafka_names(tree: ast.Module) -> tuple[dict[str, str], set[str]]:
    """Local names bound to Kafka client classes (alias -> module.Class) and to Kafka modules."""
    classes: dict[str, str] = {}
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in KAFKA_MODULES:
            for alias in node.names:
                classes[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in KAFKA_MODULES:
                    modules.add((alias.asname or alias.name).split(".")[0])
    return classes, modules


def _client_calls(tree: ast.Module) -> list[tuple[ast.Call, str]]:
    classes, modules = _kafka_names(tree)
    calls = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in classes:
            qualified = classes[func.id]
        elif isinstance(func, ast.Attribute) and isinstance(func.value, (ast.Name, ast.Attribute)):
            root = func.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if not (isinstance(root, ast.Name) and root.id in modules):
                continue
            qualified = f"{ast.unparse(func.value)}.{func.attr}"
        else:
            continue
        name = qualified.rsplit(".", 1)[1]
        if name in CONFLUENT_CLIENTS or qualified.split(".")[0] in ("aiokafka", "kafka") and name[:1].isupper():
            calls.append((node, qualified))
    return calls


def _is_confluent_config_call(node: ast.expr) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "confluent_config")


def test_every_kafka_client_under_streams_takes_confluent_config() -> None:
    found, offenders = [], []
    for path in sorted(STREAMS.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for call, qualified in _client_calls(tree):
            where = f"{path.name}:{call.lineno} {qualified}(...)"
            found.append(where)
            if qualified.split(".")[0] != "confluent_kafka":
                offenders.append(f"{where}: a {qualified.split('.')[0]} client built directly (Faust's "
                                 f"credentials and confluent_config would both be bypassed)")
                continue
            first = call.args[0] if call.args else next(
                (k.value for k in call.keywords if k.arg in (None, "conf", "config")), None)
            if first is None or not _is_confluent_config_call(first) or len(call.args) + len(call.keywords) != 1:
                offenders.append(f"{where}: configuration is not exactly settings.confluent_config(...)")
    assert not offenders, "\n".join(offenders)
    # the check must see the clients it guards (kafka_io: admin, producer, consumers; replica: the centers
    # reader; kafka_cli: the demo's reader); a renamed import would otherwise make it pass vacuously
    files = {where.split(":")[0] for where in found}
    assert {"kafka_io.py", "replica.py", "kafka_cli.py"} <= files, found
    assert len(found) >= 6, found


def test_the_source_check_catches_a_bypass() -> None:
    """The checker itself: a client with a hand-written configuration or an aliased import is found."""
    source = (
        "import confluent_kafka as ck\n"
        "from confluent_kafka import Consumer as C\n"
        "from aiokafka import AIOKafkaConsumer\n"
        "a = C({'bootstrap.servers': s.bootstrap_servers})\n"
        "b = ck.Producer(s.confluent_config())\n"
        "c = ck.admin.AdminClient(conf={'bootstrap.servers': 'x'})\n"
        "d = AIOKafkaConsumer(bootstrap_servers='x')\n"
    )
    calls = _client_calls(ast.parse(source))
    assert [q for _, q in calls] == ["confluent_kafka.Consumer", "ck.Producer", "ck.admin.AdminClient",
                                     "aiokafka.AIOKafkaConsumer"]
    assert [_is_confluent_config_call(call.args[0]) for call, _ in calls if call.args] == [False, True]


def test_the_faust_app_is_given_the_credentials() -> None:
    tree = ast.parse((STREAMS / "app.py").read_text())
    apps = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
            and ast.unparse(node.func) in ("PhotoclustApp", "faust.App", "App")]
    assert apps, "no Faust app construction found in streams/app.py"
    for call in apps:
        keywords = {k.arg: k.value for k in call.keywords}
        assert "broker_credentials" in keywords, f"app.py:{call.lineno}: no broker_credentials"
        assert ast.unparse(keywords["broker_credentials"]) == "_credentials(settings)", ast.unparse(call)
