#!/usr/bin/env bash
# Makes sure the services the test suite talks to are running on this machine:
# PostgreSQL (127.0.0.1:5432, trust auth) and Redis (127.0.0.1:6379). Installs them
# with apt-get on a fresh Debian machine. Prints the TP_TEST_* variables to export.
# Usage: eval "$(scripts/services.sh)"
set -euo pipefail

log() { echo "services: $*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  log "installing $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || true
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  for _ in $(seq 1 60); do port_open "$1" && return 0; sleep 0.5; done
  return 1
}

# PostgreSQL
if ! port_open 5432; then
  command -v pg_ctlcluster >/dev/null 2>&1 || apt_install postgresql
  ver=$(ls /etc/postgresql 2>/dev/null | sort -n | tail -1)
  if [ -z "$ver" ]; then
    ver=$(ls /usr/lib/postgresql | sort -n | tail -1)
    as_root pg_createcluster "$ver" main >&2
  fi
  hba="/etc/postgresql/$ver/main/pg_hba.conf"
  if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba" 2>/dev/null; then
    as_root sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\nlocal all all trust' "$hba"
  fi
  log "starting PostgreSQL $ver"
  as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start >&2 || true
  wait_port 5432 || { log "PostgreSQL did not start"; exit 1; }
fi

# Redis
if ! port_open 6379; then
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  log "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp --logfile /tmp/tp-redis.log >&2
  wait_port 6379 || { log "Redis did not start"; exit 1; }
fi

echo "export TP_TEST_POSTGRES_URL=${TP_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
echo "export TP_TEST_REDIS_URL=${TP_TEST_REDIS_URL:-redis://127.0.0.1:6379}"
