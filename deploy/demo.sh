#!/usr/bin/env bash
# The main job (`make demo`): plant 200,000 photo hashes in 20,000 clusters, cluster them with
# Bk-means, and print a summary with purity against the planted truth.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p out
.venv/bin/photoclust synth out/demo --samples 200000 --clusters 20000 --flip-prob 0.1 --seed 7 --no-csv
.venv/bin/photoclust cluster out/demo.codes.npy -k 20000 --truth out/demo.truth.npy --seed 7 --out out/demo
