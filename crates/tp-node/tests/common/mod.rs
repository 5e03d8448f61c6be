//! Shared harness of the node-level integration tests: a whole node on ephemeral
//! ports, an admin session, devices as rumqttc clients; nodes of a cluster on shared
//! stores ([`cluster`]) and nodes whose rule engine runs on a manual clock
//! ([`rules`]).
#![allow(dead_code)]

/// Nodes of a cluster on a PostgreSQL schema and a Redis key prefix of their own.
pub(crate) mod cluster;
/// A node whose rule engine runs on a manual clock, and what rule tests read back.
pub(crate) mod rules;
/// Local SMTP server that collects mail (notification tests).
pub(crate) mod smtp;
/// Local webhook receiver that checks signatures (notification tests).
pub(crate) mod webhook;

// Re-exported: the test files take these through `use common::*`.
pub(crate) use std::time::Duration;

pub(crate) use reqwest::StatusCode;
use serde_json::{Value, json};
pub(crate) use tp_broker::testing::MqttTestClient;
pub(crate) use tp_node::config::PlatformConfig;
pub(crate) use tp_node::platform::Platform;

pub(crate) const ADMIN: &str = "admin@example.com";
pub(crate) const PASSWORD: &str = "correct horse battery staple";
pub(crate) const RECV: Duration = Duration::from_secs(10);

/// A node's configuration: the embedded defaults in `data_dir`, HTTP and MQTT on
/// ephemeral loopback ports, the test admin.
pub(crate) fn config(data_dir: &std::path::Path) -> PlatformConfig {
    config_with(data_dir, &[])
}

/// [`config`] plus `extra` overrides (`storage.*`, `notify.*`, ...).
pub(crate) fn config_with(
    data_dir: &std::path::Path,
    extra: &[(&'static str, String)],
) -> PlatformConfig {
    let mut overrides = vec![
        ("data_dir", data_dir.display().to_string()),
        ("http.listen", "127.0.0.1:0".to_owned()),
        ("mqtt.listen", "127.0.0.1:0".to_owned()),
        ("auth.admin_email", ADMIN.to_owned()),
        ("auth.admin_password", PASSWORD.to_owned()),
    ];
    overrides.extend_from_slice(extra);
    PlatformConfig::load(None, &overrides).unwrap()
}

pub(crate) struct Node {
    pub(crate) platform: Platform,
    pub(crate) http: reqwest::Client,
    pub(crate) base: String,
    pub(crate) token: String,
    pub(crate) _dir: tempfile::TempDir,
}

/// A device registered through the API.
pub(crate) struct TestDevice {
    pub(crate) id: String,
    pub(crate) number: String,
    pub(crate) username: String,
    pub(crate) password: String,
}

impl Node {
    pub(crate) async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let platform = Platform::start(config(dir.path())).await.unwrap();
        Self::signed_in(platform, dir).await
    }

    /// A started `platform` for the helpers, with no session (a broker-only node
    /// serves no REST API to sign in to); `dir` goes with it.
    pub(crate) fn of(platform: Platform, dir: tempfile::TempDir) -> Self {
        let base = format!("http://{}", platform.http_addr());
        Self {
            platform,
            http: reqwest::Client::new(),
            base,
            token: String::new(),
            _dir: dir,
        }
    }

    /// [`Node::of`], signed in as the admin.
    pub(crate) async fn signed_in(platform: Platform, dir: tempfile::TempDir) -> Self {
        let mut node = Self::of(platform, dir);
        node.token = login(&node.http, &node.base, ADMIN, PASSWORD).await;
        node
    }

    pub(crate) async fn call_as(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call_as(&self.token, method, path, body).await
    }

    /// Sends a downlink and expects 201; returns the log row.
    pub(crate) async fn downlink(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let (status, row) = self.call(method, path, Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{path}: {row}");
        row
    }

    pub(crate) async fn create_device(&self, number: &str) -> TestDevice {
        let (status, d) = self
            .call(
                reqwest::Method::POST,
                "/api/v1/devices",
                Some(json!({"name": number, "device_number": number})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{d}");
        TestDevice {
            id: d["id"].as_str().unwrap().to_owned(),
            number: number.to_owned(),
            username: d["credentials"]["username"].as_str().unwrap().to_owned(),
            password: d["credentials"]["password"].as_str().unwrap().to_owned(),
        }
    }

    pub(crate) async fn connect(&self, d: &TestDevice, client_id: &str) -> MqttTestClient {
        MqttTestClient::connect(
            self.platform.mqtt_addr(),
            client_id,
            &d.username,
            &d.password,
        )
        .await
        .unwrap()
    }

    pub(crate) async fn log(&self, d: &TestDevice) -> Value {
        let (status, body) = self
            .call(
                reqwest::Method::GET,
                &format!("/api/v1/devices/{}/commands", d.id),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// Polls the log until the row with `message_id` has `status`; returns the row.
    pub(crate) async fn wait_status(
        &self,
        d: &TestDevice,
        message_id: &str,
        status: &str,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log(d).await;
            let row = log["items"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["message_id"] == message_id)
                .cloned()
                .unwrap_or(Value::Null);
            if row["status"] == status {
                return row;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "row {message_id} never became {status}: {row}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) async fn wait_online(&self, d: &TestDevice, want: bool) {
        for _ in 0..500 {
            let (_, dev) = self
                .call(
                    reqwest::Method::GET,
                    &format!("/api/v1/devices/{}", d.id),
                    None,
                )
                .await;
            if dev["online"] == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("device {} never became online={want}", d.number);
    }
}

/// Disables, re-keys and deletes a device each through `api`'s REST API, each
/// connected to `broker` (the same node, or another one behind the backplane), and
/// asserts that every one of those connections is closed and a bystander's is not.
pub(crate) async fn revoking_closes_connections(api: &Node, broker: &Node, prefix: &str) {
    let bystander = api.create_device(&format!("{prefix}-stays")).await;
    let mut stays = broker.connect(&bystander, &format!("{prefix}-stays")).await;
    let revocations: [(reqwest::Method, &str, Option<Value>); 3] = [
        (reqwest::Method::PATCH, "", Some(json!({"enabled": false}))),
        (reqwest::Method::POST, "/credentials", None),
        (reqwest::Method::DELETE, "", None),
    ];
    for (i, (method, suffix, body)) in revocations.into_iter().enumerate() {
        let number = format!("{prefix}-{i}");
        let d = api.create_device(&number).await;
        let mut dev = broker.connect(&d, &number).await;
        api.wait_online(&d, true).await;
        let path = format!("/api/v1/devices/{}{suffix}", d.id);
        let (status, text) = api.call(method.clone(), &path, body).await;
        assert!(status.is_success(), "{method} {suffix}: {status}: {text}");
        assert!(
            dev.closed_within(Duration::from_secs(5)).await,
            "{method} {suffix}: the connection stayed open"
        );
    }
    assert!(
        !stays.closed_within(Duration::from_millis(300)).await,
        "an unrelated device was disconnected"
    );
}

pub(crate) async fn login(
    http: &reqwest::Client,
    base: &str,
    email: &str,
    password: &str,
) -> String {
    let res = http
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

pub(crate) fn post() -> reqwest::Method {
    reqwest::Method::POST
}

pub(crate) fn json_of(payload: &[u8]) -> Value {
    serde_json::from_slice(payload)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(payload)))
}

pub(crate) fn mid(row: &Value) -> String {
    let m = row["message_id"].as_str().unwrap().to_owned();
    assert_eq!(m.len(), 8, "{m}");
    assert!(
        m.chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
        "{m}"
    );
    m
}
