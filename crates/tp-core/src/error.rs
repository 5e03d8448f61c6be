//! The one error type of the platform's core contracts.

/// Boxed source error carried by backend failures.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result alias used by every trait in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Semantic, backend-agnostic errors. Backends keep private error types and map
/// them into these variants so callers (HTTP layer, broker) can react by kind.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The entity does not exist (or is not visible to the caller's tenant).
    #[error("{entity} {id} not found")]
    NotFound {
        /// Kind of entity, e.g. `"device"`.
        entity: &'static str,
        /// The identifier that was looked up.
        id: String,
    },
    /// A unique constraint would be violated.
    #[error("{entity} {id} already exists")]
    AlreadyExists {
        /// Kind of entity, e.g. `"device"`.
        entity: &'static str,
        /// The conflicting value.
        id: String,
    },
    /// The operation conflicts with the current state (e.g. deleting a group that
    /// still has children).
    #[error("conflict: {0}")]
    Conflict(String),
    /// Input that fails validation: a payload, a topic, a request field or a config value.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field, topic level or setting that is wrong.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Well-formed input the platform cannot act on: it names something that does
    /// not exist in the caller's tenant (a device, channel or scene in a rule), or
    /// two fields contradict each other (a range that ends before it starts). The
    /// shape was right, so the API answers 422 rather than 400.
    #[error("unprocessable {field}: {reason}")]
    Unprocessable {
        /// The field at fault.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The caller did not prove who it is.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The caller is known but not allowed to do this.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The backend does not implement this operation.
    #[error("{backend} does not support {operation}")]
    NotSupported {
        /// Backend name.
        backend: &'static str,
        /// Operation name.
        operation: &'static str,
    },
    /// The backend cannot be reached right now; retrying may help.
    #[error("{backend} unavailable: {source}")]
    Unavailable {
        /// Backend name.
        backend: &'static str,
        /// Underlying error.
        #[source]
        source: BoxError,
    },
    /// Any other backend failure.
    #[error("{backend} error: {source}")]
    Backend {
        /// Backend name.
        backend: &'static str,
        /// Underlying error.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Unprocessable`].
    pub fn unprocessable(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Unprocessable {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::NotFound`].
    pub fn not_found(entity: &'static str, id: impl ToString) -> Self {
        Error::NotFound {
            entity,
            id: id.to_string(),
        }
    }

    /// Shorthand for [`Error::Backend`] from any error.
    pub fn backend(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Backend {
            backend,
            source: source.into(),
        }
    }

    /// Whether retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }
}
