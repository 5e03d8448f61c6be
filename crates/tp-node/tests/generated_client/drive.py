"""Drives a node with a client generated from its OpenAPI document only.

    python3 drive.py BASE_URL EMAIL PASSWORD CLIENT_PARENT_DIR

`CLIENT_PARENT_DIR` holds the package `tp_client` written by openapi-python-client.
Signs in, creates a device, a rule with a "held for" condition and two actions, sends
the device's telemetry over the HTTP device API, waits for the alarm and prints what
it read as one JSON object. Nothing here knows the API beyond the generated code.
"""

import base64
import json
import sys
import time
import urllib.request

base, email, password, parent = sys.argv[1:5]
sys.path.insert(0, parent)

from tp_client import AuthenticatedClient, Client  # noqa: E402
from tp_client.api.alarms import list_alarms  # noqa: E402
from tp_client.api.auth import login  # noqa: E402
from tp_client.api.devices import create_device  # noqa: E402
from tp_client.api.rules import create_rule, get_rule  # noqa: E402
from tp_client.models import (  # noqa: E402
    ActionRaiseAlarm,
    ActionRaiseAlarmType,
    ActionTargetTriggeringDevice,
    ActionTargetTriggeringDeviceKind,
    ActionTelemetryControl,
    ActionTelemetryControlType,
    ActionTelemetryControlValues,
    AlarmSeverity,
    AlarmList,
    ConditionDevice,
    ConditionDeviceType,
    CreateDeviceRequest,
    CreateRuleRequest,
    DataKind,
    DeviceSourceDevice,
    DeviceSourceDeviceKind,
    LoginRequest,
    Operator,
    TriggerGroup,
)

session = login.sync(client=Client(base_url=base), body=LoginRequest(email=email, password=password))
client = AuthenticatedClient(base_url=base, token=session.token)

device = create_device.sync(client=client, body=CreateDeviceRequest(name="generated boiler"))

values = ActionTelemetryControlValues()
values["switch"] = False
rule = create_rule.sync(
    client=client,
    body=CreateRuleRequest(
        name="boiler too hot (generated client)",
        trigger_groups=[
            TriggerGroup(
                conditions=[
                    ConditionDevice(
                        type_=ConditionDeviceType.DEVICE,
                        source=DeviceSourceDevice(id=device.id, kind=DeviceSourceDeviceKind.DEVICE),
                        data=DataKind.TELEMETRY,
                        key="temp",
                        operator=Operator(">"),
                        value=40,
                        duration_secs=1,
                    )
                ]
            )
        ],
        actions=[
            ActionRaiseAlarm(
                type_=ActionRaiseAlarmType.RAISE_ALARM,
                severity=AlarmSeverity.MAJOR,
                title="Boiler too hot",
            ),
            ActionTelemetryControl(
                type_=ActionTelemetryControlType.TELEMETRY_CONTROL,
                target=ActionTargetTriggeringDevice(kind=ActionTargetTriggeringDeviceKind.TRIGGERING_DEVICE),
                values=values,
            ),
        ],
    ),
)
if rule is None or not hasattr(rule, "id"):
    sys.exit(f"create_rule answered {rule!r}")

# The device side is not part of the REST document: ThingsPanel's HTTP device API.
creds = device.credentials
auth = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
req = urllib.request.Request(
    f"{base}/api/v1/device/telemetry",
    data=json.dumps({"temp": 45}).encode(),
    method="POST",
    headers={"Authorization": f"Basic {auth}", "Content-Type": "application/json"},
)
urllib.request.urlopen(req, timeout=30).read()

alarms = None
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    page = list_alarms.sync(client=client, device_id=device.id)
    if isinstance(page, AlarmList) and page.items:
        alarms = page
        break
    time.sleep(0.2)
if alarms is None:
    sys.exit("no alarm within 60 s")

stored = get_rule.sync(client=client, id=rule.id)
alarm = alarms.items[0]
print(json.dumps({
    "device_id": str(device.id),
    "rule_id": str(rule.id),
    "stored_condition_kind": type(stored.trigger_groups[0].conditions[0]).__name__,
    "stored_duration_secs": stored.trigger_groups[0].conditions[0].duration_secs,
    "stored_action_kinds": [type(a).__name__ for a in stored.actions],
    "alarm_total": alarms.total,
    "alarm_rule_id": str(alarm.rule_id),
    "alarm_device_id": str(alarm.device_id),
    "alarm_severity": str(alarm.severity),
    "alarm_status": str(alarm.status),
}))
