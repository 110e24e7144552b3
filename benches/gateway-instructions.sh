#!/usr/bin/env bash
# Instructions the gateway executes per proxied request, counted by valgrind's callgrind: a
# figure that does not move with the machine's load, for comparing two builds of the hot path
# (wall-clock and CPU-time figures on a shared 2-core machine move by ±10 % between runs).
#
#   benches/gateway-instructions.sh [BINARY...]       (default: target/release/flotilla)
#
# For each binary: one nginx upstream answering "ok", a registry with it registered as
# `order` (and as `inventory`, for the public route the start waits on), an identity provider
# and an alice token every request carries (the shipped routes check it), the gateway with one worker under callgrind (instrumentation off during start-up),
# `wrk -t1 -c8` for 3 s to warm up, then instrumentation on for 8 s of load. Prints the
# requests served in that window and the user-space instructions per request (kernel work is
# not counted). Keeps the last profile in target/callgrind/ for `callgrind_annotate
# --inclusive=yes`. Needs nginx (nginx-light), wrk and valgrind.
set -euo pipefail
cd "$(dirname "$0")/.."
BINS=("$@")
[ ${#BINS[@]} -gt 0 ] || BINS=("$PWD/target/release/flotilla")
for tool in nginx wrk valgrind callgrind_control; do
  command -v "$tool" >/dev/null || { echo "missing: $tool (apt-get install nginx-light wrk valgrind)" >&2; exit 1; }
done
UPSTREAM=127.0.0.1:18910
REGISTRY=127.0.0.1:18911
GATEWAY=127.0.0.1:18912
IDP=127.0.0.1:18913
DIR=$(mktemp -d)
OUT=$PWD/target/callgrind
mkdir -p "$OUT"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$DIR/upstream.pid" ] && kill "$(cat "$DIR/upstream.pid")" 2>/dev/null || true
  sleep 0.3
  rm -rf "$DIR"
}
trap cleanup EXIT

wait_for() { # url tries
  for _ in $(seq 1 "$2"); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.2
  done
  echo "no answer from $1" >&2
  return 1
}

cat >"$DIR/upstream.conf" <<CONF
worker_processes 1;
pid $DIR/upstream.pid;
error_log $DIR/upstream-error.log;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen $UPSTREAM; location / { return 200 "ok"; } }
}
CONF
nginx -c "$DIR/upstream.conf" -p "$DIR"

for BIN in "${BINS[@]}"; do
  [ -x "$BIN" ] || { echo "missing: $BIN (cargo build --release)" >&2; exit 1; }
  FLOTILLA_TTL_MS=86400000 FLOTILLA_LOG_FORMAT=json "$BIN" run registry --listen "$REGISTRY" \
    --data-dir "$DIR/data" >"$DIR/registry.log" 2>&1 &
  registry=$!
  PIDS+=("$registry")
  wait_for "http://$REGISTRY/readyz" 100
  curl -fsS -X PUT "http://$REGISTRY/v1/registry/instances/upstream-1" \
    -H 'content-type: application/json' \
    -d "{\"service\":\"order\",\"address\":\"$UPSTREAM\",\"ttl_ms\":86400000}" >/dev/null
  curl -fsS -X PUT "http://$REGISTRY/v1/registry/instances/upstream-2" \
    -H 'content-type: application/json' \
    -d "{\"service\":\"inventory\",\"address\":\"$UPSTREAM\",\"ttl_ms\":86400000}" >/dev/null
  "$BIN" run idp --listen "$IDP" --data-dir "$DIR/data" >"$DIR/idp.log" 2>&1 &
  idp=$!
  PIDS+=("$idp")
  wait_for "http://$IDP/readyz" 100
  TOKEN=$("$BIN" token --user alice --data-dir "$DIR/data" 2>/dev/null | tail -n 1)
  AUTH=(-H "Authorization: Bearer $TOKEN")
  rm -f "$OUT"/callgrind.out.*
  FLOTILLA_IDENTITY__URL="http://$IDP" FLOTILLA_WORKERS=1 FLOTILLA_LOG_FORMAT=json valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$OUT/callgrind.out.%p" \
    "$BIN" run gateway --listen "$GATEWAY" --registry-url "http://$REGISTRY" \
    --data-dir "$DIR/data" >"$DIR/gateway.log" 2>&1 &
  gateway=$!
  PIDS+=("$gateway")
  wait_for "http://$GATEWAY/v1/products/x" 300
  wrk -t1 -c8 -d3s "${AUTH[@]}" "http://$GATEWAY/v1/orders/x" >/dev/null
  callgrind_control -i on "$gateway" >/dev/null 2>&1
  out=$(wrk -t1 -c8 -d8s "${AUTH[@]}" "http://$GATEWAY/v1/orders/x")
  callgrind_control -i off "$gateway" >/dev/null 2>&1
  callgrind_control -d "$gateway" >/dev/null 2>&1
  sleep 1
  kill "$gateway" "$registry" "$idp"
  wait "$gateway" "$registry" "$idp" 2>/dev/null || true
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  instructions=$(cat "$OUT"/callgrind.out.* | awk '/^totals:/ {t += $2} END {print t}')
  awk -v ir="$instructions" -v n="$requests" -v bin="$BIN" \
    'BEGIN { printf "%s: %d requests, %.0f instructions a request\n", bin, n, ir / n }'
done
