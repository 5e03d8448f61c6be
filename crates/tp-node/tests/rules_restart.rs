//! Rule state and timers survive a restart: a node with a manual rule clock is shut
//! down and a new one is started on the same data dir with its clock further on.
//!
//! - A "held for 60 s" window that started before the restart completes after it,
//!   at the right time, without the device publishing again.
//! - A rule that was firing before the restart is still firing after it: new data
//!   repeats (no second command), and a normal value clears the open alarm.
//! - A cron and a periodic schedule that missed fire times while the node was down
//!   fire once after the start ("after downtime, a missed schedule fires once"), then
//!   keep their cadence.

mod common;

use std::sync::Arc;

use common::rules::{START, add_rule, alarms, start_with_clock};
use common::*;
use serde_json::json;
use tp_core::rules::{
    Action, ActionTarget, AlarmEventKind, AlarmSeverity, AlarmStatus, Condition, DataKind,
    DeviceSource, Operator, RuleStoreRef, Schedule, ScheduleKind,
};
use tp_core::{DeviceId, TenantId};
use tp_rules::ManualClock;

/// A node with its clock at `now` on `dir`, a data dir that outlives it; the node
/// gets an empty one to drop.
async fn start(dir: &std::path::Path, now: i64) -> (Node, RuleStoreRef, Arc<ManualClock>) {
    start_with_clock(config(dir), now, tempfile::tempdir().unwrap()).await
}

fn too_hot(device: DeviceId, held: Option<u32>) -> Condition {
    Condition::Device {
        source: DeviceSource::Device(device),
        data: DataKind::Telemetry,
        key: "temp".to_owned(),
        operator: Operator::Gt,
        value: json!(30),
        duration_secs: held,
    }
}

fn raise(title: &str) -> Action {
    Action::RaiseAlarm {
        severity: AlarmSeverity::Major,
        title: title.to_owned(),
        description: None,
        channels: vec![],
    }
}

async fn history(
    rules: &RuleStoreRef,
    tenant: TenantId,
    alarm: tp_core::rules::AlarmId,
) -> Vec<AlarmEventKind> {
    rules
        .list_alarm_events(tenant, alarm)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

/// Connects a device and waits until the engine has evaluated its online status,
/// an input of its own that arrives asynchronously: a count taken right after the
/// connect could include it or not, and every later wait would be off by one.
async fn connect_settled(node: &Node, d: &TestDevice, client_id: &str) -> MqttTestClient {
    let before_connect = node.platform.rule_engine().stats().evaluated;
    let client = node.connect(d, client_id).await;
    node.wait_online(d, true).await;
    node.settle(before_connect + 1).await;
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_window_started_before_a_restart_completes_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (node, rules, clock) = start(dir.path(), START).await;
    let d = node.create_device("boiler-1").await;
    let (device, tenant) = node.tenant_of(&d).await;
    let rule = add_rule(
        &node,
        &rules,
        tenant,
        "hot for a minute",
        vec![vec![too_hot(device, Some(60))]],
        vec![raise("Boiler hot for a minute")],
    )
    .await;

    let mut client = connect_settled(&node, &d, "boiler-1").await;
    let base = node.platform.rule_engine().stats().evaluated;
    client
        .publish("devices/telemetry", json!({"temp": 35}).to_string())
        .await
        .unwrap();
    node.settle(base + 1).await;
    clock.advance(Duration::from_secs(30));
    node.platform.rule_engine().flush().await;
    assert!(alarms(&rules, tenant, rule).await.is_empty(), "30 s of 60");
    client.disconnect().await;
    node.platform.shutdown().await.unwrap();
    drop(rules);

    // Down for 10 s; the new node's clock goes on from there.
    let (node, rules, clock) = start(dir.path(), START + 40_000).await;
    let engine = node.platform.rule_engine();
    engine.flush().await;
    assert!(alarms(&rules, tenant, rule).await.is_empty(), "40 s of 60");
    clock.advance(Duration::from_secs(19));
    engine.flush().await;
    assert!(alarms(&rules, tenant, rule).await.is_empty(), "59 s of 60");

    clock.advance(Duration::from_secs(1));
    let found = node
        .flushed_until(
            "the window completes 60 s after the value arrived",
            || alarms(&rules, tenant, rule),
            |a| !a.is_empty(),
        )
        .await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        (found[0].status, found[0].occurrences),
        (AlarmStatus::Active, 1)
    );
    assert_eq!(found[0].created_at, START + 60_000, "on the rule clock");
    assert_eq!(found[0].device_id, Some(device));
    assert_eq!(
        found[0].details,
        json!({"temp": 35}),
        "the value from before the restart"
    );
    assert_eq!(
        engine.stats().evaluated,
        0,
        "no device data reached the new node"
    );
    // Later ticks do not raise it again.
    clock.advance(Duration::from_secs(120));
    engine.flush().await;
    let found = alarms(&rules, tenant, rule).await;
    assert_eq!((found.len(), found[0].occurrences), (1, 1), "{found:?}");
    assert_eq!(
        history(&rules, tenant, found[0].id).await,
        [AlarmEventKind::Raised]
    );
    node.platform.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_firing_before_a_restart_repeats_and_clears_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (node, rules, _clock) = start(dir.path(), START).await;
    let d = node.create_device("boiler-2").await;
    let (device, tenant) = node.tenant_of(&d).await;
    let rule = add_rule(
        &node,
        &rules,
        tenant,
        "too hot",
        vec![vec![too_hot(device, None)]],
        vec![
            Action::Command {
                target: ActionTarget::Device(device),
                method: "cool".to_owned(),
                params: json!({}),
            },
            raise("Boiler too hot"),
        ],
    )
    .await;
    let mut client = connect_settled(&node, &d, "boiler-2").await;
    let base = node.platform.rule_engine().stats().evaluated;
    client
        .publish("devices/telemetry", json!({"temp": 35}).to_string())
        .await
        .unwrap();
    node.settle(base + 1).await;
    let before = alarms(&rules, tenant, rule).await;
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0].status, AlarmStatus::Active);
    assert_eq!(node.commands(&d).await.len(), 1);
    client.disconnect().await;
    node.platform.shutdown().await.unwrap();
    drop(rules);

    let (node, rules, _clock) = start(dir.path(), START + 10_000).await;
    let mut client = node.connect(&d, "boiler-2b").await;
    // Still hot: the new node knows the rule is firing, so this is a repeat (the
    // alarm counts it, the command is not sent again).
    client
        .publish("devices/telemetry", json!({"temp": 36}).to_string())
        .await
        .unwrap();
    // Waited for by its outcome: whether the new node also evaluates an online
    // input for this connect does not matter here.
    let after = node
        .flushed_until(
            "the repeat is counted on the open alarm",
            || alarms(&rules, tenant, rule),
            |a| a.first().is_some_and(|a| a.occurrences == 2),
        )
        .await;
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].id, before[0].id);
    assert_eq!(
        (after[0].status, after[0].occurrences),
        (AlarmStatus::Active, 2)
    );
    assert_eq!(
        node.commands(&d).await.len(),
        1,
        "edge-triggered across the restart: no second command"
    );

    // Back to normal: the open alarm from before the restart clears.
    client
        .publish("devices/telemetry", json!({"temp": 20}).to_string())
        .await
        .unwrap();
    let after = node
        .flushed_until(
            "the normal value clears the alarm",
            || alarms(&rules, tenant, rule),
            |a| a.first().is_some_and(|a| a.status == AlarmStatus::Cleared),
        )
        .await;
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].status, AlarmStatus::Cleared);
    assert_eq!(after[0].cleared_at, Some(START + 10_000));
    assert_eq!(
        history(&rules, tenant, after[0].id).await,
        [
            AlarmEventKind::Raised,
            AlarmEventKind::Repeated,
            AlarmEventKind::Cleared
        ]
    );
    client.disconnect().await;
    node.platform.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_missed_while_down_fire_once_after_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let (node, rules, clock) = start(dir.path(), START).await;
    let lamp = node.create_device("lamp-1").await;
    let pump = node.create_device("pump-1").await;
    let (lamp_id, tenant) = node.tenant_of(&lamp).await;
    let (pump_id, _) = node.tenant_of(&pump).await;
    let siren = node.create_device("siren-1").await;
    let (siren_id, _) = node.tenant_of(&siren).await;
    let schedule = |kind| {
        vec![vec![Condition::Schedule(Schedule {
            kind,
            not_before: None,
            not_after: None,
        })]]
    };
    let control = |device| {
        vec![Action::TelemetryControl {
            target: ActionTarget::Device(device),
            values: json!({"switch": true}),
        }]
    };
    // Every minute at second 0: START + 30 s, + 90 s, ...
    add_rule(
        &node,
        &rules,
        tenant,
        "every minute",
        schedule(ScheduleKind::Cron {
            expression: "0 * * * * *".to_owned(),
        }),
        control(lamp_id),
    )
    .await;
    // Every 20 s from the rule's creation: START, START + 20 s, + 40 s, ...
    add_rule(
        &node,
        &rules,
        tenant,
        "every 20 s",
        schedule(ScheduleKind::Periodic { interval_secs: 20 }),
        control(pump_id),
    )
    .await;

    // Once, at START + 100 s: while the node is down, and it never fired before.
    add_rule(
        &node,
        &rules,
        tenant,
        "once",
        schedule(ScheduleKind::Once {
            at: START + 100_000,
        }),
        control(siren_id),
    )
    .await;

    // The period due at START fires before the clock moves on: a tick late by more
    // than a period fires once (catch-up), so advancing 30 s before the engine ticked
    // at START would merge START and START + 20 s into one fire.
    node.platform.rule_engine().flush().await;
    clock.advance(Duration::from_secs(30));
    let lamp_rows = || node.commands(&lamp);
    node.flushed_until("the first minute", &lamp_rows, |r| r.len() == 1)
        .await;
    let pump_rows = || node.commands(&pump);
    node.flushed_until("START and START + 20 s", &pump_rows, |r| r.len() == 2)
        .await;
    assert!(node.commands(&siren).await.is_empty());
    node.platform.shutdown().await.unwrap();
    drop(rules);

    // Down for 5 minutes and 10 s: the minutes START + 90 s .. START + 330 s and
    // fifteen 20 s periods were missed.
    let restart_at = START + 30_000 + 310_000;
    let (node, rules, clock) = start(dir.path(), restart_at).await;
    let engine = node.platform.rule_engine();
    let lamp_rows = || node.commands(&lamp);
    let pump_rows = || node.commands(&pump);
    node.flushed_until("the missed minute", &lamp_rows, |r| r.len() >= 2)
        .await;
    node.flushed_until("the missed period", &pump_rows, |r| r.len() >= 3)
        .await;
    let siren_rows = || node.commands(&siren);
    node.flushed_until(
        "a schedule whose first fire time passed while down",
        &siren_rows,
        |r| !r.is_empty(),
    )
    .await;
    engine.flush().await;
    assert_eq!(lamp_rows().await.len(), 2, "missed minutes fire once");
    assert_eq!(pump_rows().await.len(), 3, "missed periods fire once");

    // Then on cadence again: the next minute is START + 390 s (50 s on), the next
    // period START + 360 s (20 s on: 340 is a multiple of 20 and already passed).
    clock.advance(Duration::from_secs(19));
    engine.flush().await;
    assert_eq!(pump_rows().await.len(), 3, "19 s: no period yet");
    clock.advance(Duration::from_secs(1));
    node.flushed_until("the next period", &pump_rows, |r| r.len() == 4)
        .await;
    assert_eq!(lamp_rows().await.len(), 2, "no minute yet");
    clock.advance(Duration::from_secs(30));
    node.flushed_until("the next minute", &lamp_rows, |r| r.len() == 3)
        .await;
    engine.flush().await;
    assert_eq!(
        pump_rows().await.len(),
        5,
        "START + 380 s is another period"
    );
    let rows = lamp_rows().await;
    assert!(
        rows.iter()
            .all(|r| r["kind"] == "telemetry_control" && r["payload"] == json!({"switch": true})),
        "{rows:?}"
    );
    assert_eq!(siren_rows().await.len(), 1, "once is once");
    drop(rules);
    node.platform.shutdown().await.unwrap();
}
