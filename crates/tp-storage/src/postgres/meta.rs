//! [`PostgresMetadataStore`].

use std::collections::HashMap;
use std::str::FromStr;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::{PgPool, PgRow};
use tp_core::{
    CommandId, CommandLog, Device, DeviceCredentials, DeviceFilter, DeviceId, DeviceStatusEvent,
    Error, KeyValue, MetadataStore, Page, Paged, ProfileId, PublishedDownlink, Result,
    StatusHistoryQuery, Tenant, TenantId, Timestamp, User, UserId,
};
use uuid::Uuid;

use super::dialect::PostgresDialect;
use super::error::{self, PgError, conflict, db};
use super::value::{self, ValueArrays};
use super::{Target, healthcheck, like_escape, migrator, to_i64};
use crate::sql::SqlStore;

/// [`MetadataStore`] on PostgreSQL.
///
/// Same semantics as the SQLite store: ids are `uuid`, emails stored lower-case,
/// `update_device` replaces every field except `id`, `tenant_id`, `created_at`,
/// `online` and `last_seen` (the last two belong to
/// [`MetadataStore::set_device_online`]). Every tenant-scoped statement filters by
/// `tenant_id` in SQL. Device search is case-insensitive (`ILIKE`, Unicode-aware) with
/// `%` and `_` taken literally. Unique violations are mapped by constraint name to
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

fn tenant_from_row(row: &PgRow) -> RowResult<Tenant> {
    Ok(Tenant {
        id: TenantId(row.try_get("id")?),
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
    })
}

fn user_from_row(row: &PgRow) -> RowResult<User> {
    Ok(User {
        id: UserId(row.try_get("id")?),
        tenant_id: TenantId(row.try_get("tenant_id")?),
        email: row.try_get("email")?,
        name: row.try_get("name")?,
        password_hash: row.try_get("password_hash")?,
        role: parse_col(row, "role")?,
        created_at: row.try_get("created_at")?,
    })
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

fn command_from_row(row: &PgRow) -> RowResult<CommandLog> {
    Ok(CommandLog {
        id: CommandId(row.try_get("id")?),
        tenant_id: TenantId(row.try_get("tenant_id")?),
        device_id: DeviceId(row.try_get("device_id")?),
        message_id: row.try_get("message_id")?,
        kind: parse_col(row, "kind")?,
        payload: json_col(row, "payload")?.unwrap_or(serde_json::Value::Null),
        status: parse_col(row, "status")?,
        response: json_col(row, "response")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        expires_at: row.try_get("expires_at")?,
        published: match row.try_get::<Option<String>, _>("published_topic")? {
            Some(topic) => Some(PublishedDownlink {
                topic,
                payload: json_col(row, "published_payload")?.unwrap_or(serde_json::Value::Null),
            }),
            None => None,
        },
    })
}

fn status_from_row(row: &PgRow) -> RowResult<DeviceStatusEvent> {
    Ok(DeviceStatusEvent {
        device_id: DeviceId(row.try_get("device_id")?),
        online: row.try_get("online")?,
        reason: parse_col(row, "reason")?,
        at: row.try_get("at")?,
    })
}

fn attribute_from_row(row: &PgRow) -> RowResult<KeyValue> {
    Ok(KeyValue {
        key: row.try_get("key")?,
        ts: row.try_get("ts")?,
        value: value::decode(row)?,
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

macro_rules! user_cols {
    () => {
        "id, tenant_id, email, name, password_hash, role, created_at"
    };
}

macro_rules! command_select {
    () => {
        "SELECT id, tenant_id, device_id, message_id, kind, payload::text AS payload, status, \
         response::text AS response, created_at, updated_at, expires_at, published_topic, \
         published_payload::text AS published_payload FROM commands"
    };
}

/// Which value of a device a unique violation is about, from the constraint name.
fn device_conflict(device: &Device) -> impl FnOnce(&str) -> String + '_ {
    move |constraint| match constraint {
        "devices_device_number_key" => device.device_number.clone(),
        "devices_username_key" => device.credentials.username.clone(),
        _ => device.id.to_string(),
    }
}

pub(super) fn paging(page: Page) -> (i64, i64) {
    (to_i64(page.limit), to_i64(page.offset))
}

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

/// Per key the attribute with the greatest `ts` (later entries win ties), sorted by key
/// so concurrent upserts lock rows in one order. One `INSERT .. ON CONFLICT` may touch
/// a row only once, so the batch must not repeat a key.
fn newest_per_key(attrs: &[KeyValue]) -> Vec<&KeyValue> {
    let mut best: HashMap<&str, &KeyValue> = HashMap::with_capacity(attrs.len());
    for kv in attrs {
        match best.get(kv.key.as_str()) {
            Some(cur) if cur.ts > kv.ts => {}
            _ => {
                best.insert(kv.key.as_str(), kv);
            }
        }
    }
    let mut out: Vec<&KeyValue> = best.into_values().collect();
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

#[async_trait]
impl MetadataStore for PostgresMetadataStore {
    fn backend(&self) -> &'static str {
        error::BACKEND
    }

    async fn healthcheck(&self) -> Result<()> {
        healthcheck(self.pool()).await
    }

    async fn create_tenant(&self, tenant: &Tenant) -> Result<()> {
        sqlx::query("INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(tenant.id.0)
            .bind(&tenant.name)
            .bind(tenant.created_at)
            .execute(self.pool())
            .await
            .map_err(|e| conflict(e, "tenant", |_| tenant.id.to_string()))?;
        Ok(())
    }

    async fn get_tenant(&self, id: TenantId) -> Result<Option<Tenant>> {
        let row = sqlx::query("SELECT id, name, created_at FROM tenants WHERE id = $1")
            .bind(id.0)
            .fetch_optional(self.pool())
            .await
            .map_err(db)?;
        decode_opt(row, tenant_from_row)
    }

    async fn list_tenants(&self, page: Page) -> Result<Paged<Tenant>> {
        let (limit, offset) = paging(page);
        let rows = sqlx::query(
            "SELECT id, name, created_at FROM tenants ORDER BY created_at, id LIMIT $1 OFFSET $2",
        )
        .bind(limit)
        .bind(offset)
        .fetch_all(self.pool())
        .await
        .map_err(db)?;
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tenants")
            .fetch_one(self.pool())
            .await
            .map_err(db)?;
        Ok(Paged {
            items: decode_all(&rows, tenant_from_row)?,
            total: total.unsigned_abs(),
        })
    }

    async fn create_user(&self, user: &User) -> Result<()> {
        let email = user.email.to_lowercase();
        sqlx::query(concat!(
            "INSERT INTO users (",
            user_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ))
        .bind(user.id.0)
        .bind(user.tenant_id.0)
        .bind(&email)
        .bind(&user.name)
        .bind(&user.password_hash)
        .bind(user.role.as_str())
        .bind(user.created_at)
        .execute(self.pool())
        .await
        .map_err(|e| {
            conflict(e, "user", |constraint| {
                if constraint == "users_email_key" {
                    email.clone()
                } else {
                    user.id.to_string()
                }
            })
        })?;
        Ok(())
    }

    async fn get_user(&self, id: UserId) -> Result<Option<User>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            user_cols!(),
            " FROM users WHERE id = $1"
        ))
        .bind(id.0)
        .fetch_optional(self.pool())
        .await
        .map_err(db)?;
        decode_opt(row, user_from_row)
    }

    async fn get_user_by_email(&self, email: &str) -> Result<Option<User>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            user_cols!(),
            " FROM users WHERE email = $1"
        ))
        .bind(email.to_lowercase())
        .fetch_optional(self.pool())
        .await
        .map_err(db)?;
        decode_opt(row, user_from_row)
    }

    async fn update_user(&self, user: &User) -> Result<()> {
        let done =
            sqlx::query("UPDATE users SET name = $1, password_hash = $2, role = $3 WHERE id = $4")
                .bind(&user.name)
                .bind(&user.password_hash)
                .bind(user.role.as_str())
                .bind(user.id.0)
                .execute(self.pool())
                .await
                .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("user", user.id));
        }
        Ok(())
    }

    async fn delete_user(&self, tenant: TenantId, id: UserId) -> Result<()> {
        let done = sqlx::query("DELETE FROM users WHERE id = $1 AND tenant_id = $2")
            .bind(id.0)
            .bind(tenant.0)
            .execute(self.pool())
            .await
            .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("user", id));
        }
        Ok(())
    }

    async fn list_users(&self, tenant: TenantId, page: Page) -> Result<Paged<User>> {
        let (limit, offset) = paging(page);
        let rows = sqlx::query(concat!(
            "SELECT ",
            user_cols!(),
            " FROM users WHERE tenant_id = $1 ORDER BY created_at, id LIMIT $2 OFFSET $3"
        ))
        .bind(tenant.0)
        .bind(limit)
        .bind(offset)
        .fetch_all(self.pool())
        .await
        .map_err(db)?;
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE tenant_id = $1")
            .bind(tenant.0)
            .fetch_one(self.pool())
            .await
            .map_err(db)?;
        Ok(Paged {
            items: decode_all(&rows, user_from_row)?,
            total: total.unsigned_abs(),
        })
    }

    async fn count_users(&self) -> Result<u64> {
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(self.pool())
            .await
            .map_err(db)?;
        Ok(total.unsigned_abs())
    }

    async fn create_device(&self, device: &Device) -> Result<()> {
        sqlx::query(concat!(
            "INSERT INTO devices (",
            device_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
        ))
        .bind(device.id.0)
        .bind(device.tenant_id.0)
        .bind(&device.name)
        .bind(&device.device_number)
        .bind(&device.credentials.username)
        .bind(&device.credentials.password_hash)
        .bind(device.profile_id.map(|p| p.0))
        .bind(device.parent_id.map(|p| p.0))
        .bind(&device.sub_device_addr)
        .bind(&device.label)
        .bind(device.enabled)
        .bind(device.online)
        .bind(device.last_seen)
        .bind(device.created_at)
        .bind(device.updated_at)
        .bind(device.credentials.voucher_type.as_str())
        .execute(self.pool())
        .await
        .map_err(|e| conflict(e, "device", device_conflict(device)))?;
        Ok(())
    }

    async fn get_device(&self, tenant: TenantId, id: DeviceId) -> Result<Option<Device>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            device_cols!(),
            " FROM devices WHERE id = $1 AND tenant_id = $2"
        ))
        .bind(id.0)
        .bind(tenant.0)
        .fetch_optional(self.pool())
        .await
        .map_err(db)?;
        decode_opt(row, device_from_row)
    }

    async fn get_device_by_id(&self, id: DeviceId) -> Result<Option<Device>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            device_cols!(),
            " FROM devices WHERE id = $1"
        ))
        .bind(id.0)
        .fetch_optional(self.pool())
        .await
        .map_err(db)?;
        decode_opt(row, device_from_row)
    }

    async fn get_device_by_username(&self, username: &str) -> Result<Option<Device>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            device_cols!(),
            " FROM devices WHERE username = $1"
        ))
        .bind(username)
        .fetch_optional(self.pool())
        .await
        .map_err(db)?;
        decode_opt(row, device_from_row)
    }

    async fn get_device_by_number(&self, device_number: &str) -> Result<Option<Device>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            device_cols!(),
            " FROM devices WHERE device_number = $1"
        ))
        .bind(device_number)
        .fetch_optional(self.pool())
        .await
        .map_err(db)?;
        decode_opt(row, device_from_row)
    }

    async fn get_sub_device(&self, parent: DeviceId, addr: &str) -> Result<Option<Device>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            device_cols!(),
            " FROM devices WHERE parent_id = $1 AND sub_device_addr = $2 ORDER BY created_at, id LIMIT 1"
        ))
        .bind(parent.0)
        .bind(addr)
        .fetch_optional(self.pool())
        .await
        .map_err(db)?;
        decode_opt(row, device_from_row)
    }

    async fn list_sub_devices(&self, parent: DeviceId) -> Result<Vec<Device>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            device_cols!(),
            " FROM devices WHERE parent_id = $1 ORDER BY created_at, id"
        ))
        .bind(parent.0)
        .fetch_all(self.pool())
        .await
        .map_err(db)?;
        decode_all(&rows, device_from_row)
    }

    async fn list_devices(&self, tenant: TenantId, filter: &DeviceFilter) -> Result<Paged<Device>> {
        let (limit, offset) = paging(filter.page);
        let pattern = filter
            .search
            .as_deref()
            .map(|s| format!("%{}%", like_escape(s)));
        let rows = sqlx::query(concat!(
            "SELECT ",
            device_cols!(),
            " FROM devices WHERE tenant_id = $1 AND ($2::text IS NULL \
             OR name ILIKE $2 ESCAPE '\\' OR device_number ILIKE $2 ESCAPE '\\') \
             AND ($5::boolean IS NULL OR online = $5) \
             ORDER BY created_at, id LIMIT $3 OFFSET $4"
        ))
        .bind(tenant.0)
        .bind(&pattern)
        .bind(limit)
        .bind(offset)
        .bind(filter.online)
        .fetch_all(self.pool())
        .await
        .map_err(db)?;
        let total: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM devices WHERE tenant_id = $1 AND ($2::text IS NULL \
             OR name ILIKE $2 ESCAPE '\\' OR device_number ILIKE $2 ESCAPE '\\') \
             AND ($3::boolean IS NULL OR online = $3)",
        )
        .bind(tenant.0)
        .bind(&pattern)
        .bind(filter.online)
        .fetch_one(self.pool())
        .await
        .map_err(db)?;
        Ok(Paged {
            items: decode_all(&rows, device_from_row)?,
            total: total.unsigned_abs(),
        })
    }

    async fn update_device(&self, device: &Device) -> Result<()> {
        let done = sqlx::query(
            "UPDATE devices SET name = $1, device_number = $2, username = $3, \
             password_hash = $4, profile_id = $5, parent_id = $6, sub_device_addr = $7, \
             label = $8, enabled = $9, updated_at = $10, voucher_type = $13 \
             WHERE id = $11 AND tenant_id = $12",
        )
        .bind(&device.name)
        .bind(&device.device_number)
        .bind(&device.credentials.username)
        .bind(&device.credentials.password_hash)
        .bind(device.profile_id.map(|p| p.0))
        .bind(device.parent_id.map(|p| p.0))
        .bind(&device.sub_device_addr)
        .bind(&device.label)
        .bind(device.enabled)
        .bind(device.updated_at)
        .bind(device.id.0)
        .bind(device.tenant_id.0)
        .bind(device.credentials.voucher_type.as_str())
        .execute(self.pool())
        .await
        .map_err(|e| conflict(e, "device", device_conflict(device)))?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("device", device.id));
        }
        Ok(())
    }

    async fn delete_device(&self, tenant: TenantId, id: DeviceId) -> Result<()> {
        let mut tx = self.pool().begin().await.map_err(db)?;
        let done = sqlx::query("DELETE FROM devices WHERE id = $1 AND tenant_id = $2")
            .bind(id.0)
            .bind(tenant.0)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("device", id));
        }
        for sql in [
            "DELETE FROM attributes WHERE device_id = $1",
            "DELETE FROM commands WHERE device_id = $1",
        ] {
            sqlx::query(sql)
                .bind(id.0)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        tx.commit().await.map_err(db)
    }

    async fn set_device_online(&self, id: DeviceId, online: bool, at: Timestamp) -> Result<()> {
        let done = sqlx::query("UPDATE devices SET online = $1, last_seen = $2 WHERE id = $3")
            .bind(online)
            .bind(at)
            .bind(id.0)
            .execute(self.pool())
            .await
            .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("device", id));
        }
        Ok(())
    }

    async fn touch_devices(&self, seen: &[(DeviceId, Timestamp)]) -> Result<()> {
        if seen.is_empty() {
            return Ok(());
        }
        // One statement for the batch.
        let ids: Vec<uuid::Uuid> = seen.iter().map(|(id, _)| id.0).collect();
        let ats: Vec<i64> = seen.iter().map(|(_, at)| *at).collect();
        sqlx::query(
            "UPDATE devices d SET last_seen = v.at \
             FROM (SELECT id, max(at) AS at FROM UNNEST($1::uuid[], $2::bigint[]) AS u(id, at) \
                   GROUP BY id) v \
             WHERE d.id = v.id AND (d.last_seen IS NULL OR d.last_seen < v.at)",
        )
        .bind(&ids)
        .bind(&ats)
        .execute(self.pool())
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn append_status(&self, event: &DeviceStatusEvent) -> Result<()> {
        // One statement: the device row update and the history row commit together.
        let done = sqlx::query(
            "WITH d AS (UPDATE devices SET online = $1, last_seen = $2 WHERE id = $3 \
                        RETURNING id, tenant_id) \
             INSERT INTO device_status_history (device_id, tenant_id, online, reason, at) \
             SELECT id, tenant_id, $1, $4, $2 FROM d",
        )
        .bind(event.online)
        .bind(event.at)
        .bind(event.device_id.0)
        .bind(event.reason.as_str())
        .execute(self.pool())
        .await
        .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("device", event.device_id));
        }
        Ok(())
    }

    async fn list_status_history(
        &self,
        tenant: TenantId,
        device: DeviceId,
        query: &StatusHistoryQuery,
    ) -> Result<Paged<DeviceStatusEvent>> {
        let (limit, offset) = paging(query.page);
        let start = query.start.unwrap_or(i64::MIN);
        let end = query.end.unwrap_or(i64::MAX);
        let rows = sqlx::query(
            "SELECT device_id, online, reason, at, COUNT(*) OVER () AS total \
             FROM device_status_history \
             WHERE tenant_id = $1 AND device_id = $2 AND at >= $3 AND at < $4 \
             ORDER BY at DESC, seq DESC LIMIT $5 OFFSET $6",
        )
        .bind(tenant.0)
        .bind(device.0)
        .bind(start)
        .bind(end)
        .bind(limit)
        .bind(offset)
        .fetch_all(self.pool())
        .await
        .map_err(db)?;
        let total: i64 = match rows.first() {
            Some(row) => row.try_get("total").map_err(db)?,
            None => sqlx::query_scalar(
                "SELECT COUNT(*) FROM device_status_history \
                 WHERE tenant_id = $1 AND device_id = $2 AND at >= $3 AND at < $4",
            )
            .bind(tenant.0)
            .bind(device.0)
            .bind(start)
            .bind(end)
            .fetch_one(self.pool())
            .await
            .map_err(db)?,
        };
        Ok(Paged {
            items: decode_all(&rows, status_from_row)?,
            total: total.unsigned_abs(),
        })
    }

    async fn upsert_attributes(&self, device: DeviceId, attrs: &[KeyValue]) -> Result<()> {
        if attrs.is_empty() {
            return Ok(());
        }
        let rows = newest_per_key(attrs);
        let mut keys = Vec::with_capacity(rows.len());
        let mut ts = Vec::with_capacity(rows.len());
        let mut values = ValueArrays::with_capacity(rows.len());
        for kv in rows {
            keys.push(kv.key.clone());
            ts.push(kv.ts);
            values.push(&kv.value);
        }
        sqlx::query(
            "INSERT INTO attributes (device_id, key, ts, vtype, v_int, v_real, v_text) \
             SELECT $1, * FROM UNNEST($2::text[], $3::bigint[], $4::smallint[], \
             $5::bigint[], $6::float8[], $7::text[]) \
             ON CONFLICT (device_id, key) DO UPDATE SET ts = excluded.ts, \
             vtype = excluded.vtype, v_int = excluded.v_int, v_real = excluded.v_real, \
             v_text = excluded.v_text WHERE excluded.ts >= attributes.ts",
        )
        .bind(device.0)
        .bind(keys)
        .bind(ts)
        .bind(values.tag)
        .bind(values.int)
        .bind(values.real)
        .bind(values.text)
        .execute(self.pool())
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn get_attributes(
        &self,
        device: DeviceId,
        keys: Option<&[String]>,
    ) -> Result<Vec<KeyValue>> {
        if keys.is_some_and(<[String]>::is_empty) {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT key, ts, vtype, v_int, v_real, v_text FROM attributes \
             WHERE device_id = $1 AND ($2::text[] IS NULL OR key = ANY($2)) ORDER BY key",
        )
        .bind(device.0)
        .bind(keys.map(<[String]>::to_vec))
        .fetch_all(self.pool())
        .await
        .map_err(db)?;
        decode_all(&rows, attribute_from_row)
    }

    async fn create_command(&self, command: &CommandLog) -> Result<()> {
        sqlx::query(
            "INSERT INTO commands (id, tenant_id, device_id, message_id, kind, payload, status, \
             response, created_at, updated_at, expires_at, published_topic, published_payload) \
             VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8::jsonb, $9, $10, $11, $12, $13::jsonb)",
        )
        .bind(command.id.0)
        .bind(command.tenant_id.0)
        .bind(command.device_id.0)
        .bind(&command.message_id)
        .bind(command.kind.as_str())
        .bind(command.payload.to_string())
        .bind(command.status.as_str())
        .bind(command.response.as_ref().map(|r| r.to_string()))
        .bind(command.created_at)
        .bind(command.updated_at)
        .bind(command.expires_at)
        .bind(command.published.as_ref().map(|p| p.topic.as_str()))
        .bind(command.published.as_ref().map(|p| p.payload.to_string()))
        .execute(self.pool())
        .await
        .map_err(|e| conflict(e, "command", |_| command.id.to_string()))?;
        Ok(())
    }

    async fn update_command(&self, command: &CommandLog) -> Result<()> {
        let done = sqlx::query(
            "UPDATE commands SET status = $1, response = $2::jsonb, updated_at = $3, \
             published_topic = $5, published_payload = $6::jsonb WHERE id = $4",
        )
        .bind(command.status.as_str())
        .bind(command.response.as_ref().map(|r| r.to_string()))
        .bind(command.updated_at)
        .bind(command.id.0)
        .bind(command.published.as_ref().map(|p| p.topic.as_str()))
        .bind(command.published.as_ref().map(|p| p.payload.to_string()))
        .execute(self.pool())
        .await
        .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("command", command.id));
        }
        Ok(())
    }

    async fn get_command_by_message_id(
        &self,
        device: DeviceId,
        message_id: &str,
    ) -> Result<Option<CommandLog>> {
        let row = sqlx::query(concat!(
            command_select!(),
            " WHERE device_id = $1 AND message_id = $2 \
              ORDER BY created_at DESC, id DESC LIMIT 1"
        ))
        .bind(device.0)
        .bind(message_id)
        .fetch_optional(self.pool())
        .await
        .map_err(db)?;
        decode_opt(row, command_from_row)
    }

    async fn get_command_by_published_topic(
        &self,
        tenant: TenantId,
        topic: &str,
    ) -> Result<Option<CommandLog>> {
        let row = sqlx::query(concat!(
            command_select!(),
            " WHERE published_topic = $1 AND tenant_id = $2 \
              ORDER BY created_at DESC, id DESC LIMIT 1"
        ))
        .bind(topic)
        .bind(tenant.0)
        .fetch_optional(self.pool())
        .await
        .map_err(db)?;
        decode_opt(row, command_from_row)
    }

    async fn list_commands(
        &self,
        tenant: TenantId,
        device: DeviceId,
        page: Page,
    ) -> Result<Paged<CommandLog>> {
        let (limit, offset) = paging(page);
        let rows = sqlx::query(concat!(
            command_select!(),
            " WHERE tenant_id = $1 AND device_id = $2 \
              ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4"
        ))
        .bind(tenant.0)
        .bind(device.0)
        .bind(limit)
        .bind(offset)
        .fetch_all(self.pool())
        .await
        .map_err(db)?;
        let total: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM commands WHERE tenant_id = $1 AND device_id = $2",
        )
        .bind(tenant.0)
        .bind(device.0)
        .fetch_one(self.pool())
        .await
        .map_err(db)?;
        Ok(Paged {
            items: decode_all(&rows, command_from_row)?,
            total: total.unsigned_abs(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tp_core::Value;

    #[test]
    fn attribute_batches_keep_the_newest_per_key() {
        let kv = |key: &str, ts, v| KeyValue {
            key: key.into(),
            ts,
            value: Value::Integer(v),
        };
        let attrs = [
            kv("b", 5, 1),
            kv("a", 1, 2),
            kv("b", 3, 3),
            kv("a", 1, 4),
            kv("b", 9, 5),
        ];
        let got: Vec<(String, i64, Value)> = newest_per_key(&attrs)
            .into_iter()
            .map(|k| (k.key.clone(), k.ts, k.value.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a".into(), 1, Value::Integer(4)),
                ("b".into(), 9, Value::Integer(5)),
            ]
        );
    }

    #[test]
    fn device_conflicts_are_named_by_constraint() {
        let (d, _) = Device::new(TenantId::new(), "d".into(), Some("num".into()));
        assert_eq!(device_conflict(&d)("devices_device_number_key"), "num");
        assert_eq!(
            device_conflict(&d)("devices_username_key"),
            d.credentials.username
        );
        assert_eq!(device_conflict(&d)("devices_pkey"), d.id.to_string());
    }
}
