# The commands a person types. Everything installs into .venv from a clean clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PROTOS := $(shell find proto -name '*.proto')
GEN_STAMP := gen/.stamp
export PYTHONPATH := $(CURDIR)/gen:$(CURDIR)
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help install proto lint-proto migrate run test test-unit test-integration test-deploy \
        bench bench-scheduler demo clean

help:
	@echo "make run              start PostgreSQL, NATS and the three services locally (Ctrl-C stops)"
	@echo "make test             run every test against a local PostgreSQL and NATS"
	@echo "make proto            generate Python code from proto/ into gen/"
	@echo "make migrate          apply database migrations (needs DATABASE_URL)"
	@echo "make bench-scheduler  scheduling engine benchmarks (CP-SAT vs greedy, PAS instances)"
	@echo "make bench            load benchmark of the running system"
	@echo "make demo             a day of a county consortium, with a report"

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

proto: $(GEN_STAMP)

$(GEN_STAMP): $(STAMP) $(PROTOS)
	@rm -rf gen && mkdir -p gen
	$(PY) -m grpc_tools.protoc -I proto -I $$($(PY) -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))') \
	  --python_out=gen --pyi_out=gen --grpc_python_out=gen $(PROTOS)
	@touch $@

lint-proto: $(STAMP)
	cd proto && ../$(VENV)/bin/buf lint

migrate: proto
	@test -n "$$DATABASE_URL" || { echo "DATABASE_URL is not set (make run migrates its local database itself)"; exit 2; }
	for svc in referral scheduling notify; do $(PY) -m services.$$svc migrate || exit 1; done

run: proto
	$(PY) -m services.launcher

test: proto lint-proto
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test-unit: proto
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

test-integration: proto
	$(PY) -m pytest -q -p no:cacheprovider tests/integration

test-deploy: proto
	$(PY) -m pytest -q -p no:cacheprovider tests/deploy

bench-scheduler: proto
	$(PY) -m benchmarks.scheduler $(BENCH_ARGS)

bench: proto
	$(PY) -m benchmarks.load $(BENCH_ARGS)

demo: proto
	$(PY) -m benchmarks.demo $(DEMO_ARGS)

clean:
	rm -rf gen .data reports .pytest_cache
