//! Inputs the fuzz targets of `fuzz/` found to break lamina-core's parsers, each kept as
//! a regression test with the fix it needed.

mod common;

use std::path::Path;

use lamina_core::index::{build_index, BuildOptions, IndexError, LayerIndex};
use lamina_core::layer::{apply_layer, ApplyOptions, LayerError, WhiteoutStyle};
use tar::{Builder, EntryType, Header};

/// A tar of empty regular files whose names are written raw into their headers (the tar
/// crate refuses `..` in names it is given).
fn raw_tar(names: &[&str]) -> Vec<u8> {
    let mut b = Builder::new(Vec::new());
    for name in names {
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(0);
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
    }
    b.into_inner().unwrap()
}

/// Found by `layer_apply`: the whiteout `.wh...` hides `..`, and removing it deleted the
/// parent of the destination, everything beside the destination with it (`.wh..` emptied
/// the destination itself). Such whiteouts are refused now, in both whiteout styles and
/// in subdirectories as well.
#[test]
fn layer_apply_whiteout_of_dot_dot_stays_inside() {
    common::require_root("the layer applier sets owners and creates devices");
    for name in [
        ".wh...",
        ".wh..",
        ".wh.",
        "a/.wh...",
        "a/b/.wh..",
        "./.wh...",
    ] {
        for style in [WhiteoutStyle::Overlay, WhiteoutStyle::Delete] {
            let t = common::tmp("lamina-fuzz-regression-");
            let dest = t.path().join("dest");
            std::fs::create_dir_all(dest.join("a/b")).unwrap();
            std::fs::write(dest.join("a/b/inside"), b"kept").unwrap();
            std::fs::write(t.path().join("beside"), b"kept").unwrap();
            let tar = raw_tar(&[name]);
            let opts = ApplyOptions {
                whiteouts: style,
                ..ApplyOptions::default()
            };
            match apply_layer(&tar[..], &dest, &opts) {
                Err(LayerError::BadEntry { reason, .. }) => {
                    assert!(reason.contains("whiteout"), "{name} ({style:?}): {reason}")
                }
                other => panic!("{name} ({style:?}): not refused: {other:?}"),
            }
            assert_eq!(
                std::fs::read(t.path().join("beside")).ok().as_deref(),
                Some(&b"kept"[..]),
                "{name} ({style:?}) deleted beside the destination"
            );
            assert_eq!(
                std::fs::read(dest.join("a/b/inside")).ok().as_deref(),
                Some(&b"kept"[..]),
                "{name} ({style:?}) deleted a directory"
            );
        }
    }
}

/// The same whiteouts in a lazy layer: the index builder refuses them, and an index that
/// has one (built elsewhere, or hostile) does not validate, so the lazy file system never
/// lists an entry named `.` or `..`.
#[test]
fn index_whiteout_of_dot_dot_is_refused() {
    let opts = BuildOptions::default();
    for name in [".wh...", "a/.wh..", ".wh."] {
        match build_index(&raw_tar(&[name])[..], &opts) {
            Err(IndexError::BadEntry { reason, .. }) => assert!(reason.contains("whiteout")),
            other => panic!("{name}: not refused: {other:?}"),
        }
    }
    let mut index = build_index(&raw_tar(&["a/.wh.gone"])[..], &opts).unwrap();
    let good = index.encode().unwrap();
    assert!(LayerIndex::decode(&good).is_ok());
    for hidden in [".wh...", ".wh..", ".wh."] {
        let wh = index
            .entries
            .iter_mut()
            .find(|e| e.whiteout_target().is_some() || e.path.starts_with("a/.wh."))
            .unwrap();
        wh.path = Path::new("a").join(hidden);
        assert!(
            matches!(index.validate(), Err(IndexError::Invalid(_))),
            "{hidden}"
        );
        assert!(index.encode().is_err(), "{hidden}");
    }
}
