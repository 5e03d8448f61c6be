//! [`AccessStore`] of the SQL store: custom roles, API keys, device groups, device
//! profiles and the audit log (tables of migration `0002_access`).
//!
//! Every tenant-scoped statement filters by `tenant_id` in SQL. Rules that span rows
//! (the role or parent group must belong to the tenant, no deleting a role, group or
//! profile in use, no cycles in the group tree) are checked inside one write
//! transaction that holds the tenant's access lock ([`Dialect::begin`]: SQLite's single
//! writer, a PostgreSQL advisory lock per tenant), so no other such write of the tenant
//! slips between check and change. On PostgreSQL composite foreign keys on
//! `(tenant_id, ..)` back the same rules for writers that bypass the lock; such a
//! violation is reported as the missing row.

use async_trait::async_trait;
use tp_core::{
    AccessStore, ApiKey, ApiKeyId, AuditEntry, AuditId, CustomRole, Device, DeviceGroup, DeviceId,
    DeviceProfile, Error, GroupId, Page, Paged, ProfileId, Result, RoleId, Tenant, TenantId,
    UserId,
};

use super::meta::{device_cols, device_from_row};
use super::{Arg, Dialect, SqlRow, SqlStore, Stmt, Tx, UniqueViolation, found, paging};
use crate::access_common::{
    KEY_HASH_TAKEN, check_api_key, device_type_str, group_cycle, group_has_children,
    parse_device_type, profile_in_use, role_in_use,
};

/// Lock space of the tenant lock taken by every checked access write.
const LOCK: &str = "access";

fn role_from_row(row: &impl SqlRow) -> Result<CustomRole> {
    Ok(CustomRole {
        id: RoleId(row.uuid("id")?),
        tenant_id: TenantId(row.uuid("tenant_id")?),
        name: row.text("name")?,
        permissions: row.json("permissions")?,
        created_at: row.int("created_at")?,
    })
}

fn api_key_from_row(row: &impl SqlRow) -> Result<ApiKey> {
    Ok(ApiKey {
        id: ApiKeyId(row.uuid("id")?),
        tenant_id: TenantId(row.uuid("tenant_id")?),
        name: row.text("name")?,
        key_hash: row.text("key_hash")?,
        role: row.parsed("role", str::parse)?,
        role_id: row.opt_uuid("role_id")?.map(RoleId),
        created_by: UserId(row.uuid("created_by")?),
        created_at: row.int("created_at")?,
        expires_at: row.opt_int("expires_at")?,
    })
}

fn group_from_row(row: &impl SqlRow) -> Result<DeviceGroup> {
    Ok(DeviceGroup {
        id: GroupId(row.uuid("id")?),
        tenant_id: TenantId(row.uuid("tenant_id")?),
        parent_id: row.opt_uuid("parent_id")?.map(GroupId),
        name: row.text("name")?,
        description: row.opt_text("description")?,
        created_at: row.int("created_at")?,
    })
}

fn secs_col(row: &impl SqlRow, col: &'static str) -> Result<Option<u32>> {
    row.opt_int(col)?
        .map(|v| u32::try_from(v).map_err(|e| row.decode_error(col, e.to_string())))
        .transpose()
}

fn profile_from_row(row: &impl SqlRow) -> Result<DeviceProfile> {
    Ok(DeviceProfile {
        id: ProfileId(row.uuid("id")?),
        tenant_id: TenantId(row.uuid("tenant_id")?),
        name: row.text("name")?,
        device_type: row.parsed("device_type", parse_device_type)?,
        heartbeat_secs: secs_col(row, "heartbeat_secs")?,
        online_timeout_secs: secs_col(row, "online_timeout_secs")?,
        auto_register: row.bool("auto_register")?,
        provision_secret_hash: row.opt_text("provision_secret_hash")?,
        voucher_type: row.parsed("voucher_type", str::parse)?,
        template_id: row
            .opt_uuid("template_id")?
            .map(tp_core::thing_model::TemplateId),
        created_at: row.int("created_at")?,
    })
}

fn audit_from_row(row: &impl SqlRow) -> Result<AuditEntry> {
    Ok(AuditEntry {
        id: AuditId(row.uuid("id")?),
        tenant_id: TenantId(row.uuid("tenant_id")?),
        user_id: row.opt_uuid("user_id")?.map(UserId),
        actor: row.text("actor")?,
        action: row.text("action")?,
        resource_type: row.text("resource_type")?,
        resource_id: row.text("resource_id")?,
        detail: row
            .opt_json_value("detail")?
            .unwrap_or(serde_json::Value::Null),
        at: row.int("at")?,
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
         provision_secret_hash, created_at, voucher_type, template_id"
    };
}

macro_rules! audit_cols {
    () => {
        "id, tenant_id, user_id, actor, action, resource_type, resource_id, detail, at"
    };
}

/// Whether `sql` (bound to `id`, `tenant`) finds a row.
async fn exists_in<D: Dialect>(
    tx: &mut Tx<'_, D>,
    sql: &'static str,
    id: impl Into<Arg>,
    tenant: TenantId,
) -> Result<bool> {
    let stmt = Stmt::new(sql).bind(id).bind(tenant);
    Ok(tx.opt(stmt, |_| Ok(())).await?.is_some())
}

async fn role_in_tenant<D: Dialect>(
    tx: &mut Tx<'_, D>,
    tenant: TenantId,
    role: RoleId,
) -> Result<()> {
    const SQL: &str = "SELECT 1 AS one FROM roles WHERE id = $1 AND tenant_id = $2";
    if exists_in(tx, SQL, role, tenant).await? {
        Ok(())
    } else {
        Err(Error::not_found("role", role))
    }
}

async fn group_in_tenant<D: Dialect>(
    tx: &mut Tx<'_, D>,
    tenant: TenantId,
    group: GroupId,
) -> Result<()> {
    const SQL: &str = "SELECT 1 AS one FROM device_groups WHERE id = $1 AND tenant_id = $2";
    if exists_in(tx, SQL, group, tenant).await? {
        Ok(())
    } else {
        Err(Error::not_found("group", group))
    }
}

/// A profile's template, if it names one, must be a template of its tenant.
async fn template_in_tenant<D: Dialect>(tx: &mut Tx<'_, D>, profile: &DeviceProfile) -> Result<()> {
    const SQL: &str = "SELECT 1 AS one FROM device_templates WHERE id = $1 AND tenant_id = $2";
    match profile.template_id {
        Some(t) if !exists_in(tx, SQL, t.0, profile.tenant_id).await? => {
            Err(Error::not_found("template", t))
        }
        _ => Ok(()),
    }
}

/// The `n` of a `SELECT COUNT(*) AS n` inside a transaction.
async fn count_in<D: Dialect>(tx: &mut Tx<'_, D>, stmt: Stmt) -> Result<i64> {
    let n = tx.opt(stmt, |r| r.int("n")).await?;
    Ok(n.unwrap_or(0))
}

/// Which value of a group a unique violation is about (the id, or the name among
/// its siblings).
fn group_conflict(group: &DeviceGroup) -> impl FnOnce(&UniqueViolation) -> String + '_ {
    move |v| {
        if v.names("device_groups", "id") {
            group.id.to_string()
        } else {
            group.name.clone()
        }
    }
}

fn role_conflict(role: &CustomRole) -> impl FnOnce(&UniqueViolation) -> String + '_ {
    move |v| {
        if v.names("roles", "name") {
            role.name.clone()
        } else {
            role.id.to_string()
        }
    }
}

fn profile_conflict(profile: &DeviceProfile) -> impl FnOnce(&UniqueViolation) -> String + '_ {
    move |v| {
        if v.names("device_profiles", "name") {
            profile.name.clone()
        } else {
            profile.id.to_string()
        }
    }
}

#[async_trait]
impl<D: Dialect> AccessStore for SqlStore<D> {
    fn backend(&self) -> &'static str {
        D::backend()
    }

    async fn update_tenant(&self, tenant: &Tenant) -> Result<()> {
        let stmt = Stmt::new("UPDATE tenants SET name = $1 WHERE id = $2")
            .bind(&tenant.name)
            .bind(tenant.id);
        found(self.exec(stmt).await?, "tenant", tenant.id)
    }

    async fn delete_tenant(&self, id: TenantId) -> Result<()> {
        let mut tx = self.begin(Some((LOCK, id))).await?;
        let n = tx
            .exec(Stmt::new("DELETE FROM tenants WHERE id = $1").bind(id))
            .await?;
        found(n, "tenant", id)?;
        // Children before parents; memberships go with their groups and devices. All
        // of a tenant's groups go in one statement, so the parent key holds throughout.
        for sql in [
            "DELETE FROM attributes WHERE device_id IN (SELECT id FROM devices WHERE tenant_id = $1)",
            "DELETE FROM commands WHERE device_id IN (SELECT id FROM devices WHERE tenant_id = $1)",
            "DELETE FROM commands WHERE tenant_id = $1",
            "DELETE FROM group_devices WHERE group_id IN \
             (SELECT id FROM device_groups WHERE tenant_id = $1)",
            "DELETE FROM device_groups WHERE tenant_id = $1",
            "DELETE FROM devices WHERE tenant_id = $1",
            "DELETE FROM api_keys WHERE tenant_id = $1",
            "DELETE FROM users WHERE tenant_id = $1",
            "DELETE FROM roles WHERE tenant_id = $1",
            "DELETE FROM device_profiles WHERE tenant_id = $1",
            "DELETE FROM device_templates WHERE tenant_id = $1",
            "DELETE FROM audit_log WHERE tenant_id = $1",
            "DELETE FROM rules WHERE tenant_id = $1",
            "DELETE FROM scenes WHERE tenant_id = $1",
            "DELETE FROM alarms WHERE tenant_id = $1",
            "DELETE FROM notification_channels WHERE tenant_id = $1",
            "DELETE FROM notifications WHERE tenant_id = $1",
        ] {
            tx.exec(Stmt::new(sql).bind(id)).await?;
        }
        tx.commit().await
    }

    async fn get_user_role(&self, tenant: TenantId, user: UserId) -> Result<Option<RoleId>> {
        let stmt = Stmt::new("SELECT role_id FROM users WHERE id = $1 AND tenant_id = $2")
            .bind(user)
            .bind(tenant);
        match self.opt(stmt, |r| r.opt_uuid("role_id")).await? {
            Some(role) => Ok(role.map(RoleId)),
            None => Err(Error::not_found("user", user)),
        }
    }

    async fn set_user_role(
        &self,
        tenant: TenantId,
        user: UserId,
        role: Option<RoleId>,
    ) -> Result<()> {
        let mut tx = self.begin(Some((LOCK, tenant))).await?;
        const USER: &str = "SELECT 1 AS one FROM users WHERE id = $1 AND tenant_id = $2";
        if !exists_in(&mut tx, USER, user, tenant).await? {
            return Err(Error::not_found("user", user));
        }
        if let Some(role) = role {
            role_in_tenant(&mut tx, tenant, role).await?;
        }
        let stmt = Stmt::new("UPDATE users SET role_id = $1 WHERE id = $2 AND tenant_id = $3")
            .bind(role)
            .bind(user)
            .bind(tenant);
        tx.exec(stmt).await?;
        tx.commit().await
    }

    async fn create_role(&self, role: &CustomRole) -> Result<()> {
        let stmt = Stmt::new(concat!(
            "INSERT INTO roles (",
            role_cols!(),
            ") VALUES ($1, $2, $3, $4, $5)"
        ))
        .bind(role.id)
        .bind(role.tenant_id)
        .bind(&role.name)
        .bind_json(&role.permissions)?
        .bind(role.created_at);
        self.exec_unique(stmt, "role", role_conflict(role)).await?;
        Ok(())
    }

    async fn get_role(&self, tenant: TenantId, id: RoleId) -> Result<Option<CustomRole>> {
        const SQL: &str = concat!(
            "SELECT ",
            role_cols!(),
            " FROM roles WHERE id = $1 AND tenant_id = $2"
        );
        self.get_scoped(SQL, id, tenant, role_from_row).await
    }

    async fn list_roles(&self, tenant: TenantId, page: Page) -> Result<Paged<CustomRole>> {
        const SQL: &str = concat!(
            "SELECT ",
            role_cols!(),
            " FROM roles WHERE tenant_id = $1 ORDER BY name, id LIMIT $2 OFFSET $3"
        );
        const COUNT: &str = "SELECT COUNT(*) AS n FROM roles WHERE tenant_id = $1";
        self.page_scoped(SQL, COUNT, tenant, page, role_from_row)
            .await
    }

    async fn update_role(&self, role: &CustomRole) -> Result<()> {
        let stmt = Stmt::new(
            "UPDATE roles SET name = $1, permissions = $2 WHERE id = $3 AND tenant_id = $4",
        )
        .bind(&role.name)
        .bind_json(&role.permissions)?
        .bind(role.id)
        .bind(role.tenant_id);
        let n = self.exec_unique(stmt, "role", role_conflict(role)).await?;
        found(n, "role", role.id)
    }

    async fn delete_role(&self, tenant: TenantId, id: RoleId) -> Result<()> {
        let mut tx = self.begin(Some((LOCK, tenant))).await?;
        role_in_tenant(&mut tx, tenant, id).await?;
        const USERS: &str = "SELECT COUNT(*) AS n FROM users WHERE role_id = $1";
        const KEYS: &str = "SELECT COUNT(*) AS n FROM api_keys WHERE role_id = $1";
        let users = count_in(&mut tx, Stmt::new(USERS).bind(id)).await?;
        let keys = count_in(&mut tx, Stmt::new(KEYS).bind(id)).await?;
        if users > 0 || keys > 0 {
            return Err(role_in_use(id, users, keys));
        }
        let stmt = Stmt::new("DELETE FROM roles WHERE id = $1 AND tenant_id = $2")
            .bind(id)
            .bind(tenant);
        tx.exec(stmt).await?;
        tx.commit().await
    }

    async fn create_api_key(&self, key: &ApiKey) -> Result<()> {
        check_api_key(key)?;
        let mut tx = self.begin(Some((LOCK, key.tenant_id))).await?;
        if let Some(role) = key.role_id {
            role_in_tenant(&mut tx, key.tenant_id, role).await?;
        }
        let stmt = Stmt::new(concat!(
            "INSERT INTO api_keys (",
            api_key_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ))
        .bind(key.id)
        .bind(key.tenant_id)
        .bind(&key.name)
        .bind(&key.key_hash)
        .bind(key.role.as_str())
        .bind(key.role_id)
        .bind(key.created_by)
        .bind(key.created_at)
        .bind(key.expires_at);
        tx.exec_unique(stmt, "api_key", |v| {
            // The hash is not echoed.
            if v.names("api_keys", "key_hash") {
                KEY_HASH_TAKEN.to_owned()
            } else {
                key.id.to_string()
            }
        })
        .await?;
        tx.commit().await
    }

    async fn get_api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKey>> {
        const SQL: &str = concat!(
            "SELECT ",
            api_key_cols!(),
            " FROM api_keys WHERE key_hash = $1"
        );
        self.opt(Stmt::new(SQL).bind(key_hash), api_key_from_row)
            .await
    }

    async fn list_api_keys(&self, tenant: TenantId, page: Page) -> Result<Paged<ApiKey>> {
        const SQL: &str = concat!(
            "SELECT ",
            api_key_cols!(),
            " FROM api_keys WHERE tenant_id = $1 \
             ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3"
        );
        const COUNT: &str = "SELECT COUNT(*) AS n FROM api_keys WHERE tenant_id = $1";
        self.page_scoped(SQL, COUNT, tenant, page, api_key_from_row)
            .await
    }

    async fn delete_api_key(&self, tenant: TenantId, id: ApiKeyId) -> Result<()> {
        let stmt = Stmt::new("DELETE FROM api_keys WHERE id = $1 AND tenant_id = $2")
            .bind(id)
            .bind(tenant);
        found(self.exec(stmt).await?, "api_key", id)
    }

    async fn create_group(&self, group: &DeviceGroup) -> Result<()> {
        let mut tx = self.begin(Some((LOCK, group.tenant_id))).await?;
        if let Some(parent) = group.parent_id {
            group_in_tenant(&mut tx, group.tenant_id, parent).await?;
        }
        let stmt = Stmt::new(concat!(
            "INSERT INTO device_groups (",
            group_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6)"
        ))
        .bind(group.id)
        .bind(group.tenant_id)
        .bind(group.parent_id)
        .bind(&group.name)
        .bind(&group.description)
        .bind(group.created_at);
        tx.exec_unique(stmt, "group", group_conflict(group)).await?;
        tx.commit().await
    }

    async fn get_group(&self, tenant: TenantId, id: GroupId) -> Result<Option<DeviceGroup>> {
        const SQL: &str = concat!(
            "SELECT ",
            group_cols!(),
            " FROM device_groups WHERE id = $1 AND tenant_id = $2"
        );
        self.get_scoped(SQL, id, tenant, group_from_row).await
    }

    async fn list_groups(&self, tenant: TenantId) -> Result<Vec<DeviceGroup>> {
        const SQL: &str = concat!(
            "SELECT ",
            group_cols!(),
            " FROM device_groups WHERE tenant_id = $1 ORDER BY name, id"
        );
        self.all(Stmt::new(SQL).bind(tenant), group_from_row).await
    }

    async fn update_group(&self, group: &DeviceGroup) -> Result<()> {
        // One tree change per tenant at a time: the cycle check below must see every
        // move committed before this one.
        let mut tx = self.begin(Some((LOCK, group.tenant_id))).await?;
        group_in_tenant(&mut tx, group.tenant_id, group.id).await?;
        if let Some(parent) = group.parent_id {
            if parent == group.id {
                return Err(group_cycle(group.id));
            }
            group_in_tenant(&mut tx, group.tenant_id, parent).await?;
            // Walk up from the new parent: meeting the group means a cycle. UNION (not
            // UNION ALL) ends the walk even on a corrupt, cyclic tree.
            let walk = Stmt::new(
                "WITH RECURSIVE up(id) AS ( \
                   SELECT $1 \
                   UNION \
                   SELECT g.parent_id FROM device_groups g JOIN up ON g.id = up.id \
                   WHERE g.tenant_id = $2 AND g.parent_id IS NOT NULL) \
                 SELECT EXISTS (SELECT 1 FROM up WHERE id = $3) AS cycle",
            )
            .bind(parent)
            .bind(group.tenant_id)
            .bind(group.id);
            if tx.opt(walk, |r| r.bool("cycle")).await? == Some(true) {
                return Err(group_cycle(group.id));
            }
        }
        let stmt = Stmt::new(
            "UPDATE device_groups SET parent_id = $1, name = $2, description = $3 \
             WHERE id = $4 AND tenant_id = $5",
        )
        .bind(group.parent_id)
        .bind(&group.name)
        .bind(&group.description)
        .bind(group.id)
        .bind(group.tenant_id);
        tx.exec_unique(stmt, "group", group_conflict(group)).await?;
        tx.commit().await
    }

    async fn delete_group(&self, tenant: TenantId, id: GroupId) -> Result<()> {
        let mut tx = self.begin(Some((LOCK, tenant))).await?;
        group_in_tenant(&mut tx, tenant, id).await?;
        const CHILDREN: &str = "SELECT COUNT(*) AS n FROM device_groups WHERE parent_id = $1";
        let children = count_in(&mut tx, Stmt::new(CHILDREN).bind(id)).await?;
        if children > 0 {
            return Err(group_has_children(id, children));
        }
        for sql in [
            "DELETE FROM group_devices WHERE group_id = $1",
            "DELETE FROM device_groups WHERE id = $1",
        ] {
            tx.exec(Stmt::new(sql).bind(id)).await?;
        }
        tx.commit().await
    }

    async fn add_group_device(
        &self,
        tenant: TenantId,
        group: GroupId,
        device: DeviceId,
    ) -> Result<()> {
        let mut tx = self.begin(Some((LOCK, tenant))).await?;
        group_in_tenant(&mut tx, tenant, group).await?;
        const DEVICE: &str = "SELECT 1 AS one FROM devices WHERE id = $1 AND tenant_id = $2";
        if !exists_in(&mut tx, DEVICE, device, tenant).await? {
            return Err(Error::not_found("device", device));
        }
        let stmt = Stmt::new(
            "INSERT INTO group_devices (group_id, device_id) VALUES ($1, $2) \
             ON CONFLICT (group_id, device_id) DO NOTHING",
        )
        .bind(group)
        .bind(device);
        tx.exec(stmt).await?;
        tx.commit().await
    }

    async fn remove_group_device(
        &self,
        tenant: TenantId,
        group: GroupId,
        device: DeviceId,
    ) -> Result<bool> {
        let mut tx = self.begin(Some((LOCK, tenant))).await?;
        group_in_tenant(&mut tx, tenant, group).await?;
        let stmt = Stmt::new("DELETE FROM group_devices WHERE group_id = $1 AND device_id = $2")
            .bind(group)
            .bind(device);
        let n = tx.exec(stmt).await?;
        tx.commit().await?;
        Ok(n > 0)
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
        const MEMBERS: &str = " FROM devices WHERE tenant_id = $1 \
             AND id IN (SELECT device_id FROM group_devices WHERE group_id = $2)";
        let (limit, offset) = paging(page);
        let select = Stmt::built(format!(
            "SELECT {}{MEMBERS} ORDER BY created_at, id LIMIT $3 OFFSET $4",
            device_cols!()
        ))
        .bind(tenant)
        .bind(group)
        .bind(limit)
        .bind(offset);
        let items = self.all(select, device_from_row).await?;
        let count = Stmt::built(format!("SELECT COUNT(*) AS n{MEMBERS}"))
            .bind(tenant)
            .bind(group);
        let total = self.count(count).await?;
        Ok(Paged { items, total })
    }

    async fn create_profile(&self, profile: &DeviceProfile) -> Result<()> {
        let mut tx = self.begin(Some((LOCK, profile.tenant_id))).await?;
        template_in_tenant(&mut tx, profile).await?;
        let stmt = Stmt::new(concat!(
            "INSERT INTO device_profiles (",
            profile_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ))
        .bind(profile.id)
        .bind(profile.tenant_id)
        .bind(&profile.name)
        .bind(device_type_str(profile.device_type))
        .bind(profile.heartbeat_secs)
        .bind(profile.online_timeout_secs)
        .bind(profile.auto_register)
        .bind(&profile.provision_secret_hash)
        .bind(profile.created_at)
        .bind(profile.voucher_type.as_str())
        .bind(profile.template_id.map(|t| t.0));
        tx.exec_unique(stmt, "profile", profile_conflict(profile))
            .await?;
        tx.commit().await
    }

    async fn get_profile(&self, tenant: TenantId, id: ProfileId) -> Result<Option<DeviceProfile>> {
        const SQL: &str = concat!(
            "SELECT ",
            profile_cols!(),
            " FROM device_profiles WHERE id = $1 AND tenant_id = $2"
        );
        self.get_scoped(SQL, id, tenant, profile_from_row).await
    }

    async fn get_profile_by_provision_secret(&self, hash: &str) -> Result<Option<DeviceProfile>> {
        const SQL: &str = concat!(
            "SELECT ",
            profile_cols!(),
            " FROM device_profiles WHERE provision_secret_hash = $1 \
             ORDER BY created_at, id LIMIT 1"
        );
        self.opt(Stmt::new(SQL).bind(hash), profile_from_row).await
    }

    async fn list_profiles(&self, tenant: TenantId, page: Page) -> Result<Paged<DeviceProfile>> {
        const SQL: &str = concat!(
            "SELECT ",
            profile_cols!(),
            " FROM device_profiles WHERE tenant_id = $1 ORDER BY name, id LIMIT $2 OFFSET $3"
        );
        const COUNT: &str = "SELECT COUNT(*) AS n FROM device_profiles WHERE tenant_id = $1";
        self.page_scoped(SQL, COUNT, tenant, page, profile_from_row)
            .await
    }

    async fn update_profile(&self, profile: &DeviceProfile) -> Result<()> {
        let mut tx = self.begin(Some((LOCK, profile.tenant_id))).await?;
        template_in_tenant(&mut tx, profile).await?;
        let stmt = Stmt::new(
            "UPDATE device_profiles SET name = $1, device_type = $2, heartbeat_secs = $3, \
             online_timeout_secs = $4, auto_register = $5, provision_secret_hash = $6, \
             voucher_type = $7, template_id = $8 WHERE id = $9 AND tenant_id = $10",
        )
        .bind(&profile.name)
        .bind(device_type_str(profile.device_type))
        .bind(profile.heartbeat_secs)
        .bind(profile.online_timeout_secs)
        .bind(profile.auto_register)
        .bind(&profile.provision_secret_hash)
        .bind(profile.voucher_type.as_str())
        .bind(profile.template_id.map(|t| t.0))
        .bind(profile.id)
        .bind(profile.tenant_id);
        let n = tx
            .exec_unique(stmt, "profile", profile_conflict(profile))
            .await?;
        found(n, "profile", profile.id)?;
        tx.commit().await
    }

    async fn delete_profile(&self, tenant: TenantId, id: ProfileId) -> Result<()> {
        let mut tx = self.begin(Some((LOCK, tenant))).await?;
        const PROFILE: &str =
            "SELECT 1 AS one FROM device_profiles WHERE id = $1 AND tenant_id = $2";
        if !exists_in(&mut tx, PROFILE, id, tenant).await? {
            return Err(Error::not_found("profile", id));
        }
        const DEVICES: &str =
            "SELECT COUNT(*) AS n FROM devices WHERE profile_id = $1 AND tenant_id = $2";
        let devices = count_in(&mut tx, Stmt::new(DEVICES).bind(id).bind(tenant)).await?;
        if devices > 0 {
            return Err(profile_in_use(id, devices));
        }
        let stmt = Stmt::new("DELETE FROM device_profiles WHERE id = $1 AND tenant_id = $2")
            .bind(id)
            .bind(tenant);
        tx.exec(stmt).await?;
        tx.commit().await
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<()> {
        let stmt = Stmt::new(concat!(
            "INSERT INTO audit_log (",
            audit_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ))
        .bind(entry.id)
        .bind(entry.tenant_id)
        .bind(entry.user_id)
        .bind(&entry.actor)
        .bind(&entry.action)
        .bind(&entry.resource_type)
        .bind(&entry.resource_id)
        .bind(Arg::Json(Some(entry.detail.clone())))
        .bind(entry.at);
        self.exec_unique(stmt, "audit", |_| entry.id.to_string())
            .await?;
        Ok(())
    }

    async fn list_audit(&self, tenant: TenantId, page: Page) -> Result<Paged<AuditEntry>> {
        const SQL: &str = concat!(
            "SELECT ",
            audit_cols!(),
            " FROM audit_log WHERE tenant_id = $1 ORDER BY at DESC, seq DESC LIMIT $2 OFFSET $3"
        );
        const COUNT: &str = "SELECT COUNT(*) AS n FROM audit_log WHERE tenant_id = $1";
        self.page_scoped(SQL, COUNT, tenant, page, audit_from_row)
            .await
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;
    use crate::sqlite::SqliteMetadataStore;
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
