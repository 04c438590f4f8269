//! The cache manager: BuildKit's cache model (immutable and mutable refs with reference
//! counts, usage records, cache policies, prune) and containerd's leases and garbage
//! collector, over one [`Snapshotter`] and its content store.
//!
//! State lives in tables of the snapshots' own metadata file (`cache_records`,
//! `cache_leases`, `cache_lease_resources`), one write transaction per operation;
//! reference counts of refs are held in this process only, by the handles
//! ([`ImmutableRef`], [`MutableRef`]) whose `Drop` releases them.
//!
//! What keeps what (see [`CacheManager::gc`]):
//! - GC roots: snapshots labelled `containerd.io/gc.root`; every snapshot and blob a
//!   lease holds while it has not expired (`containerd.io/gc.expire`); the snapshot of
//!   every cache record (records stay, as cache, until pruned: BuildKit keeps released
//!   refs until `buildctl prune`); the chain snapshots and blobs of every recorded image;
//!   snapshots this process is creating or has a view of.
//! - References followed: a snapshot's [`Snapshotter::dependencies`] (parent, merge
//!   sources), `containerd.io/gc.ref.snapshot.<snapshotter>[/<any>]` labels (a key in
//!   this store, whatever the snapshotter name, since there is one) and
//!   `containerd.io/gc.ref.content[.<any>]` labels (a blob digest).
//!
//! The garbage collector removes *everything* else. It never runs by itself: it runs
//! when asked ([`CacheManager::gc`], `lamina gc`) and after a prune. A store that
//! containerd also uses as its proxy snapshotter keeps containerd's snapshots in
//! containerd's own metadata, not here: collect such a store only with containerd's
//! snapshots labelled or leased, or not at all.
//!
//! Whatever a program makes and means to keep should be held from the start: leased (add
//! the key to a lease before creating the snapshot, as containerd's clients do), labelled
//! `containerd.io/gc.root`, or made through a ref; a collection running between its
//! creation and its being held removes it. (laminad makes its image imports, pulls and
//! layer applies wait for collections, and collections for them.)
//!
//! A record whose snapshot was removed behind the manager's back stays listed (size 0)
//! until the manager is next opened, which drops it.
//!
//! Use one manager per store: reference counts are per manager.

mod du;
mod gc;
mod lease;
mod prune;
mod refs;
pub mod time;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::error::{Error, Result};
use crate::model::Kind;
use crate::snapshotter::Snapshotter;

pub use du::{DiskUsage, SnapshotUsage};
pub use gc::{GcReport, Removed};
pub use lease::{Lease, LeaseResource};
pub use prune::{PruneOptions, PruneReport};
pub use refs::{
    CachePolicy, ImmutableRef, MutableRef, RecordInfo, RecordType, RefOptions, RefView,
};

/// Label that makes a snapshot a GC root (any value).
pub const LABEL_GC_ROOT: &str = "containerd.io/gc.root";
/// Lease label: when the lease expires (RFC 3339); GC deletes expired leases first.
pub const LABEL_GC_EXPIRE: &str = "containerd.io/gc.expire";
/// Label prefix: `containerd.io/gc.ref.snapshot.<snapshotter>[/<any>]` = key of a
/// snapshot the labelled one keeps.
pub const LABEL_GC_REF_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot.";
/// Label: `containerd.io/gc.ref.content[.<any>]` = digest of a blob the labelled
/// snapshot keeps.
pub const LABEL_GC_REF_CONTENT: &str = "containerd.io/gc.ref.content";
/// Label the manager puts on the snapshots of its records: the record's id.
pub const LABEL_CACHE_RECORD: &str = "lamina.io/cache.record";

/// record id → encoded record (see `refs.rs`).
const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("cache_records");
/// lease id → encoded lease.
const LEASES: TableDefinition<&str, &[u8]> = TableDefinition::new("cache_leases");
/// (lease id, resource type, resource id) → (): what each lease holds.
const LEASE_RESOURCES: TableDefinition<(&str, &str, &str), ()> =
    TableDefinition::new("cache_lease_resources");

/// Prefix of the keys of snapshots the manager creates for its records and views.
const KEY_PREFIX: &str = "lamina-cache/";

/// What can go wrong in the cache manager beyond the snapshot store's own errors.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// No lease has that id.
    #[error("lease {id:?} does not exist")]
    LeaseNotFound {
        /// The lease id looked up.
        id: String,
    },
    /// A lease with that id exists already.
    #[error("lease {id:?} already exists")]
    LeaseExists {
        /// The conflicting id.
        id: String,
    },
    /// No cache record has that id.
    #[error("cache record {id:?} does not exist")]
    RecordNotFound {
        /// The record id looked up.
        id: String,
    },
    /// The record exists but is of the other kind (mutable asked as immutable or back).
    #[error("cache record {id:?} is {actual}, not {wanted}")]
    WrongKind {
        /// The record id.
        id: String,
        /// What the caller asked for ("mutable" or "immutable").
        wanted: &'static str,
        /// What the record is.
        actual: &'static str,
    },
    /// A mutable record already has its one handle (BuildKit's ErrLocked).
    #[error("cache record {id:?} is locked: its mutable ref is in use")]
    Locked {
        /// The record id.
        id: String,
    },
    /// A timestamp is not RFC 3339.
    #[error("invalid time {value:?}: {reason}")]
    BadTime {
        /// The text given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A duration is not a Go duration.
    #[error("invalid duration {value:?}: {reason}")]
    BadDuration {
        /// The text given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A lease resource is malformed (unknown type, empty key, bad digest).
    #[error("invalid lease resource {kind}:{id:?}: {reason}")]
    BadResource {
        /// Its type as given.
        kind: String,
        /// Its id as given.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An id (lease or record) is empty or contains a NUL byte.
    #[error("invalid {what} id {id:?}: must be non-empty and free of NUL bytes")]
    BadId {
        /// "lease" or "record".
        what: &'static str,
        /// The id given.
        id: String,
    },
    /// A stored cache record or lease could not be decoded.
    #[error("corrupt cache {what} {id:?}: {source}")]
    Corrupt {
        /// "record" or "lease".
        what: &'static str,
        /// Its id.
        id: String,
        /// Decoder error.
        #[source]
        source: postcard::Error,
    },
}

/// The cache manager over one store. Cheap to clone: clones share state.
#[derive(Clone)]
pub struct CacheManager {
    inner: Arc<Inner>,
}

/// How many handles a record has in this process.
#[derive(Debug, Default, Clone, Copy)]
struct Held {
    /// Live [`ImmutableRef`] handles.
    immutable: usize,
    /// Whether its [`MutableRef`] is out.
    mutable: bool,
}

struct Inner {
    store: Arc<Snapshotter>,
    /// Record id → its handles; records absent have none. Also serialises the
    /// check-then-act of get and prune, so a record being pruned cannot be taken.
    held: Mutex<HashMap<String, Held>>,
    /// Snapshot keys this process is creating or has a view of: GC roots.
    pinned: Mutex<HashSet<String>>,
    /// One collection (or prune) at a time.
    gc_lock: Mutex<()>,
    seq: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent, so a panic in one does not
    // poison the state for the others.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Keeps a snapshot key pinned (a GC root) until dropped.
struct Pin {
    inner: Arc<Inner>,
    key: String,
}

impl Drop for Pin {
    fn drop(&mut self) {
        lock(&self.inner.pinned).remove(&self.key);
    }
}

impl Inner {
    fn pin(self: &Arc<Self>, key: &str) -> Pin {
        lock(&self.pinned).insert(key.to_owned());
        Pin {
            inner: self.clone(),
            key: key.to_owned(),
        }
    }

    /// A fresh id: 20 hex digits of a hash of the time, the process and a counter.
    fn new_id(&self) -> String {
        let seed = format!(
            "{}/{}/{}",
            time::now_nanos(),
            std::process::id(),
            self.seq.fetch_add(1, Ordering::Relaxed)
        );
        crate::layer::Digest::of(seed.as_bytes()).as_str()["sha256:".len().."sha256:".len() + 20]
            .to_owned()
    }
}

pub(crate) fn validate_id(what: &'static str, id: &str) -> Result<()> {
    if id.is_empty() || id.contains('\0') {
        return Err(CacheError::BadId {
            what,
            id: id.to_owned(),
        }
        .into());
    }
    Ok(())
}

impl CacheManager {
    /// Opens the manager on `store`: creates its tables if needed and drops what a
    /// previous process left half done — records whose snapshot is gone or of the wrong
    /// kind, and mutable records with the default policy (their only handle died with
    /// that process, and such records live only as long as their handle).
    pub fn open(store: Arc<Snapshotter>) -> Result<CacheManager> {
        let db = store.db();
        let txn = db.begin_write()?;
        txn.open_table(RECORDS)?;
        txn.open_table(LEASES)?;
        txn.open_table(LEASE_RESOURCES)?;
        txn.commit()?;
        let manager = CacheManager {
            inner: Arc::new(Inner {
                store,
                held: Mutex::new(HashMap::new()),
                pinned: Mutex::new(HashSet::new()),
                gc_lock: Mutex::new(()),
                seq: AtomicU64::new(0),
            }),
        };
        manager.reconcile()?;
        Ok(manager)
    }

    /// The store the manager works on.
    pub fn store(&self) -> &Arc<Snapshotter> {
        &self.inner.store
    }

    fn reconcile(&self) -> Result<()> {
        let mut stale = Vec::new();
        for (id, rec) in self.read_records()? {
            let keep = match self.inner.store.stat(&rec.snapshot) {
                Ok(info) => {
                    let kind_ok =
                        (info.kind == Kind::Active) == rec.mutable && info.kind != Kind::View;
                    kind_ok && !(rec.mutable && rec.policy == CachePolicy::Default)
                }
                Err(Error::NotFound { .. }) => false,
                Err(e) => return Err(e),
            };
            if !keep {
                stale.push((id, rec));
            }
        }
        if stale.is_empty() {
            return Ok(());
        }
        let txn = self.inner.store.db().begin_write()?;
        {
            let mut table = txn.open_table(RECORDS)?;
            for (id, _) in &stale {
                table.remove(id.as_str())?;
            }
        }
        txn.commit()?;
        for (id, rec) in stale {
            tracing::info!(record = %id, snapshot = %rec.snapshot, "dropped a stale cache record");
            if rec.mutable && rec.policy == CachePolicy::Default {
                match self.inner.store.remove(&rec.snapshot) {
                    Ok(()) | Err(Error::NotFound { .. }) => {}
                    Err(e) => tracing::warn!(snapshot = %rec.snapshot, error = %e,
                        "could not remove the snapshot of a stale mutable record; GC will"),
                }
            }
        }
        Ok(())
    }

    /// Every stored record, by id.
    fn read_records(&self) -> Result<Vec<(String, refs::StoredRecord)>> {
        let txn = self.inner.store.db().begin_read()?;
        let table = txn.open_table(RECORDS)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            let id = k.value().to_owned();
            let rec = refs::decode_record(&id, v.value())?;
            out.push((id, rec));
        }
        Ok(out)
    }
}

/// Every snapshot's key, kind and own file tree (`ROOT/snapshots/<id>/fs`).
///
/// The snapshot store keeps the key → directory id mapping to itself; this reads it
/// from its table in the shared metadata file (the decoding is the store's own
/// `Record` type, so only the table name is repeated here). Only [`du`] and [`gc`] use
/// it, to walk trees; a public accessor on [`Snapshotter`] would replace it.
pub(crate) fn snapshot_trees(store: &Snapshotter) -> Result<Vec<(String, Kind, PathBuf)>> {
    store.trees()
}
