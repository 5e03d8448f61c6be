//! Scene automation: rules, manual scenes, alarms and notification channels.
//!
//! - [`model`]: what users define (rules with trigger groups and actions, scenes,
//!   notification channels) and what the engine produces (alarms, their history,
//!   notification records).
//! - [`store`]: the [`RuleStore`] contract every metadata backend implements, and the
//!   [`Notifier`] contract of the delivery side (webhook, email).
//! - [`RuleInput`] / [`UplinkObserver`]: how the ingest path hands device data to the
//!   rule engine without waiting for it.
//! - [`eval`]: pure rule evaluation (index, operators, per-device state, durations,
//!   schedules); [`schedule`]: next fire times and time ranges; [`alarm`]: the alarm
//!   lifecycle as a state machine; [`validate`]: the checks a rule or scene passes
//!   before it is stored (shared by the REST API and anything else that writes rules).
//!   The runtime that drives them lives in `tp-rules`.

pub mod alarm;
pub mod eval;
pub mod model;
pub mod schedule;
pub mod store;
pub mod validate;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::{DeviceId, KeyValue, ProfileId, TenantId, Timestamp};

pub use model::*;
pub use store::{Notification, Notifier, NotifierRef, RuleStore, RuleStoreRef};

/// One piece of device data the rule engine evaluates, as the ingest path saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleInput {
    /// The device the data belongs to (for gateways: the sub-device).
    pub device_id: DeviceId,
    /// Its tenant.
    pub tenant_id: TenantId,
    /// Its profile, so profile-wide rules match without a lookup.
    pub profile_id: Option<ProfileId>,
    /// Server receive time.
    pub ts: Timestamp,
    /// What arrived.
    pub data: RuleInputData,
}

/// What a [`RuleInput`] carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RuleInputData {
    /// Telemetry values (one message may carry several keys).
    Telemetry {
        /// The values.
        values: Vec<KeyValue>,
    },
    /// Reported attributes.
    Attributes {
        /// The values.
        values: Vec<KeyValue>,
    },
    /// A device event (`method` with `params`).
    Event {
        /// Event identifier.
        method: String,
        /// Event parameters.
        params: serde_json::Value,
    },
    /// The device went online or offline.
    Status {
        /// New state.
        online: bool,
    },
}

/// Receives device data from the ingest path. `observe` must not block or wait: the
/// engine queues the input and evaluates it on its own task, so a slow rule never
/// slows down device acknowledgement.
pub trait UplinkObserver: std::fmt::Debug + Send + Sync + 'static {
    /// Hands one input to the observer.
    fn observe(&self, input: RuleInput);
}

/// Shared handle to an observer.
pub type UplinkObserverRef = Arc<dyn UplinkObserver>;

/// What happened to one action of a scene run or a rule firing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ActionOutcome {
    /// Position of the action in its list.
    pub index: usize,
    /// Whether it succeeded (a command was queued, an alarm raised, ...).
    pub ok: bool,
    /// What was done, or why it failed.
    pub detail: String,
}

/// How the REST layer talks to the running rule engine: cache invalidation after a
/// rule, scene or channel changed, and running manual scenes.
#[async_trait::async_trait]
pub trait RuleEngineControl: std::fmt::Debug + Send + Sync + 'static {
    /// A tenant's rules, scenes or channels changed: reload them before evaluating
    /// the next input (on every node of a cluster).
    async fn rules_changed(&self, tenant: TenantId);
    /// Runs a manual scene's actions now, in order, and reports each.
    async fn run_scene(
        &self,
        tenant: TenantId,
        scene: crate::model::SceneId,
    ) -> crate::Result<Vec<ActionOutcome>>;
}

/// Shared handle to the rule engine's control side.
pub type RuleEngineControlRef = Arc<dyn RuleEngineControl>;
