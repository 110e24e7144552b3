# Shell functions the bench scripts share; source it (`source "$(dirname "$0")/lib.sh"`).

scratch() { # a new data directory in $DIR; on exit, the system serving its gateway on $PORT is
  # stopped (not waited for) and $DIR removed
  DIR=$(mktemp -d)
  trap 'pkill -f "up --gateway-port $PORT" || true; rm -rf "$DIR"' EXIT
}

stop_system() { # PORT: stop the `flotilla up` serving its gateway on PORT, if any, and wait (at
  # most 20 s) until it is gone (it removes its registry.url last)
  pkill -f "up --gateway-port $1" || true
  for _ in $(seq 1 100); do
    pgrep -f "up --gateway-port $1" >/dev/null || break
    sleep 0.2
  done
}

wait_ready() { # PORT: wait (at most 30 s) until the gateway on PORT serves a product; fails past it
  for _ in $(seq 1 150); do
    curl -sf "http://127.0.0.1:$1/v1/products/CB-005" >/dev/null && return 0
    sleep 0.2
  done
  return 1
}
