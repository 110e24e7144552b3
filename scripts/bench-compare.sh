#!/usr/bin/env bash
# Two builds side by side, alternating: for ROUNDS rounds, each binary in turn gets a fresh
# system (`flotilla up` on an empty data directory) and `flotilla bench orders --rate RATE
# --duration DURATION` in each saga style, every client waiting for its saga. Prints one line
# per run (round, build, style, completed sagas/s, p50, p99), so that a change is judged against
# the other build measured minutes apart on the same machine, not against an old figure.
#
#   scripts/bench-compare.sh BEFORE_BINARY AFTER_BINARY [ROUNDS] [RATE] [DURATION]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
BEFORE=$1
AFTER=$2
ROUNDS=${3:-3}
RATE=${4:-500}
DURATION=${5:-10}
PORT=18282
scratch

run() { # binary style
  local bin=$1 style=$2
  stop_system "$PORT"
  rm -rf "$DIR" && mkdir -p "$DIR"
  "$bin" up --gateway-port "$PORT" --data-dir "$DIR" >"$DIR.log" 2>&1 &
  wait_ready "$PORT" || true
  "$bin" bench orders --gateway "http://127.0.0.1:$PORT" --rate "$RATE" --duration "$DURATION" \
    --style "$style" --json
  pkill -f "up --gateway-port $PORT" || true
}

echo "round build style sagas_per_s p50_ms p99_ms failed"
for round in $(seq 1 "$ROUNDS"); do
  for build in before after; do
    bin=$BEFORE
    [ "$build" = after ] && bin=$AFTER
    for style in orchestration choreography; do
      run "$bin" "$style" | jq -r --arg r "$round" --arg b "$build" --arg s "$style" \
        '"\($r) \($b) \($s) \(.sagas_per_second) \(.p50_ms) \(.p99_ms) \(.failed)"'
    done
  done
done
