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

/// Decoders kept between reads: one per reader that moves through the layer on its own
/// (a file being read, the background fetch), so none restarts at a checkpoint because
/// another moved the shared decoder elsewhere.
const CURSORS: usize = 4;

/// A layer's uncompressed stream read from its compressed blob through its index.
/// Decoders are kept between reads, so a reader going forward (the chunk cache filling a
/// layer in order, a large file read front to back) decompresses each byte once.
pub struct IndexedStream<S> {
    layer: IndexedLayer,
    blob: S,
    /// Idle decoders; a read takes the one standing closest before its offset.
    cursors: Mutex<Vec<Cursor>>,
}

impl<S: BlobSource> IndexedStream<S> {
    /// Reads `layer`'s stream from `blob`.
    pub fn new(layer: IndexedLayer, blob: S) -> Self {
        IndexedStream {
            layer,
            blob,
            cursors: Mutex::new(Vec::new()),
        }
    }

    /// The index.
    pub fn layer(&self) -> &IndexedLayer {
        &self.layer
    }
}

impl<S: BlobSource + Send + Sync + 'static> StreamSource for IndexedStream<S> {
    fn read_stream(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut cursor = {
            // The pool is a list of idle decoders: a panic elsewhere cannot tear it.
            let mut idle = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
            let best = idle
                .iter()
                .enumerate()
                .filter(|(_, c)| c.position() <= offset)
                .max_by_key(|(_, c)| c.position())
                .map(|(i, _)| i);
            match best {
                Some(i) => idle.swap_remove(i),
                None if idle.len() >= CURSORS => idle.swap_remove(0),
                None => Cursor::new(),
            }
        };
        let result = self.layer.read_with(&mut cursor, &self.blob, offset, buf);
        let mut idle = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() >= CURSORS {
            // Keep the decoders furthest along the layer; forget the one furthest back.
            if let Some((i, _)) = idle.iter().enumerate().min_by_key(|(_, c)| c.position()) {
                idle.swap_remove(i);
            }
        }
        idle.push(cursor);
        result
    }
}
