//! The lazy-layer index decoder (`LayerIndex::decode`), which reads indexes fetched from
//! a registry: never panics; what decodes is valid, encodes, and decodes back to the
//! same index; every entry can be looked up by its path.
//!
//! Input: one mode byte, then the index. Mode bit 0: before decoding, the body length
//! and CRC are set to match the bytes (and with bit 1 the magic, version and flags too),
//! so that mutations reach the body decoder instead of all failing the checksum.

#![no_main]

use lamina_core::index::{IndexedLayer, LayerIndex, FORMAT_VERSION, MAGIC};
use libfuzzer_sys::fuzz_target;

/// Header: magic, version, flags, body length. Trailer: CRC-32.
const HEADER: usize = 16;
const TRAILER: usize = 4;

fn fix_up(mode: u8, bytes: &mut [u8]) {
    if bytes.len() < HEADER + TRAILER {
        return;
    }
    if mode & 2 != 0 {
        bytes[..8].copy_from_slice(&MAGIC);
        bytes[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes[10..12].copy_from_slice(&0u16.to_le_bytes());
    }
    let end = bytes.len() - TRAILER;
    let body = (end - HEADER) as u32;
    bytes[12..16].copy_from_slice(&body.to_le_bytes());
    let crc = crc32(&bytes[..end]);
    bytes[end..].copy_from_slice(&crc.to_le_bytes());
}

/// CRC-32 (IEEE), as the index trailer has it; bitwise, the inputs are small.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, data)) = input.split_first() else {
        return;
    };
    let mut bytes = data.to_vec();
    if mode & 1 != 0 {
        fix_up(mode, &mut bytes);
    }
    let Ok(index) = LayerIndex::decode(&bytes) else {
        return;
    };
    index.validate().expect("decode returns valid indexes only");
    let encoded = index.encode().expect("a decoded index encodes");
    let again = LayerIndex::decode(&encoded).expect("an encoded index decodes");
    assert_eq!(again, index, "decode(encode(index)) differs");
    assert_eq!(
        again.encode().unwrap(),
        encoded,
        "encoding is not deterministic"
    );
    let layer = IndexedLayer::new(index).expect("a valid index is readable");
    for (i, e) in layer.entries().iter().enumerate() {
        let found = layer.lookup(&e.path).expect("every entry can be looked up");
        assert!(found >= i, "lookup gives the last entry of a name");
        if let Some(f) = layer.resolve_file(i) {
            assert!(f <= i, "a hard link resolves to an earlier file");
        }
    }
});
