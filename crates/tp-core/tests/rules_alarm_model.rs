//! Property: random value sequences against a threshold (with and without a "held for
//! N seconds" window, with acknowledgements in between) produce exactly the alarm
//! transitions of a simple reference model, and never two raises without a clear.

use proptest::prelude::*;
use serde_json::json;
use tp_core::rules::alarm::{AlarmStep, decide};
use tp_core::rules::eval::Evaluator;
use tp_core::rules::{
    AlarmStatus, Condition, DataKind, DeviceSource, Operator, Rule, RuleId, RuleInput,
    RuleInputData, TriggerGroup,
};
use tp_core::{DeviceId, KeyValue, TenantId, Value};

#[derive(Debug, Clone)]
enum Step {
    /// Advance the clock by `dt` seconds, then the device reports `v`.
    Sample { dt: u32, v: Value },
    /// A user acknowledges the open alarm (if any).
    Ack,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    Raise,
    Repeat,
    Clear,
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        (-3i64..=3).prop_map(Value::Integer),
        (-3i64..=3).prop_map(|i| Value::Float(i as f64 + 0.5)),
        (-3i64..=3).prop_map(|i| Value::Float(i as f64)),
    ]
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![
            8 => (0u32..40, value()).prop_map(|(dt, v)| Step::Sample { dt, v }),
            1 => Just(Step::Ack),
        ],
        0..60,
    )
}

/// The reference: raised when the value has been above the threshold for `hold`
/// seconds (at once when `hold` is 0), each further sample above it while raised is a
/// repeat, cleared when a sample is at or below it.
fn reference(steps: &[Step], threshold: f64, hold: i64) -> Vec<Out> {
    let mut out = Vec::new();
    let (mut now, mut held, mut since, mut raised) = (0i64, false, 0i64, false);
    for step in steps {
        let Step::Sample { dt, v } = step else {
            continue;
        };
        now += i64::from(*dt) * 1000;
        if held && !raised && since + hold * 1000 <= now {
            raised = true;
            out.push(Out::Raise);
        }
        let above = v.as_f64().is_some_and(|x| x > threshold);
        if above {
            if !held {
                held = true;
                since = now;
            }
            if raised {
                out.push(Out::Repeat);
            } else if now - since >= hold * 1000 {
                raised = true;
                out.push(Out::Raise);
            }
        } else {
            held = false;
            if raised {
                raised = false;
                out.push(Out::Clear);
            }
        }
    }
    out
}

fn engine(steps: &[Step], threshold: serde_json::Value, hold: u32) -> Vec<Out> {
    let tenant = TenantId::new();
    let device = DeviceId::new();
    let rule = Rule {
        id: RuleId::new(),
        tenant_id: tenant,
        name: "hot".into(),
        description: None,
        enabled: true,
        trigger_groups: vec![TriggerGroup {
            conditions: vec![Condition::Device {
                source: DeviceSource::Device(device),
                data: DataKind::Telemetry,
                key: "temp".into(),
                operator: Operator::Gt,
                value: threshold,
                duration_secs: (hold > 0).then_some(hold),
            }],
        }],
        actions: vec![],
        created_at: 0,
        updated_at: 0,
    };
    let mut ev = Evaluator::new();
    ev.load([rule], 0);
    let mut open: Option<AlarmStatus> = None;
    let mut out = Vec::new();
    let mut apply = |transitions: Vec<tp_core::rules::eval::Transition>,
                     open: &mut Option<AlarmStatus>| {
        for t in transitions {
            match decide(*open, t.kind) {
                AlarmStep::Raise => {
                    *open = Some(AlarmStatus::Active);
                    out.push(Out::Raise);
                }
                AlarmStep::Repeat => out.push(Out::Repeat),
                AlarmStep::Clear => {
                    *open = None;
                    out.push(Out::Clear);
                }
                AlarmStep::Nothing => {}
            }
        }
    };
    let mut now = 0i64;
    for step in steps {
        match step {
            Step::Ack => {
                if open.is_some() {
                    open = Some(AlarmStatus::Acknowledged);
                }
            }
            Step::Sample { dt, v } => {
                now += i64::from(*dt) * 1000;
                while let Some(d) = ev.next_deadline().filter(|d| *d <= now) {
                    let t = ev.tick(d);
                    apply(t, &mut open);
                }
                let input = RuleInput {
                    device_id: device,
                    tenant_id: tenant,
                    profile_id: None,
                    ts: now,
                    data: RuleInputData::Telemetry {
                        values: vec![KeyValue {
                            key: "temp".into(),
                            ts: now,
                            value: v.clone(),
                        }],
                    },
                };
                let t = ev.on_input(&input, now);
                apply(t, &mut open);
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn alarm_transitions_match_the_reference_model(
        steps in steps(),
        hold in prop_oneof![Just(0u32), Just(10), Just(30)],
        float_threshold in any::<bool>(),
    ) {
        let threshold = if float_threshold { json!(0.0) } else { json!(0) };
        let got = engine(&steps, threshold, hold);
        let want = reference(&steps, 0.0, i64::from(hold));
        prop_assert_eq!(&got, &want);
        // Never two raises without a clear in between; repeats only while raised.
        let mut raised = false;
        for o in &got {
            match o {
                Out::Raise => { prop_assert!(!raised); raised = true; }
                Out::Repeat => prop_assert!(raised),
                Out::Clear => { prop_assert!(raised); raised = false; }
            }
        }
    }
}
