//! The snapshot store: containerd's `snapshots.Snapshotter` semantics over the metadata
//! file and a backend.
//!
//! Crash ordering: a snapshot's directory is created before its record commits and
//! deleted only after its record is gone, so a record never points at a missing
//! directory; directories without a record are leftovers that [`Snapshotter::cleanup`]
//! (also run at start-up) deletes.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::backend::{Backend, BackendKind};
use crate::error::{Error, IoContext, Result};
use crate::filter::Filter;
use crate::layer::{ApplyOptions, ApplyReport, Compression, DiffReport, DiffSource, WhiteoutStyle};
use crate::lock::RootLock;
use crate::meta::{now_nanos, MetaStore, Record};
use crate::model::{validate_key, validate_labels, Info, Kind, Labels, Mount, Usage};

/// Where a store lives and how it materialises snapshots.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Root directory; Lamina writes nothing outside it.
    pub root: PathBuf,
    /// Backend for this root (fixed at creation).
    pub backend: BackendKind,
}

/// What a cleanup removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CleanupReport {
    /// Snapshot directories with no record that were deleted.
    pub removed: usize,
}

/// containerd's snapshot model on one root directory.
pub struct Snapshotter {
    root: PathBuf,
    backend: Backend,
    backend_kind: BackendKind,
    meta: MetaStore,
    next_id: AtomicU64,
    /// Ids whose directory exists but whose record may not be committed yet;
    /// cleanup must leave them alone.
    inflight: Mutex<HashSet<u64>>,
    _lock: RootLock,
}

/// Removes an id from the in-flight set when its operation ends, however it ends.
struct Inflight<'a> {
    set: &'a Mutex<HashSet<u64>>,
    id: u64,
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        lock(self.set).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the set inconsistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Snapshotter {
    /// Opens (creating if needed) the store at `config.root`, takes its lock, and removes
    /// leftovers of a previous crash.
    pub fn open(config: StoreConfig) -> Result<Snapshotter> {
        let root = prepare_root(&config.root)?;
        let lock_ = RootLock::acquire(&root)?;
        let meta = MetaStore::open(&root.join("metadata.redb"), config.backend)?;
        let dir = root.join("snapshots");
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io("mkdir", dir, e)),
        }
        let ids = meta.ids()?;
        let mut max = ids.iter().copied().max().unwrap_or(0);
        for entry in std::fs::read_dir(&dir).ctx("read directory", &dir)? {
            let entry = entry.ctx("read directory", &dir)?;
            if let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u64>().ok())
            {
                max = max.max(id);
            }
        }
        let store = Snapshotter {
            backend: Backend::new(config.backend, dir),
            backend_kind: config.backend,
            root,
            meta,
            next_id: AtomicU64::new(max + 1),
            inflight: Mutex::new(HashSet::new()),
            _lock: lock_,
        };
        let report = store.cleanup()?;
        if report.removed > 0 {
            tracing::info!(
                removed = report.removed,
                "removed leftover snapshot directories"
            );
        }
        for id in &ids {
            let fs = store.backend.fs_dir(*id);
            if !fs.is_dir() {
                tracing::error!(id, path = %fs.display(), "snapshot record without its directory");
            }
        }
        Ok(store)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The store's backend.
    pub fn backend(&self) -> BackendKind {
        self.backend_kind
    }

    /// Creates an active (writable) snapshot `key` on top of committed `parent` ("" = empty).
    pub fn prepare(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        self.create(Kind::Active, key, parent, labels)
    }

    /// Creates a read-only view `key` of committed `parent`; it can never be committed.
    pub fn view(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        self.create(Kind::View, key, parent, labels)
    }

    fn create(&self, kind: Kind, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        validate_key("key", key)?;
        if !parent.is_empty() {
            validate_key("parent", parent)?;
        }
        validate_labels(&labels)?;
        // Cheap checks first, so failing requests touch no disk; the insert re-checks.
        if self.meta.get(key)?.is_some() {
            return Err(Error::AlreadyExists { key: key.into() });
        }
        let chain = if parent.is_empty() {
            Vec::new()
        } else {
            match self.meta.get(parent)? {
                None => {
                    return Err(Error::NotFound {
                        key: parent.into(),
                        context: " (parent)",
                    })
                }
                Some(p) if p.kind != Kind::Committed => {
                    return Err(Error::InvalidArgument(format!(
                        "parent {parent:?} is a {} snapshot, not a committed one",
                        p.kind
                    )))
                }
                Some(_) => self.meta.chain(parent)?,
            }
        };
        let guard = self.allocate_id();
        let id = guard.id;
        if let Err(e) = self.backend.create(id, kind, &chain) {
            self.discard(id);
            return Err(e);
        }
        let now = now_nanos();
        let rec = Record {
            id,
            kind,
            parent: parent.to_owned(),
            labels,
            created: now,
            updated: now,
            usage: None,
        };
        if let Err(e) = self.meta.insert(key, &rec) {
            self.discard(id);
            return Err(e);
        }
        drop(guard);
        Ok(self.backend.mounts(id, kind, &chain))
    }

    fn allocate_id(&self) -> Inflight<'_> {
        let mut set = lock(&self.inflight);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        set.insert(id);
        Inflight {
            set: &self.inflight,
            id,
        }
    }

    /// Deletes the directory of a snapshot whose record never committed.
    fn discard(&self, id: u64) {
        if let Err(e) = self.backend.remove(id) {
            tracing::warn!(id, error = %e, "could not remove directory of failed snapshot; cleanup will retry");
        }
    }

    /// The mounts of an active snapshot or view.
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let rec = self.get(key)?;
        if rec.kind == Kind::Committed {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key:?} is committed: only active snapshots and views have mounts"
            )));
        }
        let chain = self.meta.chain(&rec.parent)?;
        Ok(self.backend.mounts(rec.id, rec.kind, &chain))
    }

    /// Commits active snapshot `key` as the committed snapshot `name` with `labels`;
    /// `key` no longer exists afterwards.
    pub fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        validate_key("name", name)?;
        validate_key("key", key)?;
        validate_labels(&labels)?;
        let rec = self.get(key)?;
        if rec.kind != Kind::Active {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key:?} is a {} snapshot: only active snapshots can be committed",
                rec.kind
            )));
        }
        let usage = self.backend.usage(rec.id)?;
        self.meta.commit(key, name, labels, usage)?;
        Ok(())
    }

    /// Removes a snapshot that no other snapshot depends on, and then its directory.
    pub fn remove(&self, key: &str) -> Result<()> {
        validate_key("key", key)?;
        let rec = self.meta.remove(key)?;
        if let Err(e) = self.backend.remove(rec.id) {
            tracing::warn!(key, id = rec.id, error = %e, "could not remove snapshot directory; cleanup will retry");
        }
        Ok(())
    }

    /// Info of a snapshot by key or name.
    pub fn stat(&self, key: &str) -> Result<Info> {
        Ok(self.get(key)?.info(key))
    }

    /// Updates the mutable part of a snapshot's info: its labels. `fieldpaths` may name
    /// `labels` (replace all) or `labels.KEY` (set or, when absent from `info`, delete one);
    /// empty means all labels.
    pub fn update(&self, info: &Info, fieldpaths: &[String]) -> Result<Info> {
        validate_key("name", &info.name)?;
        for path in fieldpaths {
            if path != "labels" && !path.starts_with("labels.") {
                return Err(Error::InvalidArgument(format!(
                    "cannot update {path:?} field on snapshot {:?}: only labels are mutable",
                    info.name
                )));
            }
        }
        let mut result = Ok(());
        let rec = self.meta.update(&info.name, |labels| {
            let mut next = labels.clone();
            if fieldpaths.is_empty() {
                next = info.labels.clone();
            }
            for path in fieldpaths {
                match path.strip_prefix("labels.") {
                    None => next = info.labels.clone(),
                    Some(k) => match info.labels.get(k) {
                        Some(v) => {
                            next.insert(k.to_owned(), v.clone());
                        }
                        None => {
                            next.remove(k);
                        }
                    },
                }
            }
            match validate_labels(&next) {
                Ok(()) => *labels = next,
                Err(e) => result = Err(e),
            }
        })?;
        result?;
        Ok(rec.info(&info.name))
    }

    /// The usage recorded at commit, without touching the disk: `Some` for committed
    /// snapshots, `None` for active snapshots and views (whose usage [`Self::usage`] computes).
    pub fn recorded_usage(&self, key: &str) -> Result<Option<Usage>> {
        let rec = self.get(key)?;
        Ok(rec.usage.filter(|_| rec.kind == Kind::Committed))
    }

    /// Disk usage of a snapshot, excluding its parents: computed now for active
    /// snapshots and views, as recorded at commit for committed ones.
    pub fn usage(&self, key: &str) -> Result<Usage> {
        let rec = self.get(key)?;
        match rec.usage {
            Some(u) if rec.kind == Kind::Committed => Ok(u),
            _ => self.backend.usage(rec.id),
        }
    }

    /// Calls `f` with the info of every snapshot that matches `filter`, in key order,
    /// until `f` returns `false`.
    pub fn walk(&self, filter: &Filter, mut f: impl FnMut(Info) -> bool) -> Result<()> {
        self.meta.for_each(|key, rec| {
            let info = rec.info(key);
            !filter.matches(&info) || f(info)
        })
    }

    /// The info of every snapshot matching any of `filters` (containerd's filter syntax).
    pub fn list<S: AsRef<str>>(&self, filters: &[S]) -> Result<Vec<Info>> {
        let filter = Filter::parse_all(filters)?;
        let mut out = Vec::new();
        self.walk(&filter, |info| {
            out.push(info);
            true
        })?;
        Ok(out)
    }

    /// Deletes snapshot directories that no record refers to (removed snapshots whose
    /// directory removal failed, and leftovers of a crash).
    pub fn cleanup(&self) -> Result<CleanupReport> {
        let dir = self.backend.snapshot_dir(0);
        let dir = dir.parent().unwrap_or(&self.root);
        let mut candidates = Vec::new();
        for entry in std::fs::read_dir(dir).ctx("read directory", dir)? {
            let entry = entry.ctx("read directory", dir)?;
            candidates.push(entry.file_name());
        }
        // Holding the in-flight lock while reading the ids means no snapshot can both
        // leave the in-flight set and be missing from `ids`.
        let doomed: Vec<PathBuf> = {
            let inflight = lock(&self.inflight);
            let ids = self.meta.ids()?;
            candidates
                .into_iter()
                .filter(|name| {
                    match name.to_str().and_then(|s| s.parse::<u64>().ok()) {
                        Some(id) => !ids.contains(&id) && !inflight.contains(&id),
                        None => true, // not ours to keep: nothing else belongs here
                    }
                })
                .map(|name| dir.join(name))
                .collect()
        };
        let mut report = CleanupReport::default();
        for path in doomed {
            crate::fsutil::remove_tree(&path)?;
            report.removed += 1;
        }
        Ok(report)
    }

    /// Applies the OCI layer `blob` on top of committed `parent` ("" for none) and commits
    /// the result as `name` with `labels`. The layer is written into a fresh active
    /// snapshot that is removed again if anything fails, so a bad layer leaves nothing.
    /// `opts` gives limits and expected digests; whiteout style and lower layers follow
    /// the backend.
    pub fn apply_layer(
        &self,
        name: &str,
        parent: &str,
        labels: Labels,
        blob: impl std::io::Read,
        mut opts: ApplyOptions,
    ) -> Result<ApplyReport> {
        validate_key("name", name)?;
        validate_labels(&labels)?;
        if self.meta.get(name)?.is_some() {
            return Err(Error::AlreadyExists { key: name.into() });
        }
        let key = format!("lamina-apply/{}/{name}", now_nanos());
        self.prepare(&key, parent, Labels::new())?;
        let result = (|| {
            let rec = self.get(&key)?;
            match self.backend_kind {
                BackendKind::Overlayfs => {
                    opts.whiteouts = WhiteoutStyle::Overlay;
                    opts.lowers = self
                        .meta
                        .chain(parent)?
                        .into_iter()
                        .map(|id| self.backend.fs_dir(id))
                        .collect();
                }
                BackendKind::Native => {
                    opts.whiteouts = WhiteoutStyle::Delete;
                    opts.lowers = Vec::new();
                }
            }
            let report = crate::layer::apply_layer(blob, &self.backend.fs_dir(rec.id), &opts)?;
            self.commit(name, &key, labels)?;
            Ok(report)
        })();
        if result.is_err() {
            if let Err(e) = self.remove(&key) {
                tracing::warn!(key, error = %e, "could not remove the snapshot of a failed layer");
            }
        }
        result
    }

    /// Writes the changes snapshot `key` holds over its parent as an OCI layer to `out`.
    pub fn diff(
        &self,
        key: &str,
        compression: Compression,
        out: impl std::io::Write,
    ) -> Result<DiffReport> {
        let rec = self.get(key)?;
        let own = self.backend.fs_dir(rec.id);
        let parent = self
            .meta
            .chain(&rec.parent)?
            .first()
            .map(|id| self.backend.fs_dir(*id));
        let source = match (self.backend_kind, rec.kind, &parent) {
            (BackendKind::Overlayfs, _, _) => DiffSource::OverlayUpper(&own),
            // A native view is its parent, unchanged.
            (BackendKind::Native, Kind::View, Some(p)) => DiffSource::Trees {
                lower: Some(p),
                upper: p,
            },
            (BackendKind::Native, _, p) => DiffSource::Trees {
                lower: p.as_deref(),
                upper: &own,
            },
        };
        Ok(crate::layer::write_diff(source, compression, out)?)
    }

    /// Closes the store, releasing its lock. Dropping it does the same.
    pub fn close(self) {}

    fn get(&self, key: &str) -> Result<Record> {
        validate_key("key", key)?;
        self.meta.get(key)?.ok_or_else(|| Error::not_found(key))
    }
}

/// Creates the root (mode 0700) if missing and refuses one that is a symlink.
fn prepare_root(root: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    if let Ok(meta) = std::fs::symlink_metadata(root) {
        if meta.file_type().is_symlink() {
            return Err(Error::InvalidArgument(format!(
                "root {} is a symlink; give the real directory",
                root.display()
            )));
        }
        if !meta.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "root {} is not a directory",
                root.display()
            )));
        }
    } else {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .ctx("mkdir", root)?;
    }
    let root = std::fs::canonicalize(root).ctx("resolve", root)?;
    Ok(root)
}
