//! laminad's files and socket: refused when someone other than root could change them.
//! The socket's directory must be root's alone (or root-owned and sticky, like /tmp);
//! the root must not be a symlink, writable by group or others, or another user's; the
//! socket is created 0600.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A scratch directory (0755, so the modes below it are what each case sets).
fn scratch() -> tempfile::TempDir {
    let base = std::env::var_os("LAMINA_TEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let t = tempfile::Builder::new()
        .prefix("laminad-security-")
        .tempdir_in(base)
        .unwrap();
    chmod(t.path(), 0o755);
    t
}

/// laminad on `root` and `socket`, its stderr piped.
fn laminad(root: &Path, socket: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_laminad"))
        .arg("--root")
        .arg(root)
        .arg("--socket")
        .arg(socket)
        .args(["--log-level", "warn"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn laminad")
}

/// Runs laminad on `root` and `socket` and expects it to refuse to start: returns its
/// stderr. A laminad that starts serving instead is killed and the test fails.
fn refused(root: &Path, socket: &Path) -> String {
    let mut child = laminad(root, socket);
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if std::os::unix::net::UnixStream::connect(socket).is_ok()
            || start.elapsed() > Duration::from_secs(30)
        {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!(
                "laminad served on {} with root {} instead of refusing",
                socket.display(),
                root.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "laminad exited 0");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Starts laminad and waits for its socket; [`stop`] ends it.
fn serves(root: &Path, socket: &Path) -> Child {
    let mut child = laminad(root, socket);
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "laminad exited with {status}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "laminad did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn stop(mut child: Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

#[test]
fn socket_directory_writable_by_others_is_refused() {
    require_root();
    let t = scratch();
    let root = t.path().join("root");
    for m in [0o777, 0o770, 0o775, 0o757] {
        let dir = t.path().join(format!("sock-{m:o}"));
        std::fs::create_dir(&dir).unwrap();
        chmod(&dir, m);
        let err = refused(&root, &dir.join("lamina.sock"));
        assert!(
            err.contains("writable by group or others") && err.contains(&format!("{m:04o}")),
            "mode {m:o}: {err}"
        );
        assert!(!dir.join("lamina.sock").exists(), "no socket was made");
    }
    // Owned by another user, even with mode 0755.
    let dir = t.path().join("sock-user");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(1000), Some(1000)).unwrap();
    let err = refused(&root, &dir.join("lamina.sock"));
    assert!(err.contains("owned by uid 1000"), "{err}");
}

#[test]
fn socket_is_0600_in_a_root_only_directory() {
    require_root();
    let t = scratch();
    let root = t.path().join("root");
    // A missing directory is made 0711, the root 0700.
    let dir = t.path().join("run/lamina");
    let socket = dir.join("lamina.sock");
    let child = serves(&root, &socket);
    assert_eq!(mode(&dir), 0o711, "created socket directory");
    assert_eq!(mode(&socket), 0o600, "socket");
    assert_eq!(mode(&root), 0o700, "created root");
    stop(child);
    // A root-owned sticky directory (like /tmp) is accepted: nobody may replace another
    // user's socket in it.
    let sticky = t.path().join("sticky");
    std::fs::create_dir(&sticky).unwrap();
    chmod(&sticky, 0o1777);
    let child = serves(&root, &sticky.join("lamina.sock"));
    assert_eq!(mode(&sticky.join("lamina.sock")), 0o600);
    stop(child);
}

#[test]
fn unsafe_roots_are_refused() {
    require_root();
    let t = scratch();
    let sock_dir = t.path().join("sock");
    std::fs::create_dir(&sock_dir).unwrap();
    chmod(&sock_dir, 0o700);
    let socket = sock_dir.join("lamina.sock");
    for m in [0o777, 0o1777, 0o770] {
        let root = t.path().join(format!("root-{m:o}"));
        std::fs::create_dir(&root).unwrap();
        chmod(&root, m);
        let err = refused(&root, &socket);
        assert!(
            err.contains("writable by group or others") && err.contains(&format!("{m:04o}")),
            "root mode {m:o}: {err}"
        );
        assert_eq!(
            std::fs::read_dir(&root).unwrap().count(),
            0,
            "nothing written into a refused root"
        );
    }
    let root = t.path().join("root-user");
    std::fs::create_dir(&root).unwrap();
    chmod(&root, 0o700);
    std::os::unix::fs::chown(&root, Some(1000), Some(1000)).unwrap();
    let err = refused(&root, &socket);
    assert!(err.contains("owned by uid 1000"), "{err}");
    let real = t.path().join("real");
    std::fs::create_dir(&real).unwrap();
    chmod(&real, 0o700);
    let link = t.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let err = refused(&link, &socket);
    assert!(err.contains("symlink"), "{err}");
    // The same directory, given as itself, is fine.
    stop(serves(&real, &socket));
}
