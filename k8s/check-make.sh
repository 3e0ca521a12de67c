#!/usr/bin/env bash
# Checks the Makefile's Kubernetes targets without running them (no Docker, kind or cluster
# needed), run by .ci/run: for each target, `make -n TARGET` must print commands that
#   - use the expected tools (kind, docker, kubectl) the expected way;
#   - name only files and directories that exist in the repository (kind config, Dockerfile,
#     build context, kustomize directories, each with its kustomization.yaml);
# every target must be documented with `##`, `make deploy` must work for every overlay, and the
# image `make image` builds must be the one the default overlay deploys.
# Exits non-zero, saying what is wrong, on any finding.
set -euo pipefail
cd "$(dirname "$0")/.."

failed=0
fail() { echo "check-make: FAIL: $*" >&2; failed=1; }

# The commands `make -n ARGS...` prints, one a line (make's own messages dropped).
dry_run() {
  local out
  # A clean environment: variables exported by CI or a parent make must not change the defaults.
  if ! out=$(env -i PATH="$PATH" HOME="${HOME:-/}" make --no-print-directory -n "$@" 2>&1); then
    fail "make -n $* failed: $out"
    return 1
  fi
  grep -v '^make' <<<"$out" || true
}

# Paths named by the commands on stdin, one a line: the values of file options, docker build's
# context, and any word that looks like a repository path.
paths_named() {
  python3 -c '
import shlex, sys
FILE_OPTS = {"-f", "--file", "--filename", "-k", "--kustomize", "--config"}
for line in sys.stdin:
    words = shlex.split(line)
    for i, w in enumerate(words):
        if "=" in w and w.split("=", 1)[0] in FILE_OPTS:
            print(w.split("=", 1)[1])
        elif w in FILE_OPTS and i + 1 < len(words) and words[i + 1] != "-":
            print(words[i + 1])
        elif w.startswith(("k8s/", "./", "scripts/", "examples/")) or w.endswith((".yaml", ".yml")) \
                or w.split("/")[-1].startswith("Dockerfile"):
            print(w)
    if words[:2] == ["docker", "build"]:
        print(words[-1])  # the build context
' | sort -u
}

check_target() { # check_target TARGET "TOOL..." 'REGEX' ['REGEX'...] -- [MAKE-ARGS...]
  local target=$1 tools=$2 commands path tool first
  shift 2
  local patterns=()
  while (($#)) && [[ $1 != -- ]]; do patterns+=("$1"); shift; done
  (($#)) && shift
  local label="make $target${*:+ $*}"
  grep -Eq "^$target:.*## " Makefile || fail "$target: no target with a '## ' description in the Makefile"
  commands=$(dry_run "$target" "$@") || return 0
  if [[ -z $commands ]]; then
    fail "$label prints no commands"
    return 0
  fi
  echo "--> $label"
  while IFS= read -r line; do echo "      $line"; done <<<"$commands"
  while IFS= read -r line; do
    first=${line%% *}
    [[ " $tools " == *" $first "* ]] || fail "$label runs '$first', not one of: $tools"
  done <<<"$commands"
  for tool in $tools; do
    grep -q "^$tool " <<<"$commands" || fail "$label does not use $tool"
  done
  for pattern in "${patterns[@]}"; do
    grep -Eq "$pattern" <<<"$commands" || fail "$label: no command matches /$pattern/"
  done
  while IFS= read -r path; do
    [[ -z $path ]] && continue
    if [[ ! -e $path ]]; then
      fail "$label names $path, which is not in the repository"
    elif [[ -d $path && $path == k8s/* && ! -e $path/kustomization.yaml ]]; then
      fail "$label names $path, which has no kustomization.yaml"
    fi
  done < <(paths_named <<<"$commands")
}

check_target create-cluster kind '^kind create cluster .*--config k8s/kind-cluster\.yaml'
check_target image "docker kind" '^docker build .*--file Dockerfile' '^kind load docker-image '
check_target deploy kubectl '^kubectl .*apply -k k8s/overlays/dev$'
for dir in k8s/overlays/*/; do
  overlay=$(basename "$dir")
  check_target deploy kubectl "^kubectl .*apply -k k8s/overlays/$overlay\$" -- "OVERLAY=$overlay"
done
check_target status kubectl '^kubectl .* get pods' '^kubectl .* rollout status deployment/dalc-gateway' \
  '^kubectl .* rollout status deployment/dalc-worker'
check_target port-forward kubectl '^kubectl .* port-forward (svc|service)/dalc-gateway .*:50051 .*:8080'
check_target teardown kind '^kind delete cluster '

# kind: every target talks to the same cluster, and the image built is the one loaded.
clusters=$( (dry_run create-cluster; dry_run image; dry_run teardown) | grep '^kind ' \
  | sed -n 's/.*--name \([^ ]*\).*/\1/p' | sort -u)
[[ $(wc -l <<<"$clusters") == 1 && -n $clusters ]] || fail "the kind targets name different clusters: $clusters"
built=$(dry_run image | sed -n 's/^docker build .*--tag \([^ ]*\).*/\1/p')
loaded=$(dry_run image | sed -n 's/^kind load docker-image \([^ ]*\).*/\1/p')
[[ -n $built && $built == "$loaded" ]] || fail "make image builds '$built' but loads '$loaded'"

# The default overlay must deploy the image `make image` builds (its `images:` tag).
if command -v kubectl >/dev/null; then
  if ! kubectl kustomize k8s/overlays/dev | grep -Eq "^ +image: $built\$"; then
    fail "make image builds $built, which k8s/overlays/dev does not deploy"
  fi
fi

if ((failed)); then
  echo "k8s/check-make.sh: FAILED" >&2
  exit 1
fi
echo "k8s/check-make.sh: the Makefile's Kubernetes targets name existing files and the expected tools"
