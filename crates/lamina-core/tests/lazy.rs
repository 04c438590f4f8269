//! Lazy layers through a real FUSE mount: the mounted tree of a layer's table of contents
//! equals the same layer unpacked (entry by entry, contents included), works as an
//! overlayfs lower directory (whiteouts and opaque directories hide what is below), and
//! a failing data source gives readers EIO instead of hanging.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use lamina_core::fsutil::{manifest_differences, tree_manifest, EntryFacts};
use lamina_core::index::{build_index, BuildOptions, TocEntry};
use lamina_core::layer::{apply_layer, ApplyOptions};
use lamina_core::lazy::{AccessLog, LayerData, LazyMount, MountAccess, Tree};
use lamina_core::Mount;
use tar::{Builder, EntryType, Header};

const WHY: &str = "lazy-layer tests mount FUSE and overlay file systems";

fn header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(1000);
    h.set_gid(1001);
    h.set_mtime(1_700_000_000);
    h
}

/// A layer with every kind of entry, whiteouts and an opaque directory.
fn layer() -> Vec<u8> {
    let mut b = Builder::new(Vec::new());
    let dir = |b: &mut Builder<Vec<u8>>, p: &str, mode: u32| {
        let mut h = header(EntryType::Directory, mode, 0);
        b.append_data(&mut h, p, std::io::empty()).unwrap();
    };
    dir(&mut b, "etc/", 0o755);
    dir(&mut b, "usr/", 0o755);
    dir(&mut b, "usr/bin/", 0o755);
    dir(&mut b, "opq/", 0o700);
    // Pseudo-random, so gzip makes many deflate blocks (checkpoints sit between them).
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let big: Vec<u8> = (0..300_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 56) as u8
        })
        .collect();
    for (p, data, mode) in [
        ("etc/hosts", &b"127.0.0.1 localhost\n"[..], 0o644),
        ("usr/bin/tool", &big[..], 0o4755),
        ("opq/new", &b"new"[..], 0o600),
        ("empty", &b""[..], 0o644),
    ] {
        let mut h = header(EntryType::Regular, mode, data.len() as u64);
        b.append_data(&mut h, p, data).unwrap();
    }
    let mut h = header(EntryType::Symlink, 0o777, 0);
    b.append_link(&mut h, "usr/bin/alias", "tool").unwrap();
    let mut h = header(EntryType::Link, 0o755, 0);
    b.append_link(&mut h, "usr/bin/again", "usr/bin/tool")
        .unwrap();
    let mut h = header(EntryType::Fifo, 0o644, 0);
    b.append_data(&mut h, "etc/fifo", std::io::empty()).unwrap();
    let mut h = header(EntryType::Char, 0o666, 0);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    b.append_data(&mut h, "etc/null", std::io::empty()).unwrap();
    for wh in ["etc/.wh.shadow", "opq/.wh..wh..opq"] {
        let mut h = header(EntryType::Regular, 0o644, 0);
        b.append_data(&mut h, wh, std::io::empty()).unwrap();
    }
    b.into_inner().unwrap()
}

/// The table of contents of a plain tar, from its index: a file's data handle is where
/// its bytes start in the tar.
fn toc(tar: &[u8]) -> Vec<TocEntry> {
    build_index(tar, &BuildOptions::default()).unwrap().entries
}

/// The layer stream from memory, counting reads; fails every read when `broken`.
struct Memory {
    tar: Vec<u8>,
    reads: AtomicU64,
    broken: bool,
}

/// Bytes of `tar` from stream offset `data + offset`.
fn stream_read(tar: &[u8], data: u64, offset: u64, buf: &mut [u8]) -> usize {
    let start = ((data + offset) as usize).min(tar.len());
    let n = buf.len().min(tar.len() - start);
    buf[..n].copy_from_slice(&tar[start..start + n]);
    n
}

/// The stream `tar` served from memory (every read failing when `broken`).
fn memory(tar: Vec<u8>, broken: bool) -> Arc<Memory> {
    Arc::new(Memory {
        tar,
        reads: AtomicU64::new(0),
        broken,
    })
}

impl LayerData for Memory {
    fn read(&self, data: u64, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        if self.broken {
            return Err(std::io::Error::other("registry unreachable"));
        }
        Ok(stream_read(&self.tar, data, offset, buf))
    }
}

fn manifest(dir: &Path) -> BTreeMap<PathBuf, EntryFacts> {
    let mut m = tree_manifest(dir).unwrap();
    m.remove(Path::new("")); // the mount point's own root attributes differ
    m
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

fn overlay(lowers: &[&Path], target: &Path) {
    let lowerdir: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
    let m = Mount {
        kind: "overlay".into(),
        source: "overlay".into(),
        options: vec![
            "ro".into(),
            "index=off".into(),
            format!("lowerdir={}", lowerdir.join(":")),
        ],
    };
    lamina_core::sys::mount_all(&[m], target).unwrap();
}

#[test]
fn a_lazy_layer_equals_its_unpack_alone_and_under_an_overlay() {
    common::require_root(WHY);
    let t = common::tmp("lamina-lazy-test-");
    let tar = layer();
    let entries = toc(&tar);
    let data = memory(tar.clone(), false);
    let mnt = t.path().join("lazy");
    std::fs::create_dir(&mnt).unwrap();
    let lazy = LazyMount::mount(Arc::new(Tree::build(&entries)), data.clone(), &mnt).unwrap();
    // Nothing is read until a file is.
    let listing = manifest(&mnt);
    let unpacked = t.path().join("unpacked");
    std::fs::create_dir(&unpacked).unwrap();
    apply_layer(&tar[..], &unpacked, &ApplyOptions::default()).unwrap();
    same(
        &listing,
        &manifest(&unpacked),
        "lazy layer vs unpacked layer",
    );
    assert!(
        data.reads.load(Ordering::Relaxed) > 0,
        "contents were read for hashing"
    );
    let opaque =
        lamina_core::sys::get_xattr(&mnt.join("opq"), &"trusted.overlay.opaque".into()).unwrap();
    assert_eq!(opaque.as_deref(), Some(&b"y"[..]));
    // Random reads of the big file.
    let tool = std::fs::read(unpacked.join("usr/bin/tool")).unwrap();
    let f = std::fs::File::open(mnt.join("usr/bin/tool")).unwrap();
    for (offset, len) in [(0u64, 10usize), (131_071, 5000), (299_990, 100)] {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len];
        let n = f.read_at(&mut buf, offset).unwrap();
        let end = (offset as usize + len).min(tool.len());
        assert_eq!(&buf[..n], &tool[offset as usize..end]);
    }
    drop(f);
    assert!(
        std::fs::write(mnt.join("etc/hosts"), b"x").is_err(),
        "read-only"
    );

    // As the upper layer of an overlay: its whiteout and opaque dir hide the lower one's.
    let base = t.path().join("base");
    for (p, c) in [
        ("etc/shadow", "secret"),
        ("etc/keep", "k"),
        ("opq/old", "o"),
    ] {
        std::fs::create_dir_all(base.join(p).parent().unwrap()).unwrap();
        std::fs::write(base.join(p), c).unwrap();
    }
    let (via_lazy, via_unpack) = (t.path().join("ov-lazy"), t.path().join("ov-unpacked"));
    for d in [&via_lazy, &via_unpack] {
        std::fs::create_dir(d).unwrap();
    }
    overlay(&[&mnt, &base], &via_lazy);
    overlay(&[&unpacked, &base], &via_unpack);
    let (a, b) = (manifest(&via_lazy), manifest(&via_unpack));
    lamina_core::sys::unmount(&via_lazy).unwrap();
    lamina_core::sys::unmount(&via_unpack).unwrap();
    same(&a, &b, "overlay on the lazy layer vs on the unpacked layer");
    assert!(!a.contains_key(Path::new("etc/shadow")) && a.contains_key(Path::new("etc/keep")));
    assert!(!a.contains_key(Path::new("opq/old")) && a.contains_key(Path::new("opq/new")));
    drop(lazy);
    assert!(
        !lamina_core::sys::mount_points_under(t.path())
            .unwrap()
            .iter()
            .any(|m| m == &mnt),
        "unmounted on drop"
    );
}

/// A layer without any extended attribute: its mount answers "not supported" to every
/// getxattr (one answer from the server, then the kernel's own), which readers and
/// overlayfs take as "none"; listing says "none" as an unpacked layer's would.
#[test]
fn a_layer_without_xattrs_reads_as_having_none_alone_and_under_an_overlay() {
    common::require_root(WHY);
    let t = common::tmp("lamina-lazy-test-");
    let mut b = Builder::new(Vec::new());
    for d in ["etc/", "bin/"] {
        let mut h = header(EntryType::Directory, 0o755, 0);
        b.append_data(&mut h, d, std::io::empty()).unwrap();
    }
    for (p, data) in [
        ("etc/conf", &b"a=1\n"[..]),
        ("bin/run", &b"#!/bin/sh\n"[..]),
    ] {
        let mut h = header(EntryType::Regular, 0o755, data.len() as u64);
        b.append_data(&mut h, p, data).unwrap();
    }
    let mut h = header(EntryType::Regular, 0o644, 0);
    b.append_data(&mut h, "etc/.wh.gone", std::io::empty())
        .unwrap();
    let tar = b.into_inner().unwrap();
    let tree = Tree::build(&toc(&tar));
    assert!((1..=tree.len() as u64).all(|i| tree.node(i).is_none_or(|n| n.xattrs.is_empty())));
    let data = memory(tar.clone(), false);
    let mnt = t.path().join("lazy");
    std::fs::create_dir(&mnt).unwrap();
    let _lazy = LazyMount::mount(Arc::new(tree), data, &mnt).unwrap();
    let unpacked = t.path().join("unpacked");
    std::fs::create_dir(&unpacked).unwrap();
    apply_layer(&tar[..], &unpacked, &ApplyOptions::default()).unwrap();
    same(
        &manifest(&mnt),
        &manifest(&unpacked),
        "no-xattr layer vs its unpack",
    );
    for _ in 0..2 {
        for name in ["security.capability", "trusted.overlay.opaque", "user.x"] {
            let got = lamina_core::sys::get_xattr(&mnt.join("bin/run"), &name.into());
            assert!(matches!(got, Ok(None)), "{name}: {got:?}");
        }
    }
    assert!(lamina_core::sys::list_xattrs(&mnt.join("etc"))
        .unwrap()
        .is_empty());
    // That "none" is the kernel's own "not supported": no more requests reach the server.
    let raw = rustix::fs::lgetxattr(mnt.join("etc/conf"), "user.y", &mut [0u8; 16][..]);
    assert_eq!(raw, Err(rustix::io::Errno::NOTSUP));

    // Under a writable overlay: the whiteout hides the lower file, the files read, and
    // a write copies the file up (overlayfs lists and copies no xattrs).
    let base = t.path().join("base");
    std::fs::create_dir_all(base.join("etc")).unwrap();
    std::fs::write(base.join("etc/gone"), "x").unwrap();
    std::fs::write(base.join("etc/kept"), "k").unwrap();
    let (upper, work, merged) = (t.path().join("u"), t.path().join("w"), t.path().join("m"));
    for d in [&upper, &work, &merged] {
        std::fs::create_dir(d).unwrap();
    }
    let m = Mount {
        kind: "overlay".into(),
        source: "overlay".into(),
        options: vec![
            "index=off".into(),
            format!("lowerdir={}:{}", mnt.display(), base.display()),
            format!("upperdir={}", upper.display()),
            format!("workdir={}", work.display()),
        ],
    };
    lamina_core::sys::mount_all(&[m], &merged).unwrap();
    let seen = (|| -> std::io::Result<_> {
        let gone = merged.join("etc/gone").symlink_metadata().is_err();
        let kept = std::fs::read_to_string(merged.join("etc/kept"))?;
        let conf = std::fs::read_to_string(merged.join("etc/conf"))?;
        let xattr = lamina_core::sys::get_xattr(&merged.join("etc/conf"), &"user.x".into())
            .map_err(std::io::Error::other)?;
        std::fs::write(merged.join("etc/conf"), "a=2\n")?;
        Ok((
            gone,
            kept,
            conf,
            xattr,
            std::fs::read_to_string(merged.join("etc/conf"))?,
        ))
    })();
    lamina_core::sys::unmount(&merged).unwrap();
    let (gone, kept, conf, xattr, after) = seen.unwrap();
    assert!(gone, "the whiteout hides etc/gone");
    assert_eq!((kept.as_str(), conf.as_str()), ("k", "a=1\n"));
    assert_eq!(xattr, None);
    assert_eq!(after, "a=2\n");
    assert_eq!(
        std::fs::read_to_string(upper.join("etc/conf")).unwrap(),
        "a=2\n"
    );
    assert_eq!(
        std::fs::read_to_string(unpacked.join("etc/conf")).unwrap(),
        "a=1\n",
        "the lazy layer is untouched"
    );
}

/// First reads are noted in order, once each, whether the bytes came from a read thread
/// or from what is local; a lookup or a stat is no read.
#[test]
fn first_reads_are_recorded_in_order() {
    common::require_root(WHY);
    let t = common::tmp("lamina-lazy-test-");
    let tar = layer();
    let tree = Arc::new(Tree::build(&toc(&tar)));
    let data = memory(tar, false);
    let mnt = t.path().join("lazy");
    std::fs::create_dir(&mnt).unwrap();
    let log = Arc::new(AccessLog::new(tree.len()));
    let _lazy = LazyMount::mount_recording(
        tree.clone(),
        data,
        &mnt,
        MountAccess::RootOnly,
        Some(log.clone()),
    )
    .unwrap();
    std::fs::metadata(mnt.join("opq/new")).unwrap();
    for p in ["usr/bin/tool", "etc/hosts", "usr/bin/tool", "usr/bin/again"] {
        std::fs::read(mnt.join(p)).unwrap();
    }
    let inos: Vec<u64> = log.take().into_iter().map(|(_, ino)| ino).collect();
    let paths: Vec<Option<PathBuf>> = tree.paths(&inos);
    assert_eq!(
        paths,
        [Some("usr/bin/tool".into()), Some("etc/hosts".into())],
        "usr/bin/again is the same file as usr/bin/tool; opq/new was only looked up"
    );
}

#[test]
fn a_failing_data_source_gives_readers_eio() {
    common::require_root(WHY);
    let t = common::tmp("lamina-lazy-test-");
    let tar = layer();
    let entries = toc(&tar);
    let data = memory(tar, true);
    let mnt = t.path().join("lazy");
    std::fs::create_dir(&mnt).unwrap();
    let _lazy = LazyMount::mount(Arc::new(Tree::build(&entries)), data, &mnt).unwrap();
    // Metadata needs no data source; contents do.
    assert_eq!(
        std::fs::metadata(mnt.join("usr/bin/tool")).unwrap().len(),
        300_000
    );
    let err = std::fs::read(mnt.join("etc/hosts")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
}

/// A source whose bytes of the file starting at `slow` wait until released.
struct Gated {
    tar: Vec<u8>,
    slow: u64,
    open: std::sync::Mutex<bool>,
    cv: std::sync::Condvar,
}

impl LayerData for Gated {
    fn read(&self, data: u64, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        if data == self.slow {
            let mut open = self.open.lock().unwrap();
            while !*open {
                open = self.cv.wait(open).unwrap();
            }
        }
        Ok(stream_read(&self.tar, data, offset, buf))
    }
}

/// A read waiting on the network holds up neither lookups nor other files' reads.
#[test]
fn a_slow_read_does_not_stall_the_rest_of_the_layer() {
    common::require_root(WHY);
    let t = common::tmp("lamina-lazy-test-");
    let tar = layer();
    let entries = toc(&tar);
    let slow = entries
        .iter()
        .find(|e| e.path == Path::new("etc/hosts"))
        .and_then(|e| e.data_offset)
        .unwrap();
    let data = Arc::new(Gated {
        tar,
        slow,
        open: std::sync::Mutex::new(false),
        cv: std::sync::Condvar::new(),
    });
    let mnt = t.path().join("lazy");
    std::fs::create_dir(&mnt).unwrap();
    let lazy = LazyMount::mount(Arc::new(Tree::build(&entries)), data.clone(), &mnt).unwrap();
    let slow_path = mnt.join("etc/hosts");
    let slow = std::thread::spawn(move || std::fs::read(slow_path).unwrap());
    std::thread::sleep(std::time::Duration::from_millis(200)); // let it block in the source
    let (tx, rx) = std::sync::mpsc::channel();
    let other = mnt.join("usr/bin/tool");
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::read(other).map(|b| b.len()));
    });
    // A deadlock guard, not a performance bound: a single-threaded server never answers.
    let got = rx.recv_timeout(std::time::Duration::from_secs(30));
    *data.open.lock().unwrap() = true;
    data.cv.notify_all();
    assert_eq!(got.expect("read of another file stalled").unwrap(), 300_000);
    assert_eq!(slow.join().unwrap(), b"127.0.0.1 localhost\n");
    drop(lazy);
}

/// The whole lazy stack from a compressed blob: its seekable index (gzip checkpoints),
/// the tree from the index, the chunk cache filled through the index from the blob, the
/// FUSE mount: equal to the unpack, and after a remount (a restart) served from the cache.
#[test]
fn a_gzip_layer_served_through_its_index_equals_its_unpack() {
    use lamina_core::index::IndexedLayer;
    use lamina_core::lazy::{indexed, ChunkCache, IndexedStream};
    common::require_root(WHY);
    let t = common::tmp("lamina-lazy-test-");
    let tar = layer();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    let blob_path = t.path().join("blob.gz");
    std::fs::write(&blob_path, gz.finish().unwrap()).unwrap();
    let opts = BuildOptions {
        span: 64 << 10,
        ..BuildOptions::default()
    };
    let index = build_index(std::fs::File::open(&blob_path).unwrap(), &opts).unwrap();
    assert!(
        index.checkpoints.len() > 2,
        "{} checkpoints",
        index.checkpoints.len()
    );
    indexed::check(&index).unwrap();
    let entries = index.entries.clone();
    let len = index.uncompressed_size;
    let unpacked = t.path().join("unpacked");
    std::fs::create_dir(&unpacked).unwrap();
    apply_layer(&tar[..], &unpacked, &ApplyOptions::default()).unwrap();
    let expected = manifest(&unpacked);
    let tree = Arc::new(Tree::build(&entries));
    let mnt = t.path().join("lazy");
    std::fs::create_dir(&mnt).unwrap();
    let mut fetched = 0;
    for round in 0..2 {
        let stream = IndexedStream::new(
            IndexedLayer::new(index.clone()).unwrap(),
            std::fs::File::open(&blob_path).unwrap(),
        );
        let cache = Arc::new(
            ChunkCache::open(&t.path().join("cache"), Arc::new(stream), len, 32 << 10).unwrap(),
        );
        if round == 1 {
            assert_eq!(cache.progress().0, fetched, "the cache outlived the mount");
        }
        let lazy = LazyMount::mount(tree.clone(), cache.clone(), &mnt).unwrap();
        same(
            &manifest(&mnt),
            &expected,
            &format!("indexed lazy layer (round {round})"),
        );
        fetched = cache.progress().0;
        drop(lazy);
    }
}

/// `cat PATH` as uid/gid 1000 with no supplementary groups: its stdout, or its stderr.
fn cat_as_user(path: &Path) -> Result<Vec<u8>, String> {
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=1000", "--regid=1000", "--clear-groups", "cat"])
        .arg(path)
        .output()
        .expect("run setpriv (util-linux)");
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Without allow_other (the default) only root may use a lazy layer's FUSE mount
/// directly; an overlayfs mount stacking it still serves every user, because overlayfs
/// reads its lower layers with its mounter's (root's) credentials. With allow_other
/// (`MountAccess::AllUsers`) other users may read the mount directly.
#[test]
fn a_lazy_mount_is_root_only_but_its_overlay_serves_every_user() {
    use std::os::unix::fs::PermissionsExt;
    common::require_root(WHY);
    // In the system temp dir, not $LAMINA_TEST_DIR: uid 1000 must be able to walk to it.
    let t = tempfile::Builder::new()
        .prefix("lamina-lazy-access-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let tar = layer();
    let entries = toc(&tar);
    let tree = Arc::new(Tree::build(&entries));
    let data = memory(tar, false);
    let hosts = b"127.0.0.1 localhost\n".to_vec(); // etc/hosts, mode 0644
    for (access, dir) in [
        (MountAccess::RootOnly, "root-only"),
        (MountAccess::AllUsers, "all-users"),
    ] {
        let mnt = t.path().join(dir).join("lazy");
        let merged = t.path().join(dir).join("merged");
        std::fs::create_dir_all(&mnt).unwrap();
        std::fs::create_dir_all(&merged).unwrap();
        let lazy = LazyMount::mount_with(tree.clone(), data.clone(), &mnt, access).unwrap();
        assert_eq!(
            std::fs::read(mnt.join("etc/hosts")).unwrap(),
            hosts,
            "{dir}: root reads the mount directly"
        );
        let direct = cat_as_user(&mnt.join("etc/hosts"));
        match access {
            MountAccess::RootOnly => {
                let err = direct.expect_err("uid 1000 read a root-only lazy mount directly");
                assert!(err.contains("Permission denied"), "{dir}: {err}");
            }
            MountAccess::AllUsers => assert_eq!(direct.unwrap(), hosts, "{dir}: uid 1000 reads"),
        }
        // As a container's rootfs: the lazy layer under a writable upper directory.
        let (upper, work) = (
            t.path().join(dir).join("upper"),
            t.path().join(dir).join("work"),
        );
        std::fs::create_dir_all(&upper).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        let rootfs = Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                "index=off".into(),
                format!("lowerdir={}", mnt.display()),
                format!("upperdir={}", upper.display()),
                format!("workdir={}", work.display()),
            ],
        };
        lamina_core::sys::mount_all(&[rootfs], &merged).unwrap();
        let through = cat_as_user(&merged.join("etc/hosts"));
        lamina_core::sys::unmount(&merged).unwrap();
        assert_eq!(
            through.unwrap_or_else(|e| panic!("{dir}: uid 1000 through the overlay: {e}")),
            hosts,
            "{dir}: uid 1000 reads the layer through an overlay mount"
        );
        drop(lazy);
    }
}
