# The two commands of the quick start: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= examples/rules.yaml
HOST   ?= 127.0.0.1
PORT   ?= 8443

.PHONY: run test unit e2e lint control-plane bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstall whenever the dependency list changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

## run: serve the example rules on https://$(HOST):$(PORT) with generated certificates in certs/
run: $(VENV)/.installed
	$(BIN)/pullsecrets-webhook serve --config $(CONFIG) --host $(HOST) --port $(PORT) --cert-dir certs

## control-plane: build kube-apiserver, etcd and helm from pinned Go modules into the user cache
# CI is read as tests/controlplane.py's in_ci() reads it: unset, 0, false or no is a local run.
control-plane:
	@if [ -n "$$KUBEBUILDER_ASSETS" ] || [ -n "$$TEST_ASSET_KUBE_APISERVER" ] || command -v go >/dev/null; then \
	  hack/control-plane-binaries.sh >/dev/null; \
	else \
	  case "$$(printf %s "$$CI" | tr '[:upper:]' '[:lower:]')" in \
	    ""|0|false|no) outcome="will be skipped";; \
	    *) outcome="will fail (CI is set)";; \
	  esac; \
	  echo "Go not found and no envtest binaries (KUBEBUILDER_ASSETS): end-to-end tests $$outcome"; \
	fi

## test: lint, unit tests, and end-to-end tests against a real kube-apiserver
test: $(VENV)/.installed control-plane lint
	$(BIN)/pytest

## e2e: the end-to-end tests only (real kube-apiserver, etcd and helm)
e2e: $(VENV)/.installed control-plane
	$(BIN)/pytest -m "e2e or helm"

## unit: the fast tests only (no control plane)
unit: $(VENV)/.installed
	$(BIN)/pytest -m "not e2e and not helm and not slow"

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(VENV)/.installed
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
