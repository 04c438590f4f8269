//! One process per root: an exclusive, non-blocking `flock` on `ROOT/lock`, held for the
//! life of the store and released by the kernel even when the process is killed.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;

use rustix::fs::FlockOperation;

use crate::error::{Error, IoContext, Result};

/// Proof that this process owns a root directory.
#[derive(Debug)]
pub struct RootLock {
    _file: File,
}

impl RootLock {
    /// Takes the lock of `root`, recording this process's pid in it; fails with
    /// [`Error::RootLocked`] naming the holder if another process has it.
    pub fn acquire(root: &Path) -> Result<RootLock> {
        let path = root.join("lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .ctx("open", &path)?;
        if let Err(e) = rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            if e == rustix::io::Errno::WOULDBLOCK {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(Error::RootLocked {
                    root: root.to_path_buf(),
                    holder: if pid.is_empty() {
                        String::new()
                    } else {
                        format!(" (pid {pid})")
                    },
                });
            }
            return Err(Error::io("flock", path, e.into()));
        }
        file.set_len(0).ctx("truncate", &path)?;
        file.rewind().ctx("seek", &path)?;
        writeln!(file, "{}", std::process::id()).ctx("write", &path)?;
        Ok(RootLock { _file: file })
    }
}
