#!/usr/bin/env python3
"""Seeds a fresh node for scripts/api-fuzz.sh and prints a Schemathesis config.

Operations on one resource (`/devices/{id}/...`, `/alarms/{id}`) only reach their
logic with an id that exists, and no generator can guess a UUID. This creates one
of every resource through the REST API (and an alarm through a real device uplink
that fires a rule), then writes a schemathesis.toml that pins each path parameter
to a seeded id. Deleting operations get ids of their own, so a DELETE that runs
early cannot take the data away from the operations after it.

    api-fuzz-seed.py BASE_URL TOKEN DOC_OUT > schemathesis.toml

It also writes DOC_OUT, the node's OpenAPI document with the seeded ids as the
`example` of the fields and parameters that name them (`role_id`, a condition's
device, a path's `{id}`, ...). Schemathesis builds the first requests of its
coverage phase from examples, so those requests name things that exist; the
served document itself is not changed.
"""

import base64
import json
import os
import sys
import time
import urllib.error
import urllib.request

BASE, TOKEN, DOC_OUT = sys.argv[1], sys.argv[2], sys.argv[3]


def call(method, path, body=None, auth=None, expect=(200, 201, 202, 204)):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(BASE + path, data=data, method=method)
    req.add_header("Authorization", auth or f"Bearer {TOKEN}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    if status not in expect:
        sys.exit(f"seeding: {method} {path} -> {status} {raw[:300]!r}")
    return json.loads(raw) if raw else None


def make(path, body):
    return call("POST", path, body)["id"]


def two(path, body_of):
    """One resource for the operations that read and change it, one to delete."""
    return make(path, body_of("fuzz-a")), make(path, body_of("fuzz-b"))


def template_body(name):
    return {
        "name": name,
        "telemetry": [{"identifier": "temp", "name": "Temperature", "data_type": "float",
                       "unit": "°C", "min": -40, "max": 125}],
        "commands": [{"identifier": "set_target", "name": "Set target", "params": [
            {"identifier": "target", "name": "Target", "data_type": "int", "min": 5, "max": 30}]}],
    }


# A device template (thing model) the profile refers to, and one to delete.
# The kept one carries the name of the document's template example, so replacing it
# with that example (what the coverage phase's variants do) is not a name conflict.
template = make("/api/v1/templates", template_body("Thermostat"))
template_del = make("/api/v1/templates", template_body("fuzz-template-del"))
profile = make("/api/v1/profiles", {"name": "fuzz-a", "device_type": "direct", "template_id": template})
profile_del = make("/api/v1/profiles", {"name": "fuzz-b", "device_type": "direct"})
created = call("POST", "/api/v1/devices", {"name": "fuzz-device", "profile_id": profile})
device, credentials = created["id"], created["credentials"]
group, group_del = two("/api/v1/groups", lambda n: {"name": n})
# A member, so removing one from the group has one to remove.
call("PUT", f"/api/v1/groups/{group}/devices/{device}")
role, role_del = two("/api/v1/roles", lambda n: {"name": n, "permissions": ["device:read"]})
user, user_del = two(
    "/api/v1/users",
    lambda n: {"email": f"{n}@example.com", "name": n, "password": "fuzz-password-1"},
)
api_key_del = make("/api/v1/api-keys", {"name": "fuzz-key"})
channel, channel_del = two(
    "/api/v1/notification-channels",
    lambda n: {"type": "email", "name": n, "to": [f"{n}@example.com"]},
)
scene, scene_del = two(
    "/api/v1/scenes",
    lambda n: {"name": n, "actions": [{"type": "clear_alarm"}]},
)


def rule_body(name):
    return {
        "name": name,
        "trigger_groups": [{"conditions": [{
            "type": "device",
            "source": {"kind": "device", "id": device},
            "data": "telemetry", "key": "temp", "operator": ">", "value": 40,
        }]}],
        "actions": [{"type": "raise_alarm", "severity": "major", "title": "hot"}],
    }


rule, rule_del = two("/api/v1/rules", rule_body)
# Sign-in, token refresh and self-registration answer 401 to anything generated;
# real credentials let them reach their logic too (scoped to those operations below).
login_email, login_password = os.environ["FUZZ_EMAIL"], os.environ["FUZZ_PASSWORD"]
refresh_tokens = [
    call("POST", "/api/v1/auth/login", {"email": login_email, "password": login_password})["refresh_token"]
    for _ in range(20)
]
provision_secret = call("POST", "/api/v1/profiles",
                        {"name": "fuzz-provision", "device_type": "direct", "auto_register": True})["provision_secret"]


def script_body(name):
    # disabled: the fuzzer's own scripts may then be enabled without a 409 every time
    return {
        "profile_id": profile, "script_type": "telemetry_up", "name": name,
        "content": 'local json = require("json")\nfunction encodeInp(msg, topic) return msg end',
    }


script, script_del = two("/api/v1/scripts", script_body)


def dashboard_body(name):
    # not home: the fuzzer's own dashboards may take the home flag without a conflict
    return {"name": name, "widgets": [
        {"id": "v", "x": 0, "y": 0, "w": 4, "h": 2,
         "config": {"type": "value", "device_id": device, "key": "temp"}},
        {"id": "a", "x": 4, "y": 0, "w": 8, "h": 4, "config": {"type": "alarms", "limit": 5}},
    ]}


dashboard, dashboard_del = two("/api/v1/dashboards", dashboard_body)
tenant, tenant_del = two("/api/v1/tenants", lambda n: {"name": n})

# The alarm: the device reports over the HTTP device API and the rule raises it.
user_pass = f"{credentials['username']}:{credentials.get('password') or ''}"
basic = "Basic " + base64.b64encode(user_pass.encode()).decode()
call("POST", "/api/v1/device/telemetry", {"temp": 41}, auth=basic)
alarm = None
for _ in range(300):
    items = call("GET", f"/api/v1/alarms?device_id={device}")["items"]
    if items:
        alarm = items[0]["id"]
        break
    time.sleep(0.1)
if alarm is None:
    sys.exit("seeding: the rule raised no alarm within 30 s")

# OTA: a package with a file (uploaded as a raw body) sent by a task to the device,
# and one with a file but no task, whose file the upload operation may replace (a
# package a task sends cannot change). api-fuzz.sh keeps uploads small
# (TP_OTA__MAX_PACKAGE_BYTES), and an upload replaces the package's one file.
def upload(package_id, content):
    req = urllib.request.Request(
        f"{BASE}/api/v1/ota/packages/{package_id}/file?file_name=fuzz.bin",
        data=content, method="PUT")
    req.add_header("Authorization", f"Bearer {TOKEN}")
    req.add_header("Content-Type", "application/octet-stream")
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200, resp.status


def package_body(name):
    return {"name": name, "version": "1.0.0", "module": "MCU"}


package, upload_package = two("/api/v1/ota/packages", package_body)
upload(package, b"fuzz firmware " * 64)
upload(upload_package, b"fuzz firmware " * 16)
ota_task = make("/api/v1/ota/tasks", {"package_id": package, "device_ids": [device]})


def ota_task_body(name):
    return {"package_id": package, "device_ids": [device], "name": name}


# path template -> {method or "*": {parameter: [ids]}}; deleting operations get
# spares of their own (several, since each test phase may delete one).
spares = {}


def spare(path, body_of, n=4):
    return [make(path, body_of(f"fuzz-spare-{i}")) for i in range(n)]


pins = {
    "/api/v1/devices/{id}": {"*": {"id": [device]},
                             "DELETE": {"id": spare("/api/v1/devices", lambda n: {"name": n})}},
    "/api/v1/groups/{id}": {"*": {"id": [group]},
                            "DELETE": {"id": [group_del] + spare("/api/v1/groups", lambda n: {"name": n})}},
    "/api/v1/groups/{id}/devices/{device_id}": {"*": {"id": [group], "device_id": [device]}},
    "/api/v1/profiles/{id}": {"*": {"id": [profile]},
                              "DELETE": {"id": [profile_del] + spare("/api/v1/profiles", lambda n: {"name": n, "device_type": "direct"})}},
    "/api/v1/roles/{id}": {"*": {"id": [role]},
                           "DELETE": {"id": [role_del] + spare("/api/v1/roles", lambda n: {"name": n, "permissions": ["device:read"]})}},
    "/api/v1/users/{id}": {"*": {"id": [user]},
                           "DELETE": {"id": [user_del] + spare("/api/v1/users", lambda n: {"email": f"{n}@example.com", "name": n, "password": "fuzz-password-1"})}},
    "/api/v1/api-keys/{id}": {"*": {"id": [api_key_del] + spare("/api/v1/api-keys", lambda n: {"name": n})}},
    "/api/v1/notification-channels/{id}": {"*": {"id": [channel]},
                                           "DELETE": {"id": [channel_del] + spare("/api/v1/notification-channels", lambda n: {"type": "email", "name": n, "to": ["x@example.com"]})}},
    "/api/v1/scenes/{id}": {"*": {"id": [scene]},
                            "DELETE": {"id": [scene_del] + spare("/api/v1/scenes", lambda n: {"name": n, "actions": [{"type": "clear_alarm"}]})}},
    "/api/v1/rules/{id}": {"*": {"id": [rule]},
                           "DELETE": {"id": [rule_del] + spare("/api/v1/rules", rule_body)}},
    "/api/v1/alarms/{id}": {"*": {"id": [alarm]}},
    "/api/v1/ota/packages/{id}": {"*": {"id": [package]},
                                  "DELETE": {"id": spare("/api/v1/ota/packages", package_body)}},
    "/api/v1/ota/packages/{id}/file": {"*": {"id": [upload_package]}},
    "/api/v1/ota/tasks/{id}": {"*": {"id": [ota_task]},
                               "DELETE": {"id": spare("/api/v1/ota/tasks", ota_task_body)}},
    "/api/v1/ota/tasks/{id}/devices/{device_id}": {"*": {"id": [ota_task], "device_id": [device]}},
    # Cancelling the kept task cancels its device too; each phase may cancel one of these.
    "/api/v1/ota/tasks/{id}/devices/{device_id}/cancel": {
        "*": {"id": spare("/api/v1/ota/tasks", ota_task_body), "device_id": [device]}},
    "/api/v1/templates/{id}": {"*": {"id": [template]},
                               "DELETE": {"id": [template_del] + spare("/api/v1/templates", template_body)}},
    "/api/v1/scripts/{id}": {"*": {"id": [script]},
                             "DELETE": {"id": [script_del] + spare("/api/v1/scripts", script_body)}},
    "/api/v1/dashboards/{id}": {"*": {"id": [dashboard]},
                                "DELETE": {"id": [dashboard_del] + spare("/api/v1/dashboards", dashboard_body)}},
    "/api/v1/tenants/{id}": {"*": {"id": [tenant]},
                             "DELETE": {"id": [tenant_del] + spare("/api/v1/tenants", lambda n: {"name": n})}},
}

doc = call("GET", "/api/v1/openapi.json")

# Examples of seeded ids, by property or parameter name (path ids by path below).
examples_by_name = {
    "role_id": role,
    "profile_id": profile,
    "template_id": template,
    "device_id": device,
    "rule_id": rule,
    "channel": channel,
    "scene": scene,
    "package_id": package,
    "url": "https://hooks.example.com/fuzz",
    "start": 0,
    "end": 4102444800000,
    "key": "temp",
}
schemas = doc["components"]["schemas"]
for name, schema in schemas.items():
    for prop, sub in (schema.get("properties") or {}).items():
        if prop in examples_by_name and "$ref" not in sub:
            sub["example"] = examples_by_name[prop]
        if prop == "channels" and sub.get("type") == "array":
            sub["example"] = [channel]
        if prop == "id" and name in ("DeviceSourceDevice", "ActionTargetDevice"):
            sub.pop("$ref", None)
            sub.update({"type": "string", "format": "uuid", "example": device})
        if prop == "id" and name == "DeviceSourceProfile":
            sub.pop("$ref", None)
            sub.update({"type": "string", "format": "uuid", "example": profile})
for path, item in doc["paths"].items():
    base = max((p for p in pins if path == p or path.startswith(p + "/")), key=len, default=None)
    for method, op in item.items():
        if not isinstance(op, dict):
            continue
        for param in op.get("parameters", []):
            name = param.get("name")
            if param.get("in") == "path" and base is not None:
                chosen = pins[base]
                ids = (chosen.get(method.upper()) if path == base else None) or chosen["*"]
                if name in ids:
                    param["example"] = ids[name][0]
            elif param.get("in") == "query" and name in examples_by_name:
                param["example"] = examples_by_name[name]
# Ids that name other resources can only work when they exist: in this copy they are
# limited to the seeded ones (generated requests with any other id are negative cases,
# which the server rejects with 422). Only the run's copy changes, not the served doc.
enum_by_name = {"role_id": role, "profile_id": profile, "channel": channel, "scene": scene}
# Schemas that carry such ids in requests (responses may name any id the run created).
shared_parts = {"ActionNotify", "ActionRunScene", "ActionRaiseAlarm", "DeviceSourceDevice",
                "ActionTargetDevice", "DeviceSourceProfile"}


def only(value, sub):
    """`sub` restricted to `value` (and null where the field was nullable)."""
    nullable = sub.get("type") == ["string", "null"]
    return {"type": ["string", "null"] if nullable else "string", "format": "uuid",
            "enum": [value, None] if nullable else [value]}


for name, schema in schemas.items():
    if not (name.endswith("Request") or name in shared_parts):
        continue
    for prop, sub in list((schema.get("properties") or {}).items()):
        if prop in enum_by_name:
            schema["properties"][prop] = only(enum_by_name[prop], sub)
        elif prop == "channels" and sub.get("type") == "array":
            sub["items"] = only(channel, {})
        elif prop == "id" and name in ("DeviceSourceDevice", "ActionTargetDevice"):
            schema["properties"][prop] = only(device, sub)
        elif prop == "id" and name == "DeviceSourceProfile":
            schema["properties"][prop] = only(profile, sub)
# Sign-in, token refresh and self-registration: their examples carry real secrets, so
# at least those requests pass authentication (the rest stay 401 cases).
for path, example in [
    ("/api/v1/auth/login", {"email": login_email, "password": login_password}),
    ("/api/v1/auth/refresh", {"refresh_token": refresh_tokens[0]}),
    ("/api/v1/device/provision", {"profile_secret": provision_secret, "device_number": "fuzz-provisioned"}),
]:
    media = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]
    media.pop("examples", None)
    media["example"] = example
# The document's own request examples name a placeholder device; name the seeded one.
# The document lists cross-field rules under `x-valid-combinations` (client generators
# cannot model `anyOf` beside `properties`); the tester reads them as the `anyOf` they are.
for schema in doc["components"]["schemas"].values():
    if "x-valid-combinations" in schema:
        schema["anyOf"] = schema.pop("x-valid-combinations")
# The task example names a package too.
doc["components"]["schemas"]["CreateTaskRequest"]["example"] = {
    "package_id": package, "device_ids": [device], "name": "fuzz task"}
text = json.dumps(doc)
for placeholder in ("00000000-0000-0000-0000-000000000001", "00000000-0000-0000-0000-000000000002"):
    text = text.replace(placeholder, device)
with open(DOC_OUT, "w") as out:
    out.write(text)
print("# Written by scripts/api-fuzz-seed.py for one run; ids are of that run's node.")
# Ids seen in earlier responses (Schemathesis' "extra data sources") include deleted
# resources and would stand in for the pinned ones (a DELETE fed the kept device's id
# took it away from every later request); the pins and the stateful phase's links are
# what reach every operation here.
for phase in ("examples", "coverage", "fuzzing"):
    print(f"[phases.{phase}.extra-data-sources]")
    print("responses = false")
print("[checks.positive_data_acceptance]")
# 422: well-formed requests naming data the generator cannot know (an id of another
# resource) or fields that contradict each other; the document lists them.
print('expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]')
dictionaries = {
    # Ids inside bodies and query ranges that can work: a generator cannot know the
    # ids, and half of all random (start, end) pairs end before they start (422).
    "seed_device": [device],
    "seed_profile": [profile],
    "seed_template": [template],
    "seed_role": [role],
    "seed_channel": [channel],
    "seed_scene": [scene],
    "seed_package": [package],
    "seed_url": ["https://hooks.example.com/fuzz"],
    "seed_start": [0, 1000],
    # Expiry times that are in the future (an API key must not expire before it exists).
    "seed_future": [4102444800000, 4102444800001, 4133980800000],
    "seed_end": [4102444800000],
}
global_bindings = {
    "body.profile_id": "seed_profile",
    "body.template_id": "seed_template",
    "body.role_id": "seed_role",
    "body.url": "seed_url",
    "body.trigger_groups[*].conditions[*].source.id": "seed_device",
    "body.actions[*].target.id": "seed_device",
    "body.actions[*].channels[*]": "seed_channel",
    "body.actions[*].channel": "seed_channel",
    "body.actions[*].scene": "seed_scene",
    "body.package_id": "seed_package",
    "body.device_ids[*]": "seed_device",
    "body.widgets[*].config.device_id": "seed_device",
    "body.widgets[*].config.device_ids[*]": "seed_device",
    "body.widgets[*].config.profile_id": "seed_profile",
    "query.start": "seed_start",
    "body.expires_at": "seed_future",
    "query.end": "seed_end",
}
print()
print("[parameters]")
for key, dictionary in global_bindings.items():
    print(f'"{key}" = {{ dictionary = "{dictionary}", probability = 0.8 }}')
operations = []
for path, item in doc["paths"].items():
    if "{" not in path:
        continue
    base = max((p for p in pins if path == p or path.startswith(p + "/")), key=len, default=None)
    if base is None:
        continue
    for method in item:
        if method not in ("get", "put", "post", "patch", "delete"):
            continue
        chosen = pins[base]
        # Only the resource itself is deleted with a spare; `DELETE /x/{id}/y` works
        # on the kept one.
        params = chosen.get(method.upper()) if path == base else None
        params = params or chosen["*"]
        bindings = []
        for name, ids in params.items():
            dictionary = "d" + str(abs(hash((name, tuple(ids)))))
            dictionaries[dictionary] = ids
            # Seeded ids most of the time; generated ones (404) now and then, and
            # links in the stateful phase supply the ids of what that phase created.
            bindings.append(f'"path.{name}" = {{ dictionary = "{dictionary}", probability = 0.9 }}')
        operations.append((path, method.upper(), bindings))
# Operations without path ids whose bodies need real secrets: (path, method, {field: values}).
for path, method, fields in [
    ("/api/v1/auth/login", "POST", {"email": [login_email], "password": [login_password]}),
    ("/api/v1/auth/refresh", "POST", {"refresh_token": refresh_tokens}),
    ("/api/v1/device/provision", "POST", {"profile_secret": [provision_secret]}),
]:
    bindings = []
    for field, values in fields.items():
        dictionary = f"secret_{field}"
        dictionaries[dictionary] = values
        bindings.append(f'"body.{field}" = {{ dictionary = "{dictionary}", probability = 0.8 }}')
    operations.append((path, method, bindings))
# Every positive coverage case of creating a rule or template reuses the example's
# name, which must not repeat in a tenant: only the first could succeed, and the
# examples phase already took the name. Their negative cases still run.
operations.append(("/api/v1/rules", "POST", None))
operations.append(("/api/v1/templates", "POST", None))
for name, ids in dictionaries.items():
    print()
    print(f"[dictionaries.{name}]")
    print("values = " + json.dumps(ids))
for path, method, bindings in operations:
    print()
    print("[[operations]]")
    print(f'include-path = "{path}"')
    print(f'include-method = "{method}"')
    if bindings is None:
        print('phases.coverage.generation.mode = "negative"')
    else:
        print("parameters = { " + ", ".join(bindings) + " }")
