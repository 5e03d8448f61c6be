//! ThingsPanel devices unchanged: the flows of ThingsPanel's device protocol
//! (../shared/reference/thingspanel-facts.md §3, and its direct-device and gateway
//! access specifications) driven the way its own clients behave: QoS 1, the same
//! client id on every reconnect (paho), access tokens with an empty password,
//! direct devices and devices behind two levels of gateways, all created through the
//! REST API as a user would.

mod common;

use common::*;
use rumqttc::MqttOptions;
use serde_json::{Value, json};

fn post() -> reqwest::Method {
    reqwest::Method::POST
}

/// A device created through the API, with what it logs in with.
struct Dev {
    id: String,
    number: String,
    voucher_type: String,
    username: String,
    password: String,
}

async fn create(node: &Node, body: Value) -> Dev {
    let (status, d) = node.call(post(), "/api/v1/devices", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{d}");
    Dev {
        id: d["id"].as_str().unwrap().to_owned(),
        number: d["device_number"].as_str().unwrap().to_owned(),
        voucher_type: d["credentials"]["voucher_type"]
            .as_str()
            .unwrap()
            .to_owned(),
        username: d["credentials"]["username"].as_str().unwrap().to_owned(),
        password: d["credentials"]["password"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    }
}

async fn profile(node: &Node, body: Value) -> Value {
    let (status, p) = node.call(post(), "/api/v1/profiles", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{p}");
    p
}

/// Connects as paho does: the client id stays the same on every reconnect.
async fn connect(node: &Node, d: &Dev) -> Result<MqttTestClient, String> {
    connect_as(
        node,
        &d.username,
        &d.password,
        &format!("mqtt_{}", d.number),
    )
    .await
}

async fn connect_as(
    node: &Node,
    username: &str,
    password: &str,
    client_id: &str,
) -> Result<MqttTestClient, String> {
    let addr = node.platform.mqtt_addr();
    let mut opts = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    opts.set_clean_session(true);
    MqttTestClient::connect_with(opts, username, password).await
}

async fn latest(node: &Node, d: &Dev) -> Value {
    let (status, body) = node
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/devices/{}/telemetry/latest", d.id),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Polls the latest values until `key` shows up; returns its value.
async fn wait_value(node: &Node, d: &Dev, key: &str) -> Value {
    for _ in 0..500 {
        let body = latest(node, d).await;
        if let Some(v) = body["items"]
            .as_array()
            .and_then(|items| items.iter().find(|i| i["key"] == key))
        {
            return v["value"].clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{key} of {} never stored", d.number);
}

fn mid(row: &Value) -> String {
    row["message_id"].as_str().unwrap().to_owned()
}

async fn log_row(node: &Node, d: &Dev, message_id: &str, status: &str) -> Value {
    let t = TestDevice {
        id: d.id.clone(),
        number: d.number.clone(),
        username: d.username.clone(),
        password: d.password.clone(),
    };
    node.wait_status(&t, message_id, status).await
}

fn payload_json(payload: &[u8]) -> Value {
    serde_json::from_slice(payload).unwrap()
}

fn mosquitto(name: &str) -> Option<std::path::PathBuf> {
    tp_core::testing::command_path(name, "mosquitto-clients")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_token_devices_log_in_with_the_token_alone() {
    let node = Node::start().await;
    let token_dev = create(
        &node,
        json!({"name": "sensor", "device_number": "tok-1", "voucher_type": "ACCESSTOKEN"}),
    )
    .await;
    assert_eq!(token_dev.voucher_type, "ACCESSTOKEN");
    assert!(token_dev.password.is_empty());
    assert!(token_dev.username.len() >= 16, "{}", token_dev.username);
    // The token is a secret: shown when issued, never again.
    let (_, shown) = node
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/devices/{}", token_dev.id),
            None,
        )
        .await;
    assert_eq!(shown["credentials"]["voucher_type"], "ACCESSTOKEN");
    assert_eq!(shown["credentials"]["username"], Value::Null);
    assert!(!shown.to_string().contains(&token_dev.username));

    // rumqttc: the token as username, empty password; QoS 1, acknowledged and stored.
    let mut c = connect(&node, &token_dev).await.expect("token login");
    c.publish("devices/telemetry", r#"{"temperature":28.5}"#)
        .await
        .unwrap();
    assert_eq!(wait_value(&node, &token_dev, "temperature").await, 28.5);
    c.disconnect().await;
    // Any password is ignored for an access token, as ThingsPanel does.
    connect_as(&node, &token_dev.username, "ignored", "mqtt_tok-1")
        .await
        .expect("password ignored")
        .disconnect()
        .await;
    // A wrong or unknown token is refused.
    let wrong = format!("{}x", token_dev.username);
    for (user, pass) in [(wrong.as_str(), ""), ("no-such-token-at-all", ""), ("", "")] {
        let refused = connect_as(&node, user, pass, "mqtt_bad").await;
        assert!(refused.is_err(), "{user:?} was accepted");
    }

    // The mosquitto clients, as ThingsPanel's tools connect: `-u <token>`, no
    // password, MQTT 3.1.1 and 3.1 (MQIsdp, what paho falls back to).
    if let Some(pubc) = mosquitto("mosquitto_pub") {
        let addr = node.platform.mqtt_addr();
        for (i, version) in ["mqttv311", "mqttv31"].into_iter().enumerate() {
            let status = tokio::process::Command::new(&pubc)
                .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
                .args(["-i", &format!("mqtt_tok_{i}"), "-u", &token_dev.username])
                .args(["-V", version, "-q", "1", "-t", "devices/telemetry"])
                .args(["-m", &format!(r#"{{"humidity_{i}":{i}}}"#)])
                .kill_on_drop(true)
                .status();
            let status = tokio::time::timeout(RECV, status)
                .await
                .expect("mosquitto_pub hung")
                .unwrap();
            assert!(status.success(), "mosquitto_pub -V {version} failed");
            assert_eq!(
                wait_value(&node, &token_dev, &format!("humidity_{i}")).await,
                i
            );
        }
        let status = tokio::process::Command::new(&pubc)
            .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
            .args(["-i", "mqtt_tok_bad", "-u", "not-a-token-of-anyone"])
            .args(["-q", "1", "-t", "devices/telemetry", "-m", "{}"])
            .kill_on_drop(true)
            .status();
        let status = tokio::time::timeout(RECV, status)
            .await
            .expect("mosquitto_pub hung")
            .unwrap();
        assert!(!status.success(), "an unknown token was accepted");
    }

    // HTTP: the token as the Basic username with an empty password.
    let res = node
        .http
        .post(format!("{}/api/v1/device/telemetry", node.base))
        .basic_auth(&token_dev.username, Some(""))
        .json(&json!({"pressure": 1013}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    assert_eq!(wait_value(&node, &token_dev, "pressure").await, 1013);
    let res = node
        .http
        .post(format!("{}/api/v1/device/telemetry", node.base))
        .basic_auth(&wrong, Some(""))
        .json(&json!({"pressure": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    // BASIC still needs its password.
    let basic = create(&node, json!({"name": "basic", "device_number": "basic-1"})).await;
    assert_eq!(basic.voucher_type, "BASIC");
    connect(&node, &basic)
        .await
        .expect("basic login")
        .disconnect()
        .await;
    for pass in ["", "wrong-password"] {
        assert!(
            connect_as(&node, &basic.username, pass, "mqtt_basic-1")
                .await
                .is_err(),
            "BASIC accepted password {pass:?}"
        );
    }

    // Changing the voucher type: the old login stops working, the new one works.
    let (status, issued) = node
        .call(
            post(),
            &format!("/api/v1/devices/{}/credentials", basic.id),
            Some(json!({"voucher_type": "ACCESSTOKEN"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{issued}");
    assert_eq!(issued["voucher_type"], "ACCESSTOKEN");
    assert_eq!(issued["password"], Value::Null);
    assert!(
        connect_as(&node, &basic.username, &basic.password, "mqtt_basic-1")
            .await
            .is_err()
    );
    connect_as(
        &node,
        issued["username"].as_str().unwrap(),
        "",
        "mqtt_basic-1",
    )
    .await
    .expect("new token")
    .disconnect()
    .await;
    node.platform.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_set_and_import_credentials_and_profiles_choose_the_voucher_type() {
    let node = Node::start().await;
    // Chosen credentials of both kinds (a device moved from ThingsPanel keeps its voucher).
    let kept_token = "5a3c9e0f-7b21-4d6e-8";
    let t = create(
        &node,
        json!({"name": "moved", "device_number": "moved-1",
               "credentials": {"access_token": kept_token}}),
    )
    .await;
    assert_eq!(t.voucher_type, "ACCESSTOKEN");
    assert_eq!(t.username, kept_token);
    connect(&node, &t)
        .await
        .expect("kept token")
        .disconnect()
        .await;
    let b = create(
        &node,
        json!({"name": "moved b", "device_number": "moved-2",
               "credentials": {"username": "0c2d5e7a-91b4-4f3e-a", "password": "7d1e9a2"}}),
    )
    .await;
    assert_eq!(
        (b.voucher_type.as_str(), b.password.as_str()),
        ("BASIC", "7d1e9a2")
    );
    connect(&node, &b)
        .await
        .expect("kept basic")
        .disconnect()
        .await;
    // Taken, too short, contradictory: clear refusals naming the field (400 for what
    // breaks the document, 422 for what contradicts another field or names nothing).
    for (body, want_status, field) in [
        (
            json!({"name": "x", "credentials": {"access_token": kept_token}}),
            StatusCode::CONFLICT,
            None,
        ),
        (
            json!({"name": "x", "credentials": {"access_token": "short"}}),
            StatusCode::BAD_REQUEST,
            Some("access_token"),
        ),
        (
            json!({"name": "x", "credentials": {"username": "u:1", "password": "secret-1"}}),
            StatusCode::BAD_REQUEST,
            Some("username"),
        ),
        (
            json!({"name": "x", "voucher_type": "BASIC", "credentials": {"access_token": "0123456789abcdef0"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("voucher_type"),
        ),
        (
            json!({"name": "x", "voucher_type": "TOKEN"}),
            StatusCode::BAD_REQUEST,
            Some("voucher_type"),
        ),
        (
            json!({"name": "x", "profile_id": "6f1c2a3b-0000-4000-8000-000000000000"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("profile_id"),
        ),
    ] {
        let (status, err) = node
            .call(post(), "/api/v1/devices", Some(body.clone()))
            .await;
        assert_eq!(status, want_status, "{body}: {err}");
        if let Some(field) = field {
            assert_eq!(err["error"]["field"], field, "{body}: {err}");
        }
    }

    // A profile's voucher type is the default of its devices.
    let p = profile(
        &node,
        json!({"name": "token devices", "voucher_type": "ACCESSTOKEN"}),
    )
    .await;
    assert_eq!(p["voucher_type"], "ACCESSTOKEN");
    let in_profile = create(
        &node,
        json!({"name": "p", "device_number": "prof-1", "profile_id": p["id"]}),
    )
    .await;
    assert_eq!(in_profile.voucher_type, "ACCESSTOKEN");
    let (_, shown) = node
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/devices/{}", in_profile.id),
            None,
        )
        .await;
    assert_eq!(shown["profile_id"], p["id"]);
    let overridden = create(
        &node,
        json!({"name": "p2", "device_number": "prof-2", "profile_id": p["id"], "voucher_type": "BASIC"}),
    )
    .await;
    assert_eq!(overridden.voucher_type, "BASIC");

    // Bulk import, CSV: every valid row is created, each bad row is reported.
    let csv = format!(
        "name,device_number,profile_id,voucher_type,username,password,access_token\n\
         Pump 1,pump-1,,BASIC,pump-user-1,pump-secret-1,\n\
         Pump 2,pump-2,{},,,,8e1f0c7a-55b2-4c0d-9\n\
         Pump 3,pump-3,,,,,tiny\n\
         Pump 4,pump-1,,,,,\n",
        p["id"].as_str().unwrap()
    );
    let res = node
        .http
        .post(format!("{}/api/v1/devices/import", node.base))
        .bearer_auth(&node.token)
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let report: Value = res.json().await.unwrap();
    let created = report["created"].as_array().unwrap();
    assert_eq!(created.len(), 2, "{report}");
    assert_eq!(created[0]["credentials"]["username"], "pump-user-1");
    assert_eq!(created[1]["credentials"]["voucher_type"], "ACCESSTOKEN");
    assert_eq!(created[1]["profile_id"], p["id"]);
    let errors = report["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{report}");
    assert_eq!(
        (errors[0]["row"].as_u64(), errors[0]["field"].as_str()),
        (Some(3), Some("access_token"))
    );
    assert_eq!(errors[1]["row"], 4, "{report}");
    connect_as(&node, "pump-user-1", "pump-secret-1", "mqtt_pump-1")
        .await
        .expect("imported basic")
        .disconnect()
        .await;
    connect_as(&node, "8e1f0c7a-55b2-4c0d-9", "", "mqtt_pump-2")
        .await
        .expect("imported token")
        .disconnect()
        .await;

    // Bulk import, JSON, with a row that is not even a device.
    let (status, report) = node
        .call(
            post(),
            "/api/v1/devices/import",
            Some(json!({"devices": [
                {"name": "J1", "device_number": "json-1"},
                {"name": "J2", "colour": "red"},
            ]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["created"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(report["errors"][0]["row"], 2, "{report}");
    assert_eq!(report["errors"][0]["field"], "colour", "{report}");
    let (status, _) = node
        .call(
            post(),
            "/api/v1/devices/import",
            Some(json!({"devices": []})),
        )
        .await;
    // No rows to import (the same answer for an empty CSV, whose rows no schema counts).
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    node.platform.shutdown().await.unwrap();
}

/// A gateway G (gateway profile), a sub-gateway S behind it at `sg1` (gateway
/// profile), a sub-device D1 of G at `d1` and a sub-device D2 of S at `d2`: the
/// two levels of gateways of ThingsPanel's gateway specification.
struct Gateways {
    g: Dev,
    s: Dev,
    d1: Dev,
    d2: Dev,
}

async fn gateways(node: &Node, prefix: &str) -> Gateways {
    let gw_profile = profile(
        node,
        json!({"name": format!("{prefix} gateways"), "device_type": "gateway"}),
    )
    .await;
    let sub_profile = profile(
        node,
        json!({"name": format!("{prefix} sensors"), "device_type": "sub_device"}),
    )
    .await;
    let g = create(
        node,
        json!({"name": "G", "device_number": format!("{prefix}-g"), "profile_id": gw_profile["id"],
               "voucher_type": "ACCESSTOKEN"}),
    )
    .await;
    let s = create(
        node,
        json!({"name": "S", "device_number": format!("{prefix}-s"), "profile_id": gw_profile["id"],
               "parent_id": g.id, "sub_device_addr": "sg1"}),
    )
    .await;
    let d1 = create(
        node,
        json!({"name": "D1", "device_number": format!("{prefix}-d1"), "profile_id": sub_profile["id"],
               "parent_id": g.id, "sub_device_addr": "d1"}),
    )
    .await;
    let d2 = create(
        node,
        json!({"name": "D2", "device_number": format!("{prefix}-d2"), "profile_id": sub_profile["id"],
               "parent_id": s.id, "sub_device_addr": "d2"}),
    )
    .await;
    Gateways { g, s, d1, d2 }
}

/// The gateway's connection, subscribed to its downlink topics.
async fn gateway_client(node: &Node, g: &Dev) -> MqttTestClient {
    let mut c = connect(node, g).await.expect("gateway login");
    let n = &g.number;
    c.subscribe(&[
        &format!("gateway/command/{n}/+"),
        &format!("gateway/attributes/set/{n}/+"),
        &format!("gateway/attributes/get/{n}"),
        &format!("gateway/telemetry/control/{n}"),
        &format!("gateway/attributes/response/{n}/+"),
    ])
    .await
    .unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_downlink_uses_thingspanel_envelopes_at_every_level() {
    let node = Node::start().await;
    let Gateways { g, s, d1, d2 } = gateways(&node, "gw").await;
    let n = g.number.clone();
    let mut c = gateway_client(&node, &g).await;
    let command = json!({"method": "Reboot", "params": {"delay": 1}});
    let mut rows = Vec::new();
    for (target, want) in [
        (&g, json!({"gateway_data": command})),
        (
            &s,
            json!({"sub_gateway_data": {"sg1": {"gateway_data": command}}}),
        ),
        (&d1, json!({"sub_device_data": {"d1": command}})),
        (
            &d2,
            json!({"sub_gateway_data": {"sg1": {"sub_device_data": {"d2": command}}}}),
        ),
    ] {
        let row = node
            .downlink(
                post(),
                &format!("/api/v1/devices/{}/commands", target.id),
                command.clone(),
            )
            .await;
        let m = mid(&row);
        let (topic, payload) = c.recv_publish(RECV).await.expect("command");
        assert_eq!(
            topic,
            format!("gateway/command/{n}/{m}"),
            "{}",
            target.number
        );
        assert_eq!(payload_json(&payload), want, "{}", target.number);
        // The log of the target device shows what was published, through which gateway.
        let sent = log_row(&node, target, &m, "sent").await;
        assert_eq!(sent["published_topic"], topic, "{sent}");
        assert_eq!(sent["published_payload"], want, "{sent}");
        assert_eq!(sent["payload"], command, "{sent}");
        rows.push((target, m));
    }
    // Answers in every form a gateway uses mark the right rows.
    let [(_, m_g), (_, m_s), (_, m_d1), (_, m_d2)] = &rows[..] else {
        unreachable!()
    };
    c.publish(
        &format!("gateway/command/response/{m_g}"),
        r#"{"result":0,"message":"success","method":"Reboot"}"#,
    )
    .await
    .unwrap();
    c.publish(
        &format!("gateway/command/response/{m_s}"),
        r#"{"sub_gateway_data":{"sg1":{"gateway_data":{"result":0,"message":"success"}}}}"#,
    )
    .await
    .unwrap();
    c.publish(
        &format!("gateway/command/response/{m_d1}"),
        r#"{"sub_device_data":{"d1":{"result":1,"errcode":"busy","message":"busy"}}}"#,
    )
    .await
    .unwrap();
    // A plain response object for a device two levels down.
    c.publish(
        &format!("gateway/command/response/{m_d2}"),
        r#"{"result":0,"message":"success"}"#,
    )
    .await
    .unwrap();
    log_row(&node, &g, m_g, "replied").await;
    log_row(&node, &s, m_s, "replied").await;
    log_row(&node, &d1, m_d1, "failed").await;
    log_row(&node, &d2, m_d2, "replied").await;

    // Attribute set, attribute get and telemetry control through the same envelopes.
    let row = node
        .downlink(
            reqwest::Method::PUT,
            &format!("/api/v1/devices/{}/attributes", s.id),
            json!({"values": {"interval": 5}}),
        )
        .await;
    let m = mid(&row);
    let (topic, payload) = c.recv_publish(RECV).await.expect("attribute set");
    assert_eq!(topic, format!("gateway/attributes/set/{n}/{m}"));
    assert_eq!(
        payload_json(&payload),
        json!({"sub_gateway_data": {"sg1": {"gateway_data": {"interval": 5}}}})
    );
    c.publish(
        &format!("gateway/attributes/set/response/{m}"),
        r#"{"result":0}"#,
    )
    .await
    .unwrap();
    log_row(&node, &s, &m, "replied").await;
    node.downlink(
        post(),
        &format!("/api/v1/devices/{}/attributes/get", g.id),
        json!({"keys": ["version"]}),
    )
    .await;
    let (topic, payload) = c.recv_publish(RECV).await.expect("attribute get");
    assert_eq!(topic, format!("gateway/attributes/get/{n}"));
    assert_eq!(payload_json(&payload), json!({"gateway_data": ["version"]}));
    node.downlink(
        post(),
        &format!("/api/v1/devices/{}/telemetry/control", d2.id),
        json!({"values": {"switch": true}}),
    )
    .await;
    let (topic, payload) = c.recv_publish(RECV).await.expect("telemetry control");
    assert_eq!(topic, format!("gateway/telemetry/control/{n}"));
    assert_eq!(
        payload_json(&payload),
        json!({"sub_gateway_data": {"sg1": {"sub_device_data": {"d2": {"switch": true}}}}})
    );

    // Uplink through both levels is stored per device.
    c.publish(
        "gateway/telemetry",
        r#"{"gateway_data":{"cpu":1},"sub_device_data":{"d1":{"t":2}},
            "sub_gateway_data":{"sg1":{"gateway_data":{"cpu":3},"sub_device_data":{"d2":{"t":4}}}}}"#,
    )
    .await
    .unwrap();
    assert_eq!(wait_value(&node, &g, "cpu").await, 1);
    assert_eq!(wait_value(&node, &d1, "t").await, 2);
    assert_eq!(wait_value(&node, &s, "cpu").await, 3);
    assert_eq!(wait_value(&node, &d2, "t").await, 4);

    // Paho reconnects with the same client id: what was issued while the gateway was
    // away arrives once it subscribes again.
    c.disconnect().await;
    let row = node
        .downlink(
            post(),
            &format!("/api/v1/devices/{}/commands", d2.id),
            json!({"method": "Calibrate"}),
        )
        .await;
    assert_eq!(row["status"], "pending");
    let m = mid(&row);
    let mut c = gateway_client(&node, &g).await;
    let (topic, payload) = c.recv_publish(RECV).await.expect("queued command");
    assert_eq!(topic, format!("gateway/command/{n}/{m}"));
    assert_eq!(
        payload_json(&payload),
        json!({"sub_gateway_data": {"sg1": {"sub_device_data": {"d2": {"method": "Calibrate", "params": {}}}}}})
    );
    let sent = log_row(&node, &d2, &m, "sent").await;
    assert_eq!(sent["published_topic"], topic);
    c.disconnect().await;
    node.platform.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_topics_thingspanel_allows_work_and_stay_bound_to_the_device() {
    let node = Node::start().await;
    let reg_profile = profile(
        &node,
        json!({"name": "self-registering", "auto_register": true, "voucher_type": "ACCESSTOKEN"}),
    )
    .await;
    let secret = reg_profile["provision_secret"].as_str().unwrap().to_owned();
    let d = create(&node, json!({"name": "dev", "device_number": "extra-1"})).await;
    let n = d.number.clone();
    let mut c = connect(&node, &d).await.unwrap();
    c.subscribe(&[
        "devices/register/response/+",
        "devices/config/down/response/+",
        &format!("{n}/down"),
    ])
    .await
    .expect("ThingsPanel's extra subscriptions are granted");
    // Allowed publishes without a meaning here are acknowledged, not a disconnect.
    for topic in ["devices/config/down", &format!("{n}/up")] {
        assert!(!c.publish_closes(topic, r#"{"a":1}"#).await, "{topic}");
    }
    // `{device_number}/down` receives the device's telemetry control.
    node.downlink(
        post(),
        &format!("/api/v1/devices/{}/telemetry/control", d.id),
        json!({"values": {"valve": 1}}),
    )
    .await;
    let (topic, payload) = c.recv_publish(RECV).await.expect("control on the alias");
    assert_eq!(topic, format!("{n}/down"));
    assert_eq!(payload_json(&payload), json!({"valve": 1}));

    // devices/register: a new device in the profile the secret belongs to.
    c.publish(
        "devices/register",
        json!({"template_secret": secret, "device_number": "extra-new", "device_name": "New"})
            .to_string(),
    )
    .await
    .unwrap();
    let (topic, payload) = c.recv_publish(RECV).await.expect("registration answer");
    assert_eq!(topic, format!("devices/register/response/{n}"));
    let answer = payload_json(&payload);
    assert_eq!(answer["result"], 0, "{answer}");
    assert_eq!(answer["device_number"], "extra-new");
    assert_eq!(answer["voucher"]["voucher_type"], "ACCESSTOKEN");
    let token = answer["voucher"]["username"].as_str().unwrap();
    let mut registered = connect_as(&node, token, "", "mqtt_extra-new")
        .await
        .expect("the registered device logs in");
    registered
        .publish("devices/telemetry", r#"{"first":1}"#)
        .await
        .unwrap();
    // A wrong secret is answered, not a disconnect.
    c.publish(
        "devices/register",
        json!({"template_secret": "wrong", "device_number": "extra-x"}).to_string(),
    )
    .await
    .unwrap();
    let answer = payload_json(&c.recv_publish(RECV).await.expect("refusal").1);
    assert_eq!(
        (answer["result"].as_i64(), answer["errcode"].as_str()),
        (Some(1), Some("unauthorized")),
        "{answer}"
    );
    // A gateway registers a device behind itself.
    c.publish(
        "devices/register",
        json!({"template_secret": secret, "device_number": "extra-sub", "sub_device_addr": "port-3"})
            .to_string(),
    )
    .await
    .unwrap();
    let answer = payload_json(&c.recv_publish(RECV).await.expect("answer").1);
    assert_eq!(answer["result"], 0, "{answer}");
    let (_, sub) = node
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/devices/{}", answer["device_id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(sub["parent_id"], d.id.as_str());
    assert_eq!(sub["sub_device_addr"], "port-3");

    // Still bound to the device's own number.
    assert!(c.publish_closes("extra-other/up", "{}").await);
    let mut c = connect(&node, &d).await.unwrap();
    assert!(c.subscribe_closes(&["extra-other/down"]).await);
    let mut c = connect(&node, &d).await.unwrap();
    assert!(
        c.subscribe_closes(&["devices/register/response/extra-other"])
            .await
    );
    node.platform.shutdown().await.unwrap();
}
