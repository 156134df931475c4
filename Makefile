# The two commands of the README: `make demo` and `make test`.
# Each makes the virtual environment (.venv) when it is missing or stale.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-swift lint bench-sandbox bench-scheduler bench-scale bench-mapreduce bench-shuffle bench-interference soak simulate clean

$(BIN)/zerocompute: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/zerocompute
	$(BIN)/zerocompute demo

lint: $(BIN)/zerocompute
	$(BIN)/ruff check .

# Two workers, a test file each at a time (most functional tests wait on guests that
# sleep, or on servers), then the tests marked `alone`, which measure ratios of times,
# with the machine to themselves (doc/devcluster.md, "The test suite").
test: $(BIN)/zerocompute lint
	$(BIN)/python -m pytest -q -ra -n 2 --dist loadfile -m "not alone" tests
	$(BIN)/python -m pytest -q -ra -m alone tests

# Swift's own functional tests against the dev cluster (minutes; not part of `make test`).
test-swift: $(BIN)/zerocompute
	$(BIN)/python -m zerocompute.dev.swift_functional

bench-sandbox: $(BIN)/zerocompute
	$(BIN)/python -m tests.perf.bench_sandbox

bench-scheduler: $(BIN)/zerocompute
	$(BIN)/python -m tests.perf.bench_scheduler

bench-scale: $(BIN)/zerocompute
	$(BIN)/python -m tests.perf.bench_scale

bench-mapreduce: $(BIN)/zerocompute
	$(BIN)/python -m tests.perf.bench_mapreduce

bench-interference: $(BIN)/zerocompute
	$(BIN)/python -m tests.perf.bench_interference

# Chaos soak: every kind of job, ordinary traffic, servers killed at random (minutes).
soak: $(BIN)/zerocompute
	$(BIN)/python -m tests.perf.soak

bench-shuffle: $(BIN)/zerocompute
	$(BIN)/python -m tests.perf.bench_shuffle

simulate: $(BIN)/zerocompute
	$(BIN)/python -m pip install --quiet matplotlib
	$(BIN)/python -m zerocompute.dev.simulate --plot doc/scheduler-sim.png

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
