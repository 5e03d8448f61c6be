//! [`SqliteMetadataStore`]: its constructors. The store itself is the SQL store's
//! (`crate::sql`); the row helpers below serve `access.rs` until it moves there too.

use std::path::Path;
use std::str::FromStr;

use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use tp_core::{
    Device, DeviceCredentials, DeviceId, Error, Page, Paged, ProfileId, Result, TenantId,
};
use uuid::Uuid;

use super::dialect::SqliteDialect;
use super::error::{SqliteError, db};
use super::{Pools, migrator};
use crate::sql::SqlStore;
pub(super) use crate::sql::paging;

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

// Row helpers of `access.rs`, until it runs on the SQL store too.

pub(super) fn uuid_col(
    row: &SqliteRow,
    col: &'static str,
) -> std::result::Result<Uuid, SqliteError> {
    let s: String = row.try_get(col)?;
    Uuid::parse_str(&s).map_err(|e| SqliteError::decode(col, e))
}

pub(super) fn opt_uuid_col(
    row: &SqliteRow,
    col: &'static str,
) -> std::result::Result<Option<Uuid>, SqliteError> {
    let s: Option<String> = row.try_get(col)?;
    s.map(|s| Uuid::parse_str(&s).map_err(|e| SqliteError::decode(col, e)))
        .transpose()
}

pub(super) fn parse_col<T: FromStr<Err = Error>>(
    row: &SqliteRow,
    col: &'static str,
) -> std::result::Result<T, SqliteError> {
    let s: String = row.try_get(col)?;
    T::from_str(&s).map_err(|e| SqliteError::decode(col, e))
}

pub(super) fn json_col(
    row: &SqliteRow,
    col: &'static str,
) -> std::result::Result<Option<serde_json::Value>, SqliteError> {
    let s: Option<String> = row.try_get(col)?;
    s.map(|s| serde_json::from_str(&s).map_err(|e| SqliteError::decode(col, e)))
        .transpose()
}

pub(super) fn device_from_row(row: &SqliteRow) -> std::result::Result<Device, SqliteError> {
    Ok(Device {
        id: DeviceId(uuid_col(row, "id")?),
        tenant_id: TenantId(uuid_col(row, "tenant_id")?),
        name: row.try_get("name")?,
        device_number: row.try_get("device_number")?,
        credentials: DeviceCredentials {
            voucher_type: parse_col(row, "voucher_type")?,
            username: row.try_get("username")?,
            password_hash: row.try_get("password_hash")?,
        },
        profile_id: opt_uuid_col(row, "profile_id")?.map(ProfileId),
        parent_id: opt_uuid_col(row, "parent_id")?.map(DeviceId),
        sub_device_addr: row.try_get("sub_device_addr")?,
        label: row.try_get("label")?,
        enabled: row.try_get("enabled")?,
        online: row.try_get("online")?,
        last_seen: row.try_get("last_seen")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Decodes rows, mapping the first failure.
pub(super) fn decode_all<T>(
    rows: &[SqliteRow],
    f: impl Fn(&SqliteRow) -> std::result::Result<T, SqliteError>,
) -> Result<Vec<T>> {
    rows.iter().map(|r| f(r).map_err(Error::from)).collect()
}

pub(super) fn decode_opt<T>(
    row: Option<SqliteRow>,
    f: impl Fn(&SqliteRow) -> std::result::Result<T, SqliteError>,
) -> Result<Option<T>> {
    row.as_ref().map(|r| f(r).map_err(Error::from)).transpose()
}

macro_rules! device_cols {
    () => {
        "id, tenant_id, name, device_number, username, password_hash, profile_id, parent_id, \
         sub_device_addr, label, enabled, online, last_seen, created_at, updated_at, voucher_type"
    };
}
pub(super) use device_cols;

impl SqliteMetadataStore {
    /// The row `select` finds by id and tenant (its two parameters, in that order).
    pub(super) async fn old_get_scoped<T>(
        &self,
        select: &'static str,
        id: String,
        tenant: TenantId,
        decode: impl Fn(&SqliteRow) -> std::result::Result<T, SqliteError>,
    ) -> Result<Option<T>> {
        let row = sqlx::query(select)
            .bind(id)
            .bind(tenant.to_string())
            .fetch_optional(&self.db.pools.reader)
            .await
            .map_err(db)?;
        decode_opt(row, decode)
    }

    /// A page of a tenant's rows: `select` takes (tenant, limit, offset), `count`
    /// takes (tenant).
    pub(super) async fn old_page_scoped<T>(
        &self,
        select: &'static str,
        count: &'static str,
        tenant: TenantId,
        page: Page,
        decode: impl Fn(&SqliteRow) -> std::result::Result<T, SqliteError>,
    ) -> Result<Paged<T>> {
        let (limit, offset) = paging(page);
        let rows = sqlx::query(select)
            .bind(tenant.to_string())
            .bind(limit)
            .bind(offset)
            .fetch_all(&self.db.pools.reader)
            .await
            .map_err(db)?;
        let total: i64 = sqlx::query_scalar(count)
            .bind(tenant.to_string())
            .fetch_one(&self.db.pools.reader)
            .await
            .map_err(db)?;
        Ok(Paged {
            items: decode_all(&rows, decode)?,
            total: total.unsigned_abs(),
        })
    }
}
