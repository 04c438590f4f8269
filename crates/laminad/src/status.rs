//! The one mapping from snapshot-store errors to gRPC status codes, chosen so that
//! containerd's errdefs turns them back into ErrNotFound, ErrAlreadyExists, ...

use lamina_core::cache::CacheError;
use lamina_core::layer::LayerError;
use lamina_core::Error;
use tonic::{Code, Status};

/// Converts a store error into the status containerd expects for it.
pub fn to_status(e: Error) -> Status {
    let code = match &e {
        Error::NotFound { .. } | Error::ImageNotFound { .. } => Code::NotFound,
        Error::AlreadyExists { .. } => Code::AlreadyExists,
        Error::FailedPrecondition(_) => Code::FailedPrecondition,
        Error::InvalidArgument(_) | Error::Filter { .. } => Code::InvalidArgument,
        Error::RootLocked { .. } => Code::Unavailable,
        Error::Layer(LayerError::Io { .. }) => {
            tracing::error!(error = %e, "layer I/O error");
            Code::Internal
        }
        // What the client sent is bad: corrupt, hostile, too large, wrong digest.
        Error::Layer(_) => Code::InvalidArgument,
        Error::Cache(c) => match c {
            CacheError::LeaseNotFound { .. } | CacheError::RecordNotFound { .. } => Code::NotFound,
            CacheError::LeaseExists { .. } => Code::AlreadyExists,
            CacheError::WrongKind { .. } | CacheError::Locked { .. } => Code::FailedPrecondition,
            CacheError::BadTime { .. }
            | CacheError::BadDuration { .. }
            | CacheError::BadResource { .. }
            | CacheError::BadId { .. } => Code::InvalidArgument,
            CacheError::Corrupt { .. } => {
                tracing::error!(error = %e, "internal error");
                Code::Internal
            }
        },
        Error::Io { .. } | Error::Metadata(_) | Error::CorruptRecord { .. } => {
            tracing::error!(error = %e, "internal error");
            Code::Internal
        }
    };
    Status::new(code, e.to_string())
}
