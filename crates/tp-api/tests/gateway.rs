//! Gateways through the whole node: sub-devices are registered through the REST API
//! with `parent_id` and `sub_device_addr`; a command to a sub-device reaches the
//! top-level gateway on its gateway topic in the envelope and the gateway's answer marks
//! the sub-device's log row replied.

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
    async fn create_sub(&self, number: &str, parent: &str, addr: &str) -> (StatusCode, Value) {
        self.call(
            post(),
            "/api/v1/devices",
            Some(json!({"name": number, "device_number": number,
                        "parent_id": parent, "sub_device_addr": addr})),
        )
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_to_sub_devices_reach_the_gateway_in_the_envelope() {
    let node = Node::start().await;
    let gw = node.create_device("gw-1").await;
    let (status, sub) = node.create_sub("sensor-1", &gw.id, "sensor_01").await;
    assert_eq!(status, StatusCode::CREATED, "{sub}");
    assert_eq!(sub["parent_id"], gw.id.as_str());
    assert_eq!(sub["sub_device_addr"], "sensor_01");
    let (status, sg) = node.create_sub("sub-gw", &gw.id, "line_2").await;
    assert_eq!(status, StatusCode::CREATED, "{sg}");
    let (status, deep) = node
        .create_sub("sensor-2", sg["id"].as_str().unwrap(), "sensor_02")
        .await;
    assert_eq!(status, StatusCode::CREATED, "{deep}");
    let sub_id = sub["id"].as_str().unwrap().to_owned();
    let deep_id = deep["id"].as_str().unwrap().to_owned();

    let mut client = node.connect(&gw, "mqtt_gw-1").await;
    client
        .subscribe(&["gateway/command/gw-1/+", "gateway/telemetry/control/gw-1"])
        .await
        .unwrap();
    node.wait_online(&gw, true).await;

    let row = node
        .downlink(
            post(),
            &format!("/api/v1/devices/{sub_id}/commands"),
            json!({"method": "ReSet", "params": {"hard": true}}),
        )
        .await;
    assert_eq!(row["status"], "sent", "{row}");
    let m = mid(&row);
    let (topic, payload) = client.recv_publish(RECV).await.expect("command");
    assert_eq!(topic, format!("gateway/command/gw-1/{m}"));
    assert_eq!(
        json_of(&payload),
        json!({"sub_device_data": {"sensor_01": {"method": "ReSet", "params": {"hard": true}}}})
    );
    client
        .publish(
            &format!("gateway/command/response/{m}"),
            r#"{"result":0,"message":"success","ts":1609143039,"method":"ReSet"}"#,
        )
        .await
        .unwrap();
    let sub_dev = TestDevice {
        id: sub_id.clone(),
        number: "sensor-1".into(),
        username: String::new(),
        password: String::new(),
    };
    let replied = node.wait_status(&sub_dev, &m, "replied").await;
    assert_eq!(replied["response"]["method"], "ReSet");

    // telemetry control to the nested gateway's sub-device
    let row = node
        .downlink(
            post(),
            &format!("/api/v1/devices/{deep_id}/telemetry/control"),
            json!({"values": {"switch": true}}),
        )
        .await;
    assert_eq!(row["status"], "sent", "{row}");
    let (topic, payload) = client.recv_publish(RECV).await.expect("control");
    assert_eq!(topic, "gateway/telemetry/control/gw-1");
    assert_eq!(
        json_of(&payload),
        json!({"sub_gateway_data": {"line_2": {"sub_device_data": {"sensor_02": {"switch": true}}}}})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_placement_is_validated() {
    let node = Node::start().await;
    let gw = node.create_device("gw-v").await;
    // a parent that does not exist in the tenant
    let (status, body) = node.create_sub("s-a", &uuid_string(), "a").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // a parent without an address, an address without a parent
    let (status, body) = node
        .call(
            post(),
            "/api/v1/devices",
            Some(json!({"name": "s-b", "parent_id": gw.id})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = node
        .call(
            post(),
            "/api/v1/devices",
            Some(json!({"name": "s-c", "sub_device_addr": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // one address per gateway
    let (status, first) = node.create_sub("s-d", &gw.id, "dup").await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, body) = node.create_sub("s-e", &gw.id, "dup").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    // PATCH: a gateway cannot be put behind its own sub-device
    let (status, body) = node
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/devices/{}", gw.id),
            Some(json!({"parent_id": first["id"], "sub_device_addr": "loop"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // PATCH: moving a sub-device out and back in
    let first_id = first["id"].as_str().unwrap();
    let (status, body) = node
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/devices/{first_id}"),
            Some(json!({"parent_id": null, "sub_device_addr": null})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["parent_id"], Value::Null);
    let (status, body) = node
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/devices/{first_id}"),
            Some(json!({"parent_id": gw.id, "sub_device_addr": "back"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["sub_device_addr"], "back");
}

fn uuid_string() -> String {
    uuid::Uuid::new_v4().to_string()
}
