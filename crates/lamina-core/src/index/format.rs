//! The index's data model and its binary form.
//!
//! # Binary format, version 1
//!
//! All integers marked `v` are unsigned LEB128 varints (at most 10 bytes, no redundant
//! trailing zero groups), `z` a zigzag-encoded signed varint, `bytes` a `v` length followed
//! by that many bytes. Fixed-width integers are little-endian.
//!
//! ```text
//! header   magic      8   \x89 L A M I D X \n
//!          version    u16 1
//!          flags      u16 0 (no optional features are defined; others are refused)
//!          body_len   u32 length of the body
//! body     compression u8 0 none, 1 gzip, 2 zstd
//!          blob digest 32 raw sha256 of the blob as stored
//!          diff id     32 raw sha256 of the uncompressed tar
//!          blob size           v
//!          uncompressed size   v
//!          span                v
//!          entry count         v, then the entries in tar order:
//!            kind        u8  (EntryKind as listed, 0 = file … 8 = opaque)
//!            path        v bytes shared with the previous entry's path, then bytes of the rest
//!            mode uid gid size  v v v v
//!            mtime       z seconds minus the previous entry's, v nanoseconds
//!            file:       z data offset minus the end of the previous file's data
//!                        (offset + stored size, both wrapping), v sparse (0: not
//!                        sparse, n+1: n chunks of v gap since the previous chunk's end,
//!                        v length)
//!            symlink, hard link: bytes target
//!            char, block: v major, v minor
//!            xattr count v, then per xattr: bytes name, bytes value (sorted by name)
//!          checkpoint count    v, then per checkpoint:
//!            v uncompressed offset minus the previous one's (the first: minus 0)
//!            v compressed offset minus the previous one's
//!            u8 bits
//!            bytes window (zstd frame of the up to 32 KiB deflate window; empty for none)
//! trailer  crc32      u32 CRC-32 (IEEE) of header and body
//! ```
//!
//! The format is laid out by hand rather than through serde and postcard so that it is
//! fixed in one place (no derive attribute or field reorder can change it silently), so
//! that paths are prefix-compressed and offsets delta-coded, and above all so that the
//! decoder checks every count and length against both a fixed cap and the bytes that are
//! actually left before it allocates anything: hostile input can make it fail, never make
//! it allocate more than a small multiple of its own size or panic.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use super::IndexError;
use crate::layer::{Compression, Digest};

/// The first eight bytes of every encoded index (PNG-style: a high byte and a newline
/// catch 7-bit and line-ending mangling).
pub const MAGIC: [u8; 8] = *b"\x89LAMIDX\n";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// The default checkpoint spacing: 4 MiB of uncompressed data.
pub const DEFAULT_SPAN: u64 = 4 << 20;
/// The smallest span accepted (smaller spans make the index mostly windows).
pub const MIN_SPAN: u64 = 16 << 10;
/// The largest span accepted (a re-encoded zstd frame is held in memory whole).
pub const MAX_SPAN: u64 = 1 << 30;
/// The largest encoded index the decoder accepts.
pub const MAX_INDEX_BYTES: usize = 1 << 30;
/// The most entries an index may have (the layer engine's default entry limit).
pub const MAX_ENTRIES: u64 = 10_000_000;
/// The longest path or link target, in bytes.
pub const MAX_NAME_BYTES: usize = 64 << 10;
/// The most extended attributes on one entry.
pub const MAX_XATTRS: usize = 4096;
/// The longest extended attribute name (Linux' XATTR_NAME_MAX).
pub const MAX_XATTR_NAME: usize = 255;
/// The largest extended attribute value (Linux' XATTR_SIZE_MAX).
pub const MAX_XATTR_VALUE: usize = 64 << 10;
/// The most data chunks of one sparse file.
pub const MAX_SPARSE_CHUNKS: usize = 1 << 20;
/// The largest deflate window, uncompressed.
pub const WINDOW_SIZE: usize = 32 << 10;
/// The largest stored (compressed) window.
pub const MAX_STORED_WINDOW: usize = 64 << 10;

const HEADER: usize = 16;
const TRAILER: usize = 4;

/// The seekable index of one layer blob: its table of contents and the checkpoints from
/// which its decompression can start in the middle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerIndex {
    /// Format version ([`FORMAT_VERSION`]).
    pub version: u16,
    /// How the blob is compressed.
    pub compression: Compression,
    /// Digest of the blob as stored (what the manifest lists).
    pub blob_digest: Digest,
    /// Bytes of the blob.
    pub blob_size: u64,
    /// Digest of the uncompressed tar (the image config's diffID).
    pub diff_id: Digest,
    /// Bytes of the uncompressed tar.
    pub uncompressed_size: u64,
    /// The checkpoint spacing the index was built with, in uncompressed bytes.
    pub span: u64,
    /// Every tar entry, in tar order (a later entry of the same path replaces an earlier
    /// one on unpack; the index keeps both, as the tar does).
    pub entries: Vec<TocEntry>,
    /// Where decompression can start, by increasing offset. Empty for an uncompressed
    /// layer (every offset is its own checkpoint); otherwise the first is at offset 0.
    pub checkpoints: Vec<Checkpoint>,
}

/// What a tar entry is. Whiteouts and opaque markers keep their raw tar form (an entry
/// named `.wh.NAME` or `.wh..wh..opq`), told apart here because every consumer must.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A regular file (tar types `0`, `7`, and GNU sparse `S`).
    File,
    /// A directory.
    Dir,
    /// A symbolic link; `link_target` is its target as written.
    Symlink,
    /// A hard link; `link_target` is the (cleaned) path of the entry it links to.
    HardLink,
    /// A character device; `device` holds its numbers.
    Char,
    /// A block device; `device` holds its numbers.
    Block,
    /// A named pipe.
    Fifo,
    /// `.wh.NAME`: NAME is deleted from the layers below. Names starting `.wh..wh.` other
    /// than the opaque marker are aufs bookkeeping that unpacking ignores; see
    /// [`TocEntry::whiteout_target`].
    Whiteout,
    /// `.wh..wh..opq`: the directory it is in hides everything below it.
    Opaque,
}

impl EntryKind {
    const ALL: [EntryKind; 9] = [
        EntryKind::File,
        EntryKind::Dir,
        EntryKind::Symlink,
        EntryKind::HardLink,
        EntryKind::Char,
        EntryKind::Block,
        EntryKind::Fifo,
        EntryKind::Whiteout,
        EntryKind::Opaque,
    ];

    fn code(self) -> u8 {
        EntryKind::ALL
            .iter()
            .position(|k| *k == self)
            .expect("every kind is listed") as u8
    }
}

/// One run of data of a sparse file: `len` bytes at file offset `offset`. The runs'
/// bytes are stored back to back from the entry's `data_offset`; everything between runs
/// (and after the last, up to `size`) reads as zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseChunk {
    /// Offset in the file.
    pub offset: u64,
    /// Length in bytes (never 0).
    pub len: u64,
}

/// One entry of the table of contents, with the metadata an unpack would give it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TocEntry {
    /// The name in the tar (PAX or GNU long names included), made relative and lexically
    /// clean as [`crate::layer::clean_path`] does; empty for the root (`./`).
    pub path: PathBuf,
    /// What it is.
    pub kind: EntryKind,
    /// Permission bits with setuid, setgid and sticky (the low 12 bits of the tar mode).
    pub mode: u32,
    /// Owner (PAX `uid` over the header's).
    pub uid: u32,
    /// Group (PAX `gid` over the header's).
    pub gid: u32,
    /// For a file its length (a sparse file's logical length); for other kinds the
    /// entry's data size in the tar, normally 0.
    pub size: u64,
    /// Modification time: seconds since the epoch and nanoseconds (0..1e9, added to the
    /// seconds, so -1.5 s is `(-2, 500_000_000)`), from PAX `mtime` when present.
    pub mtime: (i64, u32),
    /// Extended attributes from PAX `SCHILY.xattr.NAME` records, sorted by name, the last
    /// record of a name winning. Kept raw: `trusted.overlay.*` names are listed too, and a
    /// consumer that shows them to overlayfs must drop them as the unpack does.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Symlink target (as written) or hard link target (cleaned like `path`).
    pub link_target: Option<PathBuf>,
    /// Major and minor numbers of a character or block device.
    pub device: Option<(u32, u32)>,
    /// For a regular file: where its bytes start in the uncompressed tar stream.
    pub data_offset: Option<u64>,
    /// For a GNU sparse file (tar type `S`, its map in the header and extension
    /// headers): its data runs (see [`SparseChunk`]), so that holes read as zeros without
    /// being stored. PAX sparse formats (`GNU.sparse.*` records) are not understood by
    /// the tar reader or the unpack; such an entry is indexed as the plain file the tar
    /// shows (map and data as its contents), as it would unpack.
    pub sparse: Option<Vec<SparseChunk>>,
}

impl TocEntry {
    /// Bytes of the file's data in the tar stream: `size`, or a sparse file's data runs.
    pub fn stored_size(&self) -> u64 {
        match &self.sparse {
            Some(chunks) => chunks.iter().fold(0u64, |a, c| a.saturating_add(c.len)),
            None => self.size,
        }
    }

    /// For a whiteout entry, the name it deletes (in the same directory); `None` for
    /// other kinds and for aufs bookkeeping names (`.wh..wh.*`), which delete nothing.
    pub fn whiteout_target(&self) -> Option<&OsStr> {
        if self.kind != EntryKind::Whiteout {
            return None;
        }
        let name = self.path.file_name()?.as_bytes();
        let hidden = name.strip_prefix(b".wh.")?;
        (!hidden.is_empty() && !hidden.starts_with(b".wh.")).then(|| OsStr::from_bytes(hidden))
    }
}

/// A place where decompression can start: uncompressed offset `uncompressed_offset`
/// begins at compressed offset `compressed_offset`. For gzip that is a deflate block
/// boundary, `bits` bits before that byte (the low bits of the byte before it), with the
/// 32 KiB of output before it as the window; for zstd the start of a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Offset in the uncompressed stream.
    pub uncompressed_offset: u64,
    /// Offset in the blob of the first whole byte of the block or frame.
    pub compressed_offset: u64,
    /// gzip: how many bits of the byte before `compressed_offset` belong to the block
    /// (0..=7); always 0 for zstd.
    pub bits: u8,
    /// gzip: the up to 32 KiB of uncompressed data before the checkpoint (within its gzip
    /// member), stored as a zstd frame to keep the index small; empty when there is none
    /// (the start of a member, and always for zstd). See [`Checkpoint::window`].
    pub window: Vec<u8>,
}

impl Checkpoint {
    /// The deflate window, decompressed (at most [`WINDOW_SIZE`] bytes).
    pub fn window(&self) -> Result<Vec<u8>, IndexError> {
        if self.window.is_empty() {
            return Ok(Vec::new());
        }
        zstd::bulk::decompress(&self.window, WINDOW_SIZE).map_err(|e| {
            IndexError::Invalid(format!(
                "window of the checkpoint at {}: {e}",
                self.uncompressed_offset
            ))
        })
    }

    /// Stores a raw window (as [`Checkpoint::window`] expects it).
    pub fn pack_window(raw: &[u8]) -> Vec<u8> {
        if raw.is_empty() {
            return Vec::new();
        }
        zstd::bulk::compress(raw, WINDOW_LEVEL).expect("compressing to memory cannot fail")
    }
}

/// zstd level for windows: most of the gain of higher levels at a small cost, as every
/// window is compressed once while the layer streams by.
const WINDOW_LEVEL: i32 = 9;

fn invalid(msg: impl Into<String>) -> IndexError {
    IndexError::Invalid(msg.into())
}

impl LayerIndex {
    /// Checks everything the decoder checks: version, caps, entries consistent with their
    /// kind, file data inside the stream, checkpoints increasing and inside the blob.
    /// [`LayerIndex::decode`] never returns an index that fails this.
    pub fn validate(&self) -> Result<(), IndexError> {
        if self.version != FORMAT_VERSION {
            return Err(IndexError::UnsupportedVersion {
                found: self.version,
            });
        }
        if !(MIN_SPAN..=MAX_SPAN).contains(&self.span) {
            return Err(invalid(format!(
                "span {} outside {MIN_SPAN}..={MAX_SPAN}",
                self.span
            )));
        }
        if self.entries.len() as u64 > MAX_ENTRIES {
            return Err(invalid(format!(
                "{} entries, more than {MAX_ENTRIES}",
                self.entries.len()
            )));
        }
        if self.compression == Compression::None
            && (self.blob_size != self.uncompressed_size || self.blob_digest != self.diff_id)
        {
            return Err(invalid(
                "an uncompressed blob must be its own tar (same size and digest)",
            ));
        }
        for (i, e) in self.entries.iter().enumerate() {
            self.validate_entry(e)
                .map_err(|m| invalid(format!("entry {i} ({:?}): {m}", e.path)))?;
        }
        self.validate_checkpoints()
    }

    fn validate_entry(&self, e: &TocEntry) -> Result<(), String> {
        let path = e.path.as_os_str().as_bytes();
        if path.len() > MAX_NAME_BYTES {
            return Err(format!("path longer than {MAX_NAME_BYTES} bytes"));
        }
        if crate::layer::clean_path(&e.path).as_os_str() != e.path.as_os_str() {
            return Err("path is not clean".into());
        }
        if e.kind == EntryKind::Whiteout
            && e.path
                .file_name()
                .is_some_and(|n| matches!(n.as_bytes(), b".wh." | b".wh.." | b".wh..."))
        {
            return Err("whiteout of \"\", \".\" or \"..\"".into());
        }
        if e.mode > 0o7777 {
            return Err(format!("mode {:o} has bits above 0o7777", e.mode));
        }
        if e.mtime.1 >= 1_000_000_000 {
            return Err(format!("mtime nanoseconds {} ≥ 1e9", e.mtime.1));
        }
        let file = e.kind == EntryKind::File;
        let link = matches!(e.kind, EntryKind::Symlink | EntryKind::HardLink);
        let dev = matches!(e.kind, EntryKind::Char | EntryKind::Block);
        if e.data_offset.is_some() != file {
            return Err("data offset present exactly for files".into());
        }
        if e.sparse.is_some() && !file {
            return Err("sparse map on a non-file".into());
        }
        if e.link_target.is_some() != link {
            return Err("link target present exactly for links".into());
        }
        if e.device.is_some() != dev {
            return Err("device numbers present exactly for devices".into());
        }
        if let Some(t) = &e.link_target {
            let t = t.as_os_str().as_bytes();
            if t.len() > MAX_NAME_BYTES {
                return Err(format!("link target longer than {MAX_NAME_BYTES} bytes"));
            }
            if e.kind == EntryKind::HardLink
                && crate::layer::clean_path(OsStr::from_bytes(t).as_ref())
                    .as_os_str()
                    .as_bytes()
                    != t
            {
                return Err("hard link target is not clean".into());
            }
        }
        if e.xattrs.len() > MAX_XATTRS {
            return Err(format!("more than {MAX_XATTRS} xattrs"));
        }
        for (i, (name, value)) in e.xattrs.iter().enumerate() {
            if name.is_empty() || name.len() > MAX_XATTR_NAME || name.contains('\0') {
                return Err(format!("bad xattr name {name:?}"));
            }
            if value.len() > MAX_XATTR_VALUE {
                return Err(format!("xattr {name} longer than {MAX_XATTR_VALUE} bytes"));
            }
            if i > 0 && e.xattrs[i - 1].0 >= *name {
                return Err("xattrs not sorted by name, or repeated".into());
            }
        }
        if let Some(chunks) = &e.sparse {
            if chunks.len() > MAX_SPARSE_CHUNKS {
                return Err(format!("more than {MAX_SPARSE_CHUNKS} sparse chunks"));
            }
            let mut end = 0u64;
            for c in chunks {
                if c.len == 0 || c.offset < end {
                    return Err("sparse chunks empty, overlapping or out of order".into());
                }
                end = c
                    .offset
                    .checked_add(c.len)
                    .filter(|end| *end <= e.size)
                    .ok_or("sparse chunk past the file's size")?;
            }
        }
        if let Some(offset) = e.data_offset {
            let end = offset.checked_add(e.stored_size());
            if end.is_none_or(|end| end > self.uncompressed_size) {
                return Err(format!(
                    "data at {offset}+{} past the stream's end {}",
                    e.stored_size(),
                    self.uncompressed_size
                ));
            }
        }
        Ok(())
    }

    fn validate_checkpoints(&self) -> Result<(), IndexError> {
        let cps = &self.checkpoints;
        match (self.compression, cps.first()) {
            (Compression::None, Some(_)) => {
                return Err(invalid("an uncompressed layer has no checkpoints"))
            }
            (Compression::None, None) => return Ok(()),
            (_, None) => return Err(invalid("a compressed layer needs a checkpoint at 0")),
            (_, Some(first)) if first.uncompressed_offset != 0 => {
                return Err(invalid(
                    "the first checkpoint must be at uncompressed offset 0",
                ))
            }
            _ => {}
        }
        for (i, cp) in cps.iter().enumerate() {
            let bad = |m: String| invalid(format!("checkpoint {i}: {m}"));
            if i > 0 {
                let prev = &cps[i - 1];
                if cp.uncompressed_offset <= prev.uncompressed_offset
                    || cp.compressed_offset < prev.compressed_offset
                {
                    return Err(bad("offsets not increasing".into()));
                }
            }
            if cp.uncompressed_offset > self.uncompressed_size {
                return Err(bad(format!(
                    "uncompressed offset {} past the stream's end {}",
                    cp.uncompressed_offset, self.uncompressed_size
                )));
            }
            if cp.compressed_offset > self.blob_size {
                return Err(bad(format!(
                    "compressed offset {} past the blob's end {}",
                    cp.compressed_offset, self.blob_size
                )));
            }
            match self.compression {
                Compression::Zstd if cp.bits != 0 || !cp.window.is_empty() => {
                    return Err(bad("a zstd checkpoint has no bits or window".into()))
                }
                Compression::Gzip if cp.bits > 7 || (cp.bits > 0 && cp.compressed_offset == 0) => {
                    return Err(bad(format!("bad bit offset {}", cp.bits)))
                }
                _ => {}
            }
            if cp.window.len() > MAX_STORED_WINDOW {
                return Err(bad("stored window too large".into()));
            }
            if !cp.window.is_empty() {
                // The frame must say how much it holds, and no more than a window.
                match zstd::zstd_safe::get_frame_content_size(&cp.window) {
                    Ok(Some(n)) if n as usize <= WINDOW_SIZE && n > 0 => {}
                    _ => return Err(bad("window is not a zstd frame of at most 32 KiB".into())),
                }
            }
        }
        Ok(())
    }

    /// The binary form (see the module documentation). Fails only if the index is not
    /// valid ([`LayerIndex::validate`]).
    pub fn encode(&self) -> Result<Vec<u8>, IndexError> {
        self.validate()?;
        let mut b = Vec::with_capacity(256 + self.entries.len() * 48);
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes()); // body length, patched below
        b.push(match self.compression {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Zstd => 2,
        });
        b.extend_from_slice(&digest_bytes(&self.blob_digest));
        b.extend_from_slice(&digest_bytes(&self.diff_id));
        put_v(&mut b, self.blob_size);
        put_v(&mut b, self.uncompressed_size);
        put_v(&mut b, self.span);
        put_v(&mut b, self.entries.len() as u64);
        let mut prev: &[u8] = &[];
        let (mut prev_secs, mut prev_end) = (0i64, 0u64);
        for e in &self.entries {
            b.push(e.kind.code());
            let path = e.path.as_os_str().as_bytes();
            let shared = prev.iter().zip(path).take_while(|(a, b)| a == b).count();
            put_v(&mut b, shared as u64);
            put_bytes(&mut b, &path[shared..]);
            prev = path;
            put_v(&mut b, u64::from(e.mode));
            put_v(&mut b, u64::from(e.uid));
            put_v(&mut b, u64::from(e.gid));
            put_v(&mut b, e.size);
            put_v(&mut b, zigzag(e.mtime.0.wrapping_sub(prev_secs)));
            prev_secs = e.mtime.0;
            put_v(&mut b, u64::from(e.mtime.1));
            match e.kind {
                EntryKind::File => {
                    let offset = e.data_offset.expect("validated");
                    put_v(&mut b, zigzag(offset.wrapping_sub(prev_end) as i64));
                    prev_end = offset.wrapping_add(e.stored_size());
                    match &e.sparse {
                        None => put_v(&mut b, 0),
                        Some(chunks) => {
                            put_v(&mut b, chunks.len() as u64 + 1);
                            let mut end = 0;
                            for c in chunks {
                                put_v(&mut b, c.offset - end);
                                put_v(&mut b, c.len);
                                end = c.offset + c.len;
                            }
                        }
                    }
                }
                EntryKind::Symlink | EntryKind::HardLink => put_bytes(
                    &mut b,
                    e.link_target
                        .as_ref()
                        .expect("validated")
                        .as_os_str()
                        .as_bytes(),
                ),
                EntryKind::Char | EntryKind::Block => {
                    let (major, minor) = e.device.expect("validated");
                    put_v(&mut b, u64::from(major));
                    put_v(&mut b, u64::from(minor));
                }
                _ => {}
            }
            put_v(&mut b, e.xattrs.len() as u64);
            for (name, value) in &e.xattrs {
                put_bytes(&mut b, name.as_bytes());
                put_bytes(&mut b, value);
            }
        }
        put_v(&mut b, self.checkpoints.len() as u64);
        let (mut out, mut inp) = (0, 0);
        for cp in &self.checkpoints {
            put_v(&mut b, cp.uncompressed_offset - out);
            put_v(&mut b, cp.compressed_offset - inp);
            (out, inp) = (cp.uncompressed_offset, cp.compressed_offset);
            b.push(cp.bits);
            put_bytes(&mut b, &cp.window);
        }
        let body_len = b.len() - HEADER;
        if b.len() + TRAILER > MAX_INDEX_BYTES {
            return Err(IndexError::TooLarge {
                size: (b.len() + TRAILER) as u64,
                limit: MAX_INDEX_BYTES as u64,
            });
        }
        b[12..16].copy_from_slice(&(body_len as u32).to_le_bytes());
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        Ok(b)
    }

    /// Parses an index. Truncated, oversized, corrupt (checksum) or inconsistent input
    /// gives an error, never a panic; nothing is allocated beyond a small multiple of
    /// `bytes.len()`, whatever the lengths inside claim.
    pub fn decode(bytes: &[u8]) -> Result<LayerIndex, IndexError> {
        if bytes.len() > MAX_INDEX_BYTES {
            return Err(IndexError::TooLarge {
                size: bytes.len() as u64,
                limit: MAX_INDEX_BYTES as u64,
            });
        }
        if bytes.len() < MAGIC.len() {
            return Err(IndexError::Truncated(format!(
                "{} bytes, shorter than the magic",
                bytes.len()
            )));
        }
        if bytes[..8] != MAGIC {
            return Err(IndexError::BadMagic);
        }
        if bytes.len() < HEADER + TRAILER {
            return Err(IndexError::Truncated(format!(
                "{} bytes, shorter than header and checksum",
                bytes.len()
            )));
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version != FORMAT_VERSION {
            return Err(IndexError::UnsupportedVersion { found: version });
        }
        let flags = u16::from_le_bytes([bytes[10], bytes[11]]);
        if flags != 0 {
            return Err(IndexError::UnknownFlags(flags));
        }
        let body_len = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes")) as usize;
        let have = bytes.len() - HEADER - TRAILER;
        if body_len > have {
            return Err(IndexError::Truncated(format!(
                "body of {body_len} bytes, {have} present"
            )));
        }
        if body_len < have {
            return Err(invalid(format!(
                "{} bytes after the checksum",
                have - body_len
            )));
        }
        let end = HEADER + body_len;
        let stored = u32::from_le_bytes(bytes[end..end + 4].try_into().expect("4 bytes"));
        let computed = crc32fast::hash(&bytes[..end]);
        if stored != computed {
            return Err(IndexError::Checksum { stored, computed });
        }
        let index = Reader {
            buf: &bytes[HEADER..end],
            pos: 0,
        }
        .body(version)?;
        index.validate()?;
        Ok(index)
    }
}

fn digest_bytes(d: &Digest) -> [u8; 32] {
    let hex = d.as_str().strip_prefix("sha256:").expect("a sha256 digest");
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex, &mut out).expect("a parsed digest is 64 hex digits");
    out
}

fn put_v(b: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            b.push(byte);
            return;
        }
        b.push(byte | 0x80);
    }
}

fn put_bytes(b: &mut Vec<u8>, bytes: &[u8]) {
    put_v(b, bytes.len() as u64);
    b.extend_from_slice(bytes);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// What entries are delta-coded against: the previous entry's path and mtime seconds,
/// and the end of the previous file's data.
#[derive(Default)]
struct Prev {
    path: Vec<u8>,
    secs: i64,
    data_end: u64,
}

/// The body decoder: every read is bounds-checked, every length capped before use.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn eof(&self, what: &str) -> IndexError {
        IndexError::Truncated(format!("body ends inside {what} at byte {}", self.pos))
    }

    fn u8(&mut self, what: &str) -> Result<u8, IndexError> {
        let b = *self.buf.get(self.pos).ok_or_else(|| self.eof(what))?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], IndexError> {
        if n > self.left() {
            return Err(self.eof(what));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn v(&mut self, what: &str) -> Result<u64, IndexError> {
        let mut v = 0u64;
        for i in 0..10 {
            let byte = self.u8(what)?;
            let bits = u64::from(byte & 0x7f);
            if i == 9 && bits > 1 {
                return Err(invalid(format!("{what}: varint overflows 64 bits")));
            }
            v |= bits << (7 * i);
            if byte & 0x80 == 0 {
                if i > 0 && bits == 0 {
                    return Err(invalid(format!("{what}: varint not in shortest form")));
                }
                return Ok(v);
            }
        }
        Err(invalid(format!("{what}: varint longer than 10 bytes")))
    }

    fn v32(&mut self, what: &str) -> Result<u32, IndexError> {
        let v = self.v(what)?;
        u32::try_from(v).map_err(|_| invalid(format!("{what} {v} exceeds 32 bits")))
    }

    /// A length, checked against `cap` and against the bytes left (each counted item
    /// takes at least `min_item` bytes), so nothing is sized by a hostile number.
    fn len(&mut self, what: &str, cap: usize, min_item: usize) -> Result<usize, IndexError> {
        let n = self.v(what)?;
        if n > cap as u64 {
            return Err(invalid(format!("{what} {n} exceeds the limit {cap}")));
        }
        let n = n as usize;
        if n.saturating_mul(min_item) > self.left() {
            return Err(self.eof(what));
        }
        Ok(n)
    }

    fn bytes(&mut self, what: &str, cap: usize) -> Result<&'a [u8], IndexError> {
        let n = self.len(what, cap, 1)?;
        self.take(n, what)
    }

    fn digest(&mut self, what: &str) -> Result<Digest, IndexError> {
        let raw = self.take(32, what)?;
        Ok(Digest::parse(&format!("sha256:{}", hex::encode(raw))).expect("64 hex digits"))
    }

    fn body(mut self, version: u16) -> Result<LayerIndex, IndexError> {
        let compression = match self.u8("compression")? {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Zstd,
            c => return Err(invalid(format!("unknown compression {c}"))),
        };
        let blob_digest = self.digest("blob digest")?;
        let diff_id = self.digest("diff id")?;
        let blob_size = self.v("blob size")?;
        let uncompressed_size = self.v("uncompressed size")?;
        let span = self.v("span")?;
        // An entry takes at least 10 bytes (kind, 2 path, 4 numbers, 2 time, xattr count).
        let count = self.len("entry count", MAX_ENTRIES as usize, 10)?;
        let mut entries = Vec::with_capacity(count.min(1 << 16));
        let mut prev = Prev::default();
        for _ in 0..count {
            entries.push(self.entry(&mut prev)?);
        }
        let count = self.len("checkpoint count", usize::MAX, 4)?;
        let mut checkpoints = Vec::with_capacity(count.min(1 << 16));
        let (mut out, mut inp) = (0u64, 0u64);
        for _ in 0..count {
            out = out
                .checked_add(self.v("checkpoint offset")?)
                .ok_or_else(|| invalid("checkpoint offset overflows"))?;
            inp = inp
                .checked_add(self.v("checkpoint offset")?)
                .ok_or_else(|| invalid("checkpoint offset overflows"))?;
            let bits = self.u8("checkpoint bits")?;
            let window = self.bytes("checkpoint window", MAX_STORED_WINDOW)?.to_vec();
            checkpoints.push(Checkpoint {
                uncompressed_offset: out,
                compressed_offset: inp,
                bits,
                window,
            });
        }
        if self.left() != 0 {
            return Err(invalid(format!(
                "{} unparsed bytes at the end of the body",
                self.left()
            )));
        }
        Ok(LayerIndex {
            version,
            compression,
            blob_digest,
            blob_size,
            diff_id,
            uncompressed_size,
            span,
            entries,
            checkpoints,
        })
    }

    fn entry(&mut self, prev: &mut Prev) -> Result<TocEntry, IndexError> {
        let code = self.u8("entry kind")?;
        let kind = *EntryKind::ALL
            .get(code as usize)
            .ok_or_else(|| invalid(format!("unknown entry kind {code}")))?;
        let shared = self.v("path prefix")?;
        if shared > prev.path.len() as u64 {
            return Err(invalid("path prefix longer than the previous path"));
        }
        let rest = self.bytes("path", MAX_NAME_BYTES)?;
        prev.path.truncate(shared as usize);
        if prev.path.len() + rest.len() > MAX_NAME_BYTES {
            return Err(invalid(format!("path longer than {MAX_NAME_BYTES} bytes")));
        }
        prev.path.extend_from_slice(rest);
        let path = PathBuf::from(OsStr::from_bytes(&prev.path));
        let mode = self.v32("mode")?;
        let uid = self.v32("uid")?;
        let gid = self.v32("gid")?;
        let size = self.v("size")?;
        let secs = prev.secs.wrapping_add(unzigzag(self.v("mtime")?));
        prev.secs = secs;
        let nsec = self.v32("mtime nanoseconds")?;
        let (mut data_offset, mut sparse, mut link_target, mut device) = (None, None, None, None);
        match kind {
            EntryKind::File => {
                let offset = prev
                    .data_end
                    .wrapping_add(unzigzag(self.v("data offset")?) as u64);
                data_offset = Some(offset);
                let n = self.len("sparse chunk count", MAX_SPARSE_CHUNKS + 1, 2)?;
                if n > 0 {
                    let mut chunks = Vec::with_capacity((n - 1).min(1 << 12));
                    let mut end = 0u64;
                    for _ in 1..n {
                        let offset = end
                            .checked_add(self.v("sparse chunk")?)
                            .ok_or_else(|| invalid("sparse chunk offset overflows"))?;
                        let len = self.v("sparse chunk")?;
                        end = offset
                            .checked_add(len)
                            .ok_or_else(|| invalid("sparse chunk end overflows"))?;
                        chunks.push(SparseChunk { offset, len });
                    }
                    prev.data_end =
                        offset.wrapping_add(chunks.iter().fold(0u64, |a, c| a.wrapping_add(c.len)));
                    sparse = Some(chunks);
                } else {
                    prev.data_end = offset.wrapping_add(size);
                }
            }
            EntryKind::Symlink | EntryKind::HardLink => {
                let t = self.bytes("link target", MAX_NAME_BYTES)?;
                link_target = Some(PathBuf::from(OsStr::from_bytes(t)));
            }
            EntryKind::Char | EntryKind::Block => {
                device = Some((self.v32("device major")?, self.v32("device minor")?));
            }
            _ => {}
        }
        let n = self.len("xattr count", MAX_XATTRS, 2)?;
        let mut xattrs = Vec::with_capacity(n);
        for _ in 0..n {
            let name = self.bytes("xattr name", MAX_XATTR_NAME)?;
            let name = std::str::from_utf8(name)
                .map_err(|_| invalid("xattr name is not UTF-8"))?
                .to_owned();
            let value = self.bytes("xattr value", MAX_XATTR_VALUE)?.to_vec();
            xattrs.push((name, value));
        }
        Ok(TocEntry {
            path,
            kind,
            mode,
            uid,
            gid,
            size,
            mtime: (secs, nsec),
            xattrs,
            link_target,
            device,
            data_offset,
            sparse,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_zigzag() {
        for v in [0, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut b = Vec::new();
            put_v(&mut b, v);
            let mut r = Reader { buf: &b, pos: 0 };
            assert_eq!(r.v("x").unwrap(), v);
            assert_eq!(r.left(), 0);
        }
        for v in [0, 1, -1, i64::MIN, i64::MAX, -1_000_000] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        // Overlong, overflowing and unterminated varints are refused.
        for bad in [
            &[0x80, 0x00][..],
            &[0xff; 10][..],
            &[0x80; 11][..],
            &[0x80][..],
        ] {
            assert!(Reader { buf: bad, pos: 0 }.v("x").is_err(), "{bad:?}");
        }
    }
}
