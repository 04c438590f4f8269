//! Prune, like `buildctl prune`: choose cache records to drop, drop them, then collect
//! garbage so their snapshots (and whatever only they kept) go.
//!
//! Which records may go: no handles on them or on records built on them (in use), no
//! records left that are built on them (those go first, in an earlier round), not
//! internal or frontend records nor records something else keeps (shared) unless `all`,
//! not used within `keep_duration` (last use, or creation if never used), and matching
//! the filters. Without `keep_bytes` every such record goes. With it, records go one at
//! a time, least recently used first (never-used first, then fewer uses, then older),
//! while the store's snapshot usage (each inode once, after the garbage that exists
//! already) is above `keep_bytes`; each removal's effect is simulated exactly on the
//! measured inodes, following what the collector would then remove. (BuildKit orders by
//! a blend of last use and use count and counts only non-shared records' sizes; Lamina
//! orders by last use and bounds the whole store, what `lamina du` shows.)

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use super::du::{Simulation, TreeUsage};
use super::gc::{GcReport, Graph, Roots};
use super::{lock, snapshot_trees, CacheManager, RecordInfo, RecordType, RECORDS};
use crate::error::Result;
use crate::filter::Filter;

/// What to prune.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneOptions {
    /// containerd filters on record fields (see [`RecordInfo::field`]); any may match;
    /// none = all records.
    pub filters: Vec<String>,
    /// Also internal and frontend records, and shared ones.
    pub all: bool,
    /// Keep records used (or, never used, created) more recently than this.
    pub keep_duration: Option<Duration>,
    /// Stop once the store's snapshot usage is at most this many bytes (0 = no bound:
    /// remove every eligible record).
    pub keep_bytes: u64,
}

/// What a prune did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Records removed, in removal order, each with its snapshot's size.
    pub removed: Vec<RecordInfo>,
    /// The collection that followed.
    pub gc: GcReport,
    /// Snapshot usage before (each inode once).
    pub usage_before: u64,
    /// Snapshot usage after: before, less what the collection freed.
    pub usage_after: u64,
}

impl CacheManager {
    /// Prunes cache records as `opts` says, then collects garbage; see the module
    /// documentation of `prune` for the rules.
    pub fn prune(&self, opts: &PruneOptions) -> Result<PruneReport> {
        let filter = Filter::parse_all(&opts.filters)?;
        let _g = lock(&self.inner.gc_lock);
        let now = SystemTime::now();
        let expired = self.delete_expired_leases(now)?;
        let graph = Graph::load(self)?;
        let roots = Roots::collect(self, &graph)?;
        let usage = TreeUsage::measure(&snapshot_trees(&self.inner.store)?)?;
        let mut infos = self.record_infos(&graph, &roots);
        for r in &mut infos {
            r.size = usage.size_of(&r.snapshot);
        }
        let cutoff = opts.keep_duration.map(|d| now - d);
        let eligible = |r: &RecordInfo| {
            let hidden =
                matches!(r.record_type, RecordType::Internal | RecordType::Frontend) || r.shared;
            let recent = cutoff.is_some_and(|c| r.last_used.unwrap_or(r.created) > c);
            !r.in_use && (opts.all || !hidden) && !recent && filter.matches_fields(|p| r.field(p))
        };
        // Simulate: the garbage there is now goes first, then each chosen record's.
        let mut sim = Simulation::new(&usage);
        let mut removed = vec![false; infos.len()];
        let mut live = self.live_after(&graph, &roots, &infos, &removed);
        for (i, key) in graph.keys.iter().enumerate() {
            if !live[i] {
                sim.remove(key);
            }
        }
        let mut order = Vec::new();
        loop {
            if opts.keep_bytes > 0 && sim.total <= opts.keep_bytes {
                break;
            }
            let built_on: HashSet<&str> = infos
                .iter()
                .zip(&removed)
                .filter(|(_, gone)| !**gone)
                .flat_map(|(r, _)| r.parents.iter().map(String::as_str))
                .collect();
            let mut candidates: Vec<usize> = (0..infos.len())
                .filter(|&i| !removed[i] && !built_on.contains(infos[i].id.as_str()))
                .filter(|&i| eligible(&infos[i]))
                .collect();
            if candidates.is_empty() {
                break;
            }
            if opts.keep_bytes > 0 {
                candidates.sort_by_key(|&i| {
                    let r = &infos[i];
                    (r.last_used, r.use_count, r.created, r.id.clone())
                });
                candidates.truncate(1);
            }
            for &c in &candidates {
                removed[c] = true;
                order.push(c);
            }
            let next = self.live_after(&graph, &roots, &infos, &removed);
            for (i, key) in graph.keys.iter().enumerate() {
                if live[i] && !next[i] {
                    sim.remove(key);
                }
            }
            live = next;
        }
        let dropped = self.drop_records(&infos, &order)?;
        let mut gc = self.gc_locked(now)?;
        let mut all_expired = expired;
        all_expired.append(&mut gc.expired_leases);
        gc.expired_leases = all_expired;
        Ok(PruneReport {
            removed: dropped,
            usage_before: usage.total,
            usage_after: usage.total.saturating_sub(gc.snapshot_bytes),
            gc,
        })
    }

    /// Which snapshots stay reachable when the records marked in `removed` are gone.
    fn live_after(
        &self,
        graph: &Graph,
        roots: &Roots,
        infos: &[RecordInfo],
        removed: &[bool],
    ) -> Vec<bool> {
        let kept = infos
            .iter()
            .zip(removed)
            .filter(|(_, gone)| !**gone)
            .filter_map(|(r, _)| graph.index.get(&r.snapshot).copied());
        graph.mark(roots.snapshots.iter().copied().chain(kept)).live
    }

    /// Deletes the records `order` picks, in one transaction, skipping any that got a
    /// handle meanwhile; returns the ones deleted.
    fn drop_records(&self, infos: &[RecordInfo], order: &[usize]) -> Result<Vec<RecordInfo>> {
        if order.is_empty() {
            return Ok(Vec::new());
        }
        let held = lock(&self.inner.held);
        let mut dropped = Vec::new();
        let txn = self.inner.store.db().begin_write()?;
        {
            let mut table = txn.open_table(RECORDS)?;
            for &i in order {
                let r = &infos[i];
                if held.contains_key(&r.id) {
                    continue;
                }
                if table.remove(r.id.as_str())?.is_some() {
                    dropped.push(r.clone());
                }
            }
        }
        txn.commit()?;
        drop(held);
        Ok(dropped)
    }
}
