//! The thing model end to end: a device template with typed definitions on a
//! profile, devices reporting over HTTP, MQTT and CoAP with real clients, the
//! template's validation modes (`reject` stores nothing of a bad message, `record`
//! stores it and records the violation), commands and attribute sets checked
//! against the definitions, and the typed latest values with units.

mod common;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use common::*;
use reqwest::Method;
use serde_json::{Value, json};

/// A thermostat: `temp` (float °C, -40..125) and `hum` (int %, 0..100) telemetry, a
/// read-write enum attribute `mode` and a read-only `fw`, a `set_target` command
/// taking `target` (int °C, 5..30).
fn thermostat(validation: &str) -> Value {
    json!({
        "name": "Thermostat",
        "validation": validation,
        "telemetry": [
            {"identifier": "temp", "name": "Temperature", "data_type": "float", "unit": "°C", "min": -40, "max": 125, "step": 0.5},
            {"identifier": "hum", "name": "Humidity", "data_type": "int", "unit": "%", "min": 0, "max": 100}
        ],
        "attributes": [
            {"identifier": "mode", "name": "Mode", "data_type": "enum", "access": "read_write",
             "enum_values": [{"value": "auto", "description": "Automatic"}, {"value": "off"}]},
            {"identifier": "fw", "name": "Firmware", "data_type": "string"}
        ],
        "events": [
            {"identifier": "overheat", "name": "Overheated", "params": [
                {"identifier": "temp", "name": "Temperature", "data_type": "float", "unit": "°C"}]}
        ],
        "commands": [
            {"identifier": "set_target", "name": "Set target", "params": [
                {"identifier": "target", "name": "Target", "data_type": "int", "unit": "°C", "min": 5, "max": 30}]}
        ]
    })
}

struct Setup {
    node: Node,
    template: String,
    device: TestDevice,
}

/// A node with CoAP, the thermostat template in `validation` mode on a profile, and
/// one device in that profile.
async fn setup(validation: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(
        dir.path(),
        &[("mqtt.coap_listen", "127.0.0.1:0".to_owned())],
    );
    let platform = Platform::start(config).await.unwrap();
    let node = Node::signed_in(platform, dir).await;
    let (status, template) = node
        .call(
            Method::POST,
            "/api/v1/templates",
            Some(thermostat(validation)),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{template}");
    let template = template["id"].as_str().unwrap().to_owned();
    let (status, profile) = node
        .call(
            Method::POST,
            "/api/v1/profiles",
            Some(json!({"name": "thermostats", "template_id": template})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{profile}");
    assert_eq!(profile["template_id"], template.as_str());
    let (status, d) = node
        .call(
            Method::POST,
            "/api/v1/devices",
            Some(json!({"name": "t1", "device_number": "thermo-1", "profile_id": profile["id"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{d}");
    let device = TestDevice {
        id: d["id"].as_str().unwrap().to_owned(),
        number: "thermo-1".to_owned(),
        username: d["credentials"]["username"].as_str().unwrap().to_owned(),
        password: d["credentials"]["password"].as_str().unwrap().to_owned(),
    };
    Setup {
        node,
        template,
        device,
    }
}

/// `POST /api/v1/device/{kind}` with the device's credentials: status and body.
async fn http_uplink(s: &Setup, kind: &str, body: &str) -> (StatusCode, Value) {
    let resp = s
        .node
        .http
        .post(format!("{}/api/v1/device/{kind}", s.node.base))
        .basic_auth(&s.device.username, Some(&s.device.password))
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The device's latest telemetry as `{key: value}`.
async fn latest(s: &Setup) -> serde_json::Map<String, Value> {
    let (status, body) = s
        .node
        .call(
            Method::GET,
            &format!("/api/v1/devices/{}/telemetry/latest", s.device.id),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rows = body["items"].as_array().cloned().unwrap_or_default();
    let mut out = serde_json::Map::new();
    for row in rows {
        let key = row["key"].as_str().unwrap().to_owned();
        let value = row
            .get("value")
            .cloned()
            .or_else(|| {
                row["values"]
                    .as_array()
                    .and_then(|v| v.first())
                    .map(|v| v["value"].clone())
            })
            .unwrap_or(Value::Null);
        out.insert(key, value);
    }
    out
}

/// Waits until the latest `key` is `want`; returns all latest values then.
async fn wait_latest(s: &Setup, key: &str, want: Value) -> serde_json::Map<String, Value> {
    tp_core::testing::eventually_ok(&format!("latest {key} = {want}"), || async {
        let l = latest(s).await;
        if l.get(key) == Some(&want) {
            Ok(l)
        } else {
            Err(l)
        }
    })
    .await
}

async fn attributes(s: &Setup) -> Value {
    let (status, body) = s
        .node
        .call(
            Method::GET,
            &format!("/api/v1/devices/{}/attributes", s.device.id),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn has_key(body: &Value, key: &str) -> bool {
    body.to_string().contains(&format!("\"{key}\""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_mode_stores_nothing_of_a_bad_message() {
    let s = setup("reject").await;

    // HTTP: 422 naming the key; neither key of the message is stored.
    let (status, body) = http_uplink(&s, "telemetry", r#"{"temp": 300, "hum": 41}"#).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["errcode"], "thing_model_violation", "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("temp") && message.contains("maximum"),
        "{message}"
    );
    let (status, body) = http_uplink(&s, "telemetry", r#"{"temp": 21.5}"#).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let l = wait_latest(&s, "temp", json!(21.5)).await;
    assert!(
        !l.contains_key("hum"),
        "nothing of the refused message: {l:?}"
    );

    // MQTT telemetry: acknowledged at the write-ahead log, refused at ingest. The
    // device's messages are processed in order, so once the good one that follows
    // is stored, the bad one has been refused.
    let mut mqtt = s.node.connect(&s.device, "thermo-1").await;
    mqtt.publish(
        "devices/telemetry",
        r#"{"temp": -80, "hum": 30, "pressure": 1000}"#,
    )
    .await
    .unwrap();
    mqtt.publish("devices/telemetry", r#"{"temp": 22}"#)
        .await
        .unwrap();
    let l = wait_latest(&s, "temp", json!(22)).await;
    assert!(
        !l.contains_key("hum") && !l.contains_key("pressure"),
        "nothing of the refused MQTT message: {l:?}"
    );

    // MQTT attributes: the attribute response says why; nothing stored.
    mqtt.subscribe(&["devices/attributes/response/thermo-1/+"])
        .await
        .unwrap();
    mqtt.publish("devices/attributes/7", r#"{"mode": "turbo", "fw": "1.0"}"#)
        .await
        .unwrap();
    let (topic, payload) = mqtt.recv_publish(RECV).await.expect("attribute response");
    assert_eq!(topic, "devices/attributes/response/thermo-1/7");
    let response: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(response["result"], 1, "{response}");
    assert!(
        response["message"].as_str().unwrap().contains("mode"),
        "{response}"
    );
    mqtt.publish("devices/attributes/8", r#"{"mode": "auto"}"#)
        .await
        .unwrap();
    let attrs = tp_core::testing::eventually_ok("mode stored", || async {
        let a = attributes(&s).await;
        if has_key(&a, "mode") { Ok(a) } else { Err(a) }
    })
    .await;
    assert!(
        !has_key(&attrs, "fw"),
        "nothing of the refused attributes: {attrs}"
    );

    // CoAP: 4.22 naming the key.
    let coap = s
        .node
        .platform
        .broker()
        .coap_addr()
        .expect("coap listening");
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut p = Packet::new();
    p.header.set_version(1);
    p.header.set_type(MessageType::Confirmable);
    p.header.code = MessageClass::Request(RequestType::Post);
    p.header.message_id = 21;
    p.set_token(vec![2, 1]);
    p.add_option(CoapOption::UriPath, b"telemetry".to_vec());
    p.add_option(
        CoapOption::UriQuery,
        format!("u={}", s.device.username).into_bytes(),
    );
    p.add_option(
        CoapOption::UriQuery,
        format!("p={}", s.device.password).into_bytes(),
    );
    p.payload = br#"{"hum": 140, "temp": 20}"#.to_vec();
    socket.send_to(&p.to_bytes().unwrap(), coap).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let (n, _) = tokio::time::timeout(RECV, socket.recv_from(&mut buf))
        .await
        .expect("a CoAP answer")
        .unwrap();
    let answer = Packet::from_bytes(&buf[..n]).unwrap();
    assert_eq!(
        answer.header.code,
        MessageClass::Response(ResponseType::UnprocessableEntity)
    );
    assert!(String::from_utf8_lossy(&answer.payload).contains("hum"));
    let l = latest(&s).await;
    assert_eq!(
        l.get("temp"),
        Some(&json!(22)),
        "the CoAP message stored nothing: {l:?}"
    );

    // Counted.
    let metrics = s
        .node
        .http
        .get(format!("{}/metrics", s.node.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    if metrics.contains("tp_ingest_messages_total") {
        assert!(
            metrics.contains("tp_thing_model_rejected_total"),
            "{metrics}"
        );
    }
    s.node.platform.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_mode_stores_and_records_the_violation() {
    let s = setup("record").await;
    let (status, body) = http_uplink(&s, "telemetry", r#"{"temp": 300, "hum": 41}"#).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let l = wait_latest(&s, "temp", json!(300)).await;
    assert_eq!(l.get("hum"), Some(&json!(41)));
    let event = tp_core::testing::eventually_ok("violation event", || async {
        let (_, events) = s
            .node
            .call(
                Method::GET,
                &format!("/api/v1/devices/{}/events", s.device.id),
                None,
            )
            .await;
        events["items"]
            .as_array()
            .and_then(|items| {
                items
                    .iter()
                    .find(|e| e["method"] == "thing_model_violation")
                    .cloned()
            })
            .ok_or(events)
    })
    .await;
    let violations = &event["params"]["violations"];
    assert_eq!(violations[0]["key"], "temp", "{event}");
    assert_eq!(violations[0]["value"], 300, "{event}");
    assert_eq!(
        violations.as_array().unwrap().len(),
        1,
        "hum 41 is fine: {event}"
    );

    // The typed latest values carry the definitions (units) and the violation.
    let (status, model) = s
        .node
        .call(
            Method::GET,
            &format!("/api/v1/devices/{}/thing-model", s.device.id),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{model}");
    assert_eq!(model["template_id"], s.template.as_str());
    let temp = &model["telemetry"][0];
    assert_eq!(temp["key"], "temp");
    assert_eq!(temp["definition"]["unit"], "°C");
    assert_eq!(temp["value"], 300);
    assert!(
        temp["violation"].as_str().unwrap().contains("maximum"),
        "{temp}"
    );
    assert_eq!(model["telemetry"][1]["definition"]["unit"], "%");
    assert_eq!(model["commands"][0]["identifier"], "set_target");

    // Switching the template to reject takes effect at once (the cache is invalidated).
    let (status, body) = s
        .node
        .call(
            Method::PUT,
            &format!("/api/v1/templates/{}", s.template),
            Some(thermostat("reject")),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = http_uplink(&s, "telemetry", r#"{"temp": 300}"#).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    s.node.platform.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_and_attribute_sets_are_checked_against_the_template() {
    let s = setup("off").await;
    let path = format!("/api/v1/devices/{}/commands", s.device.id);
    for (params, field) in [
        (json!({"target": 99}), "params.target"),
        (json!({"target": "warm"}), "params.target"),
        (json!({"tagret": 20}), "params.tagret"),
    ] {
        let (status, body) = s
            .node
            .call(
                Method::POST,
                &path,
                Some(json!({"method": "set_target", "params": params})),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["error"]["field"], field, "{body}");
    }
    let (status, log) = s.node.call(Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(log["total"], 0, "a refused command is not logged: {log}");
    s.node
        .downlink(
            Method::POST,
            &path,
            json!({"method": "set_target", "params": {"target": 21}}),
        )
        .await;
    // A command the template does not define passes (the template is not strict).
    s.node
        .downlink(Method::POST, &path, json!({"method": "reboot"}))
        .await;

    let attrs = format!("/api/v1/devices/{}/attributes", s.device.id);
    let (status, body) = s
        .node
        .call(Method::PUT, &attrs, Some(json!({"values": {"fw": "2.0"}})))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "values.fw", "{body}");
    let (status, body) = s
        .node
        .call(
            Method::PUT,
            &attrs,
            Some(json!({"values": {"mode": "turbo"}})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    s.node
        .downlink(Method::PUT, &attrs, json!({"values": {"mode": "auto"}}))
        .await;

    // Validation off: out-of-range telemetry is stored unchecked.
    let (status, _) = http_uplink(&s, "telemetry", r#"{"temp": 300}"#).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    wait_latest(&s, "temp", json!(300)).await;
    s.node.platform.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_are_tenant_scoped_and_copied() {
    let s = setup("off").await;
    let n = &s.node;
    // In use by a profile: no delete.
    let (status, body) = n
        .call(
            Method::DELETE,
            &format!("/api/v1/templates/{}", s.template),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    // Contradicting definitions are 422 naming the definition.
    let mut bad = thermostat("off");
    bad["name"] = json!("bad");
    bad["telemetry"][0]["min"] = json!(200);
    let (status, body) = n.call(Method::POST, "/api/v1/templates", Some(bad)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "telemetry[0].max", "{body}");
    // Copy within the tenant.
    let (status, copy) = n
        .call(
            Method::POST,
            &format!("/api/v1/templates/{}/copy", s.template),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{copy}");
    assert_eq!(copy["name"], "Thermostat (copy)");
    assert_eq!(copy["telemetry"][0]["unit"], "°C");
    // Copy into another tenant (SYS_ADMIN).
    let (status, tenant) = n
        .call(
            Method::POST,
            "/api/v1/tenants",
            Some(json!({"name": "other"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{tenant}");
    let (status, copy) = n
        .call(
            Method::POST,
            &format!("/api/v1/templates/{}/copy", s.template),
            Some(json!({"tenant_id": tenant["id"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{copy}");
    assert_eq!(copy["name"], "Thermostat");
    // Not visible in the caller's tenant.
    let (status, _) = n
        .call(
            Method::GET,
            &format!("/api/v1/templates/{}", copy["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, list) = n.call(Method::GET, "/api/v1/templates", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["total"], 2, "{list}");
    // A profile cannot name another tenant's template.
    let (status, body) = n
        .call(
            Method::POST,
            "/api/v1/profiles",
            Some(json!({"name": "stolen", "template_id": copy["id"]})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "template_id", "{body}");
    s.node.platform.shutdown().await.unwrap();
}
