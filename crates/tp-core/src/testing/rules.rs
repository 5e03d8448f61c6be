//! Conformance cases for [`RuleStore`].
//!
//! A rule store needs no tenants or devices to exist (alarms and rules keep their
//! history when a device goes), so every case takes only the rule store and makes up
//! fresh tenant, device and profile ids. All cases can run in parallel against one
//! shared database; installation-wide reads (`list_enabled_rules`) are asserted only
//! on the rows the case created.
//!
//! Semantics pinned down here beyond the trait docs:
//! - `update_*` and `delete_*` of a row that is not in the tenant are `NotFound` and
//!   change nothing; `update_rule` leaves `created_at` alone.
//! - Notification channel names are unique per tenant, like rule and scene names.
//! - A second *open* alarm of a `(rule, device)` is `AlreadyExists { entity: "alarm" }`,
//!   whether by `create_alarm` or by `update_alarm` reopening a cleared one. A `None`
//!   device is one key of its own (the rule's schedule-fired alarm).
//! - `count_alarms` reports all five severities in `open_by_severity`, zeros included.
//! - `list_alarms` orders by `created_at` newest first (ties: by id, descending).
//! - `append_alarm_event` for an alarm that is not in the event's tenant is
//!   `NotFound`; `list_alarm_events` of another tenant's alarm is empty. Events with the
//!   same `ts` are listed in append order.
//! - `put_rule_state` for a rule that does not exist is `NotFound` (no orphan state
//!   after a concurrent delete); `list_rule_states` is ordered by scope.
//! - `update_notification` of an unknown record (or another tenant's) is `NotFound`.
//!
//! Run them all against a backend with [`crate::rules_conformance!`].

use std::fmt::Debug;

use serde_json::json;
use uuid::Uuid;

use crate::model::{DeviceId, Page, ProfileId, TenantId, Timestamp, UserId, now_ms};
use crate::rules::*;
use crate::{Error, Result};

/// A short unique hex string.
fn unique() -> String {
    Uuid::new_v4().simple().to_string()
}

/// A fixed base time for a case, in the past so ordering by it is deterministic.
fn base_ts() -> Timestamp {
    now_ms() - 1_000_000
}

#[track_caller]
fn expect_already_exists<T: Debug>(r: Result<T>, entity: &str) {
    match r {
        Err(Error::AlreadyExists { entity: e, .. }) if e == entity => {}
        other => panic!("expected AlreadyExists {{ entity: {entity:?} }}, got {other:?}"),
    }
}

#[track_caller]
fn expect_not_found<T: Debug>(r: Result<T>) {
    match r {
        Err(Error::NotFound { .. }) => {}
        other => panic!("expected NotFound, got {other:?}"),
    }
}

fn page(offset: u64, limit: u64) -> Page {
    Page { offset, limit }
}

/// A simple enabled threshold rule on one device.
pub fn sample_rule(tenant: TenantId, name: &str, at: Timestamp) -> Rule {
    Rule {
        id: RuleId::new(),
        tenant_id: tenant,
        name: name.into(),
        description: Some("too hot".into()),
        enabled: true,
        trigger_groups: vec![TriggerGroup {
            conditions: vec![Condition::Device {
                source: DeviceSource::Device(DeviceId::new()),
                data: DataKind::Telemetry,
                key: "temp".into(),
                operator: Operator::Gt,
                value: json!(40),
                duration_secs: None,
            }],
        }],
        actions: vec![Action::RaiseAlarm {
            severity: AlarmSeverity::Major,
            title: "Too hot".into(),
            description: None,
            channels: vec![],
        }],
        created_at: at,
        updated_at: at,
    }
}

/// A rule using every condition, operator, data kind, schedule and action variant.
fn every_variant_rule(tenant: TenantId, at: Timestamp) -> Rule {
    let device = DeviceId::new();
    let profile = ProfileId::new();
    let operators = [
        (Operator::Eq, json!("on")),
        (Operator::Ne, json!(false)),
        (Operator::Gt, json!(21.5)),
        (Operator::Lt, json!(-3)),
        (Operator::Ge, json!(0.1)),
        (Operator::Le, json!(1e12)),
        (Operator::Between, json!([10, 20.25])),
        (Operator::In, json!(["a", "b", 3, null])),
    ];
    let kinds = [
        DataKind::Telemetry,
        DataKind::Attribute,
        DataKind::Event,
        DataKind::Status,
    ];
    let mut device_conditions = Vec::new();
    for (i, (operator, value)) in operators.into_iter().enumerate() {
        device_conditions.push(Condition::Device {
            source: if i % 2 == 0 {
                DeviceSource::Device(device)
            } else {
                DeviceSource::Profile(profile)
            },
            data: kinds[i % kinds.len()],
            key: format!("key-{i} \"quoted\" ünïcode"),
            operator,
            value,
            duration_secs: (i % 3 == 0).then_some(u32::MAX - i as u32),
        });
    }
    let schedules = vec![
        Condition::Schedule(Schedule {
            kind: ScheduleKind::Once { at: at + 60_000 },
            not_before: None,
            not_after: None,
        }),
        Condition::Schedule(Schedule {
            kind: ScheduleKind::Periodic { interval_secs: 15 },
            not_before: Some(at),
            not_after: Some(at + 86_400_000),
        }),
        Condition::Schedule(Schedule {
            kind: ScheduleKind::Cron {
                expression: "0 */5 * * * *".into(),
            },
            not_before: None,
            not_after: Some(i64::MAX),
        }),
    ];
    let time_ranges = vec![
        Condition::TimeRange {
            start_minute: 22 * 60,
            end_minute: 6 * 60,
            weekdays: vec![1, 2, 3, 4, 5],
            utc_offset_minutes: -330,
        },
        Condition::TimeRange {
            start_minute: 0,
            end_minute: 1439,
            weekdays: vec![],
            utc_offset_minutes: 0,
        },
    ];
    let actions = vec![
        Action::Command {
            target: ActionTarget::Device(device),
            method: "reboot".into(),
            params: json!({"delay": 5, "nested": {"list": [1, 2.5, "x"]}}),
        },
        Action::Command {
            target: ActionTarget::TriggeringDevice,
            method: "beep".into(),
            params: serde_json::Value::Null,
        },
        Action::SetAttributes {
            target: ActionTarget::TriggeringDevice,
            values: json!({"mode": "eco"}),
        },
        Action::TelemetryControl {
            target: ActionTarget::Device(device),
            values: json!({"switch": true}),
        },
        Action::RaiseAlarm {
            severity: AlarmSeverity::Critical,
            title: "Boiler".into(),
            description: Some("pressure".into()),
            channels: vec![ChannelId::new(), ChannelId::new()],
        },
        Action::ClearAlarm,
        Action::Notify {
            channel: ChannelId::new(),
            subject: "Hello".into(),
            body: "multi\nline".into(),
        },
        Action::RunScene {
            scene: SceneId::new(),
        },
    ];
    Rule {
        id: RuleId::new(),
        tenant_id: tenant,
        name: format!("every-{}", unique()),
        description: None,
        enabled: false,
        trigger_groups: vec![
            TriggerGroup {
                conditions: device_conditions,
            },
            TriggerGroup {
                conditions: schedules,
            },
            TriggerGroup {
                conditions: time_ranges,
            },
            TriggerGroup { conditions: vec![] },
        ],
        actions,
        created_at: at,
        updated_at: at,
    }
}

fn scene(tenant: TenantId, name: &str, at: Timestamp) -> Scene {
    Scene {
        id: SceneId::new(),
        tenant_id: tenant,
        name: name.into(),
        description: None,
        actions: vec![Action::Command {
            target: ActionTarget::Device(DeviceId::new()),
            method: "open".into(),
            params: json!({"valve": 2}),
        }],
        created_at: at,
        updated_at: at,
    }
}

fn webhook(tenant: TenantId, name: &str, at: Timestamp) -> NotificationChannel {
    NotificationChannel {
        id: ChannelId::new(),
        tenant_id: tenant,
        name: name.into(),
        enabled: true,
        kind: ChannelKind::Webhook {
            url: "https://hooks.example.com/tp?x=1".into(),
            secret: format!("s3cr3t-{}", unique()),
        },
        created_at: at,
    }
}

fn alarm(
    tenant: TenantId,
    rule: Option<RuleId>,
    device: Option<DeviceId>,
    severity: AlarmSeverity,
    at: Timestamp,
) -> Alarm {
    Alarm {
        id: AlarmId::new(),
        tenant_id: tenant,
        rule_id: rule,
        device_id: device,
        severity,
        status: AlarmStatus::Active,
        title: "Too hot".into(),
        description: Some("temp above 40".into()),
        occurrences: 1,
        details: json!({"temp": 41.5}),
        created_at: at,
        updated_at: at,
        acknowledged_at: None,
        acknowledged_by: None,
        cleared_at: None,
    }
}

fn notification(
    tenant: TenantId,
    channel: ChannelId,
    subject: &str,
    at: Timestamp,
) -> NotificationRecord {
    NotificationRecord {
        id: NotificationId::new(),
        tenant_id: tenant,
        channel_id: channel,
        alarm_id: Some(AlarmId::new()),
        rule_id: None,
        subject: subject.into(),
        body: "body".into(),
        status: NotificationStatus::Pending,
        attempts: 0,
        detail: None,
        created_at: at,
        updated_at: at,
    }
}

fn ids<T, I: PartialEq + Debug>(items: &[T], id: impl Fn(&T) -> I) -> Vec<I> {
    items.iter().map(id).collect()
}

/// `backend()` is a non-empty name.
pub async fn backend_name(store: &dyn RuleStore) {
    assert!(!store.backend().is_empty());
}

/// Create, get, list by name with paging and totals, update, delete.
pub async fn rule_crud(store: &dyn RuleStore) {
    let base = base_ts();
    let tenant = TenantId::new();
    let b = sample_rule(tenant, "b-rule", base);
    let a = sample_rule(tenant, "a-rule", base + 1);
    let c = sample_rule(tenant, "c-rule", base + 2);
    for r in [&b, &a, &c] {
        store.create_rule(r).await.expect("create_rule");
    }
    assert_eq!(
        store.get_rule(tenant, a.id).await.expect("get"),
        Some(a.clone())
    );
    assert_eq!(
        store.get_rule(tenant, RuleId::new()).await.expect("get"),
        None
    );

    let all = store.list_rules(tenant, page(0, 100)).await.expect("list");
    assert_eq!(all.total, 3);
    assert_eq!(all.items, vec![a.clone(), b.clone(), c.clone()]);
    let second = store.list_rules(tenant, page(1, 1)).await.expect("list");
    assert_eq!((second.total, second.items), (3, vec![b.clone()]));
    assert!(
        store
            .list_rules(tenant, page(5, 10))
            .await
            .expect("list")
            .items
            .is_empty()
    );

    let mut changed = a.clone();
    changed.name = "a-renamed".into();
    changed.description = None;
    changed.enabled = false;
    changed.trigger_groups.push(TriggerGroup {
        conditions: vec![Condition::Schedule(Schedule {
            kind: ScheduleKind::Periodic { interval_secs: 60 },
            not_before: None,
            not_after: None,
        })],
    });
    changed.actions = vec![Action::ClearAlarm];
    changed.updated_at = base + 500;
    changed.created_at = base + 999; // ignored
    store.update_rule(&changed).await.expect("update_rule");
    let got = store
        .get_rule(tenant, a.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(got.created_at, a.created_at);
    changed.created_at = a.created_at;
    assert_eq!(got, changed);

    store.delete_rule(tenant, b.id).await.expect("delete");
    assert_eq!(store.get_rule(tenant, b.id).await.expect("get"), None);
    expect_not_found(store.delete_rule(tenant, b.id).await);
    expect_not_found(store.update_rule(&b).await);
    assert_eq!(
        store
            .list_rules(tenant, page(0, 10))
            .await
            .expect("list")
            .total,
        2
    );
}

/// Another tenant's rule is invisible and cannot be changed or deleted.
pub async fn rule_tenant_isolation(store: &dyn RuleStore) {
    let base = base_ts();
    let (t1, t2) = (TenantId::new(), TenantId::new());
    let r = sample_rule(t1, "mine", base);
    store.create_rule(&r).await.expect("create");
    assert_eq!(store.get_rule(t2, r.id).await.expect("get"), None);
    assert_eq!(
        store.list_rules(t2, page(0, 10)).await.expect("list").total,
        0
    );

    let mut hijack = r.clone();
    hijack.tenant_id = t2;
    hijack.name = "stolen".into();
    expect_not_found(store.update_rule(&hijack).await);
    expect_not_found(store.delete_rule(t2, r.id).await);
    assert_eq!(store.get_rule(t1, r.id).await.expect("get"), Some(r));
}

/// Names are unique per tenant (create and rename), ids are unique.
pub async fn rule_names_unique_per_tenant(store: &dyn RuleStore) {
    let base = base_ts();
    let (t1, t2) = (TenantId::new(), TenantId::new());
    let r = sample_rule(t1, "dup", base);
    store.create_rule(&r).await.expect("create");
    expect_already_exists(
        store.create_rule(&sample_rule(t1, "dup", base)).await,
        "rule",
    );
    store
        .create_rule(&sample_rule(t2, "dup", base))
        .await
        .expect("same name, other tenant");
    let mut same_id = sample_rule(t1, "other-name", base);
    same_id.id = r.id;
    expect_already_exists(store.create_rule(&same_id).await, "rule");

    let mut second = sample_rule(t1, "second", base);
    store.create_rule(&second).await.expect("create");
    second.name = "dup".into();
    expect_already_exists(store.update_rule(&second).await, "rule");
    assert_eq!(
        store.list_rules(t1, page(0, 10)).await.expect("list").total,
        2
    );
}

/// Every condition, operator, schedule and action variant survives storage unchanged.
pub async fn rule_json_round_trip(store: &dyn RuleStore) {
    let base = base_ts();
    let tenant = TenantId::new();
    let rule = every_variant_rule(tenant, base);
    store.create_rule(&rule).await.expect("create");
    let got = store
        .get_rule(tenant, rule.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(got, rule);
    let listed = store.list_rules(tenant, page(0, 10)).await.expect("list");
    assert_eq!(listed.items, vec![rule.clone()]);

    // The same through a scene's actions.
    let mut s = scene(tenant, "all-actions", base);
    s.actions = rule.actions.clone();
    store.create_scene(&s).await.expect("create_scene");
    assert_eq!(store.get_scene(tenant, s.id).await.expect("get"), Some(s));
}

/// `list_enabled_rules` returns enabled rules of every tenant, and only those.
pub async fn enabled_rules_across_tenants(store: &dyn RuleStore) {
    let base = base_ts();
    let (t1, t2) = (TenantId::new(), TenantId::new());
    let on1 = sample_rule(t1, "on", base);
    let on2 = sample_rule(t2, "on", base);
    let mut off = sample_rule(t1, "off", base);
    off.enabled = false;
    for r in [&on1, &on2, &off] {
        store.create_rule(r).await.expect("create");
    }
    let ours = |rules: Vec<Rule>| -> Vec<Rule> {
        let mut v: Vec<Rule> = rules
            .into_iter()
            .filter(|r| r.tenant_id == t1 || r.tenant_id == t2)
            .collect();
        v.sort_by_key(|r| r.id);
        v
    };
    let mut expected = vec![on1.clone(), on2.clone()];
    expected.sort_by_key(|r| r.id);
    assert_eq!(
        ours(store.list_enabled_rules().await.expect("enabled")),
        expected
    );

    let mut disabled = on2.clone();
    disabled.enabled = false;
    store.update_rule(&disabled).await.expect("disable");
    let mut enabled = off.clone();
    enabled.enabled = true;
    store.update_rule(&enabled).await.expect("enable");
    let mut expected = vec![on1, enabled];
    expected.sort_by_key(|r| r.id);
    assert_eq!(
        ours(store.list_enabled_rules().await.expect("enabled")),
        expected
    );
}

/// Scenes: CRUD, unique names per tenant, tenant isolation.
pub async fn scene_crud(store: &dyn RuleStore) {
    let base = base_ts();
    let (t1, t2) = (TenantId::new(), TenantId::new());
    let b = scene(t1, "b-scene", base);
    let a = scene(t1, "a-scene", base + 1);
    store.create_scene(&b).await.expect("create");
    store.create_scene(&a).await.expect("create");
    expect_already_exists(
        store.create_scene(&scene(t1, "a-scene", base)).await,
        "scene",
    );
    store
        .create_scene(&scene(t2, "a-scene", base))
        .await
        .expect("same name, other tenant");

    assert_eq!(
        store.get_scene(t1, a.id).await.expect("get"),
        Some(a.clone())
    );
    assert_eq!(store.get_scene(t2, a.id).await.expect("get"), None);
    let listed = store.list_scenes(t1, page(0, 10)).await.expect("list");
    assert_eq!(
        (listed.total, listed.items),
        (2, vec![a.clone(), b.clone()])
    );
    let paged = store.list_scenes(t1, page(1, 5)).await.expect("list");
    assert_eq!((paged.total, paged.items), (2, vec![b.clone()]));

    let mut changed = a.clone();
    changed.name = "z-scene".into();
    changed.description = Some("evening".into());
    changed.actions = vec![Action::RunScene { scene: b.id }];
    changed.updated_at = base + 50;
    store.update_scene(&changed).await.expect("update");
    assert_eq!(
        store.get_scene(t1, a.id).await.expect("get"),
        Some(changed.clone())
    );
    let mut clash = changed.clone();
    clash.name = "b-scene".into();
    expect_already_exists(store.update_scene(&clash).await, "scene");

    let mut foreign = changed.clone();
    foreign.tenant_id = t2;
    foreign.name = "stolen".into();
    expect_not_found(store.update_scene(&foreign).await);
    expect_not_found(store.delete_scene(t2, a.id).await);
    assert_eq!(store.get_scene(t1, a.id).await.expect("get"), Some(changed));

    store.delete_scene(t1, a.id).await.expect("delete");
    assert_eq!(store.get_scene(t1, a.id).await.expect("get"), None);
    expect_not_found(store.delete_scene(t1, a.id).await);
    assert_eq!(
        store
            .list_scenes(t1, page(0, 10))
            .await
            .expect("list")
            .total,
        1
    );
}

/// Notification channels: CRUD (secrets kept), unique names, tenant isolation.
pub async fn channel_crud(store: &dyn RuleStore) {
    let base = base_ts();
    let (t1, t2) = (TenantId::new(), TenantId::new());
    let hook = webhook(t1, "a-hook", base);
    let mail = NotificationChannel {
        id: ChannelId::new(),
        tenant_id: t1,
        name: "b-mail".into(),
        enabled: false,
        kind: ChannelKind::Email {
            to: vec!["ops@example.com".into(), "oncall@example.com".into()],
        },
        created_at: base + 1,
    };
    store.create_channel(&mail).await.expect("create");
    store.create_channel(&hook).await.expect("create");
    expect_already_exists(
        store.create_channel(&webhook(t1, "a-hook", base)).await,
        "channel",
    );
    store
        .create_channel(&webhook(t2, "a-hook", base))
        .await
        .expect("same name, other tenant");

    assert_eq!(
        store.get_channel(t1, hook.id).await.expect("get"),
        Some(hook.clone())
    );
    assert_eq!(store.get_channel(t2, hook.id).await.expect("get"), None);
    let listed = store.list_channels(t1, page(0, 10)).await.expect("list");
    assert_eq!(
        (listed.total, listed.items),
        (2, vec![hook.clone(), mail.clone()])
    );
    let paged = store.list_channels(t1, page(0, 1)).await.expect("list");
    assert_eq!((paged.total, paged.items), (2, vec![hook.clone()]));

    let mut changed = hook.clone();
    changed.name = "c-hook".into();
    changed.enabled = false;
    changed.kind = ChannelKind::Webhook {
        url: "http://127.0.0.1:9/x".into(),
        secret: "rotated".into(),
    };
    store.update_channel(&changed).await.expect("update");
    assert_eq!(
        store.get_channel(t1, hook.id).await.expect("get"),
        Some(changed.clone())
    );
    let mut clash = changed.clone();
    clash.name = "b-mail".into();
    expect_already_exists(store.update_channel(&clash).await, "channel");

    let mut foreign = changed.clone();
    foreign.tenant_id = t2;
    expect_not_found(store.update_channel(&foreign).await);
    expect_not_found(store.delete_channel(t2, hook.id).await);

    store.delete_channel(t1, hook.id).await.expect("delete");
    assert_eq!(store.get_channel(t1, hook.id).await.expect("get"), None);
    expect_not_found(store.delete_channel(t1, hook.id).await);
    assert_eq!(
        store
            .list_channels(t1, page(0, 10))
            .await
            .expect("list")
            .total,
        1
    );
}

/// Create, get, update an alarm through its lifecycle; tenant isolation.
pub async fn alarm_lifecycle(store: &dyn RuleStore) {
    let base = base_ts();
    let (t1, t2) = (TenantId::new(), TenantId::new());
    let rule = RuleId::new();
    let device = DeviceId::new();
    let a = alarm(t1, Some(rule), Some(device), AlarmSeverity::Minor, base);
    store.create_alarm(&a).await.expect("create");
    expect_already_exists(store.create_alarm(&a).await, "alarm");
    assert_eq!(
        store.get_alarm(t1, a.id).await.expect("get"),
        Some(a.clone())
    );
    assert_eq!(store.get_alarm(t2, a.id).await.expect("get"), None);
    assert_eq!(
        store.get_alarm(t1, AlarmId::new()).await.expect("get"),
        None
    );

    let mut repeated = a.clone();
    repeated.occurrences = 2;
    repeated.severity = AlarmSeverity::Critical;
    repeated.details = json!({"temp": 45, "unit": "C"});
    repeated.title = "Very hot".into();
    repeated.description = None;
    repeated.updated_at = base + 10;
    store.update_alarm(&repeated).await.expect("repeat");
    assert_eq!(
        store.get_alarm(t1, a.id).await.expect("get"),
        Some(repeated.clone())
    );

    let user = UserId::new();
    let mut acked = repeated.clone();
    acked.status = AlarmStatus::Acknowledged;
    acked.acknowledged_at = Some(base + 20);
    acked.acknowledged_by = Some(user);
    acked.updated_at = base + 20;
    store.update_alarm(&acked).await.expect("ack");
    assert_eq!(
        store.get_alarm(t1, a.id).await.expect("get"),
        Some(acked.clone())
    );

    let mut foreign = acked.clone();
    foreign.tenant_id = t2;
    foreign.status = AlarmStatus::Cleared;
    expect_not_found(store.update_alarm(&foreign).await);
    expect_not_found(
        store
            .update_alarm(&alarm(t1, None, None, AlarmSeverity::Info, base))
            .await,
    );
    assert_eq!(
        store.get_alarm(t1, a.id).await.expect("get"),
        Some(acked.clone())
    );

    let mut cleared = acked;
    cleared.status = AlarmStatus::Cleared;
    cleared.cleared_at = Some(base + 30);
    cleared.updated_at = base + 30;
    store.update_alarm(&cleared).await.expect("clear");
    assert_eq!(store.get_alarm(t1, a.id).await.expect("get"), Some(cleared));
}

/// At most one open alarm per (rule, device); cleared ones do not count; alarms
/// without a rule are not limited.
pub async fn one_open_alarm_per_rule_and_device(store: &dyn RuleStore) {
    let base = base_ts();
    let tenant = TenantId::new();
    let (rule, other_rule) = (RuleId::new(), RuleId::new());
    let (d1, d2) = (DeviceId::new(), DeviceId::new());
    let sev = AlarmSeverity::Warning;

    let first = alarm(tenant, Some(rule), Some(d1), sev, base);
    store.create_alarm(&first).await.expect("first");
    expect_already_exists(
        store
            .create_alarm(&alarm(tenant, Some(rule), Some(d1), sev, base + 1))
            .await,
        "alarm",
    );
    // Other device, other rule, no device: separate keys.
    store
        .create_alarm(&alarm(tenant, Some(rule), Some(d2), sev, base))
        .await
        .expect("other device");
    store
        .create_alarm(&alarm(tenant, Some(other_rule), Some(d1), sev, base))
        .await
        .expect("other rule");
    let deviceless = alarm(tenant, Some(rule), None, sev, base);
    store.create_alarm(&deviceless).await.expect("no device");
    expect_already_exists(
        store
            .create_alarm(&alarm(tenant, Some(rule), None, sev, base + 1))
            .await,
        "alarm",
    );
    // Without a rule: unlimited.
    for _ in 0..2 {
        store
            .create_alarm(&alarm(tenant, None, Some(d1), sev, base))
            .await
            .expect("manual alarm");
        store
            .create_alarm(&alarm(tenant, None, None, sev, base))
            .await
            .expect("manual alarm without device");
    }

    // Acknowledged is still open.
    let mut acked = first.clone();
    acked.status = AlarmStatus::Acknowledged;
    acked.acknowledged_at = Some(base + 5);
    store.update_alarm(&acked).await.expect("ack");
    expect_already_exists(
        store
            .create_alarm(&alarm(tenant, Some(rule), Some(d1), sev, base + 6))
            .await,
        "alarm",
    );

    // Cleared frees the key.
    let mut cleared = acked;
    cleared.status = AlarmStatus::Cleared;
    cleared.cleared_at = Some(base + 7);
    store.update_alarm(&cleared).await.expect("clear");
    let second = alarm(tenant, Some(rule), Some(d1), sev, base + 8);
    store.create_alarm(&second).await.expect("after clear");

    // Reopening the cleared one while another is open is refused and changes nothing.
    let mut reopen = cleared.clone();
    reopen.status = AlarmStatus::Active;
    expect_already_exists(store.update_alarm(&reopen).await, "alarm");
    assert_eq!(
        store.get_alarm(tenant, first.id).await.expect("get"),
        Some(cleared)
    );

    // Clearing the device-less one frees its key too.
    let mut cleared = deviceless;
    cleared.status = AlarmStatus::Cleared;
    store.update_alarm(&cleared).await.expect("clear");
    store
        .create_alarm(&alarm(tenant, Some(rule), None, sev, base + 9))
        .await
        .expect("deviceless after clear");
}

/// `get_open_alarm` finds the open alarm of (rule, device), `None` device included.
pub async fn open_alarm_lookup(store: &dyn RuleStore) {
    let base = base_ts();
    let tenant = TenantId::new();
    let rule = RuleId::new();
    let device = DeviceId::new();
    assert_eq!(
        store.get_open_alarm(rule, Some(device)).await.expect("get"),
        None
    );
    assert_eq!(store.get_open_alarm(rule, None).await.expect("get"), None);

    let a = alarm(tenant, Some(rule), Some(device), AlarmSeverity::Major, base);
    store.create_alarm(&a).await.expect("create");
    assert_eq!(
        store.get_open_alarm(rule, Some(device)).await.expect("get"),
        Some(a.clone())
    );
    assert_eq!(store.get_open_alarm(rule, None).await.expect("get"), None);
    assert_eq!(
        store
            .get_open_alarm(rule, Some(DeviceId::new()))
            .await
            .expect("get"),
        None
    );
    assert_eq!(
        store
            .get_open_alarm(RuleId::new(), Some(device))
            .await
            .expect("get"),
        None
    );

    let b = alarm(tenant, Some(rule), None, AlarmSeverity::Info, base);
    store.create_alarm(&b).await.expect("create");
    assert_eq!(
        store.get_open_alarm(rule, None).await.expect("get"),
        Some(b)
    );

    let mut acked = a.clone();
    acked.status = AlarmStatus::Acknowledged;
    store.update_alarm(&acked).await.expect("ack");
    assert_eq!(
        store.get_open_alarm(rule, Some(device)).await.expect("get"),
        Some(acked.clone())
    );
    let mut cleared = acked;
    cleared.status = AlarmStatus::Cleared;
    store.update_alarm(&cleared).await.expect("clear");
    assert_eq!(
        store.get_open_alarm(rule, Some(device)).await.expect("get"),
        None
    );
}

/// `list_alarms`: filters by device, rule, statuses and severity; newest first; paging
/// with totals; tenant-scoped.
pub async fn alarm_list_filters(store: &dyn RuleStore) {
    let base = base_ts();
    let (tenant, other) = (TenantId::new(), TenantId::new());
    let (r1, r2) = (RuleId::new(), RuleId::new());
    let (d1, d2) = (DeviceId::new(), DeviceId::new());

    // Created oldest to newest: a0 .. a4.
    let mut a0 = alarm(tenant, Some(r1), Some(d1), AlarmSeverity::Critical, base);
    a0.status = AlarmStatus::Cleared;
    a0.cleared_at = Some(base + 100);
    let a1 = alarm(tenant, Some(r1), Some(d1), AlarmSeverity::Major, base + 1);
    let mut a2 = alarm(
        tenant,
        Some(r1),
        Some(d2),
        AlarmSeverity::Critical,
        base + 2,
    );
    a2.status = AlarmStatus::Acknowledged;
    let a3 = alarm(tenant, Some(r2), Some(d1), AlarmSeverity::Minor, base + 3);
    let a4 = alarm(tenant, None, None, AlarmSeverity::Critical, base + 4);
    for a in [&a0, &a1, &a2, &a3, &a4] {
        store.create_alarm(a).await.expect("create");
    }
    store
        .create_alarm(&alarm(
            other,
            Some(RuleId::new()),
            Some(d1),
            AlarmSeverity::Critical,
            base + 5,
        ))
        .await
        .expect("other tenant");

    let list = |filter: AlarmFilter| async move {
        let got = store.list_alarms(tenant, &filter).await.expect("list");
        (got.total, ids(&got.items, |a| a.id))
    };
    assert_eq!(
        list(AlarmFilter::default()).await,
        (5, vec![a4.id, a3.id, a2.id, a1.id, a0.id])
    );
    let full = store
        .list_alarms(tenant, &AlarmFilter::default())
        .await
        .expect("list");
    assert_eq!(full.items[2], a2);
    assert_eq!(
        list(AlarmFilter {
            device_id: Some(d1),
            ..Default::default()
        })
        .await,
        (3, vec![a3.id, a1.id, a0.id])
    );
    assert_eq!(
        list(AlarmFilter {
            rule_id: Some(r1),
            ..Default::default()
        })
        .await,
        (3, vec![a2.id, a1.id, a0.id])
    );
    assert_eq!(
        list(AlarmFilter {
            statuses: vec![AlarmStatus::Active, AlarmStatus::Acknowledged],
            ..Default::default()
        })
        .await,
        (4, vec![a4.id, a3.id, a2.id, a1.id])
    );
    assert_eq!(
        list(AlarmFilter {
            statuses: vec![AlarmStatus::Cleared],
            ..Default::default()
        })
        .await,
        (1, vec![a0.id])
    );
    assert_eq!(
        list(AlarmFilter {
            severity: Some(AlarmSeverity::Critical),
            ..Default::default()
        })
        .await,
        (3, vec![a4.id, a2.id, a0.id])
    );
    assert_eq!(
        list(AlarmFilter {
            device_id: Some(d1),
            rule_id: Some(r1),
            statuses: vec![AlarmStatus::Active],
            severity: Some(AlarmSeverity::Major),
            page: page(0, 10),
        })
        .await,
        (1, vec![a1.id])
    );
    assert_eq!(
        list(AlarmFilter {
            page: page(1, 2),
            ..Default::default()
        })
        .await,
        (5, vec![a3.id, a2.id])
    );
    assert_eq!(
        list(AlarmFilter {
            severity: Some(AlarmSeverity::Critical),
            page: page(2, 2),
            ..Default::default()
        })
        .await,
        (3, vec![a0.id])
    );
    assert_eq!(
        list(AlarmFilter {
            device_id: Some(DeviceId::new()),
            ..Default::default()
        })
        .await,
        (0, vec![])
    );
}

/// `count_alarms` per tenant and per device, with open alarms per severity.
pub async fn alarm_counts(store: &dyn RuleStore) {
    let base = base_ts();
    let (tenant, other) = (TenantId::new(), TenantId::new());
    let (d1, d2) = (DeviceId::new(), DeviceId::new());
    let zero = |sev: &[(&str, u64)]| {
        let mut m: std::collections::BTreeMap<String, u64> = [
            AlarmSeverity::Critical,
            AlarmSeverity::Major,
            AlarmSeverity::Minor,
            AlarmSeverity::Warning,
            AlarmSeverity::Info,
        ]
        .iter()
        .map(|s| (s.as_str().to_owned(), 0))
        .collect();
        for (k, v) in sev {
            m.insert((*k).to_owned(), *v);
        }
        m
    };
    assert_eq!(
        store.count_alarms(tenant, None).await.expect("count"),
        AlarmCounts {
            open_by_severity: zero(&[]),
            ..Default::default()
        }
    );

    let mut cleared = alarm(tenant, None, Some(d1), AlarmSeverity::Critical, base);
    cleared.status = AlarmStatus::Cleared;
    let mut acked = alarm(tenant, None, Some(d1), AlarmSeverity::Critical, base);
    acked.status = AlarmStatus::Acknowledged;
    for a in [
        cleared,
        acked,
        alarm(tenant, None, Some(d1), AlarmSeverity::Warning, base),
        alarm(tenant, None, Some(d2), AlarmSeverity::Critical, base),
        alarm(tenant, None, None, AlarmSeverity::Info, base),
        alarm(other, None, Some(d1), AlarmSeverity::Major, base),
    ] {
        store.create_alarm(&a).await.expect("create");
    }
    assert_eq!(
        store.count_alarms(tenant, None).await.expect("count"),
        AlarmCounts {
            active: 3,
            acknowledged: 1,
            cleared: 1,
            open_by_severity: zero(&[("critical", 2), ("warning", 1), ("info", 1)]),
        }
    );
    assert_eq!(
        store.count_alarms(tenant, Some(d1)).await.expect("count"),
        AlarmCounts {
            active: 1,
            acknowledged: 1,
            cleared: 1,
            open_by_severity: zero(&[("critical", 1), ("warning", 1)]),
        }
    );
    assert_eq!(
        store.count_alarms(other, Some(d1)).await.expect("count"),
        AlarmCounts {
            active: 1,
            acknowledged: 0,
            cleared: 0,
            open_by_severity: zero(&[("major", 1)]),
        }
    );
}

/// History: appended events (comments included) listed oldest first, tenant-scoped.
pub async fn alarm_history(store: &dyn RuleStore) {
    let base = base_ts();
    let (tenant, other) = (TenantId::new(), TenantId::new());
    let a = alarm(
        tenant,
        Some(RuleId::new()),
        None,
        AlarmSeverity::Major,
        base,
    );
    store.create_alarm(&a).await.expect("create");
    let user = UserId::new();
    let event = |ts: Timestamp, kind: AlarmEventKind, user: Option<UserId>, text: Option<&str>| {
        AlarmEvent {
            alarm_id: a.id,
            tenant_id: tenant,
            ts,
            kind,
            user_id: user,
            text: text.map(Into::into),
        }
    };
    let events = vec![
        event(base, AlarmEventKind::Raised, None, Some("temp 41.5 > 40")),
        event(base + 10, AlarmEventKind::Repeated, None, None),
        event(
            base + 20,
            AlarmEventKind::Comment,
            Some(user),
            Some("looking"),
        ),
        // Same ts: append order.
        event(base + 20, AlarmEventKind::Acknowledged, Some(user), None),
        event(
            base + 30,
            AlarmEventKind::Comment,
            Some(user),
            Some("fixed ✓"),
        ),
        event(base + 40, AlarmEventKind::Cleared, None, None),
    ];
    // Appended out of ts order: listing still sorts by ts.
    store.append_alarm_event(&events[1]).await.expect("append");
    store.append_alarm_event(&events[0]).await.expect("append");
    for e in &events[2..] {
        store.append_alarm_event(e).await.expect("append");
    }
    assert_eq!(
        store.list_alarm_events(tenant, a.id).await.expect("list"),
        events
    );
    assert!(
        store
            .list_alarm_events(other, a.id)
            .await
            .expect("list")
            .is_empty()
    );
    assert!(
        store
            .list_alarm_events(tenant, AlarmId::new())
            .await
            .expect("list")
            .is_empty()
    );

    let mut foreign = event(base + 50, AlarmEventKind::Comment, None, Some("x"));
    foreign.tenant_id = other;
    expect_not_found(store.append_alarm_event(&foreign).await);
    let mut unknown = event(base + 50, AlarmEventKind::Comment, None, Some("x"));
    unknown.alarm_id = AlarmId::new();
    expect_not_found(store.append_alarm_event(&unknown).await);
    assert_eq!(
        store
            .list_alarm_events(tenant, a.id)
            .await
            .expect("list")
            .len(),
        events.len()
    );
}

/// Notification history: create, update the outcome, list newest first, tenant-scoped.
pub async fn notification_history(store: &dyn RuleStore) {
    let base = base_ts();
    let (tenant, other) = (TenantId::new(), TenantId::new());
    let channel = ChannelId::new();
    let n1 = notification(tenant, channel, "first", base);
    let mut n2 = notification(tenant, channel, "second", base + 1);
    n2.alarm_id = None;
    n2.rule_id = Some(RuleId::new());
    let n3 = notification(tenant, channel, "third", base + 2);
    for n in [&n1, &n2, &n3] {
        store.create_notification(n).await.expect("create");
    }
    expect_already_exists(store.create_notification(&n1).await, "notification");
    store
        .create_notification(&notification(other, channel, "theirs", base))
        .await
        .expect("other tenant");

    let mut sent = n2.clone();
    sent.status = NotificationStatus::Sent;
    sent.attempts = 3;
    sent.detail = Some("HTTP 200".into());
    sent.updated_at = base + 100;
    store.update_notification(&sent).await.expect("update");
    let mut failed = n1.clone();
    failed.status = NotificationStatus::Failed;
    failed.attempts = 5;
    failed.detail = Some("connection refused".into());
    failed.updated_at = base + 200;
    store.update_notification(&failed).await.expect("update");

    let all = store
        .list_notifications(tenant, page(0, 10))
        .await
        .expect("list");
    assert_eq!(all.total, 3);
    assert_eq!(all.items, vec![n3.clone(), sent.clone(), failed.clone()]);
    let paged = store
        .list_notifications(tenant, page(1, 1))
        .await
        .expect("list");
    assert_eq!((paged.total, paged.items), (3, vec![sent.clone()]));

    let mut foreign = n3.clone();
    foreign.tenant_id = other;
    foreign.status = NotificationStatus::Skipped;
    expect_not_found(store.update_notification(&foreign).await);
    expect_not_found(
        store
            .update_notification(&notification(tenant, channel, "ghost", base))
            .await,
    );
    let theirs = store
        .list_notifications(other, page(0, 10))
        .await
        .expect("list");
    assert_eq!(theirs.total, 1);
    assert_eq!(theirs.items[0].subject, "theirs");
}

/// Rule state: put inserts or replaces per (rule, scope), delete removes one, deleting
/// the rule removes all of its states; state of an unknown rule is refused.
pub async fn rule_state(store: &dyn RuleStore) {
    let base = base_ts();
    let tenant = TenantId::new();
    let rule = sample_rule(tenant, "stateful", base);
    let other = sample_rule(tenant, "other", base);
    store.create_rule(&rule).await.expect("create");
    store.create_rule(&other).await.expect("create");
    let state = |rule: RuleId, scope: &str, v: serde_json::Value, at: Timestamp| RuleState {
        rule_id: rule,
        scope: scope.into(),
        state: v,
        updated_at: at,
    };
    assert!(
        store
            .list_rule_states(rule.id)
            .await
            .expect("list")
            .is_empty()
    );

    let dev = DeviceId::new().to_string();
    let s_dev = state(rule.id, &dev, json!({"since": base, "holding": true}), base);
    let s_sched = state(rule.id, "schedule:0", json!({"next": base + 60_000}), base);
    let s_other = state(other.id, "schedule:0", json!(null), base);
    for s in [&s_sched, &s_dev, &s_other] {
        store.put_rule_state(s).await.expect("put");
    }
    let mut expected = vec![s_dev.clone(), s_sched.clone()];
    expected.sort_by(|a, b| a.scope.cmp(&b.scope));
    assert_eq!(
        store.list_rule_states(rule.id).await.expect("list"),
        expected
    );

    let replaced = state(
        rule.id,
        &dev,
        json!({"since": null, "fired": [1, 2]}),
        base + 5,
    );
    store.put_rule_state(&replaced).await.expect("replace");
    let mut expected = vec![replaced.clone(), s_sched.clone()];
    expected.sort_by(|a, b| a.scope.cmp(&b.scope));
    assert_eq!(
        store.list_rule_states(rule.id).await.expect("list"),
        expected
    );

    store
        .delete_rule_state(rule.id, "schedule:0")
        .await
        .expect("delete");
    store
        .delete_rule_state(rule.id, "schedule:0")
        .await
        .expect("absent is fine");
    store
        .delete_rule_state(RuleId::new(), "nothing")
        .await
        .expect("unknown rule is fine");
    assert_eq!(
        store.list_rule_states(rule.id).await.expect("list"),
        vec![replaced]
    );

    expect_not_found(
        store
            .put_rule_state(&state(RuleId::new(), "x", json!(1), base))
            .await,
    );

    store
        .delete_rule(tenant, rule.id)
        .await
        .expect("delete rule");
    assert!(
        store
            .list_rule_states(rule.id)
            .await
            .expect("list")
            .is_empty()
    );
    assert_eq!(
        store.list_rule_states(other.id).await.expect("list"),
        vec![s_other]
    );
    // The rule's alarms outlive it.
    let a = alarm(tenant, Some(other.id), None, AlarmSeverity::Info, base);
    store.create_alarm(&a).await.expect("create");
    store
        .delete_rule(tenant, other.id)
        .await
        .expect("delete rule");
    assert_eq!(store.get_alarm(tenant, a.id).await.expect("get"), Some(a));
}

/// Stamps out one `#[tokio::test]` per [`RuleStore`] conformance case.
///
/// `$make` is an expression evaluating to a future of `Option<S>`, where `S` derefs
/// to a `dyn RuleStore` (an `Arc<dyn RuleStore>`, or a guard that also keeps a
/// temporary directory or schema alive); `None` skips the test.
///
/// ```ignore
/// mod sqlite_rules {
///     tp_core::rules_conformance!(async {
///         let store: tp_core::rules::RuleStoreRef =
///             std::sync::Arc::new(MyStore::in_memory().await.unwrap());
///         Some(store)
///     });
/// }
/// ```
#[macro_export]
macro_rules! rules_conformance {
    ($make:expr $(,)?) => {
        $crate::__rules_conformance_tests!($make;
            backend_name,
            rule_crud,
            rule_tenant_isolation,
            rule_names_unique_per_tenant,
            rule_json_round_trip,
            enabled_rules_across_tenants,
            scene_crud,
            channel_crud,
            alarm_lifecycle,
            one_open_alarm_per_rule_and_device,
            open_alarm_lookup,
            alarm_list_filters,
            alarm_counts,
            alarm_history,
            notification_history,
            rule_state,
        );
    };
}

/// Body of [`rules_conformance!`]: one test per listed case.
#[doc(hidden)]
#[macro_export]
macro_rules! __rules_conformance_tests {
    ($make:expr; $($case:ident),+ $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(store) = ($make).await else {
                    return;
                };
                $crate::testing::rules::$case(&*store).await;
            }
        )+
    };
}

/// Runs every case in turn against one store: for backends outside a test harness.
/// Keep the list in step with [`rules_conformance!`]; `every_case_is_in_run_all`
/// below checks it.
pub async fn run_all(store: &dyn RuleStore) {
    backend_name(store).await;
    rule_crud(store).await;
    rule_tenant_isolation(store).await;
    rule_names_unique_per_tenant(store).await;
    rule_json_round_trip(store).await;
    enabled_rules_across_tenants(store).await;
    scene_crud(store).await;
    channel_crud(store).await;
    alarm_lifecycle(store).await;
    one_open_alarm_per_rule_and_device(store).await;
    open_alarm_lookup(store).await;
    alarm_list_filters(store).await;
    alarm_counts(store).await;
    alarm_history(store).await;
    notification_history(store).await;
    rule_state(store).await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_case_is_in_run_all() {
        let src = include_str!("rules.rs");
        let (macro_part, run_all_part) = (
            &src[src.find("macro_rules! rules_conformance").unwrap()..],
            &src[src.find("pub async fn run_all").unwrap()..],
        );
        let macro_part = &macro_part[..macro_part.find(");").unwrap()];
        let run_all_part = &run_all_part[..run_all_part.find("\n}").unwrap()];
        let mut cases = 0;
        for case in src
            .lines()
            .filter_map(|l| l.strip_prefix("pub async fn "))
            .filter_map(|l| l.split('(').next())
        {
            if case == "run_all" {
                continue;
            }
            cases += 1;
            assert!(
                macro_part.contains(&format!("{case},")),
                "{case} missing from the macro"
            );
            assert!(
                run_all_part.contains(&format!("{case}(store)")),
                "{case} missing from run_all"
            );
        }
        assert!(cases > 10);
    }
}
