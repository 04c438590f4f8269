//! The snapshot store used as a Rust library: semantics, deep layer stacks and crash
//! leftovers. These tests mount filesystems and must run as root.

use std::path::Path;

use lamina_core::{BackendKind, Error, Kind, Labels, Snapshotter, StoreConfig};

fn require_root() {
    let uid = rustix::process::geteuid();
    assert!(
        uid.is_root(),
        "this test mounts filesystems and must run as root (uid {})",
        uid.as_raw()
    );
}

fn open(dir: &Path, backend: BackendKind) -> Snapshotter {
    Snapshotter::open(StoreConfig::new(dir.join("root"), backend)).expect("open store")
}

fn tmp() -> tempfile::TempDir {
    let base = std::env::var_os("LAMINA_TEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    tempfile::Builder::new()
        .prefix("lamina-core-test-")
        .tempdir_in(base)
        .unwrap()
}

/// Writes `files` into a new layer on `parent` through a real mount, commits it as `name`.
fn layer(s: &Snapshotter, mnt: &Path, name: &str, parent: &str, files: &[(&str, &str)]) {
    let key = format!("{name}-active");
    let mounts = s.prepare(&key, parent, Labels::new()).unwrap();
    std::fs::create_dir_all(mnt).unwrap();
    lamina_core::sys::mount_all(&mounts, mnt).unwrap();
    for (f, content) in files {
        std::fs::write(mnt.join(f), content).unwrap();
    }
    lamina_core::sys::unmount(mnt).unwrap();
    s.commit(name, &key, Labels::new()).unwrap();
}

#[test]
fn two_hundred_layers_mount_past_the_page_limit() {
    require_root();
    let t = tmp();
    let s = open(t.path(), BackendKind::Overlayfs);
    let mnt = t.path().join("mnt");
    let mut parent = String::new();
    for i in 0..200 {
        let name = format!("layer-with-a-fairly-long-name-{i:03}");
        layer(
            &s,
            &mnt,
            &name,
            &parent,
            &[(&format!("f{i}"), &format!("{i}"))],
        );
        parent = name;
    }
    let mounts = s.view("top", &parent, Labels::new()).unwrap();
    let options: usize = mounts[0].options.iter().map(String::len).sum();
    assert!(
        options > 4096,
        "the lowerdir option ({options} bytes) must exceed one page for this test to mean anything"
    );
    lamina_core::sys::mount_all(&mounts, &mnt).unwrap();
    let seen = (0..200)
        .filter(|i| std::fs::read_to_string(mnt.join(format!("f{i}"))).ok() == Some(i.to_string()))
        .count();
    let readonly = std::fs::write(mnt.join("nope"), b"x").is_err();
    lamina_core::sys::unmount(&mnt).unwrap();
    assert_eq!(
        seen, 200,
        "every layer's file is visible through the 200-layer overlay"
    );
    assert!(readonly, "a view is read-only");
}

#[test]
fn native_backend_copies_parents_and_isolates_children() {
    require_root();
    let t = tmp();
    let s = open(t.path(), BackendKind::Native);
    let mnt = t.path().join("mnt");
    layer(&s, &mnt, "base", "", &[("a", "1"), ("b", "2")]);
    let mounts = s.prepare("child", "base", Labels::new()).unwrap();
    lamina_core::sys::mount_all(&mounts, &mnt).unwrap();
    assert_eq!(std::fs::read_to_string(mnt.join("a")).unwrap(), "1");
    std::fs::write(mnt.join("a"), "changed").unwrap();
    std::fs::remove_file(mnt.join("b")).unwrap();
    lamina_core::sys::unmount(&mnt).unwrap();
    let view = s.view("look", "base", Labels::new()).unwrap();
    lamina_core::sys::mount_all(&view, &mnt).unwrap();
    let a = std::fs::read_to_string(mnt.join("a")).unwrap();
    let b_exists = mnt.join("b").exists();
    let readonly = std::fs::write(mnt.join("x"), b"x").is_err();
    lamina_core::sys::unmount(&mnt).unwrap();
    assert_eq!(a, "1", "parent unchanged by the child's writes");
    assert!(b_exists, "parent unchanged by the child's deletes");
    assert!(readonly, "native views are read-only");
}

#[test]
fn semantics_as_a_library() {
    require_root();
    let t = tmp();
    let s = open(t.path(), BackendKind::Overlayfs);
    let mnt = t.path().join("mnt");
    layer(&s, &mnt, "base", "", &[("a", "1")]);
    assert!(matches!(
        Snapshotter::open(StoreConfig::new(
            t.path().join("root"),
            BackendKind::Overlayfs
        )),
        Err(Error::RootLocked { .. })
    ));
    s.prepare(
        "a1",
        "base",
        Labels::from([("l".to_string(), "1".to_string())]),
    )
    .unwrap();
    assert_eq!(s.stat("a1").unwrap().kind, Kind::Active);
    assert_eq!(s.stat("base").unwrap().kind, Kind::Committed);
    assert!(matches!(
        s.commit("v", "nope", Labels::new()),
        Err(Error::NotFound { .. })
    ));
    let names: Vec<String> = s
        .list(&["labels.l==1"])
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, ["a1"]);
    let u = s.usage("base").unwrap();
    assert!(
        u.inodes >= 2 && u.size > 0,
        "committed usage recorded: {u:?}"
    );
    s.remove("a1").unwrap();
    s.remove("base").unwrap();
    assert!(s.list::<&str>(&[]).unwrap().is_empty());
    let left: Vec<_> = std::fs::read_dir(t.path().join("root/snapshots"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "removed snapshots leave no directories");
}

#[test]
fn leftovers_are_cleaned_and_ids_never_reused() {
    require_root();
    let t = tmp();
    {
        let s = open(t.path(), BackendKind::Overlayfs);
        s.prepare("keep", "", Labels::new()).unwrap();
        s.close();
    }
    // What a crash between directory creation and record commit leaves behind.
    std::fs::create_dir_all(t.path().join("root/snapshots/500/fs")).unwrap();
    std::fs::create_dir_all(t.path().join("root/snapshots/junk")).unwrap();
    let s = open(t.path(), BackendKind::Overlayfs);
    assert!(!t.path().join("root/snapshots/500").exists());
    assert!(!t.path().join("root/snapshots/junk").exists());
    let m = s.prepare("new", "", Labels::new()).unwrap();
    assert!(
        m[0].source.contains("/snapshots/501/"),
        "ids continue past any seen directory: {m:?}"
    );
    assert_eq!(
        s.cleanup().unwrap().removed,
        0,
        "nothing referenced is removed"
    );
    assert!(s.stat("keep").is_ok());
}

/// Found by the crash harness: a pull killed while it applied a layer left the apply's
/// working snapshot (a key nobody else knows) as an orphaned active snapshot for good.
#[test]
fn an_interrupted_layer_apply_leaves_no_snapshot_after_a_restart() {
    require_root();
    let t = tmp();
    for backend in [BackendKind::Overlayfs, BackendKind::Native] {
        let dir = t.path().join(backend.as_str());
        {
            let s = open(&dir, backend);
            s.prepare("base", "", Labels::new()).unwrap();
            // What the apply had made when the crash came.
            s.prepare(
                "lamina-apply/1795523195930636889/sha256:abc",
                "",
                Labels::new(),
            )
            .unwrap();
            s.close();
        }
        let s = open(&dir, backend);
        let mut keys = Vec::new();
        s.walk(&lamina_core::filter::Filter::default(), |info| {
            keys.push(info.name);
            true
        })
        .unwrap();
        assert_eq!(keys, ["base"], "{backend:?}");
        let dirs = std::fs::read_dir(dir.join("root/snapshots"))
            .unwrap()
            .count();
        assert_eq!(dirs, 1, "{backend:?}: one directory per snapshot");
    }
}

#[test]
fn removing_a_snapshot_never_deletes_through_a_mount() {
    require_root();
    let t = tmp();
    let s = open(t.path(), BackendKind::Native);
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("precious"), b"keep me").unwrap();
    let mounts = s.prepare("rootfs", "", Labels::new()).unwrap();
    // A mount that ended up inside the snapshot's tree, e.g. by propagation from a container.
    let inside = Path::new(&mounts[0].source).join("proc");
    std::fs::create_dir(&inside).unwrap();
    let bind = lamina_core::Mount {
        kind: "bind".into(),
        source: outside.to_string_lossy().into_owned(),
        options: vec!["rw".into(), "rbind".into()],
    };
    lamina_core::sys::mount_all(&[bind], &inside).unwrap();
    s.remove("rootfs").unwrap();
    assert_eq!(std::fs::read(outside.join("precious")).unwrap(), b"keep me");
    assert!(
        !Path::new(&mounts[0].source).exists(),
        "snapshot directory removed"
    );
}

#[test]
fn a_mounted_layer_commits_only_once_it_is_filled() {
    require_root();
    let t = tmp();
    let s = open(t.path(), BackendKind::Overlayfs);
    layer(&s, &t.path().join("m0"), "base", "", &[("a", "base")]);
    let base_fs = s.snapshot_dir("base").unwrap().join("fs");

    // The filler gets the new layer's directories and the lowers; what it puts in the
    // file tree (here a bind mount of a directory, standing in for a lazy layer's FUSE
    // mount) is the layer.
    let src = t.path().join("provided");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("b"), "provided").unwrap();
    let mut seen_lowers = Vec::new();
    s.commit_mounted(
        "top",
        "base",
        Labels::new(),
        Default::default(),
        |dir, fs, lowers| {
            assert_eq!(fs, dir.join("fs"));
            assert!(dir.starts_with(t.path()));
            seen_lowers = lowers.to_vec();
            lamina_core::sys::mount_all(
                &[lamina_core::Mount {
                    kind: "bind".into(),
                    source: src.display().to_string(),
                    options: vec!["rbind".into(), "ro".into()],
                }],
                fs,
            )
        },
    )
    .unwrap();
    assert_eq!(seen_lowers, vec![base_fs]);
    assert_eq!(s.stat("top").unwrap().kind, Kind::Committed);
    let mnt = t.path().join("m1");
    std::fs::create_dir(&mnt).unwrap();
    lamina_core::sys::mount_all(&s.view("v", "top", Labels::new()).unwrap(), &mnt).unwrap();
    assert_eq!(std::fs::read_to_string(mnt.join("a")).unwrap(), "base");
    assert_eq!(std::fs::read_to_string(mnt.join("b")).unwrap(), "provided");
    lamina_core::sys::unmount(&mnt).unwrap();

    // Removing it detaches the mount; the provided directory is untouched.
    let top_dir = s.snapshot_dir("top").unwrap();
    s.remove("v").unwrap();
    s.remove("top").unwrap();
    assert!(!top_dir.exists());
    assert_eq!(std::fs::read_to_string(src.join("b")).unwrap(), "provided");

    // A filler that fails leaves neither a record nor a directory (nor its mount).
    let count = || {
        std::fs::read_dir(t.path().join("root/snapshots"))
            .unwrap()
            .count()
    };
    let before = count();
    let err = s
        .commit_mounted(
            "broken",
            "base",
            Labels::new(),
            Default::default(),
            |_, fs, _| {
                lamina_core::sys::mount_all(
                    &[lamina_core::Mount {
                        kind: "bind".into(),
                        source: src.display().to_string(),
                        options: vec!["rbind".into()],
                    }],
                    fs,
                )?;
                Err(Error::FailedPrecondition("server did not start".into()))
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("server did not start"), "{err}");
    assert!(s.stat("broken").is_err());
    assert_eq!(before, count(), "the failed layer's directory is gone");
    assert_eq!(std::fs::read_to_string(src.join("b")).unwrap(), "provided");

    // A missing parent, and an existing name, are refused before anything is made.
    let refused = s.commit_mounted("x", "nope", Labels::new(), Default::default(), |_, _, _| {
        panic!("not called")
    });
    assert!(
        matches!(refused, Err(Error::NotFound { .. })),
        "{refused:?}"
    );
    let refused = s.commit_mounted("base", "", Labels::new(), Default::default(), |_, _, _| {
        panic!("not called")
    });
    assert!(
        matches!(refused, Err(Error::AlreadyExists { .. })),
        "{refused:?}"
    );
}

/// The EROFS mounts below `dir`, from /proc/self/mounts.
fn erofs_mounts_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(2) == Some("erofs"))
        .filter_map(|l| l.split(' ').nth(1).map(str::to_owned))
        .filter(|m| Path::new(m).starts_with(dir))
        .collect()
}

#[test]
fn block_backend_keeps_committed_layers_as_mounted_erofs_images() {
    require_root();
    let t = tmp();
    let root = t.path().join("root");
    let s = open(t.path(), BackendKind::Block);
    let mnt = t.path().join("mnt");
    layer(&s, &mnt, "base", "", &[("a", "base"), ("b", "gone soon")]);
    // A child layer deletes b (an overlay whiteout, kept in its image) and adds c.
    let mounts = s.prepare("top-active", "base", Labels::new()).unwrap();
    lamina_core::sys::mount_all(&mounts, &mnt).unwrap();
    std::fs::remove_file(mnt.join("b")).unwrap();
    std::fs::write(mnt.join("c"), "top").unwrap();
    lamina_core::sys::unmount(&mnt).unwrap();
    s.commit("top", "top-active", Labels::new()).unwrap();

    let top_dir = s.snapshot_dir("top").unwrap();
    let image = top_dir.join("layer.erofs");
    assert!(
        std::fs::metadata(&image).unwrap().len() > 0,
        "the committed layer is an image file"
    );
    assert_eq!(
        erofs_mounts_under(&root).len(),
        2,
        "each committed layer mounted from its image"
    );
    let u = s.usage("top").unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        u.size,
        std::fs::metadata(&image).unwrap().blocks() as i64 * 512
    );
    assert!(u.inodes >= 3, "{u:?}");

    let view = |s: &Snapshotter| {
        lamina_core::sys::mount_all(&s.view("look", "top", Labels::new()).unwrap(), &mnt).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&mnt)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let c = std::fs::read_to_string(mnt.join("c")).unwrap();
        lamina_core::sys::unmount(&mnt).unwrap();
        s.remove("look").unwrap();
        (names, c)
    };
    assert_eq!(
        view(&s),
        (vec!["a".to_string(), "c".to_string()], "top".to_string())
    );

    // A reboot loses the mounts: the store mounts every image again when it opens.
    s.close();
    for m in erofs_mounts_under(&root) {
        lamina_core::sys::unmount(Path::new(&m)).unwrap();
    }
    let s = open(t.path(), BackendKind::Block);
    assert_eq!(erofs_mounts_under(&root).len(), 2);
    assert_eq!(
        view(&s),
        (vec!["a".to_string(), "c".to_string()], "top".to_string())
    );

    // Hard-link merges cannot link across images: refused, nothing made.
    let refused = s.diff_snapshot("d", "base", "top", Labels::new());
    assert!(
        matches!(refused, Err(Error::FailedPrecondition(_))),
        "{refused:?}"
    );

    // Removing everything leaves no mount, image or directory.
    s.remove("top").unwrap();
    s.remove("base").unwrap();
    assert!(erofs_mounts_under(&root).is_empty());
    assert_eq!(
        std::fs::read_dir(root.join("snapshots")).unwrap().count(),
        0
    );
}

/// Loop devices whose backing file lies below `dir`.
fn loop_devices_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/sys/block").unwrap() {
        let p = e.unwrap().path().join("loop/backing_file");
        if let Ok(f) = std::fs::read_to_string(&p) {
            if Path::new(f.trim().trim_end_matches(" (deleted)")).starts_with(dir) {
                out.push(f.trim().to_owned());
            }
        }
    }
    out
}

#[test]
fn block_backend_writable_layer_quota_gives_enospc_and_leaves_nothing() {
    require_root();
    let t = tmp();
    let root = t.path().join("root");
    let s = open(t.path(), BackendKind::Block);
    let mnt = t.path().join("mnt");
    layer(&s, &mnt, "base", "", &[("a", "base")]);
    let labels = Labels::from([(lamina_core::QUOTA_LABEL.to_string(), "16M".to_string())]);
    let mounts = s.prepare("work", "base", labels).unwrap();
    assert_eq!(
        loop_devices_under(&root).len(),
        1,
        "one loop device for the image"
    );
    lamina_core::sys::mount_all(&mounts, &mnt).unwrap();
    std::fs::write(mnt.join("small"), "fits").unwrap();
    // Writing past the quota fails with ENOSPC, inside the layer only.
    let big = vec![7u8; 1 << 20];
    let mut f = std::fs::File::create(mnt.join("big")).unwrap();
    let err = (0..32)
        .try_for_each(|_| std::io::Write::write_all(&mut f, &big).and_then(|()| f.sync_data()))
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    drop(f);
    std::fs::remove_file(mnt.join("big")).unwrap();
    lamina_core::sys::unmount(&mnt).unwrap();

    // A reboot: every mount gone; opening the store mounts the writable image again.
    s.close();
    for m in lamina_core::sys::mount_points_under(&root).unwrap() {
        lamina_core::sys::unmount_detach(&m).unwrap();
    }
    let s = open(t.path(), BackendKind::Block);
    lamina_core::sys::mount_all(&s.mounts("work").unwrap(), &mnt).unwrap();
    assert_eq!(std::fs::read_to_string(mnt.join("small")).unwrap(), "fits");
    assert_eq!(std::fs::read_to_string(mnt.join("a")).unwrap(), "base");
    lamina_core::sys::unmount(&mnt).unwrap();

    // Commit: the writable image gives way to a layer image.
    s.commit("done", "work", Labels::new()).unwrap();
    let dir = s.snapshot_dir("done").unwrap();
    assert!(dir.join("layer.erofs").is_file());
    assert!(!dir.join("rw.img").exists());
    // The loop device clears itself once its last mount is gone (asynchronously).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !loop_devices_under(&root).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        loop_devices_under(&root).is_empty(),
        "{:?}",
        loop_devices_under(&root)
    );

    // A quota on another backend, or an unreadable size, is refused.
    let bad = s.prepare(
        "x",
        "base",
        Labels::from([(lamina_core::QUOTA_LABEL.to_string(), "lots".to_string())]),
    );
    assert!(matches!(bad, Err(Error::InvalidArgument(_))), "{bad:?}");

    // Removed with a quota'd child still prepared: nothing of Lamina's is left.
    s.prepare(
        "w2",
        "done",
        Labels::from([(lamina_core::QUOTA_LABEL.to_string(), "8M".to_string())]),
    )
    .unwrap();
    for key in ["w2", "done", "base"] {
        s.remove(key).unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !loop_devices_under(&root).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(loop_devices_under(&root).is_empty());
    assert!(lamina_core::sys::mount_points_under(&root)
        .unwrap()
        .is_empty());
    assert_eq!(
        std::fs::read_dir(root.join("snapshots")).unwrap().count(),
        0
    );
}

#[test]
fn an_overlayfs_store_seals_labelled_layers_into_images() {
    require_root();
    let t = tmp();
    let root = t.path().join("root");
    let s = open(t.path(), BackendKind::Overlayfs);
    let mnt = t.path().join("mnt");
    layer(&s, &mnt, "plain", "", &[("a", "plain")]);
    assert!(
        erofs_mounts_under(&root).is_empty(),
        "unlabelled layers stay directories"
    );
    let labels = Labels::from([(lamina_core::BLOCK_LABEL.to_string(), "true".to_string())]);
    let mounts = s.prepare("sealed-active", "plain", labels).unwrap();
    lamina_core::sys::mount_all(&mounts, &mnt).unwrap();
    std::fs::write(mnt.join("b"), "sealed").unwrap();
    lamina_core::sys::unmount(&mnt).unwrap();
    s.commit("sealed", "sealed-active", Labels::new()).unwrap();
    assert!(s
        .snapshot_dir("sealed")
        .unwrap()
        .join("layer.erofs")
        .is_file());
    assert_eq!(erofs_mounts_under(&root).len(), 1);
    lamina_core::sys::mount_all(&s.view("v", "sealed", Labels::new()).unwrap(), &mnt).unwrap();
    assert_eq!(std::fs::read_to_string(mnt.join("a")).unwrap(), "plain");
    assert_eq!(std::fs::read_to_string(mnt.join("b")).unwrap(), "sealed");
    lamina_core::sys::unmount(&mnt).unwrap();
    for key in ["v", "sealed", "plain"] {
        s.remove(key).unwrap();
    }
    assert!(erofs_mounts_under(&root).is_empty());
    // The native backend has no layers to stack: quotas are refused there.
    let n = Snapshotter::open(StoreConfig::new(
        t.path().join("native"),
        BackendKind::Native,
    ))
    .unwrap();
    let refused = n.prepare(
        "q",
        "",
        Labels::from([(lamina_core::QUOTA_LABEL.to_string(), "16M".to_string())]),
    );
    assert!(
        matches!(refused, Err(Error::InvalidArgument(_))),
        "{refused:?}"
    );
}
