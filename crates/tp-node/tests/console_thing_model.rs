//! The console's thing-model pages in headless Chromium (Debian's `chromium` and
//! `chromium-driver`) over WebDriver: create a device template with a telemetry
//! definition (unit °C) and a command with an int parameter in the templates
//! editor, put it on a profile in the profiles page, see a device's value with its
//! unit on the device page, and send the command from the form built from its
//! parameter definition (an out-of-range value is refused in place by the API's
//! 422). Screenshots go to `$TP_ARTIFACTS_DIR`, else `target/console-screenshots/`
//! (`20-*` names, beside the main console test's).
//!
//! The WebDriver harness below is the one of `console.rs`, kept in this file so the
//! two test files change independently. Skipped without Chromium or chromedriver
//! unless `TP_REQUIRE_SERVICES` is set.
// Not every harness command is used by this file's steps.
#![allow(dead_code)]

mod common;

use common::*;
use serde_json::{Value, json};

#[path = "common/browser.rs"]
mod browser;

use browser::*;

#[tokio::test]
async fn thing_model_in_headless_chromium() {
    let Some(c) = Console::start().await else {
        return;
    };
    let b = &c.b;
    // Signed in through the API: the session goes into the console's storage.
    c.goto("").await;
    let (status, pair) = c
        .node
        .call(
            reqwest::Method::POST,
            "/api/v1/auth/login",
            Some(json!({"email": ADMIN, "password": PASSWORD})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{pair}");
    b.js(&format!(
        "sessionStorage.setItem('tp.session', JSON.stringify({})); return true",
        json!({"token": pair["token"], "refresh_token": pair["refresh_token"]})
    ))
    .await;

    // The templates editor: one telemetry definition and one command.
    c.open(
        "#/devices/templates",
        "the template editor",
        "#template-form",
    )
    .await;
    b.type_into("#template-form [name=name]", "Thermostat")
        .await;
    b.choose("#template-form [name=validation]", "reject").await;
    b.click("#template-form [data-add=telemetry]").await;
    let row = "#defs-telemetry tbody tr:last-child";
    b.type_into(
        &format!("{row} [aria-label='telemetry identifier']"),
        "temp",
    )
    .await;
    b.type_into(
        &format!("{row} [aria-label='telemetry name']"),
        "Temperature",
    )
    .await;
    b.type_into(&format!("{row} [aria-label='telemetry unit']"), "°C")
        .await;
    b.type_into(&format!("{row} [aria-label='telemetry min']"), "-40")
        .await;
    b.type_into(&format!("{row} [aria-label='telemetry max']"), "125")
        .await;
    b.click("#template-form [data-add=command]").await;
    let call = "#defs-command fieldset.call:last-child";
    b.type_into(
        &format!("{call} [aria-label='command identifier']"),
        "set_target",
    )
    .await;
    b.type_into(&format!("{call} [aria-label='command name']"), "Set target")
        .await;
    b.click(&format!("{call} [data-add='command parameter']"))
        .await;
    let param = format!("{call} tbody tr:last-child");
    b.type_into(
        &format!("{param} [aria-label='command parameter identifier']"),
        "target",
    )
    .await;
    b.type_into(
        &format!("{param} [aria-label='command parameter name']"),
        "Target",
    )
    .await;
    b.choose(
        &format!("{param} [aria-label='command parameter data type']"),
        "int",
    )
    .await;
    b.type_into(
        &format!("{param} [aria-label='command parameter min']"),
        "5",
    )
    .await;
    b.type_into(
        &format!("{param} [aria-label='command parameter max']"),
        "30",
    )
    .await;
    b.screenshot("20-template-editor").await;
    b.submit("#template-form").await;
    b.wait_text("the template in the list", "#template-list", "Thermostat")
        .await;
    b.screenshot("20a-templates").await;
    let templates = c.get("/api/v1/templates").await;
    let template = named(&templates, "Thermostat");
    assert_eq!(template["validation"], "reject");
    assert_eq!(template["telemetry"][0]["unit"], "°C");
    assert_eq!(template["telemetry"][0]["max"], 125.0);
    assert_eq!(template["commands"][0]["params"][0]["data_type"], "int");

    // A profile with the template, from the profiles page.
    c.open("#/devices/profiles", "the profile form", "#profile-form")
        .await;
    b.type_into("#profile-form [name=name]", "Thermostats")
        .await;
    b.choose(
        "#profile-form [name=template_id]",
        template["id"].as_str().unwrap(),
    )
    .await;
    b.submit("#profile-form").await;
    b.wait_text("the profile in the list", "#profile-list", "Thermostats")
        .await;
    let profiles = c.get("/api/v1/profiles").await;
    let profile = named(&profiles, "Thermostats");
    assert_eq!(profile["template_id"], template["id"]);

    // A device in the profile reports a value; its page shows it with the unit.
    let (status, d) = c
        .node
        .call(
            reqwest::Method::POST,
            "/api/v1/devices",
            Some(json!({"name": "Hall thermostat", "device_number": "hall-1", "profile_id": profile["id"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{d}");
    let device = TestDevice {
        id: d["id"].as_str().unwrap().to_owned(),
        number: "hall-1".to_owned(),
        username: d["credentials"]["username"].as_str().unwrap().to_owned(),
        password: d["credentials"]["password"].as_str().unwrap().to_owned(),
    };
    let mut mqtt = c.node.connect(&device, "hall-1").await;
    mqtt.subscribe(&["devices/command/hall-1/+"]).await.unwrap();
    mqtt.publish("devices/telemetry", r#"{"temp": 21.5}"#)
        .await
        .unwrap();
    tp_core::testing::eventually_ok("the value stored", || async {
        let l = c
            .get(&format!("/api/v1/devices/{}/telemetry/latest", device.id))
            .await;
        if l["items"][0]["value"] == json!(21.5) {
            Ok(())
        } else {
            Err(l)
        }
    })
    .await;
    c.open(
        &format!("#/devices/{}", device.id),
        "the thing-model panel",
        "#thing-model",
    )
    .await;
    b.wait_text("the typed value", "#typed-values", "21.5 °C")
        .await;
    b.wait_text(
        "the latest value with its unit",
        "#latest-values",
        "21.5 °C",
    )
    .await;

    // The command form built from the parameter definition.
    let form = "#model-commands form[data-command=set_target]";
    let input = b
        .js(&format!(
            "const i = document.querySelector('{form} [name=target]'); return [i.type, i.min, i.max].join(' ')"
        ))
        .await;
    assert_eq!(input, json!("number 5 30"));
    // Out of range: the browser's own check is bypassed (novalidate is not set on
    // this form), so set the value by script and submit through the API.
    b.js(&format!(
        "const f = document.querySelector('{form}'); f.noValidate = true; \
         f.querySelector('[name=target]').value = '99'; return true"
    ))
    .await;
    b.submit(form).await;
    b.wait_text("the 422 in place", form, "maximum").await;
    b.screenshot("20b-device-thing-model-refused").await;
    b.type_into(&format!("{form} [name=target]"), "21").await;
    b.submit(form).await;
    let (topic, payload) = mqtt.recv_publish(RECV).await.expect("the command");
    assert!(topic.starts_with("devices/command/hall-1/"), "{topic}");
    let call: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(
        call,
        json!({"method": "set_target", "params": {"target": 21}})
    );
    b.wait_text("the command in the log", "#command-log", "set_target")
        .await;
    b.screenshot("20c-device-thing-model").await;
    c.close().await;
}
