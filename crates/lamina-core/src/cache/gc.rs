//! containerd's garbage collector on one store: mark from the roots along dependencies
//! and GC reference labels, then remove every snapshot not reached (dependants before
//! what they depend on) and every blob not reached. Expired leases are deleted first.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::time::SystemTime;

use super::du::{allocated, walk_tree};
use super::refs::StoredRecord;
use super::{
    lock, snapshot_trees, CacheManager, LeaseResource, LABEL_GC_REF_CONTENT, LABEL_GC_REF_SNAPSHOT,
    LABEL_GC_ROOT,
};
use crate::error::{Error, Result};
use crate::layer::Digest;

/// One thing the collector (or prune) removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// Snapshot key or blob digest.
    pub id: String,
    /// Bytes its removal freed (allocated blocks × 512; an inode still linked from a
    /// surviving snapshot frees nothing).
    pub bytes: u64,
}

/// What a collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Leases deleted because they had expired.
    pub expired_leases: Vec<String>,
    /// Snapshots removed, in removal order (dependants first).
    pub snapshots: Vec<Removed>,
    /// Blobs removed.
    pub content: Vec<Removed>,
    /// Bytes freed by the snapshots' removal.
    pub snapshot_bytes: u64,
    /// Bytes freed by the blobs' removal.
    pub content_bytes: u64,
}

impl GcReport {
    /// All bytes freed.
    pub fn bytes_freed(&self) -> u64 {
        self.snapshot_bytes + self.content_bytes
    }
}

/// The snapshots and the references between them, as read at one moment.
pub(crate) struct Graph {
    pub keys: Vec<String>,
    pub index: HashMap<String, usize>,
    /// What each snapshot needs to exist (parent, merge sources): kept with it and
    /// removed after it.
    pub deps: Vec<Vec<usize>>,
    /// Snapshots its `gc.ref.snapshot.*` labels keep.
    pub refs: Vec<Vec<usize>>,
    /// Blobs its `gc.ref.content*` labels keep.
    pub content: Vec<Vec<Digest>>,
    /// Labelled `containerd.io/gc.root`.
    pub root_label: Vec<bool>,
}

/// What a mark reached.
pub(crate) struct Marked {
    pub live: Vec<bool>,
    pub content: HashSet<Digest>,
}

impl Graph {
    /// Reads every snapshot, its dependencies and its GC labels.
    pub fn load(mgr: &CacheManager) -> Result<Graph> {
        let store = &mgr.inner.store;
        let infos = store.list::<&str>(&[])?;
        let keys: Vec<String> = infos.iter().map(|i| i.name.clone()).collect();
        let index: HashMap<String, usize> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.clone(), i))
            .collect();
        let n = keys.len();
        let mut g = Graph {
            deps: vec![Vec::new(); n],
            refs: vec![Vec::new(); n],
            content: vec![Vec::new(); n],
            root_label: vec![false; n],
            keys,
            index,
        };
        for (i, info) in infos.iter().enumerate() {
            let deps = match store.dependencies(&info.name) {
                Ok(d) => d,
                // Removed since the listing: it holds nothing.
                Err(Error::NotFound { .. }) => Vec::new(),
                Err(e) => return Err(e),
            };
            g.deps[i] = deps
                .iter()
                .filter_map(|d| g.index.get(d).copied())
                .collect();
            for (k, v) in &info.labels {
                if k == LABEL_GC_ROOT {
                    g.root_label[i] = true;
                } else if k.starts_with(LABEL_GC_REF_SNAPSHOT) {
                    // Any snapshotter name: this store is the only one there is.
                    if let Some(&j) = g.index.get(v) {
                        g.refs[i].push(j);
                    }
                } else if is_content_ref(k) {
                    if let Some(d) = Digest::parse(v) {
                        g.content[i].push(d);
                    }
                }
            }
        }
        Ok(g)
    }

    /// Everything reachable from `roots`, and the blobs the reached snapshots keep.
    pub fn mark(&self, roots: impl IntoIterator<Item = usize>) -> Marked {
        let mut live = vec![false; self.keys.len()];
        let mut content = HashSet::new();
        let mut stack: Vec<usize> = roots.into_iter().collect();
        while let Some(i) = stack.pop() {
            if std::mem::replace(&mut live[i], true) {
                continue;
            }
            content.extend(self.content[i].iter().cloned());
            stack.extend(
                self.deps[i]
                    .iter()
                    .chain(&self.refs[i])
                    .filter(|&&j| !live[j]),
            );
        }
        Marked { live, content }
    }
}

/// `containerd.io/gc.ref.content` or `containerd.io/gc.ref.content.<anything>`.
fn is_content_ref(key: &str) -> bool {
    key.strip_prefix(LABEL_GC_REF_CONTENT)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// The roots of a collection, read after the graph (so a snapshot created after the
/// listing is unknown to the sweep, and one created before it is pinned or recorded by
/// the time the roots are read).
pub(crate) struct Roots {
    /// Snapshots kept by something other than a cache record: gc.root labels, live
    /// leases, recorded images, pins of this process.
    pub snapshots: Vec<usize>,
    /// Blobs kept by live leases and recorded images.
    pub content: HashSet<Digest>,
    /// Every cache record (each keeps its snapshot), by id.
    pub records: Vec<(String, StoredRecord)>,
}

impl Roots {
    /// Reads the roots at `now`; leases expired then keep nothing.
    pub fn collect(mgr: &CacheManager, graph: &Graph) -> Result<Roots> {
        Roots::collect_at(mgr, graph, SystemTime::now())
    }

    fn collect_at(mgr: &CacheManager, graph: &Graph, now: SystemTime) -> Result<Roots> {
        let mut snapshots: Vec<usize> = (0..graph.keys.len())
            .filter(|&i| graph.root_label[i])
            .collect();
        let mut content = HashSet::new();
        let keep = |key: &str, snapshots: &mut Vec<usize>| {
            if let Some(&i) = graph.index.get(key) {
                snapshots.push(i);
            }
        };
        for key in lock(&mgr.inner.pinned).iter() {
            keep(key, &mut snapshots);
        }
        for (lease, resources) in mgr.all_leases()? {
            if lease.expired_at(now) {
                continue;
            }
            for r in resources {
                match r {
                    LeaseResource::Snapshot(key) => keep(&key, &mut snapshots),
                    LeaseResource::Content(d) => {
                        content.insert(d);
                    }
                }
            }
        }
        for image in mgr.inner.store.images()? {
            for key in &image.chain_ids {
                keep(key, &mut snapshots);
            }
            let digests = image
                .layers
                .iter()
                .map(|l| l.digest.as_str())
                .chain([image.manifest.as_str(), image.config.as_str()]);
            content.extend(digests.filter_map(Digest::parse));
        }
        let records = mgr.read_records()?;
        Ok(Roots {
            snapshots,
            content,
            records,
        })
    }

    /// Indices of the records' snapshots.
    pub fn record_snapshots<'a>(&'a self, graph: &'a Graph) -> impl Iterator<Item = usize> + 'a {
        self.records
            .iter()
            .filter_map(|(_, r)| graph.index.get(&r.snapshot).copied())
    }
}

impl CacheManager {
    /// Collects garbage: deletes expired leases, then removes every snapshot and blob
    /// no root reaches (see the module documentation of [`crate::cache`]), dependants
    /// before what they depend on, and reports what went and the bytes freed. A
    /// snapshot that cannot be removed (a child appeared meanwhile) is skipped, with
    /// what it depends on.
    pub fn gc(&self) -> Result<GcReport> {
        let _g = lock(&self.inner.gc_lock);
        self.gc_locked(SystemTime::now())
    }

    pub(crate) fn gc_locked(&self, now: SystemTime) -> Result<GcReport> {
        let mut report = GcReport {
            expired_leases: self.delete_expired_leases(now)?,
            ..GcReport::default()
        };
        let graph = Graph::load(self)?;
        let roots = Roots::collect_at(self, &graph, now)?;
        let marked = graph.mark(
            roots
                .snapshots
                .iter()
                .copied()
                .chain(roots.record_snapshots(&graph)),
        );
        self.sweep_snapshots(&graph, &marked, &mut report)?;
        let mut keep = marked.content;
        keep.extend(roots.content);
        let content = self.inner.store.content();
        for d in content.list()? {
            if keep.contains(&d) {
                continue;
            }
            let path = content.path(&d);
            let bytes = std::fs::symlink_metadata(&path).map_or(0, |m| allocated(&m));
            content.remove(&d)?;
            report.content_bytes += bytes;
            report.content.push(Removed {
                id: d.to_string(),
                bytes,
            });
        }
        if !report.snapshots.is_empty() || !report.content.is_empty() {
            tracing::info!(
                snapshots = report.snapshots.len(),
                blobs = report.content.len(),
                bytes = report.bytes_freed(),
                leases = report.expired_leases.len(),
                "garbage collected"
            );
        }
        Ok(report)
    }

    fn sweep_snapshots(&self, graph: &Graph, marked: &Marked, report: &mut GcReport) -> Result<()> {
        let store = &self.inner.store;
        let n = graph.keys.len();
        let dead: Vec<bool> = marked.live.iter().map(|l| !l).collect();
        // How many dead snapshots depend on each dead snapshot: it goes when none do.
        let mut dependants = vec![0usize; n];
        for i in (0..n).filter(|&i| dead[i]) {
            for &d in &graph.deps[i] {
                dependants[d] += 1;
            }
        }
        let dirs: HashMap<String, std::path::PathBuf> = snapshot_trees(store)?
            .into_iter()
            .map(|(k, _, p)| (k, p))
            .collect();
        // Inodes with several links seen in removed trees: (links seen, nlink, bytes).
        let mut linked: HashMap<(u64, u64), (u64, u64, u64)> = HashMap::new();
        let mut ready: Vec<usize> = (0..n).filter(|&i| dead[i] && dependants[i] == 0).collect();
        while let Some(i) = ready.pop() {
            let key = &graph.keys[i];
            let mut single = 0u64;
            let mut multi = Vec::new();
            if let Some(dir) = dirs.get(key) {
                walk_tree(dir, |m| {
                    if m.is_dir() || m.nlink() <= 1 {
                        single += allocated(m);
                    } else {
                        multi.push(((m.dev(), m.ino()), m.nlink(), allocated(m)));
                    }
                })?;
            }
            match store.remove(key) {
                Ok(()) | Err(Error::NotFound { .. }) => {}
                Err(e) => {
                    tracing::warn!(key, error = %e, "GC could not remove an unreferenced snapshot");
                    continue;
                }
            }
            let mut bytes = single;
            for (ino, nlink, size) in multi {
                let entry = linked.entry(ino).or_insert((0, nlink, size));
                entry.0 += 1;
                if entry.0 == entry.1 {
                    bytes += entry.2;
                }
            }
            report.snapshot_bytes += bytes;
            report.snapshots.push(Removed {
                id: key.clone(),
                bytes,
            });
            for &d in &graph.deps[i] {
                dependants[d] -= 1;
                if dependants[d] == 0 && dead[d] {
                    ready.push(d);
                }
            }
        }
        Ok(())
    }
}
