# ModelWarden — run `make help` for the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
PYTEST_ARGS ?=
# The Kubernetes binaries and the node's images (hack/build-env.sh: one build at a time, cached, so a warm run costs
# nothing here).
BUILD := bash hack/build-env.sh $(PY)
CACHE_DIR := $${MODELWARDEN_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/modelwarden}

.PHONY: help install lint typecheck test test-unit test-integration test-e2e cluster-up cluster-down cluster-build \
        system-deps demo clean crds rules docs build-background

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "[install] pip install -e '.[dev]' into $(VENV)"
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP) ## create .venv and install modelwarden with its dev tools

system-deps: ## install the Debian packages the local environment needs (prometheus, postgresql, containerd, buildah, ...)
	@bash hack/install-system-deps.sh

lint: $(STAMP) ## ruff
	$(VENV)/bin/ruff check operator model_server localenv tests bench hack

typecheck: $(STAMP) ## mypy --strict
	$(VENV)/bin/mypy

cluster-build: $(STAMP) system-deps ## build the pinned Kubernetes binaries, KWOK and the node's images (cached)
	@$(BUILD)

cluster-up: $(STAMP) system-deps ## start the local control plane (idempotent); last line is KUBECONFIG=...
	@$(PY) -m localenv.cluster up

cluster-down: $(STAMP) ## stop the local control plane and delete its state
	@$(PY) -m localenv.cluster down

crds: $(STAMP) ## regenerate crds/ from operator/modelwarden/api (a unit test fails when it is stale)
	@$(PY) -m modelwarden.api.crdgen crds

docs: $(STAMP) ## regenerate docs/crd-reference.md from the API models (a unit test fails when it is stale)
	@$(PY) -m modelwarden.api.docs > docs/crd-reference.md

rules: $(STAMP) ## regenerate manifests/prometheus/prometheusrule.yaml from rules.yaml
	@$(PY) hack/gen_prometheusrule.py > manifests/prometheus/prometheusrule.yaml

test-unit: $(STAMP) ## fast, pure tests
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: $(STAMP) system-deps ## tests against the real control plane, Prometheus and PostgreSQL
	@$(BUILD)
	$(PY) -m pytest tests/integration --durations=20 $(PYTEST_ARGS)

test-e2e: $(STAMP) system-deps ## the demo's story as a test (real servers under load, Prometheus, operator)
	@$(BUILD)
	$(PY) -m pytest tests/e2e --durations=10 $(PYTEST_ARGS)

# Cold, the builds are the longest part of `make test`. One background job starts at once, beside the lint and unit
# tests: the Kubernetes binaries and the node's images first (the integration tests' own build waits on
# hack/build-env.sh's lock, and reports a failure again), ahead of the lint and unit tests for the CPUs (nice -5
# where allowed: they are not on the critical path, it is), then helm (the chart tests, a minute into the
# integration tests, wait on hack/build-helm.sh's lock), then Flux at the lowest priority (nice 19: it takes the
# core the integration tests leave idle, not theirs), which only the last tests need (the `flux`
# fixture and `demo --gitops` wait on hack/build-flux.sh's lock): it compiles while the integration tests wait on
# pods and timers, instead of taking the CPUs from the Kubernetes build.
build-background: system-deps ## start hack/build-env.sh, then hack/build-helm.sh and hack/build-flux.sh, in the background (logs in the cache)
	@cache="$(CACHE_DIR)"; mkdir -p "$$cache"; \
	  nohup bash -c 'nice -n -5 $(BUILD) $(STAMP) >"$$0/env-build.log" 2>&1; bash hack/build-helm.sh >"$$0/helm-build.log" 2>&1; \
	    nice -n 19 bash hack/build-flux.sh >"$$0/flux-build.log" 2>&1' "$$cache" </dev/null >/dev/null 2>&1 & \
	  echo "[build] Kubernetes, the node's images, then helm and Flux: building in the background (logs:" \
	       "$$cache/env-build.log, $$cache/helm-build.log, $$cache/flux-build.log)"

test: build-background lint typecheck test-unit test-integration test-e2e ## everything CI runs

demo: $(STAMP) system-deps ## the main job: v1 approved and served, v2 canaried and promoted, errors injected, automatic rollback to v1's SHA256
	@$(BUILD)
	@$(PY) -m localenv.demo

clean: ## remove the venv and caches inside the repo (the binary cache outside it stays)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
