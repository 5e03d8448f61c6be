//! MQTT over TLS end to end: a self-signed certificate made at test time; rumqttc
//! devices (MQTT 3.1.1 and 5, TCP and WebSocket) and the mosquitto command-line
//! clients over real sockets; certificate problems as startup errors.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::tokio_rustls::rustls;
use tp_broker::testing::{MqttTestClient, TestBroker};
use tp_broker::{BrokerConfig, BrokerError, TlsSettings};
use tp_core::testing::mosquitto_client;
use tp_core::{Downlink, Order, TsQuery, Value};

const WAIT: Duration = Duration::from_secs(30);

/// Every TLS listener on an ephemeral port with a fresh self-signed certificate for
/// 127.0.0.1 and localhost written to `dir`; also returns the certificate PEM for
/// clients to trust.
fn tls_settings(dir: &std::path::Path) -> (TlsSettings, String) {
    let cert = tp_core::testing::tls::self_signed(dir);
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let settings = TlsSettings {
        listen: Some(any),
        v5_listen: Some(any),
        wss_listen: Some(any),
        cert_path: cert.cert_path,
        key_path: cert.key_path,
    };
    (settings, cert.cert_pem)
}

/// A broker with every TLS listener and no plain MQTT 5 or WebSocket listener (the
/// TLS ones relay to loopback-only listeners).
async fn start() -> (TestBroker, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (settings, ca) = tls_settings(dir.path());
    let node = TestBroker::start(|c| c.tls = Some(settings)).await;
    assert_eq!(node.broker.v5_addr(), None);
    assert_eq!(node.broker.ws_addr(), None);
    (node, ca, dir)
}

/// A rustls client config (ring provider) trusting only `ca_pem`.
fn client_config(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

async fn wait_consumed(node: &TestBroker, n: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while node.broker.stats().consumed < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {n} messages consumed",
            node.broker.stats().consumed
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    node.writer.flush().await.unwrap();
}

async fn stored(node: &TestBroker, device: tp_core::DeviceId, key: &str) -> Vec<(i64, Value)> {
    node.timeseries
        .query(&TsQuery {
            device_id: device,
            keys: vec![key.into()],
            start: 0,
            end: i64::MAX,
            aggregation: None,
            limit: None,
            order: Order::Asc,
        })
        .await
        .unwrap()
        .into_iter()
        .map(|kv| (kv.ts, kv.value))
        .collect()
}

/// Sends `payload` to the device on `topic` once the broker sees its subscription
/// (until then the transport refuses, and callers would queue).
async fn send_downlink(node: &TestBroker, device: tp_core::DeviceId, topic: &str, payload: &str) {
    let transport = node.broker.transport();
    let message = Downlink {
        device_id: device,
        topic: topic.to_owned(),
        payload: payload.as_bytes().to_vec().into(),
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match transport.send(message.clone()).await {
            Ok(()) => return,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "downlink never accepted: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_publish_over_tls_with_their_credentials() {
    let (node, ca, _dir) = start().await;
    let addr = node.broker.tls_addr().expect("TLS listener");
    let (device, password) = node.create_device().await;
    let client_id = format!("mqtt_{}", device.device_number);

    // a wrong password is refused over TLS as on the plain port
    let refused = MqttTestClient::connect_tls(
        addr,
        ca.as_bytes(),
        &client_id,
        &device.credentials.username,
        "wrong",
    )
    .await;
    assert!(refused.is_err());

    let mut client = MqttTestClient::connect_tls(
        addr,
        ca.as_bytes(),
        &client_id,
        &device.credentials.username,
        &password,
    )
    .await
    .expect("TLS connect");
    client
        .publish(
            "devices/telemetry",
            r#"[{"ts":1700000000000,"values":{"temp":21}}]"#,
        )
        .await
        .expect("publish over TLS");
    // the same ACL holds over TLS
    let n = &device.device_number;
    client
        .subscribe(&[&format!("devices/command/{n}/+")])
        .await
        .expect("own topics");

    wait_consumed(&node, 1).await;
    assert_eq!(
        stored(&node, device.id, "temp").await,
        vec![(1_700_000_000_000, Value::Integer(21))]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_and_stalled_clients_do_not_get_in_or_block_others() {
    let (node, ca, _dir) = start().await;
    let addr = node.broker.tls_addr().expect("TLS listener");
    let (device, password) = node.create_device().await;
    let username = &device.credentials.username;

    // a client that trusts another certificate does not complete the handshake
    let other_dir = tempfile::tempdir().unwrap();
    let (_, other_ca) = tls_settings(other_dir.path());
    assert!(
        MqttTestClient::connect_tls(addr, other_ca.as_bytes(), "c1", username, &password)
            .await
            .is_err()
    );
    // plain MQTT on the TLS port is not MQTT to the broker
    assert!(
        MqttTestClient::connect(addr, "c2", username, &password)
            .await
            .is_err()
    );

    // a client that opens TCP and never starts the handshake blocks nobody
    let _stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut client = MqttTestClient::connect_tls(addr, ca.as_bytes(), "c3", username, &password)
        .await
        .expect("TLS connect next to a stalled client");
    client
        .publish("devices/telemetry", r#"{"temp":1}"#)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_devices_over_tls_publish_receive_downlink_and_are_held_to_the_acl() {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    type Events = tokio::sync::mpsc::UnboundedReceiver<Result<Packet, String>>;

    let (node, ca, _dir) = start().await;
    let addr = node.broker.tls_v5_addr().expect("MQTT 5 TLS listener");
    let (device, password) = node.create_device().await;
    let (other, _) = node.create_device().await;
    let tls = client_config(&ca);
    let connect = |password: &str, id: &str| {
        let mut opts = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        opts.set_credentials(device.credentials.username.clone(), password);
        opts.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls.clone()),
        ));
        let (client, mut eventloop) = AsyncClient::new(opts, 16);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(p)) => {
                        let _ = tx.send(Ok(p));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                }
            }
        });
        (client, rx)
    };
    async fn next(rx: &mut Events, want: fn(&Packet) -> bool) -> Result<Packet, String> {
        loop {
            match tokio::time::timeout(WAIT, rx.recv()).await {
                Ok(Some(Ok(p))) if want(&p) => return Ok(p),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => return Err(e),
                Ok(None) => return Err("closed".into()),
                Err(_) => return Err("timed out".into()),
            }
        }
    }

    // wrong password: refused
    let (_refused, mut rx) = connect("wrong", "v5-tls-bad");
    assert!(
        next(&mut rx, |p| matches!(p, Packet::ConnAck(_)))
            .await
            .is_err()
    );

    let (client, mut rx) = connect(&password, "v5-tls-good");
    next(&mut rx, |p| matches!(p, Packet::ConnAck(_)))
        .await
        .expect("CONNACK over TLS");
    // telemetry: acknowledged, stored under the device
    client
        .publish(
            "devices/telemetry",
            QoS::AtLeastOnce,
            false,
            r#"{"ts":1700000000005,"values":{"v5tls":5}}"#,
        )
        .await
        .unwrap();
    next(&mut rx, |p| matches!(p, Packet::PubAck(_)))
        .await
        .expect("PUBACK");
    wait_consumed(&node, 1).await;
    assert_eq!(
        stored(&node, device.id, "v5tls").await,
        vec![(1_700_000_000_005, Value::Integer(5))]
    );

    // its own command topic: granted, and a downlink arrives
    let n = &device.device_number;
    client
        .subscribe(format!("devices/command/{n}/+"), QoS::AtLeastOnce)
        .await
        .unwrap();
    next(&mut rx, |p| matches!(p, Packet::SubAck(_)))
        .await
        .expect("SUBACK");
    let topic = format!("devices/command/{n}/m5");
    send_downlink(&node, device.id, &topic, r#"{"method":"Reboot"}"#).await;
    let Packet::Publish(publish) = next(&mut rx, |p| matches!(p, Packet::Publish(_)))
        .await
        .expect("downlink over TLS")
    else {
        unreachable!()
    };
    assert_eq!(publish.topic, topic.as_bytes());
    assert_eq!(&publish.payload[..], br#"{"method":"Reboot"}"#);

    // another device's command topic: refused, the connection is closed
    client
        .subscribe(
            format!("devices/command/{}/+", other.device_number),
            QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    assert!(
        next(&mut rx, |p| matches!(p, Packet::SubAck(_)))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_secure_websocket_works_with_the_same_credentials() {
    let (node, ca, _dir) = start().await;
    let addr = node.broker.wss_addr().expect("WSS listener");
    let (device, password) = node.create_device().await;
    let username = &device.credentials.username;
    assert!(
        MqttTestClient::connect_wss(addr, ca.as_bytes(), "wss-bad", username, "wrong")
            .await
            .is_err()
    );
    let mut client =
        MqttTestClient::connect_wss(addr, ca.as_bytes(), "wss-good", username, &password)
            .await
            .expect("WSS connect");
    client
        .publish(
            "devices/telemetry",
            r#"{"ts":1700000000007,"values":{"wss":7}}"#,
        )
        .await
        .expect("publish over WSS");
    let n = &device.device_number;
    client
        .subscribe(&[&format!("devices/telemetry/control/{n}")])
        .await
        .unwrap();
    let topic = format!("devices/telemetry/control/{n}");
    send_downlink(&node, device.id, &topic, r#"{"on":true}"#).await;
    assert_eq!(
        client.recv_publish(WAIT).await,
        Some((topic, br#"{"on":true}"#.to_vec()))
    );
    wait_consumed(&node, 1).await;
    assert_eq!(
        stored(&node, device.id, "wss").await,
        vec![(1_700_000_000_007, Value::Integer(7))]
    );
    // outside the ACL: the connection is closed
    assert!(client.publish_closes("other/topic", "{}").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_over_tls_publish_and_receive_downlink() {
    let (Some(sub), Some(pubc)) = (
        mosquitto_client("mosquitto_sub"),
        mosquitto_client("mosquitto_pub"),
    ) else {
        return;
    };
    let (node, ca, dir) = start().await;
    let cafile = dir.path().join("ca.pem");
    std::fs::write(&cafile, &ca).unwrap();
    let (device, password) = node.create_device().await;
    let n = &device.device_number;
    let common = |addr: SocketAddr, version: &str, id: &str| -> Vec<String> {
        [
            "-h",
            "127.0.0.1",
            "-p",
            &addr.port().to_string(),
            "--cafile",
            &cafile.display().to_string(),
            "-V",
            version,
            "-i",
            id,
            "-u",
            &device.credentials.username,
            "-P",
            &password,
            "-q",
            "1",
        ]
        .map(str::to_owned)
        .to_vec()
    };

    // mosquitto_sub (MQTT 5 over TLS) prints "<topic> <payload>" of the first
    // message and exits
    let tls_v5 = node.broker.tls_v5_addr().unwrap();
    let child = tokio::process::Command::new(&sub)
        .args(common(tls_v5, "mqttv5", "mosq_tls_sub"))
        .args(["-t", &format!("devices/command/{n}/+"), "-C", "1", "-v"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let topic = format!("devices/command/{n}/mq1");
    send_downlink(&node, device.id, &topic, r#"{"method":"Open"}"#).await;
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("mosquitto_sub received nothing")
        .unwrap();
    assert!(
        out.status.success(),
        "mosquitto_sub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim_end(),
        format!(r#"{topic} {{"method":"Open"}}"#)
    );

    // mosquitto_pub (MQTT 3.1.1 over TLS) sends telemetry
    let tls_v4 = node.broker.tls_addr().unwrap();
    let out = tokio::process::Command::new(&pubc)
        .args(common(tls_v4, "mqttv311", "mosq_tls_pub"))
        .args([
            "-t",
            "devices/telemetry",
            "-m",
            r#"{"ts":1700000000009,"values":{"mosq":9}}"#,
        ])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(WAIT, out)
        .await
        .expect("mosquitto_pub hung")
        .unwrap();
    assert!(
        out.status.success(),
        "mosquitto_pub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_consumed(&node, 1).await;
    assert_eq!(
        stored(&node, device.id, "mosq").await,
        vec![(1_700_000_000_009, Value::Integer(9))]
    );

    // mosquitto_pub that does not trust the certificate gets nowhere
    let other_dir = tempfile::tempdir().unwrap();
    let (_, other_ca) = tls_settings(other_dir.path());
    let other_cafile = other_dir.path().join("ca.pem");
    std::fs::write(&other_cafile, &other_ca).unwrap();
    let mut args = common(tls_v4, "mqttv311", "mosq_tls_untrusting");
    let at = args.iter().position(|a| a == "--cafile").unwrap();
    args[at + 1] = other_cafile.display().to_string();
    let out = tokio::process::Command::new(&pubc)
        .args(args)
        .args(["-t", "devices/telemetry", "-m", r#"{"mosq":10}"#])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(WAIT, out)
        .await
        .expect("mosquitto_pub hung")
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(node.broker.stats().accepted, 1);
}

/// Starts a broker with `tls` and returns the startup error.
async fn start_error(tls: TlsSettings) -> BrokerError {
    let config = BrokerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: Some(tls),
        ..Default::default()
    };
    let deps = tp_broker::BrokerDeps {
        metadata: tp_storage::open_metadata("sqlite::memory:").await.unwrap(),
        cache: tp_storage::open_cache("memory://").await.unwrap(),
        writer: std::sync::Arc::new(tp_storage::writer::BatchWriter::spawn(
            tp_storage::open_timeseries("sqlite::memory:")
                .await
                .unwrap(),
            Default::default(),
        )),
    };
    tp_broker::EmbeddedBroker::start(&config, deps)
        .await
        .expect_err("starts with a bad TLS setting")
}

#[tokio::test]
async fn bad_certificate_settings_are_startup_errors_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let (good, _) = tls_settings(dir.path());
    let other_dir = tempfile::tempdir().unwrap();
    let (other, _) = tls_settings(other_dir.path());
    let missing = dir.path().join("missing.pem");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();

    let cases = [
        (
            TlsSettings {
                cert_path: missing.clone(),
                ..good.clone()
            },
            format!("mqtt.tls.cert_path: cannot read {}: ", missing.display()),
        ),
        (
            TlsSettings {
                key_path: missing.clone(),
                ..good.clone()
            },
            format!("mqtt.tls.key_path: cannot read {}: ", missing.display()),
        ),
        (
            TlsSettings {
                cert_path: garbage.clone(),
                ..good.clone()
            },
            format!(
                "mqtt.tls.cert_path: no PEM certificate (\"BEGIN CERTIFICATE\") in {}",
                garbage.display()
            ),
        ),
        (
            TlsSettings {
                key_path: garbage.clone(),
                ..good.clone()
            },
            format!(
                "mqtt.tls.key_path: no PEM private key (PKCS#8, PKCS#1 or SEC1) in {}",
                garbage.display()
            ),
        ),
        (
            // a certificate is not a key
            TlsSettings {
                key_path: good.cert_path.clone(),
                ..good.clone()
            },
            "mqtt.tls.key_path: no PEM private key".to_owned(),
        ),
        (
            TlsSettings {
                key_path: other.key_path.clone(),
                ..good.clone()
            },
            format!(
                "mqtt.tls.key_path: the key in {} does not belong to the certificate in {}",
                other.key_path.display(),
                good.cert_path.display()
            ),
        ),
        (
            TlsSettings {
                listen: None,
                v5_listen: None,
                wss_listen: None,
                ..good.clone()
            },
            "mqtt.tls: set at least one of listen, v5_listen and wss_listen".to_owned(),
        ),
    ];
    for (settings, want) in cases {
        let err = start_error(settings).await;
        assert!(matches!(err, BrokerError::Tls(_)), "{err:?}");
        assert!(err.to_string().starts_with(&want), "{err} / want {want}");
    }

    // a taken TLS port names its setting too
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = start_error(TlsSettings {
        wss_listen: Some(taken.local_addr().unwrap()),
        ..good
    })
    .await;
    assert!(err.to_string().contains("mqtt.tls.wss_listen"), "{err}");
}

#[test]
fn tls_settings_parse_with_optional_listeners() {
    let settings: TlsSettings = serde_json::from_str(
        r#"{"v5_listen": "0.0.0.0:8885", "cert_path": "/etc/tp/cert.pem", "key_path": "/etc/tp/key.pem"}"#,
    )
    .unwrap();
    assert_eq!(settings.listen, None);
    assert_eq!(settings.v5_listen, Some("0.0.0.0:8885".parse().unwrap()));
    assert_eq!(settings.wss_listen, None);
    // the certificate and key are required
    assert!(serde_json::from_str::<TlsSettings>(r#"{"listen": "0.0.0.0:8883"}"#).is_err());
}
