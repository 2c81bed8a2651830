# One entry point for every routine job. `make serve` and `make test` each set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= local,test,dev

.PHONY: install llama-server serve test test-fast lint bench bench-llama bench-replicas check \
	deploy-check wheelhouse image-test clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

# llama.cpp's own llama-server (parallel slots), built once per machine and llama-cpp-python
# version into ~/.cache/ttc-router (service/llama_build.py). On failure set-up goes on and the
# gateway serves with llama-cpp-python's server instead.
$(VENV)/.llama-server: $(VENV)/.installed
	$(PY) -m service.llama_build --best-effort
	touch $@

install: $(VENV)/.installed $(VENV)/.llama-server

llama-server: $(VENV)/.installed  ## build llama-server now (fails loudly, unlike install)
	$(PY) -m service.llama_build
	touch $(VENV)/.llama-server

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

bench-llama: install  ## both embedded servers: tokens/s at 1, 4, 8 concurrent; vote of 8 vs one
	$(PY) bench/llama_throughput.py

bench-replicas: install  ## 3 gateways behind HAProxy on PostgreSQL and Redis (apt: haproxy postgresql redis-server)
	$(PY) bench/replicas.py

deploy-check: install  ## rule files and their unit tests (promtool), Kubernetes manifests
	promtool check rules deploy/rules/*.yml
	promtool test rules deploy/rules/tests/ttc-rules-test.yml
	promtool check config deploy/prometheus.yml
	$(PY) -m pytest -q tests/test_deploy.py  # every manifest and each rendered overlay, strictly

wheelhouse: install  ## every wheel the images install, for a build with no index (docs/deploy.md)
	PY=$(PY) deploy/images/wheelhouse.sh

image-test: install  ## build the slim and local images with podman and run them (not in `test`)
	$(PY) -m pip install --quiet -e '.[images]'
	PY=$(PY) deploy/images/image-test.sh

check: lint test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
