//! Filesystem helpers of the data path: disk usage and faithful tree copies.

mod copy;
mod du;

pub use copy::copy_tree;
pub use du::disk_usage;

use std::path::Path;

use crate::error::{Error, Result};

/// Removes a directory tree; a tree that is already gone is not an error.
pub fn remove_tree(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}
