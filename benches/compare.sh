#!/usr/bin/env bash
# dalc against its floor, in one run on one machine: the floor is a minimal request/reply
# echo over RabbitMQ with the broker guarantees dalc's task path uses (durable queue,
# persistent messages, publisher confirms, a reply queue), written in this repository
# (services/cli/examples/rpc_floor.rs). Rounds alternate every scenario so that all of them
# see the same machine noise; the table gives the medians of the rounds, dalc's figure, the
# floor's, their ratio and the target. Figures only: nothing here fails on a timing. One more
# row, for information: dalc against the same floor sending what a task message must carry
# (`rpc_floor --task-messages`: a priority queue and a priority, a TTL, mandatory, a message
# id, a header table). And a second floor, for information too: the same echo paying for the
# two durable writes dalc's guarantees put on every task (`rpc_floor --database`: each
# request's row committed before it is published, its result before the reply, group
# committed as dalc's writers commit), so that dalc's own cost shows apart from what any
# implementation of its contract must pay on this machine. And the floor of the whole sync
# path, loaded by `dalc bench` as dalc is: `rpc_floor --serve --database --task-messages`
# answers dalc's SubmitTask over gRPC with one such round trip (a task message, its two
# durable writes), in one process with nothing else of dalc's. The 64-in-flight runs of the
# floors and of dalc also report the CPU each process used per round trip (benches/cpu_of.py):
# where the time goes.
#
# After the rounds, two more measurements of the gateway + 2 workers stack:
#   memory: both workers are paused (SIGSTOP) while WAITING sync calls are made, so that the
#     gateway holds them all; its RSS is read then, the workers resume, every call must end
#     right. The workers' peak RSS is read at the end of the whole run.
#   size: GetTask (`dalc bench --mode get`) and sync runs on an empty table, then again after
#     SIZE_ROWS finished tasks are inserted straight into PostgreSQL.
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
#                         100000 took 30–95 s a round on 2 cores
#   WORKER_CONCURRENCY=32 each worker's --concurrency, and the floor's prefetch per consumer
#   WARMUP=200            uncounted calls before every run
#   MEMORY=1              0 skips the memory measurement
#   WAITING=5000          sync calls the gateway holds in it
#   SIZE=1                0 skips the size measurement
#   SIZE_ROWS=1000000     finished tasks inserted before its second half
#   SIZE_TOTAL=TOTAL      tasks per run in it (get: tasks read, sync: tasks submitted), at 64
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
MEMORY=${MEMORY:-1}
WAITING=${WAITING:-5000}
SIZE=${SIZE:-1}
SIZE_ROWS=${SIZE_ROWS:-1000000}
SIZE_TOTAL=${SIZE_TOTAL:-$TOTAL}
PG=${DALC_TEST_POSTGRES_URL:-postgres://postgres:postgres@127.0.0.1:5432}
AMQP=${DALC_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}

# shellcheck source=scripts/services.sh
source scripts/services.sh
pg() { PGPASSWORD=postgres PGCONNECT_TIMEOUT=5 psql "$PG/postgres" -qtAc "$1"; }
pg_bench() { PGPASSWORD=postgres PGCONNECT_TIMEOUT=5 psql "$PG/$DB" -v ON_ERROR_STOP=1 -qtAc "$1"; }

# RabbitMQ and PostgreSQL: started (or installed) exactly as for the tests.
ensure_rabbitmq
ensure_postgres
command -v python3 >/dev/null || die "python3 is needed for the table"

log "cargo build --release (dalc and the floor)"
cargo build --release -q --bin dalc --example rpc_floor -p dalc-cli
DALC=$ROOT/target/release/dalc
FLOOR=$ROOT/target/release/examples/rpc_floor

WORK=$(mktemp -d)
DB="dalc_bench_$RANDOM$RANDOM"
PREFIX="bench-$RANDOM$RANDOM."
PIDS=()
HOLD=
DB_CREATED=
cleanup() {
  local pid
  if [ -n "$HOLD" ]; then kill -TERM "$HOLD" 2>/dev/null || true; fi
  # A worker paused by the memory measurement must run again to act on SIGTERM.
  for pid in "${PIDS[@]}"; do kill -CONT "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  if [ -n "$HOLD" ]; then wait "$HOLD" 2>/dev/null || true; fi
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
env "${STACK[@]}" "$DALC" gateway --listen 127.0.0.1:0 --http-listen off --metrics-listen 127.0.0.1:0 >"$WORK/gateway.out" 2>"$WORK/gateway.err" &
GATEWAY=$!
PIDS+=("$GATEWAY")
GATEWAY_URL="http://$(wait_for_line "$WORK/gateway.out" "dalc gateway listening on ")"
GATEWAY_METRICS="http://$(wait_for_line "$WORK/gateway.out" "dalc metrics listening on ")/metrics"
WORKERS=()
for n in 1 2; do
  env "${STACK[@]}" "$DALC" worker --concurrency "$WORKER_CONCURRENCY" >"$WORK/worker$n.out" 2>"$WORK/worker$n.err" &
  WORKERS+=("$!")
  PIDS+=("$!")
done
mkdir "$WORK/up"
# Its defaults: SQLite in its own directory, the in-process queue.
(cd "$WORK/up" && exec env -u DALC_DATABASE_URL -u DALC_AMQP_URL DALC_LOG=warn "$DALC" up --listen 127.0.0.1:0 --http-listen off >up.out 2>up.err) &
UP=$!
PIDS+=("$UP")
UP_URL="http://$(wait_for_line "$WORK/up/up.out" "dalc gateway listening on ")"
log "starting the floor of the whole path (rpc_floor --serve)"
"$FLOOR" --serve 127.0.0.1:0 --database "$PG/$DB" --task-messages --amqp-url "$AMQP" --workers 2 \
  --prefetch "$WORKER_CONCURRENCY" >"$WORK/path.out" 2>"$WORK/path.err" &
PATH_FLOOR=$!
PIDS+=("$PATH_FLOOR")
PATH_URL="http://$(wait_for_line "$WORK/path.out" "rpc_floor serving on ")"

if [ -n "$DURATION" ]; then
  RUN=(--duration "$DURATION")
  RUN_SERIAL=(--duration "$DURATION")
else
  RUN=(--total "$TOTAL")
  RUN_SERIAL=(--total "$TOTAL_SERIAL")
fi
FLOOR_ARGS=(--amqp-url "$AMQP" --workers 2 --prefetch "$WORKER_CONCURRENCY" --warmup "$WARMUP" --json)
BENCH_ARGS=(bench --warmup "$WARMUP" --json)

RESULTS=$WORK/results.jsonl
CPU_RESULTS=$WORK/cpu.jsonl
: >"$CPU_RESULTS"
round=0
step=
record() { # scenario exit-status report : the report, one JSON line, into $RESULTS
  local scenario=$1 status=$2 out=$3
  if [ -z "$out" ]; then
    die "$scenario printed no report (exit $status)"
  fi
  [ "$status" = 0 ] || log "$scenario reported errors (exit $status); they are in the table"
  printf '{"scenario":"%s","round":%d,"report":%s}\n' "$scenario" "$round" "$out" >>"$RESULTS"
}
measure() { # scenario command... : run it, record its report
  local scenario=$1 out status=0
  shift
  log "${step:-round $round/$ROUNDS}: $scenario"
  out=$("$@") || status=$?
  record "$scenario" "$status" "$out"
}
measure_cpu() { # scenario gateway-pids worker-pids command... : measure, with the CPU used
  local scenario=$1 gateways=$2 workers=$3
  shift 3
  rm -f "$WORK/cpu.json"
  measure "$scenario" python3 "$ROOT/benches/cpu_of.py" "$WORK/cpu.json" "$gateways" "$workers" -- "$@"
  if [ -s "$WORK/cpu.json" ]; then
    printf '{"scenario":"%s","round":%d,"cpu":%s}\n' "$scenario" "$round" "$(cat "$WORK/cpu.json")" >>"$CPU_RESULTS"
  else
    log "$scenario: no CPU figures (benches/cpu_of.py failed); the CPU table leaves this run out"
  fi
}

STARTED=$SECONDS
for round in $(seq 1 "$ROUNDS"); do
  measure_cpu floor-64 "" "" "$FLOOR" --concurrency 64 "${RUN[@]}" "${FLOOR_ARGS[@]}"
  measure floor-tasks-64 "$FLOOR" --task-messages --concurrency 64 "${RUN[@]}" "${FLOOR_ARGS[@]}"
  measure_cpu floor-db-64 "" "" "$FLOOR" --database "$PG/$DB" --concurrency 64 "${RUN[@]}" "${FLOOR_ARGS[@]}"
  measure_cpu path-floor-64 "$PATH_FLOOR" "" "$DALC" "${BENCH_ARGS[@]}" --addr "$PATH_URL" --concurrency 64 "${RUN[@]}"
  measure_cpu dalc-sync-64 "$GATEWAY" "$(IFS=,; echo "${WORKERS[*]}")" "$DALC" "${BENCH_ARGS[@]}" --addr "$GATEWAY_URL" --concurrency 64 "${RUN[@]}"
  measure dalc-sync-1 "$DALC" "${BENCH_ARGS[@]}" --addr "$GATEWAY_URL" --concurrency 1 "${RUN_SERIAL[@]}"
  measure floor-1 "$FLOOR" --concurrency 1 "${RUN_SERIAL[@]}" "${FLOOR_ARGS[@]}"
  measure path-floor-1 "$DALC" "${BENCH_ARGS[@]}" --addr "$PATH_URL" --concurrency 1 "${RUN_SERIAL[@]}"
  measure up-sync-64 "$DALC" "${BENCH_ARGS[@]}" --addr "$UP_URL" --concurrency 64 "${RUN[@]}"
  measure dalc-async "$DALC" "${BENCH_ARGS[@]}" --addr "$GATEWAY_URL" --mode async --concurrency 64 --total "$TOTAL_ASYNC"
done
ELAPSED=$((SECONDS - STARTED))

status_kib() { awk -v key="$2:" '$1 == key { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
gauge() { # metric name -> its value on the gateway's /metrics (empty when unreadable)
  python3 - "$GATEWAY_METRICS" "$1" 2>/dev/null <<'PY' || true
import sys, urllib.request
url, name = sys.argv[1], sys.argv[2]
for line in urllib.request.urlopen(url, timeout=2).read().decode().splitlines():
    parts = line.split()
    if len(parts) == 2 and parts[0] == name:
        print(int(float(parts[1])))
PY
}

# Memory: the gateway holding WAITING sync calls that cannot end yet (both workers paused).
MEM_HELD=0 MEM_RSS=0 MEM_HWM=0 MEM_HWM_RESET=0
GATEWAY_PEAK=$(status_kib "$GATEWAY" VmHWM) # before the memory step resets it
if [ "$MEMORY" != 0 ]; then
  step=memory round=1
  log "memory: workers paused, $WAITING sync calls held by the gateway"
  for pid in "${WORKERS[@]}"; do kill -STOP "$pid"; done
  # Resets the gateway's VmHWM, so that it gives the peak of the hold, not of the rounds.
  if { echo 5 >"/proc/$GATEWAY/clear_refs"; } 2>/dev/null; then MEM_HWM_RESET=1; fi
  # The calls ask the server to wait 115 s (the deadline less 5 s): far longer than the hold.
  # 100 calls per connection, as from many clients: the gateway's HTTP/2 server ends (GOAWAY,
  # ENHANCE_YOUR_CALM) one connection that opens thousands of streams at once.
  "$DALC" bench --mode sync --warmup 0 --json --addr "$GATEWAY_URL" --total "$WAITING" \
    --concurrency "$WAITING" --connections $(((WAITING + 99) / 100)) --deadline 120s \
    >"$WORK/memory.out" 2>"$WORK/memory.err" &
  HOLD=$!
  # Until the gateway holds every call (the dalc_waiting_calls gauge), at most 60 s.
  for _ in $(seq 1 300); do
    MEM_HELD=$(gauge dalc_waiting_calls)
    if [ "${MEM_HELD:-0}" -ge "$WAITING" ] || ! kill -0 "$HOLD" 2>/dev/null; then break; fi
    sleep 0.2
  done
  sleep 1 # the last calls in: let their allocations settle
  MEM_HELD=$(gauge dalc_waiting_calls)
  MEM_RSS=$(status_kib "$GATEWAY" VmRSS)
  MEM_HWM=$(status_kib "$GATEWAY" VmHWM)
  log "memory: gateway holds ${MEM_HELD:-?} calls, VmRSS $MEM_RSS kB, VmHWM $MEM_HWM kB; workers resumed"
  for pid in "${WORKERS[@]}"; do kill -CONT "$pid"; done
  status=0
  wait "$HOLD" || status=$?
  HOLD=
  record memory-hold "$status" "$(cat "$WORK/memory.out")"
fi

# Size: GetTask and sync on an empty table, then with SIZE_ROWS finished tasks in it. Rows
# only grow, so the two cannot alternate: empty, empty, fill, full, full; the table gives the
# medians (of 2) of each. "Empty" starts from an empty table (the rounds' tasks are
# truncated away) and holds only the size runs' own tasks.
SIZE_FILL_S=0
if [ "$SIZE" != 0 ]; then
  pg_bench "TRUNCATE tasks" >/dev/null
  round=0
  for phase in empty empty fill full full; do
    if [ "$phase" = fill ]; then
      log "size: inserting $SIZE_ROWS finished tasks"
      fill_started=$SECONDS
      pg_bench "INSERT INTO tasks (id, expression, status, result, created_at, started_at, finished_at, worker_id, attempts)
        SELECT gen_random_uuid(), '1 + 1', 'SUCCEEDED', '2', now(), now(), now(), 'bulk', 1
        FROM generate_series(1, $SIZE_ROWS)" >/dev/null
      pg_bench "ANALYZE tasks" >/dev/null
      SIZE_FILL_S=$((SECONDS - fill_started))
      round=0
      continue
    fi
    round=$((round + 1))
    step="size ($(pg_bench "SELECT count(*) FROM tasks") rows)"
    measure "size-get-$phase" "$DALC" "${BENCH_ARGS[@]}" --addr "$GATEWAY_URL" --mode get --concurrency 64 --total "$SIZE_TOTAL"
    measure "size-sync-$phase" "$DALC" "${BENCH_ARGS[@]}" --addr "$GATEWAY_URL" --concurrency 64 --total "$SIZE_TOTAL"
  done
fi

GATEWAY_HWM=$(status_kib "$GATEWAY" VmHWM)
RSS="gateway=$((GATEWAY_HWM > GATEWAY_PEAK ? GATEWAY_HWM : GATEWAY_PEAK)) worker1=$(status_kib "${WORKERS[0]}" VmHWM) worker2=$(status_kib "${WORKERS[1]}" VmHWM) up=$(status_kib "$UP" VmHWM)"

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
if [ "$MEMORY" != 0 ]; then
  echo "memory: workers paused while $WAITING sync calls (each waiting up to 115 s, 100 per connection) reach the gateway; its RSS read once they are held"
fi
if [ "$SIZE" != 0 ]; then
  echo "size: get and sync runs of $SIZE_TOTAL tasks at 64 in flight, twice from an empty table, then twice after inserting $SIZE_ROWS finished tasks ($SIZE_FILL_S s); medians of 2"
fi
echo "everything shares the machine: the load tools, gateway, workers, dalc up, RabbitMQ, PostgreSQL"
echo
env RSS="$RSS" TOTAL_ASYNC="$TOTAL_ASYNC" WAITING="$WAITING" SIZE_ROWS="$SIZE_ROWS" \
  MEM_HELD="${MEM_HELD:-0}" MEM_RSS="${MEM_RSS:-0}" MEM_HWM="${MEM_HWM:-0}" MEM_HWM_RESET="$MEM_HWM_RESET" \
  python3 - "$RESULTS" "$CPU_RESULTS" <<'PY'
import json, math, os, statistics, sys

env = os.environ
total_async, waiting, size_rows = int(env["TOTAL_ASYNC"]), int(env["WAITING"]), int(env["SIZE_ROWS"])
runs = {}
with open(sys.argv[1]) as lines:
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

def mib(kib):
    return f"{kib / 1024:.0f} MiB" if kib else "?"

rows = []
def row(name, dalc, base, show, ratio_text, target, met):
    if isinstance(met, bool) and any(isinstance(v, float) and math.isnan(v) for v in (dalc, base)):
        met = None
    rows.append((name, show(dalc), show(base) if base is not None else "—", ratio_text, target,
                 "—" if met is None else ("yes" if met else "no")))

d, f = median("dalc-sync-64", "throughput"), median("floor-64", "throughput")
row("sync, 64 in flight: throughput", d, f, rate, f"{d / f:.0%}", "≥ 60 % of floor", d / f >= 0.60)
d, f = median("dalc-sync-64", "throughput"), median("floor-tasks-64", "throughput")
row("sync, 64 in flight: throughput against the floor sending task messages", d, f, rate,
    f"{d / f:.0%}", "—", None)
d, f = median("dalc-sync-64", "throughput"), median("floor-db-64", "throughput")
row("sync, 64 in flight: throughput against the floor with dalc's two durable writes", d, f,
    rate, f"{d / f:.0%}", "—", None)
d, f = median("floor-db-64", "throughput"), median("floor-64", "throughput")
row("the floor with dalc's two durable writes, against the floor", d, f, rate, f"{d / f:.0%}",
    "—", None)
d, f = median("dalc-sync-64", "throughput"), median("path-floor-64", "throughput")
row("sync, 64 in flight: throughput against the floor of the whole path", d, f, rate,
    f"{d / f:.0%}", "—", None)
d, f = median("path-floor-64", "throughput"), median("floor-64", "throughput")
row("the floor of the whole path (gRPC in, a task message, two durable writes), against the floor",
    d, f, rate, f"{d / f:.0%}", "—", None)
d, f = median("dalc-sync-64", "latency_ms", "p99"), median("floor-64", "latency_ms", "p99")
row("sync, 64 in flight: p99", d, f, ms, f"{d / f:.2f}×", "≤ 2× floor", d / f <= 2)
d, f = median("path-floor-64", "latency_ms", "p99"), median("floor-64", "latency_ms", "p99")
row("the floor of the whole path: p99, against the floor", d, f, ms, f"{d / f:.2f}×", "—", None)
d, f = median("dalc-sync-1", "latency_ms", "p50"), median("floor-1", "latency_ms", "p50")
row("sync, 1 in flight: p50", d, f, ms, f"{d / f:.2f}×", "≤ 3× floor", d / f <= 3)
d, f = median("dalc-sync-1", "latency_ms", "p50"), median("path-floor-1", "latency_ms", "p50")
row("sync, 1 in flight: p50 against the floor of the whole path", d, f, ms, f"{d / f:.2f}×",
    "—", None)
d, f = median("path-floor-1", "latency_ms", "p50"), median("floor-1", "latency_ms", "p50")
row("the floor of the whole path: p50 at 1 in flight, against the floor", d, f, ms,
    f"{d / f:.2f}×", "—", None)
d, f = median("dalc-async", "completion_throughput"), median("floor-64", "throughput")
row(f"async, {total_async:,} tasks: completion rate", d, f, rate, f"{d / f:.0%}",
    "≥ 70 % of floor (64 in flight)", d / f >= 0.70)
d = median("dalc-async", "submit_throughput")
row(f"async, {total_async:,} tasks: submit rate", d, None, rate, "—", "—", None)
d = median("up-sync-64", "throughput")
row("`dalc up`, sync 64 in flight: throughput", d, None, rate, "—", "≥ 15,000/s", d >= 15000)
d = median("up-sync-64", "latency_ms", "p99")
row("`dalc up`, sync 64 in flight: p99", d, None, ms, "—", "—", None)

if "memory-hold" in runs:
    held, rss, hwm = int(env["MEM_HELD"] or 0), int(env["MEM_RSS"] or 0), int(env["MEM_HWM"] or 0)
    holding = f"{held:,}" if held >= waiting else f"{held:,} of {waiting:,}"
    peak = "peak of the hold" if env["MEM_HWM_RESET"] == "1" else "peak of the whole run"
    rows.append((f"gateway RSS holding {holding} waiting sync calls",
                 f"{mib(rss)} ({peak} {mib(hwm)})", "—", "—", "≤ 64 MiB",
                 "yes" if rss and rss <= 64 * 1024 and held >= waiting else "no"))

if "size-get-full" in runs:
    d, f = median("size-get-full", "latency_ms", "p99"), median("size-get-empty", "latency_ms", "p99")
    row(f"GetTask p99, {size_rows:,} tasks vs empty", d, f, ms, f"{d / f:.2f}×",
        "≤ 1.2× empty (within 20 %)", d / f <= 1.2)
    d, f = median("size-get-full", "throughput"), median("size-get-empty", "throughput")
    row(f"GetTask throughput, {size_rows:,} tasks vs empty", d, f, rate, f"{d / f:.0%}", "—", None)
    d, f = median("size-sync-full", "throughput"), median("size-sync-empty", "throughput")
    row(f"sync throughput, {size_rows:,} tasks vs empty", d, f, rate, f"{d / f:.0%}",
        "≥ 80 % of empty (within 20 %)", d / f >= 0.8)

peaks = {name: int(kib or 0) for name, kib in (part.split("=") for part in env["RSS"].split())}
workers = [peaks.get("worker1", 0), peaks.get("worker2", 0)]
rows.append(("worker peak RSS (VmHWM, whole run; the larger of 2)",
             f"{mib(max(workers))} ({mib(workers[0])}, {mib(workers[1])})", "—", "—", "≤ 32 MiB",
             "yes" if all(workers) and max(workers) <= 32 * 1024 else "no"))
for name, label in [("gateway", "gateway"), ("up", "`dalc up`")]:
    rows.append((f"{label}: peak RSS (VmHWM, whole run)", mib(peaks.get(name, 0)), "—", "—", "—", "—"))

header = ("scenario", "dalc", "baseline", "ratio", "target", "met")
print("| " + " | ".join(header) + " |")
print("|" + "|".join("---" for _ in header) + "|")
for r in rows:
    print("| " + " | ".join(r) + " |")
print()
print("baseline: the floor (rpc_floor) for the round trips (`rpc_floor --task-messages`, `--database` or `--serve`"
      " where the row says so); the same stack on an empty table for the size rows")

# CPU per round trip at 64 in flight: each process's CPU over a run (its warm-up included)
# divided by the round trips of that run, then the median over the rounds.
cpu = {}
with open(sys.argv[2]) as lines:
    for line in lines:
        run = json.loads(line)
        cpu.setdefault(run["scenario"], {})[run["round"]] = run["cpu"]
by_round = {}
with open(sys.argv[1]) as lines:
    for line in lines:
        run = json.loads(line)
        by_round.setdefault(run["scenario"], {})[run["round"]] = run["report"]
def per_task_us(scenario, groups):
    """The median over the rounds of the CPU that `groups` used per call in one run."""
    values = []
    for round_no, used in cpu.get(scenario, {}).items():
        report = by_round.get(scenario, {}).get(round_no)
        if report is None:
            continue
        calls = (report["warmup"] + report["ok"] + sum(report["errors"].values())
                 + sum(report["expected_failures"].values()))
        if calls:
            values.append(sum(used.get(group, 0.0) for group in groups) * 1e6 / calls)
    return statistics.median(values) if values else float("nan")
columns = [("floor-64", "floor"), ("floor-db-64", "floor with durable writes"),
           ("path-floor-64", "floor of the whole path"), ("dalc-sync-64", "dalc")]
groups = [("load", "load tool (`dalc bench`; for the first two floors, the floor itself)"),
          ("gateway", "gateway (the whole path's floor: its one process)"),
          ("workers", "workers (2)"), ("rabbitmq", "RabbitMQ"), ("postgres", "PostgreSQL")]
print()
print("CPU per round trip, 64 in flight (µs; medians of the rounds; each floor at its own rate):")
print()
print("| process | " + " | ".join(label for _, label in columns) + " |")
print("|---|" + "|".join("---" for _ in columns) + "|")
for group, label in groups + [("total", "total")]:
    cells = []
    for scenario, _ in columns:
        measured = [g for g, _ in groups] if group == "total" else [group]
        value = per_task_us(scenario, measured)
        cells.append("—" if math.isnan(value) or (value == 0 and group in ("gateway", "workers"))
                     else f"{value:.0f}")
    print(f"| {label} | " + " | ".join(cells) + " |")

errors = {}
for scenario, reports in runs.items():
    for report in reports:
        for kind, count in report["errors"].items():
            errors[f"{scenario}: {kind}"] = errors.get(f"{scenario}: {kind}", 0) + count
print()
if errors:
    print("errors (all runs): " + ", ".join(f"{k} {v}" for k, v in sorted(errors.items())))
else:
    print(f"every answer checked and right: {sum(len(r) for r in runs.values())} runs, 0 errors")
PY
