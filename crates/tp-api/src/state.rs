//! Shared state of the API handlers.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use tp_core::rules::{RuleEngineControlRef, RuleStoreRef};
use tp_core::{AccessStoreRef, CacheRef, DeviceTransportRef, MetadataStoreRef, TimeSeriesStoreRef};

use crate::auth::{AuthConfig, AuthKeys};

/// A boxed, sendable future (same type as `futures_util::future::BoxFuture<'static, T>`).
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A named readiness probe added to `/readyz`, e.g. the MQTT broker's health.
pub type ReadinessCheck = Arc<dyn Fn() -> BoxFuture<tp_core::Result<()>> + Send + Sync>;

/// The cache key under which the broker caches a device resolved from its MQTT username
/// (JSON of [`tp_core::Device`]). The API deletes it whenever a device is deleted,
/// changed or its credentials are rotated. Same as [`tp_core::credential_cache_key`].
pub fn device_cred_cache_key(username: &str) -> String {
    tp_core::credential_cache_key(username)
}

/// Everything the handlers need: the stores, the cache, the JWT keys and optional
/// extras (device transport, Prometheus handle, extra readiness checks).
///
/// Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub(crate) metadata: MetadataStoreRef,
    pub(crate) access: AccessStoreRef,
    pub(crate) timeseries: TimeSeriesStoreRef,
    pub(crate) cache: CacheRef,
    pub(crate) auth: Arc<AuthKeys>,
    pub(crate) transport: Option<DeviceTransportRef>,
    pub(crate) metrics: Option<PrometheusHandle>,
    pub(crate) readiness: Arc<Vec<(&'static str, ReadinessCheck)>>,
    /// Rules, scenes, alarms and channels; without it their routes answer 503.
    pub(crate) rules: Option<RuleStoreRef>,
    /// The running rule engine: told about rule changes, runs scenes.
    pub(crate) rule_engine: Option<RuleEngineControlRef>,
    /// Live telemetry for `GET /devices/{id}/telemetry/stream`; without it the route answers 503.
    pub(crate) live: Option<Arc<crate::LiveTelemetry>>,
    /// Per-tenant limits.
    pub(crate) limits: crate::quota::TenantLimits,
    /// Open live streams per tenant on this node.
    pub(crate) streams: Arc<crate::quota::StreamCounts>,
    /// OTA packages and tasks; without it their routes answer 503.
    pub(crate) ota: Option<crate::ota::OtaService>,
    /// Device templates (the thing model), behind the cache the broker reads too;
    /// without it the template routes answer 503.
    pub(crate) thing_models: Option<Arc<tp_core::thing_model::TemplateCache>>,
    /// Data scripts; without it their routes answer 503.
    pub(crate) scripts: Option<tp_core::script::ScriptStoreRef>,
    /// The engine that test-runs scripts and is told about changes.
    pub(crate) script_runner: Option<tp_core::script::ScriptRunnerRef>,
    /// Dashboards; without it their routes answer 503.
    pub(crate) dashboards: Option<tp_core::dashboard::DashboardStoreRef>,
    /// The home page's aggregates; without it `/stats/online` and `/stats/alarms`
    /// answer 503.
    pub(crate) trends: Option<tp_core::trends::TrendStoreRef>,
    /// Messages counted on ingest; without it `/stats/messages` and
    /// `/stats/top-devices` answer 503.
    pub(crate) traffic: Option<Arc<crate::TenantTraffic>>,
}

impl AppState {
    /// State over the given backends. `metadata` and `access` must be views of the same
    /// database (as returned together by `tp_storage::open_access`).
    ///
    /// An empty `auth.jwt_secret` is replaced by a random per-process secret (tokens
    /// then do not survive a restart and are not shared between nodes); a warning is logged.
    pub fn new(
        metadata: MetadataStoreRef,
        access: AccessStoreRef,
        timeseries: TimeSeriesStoreRef,
        cache: CacheRef,
        auth: AuthConfig,
    ) -> Self {
        Self {
            metadata,
            access,
            timeseries,
            cache,
            auth: Arc::new(AuthKeys::new(&auth)),
            transport: None,
            metrics: None,
            readiness: Arc::new(Vec::new()),
            rules: None,
            rule_engine: None,
            live: None,
            limits: crate::quota::TenantLimits::default(),
            streams: Arc::default(),
            ota: None,
            thing_models: None,
            scripts: None,
            script_runner: None,
            dashboards: None,
            trends: None,
            traffic: None,
        }
    }

    /// Adds the OTA store and package files behind the `/api/v1/ota` routes.
    pub fn with_ota(mut self, ota: crate::ota::OtaService) -> Self {
        self.ota = Some(ota);
        self
    }

    /// Adds the device templates behind `/api/v1/templates` through `cache` (the same
    /// one the broker checks ingest with, so a change reaches it at once), and the
    /// thing-model checks of downlink.
    pub fn with_thing_models(mut self, cache: Arc<tp_core::thing_model::TemplateCache>) -> Self {
        self.thing_models = Some(cache);
        self
    }

    /// The template cache, if one was added.
    pub fn thing_models(&self) -> Option<&Arc<tp_core::thing_model::TemplateCache>> {
        self.thing_models.as_ref()
    }

    /// Adds the data script store behind `/api/v1/scripts` (the same database as
    /// `metadata`, e.g. from `tp_storage::open_meta_stores`).
    pub fn with_scripts(mut self, scripts: tp_core::script::ScriptStoreRef) -> Self {
        self.scripts = Some(scripts);
        self
    }

    /// Adds the data script engine: `POST /api/v1/scripts/{id}/test` runs scripts
    /// through it, and script changes invalidate its cache (hand it the broker's
    /// engine so changes reach ingest at once).
    pub fn with_script_runner(mut self, runner: tp_core::script::ScriptRunnerRef) -> Self {
        self.script_runner = Some(runner);
        self
    }

    /// Adds the dashboard store behind `/api/v1/dashboards` (the same database as
    /// `metadata`, e.g. from `tp_storage::open_meta_stores`).
    pub fn with_dashboards(mut self, dashboards: tp_core::dashboard::DashboardStoreRef) -> Self {
        self.dashboards = Some(dashboards);
        self
    }

    /// Adds the trend aggregates behind `/api/v1/stats/online` and `/stats/alarms`
    /// (the same database as `metadata`).
    pub fn with_trends(mut self, trends: tp_core::trends::TrendStoreRef) -> Self {
        self.trends = Some(trends);
        self
    }

    /// Adds the ingest counters behind `/api/v1/stats/messages` and
    /// `/stats/top-devices` (the same [`crate::TenantTraffic`] the broker's uplink
    /// observer feeds).
    pub fn with_traffic(mut self, traffic: Arc<crate::TenantTraffic>) -> Self {
        self.traffic = Some(traffic);
        self
    }

    /// Sets the per-tenant limits (default: [`crate::quota::TenantLimits::default`]).
    pub fn with_limits(mut self, limits: crate::quota::TenantLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Adds the rule store behind the rule, scene, alarm and notification routes (the
    /// same database as `metadata`, e.g. from `tp_storage::open_rules`).
    pub fn with_rules(mut self, rules: RuleStoreRef) -> Self {
        self.rules = Some(rules);
        self
    }

    /// Adds the running rule engine: rule, scene and channel changes invalidate its
    /// cache, and `POST /api/v1/scenes/{id}/run` runs scenes through it.
    pub fn with_rule_engine(mut self, engine: RuleEngineControlRef) -> Self {
        self.rule_engine = Some(engine);
        self
    }

    /// Adds the live telemetry hub behind `GET /api/v1/devices/{id}/telemetry/stream`
    /// (the same one the broker's observer feeds).
    pub fn with_live_telemetry(mut self, live: Arc<crate::LiveTelemetry>) -> Self {
        self.live = Some(live);
        self
    }

    /// The live telemetry hub, if one was added.
    pub fn live_telemetry(&self) -> Option<&Arc<crate::LiveTelemetry>> {
        self.live.as_ref()
    }

    /// The rule store, if one was added.
    pub fn rules(&self) -> Option<&RuleStoreRef> {
        self.rules.as_ref()
    }

    /// The rule engine, if one was added.
    pub fn rule_engine(&self) -> Option<&RuleEngineControlRef> {
        self.rule_engine.as_ref()
    }

    /// Adds the transport used by downlink endpoints.
    pub fn with_transport(mut self, transport: DeviceTransportRef) -> Self {
        self.transport = Some(transport);
        self
    }

    /// Adds the Prometheus handle rendered by `/metrics` (without it `/metrics` is empty).
    pub fn with_metrics(mut self, handle: PrometheusHandle) -> Self {
        self.metrics = Some(handle);
        self
    }

    /// Adds a named check to `/readyz` (the stores and the cache are always checked).
    pub fn with_readiness_check(mut self, name: &'static str, check: ReadinessCheck) -> Self {
        Arc::make_mut(&mut self.readiness).push((name, check));
        self
    }

    /// The metadata store.
    pub fn metadata(&self) -> &MetadataStoreRef {
        &self.metadata
    }

    /// The access-control store.
    pub fn access(&self) -> &AccessStoreRef {
        &self.access
    }

    /// The time-series store.
    pub fn timeseries(&self) -> &TimeSeriesStoreRef {
        &self.timeseries
    }

    /// The cache.
    pub fn cache(&self) -> &CacheRef {
        &self.cache
    }

    /// The device transport, if one was added.
    pub fn transport(&self) -> Option<&DeviceTransportRef> {
        self.transport.as_ref()
    }
}

impl fmt::Debug for AppState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppState")
            .field("metadata", &self.metadata.backend())
            .field("access", &self.access.backend())
            .field("timeseries", &self.timeseries.backend())
            .field("cache", &self.cache.backend())
            .field("transport", &self.transport.as_ref().map(|t| t.name()))
            .field("metrics", &self.metrics.is_some())
            .field("rules", &self.rules.as_ref().map(|r| r.backend()))
            .field("rule_engine", &self.rule_engine.is_some())
            .field("live", &self.live.is_some())
            .field("thing_models", &self.thing_models.is_some())
            .field("scripts", &self.scripts.is_some())
            .field("script_runner", &self.script_runner.is_some())
            .field(
                "readiness",
                &self.readiness.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}
