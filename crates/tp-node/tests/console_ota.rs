//! The console's OTA page in headless Chromium (Debian's `chromium` and
//! `chromium-driver`): create a package and upload its file from the form (the
//! checksums shown are the file's), start a task for a device, watch the device's
//! progress arrive while a real MQTT device reports it, then cancel and retry it
//! from the page. Screenshots go to `$TP_ARTIFACTS_DIR`, else
//! `target/console-screenshots/` (`ota-*.png`).
//!
//! Skipped when Chromium or chromedriver is missing, unless `TP_REQUIRE_SERVICES`
//! is set (CI), where it fails instead.

mod common;

#[path = "common/browser.rs"]
mod browser;

use browser::Console;
use common::*;
use serde_json::json;
use sha2::Digest as _;

async fn sign_in(c: &Console) {
    let b = &c.b;
    c.open("", "the sign-in form", "#login-form").await;
    b.fill("#login-form", &[("email", ADMIN), ("password", PASSWORD)])
        .await;
    b.submit("#login-form").await;
    b.wait(
        "the navigation",
        "return !document.getElementById('nav').hidden",
    )
    .await;
}

#[tokio::test]
async fn ota_page_uploads_starts_a_task_and_shows_progress() {
    let Some(c) = Console::start().await else {
        return;
    };
    let b = &c.b;
    sign_in(&c).await;
    let d = c.node.create_device("ota-console-1").await;
    let mut device = c.node.connect(&d, "ota-console-1").await;
    device
        .subscribe(&[&format!("ota/devices/inform/{}", d.number)])
        .await
        .unwrap();

    // A package with a file chosen in the form.
    let content: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let files = tempfile::tempdir().unwrap();
    let path = files.path().join("boiler-1.4.0.bin");
    std::fs::write(&path, &content).unwrap();
    c.open("#/ota", "the package form", "#ota-package-form")
        .await;
    b.wait_text("the OTA nav link", "#nav", "OTA").await;
    b.fill(
        "#ota-package-form",
        &[
            ("name", "boiler firmware"),
            ("version", "1.4.0"),
            ("module", "MCU"),
        ],
    )
    .await;
    let file_input = b.find("#ota-package-form [name=\"file\"]").await;
    b.cmd(
        post(),
        &format!("/element/{file_input}/value"),
        Some(json!({"text": path.display().to_string()})),
    )
    .await;
    b.submit("#ota-package-form").await;
    b.wait_text(
        "the package in the list",
        "#ota-packages",
        "boiler firmware",
    )
    .await;
    let sha = hex::encode(sha2::Sha256::digest(&content));
    b.wait_text("its SHA-256", "#ota-packages", &sha[..12])
        .await;
    b.wait_text("its file name", "#ota-packages", "boiler-1.4.0.bin")
        .await;
    let packages = c.get("/api/v1/ota/packages").await;
    assert_eq!(packages["items"][0]["sha256"], sha, "{packages}");
    assert_eq!(packages["items"][0]["size"], content.len());
    b.screenshot("ota-01-packages").await;

    // A task for the device, from the task form.
    b.wait_for("the task form", "#ota-task-form").await;
    let picked = b
        .js(&format!(
            "const s = document.querySelector('#ota-task-form [name=device_ids]'); \
             for (const o of s.options) o.selected = o.value === '{}'; \
             return [...s.selectedOptions].length",
            d.id
        ))
        .await;
    assert_eq!(picked, json!(1));
    b.fill("#ota-task-form", &[("name", "boilers to 1.4.0")])
        .await;
    b.submit("#ota-task-form").await;
    b.wait_for("the task page", "#ota-devices").await;
    // The device gets ThingsPanel's inform ...
    let (topic, payload) = device.recv_publish(RECV).await.expect("no inform");
    assert_eq!(topic, format!("ota/devices/inform/{}", d.number));
    let inform = json_of(&payload);
    assert_eq!(inform["params"]["version"], "1.4.0");
    assert_eq!(inform["params"]["sign"], sha);
    // ... and its progress shows on the page (refreshed every 2 s).
    device
        .publish(
            "ota/devices/progress",
            r#"{"step":"50","desc":"flashing","module":"MCU"}"#,
        )
        .await
        .unwrap();
    b.wait_text("the device upgrading", "#ota-devices", "upgrading")
        .await;
    b.wait_text("its progress", "#ota-devices", "50%").await;
    b.wait_text("its description", "#ota-devices", "flashing")
        .await;
    b.screenshot("ota-02-task-progress").await;

    // Cancel from the page, then retry: the device is informed again.
    b.click("#ota-devices button.ota-cancel").await;
    b.wait_text("the device cancelled", "#ota-devices", "cancelled")
        .await;
    b.click("#ota-devices button.ota-retry").await;
    b.wait_text("the device notified again", "#ota-devices", "notified")
        .await;
    let (_, again) = device.recv_publish(RECV).await.expect("no inform on retry");
    assert_eq!(json_of(&again)["id"], inform["id"]);
    device
        .publish("ota/devices/progress", r#"{"step":"100","module":"MCU"}"#)
        .await
        .unwrap();
    b.wait_text("the device succeeded", "#ota-devices", "succeeded")
        .await;
    b.screenshot("ota-03-task-succeeded").await;

    // The task list shows the outcome.
    c.open("#/ota", "the task list", "#ota-tasks").await;
    b.wait_text("the task in the list", "#ota-tasks", "boilers to 1.4.0")
        .await;
    b.wait_text("its status", "#ota-tasks", "succeeded").await;
    device.disconnect().await;
    c.close().await;
}
