# apiservice-operator. `make help` lists the targets.
PYTHON ?= python3
KUBECONFIG_LOCAL = $(shell cat $${XDG_STATE_HOME:-$$HOME/.local/state}/apiservice-operator/cluster/ready 2>/dev/null)

.PHONY: help install lock kube-binaries sample-apiserver test-deps demo demo-monitoring test e2e e2e-kind test-unit check image wheels bench cluster-up cluster-down clean

help: ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

install: ## install the locked dependencies (hashes checked), then the package itself (editable)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet --require-hashes -r requirements-dev.lock
	$(PYTHON) -m pip install --quiet --no-deps -e .

lock: ## refresh requirements.lock and requirements-dev.lock from pyproject.toml (pins and hashes)
	PYTHON=$(PYTHON) hack/lock.sh

kube-binaries: ## build or reuse kube-apiserver, kubectl and etcd (cached under ~/.cache/apiservice-operator)
	hack/build-kube.sh

sample-apiserver: ## build or reuse k8s.io/sample-apiserver (the suite's real extension server; cached)
	hack/build-sample-apiserver.sh

test-deps: ## the system tools the suite needs (iproute2, util-linux, iptables, prometheus): installed as root, else named
	hack/test-deps.sh

demo: install ## the local control plane, seven sample aggregated APIs, the operator and its table; Ctrl-C ends it
	@hack/demo.sh

demo-monitoring: install ## make demo plus a local Prometheus (Debian's prometheus) with the shipped rules; prints its URL and the alerts that fire
	@DEMO_PROMETHEUS=1 hack/demo.sh

test: install kube-binaries sample-apiserver test-deps ## all tests: unit, integration and e2e, against the local control plane
	hack/netns-run $(PYTHON) -m pytest $(PYTEST_ARGS)

e2e: install kube-binaries test-deps ## the e2e suite on the local control plane (E2E_KUBECONFIG=... for another cluster)
	hack/netns-run $(PYTHON) -m pytest e2e $(PYTEST_ARGS)

e2e-kind: install ## the e2e suite on a real kind cluster from images built here (root or a Docker engine; else skips with the reason)
	PYTHON=$(PYTHON) hack/e2e-kind.sh

test-unit: ## the pure core's tests only, no cluster
	$(PYTHON) -m pytest tests/unit $(PYTEST_ARGS)

check: ## lint (ruff) and types (mypy)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m mypy
	$(PYTHON) -m mypy tests e2e bench

IMAGE ?= apiservice-operator:0.1.0
BASE_IMAGE ?= python:3.11-slim

wheels: ## the operator and its locked dependencies as wheels in build/wheels (what the image installs)
	rm -rf build/wheels
	$(PYTHON) -m pip wheel --quiet --require-hashes -r requirements.lock -w build/wheels
	$(PYTHON) -m pip wheel --quiet --no-deps -w build/wheels .
	cp requirements.lock build/wheels/requirements.lock

image: ## build the operator image; BASE_IMAGE=... picks the base (default python:3.11-slim)
	@docker info >/dev/null 2>&1 || { echo "make image: no Docker engine answers (hack/docker-engine.sh starts one, as root)"; exit 1; }
	$(MAKE) wheels
	docker build --build-arg BASE_IMAGE=$(BASE_IMAGE) -t $(IMAGE) .

bench: install kube-binaries ## operator vs kube-apiserver's own controller; writes bench/results/ (BENCH_REPS, BENCH_SIZES, BENCH_HANG, BENCH_WINDOW, BENCH_BIG)
	$(PYTHON) -m pip install --quiet matplotlib py-spy
	hack/netns-run $(PYTHON) -m bench

cluster-up: kube-binaries ## start the local control plane in the background; prints its kubeconfig
	@hack/cluster.sh up

cluster-down: ## stop the local control plane
	@hack/cluster.sh down

clean: ## remove build and test leftovers (not the binary cache)
	rm -rf build dist *.egg-info operator/*.egg-info .pytest_cache .mypy_cache .ruff_cache
