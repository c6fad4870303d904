# Every target is idempotent. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EPISTLE := $(VENV)/bin/epistle
STAMP := $(VENV)/.installed
SERVICES := $(PYTHON) scripts/services.py

.PHONY: help setup services-up services-down services-status codegen codegen-check check test test-cluster demo bench soak lint clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

# setuptools installs this flat layout editable through a finder that maps `toolkit` alone (tests/, examples/
# and generated_models/ stay off sys.path) and warns that a `toolkit` folder in the working directory would
# shadow it: here that folder is the very code installed, so the note is silenced (pip shows it since 25).
EDITABLE_NOTE := PYTHONWARNINGS="ignore:Editable installation:UserWarning"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(EDITABLE_NOTE) $(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP) ## create .venv and install the project with its dev extras; fetch Kafka, the registry, rabbitmq-server
	@$(SERVICES) fetch

services-up: ## start Kafka and the schema registry (a no-op when they already run)
	@$(SERVICES) up

services-down: ## stop Kafka and the schema registry (and RabbitMQ, if its tests started it)
	@$(SERVICES) down

services-status: ## show whether the services run, their addresses and logs (exit 0 either way)
	@$(SERVICES) status || [ $$? -eq 3 ]

codegen: $(STAMP) ## generate pydantic models from schemas/ into generated_models/
	$(EPISTLE) codegen

codegen-check: $(STAMP) ## fail if generated_models/ is stale
	$(EPISTLE) codegen --check

check: $(STAMP) ## schema checks (validity, immutability, compatibility) and codegen-check
	$(EPISTLE) check
	$(EPISTLE) codegen --check

test: setup ## run the whole test suite against the local services (started if needed)
	$(PY) -m pytest

# A 3-node Kafka cluster of its own (nodes CLUSTER_PORT..+2, controllers 10 above, state in CLUSTER_DIR, wiped
# first), stopped again whatever the outcome; the shared broker on 9092 is not touched. A node can take a minute
# to start on a slow machine, so a test gets 15 minutes (plus the chaos time) rather than pytest's default 300 s.
CLUSTER_PORT ?= 19092
CLUSTER_DIR ?= .services/cluster
CLUSTER_CHAOS_SECONDS ?= 120
test-cluster: $(STAMP) ## the cluster tests: nodes and consumer processes killed on a 3-broker cluster it starts and stops
	@export EPISTLE_SERVICES_DIR=$(CLUSTER_DIR) EPISTLE_KAFKA_PORT=$(CLUSTER_PORT) \
		EPISTLE_KAFKA_CONTROLLER_PORT=$$(( $(CLUSTER_PORT) + 10 )) EPISTLE_KAFKA_BROKERS=3; \
	trap '$(SERVICES) down kafka' EXIT; \
	$(SERVICES) down kafka >/dev/null; rm -rf $(CLUSTER_DIR); \
	$(SERVICES) up kafka && \
	EPISTLE_CLUSTER_DIR=$(CLUSTER_DIR) EPISTLE_CLUSTER_PORT=$(CLUSTER_PORT) EPISTLE_CLUSTER_CHAOS_S=$(CLUSTER_CHAOS_SECONDS) \
		$(PY) -m pytest tests/cluster -m cluster -q -s -p no:cacheprovider --timeout $$(( 900 + 2 * $(CLUSTER_CHAOS_SECONDS) ))

demo: $(STAMP) ## the end-to-end demo on the local broker (started, and left running), with schemas/ as the registry; EPISTLE_BROKER=rabbitmq for RabbitMQ
	@if [ "$$EPISTLE_BROKER" = rabbitmq ]; then [ -n "$$RABBITMQ_URL" ] || $(SERVICES) up rabbitmq; \
	elif [ -z "$$KAFKA_BOOTSTRAP_SERVERS" ]; then $(SERVICES) up kafka; fi
	@$(PY) -m examples.demo; code=$$?; \
	if [ "$$EPISTLE_BROKER" = rabbitmq ]; then \
		[ -n "$$RABBITMQ_URL" ] || echo "make demo: RabbitMQ is left running for the next run (make services-status); make services-down stops it"; \
	elif [ -z "$$KAFKA_BOOTSTRAP_SERVERS" ]; then \
		echo "make demo: Kafka is left running for the next run (make services-status); make services-down stops it"; \
	fi; exit $$code

bench: setup services-up ## benchmarks; results under bench/results/ (BENCH_ARGS="--messages 20000" for a quick run)
	$(EDITABLE_NOTE) $(PY) -m pip install -q -e '.[dev,bench]'
	$(PY) -m bench $(BENCH_ARGS)

SOAK_SECONDS ?= 600
soak: setup ## soak test: valid and hostile records while the consumer, a private broker and registry restart (SOAK_SECONDS=600)
	EPISTLE_SOAK_SECONDS=$(SOAK_SECONDS) EPISTLE_SOAK_RESULTS=bench/results/soak.json \
		$(PY) -m pytest tests/reliability/test_soak.py -q -s -p no:cacheprovider

lint: $(STAMP) ## ruff format --check, ruff check, and mypy on toolkit/ (the config is in pyproject.toml)
	$(VENV)/bin/ruff format --check toolkit tests scripts bench examples
	$(VENV)/bin/ruff check toolkit tests scripts bench examples
	$(VENV)/bin/mypy toolkit

clean: ## remove the venv and caches (not .cache downloads)
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis
