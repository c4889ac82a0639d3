#!/usr/bin/env bash
# Installs the system packages Corral's build and tests need, only those missing.
# Debian/Ubuntu: cmake + libclang-dev (llama.cpp for corral-runner), PostgreSQL 15
# (store tests), python3-venv (client compatibility tests), chromium (UI tests).
set -euo pipefail

need=()
have_cmd() { command -v "$1" >/dev/null 2>&1; }
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

have_cmd cmake || need+=(cmake)
have_pkg libclang-dev || need+=(libclang-dev)
have_cmd clang || need+=(clang)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
have_cmd unzip || need+=(unzip)
have_cmd curl || need+=(curl)

if [ "${#need[@]}" -eq 0 ]; then
  echo "install-deps: system packages present"
  exit 0
fi

if ! have_cmd apt-get; then
  echo "install-deps: missing ${need[*]} and no apt-get here; install them with your package manager" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if have_cmd sudo; then sudo="sudo"; else
    echo "install-deps: need root (or sudo) to install: ${need[*]}" >&2
    exit 1
  fi
fi
echo "install-deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
