//! [`SqliteMetadataStore`]: its constructors. The store itself is the SQL store
//! (`crate::sql`) over the SQLite dialect.

use std::path::Path;

use tp_core::Result;

use super::dialect::SqliteDialect;
use super::{Pools, migrator};
use crate::sql::SqlStore;

/// [`tp_core::MetadataStore`] on SQLite.
///
/// Ids are stored as UUID text, emails lower-case. Device search is case-insensitive
/// for ASCII letters.
///
/// The same store is the SQLite [`tp_core::AccessStore`] (custom roles, API keys,
/// device groups, profiles, audit log) on the same database and pools; see
/// [`crate::open_access`] for both handles from one URL.
pub type SqliteMetadataStore = SqlStore<SqliteDialect>;

impl SqlStore<SqliteDialect> {
    /// Opens (creating if missing, with parent directories) the database file at
    /// `path` and applies pending migrations.
    ///
    /// # Errors
    /// [`Error::Backend`] when the file cannot be created or opened or a migration fails.
    pub async fn open(path: &Path) -> Result<Self> {
        let m = migrator(sqlx::migrate!("./migrations/sqlite_meta"));
        Ok(Self::with_dialect(SqliteDialect {
            pools: Pools::open_file(path, &m).await?,
        }))
    }

    /// A private in-memory database, dropped with the store (tests, demos).
    ///
    /// # Errors
    /// [`Error::Backend`] when SQLite cannot be initialised.
    pub async fn in_memory() -> Result<Self> {
        let m = migrator(sqlx::migrate!("./migrations/sqlite_meta"));
        Ok(Self::with_dialect(SqliteDialect {
            pools: Pools::open_memory(&m).await?,
        }))
    }
}
