//! What rule transitions and scenes do: device downlinks (through the same code path
//! as the REST downlink endpoints), alarms (through the [`RuleStore`] and the pure
//! lifecycle in [`tp_core::rules::alarm`]), notifications (through the [`Notifier`])
//! and manual scenes. Every outcome is logged and counted in
//! `tp_rule_actions_total{action, outcome}`.

use std::sync::OnceLock;
use std::time::Duration;

use tp_core::downlink::{DEFAULT_EXPIRY_SECS, issue_downlink};
use tp_core::rules::alarm::{self, AlarmSpec, AlarmStep};
use tp_core::rules::eval::{Transition, TransitionKind};
use tp_core::rules::{
    Action, ActionOutcome, ActionTarget, Alarm, AlarmSeverity, ChannelId, Notification,
    NotifierRef, Rule, RuleStoreRef,
};
use tp_core::{
    CacheRef, CommandKind, DeviceId, DeviceTransportRef, Error, MetadataStoreRef, Result, TenantId,
};

use tp_core::clock::ClockRef;

/// How deep scenes may run scenes (a scene running itself stops here).
const MAX_SCENE_DEPTH: u8 = 3;
/// Lifetime of an alarm's update lock (a crashed holder frees it after this).
const ALARM_LOCK_TTL: Duration = Duration::from_secs(10);
/// How long an alarm update waits for another node's.
const ALARM_LOCK_WAIT: Duration = Duration::from_secs(5);

/// Runs actions. Shared by the engine's worker and [`super::RuleEngine::run_scene`].
#[derive(Debug)]
pub(crate) struct Executor {
    pub(crate) rules: RuleStoreRef,
    pub(crate) metadata: MetadataStoreRef,
    pub(crate) profiles: Option<tp_core::AccessStoreRef>,
    /// Set once the broker is up (the broker needs the engine's observer first).
    pub(crate) transport: OnceLock<DeviceTransportRef>,
    pub(crate) cache: CacheRef,
    pub(crate) notifier: Option<NotifierRef>,
    pub(crate) clock: ClockRef,
    pub(crate) fire_lock_ttl: Duration,
}

/// What a firing knows about itself, for alarms and action targets.
pub(crate) struct Firing<'a> {
    rule: &'a Rule,
    device: Option<DeviceId>,
    details: &'a serde_json::Value,
    kind: TransitionKind,
}

impl Executor {
    /// Acts on one transition of the evaluator; returns the outcome of each action
    /// that ran (empty when another node holds the schedule's fire lock).
    pub(crate) async fn transition(&self, t: &Transition) -> Vec<ActionOutcome> {
        if let Some(fire_ts) = t.fire_ts
            && !self.take_fire_lock(t, fire_ts).await
        {
            return Vec::new();
        }
        let firing = Firing {
            rule: &t.rule,
            device: t.scope.device(),
            details: &t.details,
            kind: t.kind,
        };
        let outcomes = match t.kind {
            TransitionKind::Fired | TransitionKind::Pulse => {
                self.run(t.rule.tenant_id, &t.rule.actions, Some(&firing), 0)
                    .await
            }
            // Only the open alarm follows: commands are not repeated, and a cleared
            // rule's alarm clears.
            TransitionKind::Repeated | TransitionKind::Cleared => {
                let mut out = Vec::new();
                for (index, action) in t.rule.actions.iter().enumerate() {
                    if let Action::RaiseAlarm { .. } = action {
                        let r = self.alarm(action, &firing).await;
                        out.push(record(t.rule.tenant_id, index, "alarm", r));
                    }
                }
                out
            }
        };
        tracing::debug!(rule_id = %t.rule.id, scope = %t.scope.key(), kind = ?t.kind, actions = outcomes.len(), "rule transition handled");
        outcomes
    }

    /// With several nodes each evaluating the same schedule, only the node that sets
    /// `rule:fire:{rule}:{fire_ts}` (per device for profile rules) acts on it.
    async fn take_fire_lock(&self, t: &Transition, fire_ts: i64) -> bool {
        let mut key = format!("rule:fire:{}:{fire_ts}", t.rule.id);
        if let Some(d) = t.scope.device() {
            key.push(':');
            key.push_str(&d.to_string());
        }
        match self
            .cache
            .set_nx(&key, b"1", Some(self.fire_lock_ttl))
            .await
        {
            Ok(true) => true,
            Ok(false) => {
                metrics::counter!("tp_rule_schedule_skipped_total").increment(1);
                tracing::debug!(rule_id = %t.rule.id, fire_ts, "schedule fired on another node");
                false
            }
            Err(e) => {
                // Firing twice beats never firing while the cache is down.
                tracing::warn!(rule_id = %t.rule.id, fire_ts, error = %e, "cannot take the schedule lock; firing anyway");
                true
            }
        }
    }

    /// Runs `actions` in order; `firing` is none for manual scenes.
    pub(crate) async fn run(
        &self,
        tenant: TenantId,
        actions: &[Action],
        firing: Option<&Firing<'_>>,
        depth: u8,
    ) -> Vec<ActionOutcome> {
        let mut out = Vec::with_capacity(actions.len());
        for (index, action) in actions.iter().enumerate() {
            let triggering = firing.and_then(|f| f.device);
            let (name, result) = match action {
                Action::Command {
                    target,
                    method,
                    params,
                } => {
                    let params = if params.is_null() {
                        serde_json::json!({})
                    } else {
                        params.clone()
                    };
                    let payload = serde_json::json!({"method": method, "params": params});
                    (
                        "command",
                        self.downlink(tenant, *target, triggering, CommandKind::Command, payload)
                            .await,
                    )
                }
                Action::SetAttributes { target, values } => (
                    "set_attributes",
                    self.downlink(
                        tenant,
                        *target,
                        triggering,
                        CommandKind::AttributeSet,
                        values.clone(),
                    )
                    .await,
                ),
                Action::TelemetryControl { target, values } => (
                    "telemetry_control",
                    self.downlink(
                        tenant,
                        *target,
                        triggering,
                        CommandKind::TelemetryControl,
                        values.clone(),
                    )
                    .await,
                ),
                Action::RaiseAlarm { .. } | Action::ClearAlarm => match firing {
                    Some(f) => ("alarm", self.alarm(action, f).await),
                    None => (
                        "alarm",
                        Ok("skipped: scenes do not raise alarms".to_owned()),
                    ),
                },
                Action::Notify {
                    channel,
                    subject,
                    body,
                } => {
                    // The alarm this firing raised (or that is open for the rule and
                    // device), so the receiver can link the notification to it.
                    let alarm_id = match firing {
                        Some(f) => match self.rules.get_open_alarm(f.rule.id, f.device).await {
                            Ok(open) => open.map(|a| a.id),
                            Err(e) => {
                                tracing::warn!(rule_id = %f.rule.id, error = %e, "cannot look up the open alarm for a notification");
                                None
                            }
                        },
                        None => None,
                    };
                    let data = serde_json::json!({
                        "rule_id": firing.map(|f| f.rule.id),
                        "device_id": triggering,
                        "alarm_id": alarm_id,
                        "details": firing.map(|f| f.details.clone()),
                    });
                    (
                        "notify",
                        self.notify(
                            tenant,
                            *channel,
                            subject.clone(),
                            body.clone(),
                            alarm_id,
                            firing.map(|f| f.rule.id),
                            data,
                        )
                        .await,
                    )
                }
                Action::RunScene { scene } => {
                    let r = if depth >= MAX_SCENE_DEPTH {
                        Err(Error::invalid("scene", "scenes nested too deep"))
                    } else {
                        match self.rules.get_scene(tenant, *scene).await {
                            Ok(Some(s)) => {
                                let inner =
                                    Box::pin(self.run(tenant, &s.actions, None, depth + 1)).await;
                                let failed = inner.iter().filter(|o| !o.ok).count();
                                Ok(format!(
                                    "scene {:?}: {} actions, {failed} failed",
                                    s.name,
                                    inner.len()
                                ))
                            }
                            Ok(None) => Err(Error::not_found("scene", scene.to_string())),
                            Err(e) => Err(e),
                        }
                    };
                    ("run_scene", r)
                }
            };
            out.push(record(tenant, index, name, result));
        }
        out
    }

    /// Logs a downlink to the target device and delivers it like the REST endpoints.
    async fn downlink(
        &self,
        tenant: TenantId,
        target: ActionTarget,
        triggering: Option<DeviceId>,
        kind: CommandKind,
        payload: serde_json::Value,
    ) -> Result<String> {
        let id = match target {
            ActionTarget::Device(d) => d,
            ActionTarget::TriggeringDevice => match triggering {
                Some(d) => d,
                None => return Ok("skipped: no triggering device".to_owned()),
            },
        };
        if kind != CommandKind::Command && payload.as_object().is_none_or(|o| o.is_empty()) {
            return Err(Error::invalid("values", "must be a non-empty object"));
        }
        let device = self
            .metadata
            .get_device_by_id(id)
            .await?
            .filter(|d| d.tenant_id == tenant)
            .ok_or_else(|| Error::not_found("device", id.to_string()))?;
        let row = issue_downlink(
            &self.metadata,
            self.profiles.as_ref(),
            self.transport.get(),
            &device,
            kind,
            payload,
            i64::from(DEFAULT_EXPIRY_SECS) * 1000,
        )
        .await?;
        Ok(format!(
            "{} {} to {} ({})",
            kind.as_str(),
            row.message_id,
            device.device_number,
            row.status.as_str()
        ))
    }

    /// Raise/repeat/clear the open alarm of the firing's rule and device, holding
    /// the alarm's lock in the cache: the steps read the open alarm and write it
    /// back, so two nodes updating it at once would lose occurrences or clear it
    /// twice.
    async fn alarm(&self, action: &Action, f: &Firing<'_>) -> Result<String> {
        let key = match f.device {
            Some(d) => format!("rule:alarm:{}:{d}", f.rule.id),
            None => format!("rule:alarm:{}", f.rule.id),
        };
        let token = self.lock_alarm(&key).await;
        let r = self.alarm_locked(action, f).await;
        if let Some(token) = token {
            // Only our own lock: after its TTL another node may hold it.
            if let Ok(Some(v)) = self.cache.get(&key).await
                && v == token.as_bytes()
            {
                let _ = self.cache.delete(&key).await;
            }
        }
        r
    }

    /// Takes `key` in the cache, waiting for another holder up to
    /// [`ALARM_LOCK_WAIT`]; returns the token it holds the lock with. Without the
    /// cache, or after waiting that long, goes on unlocked (a lost count beats a lost
    /// alarm).
    async fn lock_alarm(&self, key: &str) -> Option<String> {
        let token = uuid::Uuid::new_v4().to_string();
        let deadline = tokio::time::Instant::now() + ALARM_LOCK_WAIT;
        let mut pause = Duration::from_millis(2);
        loop {
            match self
                .cache
                .set_nx(key, token.as_bytes(), Some(ALARM_LOCK_TTL))
                .await
            {
                Ok(true) => return Some(token),
                Ok(false) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Ok(false) => {
                    tracing::warn!(key, "alarm lock still held elsewhere; updating unlocked");
                    return None;
                }
                Err(e) => {
                    tracing::warn!(key, error = %e, "cannot take the alarm lock; updating unlocked");
                    return None;
                }
            }
        }
    }

    async fn alarm_locked(&self, action: &Action, f: &Firing<'_>) -> Result<String> {
        let now = self.clock.now_ms();
        let open = self.rules.get_open_alarm(f.rule.id, f.device).await?;
        let kind = match action {
            Action::ClearAlarm => TransitionKind::Cleared,
            _ => f.kind,
        };
        let (severity, title, description, channels) = match action {
            Action::RaiseAlarm {
                severity,
                title,
                description,
                channels,
            } => (
                *severity,
                title.clone(),
                description.clone(),
                channels.as_slice(),
            ),
            _ => (AlarmSeverity::Info, String::new(), None, &[][..]),
        };
        match alarm::decide(open.as_ref().map(|a| a.status), kind) {
            AlarmStep::Nothing => Ok("no alarm change".to_owned()),
            AlarmStep::Raise => {
                let (a, event) = alarm::raise(
                    AlarmSpec {
                        tenant_id: f.rule.tenant_id,
                        rule_id: f.rule.id,
                        device_id: f.device,
                        severity,
                        title,
                        description,
                        details: f.details.clone(),
                    },
                    now,
                );
                match self.rules.create_alarm(&a).await {
                    Ok(()) => {}
                    // Another node raised it first: count ours as a repeat.
                    Err(Error::AlreadyExists { .. }) => {
                        let Some(mut existing) =
                            self.rules.get_open_alarm(f.rule.id, f.device).await?
                        else {
                            return Err(Error::Conflict(
                                "alarm raised and cleared concurrently".to_owned(),
                            ));
                        };
                        return self.repeat(&mut existing, severity, f, now).await;
                    }
                    Err(e) => return Err(e),
                }
                self.rules.append_alarm_event(&event).await?;
                metrics::counter!("tp_alarms_raised_total", "severity" => severity.as_str())
                    .increment(1);
                self.notify_alarm(&a, channels, "raised").await;
                Ok(format!("alarm {} raised", a.id))
            }
            AlarmStep::Repeat => {
                let Some(mut a) = open else {
                    return Ok("no alarm change".to_owned());
                };
                self.repeat(&mut a, severity, f, now).await
            }
            AlarmStep::Clear => {
                let Some(mut a) = open else {
                    return Ok("no alarm change".to_owned());
                };
                let event = alarm::clear(&mut a, now);
                self.rules.update_alarm(&a).await?;
                self.rules.append_alarm_event(&event).await?;
                self.notify_alarm(&a, channels, "cleared").await;
                Ok(format!("alarm {} cleared", a.id))
            }
        }
    }

    async fn repeat(
        &self,
        a: &mut Alarm,
        severity: AlarmSeverity,
        f: &Firing<'_>,
        now: i64,
    ) -> Result<String> {
        let event = alarm::repeat(a, severity, f.details.clone(), now);
        self.rules.update_alarm(a).await?;
        self.rules.append_alarm_event(&event).await?;
        Ok(format!("alarm {} occurrence {}", a.id, a.occurrences))
    }

    /// Tells an alarm's channels that it was raised or cleared; failures are logged
    /// (the notifier records each delivery in the notification history).
    async fn notify_alarm(&self, a: &Alarm, channels: &[ChannelId], what: &str) {
        for channel in channels {
            let subject = format!("[{}] {} {what}", a.severity.as_str(), a.title);
            let body = match &a.description {
                Some(d) => format!("{d}\n\nDetails: {}", a.details),
                None => format!("Details: {}", a.details),
            };
            let data = serde_json::json!({
                "event": format!("alarm.{what}"),
                "alarm_id": a.id,
                "rule_id": a.rule_id,
                "device_id": a.device_id,
                "severity": a.severity.as_str(),
                "status": a.status.as_str(),
                "title": a.title,
                "occurrences": a.occurrences,
                "details": a.details,
            });
            let r = self
                .notify(
                    a.tenant_id,
                    *channel,
                    subject,
                    body,
                    Some(a.id),
                    a.rule_id,
                    data,
                )
                .await;
            record(a.tenant_id, 0, "alarm_notify", r);
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn notify(
        &self,
        tenant: TenantId,
        channel: ChannelId,
        subject: String,
        body: String,
        alarm_id: Option<tp_core::rules::AlarmId>,
        rule_id: Option<tp_core::rules::RuleId>,
        data: serde_json::Value,
    ) -> Result<String> {
        let Some(notifier) = &self.notifier else {
            return Err(Error::NotSupported {
                backend: "rules",
                operation: "notify (no notifier configured)",
            });
        };
        let ch = self
            .rules
            .get_channel(tenant, channel)
            .await?
            .ok_or_else(|| Error::not_found("channel", channel.to_string()))?;
        let record = notifier
            .notify(
                &ch,
                Notification {
                    tenant_id: tenant,
                    alarm_id,
                    rule_id,
                    subject,
                    body,
                    data,
                },
            )
            .await?;
        Ok(format!(
            "notification {} to channel {:?} ({:?})",
            record.id, ch.name, record.status
        ))
    }
}

/// Logs and counts one action's outcome.
fn record(
    tenant: TenantId,
    index: usize,
    action: &'static str,
    r: Result<String>,
) -> ActionOutcome {
    let outcome = match r {
        Ok(detail) => {
            tracing::info!(tenant_id = %tenant, action, index, detail = %detail, "rule action done");
            ActionOutcome {
                index,
                ok: true,
                detail,
            }
        }
        Err(e) => {
            tracing::warn!(tenant_id = %tenant, action, index, error = %e, "rule action failed");
            ActionOutcome {
                index,
                ok: false,
                detail: e.to_string(),
            }
        }
    };
    let label = if outcome.ok { "ok" } else { "failed" };
    metrics::counter!("tp_rule_actions_total", "action" => action, "outcome" => label).increment(1);
    outcome
}
