//! [`AccessStore`] for [`PostgresMetadataStore`]: the same schema and pool as the
//! metadata store (tables of migration `0002_access`).
//!
//! Every tenant-scoped statement filters by `tenant_id` in SQL. Composite foreign keys
//! on `(tenant_id, ..)` let the database refuse a role or parent group of another
//! tenant and refuse deleting a role in use or a group with children, so concurrent
//! writers cannot break those rules between a check and a change. Moves in a tenant's
//! group tree are serialised by a transaction-scoped advisory lock per tenant, so two
//! concurrent moves cannot build a cycle. Deleting a profile checks for devices using
//! it in the same statement; `Device::profile_id` carries no foreign key (the metadata
//! store accepts any id), so a device created concurrently with that delete may keep
//! a dangling profile id.

use async_trait::async_trait;
use sqlx::Row;
use sqlx::error::ErrorKind;
use sqlx::postgres::PgRow;
use tp_core::{
    AccessStore, ApiKey, ApiKeyId, AuditEntry, AuditId, CustomRole, Device, DeviceGroup, DeviceId,
    DeviceProfile, Error, GroupId, Page, Paged, ProfileId, Result, RoleId, Tenant, TenantId,
    UserId,
};
use uuid::Uuid;

use super::PostgresMetadataStore;
use super::error::{self, PgError, db};
use super::meta::{
    RowResult, decode_all, decode_opt, device_cols, device_from_row, json_col, paging, parse_col,
};
use crate::access_common::{
    KEY_HASH_TAKEN, check_api_key, device_type_str, group_cycle, group_has_children,
    parse_device_type, profile_in_use, role_in_use,
};

fn role_from_row(row: &PgRow) -> RowResult<CustomRole> {
    Ok(CustomRole {
        id: RoleId(row.try_get("id")?),
        tenant_id: TenantId(row.try_get("tenant_id")?),
        name: row.try_get("name")?,
        permissions: row.try_get("permissions")?,
        created_at: row.try_get("created_at")?,
    })
}

fn api_key_from_row(row: &PgRow) -> RowResult<ApiKey> {
    let role: String = row.try_get("role")?;
    Ok(ApiKey {
        id: ApiKeyId(row.try_get("id")?),
        tenant_id: TenantId(row.try_get("tenant_id")?),
        name: row.try_get("name")?,
        key_hash: row.try_get("key_hash")?,
        role: role.parse().map_err(|e| PgError::decode("role", e))?,
        role_id: row.try_get::<Option<Uuid>, _>("role_id")?.map(RoleId),
        created_by: UserId(row.try_get("created_by")?),
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
    })
}

fn group_from_row(row: &PgRow) -> RowResult<DeviceGroup> {
    Ok(DeviceGroup {
        id: GroupId(row.try_get("id")?),
        tenant_id: TenantId(row.try_get("tenant_id")?),
        parent_id: row.try_get::<Option<Uuid>, _>("parent_id")?.map(GroupId),
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        created_at: row.try_get("created_at")?,
    })
}

fn secs_col(row: &PgRow, col: &'static str) -> RowResult<Option<u32>> {
    let v: Option<i64> = row.try_get(col)?;
    v.map(|v| u32::try_from(v).map_err(|e| PgError::decode(col, e)))
        .transpose()
}

fn profile_from_row(row: &PgRow) -> RowResult<DeviceProfile> {
    let device_type: String = row.try_get("device_type")?;
    Ok(DeviceProfile {
        id: ProfileId(row.try_get("id")?),
        tenant_id: TenantId(row.try_get("tenant_id")?),
        name: row.try_get("name")?,
        device_type: parse_device_type(&device_type)
            .map_err(|e| PgError::decode("device_type", e))?,
        heartbeat_secs: secs_col(row, "heartbeat_secs")?,
        online_timeout_secs: secs_col(row, "online_timeout_secs")?,
        auto_register: row.try_get("auto_register")?,
        provision_secret_hash: row.try_get("provision_secret_hash")?,
        voucher_type: parse_col(row, "voucher_type")?,
        created_at: row.try_get("created_at")?,
    })
}

fn audit_from_row(row: &PgRow) -> RowResult<AuditEntry> {
    Ok(AuditEntry {
        id: AuditId(row.try_get("id")?),
        tenant_id: TenantId(row.try_get("tenant_id")?),
        user_id: row.try_get::<Option<Uuid>, _>("user_id")?.map(UserId),
        actor: row.try_get("actor")?,
        action: row.try_get("action")?,
        resource_type: row.try_get("resource_type")?,
        resource_id: row.try_get("resource_id")?,
        detail: json_col(row, "detail")?.unwrap_or(serde_json::Value::Null),
        at: row.try_get("at")?,
    })
}

macro_rules! role_cols {
    () => {
        "id, tenant_id, name, permissions, created_at"
    };
}

macro_rules! api_key_cols {
    () => {
        "id, tenant_id, name, key_hash, role, role_id, created_by, created_at, expires_at"
    };
}

macro_rules! group_cols {
    () => {
        "id, tenant_id, parent_id, name, description, created_at"
    };
}

macro_rules! profile_cols {
    () => {
        "id, tenant_id, name, device_type, heartbeat_secs, online_timeout_secs, auto_register, \
         provision_secret_hash, created_at, voucher_type"
    };
}

macro_rules! audit_select {
    () => {
        "SELECT id, tenant_id, user_id, actor, action, resource_type, resource_id, \
         detail::text AS detail, at FROM audit_log"
    };
}

/// How a failed write maps: a unique violation to `AlreadyExists` for `entity` with
/// the value `unique` picks from the constraint name, a foreign-key violation to what
/// `foreign` makes of the constraint name, anything else to a backend error.
fn write_error(
    e: sqlx::Error,
    entity: &'static str,
    unique: impl FnOnce(&str) -> String,
    foreign: impl FnOnce(&str) -> Error,
) -> Error {
    if let sqlx::Error::Database(d) = &e {
        let constraint = d.constraint().unwrap_or_default();
        match d.kind() {
            ErrorKind::UniqueViolation => {
                return Error::AlreadyExists {
                    entity,
                    id: unique(constraint),
                };
            }
            ErrorKind::ForeignKeyViolation => return foreign(constraint),
            _ => {}
        }
    }
    db(e)
}

/// For writes that cannot violate a foreign key.
fn no_foreign(constraint: &str) -> Error {
    Error::backend(
        error::BACKEND,
        format!("unexpected foreign key violation of {constraint}"),
    )
}

fn role_unique(role: &CustomRole) -> impl FnOnce(&str) -> String + '_ {
    move |constraint| match constraint {
        "roles_tenant_name_key" => role.name.clone(),
        _ => role.id.to_string(),
    }
}

fn group_unique(group: &DeviceGroup) -> impl FnOnce(&str) -> String + '_ {
    move |constraint| match constraint {
        "device_groups_pkey" | "device_groups_tenant_id_key" => group.id.to_string(),
        _ => group.name.clone(),
    }
}

/// A parent group that is not in the tenant.
fn missing_parent(group: &DeviceGroup) -> impl FnOnce(&str) -> Error + '_ {
    move |constraint| match (constraint, group.parent_id) {
        ("device_groups_parent_fkey", Some(parent)) => Error::not_found("group", parent),
        _ => no_foreign(constraint),
    }
}

fn profile_unique(profile: &DeviceProfile) -> impl FnOnce(&str) -> String + '_ {
    move |constraint| match constraint {
        "device_profiles_tenant_name_key" => profile.name.clone(),
        _ => profile.id.to_string(),
    }
}

/// Hashes a tenant id for the advisory lock that serialises its group-tree moves.
fn tenant_lock_key(tenant: TenantId) -> i32 {
    let b = tenant.0.as_bytes();
    let mut key = 0u32;
    for chunk in b.chunks(4) {
        key ^= u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    i32::from_le_bytes(key.to_le_bytes())
}

impl PostgresMetadataStore {
    async fn group_exists(&self, tenant: TenantId, group: GroupId) -> Result<bool> {
        let row = sqlx::query("SELECT 1 FROM device_groups WHERE id = $1 AND tenant_id = $2")
            .bind(group.0)
            .bind(tenant.0)
            .fetch_optional(self.pool())
            .await
            .map_err(db)?;
        Ok(row.is_some())
    }
}

#[async_trait]
impl AccessStore for PostgresMetadataStore {
    fn backend(&self) -> &'static str {
        error::BACKEND
    }

    async fn update_tenant(&self, tenant: &Tenant) -> Result<()> {
        let done = sqlx::query("UPDATE tenants SET name = $1 WHERE id = $2")
            .bind(&tenant.name)
            .bind(tenant.id.0)
            .execute(self.pool())
            .await
            .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("tenant", tenant.id));
        }
        Ok(())
    }

    async fn delete_tenant(&self, id: TenantId) -> Result<()> {
        let mut tx = self.pool().begin().await.map_err(db)?;
        let done = sqlx::query("DELETE FROM tenants WHERE id = $1")
            .bind(id.0)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("tenant", id));
        }
        // Children before parents; memberships go with their groups and devices. All
        // of a tenant's groups go in one statement, so the parent key holds throughout.
        for sql in [
            "DELETE FROM attributes WHERE device_id IN (SELECT id FROM devices WHERE tenant_id = $1)",
            "DELETE FROM commands WHERE device_id IN (SELECT id FROM devices WHERE tenant_id = $1)",
            "DELETE FROM commands WHERE tenant_id = $1",
            "DELETE FROM device_groups WHERE tenant_id = $1",
            "DELETE FROM devices WHERE tenant_id = $1",
            "DELETE FROM api_keys WHERE tenant_id = $1",
            "DELETE FROM users WHERE tenant_id = $1",
            "DELETE FROM roles WHERE tenant_id = $1",
            "DELETE FROM device_profiles WHERE tenant_id = $1",
            "DELETE FROM audit_log WHERE tenant_id = $1",
            "DELETE FROM rules WHERE tenant_id = $1",
            "DELETE FROM scenes WHERE tenant_id = $1",
            "DELETE FROM alarms WHERE tenant_id = $1",
            "DELETE FROM notification_channels WHERE tenant_id = $1",
            "DELETE FROM notifications WHERE tenant_id = $1",
        ] {
            sqlx::query(sql)
                .bind(id.0)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        tx.commit().await.map_err(db)
    }

    async fn get_user_role(&self, tenant: TenantId, user: UserId) -> Result<Option<RoleId>> {
        let row = sqlx::query("SELECT role_id FROM users WHERE id = $1 AND tenant_id = $2")
            .bind(user.0)
            .bind(tenant.0)
            .fetch_optional(self.pool())
            .await
            .map_err(db)?;
        let Some(row) = row else {
            return Err(Error::not_found("user", user));
        };
        let role: Option<Uuid> = row.try_get("role_id").map_err(db)?;
        Ok(role.map(RoleId))
    }

    async fn set_user_role(
        &self,
        tenant: TenantId,
        user: UserId,
        role: Option<RoleId>,
    ) -> Result<()> {
        // The foreign key (tenant_id, role_id) refuses a role of another tenant.
        let done = sqlx::query("UPDATE users SET role_id = $1 WHERE id = $2 AND tenant_id = $3")
            .bind(role.map(|r| r.0))
            .bind(user.0)
            .bind(tenant.0)
            .execute(self.pool())
            .await
            .map_err(|e| {
                write_error(
                    e,
                    "user",
                    |_| user.to_string(),
                    |c| match (c, role) {
                        ("users_role_fkey", Some(role)) => Error::not_found("role", role),
                        _ => no_foreign(c),
                    },
                )
            })?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("user", user));
        }
        Ok(())
    }

    async fn create_role(&self, role: &CustomRole) -> Result<()> {
        sqlx::query(concat!(
            "INSERT INTO roles (",
            role_cols!(),
            ") VALUES ($1, $2, $3, $4, $5)"
        ))
        .bind(role.id.0)
        .bind(role.tenant_id.0)
        .bind(&role.name)
        .bind(&role.permissions)
        .bind(role.created_at)
        .execute(self.pool())
        .await
        .map_err(|e| write_error(e, "role", role_unique(role), no_foreign))?;
        Ok(())
    }

    async fn get_role(&self, tenant: TenantId, id: RoleId) -> Result<Option<CustomRole>> {
        self.old_get_scoped(
            concat!(
                "SELECT ",
                role_cols!(),
                " FROM roles WHERE id = $1 AND tenant_id = $2"
            ),
            id.0,
            tenant,
            role_from_row,
        )
        .await
    }

    async fn list_roles(&self, tenant: TenantId, page: Page) -> Result<Paged<CustomRole>> {
        self.old_page_scoped(
            concat!(
                "SELECT ",
                role_cols!(),
                " FROM roles WHERE tenant_id = $1 ORDER BY name, id LIMIT $2 OFFSET $3"
            ),
            "SELECT COUNT(*) FROM roles WHERE tenant_id = $1",
            tenant,
            page,
            role_from_row,
        )
        .await
    }

    async fn update_role(&self, role: &CustomRole) -> Result<()> {
        let done = sqlx::query(
            "UPDATE roles SET name = $1, permissions = $2 WHERE id = $3 AND tenant_id = $4",
        )
        .bind(&role.name)
        .bind(&role.permissions)
        .bind(role.id.0)
        .bind(role.tenant_id.0)
        .execute(self.pool())
        .await
        .map_err(|e| write_error(e, "role", role_unique(role), no_foreign))?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("role", role.id));
        }
        Ok(())
    }

    async fn delete_role(&self, tenant: TenantId, id: RoleId) -> Result<()> {
        // The foreign keys of users and API keys refuse deleting a role in use.
        let result = sqlx::query("DELETE FROM roles WHERE id = $1 AND tenant_id = $2")
            .bind(id.0)
            .bind(tenant.0)
            .execute(self.pool())
            .await;
        let done = match result {
            Ok(done) => done,
            Err(sqlx::Error::Database(d)) if d.kind() == ErrorKind::ForeignKeyViolation => {
                let (users, keys): (i64, i64) = sqlx::query_as(
                    "SELECT (SELECT COUNT(*) FROM users WHERE role_id = $1), \
                            (SELECT COUNT(*) FROM api_keys WHERE role_id = $1)",
                )
                .bind(id.0)
                .fetch_one(self.pool())
                .await
                .map_err(db)?;
                return Err(role_in_use(id, users, keys));
            }
            Err(e) => return Err(db(e)),
        };
        if done.rows_affected() == 0 {
            return Err(Error::not_found("role", id));
        }
        Ok(())
    }

    async fn create_api_key(&self, key: &ApiKey) -> Result<()> {
        check_api_key(key)?;
        sqlx::query(concat!(
            "INSERT INTO api_keys (",
            api_key_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ))
        .bind(key.id.0)
        .bind(key.tenant_id.0)
        .bind(&key.name)
        .bind(&key.key_hash)
        .bind(key.role.as_str())
        .bind(key.role_id.map(|r| r.0))
        .bind(key.created_by.0)
        .bind(key.created_at)
        .bind(key.expires_at)
        .execute(self.pool())
        .await
        .map_err(|e| {
            write_error(
                e,
                "api_key",
                |c| match c {
                    "api_keys_key_hash_key" => KEY_HASH_TAKEN.to_owned(),
                    _ => key.id.to_string(),
                },
                |c| match (c, key.role_id) {
                    ("api_keys_role_fkey", Some(role)) => Error::not_found("role", role),
                    _ => no_foreign(c),
                },
            )
        })?;
        Ok(())
    }

    async fn get_api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKey>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            api_key_cols!(),
            " FROM api_keys WHERE key_hash = $1"
        ))
        .bind(key_hash)
        .fetch_optional(self.pool())
        .await
        .map_err(db)?;
        decode_opt(row, api_key_from_row)
    }

    async fn list_api_keys(&self, tenant: TenantId, page: Page) -> Result<Paged<ApiKey>> {
        self.old_page_scoped(
            concat!(
                "SELECT ",
                api_key_cols!(),
                " FROM api_keys WHERE tenant_id = $1 \
              ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3"
            ),
            "SELECT COUNT(*) FROM api_keys WHERE tenant_id = $1",
            tenant,
            page,
            api_key_from_row,
        )
        .await
    }

    async fn delete_api_key(&self, tenant: TenantId, id: ApiKeyId) -> Result<()> {
        let done = sqlx::query("DELETE FROM api_keys WHERE id = $1 AND tenant_id = $2")
            .bind(id.0)
            .bind(tenant.0)
            .execute(self.pool())
            .await
            .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("api_key", id));
        }
        Ok(())
    }

    async fn create_group(&self, group: &DeviceGroup) -> Result<()> {
        // The foreign key (tenant_id, parent_id) refuses a parent of another tenant.
        sqlx::query(concat!(
            "INSERT INTO device_groups (",
            group_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6)"
        ))
        .bind(group.id.0)
        .bind(group.tenant_id.0)
        .bind(group.parent_id.map(|p| p.0))
        .bind(&group.name)
        .bind(&group.description)
        .bind(group.created_at)
        .execute(self.pool())
        .await
        .map_err(|e| write_error(e, "group", group_unique(group), missing_parent(group)))?;
        Ok(())
    }

    async fn get_group(&self, tenant: TenantId, id: GroupId) -> Result<Option<DeviceGroup>> {
        self.old_get_scoped(
            concat!(
                "SELECT ",
                group_cols!(),
                " FROM device_groups WHERE id = $1 AND tenant_id = $2"
            ),
            id.0,
            tenant,
            group_from_row,
        )
        .await
    }

    async fn list_groups(&self, tenant: TenantId) -> Result<Vec<DeviceGroup>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            group_cols!(),
            " FROM device_groups WHERE tenant_id = $1 ORDER BY name, id"
        ))
        .bind(tenant.0)
        .fetch_all(self.pool())
        .await
        .map_err(db)?;
        decode_all(&rows, group_from_row)
    }

    async fn update_group(&self, group: &DeviceGroup) -> Result<()> {
        let mut tx = self.pool().begin().await.map_err(db)?;
        // One tree change per tenant at a time: the cycle check below must see every
        // move committed before this one.
        sqlx::query(
            "SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.device_groups'), $1)",
        )
        .bind(tenant_lock_key(group.tenant_id))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        let found = sqlx::query("SELECT 1 FROM device_groups WHERE id = $1 AND tenant_id = $2")
            .bind(group.id.0)
            .bind(group.tenant_id.0)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        if found.is_none() {
            return Err(Error::not_found("group", group.id));
        }
        if let Some(parent) = group.parent_id {
            if parent == group.id {
                return Err(group_cycle(group.id));
            }
            // Walk up from the new parent: meeting the group means a cycle. UNION (not
            // UNION ALL) ends the walk even on a corrupt, cyclic tree. A parent outside
            // the tenant is left to the foreign key.
            let cycle: bool = sqlx::query_scalar(
                "WITH RECURSIVE up(id) AS ( \
                   SELECT $1::uuid \
                   UNION \
                   SELECT g.parent_id FROM device_groups g JOIN up ON g.id = up.id \
                   WHERE g.tenant_id = $2 AND g.parent_id IS NOT NULL) \
                 SELECT EXISTS (SELECT 1 FROM up WHERE id = $3)",
            )
            .bind(parent.0)
            .bind(group.tenant_id.0)
            .bind(group.id.0)
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
            if cycle {
                return Err(group_cycle(group.id));
            }
        }
        sqlx::query(
            "UPDATE device_groups SET parent_id = $1, name = $2, description = $3 \
             WHERE id = $4 AND tenant_id = $5",
        )
        .bind(group.parent_id.map(|p| p.0))
        .bind(&group.name)
        .bind(&group.description)
        .bind(group.id.0)
        .bind(group.tenant_id.0)
        .execute(&mut *tx)
        .await
        .map_err(|e| write_error(e, "group", group_unique(group), missing_parent(group)))?;
        tx.commit().await.map_err(db)
    }

    async fn delete_group(&self, tenant: TenantId, id: GroupId) -> Result<()> {
        // The parent key refuses deleting a group with children; memberships cascade.
        let result = sqlx::query("DELETE FROM device_groups WHERE id = $1 AND tenant_id = $2")
            .bind(id.0)
            .bind(tenant.0)
            .execute(self.pool())
            .await;
        let done = match result {
            Ok(done) => done,
            Err(sqlx::Error::Database(d)) if d.kind() == ErrorKind::ForeignKeyViolation => {
                let children: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM device_groups WHERE parent_id = $1")
                        .bind(id.0)
                        .fetch_one(self.pool())
                        .await
                        .map_err(db)?;
                return Err(group_has_children(id, children));
            }
            Err(e) => return Err(db(e)),
        };
        if done.rows_affected() == 0 {
            return Err(Error::not_found("group", id));
        }
        Ok(())
    }

    async fn add_group_device(
        &self,
        tenant: TenantId,
        group: GroupId,
        device: DeviceId,
    ) -> Result<()> {
        // Inserts only when both are the tenant's; a concurrent delete of either trips
        // the foreign keys.
        let done = sqlx::query(
            "INSERT INTO group_devices (group_id, device_id) \
             SELECT g.id, d.id FROM device_groups g, devices d \
             WHERE g.id = $1 AND g.tenant_id = $3 AND d.id = $2 AND d.tenant_id = $3 \
             ON CONFLICT (group_id, device_id) DO NOTHING",
        )
        .bind(group.0)
        .bind(device.0)
        .bind(tenant.0)
        .execute(self.pool())
        .await
        .map_err(|e| {
            write_error(
                e,
                "group",
                |_| group.to_string(),
                |c| match c {
                    "group_devices_device_fkey" => Error::not_found("device", device),
                    _ => Error::not_found("group", group),
                },
            )
        })?;
        if done.rows_affected() > 0 {
            return Ok(());
        }
        // Nothing inserted: already a member, or one of them is not the tenant's.
        if !self.group_exists(tenant, group).await? {
            return Err(Error::not_found("group", group));
        }
        let device_found = sqlx::query("SELECT 1 FROM devices WHERE id = $1 AND tenant_id = $2")
            .bind(device.0)
            .bind(tenant.0)
            .fetch_optional(self.pool())
            .await
            .map_err(db)?;
        if device_found.is_none() {
            return Err(Error::not_found("device", device));
        }
        Ok(())
    }

    async fn remove_group_device(
        &self,
        tenant: TenantId,
        group: GroupId,
        device: DeviceId,
    ) -> Result<bool> {
        let done = sqlx::query(
            "DELETE FROM group_devices WHERE group_id = $1 AND device_id = $2 \
             AND EXISTS (SELECT 1 FROM device_groups WHERE id = $1 AND tenant_id = $3)",
        )
        .bind(group.0)
        .bind(device.0)
        .bind(tenant.0)
        .execute(self.pool())
        .await
        .map_err(db)?;
        if done.rows_affected() > 0 {
            return Ok(true);
        }
        if !self.group_exists(tenant, group).await? {
            return Err(Error::not_found("group", group));
        }
        Ok(false)
    }

    async fn list_group_devices(
        &self,
        tenant: TenantId,
        group: GroupId,
        page: Page,
    ) -> Result<Paged<Device>> {
        if !self.group_exists(tenant, group).await? {
            return Err(Error::not_found("group", group));
        }
        let (limit, offset) = paging(page);
        let rows = sqlx::query(concat!(
            "SELECT ",
            device_cols!(),
            " FROM devices WHERE tenant_id = $1 \
              AND id IN (SELECT device_id FROM group_devices WHERE group_id = $2) \
              ORDER BY created_at, id LIMIT $3 OFFSET $4"
        ))
        .bind(tenant.0)
        .bind(group.0)
        .bind(limit)
        .bind(offset)
        .fetch_all(self.pool())
        .await
        .map_err(db)?;
        let total: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM devices WHERE tenant_id = $1 \
             AND id IN (SELECT device_id FROM group_devices WHERE group_id = $2)",
        )
        .bind(tenant.0)
        .bind(group.0)
        .fetch_one(self.pool())
        .await
        .map_err(db)?;
        Ok(Paged {
            items: decode_all(&rows, device_from_row)?,
            total: total.unsigned_abs(),
        })
    }

    async fn create_profile(&self, profile: &DeviceProfile) -> Result<()> {
        sqlx::query(concat!(
            "INSERT INTO device_profiles (",
            profile_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .bind(profile.id.0)
        .bind(profile.tenant_id.0)
        .bind(&profile.name)
        .bind(device_type_str(profile.device_type))
        .bind(profile.heartbeat_secs.map(i64::from))
        .bind(profile.online_timeout_secs.map(i64::from))
        .bind(profile.auto_register)
        .bind(&profile.provision_secret_hash)
        .bind(profile.created_at)
        .bind(profile.voucher_type.as_str())
        .execute(self.pool())
        .await
        .map_err(|e| write_error(e, "profile", profile_unique(profile), no_foreign))?;
        Ok(())
    }

    async fn get_profile(&self, tenant: TenantId, id: ProfileId) -> Result<Option<DeviceProfile>> {
        self.old_get_scoped(
            concat!(
                "SELECT ",
                profile_cols!(),
                " FROM device_profiles WHERE id = $1 AND tenant_id = $2"
            ),
            id.0,
            tenant,
            profile_from_row,
        )
        .await
    }

    async fn get_profile_by_provision_secret(&self, hash: &str) -> Result<Option<DeviceProfile>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            profile_cols!(),
            " FROM device_profiles WHERE provision_secret_hash = $1 ORDER BY created_at, id LIMIT 1"
        ))
        .bind(hash)
        .fetch_optional(self.pool())
        .await
        .map_err(db)?;
        decode_opt(row, profile_from_row)
    }

    async fn list_profiles(&self, tenant: TenantId, page: Page) -> Result<Paged<DeviceProfile>> {
        self.old_page_scoped(
            concat!(
                "SELECT ",
                profile_cols!(),
                " FROM device_profiles WHERE tenant_id = $1 ORDER BY name, id LIMIT $2 OFFSET $3"
            ),
            "SELECT COUNT(*) FROM device_profiles WHERE tenant_id = $1",
            tenant,
            page,
            profile_from_row,
        )
        .await
    }

    async fn update_profile(&self, profile: &DeviceProfile) -> Result<()> {
        let done = sqlx::query(
            "UPDATE device_profiles SET name = $1, device_type = $2, heartbeat_secs = $3, \
             online_timeout_secs = $4, auto_register = $5, provision_secret_hash = $6, \
             voucher_type = $9 WHERE id = $7 AND tenant_id = $8",
        )
        .bind(&profile.name)
        .bind(device_type_str(profile.device_type))
        .bind(profile.heartbeat_secs.map(i64::from))
        .bind(profile.online_timeout_secs.map(i64::from))
        .bind(profile.auto_register)
        .bind(&profile.provision_secret_hash)
        .bind(profile.id.0)
        .bind(profile.tenant_id.0)
        .bind(profile.voucher_type.as_str())
        .execute(self.pool())
        .await
        .map_err(|e| write_error(e, "profile", profile_unique(profile), no_foreign))?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("profile", profile.id));
        }
        Ok(())
    }

    async fn delete_profile(&self, tenant: TenantId, id: ProfileId) -> Result<()> {
        let done = sqlx::query(
            "DELETE FROM device_profiles WHERE id = $1 AND tenant_id = $2 \
             AND NOT EXISTS (SELECT 1 FROM devices WHERE profile_id = $1 AND tenant_id = $2)",
        )
        .bind(id.0)
        .bind(tenant.0)
        .execute(self.pool())
        .await
        .map_err(db)?;
        if done.rows_affected() > 0 {
            return Ok(());
        }
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM devices WHERE profile_id = $1 AND tenant_id = $2) \
             AS devices FROM device_profiles WHERE id = $1 AND tenant_id = $2",
        )
        .bind(id.0)
        .bind(tenant.0)
        .fetch_optional(self.pool())
        .await
        .map_err(db)?;
        match row {
            None => Err(Error::not_found("profile", id)),
            Some(row) => {
                let devices: i64 = row.try_get("devices").map_err(db)?;
                Err(profile_in_use(id, devices))
            }
        }
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_log (id, tenant_id, user_id, actor, action, resource_type, \
             resource_id, detail, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9)",
        )
        .bind(entry.id.0)
        .bind(entry.tenant_id.0)
        .bind(entry.user_id.map(|u| u.0))
        .bind(&entry.actor)
        .bind(&entry.action)
        .bind(&entry.resource_type)
        .bind(&entry.resource_id)
        .bind(entry.detail.to_string())
        .bind(entry.at)
        .execute(self.pool())
        .await
        .map_err(|e| write_error(e, "audit", |_| entry.id.to_string(), no_foreign))?;
        Ok(())
    }

    async fn list_audit(&self, tenant: TenantId, page: Page) -> Result<Paged<AuditEntry>> {
        self.old_page_scoped(
            concat!(
                audit_select!(),
                " WHERE tenant_id = $1 ORDER BY at DESC, seq DESC LIMIT $2 OFFSET $3"
            ),
            "SELECT COUNT(*) FROM audit_log WHERE tenant_id = $1",
            tenant,
            page,
            audit_from_row,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_differ_per_tenant() {
        let t = TenantId::new();
        assert_eq!(tenant_lock_key(t), tenant_lock_key(t));
        let distinct: std::collections::HashSet<i32> =
            (0..64).map(|_| tenant_lock_key(TenantId::new())).collect();
        assert!(distinct.len() > 60);
    }

    #[test]
    fn violations_name_the_value() {
        let g = DeviceGroup {
            id: GroupId::new(),
            tenant_id: TenantId::new(),
            parent_id: Some(GroupId::new()),
            name: "floor".into(),
            description: None,
            created_at: 0,
        };
        assert_eq!(group_unique(&g)("device_groups_root_name"), "floor");
        assert_eq!(group_unique(&g)("device_groups_pkey"), g.id.to_string());
        match missing_parent(&g)("device_groups_parent_fkey") {
            Error::NotFound { entity, id } => {
                assert_eq!((entity, id), ("group", g.parent_id.unwrap().to_string()))
            }
            other => panic!("expected NotFound, got {other:?}"),
        }
    }
}
