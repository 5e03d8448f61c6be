//! MQTT over TLS end to end: a self-signed certificate made at test time, rumqttc
//! devices over real sockets.

use std::time::Duration;

use tp_broker::TlsSettings;
use tp_broker::testing::{MqttTestClient, TestBroker};
use tp_core::{Order, TsQuery, Value};

/// A self-signed certificate for 127.0.0.1, written to `dir`; returns the settings
/// and the certificate PEM for clients to trust.
fn self_signed(dir: &std::path::Path) -> (TlsSettings, String) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let cert_pem = certified.cert.pem();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, &cert_pem).unwrap();
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).unwrap();
    let settings = TlsSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        cert_path,
        key_path,
    };
    (settings, cert_pem)
}

async fn start() -> (TestBroker, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (settings, ca) = self_signed(dir.path());
    let node = TestBroker::start(|c| c.tls = Some(settings)).await;
    (node, ca, dir)
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

    for _ in 0..3000 {
        if node.broker.stats().consumed >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    node.writer.flush().await.unwrap();
    let stored = node
        .timeseries
        .query(&TsQuery {
            device_id: device.id,
            keys: vec!["temp".into()],
            start: 0,
            end: i64::MAX,
            aggregation: None,
            limit: None,
            order: Order::Asc,
        })
        .await
        .unwrap();
    let stored: Vec<_> = stored.into_iter().map(|kv| (kv.ts, kv.value)).collect();
    assert_eq!(stored, vec![(1_700_000_000_000, Value::Integer(21))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_and_stalled_clients_do_not_get_in_or_block_others() {
    let (node, ca, _dir) = start().await;
    let addr = node.broker.tls_addr().expect("TLS listener");
    let (device, password) = node.create_device().await;
    let username = &device.credentials.username;

    // a client that trusts another certificate does not complete the handshake
    let other_dir = tempfile::tempdir().unwrap();
    let (_, other_ca) = self_signed(other_dir.path());
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

#[tokio::test]
async fn a_missing_certificate_is_a_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = tp_broker::BrokerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: Some(TlsSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            cert_path: dir.path().join("missing.pem"),
            key_path: dir.path().join("missing.key"),
        }),
        ..Default::default()
    };
    let deps = tp_broker::BrokerDeps {
        metadata: tp_storage::open_metadata("sqlite::memory:").await.unwrap(),
        cache: tp_storage::open_cache("memory://").await.unwrap(),
        writer: tp_storage::writer::BatchWriter::spawn(
            tp_storage::open_timeseries("sqlite::memory:")
                .await
                .unwrap(),
            Default::default(),
        ),
    };
    let err = tp_broker::EmbeddedBroker::start(&config, deps)
        .await
        .expect_err("starts without a certificate");
    assert!(err.to_string().contains("missing.pem"), "{err}");
}
