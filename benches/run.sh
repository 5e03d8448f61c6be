#!/usr/bin/env bash
# End-to-end benchmark scenarios (issue: benchmark harness). Builds release binaries,
# starts a fresh node on its embedded defaults in a temporary data dir, runs tp-bench
# against it, and writes benches/results/<scenario>.{json,md}. Each run prints the exact
# command lines that reproduce it.
#
#   benches/run.sh ingest        1,000 devices x 10 points, QoS 1, on the embedded store
#   benches/run.sh small         1-point messages, QoS 1: platform, then raw Mosquitto and
#                                the platform's broker with the same harness
#   benches/run.sh connections   idle authenticated devices (N=${CONNS:-100000})
#   benches/run.sh crash         SIGKILL during QoS 1 ingest, restart, acknowledged vs stored
#   benches/run.sh api           latest-value queries and one-day history aggregation
#   benches/run.sh soak          1,000 devices x 1 msg/s (telemetry, attributes, events
#                                acknowledged on per-message topics) for 30 min, RSS sampled
#
# Knobs: STORE=postgres (metadata and time series on the local PostgreSQL, a fresh schema;
# default the embedded stores; TS_PARAMS appends time-series URL parameters such as
# `&write_connections=4`), RATE, DURATION, DEVICES, CONNS, CONNECT_RATE, SOAK_SECS, WARMUP, MOSQ_PORT, MQTT_PORT (default 1884; Mosquitto holds 1883),
# LATENCY_SAMPLES (ingest: publish-to-stored samples to aim for, default 1200),
# NODE_BIN, BENCH_BIN (run these binaries instead of the ones just built: an older node for a
# before/after, or copies checked to be this checkout's on a shared target dir),
# PIN=1: the node (and the comparison broker) on CPU 0, tp-bench on CPU 1 (taskset), so the
# load generator does not steal the server's core on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
scenario=${1:?usage: benches/run.sh ingest|small|connections|crash|soak|api}
MQTT_PORT=${MQTT_PORT:-1884}
HTTP_PORT=${HTTP_PORT:-18080}
DURATION=${DURATION:-30}
export TP_ADMIN_EMAIL=bench@example.com TP_ADMIN_PASSWORD=bench-password-123
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# Private copies, taken right after the build: with a shared CARGO_TARGET_DIR,
# target/release/<name> is re-linked by every checkout's build (fresh or not), so
# it can be another checkout's binary a moment later. On a busy shared target dir,
# build, check and copy the binaries yourself and pass NODE_BIN and BENCH_BIN (then
# nothing is built).
bin=$(mktemp -d /tmp/tp-bench-bin.XXXX)
if [ -z "${NODE_BIN:-}" ] || [ -z "${BENCH_BIN:-}" ]; then
  cargo build --release -q -p thingspanel -p tp-bench
  target=${CARGO_TARGET_DIR:-target}
  cp "$target/release/thingspanel" "$target/release/tp-bench" "$bin/"
fi
bench=${BENCH_BIN:-$bin/tp-bench}
node_bin=${NODE_BIN:-$bin/thingspanel}
server_cpu="" bench_cpu=""
if [ "${PIN:-0}" = 1 ] && command -v taskset >/dev/null 2>&1; then
  server_cpu="taskset -c 0" bench_cpu="taskset -c 1"
fi
data=$(mktemp -d /tmp/tp-bench-data.XXXX)
if [ "${STORE:-sqlite}" = postgres ]; then
  eval "$(scripts/services.sh)"
  pg=${TP_TEST_POSTGRES_URL:?PostgreSQL is not available}
  case "$pg" in *\?*) pg="$pg&" ;; *) pg="$pg?" ;; esac
  export TP_STORAGE__METADATA="${pg}schema=tp_bench_$(date +%s)"
  # TS_PARAMS: extra time-series URL parameters (e.g. `&write_connections=4`)
  export TP_STORAGE__TIMESERIES="$TP_STORAGE__METADATA${TS_PARAMS:-}"
fi
node_cmd="$server_cpu $node_bin --data-dir $data --http-listen 127.0.0.1:$HTTP_PORT --mqtt-listen 0.0.0.0:$MQTT_PORT"
echo "+ $node_cmd"
RUST_LOG=warn,tp_broker::ingest=info $node_cmd > "$data/node.log" 2>&1 &
node=$!
# SIGTERM drains (stores every acknowledged message) before the node exits: wait for
# it, so the next run does not find the ports still taken.
trap 'pkill -f -- "--data-dir $data" 2>/dev/null; for _ in $(seq 300); do pgrep -f -- "--data-dir $data" >/dev/null || break; sleep 0.1; done; rm -rf "$data" "$bin"' EXIT
for _ in $(seq 100); do curl -sf "127.0.0.1:$HTTP_PORT/healthz" >/dev/null && break; sleep 0.1; done
kill -0 $node 2>/dev/null || { echo "the node did not start:" >&2; cat "$data/node.log" >&2; exit 1; }
api="--api http://127.0.0.1:$HTTP_PORT --email $TP_ADMIN_EMAIL --password $TP_ADMIN_PASSWORD"

run() { # name, args...
  local name=$1; shift
  echo "+ $bench_cpu $bench $* --json benches/results/$name.json"
  $bench_cpu "$bench" "$@" --json "benches/results/$name.json" | tee "benches/results/$name.md"
}

case "$scenario" in
  ingest)
    run ingest ingest $api --mqtt 127.0.0.1:$MQTT_PORT --devices "${DEVICES:-1000}" --points 10 \
      --rate "${RATE:-20000}" --qos 1 --duration "$DURATION" --server-pid $node \
      --latency-samples "${LATENCY_SAMPLES:-1200}" ;;
  small)
    run small-platform ingest $api --mqtt 127.0.0.1:$MQTT_PORT --devices "${DEVICES:-1000}" --points 1 \
      --rate "${RATE:-50000}" --qos 1 --duration "$DURATION" --server-pid $node
    mosq=$(pgrep -o mosquitto || true)
    run small-raw-mosquitto raw --mqtt 127.0.0.1:1883 --devices "${DEVICES:-1000}" --points 1 \
      --rate "${RATE:-50000}" --qos 1 --duration "$DURATION" ${mosq:+--server-pid $mosq} ;;
  connections)
    # More source ports for the load generator; the system's range is put back on exit.
    ports_before=$(sysctl -n net.ipv4.ip_local_port_range 2>/dev/null | tr -s '\t ' ' ' || true)
    if [ -n "$ports_before" ] && sysctl -qw net.ipv4.ip_local_port_range="1024 65000" 2>/dev/null; then
      trap 'sysctl -qw net.ipv4.ip_local_port_range="$ports_before"; pkill -f -- "--data-dir $data" 2>/dev/null; for _ in $(seq 300); do pgrep -f -- "--data-dir $data" >/dev/null || break; sleep 0.1; done; rm -rf "$data" "$bin"' EXIT
    fi
    run connections connections $api --port "$MQTT_PORT" --connections "${CONNS:-100000}" \
      --addresses 8 --connect-rate "${CONNECT_RATE:-5000}" --hold 10 --server-pid $node
    # The same load against a private Mosquitto (anonymous, no connection limit) on
    # MOSQ_PORT (above the widened ephemeral range, so no client socket holds it),
    # side by side in the same run.
    if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then
      mosq_bin=$(command -v mosquitto || echo /usr/sbin/mosquitto)
      printf 'listener %s\nallow_anonymous true\nmax_connections -1\nmax_keepalive 65535\n' "${MOSQ_PORT:-65100}" > "$data/mosquitto.conf"
      $server_cpu "$mosq_bin" -c "$data/mosquitto.conf" > "$data/mosquitto.log" 2>&1 &
      mosq=$!
      sleep 1
      run connections-mosquitto connections --raw-broker --port "${MOSQ_PORT:-65100}" \
        --connections "${CONNS:-100000}" --addresses 8 --connect-rate "${CONNECT_RATE:-5000}" \
        --hold 10 --server-pid $mosq || true
      kill $mosq 2>/dev/null || true
    fi ;;
  crash)
    run crash crash $api --mqtt 127.0.0.1:$MQTT_PORT --devices "${DEVICES:-200}" --points 10 \
      --rate "${RATE:-5000}" --qos 1 --duration 0 --kill-after 10 --server-pid $node \
      --restart-cmd "RUST_LOG=warn,tp_broker::ingest=info $node_cmd >> $data/node.log 2>&1"
    # The replay's own numbers (total, seconds, rate) from the restarted node's log.
    grep -h "write-ahead log" "$data/node.log" || true ;;
  soak)
    run soak soak $api --mqtt 127.0.0.1:$MQTT_PORT --devices "${DEVICES:-1000}" --per-device-rate 1 \
      --duration "${SOAK_SECS:-1800}" --warmup "${WARMUP:-300}" --sample 30 --server-pid $node ;;
  api)
    run api api $api --mqtt 127.0.0.1:$MQTT_PORT --devices 100 --concurrency 64 --duration "$DURATION" ;;
  *) echo "unknown scenario $scenario" >&2; exit 2 ;;
esac
