#!/usr/bin/env bash
# The main job (`make demo`): a real local Kafka broker (unless KAFKA_BOOTSTRAP_SERVERS is set),
# the photoclust worker, 200,000 planted photos streamed through it, live progress and a summary.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/photoclust demo "$@"
