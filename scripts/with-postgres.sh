#!/usr/bin/env bash
# Usage: scripts/with-postgres.sh CMD [ARGS...]
#
# Runs CMD with a throwaway PostgreSQL 15 server and CORRAL_TEST_PG_URL pointing at it:
# a fresh data directory under mktemp, listening only on 127.0.0.1 on a free port, its
# unix socket in that directory, trust auth for the test user `corral`. The server is
# stopped and the directory removed when CMD ends (or this script is interrupted), and
# CMD's exit status is this script's.
#
# Installs Debian's postgresql-15 if it is missing (needs root). PostgreSQL refuses to
# run as root, so as root the server runs as the `postgres` OS user (created if the
# package did not). Override the binaries' folder with PG_BIN.
set -euo pipefail

if [[ $# -eq 0 ]]; then
    echo "usage: $0 CMD [ARGS...]" >&2
    exit 2
fi

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PG_OS_USER=postgres
DB_USER=corral

log() { echo "with-postgres: $*" >&2; }

if [[ ! -x "$PG_BIN/postgres" ]]; then
    if [[ $EUID -ne 0 ]]; then
        log "$PG_BIN/postgres not found; install it with: sudo apt-get install postgresql-15"
        exit 1
    fi
    log "installing postgresql-15"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postgresql-15 >/dev/null
fi

if [[ $EUID -eq 0 ]] && ! id -u "$PG_OS_USER" >/dev/null 2>&1; then
    useradd --system --user-group --no-create-home --shell /usr/sbin/nologin "$PG_OS_USER"
fi

tmp=$(mktemp -d -t corral-pg.XXXXXX)
data="$tmp/data"

# Runs a PostgreSQL program as a user it accepts, from a folder that user can read.
as_pg() {
    if [[ $EUID -eq 0 ]]; then
        (cd "$tmp" && runuser -u "$PG_OS_USER" -- "$@")
    else
        (cd "$tmp" && "$@")
    fi
}

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    if [[ -f "$data/postmaster.pid" ]]; then
        as_pg "$PG_BIN/pg_ctl" stop -D "$data" -m immediate -s >/dev/null 2>&1 || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ $EUID -eq 0 ]]; then
    chown "$PG_OS_USER" "$tmp"
fi

as_pg "$PG_BIN/initdb" -D "$data" -U "$DB_USER" --auth=trust --encoding=UTF8 \
    --locale=C --no-sync >"$tmp/initdb.log" 2>&1 || {
    cat "$tmp/initdb.log" >&2
    exit 1
}

# Binding is the only race-free test of a free port: try random ones until one starts.
port=""
for _ in $(seq 1 20); do
    candidate=$((20000 + RANDOM % 40000))
    # fsync off: the data is thrown away, and tests run much faster without it.
    if as_pg "$PG_BIN/pg_ctl" start -D "$data" -w -t 30 -s -l "$tmp/server.log" \
        -o "-c listen_addresses=127.0.0.1 -p $candidate -k $tmp -c fsync=off \
            -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
        >/dev/null 2>&1; then
        port=$candidate
        break
    fi
done
if [[ -z "$port" ]]; then
    log "could not start PostgreSQL; server log follows"
    cat "$tmp/server.log" >&2 || true
    exit 1
fi

export CORRAL_TEST_PG_URL="postgres://$DB_USER@127.0.0.1:$port/postgres"
log "$("$PG_BIN/postgres" --version) at $CORRAL_TEST_PG_URL"

# CMD runs as a background job so that a signal to this script cleans up at once
# instead of after CMD ends; the signal is passed on to CMD. `<&0` keeps stdin, which
# bash would otherwise take from /dev/null for a background job.
"$@" <&0 &
child=$!
trap 'kill -INT "$child" 2>/dev/null; wait "$child"; exit 130' INT
trap 'kill -TERM "$child" 2>/dev/null; wait "$child"; exit 143' TERM
status=0
wait "$child" || status=$?
exit "$status"
