"""``photoclust lag --json`` agrees with Kafka's own kafka-consumer-groups --describe, at lag 0 and
with a backlog produced while no worker runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from kafka_support import BROKER_SH, REPO, AssignmentReader, photo_events, photo_ids, produce_events, wait_for

from core.codes import to_bytes
from core.synth import planted_codes
from streams.kafka_io import consumer_lag, ensure_topics

pytestmark = pytest.mark.kafka

N_FIRST = 3000
N_BACKLOG = 700
PARTITIONS = 2


def _photoclust() -> list[str]:
    script = Path(sys.executable).parent / "photoclust"
    if script.exists():
        return [str(script)]
    found = shutil.which("photoclust")
    return [found] if found else [sys.executable, "-m", "streams"]


def ours(worker) -> dict:
    result = subprocess.run([*_photoclust(), "lag", "--json"], env=worker.env, cwd=REPO, text=True,
                            capture_output=True, timeout=120)
    assert result.returncode == 0, f"photoclust lag --json exited {result.returncode}:\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def kafkas(bootstrap: str, group: str, topic: str) -> dict[int, tuple[str, str, str]]:
    """partition -> (CURRENT-OFFSET, LOG-END-OFFSET, LAG) from ConsumerGroupCommand --describe."""
    result = subprocess.run(
        ["bash", str(BROKER_SH), "tool", "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
         "--bootstrap-server", bootstrap, "--describe", "--group", group],
        cwd=REPO, text=True, capture_output=True, timeout=180)
    assert result.returncode == 0, f"kafka-consumer-groups --describe exited {result.returncode}:\n{result.stderr}"
    lines = result.stdout.splitlines()
    header = next((line.split() for line in lines if line.startswith("GROUP ")), None)
    assert header is not None, f"no table in kafka-consumer-groups output:\n{result.stdout}\n{result.stderr}"
    col = {name: header.index(name) for name in ("TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG")}
    rows = {}
    for line in lines:
        fields = line.split()
        if len(fields) >= len(header) - 3 and fields[0] == group and fields[col["TOPIC"]] == topic:
            rows[int(fields[col["PARTITION"]])] = tuple(fields[col[c]] for c in ("CURRENT-OFFSET", "LOG-END-OFFSET", "LAG"))
    return rows


def _compare(ours_json: dict, theirs: dict[int, tuple[str, str, str]], topic: str) -> None:
    mine = {p["partition"]: p for p in ours_json["partitions"] if p["topic"] == topic}
    assert set(mine) == set(theirs) == set(range(PARTITIONS)), (mine, theirs)
    for partition, (current, log_end, lag) in theirs.items():
        row = mine[partition]
        assert (str(row["committed"]), str(row["log_end"]), str(row["lag"])) == (current, log_end, lag), (
            f"partition {partition}: photoclust lag says committed={row['committed']} log_end={row['log_end']} "
            f"lag={row['lag']}; kafka-consumer-groups says CURRENT-OFFSET={current} LOG-END-OFFSET={log_end} LAG={lag}")


def test_lag_matches_kafka_consumer_groups(kafka_bootstrap, settings_factory, worker_factory):
    settings = settings_factory(partitions=PARTITIONS)
    worker = worker_factory(settings, name="lag")
    codes, _, _ = planted_codes(N_FIRST + N_BACKLOG, 15, flip_prob=0.1, random_state=3)
    ids, hashes = photo_ids(0, N_FIRST + N_BACKLOG), to_bytes(codes)
    produce_events(settings, photo_events(ids[:N_FIRST], hashes[:N_FIRST]))
    reader = AssignmentReader(settings)
    try:
        reader.collect(ids[:N_FIRST], timeout=90, workers=[worker])
    finally:
        reader.close()
    wait_for(lambda: all(r.lag == 0 and r.committed is not None for r in consumer_lag(settings)), 60,
             what="lag 0 after processing")

    # -- lag 0, the worker running
    at_zero = ours(worker)
    assert at_zero["group"] == settings.app_id
    assert at_zero["total_lag"] == 0, at_zero
    assert all(p["committed"] == p["log_end"] for p in at_zero["partitions"]), at_zero
    assert sum(p["log_end"] for p in at_zero["partitions"]) == N_FIRST
    _compare(at_zero, kafkas(kafka_bootstrap, settings.app_id, settings.input_topic), settings.input_topic)

    # -- a backlog: photos produced while no worker runs
    assert worker.stop() is not None
    produce_events(settings, photo_events(ids[N_FIRST:], hashes[N_FIRST:]))
    behind = ours(worker)
    assert behind["total_lag"] == N_BACKLOG, behind
    assert sum(p["log_end"] for p in behind["partitions"]) == N_FIRST + N_BACKLOG
    assert sum(p["committed"] for p in behind["partitions"]) == N_FIRST
    assert all(p["lag"] > 0 for p in behind["partitions"]), behind  # keys spread over both partitions
    _compare(behind, kafkas(kafka_bootstrap, settings.app_id, settings.input_topic), settings.input_topic)


# A transactional producer (an exactly_once worker) that sent offsets to its transaction and died
# before committing it: the coordinator holds those offsets as pending until the transaction times out.
_DIE_MID_TRANSACTION = """
import json, os, sys
from confluent_kafka import Consumer, Producer, TopicPartition
config, topic, group = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
producer = Producer({**config, "transactional.id": group + "-tx", "transaction.timeout.ms": 60000})
producer.init_transactions()
producer.begin_transaction()
producer.produce(topic, b"in an open transaction")
consumer = Consumer({**config, "group.id": group, "enable.auto.commit": False})
producer.send_offsets_to_transaction([TopicPartition(topic, 0, 7)], consumer.consumer_group_metadata())
producer.flush()
os._exit(0)  # no commit, no abort: as SIGKILL leaves it
"""


def test_lag_answers_while_a_dead_transaction_holds_offset_commits(settings_factory):
    """The exactly_once SIGKILL test once timed out reading committed offsets right after the kill."""
    settings = settings_factory()
    ensure_topics(settings)
    produce_events(settings, photo_events(photo_ids(0, 10), [bytes(32)] * 10))
    committer = Consumer(settings.confluent_config(**{"group.id": settings.app_id, "enable.auto.commit": False}))
    try:
        committer.commit(offsets=[TopicPartition(settings.input_topic, 0, 3)], asynchronous=False)
    finally:
        committer.close()
    config = {k: v for k, v in settings.confluent_config().items() if k != "logger"}  # JSON has no Logger
    subprocess.run([sys.executable, "-c", _DIE_MID_TRANSACTION, json.dumps(config),
                    settings.input_topic, settings.app_id], check=True, timeout=60)

    rows = consumer_lag(settings, timeout=10)  # the transaction stays open for a minute
    assert [(r.partition, r.committed, r.log_end, r.lag) for r in rows] == [(0, 3, 11, 8)], rows
