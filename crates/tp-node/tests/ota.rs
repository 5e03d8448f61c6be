//! OTA upgrades end to end, with real clients: a package uploaded through the REST
//! API, a task whose ThingsPanel inform reaches a mosquitto_sub (or rumqttc) device,
//! the device downloading the package over HTTP with its own credentials (checksums
//! verified here, a Range request answered 206), its progress reports on
//! `ota/devices/progress` moving the task's per-device detail, and cancel and retry.

mod common;

use md5::Digest as _;
use serde_json::{Value, json};
use sha2::Digest as _;
use tp_core::testing::{eventually_ok, mosquitto_client};

use common::*;

fn get() -> reqwest::Method {
    reqwest::Method::GET
}

/// Deterministic, incompressible-looking package content.
fn firmware(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

fn md5_hex(b: &[u8]) -> String {
    hex::encode(md5::Md5::digest(b))
}

/// Creates a package and uploads `content` as its file (raw body); returns it.
async fn package_with_file(node: &Node, name: &str, version: &str, content: &[u8]) -> Value {
    let (status, p) = node
        .call(
            post(),
            "/api/v1/ota/packages",
            Some(json!({"name": name, "version": version, "module": "MCU",
                        "ext_data": {"channel": "stable"}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{p}");
    assert_eq!(p["ready"], false);
    let res = node
        .http
        .put(format!(
            "{}/api/v1/ota/packages/{}/file?file_name=fw.bin",
            node.base,
            p["id"].as_str().unwrap()
        ))
        .bearer_auth(&node.token)
        .header("content-type", "application/octet-stream")
        .body(content.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res.json().await.unwrap()
}

async fn detail(node: &Node, task: &str, device: &TestDevice) -> Value {
    let (status, list) = node
        .call(get(), &format!("/api/v1/ota/tasks/{task}/devices"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device_id"] == device.id.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("device not in task: {list}"))
}

/// Polls the device's detail until it is in `state`; returns it.
async fn wait_detail(node: &Node, task: &str, device: &TestDevice, state: &str) -> Value {
    eventually_ok(&format!("detail in state {state}"), || async {
        let d = detail(node, task, device).await;
        if d["state"] == state { Ok(d) } else { Err(d) }
    })
    .await
}

async fn task(node: &Node, id: &str) -> Value {
    let (status, t) = node
        .call(get(), &format!("/api/v1/ota/tasks/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{t}");
    t
}

fn basic(d: &TestDevice) -> (String, Option<String>) {
    (d.username.clone(), Some(d.password.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mosquitto_device_is_informed_downloads_with_its_credentials_and_reports_progress() {
    let (Some(sub), Some(pubc)) = (
        mosquitto_client("mosquitto_sub"),
        mosquitto_client("mosquitto_pub"),
    ) else {
        return;
    };
    let node = Node::start().await;
    let d = node.create_device("ota-mosq-1").await;
    let other = node.create_device("ota-mosq-2").await;
    let content = firmware(300_000);
    let package = package_with_file(&node, "boiler fw", "1.2.0", &content).await;
    // The checksums the platform computed while the upload streamed to disk.
    assert_eq!(package["size"], content.len());
    assert_eq!(package["sha256"], sha256_hex(&content));
    assert_eq!(package["md5"], md5_hex(&content));
    assert_eq!(package["file_name"], "fw.bin");
    assert_eq!(package["ready"], true);

    let addr = node.platform.mqtt_addr();
    let n = &d.number;
    let child = tokio::process::Command::new(&sub)
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-i", "ota_sub_1", "-u", &d.username, "-P", &d.password])
        .args(["-V", "mqttv311", "-q", "1", "-C", "1", "-v"])
        .args(["-t", &format!("ota/devices/inform/{n}")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    node.wait_online(&d, true).await;
    // Sent now, or queued until mosquitto_sub's SUBSCRIBE is granted.
    let (status, t) = node
        .call(
            post(),
            "/api/v1/ota/tasks",
            Some(json!({"package_id": package["id"], "device_ids": [d.id]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{t}");
    let task_id = t["id"].as_str().unwrap().to_owned();
    assert_eq!(t["counts"]["total"], 1);
    assert_eq!(t["status"], "in_progress");

    let out = tokio::time::timeout(RECV, child.wait_with_output())
        .await
        .expect("mosquitto_sub received no inform")
        .unwrap();
    assert!(
        out.status.success(),
        "mosquitto_sub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    let (topic, payload) = line.trim_end().split_once(' ').unwrap();
    assert_eq!(topic, format!("ota/devices/inform/{n}"));
    // ThingsPanel's inform payload.
    let inform = json_of(payload.as_bytes());
    assert_eq!(inform["code"], 200);
    assert_eq!(inform["id"], task_id.as_str());
    let params = &inform["params"];
    assert_eq!(params["version"], "1.2.0");
    assert_eq!(params["size"], content.len().to_string());
    assert_eq!(params["signMethod"], "SHA256");
    assert_eq!(params["sign"], sha256_hex(&content));
    assert_eq!(params["module"], "MCU");
    assert_eq!(params["extData"], json!({"channel": "stable"}));
    let url = params["url"].as_str().unwrap().to_owned();
    assert_eq!(
        url,
        format!(
            "{}/api/v1/device/ota/packages/{}",
            node.base,
            package["id"].as_str().unwrap()
        )
    );
    wait_detail(&node, &task_id, &d, "notified").await;

    // The device downloads with its own credentials and checks what it got.
    let (user, pass) = basic(&d);
    let res = node
        .http
        .get(&url)
        .basic_auth(&user, pass.as_deref())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()["x-checksum-sha256"].to_str().unwrap(),
        sha256_hex(&content)
    );
    let body = res.bytes().await.unwrap();
    assert_eq!(body.len(), content.len());
    assert_eq!(sha256_hex(&body), params["sign"].as_str().unwrap());
    assert_eq!(md5_hex(&body), package["md5"].as_str().unwrap());
    // Resumable: a Range request answers 206 with exactly those bytes.
    let res = node
        .http
        .get(&url)
        .basic_auth(&user, pass.as_deref())
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        res.headers()["content-range"].to_str().unwrap(),
        format!("bytes 1000-1999/{}", content.len())
    );
    assert_eq!(res.bytes().await.unwrap().as_ref(), &content[1000..2000]);
    let res = node
        .http
        .get(&url)
        .basic_auth(&user, pass.as_deref())
        .header("range", format!("bytes={}-", content.len() - 10))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        res.bytes().await.unwrap().as_ref(),
        &content[content.len() - 10..]
    );
    // Not for a device the task does not target, nor without credentials.
    let (ou, op) = basic(&other);
    let res = node
        .http
        .get(&url)
        .basic_auth(&ou, op.as_deref())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = node.http.get(&url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = node
        .http
        .get(&url)
        .basic_auth(&user, Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    wait_detail(&node, &task_id, &d, "downloading").await;

    // Progress 50 then 100, as mosquitto_pub.
    for (step, state) in [("50", "upgrading"), ("100", "succeeded")] {
        let status = tokio::process::Command::new(&pubc)
            .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
            .args(["-i", "ota_pub_1", "-u", &d.username, "-P", &d.password])
            .args(["-V", "mqttv311", "-q", "1", "-t", "ota/devices/progress"])
            .args([
                "-m",
                &format!(r#"{{"step":"{step}","desc":"step {step}","module":"MCU"}}"#),
            ])
            .kill_on_drop(true)
            .status();
        let status = tokio::time::timeout(RECV, status)
            .await
            .expect("mosquitto_pub hung")
            .unwrap();
        assert!(status.success());
        let row = wait_detail(&node, &task_id, &d, state).await;
        assert_eq!(row["progress"], step.parse::<u8>().unwrap());
        assert_eq!(row["step"], step.parse::<i32>().unwrap());
        assert_eq!(row["description"], format!("step {step}"));
    }
    let t = task(&node, &task_id).await;
    assert_eq!(t["status"], "succeeded");
    assert_eq!(t["counts"]["succeeded"], 1);
    // The reports are kept as events too.
    eventually_ok("progress events stored", || async {
        let (_, events) = node
            .call(get(), &format!("/api/v1/devices/{}/events", d.id), None)
            .await;
        if events.to_string().contains("ota_progress") {
            Ok(())
        } else {
            Err(events)
        }
    })
    .await;
    node.platform.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_devices_get_the_inform_queued_and_cancel_and_retry_work() {
    let dir = tempfile::tempdir().unwrap();
    let platform = Platform::start(config_with(
        dir.path(),
        &[("ota.max_package_bytes", "200000".to_owned())],
    ))
    .await
    .unwrap();
    let node = Node::signed_in(platform, dir).await;
    let d = node.create_device("ota-q-1").await;
    let n = d.number.clone();
    let content = firmware(50_000);
    let package = package_with_file(&node, "pump fw", "2.0.0", &content).await;
    let package_id = package["id"].as_str().unwrap().to_owned();

    // Over the configured limit: 413, and nothing changes.
    let (status, big) = node
        .call(
            post(),
            "/api/v1/ota/packages",
            Some(json!({"name": "big", "version": "1"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let big_url = format!(
        "{}/api/v1/ota/packages/{}/file",
        node.base,
        big["id"].as_str().unwrap()
    );
    let res = node
        .http
        .put(&big_url)
        .bearer_auth(&node.token)
        .header("content-type", "application/octet-stream")
        .body(firmware(200_001))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // A multipart upload works too.
    let small = firmware(1234);
    let mut form = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"pump.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n".to_vec();
    form.extend_from_slice(&small);
    form.extend_from_slice(b"\r\n--XyZ--\r\n");
    let res = node
        .http
        .put(&big_url)
        .bearer_auth(&node.token)
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let uploaded: Value = res.json().await.unwrap();
    assert_eq!(uploaded["size"], 1234);
    assert_eq!(uploaded["sha256"], sha256_hex(&small));
    assert_eq!(uploaded["md5"], md5_hex(&small));
    assert_eq!(uploaded["file_name"], "pump.bin");
    // Tasks refuse a package without a file, and devices of other tenants.
    let (status, _) = node
        .call(
            post(),
            "/api/v1/ota/tasks",
            Some(json!({"package_id": package_id, "device_ids": [uuid::Uuid::new_v4()]})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // The device is offline: the inform is queued (pending).
    let (status, t) = node
        .call(
            post(),
            "/api/v1/ota/tasks",
            Some(json!({"package_id": package_id, "device_ids": [d.id], "name": "pumps"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{t}");
    let task_id = t["id"].as_str().unwrap().to_owned();
    let first = wait_detail(&node, &task_id, &d, "pending").await;
    let first_mid = first["message_id"].as_str().unwrap().to_owned();
    node.wait_status(&d, &first_mid, "pending").await;

    // Cancelled before the device came: the queued inform is withdrawn.
    let (status, c) = node
        .call(
            post(),
            &format!("/api/v1/ota/tasks/{task_id}/devices/{}/cancel", d.id),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{c}");
    assert_eq!(c["state"], "cancelled");
    node.wait_status(&d, &first_mid, "failed").await;
    let (status, _) = node
        .call(
            post(),
            &format!("/api/v1/ota/tasks/{task_id}/devices/{}/cancel", d.id),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(task(&node, &task_id).await["status"], "cancelled");
    // Cancelled devices may not download the package.
    let (user, pass) = basic(&d);
    let url = format!("{}/api/v1/device/ota/packages/{package_id}", node.base);
    let res = node
        .http
        .get(&url)
        .basic_auth(&user, pass.as_deref())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);

    // Retried while still offline: a new inform is queued ...
    let (status, r) = node
        .call(
            post(),
            &format!("/api/v1/ota/tasks/{task_id}/devices/{}/retry", d.id),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r["state"], "pending");
    let second_mid = r["message_id"].as_str().unwrap().to_owned();
    assert_ne!(second_mid, first_mid);
    // ... and delivered when the device subscribes; only the retried one arrives.
    let mut dev = node.connect(&d, "ota-q-1").await;
    dev.subscribe(&[&format!("ota/devices/inform/{n}")])
        .await
        .unwrap();
    let (topic, payload) = dev.recv_publish(RECV).await.expect("no queued inform");
    assert_eq!(topic, format!("ota/devices/inform/{n}"));
    let inform = json_of(&payload);
    assert_eq!(inform["id"], task_id.as_str());
    assert_eq!(inform["params"]["version"], "2.0.0");
    node.wait_status(&d, &second_mid, "sent").await;
    wait_detail(&node, &task_id, &d, "notified").await;

    // A download failure (-2) fails the device and the task ...
    dev.publish(
        "ota/devices/progress",
        r#"{"step":"-2","desc":"timeout","module":"MCU"}"#,
    )
    .await
    .unwrap();
    let failed = wait_detail(&node, &task_id, &d, "failed").await;
    assert_eq!(failed["code"], -2);
    assert_eq!(failed["description"], "timeout");
    assert_eq!(task(&node, &task_id).await["status"], "failed");
    // ... a retry of the whole task reaches the connected device at once ...
    let (status, t) = node
        .call(post(), &format!("/api/v1/ota/tasks/{task_id}/retry"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{t}");
    assert_eq!(t["counts"]["notified"], 1, "{t}");
    let (_, payload) = dev.recv_publish(RECV).await.expect("no inform on retry");
    assert_eq!(json_of(&payload)["id"], task_id.as_str());
    // ... which now downloads and succeeds.
    let res = node
        .http
        .get(&url)
        .basic_auth(&user, pass.as_deref())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        sha256_hex(&res.bytes().await.unwrap()),
        sha256_hex(&content)
    );
    dev.publish("ota/devices/progress", r#"{"step":50}"#)
        .await
        .unwrap();
    wait_detail(&node, &task_id, &d, "upgrading").await;
    dev.publish("ota/devices/progress", r#"{"step":"100"}"#)
        .await
        .unwrap();
    wait_detail(&node, &task_id, &d, "succeeded").await;
    assert_eq!(task(&node, &task_id).await["status"], "succeeded");
    // A succeeded device is not retried; cancelling a finished task changes nothing.
    let (status, _) = node
        .call(
            post(),
            &format!("/api/v1/ota/tasks/{task_id}/devices/{}/retry", d.id),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, t) = node
        .call(post(), &format!("/api/v1/ota/tasks/{task_id}/cancel"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(t["status"], "succeeded");
    // The package cannot be deleted or replaced while a task sends it.
    let (status, _) = node
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/ota/packages/{package_id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = node
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/ota/tasks/{task_id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = node
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/ota/packages/{package_id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    dev.disconnect().await;
    node.platform.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_for_a_profile_targets_its_devices() {
    let node = Node::start().await;
    let (status, profile) = node
        .call(post(), "/api/v1/profiles", Some(json!({"name": "boilers"})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{profile}");
    let a = node.create_device("ota-p-1").await;
    let b = node.create_device("ota-p-2").await;
    let _c = node.create_device("ota-p-3").await;
    for dev in [&a, &b] {
        let (status, body) = node
            .call(
                reqwest::Method::PATCH,
                &format!("/api/v1/devices/{}", dev.id),
                Some(json!({"profile_id": profile["id"]})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let package = package_with_file(&node, "boiler fw", "3.0.0", &firmware(100)).await;
    let (status, t) = node
        .call(
            post(),
            "/api/v1/ota/tasks",
            Some(json!({"package_id": package["id"], "profile_id": profile["id"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{t}");
    assert_eq!(t["counts"]["total"], 2);
    assert_eq!(t["profile_id"], profile["id"]);
    assert_eq!(t["name"], "boiler fw 3.0.0");
    let task_id = t["id"].as_str().unwrap();
    detail(&node, task_id, &a).await;
    detail(&node, task_id, &b).await;
    // Both targets at once is refused.
    let (status, _) = node
        .call(
            post(),
            "/api/v1/ota/tasks",
            Some(json!({"package_id": package["id"], "profile_id": profile["id"], "device_ids": [a.id]})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    node.platform.shutdown().await.unwrap();
}
