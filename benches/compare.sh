#!/usr/bin/env bash
# dalc against its floor, in one run on one machine: the floor is a minimal request/reply
# echo over RabbitMQ with the broker guarantees dalc's task path uses (durable queue,
# persistent messages, publisher confirms, a reply queue), written in this repository
# (services/cli/examples/rpc_floor.rs). Rounds alternate every scenario so that all of them
# see the same machine noise; the table gives the medians of the rounds, dalc's figure, the
# floor's, their ratio and the target. Figures only: nothing here fails on a timing.
#
#   benches/compare.sh                     (needs RabbitMQ and PostgreSQL as for scripts/test.sh)
#   ROUNDS=1 TOTAL=3000 TOTAL_ASYNC=5000 benches/compare.sh      (a quick look)
#
# Knobs (environment):
#   ROUNDS=3              rounds of every scenario
#   TOTAL=20000           tasks per sync run at 64 in flight
#   TOTAL_SERIAL=TOTAL/10 tasks per sync run at 1 in flight (at least 300)
#   DURATION=             e.g. 10s: every sync run lasts this long instead (overrides both)
#   TOTAL_ASYNC=20000     tasks of the async run (submit all, then wait for all); the issue's
#                         100000 takes about a minute and a half per round on 2 cores
#   WORKER_CONCURRENCY=32 each worker's --concurrency, and the floor's prefetch per consumer
#   WARMUP=200            uncounted calls before every run
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

ROUNDS=${ROUNDS:-3}
TOTAL=${TOTAL:-20000}
TOTAL_SERIAL=${TOTAL_SERIAL:-$((TOTAL / 10 > 300 ? TOTAL / 10 : 300))}
DURATION=${DURATION:-}
TOTAL_ASYNC=${TOTAL_ASYNC:-20000}
WORKER_CONCURRENCY=${WORKER_CONCURRENCY:-32}
WARMUP=${WARMUP:-200}
PG=${DALC_TEST_POSTGRES_URL:-postgres://postgres:postgres@127.0.0.1:5432}
AMQP=${DALC_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_for_port() {
  local port=$1 what=$2
  for _ in $(seq 1 120); do
    port_open "$port" && return 0
    sleep 1
  done
  die "$what did not open port $port within 2 minutes"
}
pg() { PGPASSWORD=postgres PGCONNECT_TIMEOUT=5 psql "$PG/postgres" -qtAc "$1"; }

# RabbitMQ and PostgreSQL: started when installed but stopped, as scripts/test.sh does
# (which also installs them; run it once on a fresh machine).
if ! port_open 5672; then
  command -v rabbitmq-server >/dev/null || die "RabbitMQ is not running on 5672 nor installed: run scripts/test.sh once"
  log "starting RabbitMQ"
  rabbitmq-server -detached >/dev/null 2>&1 || true
  wait_for_port 5672 RabbitMQ
  rabbitmqctl -q await_startup >/dev/null 2>&1 || true
fi
if ! port_open 5432; then
  ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || die "PostgreSQL is not running on 5432 nor installed: run scripts/test.sh once"
  log "starting PostgreSQL"
  version=$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -1)
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
  wait_for_port 5432 PostgreSQL
fi
command -v python3 >/dev/null || die "python3 is needed for the table"

log "cargo build --release (dalc and the floor)"
cargo build --release -q --bin dalc --example rpc_floor -p dalc-cli
DALC=$ROOT/target/release/dalc
FLOOR=$ROOT/target/release/examples/rpc_floor

WORK=$(mktemp -d)
DB="dalc_bench_$RANDOM$RANDOM"
PREFIX="bench-$RANDOM$RANDOM."
PIDS=()
DB_CREATED=
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "$DB_CREATED" ]; then pg "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null || true; fi
  # The durable queues of this run's prefix (the gateway's reply queues expire by themselves).
  if command -v rabbitmqctl >/dev/null; then
    local queue
    for queue in $(rabbitmqctl -q list_queues name 2>/dev/null | grep -F "$PREFIX" || true); do
      rabbitmqctl -q delete_queue "$queue" >/dev/null 2>&1 || true
    done
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

wait_for_line() { # file prefix -> the rest of the first line that starts with prefix
  for _ in $(seq 1 600); do
    local line
    line=$(grep -m1 "^$2" "$1" 2>/dev/null || true)
    if [ -n "$line" ]; then echo "${line#"$2"}"; return; fi
    sleep 0.05
  done
  cat "${1%.out}.err" >&2 2>/dev/null || true
  die "no '$2' in $1"
}

log "database $DB, queue prefix $PREFIX"
pg "CREATE DATABASE $DB" >/dev/null
DB_CREATED=1
STACK=(DALC_DATABASE_URL="$PG/$DB" DALC_AMQP_URL="$AMQP" DALC_QUEUE_PREFIX="$PREFIX" DALC_LOG=warn)

log "starting a gateway, 2 workers (--concurrency $WORKER_CONCURRENCY) and a dalc up"
env "${STACK[@]}" "$DALC" gateway --listen 127.0.0.1:0 >"$WORK/gateway.out" 2>"$WORK/gateway.err" &
GATEWAY=$!
PIDS+=("$GATEWAY")
GATEWAY_URL="http://$(wait_for_line "$WORK/gateway.out" "dalc gateway listening on ")"
WORKERS=()
for n in 1 2; do
  env "${STACK[@]}" "$DALC" worker --concurrency "$WORKER_CONCURRENCY" >"$WORK/worker$n.out" 2>"$WORK/worker$n.err" &
  WORKERS+=("$!")
  PIDS+=("$!")
done
mkdir "$WORK/up"
# Its defaults: SQLite in its own directory, the in-process queue.
(cd "$WORK/up" && exec env -u DALC_DATABASE_URL -u DALC_AMQP_URL DALC_LOG=warn "$DALC" up --listen 127.0.0.1:0 >up.out 2>up.err) &
UP=$!
PIDS+=("$UP")
UP_URL="http://$(wait_for_line "$WORK/up/up.out" "dalc gateway listening on ")"

if [ -n "$DURATION" ]; then
  SIZE=(--duration "$DURATION")
  SIZE_SERIAL=(--duration "$DURATION")
else
  SIZE=(--total "$TOTAL")
  SIZE_SERIAL=(--total "$TOTAL_SERIAL")
fi
FLOOR_ARGS=(--amqp-url "$AMQP" --workers 2 --prefetch "$WORKER_CONCURRENCY" --warmup "$WARMUP" --json)
BENCH_ARGS=(bench --warmup "$WARMUP" --json)

RESULTS=$WORK/results.jsonl
round=0
measure() { # scenario command... : one JSON report into $RESULTS
  local scenario=$1 out status=0
  shift
  log "round $round/$ROUNDS: $scenario"
  out=$("$@") || status=$?
  if [ -z "$out" ]; then
    die "$scenario printed no report (exit $status)"
  fi
  [ "$status" = 0 ] || log "$scenario reported errors (exit $status); they are in the table"
  printf '{"scenario":"%s","round":%d,"report":%s}\n' "$scenario" "$round" "$out" >>"$RESULTS"
}

STARTED=$SECONDS
for round in $(seq 1 "$ROUNDS"); do
  measure floor-64 "$FLOOR" --concurrency 64 "${SIZE[@]}" "${FLOOR_ARGS[@]}"
  measure dalc-sync-64 "$DALC" "${BENCH_ARGS[@]}" --addr "$GATEWAY_URL" --concurrency 64 "${SIZE[@]}"
  measure dalc-sync-1 "$DALC" "${BENCH_ARGS[@]}" --addr "$GATEWAY_URL" --concurrency 1 "${SIZE_SERIAL[@]}"
  measure floor-1 "$FLOOR" --concurrency 1 "${SIZE_SERIAL[@]}" "${FLOOR_ARGS[@]}"
  measure up-sync-64 "$DALC" "${BENCH_ARGS[@]}" --addr "$UP_URL" --concurrency 64 "${SIZE[@]}"
  measure dalc-async "$DALC" "${BENCH_ARGS[@]}" --addr "$GATEWAY_URL" --mode async --concurrency 64 --total "$TOTAL_ASYNC"
done
ELAPSED=$((SECONDS - STARTED))

peak_rss_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
RSS="gateway=$(peak_rss_kib "$GATEWAY") worker1=$(peak_rss_kib "${WORKERS[0]}") worker2=$(peak_rss_kib "${WORKERS[1]}") up=$(peak_rss_kib "$UP")"

CPU=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
RABBITMQ=$(rabbitmq-diagnostics -q server_version 2>/dev/null || dpkg-query -W -f '${Version}' rabbitmq-server 2>/dev/null || echo unknown)
POSTGRES=$(pg 'show server_version' 2>/dev/null || echo unknown)
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain 2>/dev/null)" ]; then COMMIT="$COMMIT+changes"; fi

echo
echo "machine: $(nproc) cores, ${CPU:-unknown CPU}; RabbitMQ $RABBITMQ; PostgreSQL $POSTGRES; dalc $COMMIT"
if [ -n "$DURATION" ]; then
  echo "runs: $ROUNDS rounds; sync runs of $DURATION each; async $TOTAL_ASYNC tasks; workers --concurrency $WORKER_CONCURRENCY; $ELAPSED s of measuring"
else
  echo "runs: $ROUNDS rounds; sync $TOTAL tasks at 64 in flight, $TOTAL_SERIAL at 1; async $TOTAL_ASYNC tasks; workers --concurrency $WORKER_CONCURRENCY; $ELAPSED s of measuring"
fi
echo "everything shares the machine: the load tools, gateway, workers, dalc up, RabbitMQ, PostgreSQL"
echo
python3 - "$RESULTS" "$RSS" "$TOTAL_ASYNC" <<'PY'
import json, statistics, sys

results, rss, total_async = sys.argv[1], sys.argv[2], int(sys.argv[3])
runs = {}
with open(results) as lines:
    for line in lines:
        run = json.loads(line)
        runs.setdefault(run["scenario"], []).append(run["report"])

def median(scenario, *path):
    values = []
    for report in runs.get(scenario, []):
        for key in path:
            report = report[key]
        values.append(float(report))
    return statistics.median(values) if values else float("nan")

def rate(value):
    return f"{value:,.0f}/s"

def ms(value):
    return f"{value:.2f} ms"

rows = []
def row(name, dalc, floor, show, ratio_text, target, met):
    rows.append((name, show(dalc), show(floor) if floor is not None else "—", ratio_text, target,
                 "—" if met is None else ("yes" if met else "no")))

d, f = median("dalc-sync-64", "throughput"), median("floor-64", "throughput")
row("sync, 64 in flight: throughput", d, f, rate, f"{d / f:.0%}", "≥ 60 % of floor", d / f >= 0.60)
d, f = median("dalc-sync-64", "latency_ms", "p99"), median("floor-64", "latency_ms", "p99")
row("sync, 64 in flight: p99", d, f, ms, f"{d / f:.2f}×", "≤ 2× floor", d / f <= 2)
d, f = median("dalc-sync-1", "latency_ms", "p50"), median("floor-1", "latency_ms", "p50")
row("sync, 1 in flight: p50", d, f, ms, f"{d / f:.2f}×", "≤ 3× floor", d / f <= 3)
d, f = median("dalc-async", "completion_throughput"), median("floor-64", "throughput")
row(f"async, {total_async:,} tasks: completion rate", d, f, rate, f"{d / f:.0%}",
    "≥ 70 % of floor (64 in flight)", d / f >= 0.70)
d = median("dalc-async", "submit_throughput")
row(f"async, {total_async:,} tasks: submit rate", d, None, rate, "—", "—", None)
d = median("up-sync-64", "throughput")
row("`dalc up`, sync 64 in flight: throughput", d, None, rate, "—", "≥ 15,000/s", d >= 15000)
d = median("up-sync-64", "latency_ms", "p99")
row("`dalc up`, sync 64 in flight: p99", d, None, ms, "—", "—", None)
peaks = dict(part.split("=") for part in rss.split())
for name, label in [("gateway", "gateway"), ("worker1", "worker 1"), ("worker2", "worker 2"), ("up", "`dalc up`")]:
    kib = int(peaks.get(name, "0") or 0)
    rows.append((f"{label}: peak RSS (VmHWM)", f"{kib / 1024:.0f} MiB" if kib else "?", "—", "—", "—", "—"))

header = ("scenario", "dalc", "floor", "dalc/floor", "target", "met")
print("| " + " | ".join(header) + " |")
print("|" + "|".join("---" for _ in header) + "|")
for r in rows:
    print("| " + " | ".join(r) + " |")

errors = {}
for scenario, reports in runs.items():
    for report in reports:
        for kind, count in report["errors"].items():
            errors[f"{scenario}: {kind}"] = errors.get(f"{scenario}: {kind}", 0) + count
print()
if errors:
    print("errors (all rounds): " + ", ".join(f"{k} {v}" for k, v in sorted(errors.items())))
else:
    print(f"every answer checked and right: {sum(len(r) for r in runs.values())} runs, 0 errors")
PY
