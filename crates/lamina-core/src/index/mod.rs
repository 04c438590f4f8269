//! Seekable layer indexes: what lazy loading needs to read one file of a compressed layer
//! without downloading or decompressing the layer up to it.
//!
//! An index ([`LayerIndex`]) holds the layer's table of contents (every tar entry with
//! its metadata and where its bytes start in the uncompressed stream) and checkpoints
//! from which decompression can start in the middle of the blob:
//!
//! - **gzip**, zran-style: at deflate block boundaries about every `span` bytes of
//!   output, the compressed byte and bit position plus the 32 KiB window before it.
//!   Multi-member gzip works (a checkpoint may sit in any member).
//! - **zstd**: frame starts about every `span` bytes. A layer written as one big frame
//!   has only the checkpoint at 0, so random reads would decompress from its start;
//!   [`reencode_seekable`] rewrites such a layer as frames of `span` bytes (a new blob
//!   with a new digest, the same diffID and table of contents). That is what
//!   `lamina index build` is to do for layers where [`LayerIndex::needs_reencoding`]
//!   says so, pushing the new blob with its index.
//! - **uncompressed** tar: no checkpoints; every offset can be read directly.
//!
//! [`build_index`] makes an index in one pass over a blob (which may be streaming from a
//! registry), verifying the compressed stream (gzip CRCs and lengths, zstd checksums)
//! and computing the blob digest and diffID on the way. [`LayerIndex::encode`] and
//! [`LayerIndex::decode`] give its compact, versioned binary form (described in
//! [`mod@format`]). [`IndexedLayer`] reads any range of the uncompressed stream, or of one
//! file, from a [`BlobSource`] (a local file, or range requests to a registry), starting
//! at the nearest checkpoint; a [`Cursor`] keeps the decoder between reads so that
//! sequential reads of a file continue instead of starting over.
//!
//! Integrity: the index covers the blob's digest and diffID, checked while it is built.
//! Ranges read later are not individually verified (zstd frame checksums are, when a
//! read runs to the end of a frame); a consumer that must trust them has to fetch them
//! from a source it trusts or verify whole spans itself.

mod build;
pub mod format;
mod read;
mod reencode;
mod zlib;

pub use build::{build_index, BuildOptions};
pub use format::{
    Checkpoint, EntryKind, LayerIndex, SparseChunk, TocEntry, DEFAULT_SPAN, FORMAT_VERSION, MAGIC,
    MAX_INDEX_BYTES,
};
pub use read::{BlobSource, Cursor, FileReader, IndexedLayer, LayerReader};
pub use reencode::{reencode_seekable, DEFAULT_ZSTD_LEVEL};

use std::path::PathBuf;

use crate::layer::{Compression, Digest};

/// Why an index could not be built, decoded or used.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The bytes do not start with [`MAGIC`].
    #[error("not a layer index (bad magic bytes)")]
    BadMagic,
    /// The index was written in a format version this build does not read.
    #[error("layer index format version {found} is not supported (this build reads version {FORMAT_VERSION})")]
    UnsupportedVersion {
        /// The version in the header.
        found: u16,
    },
    /// The header sets feature flags this build does not know.
    #[error("layer index uses unknown feature flags {0:#06x}")]
    UnknownFlags(u16),
    /// The index ends before its header, body or checksum does.
    #[error("layer index truncated: {0}")]
    Truncated(String),
    /// The stored checksum does not match the bytes.
    #[error("layer index checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        /// CRC-32 stored in the index.
        stored: u32,
        /// CRC-32 of the bytes.
        computed: u32,
    },
    /// The index is larger than [`MAX_INDEX_BYTES`].
    #[error("layer index of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The index parses but says something impossible (a cap exceeded, offsets out of
    /// order or past the blob, an entry inconsistent with its kind, ...).
    #[error("invalid layer index: {0}")]
    Invalid(String),
    /// The layer's compressed or tar stream is malformed or truncated.
    #[error("corrupt layer: {0}")]
    Corrupt(String),
    /// The layer decompresses to more than the configured limit.
    #[error("layer exceeds the limit of {limit} uncompressed bytes")]
    LayerTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The layer has more entries than the configured limit.
    #[error("layer exceeds the limit of {limit} entries")]
    TooManyEntries {
        /// The limit.
        limit: u64,
    },
    /// A tar entry cannot be indexed (unknown type, name too long, bad PAX record, ...).
    #[error("entry {path:?}: {reason}")]
    BadEntry {
        /// The entry's path in the tar.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The blob or its uncompressed stream is not what was expected.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What the caller expected.
        expected: Digest,
        /// What the bytes hash to.
        actual: Digest,
    },
    /// A build option is out of range.
    #[error("bad option: {0}")]
    BadOption(String),
    /// Reading the blob or writing a re-encoded one failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl LayerIndex {
    /// The longest stretch of uncompressed bytes with no checkpoint in it (from one
    /// checkpoint to the next, or the last to the end): what a random read may have to
    /// decompress at worst. Equal to the whole size for a single-frame zstd layer; 0 for
    /// an uncompressed layer.
    pub fn max_gap(&self) -> u64 {
        if self.compression == Compression::None {
            return 0;
        }
        let ends = self
            .checkpoints
            .iter()
            .skip(1)
            .map(|c| c.uncompressed_offset)
            .chain(std::iter::once(self.uncompressed_size));
        self.checkpoints
            .iter()
            .map(|c| c.uncompressed_offset)
            .zip(ends)
            .map(|(a, b)| b.saturating_sub(a))
            .max()
            .unwrap_or(self.uncompressed_size)
    }

    /// Whether random reads would decompress much more than `span` bytes somewhere (a
    /// gap of more than twice the span), so the layer should be rewritten with
    /// [`reencode_seekable`] before it is served lazily: typically a zstd layer written
    /// as one frame, or a gzip layer of huge deflate blocks.
    pub fn needs_reencoding(&self) -> bool {
        self.max_gap() > self.span.saturating_mul(2)
    }
}
