//! BuildKit's refs: a cache record is a snapshot plus usage facts (description, type,
//! policy, created, last used, use count); a ref is a counted, in-process handle on a
//! record. Mutable records are active snapshots (one handle at a time), immutable
//! records committed ones (any number of handles).
//!
//! Lifetime rules, as BuildKit's cache manager has them:
//! - Releasing the last handle of an immutable record keeps the record as cache (until
//!   pruned) and stamps its last-used time and use count.
//! - Releasing a mutable ref with the default policy removes the record and its active
//!   snapshot: it was scratch space. With the retain policy (BuildKit uses it for
//!   `exec.cachemount`), the record stays as cache, like an immutable one.
//! - Committing a mutable ref consumes it: its record becomes a new immutable record
//!   (new id, same description, type, policy and parents) over the committed snapshot.
//! - A record with live handles, or a record that records with live handles are built
//!   on (its "children"), is in use; prune never removes it.
//! - At open, mutable default-policy records left by a previous process are removed:
//!   their only handle died with it.

use std::sync::Arc;
use std::time::SystemTime;

use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::{lock, time, CacheError, CacheManager, Inner, KEY_PREFIX, LABEL_CACHE_RECORD, RECORDS};
use crate::error::{Error, Result};
use crate::model::{Labels, Mount};

/// What a record is for, as BuildKit's `UsageRecordType`; prune without `all` skips
/// internal and frontend records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum RecordType {
    /// A build step's result (`regular`).
    #[default]
    Regular,
    /// The builder's own bookkeeping (`internal`).
    Internal,
    /// A frontend's files (`frontend`).
    Frontend,
    /// Files synced from the client (`source.local`).
    LocalSource,
    /// A `RUN --mount=type=cache` directory (`exec.cachemount`).
    CacheMount,
    /// A git checkout (`source.git.checkout`).
    GitCheckout,
}

impl RecordType {
    /// BuildKit's name for the type.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordType::Regular => "regular",
            RecordType::Internal => "internal",
            RecordType::Frontend => "frontend",
            RecordType::LocalSource => "source.local",
            RecordType::CacheMount => "exec.cachemount",
            RecordType::GitCheckout => "source.git.checkout",
        }
    }

    /// Parses BuildKit's name; empty means regular, as in BuildKit.
    pub fn parse(s: &str) -> Result<RecordType> {
        Ok(match s {
            "" | "regular" => RecordType::Regular,
            "internal" => RecordType::Internal,
            "frontend" => RecordType::Frontend,
            "source.local" => RecordType::LocalSource,
            "exec.cachemount" => RecordType::CacheMount,
            "source.git.checkout" => RecordType::GitCheckout,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown record type {other:?} (regular, internal, frontend, source.local, exec.cachemount, source.git.checkout)"
                )))
            }
        })
    }
}

/// Whether a released record stays: see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum CachePolicy {
    /// Immutable records stay as cache; mutable ones go when released.
    #[default]
    Default,
    /// The record stays as cache when released, mutable or not.
    Retain,
}

impl CachePolicy {
    /// `default` or `retain`.
    pub fn as_str(self) -> &'static str {
        match self {
            CachePolicy::Default => "default",
            CachePolicy::Retain => "retain",
        }
    }
}

/// How a new record is described.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefOptions {
    /// Free text, e.g. the build step.
    pub description: String,
    /// What the record is for.
    pub record_type: RecordType,
    /// Whether it stays when released.
    pub policy: CachePolicy,
}

/// A record as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredRecord {
    /// Key of its snapshot (active when mutable, committed otherwise).
    pub snapshot: String,
    pub mutable: bool,
    /// Ids of the records it was built on.
    pub parents: Vec<String>,
    pub description: String,
    pub record_type: RecordType,
    pub policy: CachePolicy,
    /// Nanoseconds since the epoch.
    pub created: i64,
    /// When its last handle was released, if ever.
    pub last_used: Option<i64>,
    /// How many times its handles were all released.
    pub use_count: u64,
}

pub(crate) fn decode_record(id: &str, bytes: &[u8]) -> Result<StoredRecord> {
    postcard::from_bytes(bytes).map_err(|source| {
        CacheError::Corrupt {
            what: "record",
            id: id.to_owned(),
            source,
        }
        .into()
    })
}

fn encode_record(rec: &StoredRecord) -> Vec<u8> {
    // Plain owned data into a Vec cannot fail to serialise.
    postcard::to_allocvec(rec).unwrap_or_default()
}

/// What is known about a record, as `buildctl du -v` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordInfo {
    /// Record id.
    pub id: String,
    /// Key of its snapshot.
    pub snapshot: String,
    /// Mutable (an active snapshot) or immutable (a committed one).
    pub mutable: bool,
    /// Records it was built on.
    pub parents: Vec<String>,
    /// Free text.
    pub description: String,
    /// What it is for.
    pub record_type: RecordType,
    /// Whether it stays when released.
    pub policy: CachePolicy,
    /// When it was created.
    pub created: SystemTime,
    /// When its handles were last all released, if ever.
    pub last_used: Option<SystemTime>,
    /// How many times its handles were all released.
    pub use_count: u64,
    /// It, or a record built on it, has live handles: prune never removes it.
    pub in_use: bool,
    /// Something besides the cache keeps its snapshot (an image, a lease, a GC root
    /// label, or what those reference), as BuildKit marks records an image store
    /// references; prune without `all` skips it. Computed, not stored.
    pub shared: bool,
    /// Bytes of its snapshot's own tree (exclusive + shared; see [`super::DiskUsage`]);
    /// 0 where not computed.
    pub size: u64,
}

impl RecordInfo {
    fn from_stored(id: &str, r: StoredRecord) -> RecordInfo {
        RecordInfo {
            id: id.to_owned(),
            snapshot: r.snapshot,
            mutable: r.mutable,
            parents: r.parents,
            description: r.description,
            record_type: r.record_type,
            policy: r.policy,
            created: time::from_nanos(r.created),
            last_used: r.last_used.map(time::from_nanos),
            use_count: r.use_count,
            in_use: false,
            shared: false,
            size: 0,
        }
    }

    /// A field by containerd filter path, as BuildKit's prune and du filters see it:
    /// `id`, `parents` (`;`-joined), `description`, `type`, `snapshot`, and the presence
    /// fields `inuse`, `mutable`, `immutable`, `shared`, `private`; also `last-used-at`
    /// (RFC 3339 in UTC, present once the record was used), for `~=` matches. Bare field
    /// names cannot hold `-` in containerd's grammar: write `"last-used-at"` quoted, or
    /// `last_used_at`.
    pub fn field(&self, path: &[String]) -> Option<String> {
        let flag = |b: bool| b.then(String::new);
        match path.first().map(String::as_str)? {
            "id" => Some(self.id.clone()),
            "snapshot" => Some(self.snapshot.clone()),
            "parents" => (!self.parents.is_empty()).then(|| self.parents.join(";")),
            "description" => (!self.description.is_empty()).then(|| self.description.clone()),
            "type" => Some(self.record_type.as_str().to_owned()),
            "inuse" => flag(self.in_use),
            "mutable" => flag(self.mutable),
            "immutable" => flag(!self.mutable),
            "shared" => flag(self.shared),
            "private" => flag(!self.shared),
            "last-used-at" | "last_used_at" => self.last_used.map(time::format_rfc3339),
            _ => None,
        }
    }
}

/// A counted handle on an immutable record; dropping it (or [`ImmutableRef::release`])
/// gives the count back. Clones are further handles.
pub struct ImmutableRef {
    inner: Arc<Inner>,
    id: String,
    snapshot: String,
    /// Set once released explicitly, so `Drop` does nothing more.
    done: bool,
}

/// The one handle on a mutable record; dropping it releases it (see the module
/// documentation for what that removes).
pub struct MutableRef {
    inner: Arc<Inner>,
    id: String,
    snapshot: String,
    /// Set once committed or released explicitly, so `Drop` does nothing more.
    done: bool,
}

/// A read-only view of an immutable record, mounted by the caller with its
/// [`RefView::mounts`]; the view snapshot is removed when this is dropped, so unmount
/// first. It holds a handle on the record: the record is in use while it exists.
pub struct RefView {
    inner: Arc<Inner>,
    key: String,
    mounts: Vec<Mount>,
    _pin: super::Pin,
    _handle: ImmutableRef,
}

impl RefView {
    /// The mounts that present the record's tree read-only.
    pub fn mounts(&self) -> &[Mount] {
        &self.mounts
    }

    /// The view snapshot's key.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl Drop for RefView {
    fn drop(&mut self) {
        if let Err(e) = self.inner.store.remove(&self.key) {
            tracing::warn!(key = %self.key, error = %e, "could not remove a cache view; GC will");
        }
    }
}

impl ImmutableRef {
    /// The record id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Key of the committed snapshot, e.g. as a parent for [`crate::Snapshotter::prepare`].
    pub fn snapshot(&self) -> &str {
        &self.snapshot
    }

    /// A read-only view of the record's tree to mount; see [`RefView`].
    pub fn mount(&self) -> Result<RefView> {
        let key = format!("{KEY_PREFIX}view/{}/{}", self.id, self.inner.new_id());
        let pin = self.inner.pin(&key);
        let mounts = self
            .inner
            .store
            .view(&key, &self.snapshot, record_labels(&self.id))?;
        Ok(RefView {
            inner: self.inner.clone(),
            key,
            mounts,
            _pin: pin,
            _handle: self.clone(),
        })
    }

    /// Releases the handle now (what dropping it does), reporting a failure to stamp
    /// the record's last use.
    pub fn release(mut self) -> Result<()> {
        self.done = true;
        release_immutable(&self.inner, &self.id)
    }
}

impl Clone for ImmutableRef {
    fn clone(&self) -> Self {
        lock(&self.inner.held)
            .entry(self.id.clone())
            .or_default()
            .immutable += 1;
        ImmutableRef {
            inner: self.inner.clone(),
            id: self.id.clone(),
            snapshot: self.snapshot.clone(),
            done: false,
        }
    }
}

impl Drop for ImmutableRef {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Err(e) = release_immutable(&self.inner, &self.id) {
            tracing::warn!(record = %self.id, error = %e, "could not record the release of a cache ref");
        }
    }
}

impl std::fmt::Debug for ImmutableRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImmutableRef")
            .field("id", &self.id)
            .field("snapshot", &self.snapshot)
            .finish()
    }
}

impl std::fmt::Debug for MutableRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MutableRef")
            .field("id", &self.id)
            .field("snapshot", &self.snapshot)
            .finish()
    }
}

fn release_immutable(inner: &Inner, id: &str) -> Result<()> {
    let last = {
        let mut held = lock(&inner.held);
        match held.get_mut(id) {
            Some(h) if h.immutable > 1 || h.mutable => {
                h.immutable = h.immutable.saturating_sub(1);
                false
            }
            Some(_) => {
                held.remove(id);
                true
            }
            None => false,
        }
    };
    if last {
        stamp_use(inner, id)?;
    }
    Ok(())
}

/// Sets a record's last-used time to now and counts one more use.
fn stamp_use(inner: &Inner, id: &str) -> Result<()> {
    let txn = inner.store.db().begin_write()?;
    {
        let mut table = txn.open_table(RECORDS)?;
        let current = table.get(id)?.map(|v| decode_record(id, v.value()));
        // Pruned meanwhile: nothing to stamp.
        let Some(rec) = current else { return Ok(()) };
        let mut rec = rec?;
        rec.last_used = Some(time::now_nanos());
        rec.use_count += 1;
        table.insert(id, encode_record(&rec).as_slice())?;
    }
    txn.commit()?;
    Ok(())
}

fn record_labels(id: &str) -> Labels {
    Labels::from([(LABEL_CACHE_RECORD.to_owned(), id.to_owned())])
}

impl MutableRef {
    /// The record id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Key of the active snapshot.
    pub fn snapshot(&self) -> &str {
        &self.snapshot
    }

    /// The mounts of the active snapshot, to mount read-write.
    pub fn mounts(&self) -> Result<Vec<Mount>> {
        self.inner.store.mounts(&self.snapshot)
    }

    /// Commits the snapshot and turns the record into a new immutable record (new id;
    /// description, type, policy and parents kept), returning a handle on it. On
    /// failure the mutable ref is released as if dropped.
    pub fn commit(mut self) -> Result<ImmutableRef> {
        let inner = self.inner.clone();
        let new_id = inner.new_id();
        let name = format!("{KEY_PREFIX}{new_id}");
        let _pin = inner.pin(&name);
        inner
            .store
            .commit(&name, &self.snapshot, record_labels(&new_id))?;
        // The active snapshot is gone: whatever happens now, Drop must not remove it.
        self.done = true;
        let swapped = (|| -> Result<()> {
            let txn = inner.store.db().begin_write()?;
            {
                let mut table = txn.open_table(RECORDS)?;
                let old = table
                    .remove(self.id.as_str())?
                    .map(|v| decode_record(&self.id, v.value()));
                let old = match old {
                    Some(r) => r?,
                    None => {
                        return Err(CacheError::RecordNotFound {
                            id: self.id.clone(),
                        }
                        .into())
                    }
                };
                let rec = StoredRecord {
                    snapshot: name.clone(),
                    mutable: false,
                    created: time::now_nanos(),
                    last_used: None,
                    use_count: 0,
                    ..old
                };
                table.insert(new_id.as_str(), encode_record(&rec).as_slice())?;
            }
            txn.commit()?;
            Ok(())
        })();
        let mut held = lock(&inner.held);
        held.remove(&self.id);
        // On failure the committed snapshot has no record: the next GC collects it, and
        // the next open drops the mutable record that points at the old key.
        swapped?;
        held.entry(new_id.clone()).or_default().immutable += 1;
        drop(held);
        Ok(ImmutableRef {
            inner: inner.clone(),
            id: new_id,
            snapshot: name,
            done: false,
        })
    }

    /// Releases the ref now (what dropping it does), reporting failures.
    pub fn release(mut self) -> Result<()> {
        self.done = true;
        release_mutable(&self.inner, &self.id, &self.snapshot)
    }
}

impl Drop for MutableRef {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Err(e) = release_mutable(&self.inner, &self.id, &self.snapshot) {
            tracing::warn!(record = %self.id, error = %e, "could not release a mutable cache ref");
        }
    }
}

fn release_mutable(inner: &Inner, id: &str, snapshot: &str) -> Result<()> {
    let mut held = lock(&inner.held);
    held.remove(id);
    let policy = {
        let txn = inner.store.db().begin_read()?;
        let table = txn.open_table(RECORDS)?;
        let value = table.get(id)?;
        match value {
            Some(v) => decode_record(id, v.value())?.policy,
            None => return Ok(()),
        }
    };
    if policy == CachePolicy::Retain {
        drop(held);
        return stamp_use(inner, id);
    }
    // Scratch space: the record goes, then its snapshot. Removing the record while
    // holding `held` keeps a concurrent get from seeing it half gone.
    let txn = inner.store.db().begin_write()?;
    txn.open_table(RECORDS)?.remove(id)?;
    txn.commit()?;
    drop(held);
    match inner.store.remove(snapshot) {
        Ok(()) | Err(Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

impl CacheManager {
    /// A new mutable record: an active snapshot on `parent`'s snapshot (or empty), and
    /// its one handle.
    pub fn new_ref(&self, parent: Option<&ImmutableRef>, opts: RefOptions) -> Result<MutableRef> {
        let inner = &self.inner;
        let id = inner.new_id();
        let key = format!("{KEY_PREFIX}{id}");
        let _pin = inner.pin(&key);
        let parent_key = parent.map_or("", |p| p.snapshot.as_str());
        inner.store.prepare(&key, parent_key, record_labels(&id))?;
        let rec = StoredRecord {
            snapshot: key.clone(),
            mutable: true,
            parents: parent.map(|p| p.id.clone()).into_iter().collect(),
            description: opts.description,
            record_type: opts.record_type,
            policy: opts.policy,
            created: time::now_nanos(),
            last_used: None,
            use_count: 0,
        };
        let stored = (|| -> Result<()> {
            let txn = inner.store.db().begin_write()?;
            txn.open_table(RECORDS)?
                .insert(id.as_str(), encode_record(&rec).as_slice())?;
            txn.commit()?;
            Ok(())
        })();
        if let Err(e) = stored {
            if let Err(e) = inner.store.remove(&key) {
                tracing::warn!(key, error = %e, "could not remove the snapshot of a failed cache ref; GC will");
            }
            return Err(e);
        }
        lock(&inner.held).entry(id.clone()).or_default().mutable = true;
        Ok(MutableRef {
            inner: inner.clone(),
            id,
            snapshot: key,
            done: false,
        })
    }

    /// A new handle on immutable record `id`.
    pub fn get(&self, id: &str) -> Result<ImmutableRef> {
        let mut held = lock(&self.inner.held);
        let rec = self.record(id)?;
        if rec.mutable {
            return Err(CacheError::WrongKind {
                id: id.to_owned(),
                wanted: "immutable",
                actual: "mutable",
            }
            .into());
        }
        held.entry(id.to_owned()).or_default().immutable += 1;
        Ok(ImmutableRef {
            inner: self.inner.clone(),
            id: id.to_owned(),
            snapshot: rec.snapshot,
            done: false,
        })
    }

    /// The handle on mutable record `id` (one kept with the retain policy); fails with
    /// [`CacheError::Locked`] while another handle is out.
    pub fn get_mutable(&self, id: &str) -> Result<MutableRef> {
        let mut held = lock(&self.inner.held);
        let rec = self.record(id)?;
        if !rec.mutable {
            return Err(CacheError::WrongKind {
                id: id.to_owned(),
                wanted: "mutable",
                actual: "immutable",
            }
            .into());
        }
        let h = held.entry(id.to_owned()).or_default();
        if h.mutable {
            return Err(CacheError::Locked { id: id.to_owned() }.into());
        }
        h.mutable = true;
        Ok(MutableRef {
            inner: self.inner.clone(),
            id: id.to_owned(),
            snapshot: rec.snapshot,
            done: false,
        })
    }

    fn record(&self, id: &str) -> Result<StoredRecord> {
        let txn = self.inner.store.db().begin_read()?;
        let table = txn.open_table(RECORDS)?;
        let value = table.get(id)?;
        match value {
            Some(v) => decode_record(id, v.value()),
            None => Err(CacheError::RecordNotFound { id: id.to_owned() }.into()),
        }
    }

    /// Overrides a record's last-used time (and, when given, its use count): for tools
    /// that import usage from elsewhere, and for tests of prune's ordering.
    pub fn set_last_used(&self, id: &str, at: SystemTime, use_count: Option<u64>) -> Result<()> {
        let txn = self.inner.store.db().begin_write()?;
        {
            let mut table = txn.open_table(RECORDS)?;
            let current = table.get(id)?.map(|v| decode_record(id, v.value()));
            let mut rec = match current {
                Some(r) => r?,
                None => return Err(CacheError::RecordNotFound { id: id.to_owned() }.into()),
            };
            rec.last_used = Some(time::to_nanos(at));
            if let Some(n) = use_count {
                rec.use_count = n;
            }
            table.insert(id, encode_record(&rec).as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Every record, by id, with `in_use` and `shared` filled in (sizes are left 0:
    /// [`CacheManager::disk_usage`] computes them).
    pub fn records(&self) -> Result<Vec<RecordInfo>> {
        let graph = super::gc::Graph::load(self)?;
        let roots = super::gc::Roots::collect(self, &graph)?;
        Ok(self.record_infos(&graph, &roots))
    }

    /// Records with `in_use` (handles here, or on a record built on it) and `shared`
    /// (reachable from a root other than the cache records) computed.
    pub(crate) fn record_infos(
        &self,
        graph: &super::gc::Graph,
        roots: &super::gc::Roots,
    ) -> Vec<RecordInfo> {
        let held = lock(&self.inner.held).clone();
        let external = graph.mark(roots.snapshots.iter().copied());
        let mut infos: Vec<RecordInfo> = roots
            .records
            .iter()
            .map(|(id, rec)| {
                let mut info = RecordInfo::from_stored(id, rec.clone());
                info.in_use = held.get(id).is_some_and(|h| h.immutable > 0 || h.mutable);
                info.shared = graph
                    .index
                    .get(&rec.snapshot)
                    .is_some_and(|&i| external.live[i]);
                info
            })
            .collect();
        // In use propagates to what a record in use is built on.
        let by_id: std::collections::HashMap<String, usize> = infos
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id.clone(), i))
            .collect();
        let mut stack: Vec<usize> = (0..infos.len()).filter(|&i| infos[i].in_use).collect();
        while let Some(i) = stack.pop() {
            for p in infos[i].parents.clone() {
                if let Some(&j) = by_id.get(&p) {
                    if !infos[j].in_use {
                        infos[j].in_use = true;
                        stack.push(j);
                    }
                }
            }
        }
        infos
    }
}
