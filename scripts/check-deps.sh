#!/usr/bin/env bash
# Guards the crate layout (no build needed, `cargo tree` only): storage, broker, rules
# and the REST API sit side by side on tp-core, none on another; tp-storage without its
# default features has no Redis, TDengine, PostgreSQL, SQLite driver or fjall, and the
# "MQTT into PostgreSQL" template pulls no REST API, mail, Redis or TDengine.
set -euo pipefail
cd "$(dirname "$0")/.."
deps() { cargo tree -q -e normal --prefix none "$@" | sed 's/ (\*)//' | sort -u; }
fail=0
forbid() { # forbid <what> <regex> <cargo tree args...>
  local what=$1 pattern=$2
  shift 2
  local found
  found=$(deps "$@" | grep -E "$pattern" || true)
  if [ -n "$found" ]; then
    echo "check-deps: $what depends on:" >&2
    echo "$found" | sed 's/^/  /' >&2
    fail=1
  fi
}
forbid "tp-broker" '^tp-(storage|rules|api|node) ' -p tp-broker
forbid "tp-storage" '^tp-(broker|rules|api|node) ' -p tp-storage --all-features
forbid "tp-storage (no default features)" '^(redis|taos|sqlx-postgres|sqlx-sqlite|fjall|lsm-tree|tp-broker) ' \
  -p tp-storage --no-default-features
forbid "tp-core" '^tp-(storage|broker|rules|api|node) ' -p tp-core
forbid "tp-rules" '^(tp-(storage|broker|api|node)|axum|rumqttd|sqlx) ' -p tp-rules
forbid "tp-rules (no default features)" '^(lettre|reqwest) ' -p tp-rules --no-default-features
forbid "tp-api" '^(tp-(storage|broker|rules|node)|rumqttd|sqlx|redis|taos|lettre|reqwest) ' -p tp-api
# axum 0.7 is rumqttd's own unconditional dependency (its console); ours is 0.8.
forbid "examples/mqtt-to-postgres" '^(axum v0\.8|utoipa|lettre|taos|redis|fjall|tp-api|jsonwebtoken) ' \
  -p tp-example-mqtt-to-postgres
[ "$fail" = 0 ] && echo "check-deps: crate layout ok"
exit "$fail"
