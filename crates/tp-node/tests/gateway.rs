//! Gateways through the whole node: sub-devices are registered through the REST API
//! with `parent_id` and `sub_device_addr`; a command to a sub-device reaches the
//! top-level gateway on its gateway topic in the envelope and the gateway's answer marks
//! the sub-device's log row replied.

use serde_json::{Value, json};

mod common;
use common::*;

impl Node {
    async fn create_sub(&self, number: &str, parent: &str, addr: &str) -> (StatusCode, Value) {
        self.call(
            post(),
            "/api/v1/devices",
            Some(json!({"name": number, "device_number": number,
                        "parent_id": parent, "sub_device_addr": addr})),
        )
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_to_sub_devices_reach_the_gateway_in_the_envelope() {
    let node = Node::start().await;
    let gw = node.create_device("gw-1").await;
    let (status, sub) = node.create_sub("sensor-1", &gw.id, "sensor_01").await;
    assert_eq!(status, StatusCode::CREATED, "{sub}");
    assert_eq!(sub["parent_id"], gw.id.as_str());
    assert_eq!(sub["sub_device_addr"], "sensor_01");
    let (status, sg) = node.create_sub("sub-gw", &gw.id, "line_2").await;
    assert_eq!(status, StatusCode::CREATED, "{sg}");
    let (status, deep) = node
        .create_sub("sensor-2", sg["id"].as_str().unwrap(), "sensor_02")
        .await;
    assert_eq!(status, StatusCode::CREATED, "{deep}");
    let sub_id = sub["id"].as_str().unwrap().to_owned();
    let deep_id = deep["id"].as_str().unwrap().to_owned();

    let mut client = node.connect(&gw, "mqtt_gw-1").await;
    client
        .subscribe(&["gateway/command/gw-1/+", "gateway/telemetry/control/gw-1"])
        .await
        .unwrap();
    node.wait_online(&gw, true).await;

    let row = node
        .downlink(
            post(),
            &format!("/api/v1/devices/{sub_id}/commands"),
            json!({"method": "ReSet", "params": {"hard": true}}),
        )
        .await;
    assert_eq!(row["status"], "sent", "{row}");
    let m = mid(&row);
    let (topic, payload) = client.recv_publish(RECV).await.expect("command");
    assert_eq!(topic, format!("gateway/command/gw-1/{m}"));
    assert_eq!(
        json_of(&payload),
        json!({"sub_device_data": {"sensor_01": {"method": "ReSet", "params": {"hard": true}}}})
    );
    client
        .publish(
            &format!("gateway/command/response/{m}"),
            r#"{"result":0,"message":"success","ts":1609143039,"method":"ReSet"}"#,
        )
        .await
        .unwrap();
    let sub_dev = TestDevice {
        id: sub_id.clone(),
        number: "sensor-1".into(),
        username: String::new(),
        password: String::new(),
    };
    let replied = node.wait_status(&sub_dev, &m, "replied").await;
    assert_eq!(replied["response"]["method"], "ReSet");

    // telemetry control to the nested gateway's sub-device
    let row = node
        .downlink(
            post(),
            &format!("/api/v1/devices/{deep_id}/telemetry/control"),
            json!({"values": {"switch": true}}),
        )
        .await;
    assert_eq!(row["status"], "sent", "{row}");
    let (topic, payload) = client.recv_publish(RECV).await.expect("control");
    assert_eq!(topic, "gateway/telemetry/control/gw-1");
    assert_eq!(
        json_of(&payload),
        json!({"sub_gateway_data": {"line_2": {"sub_device_data": {"sensor_02": {"switch": true}}}}})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_placement_is_validated() {
    let node = Node::start().await;
    let gw = node.create_device("gw-v").await;
    // a parent that does not exist in the tenant
    let (status, body) = node.create_sub("s-a", &uuid_string(), "a").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    // a parent without an address, an address without a parent
    let (status, body) = node
        .call(
            post(),
            "/api/v1/devices",
            Some(json!({"name": "s-b", "parent_id": gw.id})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body) = node
        .call(
            post(),
            "/api/v1/devices",
            Some(json!({"name": "s-c", "sub_device_addr": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    // one address per gateway
    let (status, first) = node.create_sub("s-d", &gw.id, "dup").await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, body) = node.create_sub("s-e", &gw.id, "dup").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    // PATCH: a gateway cannot be put behind its own sub-device
    let (status, body) = node
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/devices/{}", gw.id),
            Some(json!({"parent_id": first["id"], "sub_device_addr": "loop"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    // PATCH: moving a sub-device out and back in
    let first_id = first["id"].as_str().unwrap();
    let (status, body) = node
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/devices/{first_id}"),
            Some(json!({"parent_id": null, "sub_device_addr": null})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["parent_id"], Value::Null);
    let (status, body) = node
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/devices/{first_id}"),
            Some(json!({"parent_id": gw.id, "sub_device_addr": "back"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["sub_device_addr"], "back");
}

fn uuid_string() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_commands_to_offline_sub_devices_go_out_when_the_gateway_reconnects() {
    use tp_core::{CommandId, CommandKind, CommandLog, CommandStatus, DeviceId};

    let node = Node::start().await;
    let gw = node.create_device("gw-q").await;
    let (_, sub) = node.create_sub("sensor-q", &gw.id, "s_q").await;
    let (_, sg) = node.create_sub("sub-gw-q", &gw.id, "line_q").await;
    let (_, deep) = node
        .create_sub("sensor-dq", sg["id"].as_str().unwrap(), "s_dq")
        .await;
    let sub_dev = TestDevice {
        id: sub["id"].as_str().unwrap().to_owned(),
        number: "sensor-q".into(),
        username: String::new(),
        password: String::new(),
    };
    let deep_id = deep["id"].as_str().unwrap().to_owned();

    // The gateway was online once and dropped off.
    let client = node.connect(&gw, "mqtt_gw-q").await;
    node.wait_online(&gw, true).await;
    client.disconnect().await;
    node.wait_online(&gw, false).await;

    let queued = node
        .downlink(
            post(),
            &format!("/api/v1/devices/{}/commands", sub_dev.id),
            json!({"method": "Calibrate", "params": {"zero": 1}}),
        )
        .await;
    assert_eq!(queued["status"], "pending", "{queued}");
    let queued_mid = mid(&queued);
    let deep_row = node
        .downlink(
            post(),
            &format!("/api/v1/devices/{deep_id}/commands"),
            json!({"method": "Deep", "params": {}}),
        )
        .await;
    assert_eq!(deep_row["status"], "pending", "{deep_row}");
    let deep_mid = mid(&deep_row);
    // One whose expiry passed while the gateway was away (written to the store
    // directly, so no API listing expires it first).
    let sub_id: DeviceId = sub_dev.id.parse().unwrap();
    let sub_row = node
        .platform
        .metadata()
        .get_device_by_id(sub_id)
        .await
        .unwrap()
        .unwrap();
    let now = tp_core::now_ms();
    node.platform
        .metadata()
        .create_command(&CommandLog {
            id: CommandId::new(),
            tenant_id: sub_row.tenant_id,
            device_id: sub_id,
            message_id: "5ca1ed00".into(),
            kind: CommandKind::Command,
            payload: json!({"method": "Stale", "params": {}}),
            status: CommandStatus::Pending,
            response: None,
            created_at: now - 10_000,
            updated_at: now - 10_000,
            expires_at: Some(now - 5_000),
            published: None,
        })
        .await
        .unwrap();

    // The gateway reconnects and subscribes: both live commands arrive through it,
    // in the envelope, on its own topic; the stale one never does.
    let mut client = node.connect(&gw, "mqtt_gw-q").await;
    client.subscribe(&["gateway/command/gw-q/+"]).await.unwrap();
    let mut got = std::collections::HashMap::new();
    for _ in 0..2 {
        let (topic, payload) = client.recv_publish(RECV).await.expect("queued command");
        got.insert(topic, json_of(&payload));
    }
    assert_eq!(
        got[&format!("gateway/command/gw-q/{queued_mid}")],
        json!({"sub_device_data": {"s_q": {"method": "Calibrate", "params": {"zero": 1}}}})
    );
    assert_eq!(
        got[&format!("gateway/command/gw-q/{deep_mid}")],
        json!({"sub_gateway_data": {"line_q": {"sub_device_data": {"s_dq": {"method": "Deep", "params": {}}}}}})
    );
    node.wait_status(&sub_dev, &queued_mid, "sent").await;
    let stale = node
        .platform
        .metadata()
        .get_command_by_message_id(sub_id, "5ca1ed00")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stale.status, CommandStatus::Expired, "{stale:?}");

    // The gateway's plain answer marks the sub-device's row.
    client
        .publish(
            &format!("gateway/command/response/{queued_mid}"),
            r#"{"result":0,"message":"success","method":"Calibrate"}"#,
        )
        .await
        .unwrap();
    node.wait_status(&sub_dev, &queued_mid, "replied").await;

    // The gateway's status history: connect, disconnect, connect (newest first).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let history = loop {
        let (status, history) = node
            .call(
                reqwest::Method::GET,
                &format!("/api/v1/devices/{}/status-history", gw.id),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{history}");
        if history["total"] == 3 || tokio::time::Instant::now() >= deadline {
            break history;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let reasons: Vec<_> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["online"].as_bool().unwrap(),
                e["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        [
            (true, "connect".to_owned()),
            (false, "disconnect".to_owned()),
            (true, "connect".to_owned())
        ]
    );
    assert_eq!(history["total"], 3);
    // Paged and ranged: the second page of one is the disconnect; an empty range is
    // empty; a reversed range is refused.
    let path = format!("/api/v1/devices/{}/status-history", gw.id);
    let (status, page) = node
        .call(
            reqwest::Method::GET,
            &format!("{path}?page=2&page_size=1"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["total"], 3);
    assert_eq!(page["items"][0]["reason"], "disconnect");
    let (status, none) = node
        .call(reqwest::Method::GET, &format!("{path}?start=0&end=1"), None)
        .await;
    assert_eq!(
        (status, &none["total"]),
        (StatusCode::OK, &json!(0)),
        "{none}"
    );
    let (status, body) = node
        .call(
            reqwest::Method::GET,
            &format!("{path}?start=10&end=5"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    node.platform.shutdown().await.unwrap();
}
