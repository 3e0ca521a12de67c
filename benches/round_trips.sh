#!/usr/bin/env bash
# Round-trip benchmark: `1 + 1` sync submissions through a gateway and 2 workers over RabbitMQ
# and PostgreSQL, with tracing off (no OTLP endpoint) and on (OTLP to a local sink), alternating
# ROUNDS times so both see the same machine noise; then `dalc up` (embedded default) alone.
# Prints each run and the medians. Figures only: nothing here asserts a timing.
#
#   benches/round_trips.sh            (needs RabbitMQ and PostgreSQL as for scripts/test.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
REQUESTS=${REQUESTS:-3000}
CONCURRENCY=${CONCURRENCY:-16}
PG=${DALC_TEST_POSTGRES_URL:-postgres://postgres:postgres@127.0.0.1:5432}
AMQP=${DALC_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}

cargo build --release -q --bin dalc
cargo build --release -q -p dalc-cli --example otlp_sink
DALC=target/release/dalc
WORK=$(mktemp -d)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

target/release/examples/otlp_sink 127.0.0.1:4399 > "$WORK/sink.log" &
PIDS+=("$!")

wait_for_line() { # file prefix -> address
  for _ in $(seq 1 200); do
    line=$(grep -m1 "$2" "$1" 2>/dev/null || true)
    if [ -n "$line" ]; then echo "${line#"$2"}"; return; fi
    sleep 0.05
  done
  echo "no '$2' in $1" >&2; exit 1
}

run_distributed() { # label, extra env...
  local label=$1; shift
  local db="dalc_bench_$RANDOM$RANDOM" prefix="bench-$RANDOM."
  psql "$PG/postgres" -qc "CREATE DATABASE $db" >/dev/null
  local common=(DALC_DATABASE_URL="$PG/$db" DALC_AMQP_URL="$AMQP" DALC_QUEUE_PREFIX="$prefix" DALC_LOG=warn "$@")
  env "${common[@]}" OTEL_SERVICE_NAME=bench-gateway "$DALC" gateway --listen 127.0.0.1:0 --http-listen off > "$WORK/gw.out" 2>/dev/null &
  local gw=$!
  local addr; addr=$(wait_for_line "$WORK/gw.out" "dalc gateway listening on ")
  env "${common[@]}" "$DALC" worker --concurrency 8 >/dev/null 2>&1 &
  local w1=$!
  env "${common[@]}" "$DALC" worker --concurrency 8 >/dev/null 2>&1 &
  local w2=$!
  sleep 1
  echo "--- $label"
  "$DALC" bench "1 + 1" --requests "$REQUESTS" --concurrency "$CONCURRENCY" --addr "http://$addr" | tee -a "$WORK/$label.txt"
  kill -TERM $gw $w1 $w2; wait $gw $w1 $w2 2>/dev/null || true
  psql "$PG/postgres" -qc "DROP DATABASE $db WITH (FORCE)" >/dev/null
}

for _ in $(seq 1 "$ROUNDS"); do
  run_distributed tracing-off
  run_distributed tracing-on OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4399
done

echo "--- embedded (dalc up, SQLite + in-process queue)"
(cd "$WORK" && "$OLDPWD/$DALC" up --listen 127.0.0.1:0 --http-listen off > up.out 2>/dev/null) &
UP=$!
PIDS+=("$UP")
addr=$(wait_for_line "$WORK/up.out" "dalc gateway listening on ")
for _ in $(seq 1 "$ROUNDS"); do
  "$DALC" bench "1 + 1" --requests "$REQUESTS" --concurrency "$CONCURRENCY" --addr "http://$addr" | tee -a "$WORK/embedded.txt"
done

python3 - "$WORK" <<'PY'
import re, statistics, sys, pathlib
work = pathlib.Path(sys.argv[1])
print("\n=== medians")
rows = {}
for label in ["tracing-off", "tracing-on", "embedded"]:
    text = (work / f"{label}.txt").read_text()
    tput = [float(x) for x in re.findall(r"([\d.]+) tasks/s", text)]
    p50 = [float(x) for x in re.findall(r"p50 ([\d.]+) ms", text)]
    p99 = [float(x) for x in re.findall(r"p99 ([\d.]+) ms", text)]
    rows[label] = (statistics.median(tput), statistics.median(p50), statistics.median(p99))
    print(f"{label:12} {rows[label][0]:8.0f} tasks/s   p50 {rows[label][1]:6.2f} ms   p99 {rows[label][2]:6.2f} ms   ({len(tput)} runs)")
off, on = rows["tracing-off"], rows["tracing-on"]
print(f"tracing on/off: throughput x{on[0]/off[0]:.3f}, p50 x{on[1]/off[1]:.3f}")
PY
echo "spans received by the sink: $(tail -1 "$WORK/sink.log" 2>/dev/null || echo '?')"
