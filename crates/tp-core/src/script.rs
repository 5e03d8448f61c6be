//! Data scripts: ThingsPanel's `data_script`. A tenant attaches Lua scripts to a
//! device profile, one kind per direction and message type ([`ScriptType`], TP's
//! types A–D); each runs as TP runs it, `encodeInp(msg, topic)` returning a string:
//! an uplink script turns what a device sent (any bytes, e.g. a packed binary frame)
//! into our JSON forms before they are decoded, a downlink script turns our encoded
//! downlink into what the device understands.
//!
//! This module holds the model, the [`ScriptStore`] contract (conformance suite in
//! `testing::script`, feature `testing`) and the [`ScriptRunner`] contract an engine
//! implements (tp-broker's Lua engine, feature `lua`). At most one script of a kind
//! is enabled per profile, as in ThingsPanel; the others are drafts.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::model::{ProfileId, ScriptId, TenantId, Timestamp};

/// Which messages a script handles (ThingsPanel's `script_type`: `A` telemetry up,
/// `B` telemetry down, `C` attributes up, `D` attributes down; the letters are
/// accepted on input).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ScriptType {
    /// Telemetry a device reports (`devices/telemetry`), before it is decoded.
    #[serde(alias = "A")]
    TelemetryUp,
    /// Telemetry control sent to a device (`devices/telemetry/control/..`), after it is encoded.
    #[serde(alias = "B")]
    TelemetryDown,
    /// Attributes a device reports (`devices/attributes/..`), before they are decoded.
    #[serde(alias = "C")]
    AttributeUp,
    /// Attribute sets sent to a device (`devices/attributes/set/..`), after they are encoded.
    #[serde(alias = "D")]
    AttributeDown,
}

impl ScriptType {
    /// Every type, in ThingsPanel's letter order.
    pub const ALL: [ScriptType; 4] = [
        ScriptType::TelemetryUp,
        ScriptType::TelemetryDown,
        ScriptType::AttributeUp,
        ScriptType::AttributeDown,
    ];

    /// The stored and serialized name, e.g. `"telemetry_up"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ScriptType::TelemetryUp => "telemetry_up",
            ScriptType::TelemetryDown => "telemetry_down",
            ScriptType::AttributeUp => "attribute_up",
            ScriptType::AttributeDown => "attribute_down",
        }
    }

    /// ThingsPanel's letter for the type (`A`..`D`).
    pub fn letter(self) -> &'static str {
        match self {
            ScriptType::TelemetryUp => "A",
            ScriptType::TelemetryDown => "B",
            ScriptType::AttributeUp => "C",
            ScriptType::AttributeDown => "D",
        }
    }

    /// Parses a stored name or a ThingsPanel letter.
    ///
    /// # Errors
    /// [`crate::Error::Invalid`] (field `script_type`) for anything else.
    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s || t.letter() == s)
            .ok_or_else(|| {
                crate::Error::invalid(
                    "script_type",
                    format!("{s:?} is not one of telemetry_up, telemetry_down, attribute_up, attribute_down (or A-D)"),
                )
            })
    }

    /// Whether the script runs on what devices send (before decoding).
    pub fn is_uplink(self) -> bool {
        matches!(self, ScriptType::TelemetryUp | ScriptType::AttributeUp)
    }
}

impl fmt::Display for ScriptType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A data script attached to a device profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataScript {
    /// Identifier.
    pub id: ScriptId,
    /// Owning tenant (the profile's).
    pub tenant_id: TenantId,
    /// The profile whose devices' messages the script handles.
    pub profile_id: ProfileId,
    /// Which messages it handles.
    pub script_type: ScriptType,
    /// Display name.
    pub name: String,
    /// Lua source defining `encodeInp(msg, topic)`.
    pub content: String,
    /// Only an enabled script runs on messages; at most one per profile and type.
    pub enabled: bool,
    /// Free text.
    pub description: Option<String>,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last change; with the id it names the compiled version an engine caches.
    pub updated_at: Timestamp,
}

/// Which scripts [`ScriptStore::list_scripts`] returns (all of the tenant when empty).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScriptFilter {
    /// Only this profile's.
    pub profile_id: Option<ProfileId>,
    /// Only this type.
    pub script_type: Option<ScriptType>,
}

/// Where data scripts are kept. Tenant-scoped except [`Self::enabled_script`], which
/// ingest calls with the profile of the device at hand.
#[async_trait]
pub trait ScriptStore: Send + Sync + fmt::Debug {
    /// Stores a new script.
    ///
    /// # Errors
    /// [`crate::Error::AlreadyExists`] for a taken id; [`crate::Error::Conflict`] when
    /// it is enabled and the profile already has an enabled script of its type;
    /// [`crate::Error::Unprocessable`] (field `profile_id`) when the profile does not
    /// exist.
    async fn create_script(&self, script: &DataScript) -> Result<()>;

    /// A script of `tenant`, or `None`.
    async fn get_script(&self, tenant: TenantId, id: ScriptId) -> Result<Option<DataScript>>;

    /// The tenant's scripts matching `filter`, by profile, type, then name.
    async fn list_scripts(&self, tenant: TenantId, filter: ScriptFilter)
    -> Result<Vec<DataScript>>;

    /// Replaces name, content, type, enabled, description and `updated_at` of the
    /// script with this id in its tenant (the profile stays).
    ///
    /// # Errors
    /// [`crate::Error::NotFound`]; [`crate::Error::Conflict`] as for create.
    async fn update_script(&self, script: &DataScript) -> Result<()>;

    /// Deletes a script; `false` when there was none.
    async fn delete_script(&self, tenant: TenantId, id: ScriptId) -> Result<bool>;

    /// The enabled script of `script_type` on `profile`, if any.
    async fn enabled_script(
        &self,
        profile: ProfileId,
        script_type: ScriptType,
    ) -> Result<Option<DataScript>>;

    /// Every profile and type with an enabled script, across tenants: the index
    /// ingest checks before it looks a script up, so a message of a profile without
    /// scripts (the common case) costs no lookup.
    async fn enabled_script_keys(&self) -> Result<Vec<(ProfileId, ScriptType)>>;
}

/// Shared handle to a [`ScriptStore`].
pub type ScriptStoreRef = Arc<dyn ScriptStore>;

/// Why a script did not produce an output. Every variant rejects the message it ran on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScriptFailure {
    /// The source does not compile, or does not define `encodeInp`.
    #[error("script does not compile: {0}")]
    Compile(String),
    /// The script raised an error.
    #[error("script error: {0}")]
    Runtime(String),
    /// The script ran more instructions than one call may.
    #[error("script exceeded its instruction budget of {0} instructions")]
    InstructionLimit(u64),
    /// The script allocated more memory than it may.
    #[error("script exceeded its memory limit of {0} bytes")]
    MemoryLimit(usize),
    /// The call ran longer than its wall-clock timeout.
    #[error("script exceeded its timeout of {0} ms")]
    Timeout(u64),
    /// `encodeInp` returned something other than a string (or an oversized one).
    #[error("script returned no usable output: {0}")]
    BadOutput(String),
    /// No engine is built into this node (tp-broker without its `lua` feature).
    #[error("no script engine in this build")]
    Unavailable,
}

impl ScriptFailure {
    /// A short label for metrics (`reason="timeout"`).
    pub fn reason(&self) -> &'static str {
        match self {
            ScriptFailure::Compile(_) => "compile",
            ScriptFailure::Runtime(_) => "runtime",
            ScriptFailure::InstructionLimit(_) => "instructions",
            ScriptFailure::MemoryLimit(_) => "memory",
            ScriptFailure::Timeout(_) => "timeout",
            ScriptFailure::BadOutput(_) => "output",
            ScriptFailure::Unavailable => "unavailable",
        }
    }
}

/// An engine that runs data scripts in a sandbox with limits (tp-broker's Lua engine).
#[async_trait]
pub trait ScriptRunner: Send + Sync + fmt::Debug {
    /// Runs `encodeInp(payload, topic)` of a stored script; engines compile a script
    /// version (id and `updated_at`) once and reuse it.
    async fn run(
        &self,
        script: &DataScript,
        payload: &[u8],
        topic: &str,
    ) -> std::result::Result<Vec<u8>, ScriptFailure>;

    /// Compiles and runs `content` once on a sample (the API's test run, TP's `quiz`),
    /// under the same limits.
    async fn run_source(
        &self,
        content: &str,
        payload: &[u8],
        topic: &str,
    ) -> std::result::Result<Vec<u8>, ScriptFailure>;

    /// Forgets what is cached for `profile` (its enabled scripts changed).
    fn invalidate(&self, profile: ProfileId);
}

/// Shared handle to a [`ScriptRunner`].
pub type ScriptRunnerRef = Arc<dyn ScriptRunner>;
