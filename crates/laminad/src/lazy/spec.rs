//! What a lazy layer's server needs to know, kept in the layer's snapshot directory
//! (`lazy/spec.json`) so a server started again after a crash or restart serves the same
//! layer the same way, and the files that server leaves beside it (pid, state, log).

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The subdirectory of a snapshot directory that holds a lazy layer's files.
pub const LAZY_DIR: &str = "lazy";
/// The spec file in it.
const SPEC_FILE: &str = "spec.json";
/// The server's process id (written once its mount is up).
pub const PID_FILE: &str = "pid";
/// The layer's state: see [`LayerState`].
pub const STATE_FILE: &str = "state";
/// The server's log (its stderr).
pub const LOG_FILE: &str = "serve.log";
/// The chunk cache directory.
pub const CACHE_DIR: &str = "cache";
/// The layer's files in the order they were first read, "MS\tPATH" per line (ms since
/// the Unix epoch): what `lamina lazy accessed` turns into a prefetch list.
pub const ACCESS_FILE: &str = "accessed";

/// One lazy layer: where its bytes are and how to read them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LazySpec {
    /// The repository the layer is read from (a reference; its tag or digest is unused).
    pub image: String,
    /// The layer blob's digest.
    pub layer: String,
    /// The layer's diffID: the whole stream is checked against it once fetched.
    pub diff_id: String,
    /// Bytes of the blob.
    pub size: u64,
    /// The seekable index (a file in the content store).
    pub index: PathBuf,
    /// Bytes of the uncompressed layer.
    pub stream_size: u64,
    /// File trees of the layers below, topmost first (the tree is fitted to them).
    pub lowers: Vec<PathBuf>,
    /// Bytes fetched and cached at a time.
    pub chunk_size: u64,
    /// Longest one range request may take, in milliseconds.
    pub read_timeout_ms: u64,
    /// Range requests made before a read fails with EIO.
    pub read_attempts: u32,
    /// How long after mounting the background fetch of the whole layer starts (ms).
    pub fill_delay_ms: u64,
    /// A lock file every layer's background fetch holds while it runs, so layers are
    /// completed one at a time rather than all at once against the containers' reads.
    #[serde(default)]
    pub fill_lock: Option<PathBuf>,
    /// Paths (in the image; a directory: every file below it) whose bytes are fetched
    /// right after mounting, in this order, before the rest.
    #[serde(default)]
    pub prefetch: Vec<PathBuf>,
    /// Use http even for a registry that is not on loopback.
    #[serde(default)]
    pub plain_http: bool,
    /// containerd-style hosts.toml directory.
    #[serde(default)]
    pub hosts_dir: Option<PathBuf>,
    /// Registry credentials (the spec file is readable by root only).
    #[serde(default)]
    pub username: Option<String>,
    /// Password or token for `username`.
    #[serde(default)]
    pub password: Option<String>,
    /// Mount with FUSE's `allow_other`: any user may read the layer directly. Without it
    /// (the default) only root, the mounter, may; overlayfs snapshots on top still serve
    /// every user, as overlayfs reads its lower layers with its mounter's credentials.
    #[serde(default)]
    pub allow_other: bool,
}

impl LazySpec {
    /// Reads the spec of the lazy layer in snapshot directory `dir`.
    pub fn read(dir: &Path) -> anyhow::Result<LazySpec> {
        let path = dir.join(LAZY_DIR).join(SPEC_FILE);
        let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Writes it into snapshot directory `dir` (mode 0600: it may hold credentials),
    /// synced, so it survives whatever happens next.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let lazy = dir.join(LAZY_DIR);
        std::fs::create_dir_all(&lazy).with_context(|| format!("mkdir {}", lazy.display()))?;
        let path = lazy.join(SPEC_FILE);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        f.write_all(&serde_json::to_vec_pretty(self)?)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Whether snapshot directory `dir` holds a lazy layer.
    pub fn exists(dir: &Path) -> bool {
        dir.join(LAZY_DIR).join(SPEC_FILE).is_file()
    }
}

/// How far a lazy layer has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerState {
    /// Reading on demand; the background fetch is waiting or running.
    Fetching,
    /// Every byte is on disk, not yet checked against the diffID.
    Complete,
    /// Every byte is on disk and the stream matches the diffID.
    Verified,
    /// The stream does not match the diffID: reads fail with EIO.
    Failed,
}

impl LayerState {
    /// The word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            LayerState::Fetching => "fetching",
            LayerState::Complete => "complete",
            LayerState::Verified => "verified",
            LayerState::Failed => "failed",
        }
    }

    /// Reads the state file of the lazy layer in snapshot directory `dir`.
    pub fn read(dir: &Path) -> Option<(LayerState, String)> {
        let text = std::fs::read_to_string(dir.join(LAZY_DIR).join(STATE_FILE)).ok()?;
        let (word, detail) = text
            .trim_end()
            .split_once(' ')
            .unwrap_or((text.trim_end(), ""));
        let state = match word {
            "fetching" => LayerState::Fetching,
            "complete" => LayerState::Complete,
            "verified" => LayerState::Verified,
            "failed" => LayerState::Failed,
            _ => return None,
        };
        Some((state, detail.to_owned()))
    }

    /// Records it (with a detail, e.g. why it failed) in snapshot directory `dir`.
    pub fn write(self, dir: &Path, detail: &str) -> std::io::Result<()> {
        let lazy = dir.join(LAZY_DIR);
        let tmp = lazy.join("state.new");
        std::fs::write(&tmp, format!("{} {detail}\n", self.as_str()))?;
        std::fs::rename(&tmp, lazy.join(STATE_FILE))
    }
}

/// Appends first reads (ms since the Unix epoch, path in the image) to the access file of
/// the lazy layer in snapshot directory `dir`. Paths a line-based list cannot hold (with a
/// line break) are left out.
pub fn append_accessed(dir: &Path, reads: &[(u64, &str)]) -> std::io::Result<()> {
    use std::io::Write;
    let mut lines = String::new();
    for (ms, path) in reads {
        if !path.contains(['\n', '\r']) {
            lines.push_str(&format!("{ms}\t/{}\n", path.trim_start_matches('/')));
        }
    }
    if lines.is_empty() {
        return Ok(());
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(LAZY_DIR).join(ACCESS_FILE))?
        .write_all(lines.as_bytes())
}

/// The first reads in the access file of the lazy layer in snapshot directory `dir`, in
/// the order written (none if it has no file). A line a crash cut short (no line end yet)
/// is skipped.
pub fn read_accessed(dir: &Path) -> std::io::Result<Vec<(u64, String)>> {
    let text = match std::fs::read_to_string(dir.join(LAZY_DIR).join(ACCESS_FILE)) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(text
        .split_inclusive('\n')
        .filter_map(|line| {
            let (ms, path) = line.strip_suffix('\n')?.split_once('\t')?;
            Some((ms.parse().ok()?, path.to_owned()))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_access_file_keeps_reads_in_order_and_skips_what_it_cannot_hold() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(LAZY_DIR)).unwrap();
        assert!(read_accessed(dir.path()).unwrap().is_empty(), "no file yet");
        append_accessed(dir.path(), &[(5, "usr/bin/app"), (6, "bad\nname")]).unwrap();
        append_accessed(dir.path(), &[(7, "/etc/app.conf")]).unwrap();
        // A crash in the middle of a line leaves it without its path.
        let file = dir.path().join(LAZY_DIR).join(ACCESS_FILE);
        let mut text = std::fs::read_to_string(&file).unwrap();
        text.push_str("8\t/us");
        std::fs::write(&file, text).unwrap();
        assert_eq!(
            read_accessed(dir.path()).unwrap(),
            [
                (5, "/usr/bin/app".to_owned()),
                (7, "/etc/app.conf".to_owned())
            ]
        );
    }
}
