//! The PostgreSQL [`Dialect`] of the SQL store: native `uuid`, `jsonb` and `boolean`
//! columns, one pool, tenant-scoped advisory locks.

use async_trait::async_trait;
use sqlx::error::ErrorKind;
use sqlx::postgres::{PgArguments, PgPool, PgRow};
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, Column, Postgres, Row, Transaction, TypeInfo};
use tp_core::{Error, Result, TenantId};
use uuid::Uuid;

use super::error::{PgError, db};
use crate::sql::{Arg, Dialect, DialectKind, On, SqlRow, Stmt, UniqueViolation};

/// [`Dialect`] of a PostgreSQL schema.
#[derive(Debug, Clone)]
pub struct PostgresDialect {
    pub(super) pool: PgPool,
}

type Query = sqlx::query::Query<'static, Postgres, PgArguments>;

fn query(stmt: Stmt) -> Query {
    let mut q = sqlx::query(AssertSqlSafe(stmt.sql));
    for arg in stmt.args {
        q = match arg {
            Arg::Int(v) => q.bind(v),
            Arg::Real(v) => q.bind(v),
            Arg::Bool(v) => q.bind(v),
            Arg::Text(v) => q.bind(v),
            Arg::Uuid(v) => q.bind(v),
            Arg::Json(v) => q.bind(v.map(Json)),
        };
    }
    q
}

/// Folds a tenant id into the `int4` half of a two-key advisory lock.
fn tenant_lock_key(tenant: TenantId) -> i32 {
    let b = tenant.0.as_bytes();
    let mut key = 0u32;
    for chunk in b.chunks(4) {
        key ^= u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    i32::from_le_bytes(key.to_le_bytes())
}

#[async_trait]
impl Dialect for PostgresDialect {
    const KIND: DialectKind = DialectKind::Postgres;
    type Row = PgRow;
    type Tx = Transaction<'static, Postgres>;

    async fn execute(&self, on: On<'_, Self::Tx>, stmt: Stmt) -> Result<u64, sqlx::Error> {
        let q = query(stmt);
        let done = match on {
            On::Reader | On::Writer => q.execute(&self.pool).await?,
            On::Tx(tx) => q.execute(&mut **tx).await?,
        };
        Ok(done.rows_affected())
    }

    async fn fetch_all(&self, on: On<'_, Self::Tx>, stmt: Stmt) -> Result<Vec<PgRow>, sqlx::Error> {
        let q = query(stmt);
        match on {
            On::Reader | On::Writer => q.fetch_all(&self.pool).await,
            On::Tx(tx) => q.fetch_all(&mut **tx).await,
        }
    }

    async fn fetch_optional(
        &self,
        on: On<'_, Self::Tx>,
        stmt: Stmt,
    ) -> Result<Option<PgRow>, sqlx::Error> {
        let q = query(stmt);
        match on {
            On::Reader | On::Writer => q.fetch_optional(&self.pool).await,
            On::Tx(tx) => q.fetch_optional(&mut **tx).await,
        }
    }

    /// With a lock: `pg_advisory_xact_lock(hash(schema.space), tenant)`, released at
    /// commit or rollback, so installations sharing a database (other schemas) do not
    /// wait on each other.
    async fn begin(&self, lock: Option<(&'static str, TenantId)>) -> Result<Self::Tx, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        if let Some((space, tenant)) = lock {
            sqlx::query(
                "SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.' || $1), $2)",
            )
            .bind(space)
            .bind(tenant_lock_key(tenant))
            .execute(&mut *tx)
            .await?;
        }
        Ok(tx)
    }

    async fn commit(tx: Self::Tx) -> Result<(), sqlx::Error> {
        tx.commit().await
    }

    async fn healthcheck(&self) -> Result<()> {
        super::healthcheck(&self.pool).await
    }

    fn error(e: sqlx::Error) -> Error {
        db(e)
    }

    fn unique_violation(e: &sqlx::Error) -> Option<UniqueViolation> {
        match e {
            sqlx::Error::Database(d) if d.kind() == ErrorKind::UniqueViolation => Some(
                UniqueViolation::new(DialectKind::Postgres, d.constraint().unwrap_or_default()),
            ),
            _ => None,
        }
    }

    fn backend() -> &'static str {
        super::error::BACKEND
    }
}

fn decode(col: &'static str, e: impl ToString) -> Error {
    PgError::decode(col, e).into()
}

fn get<'r, T>(row: &'r PgRow, col: &'static str) -> Result<T>
where
    T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    row.try_get(col).map_err(|e| decode(col, e))
}

impl SqlRow for PgRow {
    fn opt_text(&self, col: &'static str) -> Result<Option<String>> {
        get(self, col)
    }

    fn opt_int(&self, col: &'static str) -> Result<Option<i64>> {
        let ty = self
            .try_column(col)
            .map_err(|e| decode(col, e))?
            .type_info()
            .name();
        match ty {
            "INT2" => Ok(get::<Option<i16>>(self, col)?.map(i64::from)),
            "INT4" => Ok(get::<Option<i32>>(self, col)?.map(i64::from)),
            _ => get(self, col),
        }
    }

    fn opt_real(&self, col: &'static str) -> Result<Option<f64>> {
        get(self, col)
    }

    fn opt_bool(&self, col: &'static str) -> Result<Option<bool>> {
        get(self, col)
    }

    fn opt_uuid(&self, col: &'static str) -> Result<Option<Uuid>> {
        get(self, col)
    }

    fn opt_json_value(&self, col: &'static str) -> Result<Option<serde_json::Value>> {
        Ok(get::<Option<Json<serde_json::Value>>>(self, col)?.map(|j| j.0))
    }

    fn decode_error(&self, col: &'static str, reason: String) -> Error {
        decode(col, reason)
    }
}
