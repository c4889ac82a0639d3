#!/usr/bin/env bash
# Creates (or updates) the project's Python virtual environment .venv with the pinned test
# dependencies. Re-running is cheap: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    echo "venv: creating .venv" >&2
    python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -r requirements-test.txt
