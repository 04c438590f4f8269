//! Disk usage of a tree, the way `du` counts it: allocated blocks, each inode once.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::error::{IoContext, Result};
use crate::model::Usage;

/// Sums allocated bytes and inodes under `root` (itself included), counting a hard-linked
/// inode once and never crossing into other filesystems.
pub fn disk_usage(root: &Path) -> Result<Usage> {
    let meta = std::fs::symlink_metadata(root).ctx("stat", root)?;
    let dev = meta.dev();
    let mut seen: HashSet<u64> = HashSet::new();
    let mut usage = Usage::default();
    account(&meta, &mut seen, &mut usage);
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            // A directory removed since it was listed (an active snapshot may be in use):
            // it holds nothing any more. The root itself missing stays an error.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir != root => continue,
            Err(e) => return Err(crate::Error::io("read directory", dir, e)),
        };
        for entry in entries {
            let entry = entry.ctx("read directory", &dir)?;
            let path = entry.path();
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                // Removed while we walk: an active snapshot may be in use.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(crate::Error::io("stat", path, e)),
            };
            account(&meta, &mut seen, &mut usage);
            if meta.is_dir() && meta.dev() == dev {
                stack.push(path);
            }
        }
    }
    Ok(usage)
}

fn account(meta: &std::fs::Metadata, seen: &mut HashSet<u64>, usage: &mut Usage) {
    if meta.nlink() > 1 && !meta.is_dir() && !seen.insert(meta.ino()) {
        return;
    }
    usage.inodes += 1;
    usage.size += (meta.blocks() * 512) as i64;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_links_count_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![7u8; 100_000]).unwrap();
        let before = disk_usage(dir.path()).unwrap();
        std::fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        let after = disk_usage(dir.path()).unwrap();
        assert_eq!(before, after);
        assert_eq!(after.inodes, 2);
        assert!(after.size >= 100_000);
    }

    // Found by lamina-loadtest: a Commit (which measures the tree) of an active snapshot
    // a container was writing into failed with Internal when a directory went away
    // between being listed and being read.
    #[test]
    fn directories_removed_during_the_walk_are_skipped() {
        use std::sync::atomic::{AtomicU32, Ordering};
        const ROUNDS: u32 = 300;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let rounds = std::sync::Arc::new(AtomicU32::new(0));
        let churn = {
            let (root, rounds) = (root.clone(), rounds.clone());
            std::thread::spawn(move || {
                for _ in 0..ROUNDS {
                    for i in 0..20 {
                        let d = root.join(format!("d{i}/sub/deeper"));
                        std::fs::create_dir_all(&d).unwrap();
                        std::fs::write(d.join("f"), b"x").unwrap();
                    }
                    for i in 0..20 {
                        std::fs::remove_dir_all(root.join(format!("d{i}"))).unwrap();
                    }
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        // Walks for as long as the other thread makes and removes trees.
        let mut walks = 0;
        while rounds.load(Ordering::Relaxed) < ROUNDS {
            disk_usage(&root).unwrap();
            walks += 1;
        }
        churn.join().unwrap();
        assert!(walks > 0);
        std::fs::remove_dir(&root).unwrap();
        assert!(disk_usage(&root).is_err(), "a missing root is an error");
    }
}
