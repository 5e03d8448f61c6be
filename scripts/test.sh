#!/usr/bin/env bash
# The project's test command (the README's quick start and .ci/run both call it):
# starts the services the tests need, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v mosquitto_pub >/dev/null 2>&1 || ! command -v coap-client-notls >/dev/null 2>&1 \
   || { [ ! -x /usr/sbin/mosquitto ] && ! command -v mosquitto >/dev/null 2>&1; }; then
  # the device quick start and some end-to-end tests use the mosquitto clients and
  # libcoap's coap-client (Debian ships it as coap-client-notls/-openssl/-gnutls);
  # the external-broker tests start a private mosquitto broker on a free port
  (as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
   as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients libcoap3-bin >&2) || true
fi
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  # the web console's browser test (crates/tp-node/tests/console.rs) drives Debian's
  # headless Chromium through chromedriver
  (as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
   get_chromium() { as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >&2; }
   get_chromium || { as_root apt-get update -qq >&2 && get_chromium; }) || true
fi
if ! command -v haproxy >/dev/null 2>&1 && [ ! -x /usr/sbin/haproxy ]; then
  # the cluster test (crates/tp-node/tests/cluster.rs) balances its nodes with HAProxy
  (as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
   get_haproxy() { as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >&2; }
   get_haproxy || { as_root apt-get update -qq >&2 && get_haproxy; }) || true
fi
if ! command -v openapi-python-client >/dev/null 2>&1; then
  # the generated-client test (crates/tp-node/tests/generated_client.rs) builds a
  # Python client from the OpenAPI document with openapi-python-client (PyPI)
  python3 -m pip install -q openapi-python-client >&2 || true
fi
eval "$(scripts/services.sh)"
cargo test --workspace --all-targets "$@"
cargo test --workspace --doc
