//! A tree's manifest: every entry's type, mode, owner, size, content hash, link target,
//! xattrs, device number, mtime and hard-link group, for comparing two unpacks of the
//! same image entry by entry.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::error::{IoContext, Result};
use crate::sys;

/// What is compared of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryFacts {
    /// "dir", "file", "symlink", "char", "block", "fifo", "socket".
    pub kind: &'static str,
    /// Permission bits including setuid/setgid/sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size of regular files (0 otherwise).
    pub size: u64,
    /// sha256 of a regular file's content.
    pub sha256: Option<String>,
    /// Symlink target.
    pub link: Option<PathBuf>,
    /// Extended attributes, sorted (overlayfs' own `trusted.overlay.*` left out).
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Device number of device nodes.
    pub rdev: u64,
    /// Modification time (seconds, nanoseconds); directories included.
    pub mtime: (i64, i64),
    /// For files hard-linked within the tree, the first path (in name order) of the group.
    pub link_group: Option<PathBuf>,
}

/// Builds the manifest of the tree at `root`, keyed by path relative to it ("" = root).
pub fn tree_manifest(root: &Path) -> Result<BTreeMap<PathBuf, EntryFacts>> {
    let mut paths = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let abs = root.join(&rel);
        let meta = std::fs::symlink_metadata(&abs).ctx("stat", &abs)?;
        if meta.is_dir() {
            for e in std::fs::read_dir(&abs).ctx("read directory", &abs)? {
                stack.push(rel.join(e.ctx("read directory", &abs)?.file_name()));
            }
        }
        paths.push(rel);
    }
    paths.sort();
    let mut groups: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut out = BTreeMap::new();
    for rel in paths {
        let abs = root.join(&rel);
        let m = std::fs::symlink_metadata(&abs).ctx("stat", &abs)?;
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_char_device() {
            "char"
        } else if ft.is_block_device() {
            "block"
        } else if ft.is_fifo() {
            "fifo"
        } else {
            "socket"
        };
        let link_group = (!ft.is_dir() && m.nlink() > 1).then(|| {
            groups
                .entry((m.dev(), m.ino()))
                .or_insert_with(|| rel.clone())
                .clone()
        });
        let mut xattrs = Vec::new();
        for name in sys::list_xattrs(&abs)? {
            let n = name.to_string_lossy().into_owned();
            if n.starts_with("trusted.overlay.") {
                continue;
            }
            if let Some(v) = sys::get_xattr(&abs, &name)? {
                xattrs.push((n, v));
            }
        }
        xattrs.sort();
        let sha256 = if ft.is_file() {
            let mut f = std::fs::File::open(&abs).ctx("open", &abs)?;
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = f.read(&mut buf).ctx("read", &abs)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            Some(hex::encode(h.finalize()))
        } else {
            None
        };
        let facts = EntryFacts {
            kind,
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            size: if ft.is_file() { m.len() } else { 0 },
            sha256,
            link: if ft.is_symlink() {
                Some(std::fs::read_link(&abs).ctx("readlink", &abs)?)
            } else {
                None
            },
            xattrs,
            rdev: if ft.is_char_device() || ft.is_block_device() {
                m.rdev()
            } else {
                0
            },
            mtime: (m.mtime(), m.mtime_nsec()),
            link_group,
        };
        out.insert(rel, facts);
    }
    // A group is two or more paths of this tree; an inode whose other links lie outside
    // it (a merge links files in from other snapshots) is an ordinary file here.
    let mut sizes: HashMap<PathBuf, usize> = HashMap::new();
    for facts in out.values() {
        if let Some(g) = &facts.link_group {
            *sizes.entry(g.clone()).or_default() += 1;
        }
    }
    for facts in out.values_mut() {
        if facts.link_group.as_ref().is_some_and(|g| sizes[g] < 2) {
            facts.link_group = None;
        }
    }
    Ok(out)
}

/// Human-readable differences between two manifests (empty when equal).
pub fn manifest_differences(
    a: &BTreeMap<PathBuf, EntryFacts>,
    b: &BTreeMap<PathBuf, EntryFacts>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (p, fa) in a {
        match b.get(p) {
            None => out.push(format!("{}: only in the first tree", p.display())),
            Some(fb) if fa != fb => out.push(format!("{}: {fa:?} != {fb:?}", p.display())),
            Some(_) => {}
        }
    }
    for p in b.keys().filter(|p| !a.contains_key(*p)) {
        out.push(format!("{}: only in the second tree", p.display()));
    }
    out
}
