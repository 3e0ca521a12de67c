#!/usr/bin/env bash
# Contract test of the HTTP/JSON API: runs schemathesis against BASE_URL/openapi.json with every
# check (`--checks all`): it fails on any server error, any response (status code, content type,
# headers, body) that the OpenAPI document does not describe, a schema-valid request refused or a
# schema-violating one accepted, and a wrong method answered other than 405 with an exact Allow.
# schemathesis.toml (next to this script) lists the refusals of schema-valid requests that are
# right and that no schema can express (an expression that does not parse, 412 on cancelling a
# finished task, ...).
#
#   services/http/tests/contract/schemathesis.sh BASE_URL [extra schemathesis options...]
#
# e.g. services/http/tests/contract/schemathesis.sh http://127.0.0.1:8080
#      services/http/tests/contract/schemathesis.sh http://127.0.0.1:8080 -H 'Authorization: Bearer KEY'
#
# Knobs (environment): MAX_EXAMPLES (per operation, default 50), WORKERS (default 1),
# TIME_LIMIT (seconds for the whole run, default 240), SEED (for a reproducible run),
# CHECKS (default all; e.g. not_a_server_error,response_schema_conformance).
# Installs schemathesis from PyPI when it is missing.
set -euo pipefail

if [[ $# -lt 1 || "$1" == -* ]]; then
  echo "usage: $0 BASE_URL [extra schemathesis options...]" >&2
  exit 2
fi
base_url="${1%/}"
shift
config="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/schemathesis.toml"

python=${PYTHON:-python3}
if ! "$python" -c 'import schemathesis' 2>/dev/null; then
  echo "installing schemathesis from PyPI..." >&2
  "$python" -m pip install -q schemathesis \
    || "$python" -m pip install -q --user schemathesis \
    || "$python" -m pip install -q --user --break-system-packages schemathesis
fi

# Hypothesis and schemathesis keep their databases in the working directory: use a scratch one
# rather than litter the checkout.
workdir=$(mktemp -d)
cd "$workdir"
echo "schemathesis working directory: $workdir" >&2

seed=()
if [[ -n "${SEED:-}" ]]; then seed=(--seed "$SEED"); fi

# One worker: on CPython 3.11, schemathesis' concurrent workers can trip "AST constructor
# recursion depth mismatch" (ast.parse in threads), a runtime error unrelated to the API.
# `python -m schemathesis.cli` rather than `st`: a --user install may not be on PATH.
# Sync calls may wait up to the server's default 30 s, hence the request timeout.
status=0
timeout --kill-after=10 "${TIME_LIMIT:-240}" \
  "$python" -m schemathesis.cli --config-file "$config" run "$base_url/openapi.json" \
    --url "$base_url" \
    --checks "${CHECKS:-all}" \
    --max-examples "${MAX_EXAMPLES:-50}" \
    --workers "${WORKERS:-1}" \
    --request-timeout 40 \
    --wait-for-schema 30 \
    --no-shrink \
    "${seed[@]}" \
    "$@" || status=$?

if [[ $status -eq 124 || $status -eq 137 ]]; then
  echo "schemathesis did not finish within ${TIME_LIMIT:-240}s" >&2
fi
exit "$status"
