# SafeRollout — `make test` and `make demo` are the two commands a new user needs.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTHON := $(BIN)/python
K8S_VERSION := $(shell sed -n 's/^K8S_VERSION=//p' cluster/versions.env)
TOOLS := .cache/bin/$(K8S_VERSION)
export KUBECONFIG ?= $(CURDIR)/.cache/cluster/kubeconfig

.PHONY: help deps venv tools lint types imports crds crds-check unit e2e test cluster cluster-down scenario demo bench helm-lint clean image

help:
	@echo "make test      lint, types, import contracts, unit tests, e2e scenarios on a local cluster"
	@echo "make demo      a healthy and a failing rollout side by side on a local cluster"
	@echo "make cluster / cluster-down / scenario FILE=... / crds / bench"

$(VENV)/.stamp: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.stamp

deps:
	bash scripts/system-deps.sh

tools: deps
	bash cluster/build.sh
	bash cluster/build-argocd.sh >/dev/null
	bash cluster/build-traefik.sh >/dev/null

lint: venv
	$(BIN)/ruff check operator harness tests bench

types: venv
	$(BIN)/mypy operator/saferollout harness tests bench

imports: venv
	$(BIN)/lint-imports

crds: venv
	$(PYTHON) -m saferollout.crdgen
	bash scripts/sync-chart-crds.sh

crds-check: venv
	$(PYTHON) -m saferollout.crdgen --check
	bash scripts/sync-chart-crds.sh --check

unit: venv tools
	$(BIN)/pytest -q tests/unit

helm-lint: tools
	$(TOOLS)/helm lint --strict charts/saferollout
	$(TOOLS)/helm template sr charts/saferollout > /dev/null
	$(TOOLS)/helm template sr charts/saferollout --set rbac.scope=namespaced --set 'watchNamespaces={a,b}' --set replicaCount=2 > /dev/null

e2e: venv tools
	$(BIN)/pytest -q -m e2e tests/e2e

test: deps venv lint types imports crds-check tools helm-lint
	$(BIN)/pytest -q tests/unit tests/e2e

cluster: tools
	bash cluster/up.sh

cluster-down:
	bash cluster/down.sh

scenario: venv cluster
	@test -n "$(FILE)" || { echo "usage: make scenario FILE=path/to/scenario.yaml"; exit 2; }
	$(PYTHON) -m harness run $(FILE)

demo: deps venv cluster
	$(PYTHON) -m harness.demo

bench: venv
	$(PYTHON) bench/decide.py

# The operator image, saferollout/operator:<appVersion>, built with buildah from a locally made base (no registry).
image:
	bash scripts/image.sh

clean: cluster-down
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
