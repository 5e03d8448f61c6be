//! Device isolation at the connection layer, tried as an attacker would, with real
//! clients (rumqttc, and mosquitto_pub/mosquitto_sub where installed): the will,
//! client ids, persistent sessions, overlapping sessions of one client id, revoked
//! devices, and QoS 0/1/2 end to end.

use std::process::Stdio;
use std::time::Duration;

use rumqttc::{LastWill, MqttOptions, QoS};
use tp_broker::testing::{MqttTestClient, TestBroker};
use tp_core::testing::mosquitto_client;
use tp_core::{Device, Value};

const CLOSE: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(500);

fn options(node: &TestBroker, client_id: &str) -> MqttOptions {
    let addr = node.broker.local_addr();
    MqttOptions::new(client_id, addr.ip().to_string(), addr.port())
}

async fn connect_opts(
    opts: MqttOptions,
    device: &Device,
    password: &str,
) -> Result<MqttTestClient, String> {
    MqttTestClient::connect_with(opts, &device.credentials.username, password).await
}

async fn stored(node: &TestBroker, device: &Device, key: &str) -> Vec<Value> {
    node.stored_points(device.id, key).await
}

/// Waits until ingest has consumed everything accepted, then flushes the writer.
async fn settle(node: &TestBroker) {
    for _ in 0..500 {
        let s = node.broker.stats();
        if s.consumed >= s.accepted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    node.writer.flush().await.unwrap();
}

async fn wait_for_points(node: &TestBroker, device: &Device, key: &str, n: usize) -> Vec<Value> {
    for _ in 0..500 {
        settle(node).await;
        let points = stored(node, device, key).await;
        if points.len() >= n {
            return points;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stored(node, device, key).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_on_another_devices_downlink_topic_is_refused_at_connect() {
    let node = TestBroker::start(|_| {}).await;
    let (a, pa) = node.create_device().await;
    let (b, pb) = node.create_device().await;
    let mut victim = node.connect(&b, &pb).await.unwrap();
    let theirs = format!("devices/command/{}/x", b.device_number);
    victim
        .subscribe(&[&format!("devices/command/{}/+", b.device_number)])
        .await
        .unwrap();
    for topic in [theirs.as_str(), "tp-internal/ingest", "#", "$SYS/x"] {
        let mut opts = options(&node, "attacker");
        opts.set_last_will(LastWill::new(
            topic,
            r#"{"method":"Reboot"}"#,
            QoS::AtLeastOnce,
            true,
        ));
        let refused = connect_opts(opts, &a, &pa).await;
        assert!(
            refused.as_ref().is_err_and(|e| e.contains("NotAuthorized")),
            "a will on {topic} was accepted: {:?}",
            refused.map(|_| ())
        );
    }
    assert_eq!(victim.recv_publish(QUIET).await, None, "B received a will");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_sub_with_a_will_on_another_devices_topic_is_refused() {
    let Some(sub) = mosquitto_client("mosquitto_sub") else {
        return;
    };
    let node = TestBroker::start(|_| {}).await;
    let (a, pa) = node.create_device().await;
    let (b, pb) = node.create_device().await;
    let mut victim = node.connect(&b, &pb).await.unwrap();
    victim
        .subscribe(&[&format!("devices/command/{}/+", b.device_number)])
        .await
        .unwrap();
    let addr = node.broker.local_addr();
    let out = tokio::process::Command::new(&sub)
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args([
            "-i",
            "mosq_attacker",
            "-u",
            &a.credentials.username,
            "-P",
            &pa,
        ])
        .args(["-t", &format!("devices/command/{}/+", a.device_number)])
        .args([
            "--will-topic",
            &format!("devices/command/{}/x", b.device_number),
            "--will-payload",
            r#"{"method":"Reboot"}"#,
            "--will-retain",
            "-W",
            "5",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "mosquitto_sub was let in: {stderr}");
    assert!(
        stderr.to_lowercase().contains("not authori"),
        "refused for another reason: {stderr}"
    );
    assert_eq!(victim.recv_publish(QUIET).await, None, "B received a will");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_will_is_stored_as_the_devices_own_data_without_retain() {
    let node = TestBroker::start(|_| {}).await;
    let (a, pa) = node.create_device().await;
    let (other, _) = node.create_device().await;
    let mut opts = options(&node, "will-ok");
    opts.set_last_will(LastWill::new(
        "devices/telemetry",
        r#"{"will_fired":1}"#,
        QoS::AtLeastOnce,
        true,
    ));
    let client = connect_opts(opts, &a, &pa).await.unwrap();
    // A graceful DISCONNECT discards the will ...
    client.disconnect().await;
    settle(&node).await;
    assert!(stored(&node, &a, "will_fired").await.is_empty());
    // ... a lost connection publishes it, as the device's own telemetry.
    let mut opts = options(&node, "will-ok");
    opts.set_last_will(LastWill::new(
        "devices/telemetry",
        r#"{"will_fired":2}"#,
        QoS::AtLeastOnce,
        true,
    ));
    let client = connect_opts(opts, &a, &pa).await.unwrap();
    client.drop_connection();
    assert_eq!(
        wait_for_points(&node, &a, "will_fired", 1).await,
        vec![Value::Integer(2)]
    );
    assert!(stored(&node, &other, "will_fired").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_using_the_platforms_old_internal_client_id_changes_nothing() {
    let node = TestBroker::start(|_| {}).await;
    let (a, pa) = node.create_device().await;
    let (b, pb) = node.create_device().await;
    // Whatever the answer, the platform keeps storing every device's data.
    let squatter = connect_opts(options(&node, "tp-platform"), &a, &pa).await;
    let mut honest = node.connect(&b, &pb).await.unwrap();
    honest
        .publish("devices/telemetry", r#"{"still_stored":1}"#)
        .await
        .unwrap();
    assert_eq!(
        wait_for_points(&node, &b, "still_stored", 1).await,
        vec![Value::Integer(1)]
    );
    drop(squatter);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_devices_client_id_is_refused_and_its_owner_stays_connected() {
    let node = TestBroker::start(|_| {}).await;
    let (a, pa) = node.create_device().await;
    let (b, pb) = node.create_device().await;
    let owner_id = format!("mqtt_{}", b.device_number);
    let mut owner = node.connect(&b, &pb).await.unwrap();
    let refused = connect_opts(options(&node, &owner_id), &a, &pa).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("BadClientId") || e.contains("IdentifierRejected")),
        "A took B's client id: {:?}",
        refused.map(|_| ())
    );
    assert!(!owner.closed_within(QUIET).await, "B was dropped");
    owner
        .publish("devices/telemetry", r#"{"owner":1}"#)
        .await
        .unwrap();
    assert_eq!(
        wait_for_points(&node, &b, "owner", 1).await,
        vec![Value::Integer(1)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_device_reconnecting_takes_its_session_over() {
    let node = TestBroker::start(|_| {}).await;
    let (a, pa) = node.create_device().await;
    let mut first = node.connect(&a, &pa).await.unwrap();
    let mut second = node.connect(&a, &pa).await.unwrap();
    assert!(first.closed_within(CLOSE).await, "old connection kept");
    second
        .publish("devices/telemetry", r#"{"second":1}"#)
        .await
        .unwrap();
    assert_eq!(node.broker.stats().connected_devices, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_is_restored_only_for_its_own_device() {
    let node = TestBroker::start(|_| {}).await;
    let (a, pa) = node.create_device().await;
    let (b, pb) = node.create_device().await;
    let commands = format!("devices/command/{}/+", a.device_number);
    let mut opts = options(&node, "shared-id");
    opts.set_clean_session(false);
    let mut client = connect_opts(opts.clone(), &a, &pa).await.unwrap();
    assert!(!client.session_present());
    client.subscribe(&[&commands]).await.unwrap();
    client.disconnect().await;

    // B with the same client id gets a fresh session, none of A's subscriptions.
    let mut opts_b = options(&node, "shared-id");
    opts_b.set_clean_session(false);
    let intruder = connect_opts(opts_b, &b, &pb).await.unwrap();
    assert!(!intruder.session_present(), "B inherited A's session");
    let sent = node
        .broker
        .transport()
        .send(tp_core::Downlink {
            device_id: b.id,
            topic: commands.clone(),
            payload: bytes::Bytes::from_static(b"{}"),
        })
        .await;
    assert!(sent.is_err(), "A's filter reached B's connection");
    intruder.disconnect().await;

    // A gets its own session back, subscribed without subscribing again.
    let mut client = connect_opts(opts, &a, &pa).await.unwrap();
    assert!(client.session_present());
    node.broker
        .transport()
        .send(tp_core::Downlink {
            device_id: a.id,
            topic: format!("devices/command/{}/m1", a.device_number),
            payload: bytes::Bytes::from_static(br#"{"method":"Ping"}"#),
        })
        .await
        .expect("restored subscription");
    let (topic, _) = client.recv_publish(CLOSE).await.expect("downlink");
    assert_eq!(topic, format!("devices/command/{}/m1", a.device_number));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnecting_a_device_closes_its_live_connections_and_forgets_its_session() {
    let node = TestBroker::start(|_| {}).await;
    let (a, pa) = node.create_device().await;
    let (b, pb) = node.create_device().await;
    let mut opts = options(&node, "revoked");
    opts.set_clean_session(false);
    let mut victim = connect_opts(opts.clone(), &a, &pa).await.unwrap();
    victim
        .subscribe(&[&format!("devices/command/{}/+", a.device_number)])
        .await
        .unwrap();
    let mut bystander = node.connect(&b, &pb).await.unwrap();
    assert_eq!(node.broker.disconnect_device(a.id), 1);
    assert!(victim.closed_within(CLOSE).await, "revoked device kept");
    assert!(!bystander.closed_within(QUIET).await, "bystander dropped");
    // Reconnecting (the credentials still work here) starts without the old session.
    let client = connect_opts(opts, &a, &pa).await.unwrap();
    assert!(!client.session_present());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_sessions_of_one_client_id_never_break_the_listener() {
    let (Some(sub), Some(publ)) = (
        mosquitto_client("mosquitto_sub"),
        mosquitto_client("mosquitto_pub"),
    ) else {
        return;
    };
    let node = TestBroker::start(|_| {}).await;
    let (a, pa) = node.create_device().await;
    let addr = node.broker.local_addr();
    let (host, port) = (addr.ip().to_string(), addr.port().to_string());
    let commands = format!("devices/command/{}/+", a.device_number);
    for round in 0..20 {
        // A subscriber and a publisher with the same client id, overlapping, one
        // of them asking for a persistent session, as paho-based tools do.
        let subscriber = tokio::process::Command::new(&sub)
            .args(["-h", &host, "-p", &port, "-i", "same-id", "-u"])
            .args([&a.credentials.username, "-P", &pa, "-t", &commands])
            .args(["-c", "-q", "1", "-W", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let publisher = tokio::process::Command::new(&publ)
            .args(["-h", &host, "-p", &port, "-i", "same-id", "-u"])
            .args([&a.credentials.username, "-P", &pa, "-q", "1"])
            .args([
                "-t",
                "devices/telemetry",
                "-m",
                &format!(r#"{{"round":{round}}}"#),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let _ = publisher.wait_with_output().await;
        let _ = subscriber.wait_with_output().await;
    }
    assert!(node.broker.is_healthy());
    for _ in 0..3 {
        let (d, p) = node.create_device().await;
        let mut c = node.connect(&d, &p).await.expect("other devices connect");
        c.publish("devices/telemetry", r#"{"after":1}"#)
            .await
            .unwrap();
        assert_eq!(
            wait_for_points(&node, &d, "after", 1).await,
            vec![Value::Integer(1)]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_0_1_and_2_from_mosquitto_pub_are_stored_once() {
    let Some(publ) = mosquitto_client("mosquitto_pub") else {
        return;
    };
    let node = TestBroker::start(|_| {}).await;
    let (a, pa) = node.create_device().await;
    let addr = node.broker.local_addr();
    for (qos, version) in [
        ("0", "mqttv311"),
        ("1", "mqttv5"),
        ("2", "mqttv311"),
        ("1", "mqttv31"),
    ] {
        let out = tokio::process::Command::new(&publ)
            .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
            .args([
                "-u",
                &a.credentials.username,
                "-P",
                &pa,
                "-q",
                qos,
                "-V",
                version,
            ])
            .args([
                "-t",
                "devices/telemetry",
                "-m",
                &format!(r#"{{"q{qos}_{version}":1}}"#),
            ])
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "QoS {qos} over {version}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let key = format!("q{qos}_{version}");
        assert_eq!(
            wait_for_points(&node, &a, &key, 1).await,
            vec![Value::Integer(1)],
            "{key}"
        );
    }
    // Each accepted once (a QoS 2 publish is not ingested again on its PUBREL).
    assert_eq!(node.broker.stats().accepted, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_keeps_the_persistent_session_of_the_same_device() {
    let node = TestBroker::start(|_| {}).await;
    let (a, pa) = node.create_device().await;
    let mut opts = options(&node, "paho-like");
    opts.set_clean_session(false);
    let mut first = connect_opts(opts.clone(), &a, &pa).await.unwrap();
    first
        .subscribe(&[&format!("devices/command/{}/+", a.device_number)])
        .await
        .unwrap();
    // Reconnecting while the first connection is still open, as paho clients do.
    let mut second = connect_opts(opts, &a, &pa).await.unwrap();
    assert!(first.closed_within(CLOSE).await, "old connection kept");
    assert!(
        second.session_present(),
        "the subscriptions were not carried over"
    );
    node.broker
        .transport()
        .send(tp_core::Downlink {
            device_id: a.id,
            topic: format!("devices/command/{}/m2", a.device_number),
            payload: bytes::Bytes::from_static(br#"{"method":"Ping"}"#),
        })
        .await
        .expect("carried-over subscription");
    let (topic, _) = second.recv_publish(CLOSE).await.expect("downlink");
    assert_eq!(topic, format!("devices/command/{}/m2", a.device_number));
}

/// MQTT's session state: a QoS 1 downlink the device received but never
/// acknowledged (its connection dropped first) is sent again when the device resumes
/// its persistent session, so a command marked `sent` is not lost with the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacknowledged_downlink_is_sent_again_when_the_session_resumes() {
    let node = TestBroker::start(|_| {}).await;
    let (a, pa) = node.create_device().await;
    let mut opts = options(&node, "unacked");
    opts.set_clean_session(false);
    let mut silent = opts.clone();
    silent.set_manual_acks(true);
    let mut first = connect_opts(silent, &a, &pa).await.unwrap();
    first
        .subscribe(&[&format!("devices/command/{}/+", a.device_number)])
        .await
        .unwrap();
    let topic = format!("devices/command/{}/m3", a.device_number);
    node.broker
        .transport()
        .send(tp_core::Downlink {
            device_id: a.id,
            topic: topic.clone(),
            payload: bytes::Bytes::from_static(br#"{"method":"Reboot"}"#),
        })
        .await
        .expect("subscribed");
    let (got, _) = first.recv_publish(CLOSE).await.expect("first delivery");
    assert_eq!(got, topic);
    // No PUBACK: the network goes away.
    first.drop_connection();

    let mut second = connect_opts(opts.clone(), &a, &pa).await.unwrap();
    assert!(second.session_present());
    let (again, payload) = second.recv_publish(CLOSE).await.expect("sent again");
    assert_eq!(again, topic);
    assert_eq!(payload, br#"{"method":"Reboot"}"#);
    // Acknowledged this time (the test client acks): not sent a third time.
    second.disconnect().await;
    let mut third = connect_opts(opts, &a, &pa).await.unwrap();
    assert!(third.session_present());
    assert!(
        third.recv_publish(QUIET).await.is_none(),
        "acknowledged downlink resent"
    );
}

/// An access token logs in alone; what is stored for it (its digest) never does,
/// and a BASIC username is never looked up as a token or the other way round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_token_logs_in_but_its_stored_digest_does_not() {
    let node = TestBroker::start(|_| {}).await;
    let (mut device, _) = Device::new(node.tenant, "token device".into(), None);
    let (credentials, issued) =
        tp_core::DeviceCredentials::generate_for(tp_core::VoucherType::AccessToken);
    device.credentials = credentials;
    node.metadata.create_device(&device).await.unwrap();
    let token = issued.username;
    assert_ne!(
        device.credentials.username, token,
        "the token is not stored"
    );
    let addr = node.broker.local_addr();
    let mut c = MqttTestClient::connect(addr, "mqtt_tok", &token, "")
        .await
        .expect("token login");
    c.publish("devices/telemetry", r#"{"t":1}"#).await.unwrap();
    settle(&node).await;
    assert_eq!(stored(&node, &device, "t").await, vec![Value::Integer(1)]);
    c.disconnect().await;
    for password in ["", "anything"] {
        assert!(
            MqttTestClient::connect(addr, "mqtt_tok", &device.credentials.username, password)
                .await
                .is_err(),
            "the stored digest logged in (password {password:?})"
        );
    }
    // A BASIC device's username with an empty password is not a token.
    let (basic, password) = node.create_device().await;
    assert!(
        MqttTestClient::connect(addr, "mqtt_b", &basic.credentials.username, "")
            .await
            .is_err()
    );
    node.connect(&basic, &password)
        .await
        .expect("basic login")
        .disconnect()
        .await;
}
