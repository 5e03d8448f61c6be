//! [`MetadataStore`] of the SQL store: tenants, users, devices, attributes, device
//! status history and the downlink log (tables of migrations `0001`, `0003`, `0005`).
//!
//! Emails are stored lower-case. `update_device` replaces every field except `id`,
//! `tenant_id`, `created_at`, `online` and `last_seen` (the last two belong to
//! [`MetadataStore::set_device_online`]). Every tenant-scoped statement filters by
//! `tenant_id` in SQL. A unique violation is [`Error::AlreadyExists`] naming the
//! conflicting value (email, device number, username), else the id.
//!
//! Device search is case-insensitive with `%` and `_` taken literally: on PostgreSQL
//! Unicode-aware (`ILIKE`), on SQLite for ASCII letters only (its `lower()` and `LIKE`
//! know no other case).

use std::collections::{BTreeSet, HashMap};

use async_trait::async_trait;
use tp_core::{
    CommandId, CommandLog, Device, DeviceCredentials, DeviceFilter, DeviceId, DeviceStatusEvent,
    Error, KeyValue, MetadataStore, Page, Paged, ProfileId, PublishedDownlink, Result,
    StatusHistoryQuery, Tenant, TenantId, Timestamp, User, UserId, Value,
};

use super::{
    Arg, Dialect, DialectKind, SqlRow, SqlStore, Stmt, UniqueViolation, found, like_escape, paging,
};

/// Rows per multi-row statement: at 7 bound values per row this stays far below the
/// parameter limits (SQLite 32 766, PostgreSQL 65 535), and full chunks reuse one
/// prepared statement.
const ROWS_PER_STATEMENT: usize = 1000;

fn tenant_from_row(row: &impl SqlRow) -> Result<Tenant> {
    Ok(Tenant {
        id: TenantId(row.uuid("id")?),
        name: row.text("name")?,
        created_at: row.int("created_at")?,
    })
}

fn user_from_row(row: &impl SqlRow) -> Result<User> {
    Ok(User {
        id: UserId(row.uuid("id")?),
        tenant_id: TenantId(row.uuid("tenant_id")?),
        email: row.text("email")?,
        name: row.text("name")?,
        password_hash: row.text("password_hash")?,
        role: row.parsed("role", str::parse)?,
        created_at: row.int("created_at")?,
    })
}

/// A device from the columns of `device_cols!`.
pub(super) fn device_from_row(row: &impl SqlRow) -> Result<Device> {
    Ok(Device {
        id: DeviceId(row.uuid("id")?),
        tenant_id: TenantId(row.uuid("tenant_id")?),
        name: row.text("name")?,
        device_number: row.text("device_number")?,
        credentials: DeviceCredentials {
            voucher_type: row.parsed("voucher_type", str::parse)?,
            username: row.text("username")?,
            password_hash: row.text("password_hash")?,
        },
        profile_id: row.opt_uuid("profile_id")?.map(ProfileId),
        parent_id: row.opt_uuid("parent_id")?.map(DeviceId),
        sub_device_addr: row.opt_text("sub_device_addr")?,
        label: row.opt_text("label")?,
        enabled: row.bool("enabled")?,
        online: row.bool("online")?,
        last_seen: row.opt_int("last_seen")?,
        created_at: row.int("created_at")?,
        updated_at: row.int("updated_at")?,
    })
}

fn command_from_row(row: &impl SqlRow) -> Result<CommandLog> {
    Ok(CommandLog {
        id: CommandId(row.uuid("id")?),
        tenant_id: TenantId(row.uuid("tenant_id")?),
        device_id: DeviceId(row.uuid("device_id")?),
        message_id: row.text("message_id")?,
        kind: row.parsed("kind", str::parse)?,
        payload: row
            .opt_json_value("payload")?
            .unwrap_or(serde_json::Value::Null),
        status: row.parsed("status", str::parse)?,
        response: row.opt_json_value("response")?,
        created_at: row.int("created_at")?,
        updated_at: row.int("updated_at")?,
        expires_at: row.opt_int("expires_at")?,
        published: match row.opt_text("published_topic")? {
            Some(topic) => Some(PublishedDownlink {
                topic,
                payload: row
                    .opt_json_value("published_payload")?
                    .unwrap_or(serde_json::Value::Null),
            }),
            None => None,
        },
    })
}

fn status_from_row(row: &impl SqlRow) -> Result<DeviceStatusEvent> {
    Ok(DeviceStatusEvent {
        device_id: DeviceId(row.uuid("device_id")?),
        online: row.bool("online")?,
        reason: row.parsed("reason", str::parse)?,
        at: row.int("at")?,
    })
}

fn attribute_from_row<D: Dialect>(row: &D::Row) -> Result<KeyValue> {
    Ok(KeyValue {
        key: row.text("key")?,
        ts: row.int("ts")?,
        value: value_from_row::<D>(row)?,
    })
}

/// A value as its `vtype, v_int, v_real, v_text` columns: the type tag of
/// [`Value::type_tag`]; booleans and integers in `v_int`, floats in `v_real`, strings
/// and JSON text in `v_text`.
fn value_args(v: &Value) -> [Arg; 4] {
    let (int, real, text) = match v {
        Value::Bool(b) => (Some(i64::from(*b)), None, None),
        Value::Integer(i) => (Some(*i), None, None),
        Value::Float(f) => (None, Some(*f), None),
        Value::String(s) => (None, None, Some(s.clone())),
        Value::Json(j) => (None, None, Some(j.to_string())),
    };
    [
        Arg::Int(Some(v.type_tag())),
        Arg::Int(int),
        Arg::Real(real),
        Arg::Text(text),
    ]
}

/// Decodes the `vtype, v_int, v_real, v_text` columns of a row.
fn value_from_row<D: Dialect>(row: &D::Row) -> Result<Value> {
    let tag = row.int("vtype")?;
    let missing = |col| row.decode_error(col, format!("NULL for type tag {tag}"));
    Ok(match tag {
        0 => Value::Bool(row.opt_int("v_int")?.ok_or_else(|| missing("v_int"))? != 0),
        1 => Value::Integer(row.opt_int("v_int")?.ok_or_else(|| missing("v_int"))?),
        2 => match row.opt_real("v_real")? {
            Some(f) => Value::Float(f),
            // SQLite stores NaN as NULL.
            None if D::KIND == DialectKind::Sqlite => Value::Float(f64::NAN),
            None => return Err(missing("v_real")),
        },
        3 => Value::String(row.opt_text("v_text")?.ok_or_else(|| missing("v_text"))?),
        4 => {
            let text = row.opt_text("v_text")?.ok_or_else(|| missing("v_text"))?;
            Value::Json(
                serde_json::from_str(&text)
                    .map_err(|e| row.decode_error("v_text", e.to_string()))?,
            )
        }
        other => return Err(row.decode_error("vtype", format!("unknown type tag {other}"))),
    })
}

/// The columns [`device_from_row`] reads.
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

/// A device's attributes, `$1` the device.
macro_rules! attribute_select {
    () => {
        "SELECT key, ts, vtype, v_int, v_real, v_text FROM attributes WHERE device_id = $1"
    };
}

/// `list_devices` after `SELECT <cols>` or `SELECT COUNT(*) AS n`: `$1` the tenant,
/// `$2` the `LIKE` pattern or NULL, `$3` the online state or NULL. SQLite has no
/// `ILIKE`; its `LIKE` ignores ASCII case only, as does `lower()`, so the pattern is
/// lower-cased (see [`search_pattern`]) and so are the columns.
fn device_filter<D: Dialect>() -> &'static str {
    match D::KIND {
        DialectKind::Sqlite => {
            " FROM devices WHERE tenant_id = $1 AND ($2 IS NULL \
             OR lower(name) LIKE $2 ESCAPE '\\' OR lower(device_number) LIKE $2 ESCAPE '\\') \
             AND ($3 IS NULL OR online = $3)"
        }
        DialectKind::Postgres => {
            " FROM devices WHERE tenant_id = $1 AND ($2 IS NULL \
             OR name ILIKE $2 ESCAPE '\\' OR device_number ILIKE $2 ESCAPE '\\') \
             AND ($3 IS NULL OR online = $3)"
        }
    }
}

/// The `LIKE` pattern of a device search: the text anywhere, wildcards literal.
fn search_pattern<D: Dialect>(search: &str) -> String {
    match D::KIND {
        DialectKind::Sqlite => format!("%{}%", like_escape(&search.to_lowercase())),
        DialectKind::Postgres => format!("%{}%", like_escape(search)),
    }
}

/// Which value of a device a unique violation is about.
fn device_conflict(device: &Device) -> impl FnOnce(&UniqueViolation) -> String + '_ {
    move |v| {
        if v.names("devices", "device_number") {
            device.device_number.clone()
        } else if v.names("devices", "username") {
            device.credentials.username.clone()
        } else {
            device.id.to_string()
        }
    }
}

/// `$first, $first+1, ..`: `n` placeholders.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `($1, $2), ($3, $4), ..`: the placeholders of `rows` rows of `cols` values each.
fn value_rows(rows: usize, cols: usize) -> String {
    (0..rows)
        .map(|r| format!("({})", placeholders(1 + r * cols, cols)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Per key the attribute with the greatest `ts` (later entries win ties), sorted by
/// key so concurrent upserts lock rows in one order. PostgreSQL refuses an
/// `INSERT .. ON CONFLICT` that touches a row twice, so a statement must not repeat
/// a key.
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

/// Upserts `rows` (distinct keys) of one device; an older `ts` does not overwrite.
fn attribute_upsert(device: DeviceId, rows: &[&KeyValue]) -> Stmt {
    let mut stmt = Stmt::built(format!(
        "INSERT INTO attributes (device_id, key, ts, vtype, v_int, v_real, v_text) VALUES {} \
         ON CONFLICT (device_id, key) DO UPDATE SET ts = excluded.ts, \
         vtype = excluded.vtype, v_int = excluded.v_int, v_real = excluded.v_real, \
         v_text = excluded.v_text WHERE excluded.ts >= attributes.ts",
        value_rows(rows.len(), 7)
    ));
    for kv in rows {
        stmt = stmt.bind(device).bind(&kv.key).bind(kv.ts);
        for arg in value_args(&kv.value) {
            stmt = stmt.bind(arg);
        }
    }
    stmt
}

/// Moves `last_seen` of `rows` (distinct devices) forward.
fn touch(rows: &[(DeviceId, Timestamp)]) -> Stmt {
    // A VALUES list names its columns column1, column2.. on both databases.
    let mut stmt = Stmt::built(format!(
        "UPDATE devices SET last_seen = v.column2 FROM (VALUES {}) AS v \
         WHERE devices.id = v.column1 \
         AND (devices.last_seen IS NULL OR devices.last_seen < v.column2)",
        value_rows(rows.len(), 2)
    ));
    for (id, at) in rows {
        stmt = stmt.bind(*id).bind(*at);
    }
    stmt
}

/// The writes that record a status transition; the first changes no row when the
/// device is missing. PostgreSQL does both in one statement (a data-modifying `WITH`),
/// so a single event costs one round trip; SQLite has no such statement and needs a
/// second one, in the same transaction.
fn status_writes<D: Dialect>(event: &DeviceStatusEvent) -> (Stmt, Option<Stmt>) {
    match D::KIND {
        DialectKind::Postgres => {
            let stmt = Stmt::new(
                "WITH d AS (UPDATE devices SET online = $1, last_seen = $2 WHERE id = $3 \
                            RETURNING id, tenant_id) \
                 INSERT INTO device_status_history (device_id, tenant_id, online, reason, at) \
                 SELECT id, tenant_id, $1, $4, $2 FROM d",
            );
            (status_args(stmt, event), None)
        }
        DialectKind::Sqlite => {
            let update = Stmt::new("UPDATE devices SET online = $1, last_seen = $2 WHERE id = $3")
                .bind(event.online)
                .bind(event.at)
                .bind(event.device_id);
            let insert = Stmt::new(
                "INSERT INTO device_status_history (device_id, tenant_id, online, reason, at) \
                 SELECT id, tenant_id, $1, $4, $2 FROM devices WHERE id = $3",
            );
            (update, Some(status_args(insert, event)))
        }
    }
}

/// Binds `$1` online, `$2` at, `$3` device, `$4` reason.
fn status_args(stmt: Stmt, event: &DeviceStatusEvent) -> Stmt {
    stmt.bind(event.online)
        .bind(event.at)
        .bind(event.device_id)
        .bind(event.reason.as_str())
}

impl<D: Dialect> SqlStore<D> {
    /// Runs the statements of one batch: a single one on the writer, several in one
    /// transaction, so the batch commits once and whole.
    async fn exec_batch(&self, stmts: Vec<Stmt>) -> Result<()> {
        match <[Stmt; 1]>::try_from(stmts) {
            Ok([stmt]) => {
                self.exec(stmt).await?;
                Ok(())
            }
            Err(stmts) => {
                let mut tx = self.begin(None).await?;
                for stmt in stmts {
                    tx.exec(stmt).await?;
                }
                tx.commit().await
            }
        }
    }
}

#[async_trait]
impl<D: Dialect> MetadataStore for SqlStore<D> {
    fn backend(&self) -> &'static str {
        D::backend()
    }

    async fn healthcheck(&self) -> Result<()> {
        self.db.healthcheck().await
    }

    async fn create_tenant(&self, tenant: &Tenant) -> Result<()> {
        let stmt = Stmt::new("INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(tenant.id)
            .bind(&tenant.name)
            .bind(tenant.created_at);
        self.exec_unique(stmt, "tenant", |_| tenant.id.to_string())
            .await?;
        Ok(())
    }

    async fn get_tenant(&self, id: TenantId) -> Result<Option<Tenant>> {
        let stmt = Stmt::new("SELECT id, name, created_at FROM tenants WHERE id = $1").bind(id);
        self.opt(stmt, tenant_from_row).await
    }

    async fn list_tenants(&self, page: Page) -> Result<Paged<Tenant>> {
        let (limit, offset) = paging(page);
        let stmt = Stmt::new(
            "SELECT id, name, created_at FROM tenants ORDER BY created_at, id LIMIT $1 OFFSET $2",
        )
        .bind(limit)
        .bind(offset);
        let items = self.all(stmt, tenant_from_row).await?;
        let total = self
            .count(Stmt::new("SELECT COUNT(*) AS n FROM tenants"))
            .await?;
        Ok(Paged { items, total })
    }

    async fn create_user(&self, user: &User) -> Result<()> {
        let email = user.email.to_lowercase();
        let stmt = Stmt::new(concat!(
            "INSERT INTO users (",
            user_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ))
        .bind(user.id)
        .bind(user.tenant_id)
        .bind(&email)
        .bind(&user.name)
        .bind(&user.password_hash)
        .bind(user.role.as_str())
        .bind(user.created_at);
        self.exec_unique(stmt, "user", |v| {
            if v.names("users", "email") {
                email.clone()
            } else {
                user.id.to_string()
            }
        })
        .await?;
        Ok(())
    }

    async fn get_user(&self, id: UserId) -> Result<Option<User>> {
        const SQL: &str = concat!("SELECT ", user_cols!(), " FROM users WHERE id = $1");
        self.opt(Stmt::new(SQL).bind(id), user_from_row).await
    }

    async fn get_user_by_email(&self, email: &str) -> Result<Option<User>> {
        const SQL: &str = concat!("SELECT ", user_cols!(), " FROM users WHERE email = $1");
        let stmt = Stmt::new(SQL).bind(email.to_lowercase());
        self.opt(stmt, user_from_row).await
    }

    async fn update_user(&self, user: &User) -> Result<()> {
        let stmt =
            Stmt::new("UPDATE users SET name = $1, password_hash = $2, role = $3 WHERE id = $4")
                .bind(&user.name)
                .bind(&user.password_hash)
                .bind(user.role.as_str())
                .bind(user.id);
        found(self.exec(stmt).await?, "user", user.id)
    }

    async fn delete_user(&self, tenant: TenantId, id: UserId) -> Result<()> {
        let stmt = Stmt::new("DELETE FROM users WHERE id = $1 AND tenant_id = $2")
            .bind(id)
            .bind(tenant);
        found(self.exec(stmt).await?, "user", id)
    }

    async fn list_users(&self, tenant: TenantId, page: Page) -> Result<Paged<User>> {
        const SQL: &str = concat!(
            "SELECT ",
            user_cols!(),
            " FROM users WHERE tenant_id = $1 ORDER BY created_at, id LIMIT $2 OFFSET $3"
        );
        const COUNT: &str = "SELECT COUNT(*) AS n FROM users WHERE tenant_id = $1";
        self.page_scoped(SQL, COUNT, tenant, page, user_from_row)
            .await
    }

    async fn count_users(&self) -> Result<u64> {
        self.count(Stmt::new("SELECT COUNT(*) AS n FROM users"))
            .await
    }

    async fn put_auth_state(&self, key: &str, value: &str, expires_at: Timestamp) -> Result<()> {
        let stmt = Stmt::new(
            "INSERT INTO auth_state (key, value, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
        )
        .bind(key)
        .bind(value)
        .bind(expires_at);
        self.exec(stmt).await?;
        Ok(())
    }

    async fn get_auth_state(&self, key: &str, now: Timestamp) -> Result<Option<String>> {
        let stmt = Stmt::new("SELECT value FROM auth_state WHERE key = $1 AND expires_at > $2")
            .bind(key)
            .bind(now);
        self.opt(stmt, |r| r.text("value")).await
    }

    async fn purge_auth_state(&self, now: Timestamp) -> Result<u64> {
        self.exec(Stmt::new("DELETE FROM auth_state WHERE expires_at <= $1").bind(now))
            .await
    }

    async fn create_device(&self, device: &Device) -> Result<()> {
        let stmt = Stmt::new(concat!(
            "INSERT INTO devices (",
            device_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
        ))
        .bind(device.id)
        .bind(device.tenant_id)
        .bind(&device.name)
        .bind(&device.device_number)
        .bind(&device.credentials.username)
        .bind(&device.credentials.password_hash)
        .bind(device.profile_id)
        .bind(device.parent_id)
        .bind(&device.sub_device_addr)
        .bind(&device.label)
        .bind(device.enabled)
        .bind(device.online)
        .bind(device.last_seen)
        .bind(device.created_at)
        .bind(device.updated_at)
        .bind(device.credentials.voucher_type.as_str());
        self.exec_unique(stmt, "device", device_conflict(device))
            .await?;
        Ok(())
    }

    async fn get_device(&self, tenant: TenantId, id: DeviceId) -> Result<Option<Device>> {
        const SQL: &str = concat!(
            "SELECT ",
            device_cols!(),
            " FROM devices WHERE id = $1 AND tenant_id = $2"
        );
        self.get_scoped(SQL, id, tenant, device_from_row).await
    }

    async fn get_device_by_id(&self, id: DeviceId) -> Result<Option<Device>> {
        const SQL: &str = concat!("SELECT ", device_cols!(), " FROM devices WHERE id = $1");
        self.opt(Stmt::new(SQL).bind(id), device_from_row).await
    }

    async fn get_device_by_username(&self, username: &str) -> Result<Option<Device>> {
        const SQL: &str = concat!(
            "SELECT ",
            device_cols!(),
            " FROM devices WHERE username = $1"
        );
        self.opt(Stmt::new(SQL).bind(username), device_from_row)
            .await
    }

    async fn get_device_by_number(&self, device_number: &str) -> Result<Option<Device>> {
        const SQL: &str = concat!(
            "SELECT ",
            device_cols!(),
            " FROM devices WHERE device_number = $1"
        );
        self.opt(Stmt::new(SQL).bind(device_number), device_from_row)
            .await
    }

    async fn get_sub_device(&self, parent: DeviceId, addr: &str) -> Result<Option<Device>> {
        const SQL: &str = concat!(
            "SELECT ",
            device_cols!(),
            " FROM devices WHERE parent_id = $1 AND sub_device_addr = $2 \
             ORDER BY created_at, id LIMIT 1"
        );
        let stmt = Stmt::new(SQL).bind(parent).bind(addr);
        self.opt(stmt, device_from_row).await
    }

    async fn list_sub_devices(&self, parent: DeviceId) -> Result<Vec<Device>> {
        const SQL: &str = concat!(
            "SELECT ",
            device_cols!(),
            " FROM devices WHERE parent_id = $1 ORDER BY created_at, id"
        );
        self.all(Stmt::new(SQL).bind(parent), device_from_row).await
    }

    async fn list_devices(&self, tenant: TenantId, filter: &DeviceFilter) -> Result<Paged<Device>> {
        let (limit, offset) = paging(filter.page);
        let pattern = filter.search.as_deref().map(search_pattern::<D>);
        let where_ = device_filter::<D>();
        let select = Stmt::built(format!(
            "SELECT {}{where_} ORDER BY created_at, id LIMIT $4 OFFSET $5",
            device_cols!()
        ))
        .bind(tenant)
        .bind(&pattern)
        .bind(filter.online)
        .bind(limit)
        .bind(offset);
        let items = self.all(select, device_from_row).await?;
        let count = Stmt::built(format!("SELECT COUNT(*) AS n{where_}"))
            .bind(tenant)
            .bind(&pattern)
            .bind(filter.online);
        let total = self.count(count).await?;
        Ok(Paged { items, total })
    }

    async fn update_device(&self, device: &Device) -> Result<()> {
        let stmt = Stmt::new(
            "UPDATE devices SET name = $1, device_number = $2, username = $3, \
             password_hash = $4, profile_id = $5, parent_id = $6, sub_device_addr = $7, \
             label = $8, enabled = $9, updated_at = $10, voucher_type = $11 \
             WHERE id = $12 AND tenant_id = $13",
        )
        .bind(&device.name)
        .bind(&device.device_number)
        .bind(&device.credentials.username)
        .bind(&device.credentials.password_hash)
        .bind(device.profile_id)
        .bind(device.parent_id)
        .bind(&device.sub_device_addr)
        .bind(&device.label)
        .bind(device.enabled)
        .bind(device.updated_at)
        .bind(device.credentials.voucher_type.as_str())
        .bind(device.id)
        .bind(device.tenant_id);
        let n = self
            .exec_unique(stmt, "device", device_conflict(device))
            .await?;
        found(n, "device", device.id)
    }

    async fn delete_device(&self, tenant: TenantId, id: DeviceId) -> Result<()> {
        // The status history goes by ON DELETE CASCADE.
        let mut tx = self.begin(None).await?;
        let stmt = Stmt::new("DELETE FROM devices WHERE id = $1 AND tenant_id = $2")
            .bind(id)
            .bind(tenant);
        found(tx.exec(stmt).await?, "device", id)?;
        for sql in [
            "DELETE FROM attributes WHERE device_id = $1",
            "DELETE FROM commands WHERE device_id = $1",
        ] {
            tx.exec(Stmt::new(sql).bind(id)).await?;
        }
        tx.commit().await
    }

    async fn set_device_online(&self, id: DeviceId, online: bool, at: Timestamp) -> Result<()> {
        let stmt = Stmt::new("UPDATE devices SET online = $1, last_seen = $2 WHERE id = $3")
            .bind(online)
            .bind(at)
            .bind(id);
        found(self.exec(stmt).await?, "device", id)
    }

    async fn touch_devices(&self, seen: &[(DeviceId, Timestamp)]) -> Result<()> {
        if seen.is_empty() {
            return Ok(());
        }
        // One row per device (its newest time): an UPDATE .. FROM matching a row twice
        // applies one of the matches, either one.
        let mut newest: HashMap<DeviceId, Timestamp> = HashMap::with_capacity(seen.len());
        for &(id, at) in seen {
            let t = newest.entry(id).or_insert(at);
            *t = (*t).max(at);
        }
        let mut rows: Vec<(DeviceId, Timestamp)> = newest.into_iter().collect();
        rows.sort_unstable();
        self.exec_batch(rows.chunks(ROWS_PER_STATEMENT).map(touch).collect())
            .await
    }

    async fn append_status(&self, event: &DeviceStatusEvent) -> Result<()> {
        let missing = || Error::not_found("device", event.device_id);
        match status_writes::<D>(event) {
            (only, None) => {
                if self.exec(only).await? == 0 {
                    return Err(missing());
                }
                Ok(())
            }
            (first, Some(then)) => {
                let mut tx = self.begin(None).await?;
                if tx.exec(first).await? == 0 {
                    return Err(missing());
                }
                tx.exec(then).await?;
                tx.commit().await
            }
        }
    }

    async fn append_statuses(&self, events: &[DeviceStatusEvent]) -> Result<usize> {
        let mut recorded = 0;
        match D::KIND {
            // One write transaction for the whole batch: SQLite's cost is the commit,
            // and with one writer there is no lock order to get wrong.
            DialectKind::Sqlite => {
                let mut tx = self.begin(None).await?;
                for event in events {
                    let (first, then) = status_writes::<D>(event);
                    if tx.exec(first).await? == 0 {
                        continue;
                    }
                    if let Some(then) = then {
                        tx.exec(then).await?;
                    }
                    recorded += 1;
                }
                tx.commit().await?;
            }
            // One statement per event, each committed on its own: one transaction
            // would hold every device row of the batch locked until its end, and two
            // batches taking the same devices in another order would deadlock.
            DialectKind::Postgres => {
                for event in events {
                    match self.append_status(event).await {
                        Ok(()) => recorded += 1,
                        Err(Error::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
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
        // The count rides along with the page; only an empty page needs its own.
        let stmt = Stmt::new(
            "SELECT device_id, online, reason, at, COUNT(*) OVER () AS total \
             FROM device_status_history \
             WHERE tenant_id = $1 AND device_id = $2 AND at >= $3 AND at < $4 \
             ORDER BY at DESC, seq DESC LIMIT $5 OFFSET $6",
        )
        .bind(tenant)
        .bind(device)
        .bind(start)
        .bind(end)
        .bind(limit)
        .bind(offset);
        let rows = self
            .all(stmt, |r| Ok((status_from_row(r)?, r.int("total")?)))
            .await?;
        let total = match rows.first() {
            Some(&(_, n)) => n.unsigned_abs(),
            None => {
                let count = Stmt::new(
                    "SELECT COUNT(*) AS n FROM device_status_history \
                     WHERE tenant_id = $1 AND device_id = $2 AND at >= $3 AND at < $4",
                )
                .bind(tenant)
                .bind(device)
                .bind(start)
                .bind(end);
                self.count(count).await?
            }
        };
        Ok(Paged {
            items: rows.into_iter().map(|(event, _)| event).collect(),
            total,
        })
    }

    async fn upsert_attributes(&self, device: DeviceId, attrs: &[KeyValue]) -> Result<()> {
        if attrs.is_empty() {
            return Ok(());
        }
        let rows = newest_per_key(attrs);
        let stmts = rows
            .chunks(ROWS_PER_STATEMENT)
            .map(|chunk| attribute_upsert(device, chunk))
            .collect();
        self.exec_batch(stmts).await
    }

    async fn get_attributes(
        &self,
        device: DeviceId,
        keys: Option<&[String]>,
    ) -> Result<Vec<KeyValue>> {
        let Some(keys) = keys else {
            let stmt = Stmt::new(concat!(attribute_select!(), " ORDER BY key")).bind(device);
            return self.all(stmt, attribute_from_row::<D>).await;
        };
        // Sorted without repeats, so the chunks' results follow each other in key order:
        // `key` sorts by bytes on both databases (SQLite BINARY, PostgreSQL "C"), as
        // Rust strings do.
        let keys: Vec<&str> = keys
            .iter()
            .map(String::as_str)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut out = Vec::new();
        for chunk in keys.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                concat!(attribute_select!(), " AND key IN ({}) ORDER BY key"),
                placeholders(2, chunk.len())
            );
            let mut stmt = Stmt::built(sql).bind(device);
            for key in chunk {
                stmt = stmt.bind(*key);
            }
            out.extend(self.all(stmt, attribute_from_row::<D>).await?);
        }
        Ok(out)
    }

    async fn create_command(&self, command: &CommandLog) -> Result<()> {
        let published = command.published.as_ref();
        let stmt = Stmt::new(concat!(
            "INSERT INTO commands (",
            command_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        ))
        .bind(command.id)
        .bind(command.tenant_id)
        .bind(command.device_id)
        .bind(&command.message_id)
        .bind(command.kind.as_str())
        .bind(Arg::Json(Some(command.payload.clone())))
        .bind(command.status.as_str())
        .bind(Arg::Json(command.response.clone()))
        .bind(command.created_at)
        .bind(command.updated_at)
        .bind(command.expires_at)
        .bind(published.map(|p| p.topic.as_str()))
        .bind(Arg::Json(published.map(|p| p.payload.clone())));
        self.exec_unique(stmt, "command", |_| command.id.to_string())
            .await?;
        Ok(())
    }

    async fn update_command(&self, command: &CommandLog) -> Result<()> {
        let published = command.published.as_ref();
        let stmt = Stmt::new(
            "UPDATE commands SET status = $1, response = $2, updated_at = $3, \
             published_topic = $4, published_payload = $5 WHERE id = $6",
        )
        .bind(command.status.as_str())
        .bind(Arg::Json(command.response.clone()))
        .bind(command.updated_at)
        .bind(published.map(|p| p.topic.as_str()))
        .bind(Arg::Json(published.map(|p| p.payload.clone())))
        .bind(command.id);
        found(self.exec(stmt).await?, "command", command.id)
    }

    async fn get_command_by_message_id(
        &self,
        device: DeviceId,
        message_id: &str,
    ) -> Result<Option<CommandLog>> {
        const SQL: &str = concat!(
            "SELECT ",
            command_cols!(),
            " FROM commands WHERE device_id = $1 AND message_id = $2 \
             ORDER BY created_at DESC, id DESC LIMIT 1"
        );
        let stmt = Stmt::new(SQL).bind(device).bind(message_id);
        self.opt(stmt, command_from_row).await
    }

    async fn get_command_by_published_topic(
        &self,
        tenant: TenantId,
        topic: &str,
    ) -> Result<Option<CommandLog>> {
        const SQL: &str = concat!(
            "SELECT ",
            command_cols!(),
            " FROM commands WHERE published_topic = $1 AND tenant_id = $2 \
             ORDER BY created_at DESC, id DESC LIMIT 1"
        );
        let stmt = Stmt::new(SQL).bind(topic).bind(tenant);
        self.opt(stmt, command_from_row).await
    }

    async fn list_commands(
        &self,
        tenant: TenantId,
        device: DeviceId,
        page: Page,
    ) -> Result<Paged<CommandLog>> {
        const SQL: &str = concat!(
            "SELECT ",
            command_cols!(),
            " FROM commands WHERE tenant_id = $1 AND device_id = $2 \
             ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4"
        );
        let (limit, offset) = paging(page);
        let stmt = Stmt::new(SQL)
            .bind(tenant)
            .bind(device)
            .bind(limit)
            .bind(offset);
        let items = self.all(stmt, command_from_row).await?;
        let count =
            Stmt::new("SELECT COUNT(*) AS n FROM commands WHERE tenant_id = $1 AND device_id = $2")
                .bind(tenant)
                .bind(device);
        let total = self.count(count).await?;
        Ok(Paged { items, total })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn device_conflicts_name_the_value_on_both_dialects() {
        let (d, _) = Device::new(TenantId::new(), "d".into(), Some("num".into()));
        let pick = |kind, detail: &str| device_conflict(&d)(&UniqueViolation::new(kind, detail));
        let pg = DialectKind::Postgres;
        assert_eq!(pick(pg, "devices_device_number_key"), "num");
        assert_eq!(pick(pg, "devices_username_key"), d.credentials.username);
        assert_eq!(pick(pg, "devices_pkey"), d.id.to_string());
        let lite = DialectKind::Sqlite;
        let failed = "UNIQUE constraint failed: devices.";
        assert_eq!(pick(lite, &format!("{failed}device_number")), "num");
        assert_eq!(
            pick(lite, &format!("{failed}username")),
            d.credentials.username
        );
        assert_eq!(pick(lite, &format!("{failed}id")), d.id.to_string());
    }

    #[test]
    fn placeholders_number_rows_in_order() {
        assert_eq!(placeholders(2, 3), "$2, $3, $4");
        assert_eq!(value_rows(2, 3), "($1, $2, $3), ($4, $5, $6)");
    }

    /// Batches larger than one statement, repeated keys and devices, NaN.
    async fn batches_span_statements(store: &dyn MetadataStore) {
        let tenant = TenantId::new();
        let (d, _) = Device::new(tenant, "batch".into(), None);
        store.create_device(&d).await.expect("create_device");
        let n = ROWS_PER_STATEMENT * 2 + 7;
        let kv = |i: usize, ts, value| KeyValue {
            key: format!("k{i:05}"),
            ts,
            value,
        };
        let mut attrs: Vec<KeyValue> = (0..n)
            .map(|i| kv(i, 10, Value::Integer(i as i64)))
            .collect();
        // Repeated keys: an older value loses, a newer one wins.
        attrs.push(kv(3, 9, Value::Integer(-1)));
        attrs.push(kv(4, 11, Value::Float(f64::NAN)));
        store.upsert_attributes(d.id, &attrs).await.expect("upsert");

        let all = store.get_attributes(d.id, None).await.expect("get");
        assert_eq!(all.len(), n);
        assert!(all.windows(2).all(|w| w[0].key < w[1].key));
        assert_eq!(all[3].value, Value::Integer(3));
        assert!(matches!(all[4].value, Value::Float(f) if f.is_nan()) && all[4].ts == 11);

        let mut keys: Vec<String> = (0..n).rev().map(|i| format!("k{i:05}")).collect();
        keys.push("k00001".into());
        keys.push("missing".into());
        let some = store.get_attributes(d.id, Some(&keys)).await.expect("get");
        assert_eq!(some.len(), n);
        assert!(some.iter().zip(&all).all(|(a, b)| a.key == b.key));

        // Unknown devices are skipped; a device listed twice keeps its newest time.
        let mut seen: Vec<(DeviceId, Timestamp)> = (0..n).map(|_| (DeviceId::new(), 5)).collect();
        seen.extend([(d.id, 70), (d.id, 90), (d.id, 80)]);
        store.touch_devices(&seen).await.expect("touch");
        let got = store
            .get_device_by_id(d.id)
            .await
            .expect("get")
            .expect("found");
        assert_eq!(got.last_seen, Some(90));
    }

    #[cfg(feature = "sqlite")]
    mod sqlite {
        use super::*;
        use crate::sqlite::SqliteMetadataStore;

        #[tokio::test]
        async fn batches_span_statements() {
            let store = SqliteMetadataStore::in_memory().await.expect("open");
            super::batches_span_statements(&store).await;
        }

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

    #[cfg(feature = "postgres")]
    mod postgres {
        use crate::postgres::PostgresMetadataStore;

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn batches_span_statements() {
            let Some(url) = tp_core::testing::service_url("TP_TEST_POSTGRES_URL") else {
                return;
            };
            let schema = format!("tp_test_{}", uuid::Uuid::new_v4().simple());
            let sep = if url.contains('?') { '&' } else { '?' };
            let store = PostgresMetadataStore::connect(&format!("{url}{sep}schema={schema}"))
                .await
                .expect("connect");
            super::batches_span_statements(&store).await;
            let drop = format!("DROP SCHEMA {schema} CASCADE");
            sqlx::query(sqlx::AssertSqlSafe(drop))
                .execute(store.pool())
                .await
                .expect("drop schema");
        }
    }
}
