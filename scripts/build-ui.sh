#!/usr/bin/env bash
# Builds the web UI (ui/, React + TypeScript + MUI) into ui/dist, which `corral` embeds
# in release builds and serves, after generating its API types from the OpenAPI document. Installs the npm packages first (npm ci) when
# ui/node_modules is missing or older than ui/package-lock.json; UI_NPM_CI=1 forces it.
set -euo pipefail
cd "$(dirname "$0")/../ui"

say() { echo "build-ui: $*"; }

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  say "Node.js and npm are needed (Node 20.19 or newer); Debian: apt-get install nodejs npm" >&2
  exit 1
fi
node -e '
  const [maj, min] = process.versions.node.split(".").map(Number);
  if (maj < 20 || (maj === 20 && min < 19)) {
    console.error(`build-ui: Node ${process.versions.node} is too old: Vite 7 needs 20.19 or newer`);
    process.exit(1);
  }'

if [ "${UI_NPM_CI:-0}" = 1 ] || [ ! -f node_modules/.package-lock.json ] ||
  [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "installing npm packages (npm ci)..."
  npm ci --no-audit --no-fund --loglevel=error
else
  say "npm packages up to date (UI_NPM_CI=1 reinstalls)"
fi

# The API's TypeScript types come from the checked-in OpenAPI document, which a test in
# corral-api keeps equal to what the server serves (UPDATE_SNAPSHOTS=1 refreshes it).
say "generating src/api/schema.gen.ts from crates/corral-api/openapi.json (openapi-typescript)..."
npx --no-install openapi-typescript ../crates/corral-api/openapi.json -o src/api/schema.gen.ts

say "building ui/dist (vite build)..."
start=$(date +%s)
npx --no-install vite build --logLevel warn
files=$(find dist -type f | wc -l)
say "done in $(($(date +%s) - start))s: $files files, $(du -sh dist | cut -f1) in ui/dist"
