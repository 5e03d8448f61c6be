#!/usr/bin/env bash
# A whole embedded-broker cluster on loopback: 2 tp-broker + 2 tp-api nodes behind
# HAProxy, against the local PostgreSQL and Redis (scripts/services.sh starts them
# when absent). Installs haproxy with apt-get when it is missing. Ctrl-C stops all.
#
# Ports from TP_CLUSTER_PORT_BASE (default 21000): HAProxy MQTT base+1 and HTTP
# base+2, brokers' MQTT base+11/12 and health base+21/22, API nodes base+31/32.
#
#   devices  mqtt://127.0.0.1:21001   (TCP balanced over the brokers)
#   users    http://127.0.0.1:21002   (REST API over the API nodes)
#
# Settings (environment): TP_CLUSTER_DIR (default /tmp/tp-local-cluster),
# TP_CLUSTER_PORT_BASE, TP_ADMIN_EMAIL, TP_ADMIN_PASSWORD, TP_CLUSTER_SCHEMA
# (PostgreSQL schema, default tp_local_cluster), CARGO_PROFILE (dev or release).
set -euo pipefail
cd "$(dirname "$0")/.."

dir=${TP_CLUSTER_DIR:-/tmp/tp-local-cluster}
base=${TP_CLUSTER_PORT_BASE:-21000}
lb_mqtt=$((base + 1)) lb_http=$((base + 2))
b1_mqtt=$((base + 11)) b2_mqtt=$((base + 12)) b1_http=$((base + 21)) b2_http=$((base + 22))
a1_http=$((base + 31)) a2_http=$((base + 32))
for port in $lb_mqtt $lb_http $b1_mqtt $b2_mqtt $b1_http $b2_http $a1_http $a2_http; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "port $port is taken; set TP_CLUSTER_PORT_BASE to a free range" >&2
        exit 1
    fi
done
schema=${TP_CLUSTER_SCHEMA:-tp_local_cluster}
profile=${CARGO_PROFILE:-dev}
export TP_ADMIN_EMAIL=${TP_ADMIN_EMAIL:-admin@example.com}
export TP_ADMIN_PASSWORD=${TP_ADMIN_PASSWORD:-change-me-cluster-admin}

if ! command -v haproxy >/dev/null; then
    echo "installing haproxy..."
    sudo_=""; [ "$(id -u)" -ne 0 ] && sudo_=sudo
    $sudo_ apt-get update -qq && $sudo_ apt-get install -y -qq haproxy >/dev/null
fi
eval "$(scripts/services.sh)"
pg=${TP_TEST_POSTGRES_URL:?PostgreSQL is not available}
redis=${TP_TEST_REDIS_URL:?Redis is not available}
sep() { case "$1" in *\?*) echo "&";; *) echo "?";; esac; }

cargo build -q --profile "$profile" -p tp-broker-role -p tp-api-role
bin=target/$([ "$profile" = dev ] && echo debug || echo "$profile")

mkdir -p "$dir"
secret_file=$dir/jwt.secret
[ -s "$secret_file" ] || head -c 48 /dev/urandom | base64 | tr -d '\n/+=' > "$secret_file"
export TP_AUTH__JWT_SECRET=$(cat "$secret_file")
export TP_STORAGE__METADATA="$pg$(sep "$pg")schema=$schema"
export TP_STORAGE__TIMESERIES=$TP_STORAGE__METADATA
export TP_STORAGE__CACHE="$redis$(sep "$redis")prefix=tp-local-cluster:"
export TP_CLUSTER__BACKPLANE=true

pids=()
cleanup() {
    trap - INT TERM EXIT
    echo "stopping..."
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

wait_ready() { # url name pid
    for _ in $(seq 1 300); do
        kill -0 "$3" 2>/dev/null || { echo "$2 exited; see $dir/$2.log" >&2; exit 1; }
        curl -fsS "$1/readyz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "$2 did not become ready; see $dir/$2.log" >&2
    exit 1
}

start() { # name http_port [mqtt_port]
    local name=$1 http=$2 mqtt=${3:-}
    if [ -n "$mqtt" ]; then
        "$bin/tp-broker" --data-dir "$dir/$name" --node-id "$name" \
            --http-listen "127.0.0.1:$http" --mqtt-listen "127.0.0.1:$mqtt" >"$dir/$name.log" 2>&1 &
    else
        "$bin/tp-api" --data-dir "$dir/$name" --node-id "$name" \
            --http-listen "127.0.0.1:$http" >"$dir/$name.log" 2>&1 &
    fi
    pids+=($!)
    echo "$!" >"$dir/$name.pid"
    # One at a time: the first start migrates the schema.
    wait_ready "http://127.0.0.1:$http" "$name" "$!"
    echo "  $name ready (pid $!)"
}

echo "starting nodes (logs in $dir)"
start api1 $a1_http
start api2 $a2_http
start broker1 $b1_http $b1_mqtt
start broker2 $b2_http $b2_mqtt

cat >"$dir/haproxy.cfg" <<CFG
global
    # Within the default open-files limit (two descriptors per proxied connection).
    maxconn 4000
defaults
    timeout connect 5s
    timeout client 10m
    timeout server 10m
frontend mqtt
    bind 127.0.0.1:$lb_mqtt
    mode tcp
    default_backend tp_broker
backend tp_broker
    mode tcp
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 500ms fall 2 rise 2 on-marked-down shutdown-sessions
    server broker1 127.0.0.1:$b1_mqtt check port $b1_http
    server broker2 127.0.0.1:$b2_mqtt check port $b2_http
frontend api
    bind 127.0.0.1:$lb_http
    mode http
    timeout client 1h
    default_backend tp_api
backend tp_api
    mode http
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    timeout server 1h
    default-server inter 500ms fall 2 rise 2
    server api1 127.0.0.1:$a1_http check
    server api2 127.0.0.1:$a2_http check
CFG
haproxy -c -q -f "$dir/haproxy.cfg"
haproxy -f "$dir/haproxy.cfg" >"$dir/haproxy.log" 2>&1 &
pids+=($!)
echo "$!" >"$dir/haproxy.pid"
wait_ready "http://127.0.0.1:$lb_http" haproxy "$!"

echo
echo "cluster is up:"
echo "  devices  mqtt://127.0.0.1:$lb_mqtt"
echo "  REST API http://127.0.0.1:$lb_http/api/v1  (log in as $TP_ADMIN_EMAIL)"
echo "  node pids in $dir/*.pid (kill one broker to watch its devices move)"
echo "Ctrl-C stops everything."
wait
