//! # tp-storage
//!
//! Storage backends for the traits of `tp-core`, plus the batching writer that sits
//! between ingest and the time-series store.
//!
//! Every backend is behind a feature; only `sqlite` and `fjall` (the embedded
//! time-series engine) are on by default, so a service that wants PostgreSQL alone
//! builds neither Redis, TDengine, fjall nor SQLite
//! (`default-features = false, features = ["postgres"]`). A URL naming a backend this
//! build leaves out is refused with the feature to enable.
//!
//! | Trait | Backend | Feature | URL |
//! |---|---|---|---|
//! | `MetadataStore`, `AccessStore`, `RuleStore` | `sqlite::SqliteMetadataStore` | `sqlite` | `sqlite://<path>`, `sqlite::memory:` |
//! | [`TimeSeriesStore`] | `fjall::FjallTimeSeriesStore` (embedded default) | `fjall` | `fjall://<dir>?retention_ms=N`, `fjall::memory:` |
//! | [`TimeSeriesStore`] | `sqlite::SqliteTimeSeriesStore` | `sqlite` | `sqlite://<path>`, `sqlite::memory:` |
//! | `MetadataStore`, `AccessStore`, `RuleStore` | `postgres::PostgresMetadataStore` | `postgres` | `postgres://host/db?schema=s` |
//! | [`TimeSeriesStore`] | `postgres::PostgresTimeSeriesStore` | `postgres` | `postgres://host/db?schema=s` |
//! | [`TimeSeriesStore`] | `tdengine::TdengineTimeSeriesStore` | `tdengine` | `taos+ws://user:pass@host:6041/db?keep_days=N` |
//! | [`Cache`] | [`memory::MemoryCache`] | (always) | `memory://`, `memory://?capacity=N` |
//! | [`Cache`] | `redis::RedisCache` | `redis` | `redis://host:6379/?prefix=tp:`, `redis+cluster://h1:p,h2:p` |
//! | `tp_core::cluster::Backplane` | `redis::backplane::RedisBackplane` | `redis` | the cache URL |
//! | `tp_core::ingest::IngestSink` | [`writer::WriterHandle`] | (always) | in front of any [`TimeSeriesStore`] |
//!
//! The metadata, access and rule stores are written once, as `sql::SqlStore<D>` over
//! a `sql::Dialect` (SQLite or PostgreSQL): the dialect owns the connections, binds
//! values in its own column types and maps its errors; the statements and row decoding
//! are shared. `SqliteMetadataStore` and `PostgresMetadataStore` are that store with
//! their dialect; their modules keep only pools, migrations and time-series code.
//!
//! SQLite is the embedded metadata store of a single-node installation: WAL mode, one
//! writer connection, a small pool of readers, migrations embedded in the binary. Its
//! embedded time-series store is `fjall` (an LSM tree: several times SQLite's write
//! rate); `migrate` imports an older SQLite time-series file into it. Every backend
//! passes the conformance suites of `tp_core::testing`.
//!
//! [`open_metadata`], [`open_timeseries`] and [`open_cache`] build a backend from a
//! URL, which is what configuration files carry; [`open_access`] builds the metadata
//! store together with the [`AccessStore`] over the same connection pool, [`open_rules`]
//! also the [`RuleStore`].
//! [`writer::BatchWriter`] batches
//! telemetry in front of a [`TimeSeriesStore`] with a bounded queue.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> tp_core::Result<()> {
//! use tp_core::{DeviceId, TelemetryPoint, Value};
//!
//! let ts = tp_storage::open_timeseries("sqlite::memory:").await?;
//! let device = DeviceId::new();
//! ts.write(&[
//!     TelemetryPoint { device_id: device, key: "temp".into(), ts: 2_000, value: Value::Float(21.5) },
//!     TelemetryPoint { device_id: device, key: "temp".into(), ts: 1_000, value: Value::Float(20.0) },
//! ])
//! .await?;
//! let latest = ts.latest(device, None).await?;
//! assert_eq!(latest[0].value, Value::Float(21.5));
//!
//! let cache = tp_storage::open_cache("memory://?capacity=1000").await?;
//! assert!(cache.set_nx("lock:job", b"node-1", None).await?);
//! assert!(!cache.set_nx("lock:job", b"node-2", None).await?);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs, missing_debug_implementations)]

#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod access_common;
#[cfg(feature = "fjall")]
pub mod fjall;
pub mod memory;
#[cfg(all(feature = "sqlite", feature = "fjall"))]
pub mod migrate;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod rules_common;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod series_cache;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub mod sql;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(feature = "tdengine")]
pub mod tdengine;
pub mod writer;

use std::path::PathBuf;
use std::sync::Arc;

#[cfg(doc)]
use tp_core::rules::RuleStore;
use tp_core::rules::RuleStoreRef;
#[cfg(doc)]
use tp_core::{AccessStore, Cache, MetadataStore, TimeSeriesStore};
use tp_core::{AccessStoreRef, CacheRef, Error, MetadataStoreRef, Result, TimeSeriesStoreRef};

/// Entries of a `memory://` cache without `?capacity=`.
pub const DEFAULT_CACHE_CAPACITY: u64 = 100_000;

/// The refusal of a URL whose backend this build leaves out.
#[allow(dead_code)] // unused when every backend is compiled in
fn not_enabled(field: &str, url: &str, feature: &str) -> Error {
    Error::invalid(
        field,
        format!(
            "{:?} needs tp-storage's `{feature}` feature, which is not enabled in this build",
            url.trim()
        ),
    )
}

/// Where a `sqlite` URL points.
#[derive(Debug, PartialEq, Eq)]
enum SqliteTarget {
    Memory,
    File(PathBuf),
}

fn parse_sqlite(url: &str, field: &str) -> Result<SqliteTarget> {
    let url = url.trim();
    if matches!(url, "sqlite::memory:" | "sqlite://:memory:") {
        return Ok(SqliteTarget::Memory);
    }
    let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    else {
        let scheme = url.split_once(':').map_or(url, |(s, _)| s);
        return Err(Error::invalid(
            field,
            format!(
                "unsupported URL {url:?} (scheme {scheme:?}): expected sqlite://<path> or sqlite::memory:"
            ),
        ));
    };
    if path.is_empty() {
        return Err(Error::invalid(
            field,
            format!("{url:?} names no file: expected sqlite://<path>"),
        ));
    }
    if path.contains('?') {
        return Err(Error::invalid(
            field,
            format!("{url:?}: sqlite URLs take no query parameters"),
        ));
    }
    Ok(SqliteTarget::File(PathBuf::from(path)))
}

/// Whether a URL names a PostgreSQL server (`postgres://` or `postgresql://`).
fn is_postgres(url: &str) -> bool {
    let url = url.trim();
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Whether a URL names a Redis server or cluster.
fn is_redis(url: &str) -> bool {
    let scheme = url.trim().split_once("://").map_or("", |(s, _)| s);
    matches!(
        scheme.to_ascii_lowercase().as_str(),
        "redis" | "rediss" | "redis+unix" | "redis+cluster" | "rediss+cluster"
    )
}

/// Whether a URL names a TDengine server (`taos+ws://` or `taos+wss://`).
fn is_tdengine(url: &str) -> bool {
    let scheme = url.trim().split_once("://").map_or("", |(s, _)| s);
    matches!(scheme.to_ascii_lowercase().as_str(), "taos+ws" | "taos+wss")
}

/// Opens the metadata store a URL names: `sqlite://<path>` (file and parent
/// directories created if missing; `sqlite:///abs/path` for absolute paths) or
/// `sqlite::memory:`; with the `postgres` feature also `postgres://..` /
/// `postgresql://..` (see [`postgres`] for `?schema=` and other parameters).
///
/// # Errors
/// [`Error::Invalid`] (field `storage.metadata`) for an unsupported or malformed URL;
/// backend errors when the store cannot be opened.
pub async fn open_metadata(url: &str) -> Result<MetadataStoreRef> {
    Ok(open_rules(url).await?.0)
}

/// Opens the metadata store a URL names (the same URLs as [`open_metadata`]) and
/// returns it twice: as the [`MetadataStore`] and as the [`AccessStore`], one store
/// with one connection pool behind both handles.
///
/// # Errors
/// As [`open_metadata`].
pub async fn open_access(url: &str) -> Result<(MetadataStoreRef, AccessStoreRef)> {
    let (metadata, access, _) = open_rules(url).await?;
    Ok((metadata, access))
}

/// Opens the metadata store a URL names (the same URLs as [`open_metadata`]) and
/// returns it three times: as the [`MetadataStore`], the [`AccessStore`] and the
/// [`RuleStore`], one store with one connection pool behind all handles.
///
/// # Errors
/// As [`open_metadata`].
pub async fn open_rules(url: &str) -> Result<(MetadataStoreRef, AccessStoreRef, RuleStoreRef)> {
    let stores = open_meta_stores(url).await?;
    Ok((stores.metadata, stores.access, stores.rules))
}

/// Every view of one metadata database, sharing one connection pool (an in-memory
/// SQLite database exists once per pool, so the views must share it).
#[derive(Debug, Clone)]
pub struct MetaStores {
    /// Tenants, users, devices, attributes, the downlink log.
    pub metadata: MetadataStoreRef,
    /// Roles, API keys, groups, profiles, the audit log.
    pub access: AccessStoreRef,
    /// Rules, scenes, alarms, notification channels.
    pub rules: RuleStoreRef,
    /// Device templates (the thing model).
    pub thing_models: tp_core::ThingModelStoreRef,
    /// OTA packages, tasks and each device's progress.
    pub ota: tp_core::ota::OtaStoreRef,
    /// Data scripts of device profiles.
    pub scripts: tp_core::script::ScriptStoreRef,
    /// Dashboards and each tenant's home dashboard.
    pub dashboards: tp_core::dashboard::DashboardStoreRef,
    /// The home page's aggregates (online devices over time, alarms per hour).
    pub trends: tp_core::trends::TrendStoreRef,
}

/// Opens the metadata store a URL names (the same URLs as [`open_metadata`]) and
/// returns each of its views ([`MetaStores`]).
///
/// # Errors
/// As [`open_metadata`].
pub async fn open_meta_stores(url: &str) -> Result<MetaStores> {
    const FIELD: &str = "storage.metadata";
    if is_postgres(url) {
        #[cfg(feature = "postgres")]
        {
            let store = Arc::new(postgres::PostgresMetadataStore::connect(url.trim()).await?);
            return Ok(MetaStores {
                metadata: store.clone(),
                access: store.clone(),
                rules: store.clone(),
                thing_models: store.clone(),
                ota: store.clone(),
                scripts: store.clone(),
                dashboards: store.clone(),
                trends: store,
            });
        }
        #[cfg(not(feature = "postgres"))]
        return Err(not_enabled(FIELD, url, "postgres"));
    }
    let target = parse_sqlite(url, FIELD)?;
    #[cfg(feature = "sqlite")]
    {
        let store = Arc::new(match target {
            SqliteTarget::Memory => sqlite::SqliteMetadataStore::in_memory().await?,
            SqliteTarget::File(path) => sqlite::SqliteMetadataStore::open(&path).await?,
        });
        Ok(MetaStores {
            metadata: store.clone(),
            access: store.clone(),
            rules: store.clone(),
            thing_models: store.clone(),
            ota: store.clone(),
            scripts: store.clone(),
            dashboards: store.clone(),
            trends: store,
        })
    }
    #[cfg(not(feature = "sqlite"))]
    {
        let _ = target;
        Err(not_enabled(FIELD, url, "sqlite"))
    }
}

/// Opens the time-series store a URL names; accepts the same URLs as [`open_metadata`],
/// with the `fjall` feature `fjall://<dir>` / `fjall::memory:` (see
/// `fjall::parse_url`), and with the `tdengine` feature `taos+ws://..` /
/// `taos+wss://..` (see `tdengine::parse_url`).
///
/// # Errors
/// [`Error::Invalid`] (field `storage.timeseries`) for an unsupported or malformed URL;
/// backend errors when the store cannot be opened.
pub async fn open_timeseries(url: &str) -> Result<TimeSeriesStoreRef> {
    const FIELD: &str = "storage.timeseries";
    if url.trim().starts_with("fjall:") {
        #[cfg(feature = "fjall")]
        {
            let (target, options) = fjall::parse_url(url, FIELD)?;
            return Ok(Arc::new(fjall::open(target, options).await?));
        }
        #[cfg(not(feature = "fjall"))]
        return Err(not_enabled(FIELD, url, "fjall"));
    }
    if is_tdengine(url) {
        #[cfg(feature = "tdengine")]
        {
            let (dsn, options) = tdengine::parse_url(url)?;
            return Ok(Arc::new(
                tdengine::TdengineTimeSeriesStore::connect(&dsn, options).await?,
            ));
        }
        #[cfg(not(feature = "tdengine"))]
        return Err(not_enabled(FIELD, url, "tdengine"));
    }
    if is_postgres(url) {
        #[cfg(feature = "postgres")]
        return Ok(Arc::new(
            postgres::PostgresTimeSeriesStore::connect(url.trim()).await?,
        ));
        #[cfg(not(feature = "postgres"))]
        return Err(not_enabled(FIELD, url, "postgres"));
    }
    let target = parse_sqlite(url, FIELD)?;
    #[cfg(feature = "sqlite")]
    {
        Ok(match target {
            SqliteTarget::Memory => Arc::new(sqlite::SqliteTimeSeriesStore::in_memory().await?),
            SqliteTarget::File(path) => Arc::new(sqlite::SqliteTimeSeriesStore::open(&path).await?),
        })
    }
    #[cfg(not(feature = "sqlite"))]
    {
        let _ = target;
        Err(not_enabled(FIELD, url, "sqlite"))
    }
}

/// Opens the cache a URL names: `memory://` or `memory://?capacity=N` (entries); with
/// the `redis` feature also `redis://`, `rediss://`, `redis+unix://`, `redis+cluster://`
/// and `rediss+cluster://` (see `redis::RedisCache`).
///
/// # Errors
/// [`Error::Invalid`] (field `storage.cache`) for an unsupported or malformed URL.
pub async fn open_cache(url: &str) -> Result<CacheRef> {
    const FIELD: &str = "storage.cache";
    if is_redis(url) {
        #[cfg(feature = "redis")]
        return Ok(Arc::new(self::redis::RedisCache::connect(url).await?));
        #[cfg(not(feature = "redis"))]
        return Err(not_enabled(FIELD, url, "redis"));
    }
    let url = url.trim();
    let Some(rest) = url.strip_prefix("memory://") else {
        return Err(Error::invalid(
            FIELD,
            format!("unsupported URL {url:?}: expected memory:// or memory://?capacity=N"),
        ));
    };
    let mut capacity = DEFAULT_CACHE_CAPACITY;
    match rest.split_once('?') {
        None if rest.is_empty() => {}
        Some(("", query)) => {
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                match pair.split_once('=') {
                    Some(("capacity", n)) => {
                        capacity = n.parse().map_err(|_| {
                            Error::invalid(
                                FIELD,
                                format!("{url:?}: capacity must be a whole number, got {n:?}"),
                            )
                        })?;
                    }
                    _ => {
                        return Err(Error::invalid(
                            FIELD,
                            format!("{url:?}: unknown parameter {pair:?} (supported: capacity)"),
                        ));
                    }
                }
            }
        }
        _ => {
            return Err(Error::invalid(
                FIELD,
                format!("{url:?}: a memory cache has no host or path"),
            ));
        }
    }
    Ok(Arc::new(memory::MemoryCache::new(capacity)))
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;

    #[track_caller]
    fn invalid_field<T: std::fmt::Debug>(r: Result<T>) -> String {
        match r {
            Err(Error::Invalid { field, .. }) => field,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn sqlite_urls() {
        assert_eq!(
            parse_sqlite("sqlite::memory:", "f").expect("ok"),
            SqliteTarget::Memory
        );
        assert_eq!(
            parse_sqlite("sqlite:///var/lib/tp/meta.db", "f").expect("ok"),
            SqliteTarget::File("/var/lib/tp/meta.db".into())
        );
        assert_eq!(
            parse_sqlite("sqlite://data/meta.db", "f").expect("ok"),
            SqliteTarget::File("data/meta.db".into())
        );
        for bad in [
            "postgres://x/y",
            "sqlite://",
            "sqlite://a.db?mode=ro",
            "",
            "meta.db",
        ] {
            assert_eq!(invalid_field(parse_sqlite(bad, "f")), "f", "{bad}");
        }
    }

    #[tokio::test]
    async fn open_by_url() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a/b/tp.db");
        let url = format!("sqlite://{}", path.display());
        let meta = open_metadata(&url).await.expect("metadata");
        let ts = open_timeseries(&url).await.expect("timeseries");
        meta.healthcheck().await.expect("healthy");
        ts.healthcheck().await.expect("healthy");
        assert!(path.exists());
        open_metadata("sqlite::memory:").await.expect("memory");
        let (meta, access) = open_access(&url).await.expect("access");
        assert_eq!((meta.backend(), access.backend()), ("sqlite", "sqlite"));
        open_access("sqlite::memory:").await.expect("memory");
        let (meta, access, rules) = open_rules(&url).await.expect("rules");
        assert_eq!(
            (meta.backend(), access.backend(), rules.backend()),
            ("sqlite", "sqlite", "sqlite")
        );
        assert_eq!(
            invalid_field(open_rules("redis://localhost").await),
            "storage.metadata"
        );
        assert_eq!(
            invalid_field(open_access("redis://localhost").await),
            "storage.metadata"
        );

        assert_eq!(
            invalid_field(open_metadata("redis://localhost").await),
            "storage.metadata"
        );
        assert_eq!(
            invalid_field(open_timeseries("influxdb://localhost").await),
            "storage.timeseries"
        );
    }

    #[cfg(all(feature = "redis", feature = "tdengine"))]
    #[tokio::test]
    async fn redis_and_tdengine_urls_dispatch_to_their_backends() {
        // Malformed URLs of these schemes fail in the backend's own parser, offline.
        assert_eq!(
            invalid_field(open_cache("redis+cluster://h1:1,,h2:2").await),
            "redis url"
        );
        assert_eq!(
            invalid_field(open_timeseries("taos+ws://h:1/bad-name").await),
            "database"
        );
        assert_eq!(
            invalid_field(open_timeseries("taos+wss://h:1?keep_days=x").await),
            "keep_days"
        );
    }

    #[tokio::test]
    async fn cache_urls() {
        open_cache("memory://").await.expect("default");
        open_cache("memory://?capacity=10").await.expect("capacity");
        for bad in [
            "mongodb://localhost",
            "memory://?capacity=lots",
            "memory://?size=1",
            "memory://host",
        ] {
            assert_eq!(
                invalid_field(open_cache(bad).await),
                "storage.cache",
                "{bad}"
            );
        }
    }
}
