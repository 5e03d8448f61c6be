#!/usr/bin/env bash
# The MQTT isolation holes of issue #14, tried as a new user would: mosquitto clients
# against a node binary. Prints one line per attack, HOLE (the attack worked) or CLOSED,
# and exits 1 if any hole is open. The Rust tests in crates/tp-broker/tests/isolation.rs
# check the same with assertions; this script exists to run the attacks against any
# build, an old one included:
#
#   scripts/attacks.sh target/debug/thingspanel
#
# Ports: HTTP ${ATTACK_HTTP_PORT:-18190}, MQTT ${ATTACK_MQTT_PORT:-18883} (Mosquitto holds 1883).
set -uo pipefail
bin=${1:?usage: scripts/attacks.sh <thingspanel binary>}
http=${ATTACK_HTTP_PORT:-18190}
mqtt=${ATTACK_MQTT_PORT:-18883}
for tool in mosquitto_pub mosquitto_sub curl jq; do
  command -v "$tool" >/dev/null || { echo "attacks.sh needs $tool" >&2; exit 2; }
done
data=$(mktemp -d /tmp/tp-attacks.XXXX)
export TP_ADMIN_EMAIL=attacks@example.com TP_ADMIN_PASSWORD=attacks-password-123
RUST_LOG=warn "$bin" --data-dir "$data" --http-listen "127.0.0.1:$http" --mqtt-listen "127.0.0.1:$mqtt" \
  > "$data/node.log" 2>&1 &
node=$!
trap 'kill $node 2>/dev/null; pkill -f "atk-" 2>/dev/null; wait $node 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 300); do curl -sf "127.0.0.1:$http/healthz" >/dev/null && break; sleep 0.1; done
api=http://127.0.0.1:$http/api/v1
token=$(curl -sf "$api/auth/login" -H 'content-type: application/json' \
  -d "{\"email\":\"$TP_ADMIN_EMAIL\",\"password\":\"$TP_ADMIN_PASSWORD\"}" | jq -r .token)
[ -n "$token" ] && [ "$token" != null ] || { echo "cannot log in:" >&2; cat "$data/node.log" >&2; exit 2; }
auth=(-H "authorization: Bearer $token" -H 'content-type: application/json')
run=$RANDOM
device() { # name -> "id number username password"
  curl -sf "$api/devices" "${auth[@]}" -d "{\"name\":\"$1\",\"device_number\":\"$1-$run\"}" \
    | jq -r '[.id, .device_number, .credentials.username, .credentials.password] | join(" ")'
}
read -r a_id a_num a_user a_pw <<<"$(device atk-a)"
read -r b_id b_num b_user b_pw <<<"$(device atk-b)"
read -r c_id c_num c_user c_pw <<<"$(device atk-c)"
# Always started in the background: exec, so that $! is the client itself (kill -9 drops
# its connection without DISCONNECT).
sub() { exec mosquitto_sub -h 127.0.0.1 -p "$mqtt" "$@"; }
pub() { mosquitto_pub -h 127.0.0.1 -p "$mqtt" "$@"; }
latest() { curl -sf "$api/devices/$1/telemetry/latest" "${auth[@]}"; }
holes=0
verdict() { # name, hole(0/1), detail
  if [ "$2" = 1 ]; then holes=$((holes + 1)); echo "HOLE   $1: $3"; else echo "CLOSED $1: $3"; fi
}

# 1. A's will on B's command topic, retained: does B receive a command from A?
out=$data/b-commands
sub -i "atk-b-sub" -u "$b_user" -P "$b_pw" -t "devices/command/$b_num/+" -C 1 -W 12 > "$out" 2>/dev/null &
bsub=$!
sleep 1
sub -i "atk-a-will" -u "$a_user" -P "$a_pw" -t "devices/command/$a_num/+" \
  --will-topic "devices/command/$b_num/x" --will-payload '{"method":"Reboot"}' \
  -W 12 > /dev/null 2>&1 &
awill=$!
sleep 2
{ kill -9 $awill; wait $awill; } 2>/dev/null # the connection drops without DISCONNECT: the will fires
wait $bsub 2>/dev/null
if grep -q Reboot "$out"; then verdict "will on another device's command topic" 1 "B received A's will: $(cat "$out")"
else verdict "will on another device's command topic" 0 "B received nothing"; fi

# 2. A's will on the internal ingest topic with a hand-built envelope for B.
sub -i "atk-a-will2" -u "$a_user" -P "$a_pw" -t "devices/command/$a_num/+" \
  --will-topic "tp/ingest/$b_id/devices/telemetry" --will-payload '{"forged":1}' -W 12 > /dev/null 2>&1 &
awill=$!
sleep 2
{ kill -9 $awill; wait $awill; } 2>/dev/null
sleep 4
if latest "$b_id" | grep -q forged; then verdict "will on the internal ingest topic" 1 "stored as B: $(latest "$b_id")"
else verdict "will on the internal ingest topic" 0 "nothing stored for B"; fi

# 3. A connects with the platform's internal client id; is B's telemetry still stored?
sub -i tp-platform -u "$a_user" -P "$a_pw" -t "devices/command/$a_num/+" -W 6 > /dev/null 2>&1 &
internal=$!
sleep 1
pub -i "atk-b-pub" -u "$b_user" -P "$b_pw" -q 1 -t devices/telemetry -m '{"after_internal":1}' 2>/dev/null
sleep 2
if latest "$b_id" | grep -q after_internal; then verdict "client id tp-platform" 0 "B's telemetry still stored"
else verdict "client id tp-platform" 1 "B's telemetry was not stored after A took the internal id"; fi
kill $internal 2>/dev/null; wait $internal 2>/dev/null

# 4. A connects with B's client id while B is connected.
sub -i "atk-b-own" -u "$b_user" -P "$b_pw" -t "devices/command/$b_num/+" -W 8 > /dev/null 2>&1 &
bown=$!
sleep 1
if pub -i "atk-b-own" -u "$a_user" -P "$a_pw" -q 1 -t devices/telemetry -m '{"x":1}' 2>/dev/null; then
  verdict "another device's client id" 1 "A's CONNECT with B's client id was accepted"
else verdict "another device's client id" 0 "A's CONNECT with B's client id was refused"; fi
kill $bown 2>/dev/null; wait $bown 2>/dev/null

# 5. Disabling a device closes its live connection.
sub -i "atk-c-live" -u "$c_user" -P "$c_pw" -t "devices/command/$c_num/+" -W 10 > /dev/null 2>&1 &
clive=$!
sleep 1
curl -sf -X PATCH "$api/devices/$c_id" "${auth[@]}" -d '{"enabled":false}' > /dev/null
sleep 3
if kill -0 $clive 2>/dev/null; then verdict "disabled device's live connection" 1 "still connected 3 s after it was disabled"
else verdict "disabled device's live connection" 0 "closed"; fi
kill $clive 2>/dev/null; wait $clive 2>/dev/null
curl -sf -X PATCH "$api/devices/$c_id" "${auth[@]}" -d '{"enabled":true}' > /dev/null

# 6. Overlapping sessions of one client id (as mosquitto_pub/sub do between runs), 40
# rounds; afterwards, can another device still connect and be stored?
for i in $(seq 40); do
  sub -i "atk-same" -c -u "$a_user" -P "$a_pw" -t "devices/command/$a_num/+" -W 1 > /dev/null 2>&1 &
  pub -i "atk-same" -u "$a_user" -P "$a_pw" -q 1 -t devices/telemetry -m "{\"round\":$i}" > /dev/null 2>&1 &
done
wait_rounds=$(jobs -p | grep -v "^$node$" || true)
sleep 3
pub -i "atk-b-after" -u "$b_user" -P "$b_pw" -q 1 -t devices/telemetry -m '{"after_rounds":1}' 2>/dev/null
sleep 2
panics=$(grep -c "panicked" "$data/node.log" || true)
if latest "$b_id" | grep -q after_rounds && [ "$panics" = 0 ]; then
  verdict "overlapping same-id sessions" 0 "no panic; another device connects and is stored"
else verdict "overlapping same-id sessions" 1 "$panics panic(s) in the node log; other device stored: $(latest "$b_id" | grep -c after_rounds)"; fi
[ -n "$wait_rounds" ] && kill $wait_rounds 2>/dev/null

echo "$holes hole(s) open"
[ "$holes" = 0 ]
