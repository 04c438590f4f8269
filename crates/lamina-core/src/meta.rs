//! The metadata file: every snapshot's record in one redb database, each operation one
//! write transaction, so a crash leaves either the whole change or none of it.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{Info, Kind, Labels, Usage};

/// key or committed name → encoded [`Record`].
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
/// (parent name, child key) → (): answers "has children?" without a scan.
const CHILDREN: TableDefinition<(&str, &str), ()> = TableDefinition::new("children");
/// image name → encoded [`crate::image::ImageRecord`].
const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");
/// Store-wide values such as the schema version.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// layer blob digest → digest of its seekable index blob (in the content store).
const LAYER_INDEXES: TableDefinition<&str, &str> = TableDefinition::new("layer_indexes");
/// snapshot name → encoded [`Extra`], for snapshots made by merge or diff only.
const EXTRAS: TableDefinition<&str, &[u8]> = TableDefinition::new("extras");

const SCHEMA_VERSION: u64 = 1;

/// What is stored about one snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    /// Names the snapshot's directory; never reused while the record exists.
    pub id: u64,
    pub kind: Kind,
    pub parent: String,
    pub labels: Labels,
    /// Nanoseconds since the Unix epoch.
    pub created: i64,
    pub updated: i64,
    /// Recorded at commit; `None` for active snapshots, whose usage is computed on demand.
    pub usage: Option<Usage>,
}

impl Record {
    pub fn info(&self, name: &str) -> Info {
        Info {
            name: name.to_owned(),
            parent: self.parent.clone(),
            kind: self.kind,
            labels: self.labels.clone(),
            created: from_nanos(self.created),
            updated: from_nanos(self.updated),
        }
    }
}

/// What merged and diff snapshots carry beyond a [`Record`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Extra {
    /// Directories stacked under the snapshot's own one when it is mounted (ids of other
    /// snapshots' trees, topmost first): a merge made by stacking layers.
    pub stack: Vec<u64>,
    /// Snapshots this one needs to exist (their trees are in `stack`): they cannot be
    /// removed before it.
    pub sources: Vec<String>,
    /// The snapshot's own tree is a layer in overlay form (whiteout devices, opaque
    /// markers) that means changes, not a tree to show as it is: a diff snapshot.
    pub layer_form: bool,
}

fn decode_extra(key: &str, bytes: &[u8]) -> Result<Extra> {
    postcard::from_bytes(bytes).map_err(|source| Error::CorruptRecord {
        key: key.to_owned(),
        source,
    })
}

/// The current time in the record's unit.
pub(crate) fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn from_nanos(n: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(n.max(0) as u64)
}

fn decode(key: &str, bytes: &[u8]) -> Result<Record> {
    postcard::from_bytes(bytes).map_err(|source| Error::CorruptRecord {
        key: key.to_owned(),
        source,
    })
}

fn encode(rec: &Record) -> Vec<u8> {
    // Serialising plain owned data into a Vec cannot fail.
    postcard::to_allocvec(rec).unwrap_or_default()
}

/// The snapshot metadata database.
pub(crate) struct MetaStore {
    db: Database,
}

impl MetaStore {
    /// Opens (or creates) the database at `path` and checks its schema version.
    pub fn open(path: &Path, backend: crate::BackendKind) -> Result<MetaStore> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        {
            txn.open_table(SNAPSHOTS)?;
            txn.open_table(CHILDREN)?;
            txn.open_table(IMAGES)?;
            txn.open_table(EXTRAS)?;
            txn.open_table(LAYER_INDEXES)?;
            let mut meta = txn.open_table(META)?;
            let version = meta.get("schema")?.map(|v| v.value());
            match version {
                None => {
                    meta.insert("schema", SCHEMA_VERSION)?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(v) => {
                    return Err(Error::FailedPrecondition(format!(
                        "metadata schema version {v} is not supported (this build reads {SCHEMA_VERSION})"
                    )))
                }
            }
            let stored = meta.get("backend")?.map(|v| v.value());
            match stored {
                None => {
                    meta.insert("backend", backend.code())?;
                }
                Some(code) if code == backend.code() => {}
                Some(code) => {
                    let name = if code == crate::BackendKind::Native.code() {
                        "native"
                    } else {
                        "overlayfs"
                    };
                    return Err(Error::FailedPrecondition(format!(
                        "root was created with the {name} backend, not {backend}; use --backend {name} or another root"
                    )));
                }
            }
        }
        txn.commit()?;
        Ok(MetaStore { db })
    }

    /// Reads one record.
    pub fn get(&self, key: &str) -> Result<Option<Record>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SNAPSHOTS)?;
        let value = table.get(key)?;
        value.map(|v| decode(key, v.value())).transpose()
    }

    /// The database, for other stores that keep their tables next to the snapshots'
    /// (one file, so one transaction can span both).
    pub fn db(&self) -> &Database {
        &self.db
    }

    /// Records that blob `index` is the seekable index of layer blob `layer`.
    pub fn put_layer_index(&self, layer: &str, index: &str) -> Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(LAYER_INDEXES)?.insert(layer, index)?;
        txn.commit()?;
        Ok(())
    }

    /// The seekable index recorded for layer blob `layer`.
    pub fn layer_index(&self, layer: &str) -> Result<Option<String>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LAYER_INDEXES)?;
        let value = table.get(layer)?;
        Ok(value.map(|v| v.value().to_owned()))
    }

    /// The extra record of a merged or diff snapshot.
    pub fn extra(&self, key: &str) -> Result<Option<Extra>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(EXTRAS)?;
        let value = table.get(key)?;
        value.map(|v| decode_extra(key, v.value())).transpose()
    }

    /// Inserts committed snapshot `name` made by a merge or diff, with its extra record,
    /// checking in the same transaction that the name is free, every source exists and
    /// is committed, and every snapshot in `built_on` (name, id) is still the one that
    /// was read (`extra.stack` holds their ids); each source then counts it as a
    /// dependant.
    pub fn insert_derived(
        &self,
        name: &str,
        rec: &Record,
        extra: &Extra,
        built_on: &[(String, u64)],
    ) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(SNAPSHOTS)?;
            if table.get(name)?.is_some() {
                return Err(Error::AlreadyExists { key: name.into() });
            }
            for (source, id) in built_on {
                let same = match table.get(source.as_str())? {
                    Some(v) => decode(source, v.value())?.id == *id,
                    None => false,
                };
                if !same {
                    return Err(Error::NotFound {
                        key: source.clone(),
                        context: " (source; removed while the snapshot was made)",
                    });
                }
            }
            for source in &extra.sources {
                check_parent(&table, source)?;
            }
            check_parent(&table, &rec.parent)?;
            table.insert(name, encode(rec).as_slice())?;
            let mut children = txn.open_table(CHILDREN)?;
            for source in extra.sources.iter().chain(Some(&rec.parent)) {
                if !source.is_empty() {
                    children.insert((source.as_str(), name), ())?;
                }
            }
            if *extra != Extra::default() {
                let bytes = postcard::to_allocvec(extra).unwrap_or_default();
                txn.open_table(EXTRAS)?.insert(name, bytes.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Ids of `parent` and all its ancestors, nearest first; a merged snapshot's stacked
    /// trees follow its own.
    pub fn chain(&self, parent: &str) -> Result<Vec<u64>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SNAPSHOTS)?;
        let extras = txn.open_table(EXTRAS)?;
        let mut ids = Vec::new();
        let mut next = parent.to_owned();
        while !next.is_empty() {
            let rec = match table.get(next.as_str())? {
                Some(v) => decode(&next, v.value())?,
                None => {
                    return Err(Error::NotFound {
                        key: next,
                        context: " (ancestor)",
                    })
                }
            };
            ids.push(rec.id);
            if let Some(v) = extras.get(next.as_str())? {
                ids.extend(decode_extra(&next, v.value())?.stack);
            }
            next = rec.parent;
        }
        Ok(ids)
    }

    /// Inserts a new snapshot, checking in the same transaction that the key is free and
    /// the parent exists, is committed and is still snapshot `parent_id` (the one the
    /// caller built on: its chain was read before this transaction; a parent removed
    /// and made again under its name meanwhile is another snapshot, and the new one
    /// would stack the removed one's trees).
    pub fn insert(&self, key: &str, rec: &Record, parent_id: Option<u64>) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(SNAPSHOTS)?;
            if table.get(key)?.is_some() {
                return Err(Error::AlreadyExists { key: key.into() });
            }
            let actual = check_parent(&table, &rec.parent)?;
            if parent_id.is_some() && actual != parent_id {
                return Err(Error::NotFound {
                    key: rec.parent.clone(),
                    context: " (parent; removed while the snapshot was made)",
                });
            }
            table.insert(key, encode(rec).as_slice())?;
            if !rec.parent.is_empty() {
                txn.open_table(CHILDREN)?
                    .insert((rec.parent.as_str(), key), ())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Inserts a chain of committed snapshots, bottom first, each the parent of the next,
    /// in one transaction. Names that already exist (another import got there first) are
    /// left as they are; their ids are returned so the caller can discard its copies.
    pub fn insert_chain(&self, chain: &[(String, Record)]) -> Result<Vec<u64>> {
        let txn = self.db.begin_write()?;
        let mut duplicates = Vec::new();
        {
            let mut table = txn.open_table(SNAPSHOTS)?;
            let mut children = txn.open_table(CHILDREN)?;
            for (name, rec) in chain {
                if table.get(name.as_str())?.is_some() {
                    duplicates.push(rec.id);
                    continue;
                }
                check_parent(&table, &rec.parent)?;
                table.insert(name.as_str(), encode(rec).as_slice())?;
                if !rec.parent.is_empty() {
                    children.insert((rec.parent.as_str(), name.as_str()), ())?;
                }
            }
        }
        txn.commit()?;
        Ok(duplicates)
    }

    /// Turns active snapshot `key` into committed snapshot `name`, provided `key` is
    /// still snapshot `id` (the one whose tree the caller measured or sealed): one
    /// removed and prepared again under its key meanwhile is another snapshot, and its
    /// record must not get the first one's usage or image.
    pub fn commit(
        &self,
        key: &str,
        id: u64,
        name: &str,
        labels: Labels,
        usage: Usage,
    ) -> Result<Record> {
        let txn = self.db.begin_write()?;
        let rec = {
            let mut table = txn.open_table(SNAPSHOTS)?;
            let mut rec = match table.get(key)? {
                Some(v) => decode(key, v.value())?,
                None => return Err(Error::not_found(key)),
            };
            if rec.id != id {
                return Err(Error::NotFound {
                    key: key.into(),
                    context: " (removed while it was being committed)",
                });
            }
            if rec.kind != Kind::Active {
                return Err(Error::FailedPrecondition(format!(
                    "snapshot {key:?} is a {} snapshot: only active snapshots can be committed",
                    rec.kind
                )));
            }
            if table.get(name)?.is_some() {
                return Err(Error::AlreadyExists { key: name.into() });
            }
            let now = now_nanos();
            rec.kind = Kind::Committed;
            rec.labels = labels;
            rec.created = now;
            rec.updated = now;
            rec.usage = Some(usage);
            table.remove(key)?;
            table.insert(name, encode(&rec).as_slice())?;
            if !rec.parent.is_empty() {
                let mut children = txn.open_table(CHILDREN)?;
                children.remove((rec.parent.as_str(), key))?;
                children.insert((rec.parent.as_str(), name), ())?;
            }
            rec
        };
        txn.commit()?;
        Ok(rec)
    }

    /// Deletes a snapshot that has no children and returns its record.
    pub fn remove(&self, key: &str) -> Result<Record> {
        let txn = self.db.begin_write()?;
        let rec = {
            let mut table = txn.open_table(SNAPSHOTS)?;
            let rec = match table.get(key)? {
                Some(v) => decode(key, v.value())?,
                None => return Err(Error::not_found(key)),
            };
            let mut children = txn.open_table(CHILDREN)?;
            if let Some(child) = children.range((key, "")..)?.next() {
                let child = child?;
                let (parent, name) = child.0.value();
                if parent == key {
                    return Err(Error::FailedPrecondition(format!(
                        "cannot remove snapshot {key:?}: snapshot {name:?} depends on it"
                    )));
                }
            }
            table.remove(key)?;
            if !rec.parent.is_empty() {
                children.remove((rec.parent.as_str(), key))?;
            }
            let mut extras = txn.open_table(EXTRAS)?;
            let extra = extras.remove(key)?.map(|v| decode_extra(key, v.value()));
            if let Some(extra) = extra {
                for source in &extra?.sources {
                    children.remove((source.as_str(), key))?;
                }
            }
            rec
        };
        txn.commit()?;
        Ok(rec)
    }

    /// Applies `change` to a record's labels and stamps its update time.
    pub fn update(&self, key: &str, change: impl FnOnce(&mut Labels)) -> Result<Record> {
        let txn = self.db.begin_write()?;
        let rec = {
            let mut table = txn.open_table(SNAPSHOTS)?;
            let mut rec = match table.get(key)? {
                Some(v) => decode(key, v.value())?,
                None => return Err(Error::not_found(key)),
            };
            change(&mut rec.labels);
            rec.updated = now_nanos();
            table.insert(key, encode(&rec).as_slice())?;
            rec
        };
        txn.commit()?;
        Ok(rec)
    }

    /// Calls `f` with each record in key order until it returns `false`.
    pub fn for_each(&self, mut f: impl FnMut(&str, Record) -> bool) -> Result<()> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SNAPSHOTS)?;
        for item in table.iter()? {
            let (k, v) = item?;
            let key = k.value();
            if !f(key, decode(key, v.value())?) {
                break;
            }
        }
        Ok(())
    }

    /// Records (or replaces) an image.
    pub fn put_image(&self, rec: &crate::image::ImageRecord) -> Result<()> {
        let bytes = postcard::to_allocvec(rec).unwrap_or_default();
        let txn = self.db.begin_write()?;
        txn.open_table(IMAGES)?
            .insert(rec.name.as_str(), bytes.as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// Every recorded image, by name.
    pub fn images(&self) -> Result<Vec<crate::image::ImageRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(IMAGES)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            out.push(
                postcard::from_bytes(v.value()).map_err(|source| Error::CorruptRecord {
                    key: k.value().to_owned(),
                    source,
                })?,
            );
        }
        Ok(out)
    }

    /// The image recorded under `name`, if any.
    pub fn image(&self, name: &str) -> Result<Option<crate::image::ImageRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(IMAGES)?;
        let Some(v) = table.get(name)? else {
            return Ok(None);
        };
        let rec = postcard::from_bytes(v.value()).map_err(|source| Error::CorruptRecord {
            key: name.to_owned(),
            source,
        })?;
        Ok(Some(rec))
    }

    /// Forgets an image (its snapshots stay until removed); false if it was unknown.
    pub fn remove_image(&self, name: &str) -> Result<bool> {
        let txn = self.db.begin_write()?;
        let found = txn.open_table(IMAGES)?.remove(name)?.is_some();
        txn.commit()?;
        Ok(found)
    }

    /// Every id a record refers to.
    pub fn ids(&self) -> Result<HashSet<u64>> {
        let mut ids = HashSet::new();
        self.for_each(|_, r| {
            ids.insert(r.id);
            true
        })?;
        Ok(ids)
    }
}

/// Checks that `parent` ("" = none) exists and is committed; gives its id.
fn check_parent(table: &redb::Table<&str, &[u8]>, parent: &str) -> Result<Option<u64>> {
    if parent.is_empty() {
        return Ok(None);
    }
    let rec = match table.get(parent)? {
        Some(v) => decode(parent, v.value())?,
        None => {
            return Err(Error::NotFound {
                key: parent.into(),
                context: " (parent)",
            })
        }
    };
    if rec.kind != Kind::Committed {
        return Err(Error::InvalidArgument(format!(
            "parent {parent:?} is a {} snapshot, not a committed one",
            rec.kind
        )));
    }
    Ok(Some(rec.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u64, kind: Kind, parent: &str) -> Record {
        Record {
            id,
            kind,
            parent: parent.into(),
            labels: Labels::new(),
            created: 0,
            updated: 0,
            usage: None,
        }
    }

    fn store() -> (tempfile::TempDir, MetaStore) {
        let dir = tempfile::tempdir().unwrap();
        let meta =
            MetaStore::open(&dir.path().join("m.redb"), crate::BackendKind::Overlayfs).unwrap();
        (dir, meta)
    }

    fn not_found(r: Result<impl std::fmt::Debug>, key: &str) {
        match r {
            Err(Error::NotFound { key: k, .. }) if k == key => {}
            other => panic!("expected NotFound for {key}, got {other:?}"),
        }
    }

    // Found by lamina-loadtest: a parent removed and committed again under its name
    // between reading its chain and the insert gave the child the removed parent's trees.
    #[test]
    fn insert_refuses_a_parent_replaced_since_its_chain_was_read() {
        let (_d, meta) = store();
        meta.insert("p", &rec(1, Kind::Committed, ""), None)
            .unwrap();
        meta.remove("p").unwrap();
        meta.insert("p", &rec(2, Kind::Committed, ""), None)
            .unwrap();
        not_found(
            meta.insert("child", &rec(3, Kind::Active, "p"), Some(1)),
            "p",
        );
        assert!(meta.get("child").unwrap().is_none());
        meta.insert("child", &rec(3, Kind::Active, "p"), Some(2))
            .unwrap();
    }

    #[test]
    fn commit_refuses_a_key_prepared_again_since_it_was_read() {
        let (_d, meta) = store();
        meta.insert("a", &rec(1, Kind::Active, ""), None).unwrap();
        meta.remove("a").unwrap();
        meta.insert("a", &rec(2, Kind::Active, ""), None).unwrap();
        let usage = Usage::default();
        not_found(meta.commit("a", 1, "c", Labels::new(), usage), "a");
        assert_eq!(meta.get("a").unwrap().unwrap().kind, Kind::Active);
        assert_eq!(
            meta.commit("a", 2, "c", Labels::new(), usage).unwrap().id,
            2
        );
    }

    #[test]
    fn insert_derived_refuses_a_source_replaced_since_it_was_read() {
        let (_d, meta) = store();
        meta.insert("s", &rec(1, Kind::Committed, ""), None)
            .unwrap();
        meta.remove("s").unwrap();
        meta.insert("s", &rec(2, Kind::Committed, ""), None)
            .unwrap();
        let extra = Extra {
            stack: vec![1],
            sources: vec!["s".into()],
            layer_form: false,
        };
        let merged = rec(3, Kind::Committed, "");
        not_found(
            meta.insert_derived("m", &merged, &extra, &[("s".into(), 1)]),
            "s",
        );
        assert!(meta.get("m").unwrap().is_none());
        let extra = Extra {
            stack: vec![2],
            ..extra
        };
        meta.insert_derived("m", &merged, &extra, &[("s".into(), 2)])
            .unwrap();
    }
}
