//! The rule model and its time parsers (`tp_core::rules`): rules as JSON (what the
//! REST API and the rule store deserialize), loaded into the evaluator (operators
//! compiled, schedules and cron expressions compiled, time ranges scheduled) and
//! driven with inputs and ticks; cron expressions and schedules on their own; the
//! daily time-range arithmetic. The first byte picks the mode:
//! 0 cron expression (UTF-8), 1 rule JSON, 2 schedule JSON, 3 time range (binary).
//! Oracles: no panic or hang; next fire times and time-range changes lie after
//! the time asked about.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tp_core::model::{DeviceId, KeyValue, Value};
use tp_core::protocol::MAX_TIMESTAMP;
use tp_core::rules::eval::Evaluator;
use tp_core::rules::schedule::{CompiledSchedule, in_time_range, next_time_range_change};
use tp_core::rules::{
    Condition, DeviceSource, Rule, RuleInput, RuleInputData, Schedule, ScheduleKind,
};

/// 2023-11-14T22:13:20Z: a realistic engine clock.
const NOW: i64 = 1_700_000_000_000;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => {
            let expression = String::from_utf8_lossy(rest).into_owned();
            schedule(&Schedule {
                kind: ScheduleKind::Cron { expression },
                not_before: None,
                not_after: None,
            });
        }
        1 => rule(rest),
        2 => {
            if let Ok(s) = serde_json::from_slice::<Schedule>(rest) {
                schedule(&s);
            }
        }
        _ => time_range(rest),
    }
});

fn schedule(s: &Schedule) {
    let Ok(compiled) = CompiledSchedule::new(s, NOW) else {
        return;
    };
    for start in [0, NOW, MAX_TIMESTAMP - 1, -1, i64::MIN, i64::MAX] {
        let mut at = start;
        for _ in 0..3 {
            match compiled.next_after(at) {
                Some(next) => {
                    assert!(next > at, "{s:?}: next_after({at}) = {next}");
                    at = next;
                }
                None => break,
            }
        }
    }
}

fn rule(json: &[u8]) {
    let Ok(rule) = serde_json::from_slice::<Rule>(json) else {
        return;
    };
    for group in &rule.trigger_groups {
        for c in &group.conditions {
            if let Condition::Schedule(s) = c {
                schedule(s);
            }
        }
    }
    let mut inputs = Vec::new();
    for c in rule.trigger_groups.iter().flat_map(|g| &g.conditions) {
        if let Condition::Device {
            source, key, value, ..
        } = c
        {
            let (device_id, profile_id) = match *source {
                DeviceSource::Device(id) => (id, None),
                DeviceSource::Profile(p) => (DeviceId(uuid::Uuid::from_u128(7)), Some(p)),
            };
            let mut values: Vec<Value> = vec![
                Value::Integer(1),
                Value::Float(-0.5),
                Value::Bool(true),
                Value::String(key.clone()),
            ];
            values.extend(Value::from_json(value.clone()));
            if let Some(items) = value.as_array() {
                values.extend(items.iter().cloned().filter_map(Value::from_json));
            }
            for v in values {
                let kv = vec![KeyValue {
                    key: key.clone(),
                    ts: NOW,
                    value: v.clone(),
                }];
                for data in [
                    RuleInputData::Telemetry { values: kv.clone() },
                    RuleInputData::Attributes { values: kv },
                    RuleInputData::Event {
                        method: key.clone(),
                        params: v.to_json(),
                    },
                ] {
                    inputs.push(RuleInput {
                        device_id,
                        tenant_id: rule.tenant_id,
                        profile_id,
                        ts: NOW,
                        data,
                    });
                }
            }
            for online in [true, false] {
                inputs.push(RuleInput {
                    device_id,
                    tenant_id: rule.tenant_id,
                    profile_id,
                    ts: NOW,
                    data: RuleInputData::Status { online },
                });
            }
        }
    }
    let mut engine = Evaluator::new();
    engine.load([rule.clone()], NOW);
    let mut now = NOW;
    for input in inputs.iter().take(64) {
        let _ = engine.on_input(input, now);
        now += 1000;
    }
    // Drive the clock through a few deadlines (schedules, durations, time ranges).
    for _ in 0..8 {
        match engine.next_deadline() {
            Some(d) if d <= MAX_TIMESTAMP => {
                now = now.max(d);
                let _ = engine.tick(now);
            }
            _ => break,
        }
    }
    let _ = engine.take_dirty(now);
    // Reloading the same rule keeps its state.
    engine.load([rule], now);
}

fn time_range(b: &[u8]) {
    let mut b = b.to_vec();
    b.resize(20, 0);
    let now = i64::from_le_bytes(b[0..8].try_into().unwrap()).rem_euclid(MAX_TIMESTAMP + 1);
    let start = u16::from_le_bytes([b[8], b[9]]);
    let end = u16::from_le_bytes([b[10], b[11]]);
    let offset = i32::from_le_bytes(b[12..16].try_into().unwrap());
    let weekdays: Vec<u8> = b[16..20].iter().copied().filter(|d| *d != 0).collect();
    // Any stored values: no panic.
    let _ = in_time_range(now, start, end, &weekdays, offset);
    let _ = next_time_range_change(now, start, end, &weekdays, offset);
    // Values the rule validator accepts: the two functions agree.
    let (start, end) = (start % 1440, end % 1440);
    let offset = offset % (14 * 60 + 1);
    let weekdays: Vec<u8> = weekdays.iter().map(|d| d % 7 + 1).collect();
    let inside = in_time_range(now, start, end, &weekdays, offset);
    if let Some(change) = next_time_range_change(now, start, end, &weekdays, offset) {
        assert!(change > now, "next change {change} not after {now}");
        // Nothing changes before the next change.
        assert_eq!(
            in_time_range(change - 1, start, end, &weekdays, offset),
            inside,
            "window changed before {change} (now {now})"
        );
    }
}
