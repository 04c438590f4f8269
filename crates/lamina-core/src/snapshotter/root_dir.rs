//! The root directory's checks: everything laminad keeps (metadata, layers, blobs, lazy
//! layers' credentials) is under it, so nobody but its owner may be able to change it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// Creates the root (mode 0700) if missing; refuses one that is a symlink, not a
/// directory, writable by group or others, or owned by a user other than this process's
/// (root, for laminad).
pub(crate) fn prepare_root(root: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    if let Ok(meta) = std::fs::symlink_metadata(root) {
        if meta.file_type().is_symlink() {
            return Err(Error::InvalidArgument(format!(
                "root {} is a symlink; give the real directory",
                root.display()
            )));
        }
        if !meta.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "root {} is not a directory",
                root.display()
            )));
        }
        check_access(root, &meta)?;
    } else {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .ctx("mkdir", root)?;
    }
    let root = std::fs::canonicalize(root).ctx("resolve", root)?;
    Ok(root)
}

/// Refuses a root another user owns or that group or others may write.
fn check_access(root: &Path, meta: &std::fs::Metadata) -> Result<()> {
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(Error::InvalidArgument(format!(
            "root {} is owned by uid {}, not by this process's uid {me}: refusing a state \
             directory another user controls (chown it, or choose another root)",
            root.display(),
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(Error::InvalidArgument(format!(
            "root {} has mode {mode:04o}: writable by group or others; refusing it \
             (chmod go-w it, 0700 is what laminad creates)",
            root.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn refused(p: &Path, words: &[&str]) {
        match prepare_root(p) {
            Err(Error::InvalidArgument(msg)) => {
                for w in words {
                    assert!(msg.contains(w), "{msg:?} should say {w:?}");
                }
            }
            other => panic!("root {} should be refused, got {other:?}", p.display()),
        }
    }

    #[test]
    fn creates_a_missing_root_0700() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("a/root");
        prepare_root(&root).unwrap();
        let meta = std::fs::metadata(&root).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o700);
        // And takes it again.
        prepare_root(&root).unwrap();
    }

    #[test]
    fn refuses_writable_by_others_and_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir(&root).unwrap();
        chmod(&root, 0o777);
        refused(&root, &["0777", "writable by group or others"]);
        chmod(&root, 0o770);
        refused(&root, &["0770"]);
        chmod(&root, 0o1777);
        refused(&root, &["1777"]);
        chmod(&root, 0o755);
        prepare_root(&root).unwrap();
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&root, &link).unwrap();
        refused(&link, &["symlink"]);
        let file = t.path().join("file");
        std::fs::write(&file, "").unwrap();
        refused(&file, &["not a directory"]);
    }

    #[test]
    fn refuses_a_root_owned_by_another_user() {
        assert!(
            rustix::process::geteuid().is_root(),
            "this test gives a directory to another user and must run as root; CI runs it as root"
        );
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::chown(&root, Some(1000), Some(1000)).unwrap();
        refused(&root, &["owned by uid 1000"]);
        std::os::unix::fs::chown(&root, Some(0), Some(0)).unwrap();
        prepare_root(&root).unwrap();
    }
}
