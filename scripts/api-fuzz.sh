#!/usr/bin/env bash
# Property-based test of the REST API against its own OpenAPI document: Schemathesis
# (installed with pip when missing) generates requests from /api/v1/openapi.json,
# sends them to a fresh node on free ports, and checks every answer against the
# document (status codes, schemas, content types) and for server errors.
#
#   scripts/api-fuzz.sh [seconds [schemathesis run options...]]
#                                      # default 180; the documented long run is 600
#   API_FUZZ_REPORTS=junit,vcr API_FUZZ_REPORT_DIR=dir   # also every request and answer (VCR)
#
# The operations that would end the run's own session (sign-out, password change)
# are left out. Before the run, scripts/api-fuzz-seed.py creates one of every
# resource and pins each path parameter to one, so every operation reaches its logic. Prints Schemathesis' summary; exits non-zero when it found failures.
set -euo pipefail
cd "$(dirname "$0")/.."
budget=${1:-180}
if ! command -v schemathesis >/dev/null 2>&1; then
  python3 -m pip install -q "schemathesis>=4,<5" >&2
fi
cargo build -q --bin thingspanel
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
http_port=$(free_port)
mqtt_port=$(free_port)
dir=$(mktemp -d)
email=fuzz-admin@example.com
password=fuzz-admin-password-1
# The sign-in throttle is tested on its own (crates/tp-node/tests/hardening.rs); here
# it would answer most generated sign-ins with 429 and leave the rest untested.
# OTA uploads are capped at 64 KiB here, so generated bodies cannot fill the disk.
TP_OTA__MAX_PACKAGE_BYTES=65536 \
TP_ADMIN_EMAIL=$email TP_ADMIN_PASSWORD=$password TP_AUTH__TOKEN_TTL_SECS=7200 \
  TP_AUTH__MAX_FAILED_LOGINS=1000000000 TP_AUTH__GLOBAL_FAILED_LOGINS=1000000000 \
  "${CARGO_TARGET_DIR:-target}/debug/thingspanel" --data-dir "$dir/data" \
  --http-listen "127.0.0.1:$http_port" --mqtt-listen "127.0.0.1:$mqtt_port" \
  > "$dir/node.log" 2>&1 &
node=$!
trap 'kill $node 2>/dev/null; wait $node 2>/dev/null; rm -rf "$dir"' EXIT
base="http://127.0.0.1:$http_port"
for _ in $(seq 1 300); do
  curl -fs "$base/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
token=$(curl -fs "$base/api/v1/auth/login" -H 'content-type: application/json' \
  -d "{\"email\":\"$email\",\"password\":\"$password\"}" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')
# One of every resource (and an alarm raised by a real device uplink), with the
# path parameters of the run pinned to them: see api-fuzz-seed.py.
FUZZ_EMAIL=$email FUZZ_PASSWORD=$password python3 scripts/api-fuzz-seed.py "$base" "$token" "$dir/openapi.json" > "$dir/schemathesis.toml"
# Unique names for generated creates (see scripts/api_fuzz_hooks.py).
PYTHONPATH="scripts${PYTHONPATH:+:$PYTHONPATH}" SCHEMATHESIS_HOOKS=api_fuzz_hooks \
  schemathesis --config-file "$dir/schemathesis.toml" run "$dir/openapi.json" --url "$base" \
  --header "Authorization: Bearer $token" \
  --checks all \
  --max-time "$budget" \
  --workers 1 \
  --exclude-path /api/v1/auth/logout \
  --exclude-path /api/v1/auth/password \
  --report "${API_FUZZ_REPORTS:-junit}" --report-dir "${API_FUZZ_REPORT_DIR:-$dir/report}" \
  "${@:2}"
