#!/usr/bin/env bash
# The saga benchmark matrix: for each transport (embedded, NATS JetStream) and saga style
# (orchestration, choreography), a fresh system (`flotilla up`, release build) takes orders
# through the gateway at RATE a second for DURATION seconds, each client waiting for its saga
# (`Prefer: wait`); then, on another fresh system, the same load without waiting (sustained
# rate). Prints one markdown row per combination: completed sagas/s, p50 and p99 time to final
# state, the sustained rate, database commits per saga (the services' commit counters) and
# fsyncs per saga (every fsync/fdatasync on the machine, counted with `perf stat`, when perf is
# there).
#
#   cargo build --release && scripts/bench-sagas.sh [RATE] [DURATION] [SUSTAINED_RATE]
#
# NATS must listen on 127.0.0.1:4222 for its rows; each run uses a stream of its own, BENCH<n>,
# deleted afterwards (through JetStream's API, with python3).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."
BIN=target/release/flotilla
RATE=${1:-200}
DURATION=${2:-10}
SUSTAINED=${3:-400}
PORT=18181
scratch

start() { # start a fresh system with the given environment
  stop_system "$PORT"
  rm -rf "$DIR" && mkdir -p "$DIR"
  env "$@" "$BIN" up --gateway-port "$PORT" --data-dir "$DIR" >"$DIR.log" 2>&1 &
  wait_ready "$PORT" && return 0
  echo "the system did not start: $(tail -5 "$DIR.log")" >&2
  exit 1
}

delete_stream() { # JetStream's $JS.API.STREAM.DELETE.<name>, over the plain NATS protocol
  python3 - "$1" <<'PY' || echo "could not delete NATS stream $1" >&2
import socket, sys, time
s = socket.create_connection(("127.0.0.1", 4222), timeout=5)
s.recv(4096)
s.sendall(b'CONNECT {"verbose":false}\r\nPUB $JS.API.STREAM.DELETE.%s 0\r\n\r\nPING\r\n' % sys.argv[1].encode())
time.sleep(0.3)
PY
}

commits() { # every commit the four services counted so far
  for address in $(FLOTILLA_DATA_DIR=$DIR "$BIN" status --json |
    jq -r '.services | to_entries[] | select(.key | test("^(order|inventory|payment|shipping)$")) | .value[].address'); do
    curl -s "http://$address/metrics"
  done | awk '
    /^(messaging_inbox_commits_total|messaging_outbox_mark_commits_total|eventstore_projection_commits_total)/ { s += $NF }
    /^http_server_requests_total\{/ && /method="POST"/ && /route="\/v1\/orders"/ { s += $NF }
    END { print s + 0 }'
}

fsyncs() { # fsync + fdatasync calls on the machine while "$@" runs; the command's output to $DIR.out
  if command -v perf >/dev/null && perf stat -a -e syscalls:sys_enter_fsync true >/dev/null 2>&1; then
    perf stat -a -x, -e syscalls:sys_enter_fsync -e syscalls:sys_enter_fdatasync -o "$DIR.perf" -- "$@" >"$DIR.out"
    awk -F, '/sys_enter_f/ { s += $1 } END { print s + 0 }' "$DIR.perf"
  else
    "$@" >"$DIR.out"
    echo "n/a"
  fi
}

echo "| transport | style | offered/s | completed sagas/s | p50 ms | p99 ms | sustained sagas/s (at ${SUSTAINED}/s offered) | commits per saga | fsyncs per saga |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for transport in embedded nats; do
  for style in orchestration choreography; do
    env=(A=1)
    if [ "$transport" = nats ]; then
      unique=$(date +%s%N)
      env=(FLOTILLA_MESSAGING__TRANSPORT=nats "FLOTILLA_MESSAGING__NATS_STREAM=BENCH$unique" "FLOTILLA_MESSAGING__NATS_SUBJECT_PREFIX=bench$unique")
    fi
    start "${env[@]}"
    before=$(commits)
    synced=$(fsyncs "$BIN" bench orders --gateway "http://127.0.0.1:$PORT" --rate "$RATE" --duration "$DURATION" --style "$style" --json)
    sleep 1 # the last notifications and projections
    after=$(commits)
    read -r completed persecond p50 p99 < <(jq -r '"\(.completed) \(.sagas_per_second) \(.p50_ms) \(.p99_ms)"' "$DIR.out")
    per() { if [ "$2" = n/a ] || [ "$completed" = 0 ]; then echo n/a; else echo "scale=1; $2 / $completed" | bc; fi; }
    start "${env[@]}"
    sustained=$("$BIN" bench orders --gateway "http://127.0.0.1:$PORT" --rate "$SUSTAINED" --duration "$DURATION" --style "$style" --sustained "$DIR" --json | jq -r '.sagas_per_second')
    if [ "$transport" = nats ]; then
      pkill -f "up --gateway-port $PORT" || true
      while pgrep -f "up --gateway-port $PORT" >/dev/null; do sleep 0.2; done
      delete_stream "BENCH$unique"
    fi
    printf '| %s | %s | %s | %.0f | %.1f | %.1f | %.0f | %s | %s |\n' "$transport" "$style" "$RATE" "$persecond" "$p50" "$p99" "$sustained" \
      "$(per commits $((after - before)))" "$(per fsyncs "$synced")"
  done
done
