#!/usr/bin/env bash
# Control-plane benchmark: idle RSS of `corral serve`, its RSS after 1,000 logins,
# login latency (Argon2id-bound) and authenticated GET latency on loopback, printed
# beside the goals of issues #2 and #13 and beside libargon2 (argon2-cffi) hashing the
# same parameters as the reference.
#
# Usage: bench/api.sh            (builds release, needs wrk and python3)
#        CORRAL_BIN=path bench/api.sh   (measures that binary instead)
set -euo pipefail
cd "$(dirname "$0")/.."

command -v wrk >/dev/null || { echo "bench: installing wrk"; apt-get install -y -qq wrk >/dev/null; }
target="${CARGO_TARGET_DIR:-target}"
if [ -n "${CORRAL_BIN:-}" ]; then
  corral="$CORRAL_BIN" # another build, e.g. the previous commit's, for a before/after
else
  echo "bench: building release corral (first time takes a few minutes)"
  cargo build --release --bin corral --quiet
  corral="$target/release/corral"
fi

work="$(mktemp -d)"
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

email="bench@example.com"
password="BenchPass123!"
echo "$password" | "$corral" --data-dir "$work" admin create-user --email "$email" --role user --password-stdin >/dev/null

"$corral" --data-dir "$work" serve --listen 127.0.0.1:0 --log warn \
  --auth-rate-per-ip 100000 --auth-rate-per-account 100000 >"$work/out.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do
  url="$(sed -n 's/.*listening on \(http[^ ]*\).*/\1/p' "$work/out.log")"
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || { cat "$work/out.log"; exit 1; }

sleep 2
rss_idle_kib=$(awk '/VmRSS/ {print $2}' "/proc/$server_pid/status")

# Login: 30 sequential logins, p50 of curl's total time.
login_body="{\"email\":\"$email\",\"password\":\"$password\"}"
for _ in $(seq 30); do
  curl -s -o "$work/login.json" -w '%{time_total}\n' -H 'Content-Type: application/json' \
    -d "$login_body" "$url/api/auth/login"
done | sort -n >"$work/login.times"
login_p50_ms=$(awk '{a[NR]=$1} END {printf "%.1f", a[int((NR+1)/2)]*1000}' "$work/login.times")
token="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["access_token"])' "$work/login.json")"

# 1,000 logins, 8 at a time: each hash takes a 19 MiB block, which used to stay with its
# thread's malloc arena (issue #13: 457 MiB after a burst). 8 at a time is within the
# hashing queue (32 per core), so every login must succeed.
seq 1000 | xargs -P 8 -I{} curl -s -o /dev/null -w '%{http_code}\n' \
  -H 'Content-Type: application/json' -d "$login_body" "$url/api/auth/login" >"$work/burst.codes"
burst_ok=$(grep -c '^200$' "$work/burst.codes" || true)
sleep 2
rss_logins_kib=$(awk '/VmRSS/ {print $2}' "/proc/$server_pid/status")

# Authenticated GETs: one connection, so the figure is per-request latency, not queueing.
get_p50() {
  wrk -t1 -c1 -d5s --latency -H "Authorization: Bearer $token" "$url$1" |
    awk '/^ +50%/ {print $2}'
}
profile_p50=$(get_p50 /api/user/profile)
keys_p50=$(get_p50 /api/keys)
health_p50=$(get_p50 /api/health)
rss_after_kib=$(awk '/VmRSS/ {print $2}' "/proc/$server_pid/status")

# Reference: libargon2 (argon2-cffi) verifying the same Argon2id parameters.
venv="$work/venv"
python3 -m venv "$venv" && "$venv/bin/pip" install -q argon2-cffi
ref_ms=$("$venv/bin/python" - <<'PY'
import time, statistics
from argon2 import PasswordHasher, Type
ph = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1, type=Type.ID)
h = ph.hash("BenchPass123!")
t = []
for _ in range(15):
    s = time.perf_counter(); ph.verify(h, "BenchPass123!"); t.append(time.perf_counter() - s)
print(f"{statistics.median(t)*1000:.1f}")
PY
)

printf '\n%-40s %14s %14s\n' "metric (loopback, $(nproc) cores)" "corral" "goal/reference"
printf '%-40s %11s MiB %14s\n' "RSS idle (serve, SQLite)" "$(awk "BEGIN{printf \"%.1f\", $rss_idle_kib/1024}")" "< 30 MiB"
printf '%-40s %11s MiB %14s\n' "RSS after 1,000 logins (8 at a time)" "$(awk "BEGIN{printf \"%.1f\", $rss_logins_kib/1024}")" "< 64 MiB"
printf '%-40s %14s %14s\n' "  of which answered 200" "$burst_ok" "1000"
printf '%-40s %11s MiB %14s\n' "RSS after the GET load below" "$(awk "BEGIN{printf \"%.1f\", $rss_after_kib/1024}")" "-"
printf '%-40s %11s ms %11s ms\n' "login p50 (Argon2id m=19MiB t=2 p=1)" "$login_p50_ms" "$ref_ms"
printf '%-40s %14s %14s\n' "GET /api/user/profile p50" "$profile_p50" "< 2 ms"
printf '%-40s %14s %14s\n' "GET /api/keys p50" "$keys_p50" "< 2 ms"
printf '%-40s %14s %14s\n' "GET /api/health p50" "$health_p50" "< 2 ms"
echo "(reference for login: libargon2 via argon2-cffi verifying the same parameters)"
