//! containerd's `hosts.toml` (`lamina_registry::HostsConfig::endpoints`): never panics;
//! a file that loads gives http(s) endpoints whose base ends in the registry API path
//! (unless `override_path`), the server last.
//!
//! Input: the hosts.toml text, written where the registry `reg.example:5000` looks.

#![no_main]

use lamina_registry::HostsConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::Builder::new()
        .prefix("lamina-fuzz-hosts-")
        .tempdir()
        .unwrap();
    let host_dir = dir.path().join("reg.example_5000");
    std::fs::create_dir(&host_dir).unwrap();
    std::fs::write(host_dir.join("hosts.toml"), data).unwrap();
    let hosts = HostsConfig {
        dir: Some(dir.path().to_path_buf()),
    };
    for plain_http in [false, true] {
        let Ok(endpoints) = hosts.endpoints("reg.example:5000", plain_http) else {
            continue;
        };
        assert!(!endpoints.is_empty(), "the server is always an endpoint");
        for e in &endpoints {
            assert!(
                e.base.starts_with("http://") || e.base.starts_with("https://"),
                "endpoint {:?} is not http(s)",
                e.base
            );
            for c in e.ca.iter().chain(e.client.iter().map(|c| &c.cert)) {
                assert!(c.is_absolute(), "certificate path {c:?} not resolved");
            }
        }
    }
});
