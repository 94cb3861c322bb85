# The few verbs people type. Each creates the virtualenv (.venv) on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Two stamps: the demo needs only the runtime dependencies; tests, lint and benchmarks add
# the development extras to the same virtualenv. Each is redone when pyproject.toml changes.
RUNTIME := $(VENV)/.installed
DEV := $(VENV)/.installed-dev

.PHONY: demo test lint bench bench-quick pi-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(RUNTIME): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(DEV): $(RUNTIME)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

## demo: head-end, gateway, broker and 100 meters together; Ctrl-C prints a summary
demo: $(RUNTIME)
	$(BIN)/gridm2m demo

## test: the whole test suite
test: $(DEV)
	$(BIN)/python -m pytest

## lint: ruff (lint and format check) and mypy (strict)
lint: $(DEV)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## bench: HTTP against ACME side by side, scale, HTTP vs HTTPS, CoAP/MQTT against the bare transports, the gateway, the storm plain vs OSCORE
bench: $(DEV)
	$(BIN)/python -m bench.bench_http --acme
	$(BIN)/python -m bench.bench_scale
	$(BIN)/python -m bench.bench_https
	$(BIN)/python -m bench.bench_coap_mqtt
	$(BIN)/python -m bench.bench_gateway
	$(BIN)/python -m bench.bench_secure_storm

## pi-check: the Raspberry Pi guide's virtualenv install on Debian arm64 under QEMU, with 1,000 meters (root; minutes; not in CI)
pi-check: $(RUNTIME)
	PI_CHECK_PYTHON=$(abspath $(BIN))/python bench/pi_check.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
