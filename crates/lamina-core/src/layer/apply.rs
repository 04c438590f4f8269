//! Applying one OCI layer: decompress, verify, and write each tar entry into the
//! destination, translating whiteouts for the backend.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use tar::EntryType;

use super::digest::{Digest, HashingReader};
use super::root::{children, clean, join, remove_all_at, Root};
use super::{Compression, LayerError};
use crate::sys;

/// What whiteouts become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutStyle {
    /// overlayfs form, for a layer applied into its own upper directory: `.wh.NAME` becomes
    /// a 0:0 character device, `.wh..wh..opq` the xattr `trusted.overlay.opaque=y`.
    Overlay,
    /// Real deletions, for a layer applied onto a full copy of its parent (native backend).
    Delete,
}

/// Limits and expectations for one layer.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// How whiteouts are written.
    pub whiteouts: WhiteoutStyle,
    /// Refuse layers that decompress to more than this many bytes (decompression bombs).
    pub max_uncompressed_bytes: u64,
    /// Refuse layers with more entries than this.
    pub max_entries: u64,
    /// The digest of the blob as given (compressed), checked after the last byte.
    pub expected_digest: Option<Digest>,
    /// The blob's digest is checked by whoever stores it (the content store that holds
    /// it or is receiving it at the same time), so it is not hashed a second time here;
    /// the report then gives `expected_digest`. Without an `expected_digest` the blob is
    /// hashed anyway.
    pub blob_digest_checked_elsewhere: bool,
    /// The digest of the uncompressed tar (the diffID), checked after the last byte.
    pub expected_diff_id: Option<Digest>,
    /// Directories of the lower layers, topmost first: a hard link to a file that lives
    /// only in a lower layer copies that file up first, as overlayfs would.
    pub lowers: Vec<PathBuf>,
    /// `lowers` holds every layer below (so an empty list means there is none). Then a
    /// whiteout that would hide nothing is left out: overlayfs lists a whiteout in a
    /// directory no lower layer has as a broken entry. Otherwise every whiteout is
    /// written and reported in [`ApplyReport::whiteouts`], for
    /// [`drop_redundant_whiteouts`] once the layers below are known.
    pub lowers_complete: bool,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            whiteouts: WhiteoutStyle::Overlay,
            max_uncompressed_bytes: 64 << 30,
            max_entries: 10_000_000,
            expected_digest: None,
            blob_digest_checked_elsewhere: false,
            expected_diff_id: None,
            lowers: Vec::new(),
            lowers_complete: false,
        }
    }
}

/// What applying a layer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    /// Digest of the blob as read (compressed).
    pub digest: Digest,
    /// Bytes of the blob as read.
    pub compressed_size: u64,
    /// Digest of the uncompressed tar stream.
    pub diff_id: Digest,
    /// Bytes of the uncompressed tar stream.
    pub size: u64,
    /// Tar entries applied (whiteouts included).
    pub entries: u64,
    /// Directories the layer needed as parents but had no entry for, which the unpack
    /// created. Where a lower layer has the directory, its owner, mode and xattrs are
    /// what overlayfs would show (it copies a directory up before changing it), so they
    /// are carried over; done here when `lowers` were given, by the caller otherwise
    /// ([`adopt_lower_attributes`]).
    pub implicit_dirs: Vec<PathBuf>,
    /// Whiteouts written without knowing the layers below (`lowers_complete` false).
    pub whiteouts: Vec<PathBuf>,
}

/// Refuses to read past a byte limit, remembering that it did.
struct Limit<R> {
    inner: R,
    left: u64,
    hit: Rc<Cell<bool>>,
}

impl<R: Read> Read for Limit<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            self.hit.set(true);
            return Err(std::io::Error::other("decompressed size limit exceeded"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Bytes decompressed at a time.
const DECODE_BUFFER: usize = 256 << 10;

/// Applies the layer read from `blob` into directory `dest`. Nothing is written outside
/// `dest`. On error `dest` holds a partial layer: the caller discards it.
pub fn apply_layer(
    blob: impl Read,
    dest: &Path,
    opts: &ApplyOptions,
) -> Result<ApplyReport, LayerError> {
    let reader = BufReader::with_capacity(256 << 10, blob);
    let mut blob = match &opts.expected_digest {
        Some(_) if opts.blob_digest_checked_elsewhere => HashingReader::counting(reader),
        _ => HashingReader::new(reader),
    };
    let head = blob.get_mut().fill_buf().map_err(corrupt)?.to_vec();
    let hit = Rc::new(Cell::new(false));
    let (diff_id, size, entries, implicit_dirs, whiteouts) = {
        let decoded: Box<dyn Read + '_> = match Compression::detect(&head) {
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&mut blob)),
            Compression::Zstd => {
                Box::new(zstd::stream::read::Decoder::new(&mut blob).map_err(corrupt)?)
            }
            Compression::None => Box::new(&mut blob),
        };
        let limit = Limit {
            inner: decoded,
            left: opts.max_uncompressed_bytes,
            hit: hit.clone(),
        };
        // The tar reader asks for 512-byte headers and small files' bytes; a buffer in
        // front of the decompressor lets it inflate in large runs, on its fast path.
        let mut tar_stream = BufReader::with_capacity(DECODE_BUFFER, HashingReader::new(limit));
        let mut applier = Applier::new(dest, opts)?;
        let result = applier.run(&mut tar_stream);
        let limited = |e: LayerError| {
            if hit.get() {
                LayerError::TooLarge {
                    limit: opts.max_uncompressed_bytes,
                }
            } else {
                e
            }
        };
        let entries = result.map_err(limited)?;
        let implicit_dirs = applier.implicit_dirs();
        let whiteouts = std::mem::take(&mut applier.whiteouts);
        if !opts.lowers.is_empty() {
            adopt_lower_attributes(dest, &implicit_dirs, &opts.lowers)?;
        }
        // Bytes still buffered were hashed when they were read; the rest is read now.
        let (diff_id, size) = tar_stream
            .into_inner()
            .finish()
            .map_err(corrupt)
            .map_err(limited)?;
        (diff_id, size, entries, implicit_dirs, whiteouts)
    };
    let diff_id = diff_id.expect("the tar stream is always hashed");
    let (digest, compressed_size) = blob.finish().map_err(corrupt)?;
    let digest = match (digest, &opts.expected_digest) {
        (Some(actual), Some(expected)) if actual != *expected => {
            return Err(LayerError::DigestMismatch {
                expected: expected.clone(),
                actual,
            })
        }
        (Some(actual), _) => actual,
        (None, Some(expected)) => expected.clone(),
        (None, None) => unreachable!("a blob without an expected digest is hashed"),
    };
    if let Some(expected) = &opts.expected_diff_id {
        if *expected != diff_id {
            return Err(LayerError::DigestMismatch {
                expected: expected.clone(),
                actual: diff_id,
            });
        }
    }
    Ok(ApplyReport {
        digest,
        compressed_size,
        diff_id,
        size,
        entries,
        implicit_dirs,
        whiteouts,
    })
}

/// Whether anything at `rel` shows in one of `lowers` (topmost first) for a whiteout to
/// hide.
fn exists_below(rel: &Path, lowers: &[PathBuf]) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    lowers.iter().any(|l| {
        std::fs::symlink_metadata(l.join(rel))
            .is_ok_and(|m| !(m.file_type().is_char_device() && m.rdev() == 0))
    })
}

/// Removes the whiteouts of `whiteouts` (relative to `dest`) that hide nothing in
/// `lowers` (every layer below, topmost first): overlayfs would list them as broken
/// entries in a directory no lower layer has.
pub fn drop_redundant_whiteouts(
    dest: &Path,
    whiteouts: &[PathBuf],
    lowers: &[PathBuf],
) -> Result<(), LayerError> {
    let mut root = Root::open(dest)?;
    for rel in whiteouts {
        if exists_below(rel, lowers) {
            continue;
        }
        let comps = clean(rel);
        let Some((name, parent)) = comps.split_last() else {
            continue;
        };
        let Some(dir) = root.dir(parent, false)? else {
            continue;
        };
        match rustix::fs::statat(&*dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st)
                if FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice
                    && st.st_rdev == 0 =>
            {
                rustix::fs::unlinkat(&*dir, name, AtFlags::empty())
                    .map_err(|e| io_err("remove whiteout", &comps, e))?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Gives each directory of `implicit` (relative to `dest`) the owner, mode and xattrs of
/// the same directory in the topmost of `lowers` (topmost first) that has it, as
/// overlayfs shows a directory of a lower layer that a later layer writes into. A
/// directory no lower layer has keeps what the unpack gave it.
pub fn adopt_lower_attributes(
    dest: &Path,
    implicit: &[PathBuf],
    lowers: &[PathBuf],
) -> Result<(), LayerError> {
    for rel in implicit {
        let Some(found) = lowers.iter().find_map(|l| {
            let p = l.join(rel);
            std::fs::symlink_metadata(&p).ok().map(|m| (p, m))
        }) else {
            continue;
        };
        let (src, meta) = found;
        use std::os::unix::fs::MetadataExt;
        if !meta.is_dir() {
            continue; // a file or whiteout below: the directory is new
        }
        let mut root = Root::open(dest)?;
        let comps = clean(rel);
        let Some(dir) = root.dir(&comps, false)? else {
            continue; // gone again (a later entry replaced it)
        };
        let fd = reopen_dir(&dir, OsStr::new("."), &comps)?;
        rustix::fs::fchown(
            &fd,
            Some(rustix::process::Uid::from_raw(meta.uid())),
            Some(rustix::process::Gid::from_raw(meta.gid())),
        )
        .map_err(|e| io_err("chown", &comps, e))?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(meta.mode() & 0o7777))
            .map_err(|e| io_err("chmod", &comps, e))?;
        for (k, v) in super::diff::xattrs(&src)? {
            sys::set_xattr_fd(&fd, &k.to_string_lossy(), &v).map_err(|e| LayerError::Io {
                op: "setxattr",
                path: rel.clone(),
                source: e,
            })?;
        }
    }
    Ok(())
}

/// A read error of the layer stream, its message made printable and short (tar errors
/// quote the raw header bytes of garbage input).
fn corrupt(e: std::io::Error) -> LayerError {
    let text: String = e
        .to_string()
        .chars()
        .flat_map(char::escape_debug)
        .take(300)
        .collect();
    LayerError::Corrupt(text)
}

impl<R: Read> HashingReader<BufReader<R>> {
    fn get_mut(&mut self) -> &mut BufReader<R> {
        self.inner_mut()
    }
}

/// Per-entry metadata gathered from the header and PAX records.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Timespec,
    xattrs: Vec<(String, Vec<u8>)>,
}

struct Applier<'o> {
    root: Root,
    opts: &'o ApplyOptions,
    /// Paths this layer created, for opaque directories in delete style (only then).
    created: HashSet<Vec<OsString>>,
    /// Directories the layer has entries for (so not implicit).
    explicit_dirs: HashSet<Vec<OsString>>,
    /// Whiteouts written while the layers below were unknown.
    whiteouts: Vec<PathBuf>,
    /// Directories this layer marked opaque (overlay style). A whiteout inside one is
    /// redundant (the marker already hides everything below) and harmful: overlayfs lists
    /// an opaque lower directory as it is, so the whiteout would show as a broken entry.
    opaque_dirs: HashSet<Vec<OsString>>,
    /// Directory mtimes, set last because creating children changes them.
    dir_times: Vec<(Vec<OsString>, Timespec)>,
    /// File content passes through here, one buffer for the whole layer.
    buf: Vec<u8>,
    /// Owner and group this process gives what it creates.
    creator: (u32, u32),
    /// The group new entries of a recently used parent directory get (a set-group-ID
    /// directory passes its own on); the descriptor is kept so the key stays unique.
    parent_group: Option<(Rc<OwnedFd>, u32)>,
}

impl<'o> Applier<'o> {
    fn new(dest: &Path, opts: &'o ApplyOptions) -> Result<Self, LayerError> {
        Ok(Applier {
            root: Root::open(dest)?,
            opts,
            created: HashSet::new(),
            opaque_dirs: HashSet::new(),
            explicit_dirs: HashSet::new(),
            whiteouts: Vec::new(),
            dir_times: Vec::new(),
            buf: vec![0u8; SPARSE_BLOCK],
            creator: (
                rustix::process::geteuid().as_raw(),
                rustix::process::getegid().as_raw(),
            ),
            parent_group: None,
        })
    }

    /// Parent directories created for entries but never named by one.
    fn implicit_dirs(&self) -> Vec<PathBuf> {
        self.root
            .implicit_dirs()
            .iter()
            .filter(|c| !self.explicit_dirs.contains(*c))
            .map(|c| join(c))
            .collect()
    }

    fn run(&mut self, stream: &mut impl Read) -> Result<u64, LayerError> {
        let mut archive = tar::Archive::new(stream);
        let mut count = 0u64;
        for entry in archive.entries().map_err(corrupt)? {
            let mut entry = entry.map_err(corrupt)?;
            count += 1;
            if count > self.opts.max_entries {
                return Err(LayerError::TooManyEntries {
                    limit: self.opts.max_entries,
                });
            }
            let path = entry.path().map_err(corrupt)?.into_owned();
            self.entry(&path, &mut entry)?;
        }
        for (comps, mtime) in std::mem::take(&mut self.dir_times).into_iter().rev() {
            if let Some(fd) = self.root.dir(&comps, false)? {
                let t = times(mtime);
                rustix::fs::utimensat(fd, ".", &t, AtFlags::empty())
                    .map_err(|e| io_err("set times", &comps, e))?;
            }
        }
        Ok(count)
    }

    fn entry<R: Read>(
        &mut self,
        path: &Path,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<(), LayerError> {
        let comps = clean(path);
        let kind = entry.header().entry_type();
        let meta = meta(entry).map_err(|reason| bad(path, reason))?;
        let Some((name, parent)) = comps.split_last() else {
            // "./" itself: only its attributes can change.
            if kind == EntryType::Directory {
                let fd = self
                    .root
                    .fd()
                    .try_clone()
                    .map_err(|e| std_io("open", &comps, e))?;
                let dir = reopen_dir(&fd, OsStr::new("."), &comps)?;
                self.set_meta_fd(&dir, &meta, &comps, true)?;
                self.dir_times.push((comps, meta.mtime));
            }
            return Ok(());
        };
        let raw = name.as_bytes();
        if raw == b".wh..wh..opq" {
            return self.opaque(parent);
        }
        if let Some(hidden) = raw.strip_prefix(b".wh.") {
            if hidden.starts_with(b".wh.") {
                return Ok(()); // aufs bookkeeping (.wh..wh.plnk etc.): nothing to apply
            }
            if matches!(hidden, b"" | b"." | b"..") {
                // `.wh..` would delete the directory itself, `.wh...` its parent, which
                // for the top directory is outside the destination.
                return Err(bad(path, "whiteout of \"\", \".\" or \"..\"".into()));
            }
            return self.whiteout(parent, OsStr::from_bytes(hidden), meta.mtime);
        }
        match kind {
            EntryType::Directory => self.directory(&comps, &meta),
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.regular(&comps, &meta, entry)
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(corrupt)?
                    .ok_or_else(|| bad(path, "symlink without a target".into()))?
                    .into_owned();
                self.symlink(&comps, &target, &meta)
            }
            EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(corrupt)?
                    .ok_or_else(|| bad(path, "hard link without a target".into()))?;
                self.hard_link(&comps, &clean(&target), &meta)
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let ft = match kind {
                    EntryType::Char => FileType::CharacterDevice,
                    EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let dev = if ft == FileType::Fifo {
                    0 // device fields of a fifo are often left blank
                } else {
                    let h = entry.header();
                    let major = h.device_major().map_err(corrupt)?.unwrap_or(0);
                    let minor = h.device_minor().map_err(corrupt)?.unwrap_or(0);
                    rustix::fs::makedev(major, minor)
                };
                self.special(&comps, ft, dev, &meta)
            }
            EntryType::XGlobalHeader => Ok(()),
            other => Err(bad(path, format!("unsupported entry type {other:?}"))),
        }
    }

    /// Directory `comps`, created if missing.
    fn created_dir(&mut self, comps: &[OsString]) -> Result<Rc<OwnedFd>, LayerError> {
        Ok(self.root.dir(comps, true)?.expect("created on demand"))
    }

    /// Remembers that this layer wrote `comps` (delete style needs it for opaque dirs).
    fn note_created(&mut self, comps: &[OsString]) {
        if self.opts.whiteouts == WhiteoutStyle::Delete {
            self.created.insert(comps.to_vec());
        }
    }

    /// Makes the non-directory entry `comps` with `make` (given its parent directory and
    /// name). Whatever stands there already is removed and `make` runs again: a later
    /// tar entry replaces an earlier one. Trying first saves a lookup per entry, as the
    /// name is almost always free.
    fn create<T>(
        &mut self,
        comps: &[OsString],
        op: &'static str,
        mut make: impl FnMut(&OwnedFd, &OsStr) -> std::io::Result<T>,
    ) -> Result<(Rc<OwnedFd>, T), LayerError> {
        let (name, parent) = comps.split_last().expect("non-empty path");
        let dir = self.created_dir(parent)?;
        let made = match make(&dir, name) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                remove_all_at(&*dir, name).map_err(|e| io_err("replace", comps, e))?;
                self.root.invalidate(); // it may have been a cached directory
                self.opaque_dirs.retain(|d| !d.starts_with(comps));
                make(&dir, name)
            }
            r => r,
        }
        .map_err(|e| std_io(op, comps, e))?;
        self.note_created(comps);
        Ok((dir, made))
    }

    /// Whether an entry just created in `dir` must be chowned to get `meta`'s owner: not
    /// when it got that owner on creation (the common case of files owned by root,
    /// unpacked by root), which saves a metadata update per file.
    fn needs_chown(&mut self, dir: &Rc<OwnedFd>, meta: &Meta) -> Result<bool, LayerError> {
        if meta.uid != self.creator.0 {
            return Ok(true);
        }
        let group = match &self.parent_group {
            Some((fd, group)) if Rc::ptr_eq(fd, dir) => *group,
            _ => {
                let st = rustix::fs::fstat(&**dir).map_err(|e| io_err("stat", &[], e))?;
                let group = if st.st_mode & 0o2000 != 0 {
                    st.st_gid
                } else {
                    self.creator.1
                };
                self.parent_group = Some((dir.clone(), group));
                group
            }
        };
        Ok(meta.gid != group)
    }

    fn directory(&mut self, comps: &[OsString], meta: &Meta) -> Result<(), LayerError> {
        let (name, parent) = comps.split_last().expect("non-empty path");
        let dir = self.created_dir(parent)?;
        let mkdir = |dir: &OwnedFd| rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700));
        let mut over_whiteout = false;
        match mkdir(&dir) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => {
                let st = rustix::fs::statat(&*dir, name, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| io_err("stat", comps, e))?;
                // An existing directory stays (with its contents); anything else goes.
                if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                    over_whiteout = FileType::from_raw_mode(st.st_mode)
                        == FileType::CharacterDevice
                        && st.st_rdev == 0;
                    remove_all_at(&*dir, name).map_err(|e| io_err("replace", comps, e))?;
                    self.root.invalidate();
                    self.opaque_dirs.retain(|d| !d.starts_with(comps));
                    mkdir(&dir).map_err(|e| io_err("mkdir", comps, e))?;
                }
            }
            Err(e) => return Err(io_err("mkdir", comps, e)),
        }
        self.note_created(comps);
        self.explicit_dirs.insert(comps.to_vec());
        let fd = reopen_dir(&dir, name, comps)?;
        if over_whiteout && self.opts.whiteouts == WhiteoutStyle::Overlay {
            // Deleted, then made again in this layer: nothing of the lower directory may
            // show through, as when overlayfs itself makes a directory over a whiteout.
            sys::set_xattr_fd(&fd, "trusted.overlay.opaque", b"y").map_err(|e| LayerError::Io {
                op: "mark opaque",
                path: join(comps),
                source: e,
            })?;
            self.opaque_dirs.insert(comps.to_vec());
        }
        self.set_meta_fd(&fd, meta, comps, true)?;
        self.dir_times.push((comps.to_vec(), meta.mtime));
        Ok(())
    }

    fn regular<R: Read>(
        &mut self,
        comps: &[OsString],
        meta: &Meta,
        data: &mut R,
    ) -> Result<(), LayerError> {
        let (dir, fd) = self.create(comps, "create", |dir, name| {
            Ok(rustix::fs::openat(
                dir,
                name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )?)
        })?;
        let mut file = File::from(fd);
        write_sparse(&mut file, data, &mut self.buf).map_err(|e| match e {
            WriteError::Read(e) => corrupt(e),
            WriteError::Write(e) => LayerError::Io {
                op: "write",
                path: join(comps),
                source: e,
            },
        })?;
        let chown = self.needs_chown(&dir, meta)?;
        self.set_meta_fd(&file, meta, comps, chown)?;
        let t = times(meta.mtime);
        rustix::fs::futimens(&file, &t).map_err(|e| io_err("set times", comps, e))
    }

    fn symlink(
        &mut self,
        comps: &[OsString],
        target: &Path,
        meta: &Meta,
    ) -> Result<(), LayerError> {
        let (dir, ()) = self.create(comps, "symlink", |dir, name| {
            Ok(rustix::fs::symlinkat(target, dir, name)?)
        })?;
        self.root.invalidate(); // a symlink may now stand where a cached directory was
        let name = comps.last().expect("non-empty path");
        let chown = self.needs_chown(&dir, meta)?;
        self.set_meta_at(&dir, name, meta, comps, chown, false)
    }

    fn special(
        &mut self,
        comps: &[OsString],
        ft: FileType,
        dev: u64,
        meta: &Meta,
    ) -> Result<(), LayerError> {
        let (dir, ()) = self.create(comps, "mknod", |dir, name| {
            sys::mknod_at(dir, name, ft, meta.mode, dev)
        })?;
        let name = comps.last().expect("non-empty path");
        let chown = self.needs_chown(&dir, meta)?;
        self.set_meta_at(&dir, name, meta, comps, chown, true)
    }

    /// A hard link; like containerd, the link entry's owner, mode, xattrs and mtime are
    /// then applied to the (shared) inode, so the same image unpacks the same way.
    fn hard_link(
        &mut self,
        comps: &[OsString],
        target: &[OsString],
        meta: &Meta,
    ) -> Result<(), LayerError> {
        let Some((tname, tparent)) = target.split_last() else {
            return Err(bad(&join(comps), "hard link to the root directory".into()));
        };
        if !self.exists(target)? {
            self.copy_up(target).map_err(|e| match e {
                LayerError::MissingLinkTarget { target, .. } => LayerError::MissingLinkTarget {
                    path: join(comps),
                    target,
                },
                e => e,
            })?;
        }
        let src = self.root.dir(tparent, false)?.ok_or_else(|| {
            bad(
                &join(comps),
                format!("hard link to missing {:?}", join(target)),
            )
        })?;
        if comps == target {
            return Ok(());
        }
        let (dir, ()) = self
            .create(comps, "link", |dir, name| {
                Ok(rustix::fs::linkat(
                    &*src,
                    tname,
                    dir,
                    name,
                    AtFlags::empty(),
                )?)
            })
            .map_err(|e| match e {
                LayerError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                    bad(
                        &join(comps),
                        format!("hard link to missing {:?}", join(target)),
                    )
                }
                e => e,
            })?;
        let name = comps.last().expect("non-empty path");
        let st = rustix::fs::statat(&*dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io_err("stat", comps, e))?;
        let is_symlink = FileType::from_raw_mode(st.st_mode) == FileType::Symlink;
        self.set_meta_at(&dir, name, meta, comps, true, !is_symlink)
    }

    fn exists(&mut self, comps: &[OsString]) -> Result<bool, LayerError> {
        let (name, parent) = comps.split_last().expect("non-empty path");
        Ok(match self.root.dir(parent, false)? {
            Some(dir) => rustix::fs::statat(&*dir, name, AtFlags::SYMLINK_NOFOLLOW).is_ok(),
            None => false,
        })
    }

    /// Copies a file that exists only in a lower layer into this one, as overlayfs copies
    /// up a file before linking to it.
    fn copy_up(&mut self, comps: &[OsString]) -> Result<(), LayerError> {
        for lower in &self.opts.lowers {
            let mut lroot = Root::open(lower)?;
            let (name, parent) = comps.split_last().expect("non-empty path");
            let Some(ldir) = lroot.dir(parent, false)? else {
                continue;
            };
            let Ok(st) = rustix::fs::statat(&*ldir, name, AtFlags::SYMLINK_NOFOLLOW) else {
                continue;
            };
            if FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice && st.st_rdev == 0 {
                break; // whited out in this lower layer: nothing below is visible
            }
            if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
                return Err(bad(
                    &join(comps),
                    "hard link to a lower-layer entry that is not a regular file".into(),
                ));
            }
            let src = rustix::fs::openat(
                &*ldir,
                name,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| io_err("open lower", comps, e))?;
            let meta = Meta {
                mode: st.st_mode & 0o7777,
                uid: st.st_uid,
                gid: st.st_gid,
                mtime: Timespec {
                    tv_sec: st.st_mtime,
                    tv_nsec: st.st_mtime_nsec as _,
                },
                xattrs: Vec::new(),
            };
            return self.regular(comps, &meta, &mut File::from(src));
        }
        Err(LayerError::MissingLinkTarget {
            path: join(comps),
            target: join(comps),
        })
    }

    fn whiteout(
        &mut self,
        parent: &[OsString],
        hidden: &OsStr,
        mtime: Timespec,
    ) -> Result<(), LayerError> {
        let mut comps = parent.to_vec();
        comps.push(hidden.to_owned());
        match self.opts.whiteouts {
            WhiteoutStyle::Overlay => {
                if self.opaque_dirs.iter().any(|d| parent.starts_with(d)) {
                    // Hidden by an opaque marker already; only what this layer itself
                    // put there must go.
                    if let Some(dir) = self.root.dir(parent, false)? {
                        remove_all_at(&*dir, hidden).map_err(|e| io_err("whiteout", &comps, e))?;
                        self.root.invalidate();
                    }
                    return Ok(());
                }
                if self.opts.lowers_complete && !exists_below(&join(&comps), &self.opts.lowers) {
                    // Nothing below to hide: drop only what this layer put there.
                    if let Some(dir) = self.root.dir(parent, false)? {
                        remove_all_at(&*dir, hidden).map_err(|e| io_err("whiteout", &comps, e))?;
                        self.root.invalidate();
                    }
                    return Ok(());
                }
                let (dir, ()) = self.create(&comps, "mknod whiteout", |dir, name| {
                    sys::mknod_at(dir, name, FileType::CharacterDevice, 0, 0)
                })?;
                if !self.opts.lowers_complete {
                    self.whiteouts.push(join(&comps));
                }
                let t = times(mtime);
                rustix::fs::utimensat(&*dir, hidden, &t, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| io_err("set times", &comps, e))
            }
            WhiteoutStyle::Delete => {
                if let Some(dir) = self.root.dir(parent, false)? {
                    remove_all_at(&*dir, hidden).map_err(|e| io_err("whiteout", &comps, e))?;
                    self.root.invalidate();
                }
                Ok(())
            }
        }
    }

    fn opaque(&mut self, parent: &[OsString]) -> Result<(), LayerError> {
        let dir = self.created_dir(parent)?;
        match self.opts.whiteouts {
            WhiteoutStyle::Overlay => {
                let d = reopen_dir(&dir, OsStr::new("."), parent)?;
                sys::set_xattr_fd(&d, "trusted.overlay.opaque", b"y").map_err(|e| {
                    LayerError::Io {
                        op: "mark opaque",
                        path: join(parent),
                        source: e,
                    }
                })?;
                // Whiteouts this layer already wrote below it are redundant now.
                remove_whiteouts_below(d).map_err(|e| io_err("remove whiteouts", parent, e))?;
                self.opaque_dirs.insert(parent.to_vec());
                Ok(())
            }
            WhiteoutStyle::Delete => {
                for child in children(&*dir).map_err(|e| io_err("list", parent, e))? {
                    let mut c = parent.to_vec();
                    c.push(child.clone());
                    if !self.created.contains(&c) {
                        remove_all_at(&*dir, &child).map_err(|e| io_err("opaque", &c, e))?;
                    }
                }
                self.root.invalidate();
                Ok(())
            }
        }
    }

    /// Owner (when `chown`), then mode (chown clears setuid), then xattrs, on an open
    /// file or directory.
    fn set_meta_fd(
        &self,
        fd: impl AsFd,
        meta: &Meta,
        comps: &[OsString],
        chown: bool,
    ) -> Result<(), LayerError> {
        let fd = fd.as_fd();
        if chown {
            rustix::fs::fchown(
                fd,
                Some(rustix::process::Uid::from_raw(meta.uid)),
                Some(rustix::process::Gid::from_raw(meta.gid)),
            )
            .map_err(|e| io_err("chown", comps, e))?;
        }
        rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode))
            .map_err(|e| io_err("chmod", comps, e))?;
        for (k, v) in &meta.xattrs {
            sys::set_xattr_fd(fd, k, v).map_err(|e| LayerError::Io {
                op: "setxattr",
                path: join(comps),
                source: e,
            })?;
        }
        Ok(())
    }

    /// The same for entries that cannot be opened (symlinks, devices, fifos), plus times.
    fn set_meta_at(
        &self,
        dir: &OwnedFd,
        name: &OsStr,
        meta: &Meta,
        comps: &[OsString],
        chown: bool,
        chmod: bool,
    ) -> Result<(), LayerError> {
        if chown {
            rustix::fs::chownat(
                dir,
                name,
                Some(rustix::process::Uid::from_raw(meta.uid)),
                Some(rustix::process::Gid::from_raw(meta.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| io_err("chown", comps, e))?;
        }
        if chmod {
            rustix::fs::chmodat(dir, name, Mode::from_raw_mode(meta.mode), AtFlags::empty())
                .map_err(|e| io_err("chmod", comps, e))?;
        }
        for (k, v) in &meta.xattrs {
            sys::set_xattr_at(dir, name, k, v).map_err(|e| LayerError::Io {
                op: "setxattr",
                path: join(comps),
                source: e,
            })?;
        }
        let t = times(meta.mtime);
        rustix::fs::utimensat(dir, name, &t, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io_err("set times", comps, e))
    }
}

/// Removes every whiteout device in the tree below directory `dir` (never following
/// symlinks); iterative, as layer trees can be deeper than a thread's stack allows.
fn remove_whiteouts_below(dir: OwnedFd) -> rustix::io::Result<()> {
    let mut stack = vec![dir];
    while let Some(d) = stack.pop() {
        for child in children(&d)? {
            let st = rustix::fs::statat(&d, &child, AtFlags::SYMLINK_NOFOLLOW)?;
            match FileType::from_raw_mode(st.st_mode) {
                FileType::CharacterDevice if st.st_rdev == 0 => {
                    rustix::fs::unlinkat(&d, &child, AtFlags::empty())?;
                }
                FileType::Directory => stack.push(rustix::fs::openat(
                    &d,
                    &child,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Access and modification times both set to `mtime`, as layers carry only one.
fn times(mtime: Timespec) -> Timestamps {
    Timestamps {
        last_access: mtime,
        last_modification: mtime,
    }
}

fn reopen_dir(parent: &OwnedFd, name: &OsStr, comps: &[OsString]) -> Result<OwnedFd, LayerError> {
    rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err("open directory", comps, e))
}

fn io_err(op: &'static str, comps: &[OsString], e: rustix::io::Errno) -> LayerError {
    LayerError::Io {
        op,
        path: join(comps),
        source: e.into(),
    }
}

fn std_io(op: &'static str, comps: &[OsString], e: std::io::Error) -> LayerError {
    LayerError::Io {
        op,
        path: join(comps),
        source: e,
    }
}

fn bad(path: &Path, reason: String) -> LayerError {
    LayerError::BadEntry {
        path: path.to_path_buf(),
        reason,
    }
}

/// Reads owner, mode, mtime (with PAX sub-second precision) and PAX xattrs of an entry.
/// `trusted.overlay.*` xattrs are dropped: a layer must not steer overlayfs itself.
fn meta<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Meta, String> {
    let h = entry.header();
    let old = h.as_old();
    // Some writers leave numeric fields blank: read those as 0 rather than refuse the layer.
    let blank = |field: &[u8]| field.iter().all(|b| *b == 0 || *b == b' ');
    let num = |r: std::io::Result<u64>, field: &[u8]| match r {
        Ok(v) => Ok(v),
        Err(_) if blank(field) => Ok(0),
        Err(e) => Err(e.to_string()),
    };
    let mut m = Meta {
        mode: num(h.mode().map(u64::from), &old.mode)? as u32 & 0o7777,
        uid: num(h.uid(), &old.uid)? as u32,
        gid: num(h.gid(), &old.gid)? as u32,
        mtime: Timespec {
            tv_sec: num(h.mtime(), &old.mtime)? as i64,
            tv_nsec: 0,
        },
        xattrs: Vec::new(),
    };
    let mut pax: HashMap<String, Vec<u8>> = HashMap::new();
    if let Some(exts) = entry.pax_extensions().map_err(|e| e.to_string())? {
        for ext in exts {
            let ext = ext.map_err(|e| e.to_string())?;
            let key = ext.key().map_err(|e| e.to_string())?.to_owned();
            pax.insert(key, ext.value_bytes().to_vec());
        }
    }
    for (key, value) in pax {
        let text = || String::from_utf8_lossy(&value).into_owned();
        match key.as_str() {
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
                m.mtime = pax_time(&text()).ok_or_else(|| format!("bad PAX mtime {:?}", text()))?
            }
            k => {
                if let Some(name) = k.strip_prefix("SCHILY.xattr.") {
                    if !name.starts_with("trusted.overlay.") {
                        m.xattrs.push((name.to_owned(), value));
                    }
                }
            }
        }
    }
    m.xattrs.sort();
    Ok(m)
}

/// Parses a PAX time: seconds, optionally with a fraction (`1700000000.123456789`).
fn pax_time(s: &str) -> Option<Timespec> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let tv_sec: i64 = secs.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let mut nsec: i64 = digits.parse().ok()?;
    if tv_sec < 0 && nsec > 0 {
        nsec = -nsec;
    }
    Some(Timespec {
        tv_sec,
        tv_nsec: nsec as _,
    })
}

enum WriteError {
    Read(std::io::Error),
    Write(std::io::Error),
}

/// Unit of [`write_sparse`]: all-zero blocks of this size become holes.
const SPARSE_BLOCK: usize = 64 << 10;

/// Copies `data` into `file` through `buf` (at least [`SPARSE_BLOCK`] long), seeking over
/// all-zero blocks instead of writing them so that sparse files stay sparse.
fn write_sparse(file: &mut File, data: &mut impl Read, buf: &mut [u8]) -> Result<(), WriteError> {
    const BLOCK: usize = SPARSE_BLOCK;
    let mut len = 0u64;
    let mut pending_hole = false;
    loop {
        let mut filled = 0;
        while filled < BLOCK {
            match data.read(&mut buf[filled..BLOCK]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(WriteError::Read(e)),
            }
        }
        if filled == 0 {
            break;
        }
        let chunk = &buf[..filled];
        if filled == BLOCK && chunk.iter().all(|b| *b == 0) {
            file.seek(SeekFrom::Current(BLOCK as i64))
                .map_err(WriteError::Write)?;
            pending_hole = true;
        } else {
            file.write_all(chunk).map_err(WriteError::Write)?;
            pending_hole = false;
        }
        len += filled as u64;
    }
    if pending_hole {
        file.set_len(len).map_err(WriteError::Write)?;
    }
    Ok(())
}
