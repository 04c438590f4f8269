//! Shared by the lazy-index targets: makes mutated index bytes pass the framing checks,
//! so that mutations reach the body decoder instead of all failing the checksum.

use lamina_core::index::{FORMAT_VERSION, MAGIC};

/// Header: magic, version, flags, body length. Trailer: CRC-32.
const HEADER: usize = 16;
const TRAILER: usize = 4;

/// Sets the body length and the CRC to match `bytes`; with `header`, also the magic,
/// version and flags.
pub fn fix_up(bytes: &mut [u8], header: bool) {
    if bytes.len() < HEADER + TRAILER {
        return;
    }
    if header {
        bytes[..8].copy_from_slice(&MAGIC);
        bytes[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes[10..12].copy_from_slice(&0u16.to_le_bytes());
    }
    let end = bytes.len() - TRAILER;
    let body = (end - HEADER) as u32;
    bytes[12..16].copy_from_slice(&body.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..end]);
    bytes[end..].copy_from_slice(&crc.to_le_bytes());
}
