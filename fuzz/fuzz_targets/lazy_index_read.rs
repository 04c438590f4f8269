//! Reads of a lazy layer through its index (`IndexedLayer::read`, `read_file`), with
//! both the index and the blob hostile (a registry serves both): never panics or hangs,
//! never returns more than asked, and for an uncompressed layer returns the blob's own
//! bytes.
//!
//! Input: one mode byte, a little-endian u16 index length, the index (its body length and
//! CRC set to match before decoding, as in `lazy_index_decode`), then the blob.

#![no_main]

use lamina_core::index::IndexedLayer;
use lamina_core::layer::Compression;
use libfuzzer_sys::fuzz_target;

#[path = "common/index_bytes.rs"]
mod index_bytes;

fuzz_target!(|input: &[u8]| {
    let [mode, a, b, rest @ ..] = input else {
        return;
    };
    let len = usize::from(u16::from_le_bytes([*a, *b])).min(rest.len());
    let (index, blob) = rest.split_at(len);
    let mut index = index.to_vec();
    if mode & 1 != 0 {
        index_bytes::fix_up(&mut index, false);
    }
    let Ok(layer) = IndexedLayer::decode(&index) else {
        return;
    };
    let size = layer.index().uncompressed_size;
    let plain = layer.index().compression == Compression::None;
    let mut buf = vec![0u8; 4096];
    // A few reads spread over the stream, plus one continuing the previous with a cursor.
    let mut cursor = layer.cursor();
    for offset in [0, size / 3, size.saturating_sub(100), size, size + 7] {
        // Errors are fine (hostile blobs are corrupt); what is read must be right.
        if let Ok(n) = layer.read_with(&mut cursor, blob, offset, &mut buf) {
            assert!(n <= buf.len());
            if plain {
                let start = usize::try_from(offset).unwrap_or(usize::MAX);
                if start < blob.len() {
                    let want = &blob[start..blob.len().min(start + n)];
                    assert_eq!(&buf[..want.len()], want, "uncompressed read at {offset}");
                }
            }
        }
    }
    // Every file's start and, for small files, its whole content.
    for i in 0..layer.entries().len().min(16) {
        let Some(f) = layer.resolve_file(i) else {
            continue;
        };
        let mut total = 0u64;
        let file_size = layer.entries()[f].size;
        while total < file_size.min(64 << 10) {
            match layer.read_file(blob, f, total, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    assert!(n <= buf.len());
                    total += n as u64;
                }
            }
        }
        assert!(total <= file_size, "read past the end of file {i}");
    }
});
