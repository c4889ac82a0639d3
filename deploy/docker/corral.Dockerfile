# syntax=docker/dockerfile:1.7
# Corral's control plane, gateway and web UI (`corral serve`).
#
# Build from the repository root, after `scripts/build-ui.sh` (release builds embed
# ui/dist; without it the binary serves a page that says how to build the UI):
#   docker build -f deploy/docker/corral.Dockerfile -t corral .
# deploy/aws/deploy.sh does both. The build context is filtered by
# corral.Dockerfile.dockerignore (BuildKit reads the ignore file next to the Dockerfile).

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target dir between builds; the binary is copied out
# of the cached target dir in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin corral \
    && install -m 0755 target/release/corral /usr/local/bin/corral

FROM ${RUNTIME_IMAGE}
# Unpinned on purpose (DL3008): Debian bookworm only ships security fixes, and exact
# versions disappear from the archive, which would break rebuilds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 corral \
    && useradd --system --uid 10001 --gid corral --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin corral \
    && install -d -o corral -g corral -m 0750 /data
COPY --from=build /usr/local/bin/corral /usr/local/bin/corral
USER 10001:10001
WORKDIR /data
ENV CORRAL_LISTEN=0.0.0.0:8080 \
    CORRAL_DATA_DIR=/data
EXPOSE 8080
ENTRYPOINT ["corral"]
CMD ["serve"]
