//! Writing a change list (the difference between two trees) into a directory without
//! copying file data: each regular file becomes a hard link to the file the change
//! names, so merged and diff snapshots cost directories and inodes, not bytes.
//!
//! Two targets: a full tree (a merge: deletions delete, an opaque directory is emptied
//! before its new contents arrive) and an overlay layer (a diff snapshot: deletions
//! become whiteout devices, opaque directories get overlayfs' marker). Every write goes
//! through [`Root`], so a symlink left by an earlier change never leads outside `dest`.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::Metadata;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};

use super::diff::{xattrs, Change};
use super::root::{children, clean, io, join, remove_all_at, Root};
use super::LayerError;
use crate::sys;

/// What a change list is written onto.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// A whole tree that the changes edit in place.
    FullTree,
    /// An overlay layer directory that records the changes.
    Layer,
}

/// What writing the changes did.
#[derive(Debug, Default)]
pub(crate) struct Materialized {
    /// Changes written.
    pub entries: u64,
    /// Inodes (device, inode) that were linked in rather than created: their bytes
    /// belong to the snapshots they came from.
    pub linked: HashSet<(u64, u64)>,
    /// Paths of the entries made here (directories, symlinks, devices, whiteouts,
    /// copies), some perhaps replaced or removed since: what [`own_usage`] counts.
    pub own: HashSet<Vec<OsString>>,
}

/// Disk usage of what `done` made in `dest` (the tree's root included), without the
/// linked-in files: what a walk of the whole tree would give, at the cost of a stat per
/// entry made rather than per entry.
pub(crate) fn own_usage(dest: &Path, done: &Materialized) -> Result<crate::Usage, LayerError> {
    let meta = std::fs::symlink_metadata(dest).map_err(|e| LayerError::Io {
        op: "stat",
        path: dest.to_path_buf(),
        source: e,
    })?;
    let mut usage = crate::Usage {
        size: (meta.blocks() * 512) as i64,
        inodes: 1,
    };
    for comps in &done.own {
        let Ok(m) = std::fs::symlink_metadata(dest.join(join(comps))) else {
            continue; // removed by a later change
        };
        if !done.linked.contains(&(m.dev(), m.ino())) {
            usage.size += (m.blocks() * 512) as i64;
            usage.inodes += 1;
        }
    }
    Ok(usage)
}

/// Writes `changes` into `dest` (which must exist), adding to `done`.
pub(crate) fn materialize(
    changes: Vec<Change>,
    dest: &Path,
    target: Target,
    done: &mut Materialized,
) -> Result<(), LayerError> {
    let mut w = Writer {
        root: Root::open(dest)?,
        target,
        dir_times: Vec::new(),
        opaque_dirs: HashSet::new(),
    };
    for change in changes {
        done.entries += 1;
        match change {
            Change::Delete { rel, mtime } => {
                let comps = clean(&rel);
                w.delete(&comps, mtime)?;
                if target == Target::Layer {
                    done.own.insert(comps);
                }
            }
            Change::Put {
                rel,
                abs,
                meta,
                opaque,
            } => {
                let comps = clean(&rel);
                if comps.is_empty() {
                    continue; // the root itself is never part of a change list
                }
                if meta.is_dir() {
                    w.directory(&comps, &abs, &meta, opaque)?;
                    done.own.insert(comps);
                } else if let Some(inode) = w.other(&comps, &abs, &meta)? {
                    done.linked.insert(inode);
                } else {
                    done.own.insert(comps);
                }
            }
        }
    }
    done.own.extend(w.root.implicit_dirs().iter().cloned());
    // Directory times last: creating their children changed them.
    for (comps, mtime) in std::mem::take(&mut w.dir_times).into_iter().rev() {
        if let Some(dir) = w.root.dir(&comps, false)? {
            rustix::fs::utimensat(&*dir, ".", &times(mtime), AtFlags::empty())
                .map_err(io("set times", &comps))?;
        }
    }
    Ok(())
}

struct Writer {
    root: Root,
    target: Target,
    dir_times: Vec<(Vec<OsString>, Timespec)>,
    /// Directories marked opaque in a layer target: whiteouts inside them are left out
    /// (redundant, and overlayfs would list them as broken entries).
    opaque_dirs: HashSet<Vec<OsString>>,
}

fn std_io<'a>(
    op: &'static str,
    comps: &'a [OsString],
) -> impl FnOnce(std::io::Error) -> LayerError + 'a {
    move |source| LayerError::Io {
        op,
        path: join(comps),
        source,
    }
}

fn times(mtime: Timespec) -> Timestamps {
    Timestamps {
        last_access: mtime,
        last_modification: mtime,
    }
}

fn mtime_of(meta: &Metadata) -> Timespec {
    Timespec {
        tv_sec: meta.mtime(),
        tv_nsec: meta.mtime_nsec() as _,
    }
}

impl Writer {
    fn parent(&mut self, comps: &[OsString]) -> Result<std::rc::Rc<OwnedFd>, LayerError> {
        let (_, parent) = comps.split_last().expect("non-empty path");
        Ok(self.root.dir(parent, true)?.expect("created on demand"))
    }

    /// Removes whatever is at `comps` (recursively), if anything is.
    fn clear(&mut self, dir: &OwnedFd, comps: &[OsString]) -> Result<(), LayerError> {
        let name = comps.last().expect("non-empty path");
        match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(_) => {
                remove_all_at(dir, name).map_err(io("replace", comps))?;
                self.root.invalidate();
                self.opaque_dirs.retain(|d| !d.starts_with(comps));
                Ok(())
            }
            Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(io("stat", comps)(e)),
        }
    }

    fn delete(&mut self, comps: &[OsString], mtime: i64) -> Result<(), LayerError> {
        let Some((name, parent)) = comps.split_last() else {
            return Ok(());
        };
        match self.target {
            Target::FullTree => {
                if let Some(dir) = self.root.dir(parent, false)? {
                    remove_all_at(&*dir, name).map_err(io("delete", comps))?;
                    self.root.invalidate();
                }
                Ok(())
            }
            Target::Layer => {
                let dir = self.parent(comps)?;
                self.clear(&dir, comps)?;
                if self.opaque_dirs.iter().any(|d| parent.starts_with(d)) {
                    return Ok(());
                }
                sys::mknod_at(&*dir, name, FileType::CharacterDevice, 0, 0)
                    .map_err(std_io("mknod whiteout", comps))?;
                let t = times(Timespec {
                    tv_sec: mtime,
                    tv_nsec: 0,
                });
                rustix::fs::utimensat(&*dir, name, &t, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(io("set times", comps))
            }
        }
    }

    fn directory(
        &mut self,
        comps: &[OsString],
        abs: &Path,
        meta: &Metadata,
        mut opaque: bool,
    ) -> Result<(), LayerError> {
        let dir = self.parent(comps)?;
        let name = comps.last().expect("non-empty path");
        match rustix::fs::statat(&*dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                if opaque && self.target == Target::FullTree {
                    // What the lower diffs put here is hidden: remove it.
                    let sub = open_dir(&dir, name, comps)?;
                    for child in children(&sub).map_err(io("list", comps))? {
                        remove_all_at(&sub, &child).map_err(io("replace", comps))?;
                    }
                    self.root.invalidate();
                }
            }
            Ok(st) => {
                // A directory over a whiteout in a layer hides the lower directory.
                opaque |= self.target == Target::Layer
                    && FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice
                    && st.st_rdev == 0;
                remove_all_at(&*dir, name).map_err(io("replace", comps))?;
                self.root.invalidate();
                rustix::fs::mkdirat(&*dir, name, Mode::from_raw_mode(0o700))
                    .map_err(io("mkdir", comps))?;
            }
            Err(rustix::io::Errno::NOENT) => {
                rustix::fs::mkdirat(&*dir, name, Mode::from_raw_mode(0o700))
                    .map_err(io("mkdir", comps))?;
            }
            Err(e) => return Err(io("stat", comps)(e)),
        }
        let fd = open_dir(&dir, name, comps)?;
        rustix::fs::fchown(
            &fd,
            Some(rustix::process::Uid::from_raw(meta.uid())),
            Some(rustix::process::Gid::from_raw(meta.gid())),
        )
        .map_err(io("chown", comps))?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(meta.mode() & 0o7777))
            .map_err(io("chmod", comps))?;
        for (k, v) in xattrs(abs)? {
            sys::set_xattr_fd(&fd, &k.to_string_lossy(), &v).map_err(std_io("setxattr", comps))?;
        }
        if opaque && self.target == Target::Layer {
            sys::set_xattr_fd(&fd, "trusted.overlay.opaque", b"y")
                .map_err(std_io("mark opaque", comps))?;
            self.opaque_dirs.insert(comps.to_vec());
        }
        self.dir_times.push((comps.to_vec(), mtime_of(meta)));
        Ok(())
    }

    /// Everything but a directory. Returns the inode when a regular file was linked in.
    fn other(
        &mut self,
        comps: &[OsString],
        abs: &Path,
        meta: &Metadata,
    ) -> Result<Option<(u64, u64)>, LayerError> {
        let dir = self.parent(comps)?;
        let name = comps.last().expect("non-empty path");
        let ft = meta.file_type();
        let kind = if ft.is_file() {
            FileType::RegularFile
        } else if ft.is_symlink() {
            FileType::Symlink
        } else if ft.is_char_device() {
            FileType::CharacterDevice
        } else if ft.is_block_device() {
            FileType::BlockDevice
        } else if ft.is_fifo() {
            FileType::Fifo
        } else {
            return Ok(None); // sockets do not belong in layers (export skips them too)
        };
        let target = match kind {
            FileType::Symlink => Some(std::fs::read_link(abs).map_err(std_io("readlink", comps))?),
            _ => None,
        };
        let make = |dir: &OwnedFd| -> rustix::io::Result<()> {
            match (kind, &target) {
                (FileType::RegularFile, _) => {
                    rustix::fs::linkat(rustix::fs::CWD, abs, dir, name, AtFlags::empty())
                }
                (FileType::Symlink, Some(t)) => rustix::fs::symlinkat(t, dir, name),
                _ => rustix::fs::mknodat(
                    dir,
                    name,
                    kind,
                    Mode::from_raw_mode(meta.mode() & 0o7777),
                    meta.rdev(),
                ),
            }
        };
        // Make it first and clear the way only when the name is taken: it almost never
        // is, and a lookup per entry costs as much as the link itself.
        let made = match make(&dir) {
            Err(rustix::io::Errno::EXIST) => {
                self.clear(&dir, comps)?;
                make(&dir)
            }
            r => r,
        };
        match (kind, made) {
            (FileType::RegularFile, Ok(())) => return Ok(Some((meta.dev(), meta.ino()))),
            // The inode has as many links as the file system allows: copy it.
            (FileType::RegularFile, Err(rustix::io::Errno::MLINK)) => {
                copy_file(&dir, name, abs, meta, comps)?;
                return Ok(None);
            }
            (FileType::RegularFile, Err(e)) => return Err(io("link", comps)(e)),
            (FileType::Symlink, r) => {
                r.map_err(io("symlink", comps))?;
                self.root.invalidate(); // a symlink may stand where a cached directory was
            }
            (_, r) => r.map_err(io("mknod", comps))?,
        }
        set_meta_at(&dir, name, abs, meta, comps, kind != FileType::Symlink)?;
        Ok(None)
    }
}

fn open_dir(dir: &OwnedFd, name: &OsStr, comps: &[OsString]) -> Result<OwnedFd, LayerError> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io("open directory", comps))
}

/// Owner, mode (not for symlinks), xattrs and times of entry `name` of `dir`, from `abs`.
fn set_meta_at(
    dir: &OwnedFd,
    name: &OsStr,
    abs: &Path,
    meta: &Metadata,
    comps: &[OsString],
    chmod: bool,
) -> Result<(), LayerError> {
    rustix::fs::chownat(
        dir,
        name,
        Some(rustix::process::Uid::from_raw(meta.uid())),
        Some(rustix::process::Gid::from_raw(meta.gid())),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(io("chown", comps))?;
    if chmod {
        rustix::fs::chmodat(
            dir,
            name,
            Mode::from_raw_mode(meta.mode() & 0o7777),
            AtFlags::empty(),
        )
        .map_err(io("chmod", comps))?;
    }
    for (k, v) in xattrs(abs)? {
        sys::set_xattr_at(dir, name, &k.to_string_lossy(), &v)
            .map_err(std_io("setxattr", comps))?;
    }
    rustix::fs::utimensat(dir, name, &times(mtime_of(meta)), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(io("set times", comps))
}

/// A copy of regular file `abs` as `name` in `dir`, with its metadata.
fn copy_file(
    dir: &OwnedFd,
    name: &OsStr,
    abs: &Path,
    meta: &Metadata,
    comps: &[OsString],
) -> Result<(), LayerError> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(io("create", comps))?;
    let mut out = std::fs::File::from(fd);
    let mut src = std::fs::File::open(abs).map_err(std_io("open", comps))?;
    std::io::copy(&mut src, &mut out).map_err(std_io("copy", comps))?;
    drop(out);
    set_meta_at(dir, name, abs, meta, comps, true)
}
