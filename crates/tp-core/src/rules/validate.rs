//! The checks a rule or scene passes before it is stored, so the engine never loads
//! one it cannot evaluate. Every error names the field by its JSON path (e.g.
//! `trigger_groups[0].conditions[1].value`): [`Error::Invalid`] (HTTP 400) for what
//! the OpenAPI document declares (non-empty lists and texts, minute and day ranges),
//! [`Error::Unprocessable`] (HTTP 422) for what a schema cannot say: ids of devices,
//! profiles, channels and scenes that are not in the tenant, a value that does not
//! fit its operator, a cron expression that does not parse, contradicting fields.

use crate::rules::schedule::CompiledSchedule;
use crate::rules::{
    Action, ActionTarget, Condition, DataKind, DeviceSource, Operator, RuleStore, SceneId,
    TriggerGroup,
};
use crate::{AccessStore, DeviceId, Error, MetadataStore, ProfileId, Result, TenantId, now_ms};

fn is_number(v: &serde_json::Value) -> bool {
    v.is_number()
}

/// Checks a device condition's right-hand side against its operator and data kind.
fn check_value(
    field: &str,
    data: DataKind,
    operator: Operator,
    value: &serde_json::Value,
) -> Result<()> {
    let bad = |reason: &str| Err(Error::unprocessable(format!("{field}.value"), reason));
    if data == DataKind::Status {
        let ok = matches!(operator, Operator::Eq | Operator::Ne)
            && (value.is_boolean() || matches!(value.as_str(), Some("online" | "offline")));
        if !ok {
            return bad(
                r#"a status condition compares with = or != to "online", "offline", true or false"#,
            );
        }
        return Ok(());
    }
    if data == DataKind::Event && value.is_null() {
        // The event itself is the trigger.
        return Ok(());
    }
    match operator {
        Operator::Between => match value.as_array().map(Vec::as_slice) {
            Some([lo, hi]) if is_number(lo) && is_number(hi) => {
                if lo.as_f64() > hi.as_f64() {
                    return bad("between needs [lo, hi] with lo <= hi");
                }
            }
            _ => return bad("between needs a two-element array of numbers [lo, hi]"),
        },
        Operator::In => match value.as_array() {
            Some(items) if !items.is_empty() => {}
            _ => return bad("in needs a non-empty array"),
        },
        Operator::Gt | Operator::Lt | Operator::Ge | Operator::Le => {
            if !is_number(value) {
                return bad("an ordering comparison needs a number");
            }
        }
        Operator::Eq | Operator::Ne => {
            if !(value.is_number() || value.is_string() || value.is_boolean()) {
                return bad("= and != need a number, string or boolean");
            }
        }
    }
    Ok(())
}

async fn device_in_tenant(
    metadata: &dyn MetadataStore,
    tenant: TenantId,
    id: DeviceId,
    field: String,
) -> Result<()> {
    match metadata.get_device(tenant, id).await? {
        Some(_) => Ok(()),
        None => Err(Error::unprocessable(
            field,
            format!("no device {id} in this tenant"),
        )),
    }
}

async fn profile_in_tenant(
    access: &dyn AccessStore,
    tenant: TenantId,
    id: ProfileId,
    field: String,
) -> Result<()> {
    match access.get_profile(tenant, id).await? {
        Some(_) => Ok(()),
        None => Err(Error::unprocessable(
            field,
            format!("no profile {id} in this tenant"),
        )),
    }
}

/// Checks trigger groups: at least one group, each with conditions; operators with
/// fitting values; devices and profiles of the tenant; parsable schedules.
pub async fn validate_trigger_groups(
    metadata: &dyn MetadataStore,
    access: &dyn AccessStore,
    tenant: TenantId,
    groups: &[TriggerGroup],
) -> Result<()> {
    if groups.is_empty() {
        return Err(Error::invalid(
            "trigger_groups",
            "needs at least one trigger group",
        ));
    }
    for (g, group) in groups.iter().enumerate() {
        let gfield = format!("trigger_groups[{g}].conditions");
        if group.conditions.is_empty() {
            return Err(Error::invalid(gfield, "needs at least one condition"));
        }
        if group
            .conditions
            .iter()
            .filter(|c| matches!(c, Condition::Schedule(_)))
            .count()
            > 1
        {
            return Err(Error::unprocessable(
                gfield,
                "at most one schedule per group",
            ));
        }
        for (c, condition) in group.conditions.iter().enumerate() {
            let field = format!("{gfield}[{c}]");
            match condition {
                Condition::Device {
                    source,
                    data,
                    key,
                    operator,
                    value,
                    duration_secs: _,
                } => {
                    if *data != DataKind::Status && key.trim().is_empty() {
                        return Err(Error::unprocessable(
                            format!("{field}.key"),
                            "names the telemetry/attribute key or event method",
                        ));
                    }
                    check_value(&field, *data, *operator, value)?;
                    match source {
                        DeviceSource::Device(id) => {
                            device_in_tenant(metadata, tenant, *id, format!("{field}.source"))
                                .await?
                        }
                        DeviceSource::Profile(id) => {
                            profile_in_tenant(access, tenant, *id, format!("{field}.source"))
                                .await?
                        }
                    }
                }
                Condition::TimeRange {
                    start_minute,
                    end_minute,
                    weekdays,
                    utc_offset_minutes,
                } => {
                    if *start_minute >= 1440 {
                        return Err(Error::invalid(
                            format!("{field}.start_minute"),
                            "must be 0 to 1439",
                        ));
                    }
                    if *end_minute >= 1440 {
                        return Err(Error::invalid(
                            format!("{field}.end_minute"),
                            "must be 0 to 1439",
                        ));
                    }
                    if weekdays.iter().any(|d| !(1..=7).contains(d)) {
                        return Err(Error::invalid(
                            format!("{field}.weekdays"),
                            "days are 1 (Monday) to 7 (Sunday)",
                        ));
                    }
                    if utc_offset_minutes.abs() > 14 * 60 {
                        return Err(Error::invalid(
                            format!("{field}.utc_offset_minutes"),
                            "must be within -840..=840",
                        ));
                    }
                }
                Condition::Schedule(schedule) => {
                    if let (Some(nb), Some(na)) = (schedule.not_before, schedule.not_after)
                        && nb > na
                    {
                        return Err(Error::unprocessable(
                            format!("{field}.not_after"),
                            "must not be before not_before",
                        ));
                    }
                    if let Err(e) = CompiledSchedule::new(schedule, now_ms()) {
                        let (inner, reason) = match e {
                            Error::Invalid { field: f, reason } => (f, reason),
                            other => ("kind".to_owned(), other.to_string()),
                        };
                        return Err(Error::unprocessable(
                            format!("{field}.kind.{inner}"),
                            reason,
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Checks actions: the devices, channels and scenes they name exist in the tenant,
/// texts are present, values are objects. `scene` is the scene being saved (it may
/// not run itself).
pub async fn validate_actions(
    metadata: &dyn MetadataStore,
    rules: &dyn RuleStore,
    tenant: TenantId,
    actions: &[Action],
    scene: Option<SceneId>,
) -> Result<()> {
    if actions.is_empty() {
        return Err(Error::invalid("actions", "needs at least one action"));
    }
    for (i, action) in actions.iter().enumerate() {
        let field = format!("actions[{i}]");
        let target = |t: &ActionTarget| match t {
            ActionTarget::Device(id) => Some(*id),
            ActionTarget::TriggeringDevice => None,
        };
        match action {
            Action::Command {
                target: t, method, ..
            } => {
                if method.trim().is_empty() {
                    return Err(Error::invalid(
                        format!("{field}.method"),
                        "must not be empty",
                    ));
                }
                if let Some(id) = target(t) {
                    device_in_tenant(metadata, tenant, id, format!("{field}.target")).await?;
                }
            }
            Action::SetAttributes { target: t, values }
            | Action::TelemetryControl { target: t, values } => {
                if values.as_object().is_none_or(|o| o.is_empty()) {
                    return Err(Error::invalid(
                        format!("{field}.values"),
                        "must be a non-empty JSON object",
                    ));
                }
                if let Some(id) = target(t) {
                    device_in_tenant(metadata, tenant, id, format!("{field}.target")).await?;
                }
            }
            Action::RaiseAlarm {
                title, channels, ..
            } => {
                if title.trim().is_empty() {
                    return Err(Error::invalid(
                        format!("{field}.title"),
                        "must not be empty",
                    ));
                }
                for (c, channel) in channels.iter().enumerate() {
                    if rules.get_channel(tenant, *channel).await?.is_none() {
                        return Err(Error::unprocessable(
                            format!("{field}.channels[{c}]"),
                            format!("no notification channel {channel} in this tenant"),
                        ));
                    }
                }
            }
            Action::ClearAlarm => {}
            Action::Notify {
                channel, subject, ..
            } => {
                if subject.trim().is_empty() {
                    return Err(Error::invalid(
                        format!("{field}.subject"),
                        "must not be empty",
                    ));
                }
                if rules.get_channel(tenant, *channel).await?.is_none() {
                    return Err(Error::unprocessable(
                        format!("{field}.channel"),
                        format!("no notification channel {channel} in this tenant"),
                    ));
                }
            }
            Action::RunScene { scene: s } => {
                if Some(*s) == scene {
                    return Err(Error::unprocessable(
                        format!("{field}.scene"),
                        "a scene cannot run itself",
                    ));
                }
                if rules.get_scene(tenant, *s).await?.is_none() {
                    return Err(Error::unprocessable(
                        format!("{field}.scene"),
                        format!("no scene {s} in this tenant"),
                    ));
                }
            }
        }
    }
    Ok(())
}
