//! The rule engine runtime: drives the pure evaluator of [`tp_core::rules::eval`]
//! from the ingest path, from timers and from rule changes, and acts on what it
//! reports.
//!
//! - Ingest hands inputs to [`RuleEngine::observe`] (the broker's
//!   [`UplinkObserver`](tp_core::rules::UplinkObserver)): a bounded queue; when it is
//!   full the input is dropped, counted (`tp_rule_inputs_dropped_total`) and logged,
//!   so rules never slow down device acknowledgement.
//! - One task owns the [`Evaluator`]: rules are cached in memory, reloaded on
//!   [`RuleEngineControl::rules_changed`] and every `refresh` (so changes made through
//!   another node arrive), and evaluated without a store round trip per message.
//!   It sleeps on the [`Clock`] until the evaluator's next deadline ("held for N
//!   seconds" windows, schedules), so a manual clock drives timers in tests.
//! - A second task acts on transitions in order: actions ([`actions`]) and state
//!   persistence (`RuleStore::put_rule_state` on transitions, not per message;
//!   reloaded at start, so windows and firing state survive restarts).
//! - `notify` (feature `notify`, on by default): delivery of notify actions (signed
//!   webhooks, SMTP email) with retries, recorded in the notification history.
//!
//! The engine needs only tp-core's traits (stores, cache, transport), so it runs in
//! any service that has them: the platform's node, or your own.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> tp_core::Result<()> {
//! use std::sync::Arc;
//! use tp_rules::{RuleEngine, RuleEngineConfig, RuleEngineDeps, SystemClock};
//!
//! let (metadata, _access, rules) = tp_storage::open_rules("sqlite::memory:").await?;
//! let engine = RuleEngine::start(
//!     RuleEngineDeps {
//!         rules,
//!         metadata,
//!         profiles: None,
//!         cache: tp_storage::open_cache("memory://").await?,
//!         notifier: None,
//!         clock: Arc::new(SystemClock),
//!     },
//!     RuleEngineConfig::default(),
//! )
//! .await?;
//! // hand the broker `engine.observer()`; here nothing arrives
//! engine.flush().await;
//! assert_eq!(engine.stats().evaluated, 0);
//! engine.stop();
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs, missing_debug_implementations)]

mod actions;
#[cfg(feature = "notify")]
pub mod notify;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tp_core::rules::eval::{Evaluator, Transition};
use tp_core::rules::{
    ActionOutcome, NotifierRef, RuleEngineControl, RuleInput, RuleInputData, RuleState,
    RuleStoreRef, UplinkObserver,
};
use tp_core::{
    CacheRef, DeviceStatusEvent, DeviceTransportRef, Error, MetadataStoreRef, Result, SceneId,
    TenantId,
};

pub use tp_core::clock::{Clock, ClockRef, ManualClock, SystemClock};

use actions::Executor;

/// Tuning of the engine.
#[derive(Debug, Clone)]
pub struct RuleEngineConfig {
    /// Inputs queued for evaluation before new ones are dropped.
    pub queue_capacity: usize,
    /// Transitions and state writes queued for the action task before evaluation waits.
    pub action_queue_capacity: usize,
    /// How often rules are reloaded even without a change notice.
    pub refresh: Duration,
    /// Lifetime of a schedule's fire lock in the cache.
    pub fire_lock_ttl: Duration,
}

impl Default for RuleEngineConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 65_536,
            action_queue_capacity: 4_096,
            refresh: Duration::from_secs(30),
            fire_lock_ttl: Duration::from_secs(3_600),
        }
    }
}

/// What the engine works with.
#[derive(Debug, Clone)]
pub struct RuleEngineDeps {
    /// Rules, scenes, alarms, channels, rule state.
    pub rules: RuleStoreRef,
    /// Devices and the downlink log.
    pub metadata: MetadataStoreRef,
    /// Device profiles: which devices are gateways, for downlink routing.
    pub profiles: Option<tp_core::AccessStoreRef>,
    /// Fire locks of schedules.
    pub cache: CacheRef,
    /// Delivery of notifications (without it, notify actions fail and are counted).
    pub notifier: Option<NotifierRef>,
    /// Time for durations and schedules.
    pub clock: ClockRef,
}

/// Counters of a running engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RuleEngineStats {
    /// Inputs queued.
    pub received: u64,
    /// Inputs evaluated.
    pub evaluated: u64,
    /// Inputs dropped because the queue was full.
    pub dropped: u64,
    /// Transitions reported by the evaluator.
    pub transitions: u64,
    /// Rules loaded.
    pub rules: u64,
}

enum Msg {
    Input(RuleInput),
    /// Answered once everything queued before it is evaluated and acted on.
    Flush(oneshot::Sender<()>),
}

enum Job {
    Transition(Transition),
    Persist(Vec<RuleState>),
    Flush(oneshot::Sender<()>),
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    evaluated: AtomicU64,
    dropped: AtomicU64,
    transitions: AtomicU64,
    rules: AtomicU64,
}

struct Inner {
    inbox: mpsc::Sender<Msg>,
    reload: mpsc::UnboundedSender<oneshot::Sender<()>>,
    executor: Arc<Executor>,
    counters: Arc<Counters>,
    stop: CancellationToken,
}

/// The running rule engine. Cheap to clone; stops when [`RuleEngine::stop`] is called.
#[derive(Clone)]
pub struct RuleEngine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RuleEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleEngine")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl RuleEngine {
    /// Loads the enabled rules and their persisted state and starts the engine's
    /// tasks. Give [`Self::observer`] to the broker and, once it runs,
    /// [`Self::set_transport`].
    ///
    /// # Errors
    /// When the rules or their state cannot be read.
    pub async fn start(deps: RuleEngineDeps, config: RuleEngineConfig) -> Result<Self> {
        let executor = Arc::new(Executor {
            rules: deps.rules.clone(),
            metadata: deps.metadata.clone(),
            profiles: deps.profiles.clone(),
            transport: OnceLock::new(),
            cache: deps.cache.clone(),
            notifier: deps.notifier.clone(),
            clock: deps.clock.clone(),
            fire_lock_ttl: config.fire_lock_ttl,
        });
        let counters = Arc::new(Counters::default());
        let mut evaluator = Evaluator::new();
        load(&mut evaluator, &deps.rules, deps.clock.now_ms()).await?;
        counters
            .rules
            .store(evaluator.len() as u64, Ordering::Relaxed);
        tracing::info!(rules = evaluator.len(), "rule engine started");

        let (inbox, inbox_rx) = mpsc::channel(config.queue_capacity.max(1));
        let (reload, reload_rx) = mpsc::unbounded_channel();
        let (jobs, jobs_rx) = mpsc::channel(config.action_queue_capacity.max(1));
        let stop = CancellationToken::new();
        tokio::spawn(act(executor.clone(), jobs_rx, stop.clone()));
        tokio::spawn(
            Evaluation {
                evaluator,
                rules: deps.rules,
                clock: deps.clock,
                jobs,
                counters: counters.clone(),
                refresh: config.refresh,
            }
            .run(inbox_rx, reload_rx, stop.clone()),
        );
        Ok(Self {
            inner: Arc::new(Inner {
                inbox,
                reload,
                executor,
                counters,
                stop,
            }),
        })
    }

    /// The handle the broker hands accepted messages to.
    pub fn observer(&self) -> tp_core::rules::UplinkObserverRef {
        Arc::new(self.clone())
    }

    /// The transport used by device actions (commands, attribute sets, telemetry
    /// control). Until it is set, device actions are logged as pending and delivered
    /// when the device subscribes.
    pub fn set_transport(&self, transport: DeviceTransportRef) {
        let _ = self.inner.executor.transport.set(transport);
    }

    /// Feeds online/offline transitions (from `EmbeddedBroker::status_events`) to the
    /// engine, resolving each device's tenant and profile.
    pub fn watch_status(&self, mut events: broadcast::Receiver<DeviceStatusEvent>) {
        let engine = self.clone();
        let metadata = self.inner.executor.metadata.clone();
        let stop = self.inner.stop.clone();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = stop.cancelled() => return,
                    e = events.recv() => e,
                };
                let event = match event {
                    Ok(e) => e,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(
                            missed = n,
                            "rule engine fell behind on device status events"
                        );
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                match metadata.get_device_by_id(event.device_id).await {
                    Ok(Some(d)) => engine.observe(RuleInput {
                        device_id: d.id,
                        tenant_id: d.tenant_id,
                        profile_id: d.profile_id,
                        ts: event.at,
                        data: RuleInputData::Status {
                            online: event.online,
                        },
                    }),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(device_id = %event.device_id, error = %e, "cannot resolve the device of a status event; not evaluated")
                    }
                }
            }
        });
    }

    /// Waits until every input queued before this call has been evaluated and its
    /// actions and state writes are done (tests, graceful shutdown).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.inner.inbox.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Current counters.
    pub fn stats(&self) -> RuleEngineStats {
        let c = &self.inner.counters;
        RuleEngineStats {
            received: c.received.load(Ordering::Relaxed),
            evaluated: c.evaluated.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            transitions: c.transitions.load(Ordering::Relaxed),
            rules: c.rules.load(Ordering::Relaxed),
        }
    }

    /// Stops the engine's tasks (queued inputs are not evaluated).
    pub fn stop(&self) {
        self.inner.stop.cancel();
    }
}

impl UplinkObserver for RuleEngine {
    fn observe(&self, input: RuleInput) {
        match self.inner.inbox.try_send(Msg::Input(input)) {
            Ok(()) => {
                self.inner.counters.received.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                let n = self.inner.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                metrics::counter!("tp_rule_inputs_dropped_total").increment(1);
                // First drop and then one line per 1,000, not one per message.
                if n == 1 || n.is_multiple_of(1000) {
                    tracing::warn!(
                        dropped_total = n,
                        "rule engine queue full; input not evaluated"
                    );
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

#[async_trait::async_trait]
impl RuleEngineControl for RuleEngine {
    async fn rules_changed(&self, tenant: TenantId) {
        let (tx, rx) = oneshot::channel();
        if self.inner.reload.send(tx).is_err() {
            return;
        }
        // Answer once the new rules are live on this node, so a client that changes
        // a rule and then sends data sees it applied; a slow store only delays.
        if tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .is_err()
        {
            tracing::warn!(tenant_id = %tenant, "rule reload still running; answering anyway");
        }
    }

    async fn run_scene(&self, tenant: TenantId, scene: SceneId) -> Result<Vec<ActionOutcome>> {
        let executor = &self.inner.executor;
        let s = executor
            .rules
            .get_scene(tenant, scene)
            .await?
            .ok_or_else(|| Error::not_found("scene", scene.to_string()))?;
        tracing::info!(tenant_id = %tenant, scene_id = %scene, "running scene");
        Ok(executor.run(tenant, &s.actions, None, 0).await)
    }
}

/// (Re)loads every enabled rule; restores the persisted state of rules new here.
async fn load(evaluator: &mut Evaluator, store: &RuleStoreRef, now: i64) -> Result<()> {
    let rules = store.list_enabled_rules().await?;
    let fresh = evaluator.load(rules, now);
    let mut states = Vec::new();
    for id in fresh {
        states.extend(store.list_rule_states(id).await?);
    }
    evaluator.import_states(&states, now);
    for (rule, problem) in evaluator.errors() {
        tracing::warn!(rule_id = %rule, problem, "rule cannot be fully evaluated");
    }
    Ok(())
}

struct Evaluation {
    evaluator: Evaluator,
    rules: RuleStoreRef,
    clock: ClockRef,
    jobs: mpsc::Sender<Job>,
    counters: Arc<Counters>,
    refresh: Duration,
}

impl Evaluation {
    async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Msg>,
        mut reload: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
        stop: CancellationToken,
    ) {
        let mut refresh = tokio::time::interval(self.refresh);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        refresh.tick().await;
        // Loading may have armed schedules (state worth persisting before any input).
        let now = self.clock.now_ms();
        self.emit(Vec::new(), now).await;
        loop {
            let deadline = self.evaluator.next_deadline();
            let clock = self.clock.clone();
            let timer = async move {
                match deadline {
                    Some(d) => clock.sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                done = reload.recv() => {
                    let Some(done) = done else { return };
                    // Coalesce the notices already queued: one reload covers them all.
                    // Notices that arrive while it runs are not answered by it (it may
                    // have read the rules before their change); the next turn reloads.
                    let mut waiting = vec![done];
                    while let Ok(more) = reload.try_recv() {
                        waiting.push(more);
                    }
                    self.reload().await;
                    for done in waiting {
                        let _ = done.send(());
                    }
                }
                _ = timer => {
                    let now = self.clock.now_ms();
                    let transitions = self.evaluator.tick(now);
                    self.emit(transitions, now).await;
                }
                msg = inbox.recv() => match msg {
                    None => return,
                    Some(Msg::Input(input)) => {
                        let now = self.clock.now_ms();
                        let transitions = self.evaluator.on_input(&input, now);
                        self.counters.evaluated.fetch_add(1, Ordering::Relaxed);
                        self.emit(transitions, now).await;
                    }
                    Some(Msg::Flush(done)) => {
                        // Timers due by now are part of "everything so far".
                        let now = self.clock.now_ms();
                        let transitions = self.evaluator.tick(now);
                        self.emit(transitions, now).await;
                        let _ = self.jobs.send(Job::Flush(done)).await;
                    }
                },
                _ = refresh.tick() => self.reload().await,
            }
        }
    }

    async fn reload(&mut self) {
        let now = self.clock.now_ms();
        match load(&mut self.evaluator, &self.rules, now).await {
            Ok(()) => {
                self.counters
                    .rules
                    .store(self.evaluator.len() as u64, Ordering::Relaxed);
                tracing::debug!(rules = self.evaluator.len(), "rules reloaded");
                // Persist what the load marked (newly armed schedules) now: the next
                // load forgets pending marks.
                self.emit(Vec::new(), now).await;
            }
            Err(e) => tracing::warn!(error = %e, "cannot reload rules; keeping the loaded ones"),
        }
    }

    async fn emit(&mut self, transitions: Vec<Transition>, now: i64) {
        for t in transitions {
            self.counters.transitions.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("tp_rule_transitions_total", "kind" => kind_name(&t)).increment(1);
            let _ = self.jobs.send(Job::Transition(t)).await;
        }
        let states = self.evaluator.take_dirty(now);
        if !states.is_empty() {
            let _ = self.jobs.send(Job::Persist(states)).await;
        }
    }
}

fn kind_name(t: &Transition) -> &'static str {
    use tp_core::rules::eval::TransitionKind::*;
    match t.kind {
        Fired => "fired",
        Repeated => "repeated",
        Cleared => "cleared",
        Pulse => "pulse",
    }
}

/// Acts on transitions and writes state, in the order the evaluator produced them.
async fn act(executor: Arc<Executor>, mut jobs: mpsc::Receiver<Job>, stop: CancellationToken) {
    loop {
        let job = tokio::select! {
            _ = stop.cancelled() => return,
            j = jobs.recv() => match j { Some(j) => j, None => return },
        };
        match job {
            Job::Transition(t) => {
                executor.transition(&t).await;
            }
            Job::Persist(states) => {
                for s in states {
                    if let Err(e) = executor.rules.put_rule_state(&s).await {
                        tracing::warn!(rule_id = %s.rule_id, scope = %s.scope, error = %e, "cannot persist rule state");
                    }
                }
            }
            Job::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}
