# imgpipe: the README's commands. Each target sets up .venv itself on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2
export PYTHONWARNINGS := ignore::FutureWarning

.PHONY: venv demo test test-fast lint format bench clean

venv:
	@VENV=$(VENV) ./scripts/bootstrap.sh

## demo: offline end-to-end run on scikit-learn's digits (the README's main job)
demo: venv
	$(VENV)/bin/imgpipe demo --workdir $(or $(WORKDIR),demo_out)

# Test processes (pytest-xdist, one test file per worker at a time, in tests/conftest.py's
# longest-first order: --no-loadscope-reorder keeps it): one per core, at most 4
# and one per 6 GiB of memory (a worker peaks near 5 GiB). TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= $(shell n=$$(nproc); m=$$(awk '/MemTotal/ {print int($$2 / 6291456)}' /proc/meminfo); \
	for c in 4 $$m; do [ $$c -lt $$n ] && n=$$c; done; [ $$n -lt 1 ] && n=1; echo $$n)
XDIST = $(if $(filter 0,$(TEST_WORKERS)),-p no:xdist,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

## test: the whole suite (unit + end-to-end)
test: venv
	$(PY) -m pytest -q tests $(XDIST) $(PYTEST_ARGS)

## test-fast: unit tests only
test-fast: venv
	$(PY) -m pytest -q tests -m "not e2e" $(XDIST) $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff format .

bench: venv
	$(PY) -m benchmarks.run_all

clean:
	rm -rf demo_out .pytest_cache
