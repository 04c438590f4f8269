//! The layer engine: OCI layers (tar, optionally gzip or zstd) applied into a snapshot's
//! directory, confined to it whatever the layer says.

mod apply;
pub(crate) mod diff;
mod digest;
pub(crate) mod materialize;
mod root;

pub use apply::{
    adopt_lower_attributes, apply_layer, drop_redundant_whiteouts, ApplyOptions, ApplyReport,
    WhiteoutStyle,
};
pub use diff::{write_diff, DiffReport, DiffSource, LayeredTree};
pub use digest::{Digest, HashingReader};

use std::path::PathBuf;

/// A path from an archive made relative and lexically clean (`/`, `.` dropped, `..`
/// clamped at the top), as the layer applier treats entry names.
pub fn clean_path(path: &std::path::Path) -> PathBuf {
    root::join(&root::clean(path))
}

/// How a layer blob is compressed, told by its first bytes (media types lie more often).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar stream.
    None,
    /// gzip (possibly several members).
    Gzip,
    /// zstd (possibly several frames).
    Zstd,
}

impl Compression {
    /// Recognises gzip and zstd magic numbers; anything else is taken for tar.
    pub fn detect(head: &[u8]) -> Compression {
        match head {
            [0x1f, 0x8b, ..] => Compression::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
            _ => Compression::None,
        }
    }
}

/// Why a layer could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The compressed or tar stream is malformed or truncated.
    #[error("corrupt layer: {0}")]
    Corrupt(String),
    /// The layer decompresses to more than the configured limit.
    #[error("layer exceeds the limit of {limit} uncompressed bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The layer has more entries than the configured limit.
    #[error("layer exceeds the limit of {limit} entries")]
    TooManyEntries {
        /// The limit.
        limit: u64,
    },
    /// The blob's digest is not the one expected.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What the manifest promised.
        expected: Digest,
        /// What the bytes hash to.
        actual: Digest,
    },
    /// An entry cannot be represented (unknown type, hard link to nothing, ...).
    #[error("entry {path:?}: {reason}")]
    BadEntry {
        /// The entry's path in the tar.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A hard link names a file that is in no layer applied so far (when layers unpack in
    /// parallel, its layer may simply not be finished yet).
    #[error("entry {path:?}: hard link target {target:?} exists in no layer")]
    MissingLinkTarget {
        /// The link.
        path: PathBuf,
        /// What it points to.
        target: PathBuf,
    },
    /// Writing into the destination failed.
    #[error("{op} {path:?}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Entry path, relative to the layer root.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}
