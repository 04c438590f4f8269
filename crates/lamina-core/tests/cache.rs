//! The cache manager on a real store: leases, GC roots and reference labels, refs and
//! their policies, prune (filters, keep-duration, keep-bytes in LRU order) and disk
//! usage that counts each hard-linked inode once, checked against `du`. Run as root.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lamina_core::cache::{
    CacheError, CacheManager, CachePolicy, LeaseResource, PruneOptions, RecordType, RefOptions,
    LABEL_GC_EXPIRE, LABEL_GC_ROOT,
};
use lamina_core::layer::Digest;
use lamina_core::{BackendKind, Error, Labels, Snapshotter, StoreConfig};

fn open(dir: &Path) -> (Arc<Snapshotter>, CacheManager) {
    common::require_root("this test creates snapshot trees owned by root");
    let store = Arc::new(
        Snapshotter::open(StoreConfig::new(dir.join("root"), BackendKind::Overlayfs)).unwrap(),
    );
    let cache = CacheManager::open(store.clone()).unwrap();
    (store, cache)
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `bytes` of data that differ per `seed` (so nothing could ever be deduplicated).
fn data(seed: u8, bytes: usize) -> Vec<u8> {
    (0..bytes)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The directory a parentless active snapshot's mount binds: its own tree.
fn tree_of(store: &Snapshotter, key: &str) -> PathBuf {
    let m = store.mounts(key).unwrap();
    assert_eq!(
        m[0].kind, "bind",
        "a parentless snapshot is a bind of its tree"
    );
    PathBuf::from(&m[0].source)
}

/// A committed snapshot `name` (no parent) holding `files`.
fn committed(store: &Snapshotter, name: &str, l: Labels, files: &[(&str, Vec<u8>)]) {
    let key = format!("{name}-active");
    store.prepare(&key, "", Labels::new()).unwrap();
    let dir = tree_of(store, &key);
    for (f, content) in files {
        std::fs::write(dir.join(f), content).unwrap();
    }
    store.commit(name, &key, l).unwrap();
}

fn keys(store: &Snapshotter) -> BTreeSet<String> {
    store
        .list::<&str>(&[])
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn leases_and_gc_roots_keep_what_they_hold() {
    let t = common::tmp("lamina-cache-test-");
    let (store, cache) = open(t.path());
    committed(&store, "garbage", Labels::new(), &[("f", data(1, 50_000))]);
    committed(&store, "rooted", labels(&[(LABEL_GC_ROOT, "x")]), &[]);
    committed(&store, "leased-parent", Labels::new(), &[]);
    store
        .prepare("leased", "leased-parent", Labels::new())
        .unwrap();
    let (kept_blob, _) = store
        .content()
        .ingest(None, &b"kept by the lease"[..])
        .unwrap();
    let (lost_blob, _) = store
        .content()
        .ingest(None, &b"held by nothing"[..])
        .unwrap();

    let lease = cache.create_lease("build-1", Labels::new(), None).unwrap();
    // A lease holds keys: adding the resource before the snapshot exists is the usual order.
    cache
        .add_lease_resource(&lease.id, &LeaseResource::Snapshot("leased".into()))
        .unwrap();
    cache
        .add_lease_resource(&lease.id, &LeaseResource::Content(kept_blob.clone()))
        .unwrap();
    assert_eq!(
        cache.lease_resources(&lease.id).unwrap(),
        vec![
            LeaseResource::Snapshot("leased".into()),
            LeaseResource::Content(kept_blob.clone())
        ]
    );

    let report = cache.gc().unwrap();
    assert_eq!(
        report
            .snapshots
            .iter()
            .map(|r| r.id.as_str())
            .collect::<Vec<_>>(),
        vec!["garbage"]
    );
    assert!(
        report.snapshots[0].bytes >= 50_000,
        "the removed file's blocks are reported: {report:?}"
    );
    assert_eq!(
        report
            .content
            .iter()
            .map(|r| r.id.clone())
            .collect::<Vec<_>>(),
        vec![lost_blob.to_string()]
    );
    assert_eq!(keys(&store), set(&["leased", "leased-parent", "rooted"]));
    assert!(store.content().has(&kept_blob) && !store.content().has(&lost_blob));

    // Once the lease is gone, what it held goes too (the root label still keeps its own).
    cache.delete_lease(&lease.id).unwrap();
    let report = cache.gc().unwrap();
    assert_eq!(
        report
            .snapshots
            .iter()
            .map(|r| r.id.as_str())
            .collect::<Vec<_>>(),
        vec!["leased", "leased-parent"],
        "the child goes before its parent"
    );
    assert_eq!(keys(&store), set(&["rooted"]));
    assert!(!store.content().has(&kept_blob));
    assert!(matches!(
        cache.delete_lease(&lease.id),
        Err(Error::Cache(CacheError::LeaseNotFound { .. }))
    ));
}

#[test]
fn expired_leases_are_deleted_and_release_their_snapshots() {
    let t = common::tmp("lamina-cache-test-");
    let (store, cache) = open(t.path());
    committed(&store, "old", Labels::new(), &[]);
    committed(&store, "fresh", Labels::new(), &[]);
    let past = SystemTime::now() - Duration::from_secs(3600);
    let expired = cache
        .create_lease("expired", Labels::new(), Some(past))
        .unwrap();
    assert!(expired.labels.contains_key(LABEL_GC_EXPIRE));
    assert!(expired.expired_at(SystemTime::now()));
    // containerd's form: the label itself, a time in the future.
    let future =
        lamina_core::cache::time::format_rfc3339(SystemTime::now() + Duration::from_secs(3600));
    cache
        .create_lease("live", labels(&[(LABEL_GC_EXPIRE, &future)]), None)
        .unwrap();
    cache
        .add_lease_resource("expired", &LeaseResource::Snapshot("old".into()))
        .unwrap();
    cache
        .add_lease_resource("live", &LeaseResource::Snapshot("fresh".into()))
        .unwrap();
    let report = cache.gc().unwrap();
    assert_eq!(report.expired_leases, vec!["expired".to_string()]);
    assert_eq!(keys(&store), set(&["fresh"]));
    assert_eq!(
        cache
            .leases::<&str>(&[])
            .unwrap()
            .into_iter()
            .map(|l| l.id)
            .collect::<Vec<_>>(),
        vec!["live".to_string()]
    );
    // A gc.expire label that is not RFC 3339 is refused up front.
    assert!(matches!(
        cache.create_lease("bad", labels(&[(LABEL_GC_EXPIRE, "tomorrow")]), None),
        Err(Error::Cache(CacheError::BadTime { .. }))
    ));
}

#[test]
fn gc_reference_labels_keep_what_they_name() {
    let t = common::tmp("lamina-cache-test-");
    let (store, cache) = open(t.path());
    let (blob, _) = store.content().ingest(None, &b"config blob"[..]).unwrap();
    committed(&store, "c", Labels::new(), &[]);
    committed(
        &store,
        "b",
        labels(&[
            ("containerd.io/gc.ref.snapshot.lamina", "c"),
            ("containerd.io/gc.ref.content.config", blob.as_str()),
        ]),
        &[],
    );
    committed(
        &store,
        "a",
        labels(&[
            (LABEL_GC_ROOT, "2024-01-01T00:00:00Z"),
            ("containerd.io/gc.ref.snapshot.overlayfs/0", "b"),
            (
                "containerd.io/gc.ref.snapshot.overlayfs/1",
                "no-such-snapshot",
            ),
        ]),
        &[],
    );
    committed(&store, "d", Labels::new(), &[]);
    // A label on an unreachable snapshot keeps nothing.
    committed(
        &store,
        "e",
        labels(&[("containerd.io/gc.ref.snapshot.lamina", "d")]),
        &[],
    );
    let report = cache.gc().unwrap();
    assert_eq!(keys(&store), set(&["a", "b", "c"]), "{report:?}");
    assert!(store.content().has(&blob));
    let removed: BTreeSet<String> = report.snapshots.into_iter().map(|r| r.id).collect();
    assert_eq!(removed, set(&["d", "e"]));
}

#[test]
fn recorded_images_keep_their_chain_and_blobs() {
    let t = common::tmp("lamina-cache-test-");
    let (store, cache) = open(t.path());
    committed(&store, "sha256:layer0", Labels::new(), &[]);
    let (layer_blob, size) = store.content().ingest(None, &b"layer"[..]).unwrap();
    let (manifest, _) = store.content().ingest(None, &b"{manifest}"[..]).unwrap();
    let (config, _) = store.content().ingest(None, &b"{config}"[..]).unwrap();
    store
        .put_image(&lamina_core::image::ImageRecord {
            name: "example/app:1".into(),
            manifest: manifest.to_string(),
            config: config.to_string(),
            layers: vec![lamina_core::image::LayerRecord {
                digest: layer_blob.to_string(),
                diff_id: layer_blob.to_string(),
                size,
                media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            }],
            chain_ids: vec!["sha256:layer0".into()],
        })
        .unwrap();
    let report = cache.gc().unwrap();
    assert!(
        report.snapshots.is_empty() && report.content.is_empty(),
        "{report:?}"
    );
    store.remove_image("example/app:1").unwrap();
    let report = cache.gc().unwrap();
    assert_eq!(report.snapshots.len(), 1);
    assert_eq!(report.content.len(), 3);
    assert!(keys(&store).is_empty());
}

#[test]
fn ref_policies_decide_what_a_release_keeps() {
    let t = common::tmp("lamina-cache-test-");
    let (store, cache) = open(t.path());

    // Default policy: a released mutable ref was scratch space.
    let scratch = cache.new_ref(None, RefOptions::default()).unwrap();
    std::fs::write(tree_of(&store, scratch.snapshot()).join("tmp"), b"x").unwrap();
    let (id, key) = (scratch.id().to_owned(), scratch.snapshot().to_owned());
    drop(scratch);
    assert!(matches!(
        cache.get_mutable(&id),
        Err(Error::Cache(CacheError::RecordNotFound { .. }))
    ));
    assert!(matches!(store.stat(&key), Err(Error::NotFound { .. })));

    // Retain: it stays as cache, its use counted; one handle at a time.
    let kept = cache
        .new_ref(
            None,
            RefOptions {
                description: "apt cache".into(),
                record_type: RecordType::CacheMount,
                policy: CachePolicy::Retain,
            },
        )
        .unwrap();
    let kept_id = kept.id().to_owned();
    assert!(matches!(
        cache.get_mutable(&kept_id),
        Err(Error::Cache(CacheError::Locked { .. }))
    ));
    kept.release().unwrap();
    let again = cache.get_mutable(&kept_id).unwrap();
    drop(again);
    let rec = cache
        .records()
        .unwrap()
        .into_iter()
        .find(|r| r.id == kept_id)
        .unwrap();
    assert_eq!(
        (rec.use_count, rec.mutable, rec.in_use, rec.record_type),
        (2, true, false, RecordType::CacheMount)
    );
    assert!(rec.last_used.is_some());

    // Committing makes an immutable record; released, it stays as cache, and cache
    // records are GC roots until pruned.
    let m = cache.new_ref(None, RefOptions::default()).unwrap();
    std::fs::write(tree_of(&store, m.snapshot()).join("out"), b"result").unwrap();
    let old_id = m.id().to_owned();
    let i = m.commit().unwrap();
    assert_ne!(i.id(), old_id);
    assert!(store.stat(i.snapshot()).unwrap().kind == lamina_core::Kind::Committed);
    let (iid, isnap) = (i.id().to_owned(), i.snapshot().to_owned());
    let view = i.mount().unwrap();
    assert!(!view.mounts().is_empty());
    let twin = i.clone();
    drop(i);
    let report = cache.gc().unwrap();
    assert!(
        report.snapshots.is_empty(),
        "records, views and handles keep their snapshots: {report:?}"
    );
    drop(twin);
    // The view holds a handle of its own: the record is in use, prune leaves it.
    let rec = |id: &str| {
        cache
            .records()
            .unwrap()
            .into_iter()
            .find(|r| r.id == id)
            .unwrap()
    };
    assert!(rec(&iid).in_use);
    let pruned = cache
        .prune(&PruneOptions {
            filters: vec![format!("id=={iid}")],
            all: true,
            ..PruneOptions::default()
        })
        .unwrap();
    assert!(pruned.removed.is_empty());
    let view_key = view.key().to_owned();
    drop(view);
    assert!(matches!(store.stat(&view_key), Err(Error::NotFound { .. })));
    assert!(!rec(&iid).in_use);
    assert!(cache.gc().unwrap().snapshots.is_empty());
    let got = cache.get(&iid).unwrap();
    assert_eq!(got.snapshot(), isnap);
    assert!(matches!(
        cache.get(&kept_id),
        Err(Error::Cache(CacheError::WrongKind { .. }))
    ));
    // A child built on it: a mutable ref with it as parent.
    let child = cache.new_ref(Some(&got), RefOptions::default()).unwrap();
    assert_eq!(store.stat(child.snapshot()).unwrap().parent, isnap);
    drop(child);
    drop(got);
    // Records survive a restart of the store.
    drop(cache);
    drop(store);
    let (_store, cache) = open(t.path());
    let ids: BTreeSet<String> = cache.records().unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(ids, set(&[&iid, &kept_id]));
}

/// An immutable record holding one file of `bytes`, released, with its last use set.
fn record(
    store: &Snapshotter,
    cache: &CacheManager,
    opts: RefOptions,
    seed: u8,
    bytes: usize,
    last_used: SystemTime,
) -> String {
    let m = cache.new_ref(None, opts).unwrap();
    std::fs::write(tree_of(store, m.snapshot()).join("blob"), data(seed, bytes)).unwrap();
    let i = m.commit().unwrap();
    let id = i.id().to_owned();
    drop(i);
    cache.set_last_used(&id, last_used, None).unwrap();
    id
}

fn ago(secs: u64) -> SystemTime {
    SystemTime::now() - Duration::from_secs(secs)
}

fn record_ids(cache: &CacheManager) -> BTreeSet<String> {
    cache.records().unwrap().into_iter().map(|r| r.id).collect()
}

#[test]
fn prune_with_keep_bytes_removes_least_recently_used_first() {
    let t = common::tmp("lamina-cache-test-");
    let (store, cache) = open(t.path());
    const MIB: usize = 1 << 20;
    // Created in an order unlike their last use, so creation order cannot pass for LRU.
    let newest = record(&store, &cache, RefOptions::default(), 1, MIB, ago(10));
    let oldest = record(&store, &cache, RefOptions::default(), 2, MIB, ago(4000));
    let middle = record(&store, &cache, RefOptions::default(), 3, MIB, ago(600));
    let second = record(&store, &cache, RefOptions::default(), 4, MIB, ago(3000));
    let before = cache.disk_usage().unwrap().total;
    // Room for a bit more than two of the four files.
    let keep = before - (MIB as u64) * 3 / 2;
    let report = cache
        .prune(&PruneOptions {
            keep_bytes: keep,
            ..PruneOptions::default()
        })
        .unwrap();
    let order: Vec<&str> = report.removed.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(order, vec![oldest.as_str(), second.as_str()]);
    assert!(report.removed.iter().all(|r| r.size >= MIB as u64));
    assert_eq!(
        report.gc.snapshots.len(),
        2,
        "their snapshots went: {report:?}"
    );
    let after = cache.disk_usage().unwrap().total;
    assert!(after <= keep, "usage {after} must be at most {keep}");
    assert_eq!(report.usage_before, before);
    assert_eq!(report.usage_after, after);
    assert_eq!(record_ids(&cache), set(&[&newest, &middle]));
    // Already under the bound: nothing more goes.
    let report = cache
        .prune(&PruneOptions {
            keep_bytes: keep,
            ..PruneOptions::default()
        })
        .unwrap();
    assert!(report.removed.is_empty());
}

#[test]
fn prune_keeps_recently_used_records() {
    let t = common::tmp("lamina-cache-test-");
    let (store, cache) = open(t.path());
    let stale = record(&store, &cache, RefOptions::default(), 1, 4096, ago(7200));
    let recent = record(&store, &cache, RefOptions::default(), 2, 4096, ago(60));
    let report = cache
        .prune(&PruneOptions {
            keep_duration: Some(Duration::from_secs(3600)),
            ..PruneOptions::default()
        })
        .unwrap();
    assert_eq!(
        report
            .removed
            .iter()
            .map(|r| r.id.clone())
            .collect::<Vec<_>>(),
        vec![stale]
    );
    assert_eq!(record_ids(&cache), set(&[&recent]));
}

#[test]
fn prune_filters_types_and_in_use_records() {
    let t = common::tmp("lamina-cache-test-");
    let (store, cache) = open(t.path());
    let opts = |d: &str, ty| RefOptions {
        description: d.into(),
        record_type: ty,
        policy: CachePolicy::Default,
    };
    let a = record(
        &store,
        &cache,
        opts("build a", RecordType::Regular),
        1,
        4096,
        ago(9),
    );
    let b = record(
        &store,
        &cache,
        opts("build b", RecordType::Regular),
        2,
        4096,
        ago(9),
    );
    let git = record(
        &store,
        &cache,
        opts("git", RecordType::GitCheckout),
        3,
        4096,
        ago(9),
    );
    let internal = record(
        &store,
        &cache,
        opts("state", RecordType::Internal),
        4,
        4096,
        ago(9),
    );
    let prune = |filters: &[&str], all: bool| {
        cache
            .prune(&PruneOptions {
                filters: filters.iter().map(|f| f.to_string()).collect(),
                all,
                ..PruneOptions::default()
            })
            .unwrap()
            .removed
            .into_iter()
            .map(|r| r.id)
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(prune(&[r#"description=="build a""#], false), set(&[&a]));
    assert_eq!(prune(&["type==source.git.checkout"], false), set(&[&git]));
    assert_eq!(prune(&["description~=^nothing"], false), set(&[]));

    // In use: a handle on b, and a record built on the internal one with a handle.
    let held = cache.get(&b).unwrap();
    let base = cache.get(&internal).unwrap();
    let child = cache.new_ref(Some(&base), RefOptions::default()).unwrap();
    drop(base);
    let infos = cache.records().unwrap();
    assert!(infos
        .iter()
        .filter(|r| r.id == b || r.id == internal)
        .all(|r| r.in_use));
    assert_eq!(prune(&["inuse"], true), set(&[]), "in use is never pruned");
    assert_eq!(prune(&[], true), set(&[]));
    drop(child);
    // Without all, internal records stay; the last-used-at field is filterable.
    assert_eq!(prune(&[r#""last-used-at"~=^19"#], true), set(&[]));
    let this_year = &lamina_core::cache::time::format_rfc3339(SystemTime::now())[..4];
    let used_now = cache
        .records()
        .unwrap()
        .into_iter()
        .filter(|r| {
            r.field(&["last_used_at".to_string()])
                .is_some_and(|v| v.starts_with(this_year))
        })
        .count();
    assert_eq!(used_now, 2, "b and internal were used this year");
    drop(held);
    assert_eq!(prune(&["private"], false), set(&[&b]));
    assert_eq!(record_ids(&cache), set(&[&internal]));
    assert_eq!(
        prune(&[&format!("id=={internal}")], true),
        set(&[&internal])
    );
    assert!(keys(&store).is_empty(), "{:?}", keys(&store));
}

#[test]
fn prune_removes_children_before_the_records_they_are_built_on() {
    let t = common::tmp("lamina-cache-test-");
    let (store, cache) = open(t.path());
    let base = record(&store, &cache, RefOptions::default(), 1, 8192, ago(100));
    let parent = cache.get(&base).unwrap();
    let child = cache.new_ref(Some(&parent), RefOptions::default()).unwrap();
    let child = child.commit().unwrap();
    let child_id = child.id().to_owned();
    drop((parent, child));
    let report = cache.prune(&PruneOptions::default()).unwrap();
    assert_eq!(
        report
            .removed
            .iter()
            .map(|r| r.id.clone())
            .collect::<Vec<_>>(),
        vec![child_id, base]
    );
    assert!(keys(&store).is_empty());
}

/// Sum of `du -sc -B1` over `dirs` in one run: GNU du counts each inode once across
/// all its arguments.
fn du_total(dirs: &[PathBuf]) -> u64 {
    let out = std::process::Command::new("du")
        .args(["-s", "-c", "-B1", "-x"])
        .args(dirs)
        .output()
        .expect("run du");
    assert!(
        out.status.success(),
        "du: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let last = text.lines().last().expect("du total line");
    last.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn disk_usage_counts_hard_links_once_and_shows_them_shared() {
    use std::os::unix::fs::MetadataExt;
    let t = common::tmp("lamina-cache-test-");
    let (store, cache) = open(t.path());
    store.prepare("a", "", Labels::new()).unwrap();
    store.prepare("b", "", Labels::new()).unwrap();
    committed(&store, "c", Labels::new(), &[("alone", data(9, 40_000))]);
    let (a, b) = (tree_of(&store, "a"), tree_of(&store, "b"));
    std::fs::write(a.join("own"), data(1, 300_000)).unwrap();
    std::fs::hard_link(a.join("own"), a.join("own-again")).unwrap();
    std::fs::create_dir(a.join("dir")).unwrap();
    std::fs::write(a.join("dir/both"), data(2, 500_000)).unwrap();
    std::fs::create_dir(b.join("sub")).unwrap();
    std::fs::hard_link(a.join("dir/both"), b.join("sub/linked")).unwrap();
    std::fs::write(b.join("mine"), data(3, 100_000)).unwrap();

    let du = cache.disk_usage().unwrap();
    let get = |k: &str| du.snapshots.iter().find(|s| s.key == k).unwrap().clone();
    let both = std::fs::metadata(a.join("dir/both")).unwrap().blocks() * 512;
    let own = std::fs::metadata(a.join("own")).unwrap().blocks() * 512;
    let (ua, ub, uc) = (get("a"), get("b"), get("c"));
    assert_eq!(ua.shared, both, "the file linked into b is shared");
    assert_eq!(ub.shared, both);
    assert_eq!(uc.shared, 0);
    assert_eq!(du.shared_total, both, "and counted once in the total");
    assert!(
        ua.exclusive >= own,
        "a link inside one tree stays exclusive"
    );
    assert!(ua.exclusive < own * 2, "and counts once");
    assert_eq!(ua.inodes, 4, "fs, own (two names), dir, dir/both");

    // Independently: du over every snapshot tree in one run counts each inode once.
    let trees: Vec<PathBuf> = std::fs::read_dir(store.root().join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path().join("fs"))
        .collect();
    assert_eq!(trees.len(), 3);
    assert_eq!(du.total, du_total(&trees));
    let sum: u64 = du.snapshots.iter().map(|s| s.exclusive).sum::<u64>() + du.shared_total;
    assert_eq!(du.total, sum);
    // Per tree, exclusive + shared is what du says of that tree alone.
    for (key, dir) in [("a", &a), ("b", &b)] {
        let u = get(key);
        assert_eq!(
            u.exclusive + u.shared,
            du_total(std::slice::from_ref(dir)),
            "{key}"
        );
    }

    // Removing b frees its own bytes but not the file a still links.
    store.remove("b").unwrap();
    let du2 = cache.disk_usage().unwrap();
    assert_eq!(du2.total, du.total - ub.exclusive);
    assert_eq!(du2.shared_total, 0);
}

#[test]
fn gc_reports_bytes_freed_counting_links_to_survivors_as_kept() {
    let t = common::tmp("lamina-cache-test-");
    let (store, cache) = open(t.path());
    store
        .prepare("keeper", "", labels(&[(LABEL_GC_ROOT, "1")]))
        .unwrap();
    store.prepare("doomed", "", Labels::new()).unwrap();
    let (k, d) = (tree_of(&store, "keeper"), tree_of(&store, "doomed"));
    std::fs::write(k.join("shared"), data(5, 200_000)).unwrap();
    std::fs::hard_link(k.join("shared"), d.join("shared")).unwrap();
    std::fs::write(d.join("own"), data(6, 100_000)).unwrap();
    let du = cache.disk_usage().unwrap();
    let doomed = du
        .snapshots
        .iter()
        .find(|s| s.key == "doomed")
        .unwrap()
        .clone();
    let report = cache.gc().unwrap();
    assert_eq!(report.snapshots.len(), 1);
    assert_eq!(report.snapshot_bytes, doomed.exclusive);
    assert_eq!(
        cache.disk_usage().unwrap().total,
        du.total - doomed.exclusive
    );
}

#[test]
fn leases_list_with_filters_and_reject_bad_input() {
    let t = common::tmp("lamina-cache-test-");
    let (_store, cache) = open(t.path());
    cache
        .create_lease("one", labels(&[("team", "a")]), None)
        .unwrap();
    cache
        .create_lease("two", labels(&[("team", "b")]), None)
        .unwrap();
    let generated = cache.create_lease("", Labels::new(), None).unwrap();
    assert!(!generated.id.is_empty());
    assert!(matches!(
        cache.create_lease("one", Labels::new(), None),
        Err(Error::Cache(CacheError::LeaseExists { .. }))
    ));
    let ids = |f: &[&str]| -> Vec<String> {
        cache.leases(f).unwrap().into_iter().map(|l| l.id).collect()
    };
    assert_eq!(ids(&["labels.team==b"]), vec!["two".to_string()]);
    assert_eq!(
        ids(&["id==one", "id==two"]),
        vec!["one".to_string(), "two".to_string()]
    );
    assert_eq!(ids(&[]).len(), 3);
    assert!(LeaseResource::parse("snapshots/overlayfs", "k").is_ok());
    assert!(LeaseResource::parse("content", "sha256:nope").is_err());
    assert!(LeaseResource::parse("images", "x").is_err());
    let d = Digest::of(b"x");
    assert!(matches!(
        cache.add_lease_resource("missing", &LeaseResource::Content(d.clone())),
        Err(Error::Cache(CacheError::LeaseNotFound { .. }))
    ));
    cache
        .add_lease_resource("one", &LeaseResource::Content(d.clone()))
        .unwrap();
    cache
        .delete_lease_resource("one", &LeaseResource::Content(d))
        .unwrap();
    assert!(cache.lease_resources("one").unwrap().is_empty());
}

// Found by lamina-loadtest: a prune (and so a GC) failed with NotFound for a lease that
// another client deleted while the collector was reading the leases; the same for an
// expired lease deleted between the collector listing it and deleting it.
#[test]
fn collections_run_while_leases_are_deleted() {
    use std::sync::atomic::{AtomicU32, Ordering};
    const ROUNDS: u32 = 60;
    let dir = common::tmp("lamina-cache-test-");
    let (store, cache) = open(dir.path());
    store
        .prepare("rooted", "", labels(&[(LABEL_GC_ROOT, "1")]))
        .unwrap();
    let rounds = Arc::new(AtomicU32::new(0));
    let churn = {
        let (cache, rounds) = (cache.clone(), rounds.clone());
        std::thread::spawn(move || {
            for i in 0..ROUNDS {
                for j in 0..8 {
                    let id = format!("lease-{i}-{j}");
                    // Every other one expired already: collections delete those too.
                    let expires = (j % 2 == 1).then(|| ago(60));
                    cache.create_lease(&id, Labels::new(), expires).unwrap();
                    let held = LeaseResource::parse("snapshots", "rooted").unwrap();
                    match cache.add_lease_resource(&id, &held) {
                        Ok(()) => {}
                        Err(Error::Cache(CacheError::LeaseNotFound { .. })) if j % 2 == 1 => {}
                        Err(e) => panic!("add to {id}: {e}"),
                    }
                }
                for j in 0..8 {
                    match cache.delete_lease(&format!("lease-{i}-{j}")) {
                        Ok(()) => {}
                        Err(Error::Cache(CacheError::LeaseNotFound { .. })) if j % 2 == 1 => {}
                        Err(e) => panic!("delete lease-{i}-{j}: {e}"),
                    }
                }
                rounds.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let mut collections = 0;
    while rounds.load(Ordering::Relaxed) < ROUNDS {
        cache.gc().unwrap();
        cache.prune(&PruneOptions::default()).unwrap();
        collections += 1;
    }
    churn.join().unwrap();
    assert!(collections > 0);
    assert_eq!(keys(&store), set(&["rooted"]));
}
