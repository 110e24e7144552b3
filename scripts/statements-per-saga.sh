#!/usr/bin/env bash
# Database round trips per saga, per service: a fresh system (`flotilla up`, release build) with
# sqlx's statement log and the kit's direct-call log on takes 200 orders at 100/s without
# waiting (`--sustained`), is stopped as soon as the last saga has ended, and what each service
# logged is counted and divided by 200 (the start-up's migrations and the idle polls of those
# seconds included: a few per saga): statements through sqlx (one round trip to its worker
# thread each) and direct calls (`flotilla_sqlite::direct`: one round trip each, however
# many statements run in it). BEGIN and COMMIT are round trips sqlx does not log. With `--top`,
# the order service's sqlx statements most run, by text.
#
#   cargo build --release && scripts/statements-per-saga.sh [orchestration|choreography] [--top]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/flotilla}
STYLE=${1:-orchestration}
PORT=18182
DIR=$(mktemp -d)
trap 'pkill -f "up --gateway-port $PORT" || true; rm -rf "$DIR" "$DIR.log"' EXIT
RUST_LOG=info,sqlx::query=debug,flotilla_sqlite::direct=debug "$BIN" up --gateway-port "$PORT" --data-dir "$DIR" >"$DIR.log" 2>&1 &
for _ in $(seq 1 150); do
  curl -sf "http://127.0.0.1:$PORT/v1/products/CB-005" >/dev/null && break
  sleep 0.2
done
"$BIN" bench orders --gateway "http://127.0.0.1:$PORT" --rate 100 --duration 2 --style "$STYLE" --sustained "$DIR"
pkill -f "up --gateway-port $PORT"
while pgrep -f "up --gateway-port $PORT" >/dev/null; do sleep 0.2; done
for service in order inventory payment shipping; do
  count=$(grep -E "^ *$service \|" "$DIR.log" | grep -c 'sqlx::query' || true)
  direct=$(grep -E "^ *$service \|" "$DIR.log" | grep -c 'direct SQLite call' || true)
  echo "$service: $(echo "scale=1; $count / 200" | bc) sqlx statements and $(echo "scale=1; $direct / 200" | bc) direct calls per saga"
done
if [ "${2:-}" = --top ]; then
  grep -E '^ *order \|' "$DIR.log" | grep 'sqlx::query' | grep -o 'db.statement="[^"]*"' |
    sed 's/\\n/ /g; s/  */ /g' | sort | uniq -c | sort -rn | head -20 | cut -c1-160
fi
