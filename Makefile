# The two commands a new user types (see README.md):
#   make demo   - run the main job end to end on this machine
#   make test   - run every test
# Both create (or reuse) the virtual environment .venv and install what they need into it.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
IMAGES_STAMP := $(VENV)/.installed-images

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	bash deploy/demo.sh

# The images extra (pdqhash builds from source: about 30 s with a C++ compiler) lets the
# `photoclust hash` tests run; without a compiler they are skipped, and say why.
$(IMAGES_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[images]' && touch $(IMAGES_STAMP) || \
		echo "note: the images extra (pdqhash, Pillow) did not install; the photoclust hash tests will be skipped"

test: $(STAMP) $(IMAGES_STAMP)
	bash deploy/run-tests.sh

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) tests/benchmarks/bench_bkmeans.py

clean:
	rm -rf $(VENV) out
