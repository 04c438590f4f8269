//! Unpacking an image's layers into a committed chain, in parallel on overlayfs: the
//! mounted result equals applying the layers one after another onto one tree.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use lamina_core::fsutil::{manifest_differences, tree_manifest};
use lamina_core::layer::{apply_layer, ApplyOptions, Digest, WhiteoutStyle};
use lamina_core::{BackendKind, Labels, LayerSource, Snapshotter, StoreConfig};
use tar::{Builder, EntryType, Header};

enum E<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    HardLink(&'a str, &'a str),
}

fn layer(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = Builder::new(Vec::new());
    for e in entries {
        let mut h = Header::new_gnu();
        h.set_mtime(1_650_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            E::File(p, d) => {
                h.set_entry_type(EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(d.len() as u64);
                b.append_data(&mut h, p, *d).unwrap();
            }
            E::Dir(p) => {
                h.set_entry_type(EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            E::HardLink(p, t) => {
                h.set_entry_type(EntryType::Link);
                h.set_mode(0o644);
                h.set_size(0);
                b.append_link(&mut h, p, t).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn write_blob(dir: &Path, name: &str, tar: &[u8], gzip: bool) -> LayerSource {
    let blob = if gzip {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(tar).unwrap();
        e.finish().unwrap()
    } else {
        zstd::stream::encode_all(tar, 1).unwrap()
    };
    let path = dir.join(name);
    std::fs::write(&path, &blob).unwrap();
    LayerSource {
        blob: path,
        digest: Digest::of(&blob),
        diff_id: Digest::of(tar),
    }
}

fn image(dir: &Path) -> Vec<LayerSource> {
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let l1 = layer(&[
        E::Dir("usr/"),
        E::Dir("usr/bin/"),
        E::File("usr/bin/python3.11", &big),
        E::Dir("etc/"),
        E::File("etc/hosts", b"127.0.0.1 localhost\n"),
        E::Dir("var/cache/"),
        E::File("var/cache/a", b"a"),
    ]);
    let l2 = layer(&[
        E::HardLink("usr/bin/python3", "usr/bin/python3.11"),
        E::File("etc/.wh.hosts", b""),
        E::Dir("var/cache/"),
        E::File("var/cache/.wh..wh..opq", b""),
        E::File("var/cache/b", b"b"),
    ]);
    let l3 = layer(&[
        E::File("etc/hosts", b"::1 localhost\n"),
        E::File("usr/bin/tool", b"tool"),
        E::HardLink("usr/bin/tool2", "usr/bin/tool"),
    ]);
    vec![
        write_blob(dir, "l1", &l1, true),
        write_blob(dir, "l2", &l2, false),
        write_blob(dir, "l3", &l3, true),
    ]
}

/// The reference: every layer applied in order onto one directory, with real deletions.
fn sequential(dir: &Path, layers: &[LayerSource]) -> PathBuf {
    let out = dir.join("sequential");
    std::fs::create_dir(&out).unwrap();
    for l in layers {
        let opts = ApplyOptions {
            whiteouts: WhiteoutStyle::Delete,
            ..Default::default()
        };
        apply_layer(std::fs::File::open(&l.blob).unwrap(), &out, &opts).unwrap();
    }
    out
}

#[test]
fn parallel_unpack_equals_sequential_apply() {
    common::require_root("unpack tests mount overlays");
    for backend in [BackendKind::Overlayfs, BackendKind::Native] {
        let t = common::tmp("lamina-unpack-test-");
        let layers = image(t.path());
        let reference = sequential(t.path(), &layers);
        let s = Snapshotter::open(StoreConfig::new(t.path().join("root"), backend)).unwrap();
        let names = s.unpack_chain(&layers, &Labels::new(), 3).unwrap();
        assert_eq!(names, lamina_core::chain_ids(&layers));
        assert_eq!(
            names[0],
            layers[0].diff_id.to_string(),
            "first chain ID is the first diffID"
        );
        assert_eq!(s.stat(&names[2]).unwrap().parent, names[1]);
        let mounts = s.view("check", &names[2], Labels::new()).unwrap();
        let mnt = t.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        lamina_core::sys::mount_all(&mounts, &mnt).unwrap();
        let got = tree_manifest(&mnt);
        lamina_core::sys::unmount(&mnt).unwrap();
        let mut got = got.unwrap();
        let mut want = tree_manifest(&reference).unwrap();
        // Directory mtimes depend on when children were created; not part of the check.
        for m in [&mut got, &mut want] {
            for f in m.values_mut().filter(|f| f.kind == "dir") {
                f.mtime = (0, 0);
            }
        }
        let d = manifest_differences(&want, &got);
        assert!(
            d.is_empty(),
            "{backend}: unpacked image differs:\n{}",
            d.join("\n")
        );

        // Unpacking again reuses the chain.
        let dirs_before = std::fs::read_dir(t.path().join("root/snapshots"))
            .unwrap()
            .count();
        assert_eq!(s.unpack_chain(&layers, &Labels::new(), 3).unwrap(), names);
        assert_eq!(
            std::fs::read_dir(t.path().join("root/snapshots"))
                .unwrap()
                .count(),
            dirs_before
        );
    }
}

#[test]
fn a_bad_layer_commits_nothing() {
    common::require_root("unpack tests mount overlays");
    let t = common::tmp("lamina-unpack-test-");
    let mut layers = image(t.path());
    let s = Snapshotter::open(StoreConfig::new(
        t.path().join("root"),
        BackendKind::Overlayfs,
    ))
    .unwrap();
    layers[2].digest = Digest::of(b"not this");
    let e = s.unpack_chain(&layers, &Labels::new(), 3).unwrap_err();
    assert!(e.to_string().contains("digest mismatch"), "{e}");
    assert!(
        s.list::<&str>(&[]).unwrap().is_empty(),
        "no snapshot committed"
    );
    assert_eq!(
        std::fs::read_dir(t.path().join("root/snapshots"))
            .unwrap()
            .count(),
        0,
        "no directory left"
    );
}
