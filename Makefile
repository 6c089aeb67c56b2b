# The two commands a new user types (see README.md):
#   make demo   - run the main job end to end on this machine
#   make test   - run every test
# Both create (or reuse) the virtual environment .venv and install what they need into it.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	bash deploy/demo.sh

test: $(STAMP)
	bash deploy/run-tests.sh

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) tests/benchmarks/bench_bkmeans.py

clean:
	rm -rf $(VENV) out
