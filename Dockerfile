# syntax=docker/dockerfile:1
# The coprocessor's one image: every deployable (fhe-operator, fhe-listener, fhe-job,
# fhectl) from the product wheel and the TFHE-rs extension (native/). `make image` builds
# it with docker, podman or buildah; the stage Jobs' pods and the operator run it with
# their own `command` (fhe-job STAGE ..., fhe-operator, fhe-listener ...).
#
# Stages:
#   contracts  solc (npm, versions from tools/versions.env) compiles contracts/ into the
#              product's package data, as scripts/install does: a clean checkout builds
#   build      Rust (pinned) + Python 3.11: the native wheel (maturin) and the product wheel
#   runtime    python:3.11-slim with only the two wheels and their pinned dependencies
#
# CPU baseline: nothing sets RUSTFLAGS or target-cpu (no .cargo/config in the repository),
# so the extension is built for the target's default baseline (x86-64, or generic
# aarch64); tfhe-rs, its CSPRNG (AES-NI) and blake3 pick SIMD paths at run time.
#
# Needs BuildKit syntax (RUN --mount): Docker 23+, podman and buildah understand it.

ARG PYTHON_VERSION=3.11
ARG DEBIAN_SUITE=bookworm
# The toolchain the checked-in native/Cargo.lock is built and linted with.
ARG RUST_VERSION=1.95.0
ARG NODE_VERSION=22

FROM rust:${RUST_VERSION}-slim-${DEBIAN_SUITE} AS rust

# --- contracts: solc from npm, as scripts/install runs it -------------------------------
FROM node:${NODE_VERSION}-${DEBIAN_SUITE}-slim AS contracts
WORKDIR /src
COPY tools/versions.env tools/versions.env
# The packages the two compile scripts read (solc, OpenZeppelin, Zama's host contracts and
# Solidity library), at the exact versions of tools/versions.env.
RUN set -eu; . tools/versions.env; mkdir /npm; cd /npm; \
    echo '{"name": "fhe-coprocessor-contracts", "private": true}' > package.json; \
    npm install --no-audit --no-fund --loglevel=error --save-exact \
      "solc@$SOLC_VERSION" \
      "@openzeppelin/contracts@$OPENZEPPELIN_CONTRACTS_VERSION" \
      "@openzeppelin/contracts-upgradeable@$OPENZEPPELIN_CONTRACTS_UPGRADEABLE_VERSION" \
      "@fhevm/host-contracts@$FHEVM_HOST_CONTRACTS_VERSION" \
      "@fhevm/solidity@$FHEVM_SOLIDITY_VERSION" \
      "encrypted-types@$ENCRYPTED_TYPES_VERSION"
COPY contracts/ contracts/
# Only for the dev deployer's address, which the host contracts' addresses derive from
# (scripts/install reads it the same way).
COPY devstack/host_chain.py devstack/host_chain.py
RUN set -eu; \
    deployer=$(sed -n 's/^DEV_HOST_DEPLOYER_ADDRESS = "\(0x[0-9a-fA-F]\{40\}\)".*/\1/p' \
      devstack/host_chain.py); \
    test -n "$deployer"; \
    NODE_PATH=/npm/node_modules node contracts/compile.js; \
    NODE_PATH=/npm/node_modules node contracts/compile-host.js --deployer "$deployer"

# --- requirements: what the other stages install, from pyproject.toml and constraints.txt --
# A stage of its own: the layers that install these depend on the lists' content (the
# base dependencies only: the [concrete] and [gpu] extras are left out), not on every edit of the
# two files (tool settings in pyproject.toml, pins the build does not use).
FROM python:${PYTHON_VERSION}-slim-${DEBIAN_SUITE} AS requirements
COPY pyproject.toml constraints.txt /src/
RUN python -c "import tomllib; print(*tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
      > /requirements.in \
 && grep -iE '^(maturin|setuptools|wheel)==' /src/constraints.txt > /build-requirements.txt \
 && test "$(wc -l < /build-requirements.txt)" -eq 3

# --- build: the native wheel and the product wheel into /dist ---------------------------
FROM python:${PYTHON_VERSION}-slim-${DEBIAN_SUITE} AS build
# A C compiler and the C library's headers: the linker for the cdylib, and blake3's build.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:$PATH CARGO_TARGET_DIR=/cargo-target \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=rust /usr/local/rustup /usr/local/rustup
COPY --from=rust /usr/local/cargo /usr/local/cargo
WORKDIR /src
RUN --mount=type=bind,from=requirements,source=/build-requirements.txt,target=/tmp/build-requirements.txt \
    pip install -r /tmp/build-requirements.txt
# The crates, in a layer of their own (until Cargo.lock changes); a stub lib.rs because
# cargo reads the [lib] target before it fetches.
COPY native/Cargo.toml native/Cargo.lock native/
RUN mkdir native/src && touch native/src/lib.rs \
 && cargo fetch --locked --manifest-path native/Cargo.toml \
 && rm -r native/src
COPY native/ native/
# No features: test-prover is the test suite's client-side prover (native/Cargo.toml).
# --strip: the symbol table is 8 of the extension's 22 MB. The cache mount keeps the
# compiled crates (minutes: tfhe) between builds on one builder.
RUN --mount=type=cache,target=/cargo-target,id=fhe-coprocessor-cargo-target \
    CARGO_NET_OFFLINE=true maturin build --release --locked --strip \
      --manifest-path native/Cargo.toml --out /dist
COPY pyproject.toml README.md ./
COPY coprocessor/ coprocessor/
COPY fhe_operator/ fhe_operator/
COPY job_runner/ job_runner/
COPY listeners/ listeners/
COPY fhectl/ fhectl/
COPY --from=contracts /src/coprocessor/chain/compiled/ coprocessor/chain/compiled/
RUN pip wheel --no-deps --no-build-isolation -w /dist . \
 && ls -l /dist

# --- runtime ------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-${DEBIAN_SUITE} AS runtime
ARG PYTHON_VERSION
ARG DEBIAN_SUITE
# Set by `make image` (pyproject.toml's version, the commit).
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="fhe-coprocessor" \
      org.opencontainers.image.description="fhEVM coprocessor as a Kubernetes operator: fhe-operator, fhe-listener, fhe-job and fhectl" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/fhe-coprocessor/fhe-coprocessor" \
      org.opencontainers.image.base.name="docker.io/library/python:${PYTHON_VERSION}-slim-${DEBIAN_SUITE}"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
# Numeric uid/gid: the pods say runAsNonRoot, which the kubelet can only check on a number.
# A home for settings' cache_dir (~/.cache/fhe-coprocessor).
RUN groupadd --gid 10001 fhe \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/fhe \
      --shell /usr/sbin/nologin fhe
# Third-party dependencies first, at constraints.txt's pins, wheels only (no compiler
# here): this layer is reused until the dependency list or the pins change.
RUN --mount=type=bind,source=constraints.txt,target=/tmp/constraints.txt \
    --mount=type=bind,from=requirements,source=/requirements.in,target=/tmp/requirements.in \
    pip install --only-binary=:all: -c /tmp/constraints.txt -r /tmp/requirements.in
# Then the two wheels, without touching the dependencies; pip check proves they are met.
RUN --mount=type=bind,from=build,source=/dist,target=/tmp/dist \
    pip install --no-deps /tmp/dist/fhe_native-*.whl /tmp/dist/fhe_coprocessor-*.whl \
 && pip check
USER 10001:10001
ENV HOME=/home/fhe
WORKDIR /home/fhe
# No ENTRYPOINT: each workload sets its command (fhe-job, fhe-operator, fhe-listener).
CMD ["fhectl", "--help"]
