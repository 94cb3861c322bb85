# The few verbs people type. Each creates the virtualenv (.venv) on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench bench-quick clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## demo: head-end, gateway, broker and 100 meters together; Ctrl-C prints a summary
demo: $(STAMP)
	$(BIN)/gridm2m demo

## test: the whole test suite
test: $(STAMP)
	$(BIN)/python -m pytest

## lint: ruff (lint and format check) and mypy (strict)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## bench: the HTTP benchmark against GridM2M and ACME side by side, then the scale benchmark
bench: $(STAMP)
	$(BIN)/python -m bench.bench_http --acme
	$(BIN)/python -m bench.bench_scale

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
