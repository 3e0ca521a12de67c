#!/usr/bin/env bash
# Runs the Python client example against a dalc gateway:
#
#   examples/python/run.sh 127.0.0.1:50051        # DALC_API_KEY=... when the gateway wants a key
#
# 1. a virtualenv with grpcio and grpcio-tools from PyPI, kept in a cache directory
#    (DALC_PYTHON_EXAMPLE_CACHE, default ~/.cache/dalc/python-example) and reused next time;
#    on Debian without `python3 -m venv`, python3-venv is installed with apt when run as root;
# 2. the client code generated from proto/ at run time, into a temporary directory (nothing
#    generated is kept);
# 3. examples/python/client.py ADDR.
set -euo pipefail

GRPC_VERSION=1.85.1 # grpcio and grpcio-tools move together: generated code checks the runtime

die() { echo "run.sh: $*" >&2; exit 1; }
log() { echo "run.sh: $*" >&2; }

[[ $# == 1 ]] || die "usage: $0 HOST:PORT (a dalc gateway, e.g. 127.0.0.1:50051)"
addr=$1
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
command -v python3 >/dev/null || die "python3 is missing (Debian: apt-get install python3)"

cache=${DALC_PYTHON_EXAMPLE_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/dalc/python-example}
venv=$cache/venv-$GRPC_VERSION
mkdir -p "$cache"
# pip's downloads stay in the same directory, so removing it forgets everything this made.
export PIP_CACHE_DIR=$cache/pip PIP_DISABLE_PIP_VERSION_CHECK=1

make_venv() {
  rm -rf "$venv"
  python3 -m venv "$venv" >/dev/null 2>&1 && return 0
  rm -rf "$venv"
  # Debian and Ubuntu ship venv's pip bootstrap (ensurepip) in a package of its own.
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    log "python3 -m venv does not work here: installing python3-venv with apt"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv" && return 0
  fi
  die "python3 -m venv failed: install python3-venv (Debian/Ubuntu: apt-get install python3-venv)"
}

# One setup at a time: two runs at once must not build the same virtualenv together.
exec 9>"$cache/lock"
if command -v flock >/dev/null; then flock 9; fi
if ! "$venv/bin/python" -c 'import grpc, grpc_tools.protoc' 2>/dev/null; then
  log "creating a virtualenv with grpcio $GRPC_VERSION in $venv"
  make_venv
  "$venv/bin/python" -m pip install -q "grpcio==$GRPC_VERSION" "grpcio-tools==$GRPC_VERSION" \
    || die "pip install grpcio grpcio-tools failed"
fi
exec 9>&-

gen=$(mktemp -d)
trap 'rm -rf "$gen"' EXIT
# grpc_tools adds the well-known types (google/protobuf/*.proto) to the include path itself.
(cd "$repo" && "$venv/bin/python" -m grpc_tools.protoc -I proto \
  --python_out="$gen" --grpc_python_out="$gen" proto/dalc/v1/task_service.proto)

PYTHONPATH=$gen "$venv/bin/python" "$here/client.py" "$addr"
