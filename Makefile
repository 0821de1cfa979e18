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

## test: the whole suite (unit + end-to-end)
test: venv
	$(PY) -m pytest -q tests $(PYTEST_ARGS)

## test-fast: unit tests only
test-fast: venv
	$(PY) -m pytest -q tests -m "not e2e" $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff format .

bench: venv
	$(PY) -m benchmarks.run_all

clean:
	rm -rf demo_out .pytest_cache
