//! The alarm lifecycle as a small pure state machine: what a rule transition does to
//! the open alarm of its rule and device. The runtime loads the open alarm, asks
//! [`decide`], and stores what [`raise`], [`repeat`] or [`clear`] produced.

use super::eval::TransitionKind;
use super::model::{
    Alarm, AlarmEvent, AlarmEventKind, AlarmId, AlarmSeverity, AlarmStatus, RuleId,
};
use crate::model::{DeviceId, TenantId, Timestamp};

/// What to do with the alarm of a rule and device after a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlarmStep {
    /// No open alarm and the rule fired: create one.
    Raise,
    /// An alarm is open (active or acknowledged) and the rule fired or still holds:
    /// count another occurrence; an acknowledged alarm stays acknowledged.
    Repeat,
    /// An alarm is open and the condition stopped: clear it.
    Clear,
    /// Nothing to do (cleared without an open alarm, or a repeat of a condition whose
    /// alarm a user already cleared: edge-triggered, it is raised again only after the
    /// condition has stopped and returned).
    Nothing,
}

/// The step for `transition` given the status of the open alarm (`None` = no open
/// alarm; a cleared alarm counts as none).
pub fn decide(open: Option<AlarmStatus>, transition: TransitionKind) -> AlarmStep {
    let open = open.filter(|s| s.is_open());
    match (open, transition) {
        (None, TransitionKind::Fired | TransitionKind::Pulse) => AlarmStep::Raise,
        (None, TransitionKind::Repeated | TransitionKind::Cleared) => AlarmStep::Nothing,
        (Some(_), TransitionKind::Fired | TransitionKind::Pulse | TransitionKind::Repeated) => {
            AlarmStep::Repeat
        }
        (Some(_), TransitionKind::Cleared) => AlarmStep::Clear,
    }
}

/// What a new alarm says.
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmSpec {
    /// Owning tenant.
    pub tenant_id: TenantId,
    /// The rule.
    pub rule_id: RuleId,
    /// The device (none for rule-wide scopes).
    pub device_id: Option<DeviceId>,
    /// Severity.
    pub severity: AlarmSeverity,
    /// Title.
    pub title: String,
    /// Description.
    pub description: Option<String>,
    /// The data that fired it.
    pub details: serde_json::Value,
}

/// A new active alarm with one occurrence, and its `Raised` history entry.
pub fn raise(spec: AlarmSpec, now: Timestamp) -> (Alarm, AlarmEvent) {
    let alarm = Alarm {
        id: AlarmId::new(),
        tenant_id: spec.tenant_id,
        rule_id: Some(spec.rule_id),
        device_id: spec.device_id,
        severity: spec.severity,
        status: AlarmStatus::Active,
        title: spec.title,
        description: spec.description,
        occurrences: 1,
        details: spec.details,
        created_at: now,
        updated_at: now,
        acknowledged_at: None,
        acknowledged_by: None,
        cleared_at: None,
    };
    let event = history(&alarm, AlarmEventKind::Raised, now, None);
    (alarm, event)
}

/// Counts another occurrence of an open alarm (severity and details follow the latest
/// firing); the status is kept, so an acknowledgement survives repeats.
pub fn repeat(
    alarm: &mut Alarm,
    severity: AlarmSeverity,
    details: serde_json::Value,
    now: Timestamp,
) -> AlarmEvent {
    alarm.occurrences = alarm.occurrences.saturating_add(1);
    alarm.severity = severity;
    alarm.details = details;
    alarm.updated_at = now;
    history(
        alarm,
        AlarmEventKind::Repeated,
        now,
        Some(format!("occurrence {}", alarm.occurrences)),
    )
}

/// Clears an open alarm because its condition stopped.
pub fn clear(alarm: &mut Alarm, now: Timestamp) -> AlarmEvent {
    alarm.status = AlarmStatus::Cleared;
    alarm.cleared_at = Some(now);
    alarm.updated_at = now;
    history(
        alarm,
        AlarmEventKind::Cleared,
        now,
        Some("condition no longer holds".to_owned()),
    )
}

fn history(
    alarm: &Alarm,
    kind: AlarmEventKind,
    now: Timestamp,
    text: Option<String>,
) -> AlarmEvent {
    AlarmEvent {
        alarm_id: alarm.id,
        tenant_id: alarm.tenant_id,
        ts: now,
        kind,
        user_id: None,
        text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_raise_repeat_ack_clear() {
        use TransitionKind::*;
        assert_eq!(decide(None, Fired), AlarmStep::Raise);
        assert_eq!(decide(None, Pulse), AlarmStep::Raise);
        assert_eq!(decide(None, Repeated), AlarmStep::Nothing);
        assert_eq!(decide(None, Cleared), AlarmStep::Nothing);
        assert_eq!(decide(Some(AlarmStatus::Cleared), Fired), AlarmStep::Raise);
        assert_eq!(decide(Some(AlarmStatus::Active), Fired), AlarmStep::Repeat);
        assert_eq!(
            decide(Some(AlarmStatus::Active), Repeated),
            AlarmStep::Repeat
        );
        assert_eq!(
            decide(Some(AlarmStatus::Acknowledged), Repeated),
            AlarmStep::Repeat
        );
        assert_eq!(decide(Some(AlarmStatus::Active), Cleared), AlarmStep::Clear);
        assert_eq!(
            decide(Some(AlarmStatus::Acknowledged), Cleared),
            AlarmStep::Clear
        );

        let spec = AlarmSpec {
            tenant_id: TenantId::new(),
            rule_id: RuleId::new(),
            device_id: Some(DeviceId::new()),
            severity: AlarmSeverity::Major,
            title: "hot".into(),
            description: None,
            details: serde_json::json!({"temp": 35}),
        };
        let (mut alarm, ev) = raise(spec, 10);
        assert_eq!(
            (alarm.status, alarm.occurrences, ev.kind),
            (AlarmStatus::Active, 1, AlarmEventKind::Raised)
        );
        alarm.status = AlarmStatus::Acknowledged;
        let ev = repeat(
            &mut alarm,
            AlarmSeverity::Critical,
            serde_json::json!({"temp": 36}),
            20,
        );
        assert_eq!(ev.kind, AlarmEventKind::Repeated);
        assert_eq!(alarm.status, AlarmStatus::Acknowledged);
        assert_eq!(alarm.occurrences, 2);
        assert_eq!(alarm.severity, AlarmSeverity::Critical);
        let ev = clear(&mut alarm, 30);
        assert_eq!(ev.kind, AlarmEventKind::Cleared);
        assert_eq!(alarm.status, AlarmStatus::Cleared);
        assert_eq!(alarm.cleared_at, Some(30));
    }
}
