//! write-svc's boundary error and its one mapping to gRPC status codes.
//! Clients get a short message without internals; the log gets the cause
//! chain.

use shortfleet_common::input::{self, InputError};
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A field broke a rule; `field` is the REST field name.
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("link not found")]
    NotFound,
    #[error("{0}")]
    Conflict(&'static str),
    #[error("idempotency key was already used with a different request")]
    IdempotencyMismatch,
    /// The database did not answer in time or refused connections.
    #[error("storage unavailable")]
    Unavailable(#[source] anyhow::Error),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl WriteError {
    pub fn invalid(field: &'static str, reason: impl ToString) -> Self {
        Self::Invalid {
            field,
            reason: reason.to_string(),
        }
    }
}

/// Metadata key naming the offending field of an INVALID_ARGUMENT, so the
/// gateway can fill problem+json `errors[]` without parsing messages.
pub use shortfleet_common::input::FIELD_METADATA;

/// A field refused by the fleet's input policy.
impl From<InputError> for WriteError {
    fn from(err: InputError) -> Self {
        Self::invalid(err.field, err.rule)
    }
}

impl From<WriteError> for Status {
    fn from(err: WriteError) -> Self {
        match &err {
            WriteError::Invalid { field, reason } => input::invalid_argument(field, reason),
            WriteError::NotFound => Status::not_found(err.to_string()),
            WriteError::Conflict(_) => Status::already_exists(err.to_string()),
            WriteError::IdempotencyMismatch => Status::failed_precondition(err.to_string()),
            WriteError::Unavailable(cause) => {
                tracing::warn!(error = format!("{cause:#}"), "storage unavailable");
                Status::unavailable(err.to_string())
            }
            WriteError::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "internal error");
                Status::internal(err.to_string())
            }
        }
    }
}

impl From<deadpool_postgres::PoolError> for WriteError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        Self::Unavailable(anyhow::Error::new(e).context("getting a database connection"))
    }
}

impl From<tokio_postgres::Error> for WriteError {
    fn from(e: tokio_postgres::Error) -> Self {
        // A closed connection or a server shutting down is "try again later";
        // anything else (a constraint we did not expect, a bug) is internal.
        let unavailable = e.is_closed()
            || e.code()
                .is_some_and(|c| c.code().starts_with("08") || c.code().starts_with("57P"));
        let e = anyhow::Error::new(e).context("querying the links database");
        if unavailable {
            Self::Unavailable(e)
        } else {
            Self::Internal(e)
        }
    }
}
