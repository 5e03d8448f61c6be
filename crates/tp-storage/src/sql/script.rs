//! [`ScriptStore`] of the SQL store: data scripts (table of migration
//! `data_scripts`).
//!
//! A script is inserted only beside its profile in the same tenant (an
//! `INSERT .. SELECT` from `device_profiles`), and the profile's deletion cascades to
//! its scripts. One enabled script per profile and type is a partial unique index
//! (`data_scripts_one_enabled`), so it holds for every writer and node.

use async_trait::async_trait;
use tp_core::script::{DataScript, ScriptFilter, ScriptStore, ScriptType};
use tp_core::{Error, ProfileId, Result, ScriptId, TenantId};

use super::{Dialect, SqlRow, SqlStore, Stmt, UniqueViolation, found};

fn script_from_row(row: &impl SqlRow) -> Result<DataScript> {
    Ok(DataScript {
        id: ScriptId(row.uuid("id")?),
        tenant_id: TenantId(row.uuid("tenant_id")?),
        profile_id: ProfileId(row.uuid("profile_id")?),
        script_type: row.parsed("script_type", ScriptType::parse)?,
        name: row.text("name")?,
        content: row.text("content")?,
        enabled: row.bool("enabled")?,
        description: row.opt_text("description")?,
        created_at: row.int("created_at")?,
        updated_at: row.int("updated_at")?,
    })
}

macro_rules! script_cols {
    () => {
        "id, tenant_id, profile_id, script_type, name, content, enabled, description, \
         created_at, updated_at"
    };
}

/// Whether a unique violation of `data_scripts` is its primary key (a taken id);
/// the only other unique key is the one enabled script per profile and type.
fn is_primary_key(v: &UniqueViolation) -> bool {
    v.names("data_scripts", "id")
}

fn one_enabled_conflict(script: &DataScript) -> Error {
    Error::Conflict(format!(
        "profile {} already has an enabled {} script; disable it first",
        script.profile_id, script.script_type
    ))
}

impl<D: Dialect> SqlStore<D> {
    /// Maps a unique violation of a script write: the one-enabled index is a
    /// conflict, the primary key an existing id.
    fn script_write_error(&self, e: sqlx::Error, script: &DataScript) -> Error {
        match D::unique_violation(&e) {
            Some(v) if is_primary_key(&v) => Error::AlreadyExists {
                entity: "script",
                id: script.id.to_string(),
            },
            Some(_) => one_enabled_conflict(script),
            None => D::error(e),
        }
    }
}

#[async_trait]
impl<D: Dialect> ScriptStore for SqlStore<D> {
    async fn create_script(&self, script: &DataScript) -> Result<()> {
        let stmt = Stmt::new(concat!(
            "INSERT INTO data_scripts (",
            script_cols!(),
            ") SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 FROM device_profiles \
             WHERE id = $3 AND tenant_id = $2"
        ))
        .bind(script.id)
        .bind(script.tenant_id)
        .bind(script.profile_id)
        .bind(script.script_type.letter())
        .bind(&script.name)
        .bind(&script.content)
        .bind(script.enabled)
        .bind(&script.description)
        .bind(script.created_at)
        .bind(script.updated_at);
        let rows = self
            .exec_raw(stmt)
            .await
            .map_err(|e| self.script_write_error(e, script))?;
        if rows == 0 {
            return Err(Error::unprocessable(
                "profile_id",
                "is not a device profile of this tenant",
            ));
        }
        Ok(())
    }

    async fn get_script(&self, tenant: TenantId, id: ScriptId) -> Result<Option<DataScript>> {
        const SQL: &str = concat!(
            "SELECT ",
            script_cols!(),
            " FROM data_scripts WHERE id = $1 AND tenant_id = $2"
        );
        self.get_scoped(SQL, id, tenant, script_from_row).await
    }

    async fn list_scripts(
        &self,
        tenant: TenantId,
        filter: ScriptFilter,
    ) -> Result<Vec<DataScript>> {
        const SQL: &str = concat!(
            "SELECT ",
            script_cols!(),
            " FROM data_scripts WHERE tenant_id = $1 AND ($2 IS NULL OR profile_id = $2) \
             AND ($3 IS NULL OR script_type = $3) \
             ORDER BY profile_id, script_type, name, id"
        );
        let stmt = Stmt::new(SQL)
            .bind(tenant)
            .bind(filter.profile_id)
            .bind(filter.script_type.map(ScriptType::letter));
        self.all(stmt, script_from_row).await
    }

    async fn update_script(&self, script: &DataScript) -> Result<()> {
        let stmt = Stmt::new(
            "UPDATE data_scripts SET name = $1, content = $2, script_type = $3, enabled = $4, \
             description = $5, updated_at = $6 WHERE id = $7 AND tenant_id = $8",
        )
        .bind(&script.name)
        .bind(&script.content)
        .bind(script.script_type.letter())
        .bind(script.enabled)
        .bind(&script.description)
        .bind(script.updated_at)
        .bind(script.id)
        .bind(script.tenant_id);
        let rows = self
            .exec_raw(stmt)
            .await
            .map_err(|e| self.script_write_error(e, script))?;
        found(rows, "script", script.id)
    }

    async fn delete_script(&self, tenant: TenantId, id: ScriptId) -> Result<bool> {
        let rows = self
            .exec(
                Stmt::new("DELETE FROM data_scripts WHERE id = $1 AND tenant_id = $2")
                    .bind(id)
                    .bind(tenant),
            )
            .await?;
        Ok(rows > 0)
    }

    async fn enabled_script(
        &self,
        profile: ProfileId,
        script_type: ScriptType,
    ) -> Result<Option<DataScript>> {
        const SQL: &str = concat!(
            "SELECT ",
            script_cols!(),
            " FROM data_scripts WHERE profile_id = $1 AND script_type = $2 AND enabled"
        );
        self.opt(
            Stmt::new(SQL).bind(profile).bind(script_type.letter()),
            script_from_row,
        )
        .await
    }

    async fn enabled_script_keys(&self) -> Result<Vec<(ProfileId, ScriptType)>> {
        self.all(
            Stmt::new("SELECT profile_id, script_type FROM data_scripts WHERE enabled"),
            |row| {
                Ok((
                    ProfileId(row.uuid("profile_id")?),
                    row.parsed("script_type", ScriptType::parse)?,
                ))
            },
        )
        .await
    }
}
