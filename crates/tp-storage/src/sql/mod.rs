//! One SQL store for every relational backend: [`SqlStore<D>`] implements
//! [`tp_core::MetadataStore`], [`tp_core::AccessStore`] and [`tp_core::rules::RuleStore`]
//! once, over a [`Dialect`] that owns the connections and knows the database's
//! types.
//!
//! The statements are written once, in the SQL both SQLite and PostgreSQL accept:
//! numbered placeholders (`$1`, reused where a value appears twice), `RETURNING`,
//! `ON CONFLICT .. DO UPDATE SET x = excluded.x`, `IS NOT DISTINCT FROM`. Where the two
//! really differ (case-insensitive matching, the lock that serialises a tenant's
//! writes) the dialect supplies the piece ([`Dialect::KIND`], [`Dialect::begin`]).
//! Values travel as [`Arg`]s, which each dialect binds in its own column types (a
//! UUID is `uuid` on PostgreSQL and hyphenated text on SQLite; JSON is `jsonb` or
//! text), and rows are read through [`SqlRow`], so no store code names a driver type.
//!
//! Why not sqlx's generic `Database` bounds: every bound value type needs its own
//! `Encode + Decode + Type` where-clause on every function, and Rust does not imply
//! them from a trait, so the generic code would be mostly bounds. The [`Arg`] enum
//! costs one small allocation per statement, which a metadata write does not notice.

mod access;
mod dashboard;
mod meta;
mod ota;
mod rules;
mod script;
mod thing_model;
mod trends;

use std::borrow::Cow;

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tp_core::{Error, Page, Paged, Result, TenantId};
use uuid::Uuid;

/// Which SQL a [`Dialect`] speaks, for the few statements written per dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialectKind {
    /// SQLite 3.39 or later (for `IS NOT DISTINCT FROM`).
    Sqlite,
    /// PostgreSQL 13 or later.
    Postgres,
}

/// One value bound to a statement parameter.
#[derive(Debug, Clone)]
pub enum Arg {
    /// Any integer column.
    Int(Option<i64>),
    /// A double-precision column.
    Real(Option<f64>),
    /// A boolean (an integer 0/1 on SQLite).
    Bool(Option<bool>),
    /// A text column.
    Text(Option<String>),
    /// An id (`uuid`, or hyphenated text on SQLite).
    Uuid(Option<Uuid>),
    /// A JSON document (`jsonb`, or text on SQLite).
    Json(Option<serde_json::Value>),
}

impl Arg {
    /// A serde value as a JSON column.
    ///
    /// # Errors
    /// [`Error::Invalid`] when the value does not serialize (the model types always do).
    pub fn json<T: Serialize>(v: &T) -> Result<Self> {
        serde_json::to_value(v)
            .map(|v| Arg::Json(Some(v)))
            .map_err(|e| Error::invalid("json", e.to_string()))
    }
}

macro_rules! arg_from {
    ($variant:ident: $($t:ty => $conv:expr),+ $(,)?) => {$(
        impl From<$t> for Arg {
            fn from(v: $t) -> Self {
                #[allow(clippy::redundant_closure_call)]
                Arg::$variant(Some(($conv)(v)))
            }
        }
        impl From<Option<$t>> for Arg {
            fn from(v: Option<$t>) -> Self {
                #[allow(clippy::redundant_closure_call)]
                Arg::$variant(v.map($conv))
            }
        }
    )+};
}

arg_from!(Int: i64 => |v| v, i32 => i64::from, u32 => i64::from);
arg_from!(Real: f64 => |v| v);
arg_from!(Bool: bool => |v| v);
arg_from!(Text: String => |v| v, &str => str::to_owned, &String => String::clone);
arg_from!(Uuid: Uuid => |v| v);

impl From<&Option<String>> for Arg {
    fn from(v: &Option<String>) -> Self {
        Arg::Text(v.clone())
    }
}

/// An id newtype of tp-core (`DeviceId(Uuid)`, ...) binds as its UUID.
macro_rules! arg_from_id {
    ($($t:ty),+ $(,)?) => {$(
        impl From<$t> for Arg {
            fn from(v: $t) -> Self {
                Arg::Uuid(Some(v.0))
            }
        }
        impl From<Option<$t>> for Arg {
            fn from(v: Option<$t>) -> Self {
                Arg::Uuid(v.map(|v| v.0))
            }
        }
    )+};
}

arg_from_id!(
    tp_core::TenantId,
    tp_core::UserId,
    tp_core::DeviceId,
    tp_core::ProfileId,
    tp_core::CommandId,
    tp_core::RoleId,
    tp_core::ApiKeyId,
    tp_core::GroupId,
    tp_core::AuditId,
    tp_core::RuleId,
    tp_core::ScriptId,
    tp_core::DashboardId,
    tp_core::SceneId,
    tp_core::AlarmId,
    tp_core::ChannelId,
    tp_core::NotificationId,
    tp_core::OtaPackageId,
    tp_core::OtaTaskId,
);

/// A statement and its parameters, `$1`.. in order of [`Stmt::bind`].
#[derive(Debug)]
pub struct Stmt {
    pub(crate) sql: Cow<'static, str>,
    pub(crate) args: Vec<Arg>,
}

impl Stmt {
    /// A statement from a constant.
    pub fn new(sql: &'static str) -> Self {
        Self {
            sql: Cow::Borrowed(sql),
            args: Vec::new(),
        }
    }

    /// A statement assembled at run time from constants and placeholders only (never
    /// from values: those are bound).
    pub fn built(sql: String) -> Self {
        Self {
            sql: Cow::Owned(sql),
            args: Vec::new(),
        }
    }

    /// Binds the next parameter.
    #[must_use]
    pub fn bind(mut self, v: impl Into<Arg>) -> Self {
        self.args.push(v.into());
        self
    }

    /// Binds the next parameter as JSON.
    ///
    /// # Errors
    /// See [`Arg::json`].
    pub fn bind_json<T: Serialize>(mut self, v: &T) -> Result<Self> {
        self.args.push(Arg::json(v)?);
        Ok(self)
    }
}

/// Where a statement runs.
#[allow(missing_debug_implementations)]
pub enum On<'a, Tx> {
    /// The connections for reads (on SQLite, not the single writer).
    Reader,
    /// The connection(s) that write.
    Writer,
    /// An open transaction.
    Tx(&'a mut Tx),
}

/// A row of a result, read by column name. Every getter fails with a
/// decode error naming the column when the value has another type.
pub trait SqlRow: Send + Sync {
    /// A text column.
    fn opt_text(&self, col: &'static str) -> Result<Option<String>>;
    /// Any integer column (PostgreSQL `smallint`, `integer`, `bigint`; SQLite `INTEGER`).
    fn opt_int(&self, col: &'static str) -> Result<Option<i64>>;
    /// A double-precision column.
    fn opt_real(&self, col: &'static str) -> Result<Option<f64>>;
    /// A boolean column.
    fn opt_bool(&self, col: &'static str) -> Result<Option<bool>>;
    /// An id column.
    fn opt_uuid(&self, col: &'static str) -> Result<Option<Uuid>>;
    /// A JSON column as a document.
    fn opt_json_value(&self, col: &'static str) -> Result<Option<serde_json::Value>>;
    /// The error for a column whose value this row cannot hold.
    fn decode_error(&self, col: &'static str, reason: String) -> Error;

    /// A text column that must not be NULL.
    fn text(&self, col: &'static str) -> Result<String> {
        self.opt_text(col)?.ok_or_else(|| self.null(col))
    }
    /// An integer column that must not be NULL.
    fn int(&self, col: &'static str) -> Result<i64> {
        self.opt_int(col)?.ok_or_else(|| self.null(col))
    }
    /// A double-precision column that must not be NULL.
    fn real(&self, col: &'static str) -> Result<f64> {
        self.opt_real(col)?.ok_or_else(|| self.null(col))
    }
    /// A boolean column that must not be NULL.
    fn bool(&self, col: &'static str) -> Result<bool> {
        self.opt_bool(col)?.ok_or_else(|| self.null(col))
    }
    /// An id column that must not be NULL.
    fn uuid(&self, col: &'static str) -> Result<Uuid> {
        self.opt_uuid(col)?.ok_or_else(|| self.null(col))
    }
    /// A JSON column as a serde type.
    fn json<T: DeserializeOwned>(&self, col: &'static str) -> Result<T>
    where
        Self: Sized,
    {
        let v = self.opt_json_value(col)?.ok_or_else(|| self.null(col))?;
        serde_json::from_value(v).map_err(|e| self.decode_error(col, e.to_string()))
    }
    /// An integer column that must fit a `u32`.
    fn u32(&self, col: &'static str) -> Result<u32>
    where
        Self: Sized,
    {
        u32::try_from(self.int(col)?).map_err(|e| self.decode_error(col, e.to_string()))
    }
    /// A text column parsed with `parse` (enum spellings and the like).
    fn parsed<T>(&self, col: &'static str, parse: impl FnOnce(&str) -> Result<T>) -> Result<T>
    where
        Self: Sized,
    {
        let s = self.text(col)?;
        parse(&s).map_err(|e| self.decode_error(col, e.to_string()))
    }
    /// The error for a NULL where a value is required.
    fn null(&self, col: &'static str) -> Error {
        self.decode_error(col, "unexpected NULL".into())
    }
}

/// A unique-constraint violation, as far as the store needs to name it.
#[derive(Debug)]
pub struct UniqueViolation {
    kind: DialectKind,
    /// SQLite: `UNIQUE constraint failed: t.a, t.b`; PostgreSQL: the constraint or
    /// index name (`<table>_<columns>_key`, `<table>_pkey`, named indexes).
    detail: String,
}

impl UniqueViolation {
    /// A violation as the driver reports it (see the field docs for `detail`).
    pub fn new(kind: DialectKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }

    /// Whether `column` of `table` is part of the violated key.
    pub fn names(&self, table: &str, column: &str) -> bool {
        match self.kind {
            DialectKind::Sqlite => self
                .detail
                .split([':', ','])
                .any(|part| part.trim() == format!("{table}.{column}")),
            // `<table>_pkey` is the `id` key of every table with one.
            DialectKind::Postgres => self.detail.strip_prefix(table).is_some_and(|rest| {
                (rest == "_pkey" && column == "id")
                    || format!("{rest}_").contains(&format!("_{column}_"))
            }),
        }
    }
}

/// The database side of a [`SqlStore`]: connections, binding, errors.
#[async_trait]
pub trait Dialect: Send + Sync + std::fmt::Debug + 'static {
    /// Which SQL this is.
    const KIND: DialectKind;
    /// A result row.
    type Row: SqlRow;
    /// An open transaction.
    type Tx: Send;

    /// Runs a statement, returning the rows it changed.
    async fn execute(&self, on: On<'_, Self::Tx>, stmt: Stmt) -> Result<u64, sqlx::Error>;
    /// Every row of a statement.
    async fn fetch_all(
        &self,
        on: On<'_, Self::Tx>,
        stmt: Stmt,
    ) -> Result<Vec<Self::Row>, sqlx::Error>;
    /// The first row of a statement, if any.
    async fn fetch_optional(
        &self,
        on: On<'_, Self::Tx>,
        stmt: Stmt,
    ) -> Result<Option<Self::Row>, sqlx::Error>;
    /// Opens a write transaction. With `tenant`, writes of the same tenant that pass
    /// through here are serialised (SQLite has one writer anyway; PostgreSQL takes a
    /// transaction-scoped advisory lock on `(lock_space, tenant)`).
    async fn begin(&self, lock: Option<(&'static str, TenantId)>) -> Result<Self::Tx, sqlx::Error>;
    /// Commits a transaction from [`Dialect::begin`].
    async fn commit(tx: Self::Tx) -> Result<(), sqlx::Error>;
    /// Checks every pool answers.
    async fn healthcheck(&self) -> Result<()>;
    /// Maps a driver error (transient ones to [`Error::Unavailable`]).
    fn error(e: sqlx::Error) -> Error;
    /// The violation when `e` is a unique-constraint violation.
    fn unique_violation(e: &sqlx::Error) -> Option<UniqueViolation>;
    /// Backend name in errors and metrics.
    fn backend() -> &'static str;
}

/// The metadata, access and rule store over one relational database.
///
/// `SqliteMetadataStore` and `PostgresMetadataStore` are this type with their dialect;
/// open them with their own constructors.
#[derive(Debug, Clone)]
pub struct SqlStore<D> {
    pub(crate) db: D,
}

impl<D: Dialect> SqlStore<D> {
    pub(crate) fn with_dialect(db: D) -> Self {
        Self { db }
    }

    /// Runs a write on the writer.
    pub(crate) async fn exec(&self, stmt: Stmt) -> Result<u64> {
        self.db.execute(On::Writer, stmt).await.map_err(D::error)
    }

    /// Runs a write whose unique violation means "already exists": `pick` names the
    /// conflicting value from the violation.
    pub(crate) async fn exec_unique(
        &self,
        stmt: Stmt,
        entity: &'static str,
        pick: impl FnOnce(&UniqueViolation) -> String,
    ) -> Result<u64> {
        let r = self.db.execute(On::Writer, stmt).await;
        r.map_err(|e| conflict::<D>(e, entity, pick))
    }

    /// Runs a write on the writer, leaving the error to the caller (foreign-key
    /// violations and the like; map the rest with [`Dialect::error`]).
    pub(crate) async fn exec_raw(&self, stmt: Stmt) -> Result<u64, sqlx::Error> {
        self.db.execute(On::Writer, stmt).await
    }

    /// The row `select` finds by id and tenant (`$1`, `$2`).
    pub(crate) async fn get_scoped<T>(
        &self,
        select: &'static str,
        id: impl Into<Arg>,
        tenant: TenantId,
        decode: impl Fn(&D::Row) -> Result<T>,
    ) -> Result<Option<T>> {
        self.opt(Stmt::new(select).bind(id).bind(tenant), decode)
            .await
    }

    /// A page of a tenant's rows: `select` takes (tenant, limit, offset), `count`
    /// takes (tenant) and returns one column `n`.
    pub(crate) async fn page_scoped<T>(
        &self,
        select: &'static str,
        count: &'static str,
        tenant: TenantId,
        page: Page,
        decode: impl Fn(&D::Row) -> Result<T>,
    ) -> Result<Paged<T>> {
        let (limit, offset) = paging(page);
        let items = self
            .all(
                Stmt::new(select).bind(tenant).bind(limit).bind(offset),
                decode,
            )
            .await?;
        let total = self.count(Stmt::new(count).bind(tenant)).await?;
        Ok(Paged { items, total })
    }

    /// The `n` column of a `SELECT COUNT(*) AS n ..`.
    pub(crate) async fn count(&self, stmt: Stmt) -> Result<u64> {
        let n = self.one(stmt, |r| r.int("n")).await?;
        Ok(n.unsigned_abs())
    }

    /// Every row of a read, decoded.
    pub(crate) async fn all<T>(
        &self,
        stmt: Stmt,
        decode: impl Fn(&D::Row) -> Result<T>,
    ) -> Result<Vec<T>> {
        let rows = self
            .db
            .fetch_all(On::Reader, stmt)
            .await
            .map_err(D::error)?;
        rows.iter().map(decode).collect()
    }

    /// The row of a read, if any, decoded.
    pub(crate) async fn opt<T>(
        &self,
        stmt: Stmt,
        decode: impl Fn(&D::Row) -> Result<T>,
    ) -> Result<Option<T>> {
        let row = self
            .db
            .fetch_optional(On::Reader, stmt)
            .await
            .map_err(D::error)?;
        row.as_ref().map(decode).transpose()
    }

    /// The one row of a read that always returns one (`count(*)` and the like).
    pub(crate) async fn one<T>(
        &self,
        stmt: Stmt,
        decode: impl Fn(&D::Row) -> Result<T>,
    ) -> Result<T> {
        self.opt(stmt, decode)
            .await?
            .ok_or_else(|| Error::backend(D::backend(), "query returned no row"))
    }

    /// Opens a write transaction; see [`Dialect::begin`].
    pub(crate) async fn begin(&self, lock: Option<(&'static str, TenantId)>) -> Result<Tx<'_, D>> {
        let tx = self.db.begin(lock).await.map_err(D::error)?;
        Ok(Tx { db: &self.db, tx })
    }
}

/// An open write transaction of a [`SqlStore`]; dropped without
/// [`Tx::commit`], it rolls back.
pub(crate) struct Tx<'a, D: Dialect> {
    db: &'a D,
    tx: D::Tx,
}

impl<D: Dialect> Tx<'_, D> {
    pub(crate) async fn exec(&mut self, stmt: Stmt) -> Result<u64> {
        self.db
            .execute(On::Tx(&mut self.tx), stmt)
            .await
            .map_err(D::error)
    }

    pub(crate) async fn exec_unique(
        &mut self,
        stmt: Stmt,
        entity: &'static str,
        pick: impl FnOnce(&UniqueViolation) -> String,
    ) -> Result<u64> {
        let r = self.db.execute(On::Tx(&mut self.tx), stmt).await;
        r.map_err(|e| conflict::<D>(e, entity, pick))
    }

    pub(crate) async fn opt<T>(
        &mut self,
        stmt: Stmt,
        decode: impl Fn(&D::Row) -> Result<T>,
    ) -> Result<Option<T>> {
        let row = self
            .db
            .fetch_optional(On::Tx(&mut self.tx), stmt)
            .await
            .map_err(D::error)?;
        row.as_ref().map(decode).transpose()
    }

    pub(crate) async fn commit(self) -> Result<()> {
        D::commit(self.tx).await.map_err(D::error)
    }
}

fn conflict<D: Dialect>(
    e: sqlx::Error,
    entity: &'static str,
    pick: impl FnOnce(&UniqueViolation) -> String,
) -> Error {
    match D::unique_violation(&e) {
        Some(v) => Error::AlreadyExists {
            entity,
            id: pick(&v),
        },
        None => D::error(e),
    }
}

/// Whether a write failed on a foreign key (a referenced row is missing).
pub(crate) fn is_foreign_key_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.kind() == sqlx::error::ErrorKind::ForeignKeyViolation)
}

/// `Err(NotFound)` when a statement changed no row.
pub(crate) fn found(rows: u64, entity: &'static str, id: impl ToString) -> Result<()> {
    if rows == 0 {
        Err(Error::not_found(entity, id))
    } else {
        Ok(())
    }
}

/// Clamps a `u64` count to SQL's signed 64-bit integer.
pub(crate) fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `LIMIT`, `OFFSET` of a page.
pub(crate) fn paging(page: Page) -> (i64, i64) {
    (to_i64(page.limit), to_i64(page.offset))
}

/// Escapes `\`, `%` and `_` for a `LIKE .. ESCAPE '\'` pattern.
pub(crate) fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(like_escape(r"a%b_c\d"), r"a\%b\_c\\d");
        assert_eq!(to_i64(u64::MAX), i64::MAX);
    }

    #[test]
    fn unique_violations_name_their_columns() {
        let sqlite = UniqueViolation::new(
            DialectKind::Sqlite,
            "UNIQUE constraint failed: rules.tenant_id, rules.name",
        );
        assert!(sqlite.names("rules", "name") && sqlite.names("rules", "tenant_id"));
        assert!(!sqlite.names("rules", "id") && !sqlite.names("scenes", "name"));
        let pg = UniqueViolation::new(DialectKind::Postgres, "rules_tenant_name_key");
        assert!(pg.names("rules", "name") && !pg.names("rules", "id"));
        let pg = UniqueViolation::new(DialectKind::Postgres, "rules_pkey");
        assert!(pg.names("rules", "id") && !pg.names("rules", "name"));
        let pg = UniqueViolation::new(DialectKind::Postgres, "devices_username_key");
        assert!(pg.names("devices", "username") && !pg.names("devices", "name"));
        let pg = UniqueViolation::new(DialectKind::Postgres, "devices_device_number_key");
        assert!(pg.names("devices", "device_number"));
    }
}
