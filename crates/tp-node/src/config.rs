//! Typed configuration of a node: real defaults, then an optional TOML file, then
//! `TP_*` environment variables, then command-line flags (later layers win).
//!
//! Environment: `TP_DATA_DIR`, `TP_ADMIN_EMAIL`, `TP_ADMIN_PASSWORD`, and any field as
//! `TP_<SECTION>__<FIELD>` (e.g. `TP_HTTP__LISTEN=0.0.0.0:8080`,
//! `TP_MQTT__MAX_CONNECTIONS=5000`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use tp_broker::BrokerConfig;
use tp_storage::writer::WriterConfig;

/// Everything a node needs to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlatformConfig {
    /// Directory of the embedded SQLite files and the generated JWT secret (`--data-dir`).
    pub data_dir: PathBuf,
    /// REST API.
    pub http: HttpConfig,
    /// Embedded MQTT broker.
    pub mqtt: BrokerConfig,
    /// Where metadata, time series and cache live.
    pub storage: StorageConfig,
    /// Batching of time-series writes.
    pub writer: WriterConfig,
    /// Authentication of API users.
    pub auth: AuthSettings,
    /// Longest wait on SIGINT/SIGTERM for acknowledged messages to reach the store (seconds).
    pub drain_timeout_secs: u64,
    /// Delivery of rule notifications (webhooks, email).
    pub notify: NotifyConfig,
    /// Authentication/ACL endpoints for an external MQTT cluster (VerneMQ webhooks,
    /// EMQX HTTP auth), served under `/hooks/` when `hooks.secret` is set. See
    /// [`tp_broker::hooks`].
    pub hooks: tp_broker::hooks::HooksConfig,
    /// What this node runs (`[node]`): the broker role, the API role, or both.
    pub node: NodeConfig,
    /// Multi-node operation (`[cluster]`): the Redis backplane.
    pub cluster: ClusterConfig,
    /// Per-tenant limits (`[limits]`): devices, rules, channels, open streams.
    pub limits: tp_api::quota::TenantLimits,
    /// Log output (`[log]`): plain text or JSON lines.
    pub log: LogConfig,
    /// OTA upgrades (`[ota]`): package size limit and the download URL devices get.
    pub ota: OtaConfig,
}

/// `[ota]`: OTA packages are kept in `<data_dir>/ota`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtaConfig {
    /// Largest package upload in bytes (default 256 MiB); larger uploads are refused
    /// with 413 (`TP_OTA__MAX_PACKAGE_BYTES`).
    pub max_package_bytes: u64,
    /// The base URL devices download packages from, e.g. `https://iot.example.com`
    /// (behind a load balancer or proxy); unset, the `Host` of the request that
    /// created the task, with this node's scheme.
    pub public_url: Option<String>,
}

impl Default for OtaConfig {
    fn default() -> Self {
        Self {
            max_package_bytes: tp_api::ota::DEFAULT_MAX_PACKAGE_BYTES,
            public_url: None,
        }
    }
}

/// `[log]`: how the node writes its log (to stdout; `RUST_LOG` filters it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `"text"` (default; colour only on a terminal) or `"json"` (one JSON object
    /// per line, for log shippers), `TP_LOG__FORMAT=json`.
    pub format: LogFormat,
}

/// `log.format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// A role of a node: several nodes of different roles form a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Device access: MQTT/CoAP listeners, the HTTP device API, ingest, the rule
    /// engine's uplink side. Without the API role its HTTP port serves only
    /// `/healthz`, `/readyz`, `/metrics`, the device API and the hooks.
    Broker,
    /// The REST API (and web console). Without the broker role it opens no MQTT
    /// listener and sends downlink through the cluster backplane.
    Api,
}

impl Role {
    /// The name in configuration files (`"broker"`, `"api"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Broker => "broker",
            Role::Api => "api",
        }
    }
}

/// `[node]`: this node's roles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Roles of this node (`TP_NODE__ROLES='["api"]'`); both by default (one node
    /// runs the whole platform).
    pub roles: Vec<Role>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            roles: vec![Role::Broker, Role::Api],
        }
    }
}

impl NodeConfig {
    /// Whether the node runs `role`.
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// `[cluster]`: how nodes reach each other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// The Redis pub/sub backplane (downlink to devices on other nodes, cache
    /// invalidations, rule changes): `"auto"` (default) when `storage.cache` is a
    /// single-server `redis://` URL, `true` to require it, `false` for none.
    pub backplane: BackplaneMode,
    /// This node's id on the backplane; a random one when unset. Keep it across
    /// restarts of a node: a node restarted under its id marks offline at once what
    /// its previous run held, instead of after the lease time.
    pub node_id: Option<String>,
    /// Seconds a broker node's lease on its devices lasts without renewal (renewed
    /// every third of it, in Redis, with the backplane). When a node dies, another
    /// node marks its devices offline (reason `node_lost`) within about this time,
    /// once; a node cut off from Redis this long is treated as dead.
    pub lease_secs: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            backplane: BackplaneMode::Auto,
            node_id: None,
            lease_secs: 15,
        }
    }
}

/// `cluster.backplane`: `"auto"`, `true` or `false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "BackplaneSetting", into = "BackplaneSetting")]
pub enum BackplaneMode {
    /// On when the cache is a single-server Redis.
    Auto,
    /// Required: the start fails without a Redis cache.
    On,
    /// Off (a single node, or nodes that never send each other downlink).
    Off,
}

/// The TOML/env form of [`BackplaneMode`].
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum BackplaneSetting {
    Switch(bool),
    Word(String),
}

impl TryFrom<BackplaneSetting> for BackplaneMode {
    type Error = String;
    fn try_from(s: BackplaneSetting) -> Result<Self, String> {
        match s {
            BackplaneSetting::Switch(true) => Ok(Self::On),
            BackplaneSetting::Switch(false) => Ok(Self::Off),
            BackplaneSetting::Word(w) => match w.to_ascii_lowercase().as_str() {
                "auto" => Ok(Self::Auto),
                "true" | "on" => Ok(Self::On),
                "false" | "off" => Ok(Self::Off),
                _ => Err(format!("expected \"auto\", true or false, got {w:?}")),
            },
        }
    }
}

impl From<BackplaneMode> for BackplaneSetting {
    fn from(m: BackplaneMode) -> Self {
        match m {
            BackplaneMode::Auto => Self::Word("auto".to_owned()),
            BackplaneMode::On => Self::Switch(true),
            BackplaneMode::Off => Self::Switch(false),
        }
    }
}

impl Default for PlatformConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            http: HttpConfig::default(),
            mqtt: BrokerConfig::default(),
            storage: StorageConfig::default(),
            writer: WriterConfig::default(),
            auth: AuthSettings::default(),
            drain_timeout_secs: 30,
            notify: NotifyConfig::default(),
            hooks: tp_broker::hooks::HooksConfig::default(),
            node: NodeConfig::default(),
            cluster: ClusterConfig::default(),
            limits: tp_api::quota::TenantLimits::default(),
            log: LogConfig::default(),
            ota: OtaConfig::default(),
        }
    }
}

/// REST API settings (the HTTP device API is served on the same port).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address (`--http-listen`). Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Serve HTTPS instead of HTTP on `listen` (`[http.tls]`: `cert_path`, `key_path`,
    /// PEM files read at startup), so tokens, passwords and device credentials are
    /// not sent in the clear when no TLS-terminating proxy sits in front. Plain-HTTP
    /// requests to the port get a `400`. Unset = plain HTTP.
    pub tls: Option<tp_broker::tls::CertificateFiles>,
    /// Seconds a client has to send a request's headers; then the connection closes.
    pub header_read_timeout_secs: u64,
    /// Seconds a client has to send a request's body; then the request fails (408).
    pub body_read_timeout_secs: u64,
    /// HTTP connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        let limits = crate::http_server::HttpLimits::default();
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            tls: None,
            header_read_timeout_secs: limits.header_read_timeout_secs,
            body_read_timeout_secs: limits.body_read_timeout_secs,
            max_connections: limits.max_connections,
        }
    }
}

impl HttpConfig {
    pub(crate) fn limits(&self) -> crate::http_server::HttpLimits {
        crate::http_server::HttpLimits {
            header_read_timeout_secs: self.header_read_timeout_secs,
            body_read_timeout_secs: self.body_read_timeout_secs,
            max_connections: self.max_connections,
        }
    }
}

/// Backend URLs. An empty metadata URL means a SQLite file in `data_dir`, an empty
/// time-series URL the embedded engine in `data_dir` (see
/// [`PlatformConfig::timeseries_url`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Metadata store URL (`sqlite://path`, `sqlite::memory:`); default `<data_dir>/metadata.db`.
    pub metadata: String,
    /// Time-series store URL (`fjall://dir`, `sqlite://path`, `postgres://..`,
    /// `taos+ws://..`); default the embedded engine in `<data_dir>/timeseries/`.
    pub timeseries: String,
    /// Cache URL (`memory://`).
    pub cache: String,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            metadata: String::new(),
            timeseries: String::new(),
            cache: "memory://".to_owned(),
        }
    }
}

/// API user authentication.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// HS256 signing secret; generated and kept in `<data_dir>/jwt.secret` when unset.
    pub jwt_secret: Option<String>,
    /// Lifetime of an access token (seconds).
    pub token_ttl_secs: u64,
    /// Lifetime of a refresh token (seconds).
    pub refresh_ttl_secs: u64,
    /// Failed sign-ins of one email from one address before that address is locked
    /// out of it (other addresses still sign in).
    pub max_failed_logins: u32,
    /// How long an (email, address) lock lasts (seconds); also the counting window.
    pub lockout_secs: u64,
    /// Failed sign-ins of one email from all addresses after which every further
    /// attempt waits 1 s, 2 s, 4 s .. up to `backoff_max_secs`.
    pub global_failed_logins: u32,
    /// Longest wait between attempts on an email under attack (seconds).
    pub backoff_max_secs: u64,
    /// Password hashes computed at once (argon2, 19 MiB each); more sign-ins at the
    /// same moment are answered 503. Default: one per CPU.
    pub max_concurrent_hashes: usize,
    /// Reverse proxies whose `X-Forwarded-For` is believed for the client address.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// First admin's email, used on first start only (`TP_ADMIN_EMAIL`).
    pub admin_email: Option<String>,
    /// First admin's password, used on first start only (`TP_ADMIN_PASSWORD`); generated
    /// and printed once when unset.
    pub admin_password: Option<String>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            jwt_secret: None,
            token_ttl_secs: tp_api::auth::DEFAULT_TOKEN_TTL_SECS,
            refresh_ttl_secs: tp_api::auth::DEFAULT_REFRESH_TTL_SECS,
            max_failed_logins: tp_api::auth::DEFAULT_MAX_FAILED_LOGINS,
            lockout_secs: tp_api::auth::DEFAULT_LOCKOUT_SECS,
            global_failed_logins: tp_api::auth::DEFAULT_GLOBAL_FAILED_LOGINS,
            backoff_max_secs: tp_api::auth::DEFAULT_BACKOFF_MAX_SECS,
            max_concurrent_hashes: tp_api::auth::AuthConfig::default().max_concurrent_hashes,
            trusted_proxies: Vec::new(),
            admin_email: None,
            admin_password: None,
        }
    }
}

impl AuthSettings {
    /// The API's [`tp_api::auth::AuthConfig`] with the given signing secret.
    pub fn auth_config(&self, jwt_secret: String) -> tp_api::auth::AuthConfig {
        tp_api::auth::AuthConfig {
            jwt_secret,
            token_ttl_secs: self.token_ttl_secs,
            refresh_ttl_secs: self.refresh_ttl_secs,
            max_failed_logins: self.max_failed_logins,
            lockout_secs: self.lockout_secs,
            global_failed_logins: self.global_failed_logins,
            backoff_max_secs: self.backoff_max_secs,
            max_concurrent_hashes: self.max_concurrent_hashes,
            trusted_proxies: self.trusted_proxies.clone(),
            ..tp_api::auth::AuthConfig::default()
        }
    }
}

impl std::fmt::Debug for AuthSettings {
    // Secrets never reach logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSettings")
            .field(
                "jwt_secret",
                &self.jwt_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("token_ttl_secs", &self.token_ttl_secs)
            .field("refresh_ttl_secs", &self.refresh_ttl_secs)
            .field("max_failed_logins", &self.max_failed_logins)
            .field("lockout_secs", &self.lockout_secs)
            .field("global_failed_logins", &self.global_failed_logins)
            .field("backoff_max_secs", &self.backoff_max_secs)
            .field("max_concurrent_hashes", &self.max_concurrent_hashes)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("admin_email", &self.admin_email)
            .field(
                "admin_password",
                &self.admin_password.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

pub use tp_rules::notify::{NotifyConfig, SmtpConfig, SmtpTls};

/// A configuration that cannot be loaded or is invalid.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(String);

impl PlatformConfig {
    /// Loads defaults <- `file` (must exist when given) <- `TP_*` env <- `overrides`
    /// (dotted keys such as `("http.listen", "127.0.0.1:8081")`), then validates.
    ///
    /// # Errors
    /// A message naming the file, key and problem.
    pub fn load(file: Option<&Path>, overrides: &[(&str, String)]) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(PlatformConfig::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(Env::prefixed("TP_").filter_map(|key| {
            let key = key.as_str().to_ascii_lowercase();
            match key.as_str() {
                "data_dir" => Some(key.into()),
                "admin_email" | "admin_password" => Some(format!("auth.{key}").into()),
                k if k.contains("__") => Some(k.replace("__", ".").into()),
                _ => None,
            }
        }));
        for (key, value) in overrides {
            // Parsed like an environment value, so "5000" is a number and "true" a bool.
            let value: figment::value::Value = value
                .parse()
                .unwrap_or_else(|_| figment::value::Value::from(value.as_str()));
            figment = figment.merge(Serialized::default(key, value));
        }
        let config: PlatformConfig = figment.extract().map_err(|e| ConfigError(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError(format!("{key}: {why}")));
        if self.node.roles.is_empty() {
            return bad("node.roles", "name at least one of \"broker\", \"api\"");
        }
        if self.mqtt.max_connections == 0 {
            return bad("mqtt.max_connections", "must be at least 1");
        }
        if self.mqtt.max_payload_size == 0 {
            return bad("mqtt.max_payload_size", "must be at least 1");
        }
        if self.writer.batch_size == 0 {
            return bad("writer.batch_size", "must be at least 1");
        }
        if self.writer.queue_capacity == 0 {
            return bad("writer.queue_capacity", "must be at least 1");
        }
        if self.auth.token_ttl_secs == 0 {
            return bad("auth.token_ttl_secs", "must be at least 1");
        }
        if self.auth.refresh_ttl_secs == 0 {
            return bad("auth.refresh_ttl_secs", "must be at least 1");
        }
        if self.auth.max_failed_logins == 0 {
            return bad("auth.max_failed_logins", "must be at least 1");
        }
        if self.auth.lockout_secs == 0 {
            return bad("auth.lockout_secs", "must be at least 1");
        }
        if self.auth.global_failed_logins == 0 {
            return bad("auth.global_failed_logins", "must be at least 1");
        }
        if self.auth.backoff_max_secs == 0 {
            return bad("auth.backoff_max_secs", "must be at least 1");
        }
        if self.auth.max_concurrent_hashes == 0 {
            return bad("auth.max_concurrent_hashes", "must be at least 1");
        }
        if matches!(&self.auth.jwt_secret, Some(s) if s.len() < 32) {
            return bad("auth.jwt_secret", "must be at least 32 characters");
        }
        if self.cluster.lease_secs == 0 {
            return bad("cluster.lease_secs", "must be at least 1");
        }
        if self.notify.max_attempts == 0 {
            return bad("notify.max_attempts", "must be at least 1");
        }
        if self.notify.webhook_timeout_secs == 0 {
            return bad("notify.webhook_timeout_secs", "must be at least 1");
        }
        if self.notify.max_concurrent == 0 {
            return bad("notify.max_concurrent", "must be at least 1");
        }
        if !self.notify.smtp.host.is_empty() {
            if let Err(e) = tp_rules::notify::parse_mailbox(&self.notify.smtp.from) {
                return bad("notify.smtp.from", &e);
            }
            if self.notify.smtp.password.is_some() && self.notify.smtp.username.is_none() {
                return bad("notify.smtp.username", "required when a password is set");
            }
            if let Some(path) = &self.notify.smtp.ca_file
                && let Err(e) = tp_rules::notify::check_ca_file(path)
            {
                return bad("notify.smtp.ca_file", &e);
            }
        }
        Ok(())
    }

    /// The default configuration as TOML (`thingspanel print-config`), followed by
    /// the optional TLS sections, commented out (TOML has no "unset", so they would
    /// not appear otherwise).
    pub fn default_toml() -> String {
        let mut toml = toml::to_string_pretty(&PlatformConfig::default()).unwrap_or_default();
        toml.push_str(OPTIONAL_TLS_TOML);
        toml
    }

    /// Where uploaded OTA packages are kept: `<data_dir>/ota`.
    pub fn ota_dir(&self) -> PathBuf {
        self.data_dir.join("ota")
    }

    /// The metadata URL with the data-dir default applied.
    pub fn metadata_url(&self) -> String {
        or_sqlite(&self.storage.metadata, &self.data_dir, "metadata.db")
    }

    /// The time-series URL with the data-dir default applied: the embedded engine in
    /// `<data_dir>/timeseries/` (`fjall://`), which `fdatasync`s every write when the
    /// write-ahead log syncs every record (`mqtt.wal.fsync`), so the log never drops a
    /// segment whose data is only in the page cache.
    pub fn timeseries_url(&self) -> String {
        if self.storage.timeseries.is_empty() {
            let fsync = if self.mqtt.wal.fsync {
                "?fsync=true"
            } else {
                ""
            };
            format!(
                "fjall://{}{fsync}",
                self.data_dir.join(TIMESERIES_DIR).display()
            )
        } else {
            self.storage.timeseries.clone()
        }
    }

    /// The SQLite time-series file older nodes kept in the data dir, when the
    /// time-series store is the embedded default (it is imported on start).
    pub fn legacy_timeseries_file(&self) -> Option<PathBuf> {
        self.storage
            .timeseries
            .is_empty()
            .then(|| self.data_dir.join(LEGACY_TIMESERIES_FILE))
    }
}

/// The TLS sections `print-config` shows as examples; uncommented they parse (tested).
const OPTIONAL_TLS_TOML: &str = r#"
# Optional: TLS (unset by default). Uncomment and point at PEM files.
#
# MQTT over TLS; set any of the three listeners. Each relays to its plain listener
# (a loopback-only one when mqtt.v5_listen / mqtt.ws_listen is unset).
# [mqtt.tls]
# listen = "0.0.0.0:8883"        # MQTT 3.1.1 over TLS
# v5_listen = "0.0.0.0:8885"     # MQTT 5 over TLS
# wss_listen = "0.0.0.0:8084"    # MQTT over WebSocket over TLS, wss://host:8084/mqtt
# cert_path = "/etc/thingspanel/tls/cert.pem"
# key_path = "/etc/thingspanel/tls/key.pem"
#
# HTTPS for the REST API and the HTTP device API on http.listen.
# [http.tls]
# cert_path = "/etc/thingspanel/tls/cert.pem"
# key_path = "/etc/thingspanel/tls/key.pem"
"#;

/// Directory of the embedded time-series engine in the data dir.
pub const TIMESERIES_DIR: &str = "timeseries";
/// The SQLite time-series file of nodes before the embedded engine.
pub const LEGACY_TIMESERIES_FILE: &str = "timeseries.db";

fn or_sqlite(url: &str, dir: &Path, file: &str) -> String {
    if url.is_empty() {
        format!("sqlite://{}", dir.join(file).display())
    } else {
        url.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_toml_parses_back_to_the_defaults() {
        let parsed: PlatformConfig = toml::from_str(&PlatformConfig::default_toml()).unwrap();
        assert_eq!(parsed, PlatformConfig::default());
    }

    #[test]
    fn print_config_shows_the_tls_sections_and_they_parse_uncommented() {
        let toml = PlatformConfig::default_toml();
        assert!(toml.contains("# [mqtt.tls]") && toml.contains("# [http.tls]"));
        let uncommented: String = toml
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if rest.starts_with('[') || rest.contains(" = ") => rest,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let parsed: PlatformConfig = toml::from_str(&uncommented).unwrap();
        let mqtt = parsed.mqtt.tls.expect("mqtt.tls");
        assert_eq!(mqtt.listen, Some("0.0.0.0:8883".parse().unwrap()));
        assert_eq!(mqtt.v5_listen, Some("0.0.0.0:8885".parse().unwrap()));
        assert_eq!(mqtt.wss_listen, Some("0.0.0.0:8084".parse().unwrap()));
        let http = parsed.http.tls.expect("http.tls");
        assert_eq!(
            http.cert_path,
            PathBuf::from("/etc/thingspanel/tls/cert.pem")
        );
        assert_eq!(http.key_path, PathBuf::from("/etc/thingspanel/tls/key.pem"));
    }

    #[test]
    fn tls_settings_load_from_dotted_keys() {
        let c = PlatformConfig::load(
            None,
            &[
                ("http.tls.cert_path", "/c.pem".into()),
                ("http.tls.key_path", "/k.pem".into()),
                ("mqtt.tls.v5_listen", "127.0.0.1:8885".into()),
                ("mqtt.tls.cert_path", "/c.pem".into()),
                ("mqtt.tls.key_path", "/k.pem".into()),
            ],
        )
        .unwrap();
        assert_eq!(c.http.tls.unwrap().key_path, PathBuf::from("/k.pem"));
        let mqtt = c.mqtt.tls.unwrap();
        assert_eq!((mqtt.listen, mqtt.wss_listen), (None, None));
        assert_eq!(mqtt.v5_listen, Some("127.0.0.1:8885".parse().unwrap()));
    }

    #[test]
    fn layers_override_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tp.toml");
        std::fs::write(
            &file,
            "data_dir = \"/from/file\"\n[http]\nlisten = \"127.0.0.1:9000\"\n",
        )
        .unwrap();
        let c =
            PlatformConfig::load(Some(&file), &[("http.listen", "127.0.0.1:9001".into())]).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/from/file"));
        assert_eq!(c.http.listen.port(), 9001);
        assert_eq!(c.metadata_url(), "sqlite:///from/file/metadata.db");
    }

    #[test]
    fn bad_values_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tp.toml");
        std::fs::write(&file, "[mqtt]\nlisten = \"not an address\"\n").unwrap();
        let err = PlatformConfig::load(Some(&file), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen"), "{err}");
        std::fs::write(&file, "[mqtt]\nbogus = 1\n").unwrap();
        let err = PlatformConfig::load(Some(&file), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
        let err = PlatformConfig::load(Some(&dir.path().join("missing.toml")), &[]).unwrap_err();
        assert!(err.to_string().contains("does not exist"));
        let err = PlatformConfig::load(None, &[("writer.batch_size", "0".into())]).unwrap_err();
        assert!(err.to_string().contains("writer.batch_size"), "{err}");
    }

    #[test]
    fn notify_section_loads_and_validates() {
        let c = PlatformConfig::load(
            None,
            &[
                ("notify.smtp.host", "mail.example.com".into()),
                ("notify.smtp.tls", "tls".into()),
                ("notify.smtp.port", "465".into()),
                ("notify.max_attempts", "2".into()),
            ],
        )
        .unwrap();
        assert_eq!(c.notify.smtp.tls, SmtpTls::Tls);
        assert_eq!(c.notify.smtp.port, 465);
        assert_eq!(c.notify.max_attempts, 2);
        assert_eq!(c.notify.backoff_base_ms, 500);
        let err = PlatformConfig::load(
            None,
            &[
                ("notify.smtp.host", "mail.example.com".into()),
                ("notify.smtp.from", "not an address".into()),
            ],
        )
        .unwrap_err();
        assert!(err.to_string().contains("notify.smtp.from"), "{err}");
        let err = PlatformConfig::load(None, &[("notify.max_attempts", "0".into())]).unwrap_err();
        assert!(err.to_string().contains("notify.max_attempts"), "{err}");
        let err = PlatformConfig::load(None, &[("notify.smtp.tls", "ssl".into())]).unwrap_err();
        assert!(err.to_string().contains("tls"), "{err}");
    }

    #[test]
    fn smtp_ca_file_is_checked_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let cert = tp_core::testing::tls::self_signed(dir.path());
        let with_ca = |path: &Path| {
            PlatformConfig::load(
                None,
                &[
                    ("notify.smtp.host", "relay.internal".into()),
                    ("notify.smtp.ca_file", path.display().to_string()),
                ],
            )
        };
        let c = with_ca(&cert.cert_path).unwrap();
        assert_eq!(
            c.notify.smtp.ca_file.as_deref(),
            Some(cert.cert_path.as_path())
        );
        assert_eq!(c.notify.smtp.tls, SmtpTls::Starttls);
        let missing = dir.path().join("missing.pem");
        let err = with_ca(&missing).unwrap_err().to_string();
        assert!(
            err.contains("notify.smtp.ca_file: cannot read") && err.contains("missing.pem"),
            "{err}"
        );
        // The key file is PEM but holds no certificate.
        let err = with_ca(&cert.key_path).unwrap_err().to_string();
        assert!(
            err.contains("notify.smtp.ca_file: no PEM certificate"),
            "{err}"
        );
        // From a TOML file too.
        let file = dir.path().join("tp.toml");
        std::fs::write(
            &file,
            format!(
                "[notify.smtp]\nhost = \"relay.internal\"\nca_file = {:?}\n",
                cert.cert_path.display().to_string()
            ),
        )
        .unwrap();
        let c = PlatformConfig::load(Some(&file), &[]).unwrap();
        assert_eq!(
            c.notify.smtp.ca_file.as_deref(),
            Some(cert.cert_path.as_path())
        );
    }

    #[test]
    fn the_deploy_examples_load() {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
        let broker = PlatformConfig::load(Some(&deploy.join("tp-broker.toml")), &[]).unwrap();
        assert_eq!(broker.cluster.lease_secs, 15);
        assert_eq!(broker.log.format, LogFormat::Text);
        assert_eq!(broker.cluster.backplane, BackplaneMode::On);
        PlatformConfig::load(Some(&deploy.join("tp-api.toml")), &[]).unwrap();
        let json = PlatformConfig::load(None, &[("log.format", "json".into())]).unwrap();
        assert_eq!(json.log.format, LogFormat::Json);
        let err = PlatformConfig::load(None, &[("cluster.lease_secs", "0".into())]).unwrap_err();
        assert!(err.to_string().contains("cluster.lease_secs"), "{err}");
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let mut c = PlatformConfig::default();
        c.auth.admin_password = Some("hunter2-secret".into());
        c.auth.jwt_secret = Some("x".repeat(40));
        c.notify.smtp.password = Some("smtp-pass-secret".into());
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2") && !dbg.contains(&"x".repeat(40)));
        assert!(!dbg.contains("smtp-pass-secret"), "{dbg}");
    }
}
