#!/usr/bin/env bash
# Gateway overhead: the same requests sent straight to a replica and through Corral's
# gateway (authenticated with an API key, routed by model), side by side.
#
# Starts a release `corral serve` on loopback with the local driver, deploys
# smollm2:135m, and measures, direct vs gateway:
#   trivial   POST /api/generate with an empty prompt (Ollama's "load" answer: no
#             generation), so the difference is the gateway's own cost
#   1 token   POST /api/generate, non-streamed, one generated token
#   stream    POST /api/generate, streamed, time to the first body chunk
# Latency (p50/p99): sequential requests on one keep-alive connection; wrk for the trivial
# request, alternating replica and gateway requests for the generations (whose own time
# varies more than the gateway adds). Throughput: wrk with $CONNS connections (default:
# the replica's 4 parallel slots). The trivial request's throughput is CPU-bound on a
# small machine (wrk, gateway and replica share the cores); the generations' is what a
# replica can do, which the gateway should not reduce.
# For the trivial request it also reports the CPU time each process spends per request
# (from /proc/PID/stat around the throughput runs): unlike requests/s, that figure hardly
# depends on what else the machine is running, and it bounds the gateway's throughput
# share when the cores are saturated: direct costs the replica's (and wrk's) CPU per
# request, the gateway path adds the gateway's own. The load average is printed too.
# Goals (issue 4): p50 added < 0.5 ms; gateway >= 90 % of direct throughput.
#
# Usage: bench/gateway.sh [--duration SECONDS]   (needs wrk and python3; builds release)
#        CORRAL_BIN=/path/to/corral bench/gateway.sh   (that build instead; corral-runner beside it)
set -euo pipefail
cd "$(dirname "$0")/.."

duration=5
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) duration="$2"; shift 2 ;;
        *) echo "usage: bench/gateway.sh [--duration SECONDS]" >&2; exit 2 ;;
    esac
done
conns="${CONNS:-4}"

command -v wrk >/dev/null || { echo "bench: installing wrk" >&2; apt-get install -y -qq wrk >/dev/null; }
if [ -n "${CORRAL_BIN:-}" ]; then
    # A build kept aside (e.g. before a change, to compare); corral-runner must lie beside it.
    corral="$CORRAL_BIN"
else
    target="${CARGO_TARGET_DIR:-target}"
    echo "bench: building release corral and corral-runner (the first time takes a while)" >&2
    cargo build --release --locked -p corral -p corral-runner >&2
    corral="$target/release/corral"
fi
model="$(scripts/fetch-model.sh "${DATA_DIR:-.corral}/models" | tail -n1)"

work="$(mktemp -d)"
server_pid=""
token=""
url=""
instance=""
cleanup() {
    # Delete the instance so its replica stops with the server, then stop the server.
    if [ -n "$instance" ] && [ -n "$token" ]; then
        curl -s -o /dev/null -X DELETE -H "Authorization: Bearer $token" "$url/api/instances/$instance" || true
        for _ in $(seq 100); do
            curl -s -H "Authorization: Bearer $token" "$url/api/instances" | grep -q "$instance" || break
            sleep 0.1
        done
    fi
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# The catalog's smollm2:135m is DATA_DIR/models/smollm2-135m.gguf.
mkdir -p "$work/models"
ln -s "$(realpath "$model")" "$work/models/smollm2-135m.gguf"
email="bench@example.com"
password="BenchPass123!"
echo "$password" | "$corral" --data-dir "$work" admin create-user --email "$email" --role admin --password-stdin >/dev/null
"$corral" --data-dir "$work" serve --listen 127.0.0.1:0 --log warn \
    --gateway-requests-per-minute 0 --gateway-tokens-per-minute 0 >"$work/serve.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do
    url="$(sed -n 's/.*listening on \(http[^ ]*\).*/\1/p' "$work/serve.log")"
    [ -n "$url" ] && break
    sleep 0.1
done
[ -n "$url" ] || { cat "$work/serve.log" >&2; exit 1; }

json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
token="$(curl -sf -H 'Content-Type: application/json' -d "{\"email\":\"$email\",\"password\":\"$password\"}" \
    "$url/api/auth/login" | json '["access_token"]')"
key="$(curl -sf -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -d "{\"name\":\"bench\",\"password\":\"$password\"}" "$url/api/keys" | json '["key"]')"
instance="$(curl -sf -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -d '{"model_id":"smollm2:135m","idle_timeout_seconds":0}' "$url/api/models/start" | json '["id"]')"
replica=""
for _ in $(seq 600); do
    replica="$(curl -sf -H "Authorization: Bearer $token" "$url/api/instances/$instance" |
        python3 -c 'import json,sys; i=json.load(sys.stdin); r=[r.get("endpoint") for r in i.get("replicas", []) if r.get("endpoint")]; print(r[0] if i["status"] == "ready" and r else "")')"
    [ -n "$replica" ] && break
    sleep 0.1
done
[ -n "$replica" ] || { echo "bench: the instance did not become ready" >&2; cat "$work/serve.log" >&2; exit 1; }
echo "bench: corral at $url, replica at $replica" >&2

trivial='{"model":"smollm2:135m","prompt":"","stream":false}'
one_token='{"model":"smollm2:135m","prompt":"Hi","stream":false,"options":{"num_predict":1,"temperature":0}}'
streamed='{"model":"smollm2:135m","prompt":"Hi","stream":true,"options":{"num_predict":1,"temperature":0}}'

# wrk: prints "p50_ms p99_ms requests_per_s requests wrk_cpu_ticks" for a POST of $2 to
# $1. wrk's CPU time is that of this shell's reaped children (fields 16 and 17 of its
# stat line): each call runs in a fresh subshell (`< <(wrk_post ...)`), so it is wrk's.
wrk_post() {
    local target="$1" body="$2" connections="$3" auth="${4:-}" me="$BASHPID" result
    cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '$body'
wrk.headers["Content-Type"] = "application/json"
LUA
    if [ -n "$auth" ]; then
        echo "wrk.headers[\"Authorization\"] = \"Bearer $auth\"" >>"$work/post.lua"
    fi
    result="$(wrk -t1 -c"$connections" -d"${duration}s" --latency -s "$work/post.lua" "$target" |
        awk '
            function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
            /^ +50%/ { p50 = ms($2) }
            /^ +99%/ { p99 = ms($2) }
            /^Requests\/sec/ { rps = $2 }
            / requests in / { total = $1 }
            /Non-2xx/ { bad = $NF }
            END { if (bad > 0) { print "non-2xx answers: " bad > "/dev/stderr"; exit 1 }; printf "%.3f %.3f %.0f %d\n", p50, p99, rps, total }')"
    echo "$result $(sed 's/.*) //' "/proc/$me/stat" | awk '{ print $14 + $15 }')"
}

# Latency of generations, whose own time varies by milliseconds from one request to the
# next: requests alternate between the replica and the gateway (one keep-alive
# connection each), so both see the same conditions. Prints "direct_p50 direct_p99
# gateway_p50 gateway_p99" in ms: to the first body chunk when streamed, else to the end.
alternate() {
    python3 - "$replica/api/generate" "$url/ollama/api/generate" "$key" "$1" "$duration" <<'PY'
import http.client, json, sys, time, urllib.parse
direct, gateway, key, body, seconds = sys.argv[1:]
streamed = json.loads(body).get("stream", True)
body, seconds = body.encode(), float(seconds)

def client(url, auth):
    u = urllib.parse.urlsplit(url)
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = f"Bearer {auth}"
    return http.client.HTTPConnection(u.hostname, u.port), u.path, headers, []

targets = [client(direct, None), client(gateway, key)]
end = time.perf_counter() + 2 * seconds
while time.perf_counter() < end or len(targets[1][3]) < 20:
    for conn, path, headers, samples in targets:
        start = time.perf_counter()
        conn.request("POST", path, body, headers)
        resp = conn.getresponse()
        assert resp.status == 200, resp.status
        if streamed:
            resp.read1(65536)
            samples.append((time.perf_counter() - start) * 1000)
            resp.read()
        else:
            resp.read()
            samples.append((time.perf_counter() - start) * 1000)

def pct(samples, q):
    samples = sorted(samples)
    return samples[min(len(samples) - 1, int(q * len(samples)))]

print(" ".join(f"{pct(t[3], q):.3f}" for t in targets for q in (0.5, 0.99)))
PY
}

# CPU time (user + system) a process has used, in clock ticks; fields 14 and 15 of its
# stat line, counted after the parenthesised command name (which may hold spaces).
ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
clk_tck="$(getconf CLK_TCK)"
# The replica is a child of the server (the local driver starts it).
runner_pid="$(pgrep -P "$server_pid" -f corral-runner | head -n1)"
[ -n "$runner_pid" ] || { echo "bench: cannot find the replica's process" >&2; exit 1; }
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"

echo "bench: measuring (${duration}s per figure)" >&2
# Warm both paths (connections, the replica's first decode).
wrk_post "$replica/api/generate" "$one_token" 1 >/dev/null
wrk_post "$url/ollama/api/generate" "$one_token" 1 "$key" >/dev/null

read -r t_d50 t_d99 _ _ _ < <(wrk_post "$replica/api/generate" "$trivial" 1)
read -r t_g50 t_g99 _ _ _ < <(wrk_post "$url/ollama/api/generate" "$trivial" 1 "$key")
r0="$(ticks "$runner_pid")"
read -r _ _ t_drps t_dn t_dw < <(wrk_post "$replica/api/generate" "$trivial" "$conns")
r1="$(ticks "$runner_pid")"
g1="$(ticks "$server_pid")"
read -r _ _ t_grps t_gn t_gw < <(wrk_post "$url/ollama/api/generate" "$trivial" "$conns" "$key")
r2="$(ticks "$runner_pid")"
g2="$(ticks "$server_pid")"
read -r o_d50 o_d99 o_g50 o_g99 < <(alternate "$one_token")
read -r _ _ o_drps _ _ < <(wrk_post "$replica/api/generate" "$one_token" "$conns")
read -r _ _ o_grps _ _ < <(wrk_post "$url/ollama/api/generate" "$one_token" "$conns" "$key")
read -r s_d50 s_d99 s_g50 s_g99 < <(alternate "$streamed")
read -r _ _ s_drps _ _ < <(wrk_post "$replica/api/generate" "$streamed" "$conns")
read -r _ _ s_grps _ _ < <(wrk_post "$url/ollama/api/generate" "$streamed" "$conns" "$key")
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"

python3 - <<PY
rows = [
    ("trivial (no generation)", $t_d50, $t_d99, $t_drps, $t_g50, $t_g99, $t_grps),
    ("1 token, non-streamed", $o_d50, $o_d99, $o_drps, $o_g50, $o_g99, $o_grps),
    ("stream, first chunk", $s_d50, $s_d99, $s_drps, $s_g50, $s_g99, $s_grps),
]
print()
print(f"Gateway vs direct on loopback, API key, routed by model ($duration s per figure; "
      f"latency: sequential on one connection; req/s: wrk, $conns connections)")
print(f"{'request':<24} {'':>8} {'direct':>10} {'gateway':>10} {'added':>9}")
for name, d50, d99, drps, g50, g99, grps in rows:
    print(f"{name:<24} {'p50 ms':>8} {d50:>10.3f} {g50:>10.3f} {g50 - d50:>+9.3f}")
    print(f"{'':<24} {'p99 ms':>8} {d99:>10.3f} {g99:>10.3f} {g99 - d99:>+9.3f}")
    print(f"{'':<24} {'req/s':>8} {drps:>10.0f} {grps:>10.0f} {100 * grps / drps:>8.0f}%")
print()
# CPU microseconds per trivial request (clock ticks are coarse: ${duration} s of wrk makes
# tens of thousands of requests, so a tick is well under a microsecond per request).
us = lambda ticks, n: ticks * 1e6 / $clk_tck / max(n, 1)
direct_runner, direct_wrk = us($r1 - $r0, $t_dn), us($t_dw, $t_dn)
gw_runner, gw_corral, gw_wrk = us($r2 - $r1, $t_gn), us($g2 - $g1, $t_gn), us($t_gw, $t_gn)
print(f"CPU per trivial request, us: direct: replica {direct_runner:.1f} + wrk {direct_wrk:.1f}; "
      f"gateway: corral {gw_corral:.1f} + replica {gw_runner:.1f} + wrk {gw_wrk:.1f}")
direct_cpu, gateway_cpu = direct_runner + direct_wrk, gw_corral + gw_runner + gw_wrk
print(f"  when these processes saturate the cores, the gateway's share of direct throughput "
      f"is about {100 * direct_cpu / gateway_cpu:.0f} % (direct CPU / gateway CPU per request)")
print(f"load average (1, 5, 15 min): {'$load_before'} before, {'$load_after'} after; "
      f"$(nproc) cores")
added = $t_g50 - $t_d50
print(f"goal: p50 added < 0.5 ms (trivial request: the gateway's own cost): "
      f"{'met' if added < 0.5 else 'NOT met'} ({added:.3f} ms)")
print(f"goal: gateway >= 90 % of direct throughput (1 token, replica-bound): "
      f"{'met' if $o_grps >= 0.9 * $o_drps else 'NOT met'} ({100 * $o_grps / $o_drps:.0f} %)")
PY
