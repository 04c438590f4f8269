//! Image references (`lamina_registry::Reference::parse`), from the command line and
//! from CRI pull requests: never panics; a reference that parses, written back in full
//! (`Reference::name`: `host/repository[:tag][@digest]`), parses to the same reference.

#![no_main]

use lamina_registry::Reference;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(r) = Reference::parse(text) else {
        return;
    };
    assert!(!r.host.is_empty() && !r.repository.is_empty(), "{r:?}");
    let full = r.name();
    let again = Reference::parse(&full).unwrap_or_else(|e| panic!("{full:?}: {e}"));
    assert_eq!(again, r, "{text:?} written as {full:?}");
});
