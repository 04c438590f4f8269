//! File operations confined to a layer's root directory: every parent directory is
//! resolved with openat2(RESOLVE_IN_ROOT), so `..`, absolute paths and symlinks (absolute
//! or relative) in a layer can never lead outside the root; the last component is always
//! acted on with *at calls that do not follow it.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};

use super::LayerError;

/// A directory that all operations stay inside.
pub(crate) struct Root {
    fd: OwnedFd,
    /// The last parent directory resolved, reused by the next entry in the same directory
    /// (shared, so callers hold it without duplicating the descriptor).
    cached: Option<(Vec<OsString>, Rc<OwnedFd>)>,
    /// Directories created because an entry needed them as parents (the layer had no
    /// entry of their own), in creation order.
    implicit: Vec<Vec<OsString>>,
}

/// Maps an OS error of operation `op` on `path` to a layer error (for `map_err`).
pub(crate) fn io<'a>(
    op: &'static str,
    path: &'a [OsString],
) -> impl FnOnce(rustix::io::Errno) -> LayerError + 'a {
    move |e| LayerError::Io {
        op,
        path: join(path),
        source: e.into(),
    }
}

/// Joins components back into a relative path, for messages.
pub(crate) fn join(comps: &[OsString]) -> PathBuf {
    comps.iter().collect()
}

/// A tar path made relative and lexically clean: leading `/` and `.` dropped, `..` clamped
/// at the root (as the kernel does for RESOLVE_IN_ROOT).
pub(crate) fn clean(path: &Path) -> Vec<OsString> {
    let mut out: Vec<OsString> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n.to_owned()),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

const RESOLVE: ResolveFlags = ResolveFlags::IN_ROOT
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

impl Root {
    /// Opens `path` as the root of all later operations.
    pub fn open(path: &Path) -> Result<Root, LayerError> {
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| LayerError::Io {
            op: "open layer root",
            path: path.to_path_buf(),
            source: e.into(),
        })?;
        Ok(Root {
            fd,
            cached: None,
            implicit: Vec::new(),
        })
    }

    /// The root directory itself.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Directories created only as parents of entries, so far.
    pub fn implicit_dirs(&self) -> &[Vec<OsString>] {
        &self.implicit
    }

    /// Forgets the cached parent: call after anything that may replace a directory.
    pub fn invalidate(&mut self) {
        self.cached = None;
    }

    fn resolve(&self, comps: &[OsString]) -> rustix::io::Result<OwnedFd> {
        let rel = if comps.is_empty() {
            PathBuf::from(".")
        } else {
            join(comps)
        };
        rustix::fs::openat2(
            &self.fd,
            &rel,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )
    }

    /// Opens directory `comps` (resolved inside the root), creating missing directories
    /// (mode 0755) when `create`; `None` if it is missing and `create` is false.
    pub fn dir(
        &mut self,
        comps: &[OsString],
        create: bool,
    ) -> Result<Option<Rc<OwnedFd>>, LayerError> {
        let hit = matches!(&self.cached, Some((c, _)) if c.as_slice() == comps);
        if !hit {
            let fd = match self.resolve(comps) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::NOENT) if !create => return Ok(None),
                Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) if create => {
                    self.create_dirs(comps)?
                }
                Err(rustix::io::Errno::NOTDIR) => return Ok(None),
                Err(e) => return Err(io("resolve", comps)(e)),
            };
            self.cached = Some((comps.to_vec(), Rc::new(fd)));
        }
        Ok(self.cached.as_ref().map(|(_, fd)| fd.clone()))
    }

    /// Creates each missing directory of `comps`, one level at a time, each inside the
    /// (confined) resolution of its parent. A non-directory in the way is replaced.
    fn create_dirs(&mut self, comps: &[OsString]) -> Result<OwnedFd, LayerError> {
        let mut parent = self.resolve(&[]).map_err(io("resolve", &[]))?;
        for i in 0..comps.len() {
            match self.resolve(&comps[..=i]) {
                Ok(fd) => parent = fd,
                Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => {
                    let name = &comps[i];
                    if rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW).is_ok() {
                        remove_all_at(&parent, name).map_err(io("replace", &comps[..=i]))?;
                    }
                    rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o755))
                        .map_err(io("mkdir", &comps[..=i]))?;
                    // 0755 whatever the process umask (laminad runs with 077).
                    rustix::fs::chmodat(
                        &parent,
                        name,
                        Mode::from_raw_mode(0o755),
                        AtFlags::empty(),
                    )
                    .map_err(io("chmod", &comps[..=i]))?;
                    parent = self
                        .resolve(&comps[..=i])
                        .map_err(io("resolve", &comps[..=i]))?;
                    self.implicit.push(comps[..=i].to_vec());
                }
                Err(e) => return Err(io("resolve", &comps[..=i])(e)),
            }
        }
        Ok(parent)
    }
}

/// Removes entry `name` of directory `dir`, recursively if it is a directory, never
/// following symlinks.
pub(crate) fn remove_all_at(dir: impl AsFd, name: &OsStr) -> rustix::io::Result<()> {
    let dir = dir.as_fd();
    let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Directory {
        return rustix::fs::unlinkat(dir, name, AtFlags::empty());
    }
    let sub = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    for child in children(&sub)? {
        remove_all_at(&sub, &child)?;
    }
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
}

/// Names in directory `dir`, without `.` and `..`.
pub(crate) fn children(dir: impl AsFd) -> rustix::io::Result<Vec<OsString>> {
    let fd = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(&fd)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            use std::os::unix::ffi::OsStrExt;
            names.push(OsStr::from_bytes(name).to_owned());
        }
    }
    Ok(names)
}
