//! laminad's config file (`laminad::config::Config::parse`): never panics; a config
//! that parses has a valid backend, socket mode and quota, and its derived settings can
//! be computed.

#![no_main]

use laminad::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::parse(text) else {
        return;
    };
    config.backend().expect("parse checked the backend");
    let mode = config.socket_mode().expect("parse checked the socket mode");
    assert!(mode <= 0o777);
    config.writable_quota().expect("parse checked the quota");
    let lazy = config.lazy();
    assert!((4096..=64 << 20).contains(&lazy.chunk_size));
    // Parsing is deterministic.
    assert_eq!(Config::parse(text).unwrap(), config);
});
