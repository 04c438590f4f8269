//! Disk usage across snapshots, each inode counted once: merges hard-link files of one
//! snapshot's tree into another's, so per-snapshot sums would count them twice. Every
//! snapshot's own tree (`ROOT/snapshots/<id>/fs`) is walked; an inode reached from one
//! snapshot's tree only is exclusive to it, one reached from several is shared by each.
//! Sizes are allocated blocks × 512, as `du` counts them; walks stay on the tree's
//! filesystem.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::gc::{Graph, Roots};
use super::{snapshot_trees, CacheManager, RecordInfo};
use crate::error::{Error, IoContext, Result};
use crate::model::Kind;

/// One snapshot's share of the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotUsage {
    /// Key or name.
    pub key: String,
    /// Its kind.
    pub kind: Kind,
    /// Bytes of inodes only its tree reaches: what removing it alone frees.
    pub exclusive: u64,
    /// Bytes of inodes its tree shares with other snapshots' trees (hard links).
    pub shared: u64,
    /// Distinct inodes in its tree.
    pub inodes: u64,
}

/// The store's snapshot disk usage and its cache records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskUsage {
    /// Every snapshot, by key.
    pub snapshots: Vec<SnapshotUsage>,
    /// Every cache record, by id, with its snapshot's size (exclusive + shared).
    pub records: Vec<RecordInfo>,
    /// Bytes of all snapshot trees, each inode once: exclusive bytes of all plus shared
    /// bytes once.
    pub total: u64,
    /// Bytes of inodes that more than one snapshot's tree reaches, each once.
    pub shared_total: u64,
}

/// Calls `f` with the metadata of `root` and of everything below it, not following
/// symlinks, not descending into other filesystems; entries that vanish during the walk
/// (an active snapshot in use) are skipped.
pub(crate) fn walk_tree(root: &Path, mut f: impl FnMut(&std::fs::Metadata)) -> Result<()> {
    let meta = match std::fs::symlink_metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("stat", root, e)),
    };
    let dev = meta.dev();
    f(&meta);
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("read directory", dir, e)),
        };
        for entry in entries {
            let entry = entry.ctx("read directory", &dir)?;
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("stat", entry.path(), e)),
            };
            f(&meta);
            if meta.is_dir() && meta.dev() == dev {
                stack.push(entry.path());
            }
        }
    }
    Ok(())
}

/// Allocated bytes of an inode, as `du` counts them.
pub(crate) fn allocated(meta: &std::fs::Metadata) -> u64 {
    meta.blocks() * 512
}

/// Every tree measured, inodes shared between trees kept apart so that removals can be
/// simulated (prune's keep-bytes).
#[derive(Debug, Default)]
pub(crate) struct TreeUsage {
    pub keys: Vec<String>,
    pub kinds: Vec<Kind>,
    pub exclusive: Vec<u64>,
    pub shared: Vec<u64>,
    pub inodes: Vec<u64>,
    /// Per tree: indices into `multi_bytes` of the inodes it shares.
    pub shared_of: Vec<Vec<usize>>,
    /// Bytes of each inode reached from more than one tree.
    pub multi_bytes: Vec<u64>,
    /// How many trees reach each of them.
    pub multi_holders: Vec<u32>,
    pub total: u64,
    pub shared_total: u64,
    pub index: HashMap<String, usize>,
}

impl TreeUsage {
    /// Walks every tree in `trees`.
    pub fn measure(trees: &[(String, Kind, PathBuf)]) -> Result<TreeUsage> {
        let n = trees.len();
        let mut u = TreeUsage {
            keys: trees.iter().map(|t| t.0.clone()).collect(),
            kinds: trees.iter().map(|t| t.1).collect(),
            exclusive: vec![0; n],
            shared: vec![0; n],
            inodes: vec![0; n],
            shared_of: vec![Vec::new(); n],
            ..TreeUsage::default()
        };
        // (dev, ino) of every inode with several links → (bytes, trees reaching it).
        let mut linked: HashMap<(u64, u64), usize> = HashMap::new();
        let mut linked_info: Vec<(u64, Vec<usize>)> = Vec::new();
        for (i, (_, _, dir)) in trees.iter().enumerate() {
            let (exclusive, inodes) = (&mut u.exclusive[i], &mut u.inodes[i]);
            walk_tree(dir, |m| {
                if m.is_dir() || m.nlink() <= 1 {
                    *exclusive += allocated(m);
                    *inodes += 1;
                    return;
                }
                let slot = *linked.entry((m.dev(), m.ino())).or_insert_with(|| {
                    linked_info.push((allocated(m), Vec::new()));
                    linked_info.len() - 1
                });
                let holders = &mut linked_info[slot].1;
                if holders.last() != Some(&i) {
                    holders.push(i);
                    *inodes += 1;
                }
            })?;
        }
        for (bytes, holders) in linked_info {
            if let [only] = holders[..] {
                u.exclusive[only] += bytes;
                continue;
            }
            let m = u.multi_bytes.len();
            u.multi_bytes.push(bytes);
            u.multi_holders.push(holders.len() as u32);
            u.shared_total += bytes;
            for h in holders {
                u.shared[h] += bytes;
                u.shared_of[h].push(m);
            }
        }
        u.total = u.exclusive.iter().sum::<u64>() + u.shared_total;
        u.index = u
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.clone(), i))
            .collect();
        Ok(u)
    }

    /// Total bytes of a tree (exclusive + shared), by key; 0 for an unknown key.
    pub fn size_of(&self, key: &str) -> u64 {
        self.index
            .get(key)
            .map_or(0, |&i| self.exclusive[i] + self.shared[i])
    }
}

/// Tracks what removing trees frees: exclusive bytes at once, shared inodes once the
/// last tree reaching them is gone.
pub(crate) struct Simulation<'a> {
    usage: &'a TreeUsage,
    holders: Vec<u32>,
    gone: Vec<bool>,
    /// Bytes still in use.
    pub total: u64,
}

impl<'a> Simulation<'a> {
    pub fn new(usage: &'a TreeUsage) -> Self {
        Simulation {
            usage,
            holders: usage.multi_holders.clone(),
            gone: vec![false; usage.keys.len()],
            total: usage.total,
        }
    }

    /// Removes tree `key` (once); returns the bytes that frees.
    pub fn remove(&mut self, key: &str) -> u64 {
        let Some(&i) = self.usage.index.get(key) else {
            return 0;
        };
        if std::mem::replace(&mut self.gone[i], true) {
            return 0;
        }
        let mut freed = self.usage.exclusive[i];
        for &m in &self.usage.shared_of[i] {
            self.holders[m] -= 1;
            if self.holders[m] == 0 {
                freed += self.usage.multi_bytes[m];
            }
        }
        self.total -= freed;
        freed
    }
}

impl CacheManager {
    /// Disk usage of every snapshot (exclusive and shared bytes, each inode counted
    /// once across all trees) and every cache record with its size.
    pub fn disk_usage(&self) -> Result<DiskUsage> {
        let graph = Graph::load(self)?;
        let roots = Roots::collect(self, &graph)?;
        let trees = snapshot_trees(&self.inner.store)?;
        let usage = TreeUsage::measure(&trees)?;
        let mut records = self.record_infos(&graph, &roots);
        for r in &mut records {
            r.size = usage.size_of(&r.snapshot);
        }
        let snapshots = (0..usage.keys.len())
            .map(|i| SnapshotUsage {
                key: usage.keys[i].clone(),
                kind: usage.kinds[i],
                exclusive: usage.exclusive[i],
                shared: usage.shared[i],
                inodes: usage.inodes[i],
            })
            .collect();
        Ok(DiskUsage {
            snapshots,
            records,
            total: usage.total,
            shared_total: usage.shared_total,
        })
    }
}
