//! Leases, containerd's model: a named set of snapshots and blobs that the garbage
//! collector keeps while the lease exists and has not expired. A lease holds keys and
//! digests, not objects: a snapshot may be added before it is created (the usual order,
//! so that nothing is ever unheld) and a held key that does not exist holds nothing.

use std::time::SystemTime;

use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::{
    time, validate_id, CacheError, CacheManager, LABEL_GC_EXPIRE, LEASES, LEASE_RESOURCES,
};
use crate::error::Result;
use crate::filter::Filter;
use crate::layer::Digest;
use crate::model::{validate_labels, Labels};

/// A lease as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Its id.
    pub id: String,
    /// Its labels (`containerd.io/gc.expire` among them when it expires).
    pub labels: Labels,
    /// When it was created.
    pub created: SystemTime,
}

impl Lease {
    /// When the lease expires, from its `containerd.io/gc.expire` label; `None` if it
    /// never does (or the label is not RFC 3339, which creation refuses).
    pub fn expires(&self) -> Option<SystemTime> {
        self.labels
            .get(LABEL_GC_EXPIRE)
            .and_then(|v| time::parse_rfc3339(v).ok())
    }

    /// Whether the lease has expired at `now`.
    pub fn expired_at(&self, now: SystemTime) -> bool {
        self.expires().is_some_and(|e| now > e)
    }
}

/// One thing a lease holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LeaseResource {
    /// A snapshot, by key or name (containerd's type `snapshots/<snapshotter>`).
    Snapshot(String),
    /// A blob of the content store (containerd's type `content`).
    Content(Digest),
}

impl LeaseResource {
    /// Parses containerd's (type, id) form: type `snapshots`, `snapshots/<snapshotter>`
    /// (any snapshotter name: this store is the only one) or `content`.
    pub fn parse(kind: &str, id: &str) -> Result<LeaseResource> {
        let bad = |reason| CacheError::BadResource {
            kind: kind.to_owned(),
            id: id.to_owned(),
            reason,
        };
        if kind == "content" {
            return Digest::parse(id)
                .map(LeaseResource::Content)
                .ok_or_else(|| bad("content ids are sha256:<64 hex digits>").into());
        }
        if kind == "snapshots" || kind.starts_with("snapshots/") {
            if id.is_empty() || id.contains('\0') {
                return Err(bad("snapshot keys must be non-empty and free of NUL bytes").into());
            }
            return Ok(LeaseResource::Snapshot(id.to_owned()));
        }
        Err(bad("the type must be snapshots[/<snapshotter>] or content").into())
    }

    /// The type as stored and listed: `snapshots` or `content`.
    pub fn kind(&self) -> &'static str {
        match self {
            LeaseResource::Snapshot(_) => "snapshots",
            LeaseResource::Content(_) => "content",
        }
    }

    /// The key or digest.
    pub fn id(&self) -> &str {
        match self {
            LeaseResource::Snapshot(k) => k,
            LeaseResource::Content(d) => d.as_str(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredLease {
    labels: Labels,
    created: i64,
}

fn decode(id: &str, bytes: &[u8]) -> Result<StoredLease> {
    postcard::from_bytes(bytes).map_err(|source| {
        CacheError::Corrupt {
            what: "lease",
            id: id.to_owned(),
            source,
        }
        .into()
    })
}

fn lease_of(id: &str, s: StoredLease) -> Lease {
    Lease {
        id: id.to_owned(),
        labels: s.labels,
        created: time::from_nanos(s.created),
    }
}

impl CacheManager {
    /// Creates a lease. An empty `id` gets a generated one. `expires`, when given, is
    /// stored as the `containerd.io/gc.expire` label (replacing one in `labels`); a
    /// label given with a value that is not RFC 3339 is refused.
    pub fn create_lease(
        &self,
        id: &str,
        mut labels: Labels,
        expires: Option<SystemTime>,
    ) -> Result<Lease> {
        let id = if id.is_empty() {
            self.inner.new_id()
        } else {
            id.to_owned()
        };
        validate_id("lease", &id)?;
        if let Some(at) = expires {
            labels.insert(LABEL_GC_EXPIRE.to_owned(), time::format_rfc3339(at));
        }
        if let Some(v) = labels.get(LABEL_GC_EXPIRE) {
            time::parse_rfc3339(v)?;
        }
        validate_labels(&labels)?;
        let stored = StoredLease {
            labels,
            created: time::now_nanos(),
        };
        let bytes = postcard::to_allocvec(&stored).unwrap_or_default();
        let txn = self.inner.store.db().begin_write()?;
        {
            let mut table = txn.open_table(LEASES)?;
            if table.get(id.as_str())?.is_some() {
                return Err(CacheError::LeaseExists { id }.into());
            }
            table.insert(id.as_str(), bytes.as_slice())?;
        }
        txn.commit()?;
        Ok(lease_of(&id, stored))
    }

    /// Deletes a lease and what it holds (not the objects: the next GC decides).
    pub fn delete_lease(&self, id: &str) -> Result<()> {
        let txn = self.inner.store.db().begin_write()?;
        delete_in(&txn, id)?;
        txn.commit()?;
        Ok(())
    }

    /// One lease.
    pub fn lease(&self, id: &str) -> Result<Lease> {
        let txn = self.inner.store.db().begin_read()?;
        let table = txn.open_table(LEASES)?;
        let value = table.get(id)?;
        match value {
            Some(v) => Ok(lease_of(id, decode(id, v.value())?)),
            None => Err(CacheError::LeaseNotFound { id: id.to_owned() }.into()),
        }
    }

    /// The leases matching any of `filters` (containerd's filter syntax on `id` and
    /// `labels.<key>`; none = all), by id.
    pub fn leases<S: AsRef<str>>(&self, filters: &[S]) -> Result<Vec<Lease>> {
        let filter = Filter::parse_all(filters)?;
        let txn = self.inner.store.db().begin_read()?;
        let table = txn.open_table(LEASES)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            let lease = lease_of(k.value(), decode(k.value(), v.value())?);
            let matches = filter.matches_fields(|path| match path.first().map(String::as_str) {
                Some("id") => Some(lease.id.clone()),
                Some("labels") => lease.labels.get(&path[1..].join(".")).cloned(),
                _ => None,
            });
            if matches {
                out.push(lease);
            }
        }
        Ok(out)
    }

    /// Adds a resource to a lease (adding one it holds already is not an error).
    pub fn add_lease_resource(&self, id: &str, resource: &LeaseResource) -> Result<()> {
        let txn = self.inner.store.db().begin_write()?;
        {
            if txn.open_table(LEASES)?.get(id)?.is_none() {
                return Err(CacheError::LeaseNotFound { id: id.to_owned() }.into());
            }
            txn.open_table(LEASE_RESOURCES)?
                .insert((id, resource.kind(), resource.id()), ())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Removes a resource from a lease (one it does not hold is not an error).
    pub fn delete_lease_resource(&self, id: &str, resource: &LeaseResource) -> Result<()> {
        let txn = self.inner.store.db().begin_write()?;
        {
            if txn.open_table(LEASES)?.get(id)?.is_none() {
                return Err(CacheError::LeaseNotFound { id: id.to_owned() }.into());
            }
            txn.open_table(LEASE_RESOURCES)?
                .remove((id, resource.kind(), resource.id()))?;
        }
        txn.commit()?;
        Ok(())
    }

    /// What a lease holds, snapshots first, each sorted.
    pub fn lease_resources(&self, id: &str) -> Result<Vec<LeaseResource>> {
        let txn = self.inner.store.db().begin_read()?;
        if txn.open_table(LEASES)?.get(id)?.is_none() {
            return Err(CacheError::LeaseNotFound { id: id.to_owned() }.into());
        }
        let table = txn.open_table(LEASE_RESOURCES)?;
        let mut out = Vec::new();
        for item in table.range((id, "", "")..)? {
            let (k, _) = item?;
            let (lease, kind, rid) = k.value();
            if lease != id {
                break;
            }
            out.push(LeaseResource::parse(kind, rid)?);
        }
        out.sort();
        Ok(out)
    }

    /// Every lease with what it holds (for the collector).
    pub(crate) fn all_leases(&self) -> Result<Vec<(Lease, Vec<LeaseResource>)>> {
        let mut out = Vec::new();
        for lease in self.leases::<&str>(&[])? {
            let res = match self.lease_resources(&lease.id) {
                Ok(r) => r,
                // Deleted since it was listed: it holds nothing.
                Err(crate::Error::Cache(CacheError::LeaseNotFound { .. })) => continue,
                Err(e) => return Err(e),
            };
            out.push((lease, res));
        }
        Ok(out)
    }

    /// Deletes every lease expired at `now` in one transaction; returns their ids.
    pub(crate) fn delete_expired_leases(&self, now: SystemTime) -> Result<Vec<String>> {
        let expired: Vec<String> = self
            .leases::<&str>(&[])?
            .into_iter()
            .filter(|l| l.expired_at(now))
            .map(|l| l.id)
            .collect();
        if expired.is_empty() {
            return Ok(expired);
        }
        let txn = self.inner.store.db().begin_write()?;
        let mut deleted = Vec::with_capacity(expired.len());
        for id in expired {
            match delete_in(&txn, &id) {
                Ok(()) => deleted.push(id),
                // Deleted by its owner since it was listed.
                Err(crate::Error::Cache(CacheError::LeaseNotFound { .. })) => {}
                Err(e) => return Err(e),
            }
        }
        txn.commit()?;
        Ok(deleted)
    }
}

/// Deletes lease `id` and its resource rows inside `txn`.
fn delete_in(txn: &redb::WriteTransaction, id: &str) -> Result<()> {
    if txn.open_table(LEASES)?.remove(id)?.is_none() {
        return Err(CacheError::LeaseNotFound { id: id.to_owned() }.into());
    }
    let mut table = txn.open_table(LEASE_RESOURCES)?;
    let mut doomed = Vec::new();
    for item in table.range((id, "", "")..)? {
        let (k, _) = item?;
        let (lease, kind, rid) = k.value();
        if lease != id {
            break;
        }
        doomed.push((kind.to_owned(), rid.to_owned()));
    }
    for (kind, rid) in doomed {
        table.remove((id, kind.as_str(), rid.as_str()))?;
    }
    Ok(())
}
