//! A faithful tree copy for the native backend: every file type, owners, modes (with
//! setuid/setgid/sticky), xattrs, times and hard links preserved.
//!
//! Hand-written because the copy crates on crates.io (fs_extra, copy_dir) drop owners,
//! xattrs, device nodes and hard links, all of which a container rootfs needs.

use std::collections::HashMap;
use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::FileType;

use crate::error::{IoContext, Result};
use crate::sys;

/// Copies the contents and attributes of directory `src` into the existing directory `dst`.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let root_meta = std::fs::symlink_metadata(src).ctx("stat", src)?;
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    // Directories get their attributes after their contents, deepest first, so that
    // read-only modes and mtimes are not disturbed by the copy itself.
    let mut dirs: Vec<(PathBuf, PathBuf, Metadata)> = vec![(src.into(), dst.into(), root_meta)];
    let mut stack = vec![(src.to_path_buf(), dst.to_path_buf())];
    while let Some((sdir, ddir)) = stack.pop() {
        for entry in std::fs::read_dir(&sdir).ctx("read directory", &sdir)? {
            let entry = entry.ctx("read directory", &sdir)?;
            let s = entry.path();
            let d = ddir.join(entry.file_name());
            let meta = std::fs::symlink_metadata(&s).ctx("stat", &s)?;
            let ft = meta.file_type();
            if ft.is_dir() {
                std::fs::create_dir(&d).ctx("mkdir", &d)?;
                std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))
                    .ctx("chmod", &d)?;
                stack.push((s.clone(), d.clone()));
                dirs.push((s, d, meta));
                continue;
            }
            if meta.nlink() > 1 {
                if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
                    std::fs::hard_link(first, &d).ctx("link", &d)?;
                    continue;
                }
                links.insert((meta.dev(), meta.ino()), d.clone());
            }
            if ft.is_file() {
                std::fs::copy(&s, &d).ctx("copy", &d)?;
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&s).ctx("readlink", &s)?;
                std::os::unix::fs::symlink(&target, &d).ctx("symlink", &d)?;
            } else {
                let kind = if ft.is_char_device() {
                    FileType::CharacterDevice
                } else if ft.is_block_device() {
                    FileType::BlockDevice
                } else if ft.is_fifo() {
                    FileType::Fifo
                } else {
                    FileType::Socket
                };
                sys::mknod(&d, kind, meta.mode() & 0o7777, meta.rdev())?;
            }
            copy_attributes(&s, &d, &meta)?;
        }
    }
    for (s, d, meta) in dirs.iter().rev() {
        copy_attributes(s, d, meta)?;
    }
    Ok(())
}

/// Owner first (chown clears setuid and file capabilities), then mode, xattrs, times.
fn copy_attributes(src: &Path, dst: &Path, meta: &Metadata) -> Result<()> {
    sys::lchown(dst, meta.uid(), meta.gid())?;
    let is_symlink = meta.file_type().is_symlink();
    if !is_symlink {
        std::fs::set_permissions(dst, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
            .ctx("chmod", dst)?;
    }
    for name in sys::list_xattrs(src)? {
        if let Some(value) = sys::get_xattr(src, &name)? {
            sys::set_xattr(dst, &name, &value)?;
        }
    }
    sys::set_times(
        dst,
        (meta.atime(), meta.atime_nsec()),
        (meta.mtime(), meta.mtime_nsec()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn copies_links_modes_and_times() {
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("s"), t.path().join("d"));
        std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
        std::fs::create_dir(&dst).unwrap();
        std::fs::write(src.join("sub/f"), b"hello").unwrap();
        std::fs::hard_link(src.join("sub/f"), src.join("hl")).unwrap();
        std::os::unix::fs::symlink("sub/f", src.join("ln")).unwrap();
        std::fs::set_permissions(src.join("sub/f"), std::fs::Permissions::from_mode(0o4755))
            .unwrap();
        std::fs::set_permissions(src.join("sub"), std::fs::Permissions::from_mode(0o555)).unwrap();
        sys::set_times(&src.join("sub"), (1, 0), (1_000_000, 5)).unwrap();
        copy_tree(&src, &dst).unwrap();
        assert_eq!(std::fs::read(dst.join("hl")).unwrap(), b"hello");
        let a = std::fs::metadata(dst.join("hl")).unwrap();
        let b = std::fs::metadata(dst.join("sub/f")).unwrap();
        assert_eq!(a.ino(), b.ino());
        assert_eq!(b.mode() & 0o7777, 0o4755);
        assert_eq!(
            std::fs::read_link(dst.join("ln")).unwrap(),
            Path::new("sub/f")
        );
        let sub = std::fs::metadata(dst.join("sub")).unwrap();
        assert_eq!(sub.mode() & 0o7777, 0o555);
        assert_eq!((sub.mtime(), sub.mtime_nsec()), (1_000_000, 5));
        assert!(dst.join("sub/deeper").is_dir());
    }
}
