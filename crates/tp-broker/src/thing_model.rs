//! The thing-model check of reported telemetry and attributes.
//!
//! A device whose profile refers to a device template with validation `record` or
//! `reject` has each telemetry and attribute message checked against the
//! template's definitions (type, range, enum; keys without a definition only when
//! the template sets `strict_keys`) before anything of it is stored:
//!
//! - `record`: the message is stored as usual; each violation is counted
//!   (`tp_thing_model_violations_total{kind}`) and the message's violations are
//!   stored as one device event with method `thing_model_violation` and params
//!   `{"kind", "violations": [{"key", "reason", "value"}]}`.
//! - `reject`: nothing of the message is stored (no key of it, not only the bad
//!   ones); it is counted (`tp_thing_model_rejected_total{kind}`) and logged with
//!   the key, and the message fails with [`tp_core::Error::Unprocessable`] naming
//!   the key, which each transport turns into its answer: HTTP 422, CoAP 4.22, the
//!   MQTT attribute response (`result: 1`). An MQTT telemetry publish was already
//!   acknowledged when it reached the write-ahead log (PUBACK means "durably
//!   received", before decoding), so there it is counted and logged only.
//!
//! Templates come from the node's [`TemplateCache`] (per profile, invalidated by
//! the API on every template or profile change, expiring after its TTL on other
//! nodes), so a message costs a map lookup, not a query. When the template cannot
//! be read (the store is down) the message is stored unchecked and a warning logged:
//! ingest does not stop for the thing model.

use std::sync::Arc;

use tp_core::thing_model::{DeviceTemplate, TemplateCache, ValidationMode, Violation};
use tp_core::{DeviceEvent, DeviceId, Value};

use crate::uplink::Uplinks;

/// Which definitions a message is checked against.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Checked {
    Telemetry,
    Attributes,
}

impl Checked {
    fn name(self) -> &'static str {
        match self {
            Checked::Telemetry => "telemetry",
            Checked::Attributes => "attributes",
        }
    }
}

/// What a `record` message violated, to store once the message is stored.
#[derive(Debug, Default)]
pub(crate) struct Recorded(Vec<(Violation, serde_json::Value)>);

impl Uplinks {
    /// The validating template of `device_id`'s profile, if any.
    async fn validating_template(&self, device_id: DeviceId) -> Option<Arc<DeviceTemplate>> {
        let cache: &TemplateCache = self.thing_models.as_deref()?;
        let (tenant, profile) = self.identity(device_id).await?;
        let template = match cache.for_profile(tenant, profile?).await {
            Ok(t) => t?,
            Err(e) => {
                metrics::counter!("tp_thing_model_unavailable_total").increment(1);
                tracing::warn!(device_id = %device_id, error = %e,
                    "cannot read the device's template; message stored unchecked");
                return None;
            }
        };
        (template.validation != ValidationMode::Off).then_some(template)
    }

    /// Checks a message's values (`values` is called only when the device has a
    /// validating template).
    ///
    /// # Errors
    /// [`tp_core::Error::Unprocessable`] naming the first bad key when the template
    /// rejects: store nothing of the message.
    pub(crate) async fn check_model<'a, I>(
        &self,
        device_id: DeviceId,
        kind: Checked,
        values: impl FnOnce() -> I,
    ) -> tp_core::Result<Recorded>
    where
        I: IntoIterator<Item = (&'a str, &'a Value)>,
    {
        let Some(template) = self.validating_template(device_id).await else {
            return Ok(Recorded::default());
        };
        let mut found = Vec::new();
        for (key, value) in values() {
            let one = match kind {
                Checked::Telemetry => template.check_telemetry([(key, value)]),
                Checked::Attributes => template.check_attributes([(key, value)]),
            };
            found.extend(one.into_iter().map(|v| (v, value.to_json())));
        }
        if found.is_empty() {
            return Ok(Recorded::default());
        }
        if template.validation == ValidationMode::Reject {
            metrics::counter!("tp_thing_model_rejected_total", "kind" => kind.name()).increment(1);
            let keys: Vec<String> = found.iter().map(|(v, _)| v.key.clone()).collect();
            tracing::warn!(device_id = %device_id, template = %template.id, kind = kind.name(),
                keys = ?keys, first = %found[0].0,
                "message refused by the device's thing model; nothing of it stored");
            let (first, _) = found.swap_remove(0);
            let more = match keys.len() {
                1 => String::new(),
                n => format!(" (and {} more)", n - 1),
            };
            return Err(tp_core::Error::unprocessable(
                first.key,
                format!("{}{more}; nothing of the message was stored", first.reason),
            ));
        }
        Ok(Recorded(found))
    }

    /// Records the violations of a stored `record` message as a device event.
    pub(crate) async fn record_violations(
        &self,
        device_id: DeviceId,
        kind: Checked,
        recorded: Recorded,
        now: i64,
    ) {
        if recorded.0.is_empty() {
            return;
        }
        metrics::counter!("tp_thing_model_violations_total", "kind" => kind.name())
            .increment(recorded.0.len() as u64);
        let violations: Vec<serde_json::Value> = recorded
            .0
            .into_iter()
            .map(|(v, value)| serde_json::json!({"key": v.key, "reason": v.reason, "value": value}))
            .collect();
        tracing::info!(device_id = %device_id, kind = kind.name(), violations = ?violations,
            "stored a message that violates the device's thing model (validation: record)");
        let event = DeviceEvent {
            device_id,
            ts: now,
            message_id: String::new(),
            method: "thing_model_violation".to_owned(),
            params: serde_json::json!({"kind": kind.name(), "violations": violations}),
        };
        if let Err(e) = self.writer.write_events(vec![event]).await {
            tracing::warn!(device_id = %device_id, error = %e, "cannot record thing-model violations");
        }
    }
}
