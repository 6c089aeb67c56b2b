#!/usr/bin/env bash
# Runs the whole test suite with the project's virtual environment (`make test`).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest "$@"
