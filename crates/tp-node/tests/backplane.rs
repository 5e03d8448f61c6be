//! The Redis cluster backplane between nodes of different roles, in one process:
//! a broker-only node (MQTT, no REST API) and an API-only node (REST, no MQTT)
//! sharing PostgreSQL (a schema of their own) and Redis (a key prefix of their own).
//! A command sent through the API node reaches the device connected to the broker
//! node and its response updates the shared log; a device deleted through the API
//! node is refused by the broker node on its next connect. Skipped without the
//! services unless `TP_REQUIRE_SERVICES` is set.

mod common;

use common::*;
use serde_json::json;

const JWT_SECRET: &str = "backplane-test-secret-0123456789abcdef";

/// A node with `roles` on the shared stores; `dir` keeps its data dir (WAL).
fn cluster_config(
    dir: &std::path::Path,
    roles: &str,
    node_id: &str,
    pg_url: &str,
    redis_url: &str,
) -> PlatformConfig {
    let overrides = [
        ("data_dir", dir.display().to_string()),
        ("http.listen", "127.0.0.1:0".to_owned()),
        ("mqtt.listen", "127.0.0.1:0".to_owned()),
        ("auth.admin_email", ADMIN.to_owned()),
        ("auth.admin_password", PASSWORD.to_owned()),
        // One signing secret, so a token from one node is valid on the other.
        ("auth.jwt_secret", JWT_SECRET.to_owned()),
        ("storage.metadata", pg_url.to_owned()),
        ("storage.timeseries", pg_url.to_owned()),
        ("storage.cache", redis_url.to_owned()),
        ("node.roles", roles.to_owned()),
        ("cluster.node_id", node_id.to_owned()),
    ];
    PlatformConfig::load(None, &overrides).unwrap()
}

async fn node(config: PlatformConfig, dir: tempfile::TempDir) -> Node {
    let platform = Platform::start(config).await.unwrap();
    let http = reqwest::Client::new();
    let base = format!("http://{}", platform.http_addr());
    Node {
        platform,
        http,
        base,
        token: String::new(),
        _dir: dir,
    }
}

/// A broker-only node `a` and an API-only node `b` (logged in) on a schema and a
/// Redis prefix of their own; `None` (skip) without the services.
struct Pair {
    a: Node,
    b: Node,
    pg: String,
    schema: String,
}

impl Pair {
    async fn start() -> Option<Self> {
        let pg = tp_core::testing::service_url("TP_TEST_POSTGRES_URL")?;
        let redis = tp_core::testing::service_url("TP_TEST_REDIS_URL")?;
        let run = uuid::Uuid::new_v4().simple().to_string();
        let sep = |url: &str| if url.contains('?') { '&' } else { '?' };
        let schema = format!("tp_bp_{run}");
        let pg_url = format!("{pg}{}schema={schema}", sep(&pg));
        let redis_url = format!("{redis}{}prefix=tp-bp-{run}:", sep(&redis));
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let broker_cfg = cluster_config(dir_a.path(), r#"["broker"]"#, "a", &pg_url, &redis_url);
        let api_cfg = cluster_config(dir_b.path(), r#"["api"]"#, "b", &pg_url, &redis_url);
        let a = node(broker_cfg, dir_a).await;
        let mut b = node(api_cfg, dir_b).await;
        b.token = login(&b.http, &b.base, ADMIN, PASSWORD).await;
        Some(Self { a, b, pg, schema })
    }

    /// Shuts both nodes down and drops their schema.
    async fn stop(self) {
        self.a.platform.shutdown().await.unwrap();
        self.b.platform.shutdown().await.unwrap();
        let store = tp_storage::postgres::PostgresMetadataStore::connect(&self.pg)
            .await
            .unwrap();
        let drop = format!("DROP SCHEMA {} CASCADE", self.schema);
        sqlx::query(sqlx::AssertSqlSafe(drop))
            .execute(store.pool())
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downlink_and_invalidations_cross_nodes() {
    let Some(Pair { a, b, pg, schema }) = Pair::start().await else {
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

    Pair { a, b, pg, schema }.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_deleting_or_rekeying_a_device_closes_its_connection_on_another_node() {
    let Some(Pair { a, b, pg, schema }) = Pair::start().await else {
        return;
    };

    revoking_closes_connections(&b, &a, "bp-revoked").await;
    Pair { a, b, pg, schema }.stop().await;
}
