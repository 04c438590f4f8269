//! Every mount, unmount, mknod and xattr call Lamina makes, in one place so it can be
//! read and audited at once. Everything else goes through these functions.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timestamps, CWD};
use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MoveMountFlags, UnmountFlags,
};

use crate::error::{Error, Result};
use crate::model::Mount;

fn io_err(op: &'static str, path: &Path, e: rustix::io::Errno) -> Error {
    Error::io(op, path, e.into())
}

/// Mounts a containerd-style mount list onto `target`, in order (each stacked on the last).
///
/// Overlay mounts go through the new mount API (fsopen/fsconfig) and add lower layers one
/// by one with `lowerdir+` where the kernel has it (6.8+), so no option string ever hits
/// the one-page limit of mount(2), whatever the number of layers.
pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<()> {
    for m in mounts {
        match m.kind.as_str() {
            "bind" | "rbind" => mount_bind(m, target)?,
            "overlay" => mount_overlay(m, target)?,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unsupported mount type {other:?}"
                )))
            }
        }
    }
    Ok(())
}

fn mount_bind(m: &Mount, target: &Path) -> Result<()> {
    let source = Path::new(&m.source);
    let recursive = m.kind == "rbind" || m.options.iter().any(|o| o == "rbind");
    let readonly = m.options.iter().any(|o| o == "ro");
    let r = if recursive {
        rustix::mount::mount_bind_recursive(source, target)
    } else {
        rustix::mount::mount_bind(source, target)
    };
    r.map_err(|e| io_err("bind mount onto", target, e))?;
    if readonly {
        if let Err(e) =
            rustix::mount::mount_remount(target, MountFlags::BIND | MountFlags::RDONLY, "")
        {
            let _ = unmount(target);
            return Err(io_err("remount read-only", target, e));
        }
    }
    Ok(())
}

fn mount_overlay(m: &Mount, target: &Path) -> Result<()> {
    let fs = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(|e| io_err("fsopen overlay for", target, e))?;
    let mut readonly = false;
    let mut lowers: Vec<&str> = Vec::new();
    for opt in &m.options {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt.as_str(), None),
        };
        match (key, value) {
            ("ro", None) => readonly = true,
            ("rw", None) => {}
            ("lowerdir", Some(v)) => lowers.extend(v.split(':')),
            (k, Some(v)) => rustix::mount::fsconfig_set_string(&fs, k, v)
                .map_err(|e| io_err("overlay option", Path::new(opt), e))?,
            (k, None) => rustix::mount::fsconfig_set_flag(&fs, k)
                .map_err(|e| io_err("overlay option", Path::new(opt), e))?,
        }
    }
    // Lowest priority last, as in `lowerdir=top:...:bottom`; `lowerdir+` appends in order.
    let mut per_layer = true;
    for lower in &lowers {
        if let Err(e) = rustix::mount::fsconfig_set_string(&fs, "lowerdir+", *lower) {
            if e == rustix::io::Errno::INVAL && per_layer && lower == &lowers[0] {
                per_layer = false; // kernel before 6.8: fall back to one option string
                break;
            }
            return Err(io_err("overlay lowerdir", Path::new(lower), e));
        }
    }
    if !per_layer {
        rustix::mount::fsconfig_set_string(&fs, "lowerdir", lowers.join(":"))
            .map_err(|e| io_err("overlay lowerdir for", target, e))?;
    }
    rustix::mount::fsconfig_create(&fs).map_err(|e| io_err("create overlay for", target, e))?;
    let attrs = if readonly {
        MountAttrFlags::MOUNT_ATTR_RDONLY
    } else {
        MountAttrFlags::empty()
    };
    let mnt = rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs)
        .map_err(|e| io_err("fsmount overlay for", target, e))?;
    rustix::mount::move_mount(
        &mnt,
        "",
        CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| io_err("move overlay mount onto", target, e))
}

/// Unmounts `target` (one level). A mount can be busy for a moment after its last user
/// closed it (e.g. a process forked between open and close holds the file until it execs),
/// so EBUSY is retried for up to half a second before it is reported.
pub fn unmount(target: &Path) -> Result<()> {
    let mut tries = 0;
    loop {
        match rustix::mount::unmount(target, UnmountFlags::empty()) {
            Err(rustix::io::Errno::BUSY) if tries < 50 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            r => return r.map_err(|e| io_err("unmount", target, e)),
        }
    }
}

/// Mounts a read-only FUSE file system on `target` and returns the `/dev/fuse` session
/// descriptor its server reads requests from. Lamina mounts it itself (rather than
/// letting the FUSE library do it) so that every mount stays in this module, and so the
/// descriptor can be handed to another process to keep serving the same mount.
/// Without `allow_other` only root (the mounter) may use the mount directly; overlayfs
/// mounts that stack it as a lower layer still serve every user.
pub fn mount_fuse(target: &Path, source: &str, allow_other: bool) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsRawFd;
    let dev = Path::new("/dev/fuse");
    let fd = rustix::fs::open(
        dev,
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err("open", dev, e))?;
    let data = std::ffi::CString::new(format!(
        "fd={},rootmode=40000,user_id=0,group_id=0,default_permissions{}",
        fd.as_raw_fd(),
        if allow_other { ",allow_other" } else { "" }
    ))
    .expect("no NUL in mount options");
    rustix::mount::mount(
        source,
        target,
        "fuse.lamina",
        MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV,
        Some(data.as_c_str()),
    )
    .map_err(|e| io_err("mount fuse", target, e))?;
    Ok(fd)
}

/// Mounts the EROFS image file `image` read-only on `target`: file-backed where the
/// kernel can (Linux 6.12 or later built with EROFS_FS_BACKED_BY_FILE, and an image on a
/// file system that supports it; no loop device to leak), else through a self-clearing
/// read-only loop device.
pub fn mount_erofs(image: &Path, target: &Path) -> Result<()> {
    match rustix::mount::mount(
        image,
        target,
        "erofs",
        MountFlags::RDONLY | MountFlags::NODEV | MountFlags::NOSUID,
        None,
    ) {
        Ok(()) => Ok(()),
        // Not possible file-backed here (an older kernel, or an image on tmpfs).
        Err(rustix::io::Errno::NOTBLK | rustix::io::Errno::INVAL) => {
            mount_through_loop(image, target, "erofs", true)
        }
        Err(e) => Err(io_err("mount EROFS image on", target, e)),
    }
}

/// The kernel's `struct loop_info64` (linux/loop.h); the libc crate does not define the
/// loop device ABI, so it is written out here.
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// The kernel's `struct loop_config` (linux/loop.h), for LOOP_CONFIGURE.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// Mounts the ext4 image file `image` read-write on `target` through a loop device that
/// detaches itself when the mount goes away (LO_FLAGS_AUTOCLEAR), so no loop device
/// outlives its mount.
pub fn mount_ext4_image(image: &Path, target: &Path) -> Result<()> {
    mount_through_loop(image, target, "ext4", false)
}

/// Mounts file system `fstype` from image file `image` on `target` through a
/// self-clearing loop device, read-only or not.
fn mount_through_loop(image: &Path, target: &Path, fstype: &str, read_only: bool) -> Result<()> {
    use std::os::fd::AsRawFd;
    const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
    const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
    const LO_FLAGS_READ_ONLY: u32 = 1;
    const LO_FLAGS_AUTOCLEAR: u32 = 4;
    let (access, flags, mount_flags) = if read_only {
        (
            OFlags::RDONLY,
            LO_FLAGS_AUTOCLEAR | LO_FLAGS_READ_ONLY,
            MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV,
        )
    } else {
        (
            OFlags::RDWR,
            LO_FLAGS_AUTOCLEAR,
            MountFlags::NOSUID | MountFlags::NODEV,
        )
    };
    let ctl_path = Path::new("/dev/loop-control");
    let ctl = rustix::fs::open(ctl_path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| io_err("open", ctl_path, e))?;
    let backing = rustix::fs::open(image, access | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| io_err("open", image, e))?;
    // Another process may take the free device between asking and configuring it.
    for _ in 0..16 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and only returns a device number;
        // the descriptor is a valid open /dev/loop-control.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(Error::io(
                "find a free loop device via",
                ctl_path,
                std::io::Error::last_os_error(),
            ));
        }
        let dev = std::path::PathBuf::from(format!("/dev/loop{n}"));
        let loopdev = rustix::fs::open(&dev, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| io_err("open", &dev, e))?;
        let config = LoopConfig {
            fd: backing.as_raw_fd() as u32,
            block_size: 0,
            info: LoopInfo64 {
                device: 0,
                inode: 0,
                rdevice: 0,
                offset: 0,
                sizelimit: 0,
                number: 0,
                encrypt_type: 0,
                encrypt_key_size: 0,
                flags,
                file_name: [0; 64],
                crypt_name: [0; 64],
                encrypt_key: [0; 32],
                init: [0; 2],
            },
            reserved: [0; 8],
        };
        // SAFETY: LOOP_CONFIGURE reads one `struct loop_config`, which `config` is
        // (same layout, repr(C)), valid for the duration of the call; both descriptors
        // are open.
        let rc = unsafe { libc::ioctl(loopdev.as_raw_fd(), LOOP_CONFIGURE, &config) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EBUSY) {
                continue;
            }
            return Err(Error::io("attach a loop device to", image, e));
        }
        // The loop device clears itself once the mount (the last user) lets go of it,
        // or as soon as `loopdev` is closed if the mount fails.
        return rustix::mount::mount(&dev, target, fstype, mount_flags, None)
            .map_err(|e| io_err("mount image (through a loop device) on", target, e));
    }
    Err(Error::FailedPrecondition(format!(
        "no free loop device for {} after 16 tries",
        image.display()
    )))
}

/// Bind-mounts directory `source` on `target`.
pub fn bind_mount(source: &Path, target: &Path) -> Result<()> {
    rustix::mount::mount_bind(source, target).map_err(|e| io_err("bind mount onto", target, e))
}

/// Whether an EROFS file system is mounted at `path`.
pub fn is_erofs(path: &Path) -> bool {
    const EROFS_SUPER_MAGIC_V1: u64 = 0xE0F5_E1E2;
    rustix::fs::statfs(path).is_ok_and(|st| st.f_type as u64 == EROFS_SUPER_MAGIC_V1)
}

/// Unmounts `target` lazily: detaches it now, frees it when no longer busy.
pub fn unmount_detach(target: &Path) -> Result<()> {
    rustix::mount::unmount(target, UnmountFlags::DETACH).map_err(|e| io_err("unmount", target, e))
}

/// Creates a device node, fifo or socket at `path` with the given type bits and device number.
pub fn mknod(path: &Path, file_type: FileType, mode: u32, dev: u64) -> Result<()> {
    rustix::fs::mknodat(CWD, path, file_type, Mode::from_raw_mode(mode), dev)
        .map_err(|e| io_err("mknod", path, e))
}

/// Creates a device node or fifo `name` in the directory `dir` (no path resolution).
pub fn mknod_at(
    dir: impl std::os::fd::AsFd,
    name: &std::ffi::OsStr,
    file_type: FileType,
    mode: u32,
    dev: u64,
) -> std::io::Result<()> {
    rustix::fs::mknodat(dir, name, file_type, Mode::from_raw_mode(mode), dev).map_err(Into::into)
}

/// Sets an extended attribute on an open file or directory.
pub fn set_xattr_fd(fd: impl std::os::fd::AsFd, name: &str, value: &[u8]) -> std::io::Result<()> {
    rustix::fs::fsetxattr(fd, name, value, rustix::fs::XattrFlags::empty()).map_err(Into::into)
}

/// Sets an extended attribute on entry `name` of the directory `dir` without following
/// a symlink at `name` (symlinks cannot be opened, so this goes through the directory's
/// /proc/self/fd entry, which stays inside the already-resolved directory).
pub fn set_xattr_at(
    dir: impl std::os::fd::AsFd,
    name: &std::ffi::OsStr,
    xname: &str,
    value: &[u8],
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let path = Path::new("/proc/self/fd")
        .join(dir.as_fd().as_raw_fd().to_string())
        .join(name);
    rustix::fs::lsetxattr(&path, xname, value, rustix::fs::XattrFlags::empty()).map_err(Into::into)
}

/// Lists the extended attribute names of `path` (not following symlinks).
pub fn list_xattrs(path: &Path) -> Result<Vec<OsString>> {
    let mut buf = vec![0u8; 1024];
    loop {
        match rustix::fs::llistxattr(path, &mut buf[..]) {
            Ok(n) => {
                return Ok(buf[..n]
                    .split(|b| *b == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| OsString::from_vec(s.to_vec()))
                    .collect())
            }
            Err(rustix::io::Errno::RANGE) => buf.resize(buf.len() * 4, 0),
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(io_err("listxattr", path, e)),
        }
    }
}

/// Reads one extended attribute of `path` (not following symlinks); `None` if absent
/// (or if its file system has no xattrs).
pub fn get_xattr(path: &Path, name: &OsString) -> Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 256];
    loop {
        match rustix::fs::lgetxattr(path, name.as_os_str(), &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(rustix::io::Errno::RANGE) => buf.resize(buf.len() * 4, 0),
            // A file system without xattrs (or a lazy layer that has none) has none.
            Err(rustix::io::Errno::NODATA | rustix::io::Errno::NOTSUP) => return Ok(None),
            Err(e) => return Err(io_err("getxattr", path, e)),
        }
    }
}

/// Sets one extended attribute of `path` (not following symlinks).
pub fn set_xattr(path: &Path, name: &OsString, value: &[u8]) -> Result<()> {
    rustix::fs::lsetxattr(
        path,
        name.as_os_str(),
        value,
        rustix::fs::XattrFlags::empty(),
    )
    .map_err(|e| io_err("setxattr", path, e))
}

/// Sets owner and group of `path` without following symlinks.
pub fn lchown(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(|e| Error::io("lchown", path, e))
}

/// Sets access and modification times of `path` without following symlinks.
pub fn set_times(path: &Path, atime: (i64, i64), mtime: (i64, i64)) -> Result<()> {
    let ts = |(s, ns): (i64, i64)| rustix::fs::Timespec {
        tv_sec: s,
        tv_nsec: ns as _,
    };
    let times = Timestamps {
        last_access: ts(atime),
        last_modification: ts(mtime),
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| io_err("utimensat", path, e))
}

/// Asks the kernel to start writing out the dirty data of the filesystem holding `path`
/// without waiting for it (best effort): `syncfs` on a helper thread.
pub fn start_writeback(path: &Path) {
    let path = path.to_path_buf();
    let _ = std::thread::Builder::new()
        .name("writeback".into())
        .spawn(move || {
            if let Err(e) = syncfs(&path) {
                tracing::debug!(error = %e, "early writeback failed; the commit's syncfs covers it");
            }
        });
}

/// Flushes the filesystem that holds `path` to stable storage.
pub fn syncfs(path: &Path) -> Result<()> {
    let dir = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
    rustix::fs::syncfs(&dir).map_err(|e| io_err("syncfs", path, e))
}

/// Mount points at or below `dir` (from /proc/self/mountinfo), deepest first, so they can
/// be detached before a tree is deleted: deleting through a mount would write outside
/// Lamina's root.
pub fn mount_points_under(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("read", "/proc/self/mountinfo", e))?;
    let mut found: Vec<std::path::PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| std::path::PathBuf::from(unescape_mountinfo(field)))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    Ok(found)
}

/// Detaches every mount at or below `dir`, deepest first, until none is left (mounts
/// stacked on one path are listed once, so one pass may not be enough). Gives how many
/// it detached.
pub fn detach_mounts_under(dir: &Path) -> Result<usize> {
    let mut detached = 0;
    loop {
        let mounts = mount_points_under(dir)?;
        if mounts.is_empty() {
            return Ok(detached);
        }
        for mount_point in mounts {
            tracing::info!(path = %mount_point.display(), "detaching a mount");
            unmount_detach(&mount_point)?;
            detached += 1;
        }
    }
}

/// Decodes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape_mountinfo(field: &str) -> OsString {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    OsString::from_vec(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(
            unescape_mountinfo(r"/a\040b\134c"),
            OsString::from("/a b\\c")
        );
        assert_eq!(
            unescape_mountinfo(r"/plain\04"),
            OsString::from(r"/plain\04")
        );
    }
}
