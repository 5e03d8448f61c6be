//! Data scripts (feature `lua`, on by default): ThingsPanel-compatible Lua scripts a
//! tenant attaches to a device profile ([`tp_core::script`]), run on a profile's
//! uplink telemetry and attributes before they are decoded and on its telemetry
//! control and attribute sets after they are encoded.
//!
//! [`Scripts`] is the engine ([`ScriptRunner`]) and the ingest's lookup. An index of
//! which profiles and types have an enabled script is read at the first message and
//! again every [`LOOKUP_TTL`] in the background, so a message of a profile without
//! scripts (the common case) costs an atomic load or a set lookup, no clock read and
//! no store query. Which script a scripted profile has enabled for a message type is
//! cached for [`LOOKUP_TTL`] (so a change made through another node's API arrives
//! within it; this node's API invalidates both at once), and each script version (id and
//! `updated_at`) is compiled once into its own sandboxed Lua state ([`sandbox`]) and
//! reused for every message. Calls run on the blocking pool, so a slow script holds a
//! blocking thread, never an async worker; a script's state runs one call at a time.
//!
//! A failing call (error, limit, output that is not a string) rejects that message:
//! it is logged with the script and device, and counted in
//! `tp_script_failures_total{type,reason}`.
//!
//! ```
//! # #[tokio::main]
//! # async fn main() -> anyhow::Result<()> {
//! use tp_broker::script::{ScriptLimits, Scripts};
//! use tp_core::script::ScriptRunner;
//!
//! let scripts = Scripts::new(None, ScriptLimits::default());
//! // ThingsPanel's signature: the raw payload as a string, the topic; a string back
//! let source = r#"
//!     local json = require("json")
//!     function encodeInp(msg, topic)
//!         local t = string.byte(msg, 1) * 256 + string.byte(msg, 2)
//!         return json.encode({ temperature = t / 10 })
//!     end"#;
//! let out = scripts.run_source(source, &[0x01, 0x05], "devices/telemetry").await?;
//! assert_eq!(out, br#"{"temperature":26.1}"#);
//! # Ok(()) }
//! ```

mod json;
pub mod sandbox;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tp_core::script::{DataScript, ScriptFailure, ScriptRunner, ScriptStoreRef, ScriptType};
use tp_core::{DeviceId, ProfileId, ScriptId, Timestamp};

pub use sandbox::{CompiledScript, ScriptLimits};

/// How long a profile's enabled-script lookup is reused.
pub const LOOKUP_TTL: Duration = Duration::from_secs(5);

/// A compiled script version; its state runs one call at a time.
type Compiled = Arc<Mutex<Option<CompiledScript>>>;

/// An enabled-script lookup: when it was read, and the script (or none).
type Lookup = (Instant, Option<Arc<DataScript>>);

/// Which profiles and types have an enabled script, as last read from the store.
#[derive(Debug, Default)]
struct ScriptIndex {
    /// Bumped by every invalidation.
    generation: AtomicU64,
    /// The generation the keys were read at (`u64::MAX`: never read).
    loaded: AtomicU64,
    /// Whether `keys` holds anything: the one load a message costs on a node where no
    /// profile has a script.
    any: AtomicBool,
    keys: RwLock<HashSet<(ProfileId, ScriptType)>>,
    /// One reader of the store at a time (the first message's workers wait for it).
    reading: tokio::sync::Mutex<()>,
    /// The background re-read, started with the first read.
    refresher: OnceLock<()>,
}

impl ScriptIndex {
    fn new() -> Self {
        Self {
            loaded: AtomicU64::new(u64::MAX),
            ..Self::default()
        }
    }

    fn is_current(&self) -> bool {
        self.loaded.load(Ordering::Acquire) == self.generation.load(Ordering::Acquire)
    }

    /// Reads the keys from `store`. A store error keeps every message on the
    /// per-profile lookup (which treats the error as "no script") until the next read.
    async fn read(&self, store: &ScriptStoreRef) {
        let generation = self.generation.load(Ordering::Acquire);
        match store.enabled_script_keys().await {
            Ok(keys) => {
                let keys: HashSet<_> = keys.into_iter().collect();
                self.any.store(!keys.is_empty(), Ordering::Release);
                *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read which profiles have data scripts");
                self.any.store(true, Ordering::Release);
                self.keys.write().unwrap_or_else(|p| p.into_inner()).clear();
            }
        }
        // an invalidation during the read leaves it stale: the next message reads again
        self.loaded.store(generation, Ordering::Release);
    }

    /// Whether a message of `profile` and `script_type` may have a script: the index
    /// says so, or it could not be read.
    fn covers(&self, profile: ProfileId, script_type: ScriptType) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        keys.is_empty() || keys.contains(&(profile, script_type))
    }
}

/// Re-reads the index every [`LOOKUP_TTL`] while the engine lives.
async fn refresh_index(index: Weak<ScriptIndex>, store: ScriptStoreRef) {
    loop {
        tokio::time::sleep(LOOKUP_TTL).await;
        let Some(index) = index.upgrade() else {
            return;
        };
        let _reading = index.reading.lock().await;
        index.read(&store).await;
    }
}

/// The data script engine and the ingest's cached lookups.
#[derive(Debug)]
pub struct Scripts {
    store: Option<ScriptStoreRef>,
    limits: ScriptLimits,
    /// Which profiles and types have a script at all.
    index: Arc<ScriptIndex>,
    /// `(profile, type)` → the enabled script (or none) and when it was read.
    lookups: Mutex<HashMap<(ProfileId, ScriptType), Lookup>>,
    /// Script id → the compiled version (`updated_at`) and its state.
    compiled: Mutex<HashMap<ScriptId, (Timestamp, Compiled)>>,
}

/// A script that failed on a message: which one, and why.
#[derive(Debug, Clone)]
pub struct ScriptRejection {
    /// The script's id.
    pub script_id: ScriptId,
    /// The script's name.
    pub script_name: String,
    /// What went wrong.
    pub failure: ScriptFailure,
}

impl Scripts {
    /// An engine reading enabled scripts from `store` (without one, only
    /// [`ScriptRunner::run_source`] and [`ScriptRunner::run`] work).
    pub fn new(store: Option<ScriptStoreRef>, limits: ScriptLimits) -> Self {
        Self {
            store,
            limits,
            index: Arc::new(ScriptIndex::new()),
            lookups: Mutex::new(HashMap::new()),
            compiled: Mutex::new(HashMap::new()),
        }
    }

    /// The limits every call runs under.
    pub fn limits(&self) -> ScriptLimits {
        self.limits
    }

    /// `true` when the index, read and current, says no profile has an enabled
    /// script (or there is no store): no await, no lock, two atomic loads. Ingest asks
    /// this first and skips everything script-related, the device's profile lookup
    /// included; `false` means "maybe", and [`Self::any_enabled`] decides.
    pub fn none_enabled(&self) -> bool {
        self.store.is_none() || (self.index.is_current() && !self.index.any.load(Ordering::Acquire))
    }

    /// Whether any profile has an enabled script (reading the index first when it is
    /// stale): ingest skips everything script-related, the device's profile lookup
    /// included, when none has. `false` without a store.
    pub async fn any_enabled(&self) -> bool {
        let Some(store) = &self.store else {
            return false;
        };
        if !self.index.is_current() {
            let _reading = self.index.reading.lock().await;
            if !self.index.is_current() {
                self.index.read(store).await;
            }
            self.index.refresher.get_or_init(|| {
                tokio::spawn(refresh_index(Arc::downgrade(&self.index), store.clone()));
            });
        }
        self.index.any.load(Ordering::Acquire)
    }

    /// The enabled script of `script_type` on `profile`, from the cache or the store.
    /// A store error counts as "no script" for [`LOOKUP_TTL`], logged: ingest goes on.
    pub async fn enabled(
        &self,
        profile: ProfileId,
        script_type: ScriptType,
    ) -> Option<Arc<DataScript>> {
        let store = self.store.as_ref()?;
        if let Some((at, script)) = self.lookups.lock().ok()?.get(&(profile, script_type))
            && at.elapsed() < LOOKUP_TTL
        {
            return script.clone();
        }
        let script = match store.enabled_script(profile, script_type).await {
            Ok(s) => s.map(Arc::new),
            Err(e) => {
                tracing::warn!(profile_id = %profile, script_type = %script_type, error = %e,
                    "cannot read the profile's data script; messages pass unchanged for now");
                None
            }
        };
        if let Ok(mut lookups) = self.lookups.lock() {
            lookups.insert((profile, script_type), (Instant::now(), script.clone()));
        }
        script
    }

    /// Runs the profile's enabled script of `script_type` on a message of `device`:
    /// `Ok(None)` when there is none (the message passes unchanged), the script's
    /// output, or the rejection (logged and counted here).
    pub async fn transform(
        &self,
        device: DeviceId,
        profile: Option<ProfileId>,
        script_type: ScriptType,
        payload: &[u8],
        topic: &str,
    ) -> Result<Option<Vec<u8>>, ScriptRejection> {
        let Some(profile) = profile else {
            return Ok(None);
        };
        if !self.any_enabled().await || !self.index.covers(profile, script_type) {
            return Ok(None);
        }
        let Some(script) = self.enabled(profile, script_type).await else {
            return Ok(None);
        };
        match self.run(&script, payload, topic).await {
            Ok(out) => {
                metrics::counter!("tp_script_runs_total", "type" => script_type.as_str())
                    .increment(1);
                Ok(Some(out))
            }
            Err(failure) => {
                metrics::counter!("tp_script_failures_total",
                    "type" => script_type.as_str(), "reason" => failure.reason())
                .increment(1);
                tracing::warn!(device_id = %device, script_id = %script.id,
                    script = %script.name, script_type = %script_type, error = %failure,
                    "data script failed; message rejected");
                Err(ScriptRejection {
                    script_id: script.id,
                    script_name: script.name.clone(),
                    failure,
                })
            }
        }
    }

    /// The compiled state of this version of `script`, compiling it on first use (and
    /// dropping older versions).
    fn compiled(&self, script: &DataScript) -> Compiled {
        let mut compiled = self
            .compiled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match compiled.get(&script.id) {
            Some((version, state)) if *version == script.updated_at => state.clone(),
            _ => {
                let state: Compiled = Arc::new(Mutex::new(None));
                compiled.insert(script.id, (script.updated_at, state.clone()));
                state
            }
        }
    }
}

/// Compiles (when `state` holds none) and calls, on the calling (blocking) thread.
fn call_in(
    state: &Mutex<Option<CompiledScript>>,
    name: &str,
    source: &str,
    limits: ScriptLimits,
    payload: &[u8],
    topic: &str,
) -> Result<Vec<u8>, ScriptFailure> {
    let mut slot = state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if slot.is_none() {
        *slot = Some(CompiledScript::compile(name, source, limits)?);
    }
    let Some(script) = slot.as_ref() else {
        return Err(ScriptFailure::Compile("not compiled".into()));
    };
    let out = script.call(payload, topic);
    if let Err(failure) = &out
        && CompiledScript::is_spent(failure)
    {
        // start the next message from a fresh state
        *slot = None;
    }
    out
}

async fn on_blocking_pool(
    work: impl FnOnce() -> Result<Vec<u8>, ScriptFailure> + Send + 'static,
) -> Result<Vec<u8>, ScriptFailure> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(ScriptFailure::Runtime(format!("script call panicked: {e}"))))
}

#[async_trait]
impl ScriptRunner for Scripts {
    async fn run(
        &self,
        script: &DataScript,
        payload: &[u8],
        topic: &str,
    ) -> Result<Vec<u8>, ScriptFailure> {
        let state = self.compiled(script);
        let (name, source, limits) = (script.name.clone(), script.content.clone(), self.limits);
        let (payload, topic) = (payload.to_vec(), topic.to_owned());
        on_blocking_pool(move || call_in(&state, &name, &source, limits, &payload, &topic)).await
    }

    async fn run_source(
        &self,
        content: &str,
        payload: &[u8],
        topic: &str,
    ) -> Result<Vec<u8>, ScriptFailure> {
        let state = Mutex::new(None);
        let (source, limits) = (content.to_owned(), self.limits);
        let (payload, topic) = (payload.to_vec(), topic.to_owned());
        on_blocking_pool(move || call_in(&state, "test", &source, limits, &payload, &topic)).await
    }

    fn invalidate(&self, profile: ProfileId) {
        if let Ok(mut lookups) = self.lookups.lock() {
            lookups.retain(|(p, _), _| *p != profile);
        }
        self.index.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// The down-script type of a downlink topic: a device's own telemetry control
/// (`devices/telemetry/control/{number}`) or attribute set
/// (`devices/attributes/set/{number}/{message_id}`); gateway envelopes and other
/// kinds have none.
pub(crate) fn downlink_script_type(topic: &str) -> Option<ScriptType> {
    if topic.starts_with("devices/telemetry/control/") {
        Some(ScriptType::TelemetryDown)
    } else if topic.starts_with("devices/attributes/set/") {
        Some(ScriptType::AttributeDown)
    } else {
        None
    }
}

#[cfg(test)]
mod tests;
