//! A read-only FUSE file system over a layer [`Tree`]: metadata from the tree, file
//! bytes from a [`LayerData`] source (a registry read on demand, a local blob, a chunk
//! cache). Mounted as an overlayfs lower directory, whiteouts and opaque markers work as
//! they do in an unpacked layer.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    FileAttr, FileType, Filesystem, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyXattr, Request,
};

use super::access::AccessLog;
use super::tree::{Node, NodeKind, Tree, ROOT};

/// How long the kernel may keep what it was told: the tree never changes.
const TTL: Duration = Duration::from_secs(24 * 3600);

/// Where the bytes of a layer's regular files come from.
pub trait LayerData: Send + Sync + 'static {
    /// Reads bytes of file `data` (the handle its entry carries) from `offset` into `buf`;
    /// fewer than asked only at the end of the file. Must give up with an error in bounded
    /// time (a reader gets EIO), never block forever.
    fn read(&self, data: u64, offset: u64, buf: &mut [u8]) -> std::io::Result<usize>;

    /// [`LayerData::read`] if it can be answered at once, from what is already local
    /// (`None`: it would have to wait, e.g. on the network). Such reads are answered on
    /// the request loop itself, saving a hand-over to a read thread and back.
    fn read_local(
        &self,
        _data: u64,
        _offset: u64,
        _buf: &mut [u8],
    ) -> Option<std::io::Result<usize>> {
        None
    }
}

/// Threads answering reads: a read may wait on the network, and must not hold up
/// lookups and other reads behind it on the session's one request loop.
const READERS: usize = 8;

/// A read handed to a worker.
struct ReadJob {
    data: u64,
    offset: u64,
    /// Where the bytes go: as long as the read asked for.
    buf: Vec<u8>,
    reply: ReplyData,
}

/// The FUSE handlers of one lazy layer.
pub struct LazyFs {
    tree: Arc<Tree>,
    data: Arc<dyn LayerData>,
    jobs: std::sync::mpsc::SyncSender<ReadJob>,
    /// Whether any node has an extended attribute (opaque markers included).
    has_xattrs: bool,
    /// Where first reads are noted, if anywhere.
    log: Option<Arc<AccessLog>>,
}

impl LazyFs {
    /// Serves `tree` with file bytes from `data`, read by a pool of worker threads that
    /// ends when the file system is dropped.
    pub fn new(tree: Arc<Tree>, data: Arc<dyn LayerData>) -> Self {
        let (jobs, queue) = std::sync::mpsc::sync_channel::<ReadJob>(READERS * 4);
        let queue = Arc::new(std::sync::Mutex::new(queue));
        for _ in 0..READERS {
            let (queue, data) = (queue.clone(), data.clone());
            let spawned = std::thread::Builder::new()
                .name("lamina-fuse-read".into())
                .spawn(move || loop {
                    let job = match queue.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                        Ok(job) => job,
                        Err(_) => return, // the file system is gone
                    };
                    serve_read(&*data, job);
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "could not start a FUSE read thread");
            }
        }
        let has_xattrs =
            (1..=tree.len() as u64).any(|ino| tree.node(ino).is_some_and(|n| !n.xattrs.is_empty()));
        LazyFs {
            tree,
            data,
            jobs,
            has_xattrs,
            log: None,
        }
    }

    /// Notes the first read of each file in `log` (a prefetch list for the next start).
    pub fn recording(mut self, log: Arc<AccessLog>) -> Self {
        self.log = Some(log);
        self
    }

    fn attr(&self, ino: u64, n: &Node) -> FileAttr {
        let mtime = if n.mtime.0 >= 0 {
            UNIX_EPOCH + Duration::new(n.mtime.0 as u64, n.mtime.1.min(999_999_999))
        } else {
            UNIX_EPOCH
        };
        FileAttr {
            ino,
            size: n.size,
            blocks: n.size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind: file_type(n.kind),
            perm: (n.mode & 0o7777) as u16,
            nlink: if n.kind == NodeKind::Dir {
                2
            } else {
                n.nlink.max(1)
            },
            uid: n.uid,
            gid: n.gid,
            rdev: n.rdev as u32,
            blksize: 4096,
            flags: 0,
        }
    }
}

fn file_type(k: NodeKind) -> FileType {
    match k {
        NodeKind::File => FileType::RegularFile,
        NodeKind::Dir => FileType::Directory,
        NodeKind::Symlink => FileType::Symlink,
        NodeKind::Char => FileType::CharDevice,
        NodeKind::Block => FileType::BlockDevice,
        NodeKind::Fifo => FileType::NamedPipe,
    }
}

/// Reads `job.buf.len()` bytes of file `job.data` and answers the kernel; EIO if the source
/// fails (it gives up in bounded time).
fn serve_read(data: &dyn LayerData, job: ReadJob) {
    let mut buf = job.buf;
    let mut filled = 0;
    while filled < buf.len() {
        match data.read(job.data, job.offset + filled as u64, &mut buf[filled..]) {
            Ok(0) => break,
            Ok(k) => filled += k,
            Err(e) => {
                tracing::warn!(file = job.data, offset = job.offset, error = %e, "lazy read failed");
                return job.reply.error(libc::EIO);
            }
        }
    }
    job.reply.data(&buf[..filled]);
}

/// Answers an xattr request of `size` with `value` (the size when `size` is 0).
fn xattr_reply(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(libc::ERANGE);
    } else {
        reply.data(value);
    }
}

impl Filesystem for LazyFs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let found = self
            .tree
            .node(parent)
            .and_then(|p| p.children.get(name))
            .and_then(|&ino| self.tree.node(ino).map(|n| (ino, n)));
        match found {
            Some((ino, n)) => reply.entry(&TTL, &self.attr(ino, n), 0),
            // Inode 0 is FUSE's cacheable "no such entry": overlayfs looks every name up
            // in each lower directory that has its parent, and the answer never changes.
            None if self.tree.node(parent).is_some() => {
                let mut none = self.attr(ROOT, self.tree.node(ROOT).expect("the root exists"));
                none.ino = 0;
                reply.entry(&TTL, &none, 0)
            }
            None => reply.error(libc::ENOENT),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.tree.node(ino) {
            Some(n) => reply.attr(&TTL, &self.attr(ino, n)),
            None => reply.error(libc::ENOENT),
        }
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        match self.tree.node(ino).and_then(|n| n.link.as_ref()) {
            Some(target) => reply.data(target.as_os_str().as_bytes()),
            None => reply.error(libc::EINVAL),
        }
    }

    fn init(
        &mut self,
        _req: &Request<'_>,
        config: &mut fuser::KernelConfig,
    ) -> Result<(), libc::c_int> {
        // Link targets never change either (kernels without it just ask again). The bit
        // is FUSE_CACHE_SYMLINKS, which fuser names only with its ABI 7.28 feature.
        const CACHE_SYMLINKS: u64 = 1 << 23;
        let _ = config.add_capabilities(CACHE_SYMLINKS);
        Ok(())
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(libc::EROFS);
        }
        match self.tree.node(ino) {
            // Nothing to do per open: ENOSYS tells the kernel to stop sending opens (and
            // the releases and flushes that go with them) and to keep file pages cached
            // across opens, which is right since the contents never change. A container
            // starting opens thousands of files; each saved round trip counts.
            Some(n) if n.kind == NodeKind::File => reply.error(libc::ENOSYS),
            Some(_) => reply.error(libc::EINVAL),
            None => reply.error(libc::ENOENT),
        }
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        match self.tree.node(ino) {
            // As for open: no state per open directory.
            Some(n) if n.kind == NodeKind::Dir => reply.error(libc::ENOSYS),
            Some(_) => reply.error(libc::ENOTDIR),
            None => reply.error(libc::ENOENT),
        }
    }

    fn flush(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _lock_owner: u64,
        reply: fuser::ReplyEmpty,
    ) {
        // Read-only: nothing to write back on close, now or ever (ENOSYS stops flushes).
        reply.error(libc::ENOSYS);
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: ReplyData,
    ) {
        let Some(n) = self.tree.node(ino) else {
            return reply.error(libc::ENOENT);
        };
        if let Some(log) = &self.log {
            log.note(ino);
        }
        let (Some(data), Ok(offset)) = (n.data, u64::try_from(offset)) else {
            return reply.error(libc::EINVAL);
        };
        if offset >= n.size {
            return reply.data(&[]);
        }
        let len = (size as u64).min(n.size - offset) as usize;
        let mut buf = vec![0u8; len];
        match self.data.read_local(data, offset, &mut buf) {
            Some(Ok(got)) if got == len => return reply.data(&buf),
            Some(Err(e)) => {
                tracing::warn!(file = data, offset, error = %e, "lazy read failed");
                return reply.error(libc::EIO);
            }
            _ => {} // not all local (or short): a read thread fetches it
        }
        let job = ReadJob {
            data,
            offset,
            buf,
            reply,
        };
        if let Err(std::sync::mpsc::SendError(job)) = self.jobs.send(job) {
            job.reply.error(libc::EIO); // no reader thread left
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let Some(dir) = self.tree.node(ino) else {
            return reply.error(libc::ENOENT);
        };
        if dir.kind != NodeKind::Dir {
            return reply.error(libc::ENOTDIR);
        }
        let dots = [
            (ino, FileType::Directory, OsStr::new(".")),
            (dir.parent, FileType::Directory, OsStr::new("..")),
        ];
        let children = dir.children.iter().filter_map(|(name, &child)| {
            self.tree
                .node(child)
                .map(|n| (child, file_type(n.kind), name.as_os_str()))
        });
        for (i, (child, kind, name)) in dots
            .into_iter()
            .chain(children)
            .enumerate()
            .skip(offset.max(0) as usize)
        {
            // The offset handed back is where the next call resumes.
            if reply.add(child, i as i64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn getxattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        name: &OsStr,
        size: u32,
        reply: ReplyXattr,
    ) {
        if !self.has_xattrs {
            // ENOSYS makes the kernel answer every later getxattr of this mount itself
            // ("not supported", which overlayfs and file capabilities take as "none"):
            // most layers have no xattrs, and overlayfs asks about each file it looks up.
            // Listing stays (it is off the lookup path): it says "none" as a disk would.
            return reply.error(libc::ENOSYS);
        }
        let value = self
            .tree
            .node(ino)
            .and_then(|n| n.xattrs.get(name.to_str().unwrap_or_default()));
        match value {
            Some(v) => xattr_reply(reply, size, v),
            None => reply.error(libc::ENODATA),
        }
    }

    fn listxattr(&mut self, _req: &Request<'_>, ino: u64, size: u32, reply: ReplyXattr) {
        let Some(n) = self.tree.node(ino) else {
            return reply.error(libc::ENOENT);
        };
        let mut names = Vec::new();
        for k in n.xattrs.keys() {
            names.extend_from_slice(k.as_bytes());
            names.push(0);
        }
        xattr_reply(reply, size, &names);
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let files = self.tree.len() as u64;
        reply.statfs(0, 0, 0, files, 0, 4096, 255, 4096);
    }
}
