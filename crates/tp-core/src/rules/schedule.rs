//! Pure time arithmetic of rules: next fire times of [`Schedule`]s and the daily
//! [`Condition::TimeRange`](super::Condition::TimeRange) filter. No clock is read here:
//! every function takes the time it reasons about, so the engine can be driven by a
//! manual clock in tests.

use std::str::FromStr;

use chrono::{DateTime, Utc};

use super::model::{Schedule, ScheduleKind};
use crate::model::Timestamp;
use crate::{Error, Result};

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;

/// A [`Schedule`] prepared for repeated next-fire-time queries (the cron expression
/// parsed once).
#[derive(Debug, Clone)]
pub struct CompiledSchedule {
    kind: Kind,
    not_before: Option<Timestamp>,
    not_after: Option<Timestamp>,
}

#[derive(Debug, Clone)]
enum Kind {
    Once(Timestamp),
    Periodic { anchor: Timestamp, interval_ms: i64 },
    Cron(Box<cron::Schedule>),
}

impl CompiledSchedule {
    /// Prepares `schedule`; `created_at` anchors periodic schedules without `not_before`.
    ///
    /// # Errors
    /// [`Error::Invalid`] for an unparsable cron expression or a zero interval.
    pub fn new(schedule: &Schedule, created_at: Timestamp) -> Result<Self> {
        let kind = match &schedule.kind {
            ScheduleKind::Once { at } => Kind::Once(*at),
            ScheduleKind::Periodic { interval_secs } => {
                if *interval_secs == 0 {
                    return Err(Error::invalid("interval_secs", "must be at least 1"));
                }
                Kind::Periodic {
                    anchor: schedule.not_before.unwrap_or(created_at),
                    interval_ms: i64::from(*interval_secs) * 1000,
                }
            }
            ScheduleKind::Cron { expression } => Kind::Cron(Box::new(
                cron::Schedule::from_str(expression)
                    .map_err(|e| Error::invalid("expression", e.to_string()))?,
            )),
        };
        Ok(Self {
            kind,
            not_before: schedule.not_before,
            not_after: schedule.not_after,
        })
    }

    /// The first fire time strictly after `after`, within `not_before..=not_after`;
    /// `None` when the schedule will not fire again.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        // Nothing before not_before: search from just before it.
        let after = match self.not_before {
            Some(nb) => after.max(nb.saturating_sub(1)),
            None => after,
        };
        let next = match &self.kind {
            Kind::Once(at) => (*at > after).then_some(*at)?,
            Kind::Periodic {
                anchor,
                interval_ms,
            } => {
                if after < *anchor {
                    *anchor
                } else {
                    let k = (after - anchor) / interval_ms + 1;
                    anchor.checked_add(k.checked_mul(*interval_ms)?)?
                }
            }
            Kind::Cron(schedule) => {
                let from = DateTime::<Utc>::from_timestamp_millis(after)?;
                schedule.after(&from).next()?.timestamp_millis()
            }
        };
        match self.not_after {
            Some(na) if next > na => None,
            _ => Some(next),
        }
    }
}

/// Whether `now` lies in the daily window `[start_minute, end_minute)` of the local
/// time `utc_offset_minutes` away from UTC, on one of `weekdays` (1 = Monday ..
/// 7 = Sunday, empty = every day). A window whose end is before its start crosses
/// midnight; equal bounds mean the whole day.
pub fn in_time_range(
    now: Timestamp,
    start_minute: u16,
    end_minute: u16,
    weekdays: &[u8],
    utc_offset_minutes: i32,
) -> bool {
    let local = now.saturating_add(i64::from(utc_offset_minutes) * MINUTE_MS);
    let days = local.div_euclid(DAY_MS);
    let minute = local.rem_euclid(DAY_MS) / MINUTE_MS;
    // 1970-01-01 was a Thursday (ISO weekday 4).
    let weekday = ((days + 3).rem_euclid(7) + 1) as u8;
    if !weekdays.is_empty() && !weekdays.contains(&weekday) {
        return false;
    }
    let (start, end) = (i64::from(start_minute), i64::from(end_minute));
    match start.cmp(&end) {
        std::cmp::Ordering::Less => minute >= start && minute < end,
        std::cmp::Ordering::Greater => minute >= start || minute < end,
        std::cmp::Ordering::Equal => true,
    }
}

/// The first instant after `now` at which [`in_time_range`] with the same window can
/// change its answer (a window start or end, or a local midnight when `weekdays`
/// restricts the days); `None` when it never changes (a whole-day window on every day).
pub fn next_time_range_change(
    now: Timestamp,
    start_minute: u16,
    end_minute: u16,
    weekdays: &[u8],
    utc_offset_minutes: i32,
) -> Option<Timestamp> {
    let offset = i64::from(utc_offset_minutes) * MINUTE_MS;
    let local = now.saturating_add(offset);
    let day = local.div_euclid(DAY_MS) * DAY_MS;
    let mut marks = Vec::with_capacity(3);
    if start_minute != end_minute {
        marks.push(i64::from(start_minute) * MINUTE_MS);
        marks.push(i64::from(end_minute) * MINUTE_MS);
    }
    if !weekdays.is_empty() {
        marks.push(0);
    }
    [day, day + DAY_MS]
        .into_iter()
        .flat_map(|d| marks.iter().map(move |m| d + m))
        .filter(|t| *t > local)
        .min()
        .map(|t| t - offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_range_changes_at_its_bounds_and_at_midnight_on_weekdays() {
        const H: i64 = 3_600_000;
        // 08:00-18:00 UTC every day.
        assert_eq!(next_time_range_change(0, 480, 1080, &[], 0), Some(8 * H));
        assert_eq!(
            next_time_range_change(8 * H, 480, 1080, &[], 0),
            Some(18 * H)
        );
        assert_eq!(
            next_time_range_change(18 * H, 480, 1080, &[], 0),
            Some(32 * H),
            "tomorrow 08:00"
        );
        // 22:00-02:00 crossing midnight.
        assert_eq!(
            next_time_range_change(23 * H, 1320, 120, &[], 0),
            Some(26 * H)
        );
        // Whole day, every day: never changes; on weekdays: at local midnight.
        assert_eq!(next_time_range_change(5 * H, 0, 0, &[], 0), None);
        assert_eq!(next_time_range_change(5 * H, 0, 0, &[1], 0), Some(24 * H));
        // UTC+8: 08:00 local is 00:00 UTC.
        assert_eq!(
            next_time_range_change(H, 480, 1080, &[], 480),
            Some(10 * H),
            "18:00 local"
        );
        // Every answer flips (or, at a midnight, may flip) exactly there.
        for now in (0..3 * 24 * H).step_by(17 * 60_000) {
            let next = next_time_range_change(now, 480, 1080, &[1, 2], 60).unwrap();
            assert!(next > now);
            let before = in_time_range(now, 480, 1080, &[1, 2], 60);
            assert_eq!(in_time_range(next - 1, 480, 1080, &[1, 2], 60), before);
        }
    }

    fn sched(kind: ScheduleKind, nb: Option<i64>, na: Option<i64>) -> CompiledSchedule {
        CompiledSchedule::new(
            &Schedule {
                kind,
                not_before: nb,
                not_after: na,
            },
            1_000,
        )
        .expect("valid")
    }

    #[test]
    fn once_fires_once_inside_its_validity() {
        let s = sched(ScheduleKind::Once { at: 5_000 }, None, None);
        assert_eq!(s.next_after(0), Some(5_000));
        assert_eq!(s.next_after(4_999), Some(5_000));
        assert_eq!(s.next_after(5_000), None);
        let late = sched(ScheduleKind::Once { at: 5_000 }, None, Some(4_000));
        assert_eq!(late.next_after(0), None);
        let early = sched(ScheduleKind::Once { at: 5_000 }, Some(6_000), None);
        assert_eq!(early.next_after(0), None);
    }

    #[test]
    fn periodic_counts_from_not_before_or_creation() {
        let s = sched(ScheduleKind::Periodic { interval_secs: 10 }, None, None);
        assert_eq!(s.next_after(0), Some(1_000));
        assert_eq!(s.next_after(1_000), Some(11_000));
        assert_eq!(s.next_after(10_999), Some(11_000));
        assert_eq!(s.next_after(11_000), Some(21_000));
        let bounded = sched(
            ScheduleKind::Periodic { interval_secs: 10 },
            Some(100_000),
            Some(125_000),
        );
        assert_eq!(bounded.next_after(0), Some(100_000));
        assert_eq!(bounded.next_after(110_000), Some(120_000));
        assert_eq!(bounded.next_after(120_000), None);
        let zero = CompiledSchedule::new(
            &Schedule {
                kind: ScheduleKind::Periodic { interval_secs: 0 },
                not_before: None,
                not_after: None,
            },
            0,
        );
        assert!(zero.is_err());
    }

    #[test]
    fn cron_with_seconds_in_utc() {
        // Every minute at second 0.
        let s = sched(
            ScheduleKind::Cron {
                expression: "0 * * * * *".into(),
            },
            None,
            None,
        );
        assert_eq!(s.next_after(0), Some(60_000));
        assert_eq!(s.next_after(60_000), Some(120_000));
        assert_eq!(s.next_after(59_999), Some(60_000));
        // 08:30:00 every day.
        let daily = sched(
            ScheduleKind::Cron {
                expression: "0 30 8 * * *".into(),
            },
            None,
            None,
        );
        assert_eq!(daily.next_after(0), Some(8 * 3_600_000 + 30 * 60_000));
        let bad = CompiledSchedule::new(
            &Schedule {
                kind: ScheduleKind::Cron {
                    expression: "not cron".into(),
                },
                not_before: None,
                not_after: None,
            },
            0,
        );
        assert!(matches!(bad, Err(Error::Invalid { .. })));
    }

    #[test]
    fn time_range_with_weekdays_and_offset() {
        // 1970-01-01 00:00 UTC, a Thursday.
        let thu_0900 = 9 * 60 * MINUTE_MS;
        assert!(in_time_range(thu_0900, 8 * 60, 18 * 60, &[], 0));
        assert!(!in_time_range(thu_0900, 10 * 60, 18 * 60, &[], 0));
        assert!(in_time_range(thu_0900, 8 * 60, 18 * 60, &[4], 0));
        assert!(!in_time_range(thu_0900, 8 * 60, 18 * 60, &[1, 2, 3, 5], 0));
        // UTC+2: it is 11:00 local.
        assert!(!in_time_range(thu_0900, 8 * 60, 10 * 60, &[], 120));
        assert!(in_time_range(thu_0900, 10 * 60, 12 * 60, &[], 120));
        // UTC-10: it is Wednesday 23:00 local.
        assert!(in_time_range(thu_0900, 22 * 60, 6 * 60, &[3], -600));
        assert!(!in_time_range(thu_0900, 22 * 60, 6 * 60, &[4], -600));
        // End exclusive, crossing midnight, whole day.
        assert!(!in_time_range(18 * 60 * MINUTE_MS, 8 * 60, 18 * 60, &[], 0));
        assert!(in_time_range(2 * 60 * MINUTE_MS, 22 * 60, 6 * 60, &[], 0));
        assert!(in_time_range(12 * 60 * MINUTE_MS, 0, 0, &[], 0));
    }
}
