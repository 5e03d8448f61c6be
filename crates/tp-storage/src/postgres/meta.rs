//! [`PostgresMetadataStore`]: its constructor and pool. The store itself is the SQL
//! store's (`crate::sql`); the row helpers below serve `access.rs` until it moves
//! there too.

use std::str::FromStr;

use sqlx::Row;
use sqlx::postgres::{PgPool, PgRow};
use tp_core::{
    Device, DeviceCredentials, DeviceId, Error, Page, Paged, ProfileId, Result, TenantId,
};
use uuid::Uuid;

use super::dialect::PostgresDialect;
use super::error::{PgError, db};
use super::{Target, migrator};
use crate::sql::SqlStore;
pub(super) use crate::sql::paging;

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

// Row helpers of `access.rs`, until it runs on the SQL store too.

pub(super) type RowResult<T> = std::result::Result<T, PgError>;

pub(super) fn parse_col<T: FromStr<Err = Error>>(row: &PgRow, col: &'static str) -> RowResult<T> {
    let s: String = row.try_get(col)?;
    T::from_str(&s).map_err(|e| PgError::decode(col, e))
}

pub(super) fn json_col(row: &PgRow, col: &'static str) -> RowResult<Option<serde_json::Value>> {
    let s: Option<String> = row.try_get(col)?;
    s.map(|s| serde_json::from_str(&s).map_err(|e| PgError::decode(col, e)))
        .transpose()
}

pub(super) fn device_from_row(row: &PgRow) -> RowResult<Device> {
    Ok(Device {
        id: DeviceId(row.try_get("id")?),
        tenant_id: TenantId(row.try_get("tenant_id")?),
        name: row.try_get("name")?,
        device_number: row.try_get("device_number")?,
        credentials: DeviceCredentials {
            voucher_type: parse_col(row, "voucher_type")?,
            username: row.try_get("username")?,
            password_hash: row.try_get("password_hash")?,
        },
        profile_id: row.try_get::<Option<Uuid>, _>("profile_id")?.map(ProfileId),
        parent_id: row.try_get::<Option<Uuid>, _>("parent_id")?.map(DeviceId),
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
pub(super) fn decode_all<T>(rows: &[PgRow], f: impl Fn(&PgRow) -> RowResult<T>) -> Result<Vec<T>> {
    rows.iter().map(|r| f(r).map_err(Error::from)).collect()
}

pub(super) fn decode_opt<T>(
    row: Option<PgRow>,
    f: impl Fn(&PgRow) -> RowResult<T>,
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

impl PostgresMetadataStore {
    /// The row `select` finds by id and tenant (`$1`, `$2`).
    pub(super) async fn old_get_scoped<T>(
        &self,
        select: &'static str,
        id: uuid::Uuid,
        tenant: TenantId,
        decode: impl Fn(&PgRow) -> RowResult<T>,
    ) -> Result<Option<T>> {
        let row = sqlx::query(select)
            .bind(id)
            .bind(tenant.0)
            .fetch_optional(self.pool())
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
        decode: impl Fn(&PgRow) -> RowResult<T>,
    ) -> Result<Paged<T>> {
        let (limit, offset) = paging(page);
        let rows = sqlx::query(select)
            .bind(tenant.0)
            .bind(limit)
            .bind(offset)
            .fetch_all(self.pool())
            .await
            .map_err(db)?;
        let total: i64 = sqlx::query_scalar(count)
            .bind(tenant.0)
            .fetch_one(self.pool())
            .await
            .map_err(db)?;
        Ok(Paged {
            items: decode_all(&rows, decode)?,
            total: total.unsigned_abs(),
        })
    }
}
