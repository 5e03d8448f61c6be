//! Downlink end-to-end over real sockets: the whole node (REST + embedded broker +
//! SQLite), devices as rumqttc clients and, in one test, the mosquitto command-line
//! clients. Commands, attribute set/get and telemetry control reach the device on
//! ThingsPanel's topics with ThingsPanel's payloads; the device's responses move the
//! log rows to replied/failed; downlink to an offline device is queued, delivered once
//! the device subscribes, or expires.

use serde_json::{Value, json};
use tp_core::{CommandId, CommandKind, CommandLog, CommandStatus, DeviceId, Role, TenantId};

mod common;
use common::*;
use tp_core::testing::mosquitto_client;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downlink_reaches_a_connected_device_and_responses_update_the_log() {
    let node = Node::start().await;
    let d = node.create_device("pump-1").await;
    let n = &d.number;
    let mut dev = node.connect(&d, "mqtt_pump_1").await;
    dev.subscribe(&[
        &format!("devices/command/{n}/+"),
        &format!("devices/attributes/set/{n}/+"),
        &format!("devices/attributes/get/{n}"),
        &format!("devices/telemetry/control/{n}"),
    ])
    .await
    .unwrap();
    let base = format!("/api/v1/devices/{}", d.id);

    // a command: exactly {"method","params"} on devices/command/{n}/{mid}
    let row = node
        .downlink(
            post(),
            &format!("{base}/commands"),
            json!({"method": "ReSet", "params": {"delay": 1}}),
        )
        .await;
    assert_eq!(
        (row["kind"].as_str(), row["status"].as_str()),
        (Some("command"), Some("sent"))
    );
    assert_eq!(
        row["payload"],
        json!({"method": "ReSet", "params": {"delay": 1}})
    );
    assert!(row["expires_at"].as_i64().unwrap() > row["created_at"].as_i64().unwrap());
    let m1 = mid(&row);
    let (topic, payload) = dev.recv_publish(RECV).await.expect("command");
    assert_eq!(topic, format!("devices/command/{n}/{m1}"));
    assert_eq!(
        json_of(&payload),
        json!({"method": "ReSet", "params": {"delay": 1}})
    );
    dev.publish(
        &format!("devices/command/response/{m1}"),
        r#"{"result":0,"message":"success","ts":1609143039,"method":"ReSet"}"#,
    )
    .await
    .unwrap();
    let replied = node.wait_status(&d, &m1, "replied").await;
    assert_eq!(replied["response"]["result"], 0);
    assert_eq!(replied["response"]["message"], "success");

    // a command without params carries "params":{}; an error response marks it failed
    let row = node
        .downlink(
            post(),
            &format!("{base}/commands"),
            json!({"method": "Reboot"}),
        )
        .await;
    let m2 = mid(&row);
    assert_ne!(m1, m2);
    let (topic, payload) = dev.recv_publish(RECV).await.expect("second command");
    assert_eq!(topic, format!("devices/command/{n}/{m2}"));
    assert_eq!(json_of(&payload), json!({"method": "Reboot", "params": {}}));
    dev.publish(
        &format!("devices/command/response/{m2}"),
        r#"{"result":1,"errcode":"busy","message":"device busy","ts":1609143040}"#,
    )
    .await
    .unwrap();
    let failed = node.wait_status(&d, &m2, "failed").await;
    assert_eq!(failed["response"]["errcode"], "busy");

    // attribute set: the values object on devices/attributes/set/{n}/{mid}; reply -> replied
    let row = node
        .downlink(
            reqwest::Method::PUT,
            &format!("{base}/attributes"),
            json!({"values": {"ip": "10.0.0.9", "port": 1883}}),
        )
        .await;
    assert_eq!(
        (row["kind"].as_str(), row["status"].as_str()),
        (Some("attribute_set"), Some("sent"))
    );
    let m3 = mid(&row);
    let (topic, payload) = dev.recv_publish(RECV).await.expect("attribute set");
    assert_eq!(topic, format!("devices/attributes/set/{n}/{m3}"));
    assert_eq!(json_of(&payload), json!({"ip": "10.0.0.9", "port": 1883}));
    dev.publish(
        &format!("devices/attributes/set/response/{m3}"),
        r#"{"result":0,"message":"success"}"#,
    )
    .await
    .unwrap();
    node.wait_status(&d, &m3, "replied").await;

    // attribute get: {"keys":[..]} on devices/attributes/get/{n} (no message id level)
    let row = node
        .downlink(
            post(),
            &format!("{base}/attributes/get"),
            json!({"keys": ["temp", "hum"]}),
        )
        .await;
    assert_eq!(
        (row["kind"].as_str(), row["status"].as_str()),
        (Some("attribute_get"), Some("sent"))
    );
    let (topic, payload) = dev.recv_publish(RECV).await.expect("attribute get");
    assert_eq!(topic, format!("devices/attributes/get/{n}"));
    assert_eq!(json_of(&payload), json!({"keys": ["temp", "hum"]}));

    // telemetry control: the values object itself on devices/telemetry/control/{n}
    let row = node
        .downlink(
            post(),
            &format!("{base}/telemetry/control"),
            json!({"values": {"switch": true, "light": 2000}}),
        )
        .await;
    assert_eq!(
        (row["kind"].as_str(), row["status"].as_str()),
        (Some("telemetry_control"), Some("sent"))
    );
    let (topic, payload) = dev.recv_publish(RECV).await.expect("telemetry control");
    assert_eq!(topic, format!("devices/telemetry/control/{n}"));
    assert_eq!(json_of(&payload), json!({"switch": true, "light": 2000}));

    // the log: newest first, with every field
    let log = node.log(&d).await;
    assert_eq!(log["total"], 5);
    let kinds: Vec<_> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        kinds,
        [
            "telemetry_control",
            "attribute_get",
            "attribute_set",
            "command",
            "command"
        ]
    );
    let statuses: Vec<_> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(statuses, ["sent", "sent", "replied", "failed", "replied"]);
    for field in [
        "id",
        "message_id",
        "kind",
        "payload",
        "status",
        "response",
        "created_at",
        "updated_at",
        "expires_at",
    ] {
        assert!(
            log["items"][0].get(field).is_some(),
            "{field} missing: {}",
            log["items"][0]
        );
    }
    let (_, page) = node
        .call(
            reqwest::Method::GET,
            &format!("{base}/commands?page=2&page_size=2"),
            None,
        )
        .await;
    assert_eq!(page["total"], 5);
    let page_kinds: Vec<_> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(page_kinds, ["attribute_set", "command"]);
    node.platform.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downlink_to_an_offline_device_is_delivered_once_it_subscribes() {
    let node = Node::start().await;
    let d = node.create_device("valve-7").await;
    let n = &d.number;
    let base = format!("/api/v1/devices/{}", d.id);

    // offline: both stay pending
    let cmd = node
        .downlink(
            post(),
            &format!("{base}/commands"),
            json!({"method": "Open", "params": {"pct": 40}}),
        )
        .await;
    assert_eq!(cmd["status"], "pending");
    let m_cmd = mid(&cmd);
    let ctl = node
        .downlink(
            post(),
            &format!("{base}/telemetry/control"),
            json!({"values": {"switch": false}}),
        )
        .await;
    assert_eq!(ctl["status"], "pending");
    let log = node.log(&d).await;
    assert!(
        log["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "pending"),
        "{log}"
    );

    // connected and subscribed to telemetry control only: the control goes out, the
    // command (issued earlier, so handled earlier in the same pass) stays pending
    let mut dev = node.connect(&d, "mqtt_valve_7").await;
    node.wait_online(&d, true).await;
    dev.subscribe(&[&format!("devices/telemetry/control/{n}")])
        .await
        .unwrap();
    let (topic, payload) = dev.recv_publish(RECV).await.expect("queued control");
    assert_eq!(topic, format!("devices/telemetry/control/{n}"));
    assert_eq!(json_of(&payload), json!({"switch": false}));
    node.wait_status(&d, ctl["message_id"].as_str().unwrap(), "sent")
        .await;
    let log = node.log(&d).await;
    let cmd_row = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["message_id"] == m_cmd.as_str())
        .unwrap()
        .clone();
    assert_eq!(cmd_row["status"], "pending", "{log}");

    // while the device is connected but not subscribed to commands, a new command is
    // queued too rather than published into the void
    let later = node
        .downlink(
            post(),
            &format!("{base}/commands"),
            json!({"method": "Close"}),
        )
        .await;
    assert_eq!(later["status"], "pending");
    let m_later = mid(&later);

    // subscribing to commands delivers both, oldest first, and marks them sent
    dev.subscribe(&[&format!("devices/command/{n}/+")])
        .await
        .unwrap();
    let (topic, payload) = dev.recv_publish(RECV).await.expect("queued command");
    assert_eq!(topic, format!("devices/command/{n}/{m_cmd}"));
    assert_eq!(
        json_of(&payload),
        json!({"method": "Open", "params": {"pct": 40}})
    );
    let (topic, payload) = dev.recv_publish(RECV).await.expect("second queued command");
    assert_eq!(topic, format!("devices/command/{n}/{m_later}"));
    assert_eq!(json_of(&payload), json!({"method": "Close", "params": {}}));
    node.wait_status(&d, &m_cmd, "sent").await;
    node.wait_status(&d, &m_later, "sent").await;

    // and the device's answer completes it
    dev.publish(
        &format!("devices/command/response/{m_cmd}"),
        r#"{"result":0,"message":"success"}"#,
    )
    .await
    .unwrap();
    node.wait_status(&d, &m_cmd, "replied").await;

    // reconnecting does not deliver anything twice: a fresh marker command is the
    // first (and only) message after resubscribing
    dev.disconnect().await;
    node.wait_online(&d, false).await;
    let marker = node
        .downlink(
            post(),
            &format!("{base}/commands"),
            json!({"method": "Marker"}),
        )
        .await;
    let m_marker = mid(&marker);
    let mut dev = node.connect(&d, "mqtt_valve_7").await;
    dev.subscribe(&[
        &format!("devices/command/{n}/+"),
        &format!("devices/telemetry/control/{n}"),
    ])
    .await
    .unwrap();
    let (topic, _) = dev.recv_publish(RECV).await.expect("marker");
    assert_eq!(topic, format!("devices/command/{n}/{m_marker}"));
    node.platform.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_downlink_is_marked_expired_and_never_delivered() {
    let node = Node::start().await;
    let d = node.create_device("lamp-3").await;
    let n = &d.number;
    let base = format!("/api/v1/devices/{}", d.id);
    let device_id: DeviceId = d.id.parse().unwrap();
    let device = node
        .platform
        .metadata()
        .get_device_by_id(device_id)
        .await
        .unwrap()
        .unwrap();

    // one issued through the API with a one-second lifetime expires while listed
    let short = node
        .downlink(
            post(),
            &format!("{base}/commands"),
            json!({"method": "Short", "expires_in_secs": 1}),
        )
        .await;
    assert_eq!(short["status"], "pending");
    let short_mid = mid(&short);
    assert_eq!(
        short["expires_at"].as_i64().unwrap() - short["created_at"].as_i64().unwrap(),
        1000
    );
    node.wait_status(&d, &short_mid, "expired").await;

    // a command queued a while ago whose expiry has passed (written to the store
    // directly, and not listed before the device connects)
    let now = tp_core::now_ms();
    let stale = CommandLog {
        id: CommandId::new(),
        tenant_id: device.tenant_id,
        device_id,
        message_id: "0badc0de".into(),
        kind: CommandKind::Command,
        payload: json!({"method": "Stale", "params": {}}),
        status: CommandStatus::Pending,
        response: None,
        created_at: now - 10_000,
        updated_at: now - 10_000,
        expires_at: Some(now - 5_000),
        published: None,
    };
    node.platform
        .metadata()
        .create_command(&stale)
        .await
        .unwrap();

    // a valid command queued last: when the device receives it, the pass has already
    // handled the older rows, and the stale one must not have been delivered
    let fresh = node
        .downlink(
            post(),
            &format!("{base}/commands"),
            json!({"method": "Fresh"}),
        )
        .await;
    let fresh_mid = mid(&fresh);
    let mut dev = node.connect(&d, "mqtt_lamp_3").await;
    dev.subscribe(&[&format!("devices/command/{n}/+")])
        .await
        .unwrap();
    let (topic, payload) = dev.recv_publish(RECV).await.expect("fresh command");
    assert_eq!(topic, format!("devices/command/{n}/{fresh_mid}"));
    assert_eq!(json_of(&payload)["method"], "Fresh");
    node.wait_status(&d, &fresh_mid, "sent").await;
    let stale_row = node
        .platform
        .metadata()
        .get_command_by_message_id(device_id, "0badc0de")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stale_row.status,
        CommandStatus::Expired,
        "marked by the delivery pass"
    );
    let log = node.log(&d).await;
    let statuses: Vec<_> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap().to_owned())
        .collect();
    // newest first: fresh, short, then the stale row (created 10 s ago)
    assert_eq!(statuses, ["sent", "expired", "expired"]);
    node.platform.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downlink_requests_are_validated_scoped_and_authorized() {
    let node = Node::start().await;
    let d = node.create_device("meter-9").await;
    let base = format!("/api/v1/devices/{}", d.id);
    let cmds = format!("{base}/commands");

    let bad: &[(reqwest::Method, &str, Value, &str)] = &[
        (post(), &cmds, json!({}), "method"),
        (post(), &cmds, json!({"method": ""}), "method"),
        (post(), &cmds, json!({"method": "x".repeat(256)}), "method"),
        (
            post(),
            &cmds,
            json!({"method": "a", "params": [1]}),
            "params",
        ),
        (
            post(),
            &cmds,
            json!({"method": "a", "expires_in_secs": 0}),
            "expires_in_secs",
        ),
        (
            post(),
            &cmds,
            json!({"method": "a", "expires_in_secs": -1}),
            "expires_in_secs",
        ),
        (post(), &cmds, json!({"method": "a", "extra": 1}), "extra"),
        (
            reqwest::Method::PUT,
            &format!("{base}/attributes"),
            json!({"values": {}}),
            "values",
        ),
        (
            reqwest::Method::PUT,
            &format!("{base}/attributes"),
            json!({"values": 3}),
            "values",
        ),
        (
            reqwest::Method::PUT,
            &format!("{base}/attributes"),
            json!({}),
            "values",
        ),
        (
            post(),
            &format!("{base}/attributes/get"),
            json!({"keys": [""]}),
            "keys",
        ),
        (
            post(),
            &format!("{base}/attributes/get"),
            json!({"keys": "temp"}),
            "keys",
        ),
        (
            post(),
            &format!("{base}/telemetry/control"),
            json!({"values": {}}),
            "values",
        ),
        (
            post(),
            &format!("{base}/telemetry/control"),
            json!({"values": {"": 1}}),
            "values",
        ),
    ];
    for (method, path, body, field) in bad {
        let (status, err) = node.call(method.clone(), path, Some(body.clone())).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{method} {path} {body}: {err}"
        );
        assert_eq!(
            err["error"]["field"], *field,
            "{method} {path} {body}: {err}"
        );
    }
    let (status, err) = node
        .call(reqwest::Method::GET, &format!("{cmds}?page_size=0"), None)
        .await;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("page_size"))
    );
    let (status, err) = node
        .call(
            post(),
            "/api/v1/devices/not-a-uuid/commands",
            Some(json!({"method": "a"})),
        )
        .await;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("id"))
    );
    // nothing was logged
    assert_eq!(node.log(&d).await["total"], 0);

    // unknown device and another tenant's device: 404
    let (status, _) = node
        .call(
            post(),
            &format!("/api/v1/devices/{}/commands", uuid::Uuid::new_v4()),
            Some(json!({"method": "a"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let metadata = node.platform.metadata();
    let other_tenant = tp_core::Tenant {
        id: TenantId::new(),
        name: "other".into(),
        created_at: tp_core::now_ms(),
    };
    metadata.create_tenant(&other_tenant).await.unwrap();
    let (theirs, _) =
        tp_core::Device::new(other_tenant.id, "theirs".into(), Some("theirs-1".into()));
    metadata.create_device(&theirs).await.unwrap();
    for (method, path, body) in [
        (
            post(),
            format!("/api/v1/devices/{}/commands", theirs.id),
            Some(json!({"method": "a"})),
        ),
        (
            reqwest::Method::PUT,
            format!("/api/v1/devices/{}/attributes", theirs.id),
            Some(json!({"values": {"a": 1}})),
        ),
        (
            post(),
            format!("/api/v1/devices/{}/telemetry/control", theirs.id),
            Some(json!({"values": {"a": 1}})),
        ),
        (
            post(),
            format!("/api/v1/devices/{}/attributes/get", theirs.id),
            Some(json!({"keys": []})),
        ),
        (
            reqwest::Method::GET,
            format!("/api/v1/devices/{}/commands", theirs.id),
            None,
        ),
    ] {
        let (status, err) = node.call(method.clone(), &path, body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {err}");
        assert_eq!(err["error"]["code"], "not_found");
    }
    assert_eq!(
        metadata
            .list_commands(other_tenant.id, theirs.id, Default::default())
            .await
            .unwrap()
            .total,
        0
    );

    // TENANT_USER reads the log but may not send downlink
    let (_, me) = node
        .call(reqwest::Method::GET, "/api/v1/auth/me", None)
        .await;
    let tenant: TenantId = me["tenant_id"].as_str().unwrap().parse().unwrap();
    let user = tp_core::User {
        id: tp_core::UserId::new(),
        tenant_id: tenant,
        email: "viewer@example.com".into(),
        name: "viewer".into(),
        password_hash: tp_api::auth::hash_password("viewer password 1".into())
            .await
            .unwrap(),
        role: Role::TenantUser,
        created_at: tp_core::now_ms(),
    };
    metadata.create_user(&user).await.unwrap();
    let viewer = login(
        &node.http,
        &node.base,
        "viewer@example.com",
        "viewer password 1",
    )
    .await;
    for (method, path, body) in [
        (post(), cmds.clone(), json!({"method": "a"})),
        (
            reqwest::Method::PUT,
            format!("{base}/attributes"),
            json!({"values": {"a": 1}}),
        ),
        (
            post(),
            format!("{base}/telemetry/control"),
            json!({"values": {"a": 1}}),
        ),
        (
            post(),
            format!("{base}/attributes/get"),
            json!({"keys": []}),
        ),
    ] {
        let (status, err) = node
            .call_as(&viewer, method.clone(), &path, Some(body))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {err}");
    }
    let (status, log) = node
        .call_as(&viewer, reqwest::Method::GET, &cmds, None)
        .await;
    assert_eq!((status, log["total"].as_u64()), (StatusCode::OK, Some(0)));
    // no token: 401
    let res = node
        .http
        .post(format!("{}{cmds}", node.base))
        .json(&json!({"method": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    node.platform.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_receive_a_command_and_answer_it() {
    let (Some(sub), Some(pubc)) = (
        mosquitto_client("mosquitto_sub"),
        mosquitto_client("mosquitto_pub"),
    ) else {
        return;
    };
    let node = Node::start().await;
    let d = node.create_device("mosq-1").await;
    let n = &d.number;
    let addr = node.platform.mqtt_addr();

    // mosquitto_sub prints "<topic> <payload>" for the first message and exits
    let child = tokio::process::Command::new(&sub)
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args([
            "-i",
            "mosq_sub_1",
            "-u",
            &d.username,
            "-P",
            &d.password,
            "-V",
            "mqttv311",
        ])
        .args([
            "-t",
            &format!("devices/command/{n}/+"),
            "-q",
            "1",
            "-C",
            "1",
            "-v",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    node.wait_online(&d, true).await;
    // Whether or not mosquitto_sub has subscribed yet, the command reaches it: sent
    // now, or queued until its SUBSCRIBE is granted.
    let row = node
        .downlink(
            post(),
            &format!("/api/v1/devices/{}/commands", d.id),
            json!({"method": "ReSet", "params": {"x": 1}}),
        )
        .await;
    let m = mid(&row);
    let out = tokio::time::timeout(RECV, child.wait_with_output())
        .await
        .expect("mosquitto_sub received nothing")
        .unwrap();
    assert!(
        out.status.success(),
        "mosquitto_sub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    let (topic, payload) = line
        .trim_end()
        .split_once(' ')
        .unwrap_or_else(|| panic!("unexpected output {line:?}"));
    assert_eq!(topic, format!("devices/command/{n}/{m}"));
    assert_eq!(
        json_of(payload.as_bytes()),
        json!({"method": "ReSet", "params": {"x": 1}})
    );
    node.wait_status(&d, &m, "sent").await;

    // mosquitto_pub answers as the device
    let status = tokio::process::Command::new(&pubc)
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args([
            "-i",
            "mosq_pub_1",
            "-u",
            &d.username,
            "-P",
            &d.password,
            "-V",
            "mqttv311",
            "-q",
            "1",
        ])
        .args([
            "-t",
            &format!("devices/command/response/{m}"),
            "-m",
            r#"{"result":0,"message":"success"}"#,
        ])
        .kill_on_drop(true)
        .status();
    let status = tokio::time::timeout(RECV, status)
        .await
        .expect("mosquitto_pub hung")
        .unwrap();
    assert!(status.success());
    let row = node.wait_status(&d, &m, "replied").await;
    assert_eq!(row["response"]["message"], "success");
    node.platform.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_deleting_or_rekeying_a_device_closes_its_live_connection() {
    let node = Node::start().await;
    revoking_closes_connections(&node, &node, "rv").await;
}
