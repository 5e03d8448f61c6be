//! Private error type of the SQLite backends and its mapping to [`tp_core::Error`].

use tp_core::Error;

/// Backend name used in errors and metrics.
pub(crate) const BACKEND: &str = "sqlite";

/// What can go wrong inside the SQLite backends.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SqliteError {
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("column {column} holds an unreadable value: {reason}")]
    Decode {
        column: &'static str,
        reason: String,
    },
    #[error("cannot create {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
}

impl SqliteError {
    pub(crate) fn decode(column: &'static str, reason: impl ToString) -> Self {
        SqliteError::Decode {
            column,
            reason: reason.to_string(),
        }
    }
}

/// SQLite primary result codes that mean "try again later".
const SQLITE_BUSY: i64 = 5;
const SQLITE_LOCKED: i64 = 6;

fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|c| c.parse::<i64>().ok())
            .is_some_and(|c| matches!(c & 0xff, SQLITE_BUSY | SQLITE_LOCKED)),
        _ => false,
    }
}

impl From<SqliteError> for Error {
    fn from(e: SqliteError) -> Self {
        match e {
            SqliteError::Sqlx(inner) if is_transient(&inner) => Error::Unavailable {
                backend: BACKEND,
                source: Box::new(inner),
            },
            other => Error::backend(BACKEND, other),
        }
    }
}

/// Maps any sqlx error.
pub(crate) fn db(e: sqlx::Error) -> Error {
    SqliteError::from(e).into()
}
