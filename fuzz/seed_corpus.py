#!/usr/bin/env python3
"""Writes the seed inputs of each fuzz target into fuzz/corpus/<target>/seed-*.

Real examples: ThingsPanel payloads and topics from the protocol tests, gateway
envelopes, write-ahead-log segments encoded as tp-broker's wal::encode_record does,
rules and cron expressions as the REST API takes them, and MQTT 3.1/3.1.1/5
connections (CONNECT with the fuzzing harness's credentials, PUBLISH, SUBSCRIBE,
...). Run once; libFuzzer adds what it finds next to these files, and
`cargo fuzz cmin` keeps those that add coverage, renamed by content hash.
"""

import json
import os
import struct
import zlib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


# --- payload_codecs -------------------------------------------------------------
payloads = {
    "telemetry-flat": '{"temp":21.5,"on":true,"n":3,"s":"x","j":{"a":1}}',
    "telemetry-ts": '{"ts":1700000000000,"values":{"temp":1}}',
    "telemetry-array": '[{"ts":1,"values":{"t":1}},{"ts":2,"values":{"t":2.5}}]',
    "telemetry-flat-ts-key": '{"ts":5,"v":1}',
    "attributes": '{"ip":"127.0.0.1","mac":"xx:xx:xx:xx:xx:xx","port":1883}',
    "event": '{"method":"FindAnimal","params":{"count":2,"animalType":"cat"}}',
    "response": '{"result":0,"errcode":"","message":"success","ts":1609143039,"method":"FindAnimal"}',
    "response-failed": '{"result":1,"errcode":"E1","message":"fail"}',
    "big-numbers": '{"a":18446744073709551615,"b":-9223372036854775808,"c":1e308,"d":-0.0}',
    "topic-telemetry": "devices/telemetry",
    "topic-attributes": "devices/attributes/m1",
    "topic-event": "devices/event/m2",
    "topic-command-response": "devices/command/response/m3",
    "topic-set-response": "gateway/attributes/set/response/m4",
    "topic-ota": "ota/devices/progress",
    "topic-register": "devices/register",
    "filter-control": "devices/telemetry/control/d1",
    "filter-command": "devices/command/d1/+",
    "filter-register": "devices/register/response/+",
    "filter-down": "d1/down",
    "filter-ota": "ota/devices/inform/d1",
}
for name, p in payloads.items():
    write("payload_codecs", name, p)

# --- gateway_envelope -----------------------------------------------------------
envelopes = {
    "nested": {
        "gateway_data": {"a": 1},
        "sub_device_data": {"s1": {"t": 2}},
        "sub_gateway_data": {"g2": {"sub_device_data": {"s2": {"t": 3}}}},
    },
    "event": {
        "gateway_data": {"method": "alarm", "params": {"level": 2}},
        "sub_device_data": {"s1": {"method": "door", "params": {"open": True}}},
    },
    "timestamped": {
        "sub_device_data": {"s1": {"ts": 1700000000000, "values": {"t": 1.5}}},
    },
    "response": {"sub_device_data": {"s1": {"result": 0, "message": "success"}}},
}
deep = {"gateway_data": {}}
for _ in range(4):
    deep = {"sub_gateway_data": {"g": deep}}
envelopes["depth5"] = deep
for name, e in envelopes.items():
    write("gateway_envelope", name, json.dumps(e, separators=(",", ":")))

# --- wal_records ----------------------------------------------------------------


def wal_record(device_id, ts, topic, payload):
    topic = topic.encode()
    body = bytes([1]) + device_id + struct.pack("<q", ts) + struct.pack("<H", len(topic))
    body += topic + payload
    return struct.pack("<II", len(body), zlib.crc32(body) & 0xFFFFFFFF) + body


dev = bytes(range(16))
r1 = wal_record(dev, 1700000000000, "devices/telemetry", b'{"temp":21.5}')
r2 = wal_record(dev, 1700000000001, "devices/event/m1", b'{"method":"m","params":{}}')
r3 = wal_record(bytes(16), -1, "gateway/telemetry", b'{"sub_device_data":{"s1":{"t":1}}}')
r4 = wal_record(dev, 0, "", b"")
write("wal_records", "one", r1)
write("wal_records", "segment", r1 + r2 + r3 + r4)
write("wal_records", "torn", r1 + r2[:-3])
corrupt = bytearray(r1 + r2)
corrupt[len(r1) + 12] ^= 0xFF
write("wal_records", "corrupt-crc", bytes(corrupt))

# --- rules (first byte: 0 cron, 1 rule JSON, 2 schedule JSON, 3 time range) ------
crons = [
    "0 */5 * * * *",
    "0 0 8 * * Mon-Fri",
    "0 30 9,12,18 1-15 * *",
    "0 0 0 29 2 *",
    "0 0 0 1 1 * 2030",
    "@daily",
    "*/10 * * * * *",
    "0 0 12 L * *",
]
for i, c in enumerate(crons):
    write("rules", "cron-%d" % i, b"\x00" + c.encode())
tenant = "00000000-0000-0000-0000-000000000001"
device = "00000000-0000-0000-0000-000000000002"
profile = "00000000-0000-0000-0000-000000000003"
base = {
    "id": "00000000-0000-0000-0000-0000000000aa",
    "tenant_id": tenant,
    "name": "hot",
    "description": None,
    "enabled": True,
    "created_at": 1700000000000,
    "updated_at": 1700000000000,
}
rules = {
    "device-gt": {
        "trigger_groups": [{"conditions": [{
            "type": "device", "source": {"kind": "device", "id": device},
            "data": "telemetry", "key": "temp", "operator": ">", "value": 40,
            "duration_secs": 30}]}],
        "actions": [{"type": "raise_alarm", "severity": "minor", "title": "Too hot",
                     "channels": []}],
    },
    "profile-between-timerange": {
        "trigger_groups": [{"conditions": [
            {"type": "device", "source": {"kind": "profile", "id": profile},
             "data": "attribute", "key": "v", "operator": "between", "value": [1, 5]},
            {"type": "time_range", "start_minute": 1320, "end_minute": 120,
             "weekdays": [1, 2, 3], "utc_offset_minutes": 480}]}],
        "actions": [{"type": "command", "target": {"kind": "triggering_device"},
                     "method": "reset", "params": {"a": 1}},
                    {"type": "clear_alarm"}],
    },
    "schedule": {
        "trigger_groups": [{"conditions": [
            {"type": "schedule", "kind": {"type": "cron", "expression": "0 */5 * * * *"}},
            {"type": "device", "source": {"kind": "device", "id": device},
             "data": "status", "operator": "=", "value": "online"}]}],
        "actions": [{"type": "set_attributes", "target": {"kind": "device", "id": device},
                     "values": {"mode": "eco"}}],
    },
    "periodic-event-in": {
        "trigger_groups": [
            {"conditions": [{"type": "schedule", "kind": {"type": "periodic", "interval_secs": 60},
                             "not_before": 1700000000000, "not_after": 1800000000000}]},
            {"conditions": [{"type": "device", "source": {"kind": "device", "id": device},
                             "data": "event", "key": "door", "operator": "in",
                             "value": ["open", "ajar"]}]}],
        "actions": [{"type": "notify", "channel": "00000000-0000-0000-0000-0000000000cc",
                     "subject": "door", "body": "open"},
                    {"type": "run_scene", "scene": "00000000-0000-0000-0000-0000000000dd"},
                    {"type": "telemetry_control", "target": {"kind": "device", "id": device},
                     "values": {"on": True}}],
    },
    "once": {
        "trigger_groups": [{"conditions": [
            {"type": "schedule", "kind": {"type": "once", "at": 1700000060000}}]}],
        "actions": [{"type": "clear_alarm"}],
    },
}
for name, r in rules.items():
    write("rules", "rule-" + name, b"\x01" + json.dumps({**base, **r}).encode())
schedules = [
    {"kind": {"type": "cron", "expression": "0 0 * * * *"}, "not_before": 0},
    {"kind": {"type": "periodic", "interval_secs": 1}},
    {"kind": {"type": "once", "at": 1700000000001}, "not_after": 1700000000000},
]
for i, s in enumerate(schedules):
    write("rules", "schedule-%d" % i, b"\x02" + json.dumps(s).encode())
write("rules", "time-range-0", b"\x03" + struct.pack("<qHHi4B", 1700000000000, 480, 1080, 0, 1, 5, 0, 0))
write("rules", "time-range-1", b"\x03" + struct.pack("<qHHi4B", 86399999, 1320, 120, -300, 7, 0, 0, 0))

# --- mqtt_connection ------------------------------------------------------------


def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def s(x):
    x = x.encode() if isinstance(x, str) else x
    return struct.pack(">H", len(x)) + x


def packet(first, body):
    return bytes([first]) + varint(len(body)) + body


def connect(client_id, user=None, password=None, will=None, clean=True, keepalive=60,
            level=4, name="MQTT"):
    flags = 0x02 if clean else 0
    payload = s(client_id)
    if will:
        flags |= 0x04 | (will[2] << 3)
        if level == 5:
            payload += b"\x00"
        payload += s(will[0]) + s(will[1])
    if user is not None:
        flags |= 0x80
        payload += s(user)
    if password is not None:
        flags |= 0x40
        payload += s(password)
    var = s(name) + bytes([level, flags]) + struct.pack(">H", keepalive)
    if level == 5:
        var += b"\x05\x11\x00\x00\x00\x3c"  # session expiry 60 s
    return packet(0x10, var + payload)


def publish(topic, payload, qos=0, pkid=1, v5=False, dup=False, retain=False):
    body = s(topic)
    if qos:
        body += struct.pack(">H", pkid)
    if v5:
        body += b"\x00"
    return packet(0x30 | (qos << 1) | (8 if dup else 0) | (1 if retain else 0), body + payload)


def subscribe(filters, pkid=1, v5=False):
    body = struct.pack(">H", pkid) + (b"\x00" if v5 else b"")
    for f, q in filters:
        body += s(f) + bytes([q])
    return packet(0x82, body)


def unsubscribe(filters, pkid=2, v5=False):
    body = struct.pack(">H", pkid) + (b"\x00" if v5 else b"")
    for f in filters:
        body += s(f)
    return packet(0xA2, body)


PING = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"
USER, PASS, TOKEN = "fuzz-basic", "fuzz-basic-password", "fuzz-access-token-0001"

for v5 in (False, True):
    lvl = 5 if v5 else 4
    tag = "v5" if v5 else "v4"
    c = connect("c1", USER, PASS, level=lvl)
    write("mqtt_connection", tag + "-session", c
          + subscribe([("devices/telemetry/control/d1", 1), ("devices/command/d1/+", 1)], v5=v5)
          + publish("devices/telemetry", b'{"temp":21.5}', v5=v5)
          + publish("devices/attributes/m1", b'{"ip":"1.2.3.4"}', qos=1, pkid=7, v5=v5)
          + publish("devices/event/m2", b'{"method":"m","params":{}}', qos=2, pkid=8, v5=v5)
          + packet(0x62, struct.pack(">H", 8) + (b"\x00" if v5 else b""))
          + publish("gateway/telemetry", b'{"sub_device_data":{"s1":{"t":1}}}', qos=1, pkid=9, v5=v5)
          + publish("devices/config/down", b"{}", qos=1, pkid=10, v5=v5)
          + publish("d1/up", b"raw", v5=v5)
          + unsubscribe(["devices/command/d1/+"], v5=v5)
          + packet(0x40, struct.pack(">H", 1) + (b"\x00" if v5 else b""))
          + PING + DISCONNECT)
    write("mqtt_connection", tag + "-token-will",
          connect("", TOKEN, None, will=("devices/event/w1", b'{"method":"gone"}', 1),
                  level=lvl)
          + publish("devices/telemetry", b'[{"ts":1,"values":{"t":1}}]', qos=1, v5=v5))
    write("mqtt_connection", tag + "-acl-publish-denied",
          connect("c2", USER, PASS, level=lvl) + publish("devices/telemetry/control/d2", b"{}", v5=v5))
    write("mqtt_connection", tag + "-acl-subscribe-denied",
          connect("c3", USER, PASS, level=lvl) + subscribe([("devices/#", 0)], v5=v5))
    write("mqtt_connection", tag + "-bad-password", connect("c4", USER, "wrong", level=lvl))
    write("mqtt_connection", tag + "-disabled", connect("c5", "fuzz-disabled", PASS, level=lvl))
    write("mqtt_connection", tag + "-bad-will",
          connect("c6", USER, PASS, will=("devices/command/d1/x", b"", 0), level=lvl))
    write("mqtt_connection", tag + "-persistent",
          connect("c7", USER, PASS, clean=False, keepalive=0, level=lvl)
          + subscribe([("d1/down", 1)], v5=v5) + PING)
write("mqtt_connection", "v5-disconnect-with-will",
      connect("c8", USER, PASS, will=("devices/telemetry", b'{"w":1}', 0), level=5)
      + packet(0xE0, b"\x04\x00"))
write("mqtt_connection", "v31-mqisdp",
      connect("c9", USER, PASS, level=3, name="MQIsdp") + publish("devices/telemetry", b'{"a":1}'))
write("mqtt_connection", "unsupported-level", connect("c10", USER, PASS, level=6))
write("mqtt_connection", "not-connect", PING)
write("mqtt_connection", "second-connect", connect("c11", USER, PASS) + connect("c11", USER, PASS))
write("mqtt_connection", "control-char-client-id", connect("a\nb", USER, PASS))
