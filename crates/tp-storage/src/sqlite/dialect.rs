//! The SQLite [`Dialect`] of the SQL store: UUIDs as hyphenated text, JSON as text,
//! booleans as integers, one writer connection.

use async_trait::async_trait;
use sqlx::error::ErrorKind;
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::{AssertSqlSafe, Row, Sqlite, Transaction};
use tp_core::{Error, Result, TenantId};
use uuid::Uuid;

use super::Pools;
use super::error::{SqliteError, db};
use crate::sql::{Arg, Dialect, DialectKind, On, SqlRow, Stmt, UniqueViolation};

/// [`Dialect`] of a SQLite database file (or private in-memory database).
#[derive(Debug)]
pub struct SqliteDialect {
    pub(super) pools: Pools,
}

type Query = sqlx::query::Query<'static, Sqlite, SqliteArguments>;

fn query(stmt: Stmt) -> Query {
    let mut q = sqlx::query(AssertSqlSafe(stmt.sql));
    for arg in stmt.args {
        q = match arg {
            Arg::Int(v) => q.bind(v),
            Arg::Real(v) => q.bind(v),
            Arg::Bool(v) => q.bind(v),
            Arg::Text(v) => q.bind(v),
            Arg::Uuid(v) => q.bind(v.map(|u| u.hyphenated().to_string())),
            Arg::Json(v) => q.bind(v.map(|j| j.to_string())),
        };
    }
    q
}

#[async_trait]
impl Dialect for SqliteDialect {
    const KIND: DialectKind = DialectKind::Sqlite;
    type Row = SqliteRow;
    type Tx = Transaction<'static, Sqlite>;

    async fn execute(&self, on: On<'_, Self::Tx>, stmt: Stmt) -> Result<u64, sqlx::Error> {
        let q = query(stmt);
        let done = match on {
            On::Reader => q.execute(&self.pools.reader).await?,
            On::Writer => q.execute(&self.pools.writer).await?,
            On::Tx(tx) => q.execute(&mut **tx).await?,
        };
        Ok(done.rows_affected())
    }

    async fn fetch_all(
        &self,
        on: On<'_, Self::Tx>,
        stmt: Stmt,
    ) -> Result<Vec<SqliteRow>, sqlx::Error> {
        let q = query(stmt);
        match on {
            On::Reader => q.fetch_all(&self.pools.reader).await,
            On::Writer => q.fetch_all(&self.pools.writer).await,
            On::Tx(tx) => q.fetch_all(&mut **tx).await,
        }
    }

    async fn fetch_optional(
        &self,
        on: On<'_, Self::Tx>,
        stmt: Stmt,
    ) -> Result<Option<SqliteRow>, sqlx::Error> {
        let q = query(stmt);
        match on {
            On::Reader => q.fetch_optional(&self.pools.reader).await,
            On::Writer => q.fetch_optional(&self.pools.writer).await,
            On::Tx(tx) => q.fetch_optional(&mut **tx).await,
        }
    }

    /// `BEGIN IMMEDIATE` on the writer: SQLite has one writer, so a tenant lock would
    /// add nothing, and taking the write lock up front makes a concurrent writer wait
    /// (busy timeout) instead of failing a read-then-write transaction.
    async fn begin(
        &self,
        _lock: Option<(&'static str, TenantId)>,
    ) -> Result<Self::Tx, sqlx::Error> {
        self.pools.writer.begin_with("BEGIN IMMEDIATE").await
    }

    async fn commit(tx: Self::Tx) -> Result<(), sqlx::Error> {
        tx.commit().await
    }

    async fn healthcheck(&self) -> Result<()> {
        self.pools.healthcheck().await
    }

    fn error(e: sqlx::Error) -> Error {
        db(e)
    }

    fn unique_violation(e: &sqlx::Error) -> Option<UniqueViolation> {
        match e {
            sqlx::Error::Database(d) if d.kind() == ErrorKind::UniqueViolation => Some(
                UniqueViolation::new(DialectKind::Sqlite, d.message().to_owned()),
            ),
            _ => None,
        }
    }

    fn backend() -> &'static str {
        super::error::BACKEND
    }
}

fn decode(col: &'static str, e: impl ToString) -> Error {
    SqliteError::decode(col, e).into()
}

fn get<'r, T>(row: &'r SqliteRow, col: &'static str) -> Result<T>
where
    T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
{
    row.try_get(col).map_err(|e| decode(col, e))
}

impl SqlRow for SqliteRow {
    fn opt_text(&self, col: &'static str) -> Result<Option<String>> {
        get(self, col)
    }

    fn opt_int(&self, col: &'static str) -> Result<Option<i64>> {
        get(self, col)
    }

    /// SQLite stores NaN as NULL; a `REAL` column read back as NULL is NaN only where
    /// the caller knows the column cannot be NULL otherwise.
    fn opt_real(&self, col: &'static str) -> Result<Option<f64>> {
        get(self, col)
    }

    fn opt_bool(&self, col: &'static str) -> Result<Option<bool>> {
        get(self, col)
    }

    fn opt_uuid(&self, col: &'static str) -> Result<Option<Uuid>> {
        let s: Option<String> = get(self, col)?;
        s.map(|s| Uuid::parse_str(&s).map_err(|e| decode(col, e)))
            .transpose()
    }

    fn opt_json_value(&self, col: &'static str) -> Result<Option<serde_json::Value>> {
        let s: Option<String> = get(self, col)?;
        s.map(|s| serde_json::from_str(&s).map_err(|e| decode(col, e)))
            .transpose()
    }

    fn decode_error(&self, col: &'static str, reason: String) -> Error {
        decode(col, reason)
    }
}
