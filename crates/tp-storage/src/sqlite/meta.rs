//! [`SqliteMetadataStore`].

use std::path::Path;
use std::str::FromStr;

use async_trait::async_trait;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite};
use tp_core::{
    CommandId, CommandLog, Device, DeviceCredentials, DeviceFilter, DeviceId, DeviceStatusEvent,
    Error, KeyValue, MetadataStore, Page, Paged, ProfileId, PublishedDownlink, Result,
    StatusHistoryQuery, Tenant, TenantId, Timestamp, User, UserId,
};
use uuid::Uuid;

use super::dialect::SqliteDialect;
use super::error::{self, SqliteError, conflict, db};
use super::{Pools, ROWS_PER_INSERT, like_escape, migrator, to_i64, value};
use crate::sql::SqlStore;

/// [`MetadataStore`] on SQLite.
///
/// Ids are stored as UUID text, emails lower-case. `update_device` replaces every
/// field except `id`, `tenant_id`, `created_at`, `online` and `last_seen` (the last two
/// belong to [`MetadataStore::set_device_online`]). Device search is case-insensitive
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

fn tenant_from_row(row: &SqliteRow) -> std::result::Result<Tenant, SqliteError> {
    Ok(Tenant {
        id: TenantId(uuid_col(row, "id")?),
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
    })
}

fn user_from_row(row: &SqliteRow) -> std::result::Result<User, SqliteError> {
    Ok(User {
        id: UserId(uuid_col(row, "id")?),
        tenant_id: TenantId(uuid_col(row, "tenant_id")?),
        email: row.try_get("email")?,
        name: row.try_get("name")?,
        password_hash: row.try_get("password_hash")?,
        role: parse_col(row, "role")?,
        created_at: row.try_get("created_at")?,
    })
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

fn command_from_row(row: &SqliteRow) -> std::result::Result<CommandLog, SqliteError> {
    Ok(CommandLog {
        id: CommandId(uuid_col(row, "id")?),
        tenant_id: TenantId(uuid_col(row, "tenant_id")?),
        device_id: DeviceId(uuid_col(row, "device_id")?),
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

fn status_from_row(row: &SqliteRow) -> std::result::Result<DeviceStatusEvent, SqliteError> {
    Ok(DeviceStatusEvent {
        device_id: DeviceId(uuid_col(row, "device_id")?),
        online: row.try_get("online")?,
        reason: parse_col(row, "reason")?,
        at: row.try_get("at")?,
    })
}

fn attribute_from_row(row: &SqliteRow) -> std::result::Result<KeyValue, SqliteError> {
    Ok(KeyValue {
        key: row.try_get("key")?,
        ts: row.try_get("ts")?,
        value: value::decode(row)?,
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

macro_rules! user_cols {
    () => {
        "id, tenant_id, email, name, password_hash, role, created_at"
    };
}

macro_rules! command_cols {
    () => {
        "id, tenant_id, device_id, message_id, kind, payload, status, response, created_at, \
         updated_at, expires_at, published_topic, published_payload"
    };
}

/// Which value of a device a unique violation is about.
fn device_conflict(device: &Device) -> impl FnOnce(&str) -> String + '_ {
    move |msg| {
        if msg.contains("devices.device_number") {
            device.device_number.clone()
        } else if msg.contains("devices.username") {
            device.credentials.username.clone()
        } else {
            device.id.to_string()
        }
    }
}

pub(super) fn paging(page: Page) -> (i64, i64) {
    (to_i64(page.limit), to_i64(page.offset))
}

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

#[async_trait]
impl MetadataStore for SqliteMetadataStore {
    fn backend(&self) -> &'static str {
        error::BACKEND
    }

    async fn healthcheck(&self) -> Result<()> {
        self.db.pools.healthcheck().await
    }

    async fn create_tenant(&self, tenant: &Tenant) -> Result<()> {
        sqlx::query("INSERT INTO tenants (id, name, created_at) VALUES (?, ?, ?)")
            .bind(tenant.id.to_string())
            .bind(&tenant.name)
            .bind(tenant.created_at)
            .execute(&self.db.pools.writer)
            .await
            .map_err(|e| conflict(e, "tenant", |_| tenant.id.to_string()))?;
        Ok(())
    }

    async fn get_tenant(&self, id: TenantId) -> Result<Option<Tenant>> {
        let row = sqlx::query("SELECT id, name, created_at FROM tenants WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.db.pools.reader)
            .await
            .map_err(db)?;
        decode_opt(row, tenant_from_row)
    }

    async fn list_tenants(&self, page: Page) -> Result<Paged<Tenant>> {
        let (limit, offset) = paging(page);
        let rows = sqlx::query(
            "SELECT id, name, created_at FROM tenants ORDER BY created_at, id LIMIT ? OFFSET ?",
        )
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.db.pools.reader)
        .await
        .map_err(db)?;
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tenants")
            .fetch_one(&self.db.pools.reader)
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
            ") VALUES (?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(user.id.to_string())
        .bind(user.tenant_id.to_string())
        .bind(&email)
        .bind(&user.name)
        .bind(&user.password_hash)
        .bind(user.role.as_str())
        .bind(user.created_at)
        .execute(&self.db.pools.writer)
        .await
        .map_err(|e| {
            conflict(e, "user", |msg| {
                if msg.contains("users.email") {
                    email.clone()
                } else {
                    user.id.to_string()
                }
            })
        })?;
        Ok(())
    }

    async fn get_user(&self, id: UserId) -> Result<Option<User>> {
        let row = sqlx::query(concat!("SELECT ", user_cols!(), " FROM users WHERE id = ?"))
            .bind(id.to_string())
            .fetch_optional(&self.db.pools.reader)
            .await
            .map_err(db)?;
        decode_opt(row, user_from_row)
    }

    async fn get_user_by_email(&self, email: &str) -> Result<Option<User>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            user_cols!(),
            " FROM users WHERE email = ?"
        ))
        .bind(email.to_lowercase())
        .fetch_optional(&self.db.pools.reader)
        .await
        .map_err(db)?;
        decode_opt(row, user_from_row)
    }

    async fn update_user(&self, user: &User) -> Result<()> {
        let done =
            sqlx::query("UPDATE users SET name = ?, password_hash = ?, role = ? WHERE id = ?")
                .bind(&user.name)
                .bind(&user.password_hash)
                .bind(user.role.as_str())
                .bind(user.id.to_string())
                .execute(&self.db.pools.writer)
                .await
                .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("user", user.id));
        }
        Ok(())
    }

    async fn delete_user(&self, tenant: TenantId, id: UserId) -> Result<()> {
        let done = sqlx::query("DELETE FROM users WHERE id = ? AND tenant_id = ?")
            .bind(id.to_string())
            .bind(tenant.to_string())
            .execute(&self.db.pools.writer)
            .await
            .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("user", id));
        }
        Ok(())
    }

    async fn list_users(&self, tenant: TenantId, page: Page) -> Result<Paged<User>> {
        self.old_page_scoped(
            concat!(
                "SELECT ",
                user_cols!(),
                " FROM users WHERE tenant_id = ? ORDER BY created_at, id LIMIT ? OFFSET ?"
            ),
            "SELECT COUNT(*) FROM users WHERE tenant_id = ?",
            tenant,
            page,
            user_from_row,
        )
        .await
    }

    async fn count_users(&self) -> Result<u64> {
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(&self.db.pools.reader)
            .await
            .map_err(db)?;
        Ok(total.unsigned_abs())
    }

    async fn create_device(&self, device: &Device) -> Result<()> {
        sqlx::query(concat!(
            "INSERT INTO devices (",
            device_cols!(),
            ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(device.id.to_string())
        .bind(device.tenant_id.to_string())
        .bind(&device.name)
        .bind(&device.device_number)
        .bind(&device.credentials.username)
        .bind(&device.credentials.password_hash)
        .bind(device.profile_id.map(|p| p.to_string()))
        .bind(device.parent_id.map(|p| p.to_string()))
        .bind(&device.sub_device_addr)
        .bind(&device.label)
        .bind(device.enabled)
        .bind(device.online)
        .bind(device.last_seen)
        .bind(device.created_at)
        .bind(device.updated_at)
        .bind(device.credentials.voucher_type.as_str())
        .execute(&self.db.pools.writer)
        .await
        .map_err(|e| conflict(e, "device", device_conflict(device)))?;
        Ok(())
    }

    async fn get_device(&self, tenant: TenantId, id: DeviceId) -> Result<Option<Device>> {
        self.old_get_scoped(
            concat!(
                "SELECT ",
                device_cols!(),
                " FROM devices WHERE id = ? AND tenant_id = ?"
            ),
            id.to_string(),
            tenant,
            device_from_row,
        )
        .await
    }

    async fn get_device_by_id(&self, id: DeviceId) -> Result<Option<Device>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            device_cols!(),
            " FROM devices WHERE id = ?"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.db.pools.reader)
        .await
        .map_err(db)?;
        decode_opt(row, device_from_row)
    }

    async fn get_device_by_username(&self, username: &str) -> Result<Option<Device>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            device_cols!(),
            " FROM devices WHERE username = ?"
        ))
        .bind(username)
        .fetch_optional(&self.db.pools.reader)
        .await
        .map_err(db)?;
        decode_opt(row, device_from_row)
    }

    async fn get_device_by_number(&self, device_number: &str) -> Result<Option<Device>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            device_cols!(),
            " FROM devices WHERE device_number = ?"
        ))
        .bind(device_number)
        .fetch_optional(&self.db.pools.reader)
        .await
        .map_err(db)?;
        decode_opt(row, device_from_row)
    }

    async fn get_sub_device(&self, parent: DeviceId, addr: &str) -> Result<Option<Device>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            device_cols!(),
            " FROM devices WHERE parent_id = ? AND sub_device_addr = ? ORDER BY created_at, id LIMIT 1"
        ))
        .bind(parent.to_string())
        .bind(addr)
        .fetch_optional(&self.db.pools.reader)
        .await
        .map_err(db)?;
        decode_opt(row, device_from_row)
    }

    async fn list_sub_devices(&self, parent: DeviceId) -> Result<Vec<Device>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            device_cols!(),
            " FROM devices WHERE parent_id = ? ORDER BY created_at, id"
        ))
        .bind(parent.to_string())
        .fetch_all(&self.db.pools.reader)
        .await
        .map_err(db)?;
        decode_all(&rows, device_from_row)
    }

    async fn list_devices(&self, tenant: TenantId, filter: &DeviceFilter) -> Result<Paged<Device>> {
        let (limit, offset) = paging(filter.page);
        let pattern = filter
            .search
            .as_deref()
            .map(|s| format!("%{}%", like_escape(&s.to_lowercase())));
        let rows = sqlx::query(concat!(
            "SELECT ",
            device_cols!(),
            " FROM devices WHERE tenant_id = ? AND (? IS NULL \
             OR lower(name) LIKE ? ESCAPE '\\' OR lower(device_number) LIKE ? ESCAPE '\\') \
             AND (? IS NULL OR online = ?) \
             ORDER BY created_at, id LIMIT ? OFFSET ?"
        ))
        .bind(tenant.to_string())
        .bind(&pattern)
        .bind(&pattern)
        .bind(&pattern)
        .bind(filter.online)
        .bind(filter.online)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.db.pools.reader)
        .await
        .map_err(db)?;
        let total: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM devices WHERE tenant_id = ? AND (? IS NULL \
             OR lower(name) LIKE ? ESCAPE '\\' OR lower(device_number) LIKE ? ESCAPE '\\') \
             AND (? IS NULL OR online = ?)",
        )
        .bind(tenant.to_string())
        .bind(&pattern)
        .bind(&pattern)
        .bind(&pattern)
        .bind(filter.online)
        .bind(filter.online)
        .fetch_one(&self.db.pools.reader)
        .await
        .map_err(db)?;
        Ok(Paged {
            items: decode_all(&rows, device_from_row)?,
            total: total.unsigned_abs(),
        })
    }

    async fn update_device(&self, device: &Device) -> Result<()> {
        let done = sqlx::query(
            "UPDATE devices SET name = ?, device_number = ?, username = ?, password_hash = ?, \
             profile_id = ?, parent_id = ?, sub_device_addr = ?, label = ?, enabled = ?, \
             updated_at = ?, voucher_type = ? WHERE id = ? AND tenant_id = ?",
        )
        .bind(&device.name)
        .bind(&device.device_number)
        .bind(&device.credentials.username)
        .bind(&device.credentials.password_hash)
        .bind(device.profile_id.map(|p| p.to_string()))
        .bind(device.parent_id.map(|p| p.to_string()))
        .bind(&device.sub_device_addr)
        .bind(&device.label)
        .bind(device.enabled)
        .bind(device.updated_at)
        .bind(device.credentials.voucher_type.as_str())
        .bind(device.id.to_string())
        .bind(device.tenant_id.to_string())
        .execute(&self.db.pools.writer)
        .await
        .map_err(|e| conflict(e, "device", device_conflict(device)))?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("device", device.id));
        }
        Ok(())
    }

    async fn delete_device(&self, tenant: TenantId, id: DeviceId) -> Result<()> {
        let mut tx = self.db.pools.begin_write().await?;
        let done = sqlx::query("DELETE FROM devices WHERE id = ? AND tenant_id = ?")
            .bind(id.to_string())
            .bind(tenant.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("device", id));
        }
        for sql in [
            "DELETE FROM attributes WHERE device_id = ?",
            "DELETE FROM commands WHERE device_id = ?",
        ] {
            sqlx::query(sql)
                .bind(id.to_string())
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        tx.commit().await.map_err(db)
    }

    async fn set_device_online(&self, id: DeviceId, online: bool, at: Timestamp) -> Result<()> {
        let done = sqlx::query("UPDATE devices SET online = ?, last_seen = ? WHERE id = ?")
            .bind(online)
            .bind(at)
            .bind(id.to_string())
            .execute(&self.db.pools.writer)
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
        // One transaction for the batch; the statement is prepared once.
        let mut tx = self.db.pools.begin_write().await?;
        for (id, at) in seen {
            sqlx::query(
                "UPDATE devices SET last_seen = ? WHERE id = ? \
                 AND (last_seen IS NULL OR last_seen < ?)",
            )
            .bind(at)
            .bind(id.to_string())
            .bind(at)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        tx.commit().await.map_err(db)
    }

    async fn append_status(&self, event: &DeviceStatusEvent) -> Result<()> {
        let mut tx = self.db.pools.begin_write().await?;
        if !append_status_in(&mut tx, event).await? {
            return Err(Error::not_found("device", event.device_id));
        }
        tx.commit().await.map_err(db)
    }

    /// One write transaction for the whole batch: SQLite's cost is the commit.
    async fn append_statuses(&self, events: &[DeviceStatusEvent]) -> Result<usize> {
        let mut tx = self.db.pools.begin_write().await?;
        let mut recorded = 0;
        for event in events {
            recorded += usize::from(append_status_in(&mut tx, event).await?);
        }
        tx.commit().await.map_err(db)?;
        Ok(recorded)
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
            "SELECT device_id, online, reason, at FROM device_status_history \
             WHERE tenant_id = ? AND device_id = ? AND at >= ? AND at < ? \
             ORDER BY at DESC, seq DESC LIMIT ? OFFSET ?",
        )
        .bind(tenant.to_string())
        .bind(device.to_string())
        .bind(start)
        .bind(end)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.db.pools.reader)
        .await
        .map_err(db)?;
        let total: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM device_status_history \
             WHERE tenant_id = ? AND device_id = ? AND at >= ? AND at < ?",
        )
        .bind(tenant.to_string())
        .bind(device.to_string())
        .bind(start)
        .bind(end)
        .fetch_one(&self.db.pools.reader)
        .await
        .map_err(db)?;
        Ok(Paged {
            items: decode_all(&rows, status_from_row)?,
            total: total.unsigned_abs(),
        })
    }

    async fn upsert_attributes(&self, device: DeviceId, attrs: &[KeyValue]) -> Result<()> {
        if attrs.is_empty() {
            return Ok(());
        }
        let device = device.to_string();
        let mut tx = self.db.pools.begin_write().await?;
        for chunk in attrs.chunks(ROWS_PER_INSERT) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO attributes (device_id, key, ts, vtype, v_int, v_real, v_text) ",
            );
            qb.push_values(chunk, |mut row, kv| {
                let v = value::encode(&kv.value);
                row.push_bind(device.clone())
                    .push_bind(kv.key.clone())
                    .push_bind(kv.ts)
                    .push_bind(v.tag)
                    .push_bind(v.int)
                    .push_bind(v.real)
                    .push_bind(v.text);
            });
            qb.push(
                " ON CONFLICT (device_id, key) DO UPDATE SET ts = excluded.ts, \
                 vtype = excluded.vtype, v_int = excluded.v_int, v_real = excluded.v_real, \
                 v_text = excluded.v_text WHERE excluded.ts >= attributes.ts",
            );
            qb.build().execute(&mut *tx).await.map_err(db)?;
        }
        tx.commit().await.map_err(db)
    }

    async fn get_attributes(
        &self,
        device: DeviceId,
        keys: Option<&[String]>,
    ) -> Result<Vec<KeyValue>> {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "SELECT key, ts, vtype, v_int, v_real, v_text FROM attributes WHERE device_id = ",
        );
        qb.push_bind(device.to_string());
        if let Some(keys) = keys {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            qb.push(" AND key IN (");
            let mut list = qb.separated(", ");
            for k in keys {
                list.push_bind(k.clone());
            }
            list.push_unseparated(")");
        }
        qb.push(" ORDER BY key");
        let rows = qb
            .build()
            .fetch_all(&self.db.pools.reader)
            .await
            .map_err(db)?;
        decode_all(&rows, attribute_from_row)
    }

    async fn create_command(&self, command: &CommandLog) -> Result<()> {
        sqlx::query(concat!(
            "INSERT INTO commands (",
            command_cols!(),
            ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(command.id.to_string())
        .bind(command.tenant_id.to_string())
        .bind(command.device_id.to_string())
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
        .execute(&self.db.pools.writer)
        .await
        .map_err(|e| conflict(e, "command", |_| command.id.to_string()))?;
        Ok(())
    }

    async fn update_command(&self, command: &CommandLog) -> Result<()> {
        let done = sqlx::query(
            "UPDATE commands SET status = ?, response = ?, updated_at = ?, published_topic = ?, \
             published_payload = ? WHERE id = ?",
        )
        .bind(command.status.as_str())
        .bind(command.response.as_ref().map(|r| r.to_string()))
        .bind(command.updated_at)
        .bind(command.published.as_ref().map(|p| p.topic.as_str()))
        .bind(command.published.as_ref().map(|p| p.payload.to_string()))
        .bind(command.id.to_string())
        .execute(&self.db.pools.writer)
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
            "SELECT ",
            command_cols!(),
            " FROM commands WHERE device_id = ? AND message_id = ? \
              ORDER BY created_at DESC, id DESC LIMIT 1"
        ))
        .bind(device.to_string())
        .bind(message_id)
        .fetch_optional(&self.db.pools.reader)
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
            "SELECT ",
            command_cols!(),
            " FROM commands WHERE published_topic = ? AND tenant_id = ? \
              ORDER BY created_at DESC, id DESC LIMIT 1"
        ))
        .bind(topic)
        .bind(tenant.to_string())
        .fetch_optional(&self.db.pools.reader)
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
            "SELECT ",
            command_cols!(),
            " FROM commands WHERE tenant_id = ? AND device_id = ? \
              ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?"
        ))
        .bind(tenant.to_string())
        .bind(device.to_string())
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.db.pools.reader)
        .await
        .map_err(db)?;
        let total: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM commands WHERE tenant_id = ? AND device_id = ?",
        )
        .bind(tenant.to_string())
        .bind(device.to_string())
        .fetch_one(&self.db.pools.reader)
        .await
        .map_err(db)?;
        Ok(Paged {
            items: decode_all(&rows, command_from_row)?,
            total: total.unsigned_abs(),
        })
    }
}

/// Records one status transition inside `tx`; `false` when the device is missing.
async fn append_status_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    event: &DeviceStatusEvent,
) -> Result<bool> {
    let id = event.device_id.to_string();
    let done = sqlx::query("UPDATE devices SET online = ?, last_seen = ? WHERE id = ?")
        .bind(event.online)
        .bind(event.at)
        .bind(&id)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO device_status_history (device_id, tenant_id, online, reason, at) \
         SELECT id, tenant_id, ?, ?, ? FROM devices WHERE id = ?",
    )
    .bind(event.online)
    .bind(event.reason.as_str())
    .bind(event.at)
    .bind(&id)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn emails_are_case_insensitive() {
        let store = SqliteMetadataStore::in_memory().await.expect("open");
        let user = User {
            id: UserId::new(),
            tenant_id: TenantId::new(),
            email: "Alice@Example.COM".into(),
            name: "Alice".into(),
            password_hash: "h".into(),
            role: tp_core::Role::TenantAdmin,
            created_at: 1,
        };
        store.create_user(&user).await.expect("create");
        let got = store
            .get_user_by_email("ALICE@example.com")
            .await
            .expect("get")
            .expect("found");
        assert_eq!(got.email, "alice@example.com");
        let mut dup = user.clone();
        dup.id = UserId::new();
        dup.email = "alice@EXAMPLE.com".into();
        match store.create_user(&dup).await {
            Err(Error::AlreadyExists { entity, id }) => {
                assert_eq!((entity, id.as_str()), ("user", "alice@example.com"));
            }
            other => panic!("expected AlreadyExists, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn device_conflicts_name_the_value() {
        let store = SqliteMetadataStore::in_memory().await.expect("open");
        let (a, _) = Device::new(TenantId::new(), "a".into(), Some("num-a".into()));
        store.create_device(&a).await.expect("create");
        let (mut b, _) = Device::new(TenantId::new(), "b".into(), Some("num-a".into()));
        match store.create_device(&b).await {
            Err(Error::AlreadyExists { entity, id }) => {
                assert_eq!((entity, id.as_str()), ("device", "num-a"))
            }
            other => panic!("expected AlreadyExists, got {other:?}"),
        }
        b.device_number = "num-b".into();
        b.credentials.username = a.credentials.username.clone();
        match store.create_device(&b).await {
            Err(Error::AlreadyExists { entity, id }) => {
                assert_eq!((entity, id), ("device", a.credentials.username.clone()));
            }
            other => panic!("expected AlreadyExists, got {other:?}"),
        }
    }
}
