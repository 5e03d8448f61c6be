//! Device self-registration (one-type-one-secret) through the whole node: a profile
//! with `auto_register` hands out a secret once; a device posting it with its number
//! gets MQTT credentials that connect; wrong or disabled secrets and taken numbers are
//! refused.

#![allow(dead_code)]

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tp_api::config::PlatformConfig;
use tp_api::platform::Platform;
use tp_broker::testing::MqttTestClient;

const ADMIN: &str = "admin@example.com";
const PASSWORD: &str = "correct horse battery staple";
const RECV: Duration = Duration::from_secs(10);

fn config(data_dir: &std::path::Path) -> PlatformConfig {
    let overrides = [
        ("data_dir", data_dir.display().to_string()),
        ("http.listen", "127.0.0.1:0".to_owned()),
        ("mqtt.listen", "127.0.0.1:0".to_owned()),
        ("auth.admin_email", ADMIN.to_owned()),
        ("auth.admin_password", PASSWORD.to_owned()),
    ];
    PlatformConfig::load(None, &overrides).unwrap()
}

struct Node {
    platform: Platform,
    http: reqwest::Client,
    base: String,
    token: String,
    _dir: tempfile::TempDir,
}

/// A device registered through the API.
struct TestDevice {
    id: String,
    number: String,
    username: String,
    password: String,
}

impl Node {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let platform = Platform::start(config(dir.path())).await.unwrap();
        let http = reqwest::Client::new();
        let base = format!("http://{}", platform.http_addr());
        let token = login(&http, &base, ADMIN, PASSWORD).await;
        Self {
            platform,
            http,
            base,
            token,
            _dir: dir,
        }
    }

    async fn call_as(
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

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call_as(&self.token, method, path, body).await
    }

    /// Sends a downlink and expects 201; returns the log row.
    async fn downlink(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let (status, row) = self.call(method, path, Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{path}: {row}");
        row
    }

    async fn create_device(&self, number: &str) -> TestDevice {
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

    async fn connect(&self, d: &TestDevice, client_id: &str) -> MqttTestClient {
        MqttTestClient::connect(
            self.platform.mqtt_addr(),
            client_id,
            &d.username,
            &d.password,
        )
        .await
        .unwrap()
    }

    async fn log(&self, d: &TestDevice) -> Value {
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
    async fn wait_status(&self, d: &TestDevice, message_id: &str, status: &str) -> Value {
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

    async fn wait_online(&self, d: &TestDevice, want: bool) {
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

async fn login(http: &reqwest::Client, base: &str, email: &str, password: &str) -> String {
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

fn post() -> reqwest::Method {
    reqwest::Method::POST
}

fn json_of(payload: &[u8]) -> Value {
    serde_json::from_slice(payload)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(payload)))
}

fn mid(row: &Value) -> String {
    let m = row["message_id"].as_str().unwrap().to_owned();
    assert_eq!(m.len(), 8, "{m}");
    assert!(
        m.chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
        "{m}"
    );
    m
}

impl Node {
    /// Unauthenticated provisioning request.
    async fn provision(&self, body: Value) -> (StatusCode, Value) {
        let res = self
            .http
            .post(format!("{}/api/v1/device/provision", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_provisions_itself_and_connects_with_the_credentials() {
    let node = Node::start().await;
    let (status, profile) = node
        .call(
            post(),
            "/api/v1/profiles",
            Some(json!({"name": "sensors", "auto_register": true})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{profile}");
    let secret = profile["provision_secret"].as_str().unwrap().to_owned();
    let profile_id = profile["id"].as_str().unwrap().to_owned();
    // the secret is shown once
    let (_, again) = node
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/profiles/{profile_id}"),
            None,
        )
        .await;
    assert_eq!(again["provision_secret"], Value::Null, "{again}");
    assert_eq!(again["has_provision_secret"], true);

    let (status, body) = node
        .provision(json!({"profile_secret": secret, "device_number": "prov-1", "name": "Probe"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["device_number"], "prov-1");
    let id = body["id"].as_str().unwrap().to_owned();
    let device = TestDevice {
        id: id.clone(),
        number: "prov-1".into(),
        username: body["credentials"]["username"].as_str().unwrap().to_owned(),
        password: body["credentials"]["password"].as_str().unwrap().to_owned(),
    };
    // the device is the tenant's, named as asked, and its credentials connect over MQTT
    let (status, got) = node
        .call(reqwest::Method::GET, &format!("/api/v1/devices/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["name"], "Probe");
    let mut client = node.connect(&device, "mqtt_prov-1").await;
    client
        .subscribe(&["devices/command/prov-1/+"])
        .await
        .unwrap();
    node.wait_online(&device, true).await;

    // name defaults to the number
    let (status, body) = node
        .provision(json!({"profile_secret": secret, "device_number": "prov-2"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // a taken number
    let (status, body) = node
        .provision(json!({"profile_secret": secret, "device_number": "prov-1"}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    // a bad number
    let (status, body) = node
        .provision(json!({"profile_secret": secret, "device_number": "a/b"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_is_refused_without_a_valid_enabled_secret() {
    let node = Node::start().await;
    let (status, profile) = node
        .call(
            post(),
            "/api/v1/profiles",
            Some(json!({"name": "locked", "auto_register": true})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{profile}");
    let secret = profile["provision_secret"].as_str().unwrap().to_owned();
    let profile_id = profile["id"].as_str().unwrap().to_owned();

    let (status, unknown) = node
        .provision(json!({"profile_secret": "not-the-secret", "device_number": "x-1"}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{unknown}");
    let (status, empty) = node
        .provision(json!({"profile_secret": "", "device_number": "x-1"}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{empty}");

    // self-registration switched off: the same answer as an unknown secret
    let (status, body) = node
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/profiles/{profile_id}"),
            Some(json!({"auto_register": false})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, disabled) = node
        .provision(json!({"profile_secret": secret, "device_number": "x-1"}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{disabled}");
    assert_eq!(disabled, unknown);

    // switched on again with a rotated secret: the old one no longer works
    let (status, body) = node
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/profiles/{profile_id}"),
            Some(json!({"auto_register": true, "rotate_provision_secret": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rotated = body["provision_secret"].as_str().unwrap().to_owned();
    let (status, old) = node
        .provision(json!({"profile_secret": secret, "device_number": "x-1"}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{old}");
    let (status, ok) = node
        .provision(json!({"profile_secret": rotated, "device_number": "x-1"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{ok}");
    // nothing was created by the refused attempts
    let (_, list) = node
        .call(reqwest::Method::GET, "/api/v1/devices", None)
        .await;
    assert_eq!(list["total"], 1, "{list}");
}
