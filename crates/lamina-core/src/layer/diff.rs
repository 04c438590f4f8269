//! Layer diff: the changes a snapshot holds over its parent, written as an OCI layer tar
//! (optionally gzip or zstd), deterministically, with its digest and diffID.
//!
//! Two sources of changes: an overlayfs upper directory, which already *is* the change
//! set (whiteout devices and opaque xattrs are translated back to `.wh.` entries), and,
//! for the native backend, a comparison of two full trees.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs::Metadata;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use tar::{EntryType, Header};

use super::digest::Digest;
use super::{Compression, LayerError};
use crate::sys;

/// What a diff wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffReport {
    /// Digest of the blob as written (compressed).
    pub digest: Digest,
    /// Bytes of the blob.
    pub compressed_size: u64,
    /// Digest of the uncompressed tar (the diffID).
    pub diff_id: Digest,
    /// Bytes of the uncompressed tar.
    pub size: u64,
    /// Entries written (whiteouts included).
    pub entries: u64,
}

/// Where the changes come from.
#[derive(Debug, Clone, Copy)]
pub enum DiffSource<'a> {
    /// An overlayfs upper directory: every entry in it is a change.
    OverlayUpper(&'a Path),
    /// Two full trees: `upper` compared with `lower` (`None`: an empty tree).
    Trees {
        /// The parent's tree.
        lower: Option<&'a Path>,
        /// The snapshot's tree.
        upper: &'a Path,
    },
    /// Two snapshots' trees as overlayfs shows them, read from their layer directories:
    /// `upper` compared with `lower` (`None`: an empty tree), wherever they are in the
    /// snapshot tree (`upper` need not descend from `lower`).
    Views {
        /// The tree the changes start from.
        lower: Option<&'a LayeredTree>,
        /// The tree they lead to.
        upper: &'a LayeredTree,
    },
}

/// A tree made of layer directories stacked as overlayfs stacks them (topmost first):
/// whiteout devices hide what is below them, opaque directories hide lower directories'
/// contents. A single full tree (the native backend's) is one directory read as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayeredTree {
    dirs: Vec<PathBuf>,
    /// Whether whiteouts and opaque markers mean anything (overlay layers) or are plain
    /// files (a full tree may hold a 0:0 character device of its own).
    overlay: bool,
}

impl LayeredTree {
    /// One full tree, taken as it is.
    pub fn plain(dir: impl Into<PathBuf>) -> Self {
        LayeredTree {
            dirs: vec![dir.into()],
            overlay: false,
        }
    }

    /// Layer directories, topmost first, with overlayfs' rules.
    pub fn overlay(dirs: Vec<PathBuf>) -> Self {
        LayeredTree {
            dirs,
            overlay: true,
        }
    }
}

/// An entry of a [`LayeredTree`]: where it really is, and for a directory, the layer
/// directories whose contents make it up (topmost first).
struct Node {
    abs: PathBuf,
    meta: Metadata,
    parts: Vec<PathBuf>,
}

/// The visible children of a directory made of `parts` (topmost first), by name.
fn layered_children(
    parts: &[PathBuf],
    overlay: bool,
) -> Result<BTreeMap<OsString, Node>, LayerError> {
    // `None`: hidden by a whiteout. `open`: a directory still taking in lower parts.
    let mut found: BTreeMap<OsString, (Option<Node>, bool)> = BTreeMap::new();
    for part in parts {
        for name in sorted_children(part)? {
            let abs = part.join(&name);
            match found.get_mut(&name) {
                None => {
                    let meta = std::fs::symlink_metadata(&abs).map_err(read_err("stat", &abs))?;
                    if overlay && is_whiteout(&meta) {
                        found.insert(name, (None, false));
                        continue;
                    }
                    let is_dir = meta.is_dir();
                    let open = is_dir && !(overlay && is_opaque(&abs)?);
                    let parts = if is_dir {
                        vec![abs.clone()]
                    } else {
                        Vec::new()
                    };
                    found.insert(name, (Some(Node { abs, meta, parts }), open));
                }
                Some((Some(node), open)) if *open => {
                    let meta = std::fs::symlink_metadata(&abs).map_err(read_err("stat", &abs))?;
                    if meta.is_dir() && !(overlay && is_whiteout(&meta)) {
                        *open = !(overlay && is_opaque(&abs)?);
                        node.parts.push(abs);
                    } else {
                        *open = false; // a file or whiteout below a directory ends it
                    }
                }
                Some(_) => {}
            }
        }
    }
    Ok(found
        .into_iter()
        .filter_map(|(name, (node, _))| node.map(|n| (name, n)))
        .collect())
}

/// Writes the layer for `source` into `out`, compressed as asked.
pub fn write_diff(
    source: DiffSource<'_>,
    compression: Compression,
    out: impl Write,
) -> Result<DiffReport, LayerError> {
    let blob = HashWriter::new(out);
    let (blob, tar_stats) = match compression {
        Compression::None => {
            let mut w = HashWriter::new(blob);
            let entries = write_tar(source, &mut w)?;
            let (inner, d, n) = w.finish();
            (inner, (d, n, entries))
        }
        Compression::Gzip => {
            let enc = flate2::GzBuilder::new()
                .mtime(0)
                .write(blob, flate2::Compression::default());
            let mut w = HashWriter::new(enc);
            let entries = write_tar(source, &mut w)?;
            let (enc, d, n) = w.finish();
            (enc.finish().map_err(out_err)?, (d, n, entries))
        }
        Compression::Zstd => {
            let enc = zstd::stream::write::Encoder::new(blob, 3).map_err(out_err)?;
            let mut w = HashWriter::new(enc);
            let entries = write_tar(source, &mut w)?;
            let (enc, d, n) = w.finish();
            (enc.finish().map_err(out_err)?, (d, n, entries))
        }
    };
    let (mut out, digest, compressed_size) = blob.finish();
    out.flush().map_err(out_err)?;
    let (diff_id, size, entries) = tar_stats;
    Ok(DiffReport {
        digest,
        compressed_size,
        diff_id,
        size,
        entries,
    })
}

fn out_err(e: std::io::Error) -> LayerError {
    LayerError::Io {
        op: "write layer",
        path: PathBuf::new(),
        source: e,
    }
}

fn read_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> LayerError + 'a {
    move |source| LayerError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// One change, in tar order.
pub(crate) enum Change {
    /// Add or replace `rel` with what is at `abs`.
    Put {
        rel: PathBuf,
        abs: PathBuf,
        meta: Metadata,
        opaque: bool,
    },
    /// Delete `rel` (a `.wh.` entry), stamped with the whiteout's own mtime if it has one.
    Delete { rel: PathBuf, mtime: i64 },
}

fn write_tar(source: DiffSource<'_>, out: &mut impl Write) -> Result<u64, LayerError> {
    write_changes(changes(source)?, out)
}

/// The changes `source` holds, in tar order (depth-first, names sorted).
pub(crate) fn changes(source: DiffSource<'_>) -> Result<Vec<Change>, LayerError> {
    Ok(match source {
        DiffSource::OverlayUpper(upper) => overlay_changes(upper)?,
        DiffSource::Trees { lower, upper } => {
            let lower = lower.map(LayeredTree::plain);
            tree_changes(lower.as_ref(), &LayeredTree::plain(upper))?
        }
        DiffSource::Views { lower, upper } => tree_changes(lower, upper)?,
    })
}

/// Writes a change list as tar entries.
fn write_changes(changes: Vec<Change>, out: &mut impl Write) -> Result<u64, LayerError> {
    let mut builder = tar::Builder::new(out);
    builder.mode(tar::HeaderMode::Complete);
    let mut first_link: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut entries = 0u64;
    for change in changes {
        entries += 1;
        match change {
            Change::Delete { rel, mtime } => {
                let name = rel.file_name().unwrap_or_default();
                let mut wh = OsString::from(".wh.");
                wh.push(name);
                let path = rel.with_file_name(wh);
                append_plain(&mut builder, &path, EntryType::Regular, 0, 0, 0, mtime)?;
            }
            Change::Put {
                rel,
                abs,
                meta,
                opaque,
            } => {
                let key = (meta.dev(), meta.ino());
                if !meta.is_dir() && meta.nlink() > 1 {
                    if let Some(first) = first_link.get(&key) {
                        // Appliers (containerd's, ours) give the inode the link entry's
                        // metadata: it must carry all of it, sub-second mtime included.
                        append_pax(&mut builder, &abs, &meta)?;
                        append_link(&mut builder, &rel, first, EntryType::Link, &meta)?;
                        continue;
                    }
                    first_link.insert(key, rel.clone());
                }
                append_entry(&mut builder, &rel, &abs, &meta)?;
                if opaque {
                    entries += 1;
                    append_plain(
                        &mut builder,
                        &rel.join(".wh..wh..opq"),
                        EntryType::Regular,
                        0,
                        0,
                        0,
                        0,
                    )?;
                }
            }
        }
    }
    builder.finish().map_err(out_err)?;
    Ok(entries)
}

/// Sorted names of a directory.
fn sorted_children(dir: &Path) -> Result<Vec<OsString>, LayerError> {
    let mut names: Vec<OsString> = std::fs::read_dir(dir)
        .map_err(read_err("read directory", dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(read_err("read directory", dir))?;
    names.sort();
    Ok(names)
}

fn is_whiteout(meta: &Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

fn is_opaque(path: &Path) -> Result<bool, LayerError> {
    let v = sys::get_xattr(path, &OsString::from("trusted.overlay.opaque")).map_err(|e| {
        LayerError::Io {
            op: "read xattr",
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        }
    })?;
    Ok(v.as_deref() == Some(b"y"))
}

/// Walks an upper directory depth-first in name order (iteratively: container trees can
/// be deeper than a thread's stack allows for recursion).
fn overlay_changes(upper: &Path) -> Result<Vec<Change>, LayerError> {
    let mut out = Vec::new();
    let mut stack = vec![(PathBuf::new(), sorted_children(upper)?.into_iter())];
    while let Some((rel_dir, names)) = stack.last_mut() {
        let Some(name) = names.next() else {
            stack.pop();
            continue;
        };
        let rel = rel_dir.join(&name);
        let abs = upper.join(&rel);
        let meta = std::fs::symlink_metadata(&abs).map_err(read_err("stat", &abs))?;
        if is_whiteout(&meta) {
            out.push(Change::Delete {
                rel,
                mtime: meta.mtime(),
            });
            continue;
        }
        let is_dir = meta.is_dir();
        let opaque = is_dir && is_opaque(&abs)?;
        out.push(Change::Put {
            rel: rel.clone(),
            abs: abs.clone(),
            meta,
            opaque,
        });
        if is_dir {
            stack.push((rel, sorted_children(&abs)?.into_iter()));
        }
    }
    Ok(out)
}

/// One directory level of a tree comparison: names with their lower and upper entries.
type Level = std::vec::IntoIter<(OsString, Option<Node>, Option<Node>)>;

fn merged_children(
    lower: &[PathBuf],
    lower_overlay: bool,
    upper: &[PathBuf],
    upper_overlay: bool,
) -> Result<Level, LayerError> {
    let mut all: BTreeMap<OsString, (Option<Node>, Option<Node>)> = BTreeMap::new();
    for (n, node) in layered_children(upper, upper_overlay)? {
        all.entry(n).or_default().1 = Some(node);
    }
    for (n, node) in layered_children(lower, lower_overlay)? {
        all.entry(n).or_default().0 = Some(node);
    }
    Ok(all
        .into_iter()
        .map(|(n, (l, u))| (n, l, u))
        .collect::<Vec<_>>()
        .into_iter())
}

/// An entry found in a tree: relative path, real path, metadata.
type Found = (PathBuf, PathBuf, Metadata);

/// Changes from `lower` to `upper` by comparing the two trees, depth-first in name order.
/// Directories made of the very same layer directories on both sides are equal without
/// a look inside (a snapshot compared with its ancestor reads only the layers between).
fn tree_changes(
    lower: Option<&LayeredTree>,
    upper: &LayeredTree,
) -> Result<Vec<Change>, LayerError> {
    let (lo, lower_dirs) = match lower {
        Some(t) => (t.overlay, t.dirs.clone()),
        None => (false, Vec::new()),
    };
    let up = upper.overlay;
    let mut out = Vec::new();
    if lower_dirs == upper.dirs && lo == up {
        return Ok(out);
    }
    let mut stack = vec![(
        PathBuf::new(),
        merged_children(&lower_dirs, lo, &upper.dirs, up)?,
    )];
    // Unchanged files with other links, by inode: a changed file linked to one of them
    // takes it into the change list, so the link survives the diff.
    let mut unchanged_linked: HashMap<(u64, u64), Vec<Found>> = HashMap::new();
    let mut changed_linked: std::collections::HashSet<(u64, u64)> = Default::default();
    // Unchanged directories, for writing the parents of what changed below them.
    let mut quiet_dirs: HashMap<PathBuf, (PathBuf, Metadata)> = HashMap::new();
    while let Some((rel_dir, names)) = stack.last_mut() {
        let Some((name, lower_node, upper_node)) = names.next() else {
            stack.pop();
            continue;
        };
        let rel = rel_dir.join(&name);
        let Some(u) = upper_node else {
            out.push(Change::Delete { rel, mtime: 0 });
            continue;
        };
        let same = match &lower_node {
            Some(l) => same_entry(&l.meta, &l.abs, &u.meta, &u.abs)?,
            None => false,
        };
        let is_dir = u.meta.is_dir();
        let upper_parts = u.parts.clone();
        // Below a directory that replaced a non-directory, everything is new.
        let lower_parts = lower_node
            .filter(|l| l.meta.is_dir())
            .map(|l| l.parts)
            .unwrap_or_default();
        let linked = u.meta.is_file() && u.meta.nlink() > 1;
        let inode = (u.meta.dev(), u.meta.ino());
        if !same {
            if linked {
                changed_linked.insert(inode);
            }
            out.push(Change::Put {
                rel: rel.clone(),
                abs: u.abs,
                meta: u.meta,
                opaque: false,
            });
        } else if linked {
            unchanged_linked
                .entry(inode)
                .or_default()
                .push((rel.clone(), u.abs, u.meta));
        } else if is_dir {
            quiet_dirs.insert(rel.clone(), (u.abs, u.meta));
        }
        if is_dir && !(same && lower_parts == upper_parts && lo == up) {
            let level = merged_children(&lower_parts, lo, &upper_parts, up)?;
            stack.push((rel, level));
        }
    }
    let partners: Vec<_> = unchanged_linked
        .into_iter()
        .filter(|(inode, _)| changed_linked.contains(inode))
        .flat_map(|(_, paths)| paths)
        .collect();
    if !partners.is_empty() {
        for (rel, abs, meta) in partners {
            out.push(Change::Put {
                rel,
                abs,
                meta,
                opaque: false,
            });
        }
        // Back into tar order: depth-first, names sorted (component-wise).
        out.sort_by(|a, b| change_path(a).components().cmp(change_path(b).components()));
    }
    Ok(with_parents(out, quiet_dirs))
}

/// `changes` with an entry for every unchanged parent directory of a change, written
/// before it, as image builders write layers: a layer applied onto another tree must not
/// leave those directories to be made up (mode 0755, root) by the applier.
fn with_parents(
    changes: Vec<Change>,
    mut quiet_dirs: HashMap<PathBuf, (PathBuf, Metadata)>,
) -> Vec<Change> {
    if quiet_dirs.is_empty() {
        return changes;
    }
    let mut out = Vec::with_capacity(changes.len());
    for change in changes {
        let ancestors: Vec<PathBuf> = change_path(&change)
            .ancestors()
            .skip(1)
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .collect();
        for dir in ancestors.into_iter().rev() {
            if let Some((abs, meta)) = quiet_dirs.remove(&dir) {
                out.push(Change::Put {
                    rel: dir,
                    abs,
                    meta,
                    opaque: false,
                });
            }
        }
        out.push(change);
    }
    out
}

fn change_path(c: &Change) -> &Path {
    match c {
        Change::Put { rel, .. } | Change::Delete { rel, .. } => rel,
    }
}

/// Whether two entries are equal for layer purposes: type, mode, owner, link target,
/// device, xattrs, size and mtime (a directory whose children changed has a new mtime,
/// so it is written too, as containerd does); regular files whose mtimes carry no sub-second part
/// (so may be equal by coincidence) are compared byte by byte.
fn same_entry(
    a: &Metadata,
    a_path: &Path,
    b: &Metadata,
    b_path: &Path,
) -> Result<bool, LayerError> {
    if a.dev() == b.dev() && a.ino() == b.ino() {
        return Ok(true); // the same file, reached through two trees that share a layer
    }
    if a.mode() != b.mode() || a.uid() != b.uid() || a.gid() != b.gid() || a.rdev() != b.rdev() {
        return Ok(false);
    }
    if xattrs(a_path)? != xattrs(b_path)? {
        return Ok(false);
    }
    if a.is_dir() {
        return Ok(a.mtime() == b.mtime() && a.mtime_nsec() == b.mtime_nsec());
    }
    if a.file_type().is_symlink() {
        let ta = std::fs::read_link(a_path).map_err(read_err("readlink", a_path))?;
        let tb = std::fs::read_link(b_path).map_err(read_err("readlink", b_path))?;
        return Ok(ta == tb);
    }
    if a.len() != b.len() || a.mtime() != b.mtime() || a.mtime_nsec() != b.mtime_nsec() {
        return Ok(false);
    }
    if a.is_file() && (a.nlink() > 1 || b.nlink() > 1) {
        // Different inodes, one of them linked elsewhere: the link structure may differ
        // (linked on one side, separate on the other), which only a rewrite carries.
        return Ok(false);
    }
    if a.is_file() && a.mtime_nsec() == 0 {
        return same_content(a_path, b_path);
    }
    Ok(true)
}

fn same_content(a: &Path, b: &Path) -> Result<bool, LayerError> {
    let mut fa = std::fs::File::open(a).map_err(read_err("open", a))?;
    let mut fb = std::fs::File::open(b).map_err(read_err("open", b))?;
    let (mut ba, mut bb) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
    loop {
        let na = read_full(&mut fa, &mut ba).map_err(read_err("read", a))?;
        let nb = read_full(&mut fb, &mut bb).map_err(read_err("read", b))?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Extended attributes worth carrying in a layer, sorted; overlayfs' own are left out.
pub(crate) fn xattrs(path: &Path) -> Result<Vec<(OsString, Vec<u8>)>, LayerError> {
    let wrap = |e: crate::Error| LayerError::Io {
        op: "read xattrs",
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    };
    let mut out = Vec::new();
    for name in sys::list_xattrs(path).map_err(wrap)? {
        if name.as_bytes().starts_with(b"trusted.overlay.") {
            continue;
        }
        if let Some(v) = sys::get_xattr(path, &name).map_err(wrap)? {
            out.push((name, v));
        }
    }
    out.sort();
    Ok(out)
}

fn header_for(kind: EntryType, mode: u32, uid: u32, gid: u32, mtime: i64) -> Header {
    let mut h = Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid as u64);
    h.set_gid(gid as u64);
    h.set_mtime(mtime.max(0) as u64);
    h.set_size(0);
    h
}

fn append_plain<W: Write>(
    b: &mut tar::Builder<W>,
    path: &Path,
    kind: EntryType,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
) -> Result<(), LayerError> {
    let mut h = header_for(kind, mode, uid, gid, mtime);
    b.append_data(&mut h, path, std::io::empty())
        .map_err(out_err)
}

/// PAX records an entry needs: sub-second mtime and xattrs.
fn pax_records(abs: &Path, meta: &Metadata) -> Result<Vec<(String, Vec<u8>)>, LayerError> {
    let mut pax = Vec::new();
    if meta.mtime_nsec() != 0 {
        pax.push((
            "mtime".to_string(),
            format!("{}.{:09}", meta.mtime(), meta.mtime_nsec()).into_bytes(),
        ));
    }
    for (k, v) in xattrs(abs)? {
        pax.push((format!("SCHILY.xattr.{}", k.to_string_lossy()), v));
    }
    Ok(pax)
}

fn append_link<W: Write>(
    b: &mut tar::Builder<W>,
    rel: &Path,
    target: &Path,
    kind: EntryType,
    meta: &Metadata,
) -> Result<(), LayerError> {
    let mut h = header_for(
        kind,
        meta.mode() & 0o7777,
        meta.uid(),
        meta.gid(),
        meta.mtime(),
    );
    b.append_link(&mut h, rel, target).map_err(out_err)
}

fn append_pax<W: Write>(
    b: &mut tar::Builder<W>,
    abs: &Path,
    meta: &Metadata,
) -> Result<(), LayerError> {
    let pax = pax_records(abs, meta)?;
    if !pax.is_empty() {
        b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .map_err(out_err)?;
    }
    Ok(())
}

fn append_entry<W: Write>(
    b: &mut tar::Builder<W>,
    rel: &Path,
    abs: &Path,
    meta: &Metadata,
) -> Result<(), LayerError> {
    append_pax(b, abs, meta)?;
    let ft = meta.file_type();
    let mode = meta.mode() & 0o7777;
    let (uid, gid, mtime) = (meta.uid(), meta.gid(), meta.mtime());
    if ft.is_dir() {
        let mut h = header_for(EntryType::Directory, mode, uid, gid, mtime);
        let mut name = rel.as_os_str().to_owned();
        name.push("/");
        b.append_data(&mut h, Path::new(&name), std::io::empty())
            .map_err(out_err)
    } else if ft.is_symlink() {
        let target = std::fs::read_link(abs).map_err(read_err("readlink", abs))?;
        append_link(b, rel, &target, EntryType::Symlink, meta)
    } else if ft.is_file() {
        let mut h = header_for(EntryType::Regular, mode, uid, gid, mtime);
        h.set_size(meta.len());
        let f = std::fs::File::open(abs).map_err(read_err("open", abs))?;
        b.append_data(&mut h, rel, f.take(meta.len()))
            .map_err(out_err)
    } else {
        let kind = if ft.is_char_device() {
            EntryType::Char
        } else if ft.is_block_device() {
            EntryType::Block
        } else if ft.is_fifo() {
            EntryType::Fifo
        } else {
            return Ok(()); // sockets do not belong in layers
        };
        let mut h = header_for(kind, mode, uid, gid, mtime);
        let dev = meta.rdev();
        h.set_device_major(rustix::fs::major(dev))
            .map_err(out_err)?;
        h.set_device_minor(rustix::fs::minor(dev))
            .map_err(out_err)?;
        b.append_data(&mut h, rel, std::io::empty())
            .map_err(out_err)
    }
}

/// Hashes and counts what passes through to the inner writer.
struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashWriter<W> {
    fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    fn finish(self) -> (W, Digest, u64) {
        let d = Digest::parse(&format!("sha256:{}", hex::encode(self.hasher.finalize())))
            .expect("well-formed");
        (self.inner, d, self.count)
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
