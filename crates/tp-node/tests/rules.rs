//! End-to-end rule engine tests on a whole node with a manual rule clock: a real
//! MQTT device crosses a threshold (one alarm, one command, a signed webhook and a
//! mail; cleared when the value returns), an "offline for 60 s" rule and a cron rule
//! fire when the clock is advanced, with no real sleeps for the windows.

mod common;

use std::sync::Arc;

use common::rules::{START, add_rule, alarms, start_with_clock};
use common::smtp::SmtpSink;
use common::webhook::WebhookReceiver;
use common::*;
use serde_json::json;
use tp_core::rules::{
    Action, ActionTarget, AlarmSeverity, AlarmStatus, ChannelKind, Condition, DataKind,
    DeviceSource, NotificationChannel, Operator, RuleId, RuleStoreRef, Schedule, ScheduleKind,
};
use tp_core::{ChannelId, TenantId};
use tp_rules::ManualClock;

const SECRET: &str = "webhook-secret-of-the-test";

struct Env {
    node: Node,
    rules: RuleStoreRef,
    clock: Arc<ManualClock>,
    webhook: WebhookReceiver,
    smtp: SmtpSink,
}

async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let smtp = SmtpSink::start().await;
    let webhook = WebhookReceiver::start(SECRET).await;
    let mut overrides = smtp.config_overrides();
    // The webhook receiver listens on loopback.
    overrides.push(("notify.allow_private_webhooks", "true".to_owned()));
    let (node, rules, clock) =
        start_with_clock(config_with(dir.path(), &overrides), START, dir).await;
    Env {
        node,
        rules,
        clock,
        webhook,
        smtp,
    }
}

impl Env {
    async fn add_rule(
        &self,
        tenant: TenantId,
        name: &str,
        groups: Vec<Vec<Condition>>,
        actions: Vec<Action>,
    ) -> RuleId {
        add_rule(&self.node, &self.rules, tenant, name, groups, actions).await
    }

    async fn alarms(&self, tenant: TenantId, rule: RuleId) -> Vec<tp_core::rules::Alarm> {
        alarms(&self.rules, tenant, rule).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threshold_raises_one_alarm_commands_notifies_and_clears() {
    let env = env().await;
    let d = env.node.create_device("boiler-1").await;
    let (device, tenant) = env.node.tenant_of(&d).await;
    let (webhook_ch, email_ch) = (ChannelId::new(), ChannelId::new());
    for (id, name, kind) in [
        (
            webhook_ch,
            "ops-webhook",
            ChannelKind::Webhook {
                url: env.webhook.url(),
                secret: SECRET.to_owned(),
            },
        ),
        (
            email_ch,
            "ops-mail",
            ChannelKind::Email {
                to: vec!["ops@example.com".to_owned()],
            },
        ),
    ] {
        env.rules
            .create_channel(&NotificationChannel {
                id,
                tenant_id: tenant,
                name: name.to_owned(),
                enabled: true,
                kind,
                created_at: START,
            })
            .await
            .unwrap();
    }
    let rule = env
        .add_rule(
            tenant,
            "too hot",
            vec![vec![Condition::Device {
                source: DeviceSource::Device(device),
                data: DataKind::Telemetry,
                key: "temp".to_owned(),
                operator: Operator::Gt,
                value: json!(30),
                duration_secs: None,
            }]],
            vec![
                Action::Command {
                    target: ActionTarget::Device(device),
                    method: "cool".to_owned(),
                    params: json!({"level": 2}),
                },
                Action::RaiseAlarm {
                    severity: AlarmSeverity::Major,
                    title: "Boiler too hot".to_owned(),
                    description: Some("temp above 30".to_owned()),
                    channels: vec![webhook_ch, email_ch],
                },
            ],
        )
        .await;

    // Counted from before the connect: the device's online status is an input too,
    // evaluated asynchronously, so a count taken after the connect could include it
    // or not, and every later wait would be off by one.
    let before_connect = env.node.platform.rule_engine().stats().evaluated;
    let mut client = env.node.connect(&d, "boiler-1").await;
    env.node.wait_online(&d, true).await;
    env.node.settle(before_connect + 1).await;
    let base = before_connect + 1;
    client
        .subscribe(&[&format!("devices/command/{}/+", d.number)])
        .await
        .unwrap();

    client
        .publish("devices/telemetry", json!({"temp": 25}).to_string())
        .await
        .unwrap();
    env.node.settle(base + 1).await;
    assert!(env.alarms(tenant, rule).await.is_empty(), "25 is normal");
    assert!(env.node.commands(&d).await.is_empty());

    client
        .publish("devices/telemetry", json!({"temp": 35}).to_string())
        .await
        .unwrap();
    env.node.settle(base + 2).await;
    let (topic, payload) = client
        .recv_publish(RECV)
        .await
        .expect("the command reaches the device");
    assert!(
        topic.starts_with(&format!("devices/command/{}/", d.number)),
        "{topic}"
    );
    assert_eq!(
        json_of(&payload),
        json!({"method": "cool", "params": {"level": 2}})
    );
    let alarms = env.alarms(tenant, rule).await;
    assert_eq!(alarms.len(), 1, "{alarms:?}");
    assert_eq!(
        (alarms[0].status, alarms[0].occurrences, alarms[0].severity),
        (AlarmStatus::Active, 1, AlarmSeverity::Major)
    );
    assert_eq!(alarms[0].device_id, Some(device));
    assert_eq!(alarms[0].details, json!({"temp": 35}));

    client
        .publish("devices/telemetry", json!({"temp": 36}).to_string())
        .await
        .unwrap();
    env.node.settle(base + 3).await;
    let alarms = env.alarms(tenant, rule).await;
    assert_eq!(
        alarms.len(),
        1,
        "a repeat updates the open alarm: {alarms:?}"
    );
    assert_eq!(
        (alarms[0].status, alarms[0].occurrences),
        (AlarmStatus::Active, 2)
    );
    assert_eq!(
        env.node.commands(&d).await.len(),
        1,
        "edge-triggered: no second command"
    );

    // The raise was notified once on each channel, signed.
    let calls = env.webhook.wait_for_calls(1, Duration::from_secs(30)).await;
    assert!(calls[0].signature_ok);
    assert_eq!(
        calls[0].json["data"]["event"], "alarm.raised",
        "{}",
        calls[0].json
    );
    assert_eq!(calls[0].json["data"]["alarm_id"], json!(alarms[0].id));
    let mails = env.smtp.wait_for_mails(1, Duration::from_secs(30)).await;
    assert_eq!(mails[0].to, ["ops@example.com"]);
    assert!(
        mails[0]
            .subject()
            .unwrap_or_default()
            .contains("Boiler too hot"),
        "{:?}",
        mails[0].subject()
    );

    client
        .publish("devices/telemetry", json!({"temp": 20}).to_string())
        .await
        .unwrap();
    env.node.settle(base + 4).await;
    let alarms = env.alarms(tenant, rule).await;
    assert_eq!(alarms.len(), 1);
    assert_eq!(alarms[0].status, AlarmStatus::Cleared);
    assert!(alarms[0].cleared_at.is_some());
    let history: Vec<_> = env
        .rules
        .list_alarm_events(tenant, alarms[0].id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    use tp_core::rules::AlarmEventKind::*;
    assert_eq!(history, [Raised, Repeated, Cleared]);
    // The clear is notified too; the raise was the only "raised" call.
    let calls = env.webhook.wait_for_calls(2, Duration::from_secs(30)).await;
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.json["data"]["event"] == "alarm.raised")
            .count(),
        1
    );
    assert_eq!(calls[1].json["data"]["event"], "alarm.cleared");
    assert_eq!(env.node.commands(&d).await.len(), 1);
    // State was persisted on the transitions.
    let states = env.rules.list_rule_states(rule).await.unwrap();
    assert!(
        states.iter().any(|s| s.scope == device.to_string()),
        "{states:?}"
    );
    env.node.platform.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_for_60_s_fires_when_the_clock_passes_the_window() {
    let env = env().await;
    let d = env.node.create_device("pump-1").await;
    let (device, tenant) = env.node.tenant_of(&d).await;
    let rule = env
        .add_rule(
            tenant,
            "pump offline",
            vec![vec![Condition::Device {
                source: DeviceSource::Device(device),
                data: DataKind::Status,
                key: String::new(),
                operator: Operator::Eq,
                value: json!("offline"),
                duration_secs: Some(60),
            }]],
            vec![Action::RaiseAlarm {
                severity: AlarmSeverity::Warning,
                title: "Pump offline".to_owned(),
                description: None,
                channels: vec![],
            }],
        )
        .await;
    let base = env.node.platform.rule_engine().stats().evaluated;
    let client = env.node.connect(&d, "pump-1").await;
    env.node.wait_online(&d, true).await;
    client.disconnect().await;
    env.node.wait_online(&d, false).await;
    // online, then offline
    env.node.settle(base + 2).await;
    assert!(env.alarms(tenant, rule).await.is_empty());

    env.clock.advance(Duration::from_secs(59));
    env.node.platform.rule_engine().flush().await;
    assert!(
        env.alarms(tenant, rule).await.is_empty(),
        "59 s is not 60 s"
    );

    env.clock.advance(Duration::from_secs(1));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let alarms = loop {
        env.node.platform.rule_engine().flush().await;
        let alarms = env.alarms(tenant, rule).await;
        if !alarms.is_empty() || tokio::time::Instant::now() > deadline {
            break alarms;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(alarms.len(), 1, "{alarms:?}");
    assert_eq!(
        (alarms[0].status, alarms[0].severity),
        (AlarmStatus::Active, AlarmSeverity::Warning)
    );
    assert_eq!(
        alarms[0].created_at,
        START + 60_000,
        "raised at the end of the window, on the rule clock"
    );
    assert_eq!(alarms[0].details, json!({"online": false}));

    // Back online: the alarm clears.
    let _client = env.node.connect(&d, "pump-1b").await;
    env.node.wait_online(&d, true).await;
    env.node.settle(base + 3).await;
    assert_eq!(
        env.alarms(tenant, rule).await[0].status,
        AlarmStatus::Cleared
    );
    env.node.platform.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_rule_fires_at_each_minute_of_the_manual_clock() {
    let env = env().await;
    let d = env.node.create_device("lamp-1").await;
    let (device, tenant) = env.node.tenant_of(&d).await;
    env.add_rule(
        tenant,
        "every minute",
        vec![vec![Condition::Schedule(Schedule {
            kind: ScheduleKind::Cron {
                expression: "0 * * * * *".to_owned(),
            },
            not_before: None,
            not_after: None,
        })]],
        vec![Action::TelemetryControl {
            target: ActionTarget::Device(device),
            values: json!({"switch": true}),
        }],
    )
    .await;
    let engine = env.node.platform.rule_engine();
    engine.flush().await;
    assert!(
        env.node.commands(&d).await.is_empty(),
        "nothing before the first minute"
    );

    env.clock.advance(Duration::from_secs(29));
    engine.flush().await;
    assert!(
        env.node.commands(&d).await.is_empty(),
        "29 s: still before the minute"
    );

    for (advance, want) in [(1u64, 1usize), (60, 2)] {
        env.clock.advance(Duration::from_secs(advance));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            engine.flush().await;
            let rows = env.node.commands(&d).await;
            if rows.len() >= want {
                assert_eq!(rows.len(), want, "{rows:?}");
                assert!(
                    rows.iter().all(|r| r["kind"] == "telemetry_control"
                        && r["payload"] == json!({"switch": true})),
                    "{rows:?}"
                );
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "cron did not fire ({want})"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // Each firing took its lock, so a second node would have skipped it.
    let rule_id = env.rules.list_enabled_rules().await.unwrap()[0].id;
    for fire_ts in [START + 30_000, START + 90_000] {
        let key = format!("rule:fire:{rule_id}:{fire_ts}");
        assert!(
            !env.node
                .platform
                .cache()
                .set_nx(&key, b"1", None)
                .await
                .unwrap(),
            "{key} held"
        );
    }
    env.node.platform.shutdown().await.unwrap();
}

/// A rule that raises an alarm and notifies in the same firing: the notification
/// names the alarm (it used to carry `"alarm_id": null`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notify_action_names_the_alarm_its_firing_raised() {
    let env = env().await;
    let d = env.node.create_device("tank-1").await;
    let (_, tenant) = env.node.tenant_of(&d).await;
    let channel = ChannelId::new();
    env.rules
        .create_channel(&NotificationChannel {
            id: channel,
            tenant_id: tenant,
            name: "ops".to_owned(),
            enabled: true,
            kind: ChannelKind::Webhook {
                url: env.webhook.url(),
                secret: SECRET.to_owned(),
            },
            created_at: START,
        })
        .await
        .unwrap();
    let rule = env
        .add_rule(
            tenant,
            "hourly check",
            vec![vec![Condition::Schedule(Schedule {
                kind: ScheduleKind::Cron {
                    expression: "0 * * * * *".to_owned(),
                },
                not_before: None,
                not_after: None,
            })]],
            vec![
                Action::RaiseAlarm {
                    severity: AlarmSeverity::Minor,
                    title: "Check the tank".to_owned(),
                    description: None,
                    channels: vec![],
                },
                Action::Notify {
                    channel,
                    subject: "tank".to_owned(),
                    body: "check it".to_owned(),
                },
            ],
        )
        .await;
    env.node.platform.rule_engine().flush().await;
    env.clock.advance(Duration::from_secs(30));
    let calls = env.webhook.wait_for_calls(1, Duration::from_secs(30)).await;
    let raised = env.alarms(tenant, rule).await;
    assert_eq!(raised.len(), 1, "{raised:?}");
    assert_eq!(
        calls[0].json["alarm_id"],
        json!(raised[0].id),
        "{}",
        calls[0].json
    );
    assert_eq!(calls[0].json["rule_id"], json!(rule));
}
