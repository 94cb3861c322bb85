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

## bench: HTTP against ACME side by side, scale, HTTP vs HTTPS, CoAP/MQTT against the bare transports, the gateway
bench: $(STAMP)
	$(BIN)/python -m bench.bench_http --acme
	$(BIN)/python -m bench.bench_scale
	$(BIN)/python -m bench.bench_https
	$(BIN)/python -m bench.bench_coap_mqtt
	$(BIN)/python -m bench.bench_gateway

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
