//! Writes the seeds of `lazy_index_decode` and `lazy_index_read`: a small layer (a few
//! files, one of about 60 KiB so that there are several checkpoints) as plain tar, gzip
//! (flushed every 8 KiB, so deflate blocks end where checkpoints can be) and seekable
//! zstd, indexed by the project's own builder (`build_index`, `reencode_seekable`).
//!
//! Usage (from fuzz/): `cargo run --example index_seeds`

use std::io::Write;
use std::path::Path;

use lamina_core::index::{build_index, reencode_seekable, BuildOptions};

/// The layer: a directory, a small file, a large compressible one, a symlink, a hard link.
fn layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, kind: tar::EntryType, link: Option<&str>, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        b.append_data(&mut h, path, data).unwrap();
    };
    add("etc", tar::EntryType::Directory, None, b"");
    add("etc/hostname", tar::EntryType::Regular, None, b"lamina\n");
    let big: Vec<u8> = (0..60_000u32)
        .flat_map(|i| format!("{} ", i.wrapping_mul(2_654_435_761) % 1000).into_bytes())
        .take(60_000)
        .collect();
    add("usr/share/big", tar::EntryType::Regular, None, &big);
    add("etc/link", tar::EntryType::Symlink, Some("hostname"), b"");
    add("etc/hard", tar::EntryType::Link, Some("etc/hostname"), b"");
    b.into_inner().unwrap()
}

fn write(target: &str, name: &str, data: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
}

fn main() {
    let plain = layer();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    for piece in plain.chunks(8 << 10) {
        gz.write_all(piece).unwrap();
        gz.flush().unwrap();
    }
    let gzip = gz.finish().unwrap();
    let opts = BuildOptions {
        span: 16 << 10,
        ..BuildOptions::default()
    };
    let mut zstd = Vec::new();
    reencode_seekable(&plain[..], &mut zstd, &opts, 3).unwrap();
    for (name, blob) in [("tar", plain), ("gzip", gzip), ("zstd", zstd)] {
        let index = build_index(&blob[..], &opts).unwrap();
        let checkpoints = index.checkpoints.len();
        let index = index.encode().unwrap();
        // Mode 0: decoded as given.
        write("lazy_index_decode", name, &[&[0u8][..], &index].concat());
        let len = u16::try_from(index.len()).expect("a seed index under 64 KiB");
        let read_seed = [&[0u8][..], &len.to_le_bytes(), &index, &blob].concat();
        write("lazy_index_read", name, &read_seed);
        println!(
            "{name}: blob {} B, index {} B, {checkpoints} checkpoints",
            blob.len(),
            index.len()
        );
    }
}
