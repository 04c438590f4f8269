//! What the registry tests share: a private docker-registry on 127.0.0.1.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A docker-registry process, killed (and reaped) when dropped.
pub struct Registry {
    child: Child,
    pub addr: String,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts Debian's docker-registry on `addr` with its storage in `dir` (so a later one
/// on the same directory serves the same content).
pub fn start_registry_at(dir: &Path, addr: &str) -> Registry {
    let bin = "/usr/bin/docker-registry";
    assert!(
        Path::new(bin).exists(),
        "{bin} is missing: install Debian's docker-registry (scripts/deps.sh does)"
    );
    let config = dir.join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    // Owned by the guard at once, so it is killed and reaped whatever happens next.
    let reg = Registry {
        child: Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        addr: addr.to_owned(),
    };
    for _ in 0..100 {
        if std::net::TcpStream::connect(&reg.addr).is_ok() {
            return reg;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("docker-registry did not come up on {}", reg.addr);
}

/// A registry on a free port with storage in a new temporary directory.
pub fn start_registry() -> (Registry, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let reg = start_registry_at(dir.path(), &format!("127.0.0.1:{}", free_port()));
    (reg, dir)
}
