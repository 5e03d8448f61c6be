//! Device self-registration (one-type-one-secret) through the whole node: a profile
//! with `auto_register` hands out a secret once; a device posting it with its number
//! gets MQTT credentials that connect; wrong or disabled secrets and taken numbers are
//! refused.

use serde_json::{Value, json};

mod common;
use common::*;

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
