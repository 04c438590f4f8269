//! What the integration tests of lamina-core share: the root check and scratch dirs.

use std::path::PathBuf;

/// Fails the test (never skips it) unless it runs as root; `why` says what needs root.
pub fn require_root(why: &str) {
    let uid = rustix::process::geteuid();
    assert!(uid.is_root(), "{why}: run as root (uid {})", uid.as_raw());
}

/// A scratch directory under `$LAMINA_TEST_DIR` (the test suite's fresh loop-mounted
/// ext4) or the system temp dir, removed when dropped.
pub fn tmp(prefix: &str) -> tempfile::TempDir {
    let base = std::env::var_os("LAMINA_TEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(base)
        .unwrap()
}
