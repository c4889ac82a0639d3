#!/usr/bin/env bash
# The web UI's checks: API types up to date, typecheck, lint, unit tests (Vitest), production build, initial
# bundle budget, and end-to-end tests in headless Chromium against a real `corral serve`.
# Installs Debian's chromium (and Japanese fonts for the screenshots) when missing.
# Screenshots and the server log go to artifacts/ui/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
CARGO="${CARGO:-cargo}"
BUNDLE_LIMIT_KB="${BUNDLE_LIMIT_KB:-400}"
start=$(date +%s)
log="$(mktemp -d)"
trap 'rm -rf "$log"' EXIT

step() { echo; echo "== test-ui: $* [$(($(date +%s) - start))s]"; }

step "system packages"
need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
# Without a CJK font the Japanese screenshots show empty boxes (the tests still pass).
dpkg-query -W -f='${Status}' fonts-noto-cjk 2>/dev/null | grep -q "install ok installed" || need+=(fonts-noto-cjk)
if [ "${#need[@]}" -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  echo "installing ${need[*]} (apt)"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
/usr/bin/chromium --version 2>/dev/null | head -1

step "npm packages"
cd ui
if [ "${UI_NPM_CI:-0}" = 1 ] || [ ! -f node_modules/.package-lock.json ] ||
  [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
else
  echo "up to date (UI_NPM_CI=1 reinstalls)"
fi

# Stale types would let the UI and the server disagree unseen: the generated file must be
# what crates/corral-api/openapi.json (itself checked by a corral-api test) gives today.
step "API types (src/api/schema.gen.ts from crates/corral-api/openapi.json)"
if ! npx --no-install openapi-typescript ../crates/corral-api/openapi.json -o src/api/schema.gen.ts --check; then
  echo "test-ui: ui/src/api/schema.gen.ts is stale: run scripts/build-ui.sh and commit it" >&2
  exit 1
fi
echo "ok"

step "typecheck (tsc --noEmit)"
npx --no-install tsc --noEmit -p tsconfig.json
echo "ok"

step "lint (eslint)"
npx --no-install eslint --max-warnings 0 .
echo "ok"

step "unit tests (vitest)"
npx --no-install vitest run 2>&1 | tee "$log/vitest"
unit=$(sed 's/\x1b\[[0-9;]*m//g' "$log/vitest" | sed -n 's/^ *Tests  *\([0-9][0-9]*\) passed.*/\1/p' | tail -1)

step "build"
cd "$root"
UI_NPM_CI=0 scripts/build-ui.sh

step "bundle size (initial JS <= ${BUNDLE_LIMIT_KB} kB gzipped)"
node ui/scripts/bundle-size.mjs "$BUNDLE_LIMIT_KB" | tee "$log/size"

# `corral serve` starts its local driver, which needs corral-runner next to it.
step "corral and corral-runner (cargo build)"
$CARGO build -p corral -p corral-runner --quiet

# The e2e test deploys smollm2:135m on the local driver: it needs the model file.
step "test model (scripts/fetch-model.sh)"
scripts/fetch-model.sh >/dev/null

step "end-to-end (headless chromium + corral serve)"
CORRAL_BIN="$CARGO_TARGET_DIR/debug/corral" node ui/e2e/run.mjs 2>&1 | tee "$log/e2e"
e2e=$(sed -n 's/^e2e: \([0-9][0-9]*\) passed, 0 failed.*/\1/p' "$log/e2e" | tail -1)
[ -n "$e2e" ] || { echo "test-ui: the end-to-end run did not pass" >&2; exit 1; }

# The same UI in auth mode cognito, against a user pool on a throwaway moto server.
step "end-to-end, auth mode cognito (headless chromium + corral serve + moto)"
CORRAL_BIN="$CARGO_TARGET_DIR/debug/corral" scripts/with-moto.sh node ui/e2e/cognito.mjs 2>&1 | tee "$log/e2e-cognito"
e2e_cognito=$(sed -n 's/^e2e-cognito: \([0-9][0-9]*\) passed, 0 failed.*/\1/p' "$log/e2e-cognito" | tail -1)
[ -n "$e2e_cognito" ] || { echo "test-ui: the cognito end-to-end run did not pass" >&2; exit 1; }

size=$(sed -n 's/.*initial JS \([0-9.]*\) kB.*/\1/p' "$log/size")
echo
echo "test-ui: typecheck ok, lint ok, unit ${unit:-?} passed, initial JS ${size} kB gzipped, e2e ${e2e} + cognito ${e2e_cognito} passed; screenshots in artifacts/ui/ and artifacts/ui-cognito/ [$(($(date +%s) - start))s]"
echo "ui: $((${unit:-0} + e2e + e2e_cognito)) passed, 0 failed"
