# vap-platform. A newcomer runs `make demo`, then `make test`; each sets itself up first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
# Setup is keyed on the lock and the project file: unchanged → `make setup` is a no-op.
SETUP_KEY := $(shell cat requirements.lock pyproject.toml 2>/dev/null | sha256sum | cut -c1-16)
STAMP  := $(VENV)/.setup-$(SETUP_KEY)

# DeepSpeed's CPU ops are JIT-compiled once into the venv (`make setup` warms them).
# abspath: VENV may be given as an absolute path (make VENV=/tmp/venv-ci setup)
export TORCH_EXTENSIONS_DIR := $(abspath $(VENV))/torch-extensions
export PATH := $(abspath $(BIN)):$(PATH)
# uv installs the lock ≈5× faster than pip (parallel downloads and unpacking; docs/TESTING.md);
# its version is pinned in the lock like every other. Where uv cannot be installed or fails, pip
# installs the same lock. --compile-bytecode: pip writes .pyc at install time, uv only when asked,
# and without them every process importing torch compiles it again.
UV := $(shell grep -m1 '^uv==' requirements.lock)

.PHONY: help setup demo retrain-demo test test-fast lint clean bench mutate claims

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv from requirements.lock, install vap, warm DeepSpeed ops (idempotent)

$(STAMP): requirements.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11'"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip==26.3" "setuptools==84.2.1" wheel
	@if $(BIN)/pip install --quiet "$(UV)"; then \
	  echo "$(BIN)/uv pip install -r requirements.lock"; \
	  $(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -r requirements.lock \
	    || { echo "uv failed; installing requirements.lock with pip"; $(BIN)/pip install --quiet -r requirements.lock; }; \
	else \
	  echo "$(UV) not installable; installing requirements.lock with pip"; $(BIN)/pip install --quiet -r requirements.lock; \
	fi
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m vap.training.warmup
	@if [ -f tools/install-k8s-tools.sh ]; then bash tools/install-k8s-tools.sh $(VENV); fi
	rm -f $(VENV)/.setup-*
	touch $@

demo: setup ## the whole loop on this machine: synth data → shards → train → register → promote
	$(BIN)/vap demo

RETRAIN := .vap-demo/retrain
RETRAIN_ARGS := -c examples/demo.yaml name=vap-retrain registry.model_name=vap-expert-retrain data.source=$(RETRAIN)/raw data.shards=$(RETRAIN)/shards trainer.steps=10
retrain-demo: setup ## one scheduled cycle per step as data arrives: first data → promoted; same data → nothing; new data → gated
	$(BIN)/vap model tiny cogvideox .vap-demo/models/tiny-cogvideox
	$(BIN)/vap data synth $(RETRAIN)/day1 --seed 0 --no-progress && $(BIN)/vap data synth $(RETRAIN)/day2 --seed 1 --no-progress
	rm -rf $(RETRAIN)/raw && cp -r $(RETRAIN)/day1 $(RETRAIN)/raw
	$(BIN)/vap retrain $(RETRAIN_ARGS)
	$(BIN)/vap retrain $(RETRAIN_ARGS)
	rm -rf $(RETRAIN)/raw && cp -r $(RETRAIN)/day2 $(RETRAIN)/raw
	$(BIN)/vap retrain $(RETRAIN_ARGS)

# 2 xdist workers: conftest runs the slow and the Ray tests in turn on one worker, the rest on the
# other (≈30 % faster than one process on 2 cores; docs/TESTING.md). TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup

test: setup ## all tests (slow end-to-end ones included) [TEST_WORKERS=2 xdist workers; 0 = one process]
	$(PYTEST)

test-fast: setup ## tests without the slow end-to-end ones [TEST_WORKERS=2 xdist workers; 0 = one process]
	$(PYTEST) -m "not slow"

# MODULES / TESTS (space-separated) replace [tool.mutmut]'s source_paths / test selection in the copy only;
# MUTANTS (mutmut's names, globs allowed: "training.pipeline.x_guide__mutmut_*") runs only those
# MUTANT_MEM_GB caps each mutant's heap (ulimit -d): a mutant that sizes an array wrongly fails
# with MemoryError (killed) instead of taking the machine's memory from everything else
MUTATE_DIR ?= /tmp/vap-mutate
CHILDREN   ?= 2
MUTANT_MEM_GB ?= 6
mutate: setup ## mutation testing on a copy of HEAD: [MODULES="training/rope.py"] [TESTS="tests/test_model_rope.py"] [MUTANTS=glob] [MUTATE_DIR=/tmp/vap-mutate] [CHILDREN=2] [MUTANT_MEM_GB=6]; default [tool.mutmut] in pyproject.toml; not in CI (docs/TESTING.md)
	$(BIN)/python tools/mutate_copy.py "$(MUTATE_DIR)" --modules "$(MODULES)" --tests "$(TESTS)"
	cd "$(MUTATE_DIR)" && ulimit -d $$(( $(MUTANT_MEM_GB) * 1048576 )) && nice -n 10 $(CURDIR)/$(BIN)/mutmut run --max-children $(CHILDREN) $(MUTANTS); $(CURDIR)/$(BIN)/mutmut results

bench: setup ## every benchmark side by side in one run → benchmarks/results/summary.{json,md,png} and the README table (QUICK=1: smaller sizes)
	$(BIN)/python benchmarks/run_all.py $(if $(filter 1 true yes,$(QUICK)),--quick)

claims: setup ## the paper's claims at CPU scale: train (or reuse) experts, `vap eval` → docs/CLAIMS.md + docs/figures (slow, ≈25 min; not in CI)
	nice -n 10 $(BIN)/python tools/claims.py $(if $(STEPS),--steps $(STEPS)) $(if $(PAIRS),--pairs $(PAIRS))

lint: setup ## ruff
	$(BIN)/ruff check platform training datasets operators tests benchmarks

clean: ## remove the venv and demo state
	rm -rf $(VENV) .vap-demo

# --- Kubernetes (charts/) ---
NAMESPACE  ?= vap
VARIANT    ?= cpu
IMAGE_REPO ?= vap-platform
VAP_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)

.PHONY: submit-job image k8s-tools

submit-job: setup ## train on the current kube context: SPEC=job.yaml [NAMESPACE=vap] [VALUES=cluster.yaml] [IMAGE=repo:tag] [GPUS_PER_POD=8] [REPLACE=1] [DRY_RUN=1]
	@test -n "$(SPEC)" || { echo "error: name the job spec: make submit-job SPEC=path/to/job.yaml [NAMESPACE=vap] [DRY_RUN=1]" >&2; exit 2; }
	@$(BIN)/vap k8s submit "$(SPEC)" --namespace "$(NAMESPACE)" \
	  $(foreach v,$(VALUES),--values "$(v)") \
	  $(if $(IMAGE),--image "$(IMAGE)") \
	  $(if $(GPUS_PER_POD),--gpus-per-pod "$(GPUS_PER_POD)") \
	  $(if $(filter 1 true yes,$(REPLACE)),--replace) \
	  $(if $(filter 1 true yes,$(DRY_RUN)),--dry-run)

image: ## build the training image: VARIANT=cpu|cuda → vap-platform:<version>-<variant>
	@docker info >/dev/null 2>&1 || { echo "error: no Docker daemon reachable (docker info failed); start Docker or build elsewhere with: docker build --build-arg VARIANT=$(VARIANT) -t $(IMAGE_REPO):$(VAP_VERSION)-$(VARIANT) ." >&2; exit 2; }
	docker build --build-arg VARIANT=$(VARIANT) --build-arg VAP_CODE_VERSION=$$(git rev-parse --short HEAD 2>/dev/null || echo unknown) -t $(IMAGE_REPO):$(VAP_VERSION)-$(VARIANT) .

k8s-tools: ## install helm v3.19.0 + kubectl v1.34.5 into .venv/bin and checkov into .tools (pinned; make setup does it too)
	bash tools/install-k8s-tools.sh $(VENV)
