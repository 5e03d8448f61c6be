//! criterion bench of rule evaluation on the ingest path (issue #6): 1,000 enabled
//! rules loaded (device rules and profile-wide rules, several operators, some with
//! "held for N seconds"), one telemetry message evaluated.
//!
//! `cargo bench -p tp-benches --bench rules` (results in benches/RESULTS.md).

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use tp_core::rules::eval::Evaluator;
use tp_core::rules::{
    Condition, DataKind, DeviceSource, Operator, Rule, RuleId, RuleInput, RuleInputData,
    TriggerGroup,
};
use tp_core::{DeviceId, KeyValue, ProfileId, TenantId, Value};

const RULES: usize = 1_000;
const DEVICES: usize = 500;
const PROFILES: usize = 20;

fn condition(source: DeviceSource, i: usize) -> Condition {
    let (key, operator, value) = match i % 5 {
        0 => ("temp", Operator::Gt, json!(30)),
        1 => ("temp", Operator::Between, json!([10.0, 20.5])),
        2 => ("hum", Operator::Lt, json!(20)),
        3 => ("mode", Operator::In, json!(["eco", "boost"])),
        _ => ("door", Operator::Eq, json!(true)),
    };
    Condition::Device {
        source,
        data: DataKind::Telemetry,
        key: key.to_owned(),
        operator,
        value,
        duration_secs: i.is_multiple_of(7).then_some(60),
    }
}

/// 700 rules on single devices (each device watched by ~1.4 rules) and 300
/// profile-wide rules (15 per profile), some with two-condition groups and two groups.
fn rules(tenant: TenantId, devices: &[DeviceId], profiles: &[ProfileId]) -> Vec<Rule> {
    (0..RULES)
        .map(|i| {
            let source = if i % 10 < 7 {
                DeviceSource::Device(devices[i % DEVICES])
            } else {
                DeviceSource::Profile(profiles[(i / 10) % PROFILES])
            };
            let mut groups = vec![TriggerGroup {
                conditions: vec![condition(source, i)],
            }];
            if i.is_multiple_of(3) {
                groups[0].conditions.push(condition(source, i + 2));
            }
            if i.is_multiple_of(4) {
                groups.push(TriggerGroup {
                    conditions: vec![condition(source, i + 1)],
                });
            }
            Rule {
                id: RuleId::new(),
                tenant_id: tenant,
                name: format!("rule-{i}"),
                description: None,
                enabled: true,
                trigger_groups: groups,
                actions: vec![],
                created_at: 0,
                updated_at: 0,
            }
        })
        .collect()
}

fn message(tenant: TenantId, device: DeviceId, profile: ProfileId, temp: f64) -> RuleInput {
    let kv = |key: &str, value: Value| KeyValue {
        key: key.to_owned(),
        ts: 0,
        value,
    };
    RuleInput {
        device_id: device,
        tenant_id: tenant,
        profile_id: Some(profile),
        ts: 0,
        data: RuleInputData::Telemetry {
            values: vec![
                kv("temp", Value::Float(temp)),
                kv("hum", Value::Integer(45)),
                kv("mode", Value::String("eco".to_owned())),
                kv("door", Value::Bool(false)),
            ],
        },
    }
}

fn evaluate(c: &mut Criterion) {
    let tenant = TenantId::new();
    let devices: Vec<DeviceId> = (0..DEVICES).map(|_| DeviceId::new()).collect();
    let profiles: Vec<ProfileId> = (0..PROFILES).map(|_| ProfileId::new()).collect();
    let mut ev = Evaluator::new();
    ev.load(rules(tenant, &devices, &profiles), 0);
    assert_eq!(ev.len(), RULES);
    // The watched devices below (index 3 and 5, profiles 3 and 5) are each watched
    // by 2 device rules and their profile's 15 rules: 17 of the 1,000 are evaluated.
    let mut g = c.benchmark_group("rules_1000");
    // A device watched by its own rules and by its profile's 15 rules; the value
    // alternates across the threshold, so rules fire and clear (the costly path).
    let mut now = 0i64;
    let mut out = Vec::new();
    g.bench_function("telemetry_4_keys_watched_device_alternating", |b| {
        b.iter(|| {
            now += 1000;
            let temp = if now % 2000 == 0 { 35.0 } else { 15.0 };
            out.clear();
            ev.on_input_into(
                &message(tenant, devices[3], profiles[3], temp),
                now,
                &mut out,
            );
            std::hint::black_box(out.len())
        })
    });
    g.bench_function("telemetry_4_keys_watched_device_steady", |b| {
        b.iter(|| {
            now += 1000;
            out.clear();
            ev.on_input_into(
                &message(tenant, devices[5], profiles[5], 25.0),
                now,
                &mut out,
            );
            std::hint::black_box(out.len())
        })
    });
    let stranger = DeviceId::new();
    let other_profile = ProfileId::new();
    g.bench_function("telemetry_4_keys_unwatched_device", |b| {
        b.iter(|| {
            now += 1000;
            out.clear();
            ev.on_input_into(
                &message(tenant, stranger, other_profile, 35.0),
                now,
                &mut out,
            );
            std::hint::black_box(out.len())
        })
    });
    g.finish();
    let _ = ev.take_dirty(now);
}

criterion_group!(benches, evaluate);
criterion_main!(benches);
