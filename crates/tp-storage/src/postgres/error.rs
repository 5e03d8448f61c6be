//! Private error type of the PostgreSQL backends and its mapping to [`tp_core::Error`].

use tp_core::Error;

/// Backend name used in errors and metrics.
pub(crate) const BACKEND: &str = "postgres";

/// SQLSTATE `23514` (`check_violation`), also raised when no partition accepts a row.
pub(crate) const NO_PARTITION: &str = "23514";

/// What can go wrong inside the PostgreSQL backends.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PgError {
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot connect to postgres at {host}:{port}: {source}")]
    Connect {
        host: String,
        port: u16,
        source: sqlx::Error,
    },
    #[error("cannot connect to postgres at {host}:{port}: no answer within {secs} s")]
    ConnectTimeout { host: String, port: u16, secs: u64 },
    #[error("column {column} holds an unreadable value: {reason}")]
    Decode {
        column: &'static str,
        reason: String,
    },
}

impl PgError {
    pub(crate) fn decode(column: &'static str, reason: impl ToString) -> Self {
        PgError::Decode {
            column,
            reason: reason.to_string(),
        }
    }
}

/// SQLSTATE classes that mean "the server cannot serve us right now":
/// `08` connection exception, `53` insufficient resources, `57P0x` shutdown,
/// `40001`/`40P01` serialization failure / deadlock.
fn is_transient_code(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(code, "57P01" | "57P02" | "57P03" | "40001" | "40P01")
}

fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| is_transient_code(&c)),
        _ => false,
    }
}

impl From<PgError> for Error {
    fn from(e: PgError) -> Self {
        let transient = match &e {
            PgError::Sqlx(inner) | PgError::Connect { source: inner, .. } => is_transient(inner),
            PgError::ConnectTimeout { .. } => true,
            _ => false,
        };
        if transient {
            Error::Unavailable {
                backend: BACKEND,
                source: Box::new(e),
            }
        } else {
            Error::backend(BACKEND, e)
        }
    }
}

/// Maps any sqlx error.
pub(crate) fn db(e: sqlx::Error) -> Error {
    PgError::from(e).into()
}

/// Whether `e` is Postgres refusing a row no partition accepts.
pub(crate) fn is_missing_partition(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some(NO_PARTITION)
        && d.message().contains("no partition"))
}

/// Whether `e` is a unique-constraint violation (SQLSTATE 23505).
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23505"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_failures_are_retryable() {
        let e: Error = PgError::ConnectTimeout {
            host: "db".into(),
            port: 5432,
            secs: 5,
        }
        .into();
        assert!(e.is_retryable());
        assert!(e.to_string().contains("db:5432"), "{e}");
        let e: Error = PgError::Sqlx(sqlx::Error::PoolTimedOut).into();
        assert!(e.is_retryable());
        let e: Error = PgError::decode("v_int", "bad").into();
        assert!(!e.is_retryable());
        assert!(is_transient_code("08006") && is_transient_code("40P01"));
        assert!(!is_transient_code("23505"));
    }
}
