//! A registry's `WWW-Authenticate` challenge (`parse_challenge`): never panics, always
//! yields a challenge, and a challenge written back in the canonical form
//! (`scheme k="v",...`, quotes and backslashes escaped) parses to the same scheme and
//! parameters.

#![no_main]

use lamina_registry::fuzzing::parse_challenge;
use libfuzzer_sys::fuzz_target;

/// A key that reads back as itself from `key="value"`.
fn plain_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

fuzz_target!(|data: &[u8]| {
    let Ok(header) = std::str::from_utf8(data) else {
        return;
    };
    let c = parse_challenge(header).expect("a challenge always parses");
    assert_eq!(c.scheme, c.scheme.to_ascii_lowercase());
    if c.scheme.is_empty()
        || c.scheme.contains(|ch: char| ch.is_whitespace())
        || !c.params.keys().all(|k| plain_key(k))
    {
        return;
    }
    let params: Vec<String> = c
        .params
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    let written = format!("{} {}", c.scheme, params.join(","));
    let again = parse_challenge(&written).expect("a challenge always parses");
    assert_eq!(again, c, "{written:?} does not read back");
});
