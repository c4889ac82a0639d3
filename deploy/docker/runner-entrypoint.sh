#!/usr/bin/env bash
# Entry point of the corral-runner image: fetch the model's GGUF if needed, then exec
# corral-runner on 0.0.0.0. The ECS driver sets (crates/corral-driver-ecs/src/taskdef.rs):
#
#   CORRAL_MODEL          name the model is served under, e.g. llama2:7b (required,
#                         unless the image has a baked-in model, see below)
#   CORRAL_MODEL_URL      a GGUF over HTTPS ...
#   CORRAL_MODEL_SHA256   ... and its SHA-256 (checked before use)
#   CORRAL_MODEL_OLLAMA   or an Ollama registry name (library/llama2:7b): the model layer
#                         of its manifest is downloaded and checked against its digest
#   CORRAL_PARALLEL       sequences decoded together (corral-runner --parallel)
#   CORRAL_CTX            context per sequence (--ctx)
#   CORRAL_PORT           port to listen on (default 11434)
#
# Without CORRAL_MODEL_URL / CORRAL_MODEL_OLLAMA the model baked into the image at build
# time (FETCH_MODEL=1: SmolLM2-135M as smollm2:135m) is served. Extra arguments are
# passed on to corral-runner; a first argument `corral-runner` runs the command as given.
set -euo pipefail

log() { echo "runner-entrypoint: $*" >&2; }
die() { log "$*"; exit 1; }

if [ "${1:-}" = corral-runner ]; then
    exec "$@"
fi

models_dir="${CORRAL_MODELS_DIR:-/models}"
registry="${CORRAL_OLLAMA_REGISTRY:-https://registry.ollama.ai}"
baked="$models_dir/smollm2-135m.gguf"

verify() { # FILE SHA256
    local got
    got="$(sha256sum "$1" | cut -d' ' -f1)"
    [ "$got" = "$2" ] || { log "SHA-256 mismatch for $1: expected $2, got $got"; return 1; }
}

download() { # URL DEST SHA256
    local part="$2.part"
    log "downloading $1"
    curl --fail --location --silent --show-error --retry 5 --retry-delay 2 \
        --connect-timeout 20 --output "$part" "$1"
    verify "$part" "$3" || { rm -f "$part"; exit 1; }
    mv "$part" "$2"
    log "saved $2 ($(du -h "$2" | cut -f1)), SHA-256 verified"
}

if [ -n "${CORRAL_MODEL_URL:-}" ]; then
    [ -n "${CORRAL_MODEL_SHA256:-}" ] || die "CORRAL_MODEL_URL needs CORRAL_MODEL_SHA256"
    model_path="$models_dir/${CORRAL_MODEL_SHA256}.gguf"
    [ -f "$model_path" ] || download "$CORRAL_MODEL_URL" "$model_path" "$CORRAL_MODEL_SHA256"
elif [ -n "${CORRAL_MODEL_OLLAMA:-}" ]; then
    name="$CORRAL_MODEL_OLLAMA"
    case "$name" in */*) ;; *) name="library/$name" ;; esac
    case "$name" in *:*) repo="${name%:*}" tag="${name##*:}" ;; *) repo="$name" tag=latest ;; esac
    log "resolving $repo:$tag on $registry"
    manifest="$(curl --fail --silent --show-error --retry 5 --connect-timeout 20 \
        -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
        "$registry/v2/$repo/manifests/$tag")" || die "no manifest for $repo:$tag"
    digest="$(jq -r '.layers[] | select(.mediaType == "application/vnd.ollama.image.model") | .digest' \
        <<<"$manifest" | head -n1)"
    [ -n "$digest" ] || die "the manifest of $repo:$tag has no model layer"
    sha="${digest#sha256:}"
    model_path="$models_dir/$sha.gguf"
    [ -f "$model_path" ] || download "$registry/v2/$repo/blobs/$digest" "$model_path" "$sha"
elif [ -f "$baked" ]; then
    model_path="$baked"
    : "${CORRAL_MODEL:=smollm2:135m}"
else
    die "no model: set CORRAL_MODEL_URL + CORRAL_MODEL_SHA256 or CORRAL_MODEL_OLLAMA (or build the image with FETCH_MODEL=1)"
fi

[ -n "${CORRAL_MODEL:-}" ] || die "CORRAL_MODEL (the name to serve) is not set"

args=(--model "$model_path" --name "$CORRAL_MODEL" --host 0.0.0.0 --port "${CORRAL_PORT:-11434}")
[ -z "${CORRAL_PARALLEL:-}" ] || args+=(--parallel "$CORRAL_PARALLEL")
[ -z "${CORRAL_CTX:-}" ] || args+=(--ctx "$CORRAL_CTX")
log "starting corral-runner ${args[*]} $*"
exec corral-runner "${args[@]}" "$@"
