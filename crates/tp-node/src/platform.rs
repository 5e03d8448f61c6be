//! The all-in-one node: embedded broker + REST API + storage, composed from the
//! crates' public parts. An integrator can run the whole platform from their own
//! `main` with [`Platform::start`].

use std::net::SocketAddr;

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tp_broker::backplane::{ClusterRules, ClusterTransport, InvalidatingCache, ListenerParts};
/// SIGINT/SIGTERM, what the node binaries wait for before [`Platform::shutdown`].
pub use tp_broker::shutdown_signal;
use tp_broker::{BrokerDeps, BrokerOptions, DrainReport, EmbeddedBroker, ReplayProgress};
use tp_core::cluster::{BackplaneRef, DeviceLeasesRef};
use tp_core::rules::{RuleEngineControlRef, RuleStoreRef};
use tp_core::{AccessStoreRef, CacheRef, DeviceTransportRef, MetadataStoreRef, TimeSeriesStoreRef};
use tp_storage::redis::backplane::RedisBackplane;
use tp_storage::redis::leases::RedisLeases;
use tp_storage::writer::{BatchWriter, WriterHandle};

use crate::config::{BackplaneMode, PlatformConfig, Role};
use crate::http_server;
use tp_api::state::AppState;
use tp_rules::{ClockRef, RuleEngine, RuleEngineConfig, RuleEngineDeps, SystemClock};

/// A node that failed to start, naming the setting to change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlatformError {
    /// A setting is wrong or a backend is unreachable.
    #[error("{setting}: {message}")]
    Setting {
        /// The setting (and flag) to look at.
        setting: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The MQTT listener could not start.
    #[error(transparent)]
    Broker(#[from] tp_broker::BrokerError),
    /// The configuration cannot be loaded (subcommands load it themselves).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

fn setting(setting: &'static str) -> impl FnOnce(tp_core::Error) -> PlatformError {
    move |e| PlatformError::Setting {
        setting,
        message: e.to_string(),
    }
}

/// The first admin created on an empty installation.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapAdmin {
    /// Login email.
    pub email: String,
    /// The generated password, when none was configured (shown once).
    pub generated_password: Option<String>,
}

impl std::fmt::Debug for BootstrapAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapAdmin")
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

/// A running node.
#[derive(Debug)]
pub struct Platform {
    metadata: MetadataStoreRef,
    timeseries: TimeSeriesStoreRef,
    cache: CacheRef,
    writer: WriterHandle,
    /// None without the broker role.
    broker: Option<Arc<EmbeddedBroker>>,
    /// The cluster backplane and this node's listener on it, when enabled.
    backplane: Option<(BackplaneRef, JoinHandle<()>)>,
    http_addr: SocketAddr,
    is_https: bool,
    http: JoinHandle<()>,
    stop_http: CancellationToken,
    drain_timeout: Duration,
    bootstrap: Option<BootstrapAdmin>,
    rule_engine: RuleEngine,
}

/// Parts of a node that are not configuration (tests and embedders).
#[derive(Debug, Clone, Default)]
pub struct PlatformOptions {
    /// The clock of the rule engine's duration windows and schedules; the system
    /// clock when unset. Tests pass a [`tp_rules::ManualClock`].
    pub rule_clock: Option<ClockRef>,
}

/// Longest time a client may take to complete the TLS handshake on the HTTPS port.
const HTTPS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The API server's listener: plain TCP, or TLS when `http.tls` is set.
enum HttpListener {
    Plain(tokio::net::TcpListener),
    Https(tp_broker::tls::HttpsListener),
}

/// The process-wide Prometheus recorder (installed once; later nodes in the same
/// process share it).
fn prometheus() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| PrometheusBuilder::new().install_recorder().ok())
        .clone()
}

impl Platform {
    /// Starts a node in named stages: open the stores (`open_stores`), bind the
    /// HTTP port (`bind_http`), start the writer, rule engine and broker
    /// (`start_services`), create the first admin if needed, build the API's state
    /// (`api_state`) and serve (`serve`).
    ///
    /// # Errors
    /// [`PlatformError`] naming the setting to change (bad URL, taken port, ...).
    pub async fn start(config: PlatformConfig) -> Result<Self, PlatformError> {
        Self::start_with(config, PlatformOptions::default()).await
    }

    /// [`Self::start`] with [`PlatformOptions`].
    ///
    /// # Errors
    /// As [`Self::start`].
    pub async fn start_with(
        config: PlatformConfig,
        options: PlatformOptions,
    ) -> Result<Self, PlatformError> {
        let stores = open_stores(&config).await?;
        let Http {
            listener,
            addr,
            hooks,
        } = bind_http(&config, &stores).await?;
        // Until the API serves, the HTTP port says why not: a broker replaying its
        // write-ahead log reports "replaying N of M" on /readyz.
        let progress = Arc::new(ReplayProgress::default());
        let stop_interim = CancellationToken::new();
        let (interim, listener) = match listener {
            HttpListener::Plain(l) => (
                Some(serve_while_starting(
                    l,
                    progress.clone(),
                    stop_interim.clone(),
                )),
                None,
            ),
            other => (None, Some(other)),
        };
        let services = start_services(&config, &stores, options, progress).await;
        stop_interim.cancel();
        let listener = match (interim, listener) {
            (Some(interim), _) => {
                HttpListener::Plain(interim.await.map_err(|e| PlatformError::Setting {
                    setting: "http.listen (--http-listen)",
                    message: format!("the start-up responder failed: {e}"),
                })?)
            }
            (None, Some(listener)) => listener,
            (None, None) => unreachable!("the listener is either served or kept"),
        };
        let services = services?;
        let http = Http {
            listener,
            addr,
            hooks,
        };
        // After every port is bound, so a failed start never prints (and loses) a
        // generated password.
        let bootstrap = tp_api::auth::bootstrap_admin(
            stores.metadata.as_ref(),
            config.auth.admin_email.clone(),
            config.auth.admin_password.clone(),
        )
        .await
        .map_err(setting("auth.admin_email / auth.admin_password"))?
        .map(|(email, generated_password)| BootstrapAdmin {
            email,
            generated_password,
        });
        let state = api_state(&config, &stores, &services)?;
        Ok(serve(config, stores, http, services, state, bootstrap))
    }

    /// Where the REST API listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The REST API's base URL: `https://` when `http.tls` is set, else `http://`.
    pub fn http_url(&self) -> String {
        let scheme = if self.is_https { "https" } else { "http" };
        format!("{scheme}://{}", self.http_addr)
    }

    /// Where MQTT devices connect.
    ///
    /// # Panics
    /// On a node without the broker role (see [`Self::embedded_broker`]).
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.broker().local_addr()
    }

    /// The embedded broker (its MQTT 5 and WebSocket addresses, counters).
    ///
    /// # Panics
    /// On a node without the broker role (see [`Self::embedded_broker`]).
    pub fn broker(&self) -> &EmbeddedBroker {
        self.embedded_broker()
            .expect("Platform::broker on a node without the broker role")
    }

    /// The embedded broker, `None` on a node without the broker role.
    pub fn embedded_broker(&self) -> Option<&EmbeddedBroker> {
        self.broker.as_deref()
    }

    /// The cluster backplane, when enabled (`cluster.backplane`).
    pub fn backplane(&self) -> Option<&BackplaneRef> {
        self.backplane.as_ref().map(|(bp, _)| bp)
    }

    /// The admin created by this start, if the installation was empty.
    pub fn bootstrap_admin(&self) -> Option<&BootstrapAdmin> {
        self.bootstrap.as_ref()
    }

    /// The rule engine (its counters; `flush` to wait for evaluation in tests).
    pub fn rule_engine(&self) -> &RuleEngine {
        &self.rule_engine
    }

    /// The metadata store.
    pub fn metadata(&self) -> &MetadataStoreRef {
        &self.metadata
    }

    /// The time-series store.
    pub fn timeseries(&self) -> &TimeSeriesStoreRef {
        &self.timeseries
    }

    /// The cache.
    pub fn cache(&self) -> &CacheRef {
        &self.cache
    }

    /// Graceful stop: refuse new MQTT work, get every acknowledged message into the
    /// store, then stop the HTTP server.
    pub async fn shutdown(self) -> Result<DrainReport, PlatformError> {
        let report = match &self.broker {
            Some(broker) => broker.drain(self.drain_timeout).await?,
            None => DrainReport {
                accepted: 0,
                consumed: 0,
            },
        };
        if let Some((_, listener)) = &self.backplane {
            listener.abort();
        }
        // Everything ingested is evaluated and acted on before the stores go.
        let _ = tokio::time::timeout(Duration::from_secs(5), self.rule_engine.flush()).await;
        self.rule_engine.stop();
        self.writer
            .clone()
            .shutdown()
            .await
            .map_err(setting("storage.timeseries"))?;
        self.stop_http.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.http).await;
        tracing::info!(
            accepted = report.accepted,
            stored = report.consumed,
            "node stopped"
        );
        Ok(report)
    }
}

/// How long a node trusts a cached device template: a change made through another
/// node's API reaches this node's ingest check within this time (this node's API
/// invalidates the cache at once).
const THING_MODEL_TTL: Duration = Duration::from_secs(10);

/// Stage 1: the stores the configuration names, and the cluster backplane.
struct Stores {
    metadata: MetadataStoreRef,
    access: AccessStoreRef,
    rules: RuleStoreRef,
    ota: tp_core::ota::OtaStoreRef,
    /// Device templates, through the cache the broker and the API share.
    thing_models: Arc<tp_core::thing_model::TemplateCache>,
    /// Data scripts, and the engine that runs them for the broker and the API.
    scripts: tp_core::script::ScriptStoreRef,
    /// Dashboards.
    dashboards: tp_core::dashboard::DashboardStoreRef,
    /// The home page's aggregates.
    trends: tp_core::trends::TrendStoreRef,
    #[cfg(feature = "lua")]
    script_engine: Arc<tp_broker::script::Scripts>,
    timeseries: TimeSeriesStoreRef,
    cache: CacheRef,
    backplane: Option<BackplaneRef>,
}

async fn open_stores(config: &PlatformConfig) -> Result<Stores, PlatformError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| PlatformError::Setting {
        setting: "data_dir (--data-dir)",
        message: format!("cannot create {}: {e}", config.data_dir.display()),
    })?;
    // One pool behind the metadata, access, rule, template, OTA and script stores.
    let meta = tp_storage::open_meta_stores(&config.metadata_url())
        .await
        .map_err(setting("storage.metadata"))?;
    let (metadata, access, rules, ota, scripts, dashboards, trends) = (
        meta.metadata,
        meta.access,
        meta.rules,
        meta.ota,
        meta.scripts,
        meta.dashboards,
        meta.trends,
    );
    let thing_models = Arc::new(tp_core::thing_model::TemplateCache::new(
        meta.thing_models,
        THING_MODEL_TTL,
    ));
    #[cfg(feature = "lua")]
    let script_engine = Arc::new(tp_broker::script::Scripts::new(
        Some(scripts.clone()),
        tp_broker::script::ScriptLimits::default(),
    ));
    let timeseries = open_timeseries(config).await?;
    let cache = tp_storage::open_cache(&config.storage.cache)
        .await
        .map_err(setting("storage.cache"))?;
    let backplane = connect_backplane(config).await?;
    if !config.node.has(Role::Broker) && backplane.is_none() {
        return Err(PlatformError::Setting {
            setting: "node.roles / cluster.backplane",
            message: "a node without the broker role sends downlink through the cluster \
                      backplane: set storage.cache to a redis:// URL"
                .to_owned(),
        });
    }
    Ok(Stores {
        metadata,
        access,
        rules,
        ota,
        thing_models,
        scripts,
        dashboards,
        trends,
        #[cfg(feature = "lua")]
        script_engine,
        timeseries,
        cache,
        backplane,
    })
}

/// The time-series store the configuration names. On the embedded default, an older
/// node's SQLite time-series file in the data dir is imported into it first, so an
/// upgraded node shows its history (once; an interrupted import resumes).
async fn open_timeseries(config: &PlatformConfig) -> Result<TimeSeriesStoreRef, PlatformError> {
    let url = config.timeseries_url();
    let Some(legacy) = config.legacy_timeseries_file() else {
        return tp_storage::open_timeseries(&url)
            .await
            .map_err(setting("storage.timeseries"));
    };
    let (target, options) = tp_storage::fjall::parse_url(&url, "storage.timeseries")
        .map_err(setting("storage.timeseries"))?;
    let store = tp_storage::fjall::open(target, options)
        .await
        .map_err(setting("storage.timeseries"))?;
    import_legacy_timeseries(&legacy, &store).await?;
    Ok(Arc::new(store))
}

/// Imports the SQLite time-series file `legacy` into `store` unless that was done
/// before or there is no such file (`thingspanel migrate-timeseries` and the node's
/// start both come here).
///
/// # Errors
/// [`PlatformError::Setting`] (`storage.timeseries`) naming the file, the failure and
/// the two ways on.
pub async fn import_legacy_timeseries(
    legacy: &std::path::Path,
    store: &tp_storage::fjall::FjallTimeSeriesStore,
) -> Result<tp_storage::migrate::ImportReport, PlatformError> {
    let failed = |e: tp_core::Error| PlatformError::Setting {
        setting: "storage.timeseries",
        message: format!(
            "importing the SQLite time series of {} into {} failed: {e}. Fix the cause and \
             start again (the import resumes; `thingspanel migrate-timeseries` runs it alone), \
             or keep SQLite with storage.timeseries = \"sqlite://{}\"",
            legacy.display(),
            store.path().display(),
            legacy.display()
        ),
    };
    if !legacy.exists() || tp_storage::migrate::is_done(store).await.map_err(failed)? {
        return Ok(tp_storage::migrate::ImportReport {
            already_done: legacy.exists(),
            no_source: !legacy.exists(),
            ..Default::default()
        });
    }
    tracing::warn!(
        from = %legacy.display(),
        to = %store.path().display(),
        "found time series of an older version in SQLite: importing them into the embedded \
         engine before starting (once; an interrupted import resumes)"
    );
    let report = tp_storage::migrate::sqlite_to_fjall(legacy, store)
        .await
        .map_err(failed)?;
    tracing::warn!(
        series = report.series,
        points = report.points,
        events = report.events,
        from = %legacy.display(),
        "time-series import done; the SQLite file is no longer read and may be deleted"
    );
    Ok(report)
}

/// Stage 2: the HTTP port, bound (with its certificate loaded), and the external-broker
/// hooks; the broker binds its own ports in stage 3.
struct Http {
    listener: HttpListener,
    addr: SocketAddr,
    hooks: Option<axum::Router>,
}

async fn bind_http(config: &PlatformConfig, stores: &Stores) -> Result<Http, PlatformError> {
    // External-broker hooks (VerneMQ webhooks, EMQX HTTP auth) when a secret is
    // configured; a weak secret stops the start before anything is bound.
    let hooks = match &config.hooks.secret {
        Some(_) => Some(
            tp_broker::hooks::router(
                tp_broker::hooks::HookDeps {
                    metadata: stores.metadata.clone(),
                    cache: stores.cache.clone(),
                    credential_ttl: Duration::from_secs(config.mqtt.credential_cache_ttl_secs),
                },
                &config.hooks,
            )
            .map_err(|e| PlatformError::Setting {
                setting: "hooks",
                message: e.to_string(),
            })?,
        ),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .map_err(|e| PlatformError::Setting {
            setting: "http.listen (--http-listen)",
            message: format!("cannot listen on {}: {e}", config.http.listen),
        })?;
    let addr = listener.local_addr().map_err(|e| PlatformError::Setting {
        setting: "http.listen (--http-listen)",
        message: e.to_string(),
    })?;
    // Certificate problems stop the start here, before the broker or a generated
    // admin password exist.
    let listener = match &config.http.tls {
        Some(files) => HttpListener::Https(
            tp_broker::tls::HttpsListener::new(
                listener,
                files,
                tp_broker::tls::SettingNames::HTTP,
                HTTPS_HANDSHAKE_TIMEOUT,
            )
            .map_err(|e| PlatformError::Setting {
                setting: e.setting,
                message: e.message,
            })?,
        ),
        None => HttpListener::Plain(listener),
    };
    Ok(Http {
        listener,
        addr,
        hooks,
    })
}

/// Stage 3: the batching writer, the rule engine, the broker (binding its ports),
/// downlink transport and the backplane listener.
struct Services {
    writer: WriterHandle,
    rule_engine: RuleEngine,
    live: Arc<tp_api::LiveTelemetry>,
    /// Messages per tenant counted on this node's ingest (only with a broker).
    traffic: Option<Arc<tp_api::TenantTraffic>>,
    broker: Option<Arc<EmbeddedBroker>>,
    transport: Option<DeviceTransportRef>,
    api_cache: CacheRef,
    rule_control: RuleEngineControlRef,
    backplane: Option<(BackplaneRef, JoinHandle<()>)>,
}

async fn start_services(
    config: &PlatformConfig,
    stores: &Stores,
    options: PlatformOptions,
    progress: Arc<ReplayProgress>,
) -> Result<Services, PlatformError> {
    let Stores {
        metadata,
        access,
        rules,
        ota: _,
        timeseries,
        cache,
        backplane,
        ..
    } = stores;
    let writer = BatchWriter::spawn(timeseries.clone(), config.writer.clone());
    let notifier = tp_rules::notify::Notifications::new(rules.clone(), &config.notify)
        .map_err(setting("notify"))?;
    // Started before the broker, which hands it every accepted message.
    let rule_engine = RuleEngine::start(
        RuleEngineDeps {
            rules: rules.clone(),
            metadata: metadata.clone(),
            profiles: Some(access.clone()),
            cache: cache.clone(),
            notifier: Some(Arc::new(notifier)),
            clock: options.rule_clock.unwrap_or_else(|| Arc::new(SystemClock)),
        },
        RuleEngineConfig::default(),
    )
    .await
    .map_err(setting("storage.metadata (rules)"))?;
    let live = Arc::new(tp_api::LiveTelemetry::new());
    let traffic = Arc::new(tp_api::TenantTraffic::new());
    let broker = if config.node.has(Role::Broker) {
        Some(
            start_broker(
                config,
                stores,
                &writer,
                &rule_engine,
                &[live.clone(), traffic.clone()],
                progress,
            )
            .await?,
        )
    } else {
        None
    };

    // Downlink: this node's broker, and in a cluster the backplane for devices
    // connected elsewhere.
    let local_transport = broker.as_ref().map(|b| b.transport());
    let transport: Option<DeviceTransportRef> = match backplane {
        Some(bp) => Some(Arc::new(ClusterTransport::new(local_transport, bp.clone()))),
        None => local_transport,
    };
    if let Some(t) = &transport {
        rule_engine.set_transport(t.clone());
    }
    if let Some(broker) = &broker {
        rule_engine.watch_status(broker.status_events());
    }
    // Rule changes and the API's cache invalidations reach every node.
    let (api_cache, rule_control): (CacheRef, RuleEngineControlRef) = match backplane {
        Some(bp) => (
            Arc::new(InvalidatingCache::new(cache.clone(), bp.clone())),
            Arc::new(ClusterRules::new(Arc::new(rule_engine.clone()), bp.clone())),
        ),
        None => (cache.clone(), Arc::new(rule_engine.clone())),
    };
    let backplane = backplane.as_ref().map(|bp| {
        let listener = tp_broker::backplane::spawn_listener(
            bp.as_ref(),
            ListenerParts {
                broker: broker.clone(),
                cache: cache.clone(),
                rules: Some(Arc::new(rule_engine.clone())),
            },
        );
        (bp.clone(), listener)
    });
    Ok(Services {
        writer,
        rule_engine,
        live,
        traffic: broker.is_some().then_some(traffic),
        broker,
        transport,
        api_cache,
        rule_control,
        backplane,
    })
}

async fn start_broker(
    config: &PlatformConfig,
    stores: &Stores,
    writer: &WriterHandle,
    rule_engine: &RuleEngine,
    observers: &[tp_core::rules::UplinkObserverRef],
    progress: Arc<ReplayProgress>,
) -> Result<Arc<EmbeddedBroker>, PlatformError> {
    // The broker's write-ahead log lives in the data dir unless set elsewhere.
    let mut mqtt = config.mqtt.clone();
    if mqtt.wal.dir.is_none() {
        mqtt.wal.dir = Some(config.data_dir.join("wal"));
    }
    // The only broker of its store (embedded SQLite, no cluster): devices the store
    // shows online are left over from a previous run that could not record them
    // leaving (crash, SIGKILL). Not on a shared database, where other broker nodes
    // may hold them.
    if stores.backplane.is_none() && stores.metadata.backend() == "sqlite" {
        match tp_broker::presence::mark_stale_offline(&stores.metadata, tp_core::now_ms()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                devices = n,
                "marked devices offline that were online when the previous run stopped"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot reset the online state left by the previous run")
            }
        }
    }
    // In a cluster, a lease per broker node on the devices it serves: the devices
    // of a node that dies are marked offline by another one (`cluster.lease_secs`).
    let leases = match &stores.backplane {
        Some(bp) => Some(
            RedisLeases::connect(
                &config.storage.cache,
                bp.node_id(),
                Duration::from_secs(config.cluster.lease_secs),
            )
            .await
            .map(|l| Arc::new(l) as DeviceLeasesRef)
            .map_err(setting("cluster.lease_secs (storage.cache)"))?,
        ),
        None => None,
    };
    let broker = EmbeddedBroker::start_with(
        &mqtt,
        BrokerDeps {
            metadata: stores.metadata.clone(),
            cache: stores.cache.clone(),
            writer: Arc::new(writer.clone()),
        },
        // Profiles give presence its heartbeat / online-timeout windows.
        BrokerOptions {
            profiles: Some(stores.access.clone()),
            clock: None,
            // The rule engine, the console's live telemetry and the home page's
            // message counters all see every accepted message.
            observer: Some(Arc::new(tp_api::ObserverFanout::new(
                std::iter::once(rule_engine.observer())
                    .chain(observers.iter().cloned())
                    .collect(),
            ))),
            leases,
            replay_progress: Some(progress),
            ota: Some(tp_broker::ota::OtaDownloads {
                store: stores.ota.clone(),
                dir: config.ota_dir(),
            }),
            thing_models: Some(stores.thing_models.clone()),
            // Data scripts on this node's devices' uplink and downlink.
            #[cfg(feature = "lua")]
            scripts: Some(stores.script_engine.clone()),
        },
    )
    .await?;
    Ok(Arc::new(broker))
}

/// Stage 4: the REST API's state, with the readiness checks of this node's parts.
fn api_state(
    config: &PlatformConfig,
    stores: &Stores,
    services: &Services,
) -> Result<AppState, PlatformError> {
    let jwt_secret = match &config.auth.jwt_secret {
        Some(s) => s.clone(),
        None => load_or_create_secret(&config.data_dir.join("jwt.secret"))?,
    };
    let mut state = AppState::new(
        stores.metadata.clone(),
        stores.access.clone(),
        stores.timeseries.clone(),
        services.api_cache.clone(),
        config.auth.auth_config(jwt_secret),
    )
    .with_rules(stores.rules.clone())
    .with_thing_models(stores.thing_models.clone())
    .with_scripts(stores.scripts.clone())
    .with_dashboards(stores.dashboards.clone())
    .with_trends(stores.trends.clone())
    .with_rule_engine(services.rule_control.clone())
    .with_live_telemetry(services.live.clone())
    .with_limits(config.limits)
    .with_ota(tp_api::ota::OtaService {
        store: stores.ota.clone(),
        dir: config.ota_dir(),
        max_package_bytes: config.ota.max_package_bytes,
        public_url: config.ota.public_url.clone(),
        https: config.http.tls.is_some(),
    });
    if let Some(t) = &services.transport {
        state = state.with_transport(t.clone());
    }
    if let Some(traffic) = &services.traffic {
        state = state.with_traffic(traffic.clone());
    }
    // The broker's engine: a script change through the API reaches ingest at once.
    #[cfg(feature = "lua")]
    {
        state = state.with_script_runner(stores.script_engine.clone());
    }
    if let Some(handle) = prometheus() {
        state = state.with_metrics(handle);
    }
    if let Some((bp, _)) = &services.backplane {
        let bp = bp.clone();
        state = state.with_readiness_check(
            "backplane",
            flag_check(
                "redis",
                "cluster backplane subscription lost; reconnecting",
                move || bp.is_subscribed(),
            ),
        );
    }
    if let Some(broker) = services.broker.clone() {
        state = state.with_readiness_check(
            "mqtt",
            flag_check("mqtt", "listener or ingest loop stopped", move || {
                broker.is_healthy()
            }),
        );
    }
    Ok(state)
}

/// A readiness check from a synchronous probe: unavailable (`backend`, `reason`)
/// while `up` says no.
fn flag_check(
    backend: &'static str,
    reason: &'static str,
    up: impl Fn() -> bool + Send + Sync + 'static,
) -> tp_api::state::ReadinessCheck {
    Arc::new(move || {
        let result = if up() {
            Ok(())
        } else {
            Err(tp_core::Error::Unavailable {
                backend,
                source: reason.into(),
            })
        };
        Box::pin(async move { result })
    })
}

/// Stage 5: serve HTTP (the REST API, or health/metrics only without the API role,
/// plus the HTTP device API and the hooks) and hand back the running node.
fn serve(
    config: PlatformConfig,
    stores: Stores,
    http: Http,
    services: Services,
    state: AppState,
    bootstrap: Option<BootstrapAdmin>,
) -> Platform {
    let stop_http = CancellationToken::new();
    let stop = stop_http.clone();
    let mut app = if config.node.has(Role::Api) {
        tp_api::router(state)
    } else {
        tp_api::system_router(state)
    };
    if let Some(broker) = &services.broker {
        app = app.merge(tp_broker::http::device_router(broker));
    }
    if let Some(hooks) = http.hooks {
        app = app.merge(hooks);
    }
    let is_https = matches!(http.listener, HttpListener::Https(_));
    let listener = http.listener;
    let limits = config.http.limits();
    let drain = Duration::from_secs(config.drain_timeout_secs);
    let server = tokio::spawn(async move {
        match listener {
            // The peer address reaches handlers (sign-in throttling is per address).
            HttpListener::Plain(l) => http_server::serve(l, app, limits, stop, drain).await,
            HttpListener::Https(l) => http_server::serve(l, app, limits, stop, drain).await,
        }
    });
    tracing::info!(http_addr = %http.addr, mqtt = ?services.broker.as_ref().map(|b| b.local_addr()),
        roles = ?config.node.roles, cluster = services.backplane.is_some(), "node started");
    Platform {
        metadata: stores.metadata,
        timeseries: stores.timeseries,
        cache: stores.cache,
        writer: services.writer,
        broker: services.broker,
        backplane: services.backplane,
        http_addr: http.addr,
        is_https,
        http: server,
        stop_http,
        drain_timeout: Duration::from_secs(config.drain_timeout_secs),
        bootstrap,
        rule_engine: services.rule_engine,
    }
}

/// Answers the HTTP port while the node starts, until `stop`; then hands the
/// listener back. `/healthz` is 200 (the process is alive); everything else is 503
/// with what the node is doing, e.g. `{"status":"starting","checks":{"wal":"replaying
/// 5000 of 100000"}}`, so a load balancer keeps devices away and an operator sees the
/// progress of the write-ahead log replay.
fn serve_while_starting(
    listener: tokio::net::TcpListener,
    progress: Arc<ReplayProgress>,
    stop: CancellationToken,
) -> JoinHandle<tokio::net::TcpListener> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return listener,
                accepted = listener.accept() => {
                    if let Ok((stream, _)) = accepted {
                        tokio::spawn(answer_starting(stream, progress.clone()));
                    }
                }
            }
        }
    })
}

async fn answer_starting(mut stream: tokio::net::TcpStream, progress: Arc<ReplayProgress>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = [0u8; 2048];
    let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await
    else {
        return;
    };
    let head = String::from_utf8_lossy(&buf[..n]);
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    let (status, body) = if path == "/healthz" {
        ("200 OK", r#"{"status":"ok"}"#.to_owned())
    } else {
        let doing = match progress.replaying() {
            Some((done, total)) => format!("replaying {done} of {total}"),
            None => "starting".to_owned(),
        };
        (
            "503 Service Unavailable",
            format!(r#"{{"status":"starting","checks":{{"wal":"{doing}"}}}}"#),
        )
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The cluster backplane per `cluster.backplane`: with `"auto"` when the cache is a
/// single Redis server (the only shared thing nodes have besides the databases).
async fn connect_backplane(config: &PlatformConfig) -> Result<Option<BackplaneRef>, PlatformError> {
    let cache = config.storage.cache.trim().to_ascii_lowercase();
    let is_redis = cache.starts_with("redis://") || cache.starts_with("redis+unix://");
    match config.cluster.backplane {
        BackplaneMode::Off => return Ok(None),
        BackplaneMode::Auto if !is_redis => return Ok(None),
        BackplaneMode::Auto | BackplaneMode::On => {}
    }
    let node_id = config
        .cluster
        .node_id
        .clone()
        .unwrap_or_else(|| format!("node-{}", tp_core::random_token(4)));
    RedisBackplane::connect(&config.storage.cache, node_id)
        .await
        .map(|bp| Some(Arc::new(bp) as BackplaneRef))
        .map_err(setting("cluster.backplane (storage.cache)"))
}

/// Reads the JWT secret kept in the data dir, or creates it (mode 0600), so tokens
/// stay valid across restarts.
fn load_or_create_secret(path: &Path) -> Result<String, PlatformError> {
    let err = |e: std::io::Error| PlatformError::Setting {
        setting: "auth.jwt_secret",
        message: format!("{}: {e}", path.display()),
    };
    match std::fs::read_to_string(path) {
        Ok(s) if s.trim().len() >= 32 => return Ok(s.trim().to_owned()),
        Ok(_) => {
            return Err(PlatformError::Setting {
                setting: "auth.jwt_secret",
                message: format!("{} holds fewer than 32 characters", path.display()),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let secret = tp_core::random_token(32);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    use std::io::Write;
    let mut file = options.open(path).map_err(err)?;
    file.write_all(secret.as_bytes()).map_err(err)?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nhost: node\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn the_http_port_reports_replay_progress_while_the_node_starts() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let progress = Arc::new(ReplayProgress::default());
        let stop = CancellationToken::new();
        let interim = serve_while_starting(listener, progress.clone(), stop.clone());
        let starting = get(addr, "/readyz").await;
        assert!(
            starting.starts_with("HTTP/1.1 503") && starting.contains(r#""wal":"starting""#),
            "{starting}"
        );
        progress.begin(10);
        progress.advance();
        progress.advance();
        let replaying = get(addr, "/readyz").await;
        assert!(replaying.contains("replaying 2 of 10"), "{replaying}");
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        stop.cancel();
        let listener = interim.await.unwrap();
        assert_eq!(listener.local_addr().unwrap(), addr);
    }
}
