# The two commands a newcomer needs: `make demo` and `make test`. `make help` lists the rest.
SHELL := /bin/bash
VENV := .venv/bin
CARGO_TARGET_DIR ?= $(HOME)/.cache/fhe-coprocessor/cargo-target
export CARGO_TARGET_DIR
NATIVE := --manifest-path native/Cargo.toml
# The image every deployable runs (the operator's default job image has the same name).
VERSION := $(shell sed -nE 's/^version = "([^"]+)"/\1/p' pyproject.toml | head -1)
IMAGE ?= ghcr.io/fhe-coprocessor/fhe-coprocessor:$(VERSION)

.PHONY: help setup setup-gpu gpu-check demo test unit integration e2e engine fmt lint bench lock down wheel image

help:             ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:[^#]*## /\t/' | expand -t 18

setup:            ## install everything (idempotent; caches under ~/.cache/fhe-coprocessor)
	scripts/install

setup-gpu: setup  ## the GPU build of the TFHE-rs extension (CUDA from PyPI; FHE_CUDA_ARCH=90 without a GPU)
	scripts/install-gpu

gpu-check:        ## on a GPU machine, after setup-gpu: GPU conformance tests, ops and graph benchmarks
	scripts/gpu-check

demo: setup       ## the main job end to end: stack, tenant, one FheBatch through the operator
	scripts/demo

test: setup lint  ## lint, then the whole suite: unit, engine, integration (real services), e2e
	rm -f .artifacts/pytest.xml
	$(VENV)/pytest --junitxml=.artifacts/pytest.xml $(PYTEST_ARGS)
	$(VENV)/python scripts/check-test-results .artifacts/pytest.xml

unit:             ## pure functions only: no services, no keys (seconds)
	$(VENV)/pytest -m unit $(PYTEST_ARGS)

engine:           ## the FHE backends against the plaintext reference (real keys)
	$(VENV)/pytest -m engine $(PYTEST_ARGS)

integration:      ## real PostgreSQL, S3 and anvil
	$(VENV)/pytest -m integration $(PYTEST_ARGS)

e2e:              ## the local Kubernetes control plane, the operator and the listeners
	$(VENV)/pytest -m e2e $(PYTEST_ARGS)

fmt:              ## format Python (ruff) and Rust (cargo fmt) in place
	$(VENV)/ruff format .
	$(VENV)/ruff check --fix --select I .
	cargo fmt $(NATIVE)

lint:             ## ruff, formatting, import contracts, mypy on the library, cargo fmt + clippy
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/lint-imports
	$(VENV)/mypy
	cargo fmt $(NATIVE) --check
	cargo clippy $(NATIVE) --release --locked --all-targets --features test-prover -- -D warnings

wheel:            ## the product wheel (and the native one) into dist/
	$(VENV)/pip wheel --no-deps --no-build-isolation -w dist .
	$(VENV)/maturin build --release --locked $(NATIVE) --out dist

image:            ## the container image (Dockerfile) as $(IMAGE), with docker, podman or buildah
	@if command -v docker >/dev/null && docker info >/dev/null 2>&1; then builder="docker build"; \
	elif command -v podman >/dev/null; then builder="podman build"; \
	elif command -v buildah >/dev/null; then builder="buildah bud"; \
	else echo "make image: no container builder: install docker (and start its daemon), podman or buildah" >&2; exit 1; fi; \
	set -x; DOCKER_BUILDKIT=1 $$builder -f Dockerfile -t $(IMAGE) --build-arg VERSION=$(VERSION) \
	  --build-arg REVISION=$$(git rev-parse HEAD 2>/dev/null || echo unknown) .

bench: setup      ## benchmarks: print figures, write JSON under bench/results/
	$(VENV)/python bench/db.py
	$(VENV)/python bench/kube.py
	$(VENV)/python bench/ops.py --repeat 1 --types Uint8,Uint16,Uint32  # concrete Mul on Uint64 compiles for >10 min
	$(VENV)/python bench/graph.py
	$(VENV)/python bench/key_cache.py
	$(VENV)/python bench/sns.py
	$(VENV)/python bench/verify.py
	$(VENV)/python bench/input_flow.py
	$(VENV)/python bench/listener.py
	$(VENV)/python bench/sender.py
	$(VENV)/python bench/orchestration.py
	$(VENV)/python bench/e2e.py
	$(VENV)/python bench/profiles.py

lock:             ## re-pin constraints.txt from the current .venv (keeps its two header lines)
	{ head -2 constraints.txt; $(VENV)/pip freeze --all --exclude-editable \
	  | grep -vE '^(fhe-coprocessor|fhe-devstack|fhe-native|pip)( @|==)'; } > constraints.new
	mv constraints.new constraints.txt

down:             ## stop the local stack
	$(VENV)/fhectl dev down
