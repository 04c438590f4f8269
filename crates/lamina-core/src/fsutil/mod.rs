//! Filesystem helpers of the data path: disk usage and faithful tree copies.

mod copy;
mod du;
mod manifest;

pub use copy::copy_tree;
pub use du::disk_usage;
pub use manifest::{manifest_differences, tree_manifest, EntryFacts};

use std::path::Path;

use crate::error::{Error, Result};

/// Removes a directory tree; a tree that is already gone is not an error. Anything
/// mounted inside it (a rootfs someone forgot, a bind that propagated in) is detached
/// first, so the removal never reaches into another filesystem.
pub fn remove_tree(path: &Path) -> Result<()> {
    crate::sys::detach_mounts_under(path)?;
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

/// Removes everything inside directory `dir`, keeping `dir` itself (and its attributes).
pub fn empty_dir(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io("read directory", dir, e))? {
        let path = entry
            .map_err(|e| Error::io("read directory", dir, e))?
            .path();
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => remove_tree(&path)?,
            Ok(_) => std::fs::remove_file(&path).map_err(|e| Error::io("remove", &path, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("stat", &path, e)),
        }
    }
    Ok(())
}
