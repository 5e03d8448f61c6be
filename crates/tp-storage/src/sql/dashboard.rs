//! [`DashboardStore`] of the SQL store: dashboards (table of migration `dashboards`).
//!
//! The widgets are one JSON column (`jsonb` / text). One home dashboard per tenant is
//! a partial unique index (`dashboards_one_home`); a write that makes a dashboard
//! home first unsets the tenant's other one in the same transaction, under the
//! tenant's dashboard lock so two such writes cannot interleave.

use async_trait::async_trait;
use tp_core::dashboard::{Dashboard, DashboardStore};
use tp_core::{DashboardId, Page, Paged, Result, TenantId};

use super::{Dialect, SqlRow, SqlStore, Stmt, found};

/// Lock space of a tenant's dashboard writes that move the home flag.
const LOCK: &str = "dashboards";

fn dashboard_from_row(row: &impl SqlRow) -> Result<Dashboard> {
    Ok(Dashboard {
        id: DashboardId(row.uuid("id")?),
        tenant_id: TenantId(row.uuid("tenant_id")?),
        name: row.text("name")?,
        description: row.opt_text("description")?,
        home: row.bool("home")?,
        widgets: row.json("widgets")?,
        created_at: row.int("created_at")?,
        updated_at: row.int("updated_at")?,
    })
}

macro_rules! dashboard_cols {
    () => {
        "id, tenant_id, name, description, home, widgets, created_at, updated_at"
    };
}

/// Unsets the tenant's home dashboard other than `keep`.
fn unset_home(tenant: TenantId, keep: DashboardId) -> Stmt {
    Stmt::new("UPDATE dashboards SET home = $1 WHERE tenant_id = $2 AND home AND id <> $3")
        .bind(false)
        .bind(tenant)
        .bind(keep)
}

#[async_trait]
impl<D: Dialect> DashboardStore for SqlStore<D> {
    async fn create_dashboard(&self, d: &Dashboard) -> Result<()> {
        let mut tx = self.begin(Some((LOCK, d.tenant_id))).await?;
        if d.home {
            tx.exec(unset_home(d.tenant_id, d.id)).await?;
        }
        let stmt = Stmt::new(concat!(
            "INSERT INTO dashboards (",
            dashboard_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(d.id)
        .bind(d.tenant_id)
        .bind(&d.name)
        .bind(&d.description)
        .bind(d.home)
        .bind_json(&d.widgets)?
        .bind(d.created_at)
        .bind(d.updated_at);
        tx.exec_unique(stmt, "dashboard", |_| d.id.to_string())
            .await?;
        tx.commit().await
    }

    async fn get_dashboard(&self, tenant: TenantId, id: DashboardId) -> Result<Option<Dashboard>> {
        const SQL: &str = concat!(
            "SELECT ",
            dashboard_cols!(),
            " FROM dashboards WHERE id = $1 AND tenant_id = $2"
        );
        self.get_scoped(SQL, id, tenant, dashboard_from_row).await
    }

    async fn list_dashboards(&self, tenant: TenantId, page: Page) -> Result<Paged<Dashboard>> {
        const SQL: &str = concat!(
            "SELECT ",
            dashboard_cols!(),
            " FROM dashboards WHERE tenant_id = $1 ORDER BY name, id LIMIT $2 OFFSET $3"
        );
        const COUNT: &str = "SELECT COUNT(*) AS n FROM dashboards WHERE tenant_id = $1";
        self.page_scoped(SQL, COUNT, tenant, page, dashboard_from_row)
            .await
    }

    async fn update_dashboard(&self, d: &Dashboard) -> Result<()> {
        let mut tx = self.begin(Some((LOCK, d.tenant_id))).await?;
        if d.home {
            tx.exec(unset_home(d.tenant_id, d.id)).await?;
        }
        let stmt = Stmt::new(
            "UPDATE dashboards SET name = $1, description = $2, home = $3, widgets = $4, \
             updated_at = $5 WHERE id = $6 AND tenant_id = $7",
        )
        .bind(&d.name)
        .bind(&d.description)
        .bind(d.home)
        .bind_json(&d.widgets)?
        .bind(d.updated_at)
        .bind(d.id)
        .bind(d.tenant_id);
        let rows = tx.exec(stmt).await?;
        // Dropping the transaction rolls the unset back.
        found(rows, "dashboard", d.id)?;
        tx.commit().await
    }

    async fn delete_dashboard(&self, tenant: TenantId, id: DashboardId) -> Result<bool> {
        let rows = self
            .exec(
                Stmt::new("DELETE FROM dashboards WHERE id = $1 AND tenant_id = $2")
                    .bind(id)
                    .bind(tenant),
            )
            .await?;
        Ok(rows > 0)
    }

    async fn home_dashboard(&self, tenant: TenantId) -> Result<Option<Dashboard>> {
        const SQL: &str = concat!(
            "SELECT ",
            dashboard_cols!(),
            " FROM dashboards WHERE tenant_id = $1 AND home"
        );
        self.opt(Stmt::new(SQL).bind(tenant), dashboard_from_row)
            .await
    }
}
