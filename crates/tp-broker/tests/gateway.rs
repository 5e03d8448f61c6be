//! Gateways over real sockets: one envelope from a gateway lands on the gateway, its
//! sub-devices and a nested sub-gateway's sub-devices; downlink to a sub-device goes
//! through the top-level gateway in the envelope and the gateway's answer marks the
//! sub-device's log row.

use std::time::Duration;

use tp_broker::downlink::route;
use tp_broker::testing::{MqttTestClient, TestBroker};
use tp_core::protocol::ResponseObject;
use tp_core::{
    CommandId, CommandKind, CommandLog, CommandStatus, Device, DeviceId, Downlink, Order, Value,
    now_ms,
};

const CLOSE: Duration = Duration::from_secs(10);

async fn wait_consumed(node: &TestBroker, at_least: u64) {
    for _ in 0..1000 {
        if node.broker.stats().consumed >= at_least {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "ingest never consumed {at_least} messages: {:?}",
        node.broker.stats()
    );
}

/// A device behind `parent` at `addr`.
async fn sub_device(node: &TestBroker, parent: DeviceId, addr: &str) -> Device {
    let (mut d, _) = Device::new(node.tenant, addr.into(), None);
    d.parent_id = Some(parent);
    d.sub_device_addr = Some(addr.to_owned());
    node.metadata.create_device(&d).await.unwrap();
    d
}

async fn latest(node: &TestBroker, id: DeviceId) -> Vec<(String, Value)> {
    node.timeseries
        .latest(id, None)
        .await
        .unwrap()
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect()
}

/// Gateway `gw` with sub-devices `s1`, `s2` and sub-gateway `sg`, which has `s3`.
struct Topology {
    gw: Device,
    gw_password: String,
    s1: Device,
    s2: Device,
    sg: Device,
    s3: Device,
}

async fn topology(node: &TestBroker) -> Topology {
    let (gw, gw_password) = node.create_device().await;
    let s1 = sub_device(node, gw.id, "s1").await;
    let s2 = sub_device(node, gw.id, "s2").await;
    let sg = sub_device(node, gw.id, "sg").await;
    let s3 = sub_device(node, sg.id, "s3").await;
    Topology {
        gw,
        gw_password,
        s1,
        s2,
        sg,
        s3,
    }
}

fn kv(pairs: &[(&str, Value)]) -> Vec<(String, Value)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_envelope_lands_on_every_device_it_names() {
    let node = TestBroker::start(|_| {}).await;
    let t = topology(&node).await;
    let mut gw = node.connect(&t.gw, &t.gw_password).await.unwrap();
    let envelope = r#"{
        "gateway_data": {"gt": 1},
        "sub_device_data": {"s1": {"t": 11.5}, "s2": {"t": 12, "on": true}, "ghost": {"t": 99}},
        "sub_gateway_data": {"sg": {"gateway_data": {"sgt": 2},
                                    "sub_device_data": {"s3": {"t": 13}, "ghost": {"t": 98}}}}
    }"#;
    gw.publish("gateway/telemetry", envelope).await.unwrap();
    wait_consumed(&node, 1).await;
    node.writer.flush().await.unwrap();

    assert_eq!(
        latest(&node, t.gw.id).await,
        kv(&[("gt", Value::Integer(1))])
    );
    assert_eq!(
        latest(&node, t.s1.id).await,
        kv(&[("t", Value::Float(11.5))])
    );
    assert_eq!(
        latest(&node, t.s2.id).await,
        kv(&[("on", Value::Bool(true)), ("t", Value::Integer(12))])
    );
    assert_eq!(
        latest(&node, t.sg.id).await,
        kv(&[("sgt", Value::Integer(2))])
    );
    assert_eq!(
        latest(&node, t.s3.id).await,
        kv(&[("t", Value::Integer(13))])
    );
    // unknown addresses drop only their own part; the message is not rejected
    assert_eq!(node.broker.stats().rejected, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_attributes_and_events_are_routed_and_acknowledged() {
    let node = TestBroker::start(|_| {}).await;
    let t = topology(&node).await;
    let n = &t.gw.device_number;
    let mut gw = node.connect(&t.gw, &t.gw_password).await.unwrap();
    gw.subscribe(&[
        &format!("gateway/attributes/response/{n}/+"),
        &format!("gateway/event/response/{n}/+"),
    ])
    .await
    .unwrap();
    gw.publish(
        "gateway/attributes/a1",
        r#"{"gateway_data":{"fw":"1.0"},"sub_device_data":{"s1":{"ip":"10.0.0.7"}},
            "sub_gateway_data":{"sg":{"sub_device_data":{"s3":{"port":1883}}}}}"#,
    )
    .await
    .unwrap();
    let (topic, payload) = gw.recv_publish(CLOSE).await.expect("attribute ack");
    assert_eq!(topic, format!("gateway/attributes/response/{n}/a1"));
    assert!(ResponseObject::decode(&payload).unwrap().is_success());
    let attrs = |id| {
        let meta = node.metadata.clone();
        async move {
            meta.get_attributes(id, None)
                .await
                .unwrap()
                .into_iter()
                .map(|a| (a.key, a.value))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        attrs(t.gw.id).await,
        kv(&[("fw", Value::String("1.0".into()))])
    );
    assert_eq!(
        attrs(t.s1.id).await,
        kv(&[("ip", Value::String("10.0.0.7".into()))])
    );
    assert_eq!(attrs(t.s3.id).await, kv(&[("port", Value::Integer(1883))]));
    assert_eq!(attrs(t.s2.id).await, vec![]);

    gw.publish(
        "gateway/event/e1",
        r#"{"sub_device_data":{"s2":{"method":"Alarm","params":{"level":3}}}}"#,
    )
    .await
    .unwrap();
    let (topic, payload) = gw.recv_publish(CLOSE).await.expect("event ack");
    assert_eq!(topic, format!("gateway/event/response/{n}/e1"));
    assert!(ResponseObject::decode(&payload).unwrap().is_success());
    node.writer.flush().await.unwrap();
    let events = node
        .timeseries
        .query_events(t.s2.id, 0, i64::MAX, 10, Order::Asc)
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].message_id.as_str(), events[0].method.as_str()),
        ("e1", "Alarm")
    );
    assert_eq!(events[0].params, serde_json::json!({"level":3}));
}

async fn log_row(node: &TestBroker, device: &Device, mid: &str) -> CommandLog {
    let now = now_ms();
    let row = CommandLog {
        id: CommandId::new(),
        tenant_id: device.tenant_id,
        device_id: device.id,
        message_id: mid.into(),
        kind: CommandKind::Command,
        payload: serde_json::json!({"method":"ReSet","params":{"hard":true}}),
        status: CommandStatus::Sent,
        response: None,
        created_at: now,
        updated_at: now,
        expires_at: None,
        published: None,
    };
    node.metadata.create_command(&row).await.unwrap();
    row
}

async fn wait_replied(node: &TestBroker, device: DeviceId, mid: &str) -> CommandLog {
    for _ in 0..1000 {
        let row = node
            .metadata
            .get_command_by_message_id(device, mid)
            .await
            .unwrap()
            .unwrap();
        if row.status == CommandStatus::Replied {
            return row;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("command {mid} never marked replied");
}

async fn send_through_gateway(
    node: &TestBroker,
    gw: &mut MqttTestClient,
    device: &Device,
    row: &CommandLog,
) -> (String, serde_json::Value) {
    let r = route(
        node.metadata.as_ref(),
        None,
        device,
        row.kind,
        &row.message_id,
        &row.payload,
    )
    .await
    .unwrap();
    // Logged as sent with what went out, as the API does: a plain response from
    // the gateway is matched by the published topic.
    let mut sent = row.clone();
    sent.status = CommandStatus::Sent;
    sent.published = Some(r.published());
    node.metadata.update_command(&sent).await.unwrap();
    node.broker
        .transport()
        .send(Downlink {
            device_id: r.device_id,
            topic: r.topic,
            payload: serde_json::to_vec(&r.payload).unwrap().into(),
        })
        .await
        .unwrap();
    let (topic, payload) = gw.recv_publish(CLOSE).await.expect("downlink");
    (topic, serde_json::from_slice(&payload).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_to_sub_devices_go_through_the_top_level_gateway() {
    let node = TestBroker::start(|_| {}).await;
    let t = topology(&node).await;
    let n = &t.gw.device_number;
    let mut gw = node.connect(&t.gw, &t.gw_password).await.unwrap();
    gw.subscribe(&[&format!("gateway/command/{n}/+")])
        .await
        .unwrap();

    // a direct sub-device; the gateway answers with a plain response object
    let row = log_row(&node, &t.s1, "c0000001").await;
    let (topic, payload) = send_through_gateway(&node, &mut gw, &t.s1, &row).await;
    assert_eq!(topic, format!("gateway/command/{n}/c0000001"));
    assert_eq!(
        payload,
        serde_json::json!({"sub_device_data":{"s1":{"method":"ReSet","params":{"hard":true}}}})
    );
    gw.publish(
        "gateway/command/response/c0000001",
        r#"{"result":0,"message":"success","ts":1609143039,"method":"ReSet"}"#,
    )
    .await
    .unwrap();
    let replied = wait_replied(&node, t.s1.id, "c0000001").await;
    assert_eq!(replied.response.unwrap()["method"], "ReSet");

    // a sub-device of the nested gateway; the gateway answers in the envelope
    let row = log_row(&node, &t.s3, "c0000002").await;
    let (topic, payload) = send_through_gateway(&node, &mut gw, &t.s3, &row).await;
    assert_eq!(topic, format!("gateway/command/{n}/c0000002"));
    assert_eq!(
        payload,
        serde_json::json!({"sub_gateway_data":{"sg":{"sub_device_data":
            {"s3":{"method":"ReSet","params":{"hard":true}}}}}})
    );
    gw.publish(
        "gateway/command/response/c0000002",
        r#"{"sub_gateway_data":{"sg":{"sub_device_data":{"s3":{"result":0,"message":"done"}}}}}"#,
    )
    .await
    .unwrap();
    let replied = wait_replied(&node, t.s3.id, "c0000002").await;
    assert_eq!(replied.response.unwrap()["message"], "done");
    // the other rows are untouched
    let _ = t.s2;
}
