//! PostgreSQL backends for installations that outgrow SQLite.
//!
//! - [`PostgresMetadataStore`]: tenants, users, devices, attributes, downlink log; it is
//!   also the [`tp_core::AccessStore`] (roles, API keys, device groups, profiles, audit
//!   log) on the same schema and pool, and the [`tp_core::rules::RuleStore`] (rules,
//!   scenes, alarms, notification channels and history, rule state).
//! - [`PostgresTimeSeriesStore`]: telemetry history (`ts_kv`, keyed by an integer
//!   series id that `ts_series` maps to device and key), latest values
//!   (`ts_latest`) and events (`ts_events`). History is range-partitioned on `ts` with
//!   partitions created on demand, so retention drops whole partitions
//!   ([`PostgresTimeSeriesStore::drop_partitions_before`]); when the `timescaledb`
//!   extension is available it is a hypertable with compression and an optional
//!   retention policy instead. A batch is written with binary `COPY` into a
//!   temporary staging table and merged into history and latest values with one
//!   `INSERT .. SELECT .. ON CONFLICT DO UPDATE` each (`write_method=insert`: `UNNEST`
//!   arrays instead), never one statement per point.
//!
//! # URLs
//!
//! Both stores take a libpq-style URL, `postgres://user:pass@host:5432/db`, plus these
//! query parameters, which are consumed here and not passed to the driver:
//!
//! - `schema=name`: use (and create if missing) this schema as the `search_path` of
//!   every pooled connection, so installations or tests can share one database;
//! - `max_connections=n`: pool size (default 10).
//!
//! [`PostgresTimeSeriesStore`] also reads the keys of [`PgTsOptions`]. Other
//! parameters (`sslmode`, `application_name`, ...) go to sqlx unchanged.
//! Both stores may share one schema: their migrations use disjoint version ranges.

mod copy;
mod dialect;
mod error;
mod meta;
mod timescale;
mod timeseries;
mod upgrade;
mod value;

#[cfg(test)]
mod tests;

use std::str::FromStr;
use std::time::Duration;

use sqlx::Connection;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use tp_core::{Error, Result};

pub use dialect::PostgresDialect;
pub use meta::PostgresMetadataStore;
pub use timescale::TimescaleSettings;
pub use timeseries::{PgTsOptions, PostgresTimeSeriesStore, TsLayout, WriteMethod};

use error::{PgError, db};

/// How long connecting to the server may take before the store reports it unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a query waits for a pooled connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default pool size.
const DEFAULT_MAX_CONNECTIONS: u32 = 10;

/// A parsed connection URL.
#[derive(Debug, Clone)]
struct Target {
    /// Driver options, without our query parameters and without `search_path`.
    options: PgConnectOptions,
    /// `?schema=`.
    schema: Option<String>,
    /// Pool size.
    max_connections: u32,
    /// Our other query parameters, for the store to interpret.
    extra: Vec<(String, String)>,
}

/// Query parameters this module consumes; everything else goes to sqlx.
const OWN_PARAMS: &[&str] = &[
    "schema",
    "max_connections",
    "partition_ms",
    "timescale",
    "compress_after_ms",
    "retention_ms",
    "write_method",
    "copy_min_rows",
    "write_connections",
];

fn invalid_url(reason: impl Into<String>) -> Error {
    Error::invalid("postgres url", reason)
}

/// Checks a schema name: a plain identifier, so it needs no quoting rules beyond `"`.
fn validate_schema(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = name.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(invalid_url(format!(
            "schema {name:?} must be 1 to 63 ASCII letters, digits or '_', \
             not starting with a digit"
        )))
    }
}

/// Quotes an identifier that passed [`validate_schema`] (or is otherwise plain).
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl Target {
    fn parse(url: &str) -> Result<Self> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(invalid_url("must start with postgres:// or postgresql://"));
        }
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (url, None),
        };
        let mut passed = Vec::new();
        let mut schema = None;
        let mut max_connections = DEFAULT_MAX_CONNECTIONS;
        let mut extra = Vec::new();
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            if pair.is_empty() {
                continue;
            }
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if !OWN_PARAMS.contains(&k) {
                passed.push(pair);
                continue;
            }
            match k {
                "schema" => {
                    validate_schema(v)?;
                    schema = Some(v.to_owned());
                }
                "max_connections" => {
                    max_connections =
                        v.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
                            invalid_url("max_connections must be a positive integer")
                        })?;
                }
                _ => extra.push((k.to_owned(), v.to_owned())),
            }
        }
        let stripped = if passed.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", passed.join("&"))
        };
        let options =
            PgConnectOptions::from_str(&stripped).map_err(|e| invalid_url(e.to_string()))?;
        Ok(Self {
            options,
            schema,
            max_connections,
            extra,
        })
    }

    fn host(&self) -> String {
        self.options.get_host().to_owned()
    }

    /// Connects once (bounded by [`CONNECT_TIMEOUT`]), naming host and port on failure.
    async fn probe(&self) -> Result<PgConnection> {
        let host = self.host();
        let port = self.options.get_port();
        match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&self.options)).await
        {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(source)) => Err(PgError::Connect { host, port, source }.into()),
            Err(_) => Err(PgError::ConnectTimeout {
                host,
                port,
                secs: CONNECT_TIMEOUT.as_secs(),
            }
            .into()),
        }
    }

    /// Connects, creates the schema if needed, opens the pool (with `search_path` set on
    /// every connection) and applies `migrator`.
    async fn open(&self, migrator: &Migrator) -> Result<PgPool> {
        let mut conn = self.probe().await?;
        let mut options = self.options.clone();
        if let Some(schema) = &self.schema {
            let sql = format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(schema));
            match sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
            {
                Ok(_) => {}
                // Two stores creating the same schema at once: the loser sees a
                // duplicate; the schema exists either way.
                Err(sqlx::Error::Database(d))
                    if matches!(d.code().as_deref(), Some("23505" | "42P06")) => {}
                Err(e) => return Err(db(e)),
            }
            options = options.options([("search_path", schema.as_str())]);
        }
        let _ = conn.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|source| PgError::Connect {
                host: self.host(),
                port: self.options.get_port(),
                source,
            })?;
        migrator.run(&pool).await.map_err(PgError::from)?;
        Ok(pool)
    }
}

/// A migrator that tolerates the other store's migrations in a shared schema.
fn migrator(mut m: Migrator) -> Migrator {
    m.set_ignore_missing(true);
    m
}

async fn healthcheck(pool: &PgPool) -> Result<()> {
    sqlx::query("SELECT 1").execute(pool).await.map_err(db)?;
    Ok(())
}

/// Clamps a `u64` count to `bigint`.
fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
