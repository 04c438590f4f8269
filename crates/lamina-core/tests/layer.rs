//! The layer applier against well-formed and hostile layers. Runs as root (owners,
//! device nodes, trusted xattrs).

mod common;

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use lamina_core::fsutil::{manifest_differences, tree_manifest};
use lamina_core::layer::{
    apply_layer, write_diff, ApplyOptions, Compression, DiffSource, Digest, LayerError,
    WhiteoutStyle,
};
use tar::{Builder, EntryType, Header};

fn header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(1000);
    h.set_gid(1001);
    h.set_mtime(1_600_000_000);
    h
}

fn file(b: &mut Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) {
    let mut h = header(EntryType::Regular, mode, data.len() as u64);
    b.append_data(&mut h, path, data).unwrap();
}

fn dir(b: &mut Builder<Vec<u8>>, path: &str, mode: u32) {
    let mut h = header(EntryType::Directory, mode, 0);
    b.append_data(&mut h, path, &[][..]).unwrap();
}

fn link(b: &mut Builder<Vec<u8>>, kind: EntryType, path: &str, target: &str) {
    let mut h = header(kind, 0o777, 0);
    b.append_link(&mut h, path, target).unwrap();
}

/// Appends an entry whose name is written raw into the header, bypassing the tar crate's
/// refusal of `..` (hostile layers do not ask for permission).
fn raw(b: &mut Builder<Vec<u8>>, kind: EntryType, name: &str, target: &str, data: &[u8]) {
    let mut h = header(kind, 0o644, data.len() as u64);
    let bytes = h.as_old_mut();
    bytes.name[..name.len()].copy_from_slice(name.as_bytes());
    bytes.linkname[..target.len()].copy_from_slice(target.as_bytes());
    h.set_cksum();
    b.append(&h, data).unwrap();
}

fn apply(
    tar: &[u8],
    dest: &Path,
    opts: &ApplyOptions,
) -> Result<lamina_core::layer::ApplyReport, LayerError> {
    apply_layer(tar, dest, opts)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(data, 3).unwrap()
}

fn every_entry_type() -> Vec<u8> {
    let mut b = Builder::new(Vec::new());
    dir(&mut b, "etc/", 0o755);
    file(&mut b, "etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644);
    file(&mut b, "bin/su", b"#!setuid", 0o4755);
    dir(&mut b, "tmp/", 0o1777);
    link(
        &mut b,
        EntryType::Symlink,
        "etc/localtime",
        "/usr/share/zoneinfo/UTC",
    );
    link(&mut b, EntryType::Link, "etc/passwd-hardlink", "etc/passwd");
    let long = format!("deep/{}/file", "n".repeat(150));
    file(&mut b, &long, b"long name", 0o600);
    let mut h = header(EntryType::Char, 0o666, 0);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    b.append_data(&mut h, "dev/null", &[][..]).unwrap();
    let mut h = header(EntryType::Block, 0o660, 0);
    h.set_device_major(7).unwrap();
    h.set_device_minor(0).unwrap();
    b.append_data(&mut h, "dev/loop0", &[][..]).unwrap();
    let mut h = header(EntryType::Fifo, 0o600, 0);
    b.append_data(&mut h, "run/fifo", &[][..]).unwrap();
    // PAX: an xattr and a sub-second mtime.
    b.append_pax_extensions([
        ("SCHILY.xattr.user.origin", &b"lamina"[..]),
        ("mtime", &b"1600000000.123456789"[..]),
    ])
    .unwrap();
    file(&mut b, "etc/with-xattr", b"x", 0o644);
    let mut sparse = vec![0u8; 1 << 20];
    sparse[(1 << 20) - 1] = 1;
    file(&mut b, "var/sparse", &sparse, 0o644);
    b.into_inner().unwrap()
}

#[test]
fn applies_every_entry_type_identically_from_tar_gzip_and_zstd() {
    common::require_root("layer tests set owners and create devices");
    let tar = every_entry_type();
    let mut reports = Vec::new();
    for (label, blob) in [
        ("tar", tar.clone()),
        ("gzip", gzip(&tar)),
        ("zstd", zstd(&tar)),
    ] {
        let t = common::tmp("lamina-layer-test-");
        let r = apply(&blob, t.path(), &ApplyOptions::default())
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        let p = t.path();
        assert_eq!(
            std::fs::read(p.join("etc/passwd")).unwrap(),
            b"root:x:0:0::/root:/bin/sh\n"
        );
        let su = std::fs::metadata(p.join("bin/su")).unwrap();
        assert_eq!(su.mode() & 0o7777, 0o4755, "{label}: setuid kept");
        assert_eq!((su.uid(), su.gid()), (1000, 1001), "{label}: owner");
        assert_eq!(
            std::fs::metadata(p.join("tmp")).unwrap().mode() & 0o7777,
            0o1777,
            "{label}: sticky"
        );
        assert_eq!(
            std::fs::read_link(p.join("etc/localtime")).unwrap(),
            Path::new("/usr/share/zoneinfo/UTC")
        );
        let a = std::fs::metadata(p.join("etc/passwd")).unwrap();
        let b = std::fs::metadata(p.join("etc/passwd-hardlink")).unwrap();
        assert_eq!(a.ino(), b.ino(), "{label}: hard link");
        assert_eq!(
            std::fs::read(p.join(format!("deep/{}/file", "n".repeat(150)))).unwrap(),
            b"long name"
        );
        let null = std::fs::symlink_metadata(p.join("dev/null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
        assert!(std::fs::symlink_metadata(p.join("dev/loop0"))
            .unwrap()
            .file_type()
            .is_block_device());
        assert!(std::fs::symlink_metadata(p.join("run/fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
        let x = std::fs::metadata(p.join("etc/with-xattr")).unwrap();
        assert_eq!(
            (x.mtime(), x.mtime_nsec()),
            (1_600_000_000, 123_456_789),
            "{label}: PAX mtime"
        );
        let v =
            lamina_core::sys::get_xattr(&p.join("etc/with-xattr"), &"user.origin".into()).unwrap();
        assert_eq!(v.as_deref(), Some(&b"lamina"[..]), "{label}: xattr");
        let etc = std::fs::metadata(p.join("etc")).unwrap();
        assert_eq!(
            etc.mtime(),
            1_600_000_000,
            "{label}: directory mtime set after its children"
        );
        let sparse = std::fs::metadata(p.join("var/sparse")).unwrap();
        assert_eq!(sparse.len(), 1 << 20);
        assert!(sparse.blocks() * 512 < (1 << 19), "{label}: holes kept");
        reports.push(r);
    }
    assert_eq!(reports[0].diff_id, Digest::of(&tar));
    assert!(reports
        .iter()
        .all(|r| r.diff_id == reports[0].diff_id && r.size == tar.len() as u64));
    assert_ne!(
        reports[1].digest, reports[1].diff_id,
        "digest is of the compressed blob"
    );
}

#[test]
fn overlay_whiteouts_become_devices_and_opaque_xattrs() {
    common::require_root("layer tests set owners and create devices");
    let t = common::tmp("lamina-layer-test-");
    let mut b = Builder::new(Vec::new());
    file(&mut b, "etc/.wh.shadow", b"", 0o644);
    dir(&mut b, "opq/", 0o755);
    file(&mut b, "opq/.wh..wh..opq", b"", 0o644);
    file(&mut b, "opq/new", b"n", 0o644);
    file(&mut b, ".wh..wh.plnk", b"", 0o644);
    let r = apply(&b.into_inner().unwrap(), t.path(), &ApplyOptions::default()).unwrap();
    let wh = std::fs::symlink_metadata(t.path().join("etc/shadow")).unwrap();
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "whiteout is a 0:0 char device"
    );
    let opq = lamina_core::sys::get_xattr(&t.path().join("opq"), &"trusted.overlay.opaque".into())
        .unwrap();
    assert_eq!(opq.as_deref(), Some(&b"y"[..]));
    assert!(t.path().join("opq/new").exists());
    assert!(!t.path().join(".wh..wh.plnk").exists());
    assert_eq!(r.entries, 5);
}

#[test]
fn delete_style_whiteouts_remove_lower_content() {
    common::require_root("layer tests set owners and create devices");
    let t = common::tmp("lamina-layer-test-");
    let p = t.path();
    std::fs::create_dir_all(p.join("gone/sub")).unwrap();
    std::fs::write(p.join("gone/sub/f"), b"x").unwrap();
    std::fs::create_dir_all(p.join("opq")).unwrap();
    std::fs::write(p.join("opq/old"), b"old").unwrap();
    std::fs::write(p.join("keep"), b"k").unwrap();
    let mut b = Builder::new(Vec::new());
    file(&mut b, ".wh.gone", b"", 0o644);
    file(&mut b, "opq/new-before", b"1", 0o644);
    file(&mut b, "opq/.wh..wh..opq", b"", 0o644);
    file(&mut b, "opq/new-after", b"2", 0o644);
    let opts = ApplyOptions {
        whiteouts: WhiteoutStyle::Delete,
        ..Default::default()
    };
    apply(&b.into_inner().unwrap(), p, &opts).unwrap();
    assert!(!p.join("gone").exists());
    assert!(
        !p.join("opq/old").exists(),
        "opaque dir hides lower content"
    );
    assert!(
        p.join("opq/new-before").exists() && p.join("opq/new-after").exists(),
        "this layer's entries stay"
    );
    assert!(p.join("keep").exists());
}

#[test]
fn hard_link_to_a_lower_layer_file_copies_it_up() {
    common::require_root("layer tests set owners and create devices");
    let t = common::tmp("lamina-layer-test-");
    let lower = t.path().join("lower");
    let upper = t.path().join("upper");
    std::fs::create_dir_all(lower.join("usr/bin")).unwrap();
    std::fs::write(lower.join("usr/bin/python3.11"), b"ELF").unwrap();
    std::fs::create_dir(&upper).unwrap();
    let mut b = Builder::new(Vec::new());
    link(
        &mut b,
        EntryType::Link,
        "usr/bin/python3",
        "usr/bin/python3.11",
    );
    let opts = ApplyOptions {
        lowers: vec![lower.clone()],
        ..Default::default()
    };
    apply(&b.into_inner().unwrap(), &upper, &opts).unwrap();
    let a = std::fs::metadata(upper.join("usr/bin/python3")).unwrap();
    let c = std::fs::metadata(upper.join("usr/bin/python3.11")).unwrap();
    assert_eq!(a.ino(), c.ino());
    assert_eq!(
        std::fs::read(upper.join("usr/bin/python3")).unwrap(),
        b"ELF"
    );
}

/// A layer that tries to write outside its root in every way a tar allows.
#[test]
fn hostile_paths_stay_inside_the_root() {
    common::require_root("layer tests set owners and create devices");
    let t = common::tmp("lamina-layer-test-");
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"secret").unwrap();
    let dest = t.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    let before: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();

    let out = outside.to_str().unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("dot-dot file", {
            let mut b = Builder::new(Vec::new());
            raw(&mut b, EntryType::Regular, "../outside/evil", "", b"x");
            b.into_inner().unwrap()
        }),
        ("absolute file", {
            let mut b = Builder::new(Vec::new());
            raw(&mut b, EntryType::Regular, &format!("{out}/evil"), "", b"x");
            b.into_inner().unwrap()
        }),
        ("through absolute symlink", {
            let mut b = Builder::new(Vec::new());
            link(&mut b, EntryType::Symlink, "esc", out);
            raw(&mut b, EntryType::Regular, "esc/evil", "", b"x");
            b.into_inner().unwrap()
        }),
        ("through relative symlink", {
            let mut b = Builder::new(Vec::new());
            link(&mut b, EntryType::Symlink, "esc2", "../../../../outside");
            raw(&mut b, EntryType::Regular, "esc2/evil", "", b"x");
            b.into_inner().unwrap()
        }),
        ("symlink then overwrite target", {
            let mut b = Builder::new(Vec::new());
            link(&mut b, EntryType::Symlink, "s", &format!("{out}/secret"));
            raw(&mut b, EntryType::Regular, "s", "", b"pwned");
            b.into_inner().unwrap()
        }),
        ("dir symlink then whiteout", {
            let mut b = Builder::new(Vec::new());
            link(&mut b, EntryType::Symlink, "d", out);
            raw(&mut b, EntryType::Regular, "d/.wh.secret", "", b"");
            b.into_inner().unwrap()
        }),
    ];
    for (label, tar) in cases {
        for style in [WhiteoutStyle::Overlay, WhiteoutStyle::Delete] {
            let opts = ApplyOptions {
                whiteouts: style,
                ..Default::default()
            };
            let _ = apply(&tar, &dest, &opts);
            assert_eq!(
                std::fs::read(outside.join("secret")).unwrap(),
                b"secret",
                "{label}: secret untouched"
            );
            assert!(
                !outside.join("evil").exists(),
                "{label}: nothing written outside"
            );
            let now: Vec<_> = std::fs::read_dir(t.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(now, before, "{label}: nothing created beside the root");
        }
    }
    // Hard links whose target lies outside are refused with a clear error.
    for target in ["../outside/secret", &format!("{out}/secret")] {
        let mut b = Builder::new(Vec::new());
        raw(&mut b, EntryType::Link, "hl", target, b"");
        let e = apply(&b.into_inner().unwrap(), &dest, &ApplyOptions::default()).unwrap_err();
        assert!(
            matches!(e, LayerError::MissingLinkTarget { .. }),
            "{target}: {e}"
        );
    }
    let mut b = Builder::new(Vec::new());
    link(&mut b, EntryType::Symlink, "o", out);
    raw(&mut b, EntryType::Link, "hl2", "o/secret", b"");
    let e = apply(&b.into_inner().unwrap(), &dest, &ApplyOptions::default()).unwrap_err();
    assert!(
        matches!(e, LayerError::MissingLinkTarget { .. }),
        "hard link through a symlink: {e}"
    );
    assert_eq!(
        std::fs::metadata(outside.join("secret")).unwrap().nlink(),
        1,
        "no link to the outside file"
    );
    assert_eq!(
        std::fs::metadata(outside.join("secret"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o644
    );
}

#[test]
fn broken_streams_fail_clearly() {
    common::require_root("layer tests set owners and create devices");
    let tar = every_entry_type();
    let t = common::tmp("lamina-layer-test-");
    let d = |name: &str| {
        let p = t.path().join(name);
        std::fs::create_dir(&p).unwrap();
        p
    };
    let e = apply(
        &tar[..tar.len() / 2],
        &d("truncated"),
        &ApplyOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, LayerError::Corrupt(_)), "truncated tar: {e}");
    let mut gz = gzip(&tar);
    let mid = gz.len() / 2;
    gz[mid] ^= 0xff;
    gz[mid + 1] ^= 0xff;
    let e = apply(&gz, &d("corrupt-gzip"), &ApplyOptions::default()).unwrap_err();
    assert!(
        matches!(e, LayerError::Corrupt(_) | LayerError::BadEntry { .. }),
        "corrupt gzip: {e}"
    );
    let e = apply(
        &gzip(&tar)[..100],
        &d("truncated-gzip"),
        &ApplyOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, LayerError::Corrupt(_)), "truncated gzip: {e}");

    let mut b = Builder::new(Vec::new());
    file(&mut b, "zeros", &vec![0u8; 8 << 20], 0o644);
    let bomb = gzip(&b.into_inner().unwrap());
    assert!(
        bomb.len() < 64 << 10,
        "a real bomb: {} bytes compressed",
        bomb.len()
    );
    let opts = ApplyOptions {
        max_uncompressed_bytes: 1 << 20,
        ..Default::default()
    };
    let e = apply(&bomb, &d("bomb"), &opts).unwrap_err();
    assert!(
        matches!(e, LayerError::TooLarge { limit } if limit == 1 << 20),
        "bomb: {e}"
    );

    let opts = ApplyOptions {
        expected_digest: Some(Digest::of(b"something else")),
        ..Default::default()
    };
    let e = apply(&gzip(&tar), &d("mismatch"), &opts).unwrap_err();
    assert!(
        matches!(e, LayerError::DigestMismatch { .. }),
        "digest mismatch: {e}"
    );
    let good = gzip(&tar);
    let opts = ApplyOptions {
        expected_digest: Some(Digest::of(&good)),
        expected_diff_id: Some(Digest::of(&tar)),
        ..Default::default()
    };
    apply(&good, &d("verified"), &opts).expect("matching digests pass");
}

/// Compares two trees entry by entry; the root directory's own mtime is not part of a layer.
fn assert_same_tree(a: &Path, b: &Path, what: &str) {
    let facts = |p: &Path| {
        let mut m = tree_manifest(p).unwrap();
        m.get_mut(Path::new("")).unwrap().mtime = (0, 0);
        m
    };
    let d = manifest_differences(&facts(a), &facts(b));
    assert!(d.is_empty(), "{what}: trees differ:\n{}", d.join("\n"));
}

#[test]
fn overlay_diff_round_trips_and_is_deterministic() {
    common::require_root("layer tests set owners and create devices");
    let t = common::tmp("lamina-layer-test-");
    let upper = t.path().join("upper");
    std::fs::create_dir(&upper).unwrap();
    let mut tar = every_entry_type();
    // Add whiteouts and an opaque directory to the layer.
    tar.truncate(tar.len() - 1024); // drop the end-of-archive blocks
    let mut b = Builder::new(tar);
    file(&mut b, "etc/.wh.shadow", b"", 0o644);
    dir(&mut b, "opq/", 0o750);
    file(&mut b, "opq/.wh..wh..opq", b"", 0o644);
    file(&mut b, "opq/inside", b"i", 0o640);
    apply(&b.into_inner().unwrap(), &upper, &ApplyOptions::default()).unwrap();

    for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let mut blob = Vec::new();
        let r = write_diff(DiffSource::OverlayUpper(&upper), compression, &mut blob).unwrap();
        let mut again = Vec::new();
        let r2 = write_diff(DiffSource::OverlayUpper(&upper), compression, &mut again).unwrap();
        assert_eq!(blob, again, "{compression:?}: byte-identical diffs");
        assert_eq!(r, r2);
        assert_eq!(r.digest, Digest::of(&blob));
        assert_eq!(r.compressed_size, blob.len() as u64);
        let copy = t.path().join(format!("copy-{compression:?}"));
        std::fs::create_dir(&copy).unwrap();
        let applied = apply(&blob, &copy, &ApplyOptions::default()).unwrap();
        assert_eq!(
            applied.diff_id, r.diff_id,
            "{compression:?}: diffID agrees with the applier"
        );
        assert_eq!(applied.entries, r.entries);
        assert_same_tree(&upper, &copy, &format!("{compression:?} round trip"));
    }
}

#[test]
fn tree_diff_applied_onto_the_lower_tree_gives_the_upper_tree() {
    common::require_root("layer tests set owners and create devices");
    let t = common::tmp("lamina-layer-test-");
    let lower = t.path().join("lower");
    std::fs::create_dir(&lower).unwrap();
    apply(&every_entry_type(), &lower, &ApplyOptions::default()).unwrap();
    let upper = t.path().join("upper");
    std::fs::create_dir(&upper).unwrap();
    lamina_core::fsutil::copy_tree(&lower, &upper).unwrap();
    // Changes of every kind.
    std::fs::write(upper.join("etc/passwd"), b"changed\n").unwrap(); // content (and link group)
    std::fs::remove_file(upper.join("etc/localtime")).unwrap(); // deleted symlink
    std::fs::remove_dir_all(upper.join("deep")).unwrap(); // deleted tree
    std::fs::set_permissions(upper.join("bin/su"), std::fs::Permissions::from_mode(0o755)).unwrap(); // chmod
    std::fs::remove_file(upper.join("run/fifo")).unwrap();
    std::fs::create_dir(upper.join("run/fifo")).unwrap(); // file replaced by a directory
    std::fs::write(upper.join("run/fifo/new"), b"new").unwrap();
    std::fs::write(upper.join("added"), b"added").unwrap();

    let mut blob = Vec::new();
    let r = write_diff(
        DiffSource::Trees {
            lower: Some(&lower),
            upper: &upper,
        },
        Compression::Gzip,
        &mut blob,
    )
    .unwrap();
    assert!(
        r.entries < 20,
        "only the changes are written ({} entries)",
        r.entries
    );
    let target = t.path().join("target");
    std::fs::create_dir(&target).unwrap();
    lamina_core::fsutil::copy_tree(&lower, &target).unwrap();
    let opts = ApplyOptions {
        whiteouts: WhiteoutStyle::Delete,
        ..Default::default()
    };
    apply(&blob, &target, &opts).unwrap();
    // Directory mtimes change when their children do; compare everything but those.
    let strip =
        |m: std::collections::BTreeMap<std::path::PathBuf, lamina_core::fsutil::EntryFacts>| {
            m.into_iter()
                .map(|(p, mut f)| {
                    if f.kind == "dir" {
                        f.mtime = (0, 0);
                    }
                    (p, f)
                })
                .collect::<std::collections::BTreeMap<_, _>>()
        };
    let d = manifest_differences(
        &strip(tree_manifest(&upper).unwrap()),
        &strip(tree_manifest(&target).unwrap()),
    );
    assert!(
        d.is_empty(),
        "diff applied onto lower differs from upper:\n{}",
        d.join("\n")
    );
}

/// A GNU sparse entry, as `tar --sparse` writes it (containerd 1.6 refuses these: "unhandled
/// tar header type 83"), unpacks with its content and its holes.
#[test]
fn gnu_sparse_files_from_gnu_tar() {
    common::require_root("layer tests set owners and create devices");
    let t = common::tmp("lamina-layer-test-");
    let src = t.path().join("src/var");
    std::fs::create_dir_all(&src).unwrap();
    let f = std::fs::File::create(src.join("sparse.img")).unwrap();
    f.set_len(8 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    for off in [0u64, 3 << 20, (8 << 20) - 5] {
        f.write_all_at(b"data!", off).unwrap();
    }
    drop(f);
    let out = std::process::Command::new("tar")
        .args(["--sparse", "--format=gnu", "-C"])
        .arg(t.path().join("src"))
        .args(["-cf", "-", "var/sparse.img"])
        .output()
        .expect("GNU tar is needed for this test");
    assert!(
        out.status.success(),
        "tar failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dest = t.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    apply(&out.stdout, &dest, &ApplyOptions::default()).unwrap();
    let got = std::fs::read(dest.join("var/sparse.img")).unwrap();
    let want = std::fs::read(t.path().join("src/var/sparse.img")).unwrap();
    assert!(got == want, "content equal");
    let allocated = std::fs::metadata(dest.join("var/sparse.img"))
        .unwrap()
        .blocks()
        * 512;
    assert!(
        allocated < 1 << 20,
        "holes kept: {allocated} bytes allocated for 8 MiB"
    );
}

fn owned(kind: EntryType, mode: u32, size: u64, uid: u64, gid: u64) -> Header {
    let mut h = header(kind, mode, size);
    h.set_uid(uid);
    h.set_gid(gid);
    h
}

#[test]
fn later_entries_replace_earlier_ones_and_owners_are_exact() {
    common::require_root("layer tests set owners and create devices");
    let t = common::tmp("lamina-layer-test-");
    let mut b = Builder::new(Vec::new());
    // Replacements within one layer: the last entry for a name wins.
    file(&mut b, "a", b"file first", 0o644);
    dir(&mut b, "a/", 0o755); // directory over a file
    file(&mut b, "a/inner", b"x", 0o644);
    dir(&mut b, "d/", 0o755);
    file(&mut b, "d/child", b"c", 0o644);
    file(&mut b, "d", b"file over a directory", 0o600);
    file(&mut b, "s", b"before", 0o644);
    link(&mut b, EntryType::Symlink, "s", "target"); // symlink over a file
    file(&mut b, "h", b"old", 0o644);
    file(&mut b, "src", b"linked", 0o644);
    link(&mut b, EntryType::Link, "h", "src"); // hard link over a file
    dir(&mut b, "keep/", 0o755);
    file(&mut b, "keep/one", b"1", 0o644);
    dir(&mut b, "keep/", 0o700); // a directory again: contents stay, attributes change
                                 // Root-owned entries, as root creates them, and entries of a set-group-ID directory
                                 // (whose group new entries inherit): owners must come out exactly as in the tar.
    let mut h = owned(EntryType::Regular, 0o4755, 2, 0, 0);
    b.append_data(&mut h, "rootfile", &b"rf"[..]).unwrap();
    let mut h = owned(EntryType::Directory, 0o2775, 0, 0, 1234);
    b.append_data(&mut h, "sgid/", &[][..]).unwrap();
    let mut h = owned(EntryType::Regular, 0o644, 1, 0, 0);
    b.append_data(&mut h, "sgid/root0", &b"r"[..]).unwrap();
    let mut h = owned(EntryType::Regular, 0o644, 1, 0, 1234);
    b.append_data(&mut h, "sgid/inherits", &b"i"[..]).unwrap();
    let mut h = owned(EntryType::Symlink, 0o777, 0, 0, 0);
    b.append_link(&mut h, "sgid/sym0", "root0").unwrap();
    let r = apply(&b.into_inner().unwrap(), t.path(), &ApplyOptions::default()).unwrap();
    let p = |s: &str| t.path().join(s);
    assert!(p("a").is_dir() && std::fs::read(p("a/inner")).unwrap() == b"x");
    assert_eq!(std::fs::read(p("d")).unwrap(), b"file over a directory");
    assert_eq!(std::fs::read_link(p("s")).unwrap(), Path::new("target"));
    assert_eq!(std::fs::read(p("h")).unwrap(), b"linked");
    assert_eq!(
        std::fs::metadata(p("h")).unwrap().ino(),
        std::fs::metadata(p("src")).unwrap().ino()
    );
    assert_eq!(std::fs::read(p("keep/one")).unwrap(), b"1");
    assert_eq!(std::fs::metadata(p("keep")).unwrap().mode() & 0o7777, 0o700);
    let ids = |s: &str| {
        let m = std::fs::symlink_metadata(p(s)).unwrap();
        (m.uid(), m.gid(), m.mode() & 0o7777)
    };
    assert_eq!(ids("rootfile"), (0, 0, 0o4755));
    assert_eq!(ids("sgid"), (0, 1234, 0o2775));
    assert_eq!(
        ids("sgid/root0"),
        (0, 0, 0o644),
        "chowned back from the inherited group"
    );
    assert_eq!(ids("sgid/inherits"), (0, 1234, 0o644));
    assert_eq!((ids("sgid/sym0").0, ids("sgid/sym0").1), (0, 0));
    assert_eq!(r.entries, 19);
}

#[test]
fn a_blob_digest_checked_elsewhere_is_reported_not_recomputed() {
    common::require_root("layer tests set owners and create devices");
    let mut b = Builder::new(Vec::new());
    file(&mut b, "f", b"data", 0o644);
    let blob = gzip(&b.into_inner().unwrap());
    let claimed = Digest::of(b"not the blob");
    let t = common::tmp("lamina-layer-test-");
    let opts = ApplyOptions {
        expected_digest: Some(claimed.clone()),
        blob_digest_checked_elsewhere: true,
        ..ApplyOptions::default()
    };
    let r = apply(&blob, t.path(), &opts).unwrap();
    assert_eq!(
        r.digest, claimed,
        "the content store vouches for the digest"
    );
    assert_eq!(r.compressed_size, blob.len() as u64);
    // Without someone else checking, the same claim is refused.
    let t = common::tmp("lamina-layer-test-");
    let opts = ApplyOptions {
        blob_digest_checked_elsewhere: false,
        ..opts
    };
    assert!(matches!(
        apply(&blob, t.path(), &opts),
        Err(LayerError::DigestMismatch { .. })
    ));
}
