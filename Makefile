# One entry point for running, testing and benchmarking. Each target installs what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
AIRFLOW_VENV := .airflow-venv

.DEFAULT_GOAL := help
.PHONY: help venv run serve pipeline stack stack-down test lint typecheck unit system-deps airflow-venv bench clean secrets gate-study

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	touch $(STAMP)

venv: $(STAMP)  ## create .venv with the pinned runtime and dev packages

AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed

$(AIRFLOW_STAMP): dags/requirements.txt dags/constraints.txt
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet -r dags/requirements.txt -c dags/constraints.txt
	touch $(AIRFLOW_STAMP)

airflow-venv: $(AIRFLOW_STAMP)  ## create .airflow-venv with pinned Airflow 3 for the DAG tests (not the service's)

run: $(STAMP)  ## run the pipeline once, then serve the API on http://127.0.0.1:8000 (foreground)
	$(PY) -m etl run --serve-fallback
	$(PY) -m app

serve: $(STAMP)  ## serve the API with whatever model is promoted (no pipeline run)
	$(PY) -m app

pipeline: $(STAMP)  ## run the pipeline once (load, validate, train, evaluate, promote, upload)
	$(PY) -m etl run

stack: $(STAMP) $(AIRFLOW_STAMP) system-deps  ## the service, Airflow and Prometheus on this machine (foreground; Ctrl-C stops)
	$(PY) -m scripts.stack up

stack-down: $(STAMP)  ## stop what `make stack` started (from another terminal)
	$(PY) -m scripts.stack down

secrets:  ## write .env for docker compose with every secret generated (FORCE=1: replace unusable ones in an existing .env)
	$(PYTHON) docker/stack_env.py write $(if $(FORCE),--force,)

system-deps:  ## Debian packages the integration tests use (prometheus/promtool, docker-compose, wrk, chromium, postgresql)
	@missing=""; \
	for pair in prometheus:prometheus promtool:prometheus docker-compose:docker-compose wrk:wrk chromium:chromium psql:postgresql; do \
	  cmd=$${pair%%:*}; pkg=$${pair##*:}; command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

lint: $(STAMP)  ## ruff (including Airflow rules) and mypy on etl/, app/ and scripts/
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check etl app tests dags bench scripts
	$(VENV)/bin/mypy

typecheck: lint

# The unit run loads only the plugins its tests use (autoloading every installed one imports schemathesis,
# anyio and typeguard into each process for nothing, and rewrites their asserts), and keeps compiled test
# modules in __pycache__ even where PYTHONDONTWRITEBYTECODE is set: without them each xdist worker
# rewrites and compiles every test module again on every run, about 2 s of its start.
UNIT_PLUGINS := --disable-plugin-autoload -p xdist -p timeout -p hypothesispytest

unit: $(STAMP)  ## fast tests only (no servers, no system tools), on two processes
	PYTHONDONTWRITEBYTECODE= $(PY) -m pytest $(UNIT_PLUGINS) -m "not integration and not airflow and not tools" -q -n 2 --dist loadfile

test: $(STAMP) system-deps airflow-venv  ## the whole suite: lint, types, unit, integration (real servers), real Airflow
	$(MAKE) --no-print-directory lint
	$(PY) -m pytest -q

gate-study: $(STAMP)  ## measure the quality gate's error rates (a study of ~30 min; GATE_STUDY_ARGS=--seeds 10)
	$(PY) -m etl gate-study $(GATE_STUDY_ARGS)

bench: $(STAMP) system-deps  ## benchmark /predict vs a bare ASGI floor, and /predict/batch (BENCH_ARGS=--help)
	$(PY) bench/run.py $(BENCH_ARGS)

clean:  ## remove environments, caches and local artifacts (keeps secrets/)
	rm -rf $(VENV) $(AIRFLOW_VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis data results upload bench/results .stack
