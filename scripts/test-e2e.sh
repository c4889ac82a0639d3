#!/usr/bin/env bash
# The platform's end-to-end tests (tests/e2e): a real `corral serve` on a free port with a
# temp data dir, real corral-runner replicas of the demo model, and the official openai and
# ollama Python clients through the gateway; deploy, chat, usage, stop, idle sleep and wake,
# isolation, and the `corral` CLI.
#
# Builds `corral` and `corral-runner` (debug, as `cargo test` does), fetches the model,
# sets up the venv, runs pytest and prints a summary with the measured timings.
# Honours CARGO_TARGET_DIR (default: target/) and DATA_DIR (default: .corral);
# CORRAL_RUNNER_BIN points at an already built runner instead of building one.
# Extra arguments go to pytest, e.g. scripts/test-e2e.sh -k idle
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO="${CARGO:-cargo}"
target_dir="${CARGO_TARGET_DIR:-target}"
# Absolute, so tests that start a binary from another working directory find it.
[[ "$target_dir" = /* ]] || target_dir="$PWD/$target_dir"
data_dir="${DATA_DIR:-.corral}"

echo "== test-e2e: model" >&2
model="$(scripts/fetch-model.sh "$data_dir/models" | tail -n1)"
[[ "$model" = /* ]] || model="$PWD/$model"

echo "== test-e2e: build" >&2
if [ -n "${CORRAL_RUNNER_BIN:-}" ]; then
    "$CARGO" build -p corral --locked
    runner="$CORRAL_RUNNER_BIN"
else
    "$CARGO" build -p corral -p corral-runner --locked
    runner="$target_dir/debug/corral-runner"
fi

echo "== test-e2e: python venv" >&2
scripts/venv.sh

echo "== test-e2e: pytest tests/e2e" >&2
report="$(mktemp)"
trap 'rm -f "$report"' EXIT
start=$(date +%s)
status=0
CORRAL_BIN="$target_dir/debug/corral" CORRAL_RUNNER_BIN="$runner" CORRAL_E2E_MODEL="$model" \
    CORRAL_E2E_REPORT="$report" \
    .venv/bin/pytest -q -p no:cacheprovider tests/e2e "$@" || status=$?
elapsed=$(( $(date +%s) - start ))
if [ -s "$report" ]; then
    echo "test-e2e: timings: $(tr -d '\n ' < "$report")"
fi
if [ "$status" -eq 0 ]; then
    echo "test-e2e: end-to-end tests PASSED in ${elapsed}s"
else
    echo "test-e2e: end-to-end tests FAILED (pytest exit $status) after ${elapsed}s"
fi
exit "$status"
