//! [`OtaStore`] of the SQL store: packages, tasks and their per-device details
//! (tables of migration `ota`: sqlite `0009`, postgres `0010`).
//!
//! Every statement filters by `tenant_id`. A task's counts are one grouped query over
//! its details on each read, so they never drift from the details. A package that a
//! task refers to cannot be deleted (foreign key; reported as a conflict), and a
//! task's details go with it (cascade).

use async_trait::async_trait;
use tp_core::ota::{OtaCounts, OtaPackage, OtaState, OtaStore, OtaTask, OtaTaskDetail};
use tp_core::{DeviceId, Error, OtaPackageId, OtaTaskId, Page, Paged, ProfileId, Result, TenantId};

use super::{Dialect, SqlRow, SqlStore, Stmt, found, is_foreign_key_violation, paging, to_i64};

macro_rules! package_cols {
    () => {
        "id, tenant_id, name, version, module, profile_id, description, ext_data, \
         sign_method, sign, url, stored, size, sha256, md5, file_name, created_at, updated_at"
    };
}

macro_rules! task_cols {
    () => {
        "id, tenant_id, package_id, name, description, profile_id, created_at"
    };
}

macro_rules! detail_cols {
    () => {
        "task_id, tenant_id, package_id, device_id, state, progress, step, code, description, \
         message_id, created_at, updated_at"
    };
}

fn package_from_row(row: &impl SqlRow) -> Result<OtaPackage> {
    Ok(OtaPackage {
        id: OtaPackageId(row.uuid("id")?),
        tenant_id: TenantId(row.uuid("tenant_id")?),
        name: row.text("name")?,
        version: row.text("version")?,
        module: row.text("module")?,
        profile_id: row.opt_uuid("profile_id")?.map(ProfileId),
        description: row.opt_text("description")?,
        ext_data: row.opt_json_value("ext_data")?,
        sign_method: row.opt_text("sign_method")?,
        sign: row.opt_text("sign")?,
        url: row.opt_text("url")?,
        stored: row.bool("stored")?,
        size: row.opt_int("size")?.map(i64::unsigned_abs),
        sha256: row.opt_text("sha256")?,
        md5: row.opt_text("md5")?,
        file_name: row.opt_text("file_name")?,
        created_at: row.int("created_at")?,
        updated_at: row.int("updated_at")?,
    })
}

fn task_from_row(row: &impl SqlRow) -> Result<OtaTask> {
    Ok(OtaTask {
        id: OtaTaskId(row.uuid("id")?),
        tenant_id: TenantId(row.uuid("tenant_id")?),
        package_id: OtaPackageId(row.uuid("package_id")?),
        name: row.text("name")?,
        description: row.opt_text("description")?,
        profile_id: row.opt_uuid("profile_id")?.map(ProfileId),
        created_at: row.int("created_at")?,
        counts: OtaCounts::default(),
    })
}

fn detail_from_row(row: &impl SqlRow) -> Result<OtaTaskDetail> {
    let small = |col: &'static str| -> Result<Option<i32>> {
        row.opt_int(col)?
            .map(|v| i32::try_from(v).map_err(|e| row.decode_error(col, e.to_string())))
            .transpose()
    };
    Ok(OtaTaskDetail {
        task_id: OtaTaskId(row.uuid("task_id")?),
        tenant_id: TenantId(row.uuid("tenant_id")?),
        package_id: OtaPackageId(row.uuid("package_id")?),
        device_id: DeviceId(row.uuid("device_id")?),
        state: row.parsed("state", str::parse::<OtaState>)?,
        progress: small("progress")?.and_then(|p| u8::try_from(p).ok()),
        step: small("step")?,
        code: small("code")?,
        description: row.opt_text("description")?,
        message_id: row.opt_text("message_id")?,
        created_at: row.int("created_at")?,
        updated_at: row.int("updated_at")?,
    })
}

fn insert_detail(d: &OtaTaskDetail) -> Stmt {
    Stmt::new(concat!(
        "INSERT INTO ota_task_details (",
        detail_cols!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
    ))
    .bind(d.task_id)
    .bind(d.tenant_id)
    .bind(d.package_id)
    .bind(d.device_id)
    .bind(d.state.as_str())
    .bind(d.progress.map(i64::from))
    .bind(d.step.map(i64::from))
    .bind(d.code.map(i64::from))
    .bind(&d.description)
    .bind(&d.message_id)
    .bind(d.created_at)
    .bind(d.updated_at)
}

impl<D: Dialect> SqlStore<D> {
    /// Fills in a task's counts from its details.
    async fn with_counts(&self, mut task: OtaTask) -> Result<OtaTask> {
        let rows = self
            .all(
                Stmt::new(
                    "SELECT state, COUNT(*) AS n FROM ota_task_details \
                     WHERE task_id = $1 AND tenant_id = $2 GROUP BY state",
                )
                .bind(task.id)
                .bind(task.tenant_id),
                |r| Ok((r.parsed("state", str::parse::<OtaState>)?, r.int("n")?)),
            )
            .await?;
        for (state, n) in rows {
            task.counts.add(state, n.unsigned_abs());
        }
        Ok(task)
    }
}

#[async_trait]
impl<D: Dialect> OtaStore for SqlStore<D> {
    async fn create_package(&self, p: &OtaPackage) -> Result<()> {
        let stmt = Stmt::new(concat!(
            "INSERT INTO ota_packages (",
            package_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
             $17, $18)"
        ))
        .bind(p.id)
        .bind(p.tenant_id)
        .bind(&p.name)
        .bind(&p.version)
        .bind(&p.module)
        .bind(p.profile_id)
        .bind(&p.description)
        .bind(super::Arg::Json(p.ext_data.clone()))
        .bind(&p.sign_method)
        .bind(&p.sign)
        .bind(&p.url)
        .bind(p.stored)
        .bind(p.size.map(to_i64))
        .bind(&p.sha256)
        .bind(&p.md5)
        .bind(&p.file_name)
        .bind(p.created_at)
        .bind(p.updated_at);
        let id = format!("{} {}", p.name, p.version);
        self.exec_unique(stmt, "ota_package", |_| id).await?;
        Ok(())
    }

    async fn get_package(&self, tenant: TenantId, id: OtaPackageId) -> Result<Option<OtaPackage>> {
        const SQL: &str = concat!(
            "SELECT ",
            package_cols!(),
            " FROM ota_packages WHERE id = $1 AND tenant_id = $2"
        );
        self.get_scoped(SQL, id, tenant, package_from_row).await
    }

    async fn list_packages(&self, tenant: TenantId, page: Page) -> Result<Paged<OtaPackage>> {
        const SQL: &str = concat!(
            "SELECT ",
            package_cols!(),
            " FROM ota_packages WHERE tenant_id = $1 ORDER BY created_at DESC, id DESC \
             LIMIT $2 OFFSET $3"
        );
        const COUNT: &str = "SELECT COUNT(*) AS n FROM ota_packages WHERE tenant_id = $1";
        self.page_scoped(SQL, COUNT, tenant, page, package_from_row)
            .await
    }

    async fn update_package(&self, p: &OtaPackage) -> Result<()> {
        let stmt = Stmt::new(
            "UPDATE ota_packages SET name = $1, version = $2, module = $3, profile_id = $4, \
             description = $5, ext_data = $6, sign_method = $7, sign = $8, url = $9, \
             stored = $10, size = $11, sha256 = $12, md5 = $13, file_name = $14, \
             updated_at = $15 WHERE id = $16 AND tenant_id = $17",
        )
        .bind(&p.name)
        .bind(&p.version)
        .bind(&p.module)
        .bind(p.profile_id)
        .bind(&p.description)
        .bind(super::Arg::Json(p.ext_data.clone()))
        .bind(&p.sign_method)
        .bind(&p.sign)
        .bind(&p.url)
        .bind(p.stored)
        .bind(p.size.map(to_i64))
        .bind(&p.sha256)
        .bind(&p.md5)
        .bind(&p.file_name)
        .bind(p.updated_at)
        .bind(p.id)
        .bind(p.tenant_id);
        let id = format!("{} {}", p.name, p.version);
        let n = self.exec_unique(stmt, "ota_package", |_| id).await?;
        found(n, "ota_package", p.id)
    }

    async fn delete_package(&self, tenant: TenantId, id: OtaPackageId) -> Result<()> {
        let stmt = Stmt::new("DELETE FROM ota_packages WHERE id = $1 AND tenant_id = $2")
            .bind(id)
            .bind(tenant);
        match self.exec_raw(stmt).await {
            Ok(n) => found(n, "ota_package", id),
            Err(e) if is_foreign_key_violation(&e) => Err(Error::Conflict(
                "the package is sent by a task; delete its tasks first".to_owned(),
            )),
            Err(e) => Err(D::error(e)),
        }
    }

    async fn create_task(&self, task: &OtaTask, details: &[OtaTaskDetail]) -> Result<()> {
        let mut tx = self.begin(Some(("ota", task.tenant_id))).await?;
        let package = tx
            .opt(
                Stmt::new("SELECT id FROM ota_packages WHERE id = $1 AND tenant_id = $2")
                    .bind(task.package_id)
                    .bind(task.tenant_id),
                |r| r.uuid("id"),
            )
            .await?;
        if package.is_none() {
            return Err(Error::not_found("ota_package", task.package_id));
        }
        tx.exec_unique(
            Stmt::new(concat!(
                "INSERT INTO ota_tasks (",
                task_cols!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7)"
            ))
            .bind(task.id)
            .bind(task.tenant_id)
            .bind(task.package_id)
            .bind(&task.name)
            .bind(&task.description)
            .bind(task.profile_id)
            .bind(task.created_at),
            "ota_task",
            |_| task.id.to_string(),
        )
        .await?;
        for d in details {
            tx.exec_unique(insert_detail(d), "ota_task_detail", |_| {
                d.device_id.to_string()
            })
            .await?;
        }
        tx.commit().await
    }

    async fn get_task(&self, tenant: TenantId, id: OtaTaskId) -> Result<Option<OtaTask>> {
        const SQL: &str = concat!(
            "SELECT ",
            task_cols!(),
            " FROM ota_tasks WHERE id = $1 AND tenant_id = $2"
        );
        match self.get_scoped(SQL, id, tenant, task_from_row).await? {
            Some(t) => Ok(Some(self.with_counts(t).await?)),
            None => Ok(None),
        }
    }

    async fn list_tasks(
        &self,
        tenant: TenantId,
        package: Option<OtaPackageId>,
        page: Page,
    ) -> Result<Paged<OtaTask>> {
        const SQL: &str = concat!(
            "SELECT ",
            task_cols!(),
            " FROM ota_tasks WHERE tenant_id = $1 AND ($2 IS NULL OR package_id = $2) \
             ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4"
        );
        const COUNT: &str = "SELECT COUNT(*) AS n FROM ota_tasks \
                             WHERE tenant_id = $1 AND ($2 IS NULL OR package_id = $2)";
        let (limit, offset) = paging(page);
        let tasks = self
            .all(
                Stmt::new(SQL)
                    .bind(tenant)
                    .bind(package)
                    .bind(limit)
                    .bind(offset),
                task_from_row,
            )
            .await?;
        let total = self
            .count(Stmt::new(COUNT).bind(tenant).bind(package))
            .await?;
        let mut items = Vec::with_capacity(tasks.len());
        for t in tasks {
            items.push(self.with_counts(t).await?);
        }
        Ok(Paged { items, total })
    }

    async fn delete_task(&self, tenant: TenantId, id: OtaTaskId) -> Result<()> {
        let n = self
            .exec(
                Stmt::new("DELETE FROM ota_tasks WHERE id = $1 AND tenant_id = $2")
                    .bind(id)
                    .bind(tenant),
            )
            .await?;
        found(n, "ota_task", id)
    }

    async fn list_details(
        &self,
        tenant: TenantId,
        task: OtaTaskId,
        page: Page,
    ) -> Result<Paged<OtaTaskDetail>> {
        const SQL: &str = concat!(
            "SELECT ",
            detail_cols!(),
            " FROM ota_task_details WHERE tenant_id = $1 AND task_id = $2 \
             ORDER BY created_at, device_id LIMIT $3 OFFSET $4"
        );
        const COUNT: &str =
            "SELECT COUNT(*) AS n FROM ota_task_details WHERE tenant_id = $1 AND task_id = $2";
        let (limit, offset) = paging(page);
        let items = self
            .all(
                Stmt::new(SQL)
                    .bind(tenant)
                    .bind(task)
                    .bind(limit)
                    .bind(offset),
                detail_from_row,
            )
            .await?;
        let total = self.count(Stmt::new(COUNT).bind(tenant).bind(task)).await?;
        Ok(Paged { items, total })
    }

    async fn get_detail(
        &self,
        tenant: TenantId,
        task: OtaTaskId,
        device: DeviceId,
    ) -> Result<Option<OtaTaskDetail>> {
        const SQL: &str = concat!(
            "SELECT ",
            detail_cols!(),
            " FROM ota_task_details WHERE tenant_id = $1 AND task_id = $2 AND device_id = $3"
        );
        self.opt(
            Stmt::new(SQL).bind(tenant).bind(task).bind(device),
            detail_from_row,
        )
        .await
    }

    async fn update_detail(&self, d: &OtaTaskDetail) -> Result<()> {
        let stmt = Stmt::new(
            "UPDATE ota_task_details SET state = $1, progress = $2, step = $3, code = $4, \
             description = $5, message_id = $6, updated_at = $7 \
             WHERE tenant_id = $8 AND task_id = $9 AND device_id = $10",
        )
        .bind(d.state.as_str())
        .bind(d.progress.map(i64::from))
        .bind(d.step.map(i64::from))
        .bind(d.code.map(i64::from))
        .bind(&d.description)
        .bind(&d.message_id)
        .bind(d.updated_at)
        .bind(d.tenant_id)
        .bind(d.task_id)
        .bind(d.device_id);
        let n = self.exec(stmt).await?;
        found(n, "ota_task_detail", d.device_id)
    }

    async fn active_details(
        &self,
        tenant: TenantId,
        device: DeviceId,
    ) -> Result<Vec<OtaTaskDetail>> {
        const SQL: &str = concat!(
            "SELECT ",
            detail_cols!(),
            " FROM ota_task_details WHERE tenant_id = $1 AND device_id = $2 \
             AND state IN ('pending', 'notified', 'downloading', 'upgrading') \
             ORDER BY created_at DESC, task_id DESC"
        );
        self.all(Stmt::new(SQL).bind(tenant).bind(device), detail_from_row)
            .await
    }

    async fn package_detail(
        &self,
        tenant: TenantId,
        device: DeviceId,
        package: OtaPackageId,
    ) -> Result<Option<OtaTaskDetail>> {
        const SQL: &str = concat!(
            "SELECT ",
            detail_cols!(),
            " FROM ota_task_details WHERE tenant_id = $1 AND device_id = $2 \
             AND package_id = $3 AND state <> 'cancelled' \
             ORDER BY created_at DESC, task_id DESC LIMIT 1"
        );
        self.opt(
            Stmt::new(SQL).bind(tenant).bind(device).bind(package),
            detail_from_row,
        )
        .await
    }
}
