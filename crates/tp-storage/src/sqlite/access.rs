//! [`AccessStore`] for [`SqliteMetadataStore`]: the same database and pools as the
//! metadata store (tables of migration `0002_access`).
//!
//! Every tenant-scoped statement filters by `tenant_id` in SQL. Rules that span rows
//! (the role or parent group must belong to the tenant, no deleting a role, group or
//! profile in use, no cycles in the group tree) are checked inside one write
//! transaction (`BEGIN IMMEDIATE`): SQLite has one writer, so no other write can slip
//! between check and change.

use async_trait::async_trait;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite, Transaction};
use tp_core::{
    AccessStore, ApiKey, ApiKeyId, AuditEntry, AuditId, CustomRole, Device, DeviceGroup, DeviceId,
    DeviceProfile, Error, GroupId, Page, Paged, ProfileId, Result, RoleId, Tenant, TenantId,
    UserId,
};

use super::SqliteMetadataStore;
use super::error::{self, SqliteError, conflict, db};
use super::meta::{
    decode_all, decode_opt, device_cols, device_from_row, json_col, opt_uuid_col, paging,
    parse_col, uuid_col,
};
use crate::access_common::{
    KEY_HASH_TAKEN, check_api_key, device_type_str, group_cycle, group_has_children,
    parse_device_type, profile_in_use, role_in_use,
};

type RowResult<T> = std::result::Result<T, SqliteError>;

fn role_from_row(row: &SqliteRow) -> RowResult<CustomRole> {
    let permissions: String = row.try_get("permissions")?;
    Ok(CustomRole {
        id: RoleId(uuid_col(row, "id")?),
        tenant_id: TenantId(uuid_col(row, "tenant_id")?),
        name: row.try_get("name")?,
        permissions: serde_json::from_str(&permissions)
            .map_err(|e| SqliteError::decode("permissions", e))?,
        created_at: row.try_get("created_at")?,
    })
}

fn api_key_from_row(row: &SqliteRow) -> RowResult<ApiKey> {
    let role: String = row.try_get("role")?;
    Ok(ApiKey {
        id: ApiKeyId(uuid_col(row, "id")?),
        tenant_id: TenantId(uuid_col(row, "tenant_id")?),
        name: row.try_get("name")?,
        key_hash: row.try_get("key_hash")?,
        role: role.parse().map_err(|e| SqliteError::decode("role", e))?,
        role_id: opt_uuid_col(row, "role_id")?.map(RoleId),
        created_by: UserId(uuid_col(row, "created_by")?),
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
    })
}

fn group_from_row(row: &SqliteRow) -> RowResult<DeviceGroup> {
    Ok(DeviceGroup {
        id: GroupId(uuid_col(row, "id")?),
        tenant_id: TenantId(uuid_col(row, "tenant_id")?),
        parent_id: opt_uuid_col(row, "parent_id")?.map(GroupId),
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        created_at: row.try_get("created_at")?,
    })
}

fn secs_col(row: &SqliteRow, col: &'static str) -> RowResult<Option<u32>> {
    let v: Option<i64> = row.try_get(col)?;
    v.map(|v| u32::try_from(v).map_err(|e| SqliteError::decode(col, e)))
        .transpose()
}

fn profile_from_row(row: &SqliteRow) -> RowResult<DeviceProfile> {
    let device_type: String = row.try_get("device_type")?;
    Ok(DeviceProfile {
        id: ProfileId(uuid_col(row, "id")?),
        tenant_id: TenantId(uuid_col(row, "tenant_id")?),
        name: row.try_get("name")?,
        device_type: parse_device_type(&device_type)
            .map_err(|e| SqliteError::decode("device_type", e))?,
        heartbeat_secs: secs_col(row, "heartbeat_secs")?,
        online_timeout_secs: secs_col(row, "online_timeout_secs")?,
        auto_register: row.try_get("auto_register")?,
        provision_secret_hash: row.try_get("provision_secret_hash")?,
        voucher_type: parse_col(row, "voucher_type")?,
        created_at: row.try_get("created_at")?,
    })
}

fn audit_from_row(row: &SqliteRow) -> RowResult<AuditEntry> {
    Ok(AuditEntry {
        id: AuditId(uuid_col(row, "id")?),
        tenant_id: TenantId(uuid_col(row, "tenant_id")?),
        user_id: opt_uuid_col(row, "user_id")?.map(UserId),
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

macro_rules! audit_cols {
    () => {
        "id, tenant_id, user_id, actor, action, resource_type, resource_id, detail, at"
    };
}

/// Whether `sql` (bound to `id` and `tenant`) finds a row.
async fn exists_in(
    tx: &mut Transaction<'static, Sqlite>,
    sql: &'static str,
    id: String,
    tenant: TenantId,
) -> Result<bool> {
    let row = sqlx::query(sql)
        .bind(id)
        .bind(tenant.to_string())
        .fetch_optional(&mut **tx)
        .await
        .map_err(db)?;
    Ok(row.is_some())
}

async fn role_in_tenant(
    tx: &mut Transaction<'static, Sqlite>,
    tenant: TenantId,
    role: RoleId,
) -> Result<()> {
    if exists_in(
        tx,
        "SELECT 1 FROM roles WHERE id = ? AND tenant_id = ?",
        role.to_string(),
        tenant,
    )
    .await?
    {
        Ok(())
    } else {
        Err(Error::not_found("role", role))
    }
}

async fn group_in_tenant(
    tx: &mut Transaction<'static, Sqlite>,
    tenant: TenantId,
    group: GroupId,
) -> Result<()> {
    if exists_in(
        tx,
        "SELECT 1 FROM device_groups WHERE id = ? AND tenant_id = ?",
        group.to_string(),
        tenant,
    )
    .await?
    {
        Ok(())
    } else {
        Err(Error::not_found("group", group))
    }
}

async fn count(
    tx: &mut Transaction<'static, Sqlite>,
    sql: &'static str,
    id: String,
) -> Result<i64> {
    sqlx::query_scalar(sql)
        .bind(id)
        .fetch_one(&mut **tx)
        .await
        .map_err(db)
}

/// Which value of a group a unique violation is about.
fn group_conflict(group: &DeviceGroup) -> impl FnOnce(&str) -> String + '_ {
    move |msg| {
        if msg.contains("device_groups.id") {
            group.id.to_string()
        } else {
            group.name.clone()
        }
    }
}

/// Which value of a role a unique violation is about.
fn role_conflict(role: &CustomRole) -> impl FnOnce(&str) -> String + '_ {
    move |msg| {
        if msg.contains("roles.name") {
            role.name.clone()
        } else {
            role.id.to_string()
        }
    }
}

/// Which value of a profile a unique violation is about.
fn profile_conflict(profile: &DeviceProfile) -> impl FnOnce(&str) -> String + '_ {
    move |msg| {
        if msg.contains("device_profiles.name") {
            profile.name.clone()
        } else {
            profile.id.to_string()
        }
    }
}

fn permissions_json(role: &CustomRole) -> String {
    serde_json::Value::from(role.permissions.clone()).to_string()
}

#[async_trait]
impl AccessStore for SqliteMetadataStore {
    fn backend(&self) -> &'static str {
        error::BACKEND
    }

    async fn update_tenant(&self, tenant: &Tenant) -> Result<()> {
        let done = sqlx::query("UPDATE tenants SET name = ? WHERE id = ?")
            .bind(&tenant.name)
            .bind(tenant.id.to_string())
            .execute(&self.db.pools.writer)
            .await
            .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("tenant", tenant.id));
        }
        Ok(())
    }

    async fn delete_tenant(&self, id: TenantId) -> Result<()> {
        let mut tx = self.db.pools.begin_write().await?;
        let done = sqlx::query("DELETE FROM tenants WHERE id = ?")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("tenant", id));
        }
        // Children before parents; memberships go with their groups and devices.
        for sql in [
            "DELETE FROM attributes WHERE device_id IN (SELECT id FROM devices WHERE tenant_id = ?)",
            "DELETE FROM commands WHERE device_id IN (SELECT id FROM devices WHERE tenant_id = ?)",
            "DELETE FROM commands WHERE tenant_id = ?",
            "DELETE FROM group_devices WHERE group_id IN \
             (SELECT id FROM device_groups WHERE tenant_id = ?)",
            "DELETE FROM device_groups WHERE tenant_id = ?",
            "DELETE FROM devices WHERE tenant_id = ?",
            "DELETE FROM api_keys WHERE tenant_id = ?",
            "DELETE FROM users WHERE tenant_id = ?",
            "DELETE FROM roles WHERE tenant_id = ?",
            "DELETE FROM device_profiles WHERE tenant_id = ?",
            "DELETE FROM audit_log WHERE tenant_id = ?",
            "DELETE FROM rules WHERE tenant_id = ?",
            "DELETE FROM scenes WHERE tenant_id = ?",
            "DELETE FROM alarms WHERE tenant_id = ?",
            "DELETE FROM notification_channels WHERE tenant_id = ?",
            "DELETE FROM notifications WHERE tenant_id = ?",
        ] {
            sqlx::query(sql)
                .bind(id.to_string())
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        tx.commit().await.map_err(db)
    }

    async fn get_user_role(&self, tenant: TenantId, user: UserId) -> Result<Option<RoleId>> {
        let row = sqlx::query("SELECT role_id FROM users WHERE id = ? AND tenant_id = ?")
            .bind(user.to_string())
            .bind(tenant.to_string())
            .fetch_optional(&self.db.pools.reader)
            .await
            .map_err(db)?;
        let Some(row) = row else {
            return Err(Error::not_found("user", user));
        };
        Ok(opt_uuid_col(&row, "role_id")
            .map_err(Error::from)?
            .map(RoleId))
    }

    async fn set_user_role(
        &self,
        tenant: TenantId,
        user: UserId,
        role: Option<RoleId>,
    ) -> Result<()> {
        let mut tx = self.db.pools.begin_write().await?;
        if !exists_in(
            &mut tx,
            "SELECT 1 FROM users WHERE id = ? AND tenant_id = ?",
            user.to_string(),
            tenant,
        )
        .await?
        {
            return Err(Error::not_found("user", user));
        }
        if let Some(role) = role {
            role_in_tenant(&mut tx, tenant, role).await?;
        }
        sqlx::query("UPDATE users SET role_id = ? WHERE id = ? AND tenant_id = ?")
            .bind(role.map(|r| r.to_string()))
            .bind(user.to_string())
            .bind(tenant.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    async fn create_role(&self, role: &CustomRole) -> Result<()> {
        sqlx::query(concat!(
            "INSERT INTO roles (",
            role_cols!(),
            ") VALUES (?, ?, ?, ?, ?)"
        ))
        .bind(role.id.to_string())
        .bind(role.tenant_id.to_string())
        .bind(&role.name)
        .bind(permissions_json(role))
        .bind(role.created_at)
        .execute(&self.db.pools.writer)
        .await
        .map_err(|e| conflict(e, "role", role_conflict(role)))?;
        Ok(())
    }

    async fn get_role(&self, tenant: TenantId, id: RoleId) -> Result<Option<CustomRole>> {
        self.old_get_scoped(
            concat!(
                "SELECT ",
                role_cols!(),
                " FROM roles WHERE id = ? AND tenant_id = ?"
            ),
            id.to_string(),
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
                " FROM roles WHERE tenant_id = ? ORDER BY name, id LIMIT ? OFFSET ?"
            ),
            "SELECT COUNT(*) FROM roles WHERE tenant_id = ?",
            tenant,
            page,
            role_from_row,
        )
        .await
    }

    async fn update_role(&self, role: &CustomRole) -> Result<()> {
        let done = sqlx::query(
            "UPDATE roles SET name = ?, permissions = ? WHERE id = ? AND tenant_id = ?",
        )
        .bind(&role.name)
        .bind(permissions_json(role))
        .bind(role.id.to_string())
        .bind(role.tenant_id.to_string())
        .execute(&self.db.pools.writer)
        .await
        .map_err(|e| conflict(e, "role", role_conflict(role)))?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("role", role.id));
        }
        Ok(())
    }

    async fn delete_role(&self, tenant: TenantId, id: RoleId) -> Result<()> {
        let mut tx = self.db.pools.begin_write().await?;
        role_in_tenant(&mut tx, tenant, id).await?;
        let users = count(
            &mut tx,
            "SELECT COUNT(*) FROM users WHERE role_id = ?",
            id.to_string(),
        )
        .await?;
        let keys = count(
            &mut tx,
            "SELECT COUNT(*) FROM api_keys WHERE role_id = ?",
            id.to_string(),
        )
        .await?;
        if users > 0 || keys > 0 {
            return Err(role_in_use(id, users, keys));
        }
        sqlx::query("DELETE FROM roles WHERE id = ? AND tenant_id = ?")
            .bind(id.to_string())
            .bind(tenant.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    async fn create_api_key(&self, key: &ApiKey) -> Result<()> {
        check_api_key(key)?;
        let mut tx = self.db.pools.begin_write().await?;
        if let Some(role) = key.role_id {
            role_in_tenant(&mut tx, key.tenant_id, role).await?;
        }
        sqlx::query(concat!(
            "INSERT INTO api_keys (",
            api_key_cols!(),
            ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(key.id.to_string())
        .bind(key.tenant_id.to_string())
        .bind(&key.name)
        .bind(&key.key_hash)
        .bind(key.role.as_str())
        .bind(key.role_id.map(|r| r.to_string()))
        .bind(key.created_by.to_string())
        .bind(key.created_at)
        .bind(key.expires_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            conflict(e, "api_key", |msg| {
                if msg.contains("api_keys.key_hash") {
                    KEY_HASH_TAKEN.to_owned()
                } else {
                    key.id.to_string()
                }
            })
        })?;
        tx.commit().await.map_err(db)
    }

    async fn get_api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKey>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            api_key_cols!(),
            " FROM api_keys WHERE key_hash = ?"
        ))
        .bind(key_hash)
        .fetch_optional(&self.db.pools.reader)
        .await
        .map_err(db)?;
        decode_opt(row, api_key_from_row)
    }

    async fn list_api_keys(&self, tenant: TenantId, page: Page) -> Result<Paged<ApiKey>> {
        self.old_page_scoped(
            concat!(
                "SELECT ",
                api_key_cols!(),
                " FROM api_keys WHERE tenant_id = ? \
              ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?"
            ),
            "SELECT COUNT(*) FROM api_keys WHERE tenant_id = ?",
            tenant,
            page,
            api_key_from_row,
        )
        .await
    }

    async fn delete_api_key(&self, tenant: TenantId, id: ApiKeyId) -> Result<()> {
        let done = sqlx::query("DELETE FROM api_keys WHERE id = ? AND tenant_id = ?")
            .bind(id.to_string())
            .bind(tenant.to_string())
            .execute(&self.db.pools.writer)
            .await
            .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("api_key", id));
        }
        Ok(())
    }

    async fn create_group(&self, group: &DeviceGroup) -> Result<()> {
        let mut tx = self.db.pools.begin_write().await?;
        if let Some(parent) = group.parent_id {
            group_in_tenant(&mut tx, group.tenant_id, parent).await?;
        }
        sqlx::query(concat!(
            "INSERT INTO device_groups (",
            group_cols!(),
            ") VALUES (?, ?, ?, ?, ?, ?)"
        ))
        .bind(group.id.to_string())
        .bind(group.tenant_id.to_string())
        .bind(group.parent_id.map(|p| p.to_string()))
        .bind(&group.name)
        .bind(&group.description)
        .bind(group.created_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| conflict(e, "group", group_conflict(group)))?;
        tx.commit().await.map_err(db)
    }

    async fn get_group(&self, tenant: TenantId, id: GroupId) -> Result<Option<DeviceGroup>> {
        self.old_get_scoped(
            concat!(
                "SELECT ",
                group_cols!(),
                " FROM device_groups WHERE id = ? AND tenant_id = ?"
            ),
            id.to_string(),
            tenant,
            group_from_row,
        )
        .await
    }

    async fn list_groups(&self, tenant: TenantId) -> Result<Vec<DeviceGroup>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            group_cols!(),
            " FROM device_groups WHERE tenant_id = ? ORDER BY name, id"
        ))
        .bind(tenant.to_string())
        .fetch_all(&self.db.pools.reader)
        .await
        .map_err(db)?;
        decode_all(&rows, group_from_row)
    }

    async fn update_group(&self, group: &DeviceGroup) -> Result<()> {
        let mut tx = self.db.pools.begin_write().await?;
        group_in_tenant(&mut tx, group.tenant_id, group.id).await?;
        if let Some(parent) = group.parent_id {
            if parent == group.id {
                return Err(group_cycle(group.id));
            }
            group_in_tenant(&mut tx, group.tenant_id, parent).await?;
            // Walk up from the new parent: meeting the group means a cycle. UNION (not
            // UNION ALL) ends the walk even on a corrupt, cyclic tree.
            let cycle: bool = sqlx::query_scalar(
                "WITH RECURSIVE up(id) AS ( \
                   SELECT ? \
                   UNION \
                   SELECT g.parent_id FROM device_groups g JOIN up ON g.id = up.id \
                   WHERE g.tenant_id = ? AND g.parent_id IS NOT NULL) \
                 SELECT EXISTS (SELECT 1 FROM up WHERE id = ?)",
            )
            .bind(parent.to_string())
            .bind(group.tenant_id.to_string())
            .bind(group.id.to_string())
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
            if cycle {
                return Err(group_cycle(group.id));
            }
        }
        sqlx::query(
            "UPDATE device_groups SET parent_id = ?, name = ?, description = ? \
             WHERE id = ? AND tenant_id = ?",
        )
        .bind(group.parent_id.map(|p| p.to_string()))
        .bind(&group.name)
        .bind(&group.description)
        .bind(group.id.to_string())
        .bind(group.tenant_id.to_string())
        .execute(&mut *tx)
        .await
        .map_err(|e| conflict(e, "group", group_conflict(group)))?;
        tx.commit().await.map_err(db)
    }

    async fn delete_group(&self, tenant: TenantId, id: GroupId) -> Result<()> {
        let mut tx = self.db.pools.begin_write().await?;
        group_in_tenant(&mut tx, tenant, id).await?;
        let children = count(
            &mut tx,
            "SELECT COUNT(*) FROM device_groups WHERE parent_id = ?",
            id.to_string(),
        )
        .await?;
        if children > 0 {
            return Err(group_has_children(id, children));
        }
        for sql in [
            "DELETE FROM group_devices WHERE group_id = ?",
            "DELETE FROM device_groups WHERE id = ?",
        ] {
            sqlx::query(sql)
                .bind(id.to_string())
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        tx.commit().await.map_err(db)
    }

    async fn add_group_device(
        &self,
        tenant: TenantId,
        group: GroupId,
        device: DeviceId,
    ) -> Result<()> {
        let mut tx = self.db.pools.begin_write().await?;
        group_in_tenant(&mut tx, tenant, group).await?;
        if !exists_in(
            &mut tx,
            "SELECT 1 FROM devices WHERE id = ? AND tenant_id = ?",
            device.to_string(),
            tenant,
        )
        .await?
        {
            return Err(Error::not_found("device", device));
        }
        sqlx::query(
            "INSERT INTO group_devices (group_id, device_id) VALUES (?, ?) \
             ON CONFLICT (group_id, device_id) DO NOTHING",
        )
        .bind(group.to_string())
        .bind(device.to_string())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    async fn remove_group_device(
        &self,
        tenant: TenantId,
        group: GroupId,
        device: DeviceId,
    ) -> Result<bool> {
        let mut tx = self.db.pools.begin_write().await?;
        group_in_tenant(&mut tx, tenant, group).await?;
        let done = sqlx::query("DELETE FROM group_devices WHERE group_id = ? AND device_id = ?")
            .bind(group.to_string())
            .bind(device.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    async fn list_group_devices(
        &self,
        tenant: TenantId,
        group: GroupId,
        page: Page,
    ) -> Result<Paged<Device>> {
        if self.get_group(tenant, group).await?.is_none() {
            return Err(Error::not_found("group", group));
        }
        let (limit, offset) = paging(page);
        let rows = sqlx::query(concat!(
            "SELECT ",
            device_cols!(),
            " FROM devices WHERE tenant_id = ? \
              AND id IN (SELECT device_id FROM group_devices WHERE group_id = ?) \
              ORDER BY created_at, id LIMIT ? OFFSET ?"
        ))
        .bind(tenant.to_string())
        .bind(group.to_string())
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.db.pools.reader)
        .await
        .map_err(db)?;
        let total: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM devices WHERE tenant_id = ? \
             AND id IN (SELECT device_id FROM group_devices WHERE group_id = ?)",
        )
        .bind(tenant.to_string())
        .bind(group.to_string())
        .fetch_one(&self.db.pools.reader)
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
            ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(profile.id.to_string())
        .bind(profile.tenant_id.to_string())
        .bind(&profile.name)
        .bind(device_type_str(profile.device_type))
        .bind(profile.heartbeat_secs.map(i64::from))
        .bind(profile.online_timeout_secs.map(i64::from))
        .bind(profile.auto_register)
        .bind(&profile.provision_secret_hash)
        .bind(profile.created_at)
        .bind(profile.voucher_type.as_str())
        .execute(&self.db.pools.writer)
        .await
        .map_err(|e| conflict(e, "profile", profile_conflict(profile)))?;
        Ok(())
    }

    async fn get_profile(&self, tenant: TenantId, id: ProfileId) -> Result<Option<DeviceProfile>> {
        self.old_get_scoped(
            concat!(
                "SELECT ",
                profile_cols!(),
                " FROM device_profiles WHERE id = ? AND tenant_id = ?"
            ),
            id.to_string(),
            tenant,
            profile_from_row,
        )
        .await
    }

    async fn get_profile_by_provision_secret(&self, hash: &str) -> Result<Option<DeviceProfile>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            profile_cols!(),
            " FROM device_profiles WHERE provision_secret_hash = ? ORDER BY created_at, id LIMIT 1"
        ))
        .bind(hash)
        .fetch_optional(&self.db.pools.reader)
        .await
        .map_err(db)?;
        decode_opt(row, profile_from_row)
    }

    async fn list_profiles(&self, tenant: TenantId, page: Page) -> Result<Paged<DeviceProfile>> {
        self.old_page_scoped(
            concat!(
                "SELECT ",
                profile_cols!(),
                " FROM device_profiles WHERE tenant_id = ? ORDER BY name, id LIMIT ? OFFSET ?"
            ),
            "SELECT COUNT(*) FROM device_profiles WHERE tenant_id = ?",
            tenant,
            page,
            profile_from_row,
        )
        .await
    }

    async fn update_profile(&self, profile: &DeviceProfile) -> Result<()> {
        let done = sqlx::query(
            "UPDATE device_profiles SET name = ?, device_type = ?, heartbeat_secs = ?, \
             online_timeout_secs = ?, auto_register = ?, provision_secret_hash = ?, \
             voucher_type = ? WHERE id = ? AND tenant_id = ?",
        )
        .bind(&profile.name)
        .bind(device_type_str(profile.device_type))
        .bind(profile.heartbeat_secs.map(i64::from))
        .bind(profile.online_timeout_secs.map(i64::from))
        .bind(profile.auto_register)
        .bind(&profile.provision_secret_hash)
        .bind(profile.voucher_type.as_str())
        .bind(profile.id.to_string())
        .bind(profile.tenant_id.to_string())
        .execute(&self.db.pools.writer)
        .await
        .map_err(|e| conflict(e, "profile", profile_conflict(profile)))?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("profile", profile.id));
        }
        Ok(())
    }

    async fn delete_profile(&self, tenant: TenantId, id: ProfileId) -> Result<()> {
        let mut tx = self.db.pools.begin_write().await?;
        if !exists_in(
            &mut tx,
            "SELECT 1 FROM device_profiles WHERE id = ? AND tenant_id = ?",
            id.to_string(),
            tenant,
        )
        .await?
        {
            return Err(Error::not_found("profile", id));
        }
        let devices: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM devices WHERE profile_id = ? AND tenant_id = ?",
        )
        .bind(id.to_string())
        .bind(tenant.to_string())
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        if devices > 0 {
            return Err(profile_in_use(id, devices));
        }
        sqlx::query("DELETE FROM device_profiles WHERE id = ? AND tenant_id = ?")
            .bind(id.to_string())
            .bind(tenant.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<()> {
        sqlx::query(concat!(
            "INSERT INTO audit_log (",
            audit_cols!(),
            ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(entry.id.to_string())
        .bind(entry.tenant_id.to_string())
        .bind(entry.user_id.map(|u| u.to_string()))
        .bind(&entry.actor)
        .bind(&entry.action)
        .bind(&entry.resource_type)
        .bind(&entry.resource_id)
        .bind(entry.detail.to_string())
        .bind(entry.at)
        .execute(&self.db.pools.writer)
        .await
        .map_err(|e| conflict(e, "audit", |_| entry.id.to_string()))?;
        Ok(())
    }

    async fn list_audit(&self, tenant: TenantId, page: Page) -> Result<Paged<AuditEntry>> {
        self.old_page_scoped(
            concat!(
                "SELECT ",
                audit_cols!(),
                " FROM audit_log WHERE tenant_id = ? ORDER BY at DESC, seq DESC LIMIT ? OFFSET ?"
            ),
            "SELECT COUNT(*) FROM audit_log WHERE tenant_id = ?",
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
    use tp_core::MetadataStore;

    #[tokio::test]
    async fn conflicts_name_the_value() {
        let store = SqliteMetadataStore::in_memory().await.expect("open");
        let t = TenantId::new();
        let role = CustomRole {
            id: RoleId::new(),
            tenant_id: t,
            name: "ops".into(),
            permissions: vec![],
            created_at: 1,
        };
        store.create_role(&role).await.expect("create");
        let dup = CustomRole {
            id: RoleId::new(),
            ..role.clone()
        };
        match store.create_role(&dup).await {
            Err(Error::AlreadyExists { entity, id }) => {
                assert_eq!((entity, id.as_str()), ("role", "ops"))
            }
            other => panic!("expected AlreadyExists, got {other:?}"),
        }
        let same_id = CustomRole {
            name: "other".into(),
            ..role.clone()
        };
        match store.create_role(&same_id).await {
            Err(Error::AlreadyExists { entity, id }) => {
                assert_eq!((entity, id), ("role", role.id.to_string()))
            }
            other => panic!("expected AlreadyExists, got {other:?}"),
        }
        assert_eq!(AccessStore::backend(&store), MetadataStore::backend(&store));
    }
}
