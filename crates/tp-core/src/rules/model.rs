//! What users define (rules, scenes, notification channels) and what the engine
//! produces (alarms, alarm history, notification records). Shapes follow ThingsPanel's
//! scene automation (trigger condition groups, actions, alarm configs), fixed where it
//! was vague: typed operators and values, an explicit alarm lifecycle.

use std::fmt;

use serde::{Deserialize, Serialize};

pub use crate::model::{AlarmId, ChannelId, NotificationId, RuleId, SceneId};
use crate::model::{DeviceId, Page, Paged, ProfileId, TenantId, Timestamp, UserId};

/// A rule: fires its actions when any trigger group holds (groups are OR, the
/// conditions inside a group are AND).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    /// Identifier.
    pub id: RuleId,
    /// Owning tenant; a rule only sees its tenant's devices.
    pub tenant_id: TenantId,
    /// Display name.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// Disabled rules are not evaluated.
    pub enabled: bool,
    /// OR of AND-groups.
    pub trigger_groups: Vec<TriggerGroup>,
    /// Run in order when the rule fires.
    pub actions: Vec<Action>,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
}

/// Conditions that must all hold at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TriggerGroup {
    /// AND-ed conditions. A group with a [`Condition::Schedule`] fires when the
    /// schedule is due and every other condition holds at that time.
    #[cfg_attr(feature = "openapi", schema(min_items = 1))]
    pub conditions: Vec<Condition>,
}

/// One condition of a trigger group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Condition {
    /// A value of one device, or of every device of a profile (then each device is
    /// evaluated, and alarmed, on its own).
    Device {
        /// Which device(s).
        source: DeviceSource,
        /// Which kind of data.
        data: DataKind,
        /// Telemetry/attribute key or event method; ignored for [`DataKind::Status`].
        #[serde(default)]
        key: String,
        /// Comparison.
        operator: Operator,
        /// Right-hand side: a number, string or bool; `[lo, hi]` for `between`; an
        /// array for `in`; for status `"online"`/`"offline"` (or `true`/`false`).
        value: serde_json::Value,
        /// The comparison must hold continuously for this long before the condition
        /// is true ("held for N seconds").
        #[serde(default)]
        #[serde(deserialize_with = "crate::serde_int::optional")]
        duration_secs: Option<u32>,
    },
    /// Only true inside a daily time window (ThingsPanel type 22), evaluated in UTC
    /// plus `utc_offset_minutes`.
    TimeRange {
        /// Window start, minutes after midnight.
        #[cfg_attr(feature = "openapi", schema(maximum = 1439))]
        #[serde(deserialize_with = "crate::serde_int::integer")]
        start_minute: u16,
        /// Window end, minutes after midnight (may be smaller than start: crosses midnight).
        #[cfg_attr(feature = "openapi", schema(maximum = 1439))]
        #[serde(deserialize_with = "crate::serde_int::integer")]
        end_minute: u16,
        /// Days the window applies, 1 = Monday .. 7 = Sunday; empty = every day.
        #[serde(default)]
        #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::weekdays))]
        #[serde(deserialize_with = "crate::serde_int::list")]
        weekdays: Vec<u8>,
        /// Offset of the local time zone from UTC.
        #[serde(default)]
        #[cfg_attr(feature = "openapi", schema(minimum = -840, maximum = 840))]
        #[serde(deserialize_with = "crate::serde_int::integer")]
        utc_offset_minutes: i32,
    },
    /// A time trigger (ThingsPanel types 20/21).
    Schedule(Schedule),
}

/// Which devices a device condition watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum DeviceSource {
    /// One device.
    Device(DeviceId),
    /// Every device of a profile.
    Profile(ProfileId),
}

/// Kind of device data a condition compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DataKind {
    /// Telemetry value of `key`.
    Telemetry,
    /// Attribute value of `key`.
    Attribute,
    /// Event `method` (`key`); the operator compares `params` when `value` is not null.
    Event,
    /// Online/offline.
    Status,
}

/// Comparison operators (ThingsPanel's `=`, `!=`, `>`, `<`, `>=`, `<=`, `between`, `in`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Operator {
    /// Equal.
    #[serde(rename = "=")]
    Eq,
    /// Not equal.
    #[serde(rename = "!=")]
    Ne,
    /// Greater than.
    #[serde(rename = ">")]
    Gt,
    /// Less than.
    #[serde(rename = "<")]
    Lt,
    /// Greater or equal.
    #[serde(rename = ">=")]
    Ge,
    /// Less or equal.
    #[serde(rename = "<=")]
    Le,
    /// Inclusive range `[lo, hi]`.
    #[serde(rename = "between")]
    Between,
    /// Member of a list.
    #[serde(rename = "in")]
    In,
}

/// A time trigger, optionally limited to a validity range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Schedule {
    /// When it fires.
    pub kind: ScheduleKind,
    /// Does not fire before this time.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<i64>))]
    #[serde(deserialize_with = "crate::serde_int::optional")]
    pub not_before: Option<Timestamp>,
    /// Does not fire after this time.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<i64>))]
    #[serde(deserialize_with = "crate::serde_int::optional")]
    pub not_after: Option<Timestamp>,
}

/// When a [`Schedule`] fires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Once, at `at`.
    Once {
        /// Fire time (ms since the Unix epoch).
        #[cfg_attr(feature = "openapi", schema(value_type = i64))]
        #[serde(deserialize_with = "crate::serde_int::integer")]
        at: Timestamp,
    },
    /// Every `interval_secs`, counted from `not_before` (or from the rule's creation).
    Periodic {
        /// Period in seconds (at least 1).
        #[cfg_attr(feature = "openapi", schema(minimum = 1))]
        #[serde(deserialize_with = "crate::serde_int::integer")]
        interval_secs: u32,
    },
    /// A cron expression with seconds (`sec min hour day-of-month month day-of-week`),
    /// evaluated in UTC.
    Cron {
        /// The expression.
        expression: String,
    },
}

/// Something a rule or scene does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Action {
    /// Send a command `{"method","params"}` to a device.
    Command {
        /// Which device.
        target: ActionTarget,
        /// Command identifier.
        #[cfg_attr(feature = "openapi", schema(min_length = 1, pattern = r"\S"))]
        method: String,
        /// Command parameters.
        #[serde(default)]
        params: serde_json::Value,
    },
    /// Set attributes on a device.
    SetAttributes {
        /// Which device.
        target: ActionTarget,
        /// Attribute values (a non-empty JSON object).
        #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::non_empty_values))]
        values: serde_json::Value,
    },
    /// Telemetry control (`devices/telemetry/control/{device_number}`).
    TelemetryControl {
        /// Which device.
        target: ActionTarget,
        /// Values (a non-empty JSON object).
        #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::non_empty_values))]
        values: serde_json::Value,
    },
    /// Raise (or, while one is open, update) the alarm of this rule and device, and
    /// notify the channels when it is newly raised.
    RaiseAlarm {
        /// Severity.
        severity: AlarmSeverity,
        /// Short title.
        #[cfg_attr(feature = "openapi", schema(min_length = 1, pattern = r"\S"))]
        title: String,
        /// Longer text.
        #[serde(default)]
        description: Option<String>,
        /// Channels notified when the alarm is raised (and cleared).
        #[serde(default)]
        channels: Vec<ChannelId>,
    },
    /// Clear the open alarm of this rule and device, if any.
    ClearAlarm,
    /// Notify a channel (webhook or email) with a subject and body.
    Notify {
        /// The channel.
        channel: ChannelId,
        /// Subject (email) / title (webhook).
        #[cfg_attr(feature = "openapi", schema(min_length = 1, pattern = r"\S"))]
        subject: String,
        /// Body text.
        #[serde(default)]
        body: String,
    },
    /// Run a manual scene's actions.
    RunScene {
        /// The scene.
        scene: SceneId,
    },
}

/// The device an action acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum ActionTarget {
    /// A fixed device.
    Device(DeviceId),
    /// The device whose data fired the rule (ThingsPanel's device-class action);
    /// nothing happens when a schedule fired the rule.
    TriggeringDevice,
}

/// A named list of actions run on demand (`POST /api/v1/scenes/{id}/run`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scene {
    /// Identifier.
    pub id: SceneId,
    /// Owning tenant.
    pub tenant_id: TenantId,
    /// Display name.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// Run in order. [`ActionTarget::TriggeringDevice`] and alarm actions do nothing here.
    pub actions: Vec<Action>,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
}

/// How bad an alarm is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AlarmSeverity {
    /// Service-affecting, act now.
    Critical,
    /// Serious.
    Major,
    /// Minor.
    Minor,
    /// Potential problem.
    Warning,
    /// For information.
    Info,
}

impl AlarmSeverity {
    /// Stable lower-case name (storage and API).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::Major => "major",
            Self::Minor => "minor",
            Self::Warning => "warning",
            Self::Info => "info",
        }
    }

    /// Parses [`Self::as_str`].
    pub fn parse(s: &str) -> crate::Result<Self> {
        Ok(match s {
            "critical" => Self::Critical,
            "major" => Self::Major,
            "minor" => Self::Minor,
            "warning" => Self::Warning,
            "info" => Self::Info,
            other => {
                return Err(crate::Error::invalid(
                    "severity",
                    format!("unknown severity {other:?}"),
                ));
            }
        })
    }
}

/// Alarm lifecycle: active -> acknowledged -> cleared (or active -> cleared). An alarm
/// that is active or acknowledged is *open*: at most one open alarm exists per rule
/// and device, and a repeat of its condition updates it instead of adding another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AlarmStatus {
    /// Raised, nobody has looked at it.
    Active,
    /// A user acknowledged it; the condition may still hold.
    Acknowledged,
    /// The condition no longer holds, or a user cleared it. Final.
    Cleared,
}

impl AlarmStatus {
    /// Stable lower-case name (storage and API).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Acknowledged => "acknowledged",
            Self::Cleared => "cleared",
        }
    }

    /// Parses [`Self::as_str`].
    pub fn parse(s: &str) -> crate::Result<Self> {
        Ok(match s {
            "active" => Self::Active,
            "acknowledged" => Self::Acknowledged,
            "cleared" => Self::Cleared,
            other => {
                return Err(crate::Error::invalid(
                    "status",
                    format!("unknown alarm status {other:?}"),
                ));
            }
        })
    }

    /// Active or acknowledged.
    pub fn is_open(self) -> bool {
        !matches!(self, Self::Cleared)
    }
}

/// An alarm raised by a rule (or by a user through the API).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alarm {
    /// Identifier.
    pub id: AlarmId,
    /// Owning tenant.
    pub tenant_id: TenantId,
    /// The rule that raised it.
    pub rule_id: Option<RuleId>,
    /// The device it is about (none for schedule-fired rules).
    pub device_id: Option<DeviceId>,
    /// Severity (a repeat may change it).
    pub severity: AlarmSeverity,
    /// Lifecycle state.
    pub status: AlarmStatus,
    /// Short title.
    pub title: String,
    /// Longer text.
    pub description: Option<String>,
    /// How many times the condition fired while this alarm was open (1 when raised).
    pub occurrences: u32,
    /// The data that last fired it (free-form JSON, e.g. `{"temp": 41.5}`).
    pub details: serde_json::Value,
    /// Raise time.
    pub created_at: Timestamp,
    /// Last change (repeat, acknowledgement, clear).
    pub updated_at: Timestamp,
    /// When a user acknowledged it.
    pub acknowledged_at: Option<Timestamp>,
    /// Who acknowledged it.
    pub acknowledged_by: Option<UserId>,
    /// When it was cleared.
    pub cleared_at: Option<Timestamp>,
}

/// What happened to an alarm (its history, including comments).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AlarmEventKind {
    /// Raised.
    Raised,
    /// The condition fired again while open.
    Repeated,
    /// A user acknowledged it.
    Acknowledged,
    /// Cleared (by the rule or a user).
    Cleared,
    /// A user commented.
    Comment,
}

/// One entry of an alarm's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlarmEvent {
    /// The alarm.
    pub alarm_id: AlarmId,
    /// Owning tenant.
    pub tenant_id: TenantId,
    /// When.
    pub ts: Timestamp,
    /// What.
    pub kind: AlarmEventKind,
    /// The user who did it (none for the rule engine).
    pub user_id: Option<UserId>,
    /// Comment text, or a description of the change.
    pub text: Option<String>,
}

/// Filter for listing alarms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlarmFilter {
    /// Only this device's alarms.
    pub device_id: Option<DeviceId>,
    /// Only this rule's alarms.
    pub rule_id: Option<RuleId>,
    /// Only alarms in one of these states (empty = all).
    pub statuses: Vec<AlarmStatus>,
    /// Only this severity.
    pub severity: Option<AlarmSeverity>,
    /// Paging; newest first.
    pub page: Page,
}

/// Alarm counts (for a tenant or one device).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmCounts {
    /// Active alarms.
    pub active: u64,
    /// Acknowledged, not cleared.
    pub acknowledged: u64,
    /// Cleared.
    pub cleared: u64,
    /// Open (active + acknowledged) per severity, keyed by [`AlarmSeverity::as_str`].
    pub open_by_severity: std::collections::BTreeMap<String, u64>,
}

/// Where notifications go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotificationChannel {
    /// Identifier.
    pub id: ChannelId,
    /// Owning tenant.
    pub tenant_id: TenantId,
    /// Display name.
    pub name: String,
    /// Disabled channels record a skipped notification instead of sending.
    pub enabled: bool,
    /// Transport and its settings.
    pub kind: ChannelKind,
    /// Creation time.
    pub created_at: Timestamp,
}

/// A channel's transport.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChannelKind {
    /// HTTP POST of a JSON body, signed with HMAC-SHA256 under `secret` over
    /// `"<X-TP-Timestamp>.<body>"` (header `X-TP-Signature: sha256=<hex>`; the signed
    /// timestamp lets receivers reject replays), retried with backoff. The exact
    /// scheme is documented in `tp_rules::notify`.
    Webhook {
        /// Receiver URL (http or https).
        url: String,
        /// Signing secret; never returned by the API or logged.
        secret: String,
    },
    /// Email through the platform's configured SMTP server.
    Email {
        /// Recipients.
        to: Vec<String>,
    },
}

impl fmt::Debug for ChannelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Webhook { url, .. } => f
                .debug_struct("Webhook")
                .field("url", url)
                .finish_non_exhaustive(),
            Self::Email { to } => f.debug_struct("Email").field("to", to).finish(),
        }
    }
}

/// Delivery state of a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum NotificationStatus {
    /// Being delivered (retries pending).
    Pending,
    /// Delivered (webhook 2xx, SMTP accepted).
    Sent,
    /// Gave up after the last retry.
    Failed,
    /// The channel was disabled.
    Skipped,
}

/// One notification and its outcome (the notification history).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotificationRecord {
    /// Identifier.
    pub id: NotificationId,
    /// Owning tenant.
    pub tenant_id: TenantId,
    /// The channel.
    pub channel_id: ChannelId,
    /// The alarm it is about, if any.
    pub alarm_id: Option<AlarmId>,
    /// The rule that caused it, if any.
    pub rule_id: Option<RuleId>,
    /// Subject / title.
    pub subject: String,
    /// Body text.
    pub body: String,
    /// Delivery state.
    pub status: NotificationStatus,
    /// Delivery attempts made.
    pub attempts: u32,
    /// Outcome detail: HTTP status, SMTP reply or the error of the last attempt.
    pub detail: Option<String>,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
}

/// Persisted evaluation state of one rule for one scope (a device, or the rule's
/// schedule), so "held for N seconds" windows, open-alarm knowledge and next fire
/// times survive a restart. The engine owns the JSON's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleState {
    /// The rule.
    pub rule_id: RuleId,
    /// Scope within the rule, e.g. a device id or `"schedule:0"`.
    pub scope: String,
    /// Engine-defined state.
    pub state: serde_json::Value,
    /// Last change.
    pub updated_at: Timestamp,
}

/// A page of rules (alias kept for API docs).
pub type RulePage = Paged<Rule>;
