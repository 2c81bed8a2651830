# One entry point for every routine job. `make serve` and `make test` each set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= local,test,dev

.PHONY: install serve test test-fast lint bench check deploy-check wheelhouse image-test clean

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
