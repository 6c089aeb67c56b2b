"""``photoclust hash --to-kafka`` publishes PDQ hashes of real image files to the input topic, and
the worker clusters them: the identical and re-encoded copies of one picture share a cluster.

Needs the ``images`` extra (pdqhash, Pillow); skipped without it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from kafka_support import REPO, AssignmentReader

pytestmark = pytest.mark.kafka


def test_hash_to_kafka_reaches_the_worker(images: Path, pdq: None, settings_factory, worker_factory):
    settings = settings_factory(min_cluster_size=1, max_wait_s=1.0)
    worker = worker_factory(settings, name="hash")
    result = subprocess.run([sys.executable, "-m", "streams", "hash", str(images), "--to-kafka", "-q"],
                            env=worker.env, cwd=REPO, capture_output=True, text=True, timeout=300)
    # notes.txt and broken.jpg are reported and skipped: exit 1, the four images still published
    assert result.returncode == 1, result.stderr
    assert "2 of 6 files could not be hashed" in result.stderr, result.stderr
    ids = [str(images / name) for name in ("one.png", "two.png", "sub/one_again.png", "sub/one.jpg")]
    reader = AssignmentReader(settings)
    try:
        outcomes = reader.collect(ids, timeout=120, workers=[worker]).final
    finally:
        reader.close()
    assert set(outcomes) == set(ids), sorted(outcomes)
    copies = {outcomes[i]["cluster"] for i in ids if "one" in Path(i).name}
    assert len(copies) == 1 and None not in copies, {i: outcomes[i] for i in ids}
    assert outcomes[ids[1]]["cluster"] not in copies, {i: outcomes[i] for i in ids}
