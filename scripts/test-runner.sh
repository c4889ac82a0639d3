#!/usr/bin/env bash
# corral-runner's compatibility tests, the entry point `make test` calls: fetch the test
# model, build the runner (debug profile: llama.cpp itself is compiled optimised either
# way, so the debug binary runs as fast as a release one), set up the Python venv, run
# pytest against a real runner with the official ollama and openai clients.
#
# Honours CARGO_TARGET_DIR (default: target/) and DATA_DIR (default: .corral).
# Extra arguments go to pytest, e.g. scripts/test-runner.sh -k chat
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO="${CARGO:-cargo}"
target_dir="${CARGO_TARGET_DIR:-target}"
data_dir="${DATA_DIR:-.corral}"

echo "== test-runner: model" >&2
model="$(scripts/fetch-model.sh "$data_dir/models" | tail -n1)"

echo "== test-runner: build corral-runner" >&2
# The workspace's binaries, not `-p corral-runner`: building one package alone resolves
# bindgen's build dependencies with other features than `cargo clippy/test --workspace`
# do, which compiles llama.cpp a second time (checked with `cargo build --unit-graph`).
# After `cargo test --workspace` this only links the binaries.
"$CARGO" build --workspace --bins --locked

echo "== test-runner: python venv" >&2
scripts/venv.sh

echo "== test-runner: pytest tests/compat" >&2
start=$(date +%s)
status=0
CORRAL_RUNNER_BIN="$target_dir/debug/corral-runner" CORRAL_RUNNER_MODEL="$model" \
    .venv/bin/pytest -q -p no:cacheprovider tests/compat "$@" || status=$?
if [ "$status" -eq 0 ]; then
    echo "test-runner: compat tests PASSED in $(( $(date +%s) - start ))s"
else
    echo "test-runner: compat tests FAILED (pytest exit $status) after $(( $(date +%s) - start ))s"
fi
exit "$status"
