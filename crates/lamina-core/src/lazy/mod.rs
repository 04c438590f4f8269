//! Lazy layers: a layer's files served by a FUSE file system from its table of contents,
//! their bytes read only when a process reads them, so a container can start before its
//! image is downloaded. The mounted layer is an ordinary overlayfs lower directory.

pub mod access;
pub mod cache;
pub mod fs;
pub mod indexed;
pub mod tree;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use access::AccessLog;
pub use cache::{ChunkCache, StreamSource};
pub use fs::{LayerData, LazyFs};
pub use indexed::{IndexedStream, NotLazy};
pub use tree::{Node, NodeKind, Tree};

use crate::error::{Error, Result};

/// A lazy layer mounted on a directory, served by a thread of this process until dropped
/// (which unmounts it).
pub struct LazyMount {
    target: PathBuf,
    server: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

/// The paths of a prefetch list (what `lamina pull --prefetch-file` reads and `lamina
/// index push` publishes): one per line, first needed first; surrounding blanks trimmed,
/// empty lines and lines starting with '#' skipped.
pub fn prefetch_list_paths(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// Who may use a lazy layer's mount directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MountAccess {
    /// Only the mounter (root). Overlayfs mounts on top of it still serve every user:
    /// overlayfs reads its lower layers with its own mounter's credentials.
    #[default]
    RootOnly,
    /// Every user (FUSE's `allow_other`), subject to the files' own permissions.
    AllUsers,
}

impl LazyMount {
    /// Mounts `tree` on `target` (an existing directory), file bytes from `data`,
    /// usable directly by root only ([`MountAccess::RootOnly`]).
    pub fn mount(tree: Arc<Tree>, data: Arc<dyn LayerData>, target: &Path) -> Result<LazyMount> {
        LazyMount::mount_with(tree, data, target, MountAccess::RootOnly)
    }

    /// [`LazyMount::mount`], with `access` saying who may use the mount directly.
    pub fn mount_with(
        tree: Arc<Tree>,
        data: Arc<dyn LayerData>,
        target: &Path,
        access: MountAccess,
    ) -> Result<LazyMount> {
        LazyMount::mount_recording(tree, data, target, access, None)
    }

    /// [`LazyMount::mount_with`], noting in `log` (when given) the first read of each file.
    pub fn mount_recording(
        tree: Arc<Tree>,
        data: Arc<dyn LayerData>,
        target: &Path,
        access: MountAccess,
        log: Option<Arc<AccessLog>>,
    ) -> Result<LazyMount> {
        let fd = crate::sys::mount_fuse(target, "lamina", access == MountAccess::AllUsers)?;
        let mut fs = LazyFs::new(tree, data);
        if let Some(log) = log {
            fs = fs.recording(log);
        }
        // The kernel enforces `access` (allow_other or not); the session lets through
        // whatever the kernel lets through.
        let mut session = fuser::Session::from_fd(fs, fd, fuser::SessionACL::All);
        let server = std::thread::Builder::new()
            .name("lamina-fuse".into())
            .spawn(move || session.run())
            .map_err(|e| Error::io("start FUSE server for", target, e))?;
        Ok(LazyMount {
            target: target.to_path_buf(),
            server: Some(server),
        })
    }

    /// Where it is mounted.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Serves until the mount goes away (unmounted, or detached and no longer used): what
    /// a process that exists only to serve one lazy layer does.
    pub fn wait(mut self) -> Result<()> {
        let outcome = match self.server.take() {
            Some(server) => server.join(),
            None => return Ok(()),
        };
        // The session is over: nothing is left to unmount (an empty target tells Drop).
        let target = std::mem::take(&mut self.target);
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::io("serve FUSE on", target, e)),
            Err(_) => Err(Error::FailedPrecondition("the FUSE server panicked".into())),
        }
    }
}

impl Drop for LazyMount {
    fn drop(&mut self) {
        if self.target.as_os_str().is_empty() {
            return; // served to the end by `wait`
        }
        match crate::sys::unmount(&self.target) {
            // Unmounted: the kernel ends the session, and with it the server's loop.
            Ok(()) => {
                if let Some(server) = self.server.take() {
                    let _ = server.join();
                }
            }
            // Files still open: detach the mount; the server keeps answering their
            // readers and ends when the last one closes.
            Err(_) => {
                if let Err(e) = crate::sys::unmount_detach(&self.target) {
                    tracing::warn!(target = %self.target.display(), error = %e, "unmounting a lazy layer");
                }
            }
        }
    }
}
