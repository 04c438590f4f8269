//! A lazy layer from its seekable index: the stream read from the compressed blob through
//! the index's checkpoints (the tree comes straight from the index's table of contents).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

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

/// Windows of compressed bytes kept by [`ReadAhead`]: one per decoder in use, and some.
const WINDOWS: usize = 8;

/// A blob source read in windows of at least `window` bytes, the last few kept: the
/// decoder asks for its input a little at a time, and over a network each ask would be
/// one round trip.
pub struct ReadAhead<S> {
    inner: S,
    window: usize,
    kept: Mutex<VecDeque<(u64, Arc<Vec<u8>>)>>,
}

impl<S: BlobSource> ReadAhead<S> {
    /// Reads `inner` `window` bytes at a time.
    pub fn new(inner: S, window: usize) -> Self {
        ReadAhead {
            inner,
            window: window.max(4096),
            kept: Mutex::new(VecDeque::new()),
        }
    }

    /// A kept window holding `offset`.
    fn find(&self, offset: u64) -> Option<(u64, Arc<Vec<u8>>)> {
        // A list of immutable windows: a panic elsewhere cannot tear it.
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.iter()
            .find(|(start, data)| offset >= *start && offset < start + data.len() as u64)
            .cloned()
    }
}

impl<S: BlobSource> BlobSource for ReadAhead<S> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let (start, data) = match self.find(offset) {
            Some(w) => w,
            None => {
                let mut data = vec![0u8; self.window.max(buf.len())];
                let mut filled = 0;
                while filled < data.len() {
                    match self
                        .inner
                        .read_at(offset + filled as u64, &mut data[filled..])?
                    {
                        0 => break, // the blob's end
                        n => filled += n,
                    }
                }
                data.truncate(filled);
                let w = (offset, Arc::new(data));
                let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
                if kept.len() >= WINDOWS {
                    kept.pop_front();
                }
                kept.push_back(w.clone());
                w
            }
        };
        let from = (offset - start) as usize;
        let n = buf.len().min(data.len() - from);
        buf[..n].copy_from_slice(&data[from..from + n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counted {
        bytes: Vec<u8>,
        reads: AtomicUsize,
    }

    impl BlobSource for Counted {
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            let start = (offset as usize).min(self.bytes.len());
            let n = buf.len().min(self.bytes.len() - start);
            buf[..n].copy_from_slice(&self.bytes[start..start + n]);
            Ok(n)
        }
    }

    #[test]
    fn small_reads_become_few_window_reads_and_stay_exact() {
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let ra = ReadAhead::new(
            Counted {
                bytes: bytes.clone(),
                reads: AtomicUsize::new(0),
            },
            16 << 10,
        );
        let mut out = Vec::new();
        let mut buf = [0u8; 1000];
        let mut at = 0u64;
        loop {
            match ra.read_at(at, &mut buf).unwrap() {
                0 => break,
                n => {
                    out.extend_from_slice(&buf[..n]);
                    at += n as u64;
                }
            }
        }
        assert_eq!(out, bytes);
        // 100 reads of 1000 bytes: 7 windows, the last one short (its filling ends with
        // an empty read), and the read past the end.
        assert!(
            ra.inner.reads.load(Ordering::Relaxed) <= 9,
            "{}",
            ra.inner.reads.load(Ordering::Relaxed)
        );
        // Going back to a kept window costs nothing.
        let before = ra.inner.reads.load(Ordering::Relaxed);
        assert_eq!(ra.read_at(90_500, &mut buf).unwrap(), 1000);
        assert_eq!(&buf[..], &bytes[90_500..91_500]);
        assert_eq!(ra.inner.reads.load(Ordering::Relaxed), before);
    }
}
