//! The OpenAPI document is enough to build a client: openapi-python-client (PyPI)
//! generates a Python package from a running node's `/api/v1/openapi.json`, and
//! `generated_client/drive.py`, which knows the API only through that package, signs
//! in, creates a device and a rule with a "held for" condition and two actions,
//! makes the device report, and reads the alarm the rule raised.
//!
//! `scripts/test.sh` installs the generator with pip when it is missing; without it
//! the test skips, or fails under `TP_REQUIRE_SERVICES`.

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;
use tp_core::testing::command_path;

#[tokio::test]
async fn a_generated_python_client_creates_a_rule_and_reads_its_alarm() {
    let Some(generator) = command_path("openapi-python-client", "openapi-python-client (pip)")
    else {
        return;
    };
    let Some(python) = command_path("python3", "python3") else {
        return;
    };
    let node = Node::start().await;
    let doc = node
        .http
        .get(format!("{}/api/v1/openapi.json", node.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let doc_path = work.path().join("openapi.json");
    std::fs::write(&doc_path, doc).unwrap();
    let package = work.path().join("tp_client");

    // The generator and the client are blocking programs: off the runtime's threads.
    let generated = tokio::task::spawn_blocking({
        let (doc_path, package) = (doc_path.clone(), package.clone());
        move || {
            Command::new(generator)
                .arg("generate")
                .arg("--path")
                .arg(&doc_path)
                .arg("--output-path")
                .arg(&package)
                .args(["--meta", "none"])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let log = String::from_utf8_lossy(&generated.stdout).into_owned()
        + &String::from_utf8_lossy(&generated.stderr);
    assert!(generated.status.success(), "generator failed:\n{log}");
    // The one part it leaves out is the CSV variant of the device import (the
    // generator has no text/csv support); every JSON operation is generated.
    for line in log.lines().filter(|l| l.starts_with("WARNING parsing")) {
        assert!(
            line.contains("/api/v1/devices/import"),
            "unexpected generator warning: {line}\n{log}"
        );
    }
    assert!(package.join("api/rules/create_rule.py").is_file(), "{log}");
    assert!(
        package.join("models/condition_device.py").is_file(),
        "{log}"
    );

    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/generated_client/drive.py"
    );
    let base = node.base.clone();
    let parent = work.path().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg(&base)
            .arg(ADMIN)
            .arg(PASSWORD)
            .arg(&parent)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "drive.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.trim()).unwrap();

    // What the client read back is what was created, typed by kind ...
    assert_eq!(seen["stored_condition_kind"], "ConditionDevice", "{seen}");
    assert_eq!(seen["stored_duration_secs"], 1, "{seen}");
    assert_eq!(
        seen["stored_action_kinds"],
        serde_json::json!(["ActionRaiseAlarm", "ActionTelemetryControl"]),
        "{seen}"
    );
    // ... and the alarm is the rule's, about the device.
    assert_eq!(seen["alarm_total"], 1, "{seen}");
    assert_eq!(seen["alarm_rule_id"], seen["rule_id"], "{seen}");
    assert_eq!(seen["alarm_device_id"], seen["device_id"], "{seen}");
    assert_eq!(seen["alarm_severity"], "major", "{seen}");
    assert_eq!(seen["alarm_status"], "active", "{seen}");

    // The same rule through the plain API: both actions stored as sent.
    let rule_id = seen["rule_id"].as_str().unwrap();
    let (status, rule) = node
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/rules/{rule_id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rule}");
    assert_eq!(rule["actions"][1]["type"], "telemetry_control", "{rule}");
    assert_eq!(rule["actions"][1]["values"]["switch"], false, "{rule}");
    assert_eq!(
        rule["actions"][1]["target"]["kind"], "triggering_device",
        "{rule}"
    );
}
