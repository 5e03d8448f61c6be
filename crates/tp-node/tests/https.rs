//! HTTPS (`http.tls`) through a whole node over real sockets: an rcgen self-signed
//! certificate, reqwest (rustls) trusting only it. A user logs in and registers a
//! device, the device posts telemetry over the HTTP device API, the REST API returns
//! it; plain HTTP and untrusting clients are turned away; certificate problems are
//! startup errors naming the setting.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tp_core::testing::tls::self_signed;
use tp_node::config::PlatformConfig;
use tp_node::platform::{Platform, PlatformError};

const ADMIN: &str = "admin@example.com";
const PASSWORD: &str = "correct horse battery staple";

fn config(
    data_dir: &std::path::Path,
    cert_path: &std::path::Path,
    key_path: &std::path::Path,
) -> PlatformConfig {
    let overrides = [
        ("data_dir", data_dir.display().to_string()),
        ("http.listen", "127.0.0.1:0".to_owned()),
        ("http.tls.cert_path", cert_path.display().to_string()),
        ("http.tls.key_path", key_path.display().to_string()),
        ("mqtt.listen", "127.0.0.1:0".to_owned()),
        ("auth.admin_email", ADMIN.to_owned()),
        ("auth.admin_password", PASSWORD.to_owned()),
    ];
    PlatformConfig::load(None, &overrides).unwrap()
}

/// A reqwest client trusting only `ca_pem`.
fn client_trusting(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_devices_use_the_api_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let cert = self_signed(dir.path());
    let platform = Platform::start(config(dir.path(), &cert.cert_path, &cert.key_path))
        .await
        .unwrap();
    let base = platform.http_url();
    assert_eq!(base, format!("https://{}", platform.http_addr()));
    let http = client_trusting(&cert.cert_pem);

    // a user logs in and registers a device
    let res = http
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"email": ADMIN, "password": PASSWORD}))
        .send()
        .await
        .expect("login over HTTPS");
    assert_eq!(res.status(), StatusCode::OK);
    let token = res.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = http
        .post(format!("{base}/api/v1/devices"))
        .bearer_auth(&token)
        .json(&json!({"name": "meter", "device_number": "meter-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let device: Value = res.json().await.unwrap();
    let id = device["id"].as_str().unwrap();
    let username = device["credentials"]["username"].as_str().unwrap();
    let password = device["credentials"]["password"].as_str().unwrap();

    // the device posts telemetry over HTTPS with its own credentials
    let res = http
        .post(format!("{base}/api/v1/device/telemetry"))
        .basic_auth(username, Some(password))
        .body(r#"{"ts":1700000000000,"values":{"kwh":12.5}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let res = http
        .post(format!("{base}/api/v1/device/telemetry"))
        .basic_auth(username, Some("wrong"))
        .body(r#"{"kwh":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    // and the REST API returns it over HTTPS
    let latest = format!("{base}/api/v1/devices/{id}/telemetry/latest");
    let mut items = Vec::new();
    for _ in 0..500 {
        let res = http.get(&latest).bearer_auth(&token).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        items = res.json::<Value>().await.unwrap()["items"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !items.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(
        (&items[0]["key"], &items[0]["ts"], &items[0]["value"]),
        (&json!("kwh"), &json!(1_700_000_000_000_i64), &json!(12.5))
    );

    // plain HTTP on the HTTPS port: a clear 400, nothing served
    let res = reqwest::Client::new()
        .get(format!("http://{}/healthz", platform.http_addr()))
        .send()
        .await
        .expect("an answer, not a dropped connection");
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.text().await.unwrap().contains("HTTPS"));

    // a client that does not trust the certificate gets no answer at all
    let other_dir = tempfile::tempdir().unwrap();
    let other = self_signed(other_dir.path());
    let err = client_trusting(&other.cert_pem)
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect_err("untrusted certificate accepted");
    assert!(err.is_connect(), "{err:?}");

    // a stalled client that never starts the handshake blocks nobody
    let _stalled = tokio::net::TcpStream::connect(platform.http_addr())
        .await
        .unwrap();
    let res = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    platform.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_https_certificates_stop_the_start_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let good = self_signed(dir.path());
    let (cert, key) = (good.cert_path.as_path(), good.key_path.as_path());
    let other_dir = tempfile::tempdir().unwrap();
    let other_key = self_signed(other_dir.path()).key_path;
    let missing = dir.path().join("missing.pem");
    let cases = [
        (
            missing.as_path(),
            key,
            format!("http.tls.cert_path: cannot read {}: ", missing.display()),
        ),
        (
            cert,
            missing.as_path(),
            format!("http.tls.key_path: cannot read {}: ", missing.display()),
        ),
        (
            cert,
            other_key.as_path(),
            format!(
                "http.tls.key_path: the key in {} does not belong to the certificate in {}",
                other_key.display(),
                cert.display()
            ),
        ),
    ];
    for (cert_path, key_path, want) in cases {
        let data = tempfile::tempdir().unwrap();
        let err = Platform::start(config(data.path(), cert_path, key_path))
            .await
            .expect_err("started with a bad certificate");
        assert!(matches!(err, PlatformError::Setting { .. }), "{err:?}");
        assert!(err.to_string().starts_with(&want), "{err} / want {want}");
    }
}
