# Shared by scripts/test.sh and benches/compare.sh (sourced, not run): bring up what dalc's
# tests and benchmarks talk to. RabbitMQ on 127.0.0.1:5672 and PostgreSQL on 127.0.0.1:5432 are
# started when installed but stopped, and installed from Debian's packages when missing (as root).
# shellcheck shell=bash

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
is_root() { [ "$(id -u)" = 0 ]; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for_port() {
  local port=$1 what=$2
  for _ in $(seq 1 120); do
    port_open "$port" && return 0
    sleep 1
  done
  die "$what did not open port $port within 2 minutes"
}

APT_UPDATED=
apt_install() {
  is_root || die "$* missing: install it (e.g. sudo apt-get install $*) or run this script as root"
  command -v apt-get >/dev/null || die "$* missing and this is not a Debian-like system: install it"
  if [ -z "$APT_UPDATED" ]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    APT_UPDATED=1
  fi
  log "installing $* from Debian's packages"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_rabbitmq() {
  if port_open 5672; then return; fi
  if ! command -v rabbitmq-server >/dev/null; then
    apt_install rabbitmq-server
  fi
  log "starting RabbitMQ"
  rabbitmq-server -detached >/dev/null 2>&1 || true
  wait_for_port 5672 RabbitMQ
  # The port opens before the broker finishes booting; wait for it to answer.
  if command -v rabbitmqctl >/dev/null; then
    rabbitmqctl -q await_startup >/dev/null 2>&1 || true
  fi
}

ensure_postgres() {
  if ! port_open 5432; then
    if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
      apt_install postgresql
    fi
    log "starting PostgreSQL"
    local version
    version=$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -1)
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
    wait_for_port 5432 PostgreSQL
  fi
  # Tests connect as postgres/postgres over TCP. A fresh Debian install asks for a password
  # there; set this one (trust-authenticated servers ignore it).
  if ! PGPASSWORD=postgres PGCONNECT_TIMEOUT=5 psql -h 127.0.0.1 -U postgres -d postgres -tAc 'select 1' >/dev/null 2>&1; then
    is_root || die "cannot log in to PostgreSQL as postgres/postgres on 127.0.0.1: set DALC_TEST_POSTGRES_URL"
    log "setting the postgres role's password for local TCP logins"
    su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
  fi
}

