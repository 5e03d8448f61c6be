#!/usr/bin/env bash
# A whole embedded-broker cluster on loopback: 2 tp-broker + 2 tp-api nodes behind
# HAProxy, against the local PostgreSQL and Redis (scripts/services.sh starts them
# when absent). Installs haproxy with apt-get when it is missing.
#
#   deploy/local-cluster.sh [options] start        start everything (the default)
#   deploy/local-cluster.sh stop                   stop everything (nodes drain first)
#   deploy/local-cluster.sh restart NODE           stop NODE if it runs, start it again
#                                                  with its saved settings
#   deploy/local-cluster.sh status                 what runs, each node's /readyz
#
# Nodes: api1 api2 broker1 broker2 haproxy. Options of `start`:
#   --release        build with `cargo build --release` (default: the dev profile)
#   --json-logs      nodes log JSON lines (log.format = "json")
# Binaries: TP_BIN_DIR=/path/with/tp-broker/and/tp-api uses prebuilt binaries and
# builds nothing.
#
# Everything a node needs to start again is written by `start` under the state dir
# (TP_CLUSTER_DIR, default /tmp/tp-local-cluster):
#   cluster.env          ports, binaries, the cluster id (mode 600)
#   admin.env            the admin's email and generated password (mode 600)
#   nodes/NODE.env       the node's exact environment: database URL and schema,
#                        Redis URL with the cluster's own prefix, JWT secret,
#                        backplane, lease time, log format (mode 600)
#   NODE.log, NODE.pid   its log and process id; NODE/ its data dir (write-ahead log)
# The Redis prefix (and with it the backplane channel and the device leases) and the
# PostgreSQL schema are unique per cluster id, so two clusters (two TP_CLUSTER_DIRs
# and port bases) can share one Redis and one PostgreSQL.
#
# Ports from TP_CLUSTER_PORT_BASE (default 21000): HAProxy MQTT base+1, HTTP base+2,
# stats base+3; brokers' MQTT base+11/12 and health base+21/22; API nodes base+31/32.
#
#   devices  mqtt://127.0.0.1:21001   (TCP balanced over the brokers)
#   users    http://127.0.0.1:21002   (REST API over the API nodes)
#
# Other settings (environment, read by `start` only): TP_ADMIN_EMAIL,
# TP_ADMIN_PASSWORD (generated when unset), TP_CLUSTER_SCHEMA, TP_CLUSTER_LEASE_SECS
# (default 15), CARGO_PROFILE.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

dir=${TP_CLUSTER_DIR:-/tmp/tp-local-cluster}
nodes_all=(api1 api2 broker1 broker2)

die() { echo "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }

# Writes stdin to $1 with mode 600 (secrets).
write_private() { (umask 077; cat >"$1"); chmod 600 "$1"; }

pid_of() { [ -f "$dir/$1.pid" ] && cat "$dir/$1.pid" 2>/dev/null || true; }
running() { local p; p=$(pid_of "$1"); [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }

load_cluster() {
    [ -f "$dir/cluster.env" ] || die "no cluster in $dir (run: $0 start)"
    # shellcheck disable=SC1091
    . "$dir/cluster.env"
}

http_port_of() {
    case "$1" in
        api1) echo "$a1_http" ;; api2) echo "$a2_http" ;;
        broker1) echo "$b1_http" ;; broker2) echo "$b2_http" ;;
        haproxy) echo "$lb_http" ;;
        *) die "unknown node $1 (one of: ${nodes_all[*]} haproxy)" ;;
    esac
}

# Waits until NODE answers /readyz with 200, showing what it says meanwhile (a broker
# replaying its write-ahead log reports its progress there).
wait_ready() {
    local name=$1 url="http://127.0.0.1:$(http_port_of "$1")/readyz" last="" body
    for _ in $(seq 1 1200); do
        running "$name" || die "$name exited; see $dir/$name.log"
        if body=$(curl -fsS "$url" 2>/dev/null); then
            return 0
        fi
        body=$(curl -sS "$url" 2>/dev/null | tr -d '\n' | cut -c1-160 || true)
        if [ -n "$body" ] && [ "$body" != "$last" ] && [[ $body != *'"status":"ready"'* ]]; then
            echo "    $name: $body"
            last=$body
        fi
        sleep 0.25
    done
    die "$name did not become ready in 5 minutes; see $dir/$name.log"
}

# Starts NODE from its env file (in the background, surviving this script).
launch() {
    local name=$1 env=$dir/nodes/$1.env
    [ -f "$env" ] || die "no settings for $name in $env (run: $0 start)"
    running "$name" && die "$name is already running (pid $(pid_of "$name"))"
    (
        set -a
        # shellcheck disable=SC1090
        . "$env"
        set +a
        exec nohup "$TP_NODE_BIN" >>"$dir/$name.log" 2>&1 </dev/null
    ) &
    echo "$!" >"$dir/$name.pid"
}

launch_haproxy() {
    running haproxy && return 0
    local bin
    bin=$(command -v haproxy || echo /usr/sbin/haproxy)
    "$bin" -c -q -f "$dir/haproxy.cfg"
    nohup "$bin" -f "$dir/haproxy.cfg" -db >>"$dir/haproxy.log" 2>&1 </dev/null &
    echo "$!" >"$dir/haproxy.pid"
}

# Stops NODE: SIGTERM (a node drains: every acknowledged message is stored), then
# SIGKILL after 60 s.
stop_node() {
    local name=$1 pid
    pid=$(pid_of "$name")
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
        rm -f "$dir/$name.pid"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 600); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "  $name did not stop in 60 s; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/$name.pid"
    echo "  $name stopped"
}

cmd_start() {
    local profile=${CARGO_PROFILE:-dev} log_format=text
    while [ $# -gt 0 ]; do
        case "$1" in
            --release) profile=release ;;
            --json-logs) log_format=json ;;
            -h | --help) usage ;;
            *) die "unknown option $1 (see $0 --help)" ;;
        esac
        shift
    done
    if [ -f "$dir/cluster.env" ]; then
        load_cluster
        for n in "${nodes_all[@]}" haproxy; do
            running "$n" && die "the cluster in $dir is running ($n); use: $0 status | stop"
        done
    fi
    local base=${TP_CLUSTER_PORT_BASE:-21000}
    lb_mqtt=$((base + 1)) lb_http=$((base + 2)) lb_stats=$((base + 3))
    b1_mqtt=$((base + 11)) b2_mqtt=$((base + 12)) b1_http=$((base + 21)) b2_http=$((base + 22))
    a1_http=$((base + 31)) a2_http=$((base + 32))
    for port in $lb_mqtt $lb_http $lb_stats $b1_mqtt $b2_mqtt $b1_http $b2_http $a1_http $a2_http; do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            die "port $port is taken; set TP_CLUSTER_PORT_BASE to a free range"
        fi
    done

    if ! command -v haproxy >/dev/null && [ ! -x /usr/sbin/haproxy ]; then
        echo "installing haproxy..."
        local sudo_=""
        [ "$(id -u)" -ne 0 ] && sudo_=sudo
        $sudo_ apt-get update -qq && $sudo_ apt-get install -y -qq haproxy >/dev/null
    fi
    eval "$(scripts/services.sh)"
    local pg=${TP_TEST_POSTGRES_URL:?PostgreSQL is not available}
    local redis=${TP_TEST_REDIS_URL:?Redis is not available}
    sep() { case "$1" in *\?*) echo "&" ;; *) echo "?" ;; esac; }

    local bin_dir
    if [ -n "${TP_BIN_DIR:-}" ]; then
        bin_dir=$(cd "$TP_BIN_DIR" && pwd)
        for b in tp-broker tp-api; do
            [ -x "$bin_dir/$b" ] || die "TP_BIN_DIR=$TP_BIN_DIR has no executable $b"
        done
        echo "using prebuilt binaries in $bin_dir"
    else
        echo "building tp-broker and tp-api ($profile profile)..."
        cargo build -q --profile "$profile" -p tp-broker-role -p tp-api-role
        local target=${CARGO_TARGET_DIR:-$root/target}
        bin_dir=$(cd "$target/$([ "$profile" = dev ] && echo debug || echo "$profile")" && pwd)
    fi

    mkdir -p "$dir/nodes"
    chmod 700 "$dir"
    # One id per state dir, kept across starts: the Redis prefix and the schema.
    local id
    if [ -s "$dir/cluster.id" ]; then
        id=$(cat "$dir/cluster.id")
    else
        id=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' | cut -c1-10)
        echo "$id" >"$dir/cluster.id"
    fi
    local schema=${TP_CLUSTER_SCHEMA:-tp_cluster_$id}
    local prefix="tp-cluster-$id:"
    local secret
    if [ -s "$dir/jwt.secret" ]; then
        secret=$(cat "$dir/jwt.secret")
    else
        secret=$(head -c 48 /dev/urandom | base64 | tr -d '\n/+=')
        printf '%s' "$secret" | write_private "$dir/jwt.secret"
    fi
    if [ ! -s "$dir/admin.env" ]; then
        local email=${TP_ADMIN_EMAIL:-admin@example.com}
        local password=${TP_ADMIN_PASSWORD:-$(head -c 24 /dev/urandom | base64 | tr -d '\n/+=')}
        printf 'TP_ADMIN_EMAIL=%q\nTP_ADMIN_PASSWORD=%q\n' "$email" "$password" |
            write_private "$dir/admin.env"
    fi
    # shellcheck disable=SC1091
    . "$dir/admin.env"

    write_private "$dir/cluster.env" <<ENV
# Written by deploy/local-cluster.sh start; read by stop, restart and status.
cluster_id=$id
bin_dir=$bin_dir
lb_mqtt=$lb_mqtt lb_http=$lb_http lb_stats=$lb_stats
b1_mqtt=$b1_mqtt b2_mqtt=$b2_mqtt b1_http=$b1_http b2_http=$b2_http
a1_http=$a1_http a2_http=$a2_http
ENV
    local metadata="$pg$(sep "$pg")schema=$schema"
    local cache="$redis$(sep "$redis")prefix=$prefix"
    node_env() { # name binary http [mqtt]
        {
            printf '# %s: written by deploy/local-cluster.sh start; used by restart.\n' "$1"
            printf 'TP_NODE_BIN=%q\n' "$bin_dir/$2"
            printf 'TP_NODE_ID=%q\n' "$1"
            printf 'TP_DATA_DIR=%q\n' "$dir/$1"
            printf 'TP_HTTP__LISTEN=%q\n' "127.0.0.1:$3"
            [ -n "${4:-}" ] && printf 'TP_MQTT__LISTEN=%q\n' "127.0.0.1:$4"
            printf 'TP_STORAGE__METADATA=%q\n' "$metadata"
            printf 'TP_STORAGE__TIMESERIES=%q\n' "$metadata"
            printf 'TP_STORAGE__CACHE=%q\n' "$cache"
            printf 'TP_CLUSTER__BACKPLANE=true\n'
            printf 'TP_CLUSTER__LEASE_SECS=%q\n' "${TP_CLUSTER_LEASE_SECS:-15}"
            printf 'TP_AUTH__JWT_SECRET=%q\n' "$secret"
            printf 'TP_ADMIN_EMAIL=%q\n' "$TP_ADMIN_EMAIL"
            printf 'TP_ADMIN_PASSWORD=%q\n' "$TP_ADMIN_PASSWORD"
            printf 'TP_LOG__FORMAT=%q\n' "$log_format"
        } | write_private "$dir/nodes/$1.env"
    }
    node_env api1 tp-api "$a1_http"
    node_env api2 tp-api "$a2_http"
    node_env broker1 tp-broker "$b1_http" "$b1_mqtt"
    node_env broker2 tp-broker "$b2_http" "$b2_mqtt"

    cat >"$dir/haproxy.cfg" <<CFG
global
    # Within the default open-files limit (two descriptors per proxied connection).
    maxconn 4000
defaults
    timeout connect 5s
    timeout client 10m
    timeout server 10m
    # A loaded node answers /readyz slower than the check interval: without this, a
    # check times out after \`inter\`, the node is marked down and (shutdown-sessions)
    # every device on the *surviving* broker is disconnected and reconnects.
    timeout check 3s
listen stats
    bind 127.0.0.1:$lb_stats
    mode http
    stats enable
    stats uri /stats
frontend mqtt
    bind 127.0.0.1:$lb_mqtt
    mode tcp
    default_backend tp_broker
backend tp_broker
    mode tcp
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 1s fall 3 rise 2 on-marked-down shutdown-sessions
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

    echo "starting nodes (cluster $id, state and logs in $dir)"
    for n in "${nodes_all[@]}"; do
        # One at a time: the first start migrates the schema and creates the admin.
        launch "$n"
        wait_ready "$n"
        echo "  $n ready (pid $(pid_of "$n"))"
    done
    launch_haproxy
    wait_ready haproxy
    echo
    echo "cluster $id is up:"
    echo "  devices   mqtt://127.0.0.1:$lb_mqtt"
    echo "  REST API  http://127.0.0.1:$lb_http/api/v1"
    echo "  admin     $TP_ADMIN_EMAIL / $TP_ADMIN_PASSWORD   (kept in $dir/admin.env)"
    echo "  haproxy   http://127.0.0.1:$lb_stats/stats"
    echo "  redis     prefix $prefix   postgres schema $schema"
    echo "status: $0 status   stop: $0 stop   restart one node: $0 restart broker2"
}

cmd_stop() {
    load_cluster
    echo "stopping the cluster in $dir"
    stop_node haproxy
    # Brokers first (they drain acknowledged messages), then the API nodes.
    for n in broker1 broker2 api1 api2; do stop_node "$n"; done
}

cmd_restart() {
    local name=${1:?usage: $0 restart NODE (${nodes_all[*]} haproxy)}
    load_cluster
    http_port_of "$name" >/dev/null
    stop_node "$name"
    if [ "$name" = haproxy ]; then
        launch_haproxy
    else
        echo "  starting $name with $dir/nodes/$name.env"
        launch "$name"
    fi
    wait_ready "$name"
    echo "  $name ready (pid $(pid_of "$name"))"
}

cmd_status() {
    load_cluster
    echo "cluster $cluster_id ($dir): devices mqtt://127.0.0.1:$lb_mqtt, API http://127.0.0.1:$lb_http"
    local n state body
    for n in "${nodes_all[@]}" haproxy; do
        if running "$n"; then
            state="running (pid $(pid_of "$n"))"
            body=$(curl -sS -m 2 "http://127.0.0.1:$(http_port_of "$n")/readyz" 2>/dev/null |
                tr -d '\n' | cut -c1-120 || true)
        else
            state="stopped"
            body=""
        fi
        printf '  %-8s %-22s %s\n' "$n" "$state" "$body"
    done
    if running haproxy; then
        echo "  haproxy view (server: status):"
        curl -sS -m 2 "http://127.0.0.1:$lb_stats/stats;csv" 2>/dev/null |
            awk -F, '$1 ~ /^tp_/ && $2 != "BACKEND" { printf "    %s/%s: %s\n", $1, $2, $18 }' || true
    fi
}

case "${1:-start}" in
    start) shift $(($# > 0 ? 1 : 0)); cmd_start "$@" ;;
    --release | --json-logs) cmd_start "$@" ;;
    stop) cmd_stop ;;
    restart) shift; cmd_restart "$@" ;;
    status) cmd_status ;;
    -h | --help | help) usage ;;
    *) usage 1 ;;
esac
