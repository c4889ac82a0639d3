#!/usr/bin/env bash
# Usage: scripts/with-moto.sh CMD [ARGS...]
#
# Runs CMD against a throwaway moto server (the AWS emulator) on 127.0.0.1 and a free
# port, with AWS_ENDPOINT_URL, test credentials and AWS_REGION=us-east-1 exported. moto
# comes from the project venv, which scripts/venv.sh makes when it is missing
# (MOTO_SERVER overrides the binary). The server is stopped when CMD
# ends (or this script is interrupted), and CMD's exit status is this script's.
set -euo pipefail

if [[ $# -eq 0 ]]; then
    echo "usage: $0 CMD [ARGS...]" >&2
    exit 2
fi

root=$(cd "$(dirname "$0")/.." && pwd)
moto_server=${MOTO_SERVER:-$root/.venv/bin/moto_server}
if [[ -z "${MOTO_SERVER:-}" && ! -x "$moto_server" ]]; then
    echo "with-moto: installing moto into .venv (scripts/venv.sh)" >&2
    "$root/scripts/venv.sh"
fi
if [[ ! -x "$moto_server" ]]; then
    echo "with-moto: $moto_server not found; run scripts/venv.sh" >&2
    exit 1
fi

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=$(mktemp)
"$moto_server" -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
pid=$!
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -f "$log"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        break
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "with-moto: moto_server exited:" >&2
        cat "$log" >&2
        exit 1
    fi
    sleep 0.1
done

export AWS_ENDPOINT_URL="http://127.0.0.1:$port"
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
unset AWS_PROFILE AWS_SESSION_TOKEN
echo "with-moto: moto on $AWS_ENDPOINT_URL" >&2
status=0
"$@" || status=$?
exit "$status"
