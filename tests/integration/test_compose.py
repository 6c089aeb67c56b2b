"""docker-compose.yml is a valid Compose file (only checked where ``docker compose`` exists)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from kafka_support import REPO

pytestmark = pytest.mark.kafka


def test_compose_file_is_valid():
    if shutil.which("docker") is None:
        pytest.skip("docker is not installed")
    try:
        version = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"`docker compose version` did not run: {e}")
    if version.returncode != 0:
        pytest.skip(f"`docker compose version` exited {version.returncode}: {(version.stderr or version.stdout).strip()}")
    for profiles in ([], ["--profile", "demo"], ["--profile", "monitoring"]):
        result = subprocess.run(["docker", "compose", *profiles, "config", "-q"], cwd=REPO, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, (
            f"docker compose {' '.join(profiles)} config -q exited {result.returncode}:\n{result.stderr}{result.stdout}")
