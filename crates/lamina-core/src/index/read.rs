//! Random access to a layer's uncompressed stream, and to its files, from an index and
//! the blob's bytes.

use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use zstd::zstd_safe::{DCtx, InBuffer, OutBuffer, ResetDirective};

use super::format::{Checkpoint, EntryKind, LayerIndex, TocEntry};
use super::zlib::{Flush, Inflate, GZIP, RAW};
use super::IndexError;
use crate::layer::{clean_path, Compression};

/// Where a blob's bytes come from: a local file, a partly downloaded one, or range
/// requests to a registry. A source shared by FUSE threads must also be `Send + Sync`;
/// every source must give up with an error in bounded time rather than block forever
/// (a failed read leaves the reading cursor ready to retry).
pub trait BlobSource {
    /// Reads up to `buf.len()` bytes of the blob at `offset`. Returns how many were read:
    /// fewer than asked is fine (the caller asks again), 0 means the blob ends there.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
}

impl BlobSource for std::fs::File {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(self, buf, offset)
    }
}

impl BlobSource for [u8] {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

impl BlobSource for Vec<u8> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.as_slice().read_at(offset, buf)
    }
}

impl<T: BlobSource + ?Sized> BlobSource for &T {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        (**self).read_at(offset, buf)
    }
}

impl<T: BlobSource + ?Sized> BlobSource for Box<T> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        (**self).read_at(offset, buf)
    }
}

impl<T: BlobSource + ?Sized> BlobSource for Arc<T> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        (**self).read_at(offset, buf)
    }
}

/// Compressed bytes asked of the source at a time (one range request each, for a
/// registry source).
const READ_CHUNK: usize = 256 << 10;
/// Uncompressed bytes decoded at a time when skipping to an offset.
const SKIP_CHUNK: usize = 64 << 10;

static NEXT_LAYER_ID: AtomicU64 = AtomicU64::new(1);

/// A validated index ready for reads: lookups by path, and reads of the uncompressed
/// stream or of files starting at the nearest checkpoint.
#[derive(Debug)]
pub struct IndexedLayer {
    index: LayerIndex,
    /// Tells cursors of different layers apart, so a cursor is never continued on a
    /// layer it was not started on.
    id: u64,
    /// Entry numbers sorted by path, then by number.
    by_path: Vec<u32>,
    /// For each sparse file (by entry number), where each data run starts relative to
    /// its data offset.
    sparse_starts: HashMap<usize, Vec<u64>>,
}

impl IndexedLayer {
    /// Takes `index` for reading, after [`LayerIndex::validate`].
    pub fn new(index: LayerIndex) -> Result<IndexedLayer, IndexError> {
        index.validate()?;
        let mut by_path: Vec<u32> = (0..index.entries.len() as u32).collect();
        by_path.sort_by(|a, b| {
            let (ea, eb) = (&index.entries[*a as usize], &index.entries[*b as usize]);
            ea.path.cmp(&eb.path).then(a.cmp(b))
        });
        let mut sparse_starts = HashMap::new();
        for (i, e) in index.entries.iter().enumerate() {
            if let Some(chunks) = &e.sparse {
                let mut at = 0;
                let starts = chunks
                    .iter()
                    .map(|c| {
                        let s = at;
                        at += c.len;
                        s
                    })
                    .collect();
                sparse_starts.insert(i, starts);
            }
        }
        Ok(IndexedLayer {
            index,
            id: NEXT_LAYER_ID.fetch_add(1, Ordering::Relaxed),
            by_path,
            sparse_starts,
        })
    }

    /// Decodes and takes an encoded index.
    pub fn decode(bytes: &[u8]) -> Result<IndexedLayer, IndexError> {
        IndexedLayer::new(LayerIndex::decode(bytes)?)
    }

    /// The index.
    pub fn index(&self) -> &LayerIndex {
        &self.index
    }

    /// The table of contents.
    pub fn entries(&self) -> &[TocEntry] {
        &self.index.entries
    }

    /// The number of the entry an unpack would leave at `path` (the last one of that
    /// name), if any. `path` is cleaned first, as entry paths are.
    pub fn lookup(&self, path: &Path) -> Option<usize> {
        let path = clean_path(path);
        self.last_before(&path, usize::MAX)
    }

    /// The last entry named `path` with a number below `before`.
    fn last_before(&self, path: &Path, before: usize) -> Option<usize> {
        let entries = &self.index.entries;
        let lo = self
            .by_path
            .partition_point(|i| entries[*i as usize].path.as_path() < path);
        let hi = self
            .by_path
            .partition_point(|i| entries[*i as usize].path.as_path() <= path);
        self.by_path[lo..hi]
            .iter()
            .map(|i| *i as usize)
            .rfind(|i| *i < before)
    }

    /// The regular file whose bytes entry `entry` has: itself for a file; for a hard
    /// link, the file its target names at that point of the tar (following links to
    /// links). `None` for other kinds and for links to nothing.
    pub fn resolve_file(&self, entry: usize) -> Option<usize> {
        let entries = &self.index.entries;
        let mut i = entry;
        // Each step goes to a lower entry number, so this ends.
        loop {
            let e = entries.get(i)?;
            match e.kind {
                EntryKind::File => return Some(i),
                EntryKind::HardLink => i = self.last_before(e.link_target.as_deref()?, i)?,
                _ => return None,
            }
        }
    }

    /// A cursor for [`IndexedLayer::read_with`]: it keeps a decoder between reads.
    pub fn cursor(&self) -> Cursor {
        Cursor::new()
    }

    /// Reads uncompressed bytes from `offset` into `buf`, from `source` (the blob),
    /// starting at the nearest checkpoint. Fills `buf` unless the stream ends first;
    /// returns how much it read (0 at or past the end).
    pub fn read<S: BlobSource + ?Sized>(
        &self,
        source: &S,
        offset: u64,
        buf: &mut [u8],
    ) -> io::Result<usize> {
        self.read_with(&mut Cursor::new(), source, offset, buf)
    }

    /// [`IndexedLayer::read`] with a cursor: if the cursor's decoder stands at or before
    /// `offset` and no checkpoint lies between, it continues from there (so reading a file
    /// in order decompresses it once); otherwise it restarts at the nearest checkpoint.
    pub fn read_with<S: BlobSource + ?Sized>(
        &self,
        cursor: &mut Cursor,
        source: &S,
        offset: u64,
        buf: &mut [u8],
    ) -> io::Result<usize> {
        let size = self.index.uncompressed_size;
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(size - offset).unwrap_or(usize::MAX));
        let buf = &mut buf[..want];
        if self.index.compression == Compression::None {
            let mut filled = 0;
            while filled < want {
                let at = offset + filled as u64;
                let n = retry(|| source.read_at(at, &mut buf[filled..]))?;
                if n == 0 {
                    return Err(short_source(at, self.index.blob_size));
                }
                filled += n.min(want - filled);
            }
            return Ok(want);
        }
        let result = (|| {
            self.seek_cursor(cursor, source, offset)?;
            let mut filled = 0;
            while filled < want {
                let n = cursor.decode(source, self.index.blob_size, &mut buf[filled..])?;
                if n == 0 {
                    return Err(early_end(cursor.pos, size));
                }
                filled += n;
                cursor.pos += n as u64;
            }
            Ok(want)
        })();
        if result.is_err() {
            // Whatever failed (the source, or the data), the decoder's state is not to be
            // trusted: the next read starts over at a checkpoint.
            cursor.dec = Dec::Idle;
        }
        result
    }

    /// Puts `cursor`'s decoder at `offset`.
    fn seek_cursor<S: BlobSource + ?Sized>(
        &self,
        cursor: &mut Cursor,
        source: &S,
        offset: u64,
    ) -> io::Result<()> {
        let cps = &self.index.checkpoints;
        // Validation put a checkpoint at 0, so there is one at or before any offset.
        let i = cps
            .partition_point(|c| c.uncompressed_offset <= offset)
            .saturating_sub(1);
        let cp = &cps[i];
        let continues = cursor.layer == self.id
            && !matches!(cursor.dec, Dec::Idle)
            && cursor.pos <= offset
            && cursor.pos >= cp.uncompressed_offset;
        if !continues {
            cursor.start(self, source, cp)?;
        }
        if cursor.pos < offset {
            let mut scratch = std::mem::take(&mut cursor.scratch);
            scratch.resize(SKIP_CHUNK, 0);
            let result = (|| {
                while cursor.pos < offset {
                    let n = (offset - cursor.pos).min(SKIP_CHUNK as u64) as usize;
                    let got = cursor.decode(source, self.index.blob_size, &mut scratch[..n])?;
                    if got == 0 {
                        return Err(early_end(cursor.pos, self.index.uncompressed_size));
                    }
                    cursor.pos += got as u64;
                }
                Ok(())
            })();
            cursor.scratch = scratch;
            result?;
        }
        Ok(())
    }

    /// Reads bytes `offset..` of the file of entry `entry` (a regular file, or a hard link
    /// to one) into `buf`: fills `buf` unless the file ends first; returns how much it
    /// read (0 at or past its end). Holes of sparse files read as zeros.
    pub fn read_file<S: BlobSource + ?Sized>(
        &self,
        source: &S,
        entry: usize,
        offset: u64,
        buf: &mut [u8],
    ) -> io::Result<usize> {
        self.read_file_with(&mut Cursor::new(), source, entry, offset, buf)
    }

    /// [`IndexedLayer::read_file`] with a cursor, for reading a file piece by piece.
    pub fn read_file_with<S: BlobSource + ?Sized>(
        &self,
        cursor: &mut Cursor,
        source: &S,
        entry: usize,
        offset: u64,
        buf: &mut [u8],
    ) -> io::Result<usize> {
        let i = self.file_entry(entry)?;
        let e = &self.index.entries[i];
        if offset >= e.size || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(e.size - offset).unwrap_or(usize::MAX));
        let data = e.data_offset.expect("validated: files have a data offset");
        let Some(chunks) = &e.sparse else {
            self.read_exact_with(cursor, source, data + offset, &mut buf[..want])?;
            return Ok(want);
        };
        let starts = &self.sparse_starts[&i];
        let mut filled = 0;
        while filled < want {
            let pos = offset + filled as u64;
            let rest = want - filled;
            let k = chunks.partition_point(|c| c.offset + c.len <= pos);
            match chunks.get(k) {
                Some(c) if c.offset <= pos => {
                    let within = pos - c.offset;
                    let n = rest.min(usize::try_from(c.len - within).unwrap_or(usize::MAX));
                    let at = data + starts[k] + within;
                    self.read_exact_with(cursor, source, at, &mut buf[filled..filled + n])?;
                    filled += n;
                }
                next => {
                    let hole_end = next.map_or(e.size, |c| c.offset);
                    let n = rest.min(usize::try_from(hole_end - pos).unwrap_or(usize::MAX));
                    buf[filled..filled + n].fill(0);
                    filled += n;
                }
            }
        }
        Ok(want)
    }

    fn read_exact_with<S: BlobSource + ?Sized>(
        &self,
        cursor: &mut Cursor,
        source: &S,
        offset: u64,
        buf: &mut [u8],
    ) -> io::Result<()> {
        let n = self.read_with(cursor, source, offset, buf)?;
        if n < buf.len() {
            return Err(early_end(offset + n as u64, self.index.uncompressed_size));
        }
        Ok(())
    }

    fn file_entry(&self, entry: usize) -> io::Result<usize> {
        self.resolve_file(entry).ok_or_else(|| {
            let what = match self.index.entries.get(entry) {
                None => format!("no entry {entry}"),
                Some(e) if e.kind == EntryKind::HardLink => {
                    format!("hard link {:?} leads to no regular file", e.path)
                }
                Some(e) => format!("{:?} is not a regular file", e.path),
            };
            io::Error::new(io::ErrorKind::InvalidInput, what)
        })
    }

    /// A reader of the uncompressed stream from `offset` (seekable).
    pub fn reader<'a, S: BlobSource + ?Sized>(
        &'a self,
        source: &'a S,
        offset: u64,
    ) -> LayerReader<'a, S> {
        LayerReader {
            layer: self,
            source,
            cursor: Cursor::new(),
            pos: offset,
        }
    }

    /// A reader of the file of entry `entry` (a regular file or a hard link to one),
    /// from its start (seekable).
    pub fn file_reader<'a, S: BlobSource + ?Sized>(
        &'a self,
        source: &'a S,
        entry: usize,
    ) -> io::Result<FileReader<'a, S>> {
        let entry = self.file_entry(entry)?;
        Ok(FileReader {
            layer: self,
            source,
            entry,
            cursor: Cursor::new(),
            pos: 0,
        })
    }
}

fn retry(mut f: impl FnMut() -> io::Result<usize>) -> io::Result<usize> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => return r,
        }
    }
}

fn short_source(at: u64, size: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("the blob source ends at byte {at}, before the blob's size {size}"),
    )
}

fn early_end(at: u64, size: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!(
            "the layer stream ends at uncompressed offset {at}, before its indexed size {size}"
        ),
    )
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {e}"))
}

/// Decoder state kept between reads of one layer (see [`IndexedLayer::read_with`]). A
/// cursor is tied to the layer it was last used on; used on another layer it simply
/// starts over. It is `Send`, so it can be kept per open file and used from any thread.
pub struct Cursor {
    /// The layer it decodes (0: none yet).
    layer: u64,
    /// Uncompressed offset of the next byte the decoder yields.
    pos: u64,
    dec: Dec,
    input: InputBuf,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cursor")
            .field("layer", &self.layer)
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

impl Default for Cursor {
    fn default() -> Self {
        Cursor::new()
    }
}

enum Dec {
    Idle,
    Gzip {
        inflate: Inflate,
        /// A member's deflate data just ended: its trailer and the next header follow.
        member_end: bool,
        done: bool,
    },
    Zstd {
        dctx: DCtx<'static>,
        /// Between frames (so the end of the blob here is a clean end).
        frame_done: bool,
        done: bool,
    },
}

/// Compressed bytes `buf[start..end]` fetched but not consumed; `next` is the blob
/// offset just after them.
struct InputBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    next: u64,
}

impl InputBuf {
    fn reset(&mut self, at: u64) {
        self.start = 0;
        self.end = 0;
        self.next = at;
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
    }

    /// Makes input available unless the blob (of `size` bytes) has ended; whether any is.
    fn fill<S: BlobSource + ?Sized>(&mut self, source: &S, size: u64) -> io::Result<bool> {
        if self.start < self.end {
            return Ok(true);
        }
        if self.next >= size {
            return Ok(false);
        }
        if self.buf.len() < READ_CHUNK {
            self.buf.resize(READ_CHUNK, 0);
        }
        let ask = READ_CHUNK.min(usize::try_from(size - self.next).unwrap_or(usize::MAX));
        let n = retry(|| source.read_at(self.next, &mut self.buf[..ask]))?.min(ask);
        if n == 0 {
            return Err(short_source(self.next, size));
        }
        self.start = 0;
        self.end = n;
        self.next += n as u64;
        Ok(true)
    }
}

impl Cursor {
    /// A cursor with no decoder yet.
    pub fn new() -> Cursor {
        Cursor {
            layer: 0,
            pos: 0,
            dec: Dec::Idle,
            input: InputBuf {
                buf: Vec::new(),
                start: 0,
                end: 0,
                next: 0,
            },
            scratch: Vec::new(),
        }
    }

    /// Uncompressed offset where the decoder stands (meaningless before the first read).
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Starts decoding at checkpoint `cp` of `layer`.
    fn start<S: BlobSource + ?Sized>(
        &mut self,
        layer: &IndexedLayer,
        source: &S,
        cp: &Checkpoint,
    ) -> io::Result<()> {
        let old = std::mem::replace(&mut self.dec, Dec::Idle);
        self.layer = 0;
        let size = layer.index.blob_size;
        if cp.compressed_offset > size {
            return Err(corrupt(
                "checkpoint",
                format!(
                    "compressed offset {} past the blob's end {size}",
                    cp.compressed_offset
                ),
            ));
        }
        self.dec = match layer.index.compression {
            Compression::Gzip => {
                let mut inflate = match old {
                    Dec::Gzip { mut inflate, .. } => {
                        inflate.reset(RAW)?;
                        inflate
                    }
                    _ => Inflate::new(RAW)?,
                };
                if cp.bits > 0 {
                    // The block starts `bits` bits before the byte at the offset: fetch
                    // from the byte before (in the same request) and feed those bits.
                    let at = cp.compressed_offset.checked_sub(1).ok_or_else(|| {
                        corrupt("checkpoint", "bit offset at the start of the blob")
                    })?;
                    self.input.reset(at);
                    if !self.input.fill(source, size)? {
                        return Err(short_source(at, size));
                    }
                    let byte = self.input.pending()[0];
                    self.input.consume(1);
                    inflate.prime(cp.bits, byte >> (8 - cp.bits))?;
                } else {
                    self.input.reset(cp.compressed_offset);
                }
                let window = cp
                    .window()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                if !window.is_empty() {
                    inflate.set_dictionary(&window)?;
                }
                Dec::Gzip {
                    inflate,
                    member_end: false,
                    done: false,
                }
            }
            Compression::Zstd => {
                self.input.reset(cp.compressed_offset);
                let dctx = match old {
                    Dec::Zstd { mut dctx, .. } => {
                        dctx.reset(ResetDirective::SessionOnly).map_err(|c| {
                            corrupt("zstd reset", zstd::zstd_safe::get_error_name(c))
                        })?;
                        dctx
                    }
                    _ => DCtx::create(),
                };
                Dec::Zstd {
                    dctx,
                    frame_done: true,
                    done: false,
                }
            }
            Compression::None => Dec::Idle,
        };
        self.layer = layer.id;
        self.pos = cp.uncompressed_offset;
        Ok(())
    }

    /// Decodes the next bytes into `out`; 0 at the end of the compressed stream.
    fn decode<S: BlobSource + ?Sized>(
        &mut self,
        source: &S,
        size: u64,
        out: &mut [u8],
    ) -> io::Result<usize> {
        let input = &mut self.input;
        match &mut self.dec {
            Dec::Idle => Ok(0),
            Dec::Gzip {
                inflate,
                member_end,
                done,
            } => loop {
                if *done {
                    return Ok(0);
                }
                if *member_end {
                    *done = next_member(inflate, input, source, size)?;
                    *member_end = false;
                    continue;
                }
                let have = input.fill(source, size)?;
                let step = inflate
                    .inflate(input.pending(), out, Flush::None)
                    .map_err(|e| corrupt("gzip", e))?;
                input.consume(step.consumed);
                if step.stream_end {
                    *member_end = true;
                }
                if step.produced > 0 {
                    return Ok(step.produced);
                }
                if !step.stream_end && step.consumed == 0 {
                    return Err(if have {
                        corrupt("gzip", "inflate made no progress")
                    } else {
                        io::Error::new(io::ErrorKind::UnexpectedEof, "gzip stream truncated")
                    });
                }
            },
            Dec::Zstd {
                dctx,
                frame_done,
                done,
            } => loop {
                if *done {
                    return Ok(0);
                }
                let have = input.fill(source, size)?;
                if !have && *frame_done {
                    *done = true;
                    return Ok(0);
                }
                let (consumed, produced, hint) = {
                    let mut src = InBuffer::around(input.pending());
                    let mut dst = OutBuffer::around(&mut *out);
                    let hint = dctx.decompress_stream(&mut dst, &mut src);
                    (src.pos(), dst.pos(), hint)
                };
                let hint = hint.map_err(|c| corrupt("zstd", zstd::zstd_safe::get_error_name(c)))?;
                input.consume(consumed);
                if hint == 0 {
                    *frame_done = true;
                } else if consumed > 0 || produced > 0 {
                    *frame_done = false;
                } else {
                    return Err(if have {
                        corrupt("zstd", "decoder made no progress")
                    } else {
                        io::Error::new(io::ErrorKind::UnexpectedEof, "zstd stream truncated")
                    });
                }
                if produced > 0 {
                    return Ok(produced);
                }
            },
        }
    }
}

/// After a gzip member's deflate data: skips its trailer and, if another member
/// follows, its header, leaving `inflate` raw at the member's first block. Returns
/// whether the blob ended instead.
fn next_member<S: BlobSource + ?Sized>(
    inflate: &mut Inflate,
    input: &mut InputBuf,
    source: &S,
    size: u64,
) -> io::Result<bool> {
    let mut trailer = 8;
    while trailer > 0 {
        if !input.fill(source, size)? {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "gzip member trailer truncated",
            ));
        }
        let n = trailer.min(input.pending().len());
        input.consume(n);
        trailer -= n;
    }
    if !input.fill(source, size)? {
        return Ok(true);
    }
    inflate.reset(GZIP)?;
    let mut scratch = [0u8; 64];
    loop {
        let have = input.fill(source, size)?;
        let step = inflate
            .inflate(input.pending(), &mut scratch, Flush::Block)
            .map_err(|e| corrupt("gzip member header", e))?;
        input.consume(step.consumed);
        if step.produced > 0 || step.stream_end {
            return Err(corrupt(
                "gzip member header",
                "data before the header ended",
            ));
        }
        if inflate.data_type() & 0x80 != 0 {
            break;
        }
        if step.consumed == 0 {
            return Err(if have {
                corrupt("gzip member header", "inflate made no progress")
            } else {
                io::Error::new(io::ErrorKind::UnexpectedEof, "gzip member header truncated")
            });
        }
    }
    inflate.reset(RAW)?;
    Ok(false)
}

/// The uncompressed stream of a layer as a seekable reader (see
/// [`IndexedLayer::reader`]); reading on continues the decoder.
pub struct LayerReader<'a, S: BlobSource + ?Sized> {
    layer: &'a IndexedLayer,
    source: &'a S,
    cursor: Cursor,
    pos: u64,
}

impl<S: BlobSource + ?Sized> Read for LayerReader<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self
            .layer
            .read_with(&mut self.cursor, self.source, self.pos, buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<S: BlobSource + ?Sized> Seek for LayerReader<'_, S> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.pos = seek_pos(self.pos, self.layer.index.uncompressed_size, to)?;
        Ok(self.pos)
    }
}

/// One file's contents as a seekable reader (see [`IndexedLayer::file_reader`]).
pub struct FileReader<'a, S: BlobSource + ?Sized> {
    layer: &'a IndexedLayer,
    source: &'a S,
    entry: usize,
    cursor: Cursor,
    pos: u64,
}

impl<S: BlobSource + ?Sized> FileReader<'_, S> {
    /// The file's entry (for a hard link, the file it leads to).
    pub fn entry(&self) -> &TocEntry {
        &self.layer.index.entries[self.entry]
    }
}

impl<S: BlobSource + ?Sized> Read for FileReader<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n =
            self.layer
                .read_file_with(&mut self.cursor, self.source, self.entry, self.pos, buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<S: BlobSource + ?Sized> Seek for FileReader<'_, S> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.pos = seek_pos(self.pos, self.entry().size, to)?;
        Ok(self.pos)
    }
}

fn seek_pos(pos: u64, size: u64, to: SeekFrom) -> io::Result<u64> {
    let target = match to {
        SeekFrom::Start(n) => Some(n),
        SeekFrom::End(d) => size.checked_add_signed(d),
        SeekFrom::Current(d) => pos.checked_add_signed(d),
    };
    target.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "seek to a negative or overflowing position",
        )
    })
}
