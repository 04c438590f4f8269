//! Merge and diff snapshots against their definition: a merge must look exactly like the
//! exported diffs unpacked in order, a diff applied onto its lower snapshot must give its
//! upper one, exported layers must re-import identically, and a writable snapshot on a
//! merge must never change the snapshots it was merged from. Layer sequences are random
//! (proptest): adds, modifications, deletions, opaque directories, hard links, symlinks,
//! renames.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lamina_core::fsutil::{manifest_differences, tree_manifest, EntryFacts};
use lamina_core::layer::{ApplyOptions, Compression};
use lamina_core::{BackendKind, DiffSpec, Labels, MergeMethod, Snapshotter, StoreConfig};
use proptest::prelude::*;
use tar::{Builder, EntryType, Header};

/// One change a generated layer makes.
#[derive(Debug, Clone)]
enum Op {
    File {
        path: String,
        data: Vec<u8>,
        mode: u32,
    },
    Dir {
        path: String,
        mode: u32,
    },
    Delete {
        path: String,
    },
    Opaque {
        dir: String,
    },
    HardLink {
        path: String,
        target: String,
    },
    Symlink {
        path: String,
        target: String,
    },
    Rename {
        from: String,
        to: String,
    },
}

const DIRS: &[&str] = &["a", "b", "a/c"];
const NAMES: &[&str] = &["x", "y", "z"];

fn any_path() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["", "a", "b", "a/c"]),
        prop::sample::select(NAMES.to_vec()),
    )
        .prop_map(|(d, n)| {
            if d.is_empty() {
                n.to_string()
            } else {
                format!("{d}/{n}")
            }
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any_path(), prop::collection::vec(any::<u8>(), 0..64), prop::sample::select(vec![0o644u32, 0o755, 0o600, 0o4755]))
            .prop_map(|(path, data, mode)| Op::File { path, data, mode }),
        1 => (prop::sample::select(DIRS.to_vec()), prop::sample::select(vec![0o755u32, 0o700, 0o1777]))
            .prop_map(|(p, mode)| Op::Dir { path: p.to_string(), mode }),
        2 => prop_oneof![any_path(), prop::sample::select(DIRS.to_vec()).prop_map(String::from)]
            .prop_map(|path| Op::Delete { path }),
        1 => prop::sample::select(DIRS.to_vec()).prop_map(|d| Op::Opaque { dir: d.to_string() }),
        1 => (any_path(), any_path()).prop_map(|(path, target)| Op::HardLink { path, target }),
        1 => (any_path(), any_path()).prop_map(|(path, target)| Op::Symlink { path, target }),
        1 => (any_path(), any_path()).prop_map(|(from, to)| Op::Rename { from, to }),
    ]
}

fn layer_ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 1..10)
}

fn header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

fn parent_of(p: &str) -> Option<&str> {
    p.rsplit_once('/').map(|(d, _)| d)
}

/// The tar of a layer over a tree holding `below` (paths). Parent directories are
/// written before their entries (so nothing is created implicitly), a hard link only
/// points at a file this layer wrote (the target is written first when needed), a
/// deletion is only written for a path that exists below (as image layers are: a
/// whiteout with nothing under it would be listed by overlayfs as a broken entry in a
/// directory no lower layer has), and a rename deletes one name and writes the other.
/// `below` is updated to the tree after the layer.
fn layer_tar(ops: &[Op], below: &mut std::collections::BTreeSet<String>) -> Vec<u8> {
    let before = below.clone();
    let mut after = below.clone();
    let add = |after: &mut std::collections::BTreeSet<String>, p: &str| {
        let mut cur = Some(p);
        while let Some(c) = cur {
            after.insert(c.to_string());
            cur = parent_of(c);
        }
    };
    let remove = |after: &mut std::collections::BTreeSet<String>, p: &str| {
        after.retain(|f| f != p && !f.starts_with(&format!("{p}/")));
    };
    let mut b = Builder::new(Vec::new());
    let mut dirs_written: Vec<String> = Vec::new();
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let dir = |b: &mut Builder<Vec<u8>>, written: &mut Vec<String>, d: &str, mode: u32| {
        let mut chain = Vec::new();
        let mut cur = Some(d);
        while let Some(c) = cur {
            chain.push(c.to_string());
            cur = parent_of(c);
        }
        for c in chain.into_iter().rev() {
            if c == d || !written.contains(&c) {
                let mut h = header(EntryType::Directory, if c == d { mode } else { 0o755 }, 0);
                b.append_data(&mut h, format!("{c}/"), std::io::empty())
                    .unwrap();
                if !written.contains(&c) {
                    written.push(c);
                }
            }
        }
    };
    let parent = |b: &mut Builder<Vec<u8>>, written: &mut Vec<String>, p: &str| {
        if let Some(d) = parent_of(p) {
            if !written.iter().any(|w| w == d) {
                dir(b, written, d, 0o755);
            }
        }
    };
    let file = |b: &mut Builder<Vec<u8>>,
                written: &mut Vec<String>,
                files: &mut BTreeMap<String, Vec<u8>>,
                p: &str,
                data: &[u8],
                mode: u32| {
        parent(b, written, p);
        let mut h = header(EntryType::Regular, mode, data.len() as u64);
        b.append_data(&mut h, p, data).unwrap();
        files.insert(p.to_string(), data.to_vec());
    };
    let whiteout = |b: &mut Builder<Vec<u8>>, p: &str| {
        let name = match p.rsplit_once('/') {
            Some((d, n)) => format!("{d}/.wh.{n}"),
            None => format!(".wh.{p}"),
        };
        let mut h = header(EntryType::Regular, 0o644, 0);
        b.append_data(&mut h, name, std::io::empty()).unwrap();
    };
    for op in ops {
        match op {
            Op::File { path, data, mode } => {
                file(&mut b, &mut dirs_written, &mut files, path, data, *mode);
                remove(&mut after, path);
                add(&mut after, path);
            }
            Op::Dir { path, mode } => {
                dir(&mut b, &mut dirs_written, path, *mode);
                add(&mut after, path);
            }
            Op::Delete { path } => {
                // Only what was there before this layer, and is still there, can go.
                if !before.contains(path) || !after.contains(path) {
                    continue;
                }
                parent(&mut b, &mut dirs_written, path);
                whiteout(&mut b, path);
                files.retain(|f, _| f != path && !f.starts_with(&format!("{path}/")));
                remove(&mut after, path);
            }
            Op::Opaque { dir: d } => {
                dir(&mut b, &mut dirs_written, d, 0o755);
                let mut h = header(EntryType::Regular, 0o644, 0);
                b.append_data(&mut h, format!("{d}/.wh..wh..opq"), std::io::empty())
                    .unwrap();
                after.retain(|f| !f.starts_with(&format!("{d}/")) || files.contains_key(f));
                add(&mut after, d);
            }
            Op::HardLink { path, target } => {
                if path == target || DIRS.contains(&path.as_str()) {
                    continue;
                }
                if !files.contains_key(target) {
                    file(
                        &mut b,
                        &mut dirs_written,
                        &mut files,
                        target,
                        b"link target",
                        0o644,
                    );
                }
                parent(&mut b, &mut dirs_written, path);
                let mut h = header(EntryType::Link, 0o644, 0);
                b.append_link(&mut h, path, target).unwrap();
                let data = files[target].clone();
                files.insert(path.clone(), data);
                add(&mut after, target);
                remove(&mut after, path);
                add(&mut after, path);
            }
            Op::Symlink { path, target } => {
                parent(&mut b, &mut dirs_written, path);
                let mut h = header(EntryType::Symlink, 0o777, 0);
                b.append_link(&mut h, path, target).unwrap();
                files.remove(path);
                remove(&mut after, path);
                add(&mut after, path);
            }
            Op::Rename { from, to } => {
                if from == to || !before.contains(from) || !after.contains(from) {
                    continue;
                }
                if to.starts_with(&format!("{from}/")) {
                    continue; // into itself
                }
                parent(&mut b, &mut dirs_written, from);
                whiteout(&mut b, from);
                remove(&mut after, from);
                let data = files.remove(from).unwrap_or_else(|| b"renamed".to_vec());
                file(&mut b, &mut dirs_written, &mut files, to, &data, 0o644);
                remove(&mut after, to);
                add(&mut after, to);
            }
        }
    }
    *below = after;
    b.into_inner().unwrap()
}

/// The tars of a chain of layers, each over the ones before.
fn chain_tars(layers: &[Vec<Op>]) -> Vec<Vec<u8>> {
    let mut tree = std::collections::BTreeSet::new();
    layers.iter().map(|l| layer_tar(l, &mut tree)).collect()
}

fn store(root: &Path) -> Snapshotter {
    Snapshotter::open(StoreConfig::new(root, BackendKind::Overlayfs)).unwrap()
}

/// Applies `layers` as a chain named `prefix-0`, `prefix-1`, ...; returns the names.
fn chain(s: &Snapshotter, prefix: &str, layers: &[Vec<u8>]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let name = format!("{prefix}-{i}");
        let parent = names.last().cloned().unwrap_or_default();
        s.apply_layer(
            &name,
            &parent,
            Labels::new(),
            &l[..],
            ApplyOptions::default(),
        )
        .unwrap_or_else(|e| panic!("layer {name}: {e}"));
        names.push(name);
    }
    names
}

/// The manifest of committed snapshot `name` as a read-only mount shows it. Directory
/// mtimes are left out: a directory a layer creates implicitly gets the time of its
/// creation, which no two unpacks share.
fn view_manifest(s: &Snapshotter, name: &str, scratch: &Path) -> BTreeMap<PathBuf, EntryFacts> {
    let key = format!("view-{}-{name}", scratch.display().to_string().len());
    let mounts = s.view(&key, name, Labels::new()).unwrap();
    let target = scratch.join("mnt");
    std::fs::create_dir_all(&target).unwrap();
    lamina_core::sys::mount_all(&mounts, &target).unwrap();
    let m = tree_manifest(&target);
    lamina_core::sys::unmount(&target).unwrap();
    s.remove(&key).unwrap();
    let mut m = m.unwrap_or_else(|e| {
        let dirs = mounts[0].options.last().unwrap().trim_start_matches("lowerdir=").to_string();
        let out = std::process::Command::new("sh").arg("-c").arg(format!("for d in $(echo {dirs} | tr : ' '); do echo == $d; ls -laR $d | head -40; getfattr -R -d -m - $d 2>/dev/null; done")).output().unwrap();
        panic!("manifest of {name} ({mounts:?}): {e}\n{}", String::from_utf8_lossy(&out.stdout))
    });
    for facts in m.values_mut() {
        if facts.kind == "dir" {
            facts.mtime = (0, 0);
        }
    }
    m
}

/// Every path in the tree at `root`, itself included.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if std::fs::symlink_metadata(&out[i]).unwrap().is_dir() {
            for e in std::fs::read_dir(&out[i]).unwrap() {
                out.push(e.unwrap().path());
            }
        }
        i += 1;
    }
    out
}

fn same(a: &BTreeMap<PathBuf, EntryFacts>, b: &BTreeMap<PathBuf, EntryFacts>, what: &str) {
    let d = manifest_differences(a, b);
    assert!(
        d.is_empty(),
        "{what}: {} differences:\n{}",
        d.len(),
        d.join("\n")
    );
}

/// Exports each diff and unpacks the layers in order as a new chain; returns its top.
fn unpack_exports(s: &Snapshotter, diffs: &[DiffSpec], prefix: &str) -> String {
    let mut parent = String::new();
    for (i, d) in diffs.iter().enumerate() {
        let mut blob = Vec::new();
        s.export_diff(&d.lower, &d.upper, Compression::Gzip, &mut blob)
            .unwrap();
        let name = format!("{prefix}-{i}");
        s.apply_layer(
            &name,
            &parent,
            Labels::new(),
            &blob[..],
            ApplyOptions::default(),
        )
        .unwrap();
        parent = name;
    }
    parent
}

fn check_case(a_layers: &[Vec<Op>], b_layers: &[Vec<Op>]) {
    let t = common::tmp("lamina-merge-test-");
    let s = store(&t.path().join("root"));
    let scratch = t.path().join("scratch");
    let a = chain(&s, "a", &chain_tars(a_layers));
    let b = chain(&s, "b", &chain_tars(b_layers));
    let layerwise = |names: &[String]| -> Vec<DiffSpec> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| DiffSpec::new(if i == 0 { "" } else { &names[i - 1] }, n))
            .collect()
    };
    let a_top = a.last().unwrap();
    let b_top = b.last().unwrap();
    let cases: Vec<(&str, Vec<DiffSpec>, MergeMethod)> = vec![
        // Each diff one layer over its parent: stacked.
        (
            "layer by layer",
            [layerwise(&a), layerwise(&b)].concat(),
            MergeMethod::Stacked,
        ),
        // Whole chains as one diff each: hard-linked (stacked when both are one layer).
        (
            "whole trees",
            vec![DiffSpec::new("", a_top), DiffSpec::new("", b_top)],
            if a.len() == 1 && b.len() == 1 {
                MergeMethod::Stacked
            } else {
                MergeMethod::HardLinked
            },
        ),
        // A diff between two unrelated snapshots, on top of a tree.
        (
            "cross diff",
            vec![DiffSpec::new("", b_top), DiffSpec::new(&b[0], a_top)],
            MergeMethod::HardLinked,
        ),
    ];
    for (i, (what, diffs, method)) in cases.iter().enumerate() {
        let key = format!("merged-{i}");
        let r = s
            .merge(&key, diffs, Labels::new())
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(r.method, *method, "{what}");
        let expected = unpack_exports(&s, diffs, &format!("exp{i}"));
        same(
            &view_manifest(&s, &key, &scratch),
            &view_manifest(&s, &expected, &scratch),
            &format!("merge ({what}) vs the exported diffs unpacked"),
        );
    }
    // Diff(lower, upper) applied onto lower gives upper, as a snapshot and as a layer.
    let d = s.diff_snapshot("d", &a[0], b_top, Labels::new()).unwrap();
    assert_eq!(d.method, MergeMethod::HardLinked);
    for (what, lower, upper) in [
        ("diff snapshot", "", "d"),
        ("export", a[0].as_str(), b_top.as_str()),
    ] {
        let mut blob = Vec::new();
        s.export_diff(lower, upper, Compression::Zstd, &mut blob)
            .unwrap();
        let name = format!("onto-a0-{what}");
        s.apply_layer(
            &name,
            &a[0],
            Labels::new(),
            &blob[..],
            ApplyOptions::default(),
        )
        .unwrap();
        same(
            &view_manifest(&s, &name, &scratch),
            &view_manifest(&s, b_top, &scratch),
            &format!("{what} of (a0, b top) applied onto a0 vs b top"),
        );
    }
    let merged_diff = "merged-diff";
    s.merge(
        merged_diff,
        &[DiffSpec::new("", &a[0]), DiffSpec::new("", "d")],
        Labels::new(),
    )
    .unwrap();
    same(
        &view_manifest(&s, merged_diff, &scratch),
        &view_manifest(&s, b_top, &scratch),
        "merge of a0 and diff(a0, b top) vs b top",
    );
    // Exported layers re-import identically, and export is deterministic.
    let exported = layerwise(&a);
    let again = unpack_exports(&s, &exported, "reimport");
    same(
        &view_manifest(&s, &again, &scratch),
        &view_manifest(&s, a_top, &scratch),
        "re-imported layers vs the originals",
    );
    let digest = |lower: &str, upper: &str| {
        let mut blob = Vec::new();
        s.export_diff(lower, upper, Compression::Gzip, &mut blob)
            .unwrap()
            .digest
    };
    let n = a.len() - 1;
    let reimported_parent = if n == 0 {
        String::new()
    } else {
        format!("reimport-{}", n - 1)
    };
    let original_parent = if n == 0 {
        String::new()
    } else {
        a[n - 1].clone()
    };
    assert_eq!(
        digest(&original_parent, a_top),
        digest(&reimported_parent, &again),
        "re-exporting a re-imported layer gives the same blob"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, .. ProptestConfig::default() })]

    #[test]
    fn merges_and_diffs_match_exported_layers(
        a in prop::collection::vec(layer_ops(), 1..4),
        b in prop::collection::vec(layer_ops(), 1..4),
    ) {
        common::require_root("merge tests mount overlays and set owners");
        check_case(&a, &b);
    }
}

/// Writes, deletes and chmods in a writable snapshot on a merge, for both merge methods:
/// every source snapshot stays byte-identical (files, modes, times, links).
#[test]
fn a_writable_child_of_a_merge_never_changes_its_sources() {
    common::require_root("merge tests mount overlays and set owners");
    let t = common::tmp("lamina-merge-test-");
    let s = store(&t.path().join("root"));
    let scratch = t.path().join("scratch");
    let mut tree = std::collections::BTreeSet::new();
    let base = layer_tar(
        &[
            Op::File {
                path: "a/x".into(),
                data: b"base x".to_vec(),
                mode: 0o644,
            },
            Op::File {
                path: "b/y".into(),
                data: b"base y".to_vec(),
                mode: 0o755,
            },
            Op::HardLink {
                path: "a/z".into(),
                target: "a/x".into(),
            },
        ],
        &mut tree,
    );
    let top = layer_tar(
        &[
            Op::File {
                path: "a/c/z".into(),
                data: b"top z".to_vec(),
                mode: 0o600,
            },
            Op::Delete { path: "b/y".into() },
        ],
        &mut tree,
    );
    let other = layer_tar(
        &[Op::File {
            path: "b/x".into(),
            data: b"other".to_vec(),
            mode: 0o644,
        }],
        &mut std::collections::BTreeSet::new(),
    );
    let l = chain(&s, "l", &[base, top]);
    let o = chain(&s, "o", &[other]);
    let sources: Vec<String> = [l.clone(), o.clone()].concat();
    let before: Vec<_> = sources
        .iter()
        .map(|n| view_manifest(&s, n, &scratch))
        .collect();
    let specs = [
        vec![
            DiffSpec::new("", &l[0]),
            DiffSpec::new(&l[0], &l[1]),
            DiffSpec::new("", &o[0]),
        ],
        vec![DiffSpec::new("", &l[1]), DiffSpec::new("", &o[0])],
    ];
    for (i, diffs) in specs.iter().enumerate() {
        let merged = format!("m{i}");
        s.merge(&merged, diffs, Labels::new()).unwrap();
        let key = format!("child{i}");
        let mounts = s.prepare(&key, &merged, Labels::new()).unwrap();
        let mnt = scratch.join(format!("rw{i}"));
        std::fs::create_dir_all(&mnt).unwrap();
        lamina_core::sys::mount_all(&mounts, &mnt).unwrap();
        let result = std::panic::catch_unwind(|| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(mnt.join("a/x"), b"changed through the merge").unwrap();
            std::fs::OpenOptions::new()
                .append(true)
                .open(mnt.join("a/z"))
                .unwrap();
            std::fs::set_permissions(mnt.join("a/c/z"), std::fs::Permissions::from_mode(0o777))
                .unwrap();
            std::fs::remove_file(mnt.join("b/x")).unwrap();
            std::fs::remove_dir_all(mnt.join("a/c")).unwrap();
            std::fs::write(mnt.join("new"), b"n").unwrap();
        });
        lamina_core::sys::unmount(&mnt).unwrap();
        result.unwrap();
        s.commit(&format!("child{i}-done"), &key, Labels::new())
            .unwrap();
        let after: Vec<_> = sources
            .iter()
            .map(|n| view_manifest(&s, n, &scratch))
            .collect();
        for ((n, b), a) in sources.iter().zip(&before).zip(&after) {
            same(b, a, &format!("source {n} after writes on merge m{i}"));
        }
    }
    // A stacked merge holds its sources: they cannot go first.
    let err = s.remove(&l[1]).unwrap_err();
    assert!(
        matches!(err, lamina_core::Error::FailedPrecondition(_)),
        "{err}"
    );
    assert_eq!(
        s.dependencies("m0").unwrap(),
        vec![l[0].clone(), l[1].clone(), o[0].clone()]
    );
    s.remove("child0-done").unwrap();
    s.remove("m0").unwrap();
    s.remove(&l[1]).unwrap();
}

/// A hard-link merge costs no file data: its own usage leaves out what it linked in, and
/// disk usage across the store shows those files as shared with the sources, each inode
/// counted once.
#[test]
fn hard_link_merges_share_their_files_with_the_sources() {
    common::require_root("merge tests mount overlays and set owners");
    let t = common::tmp("lamina-merge-test-");
    let s = std::sync::Arc::new(store(&t.path().join("root")));
    let big = vec![7u8; 200_000];
    let mut tree = std::collections::BTreeSet::new();
    let tars = [
        layer_tar(
            &[Op::File {
                path: "a/big".into(),
                data: big.clone(),
                mode: 0o644,
            }],
            &mut tree,
        ),
        layer_tar(
            &[Op::File {
                path: "b/small".into(),
                data: b"s".to_vec(),
                mode: 0o644,
            }],
            &mut tree,
        ),
    ];
    let l = chain(&s, "l", &tars);
    let before = lamina_core::cache::CacheManager::open(s.clone())
        .unwrap()
        .disk_usage()
        .unwrap();
    let r = s
        .merge("m", &[DiffSpec::new("", &l[1])], Labels::new())
        .unwrap();
    assert_eq!(r.method, MergeMethod::HardLinked);
    assert!(
        r.usage.size < 100_000,
        "linked bytes are not the merge's own: {:?}",
        r.usage
    );
    assert_eq!(s.usage("m").unwrap(), r.usage);
    // The same, counted independently: every entry of the merged tree whose inode is not
    // one of the sources'.
    use std::os::unix::fs::MetadataExt;
    let trees = s.trees().unwrap();
    let tree_of = |name: &str| trees.iter().find(|(k, _, _)| k == name).unwrap().2.clone();
    let mut source_inodes = std::collections::HashSet::new();
    for name in &l {
        for e in walk(&tree_of(name)) {
            source_inodes.insert(std::fs::symlink_metadata(e).unwrap().ino());
        }
    }
    let (mut size, mut inodes) = (0i64, 0i64);
    for e in walk(&tree_of("m")) {
        let m = std::fs::symlink_metadata(e).unwrap();
        if !source_inodes.contains(&m.ino()) {
            size += m.blocks() as i64 * 512;
            inodes += 1;
        }
    }
    assert_eq!((r.usage.size, r.usage.inodes), (size, inodes));
    let after = lamina_core::cache::CacheManager::open(s.clone())
        .unwrap()
        .disk_usage()
        .unwrap();
    let of = |name: &str| {
        after
            .snapshots
            .iter()
            .find(|u| u.key == name)
            .unwrap()
            .clone()
    };
    assert!(of("m").shared >= 200_000, "{:?}", of("m"));
    assert!(of("l-0").shared >= 200_000, "{:?}", of("l-0"));
    assert!(of("m").exclusive < 100_000, "{:?}", of("m"));
    // The store grew by the merge's directories and inodes, not by the file's bytes.
    assert!(
        after.total - before.total < 100_000,
        "{} -> {}",
        before.total,
        after.total
    );
}

/// The native backend (no overlayfs) merges with hard links and diffs by comparing full
/// trees; the results match the exported diffs unpacked, as on overlayfs.
#[test]
fn native_backend_merges_and_diffs_match_exported_layers() {
    common::require_root("merge tests mount overlays and set owners");
    let t = common::tmp("lamina-merge-test-");
    let s =
        Snapshotter::open(StoreConfig::new(t.path().join("root"), BackendKind::Native)).unwrap();
    let scratch = t.path().join("scratch");
    let a_ops = vec![
        vec![
            Op::File {
                path: "a/x".into(),
                data: b"ax".to_vec(),
                mode: 0o644,
            },
            Op::File {
                path: "a/c/y".into(),
                data: b"acy".to_vec(),
                mode: 0o4755,
            },
            Op::HardLink {
                path: "b/z".into(),
                target: "a/x".into(),
            },
            Op::Symlink {
                path: "l".into(),
                target: "a/x".into(),
            },
        ],
        vec![
            Op::Delete {
                path: "a/c/y".into(),
            },
            Op::Opaque { dir: "b".into() },
            Op::File {
                path: "b/new".into(),
                data: b"bn".to_vec(),
                mode: 0o600,
            },
        ],
    ];
    let b_ops = vec![vec![
        Op::File {
            path: "a/x".into(),
            data: b"other".to_vec(),
            mode: 0o644,
        },
        Op::Dir {
            path: "a/c".into(),
            mode: 0o1777,
        },
    ]];
    let a = chain(&s, "a", &chain_tars(&a_ops));
    let b = chain(&s, "b", &chain_tars(&b_ops));
    let cases = [
        vec![DiffSpec::new("", &b[0]), DiffSpec::new("", &a[1])],
        vec![DiffSpec::new("", &b[0]), DiffSpec::new(&a[0], &a[1])],
        vec![
            DiffSpec::new("", &a[0]),
            DiffSpec::new(&a[0], &a[1]),
            DiffSpec::new("", &b[0]),
        ],
    ];
    for (i, diffs) in cases.iter().enumerate() {
        let key = format!("m{i}");
        let r = s.merge(&key, diffs, Labels::new()).unwrap();
        assert_eq!(r.method, MergeMethod::HardLinked);
        let expected = unpack_exports(&s, diffs, &format!("exp{i}"));
        same(
            &view_manifest(&s, &key, &scratch),
            &view_manifest(&s, &expected, &scratch),
            &format!("native merge {i} vs the exported diffs unpacked"),
        );
    }
    s.diff_snapshot("d", &a[0], &a[1], Labels::new()).unwrap();
    let err = s.prepare("on-d", "d", Labels::new()).unwrap_err();
    assert!(
        matches!(err, lamina_core::Error::FailedPrecondition(_)),
        "{err}"
    );
    s.merge(
        "md",
        &[DiffSpec::new("", &a[0]), DiffSpec::new("", "d")],
        Labels::new(),
    )
    .unwrap();
    same(
        &view_manifest(&s, "md", &scratch),
        &view_manifest(&s, &a[1], &scratch),
        "native merge of a0 and diff(a0, a1) vs a1",
    );
}
