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

mod indexes;
mod merge;
mod root_dir;

use root_dir::prepare_root;

pub use indexes::LayerIndexInfo;
pub use merge::{DiffSpec, MergeMethod, MergeReport};

/// Where a store lives and how it materialises snapshots.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Root directory; Lamina writes nothing outside it.
    pub root: PathBuf,
    /// Backend for this root (fixed at creation).
    pub backend: BackendKind,
    /// Limits every layer applied in this store must keep.
    pub layer_limits: LayerLimits,
    /// Block backend: the size of every writable layer's ext4 image (a hard quota), unless
    /// a Prepare's [`QUOTA_LABEL`] says otherwise; `None`: writable layers are plain
    /// directories unless the label asks for a quota.
    pub writable_quota: Option<u64>,
}

/// The Prepare label that gives a writable layer (block backend) its own ext4 image of
/// this size, e.g. `512M`, `2G` or a number of bytes: writes past it fail with ENOSPC.
pub const QUOTA_LABEL: &str = "containerd.io/snapshot/lamina.quota";

/// The label (value `true`, on the Prepare or the Commit) that makes a committed layer
/// one read-only EROFS image in an overlayfs store too, as every layer of a block store is.
pub const BLOCK_LABEL: &str = "containerd.io/snapshot/lamina.block";

impl StoreConfig {
    /// A store at `root` with `backend` and the default layer limits.
    pub fn new(root: impl Into<PathBuf>, backend: BackendKind) -> Self {
        StoreConfig {
            root: root.into(),
            backend,
            layer_limits: LayerLimits::default(),
            writable_quota: None,
        }
    }
}

/// Parses a size: bytes, or a number with K, M, G or T (powers of 1024, an optional
/// trailing `i`/`iB`/`B`).
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let bad =
        || Error::InvalidArgument(format!("size {text:?}: expected e.g. 512M, 2G or 1048576"));
    let n: u64 = num.parse().map_err(|_| bad())?;
    let shift = match unit.trim_end_matches(['B', 'b']).trim_end_matches('i') {
        "" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        "T" | "t" => 40,
        _ => return Err(bad()),
    };
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

/// Bounds on what one layer may expand to, against decompression bombs and layers
/// with absurd numbers of entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerLimits {
    /// Most bytes a layer's tar may decompress to.
    pub max_uncompressed_bytes: u64,
    /// Most entries a layer's tar may hold.
    pub max_entries: u64,
}

impl Default for LayerLimits {
    fn default() -> Self {
        let d = ApplyOptions::default();
        LayerLimits {
            max_uncompressed_bytes: d.max_uncompressed_bytes,
            max_entries: d.max_entries,
        }
    }
}

impl LayerLimits {
    /// `opts` with these limits applied (the stricter of the two wins).
    fn bound(&self, mut opts: ApplyOptions) -> ApplyOptions {
        opts.max_uncompressed_bytes = opts.max_uncompressed_bytes.min(self.max_uncompressed_bytes);
        opts.max_entries = opts.max_entries.min(self.max_entries);
        opts
    }
}

/// One layer of a chain unpack, done: its usage, and what is left to settle once every
/// layer below is complete (parents it left implicit, whiteouts written blind).
struct LayerDone {
    usage: Usage,
    implicit_dirs: Vec<PathBuf>,
    whiteouts: Vec<PathBuf>,
}

/// What a cleanup removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CleanupReport {
    /// Snapshot directories with no record that were deleted.
    pub removed: usize,
}

/// Key prefix of the active snapshot a layer is applied into before it is committed.
const APPLY_PREFIX: &str = "lamina-apply/";

/// containerd's snapshot model on one root directory.
pub struct Snapshotter {
    root: PathBuf,
    backend: Backend,
    backend_kind: BackendKind,
    limits: LayerLimits,
    meta: MetaStore,
    content: crate::content::ContentStore,
    next_id: AtomicU64,
    /// Block backend: default size of a writable layer's ext4 image.
    writable_quota: Option<u64>,
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
        let content = crate::content::ContentStore::open(&root)?;
        let store = Snapshotter {
            backend: Backend::new(config.backend, dir),
            backend_kind: config.backend,
            limits: config.layer_limits,
            root,
            meta,
            content,
            next_id: AtomicU64::new(max + 1),
            writable_quota: config.writable_quota,
            inflight: Mutex::new(HashSet::new()),
            _lock: lock_,
        };
        store.remove_interrupted_applies()?;
        let report = store.cleanup()?;
        if report.removed > 0 {
            tracing::info!(
                removed = report.removed,
                "removed leftover snapshot directories"
            );
        }
        for id in &store.meta.ids()? {
            let fs = store.backend.fs_dir(*id);
            if !fs.is_dir() {
                tracing::error!(id, path = %fs.display(), "snapshot record without its directory");
            }
        }
        if config.backend.stacks_layers() {
            store.mount_layer_images()?;
        }
        Ok(store)
    }

    /// Block backend: mounts every committed layer's EROFS image that is not mounted
    /// (after a reboot, or a crash between a commit and its mount), and every writable
    /// layer's ext4 image.
    fn mount_layer_images(&self) -> Result<()> {
        let mut committed = Vec::new();
        let mut writable = Vec::new();
        self.meta.for_each(|_, rec| {
            match rec.kind {
                Kind::Committed => committed.push(rec.id),
                Kind::Active => writable.push(rec.id),
                Kind::View => {}
            }
            true
        })?;
        for id in committed
            .into_iter()
            .filter(|id| self.backend.has_image(*id))
        {
            self.backend.activate_image(id)?;
        }
        for id in writable {
            self.backend.mount_writable_image(id)?;
        }
        Ok(())
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The content store (blobs by digest) under the same root.
    pub fn content(&self) -> &crate::content::ContentStore {
        &self.content
    }

    /// Records an image by name (replacing one of the same name).
    pub fn put_image(&self, rec: &crate::image::ImageRecord) -> Result<()> {
        self.meta.put_image(rec)
    }

    /// Every image recorded, by name.
    pub fn images(&self) -> Result<Vec<crate::image::ImageRecord>> {
        self.meta.images()
    }

    /// Image `name` ([`Error::ImageNotFound`] if none is recorded under that name).
    pub fn image(&self, name: &str) -> Result<crate::image::ImageRecord> {
        self.meta
            .image(name)?
            .ok_or_else(|| Error::ImageNotFound { name: name.into() })
    }

    /// Forgets image `name`; its snapshots stay until removed.
    pub fn remove_image(&self, name: &str) -> Result<()> {
        if self.meta.remove_image(name)? {
            Ok(())
        } else {
            Err(Error::ImageNotFound { name: name.into() })
        }
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
        let chain = self.parent_chain(parent)?;
        let quota = match labels.get(QUOTA_LABEL) {
            Some(size) => Some(parse_size(size)?),
            None => self.writable_quota,
        }
        .filter(|_| kind == Kind::Active);
        if quota.is_some() && !self.backend_kind.stacks_layers() {
            return Err(Error::InvalidArgument(format!(
                "{QUOTA_LABEL}: writable-layer quotas need the overlayfs or block backend (this store is {})",
                self.backend_kind
            )));
        }
        let guard = self.allocate_id();
        let id = guard.id;
        let created = self
            .backend
            .create(id, kind, &chain)
            .and_then(|()| match quota {
                Some(bytes) => self.backend.create_writable_image(id, bytes),
                None => Ok(()),
            });
        // The parent's own id: the insert checks that the parent is still this snapshot.
        let built_on: Vec<(String, u64)> = chain
            .first()
            .map(|&p| (parent.to_owned(), p))
            .into_iter()
            .collect();
        if let Err(e) = created {
            self.discard(id);
            return Err(self.vanished(&built_on).unwrap_or(e));
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
        if let Err(e) = self.meta.insert(key, &rec, chain.first().copied()) {
            self.discard(id);
            return Err(e);
        }
        drop(guard);
        Ok(self.backend.mounts(id, kind, &chain))
    }

    /// The ids of committed `parent` ("" = none) and its ancestors, nearest first, for a
    /// snapshot made on it; an error if it is missing, not committed, or a diff snapshot
    /// the native backend cannot show a tree from.
    fn parent_chain(&self, parent: &str) -> Result<Vec<u64>> {
        if parent.is_empty() {
            return Ok(Vec::new());
        }
        match self.meta.get(parent)? {
            None => Err(Error::NotFound {
                key: parent.into(),
                context: " (parent)",
            }),
            Some(p) if p.kind != Kind::Committed => Err(Error::InvalidArgument(format!(
                "parent {parent:?} is a {} snapshot, not a committed one",
                p.kind
            ))),
            Some(_) if self.backend_kind == BackendKind::Native && self.is_layer_form(parent)? => {
                Err(Error::FailedPrecondition(format!(
                    "{parent:?} is a diff snapshot (changes, with deletions as whiteouts); the native \
                     backend cannot show a tree from it: merge it first"
                )))
            }
            Some(_) => self.meta.chain(parent),
        }
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

    /// When work on the trees of `built_on` (name, id) failed: NotFound if one of them
    /// was removed (or removed and made again under its name) meanwhile, as that, not
    /// the I/O error it caused, is the answer a client can act on.
    fn vanished(&self, built_on: &[(String, u64)]) -> Option<Error> {
        built_on
            .iter()
            .find_map(|(name, id)| match self.meta.get(name) {
                Ok(Some(rec)) if rec.id == *id => None,
                Ok(_) => Some(Error::NotFound {
                    key: name.clone(),
                    context: " (removed while in use)",
                }),
                Err(_) => None,
            })
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
        // Sealed into an EROFS image: every layer of a block store, a snapshot labelled
        // so in any stacking store, and one whose tree lives in a quota image (which goes).
        let seal = self.backend_kind == BackendKind::Block
            || [labels.get(BLOCK_LABEL), rec.labels.get(BLOCK_LABEL)]
                .into_iter()
                .flatten()
                .any(|v| v == "true")
            || self.backend.has_writable_image(rec.id);
        if seal {
            // The image is built (and synced) before the record says committed; the tree
            // gives way to the mounted image after. A crash in between is finished by
            // `open` (a committed layer with its image is always mounted from it).
            let this = [(key.to_owned(), rec.id)];
            let usage = self
                .backend
                .build_image(rec.id)
                .map_err(|e| self.vanished(&this).unwrap_or(e))?;
            if let Err(e) = self.meta.commit(key, rec.id, name, labels, usage) {
                let _ = std::fs::remove_file(self.backend.image_path(rec.id));
                return Err(e);
            }
            return self.backend.activate_image(rec.id);
        }
        let usage = self
            .backend
            .usage(rec.id)
            .map_err(|e| self.vanished(&[(key.to_owned(), rec.id)]).unwrap_or(e))?;
        self.meta.commit(key, rec.id, name, labels, usage)?;
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
            // Removed while its tree was walked: gone, not an I/O failure.
            _ => self
                .backend
                .usage(rec.id)
                .map_err(|e| self.vanished(&[(key.to_owned(), rec.id)]).unwrap_or(e)),
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

    /// Removes the working snapshots of layer applies a crash cut off: nobody else
    /// knows their keys, so nothing else would ever remove them (found by the crash
    /// harness as orphaned active snapshots after a pull was killed).
    fn remove_interrupted_applies(&self) -> Result<()> {
        let mut left = Vec::new();
        self.meta.for_each(|key, _| {
            if key.starts_with(APPLY_PREFIX) {
                left.push(key.to_owned());
            }
            true
        })?;
        for key in left {
            tracing::info!(
                key,
                "removing the working snapshot of an interrupted layer apply"
            );
            self.remove(&key)?;
        }
        Ok(())
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
        let key = format!("{APPLY_PREFIX}{}/{name}", now_nanos());
        self.prepare(&key, parent, Labels::new())?;
        let result = (|| {
            let rec = self.get(&key)?;
            match self.backend_kind {
                BackendKind::Overlayfs | BackendKind::Block => {
                    opts.whiteouts = WhiteoutStyle::Overlay;
                    opts.lowers = self
                        .meta
                        .chain(parent)?
                        .into_iter()
                        .map(|id| self.backend.fs_dir(id))
                        .collect();
                    opts.lowers_complete = true;
                }
                BackendKind::Native => {
                    opts.whiteouts = WhiteoutStyle::Delete;
                    opts.lowers = Vec::new();
                }
            }
            let opts = self.limits.bound(opts);
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

    /// Commits `name` on committed `parent` ("" for none) as a layer whose files another
    /// party provides in place: `fill` gets the new snapshot's directory, its (empty,
    /// mode 0755) file tree directory and the parent chain's file trees (topmost first),
    /// and typically mounts a lazy layer on the file tree, keeping what it needs beside it
    /// in the snapshot directory. The record commits only after `fill` succeeds, with
    /// `usage`; if either fails, whatever `fill` mounted or wrote is removed again. The
    /// overlayfs backend only: the native backend copies parents, a mounted layer has none.
    pub fn commit_mounted(
        &self,
        name: &str,
        parent: &str,
        labels: Labels,
        usage: Usage,
        fill: impl FnOnce(&Path, &Path, &[PathBuf]) -> Result<()>,
    ) -> Result<()> {
        validate_key("name", name)?;
        if !parent.is_empty() {
            validate_key("parent", parent)?;
        }
        validate_labels(&labels)?;
        if self.backend_kind != BackendKind::Overlayfs {
            return Err(Error::FailedPrecondition(format!(
                "a mounted layer needs the overlayfs backend, not {}",
                self.backend_kind.as_str()
            )));
        }
        if self.meta.get(name)?.is_some() {
            return Err(Error::AlreadyExists { key: name.into() });
        }
        let chain = self.parent_chain(parent)?;
        let lowers: Vec<PathBuf> = chain.iter().map(|id| self.backend.fs_dir(*id)).collect();
        let guard = self.allocate_id();
        let id = guard.id;
        self.backend.create(id, Kind::Committed, &[])?;
        let result = fill(
            &self.backend.snapshot_dir(id),
            &self.backend.fs_dir(id),
            &lowers,
        )
        .and_then(|()| {
            let now = now_nanos();
            self.meta.insert(
                name,
                &Record {
                    id,
                    kind: Kind::Committed,
                    parent: parent.to_owned(),
                    labels,
                    created: now,
                    updated: now,
                    usage: Some(usage),
                },
                chain.first().copied(),
            )
        });
        if result.is_err() {
            self.discard(id);
        }
        drop(guard);
        result
    }

    /// The directory of committed or active snapshot `key` (its file tree is `fs` in it).
    pub fn snapshot_dir(&self, key: &str) -> Result<PathBuf> {
        Ok(self.backend.snapshot_dir(self.get(key)?.id))
    }

    /// Unpacks an image's layers (bottom first) into the committed chain named by their
    /// chain IDs, reusing the part of the chain that exists, and returns the chain IDs.
    ///
    /// On overlayfs every missing layer unpacks into its own directory at the same time
    /// (`parallelism` at once); a layer with a hard link into a lower layer is unpacked
    /// again, bottom first, once all lower layers are complete. Then one syncfs, and one
    /// transaction commits the whole chain: an acknowledged chain survives a crash, and a
    /// failed one leaves nothing. The native backend needs each parent complete before
    /// copying it, so it unpacks one layer after another.
    pub fn unpack_chain(
        &self,
        layers: &[LayerSource],
        labels: &Labels,
        parallelism: usize,
    ) -> Result<Vec<String>> {
        self.unpack_chain_streamed(layers, labels, parallelism, Vec::new(), &|| Ok(()))
    }

    /// [`Self::unpack_chain`] for blobs that are still arriving: `streams[i]`, when
    /// given, is layer `i`'s blob as it comes in (e.g. from the registry, while it is also
    /// written to the content store). Streamed layers unpack from their stream, all at
    /// once; the others from their files. `blobs_ready` is called after the streamed
    /// unpacks end and before any blob file of theirs is read (a layer unpacked again) or
    /// the chain is committed: it waits until the blob files are complete.
    pub fn unpack_chain_streamed(
        &self,
        layers: &[LayerSource],
        labels: &Labels,
        parallelism: usize,
        mut streams: Vec<Option<Box<dyn std::io::Read + Send>>>,
        blobs_ready: &(dyn Fn() -> Result<()> + Sync),
    ) -> Result<Vec<String>> {
        validate_labels(labels)?;
        streams.resize_with(layers.len(), || None);
        let names = chain_ids(layers);
        let first_missing = names
            .iter()
            .position(|n| !matches!(self.meta.get(n), Ok(Some(r)) if r.kind == Kind::Committed))
            .unwrap_or(names.len());
        // Streams of layers that exist already are not read: let go of them now, so what
        // feeds them is not left waiting.
        streams
            .iter_mut()
            .take(first_missing)
            .for_each(|s| *s = None);
        if first_missing == names.len() || self.backend_kind == BackendKind::Native {
            // Nothing to stream into: the native backend copies each finished parent.
            streams.clear();
            blobs_ready()?;
        }
        if first_missing == names.len() {
            return Ok(names);
        }
        let base = if first_missing == 0 {
            String::new()
        } else {
            names[first_missing - 1].clone()
        };
        let opts_for = |l: &LayerSource| {
            self.limits.bound(ApplyOptions {
                expected_digest: Some(l.digest.clone()),
                expected_diff_id: Some(l.diff_id.clone()),
                ..ApplyOptions::default()
            })
        };
        if self.backend_kind == BackendKind::Native {
            let mut parent = base;
            for (i, l) in layers.iter().enumerate().skip(first_missing) {
                let blob = std::fs::File::open(&l.blob).ctx("open", &l.blob)?;
                let mut layer_labels = labels.clone();
                layer_labels.insert("lamina.io/layer.digest".into(), l.digest.to_string());
                self.apply_layer(&names[i], &parent, layer_labels, blob, opts_for(l))
                    .map_err(|e| e.in_layer(&l.digest))?;
                parent = names[i].clone();
            }
            return Ok(names);
        }
        let todo: Vec<usize> = (first_missing..layers.len()).collect();
        let guards: Vec<Inflight<'_>> = todo.iter().map(|_| self.allocate_id()).collect();
        let ids: Vec<u64> = guards.iter().map(|g| g.id).collect();
        let base_dirs: Vec<PathBuf> = self
            .meta
            .chain(&base)?
            .into_iter()
            .map(|id| self.backend.fs_dir(id))
            .collect();
        // Lower directories of layer `k` (index into `todo`), topmost first.
        let lowers = |k: usize| -> Vec<PathBuf> {
            ids[..k]
                .iter()
                .rev()
                .map(|id| self.backend.fs_dir(*id))
                .chain(base_dirs.iter().cloned())
                .collect()
        };
        let discard_all = |ids: &[u64]| ids.iter().for_each(|id| self.discard(*id));
        // `complete`: every lower layer is finished, so hard links may copy files up from
        // them. While layers unpack side by side they are not, and a link into a lower
        // layer fails with MissingLinkTarget, to be redone once they are. Gives the
        // layer's disk usage, measured while its inodes are still in cache.
        let apply_one = |k: usize,
                         complete: bool,
                         stream: Option<Box<dyn std::io::Read + Send>>|
         -> Result<LayerDone> {
            let l = &layers[todo[k]];
            let dir = self.backend.fs_dir(ids[k]);
            crate::fsutil::remove_tree(&self.backend.snapshot_dir(ids[k]))?;
            self.backend.create(ids[k], Kind::Committed, &[])?;
            let streamed = stream.is_some();
            let blob: Box<dyn std::io::Read + Send> = match stream {
                Some(s) => s,
                None => Box::new(std::fs::File::open(&l.blob).ctx("open", &l.blob)?),
            };
            let lowers = if complete { lowers(k) } else { Vec::new() };
            let opts = ApplyOptions {
                lowers,
                lowers_complete: complete,
                // A streamed blob is verified by the content store as it is stored, and
                // the chain commits only after that; a blob file is hashed here.
                blob_digest_checked_elsewhere: streamed,
                ..opts_for(l)
            };
            let started = std::time::Instant::now();
            let report = crate::layer::apply_layer(std::io::BufReader::new(blob), &dir, &opts)?;
            tracing::debug!(
                layer = todo[k],
                entries = report.entries,
                bytes = report.size,
                secs = started.elapsed().as_secs_f64(),
                complete,
                "layer unpacked"
            );
            // Start writing this layer out now, while other layers still unpack, so the
            // syncfs before the commit finds little left to flush.
            crate::sys::start_writeback(&dir);
            // Parents the layer left implicit take their lower layers' attributes once
            // those are complete (done by the applier itself when it had them).
            let (implicit_dirs, whiteouts) = if complete {
                (Vec::new(), Vec::new())
            } else {
                (report.implicit_dirs, report.whiteouts)
            };
            Ok(LayerDone {
                usage: self.backend.usage(ids[k])?,
                implicit_dirs,
                whiteouts,
            })
        };
        let results: Vec<Mutex<Option<Result<LayerDone>>>> =
            todo.iter().map(|_| Mutex::new(None)).collect();
        let mut from_files = Vec::new();
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            // A streamed layer is read as it arrives, so each gets a thread of its own.
            for (k, &i) in todo.iter().enumerate() {
                match streams[i].take() {
                    Some(stream) => {
                        let (apply_one, results) = (&apply_one, &results);
                        s.spawn(move || {
                            *lock(&results[k]) = Some(apply_one(k, false, Some(stream)))
                        });
                    }
                    None => from_files.push(k),
                }
            }
            let (from_files, next) = (&from_files, &next);
            for _ in 0..parallelism.clamp(1, from_files.len().max(1)) {
                s.spawn(|| loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&k) = from_files.get(n) else { break };
                    *lock(&results[k]) = Some(apply_one(k, false, None));
                });
            }
        });
        let started = std::time::Instant::now();
        if let Err(e) = blobs_ready() {
            discard_all(&ids);
            return Err(e);
        }
        tracing::debug!(
            secs = started.elapsed().as_secs_f64(),
            "blobs stored after the unpacks ended"
        );
        // Layers that linked into an unfinished lower layer: again, bottom first, now
        // that every lower layer is complete.
        let mut usages = Vec::with_capacity(todo.len());
        for (k, slot) in results.iter().enumerate() {
            let r = lock(slot).take().unwrap_or_else(|| {
                Err(Error::FailedPrecondition(format!(
                    "the unpack of layer {} ended without a result",
                    todo[k]
                )))
            });
            let r = match r {
                Err(Error::Layer(crate::layer::LayerError::MissingLinkTarget { .. })) => {
                    apply_one(k, true, None)
                }
                r => r,
            };
            let r = r.and_then(|done| {
                let dir = self.backend.fs_dir(ids[k]);
                if !done.implicit_dirs.is_empty() {
                    crate::layer::adopt_lower_attributes(&dir, &done.implicit_dirs, &lowers(k))?;
                }
                if !done.whiteouts.is_empty() {
                    crate::layer::drop_redundant_whiteouts(&dir, &done.whiteouts, &lowers(k))?;
                }
                Ok(done.usage)
            });
            match r {
                Ok(usage) => usages.push(usage),
                Err(e) => {
                    discard_all(&ids);
                    return Err(e.in_layer(&layers[todo[k]].digest));
                }
            }
        }
        if self.backend_kind == BackendKind::Block {
            // Every layer is complete (fix-ups above read the trees below): each becomes
            // its image, mounted; a crash before the chain commits leaves directories
            // that cleanup removes, mounts included.
            for (k, &id) in ids.iter().enumerate() {
                match self
                    .backend
                    .build_image(id)
                    .and_then(|u| self.backend.activate_image(id).map(|()| u))
                {
                    Ok(usage) => usages[k] = usage,
                    Err(e) => {
                        discard_all(&ids);
                        return Err(e.in_layer(&layers[todo[k]].digest));
                    }
                }
            }
        }
        let started = std::time::Instant::now();
        if let Err(e) = crate::sys::syncfs(&self.root) {
            discard_all(&ids);
            return Err(e);
        }
        tracing::debug!(secs = started.elapsed().as_secs_f64(), "syncfs");
        let now = now_nanos();
        let mut chain = Vec::with_capacity(todo.len());
        for (k, &i) in todo.iter().enumerate() {
            let usage = usages[k];
            let mut layer_labels = labels.clone();
            layer_labels.insert(
                "lamina.io/layer.digest".into(),
                layers[i].digest.to_string(),
            );
            let parent = if i == 0 {
                String::new()
            } else {
                names[i - 1].clone()
            };
            chain.push((
                names[i].clone(),
                Record {
                    id: ids[k],
                    kind: Kind::Committed,
                    parent,
                    labels: layer_labels,
                    created: now,
                    updated: now,
                    usage: Some(usage),
                },
            ));
        }
        match self.meta.insert_chain(&chain) {
            Ok(duplicates) => duplicates.iter().for_each(|id| self.discard(*id)),
            Err(e) => {
                discard_all(&ids);
                return Err(e);
            }
        }
        drop(guards);
        Ok(names)
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
            (BackendKind::Overlayfs | BackendKind::Block, _, _) => DiffSource::OverlayUpper(&own),
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

    /// Snapshots that `key` needs: its parent and, for a merged snapshot, the snapshots
    /// whose trees it stacks. None of them can be removed while `key` exists, and whatever
    /// keeps `key` (a lease, a GC root) keeps them too.
    pub fn dependencies(&self, key: &str) -> Result<Vec<String>> {
        let rec = self.get(key)?;
        let mut deps: Vec<String> = Some(rec.parent)
            .into_iter()
            .filter(|p| !p.is_empty())
            .collect();
        if let Some(extra) = self.meta.extra(key)? {
            deps.extend(extra.sources);
        }
        deps.dedup();
        Ok(deps)
    }

    /// Every snapshot with its kind and its own tree (overlay upper directory or native
    /// full tree), for walks that account for disk usage across snapshots.
    pub fn trees(&self) -> Result<Vec<(String, Kind, PathBuf)>> {
        let mut out = Vec::new();
        self.meta.for_each(|key, rec| {
            out.push((key.to_owned(), rec.kind, self.backend.fs_dir(rec.id)));
            true
        })?;
        Ok(out)
    }

    /// The metadata database, for stores (the cache manager) whose tables live in the
    /// same file as the snapshots', so one transaction can cover both.
    pub(crate) fn db(&self) -> &redb::Database {
        self.meta.db()
    }

    /// Closes the store, releasing its lock. Dropping it does the same.
    pub fn close(self) {}

    fn get(&self, key: &str) -> Result<Record> {
        validate_key("key", key)?;
        self.meta.get(key)?.ok_or_else(|| Error::not_found(key))
    }
}

/// One layer of an image to unpack: its blob on disk and its two digests.
#[derive(Debug, Clone)]
pub struct LayerSource {
    /// The blob (compressed or not), e.g. in the content store.
    pub blob: PathBuf,
    /// Digest of the blob, checked while unpacking.
    pub digest: crate::layer::Digest,
    /// Digest of the uncompressed tar, checked while unpacking.
    pub diff_id: crate::layer::Digest,
}

/// The OCI chain IDs of `layers`: the first layer's diffID, then
/// sha256(previous chain ID + " " + diffID), as `sha256:<hex>`.
pub fn chain_ids(layers: &[LayerSource]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(layers.len());
    for l in layers {
        let id = next_chain_id(out.last().map(String::as_str), l.diff_id.as_str());
        out.push(id);
    }
    out
}

/// The chain ID of a layer with `diff_id` on the chain `parent` (`None`: the first layer).
pub fn next_chain_id(parent: Option<&str>, diff_id: &str) -> String {
    match parent {
        None => diff_id.to_owned(),
        Some(prev) => crate::layer::Digest::of(format!("{prev} {diff_id}").as_bytes()).to_string(),
    }
}
