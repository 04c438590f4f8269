//! The error type of the snapshot store, shaped so that each variant maps to one
//! containerd errdefs class (and so to one gRPC status code) at the edge.

use std::path::PathBuf;

/// Result alias for the snapshot store.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the snapshot store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The snapshot (or parent) named does not exist.
    #[error("snapshot {key:?} does not exist{context}")]
    NotFound {
        /// The key or name looked up.
        key: String,
        /// Extra context, e.g. " (parent)".
        context: &'static str,
    },
    /// No image of that name is recorded.
    #[error("image {name:?} is not recorded here (see `lamina images`)")]
    ImageNotFound {
        /// The name looked up.
        name: String,
    },
    /// A snapshot with that key or name already exists.
    #[error("snapshot {key:?} already exists")]
    AlreadyExists {
        /// The conflicting key or name.
        key: String,
    },
    /// The operation is not allowed in the snapshot's current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request itself is malformed (bad key, label, filter, field path).
    #[error("{0}")]
    InvalidArgument(String),
    /// A filter expression could not be parsed.
    #[error("invalid filter {input:?}: {reason}")]
    Filter {
        /// The filter text.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The root directory is locked by another process.
    #[error("root {root} is in use by another laminad{holder}")]
    RootLocked {
        /// The root directory.
        root: PathBuf,
        /// Who holds it, if known, e.g. " (pid 42)".
        holder: String,
    },
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A layer could not be applied or diffed.
    #[error(transparent)]
    Layer(#[from] crate::layer::LayerError),
    /// Unpacking one layer of an image failed: `source` says how.
    #[error("layer {layer}: {source}")]
    InLayer {
        /// The layer's blob digest.
        layer: String,
        /// What went wrong.
        #[source]
        source: Box<Error>,
    },
    /// A cache-manager operation failed (leases, refs, prune).
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
    /// The metadata database failed.
    #[error("metadata database: {0}")]
    Metadata(#[from] MetadataError),
    /// A stored record could not be decoded (the database is damaged or from a newer version).
    #[error("corrupt metadata record {key:?}: {source}")]
    CorruptRecord {
        /// Key of the record.
        key: String,
        /// Decoder error.
        #[source]
        source: postcard::Error,
    },
}

/// Errors of the redb metadata database, kept apart so callers can tell storage
/// failures from semantic ones.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// Opening or creating the database file failed.
    #[error("open: {0}")]
    Open(#[from] redb::DatabaseError),
    /// Starting a transaction failed.
    #[error("transaction: {0}")]
    Transaction(#[from] redb::TransactionError),
    /// Opening a table failed.
    #[error("table: {0}")]
    Table(#[from] redb::TableError),
    /// Reading or writing a table failed.
    #[error("storage: {0}")]
    Storage(#[from] redb::StorageError),
    /// Committing a transaction failed.
    #[error("commit: {0}")]
    Commit(#[from] redb::CommitError),
}

macro_rules! metadata_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Metadata(MetadataError::from(e))
            }
        }
    )*};
}
metadata_from!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl Error {
    /// Wraps an I/O error with the operation and path it came from.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Names the layer (by blob digest) an unpack error happened in.
    pub fn in_layer(self, layer: &impl std::fmt::Display) -> Self {
        match self {
            e @ Error::InLayer { .. } => e,
            e => Error::InLayer {
                layer: layer.to_string(),
                source: Box::new(e),
            },
        }
    }

    /// A snapshot looked up by `key` is missing.
    pub fn not_found(key: &str) -> Self {
        Error::NotFound {
            key: key.to_owned(),
            context: "",
        }
    }
}

/// Adds path context to `std::io::Result`s.
pub(crate) trait IoContext<T> {
    /// Turns an I/O error into [`Error::Io`] naming `op` and `path`.
    fn ctx(self, op: &'static str, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, op: &'static str, path: &std::path::Path) -> Result<T> {
        self.map_err(|e| Error::io(op, path, e))
    }
}
