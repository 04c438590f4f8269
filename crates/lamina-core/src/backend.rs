//! Backends turn snapshot records into directories and mounts: `overlayfs` stacks each
//! snapshot's own changes over its parents' directories; `native` gives every writable
//! snapshot a full copy of its parent, for filesystems where overlayfs cannot run;
//! `block` stacks like overlayfs, but keeps every committed layer as one read-only EROFS
//! image file (a host holds one file per layer instead of thousands), mounted file-backed.

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
    /// overlayfs over committed layers kept as EROFS image files.
    Block,
}

impl BackendKind {
    /// The backend's name in configs and flags.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Overlayfs => "overlayfs",
            BackendKind::Native => "native",
            BackendKind::Block => "block",
        }
    }

    /// Whether snapshots are overlayfs stacks of their ancestors' layer directories
    /// (overlayfs and block), rather than full trees (native).
    pub fn stacks_layers(self) -> bool {
        matches!(self, BackendKind::Overlayfs | BackendKind::Block)
    }

    /// The number recorded in the metadata file, so a root is never opened with the
    /// wrong backend.
    pub(crate) fn code(self) -> u64 {
        match self {
            BackendKind::Overlayfs => 1,
            BackendKind::Native => 2,
            BackendKind::Block => 3,
        }
    }
}

impl FromStr for BackendKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "overlayfs" | "overlay" => Ok(BackendKind::Overlayfs),
            "native" => Ok(BackendKind::Native),
            "block" | "erofs" => Ok(BackendKind::Block),
            other => Err(Error::InvalidArgument(format!(
                "unknown backend {other:?} (expected overlayfs, native or block)"
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
            BackendKind::Overlayfs | BackendKind::Block => {
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
            (BackendKind::Overlayfs | BackendKind::Block, Kind::View, [parent]) => {
                vec![bind(self.fs_dir(*parent))]
            }
            (BackendKind::Overlayfs | BackendKind::Block, _, chain) => {
                let lower = chain
                    .iter()
                    .map(|p| path(&self.fs_dir(*p)))
                    .collect::<Vec<_>>()
                    .join(":");
                let mut options = vec!["index=off".to_string()];
                if kind == Kind::View {
                    options.push("ro".into());
                } else if self.has_writable_image(id) {
                    // overlayfs wants upper and work under one mount: the image's.
                    let rw = self.snapshot_dir(id).join(RW_DIR);
                    options.push(format!("workdir={}", path(&rw.join("work"))));
                    options.push(format!("upperdir={}", path(&rw.join("upper"))));
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

    /// Block backend: the EROFS image of committed layer `id`.
    pub fn image_path(&self, id: u64) -> PathBuf {
        self.snapshot_dir(id).join(IMAGE_FILE)
    }

    /// Block backend: writes the tree of snapshot `id` into its EROFS image (synced, then
    /// renamed into place), leaving the tree as it is. Gives the layer's usage: the
    /// image's allocated bytes and the tree's inodes.
    pub fn build_image(&self, id: u64) -> Result<Usage> {
        let fs = self.fs_dir(id);
        let tree = fsutil::disk_usage(&fs)?;
        let image = self.image_path(id);
        let tmp = image.with_extension("erofs.new");
        let _ = std::fs::remove_file(&tmp);
        // Hand-writing EROFS is not worth it while Debian's mkfs.erofs does the job:
        // owners, modes, mtimes, xattrs (trusted.overlay.opaque included), devices (0:0
        // whiteouts included) and hard links are kept as the tree has them.
        let args = [
            "--quiet".as_ref(),
            "--preserve-mtime".as_ref(),
            tmp.as_os_str(),
            fs.as_os_str(),
        ];
        if let Err(e) = run_mkfs(
            "mkfs.erofs",
            "run mkfs.erofs (erofs-utils) for",
            "erofs-utils",
            &args,
            &fs,
        ) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let file = std::fs::File::open(&tmp).ctx("open", &tmp)?;
        file.sync_all().ctx("fsync", &tmp)?;
        let allocated = file.metadata().ctx("stat", &tmp)?.blocks() as i64 * 512;
        std::fs::rename(&tmp, &image).ctx("rename", &image)?;
        Ok(Usage {
            size: allocated,
            inodes: tree.inodes,
        })
    }

    /// Block backend: makes the file tree of committed layer `id` its EROFS image,
    /// mounted read-only, replacing the directory tree it was built from. Does nothing
    /// when it is mounted already (a restarted daemon finds its mounts).
    pub fn activate_image(&self, id: u64) -> Result<()> {
        let fs = self.fs_dir(id);
        if sys::is_erofs(&fs) {
            return Ok(());
        }
        self.release_writable_image(id)?;
        fsutil::empty_dir(&fs)?;
        fsutil::remove_tree(&self.work_dir(id))?;
        sys::mount_erofs(&self.image_path(id), &fs)
    }

    /// Block backend: gives writable snapshot `id` (just created) an ext4 image of
    /// `bytes` (sparse) holding its upper and work directories, so it cannot write more:
    /// the image is mounted at `rw` (the overlay's upper and work dirs are in it), and its
    /// `upper` bind-mounted on `fs`, where everything else reads a snapshot's own tree.
    pub fn create_writable_image(&self, id: u64, bytes: u64) -> Result<()> {
        // Below this ext4 has no room for its own metadata and a journal.
        const SMALLEST: u64 = 8 << 20;
        if bytes < SMALLEST {
            return Err(Error::InvalidArgument(format!(
                "a writable layer quota of {bytes} bytes is below the smallest, {SMALLEST}"
            )));
        }
        let image = self.snapshot_dir(id).join(RW_IMAGE);
        let file = std::fs::File::create(&image).ctx("create", &image)?;
        file.set_len(bytes).ctx("size", &image)?;
        drop(file);
        // mkfs.ext4 (e2fsprogs) rather than a hand-written ext4: it is the reference.
        let mut args: Vec<&std::ffi::OsStr> =
            ["-q", "-F", "-m", "0", "-E", "nodiscard,root_owner=0:0"]
                .iter()
                .map(|a| a.as_ref())
                .collect();
        args.push(image.as_os_str());
        run_mkfs(
            "mkfs.ext4",
            "run mkfs.ext4 (e2fsprogs) for",
            "e2fsprogs",
            &args,
            &image,
        )?;
        let rw = self.snapshot_dir(id).join(RW_DIR);
        std::fs::create_dir(&rw).ctx("mkdir", &rw)?;
        sys::mount_ext4_image(&image, &rw)?;
        let (upper, work) = (rw.join("upper"), rw.join("work"));
        std::fs::create_dir(&upper).ctx("mkdir", &upper)?;
        std::fs::create_dir(&work).ctx("mkdir", &work)?;
        // The upper directory is the snapshot's root: it keeps what `create` gave `fs`.
        let fs = self.fs_dir(id);
        let meta = std::fs::metadata(&fs).ctx("stat", &fs)?;
        sys::lchown(&upper, meta.uid(), meta.gid())?;
        std::fs::set_permissions(
            &upper,
            std::fs::Permissions::from_mode(meta.mode() & 0o7777),
        )
        .ctx("chmod", &upper)?;
        sys::bind_mount(&upper, &fs)
    }

    /// Whether snapshot `id` keeps its writable layer in an ext4 image (a quota).
    pub fn has_writable_image(&self, id: u64) -> bool {
        self.snapshot_dir(id).join(RW_IMAGE).is_file()
    }

    /// Block backend: mounts the ext4 image of writable snapshot `id`, if it has one and
    /// it is not mounted (after a reboot).
    pub fn mount_writable_image(&self, id: u64) -> Result<()> {
        let dir = self.snapshot_dir(id);
        let (image, rw) = (dir.join(RW_IMAGE), dir.join(RW_DIR));
        if !image.is_file() || !sys::mount_points_under(&rw)?.is_empty() {
            return Ok(());
        }
        sys::mount_ext4_image(&image, &rw)?;
        sys::bind_mount(&rw.join("upper"), &self.fs_dir(id))
    }

    /// Block backend: takes the ext4 image of snapshot `id` away (once its tree was
    /// committed into a layer image): its mounts detached (the loop device clears
    /// itself), the image deleted.
    fn release_writable_image(&self, id: u64) -> Result<()> {
        let dir = self.snapshot_dir(id);
        let image = dir.join(RW_IMAGE);
        if !image.exists() {
            return Ok(());
        }
        // The bind of the upper dir on `fs`; removing `rw` detaches the image mount.
        sys::detach_mounts_under(&self.fs_dir(id))?;
        fsutil::remove_tree(&dir.join(RW_DIR))?;
        std::fs::remove_file(&image).ctx("remove", &image)
    }

    /// Block backend: whether committed layer `id` has its image.
    pub fn has_image(&self, id: u64) -> bool {
        self.image_path(id).is_file()
    }
}

/// Runs file-system maker `tool` (from Debian package `package`) with `args`, making
/// `subject`; its stderr is the error when it fails. `op` names the step in errors.
fn run_mkfs(
    tool: &str,
    op: &'static str,
    package: &str,
    args: &[&std::ffi::OsStr],
    subject: &Path,
) -> Result<()> {
    let out = std::process::Command::new(tool)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| {
            Error::io(
                op,
                subject,
                std::io::Error::new(e.kind(), format!("{e}: is {package} installed?")),
            )
        })?;
    if !out.status.success() {
        return Err(Error::FailedPrecondition(format!(
            "{tool} of {} failed ({}): {}",
            subject.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The EROFS image of a committed layer (block backend), in its snapshot directory.
const IMAGE_FILE: &str = "layer.erofs";
/// The ext4 image holding a writable layer with a quota (block backend).
const RW_IMAGE: &str = "rw.img";
/// Where that image is mounted.
const RW_DIR: &str = "rw";
