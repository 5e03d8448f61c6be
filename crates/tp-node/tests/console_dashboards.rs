//! The console's dashboards in headless Chromium (Debian's `chromium` and
//! `chromium-driver`): build a dashboard in the editor with a chart, a value card, a
//! switch and an alarm list; a real MQTT device's value appears on the card and the
//! chart without a reload (one stream per dashboard); the switch's command reaches a
//! `mosquitto_sub` device; the device page exports the history as CSV; the home page
//! shows the dashboard under the tenant's trends; a second user of the tenant with
//! `dashboard:read` sees the dashboard read-only and cannot change it; another tenant
//! gets 404. Screenshots go to `$TP_ARTIFACTS_DIR`, else
//! `target/console-screenshots/` (`dashboards-*.png`, the phone one at 390 px).
//!
//! Skipped when Chromium, chromedriver or the mosquitto clients are missing, unless
//! `TP_REQUIRE_SERVICES` is set (CI), where it fails instead.

mod common;

#[path = "common/browser.rs"]
mod browser;

use browser::{Console, named};
use common::*;
use serde_json::json;
use tp_core::testing::mosquitto_client;

async fn sign_in(c: &Console, email: &str, password: &str) {
    let b = &c.b;
    c.open("", "the sign-in form", "#login-form").await;
    b.fill("#login-form", &[("email", email), ("password", password)])
        .await;
    b.submit("#login-form").await;
    b.wait(
        "the navigation",
        "return !document.getElementById('nav').hidden",
    )
    .await;
}

/// Picks `value` in the select `css` and fires its change event (the editor
/// re-renders the widget's form on change).
async fn pick(c: &Console, css: &str, value: &str) {
    let done =
        c.b.js(&format!(
            "const s = document.querySelector({css:?}); if (!s) return false; s.value = {value:?}; \
             s.dispatchEvent(new Event('change', {{bubbles: true}})); return s.value === {value:?}"
        ))
        .await;
    assert_eq!(done, json!(true), "cannot pick {value} in {css}");
}

/// Adds a widget of `kind` in the editor and waits for its configuration form.
async fn add_widget(c: &Console, kind: &str, id: &str) {
    pick(c, "#widget-type", kind).await;
    c.b.submit("#add-widget-form").await;
    c.b.wait_text(
        "the new widget's form",
        "#widget-config h2",
        &format!("Widget {id}"),
    )
    .await;
}

/// Types into an input of the widget form and fires its input event.
async fn set_input(c: &Console, css: &str, value: &str) {
    let done =
        c.b.js(&format!(
            "const i = document.querySelector({css:?}); if (!i) return false; i.value = {value:?}; \
             i.dispatchEvent(new Event('input', {{bubbles: true}})); return true"
        ))
        .await;
    assert_eq!(done, json!(true), "no input {css}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_editor_live_values_switch_and_sharing() {
    let Some(sub) = mosquitto_client("mosquitto_sub") else {
        return;
    };
    let Some(c) = Console::start().await else {
        return;
    };
    let b = &c.b;
    sign_in(&c, ADMIN, PASSWORD).await;

    // A sensor that publishes over MQTT, and a relay listening with mosquitto_sub.
    let sensor = c.node.create_device("dash-sensor").await;
    let relay = c.node.create_device("dash-relay").await;
    let mut device = c.node.connect(&sensor, "dash-sensor").await;
    device
        .publish("devices/telemetry", r#"{"temperature": 20.5}"#)
        .await
        .unwrap();
    tp_core::testing::eventually("the first value stored", || async {
        let latest = c
            .get(&format!("/api/v1/devices/{}/telemetry/latest", sensor.id))
            .await;
        latest["items"][0]["value"] == json!(20.5)
    })
    .await;
    let addr = c.node.platform.mqtt_addr();
    let mosquitto = tokio::process::Command::new(&sub)
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args([
            "-i",
            "dash_relay",
            "-u",
            &relay.username,
            "-P",
            &relay.password,
        ])
        .args(["-V", "mqttv311", "-q", "1", "-C", "1", "-v"])
        .args(["-t", &format!("devices/command/{}/+", relay.number)])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    c.node.wait_online(&relay, true).await;

    // A new home dashboard, then the editor.
    c.open("#/dashboards", "the create form", "#create-dashboard-form")
        .await;
    b.wait_text("the Dashboards nav link", "#nav", "Dashboards")
        .await;
    b.fill("#create-dashboard-form", &[("name", "Boiler room")])
        .await;
    b.click("#create-dashboard-form [name=home]").await;
    b.submit("#create-dashboard-form").await;
    b.wait_for("the editor", "#editor-grid").await;

    // w1: a chart of the sensor's temperature (the key picked from its telemetry).
    add_widget(&c, "chart", "w1").await;
    pick(&c, "#cfg-device_id", &sensor.id).await;
    b.wait_for(
        "the sensor's keys",
        "#cfg-keys-set input[value=temperature]",
    )
    .await;
    b.click("#cfg-keys-set input[value=temperature]").await;
    pick(&c, "#cfg-style", "area").await;
    set_input(&c, "#cfg-title", "Temperature").await;
    // w2: its latest value with a unit and a red threshold from 30.
    add_widget(&c, "value", "w2").await;
    pick(&c, "#cfg-device_id", &sensor.id).await;
    b.wait_for("the key input", "#cfg-key").await;
    set_input(&c, "#cfg-key", "temperature").await;
    set_input(&c, "#cfg-unit", "C").await;
    set_input(&c, "#cfg-thresholds", "30:#d9534f").await;
    // w3: a switch sending the relay a command.
    add_widget(&c, "switch", "w3").await;
    pick(&c, "#cfg-device_id", &relay.id).await;
    b.wait_for("the target select", "#cfg-target").await;
    pick(&c, "#cfg-target", "command").await;
    b.wait_for("the method input", "#cfg-method").await;
    set_input(&c, "#cfg-method", "SetPower").await;
    // w4: the open alarms, made wider with its button ...
    add_widget(&c, "alarms", "w4").await;
    b.click("#edit-w4 [data-action=wider]").await;
    b.wait_text("the wider alarm list", "#edit-w4", "7×4").await;
    // ... and dragged three columns to the right with the pointer.
    let column = b
        .js(
            "document.querySelector('#edit-w4').scrollIntoView({block: 'center'}); \
             return document.querySelector('#editor-grid').clientWidth / 12",
        )
        .await
        .as_f64()
        .unwrap();
    let cell = b.find("#edit-w4").await;
    b.cmd(
        post(),
        "/actions",
        Some(json!({"actions": [{
            "type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"},
            "actions": [
                {"type": "pointerMove", "duration": 0, "x": 0, "y": 40,
                 "origin": {"element-6066-11e4-a52e-4f735466cecf": cell}},
                {"type": "pointerDown", "button": 0},
                {"type": "pointerMove", "duration": 100, "origin": "pointer",
                 "x": (column * 3.0).round() as i64, "y": 0},
                {"type": "pointerUp", "button": 0},
            ],
        }]})),
    )
    .await;
    b.wait_text("the dragged alarm list", "#edit-w4", "7×4 at 3,8")
        .await;
    b.screenshot("dashboards-01-editor").await;
    b.click("#save-dashboard").await;
    b.wait_for("the saved dashboard's view", "#dashboard-grid")
        .await;

    let list = c.get("/api/v1/dashboards").await;
    let dash = named(&list, "Boiler room").clone();
    let id = dash["id"].as_str().unwrap().to_owned();
    assert_eq!(dash["home"], json!(true), "{dash}");
    let types: Vec<_> = dash["widgets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["config"]["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(types, ["chart", "value", "switch", "alarms"], "{dash}");
    assert_eq!(dash["widgets"][0]["config"]["keys"], json!(["temperature"]));
    assert_eq!(dash["widgets"][3]["w"], json!(7));
    assert_eq!(dash["widgets"][3]["x"], json!(3));
    assert_eq!(dash["widgets"][2]["config"]["method"], json!("SetPower"));

    // Live: the device's next value reaches the card and the chart without a reload.
    b.wait(
        "the dashboard stream open",
        "return document.querySelector('#dashboard-grid')?.dataset.stream === 'open'",
    )
    .await;
    b.wait_text("the first value on the card", "#value-w2", "20.5 C")
        .await;
    b.js("window.notReloaded = true; return true").await;
    device
        .publish("devices/telemetry", r#"{"temperature": 31.5}"#)
        .await
        .unwrap();
    b.wait_text("the new value on the card", "#value-w2", "31.5 C")
        .await;
    b.wait(
        "the threshold colour",
        "return document.querySelector('#value-w2').dataset.color === '#d9534f'",
    )
    .await;
    b.wait(
        "the new value on the chart",
        "return JSON.parse(document.querySelector('#chart-w1').dataset.latest).temperature === 31.5",
    )
    .await;
    assert_eq!(
        b.js("return window.notReloaded === true").await,
        json!(true)
    );

    // The switch sends the relay its command through the downlink path.
    b.click("#switch-w3").await;
    let out = tokio::time::timeout(RECV, mosquitto.wait_with_output())
        .await
        .expect("mosquitto_sub received nothing")
        .unwrap();
    assert!(
        out.status.success(),
        "mosquitto_sub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    let (topic, payload) = line.trim_end().split_once(' ').unwrap();
    assert!(
        topic.starts_with(&format!("devices/command/{}/", relay.number)),
        "{line}"
    );
    let command: serde_json::Value = serde_json::from_str(payload).unwrap();
    assert_eq!(command["method"], "SetPower", "{command}");
    assert_eq!(command["params"], json!({"switch": true}), "{command}");
    b.wait(
        "the switch on",
        "return document.querySelector('#switch-w3').getAttribute('aria-checked') === 'true'",
    )
    .await;
    b.screenshot("dashboards-02-view").await;

    // The device page exports the sensor's history (CSV, streamed by the server).
    c.open(
        &format!("#/devices/{}", sensor.id),
        "the export form",
        "#export-form",
    )
    .await;
    b.click("#export-form input[value=temperature]").await;
    b.submit("#export-form").await;
    // "ts,temperature" and the two rows (13-digit times, 20.5 and 31.5).
    b.wait_text("the download", "#export-done", "Downloaded 53 bytes")
        .await;

    // The home page shows it.
    c.open(
        "#/",
        "the home dashboard",
        "#home-dashboard #dashboard-grid",
    )
    .await;
    b.wait_text("its card", "#home-dashboard #value-w2", "31.5 C")
        .await;
    // ... below the tenant's trends: the sensor's two messages counted on ingest.
    b.wait_text("the busiest device", "#trend-top", "dash-sensor")
        .await;
    b.wait(
        "the messages chart",
        "return Number(document.querySelector('#messages-chart')?.dataset.points) === 1440",
    )
    .await;
    let top = c.get("/api/v1/stats/top-devices").await;
    assert_eq!(top["items"][0]["name"], "dash-sensor", "{top}");
    assert_eq!(top["items"][0]["messages"], 2, "{top}");
    b.screenshot("dashboards-05-home").await;
    // On a phone the grid is one column and every widget spans it.
    b.cmd(
        post(),
        "/window/rect",
        Some(json!({"width": 390, "height": 844})),
    )
    .await;
    c.open(&format!("#/dashboards/{id}"), "the view", "#value-w2")
        .await;
    b.wait(
        "one column",
        "const g = getComputedStyle(document.querySelector('#dashboard-grid')); \
         return g.gridTemplateColumns.split(' ').length === 1",
    )
    .await;
    // At the phone's own size (the shared helper shoots at a laptop's width).
    let png = b.cmd(reqwest::Method::GET, "/screenshot", None).await;
    std::fs::write(
        browser::artifacts_dir().join("dashboards-03-phone.png"),
        browser::base64_decode(png.as_str().unwrap()),
    )
    .unwrap();
    b.cmd(
        post(),
        "/window/rect",
        Some(json!({"width": 1280, "height": 900})),
    )
    .await;

    // A second user of the tenant with dashboard:read only.
    let (status, role) = c
        .node
        .call(
            post(),
            "/api/v1/roles",
            Some(json!({"name": "viewers", "permissions": ["dashboard:read"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{role}");
    let (status, user) = c
        .node
        .call(
            post(),
            "/api/v1/users",
            Some(json!({"email": "viewer@example.com", "name": "Viewer",
                "password": "viewer password 1", "role_id": role["id"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    b.click("#who button").await;
    sign_in(&c, "viewer@example.com", "viewer password 1").await;
    c.open(
        &format!("#/dashboards/{id}"),
        "the read-only view",
        "#value-w2",
    )
    .await;
    b.wait_text("the value", "#value-w2", "31.5 C").await;
    assert_eq!(
        b.js("return document.querySelector('#edit-dashboard') === null")
            .await,
        json!(true),
        "no edit link without dashboard:write"
    );
    assert_eq!(
        b.js("return document.querySelector('#switch-w3').disabled")
            .await,
        json!(true),
        "no command without device:command"
    );
    // The editor's route sends it back to the view.
    c.goto(&format!("#/dashboards/{id}/edit")).await;
    b.wait(
        "back on the view",
        &format!(
            "return location.hash === '#/dashboards/{id}' && !!document.querySelector('#value-w2')"
        ),
    )
    .await;
    b.screenshot("dashboards-04-read-only").await;
    let viewer = login(
        &c.node.http,
        &c.node.base,
        "viewer@example.com",
        "viewer password 1",
    )
    .await;
    let (status, _) = c
        .node
        .call_as(
            &viewer,
            reqwest::Method::PUT,
            &format!("/api/v1/dashboards/{id}"),
            Some(json!({"name": "taken over", "widgets": []})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = c
        .node
        .call_as(
            &viewer,
            reqwest::Method::DELETE,
            &format!("/api/v1/dashboards/{id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Another tenant's admin gets 404 for it, and its list is empty.
    let (status, tenant) = c
        .node
        .call(post(), "/api/v1/tenants", Some(json!({"name": "other co"})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{tenant}");
    let (status, admin) = c
        .node
        .call(
            post(),
            &format!("/api/v1/tenants/{}/admins", tenant["id"].as_str().unwrap()),
            Some(json!({"email": "admin@other.example", "name": "Other",
                "password": "other password 1"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{admin}");
    let other = login(
        &c.node.http,
        &c.node.base,
        "admin@other.example",
        "other password 1",
    )
    .await;
    for path in [
        format!("/api/v1/dashboards/{id}"),
        format!("/api/v1/dashboards/{id}/stream"),
        "/api/v1/dashboards/home".to_owned(),
    ] {
        let (status, body) = c
            .node
            .call_as(&other, reqwest::Method::GET, &path, None)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
    }
    let (_, theirs) = c
        .node
        .call_as(&other, reqwest::Method::GET, "/api/v1/dashboards", None)
        .await;
    assert_eq!(theirs["total"], json!(0), "{theirs}");
    device.disconnect().await;
    c.close().await;
}
