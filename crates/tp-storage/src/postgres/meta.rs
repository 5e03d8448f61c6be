//! [`PostgresMetadataStore`]: its constructor and pool. The store itself is the SQL
//! store (`crate::sql`) over the PostgreSQL dialect.

use sqlx::postgres::PgPool;
use tp_core::Result;

use super::dialect::PostgresDialect;
use super::{Target, migrator};
use crate::sql::SqlStore;

/// [`tp_core::MetadataStore`] on PostgreSQL.
///
/// Same semantics as the SQLite store: ids are `uuid`, emails stored lower-case.
/// Device search is case-insensitive (`ILIKE`, Unicode-aware) with `%` and `_` taken
/// literally. Unique violations are mapped by constraint name to
/// [`Error::AlreadyExists`] naming the conflicting value.
///
/// The same store is the PostgreSQL [`tp_core::AccessStore`] (custom roles, API keys,
/// device groups, profiles, audit log) on the same schema and pool; see
/// [`crate::open_access`] for both handles from one URL.
pub type PostgresMetadataStore = SqlStore<PostgresDialect>;

impl SqlStore<PostgresDialect> {
    /// Connects to `url` (see the [module docs](super) for `?schema=` and other
    /// parameters), creates the schema if missing and applies pending migrations.
    ///
    /// # Errors
    /// - [`Error::Invalid`] (`field = "postgres url"`) when the URL cannot be parsed.
    /// - [`Error::Unavailable`] when the server cannot be reached; the message names
    ///   host and port.
    /// - [`Error::Backend`] when authentication or a migration fails.
    pub async fn connect(url: &str) -> Result<Self> {
        let target = Target::parse(url)?;
        let m = migrator(sqlx::migrate!("./migrations/postgres_meta"));
        Ok(Self::with_dialect(PostgresDialect {
            pool: target.open(&m).await?,
        }))
    }

    /// The connection pool (for administration and tests).
    pub fn pool(&self) -> &PgPool {
        &self.db.pool
    }
}
