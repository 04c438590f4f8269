//! The layer applier on hostile layers: whatever the bytes (tar, or the same tar
//! gzip- or zstd-compressed), applying them never panics and writes nothing outside the
//! destination directory, and never changes the lower layers it may copy files up from.
//!
//! Input: one mode byte, then the layer. Mode bits 0-1: 0 and 1 apply the bytes as given
//! (compression told by magic bytes, as real layers are), 2 gzip-compresses them first, 3
//! zstd-compresses them first (so tar mutations also reach the decompressing paths).
//! Bit 2: whiteouts as deletions (native) instead of overlayfs' form. Bit 3: a lower layer
//! is given (hard links to its files are copied up).

#![no_main]

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use lamina_core::layer::{apply_layer, ApplyOptions, WhiteoutStyle};
use libfuzzer_sys::fuzz_target;

/// Names in a directory.
fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Every path below `dir` with its type, size and contents' first bytes: enough to tell
/// that a lower layer was left alone.
fn tree(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            let what = if m.is_dir() {
                stack.push(e.path());
                "dir".to_owned()
            } else if m.is_file() {
                format!("file {:?}", std::fs::read(e.path()).unwrap())
            } else {
                format!("{:?}", m.file_type())
            };
            out.push((e.path().display().to_string(), what));
        }
    }
    out.sort();
    out
}

fn compress(mode: u8, data: &[u8]) -> Vec<u8> {
    match mode & 3 {
        2 => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(data).unwrap();
            gz.finish().unwrap()
        }
        3 => zstd::stream::encode_all(data, 1).unwrap(),
        _ => data.to_vec(),
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, data)) = input.split_first() else {
        return;
    };
    let layer = compress(mode, data);
    // A known top level, so an escape through `..` is seen: tmp/root holds dest and
    // nothing else, tmp holds root and lower and nothing else. Absolute names would
    // escape to the real `/`: its top level is compared too.
    let slash_before = names(Path::new("/"));
    let tmp = tempfile::Builder::new()
        .prefix("lamina-fuzz-apply-")
        .tempdir()
        .unwrap();
    let root = tmp.path().join("root");
    let dest = root.join("dest");
    let lower = tmp.path().join("lower");
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::create_dir_all(lower.join("etc")).unwrap();
    std::fs::write(lower.join("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n").unwrap();
    std::fs::write(lower.join("a"), b"lower a\n").unwrap();
    std::os::unix::fs::symlink("/etc", lower.join("link")).unwrap();
    let lower_before = tree(&lower);

    let opts = ApplyOptions {
        whiteouts: if mode & 4 != 0 {
            WhiteoutStyle::Delete
        } else {
            WhiteoutStyle::Overlay
        },
        max_uncompressed_bytes: 4 << 20,
        max_entries: 512,
        lowers: if mode & 8 != 0 {
            vec![lower.clone()]
        } else {
            Vec::new()
        },
        lowers_complete: mode & 8 != 0,
        ..ApplyOptions::default()
    };
    // Errors are fine (most inputs are not valid layers); what matters is where bytes
    // went.
    let _ = apply_layer(&layer[..], &dest, &opts);

    assert_eq!(
        names(tmp.path()),
        BTreeSet::from(["lower".to_owned(), "root".to_owned()]),
        "the layer wrote beside its destination's parent"
    );
    assert_eq!(
        names(&root),
        BTreeSet::from(["dest".to_owned()]),
        "the layer wrote outside its destination"
    );
    assert_eq!(
        tree(&lower),
        lower_before,
        "the layer changed a lower layer"
    );
    let slash_after = names(Path::new("/"));
    let new: Vec<_> = slash_after.difference(&slash_before).collect();
    assert!(new.is_empty(), "the layer wrote into / : {new:?}");
});
