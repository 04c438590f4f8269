//! Building an index in one pass over a blob: decompress while recording checkpoints,
//! hash both sides, and read the tar stream's headers into the table of contents.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;
use std::rc::Rc;

use sha2::{Digest as _, Sha256};
use tar::EntryType;
use zstd::zstd_safe::{DCtx, InBuffer, OutBuffer};

use super::format::{
    Checkpoint, EntryKind, LayerIndex, SparseChunk, TocEntry, DEFAULT_SPAN, FORMAT_VERSION,
    MAX_ENTRIES, MAX_NAME_BYTES, MAX_SPAN, MAX_SPARSE_CHUNKS, MAX_XATTRS, MAX_XATTR_NAME,
    MAX_XATTR_VALUE, MIN_SPAN,
};
use super::zlib::{Flush, Inflate, GZIP};
use super::IndexError;
use crate::layer::{clean_path, Compression, Digest};

/// Limits and expectations for building an index.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Checkpoint spacing in uncompressed bytes ([`DEFAULT_SPAN`] by default): a random
    /// read decompresses up to about this much before the bytes it wants, and each gzip
    /// checkpoint costs its window (≤ 32 KiB, stored compressed) in the index.
    pub span: u64,
    /// Refuse layers that decompress to more than this (decompression bombs).
    pub max_uncompressed_bytes: u64,
    /// Refuse layers with more tar entries than this (at most the format's own cap).
    pub max_entries: u64,
    /// The blob's digest as the manifest gives it, checked after the last byte.
    pub expected_digest: Option<Digest>,
    /// The layer's diffID as the image config gives it, checked after the last byte.
    pub expected_diff_id: Option<Digest>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            span: DEFAULT_SPAN,
            max_uncompressed_bytes: 64 << 30,
            max_entries: MAX_ENTRIES,
            expected_digest: None,
            expected_diff_id: None,
        }
    }
}

impl BuildOptions {
    pub(super) fn check(&self) -> Result<(), IndexError> {
        if !(MIN_SPAN..=MAX_SPAN).contains(&self.span) {
            return Err(IndexError::BadOption(format!(
                "span {} outside {MIN_SPAN}..={MAX_SPAN}",
                self.span
            )));
        }
        if self.max_entries > MAX_ENTRIES {
            return Err(IndexError::BadOption(format!(
                "max_entries {} above the format's limit {MAX_ENTRIES}",
                self.max_entries
            )));
        }
        Ok(())
    }
}

/// Compressed bytes read from the blob at a time.
const INPUT_BUFFER: usize = 256 << 10;
/// The buffer between decompressor and tar reader: the tar reader asks for 512-byte
/// headers, the decompressor is fastest on large runs.
const DECODE_BUFFER: usize = 256 << 10;
/// Uncompressed bytes kept behind the read position, for the extension headers of GNU
/// sparse files (the tar reader consumes them without exposing them). Sparse maps of up
/// to this much less [`DECODE_BUFFER`] (tens of thousands of runs) can be indexed.
const HISTORY: usize = 2 << 20;

/// The first error of the layer stream, kept where the tar reader cannot reword it.
pub(super) type Failure = Rc<RefCell<Option<IndexError>>>;

fn fail(failure: &Failure, e: IndexError) -> io::Error {
    let msg = e.to_string();
    let mut slot = failure.borrow_mut();
    if slot.is_none() {
        *slot = Some(e);
    }
    io::Error::other(msg)
}

/// The blob as read: counted and (optionally) hashed.
pub(super) struct BlobIn<R> {
    inner: R,
    hasher: Option<Sha256>,
    count: u64,
}

impl<R: Read> BlobIn<R> {
    pub(super) fn new(inner: R, hash: bool) -> Self {
        BlobIn {
            inner,
            hasher: hash.then(Sha256::new),
            count: 0,
        }
    }

    /// Digest (if hashed) and size of what was read.
    pub(super) fn finish(self) -> (Option<Digest>, u64) {
        let digest = self.hasher.map(|h| sha256_digest(h.finalize().as_slice()));
        (digest, self.count)
    }
}

impl<R: Read> Read for BlobIn<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.count += n as u64;
        Ok(n)
    }
}

pub(super) fn sha256_digest(raw: &[u8]) -> Digest {
    Digest::parse(&format!("sha256:{}", hex::encode(raw))).expect("a sha256 digest")
}

/// A blob with its first bytes read ahead and replayed.
pub(super) type Sniffed<R> = io::Chain<io::Cursor<Vec<u8>>, R>;

/// Reads up to 4 bytes (the compression magic) and gives a reader that replays them.
pub(super) fn sniff<R: Read>(mut blob: R) -> Result<(Compression, Sniffed<R>), IndexError> {
    let mut head = vec![0u8; 4];
    let mut n = 0;
    while n < head.len() {
        match blob.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(IndexError::Io {
                    op: "read the blob",
                    source: e,
                })
            }
        }
    }
    head.truncate(n);
    Ok((
        Compression::detect(&head),
        io::Cursor::new(head).chain(blob),
    ))
}

/// Input buffering shared by the scanners: bytes `buf[start..end]` are read but not yet
/// consumed by the decompressor.
struct Input<R> {
    blob: BlobIn<R>,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    eof: bool,
}

impl<R: Read> Input<R> {
    fn new(blob: BlobIn<R>) -> Self {
        Input {
            blob,
            buf: vec![0u8; INPUT_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
        }
    }

    /// Refills an empty buffer unless the blob has ended.
    fn fill(&mut self, failure: &Failure) -> io::Result<()> {
        if self.start < self.end || self.eof {
            return Ok(());
        }
        self.start = 0;
        self.end = 0;
        loop {
            match self.blob.read(&mut self.buf) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok(n) => {
                    self.end = n;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(fail(
                        failure,
                        IndexError::Io {
                            op: "read the blob",
                            source: e,
                        },
                    ))
                }
            }
        }
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Blob offset of the next byte the decompressor has not consumed.
    fn offset(&self) -> u64 {
        self.blob.count - (self.end - self.start) as u64
    }
}

/// gzip, decompressed zran-style: block by block (`Z_BLOCK`), a checkpoint at the first
/// block boundary `span` bytes after the last one.
pub(super) struct GzipScan<R> {
    input: Input<R>,
    inflate: Inflate,
    out: u64,
    span: u64,
    checkpoints: Vec<Checkpoint>,
    done: bool,
    failure: Failure,
}

impl<R: Read> GzipScan<R> {
    pub(super) fn new(blob: BlobIn<R>, span: u64, failure: Failure) -> io::Result<Self> {
        Ok(GzipScan {
            input: Input::new(blob),
            inflate: Inflate::new(GZIP)?,
            out: 0,
            span,
            checkpoints: Vec::new(),
            done: false,
            failure,
        })
    }

    pub(super) fn finish(self) -> (Vec<Checkpoint>, BlobIn<R>) {
        (self.checkpoints, self.input.blob)
    }

    fn corrupt(&self, what: String) -> io::Error {
        fail(
            &self.failure,
            IndexError::Corrupt(format!(
                "gzip: {what} (compressed offset {}, uncompressed offset {})",
                self.input.offset(),
                self.out
            )),
        )
    }

    fn maybe_checkpoint(&mut self) {
        let dt = self.inflate.data_type();
        // At a block boundary (or just past a member's header), not in the last block,
        // with fewer than 8 bits of the last byte unused (always so with zlib; checked
        // because the bit position must fit the byte before the offset).
        let boundary = dt & 0xc0 == 0x80 && (dt & 0x3f) < 8;
        let due = self
            .checkpoints
            .last()
            .is_none_or(|c| self.out - c.uncompressed_offset >= self.span);
        if !(boundary && due) {
            return;
        }
        // Without its window a checkpoint would decode wrongly: leave it out (the next
        // block boundary is tried instead). Cannot fail on a live stream.
        if let Ok(window) = self.inflate.dictionary() {
            self.checkpoints.push(Checkpoint {
                uncompressed_offset: self.out,
                compressed_offset: self.input.offset(),
                bits: (dt & 7) as u8,
                window: Checkpoint::pack_window(&window),
            });
        }
    }
}

impl<R: Read> Read for GzipScan<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.done {
                return Ok(0);
            }
            self.input.fill(&self.failure)?;
            let step = match self
                .inflate
                .inflate(self.input.pending(), buf, Flush::Block)
            {
                Ok(step) => step,
                Err(e) => return Err(self.corrupt(e.to_string())),
            };
            self.input.start += step.consumed;
            self.out += step.produced as u64;
            self.maybe_checkpoint();
            if step.stream_end {
                // The member's CRC and length were checked by inflate. Another member?
                self.input.fill(&self.failure)?;
                if self.input.pending().is_empty() {
                    self.done = true;
                } else {
                    self.inflate.reset(GZIP)?;
                }
            } else if step.consumed == 0 && step.produced == 0 && self.input.eof {
                return Err(self.corrupt("stream truncated".into()));
            }
            if step.produced > 0 {
                return Ok(step.produced);
            }
        }
    }
}

/// zstd, decompressed with the streaming API, which stops at every frame end: a
/// checkpoint at the first frame start `span` bytes after the last one.
pub(super) struct ZstdScan<R> {
    input: Input<R>,
    dctx: DCtx<'static>,
    out: u64,
    span: u64,
    checkpoints: Vec<Checkpoint>,
    frame_done: bool,
    done: bool,
    failure: Failure,
}

impl<R: Read> ZstdScan<R> {
    pub(super) fn new(blob: BlobIn<R>, span: u64, failure: Failure) -> Self {
        ZstdScan {
            input: Input::new(blob),
            dctx: DCtx::create(),
            out: 0,
            span,
            checkpoints: vec![Checkpoint {
                uncompressed_offset: 0,
                compressed_offset: 0,
                bits: 0,
                window: Vec::new(),
            }],
            frame_done: true,
            done: false,
            failure,
        }
    }

    pub(super) fn finish(mut self) -> (Vec<Checkpoint>, BlobIn<R>) {
        // A frame start at the very end (after the last frame) is no use.
        let end = self.out;
        while self.checkpoints.len() > 1
            && self
                .checkpoints
                .last()
                .is_some_and(|c| c.uncompressed_offset == end)
        {
            self.checkpoints.pop();
        }
        (self.checkpoints, self.input.blob)
    }

    fn corrupt(&self, what: String) -> io::Error {
        fail(
            &self.failure,
            IndexError::Corrupt(format!(
                "zstd: {what} (compressed offset {}, uncompressed offset {})",
                self.input.offset(),
                self.out
            )),
        )
    }
}

impl<R: Read> Read for ZstdScan<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.done {
                return Ok(0);
            }
            self.input.fill(&self.failure)?;
            let have = !self.input.pending().is_empty();
            if !have && self.frame_done {
                self.done = true;
                return Ok(0);
            }
            // Without input the decoder may still have output to flush; only if it has
            // none is the stream truncated.
            let (consumed, produced, hint) = {
                let mut src = InBuffer::around(self.input.pending());
                let mut dst = OutBuffer::around(&mut *buf);
                let hint = self.dctx.decompress_stream(&mut dst, &mut src);
                (src.pos(), dst.pos(), hint)
            };
            let hint = match hint {
                Ok(h) => h,
                Err(code) => {
                    let name = zstd::zstd_safe::get_error_name(code).to_owned();
                    return Err(self.corrupt(name));
                }
            };
            self.input.start += consumed;
            self.out += produced as u64;
            if hint == 0 {
                self.frame_done = true;
                let due = self
                    .checkpoints
                    .last()
                    .is_none_or(|c| self.out - c.uncompressed_offset >= self.span);
                if due {
                    self.checkpoints.push(Checkpoint {
                        uncompressed_offset: self.out,
                        compressed_offset: self.input.offset(),
                        bits: 0,
                        window: Vec::new(),
                    });
                }
            } else if consumed > 0 || produced > 0 {
                self.frame_done = false;
            } else if have {
                return Err(self.corrupt("decoder made no progress".into()));
            } else {
                return Err(self.corrupt("stream truncated".into()));
            }
            if produced > 0 {
                return Ok(produced);
            }
        }
    }
}

/// The last [`HISTORY`] bytes of the uncompressed stream, by absolute offset.
struct History {
    buf: Vec<u8>,
    end: u64,
}

impl History {
    fn new() -> Self {
        History {
            buf: vec![0u8; HISTORY],
            end: 0,
        }
    }

    fn push(&mut self, data: &[u8]) {
        let cap = self.buf.len();
        let skip = data.len().saturating_sub(cap);
        // The byte at absolute offset p is kept at p % cap.
        let end = self.end + skip as u64;
        let data = &data[skip..];
        let start = (end % cap as u64) as usize;
        let first = data.len().min(cap - start);
        self.buf[start..start + first].copy_from_slice(&data[..first]);
        self.buf[..data.len() - first].copy_from_slice(&data[first..]);
        self.end = end + data.len() as u64;
    }

    fn get(&self, start: u64, len: usize) -> Option<Vec<u8>> {
        let cap = self.buf.len() as u64;
        let stop = start.checked_add(len as u64)?;
        if stop > self.end || start < self.end.saturating_sub(cap) {
            return None;
        }
        Some(
            (start..stop)
                .map(|p| self.buf[(p % cap) as usize])
                .collect(),
        )
    }
}

/// The uncompressed stream on its way to the tar reader: counted, hashed (the diffID),
/// limited, remembered (for sparse maps) and, when re-encoding, copied out.
struct Tally<'t, R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    limit: u64,
    history: Rc<RefCell<History>>,
    tee: Option<&'t mut dyn Write>,
    failure: Failure,
}

impl<R: Read> Read for Tally<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.count + n as u64 > self.limit {
            return Err(fail(
                &self.failure,
                IndexError::LayerTooLarge { limit: self.limit },
            ));
        }
        let data = &buf[..n];
        self.hasher.update(data);
        self.history.borrow_mut().push(data);
        if let Some(tee) = &mut self.tee {
            tee.write_all(data).map_err(|e| {
                fail(
                    &self.failure,
                    IndexError::Io {
                        op: "write the re-encoded blob",
                        source: e,
                    },
                )
            })?;
        }
        self.count += n as u64;
        Ok(n)
    }
}

/// What the tar side of a build found.
pub(super) struct Scanned {
    pub entries: Vec<TocEntry>,
    pub diff_id: Digest,
    pub size: u64,
}

/// Reads the uncompressed tar `stream` to its end (past the end-of-archive marker, so
/// every byte is hashed and the compressed stream checked to its end), collecting the
/// table of contents.
pub(super) fn scan_tar(
    stream: impl Read,
    opts: &BuildOptions,
    failure: &Failure,
    tee: Option<&mut dyn Write>,
) -> Result<Scanned, IndexError> {
    let history = Rc::new(RefCell::new(History::new()));
    let tally = Tally {
        inner: stream,
        hasher: Sha256::new(),
        count: 0,
        limit: opts.max_uncompressed_bytes,
        history: history.clone(),
        tee,
        failure: failure.clone(),
    };
    let mut buffered = BufReader::with_capacity(DECODE_BUFFER, tally);
    let from_stream = |e: io::Error| {
        failure
            .borrow_mut()
            .take()
            .unwrap_or_else(|| IndexError::Corrupt(printable(&e)))
    };
    let mut entries = Vec::new();
    match walk(&mut buffered, opts, &history, &mut entries) {
        Ok(()) => {}
        Err(Walk::Index(e)) => return Err(e),
        Err(Walk::Stream(e)) => {
            if failure.borrow().is_none() {
                // A tar that makes no sense is often compressed data gone bad, which the
                // decompressor may notice only further on (a gzip member's CRC at its
                // end): read on (within the size limit) for that diagnosis.
                let _ = io::copy(&mut buffered, &mut io::sink());
            }
            return Err(from_stream(e));
        }
    }
    // The rest (end-of-archive blocks, padding): read, hashed, checked, discarded.
    io::copy(&mut buffered, &mut io::sink()).map_err(from_stream)?;
    let tally = buffered.into_inner();
    Ok(Scanned {
        entries,
        diff_id: sha256_digest(tally.hasher.finalize().as_slice()),
        size: tally.count,
    })
}

/// Why walking the tar stopped: the stream failed, or an entry cannot be indexed.
enum Walk {
    Stream(io::Error),
    Index(IndexError),
}

/// Reads the tar's entries into `entries`.
fn walk(
    stream: &mut impl Read,
    opts: &BuildOptions,
    history: &RefCell<History>,
    entries: &mut Vec<TocEntry>,
) -> Result<(), Walk> {
    let mut archive = tar::Archive::new(stream);
    let mut count = 0u64;
    for entry in archive.entries().map_err(Walk::Stream)? {
        let mut entry = entry.map_err(Walk::Stream)?;
        count += 1;
        if count > opts.max_entries {
            return Err(Walk::Index(IndexError::TooManyEntries {
                limit: opts.max_entries,
            }));
        }
        if let Some(e) = toc_entry(&mut entry, history).map_err(Walk::Index)? {
            entries.push(e);
        }
    }
    Ok(())
}

/// An error message made printable and short (tar errors quote raw header bytes).
fn printable(e: &io::Error) -> String {
    e.to_string()
        .chars()
        .flat_map(char::escape_debug)
        .take(300)
        .collect()
}

fn bad(path: &Path, reason: impl Into<String>) -> IndexError {
    IndexError::BadEntry {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The table-of-contents entry of one tar entry; `None` for entries that are not files
/// of the layer (PAX global headers).
fn toc_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    history: &RefCell<History>,
) -> Result<Option<TocEntry>, IndexError> {
    let raw_path = entry
        .path()
        .map_err(|e| IndexError::Corrupt(printable(&e)))?
        .into_owned();
    let ty = entry.header().entry_type();
    if ty == EntryType::XGlobalHeader {
        return Ok(None);
    }
    let path = clean_path(&raw_path);
    if path.as_os_str().len() > MAX_NAME_BYTES {
        return Err(bad(
            &raw_path,
            format!("name longer than {MAX_NAME_BYTES} bytes"),
        ));
    }
    use std::os::unix::ffi::OsStrExt;
    let name = path.file_name().map(|n| n.as_bytes()).unwrap_or(b"");
    let kind = if name == b".wh..wh..opq" {
        EntryKind::Opaque
    } else if let Some(hidden) = name.strip_prefix(b".wh.") {
        if matches!(hidden, b"" | b"." | b"..") {
            return Err(bad(&raw_path, "whiteout of \"\", \".\" or \"..\""));
        }
        EntryKind::Whiteout
    } else {
        match ty {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => EntryKind::File,
            EntryType::Directory => EntryKind::Dir,
            EntryType::Symlink => EntryKind::Symlink,
            EntryType::Link => EntryKind::HardLink,
            EntryType::Char => EntryKind::Char,
            EntryType::Block => EntryKind::Block,
            EntryType::Fifo => EntryKind::Fifo,
            other => return Err(bad(&raw_path, format!("unsupported entry type {other:?}"))),
        }
    };
    let meta = meta(entry).map_err(|reason| bad(&raw_path, reason))?;
    let mut e = TocEntry {
        path,
        kind,
        mode: meta.mode,
        uid: meta.uid,
        gid: meta.gid,
        size: entry.size(),
        mtime: meta.mtime,
        xattrs: meta.xattrs,
        link_target: None,
        device: None,
        data_offset: None,
        sparse: None,
    };
    match kind {
        EntryKind::File => {
            let (offset, sparse) = if ty == EntryType::GNUSparse {
                let (offset, chunks) =
                    sparse_map(entry, history).map_err(|reason| bad(&raw_path, reason))?;
                (offset, Some(chunks))
            } else {
                (entry.raw_file_position(), None)
            };
            e.data_offset = Some(offset);
            e.sparse = sparse;
        }
        EntryKind::Symlink | EntryKind::HardLink => {
            let target = entry
                .link_name()
                .map_err(|e| IndexError::Corrupt(printable(&e)))?
                .ok_or_else(|| bad(&raw_path, "link without a target"))?
                .into_owned();
            let target = if kind == EntryKind::HardLink {
                clean_path(&target)
            } else {
                target
            };
            if target.as_os_str().len() > MAX_NAME_BYTES {
                return Err(bad(&raw_path, "link target too long"));
            }
            e.link_target = Some(target);
        }
        EntryKind::Char | EntryKind::Block => {
            let h = entry.header();
            let major = h
                .device_major()
                .map_err(|e| bad(&raw_path, e.to_string()))?;
            let minor = h
                .device_minor()
                .map_err(|e| bad(&raw_path, e.to_string()))?;
            e.device = Some((major.unwrap_or(0), minor.unwrap_or(0)));
        }
        _ => {}
    }
    Ok(Some(e))
}

/// Data offset and runs of a GNU sparse file. The tar reader has consumed the extension
/// headers that continue the map (they sit where `raw_file_position` points), so they
/// are read back from the stream's recent history.
fn sparse_map<R: Read>(
    entry: &tar::Entry<'_, R>,
    history: &RefCell<History>,
) -> Result<(u64, Vec<SparseChunk>), String> {
    let gnu = entry
        .header()
        .as_gnu()
        .ok_or("GNU sparse entry without a GNU header")?;
    let mut chunks = Vec::new();
    let mut add = |h: &tar::GnuSparseHeader| -> Result<(), String> {
        if h.is_empty() {
            return Ok(());
        }
        let offset = h.offset().map_err(|e| e.to_string())?;
        let len = h.length().map_err(|e| e.to_string())?;
        if len > 0 {
            if chunks.len() >= MAX_SPARSE_CHUNKS {
                return Err(format!("more than {MAX_SPARSE_CHUNKS} sparse runs"));
            }
            chunks.push(SparseChunk { offset, len });
        }
        Ok(())
    };
    for h in &gnu.sparse {
        add(h)?;
    }
    let mut pos = entry.raw_file_position();
    if gnu.is_extended() {
        loop {
            let block = history
                .borrow()
                .get(pos, 512)
                .ok_or("sparse map too large to index")?;
            let mut ext = tar::GnuExtSparseHeader::new();
            ext.as_mut_bytes().copy_from_slice(&block);
            for h in &ext.sparse {
                add(h)?;
            }
            pos += 512;
            if !ext.is_extended() {
                break;
            }
        }
    }
    Ok((pos, chunks))
}

/// Owner, mode, time and xattrs of an entry, as the unpack reads them.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, u32),
    xattrs: Vec<(String, Vec<u8>)>,
}

fn meta<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Meta, String> {
    let h = entry.header();
    let old = h.as_old();
    // Some writers leave numeric fields blank: read those as 0, as the unpack does.
    let blank = |field: &[u8]| field.iter().all(|b| *b == 0 || *b == b' ');
    let num = |r: io::Result<u64>, field: &[u8]| match r {
        Ok(v) => Ok(v),
        Err(_) if blank(field) => Ok(0),
        Err(e) => Err(e.to_string()),
    };
    let id = |v: u64, what: &str| u32::try_from(v).map_err(|_| format!("{what} {v} too large"));
    let mut m = Meta {
        mode: num(h.mode().map(u64::from), &old.mode)? as u32 & 0o7777,
        uid: id(num(h.uid(), &old.uid)?, "uid")?,
        gid: id(num(h.gid(), &old.gid)?, "gid")?,
        mtime: (
            i64::try_from(num(h.mtime(), &old.mtime)?).map_err(|_| "mtime too large")?,
            0,
        ),
        xattrs: Vec::new(),
    };
    let mut xattrs = BTreeMap::new();
    if let Some(exts) = entry.pax_extensions().map_err(|e| e.to_string())? {
        for ext in exts {
            let ext = ext.map_err(|e| e.to_string())?;
            let key = ext.key().map_err(|e| e.to_string())?;
            let value = ext.value_bytes();
            let text = || String::from_utf8_lossy(value).into_owned();
            match key {
                "uid" => {
                    m.uid = text()
                        .parse()
                        .map_err(|_| format!("bad PAX uid {:?}", text()))?
                }
                "gid" => {
                    m.gid = text()
                        .parse()
                        .map_err(|_| format!("bad PAX gid {:?}", text()))?
                }
                "mtime" => {
                    m.mtime =
                        pax_time(&text()).ok_or_else(|| format!("bad PAX mtime {:?}", text()))?
                }
                k => {
                    if let Some(name) = k.strip_prefix("SCHILY.xattr.") {
                        if name.is_empty() || name.len() > MAX_XATTR_NAME || name.contains('\0') {
                            return Err(format!("bad xattr name {name:?}"));
                        }
                        if value.len() > MAX_XATTR_VALUE {
                            return Err(format!(
                                "xattr {name} longer than {MAX_XATTR_VALUE} bytes"
                            ));
                        }
                        xattrs.insert(name.to_owned(), value.to_vec());
                    }
                }
            }
        }
    }
    if xattrs.len() > MAX_XATTRS {
        return Err(format!("more than {MAX_XATTRS} xattrs"));
    }
    m.xattrs = xattrs.into_iter().collect();
    Ok(m)
}

/// Parses a PAX time (`1700000000.123456789`, `-1.5`) into whole seconds rounded down
/// and nanoseconds (digits past the ninth are dropped).
pub(super) fn pax_time(s: &str) -> Option<(i64, u32)> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let negative = secs.starts_with('-');
    let secs: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let nsec: u32 = digits.parse().ok()?;
    if negative && nsec > 0 {
        Some((secs.checked_sub(1)?, 1_000_000_000 - nsec))
    } else {
        Some((secs, nsec))
    }
}

/// Builds the index of the layer blob read from `blob` (gzip, zstd or plain tar, told
/// by its first bytes) in one pass: decompression (verified to the end of the stream),
/// checkpoints every `opts.span` bytes, the table of contents, blob digest and diffID.
pub fn build_index(blob: impl Read, opts: &BuildOptions) -> Result<LayerIndex, IndexError> {
    opts.check()?;
    let (compression, blob) = sniff(blob)?;
    let failure: Failure = Rc::new(RefCell::new(None));
    let (scanned, checkpoints, blob_in) = match compression {
        Compression::Gzip => {
            let mut scan = GzipScan::new(BlobIn::new(blob, true), opts.span, failure.clone())
                .map_err(|e| IndexError::Io {
                    op: "start inflating",
                    source: e,
                })?;
            let scanned = scan_tar(&mut scan, opts, &failure, None)?;
            let (checkpoints, blob_in) = scan.finish();
            (scanned, checkpoints, blob_in)
        }
        Compression::Zstd => {
            let mut scan = ZstdScan::new(BlobIn::new(blob, true), opts.span, failure.clone());
            let scanned = scan_tar(&mut scan, opts, &failure, None)?;
            let (checkpoints, blob_in) = scan.finish();
            (scanned, checkpoints, blob_in)
        }
        Compression::None => {
            // The blob is the tar: its digest is the diffID, hashed once on the tar side.
            let mut blob_in = BlobIn::new(blob, false);
            let scanned = scan_tar(&mut blob_in, opts, &failure, None)?;
            (scanned, Vec::new(), blob_in)
        }
    };
    let (digest, blob_size) = blob_in.finish();
    let blob_digest = digest.unwrap_or_else(|| scanned.diff_id.clone());
    check_digests(opts, &blob_digest, &scanned.diff_id)?;
    let index = LayerIndex {
        version: FORMAT_VERSION,
        compression,
        blob_digest,
        blob_size,
        diff_id: scanned.diff_id,
        uncompressed_size: scanned.size,
        span: opts.span,
        entries: scanned.entries,
        checkpoints,
    };
    index.validate()?;
    Ok(index)
}

pub(super) fn check_digests(
    opts: &BuildOptions,
    blob_digest: &Digest,
    diff_id: &Digest,
) -> Result<(), IndexError> {
    for (expected, actual) in [
        (&opts.expected_digest, blob_digest),
        (&opts.expected_diff_id, diff_id),
    ] {
        if let Some(expected) = expected {
            if expected != actual {
                return Err(IndexError::DigestMismatch {
                    expected: expected.clone(),
                    actual: actual.clone(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        assert_eq!(pax_time("1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(pax_time("1700000000.5"), Some((1_700_000_000, 500_000_000)));
        assert_eq!(pax_time("1.1234567891"), Some((1, 123_456_789)));
        assert_eq!(pax_time("-1.5"), Some((-2, 500_000_000)));
        assert_eq!(pax_time("-0.25"), Some((-1, 750_000_000)));
        assert_eq!(pax_time("-3"), Some((-3, 0)));
        assert_eq!(pax_time("x"), None);
        assert_eq!(pax_time("1.x"), None);
    }

    #[test]
    fn history_keeps_the_last_bytes_by_offset() {
        let mut h = History {
            buf: vec![0; 8],
            end: 0,
        };
        h.push(b"abc");
        assert_eq!(h.get(0, 3).as_deref(), Some(&b"abc"[..]));
        h.push(b"defghij"); // 10 bytes in: the first 2 are gone
        assert_eq!(h.get(0, 1), None);
        assert_eq!(h.get(2, 8).as_deref(), Some(&b"cdefghij"[..]));
        assert_eq!(h.get(9, 2), None);
        h.push(b"0123456789ABC"); // longer than the buffer
        assert_eq!(h.end, 23);
        assert_eq!(h.get(15, 8).as_deref(), Some(&b"56789ABC"[..]));
        assert_eq!(h.get(14, 1), None);
    }
}
