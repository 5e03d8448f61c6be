//! The Redis cluster backplane between nodes of different roles, in one process:
//! a broker-only node (MQTT, no REST API) and an API-only node (REST, no MQTT)
//! sharing PostgreSQL (a schema of their own) and Redis (a key prefix of their own).
//! A command sent through the API node reaches the device connected to the broker
//! node and its response updates the shared log; a device deleted through the API
//! node is refused by the broker node on its next connect. Skipped without the
//! services unless `TP_REQUIRE_SERVICES` is set.

mod common;

use common::cluster::{SharedStores, cluster_config};
use common::*;
use serde_json::json;

/// A broker-only node `a` and an API-only node `b` (logged in) on a schema and a
/// Redis prefix of their own; `None` (skip) without the services.
struct Pair {
    a: Node,
    b: Node,
    stores: SharedStores,
}

impl Pair {
    async fn start() -> Option<Self> {
        let stores = SharedStores::new("bp")?;
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let broker_cfg = cluster_config(dir_a.path(), r#"["broker"]"#, "a", &stores);
        let api_cfg = cluster_config(dir_b.path(), r#"["api"]"#, "b", &stores);
        let a = Node::of(Platform::start(broker_cfg).await.unwrap(), dir_a);
        let b = Node::signed_in(Platform::start(api_cfg).await.unwrap(), dir_b).await;
        Some(Self { a, b, stores })
    }

    /// Shuts both nodes down and drops their schema.
    async fn stop(self) {
        self.a.platform.shutdown().await.unwrap();
        self.b.platform.shutdown().await.unwrap();
        self.stores.drop_schema().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downlink_and_invalidations_cross_nodes() {
    let Some(Pair { a, b, stores }) = Pair::start().await else {
        return;
    };

    // Roles: A has MQTT and no REST API, B the REST API and no MQTT; both are ready.
    assert!(a.platform.embedded_broker().is_some() && a.platform.backplane().is_some());
    assert!(b.platform.embedded_broker().is_none() && b.platform.backplane().is_some());
    for n in [&a, &b] {
        let res = n
            .http
            .get(format!("{}/readyz", n.base))
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.status(),
            StatusCode::OK,
            "{}",
            res.text().await.unwrap()
        );
    }
    let res = a
        .http
        .get(format!("{}/api/v1/devices", a.base))
        .bearer_auth(&b.token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::NOT_FOUND,
        "broker node serves no REST API"
    );

    // A device created through B connects to A.
    let d = b.create_device("bp-dev-1").await;
    let n = &d.number;
    let mut dev = a.connect(&d, "bp-dev-1").await;
    dev.subscribe(&[&format!("devices/command/{n}/+")])
        .await
        .unwrap();
    b.wait_online(&d, true).await;

    // A command through B's API reaches the device on A; its response marks the row.
    let row = b
        .downlink(
            post(),
            &format!("/api/v1/devices/{}/commands", d.id),
            json!({"method": "SetLight", "params": {"on": true}}),
        )
        .await;
    let m1 = mid(&row);
    let (topic, payload) = dev
        .recv_publish(RECV)
        .await
        .expect("command via the backplane");
    assert_eq!(topic, format!("devices/command/{n}/{m1}"));
    assert_eq!(
        json_of(&payload),
        json!({"method": "SetLight", "params": {"on": true}})
    );
    dev.publish(
        &format!("devices/command/response/{m1}"),
        r#"{"result":0,"message":"success"}"#,
    )
    .await
    .unwrap();
    let replied = b.wait_status(&d, &m1, "replied").await;
    assert_eq!(replied["response"]["result"], 0);

    // A second one goes out exactly once.
    let row = b
        .downlink(
            post(),
            &format!("/api/v1/devices/{}/commands", d.id),
            json!({"method": "Reboot"}),
        )
        .await;
    let m2 = mid(&row);
    let (topic, _) = dev.recv_publish(RECV).await.expect("second command");
    assert_eq!(topic, format!("devices/command/{n}/{m2}"));
    b.wait_status(&d, &m2, "sent").await;
    assert!(
        dev.recv_publish(Duration::from_millis(300)).await.is_none(),
        "no duplicate delivery"
    );

    // Deleted through B: A refuses the device's next connect (its credentials were
    // cached by A's first connect).
    dev.disconnect().await;
    b.wait_online(&d, false).await;
    let (status, body) = b
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/devices/{}", d.id),
            None,
        )
        .await;
    assert!(status.is_success(), "{status}: {body}");
    let refused = MqttTestClient::connect(
        a.platform.mqtt_addr(),
        "bp-dev-1-again",
        &d.username,
        &d.password,
    )
    .await;
    assert!(refused.is_err(), "a deleted device must be refused");

    Pair { a, b, stores }.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_deleting_or_rekeying_a_device_closes_its_connection_on_another_node() {
    let Some(Pair { a, b, stores }) = Pair::start().await else {
        return;
    };

    revoking_closes_connections(&b, &a, "bp-revoked").await;
    Pair { a, b, stores }.stop().await;
}
