//! Backends turn snapshot records into directories and mounts: `overlayfs` stacks each
//! snapshot's own changes over its parents' directories; `native` gives every writable
//! snapshot a full copy of its parent, for filesystems where overlayfs cannot run.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::model::{Kind, Mount, Usage};
use crate::sys;

/// Which backend a store uses; fixed when the store is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendKind {
    /// overlayfs: bind mount without parents, overlay of lower dirs otherwise.
    #[default]
    Overlayfs,
    /// Full copies of the parent tree, mounted with bind mounts.
    Native,
}

impl BackendKind {
    /// The backend's name in configs and flags.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Overlayfs => "overlayfs",
            BackendKind::Native => "native",
        }
    }

    /// The number recorded in the metadata file, so a root is never opened with the
    /// wrong backend.
    pub(crate) fn code(self) -> u64 {
        match self {
            BackendKind::Overlayfs => 1,
            BackendKind::Native => 2,
        }
    }
}

impl FromStr for BackendKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "overlayfs" | "overlay" => Ok(BackendKind::Overlayfs),
            "native" => Ok(BackendKind::Native),
            other => Err(Error::InvalidArgument(format!(
                "unknown backend {other:?} (expected overlayfs or native)"
            ))),
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A backend bound to the directory that holds the snapshots.
#[derive(Debug, Clone)]
pub(crate) struct Backend {
    kind: BackendKind,
    dir: PathBuf,
}

impl Backend {
    pub fn new(kind: BackendKind, dir: PathBuf) -> Self {
        Backend { kind, dir }
    }

    /// `snapshots/<id>`: everything of one snapshot lives below it.
    pub fn snapshot_dir(&self, id: u64) -> PathBuf {
        self.dir.join(id.to_string())
    }

    /// The snapshot's file tree (overlay upper dir or native full tree).
    pub fn fs_dir(&self, id: u64) -> PathBuf {
        self.snapshot_dir(id).join("fs")
    }

    fn work_dir(&self, id: u64) -> PathBuf {
        self.snapshot_dir(id).join("work")
    }

    /// Creates the directories of a new snapshot. `chain` holds the parent's id and its
    /// ancestors', nearest first.
    pub fn create(&self, id: u64, kind: Kind, chain: &[u64]) -> Result<()> {
        let dir = self.snapshot_dir(id);
        std::fs::create_dir(&dir).ctx("mkdir", &dir)?;
        let fs = self.fs_dir(id);
        std::fs::create_dir(&fs).ctx("mkdir", &fs)?;
        std::fs::set_permissions(&fs, std::fs::Permissions::from_mode(0o755)).ctx("chmod", &fs)?;
        let Some(&parent) = chain.first() else {
            return Ok(());
        };
        match self.kind {
            BackendKind::Overlayfs => {
                if kind == Kind::Active {
                    let work = self.work_dir(id);
                    std::fs::create_dir(&work).ctx("mkdir", &work)?;
                }
                // The overlay's root takes its attributes from the upper dir: carry the
                // parent's over so a chown/chmod of "/" in a lower layer is kept.
                let pfs = self.fs_dir(parent);
                let meta = std::fs::metadata(&pfs).ctx("stat", &pfs)?;
                sys::lchown(&fs, meta.uid(), meta.gid())?;
                std::fs::set_permissions(
                    &fs,
                    std::fs::Permissions::from_mode(meta.mode() & 0o7777),
                )
                .ctx("chmod", &fs)?;
                Ok(())
            }
            // A native view is a read-only bind of the (immutable) parent: no copy needed.
            BackendKind::Native if kind == Kind::View => Ok(()),
            BackendKind::Native => fsutil::copy_tree(&self.fs_dir(parent), &fs),
        }
    }

    /// The mounts that present snapshot `id` of `kind` with ancestors `chain`.
    pub fn mounts(&self, id: u64, kind: Kind, chain: &[u64]) -> Vec<Mount> {
        let path = |p: &Path| p.to_string_lossy().into_owned();
        let rw = if kind == Kind::View { "ro" } else { "rw" };
        let bind = |source: PathBuf| Mount {
            kind: "bind".into(),
            source: path(&source),
            options: vec![rw.into(), "rbind".into()],
        };
        match (self.kind, kind, chain) {
            (_, _, []) => vec![bind(self.fs_dir(id))],
            (BackendKind::Native, Kind::View, [parent, ..]) => vec![bind(self.fs_dir(*parent))],
            (BackendKind::Native, _, _) => vec![bind(self.fs_dir(id))],
            (BackendKind::Overlayfs, Kind::View, [parent]) => vec![bind(self.fs_dir(*parent))],
            (BackendKind::Overlayfs, _, chain) => {
                let lower = chain
                    .iter()
                    .map(|p| path(&self.fs_dir(*p)))
                    .collect::<Vec<_>>()
                    .join(":");
                let mut options = vec!["index=off".to_string()];
                if kind == Kind::View {
                    options.push("ro".into());
                } else {
                    options.push(format!("workdir={}", path(&self.work_dir(id))));
                    options.push(format!("upperdir={}", path(&self.fs_dir(id))));
                }
                options.push(format!("lowerdir={lower}"));
                vec![Mount {
                    kind: "overlay".into(),
                    source: "overlay".into(),
                    options,
                }]
            }
        }
    }

    /// Disk used by the snapshot's own tree (its changes for overlayfs, a full tree for native).
    pub fn usage(&self, id: u64) -> Result<Usage> {
        fsutil::disk_usage(&self.fs_dir(id))
    }

    /// Deletes everything of snapshot `id`.
    pub fn remove(&self, id: u64) -> Result<()> {
        fsutil::remove_tree(&self.snapshot_dir(id))
    }
}
