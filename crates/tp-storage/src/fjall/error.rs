//! Private error type of the fjall backend and its mapping to [`tp_core::Error`].

use tp_core::Error;

/// Backend name used in errors and metrics.
pub(crate) const BACKEND: &str = "fjall";

/// What can go wrong inside the fjall backend.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FjallError {
    #[error(transparent)]
    Fjall(#[from] ::fjall::Error),
    #[error("{what} is unreadable: {reason}")]
    Corrupt { what: &'static str, reason: String },
    #[error("cannot create {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("a storage thread failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl FjallError {
    pub(crate) fn corrupt(what: &'static str, reason: impl ToString) -> Self {
        FjallError::Corrupt {
            what,
            reason: reason.to_string(),
        }
    }
}

impl From<FjallError> for Error {
    fn from(e: FjallError) -> Self {
        match e {
            // A failed journal write poisons the database: nothing more is accepted
            // until the process restarts and recovers, so callers should back off.
            FjallError::Fjall(inner @ (::fjall::Error::Poisoned | ::fjall::Error::Io(_))) => {
                Error::Unavailable {
                    backend: BACKEND,
                    source: Box::new(inner),
                }
            }
            other => Error::backend(BACKEND, other),
        }
    }
}

/// Maps any fjall error.
pub(crate) fn fj(e: ::fjall::Error) -> FjallError {
    FjallError::from(e)
}
