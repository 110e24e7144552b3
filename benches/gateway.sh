#!/usr/bin/env bash
# The gateway beside nginx and HAProxy, in one run on loopback: each proxy in front of the same
# nginx upstream that answers a short body, loaded by `wrk -t2 -c64`, with the same number of
# worker threads (THREADS, 1 then 2 by default) and its access log on as shipped (nginx to a
# buffered file, HAProxy's HTTP log to a file, the gateway's line per request to its log file).
#
#   benches/gateway.sh [DURATION_S] [THREADS...]        (defaults: 10, then 1 2)
#   PROXIES="flotilla" benches/gateway.sh 6 1           (only some of: direct nginx haproxy flotilla)
#
# The gateway inherits the environment: `FLOTILLA_ACCESS_LOG=false benches/gateway.sh` measures
# it with its access log off.
#
# The gateway runs as shipped: its routes check a bearer token (an identity provider is started
# beside it, and every proxy's requests carry the same token).
#
# FLOTILLA_VARIANTS (default "shipped") runs the gateway once per variant, one after the other:
#   shipped   the shipped routes (a token checked, the upstream's breaker, retry, bulkhead);
#   limited   the same, and a rate limit per client on the route (1e6 a second, burst 1e6: it
#             never refuses, every request is counted) kept in the process;
#   redis     the same limit shared through Redis (REDIS_URL, default redis://127.0.0.1:6379,
#             under a key prefix of the run; redis_timeout_ms 50, and a fallback is reported).
#
# Load: wrk -t2 with CONNECTIONS connections (default 64), each pausing DELAY_MS (default 0)
# between a response and its next request (a wrk script's `delay`). A pause offers a fixed load
# below saturation, about CONNECTIONS x 1000 / (DELAY_MS + latency in ms) requests a second, so
# that latencies are compared at the same load: `CONNECTIONS=64 DELAY_MS=4` offers about 15,000
# a second, half of what the gateway serves at one thread.
#
# Prints one row per proxy and thread count: requests/s, p50, p99 (from wrk) and the proxy's CPU
# time per request (utime + stime of its processes from /proc, over the run). Needs the Debian
# packages nginx-light (or nginx), haproxy and wrk, and target/release/flotilla
# (`cargo build --release`), or the binary FLOTILLA_BIN names (to compare two builds).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
shift || true
THREADS=("${@:-1 2}")
read -r -a THREADS <<<"${THREADS[*]}"
PROXIES=${PROXIES:-direct nginx haproxy flotilla}
VARIANTS=${FLOTILLA_VARIANTS:-shipped}
CONNECTIONS=${CONNECTIONS:-64}
DELAY_MS=${DELAY_MS:-0}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
wants() { [[ " $PROXIES " == *" $1 "* ]]; }
BIN=${FLOTILLA_BIN:-$PWD/target/release/flotilla}
for tool in nginx haproxy wrk; do
  command -v "$tool" >/dev/null || { echo "missing: $tool (apt-get install nginx-light haproxy wrk)" >&2; exit 1; }
done
[ -x "$BIN" ] || { echo "missing: $BIN (cargo build --release)" >&2; exit 1; }

UPSTREAM=127.0.0.1:18900
DIR=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$DIR/upstream.pid" ] && kill "$(cat "$DIR/upstream.pid")" 2>/dev/null || true
  [ -f "$DIR/nginx.pid" ] && kill "$(cat "$DIR/nginx.pid")" 2>/dev/null || true
  sleep 0.3
  rm -rf "$DIR"
}
trap cleanup EXIT

# The upstream: nginx, one worker, every path answered 200 "ok" (its /readyz too).
cat >"$DIR/upstream.conf" <<EOF
worker_processes 1;
pid $DIR/upstream.pid;
error_log $DIR/upstream-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen $UPSTREAM; location / { return 200 "ok"; } }
}
EOF
nginx -c "$DIR/upstream.conf" -p "$DIR"

# wrk's options: connections, and the pause between a response and the next request.
WRK=(-t2 -c"$CONNECTIONS")
if [ "$DELAY_MS" != 0 ]; then
  printf 'function delay()\n  return %s\nend\n' "$DELAY_MS" >"$DIR/delay.lua"
  WRK+=(-s "$DIR/delay.lua")
fi

# The routes of the `limited` and `redis` variants: the shipped `orders` route with a rate
# limit per client that never refuses.
printf '%s\n' '[[routes]]' 'name = "orders"' 'service = "order"' 'path = "/orders"' 'version = 1' \
  'roles = ["customer", "admin"]' 'rate_limit = { per_second = 1000000, burst = 1000000 }' \
  >"$DIR/limited.toml"

# CPU ticks of the processes in $@ and their threads: "utime stime".
cpu_ticks() {
  local user=0 sys=0 pid
  for pid in "$@"; do
    # Fields 14 and 15 of /proc/PID/stat, after the command name in parentheses.
    local stat
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
    stat=${stat##*) }
    read -r -a f <<<"$stat"
    user=$((user + f[11]))
    sys=$((sys + f[12]))
  done
  echo "$user $sys"
}

wait_for() { # url
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "${AUTH[@]}" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "no answer from $1" >&2
  return 1
}

# The gateway's routes need a token (its default configuration): an identity provider, and an
# alice token that every proxy's requests carry, so that each reads the same request.
AUTH=()
if wants flotilla; then
  "$BIN" run idp --listen 127.0.0.1:18905 --data-dir "$DIR/data" >"$DIR/idp.log" 2>&1 &
  PIDS+=("$!")
  wait_for "http://127.0.0.1:18905/readyz"
  TOKEN=$("$BIN" token --user alice --data-dir "$DIR/data" 2>/dev/null | tail -n 1)
  AUTH=(-H "Authorization: Bearer $TOKEN")
fi

# Loads URL and prints "name threads rps p50 p99 cpu_us_per_request (user + kernel)" for the
# processes PIDS.
measure() { # name threads url pids...
  local name=$1 threads=$2 url=$3
  shift 3
  wait_for "$url"
  wrk "${WRK[@]}" -d2s "${AUTH[@]}" "$url" >/dev/null # warm up: connections, pools, caches
  local before after out requests
  before=$(cpu_ticks "$@")
  out=$(wrk "${WRK[@]}" -d"${DURATION}s" --latency "${AUTH[@]}" "$url")
  after=$(cpu_ticks "$@")
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  local rps p50 p99
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  local hz
  hz=$(getconf CLK_TCK)
  local cpu_us="-"
  if [ "$#" -gt 0 ] && [ "$requests" -gt 0 ]; then
    read -r user0 sys0 <<<"$before"
    read -r user1 sys1 <<<"$after"
    cpu_us=$(awk -v u=$((user1 - user0)) -v s=$((sys1 - sys0)) -v hz="$hz" -v n="$requests" \
      'BEGIN { f = 1e6 / hz / n; printf "%.1f (%.1f + %.1f)", (u + s) * f, u * f, s * f }')
  fi
  printf '| %-22s | %7s | %10s | %8s | %8s | %18s |\n' "$name" "$threads" "$rps" "$p50" "$p99" "$cpu_us"
}

printf '| %-22s | %7s | %10s | %8s | %8s | %18s |\n' proxy threads requests/s p50 p99 "CPU µs/req (u + k)"
printf '| %-22s | %7s | %10s | %8s | %8s | %18s |\n' --- --- --- --- --- ---
if wants direct; then measure "direct to upstream" - "http://$UPSTREAM/v1/orders/x"; fi

for threads in "${THREADS[@]}"; do
  if wants nginx; then
  # nginx proxy_pass with upstream keep-alive, access log to a buffered file.
  cat >"$DIR/nginx.conf" <<EOF
worker_processes $threads;
pid $DIR/nginx.pid;
error_log $DIR/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log $DIR/nginx-access.log combined buffer=64k flush=1s;
  keepalive_requests 1000000;
  upstream backend { server $UPSTREAM; keepalive 64; }
  server {
    listen 127.0.0.1:18901;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
  nginx -c "$DIR/nginx.conf" -p "$DIR"
  sleep 0.3
  measure "nginx" "$threads" "http://127.0.0.1:18901/v1/orders/x" \
    $(pgrep -f "nginx.*$DIR/nginx.conf") $(pgrep -P "$(cat "$DIR/nginx.pid")")
  kill "$(cat "$DIR/nginx.pid")"
  sleep 0.5
  fi

  if wants haproxy; then
  # HAProxy, its HTTP log to a file.
  cat >"$DIR/haproxy.cfg" <<EOF
global
  nbthread $threads
  log stdout format raw local0
defaults
  mode http
  log global
  option httplog
  timeout connect 1s
  timeout client 30s
  timeout server 30s
frontend front
  bind 127.0.0.1:18902
  default_backend back
backend back
  http-reuse always
  server upstream $UPSTREAM
EOF
  haproxy -f "$DIR/haproxy.cfg" >"$DIR/haproxy.log" 2>&1 &
  local_pid=$!
  PIDS+=("$local_pid")
  measure "HAProxy" "$threads" "http://127.0.0.1:18902/v1/orders/x" "$local_pid"
  kill "$local_pid"
  wait "$local_pid" 2>/dev/null || true
  fi

  if wants flotilla; then
  # Flotilla: a registry, the upstream registered as `order`, the gateway in front.
  FLOTILLA_TTL_MS=86400000 FLOTILLA_LOG_FORMAT=json "$BIN" run registry --listen 127.0.0.1:18903 \
    --data-dir "$DIR/data" >"$DIR/registry.log" 2>&1 &
  registry=$!
  PIDS+=("$registry")
  wait_for "http://127.0.0.1:18903/readyz"
  curl -fsS -X PUT "http://127.0.0.1:18903/v1/registry/instances/upstream-1" \
    -H 'content-type: application/json' \
    -d "{\"service\":\"order\",\"address\":\"$UPSTREAM\",\"ttl_ms\":86400000}" >/dev/null
  for variant in $VARIANTS; do
    extra=()
    case $variant in
      shipped) label="Flotilla gateway" ;;
      limited) label="Flotilla + rate limit"; extra=(FLOTILLA_ROUTES_FILE="$DIR/limited.toml") ;;
      redis)
        label="Flotilla + limit in Redis"
        extra=(FLOTILLA_ROUTES_FILE="$DIR/limited.toml" FLOTILLA_RATE_LIMIT__REDIS_URL="$REDIS_URL"
          FLOTILLA_RATE_LIMIT__KEY_PREFIX="flotilla-bench:$$:$threads" FLOTILLA_RATE_LIMIT__REDIS_TIMEOUT_MS=50) ;;
      *) echo "unknown variant: $variant (shipped, limited, redis)" >&2; exit 1 ;;
    esac
    env "${extra[@]}" TOKIO_WORKER_THREADS="$threads" FLOTILLA_LOG_FORMAT=json \
      FLOTILLA_IDENTITY__URL=http://127.0.0.1:18905 \
      "$BIN" run gateway \
      --listen 127.0.0.1:18904 --registry-url http://127.0.0.1:18903 --data-dir "$DIR/data" \
      >"$DIR/gateway.log" 2>&1 &
    gateway=$!
    PIDS+=("$gateway")
    measure "$label" "$threads" "http://127.0.0.1:18904/v1/orders/x" "$gateway"
    # Redis going down is said once in the log, each time it happens.
    if grep -q "Redis does not answer" "$DIR/gateway.log"; then
      echo "  ($label: Redis did not always answer: some requests were decided without it)"
    fi
    kill "$gateway"
    wait "$gateway" 2>/dev/null || true
  done
  kill "$registry"
  wait "$registry" 2>/dev/null || true
  fi
done
