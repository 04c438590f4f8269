//! A lazy layer from its seekable index: the tree from the index's table of contents, the
//! stream from the compressed blob through the index's checkpoints.

use std::sync::Mutex;

use super::cache::StreamSource;
use super::tree::{Entry, EntryKind};
use crate::index::{self, BlobSource, Cursor, IndexedLayer, TocEntry};

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

/// The table of contents of `index` as tree entries, each file's data handle being where
/// its bytes start in the layer stream (what [`super::ChunkCache`] reads by).
pub fn entries(index: &index::LayerIndex) -> Result<Vec<Entry>, NotLazy> {
    index.entries.iter().map(entry).collect()
}

fn entry(e: &TocEntry) -> Result<Entry, NotLazy> {
    if e.sparse.is_some() {
        return Err(NotLazy::Sparse {
            path: e.path.clone(),
        });
    }
    let kind = match e.kind {
        index::EntryKind::Dir => EntryKind::Dir,
        index::EntryKind::Symlink => EntryKind::Symlink,
        index::EntryKind::HardLink => EntryKind::HardLink,
        index::EntryKind::Char => EntryKind::Char,
        index::EntryKind::Block => EntryKind::Block,
        index::EntryKind::Fifo => EntryKind::Fifo,
        // Whiteouts and opaque markers keep their `.wh.` names: the tree reads those.
        index::EntryKind::File | index::EntryKind::Whiteout | index::EntryKind::Opaque => {
            EntryKind::File
        }
    };
    Ok(Entry {
        path: e.path.clone(),
        kind,
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        size: e.size,
        mtime: e.mtime,
        xattrs: e.xattrs.clone(),
        link: e.link_target.clone(),
        rdev: e
            .device
            .map(|(major, minor)| rustix::fs::makedev(major, minor))
            .unwrap_or(0),
        data: e.data_offset,
    })
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
