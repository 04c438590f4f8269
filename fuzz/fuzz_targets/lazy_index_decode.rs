//! The lazy-layer index decoder (`LayerIndex::decode`), which reads indexes fetched from
//! a registry: never panics; what decodes is valid, encodes, and decodes back to the
//! same index; every entry can be looked up by its path.
//!
//! Input: one mode byte, then the index. Mode bit 0: before decoding, the body length
//! and CRC are set to match the bytes (and with bit 1 the magic, version and flags too),
//! so that mutations reach the body decoder instead of all failing the checksum.

#![no_main]

use lamina_core::index::{IndexedLayer, LayerIndex};
use libfuzzer_sys::fuzz_target;

#[path = "common/index_bytes.rs"]
mod index_bytes;

fuzz_target!(|input: &[u8]| {
    let Some((&mode, data)) = input.split_first() else {
        return;
    };
    let mut bytes = data.to_vec();
    if mode & 1 != 0 {
        index_bytes::fix_up(&mut bytes, mode & 2 != 0);
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
