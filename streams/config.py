"""The one settings object of the stream processor, and the one place that reads the environment.

Precedence, lowest to highest: the defaults below, then ``PHOTOCLUST_*`` environment variables
(and ``KAFKA_BOOTSTRAP_SERVERS``, which Kafka tooling already uses), then command-line flags. The
result is frozen: every Kafka client, the Faust app and the core clusterer are built from it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from core._validation import check_range
from core.codes import check_n_bits

ENV_PREFIX = "PHOTOCLUST_"
PROCESSING_GUARANTEES = ("at_least_once", "exactly_once")
SECRET_FIELDS = frozenset({"sasl_password", "ssl_key_password"})
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
# Username/password mechanisms, which both Faust's aiokafka clients and librdkafka support.
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
SSL_FIELDS = ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_key_password")
TOPIC_FIELDS = ("input_topic", "output_topic", "dlq_topic", "state_topic", "unjoined_topic", "centers_topic",
                "retired_topic")
# Every confluent-kafka client logs through this logger instead of writing librdkafka's raw
# "%3|...|FAIL|..." lines to stderr; the records are handed over from the client's poll()/flush().
LIBRDKAFKA_LOGGER = logging.getLogger("photoclust.librdkafka")


@dataclass(frozen=True)
class Settings:
    # Kafka
    bootstrap_servers: str = "127.0.0.1:19092"
    app_id: str = "photoclust"  # also the consumer group id
    input_topic: str = "photo-hashes"
    output_topic: str = "cluster-assignments"
    dlq_topic: str = "photo-hashes.dlq"
    state_topic: str = "photoclust-state"
    unjoined_topic: str = "photoclust-unjoined"  # join stage -> found stage, one partition
    centers_topic: str = "photoclust-centers"  # public, compacted: the center blocks
    retired_topic: str = "photoclust-retired"  # public: one event per retired center
    # Input (and assignment) topic partitions: the group spreads the join stage over up to this
    # many workers. Fixed once the topic exists (Kafka can add partitions, never remove them).
    partitions: int = 6
    processing_guarantee: str = "at_least_once"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    ssl_key_password: str = field(default="", repr=False)
    # Clustering (the paper's Algorithm 2)
    n_bits: int = 256
    window_size: int = 100_000
    new_centers_ratio: float = 0.1
    radius: int = 64
    min_cluster_size: int = 10
    pending_capacity: int = 200_000
    max_iter: int = 10
    seed: int = 0
    max_wait_s: float = 5.0  # a partial window is clustered when its oldest photo waited this long
    # The join stage holds back new input while the found stage has more than this many windows of
    # forwarded photos not yet committed (0: never), so that it joins them itself once the centers
    # of the windows before them exist, instead of forwarding a whole backlog to be joined there.
    forward_ahead_windows: float = 2.0
    pending_idle_s: float = 60.0  # after this long without events, pending photos become noise (0: never)
    # Retiring centers (0: off, keep every center, as the paper does). At the end of a window the
    # least recently joined centers beyond max_centers, and those not joined for max_idle_s, leave
    # the index; their ids are never handed out again.
    max_centers: int = 0
    max_idle_s: float = 0.0
    # Worker
    drain_timeout_s: float = 60.0  # on a graceful stop, time allowed to finish the windows already closed
    restore_timeout_s: float = 300.0  # longest a start may take to rebuild the clusterer; then it exits non-zero
    # A worker that stops heartbeating (killed, cut off) leaves the group after this long, and its
    # partitions (the founder's too) move to the others: the floor of a failover's time.
    session_timeout_s: float = 10.0
    data_dir: str = "./photoclust-data"
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    log_level: str = "info"

    def __post_init__(self) -> None:
        check_n_bits(self.n_bits)
        positive = ("partitions", "window_size", "min_cluster_size", "max_iter", "web_port")
        for name in positive:
            check_range(name, getattr(self, name), 1)
        # finite: NaN fails no comparison, and these two refused it before (the others accept it)
        check_range("new_centers_ratio", self.new_centers_ratio, 0, 1, low_open=True, finite=True)
        check_range("radius", self.radius, 0, ("n_bits", self.n_bits), finite=True)
        check_range("pending_capacity", self.pending_capacity, 0)
        check_range("pending_idle_s", self.pending_idle_s, 0)
        check_range("max_centers", self.max_centers, 0)
        check_range("max_idle_s", self.max_idle_s, 0, finite=True)
        check_range("restore_timeout_s", self.restore_timeout_s, 0, low_open=True)
        # the broker's group.min.session.timeout.ms and group.max.session.timeout.ms defaults
        check_range("session_timeout_s", self.session_timeout_s, 6, 1800)
        check_range("max_wait_s", self.max_wait_s, 0, low_open=True)
        check_range("forward_ahead_windows", self.forward_ahead_windows, 0, finite=True)
        if self.processing_guarantee not in PROCESSING_GUARANTEES:
            raise ValueError(
                f"processing_guarantee={self.processing_guarantee!r} is not one of {list(PROCESSING_GUARANTEES)}"
            )
        self._check_security()

    def _check_security(self) -> None:
        """One meaning for every client: Faust derives its protocol from the SASL and SSL settings,
        librdkafka takes ``security_protocol`` as given, so a combination they would read differently
        (e.g. a SASL mechanism with PLAINTEXT: SASL for Faust, none for librdkafka) is refused."""
        protocol = self.security_protocol
        if protocol not in SECURITY_PROTOCOLS:
            raise ValueError(f"security_protocol={protocol!r} is not one of {list(SECURITY_PROTOCOLS)}")
        sasl = protocol.startswith("SASL_")
        if sasl and not self.sasl_mechanism:
            raise ValueError(f"security_protocol={protocol!r} needs sasl_mechanism, one of {list(SASL_MECHANISMS)}")
        if self.sasl_mechanism and not sasl:
            raise ValueError(f"sasl_mechanism={self.sasl_mechanism!r} needs security_protocol 'SASL_PLAINTEXT' or "
                             f"'SASL_SSL', got {protocol!r}")
        if self.sasl_mechanism and self.sasl_mechanism not in SASL_MECHANISMS:
            raise ValueError(f"sasl_mechanism={self.sasl_mechanism!r} is not one of {list(SASL_MECHANISMS)}")
        if not protocol.endswith("SSL"):
            unused = [name for name in SSL_FIELDS if getattr(self, name)]
            if unused:
                raise ValueError(f"{', '.join(unused)} set, but security_protocol={protocol!r} does not use TLS "
                                 f"(use 'SSL' or 'SASL_SSL')")

    @classmethod
    def load(cls, overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> "Settings":
        """Defaults, then environment, then ``overrides`` (flags; ``None`` values are ignored)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if environ.get("KAFKA_BOOTSTRAP_SERVERS"):
            values["bootstrap_servers"] = environ["KAFKA_BOOTSTRAP_SERVERS"]
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _parse(f, raw, ENV_PREFIX + f.name.upper())
        for name, value in (overrides or {}).items():
            if value is not None:
                values[name] = value
        return cls(**values)

    def with_topic_prefix(self, prefix: str, **changes: Any) -> "Settings":
        """These settings with every topic (and the app id) named for one run: ``<prefix>.<topic>``."""
        return self.replace(**{
            "app_id": f"photoclust-{prefix}", **{name: f"{prefix}.{getattr(self, name)}" for name in TOPIC_FIELDS},
            **changes})

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict with secrets masked (for logs and /stats)."""
        out = dataclasses.asdict(self)
        for name in SECRET_FIELDS:
            if out.get(name):
                out[name] = "***"
        return out

    @property
    def broker_url(self) -> str:
        """Faust's broker URL list (``kafka://host:port;kafka://host2:port``)."""
        return ";".join(f"kafka://{server.strip()}" for server in self.bootstrap_servers.split(",") if server.strip())

    def confluent_config(self, **extra: Any) -> dict[str, Any]:
        """librdkafka configuration for confluent-kafka clients, security settings and the
        :data:`LIBRDKAFKA_LOGGER` included."""
        config: dict[str, Any] = {"bootstrap.servers": self.bootstrap_servers, "logger": LIBRDKAFKA_LOGGER}
        if self.security_protocol != "PLAINTEXT":
            config["security.protocol"] = self.security_protocol
        if self.sasl_mechanism:
            config["sasl.mechanism"] = self.sasl_mechanism
            config["sasl.username"] = self.sasl_username
            config["sasl.password"] = self.sasl_password
        for ours, theirs in (
            ("ssl_cafile", "ssl.ca.location"),
            ("ssl_certfile", "ssl.certificate.location"),
            ("ssl_keyfile", "ssl.key.location"),
            ("ssl_key_password", "ssl.key.password"),
        ):
            if getattr(self, ours):
                config[theirs] = getattr(self, ours)
        config.update(extra)
        return config


def _parse(f: dataclasses.Field, raw: str, source: str) -> Any:
    kind = f.type if isinstance(f.type, type) else {"int": int, "float": float, "str": str}.get(str(f.type), str)
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"{source}={raw!r} is not a valid {kind.__name__}") from None
