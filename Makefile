# One entry point for every routine job. `make serve` and `make test` each set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= local,test,dev

.PHONY: install serve test test-fast lint bench bench-replicas check deploy-check clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

install: $(VENV)/.installed

serve: install  ## the gateway on the embedded local backend, http://127.0.0.1:8000/v1
	$(VENV)/bin/ttc-router serve

test: install  ## every test: unit, contract, and end to end on the real local model
	$(PY) -m pytest

test-fast: install  ## without the end-to-end tests
	$(PY) -m pytest -m "not e2e"

lint: install
	$(VENV)/bin/ruff check service router_models tests bench
	$(VENV)/bin/mypy service router_models

bench: install
	$(PY) bench/gateway_overhead.py

bench-replicas: install  ## 3 gateways behind HAProxy on PostgreSQL and Redis (apt: haproxy postgresql redis-server)
	$(PY) bench/replicas.py

deploy-check: install  ## rule files and their unit tests (promtool), Kubernetes manifests
	promtool check rules deploy/rules/*.yml
	promtool test rules deploy/rules/tests/ttc-rules-test.yml
	promtool check config deploy/prometheus.yml
	$(PY) -m kubernetes_validate --strict deploy/k8s/configmap.yaml deploy/k8s/deployment.yaml \
		deploy/k8s/service.yaml deploy/k8s/hpa.yaml

check: lint test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
