//! [`ThingModelStore`] of the SQL store: device templates (migration
//! `thing_model`). The definitions are one JSON document per template, so a
//! template is read and written in one statement; the checks that span rows (no
//! deleting a template a profile refers to) run under the tenant's access lock,
//! the lock profile writes take too.

use async_trait::async_trait;
use tp_core::thing_model::{Definitions, DeviceTemplate, TemplateId, ThingModelStore};
use tp_core::{Error, Page, Paged, ProfileId, Result, TenantId};

use super::{Dialect, SqlRow, SqlStore, Stmt, UniqueViolation, found};

/// Lock space of profile and template writes (the access store's).
const LOCK: &str = "access";

macro_rules! template_cols {
    () => {
        "t.id, t.tenant_id, t.name, t.description, t.validation, t.strict_keys, t.definitions, \
         t.created_at, t.updated_at"
    };
}

fn template_from_row(row: &impl SqlRow) -> Result<DeviceTemplate> {
    let definitions: Definitions = row.json("definitions")?;
    let mut t = DeviceTemplate {
        id: TemplateId(row.uuid("id")?),
        tenant_id: TenantId(row.uuid("tenant_id")?),
        name: row.text("name")?,
        description: row.opt_text("description")?,
        validation: row.parsed("validation", str::parse)?,
        strict_keys: row.bool("strict_keys")?,
        telemetry: Vec::new(),
        attributes: Vec::new(),
        events: Vec::new(),
        commands: Vec::new(),
        created_at: row.int("created_at")?,
        updated_at: row.int("updated_at")?,
    };
    t.set_definitions(definitions);
    Ok(t)
}

fn template_conflict(t: &DeviceTemplate) -> impl FnOnce(&UniqueViolation) -> String + '_ {
    move |v| {
        if v.names("device_templates", "name") {
            t.name.clone()
        } else {
            t.id.to_string()
        }
    }
}

#[async_trait]
impl<D: Dialect> ThingModelStore for SqlStore<D> {
    async fn create_template(&self, t: &DeviceTemplate) -> Result<()> {
        let stmt = Stmt::new(
            "INSERT INTO device_templates (id, tenant_id, name, description, validation, \
             strict_keys, definitions, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(t.id.0)
        .bind(t.tenant_id)
        .bind(&t.name)
        .bind(&t.description)
        .bind(t.validation.as_str())
        .bind(t.strict_keys)
        .bind_json(&t.definitions())?
        .bind(t.created_at)
        .bind(t.updated_at);
        self.exec_unique(stmt, "template", template_conflict(t))
            .await?;
        Ok(())
    }

    async fn get_template(
        &self,
        tenant: TenantId,
        id: TemplateId,
    ) -> Result<Option<DeviceTemplate>> {
        const SQL: &str = concat!(
            "SELECT ",
            template_cols!(),
            " FROM device_templates t WHERE t.id = $1 AND t.tenant_id = $2"
        );
        self.get_scoped(SQL, id.0, tenant, template_from_row).await
    }

    async fn list_templates(&self, tenant: TenantId, page: Page) -> Result<Paged<DeviceTemplate>> {
        const SQL: &str = concat!(
            "SELECT ",
            template_cols!(),
            " FROM device_templates t WHERE t.tenant_id = $1 ORDER BY t.name, t.id \
             LIMIT $2 OFFSET $3"
        );
        const COUNT: &str = "SELECT COUNT(*) AS n FROM device_templates WHERE tenant_id = $1";
        self.page_scoped(SQL, COUNT, tenant, page, template_from_row)
            .await
    }

    async fn update_template(&self, t: &DeviceTemplate) -> Result<()> {
        let stmt = Stmt::new(
            "UPDATE device_templates SET name = $1, description = $2, validation = $3, \
             strict_keys = $4, definitions = $5, updated_at = $6 \
             WHERE id = $7 AND tenant_id = $8",
        )
        .bind(&t.name)
        .bind(&t.description)
        .bind(t.validation.as_str())
        .bind(t.strict_keys)
        .bind_json(&t.definitions())?
        .bind(t.updated_at)
        .bind(t.id.0)
        .bind(t.tenant_id);
        let n = self
            .exec_unique(stmt, "template", template_conflict(t))
            .await?;
        found(n, "template", t.id)
    }

    async fn delete_template(&self, tenant: TenantId, id: TemplateId) -> Result<()> {
        let mut tx = self.begin(Some((LOCK, tenant))).await?;
        const USERS: &str = "SELECT COUNT(*) AS n FROM device_profiles \
             WHERE template_id = $1 AND tenant_id = $2";
        let users = tx
            .opt(Stmt::new(USERS).bind(id.0).bind(tenant), |r| r.int("n"))
            .await?
            .unwrap_or(0);
        if users > 0 {
            return Err(Error::Conflict(format!(
                "template {id} is used by {users} device profile(s)"
            )));
        }
        let stmt = Stmt::new("DELETE FROM device_templates WHERE id = $1 AND tenant_id = $2")
            .bind(id.0)
            .bind(tenant);
        let n = tx.exec(stmt).await?;
        found(n, "template", id)?;
        tx.commit().await
    }

    async fn template_of_profile(
        &self,
        tenant: TenantId,
        profile: ProfileId,
    ) -> Result<Option<DeviceTemplate>> {
        const SQL: &str = concat!(
            "SELECT ",
            template_cols!(),
            " FROM device_profiles p JOIN device_templates t \
             ON t.id = p.template_id AND t.tenant_id = p.tenant_id \
             WHERE p.id = $1 AND p.tenant_id = $2"
        );
        self.get_scoped(SQL, profile, tenant, template_from_row)
            .await
    }
}
