//! The on-disk chunk cache of a lazy layer: the layer's uncompressed tar stream kept in a
//! sparse file, filled chunk by chunk as files are read (and by the background fetch),
//! with a bitmap of the chunks present that survives a restart. The bitmap is written
//! (at most once a second, and when the stream is complete) only after the stream file
//! was synced, so it never claims bytes the disk lacks; a crash loses at most the last
//! second's chunks, which are fetched again.

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use super::fs::LayerData;

/// Reads of a layer's uncompressed tar stream at any offset: what a seekable index over
/// the compressed blob in a registry (or a local file) provides.
pub trait StreamSource: Send + Sync + 'static {
    /// Bytes of the stream from `offset` into `buf`; fewer only at its end.
    fn read_stream(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize>;
}

/// Bitmap file header: magic, then the chunk size and the stream length it describes.
const MAGIC: &[u8; 8] = b"LMCHUNK1";

/// How often the bitmap is written while chunks arrive.
const PERSIST_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

struct State {
    present: Vec<u64>,
    /// Chunks present now.
    count: u64,
    /// Chunks the bitmap on disk does not have yet, and when it was last written.
    unsaved: u64,
    saved_at: std::time::Instant,
    /// Chunks being fetched right now (others wait for them instead of fetching again).
    fetching: HashSet<u64>,
}

/// A layer's stream, cached on disk chunk by chunk.
pub struct ChunkCache {
    data: File,
    bitmap_path: PathBuf,
    chunk: u64,
    len: u64,
    source: Arc<dyn StreamSource>,
    state: Mutex<State>,
    fetched: Condvar,
    /// Held while the bitmap is saved.
    saving: Mutex<()>,
    /// When a read last had to fetch (ms since `opened`): the background fill gives way.
    demand_ms: AtomicU64,
    opened: std::time::Instant,
    /// Where a read that had to fetch sends the next chunk, for [`Self::start_readahead`].
    readahead: Mutex<Option<std::sync::mpsc::SyncSender<u64>>>,
}

impl ChunkCache {
    /// Opens (or creates) the cache in directory `dir` for a stream of `len` bytes read in
    /// chunks of `chunk` bytes from `source`. A bitmap written for another chunk size or
    /// length is discarded (the cache starts empty).
    pub fn open(
        dir: &Path,
        source: Arc<dyn StreamSource>,
        len: u64,
        chunk: u64,
    ) -> std::io::Result<ChunkCache> {
        let chunk = chunk.max(4096);
        std::fs::create_dir_all(dir)?;
        let data = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("stream"))?;
        data.set_len(len)?;
        let chunks = len.div_ceil(chunk);
        let words = chunks.div_ceil(64) as usize;
        let bitmap_path = dir.join("present");
        let mut present = vec![0u64; words];
        if let Ok(bytes) = std::fs::read(&bitmap_path) {
            let header_ok = bytes.len() == 24 + words * 8
                && &bytes[..8] == MAGIC
                && bytes[8..16] == chunk.to_le_bytes()
                && bytes[16..24] == len.to_le_bytes();
            if header_ok {
                for (w, b) in present.iter_mut().zip(bytes[24..].chunks_exact(8)) {
                    *w = u64::from_le_bytes(b.try_into().expect("8 bytes"));
                }
            }
        }
        let count = present.iter().map(|w| w.count_ones() as u64).sum();
        Ok(ChunkCache {
            data,
            bitmap_path,
            chunk,
            len,
            source,
            state: Mutex::new(State {
                present,
                count,
                unsaved: 0,
                saved_at: std::time::Instant::now(),
                fetching: HashSet::new(),
            }),
            fetched: Condvar::new(),
            saving: Mutex::new(()),
            demand_ms: AtomicU64::new(0),
            opened: std::time::Instant::now(),
            readahead: Mutex::new(None),
        })
    }

    /// Bytes present and bytes in all of the cache in `dir`, as its bitmap was last
    /// saved (for a status report from another process than the one filling it).
    pub fn saved_progress(dir: &Path) -> Option<(u64, u64)> {
        let bytes = std::fs::read(dir.join("present")).ok()?;
        if bytes.len() < 24 || &bytes[..8] != MAGIC {
            return None;
        }
        let word = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        let (chunk, len) = (word(8).max(1), word(16));
        let mut have = 0;
        for c in 0..len.div_ceil(chunk) {
            let at = 24 + (c / 64) as usize * 8;
            if at + 8 <= bytes.len() && word(at) & (1 << (c % 64)) != 0 {
                have += (len - c * chunk).min(chunk);
            }
        }
        Some((have, len))
    }

    /// Bytes of the stream.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the stream is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Chunks present and in all.
    pub fn progress(&self) -> (u64, u64) {
        (self.lock().count, self.chunks())
    }

    /// Chunks in all.
    fn chunks(&self) -> u64 {
        self.len.div_ceil(self.chunk)
    }

    /// Whether every chunk is present.
    pub fn is_complete(&self) -> bool {
        self.lock().count == self.chunks()
    }

    /// Syncs the stream file and writes the bitmap, if chunks arrived since it was last
    /// written.
    pub fn flush(&self) -> std::io::Result<()> {
        // One save at a time; reads and fetches go on meanwhile (the syncs can be slow).
        let _saving = self.saving.lock().unwrap_or_else(|p| p.into_inner());
        let (present, unsaved) = {
            let st = self.lock();
            if st.unsaved == 0 {
                return Ok(());
            }
            (st.present.clone(), st.unsaved)
        };
        self.persist(&present)?;
        let mut st = self.lock();
        st.unsaved = st.unsaved.saturating_sub(unsaved);
        st.saved_at = std::time::Instant::now();
        Ok(())
    }

    /// The stream file (to hash it once complete).
    pub fn stream_file(&self) -> &File {
        &self.data
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a bitmap and a set: a panic elsewhere cannot tear them.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn has(st: &State, c: u64) -> bool {
        st.present[(c / 64) as usize] & (1 << (c % 64)) != 0
    }

    /// Reads that have to fetch also fetch the `depth` chunks after them, on a thread of
    /// their own, while the reader goes on with what it got: files are mostly read in
    /// the order the layer holds them, and the decoder is already there.
    pub fn start_readahead(self: &Arc<Self>, depth: u64) -> std::io::Result<()> {
        if depth == 0 {
            return Ok(());
        }
        let (tx, rx) = std::sync::mpsc::sync_channel::<u64>(4);
        let cache = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("lazy-readahead".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let Some(cache) = cache.upgrade() else { return };
                    for c in first..(first + depth).min(cache.chunks()) {
                        if let Err(e) = cache.ensure(c) {
                            tracing::debug!(chunk = c, error = %e, "readahead");
                            break;
                        }
                    }
                }
            })?;
        *self.readahead.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        Ok(())
    }

    /// Makes chunk `c` present, fetching it unless another reader is doing so. Whether
    /// it had to be fetched.
    fn ensure(&self, c: u64) -> std::io::Result<bool> {
        let mut st = self.lock();
        loop {
            if Self::has(&st, c) {
                return Ok(false);
            }
            if st.fetching.insert(c) {
                break;
            }
            st = self.fetched.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        drop(st);
        let result = self.fetch(c);
        let mut st = self.lock();
        st.fetching.remove(&c);
        if result.is_ok() {
            st.present[(c / 64) as usize] |= 1 << (c % 64);
            st.count += 1;
            st.unsaved += 1;
            let due = st.saved_at.elapsed() >= PERSIST_EVERY || st.count == self.chunks();
            drop(st);
            self.fetched.notify_all();
            return if due {
                self.flush().map(|()| true)
            } else {
                Ok(true)
            };
        }
        self.fetched.notify_all();
        result.map(|()| true)
    }

    /// Reads chunk `c` from the source into the cache file.
    fn fetch(&self, c: u64) -> std::io::Result<()> {
        let started = std::time::Instant::now();
        let start = c * self.chunk;
        let want = self.chunk.min(self.len - start) as usize;
        let mut buf = vec![0u8; want];
        let mut filled = 0;
        while filled < want {
            match self
                .source
                .read_stream(start + filled as u64, &mut buf[filled..])?
            {
                0 => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!(
                            "layer stream ended at {} of {}",
                            start + filled as u64,
                            self.len
                        ),
                    ))
                }
                n => filled += n,
            }
        }
        self.data.write_all_at(&buf, start)?;
        tracing::debug!(
            chunk = c,
            secs = started.elapsed().as_secs_f64(),
            "chunk fetched"
        );
        Ok(())
    }

    /// Syncs the stream file, then writes bitmap `present` (taken before the sync, so
    /// every chunk it claims was written before it) atomically: a new file renamed over
    /// the old one.
    fn persist(&self, present: &[u64]) -> std::io::Result<()> {
        self.data.sync_data()?;
        let tmp = self.bitmap_path.with_extension("new");
        let mut f = File::create(&tmp)?;
        let mut bytes = Vec::with_capacity(24 + present.len() * 8);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&self.chunk.to_le_bytes());
        bytes.extend_from_slice(&self.len.to_le_bytes());
        for w in present {
            bytes.extend_from_slice(&w.to_le_bytes());
        }
        f.write_all(&bytes)?;
        f.sync_data()?;
        std::fs::rename(&tmp, &self.bitmap_path)
    }

    /// Reads stream bytes at `offset` into `buf`, fetching the chunks they lie in first.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some((n, chunks)) = self.span(offset, buf.len()) else {
            return Ok(0);
        };
        let last = *chunks.end();
        let mut fetched = false;
        for c in chunks {
            fetched |= self.ensure(c)?;
        }
        if fetched {
            self.demand_ms
                .store(self.opened.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        if fetched && last + 1 < self.chunks() {
            if let Some(tx) = &*self.readahead.lock().unwrap_or_else(|p| p.into_inner()) {
                let _ = tx.try_send(last + 1); // busy: it is reading ahead already
            }
        }
        self.data.read_exact_at(&mut buf[..n], offset)?;
        Ok(n)
    }

    /// Fetches the chunks holding byte ranges `ranges` ((start, length) of the stream),
    /// `workers` threads at a time, the ranges' order kept as well as threads allow: a
    /// prefetch list names first what a container reads first. Each thread takes a run of
    /// consecutive chunks, so its decoder goes forward from one checkpoint. Ranges past the
    /// end of the stream are cut. The first error, once every thread stopped.
    pub fn prefetch(&self, ranges: &[(u64, u64)], workers: usize) -> std::io::Result<()> {
        let runs = chunk_runs(ranges, self.chunk, self.len);
        let next = AtomicU64::new(0);
        let first_error = Mutex::new(None);
        std::thread::scope(|scope| {
            for _ in 0..workers.clamp(1, runs.len().max(1)) {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(run) = runs.get(i) else { return };
                    for c in run.clone() {
                        if let Err(e) = self.ensure(c) {
                            first_error
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert(e);
                            return;
                        }
                    }
                });
            }
        });
        match first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Reads stream bytes at `offset` into `buf` if every chunk they lie in is present
    /// (`None` otherwise: nothing is fetched).
    pub fn read_present(&self, offset: u64, buf: &mut [u8]) -> Option<std::io::Result<usize>> {
        let Some((n, mut chunks)) = self.span(offset, buf.len()) else {
            return Some(Ok(0));
        };
        {
            let st = self.lock();
            if !chunks.all(|c| Self::has(&st, c)) {
                return None;
            }
        }
        Some(self.data.read_exact_at(&mut buf[..n], offset).map(|()| n))
    }

    /// How many of `want` bytes at `offset` the stream has, and the chunks they lie in;
    /// `None` if that is no byte.
    fn span(&self, offset: u64, want: usize) -> Option<(usize, std::ops::RangeInclusive<u64>)> {
        if offset >= self.len || want == 0 {
            return None;
        }
        let n = (want as u64).min(self.len - offset) as usize;
        Some((
            n,
            offset / self.chunk..=(offset + n as u64 - 1) / self.chunk,
        ))
    }

    /// Fetches every chunk still missing, in order, until done or `stop` is set: the
    /// background fetch that completes a layer after its container started. It pauses
    /// while reads are fetching (a container reading its files comes first).
    pub fn fill(&self, stop: &AtomicBool) -> std::io::Result<()> {
        const QUIET_MS: u64 = 200;
        for c in 0..self.len.div_ceil(self.chunk) {
            loop {
                if stop.load(Ordering::Relaxed) {
                    return self.flush();
                }
                let now = self.opened.elapsed().as_millis() as u64;
                let last = self.demand_ms.load(Ordering::Relaxed);
                if last == 0 || now.saturating_sub(last) >= QUIET_MS {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(QUIET_MS / 4));
            }
            self.ensure(c)?;
        }
        self.flush()
    }
}

/// The chunks (of `chunk` bytes, in a stream of `len`) holding `ranges`, as runs of
/// consecutive chunks in the order the ranges first need them, each chunk in one run only.
fn chunk_runs(ranges: &[(u64, u64)], chunk: u64, len: u64) -> Vec<std::ops::Range<u64>> {
    let mut seen = HashSet::new();
    let mut runs: Vec<std::ops::Range<u64>> = Vec::new();
    for &(start, size) in ranges {
        let end = start.saturating_add(size).min(len);
        if start >= end {
            continue;
        }
        for c in start / chunk..=(end - 1) / chunk {
            if !seen.insert(c) {
                continue;
            }
            match runs.last_mut() {
                Some(run) if run.end == c => run.end += 1,
                _ => runs.push(c..c + 1),
            }
        }
    }
    runs
}

/// A file's data handle is where its bytes start in the layer stream.
impl LayerData for ChunkCache {
    fn read(&self, data: u64, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        self.read_at(data.saturating_add(offset), buf)
    }

    fn read_local(&self, data: u64, offset: u64, buf: &mut [u8]) -> Option<std::io::Result<usize>> {
        self.read_present(data.saturating_add(offset), buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    struct Source {
        bytes: Vec<u8>,
        reads: AtomicU64,
        broken: AtomicBool,
    }

    impl Source {
        fn new(bytes: Vec<u8>) -> Arc<Source> {
            Arc::new(Source {
                bytes,
                reads: AtomicU64::new(0),
                broken: AtomicBool::new(false),
            })
        }
    }

    impl StreamSource for Source {
        fn read_stream(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.broken.load(Ordering::Relaxed) {
                return Err(std::io::Error::other("registry down"));
            }
            self.reads.fetch_add(1, Ordering::Relaxed);
            let start = (offset as usize).min(self.bytes.len());
            let n = buf.len().min(self.bytes.len() - start);
            buf[..n].copy_from_slice(&self.bytes[start..start + n]);
            Ok(n)
        }
    }

    #[test]
    fn reads_fetch_once_survive_reopen_fail_and_recover() {
        let dir = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        let src = Source::new(bytes.clone());
        let len = bytes.len() as u64;
        let cache = ChunkCache::open(dir.path(), src.clone(), len, 8192).unwrap();
        let mut buf = vec![0u8; 10_000];
        assert_eq!(cache.read_at(20_000, &mut buf).unwrap(), 10_000);
        assert_eq!(&buf[..], &bytes[20_000..30_000]);
        let fetched = src.reads.load(Ordering::Relaxed);
        assert_eq!(cache.progress().0, 2, "only the chunks the read needed");
        cache.read_at(21_000, &mut buf[..100]).unwrap();
        assert_eq!(
            src.reads.load(Ordering::Relaxed),
            fetched,
            "served from the cache"
        );
        cache.flush().unwrap();
        assert_eq!(
            ChunkCache::saved_progress(dir.path()),
            Some((2 * 8192, len))
        );
        drop(cache);

        // Reopened (a restart): what was fetched is still there; a broken source fails
        // reads of other chunks, which work again once it is back.
        let cache = ChunkCache::open(dir.path(), src.clone(), len, 8192).unwrap();
        assert_eq!(cache.progress().0, 2);
        src.broken.store(true, Ordering::Relaxed);
        cache.read_at(21_000, &mut buf[..100]).unwrap();
        assert!(cache.read_at(90_000, &mut buf[..100]).is_err());
        src.broken.store(false, Ordering::Relaxed);
        let n = cache.read_at(99_990, &mut buf).unwrap();
        assert_eq!(&buf[..n], &bytes[99_990..]);
        cache.fill(&AtomicBool::new(false)).unwrap();
        assert_eq!(cache.progress(), (13, 13));
        assert!(cache.is_complete());
        cache.flush().unwrap();
        assert_eq!(ChunkCache::saved_progress(dir.path()), Some((len, len)));
        let mut all = vec![0u8; bytes.len()];
        cache.read_at(0, &mut all).unwrap();
        assert_eq!(all, bytes);
        // Another chunk size: the old bitmap is not trusted.
        drop(cache);
        let cache = ChunkCache::open(dir.path(), src, len, 16384).unwrap();
        assert_eq!(cache.progress().0, 0);
    }

    #[test]
    fn chunk_runs_keep_the_asked_order_and_each_chunk_once() {
        // Chunks of 10 in a stream of 95: the last chunk (90..95) is short.
        let runs = chunk_runs(
            &[
                (45, 20),
                (0, 5),
                (60, 30),
                (5, 1),
                (94, 100),
                (200, 5),
                (30, 0),
            ],
            10,
            95,
        );
        assert_eq!(runs, [4..7, 0..1, 7..10]);
        assert!(chunk_runs(&[], 10, 95).is_empty());
    }

    #[test]
    fn prefetch_fetches_exactly_the_chunks_of_the_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let src = Source::new(bytes.clone());
        let len = bytes.len() as u64;
        let cache = ChunkCache::open(dir.path(), src.clone(), len, 4096).unwrap();
        // 3 chunks (8192..20480), 1 (the last, short), 3 (100_000..108_192 spans 24..=26).
        let ranges = [(8192, 12_288), (199_000, 5000), (100_000, 8192), (8192, 1)];
        cache.prefetch(&ranges, 4).unwrap();
        assert_eq!(cache.progress().0, 3 + 1 + 3, "{:?}", cache.progress());
        let reads = src.reads.load(Ordering::Relaxed);
        let mut buf = vec![0u8; 8192];
        cache.read_at(100_000, &mut buf).unwrap();
        assert_eq!(&buf[..], &bytes[100_000..108_192]);
        assert_eq!(
            src.reads.load(Ordering::Relaxed),
            reads,
            "all from the cache"
        );
        // A broken source: the error comes back, and the cache holds what it held.
        src.broken.store(true, Ordering::Relaxed);
        assert!(cache.prefetch(&[(50_000, 10)], 2).is_err());
        assert_eq!(cache.progress().0, 7);
        cache.prefetch(&[], 2).unwrap();
    }

    #[test]
    fn a_read_that_fetched_fetches_the_next_chunks_too() {
        let dir = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 249) as u8).collect();
        let src = Source::new(bytes.clone());
        let cache = Arc::new(ChunkCache::open(dir.path(), src, bytes.len() as u64, 8192).unwrap());
        cache.start_readahead(3).unwrap();
        let mut buf = vec![0u8; 100];
        cache.read_at(8192 * 2 + 5, &mut buf).unwrap();
        assert_eq!(&buf[..], &bytes[8192 * 2 + 5..8192 * 2 + 105]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while cache.progress().0 < 4 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let st = cache.lock();
        let present: Vec<u64> = (0..13).filter(|&c| ChunkCache::has(&st, c)).collect();
        assert_eq!(present, [2, 3, 4, 5], "the chunk read and the 3 after it");
    }
}
