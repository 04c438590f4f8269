//! A lazy layer from its seekable index: the stream read from the compressed blob through
//! the index's checkpoints (the tree comes straight from the index's table of contents).

use std::sync::Mutex;

use super::cache::StreamSource;
use crate::index::{self, BlobSource, Cursor, IndexedLayer};

/// Why a layer cannot be served lazily (the caller unpacks it instead).
#[derive(Debug, thiserror::Error)]
pub enum NotLazy {
    /// GNU sparse files keep their bytes apart from their offsets in the file; serving
    /// them needs the sparse map at read time, which the lazy file system does not do.
    #[error("{path:?} is a sparse file: this layer is unpacked, not mounted lazily")]
    Sparse {
        /// The file.
        path: std::path::PathBuf,
    },
}

/// Whether `index`'s layer can be served lazily.
pub fn check(index: &index::LayerIndex) -> Result<(), NotLazy> {
    match index.entries.iter().find(|e| e.sparse.is_some()) {
        Some(e) => Err(NotLazy::Sparse {
            path: e.path.clone(),
        }),
        None => Ok(()),
    }
}

/// A layer's uncompressed stream read from its compressed blob through its index. One
/// decoder is kept between reads, so the chunk cache filling a layer in order
/// decompresses it once.
pub struct IndexedStream<S> {
    layer: IndexedLayer,
    blob: S,
    cursor: Mutex<Cursor>,
}

impl<S: BlobSource> IndexedStream<S> {
    /// Reads `layer`'s stream from `blob`.
    pub fn new(layer: IndexedLayer, blob: S) -> Self {
        IndexedStream {
            layer,
            blob,
            cursor: Mutex::new(Cursor::new()),
        }
    }

    /// The index.
    pub fn layer(&self) -> &IndexedLayer {
        &self.layer
    }
}

impl<S: BlobSource + Send + Sync + 'static> StreamSource for IndexedStream<S> {
    fn read_stream(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        // A reader that panicked leaves the cursor to restart at a checkpoint: still sound.
        let mut cursor = self.cursor.lock().unwrap_or_else(|p| p.into_inner());
        self.layer.read_with(&mut cursor, &self.blob, offset, buf)
    }
}
