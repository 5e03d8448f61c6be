//! Encodings the SQL backends of [`tp_core::rules::RuleStore`] share.

use std::collections::BTreeMap;

use tp_core::rules::{AlarmCounts, AlarmEventKind, AlarmSeverity, AlarmStatus, NotificationStatus};
use tp_core::{Error, Result};

/// Every severity, for the zeros of [`AlarmCounts::open_by_severity`].
const SEVERITIES: [AlarmSeverity; 5] = [
    AlarmSeverity::Critical,
    AlarmSeverity::Major,
    AlarmSeverity::Minor,
    AlarmSeverity::Warning,
    AlarmSeverity::Info,
];

/// Column value of an [`AlarmEventKind`].
pub(crate) fn event_kind_str(k: AlarmEventKind) -> &'static str {
    match k {
        AlarmEventKind::Raised => "raised",
        AlarmEventKind::Repeated => "repeated",
        AlarmEventKind::Acknowledged => "acknowledged",
        AlarmEventKind::Cleared => "cleared",
        AlarmEventKind::Comment => "comment",
    }
}

/// Parses a column value written by [`event_kind_str`].
pub(crate) fn parse_event_kind(s: &str) -> Result<AlarmEventKind> {
    Ok(match s {
        "raised" => AlarmEventKind::Raised,
        "repeated" => AlarmEventKind::Repeated,
        "acknowledged" => AlarmEventKind::Acknowledged,
        "cleared" => AlarmEventKind::Cleared,
        "comment" => AlarmEventKind::Comment,
        other => {
            return Err(Error::invalid(
                "kind",
                format!("unknown event kind {other:?}"),
            ));
        }
    })
}

/// Column value of a [`NotificationStatus`].
pub(crate) fn notification_status_str(s: NotificationStatus) -> &'static str {
    match s {
        NotificationStatus::Pending => "pending",
        NotificationStatus::Sent => "sent",
        NotificationStatus::Failed => "failed",
        NotificationStatus::Skipped => "skipped",
    }
}

/// Parses a column value written by [`notification_status_str`].
pub(crate) fn parse_notification_status(s: &str) -> Result<NotificationStatus> {
    Ok(match s {
        "pending" => NotificationStatus::Pending,
        "sent" => NotificationStatus::Sent,
        "failed" => NotificationStatus::Failed,
        "skipped" => NotificationStatus::Skipped,
        other => {
            return Err(Error::invalid(
                "status",
                format!("unknown notification status {other:?}"),
            ));
        }
    })
}

/// Builds [`AlarmCounts`] from `(status, severity, count)` groups.
pub(crate) fn alarm_counts(
    groups: impl IntoIterator<Item = (String, String, i64)>,
) -> Result<AlarmCounts> {
    let mut counts = AlarmCounts {
        open_by_severity: SEVERITIES
            .iter()
            .map(|s| (s.as_str().to_owned(), 0))
            .collect::<BTreeMap<_, _>>(),
        ..Default::default()
    };
    for (status, severity, n) in groups {
        let n = n.unsigned_abs();
        let status = AlarmStatus::parse(&status)?;
        match status {
            AlarmStatus::Active => counts.active += n,
            AlarmStatus::Acknowledged => counts.acknowledged += n,
            AlarmStatus::Cleared => counts.cleared += n,
        }
        if status.is_open() {
            let severity = AlarmSeverity::parse(&severity)?;
            *counts
                .open_by_severity
                .entry(severity.as_str().to_owned())
                .or_default() += n;
        }
    }
    Ok(counts)
}

/// The statuses of an alarm filter as column values, `None` for "any".
pub(crate) fn status_filter(statuses: &[AlarmStatus]) -> Option<Vec<String>> {
    (!statuses.is_empty()).then(|| statuses.iter().map(|s| s.as_str().to_owned()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_round_trip() {
        for k in [
            AlarmEventKind::Raised,
            AlarmEventKind::Repeated,
            AlarmEventKind::Acknowledged,
            AlarmEventKind::Cleared,
            AlarmEventKind::Comment,
        ] {
            assert_eq!(parse_event_kind(event_kind_str(k)).unwrap(), k);
            // Same spelling as the API's serde names.
            assert_eq!(
                serde_json::to_value(k).unwrap(),
                serde_json::json!(event_kind_str(k))
            );
        }
        for s in [
            NotificationStatus::Pending,
            NotificationStatus::Sent,
            NotificationStatus::Failed,
            NotificationStatus::Skipped,
        ] {
            assert_eq!(
                parse_notification_status(notification_status_str(s)).unwrap(),
                s
            );
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::json!(notification_status_str(s))
            );
        }
        assert!(parse_event_kind("nope").is_err());
        assert!(parse_notification_status("nope").is_err());
        assert!(alarm_counts([("open".into(), "major".into(), 1)]).is_err());
    }
}
