//! laminad's side of lazy layers: starting the server process of a new lazy layer,
//! taking over the servers that outlived a previous laminad (or starting them again
//! where they died) before serving, and reporting how far each layer has come.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use lamina_core::lazy::ChunkCache;
use lamina_core::Snapshotter;

use super::serve::READY;
use super::spec::{LayerState, LazySpec, CACHE_DIR, LAZY_DIR, LOG_FILE, PID_FILE};

/// How long a new server may take to mount its layer.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// FUSE's file system magic, as statfs reports it.
const FUSE_SUPER_MAGIC: u64 = 0x6573_5546;

/// Starts the server of the lazy layer in snapshot directory `dir` (its spec written)
/// and waits until its mount is up. Gives the server's pid.
pub fn start(dir: &Path, log_level: &str) -> anyhow::Result<u32> {
    spawn(dir, log_level)?.wait()
}

/// A server started and not yet known to have mounted its layer.
pub struct Starting {
    child: std::process::Child,
    ready: std::sync::mpsc::Receiver<String>,
    log_path: PathBuf,
}

impl Starting {
    /// Waits until the server's mount is up (or it failed, or took too long: then it is
    /// killed). Gives its pid.
    pub fn wait(mut self) -> anyhow::Result<u32> {
        let ready = self.ready.recv_timeout(START_TIMEOUT);
        if ready.as_deref().map(str::trim) != Ok(READY) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let tail = log_tail(&self.log_path);
            match ready {
                Err(_) => {
                    bail!("the lazy layer server did not mount within {START_TIMEOUT:?}: {tail}")
                }
                Ok(_) => bail!("the lazy layer server failed: {tail}"),
            }
        }
        let pid = self.child.id();
        // Reaps it when it ends (its layer unmounted) while this laminad runs.
        let mut child = self.child;
        std::thread::spawn(move || child.wait());
        Ok(pid)
    }
}

impl Starting {
    /// Stops a server that is no longer wanted (a layer below it failed).
    pub fn abandon(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the server of the lazy layer in snapshot directory `dir` without waiting for
/// its mount: servers of a chain's layers start side by side (each waits for the lazy
/// layers below it to be mounted before it fits its tree to them and mounts).
pub fn spawn(dir: &Path, log_level: &str) -> anyhow::Result<Starting> {
    let exe = std::env::current_exe().context("finding laminad's own executable")?;
    let log_path = dir.join(LAZY_DIR).join(LOG_FILE);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut child = {
        use std::os::unix::process::CommandExt;
        Command::new(&exe)
            .arg("--log-level")
            .arg(log_level)
            .arg("lazy-serve")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            // Its own process group: a signal to laminad's group (a terminal's ^C, a
            // service manager stopping laminad) does not end the containers' file systems.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {} lazy-serve", exe.display()))?
    };
    let stdout = child.stdout.take().context("server stdout")?;
    let (tx, ready) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    Ok(Starting {
        child,
        ready,
        log_path,
    })
}

/// Waits until every lazy layer among `lowers` (file trees of the layers below) is
/// mounted, for at most `limit`.
pub fn wait_for_lazy_lowers(lowers: &[PathBuf], limit: Duration) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + limit;
    for lower in lowers {
        let lazy = lower.parent().is_some_and(LazySpec::exists);
        while lazy && !is_fuse(lower) {
            if std::time::Instant::now() >= deadline {
                bail!(
                    "the lazy layer below, {}, was not mounted within {limit:?}",
                    lower.display()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    Ok(())
}

/// Whether a FUSE file system is mounted (and answering) at `path`.
fn is_fuse(path: &Path) -> bool {
    rustix::fs::statfs(path).is_ok_and(|st| st.f_type as u64 == FUSE_SUPER_MAGIC)
}

/// The last lines of a server's log, for an error message.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

/// Whether a live server is serving a mounted lazy layer on `dir/fs`: the pid file names
/// a running `lazy-serve` of this directory, and the file system there answers.
fn serving(dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(dir.join(LAZY_DIR).join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let ours = args.iter().any(|a| *a == b"lazy-serve")
        && args.contains(&dir.as_os_str().as_encoded_bytes());
    if !ours {
        return None;
    }
    let fs = dir.join("fs");
    (is_fuse(&fs) && std::fs::symlink_metadata(&fs).is_ok()).then_some(pid)
}

/// The files of image `image`'s lazy layers in the order they were first read, each
/// once (their access files merged by time).
pub fn accessed(store: &Snapshotter, image: &str) -> lamina_core::Result<Vec<String>> {
    let record = store.image(image)?;
    let mut reads: Vec<(u64, usize, String)> = Vec::new();
    for name in &record.chain_ids {
        let Ok(dir) = store.snapshot_dir(name) else {
            continue; // removed meanwhile
        };
        let layer = super::spec::read_accessed(&dir)
            .map_err(|e| lamina_core::Error::io("read", dir.join(LAZY_DIR), e))?;
        for (ms, file) in layer {
            reads.push((ms, reads.len(), file));
        }
    }
    reads.sort();
    let mut seen = std::collections::HashSet::new();
    Ok(reads
        .into_iter()
        .filter_map(|(_, _, file)| seen.insert(file.clone()).then_some(file))
        .collect())
}

/// One lazy layer, as `lamina lazy` lists it.
#[derive(Debug, Clone)]
pub struct LazyStatus {
    /// The committed snapshot.
    pub snapshot: String,
    /// Its layer blob.
    pub layer: String,
    /// Where it is mounted.
    pub mount: PathBuf,
    /// Its server, when one is serving it.
    pub pid: Option<u32>,
    /// Bytes of the uncompressed layer on disk.
    pub fetched: u64,
    /// Bytes of the uncompressed layer.
    pub total: u64,
    /// fetching, complete, verified, failed, or not-mounted.
    pub state: String,
    /// Why it failed, if it did.
    pub detail: String,
}

/// The lazy layers of `store`: (snapshot name, snapshot directory).
fn lazy_layers(store: &Snapshotter) -> lamina_core::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for (name, kind, fs) in store.trees()? {
        if kind != lamina_core::Kind::Committed {
            continue;
        }
        if let Some(dir) = fs.parent() {
            if LazySpec::exists(dir) {
                out.push((name, dir.to_path_buf()));
            }
        }
    }
    Ok(out)
}

/// Makes every lazy layer of `store` served again: a server that outlived the previous
/// laminad is kept (its readers never noticed); a layer whose server is gone is
/// detached from its dead mount and served by a new one, bottom layers first (a layer's
/// tree is fitted to the ones below it). Run before laminad serves requests.
pub fn restore(store: &Snapshotter, log_level: &str) -> anyhow::Result<()> {
    let mut layers = lazy_layers(store)?;
    // Parents before children: a parent's chain is shorter.
    layers.sort_by_key(|(name, _)| depth(store, name));
    for (name, dir) in layers {
        if let Some(pid) = serving(&dir) {
            tracing::info!(snapshot = %name, pid, "lazy layer still served; adopted");
            continue;
        }
        // Whatever is still mounted there is a mount whose server died (stat of it may
        // even succeed from the kernel's cache): its readers get ENOTCONN from now on,
        // new ones get the new server's mount. Stacked leftovers go too.
        let fs = dir.join("fs");
        match lamina_core::sys::detach_mounts_under(&fs) {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(path = %fs.display(), mounts = n, "detached lazy mounts whose server is gone")
            }
            Err(e) => {
                tracing::warn!(path = %fs.display(), error = %e, "detaching a dead lazy mount")
            }
        }
        match start(&dir, log_level) {
            Ok(pid) => tracing::info!(snapshot = %name, pid, "lazy layer served again"),
            Err(e) => {
                tracing::error!(snapshot = %name, error = %format!("{e:#}"), "cannot serve lazy layer")
            }
        }
    }
    Ok(())
}

/// How many snapshots lie below `name`.
fn depth(store: &Snapshotter, name: &str) -> usize {
    let mut n = 0;
    let mut at = name.to_owned();
    while let Ok(info) = store.stat(&at) {
        if info.parent.is_empty() {
            break;
        }
        n += 1;
        at = info.parent;
    }
    n
}

/// How far every lazy layer of `store` has come.
pub fn list(store: &Snapshotter) -> anyhow::Result<Vec<LazyStatus>> {
    let mut out = Vec::new();
    for (name, dir) in lazy_layers(store)? {
        let spec = LazySpec::read(&dir)?;
        let pid = serving(&dir);
        let fetched = ChunkCache::saved_progress(&dir.join(LAZY_DIR).join(CACHE_DIR))
            .map_or(0, |(fetched, _)| fetched);
        let total = spec.stream_size;
        let (state, detail) = match (pid, LayerState::read(&dir)) {
            (None, _) => ("not-mounted".to_owned(), String::new()),
            (Some(_), Some((s, d))) => (s.as_str().to_owned(), d),
            (Some(_), None) => (LayerState::Fetching.as_str().to_owned(), String::new()),
        };
        out.push(LazyStatus {
            snapshot: name,
            layer: spec.layer,
            mount: dir.join("fs"),
            pid,
            fetched,
            total,
            state,
            detail,
        });
    }
    Ok(out)
}
