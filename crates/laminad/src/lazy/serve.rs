//! `laminad lazy-serve DIR`: the process that serves one lazy layer. It mounts the
//! layer's FUSE file system on `DIR/fs`, answers reads from the chunk cache (fetching
//! from the registry what is missing), fetches what was asked to be prefetched, then the
//! whole layer in the background, checks it against its diffID, and runs until the mount
//! goes away. It is a process of its own, in its own process group, so laminad can be
//! restarted (or killed) while containers keep reading their files.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use lamina_core::index::{BlobSource, IndexedLayer};
use lamina_core::lazy::indexed::ReadAhead;
use lamina_core::lazy::{
    indexed, AccessLog, ChunkCache, IndexedStream, LayerData, LazyMount, MountAccess, Tree,
};
use lamina_registry::{
    BlockingBlob, Credentials, HostsConfig, Reference, RegistryClient, RetryPolicy,
};
use sha2::Digest as _;

use super::spec::{LayerState, LazySpec, CACHE_DIR, LAZY_DIR, PID_FILE};

/// What the server prints on stdout once its mount is up (laminad waits for it).
pub const READY: &str = "ready";
/// Compressed bytes asked of the registry at once (one round trip each).
const FETCH_WINDOW: usize = 512 << 10;
/// Uncompressed bytes fetched ahead of a read that had to fetch.
const READ_AHEAD: u64 = 256 << 10;
/// Threads fetching a prefetch list: each a range request and a decoder at a time, so
/// the list's cold starts overlap.
const PREFETCH_THREADS: usize = 4;

/// The registry blob, as the index reads it.
struct RemoteBlob(BlockingBlob);

impl BlobSource for RemoteBlob {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read_at(offset, buf)
    }
}

/// File bytes from the chunk cache, refused once the layer proved not to be what its
/// manifest says.
struct Checked {
    cache: Arc<ChunkCache>,
    bad: AtomicBool,
}

impl LayerData for Checked {
    fn read(&self, data: u64, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.bad.load(Ordering::Relaxed) {
            return Err(std::io::Error::other(
                "the layer does not match its diffID: refusing its bytes",
            ));
        }
        self.cache.read(data, offset, buf)
    }

    fn read_local(&self, data: u64, offset: u64, buf: &mut [u8]) -> Option<std::io::Result<usize>> {
        if self.bad.load(Ordering::Relaxed) {
            return None; // the read thread answers with the error
        }
        self.cache.read_local(data, offset, buf)
    }
}

/// Serves the lazy layer of snapshot directory `dir` until it is unmounted.
pub fn run(dir: &Path) -> anyhow::Result<()> {
    let spec = LazySpec::read(dir)?;
    let index_bytes = std::fs::read(&spec.index)
        .with_context(|| format!("reading index {}", spec.index.display()))?;
    let layer = IndexedLayer::decode(&index_bytes).context("parsing the layer index")?;
    indexed::check(layer.index())?;
    if layer.index().blob_digest.as_str() != spec.layer {
        bail!(
            "index {} describes {}, not layer {}",
            spec.index.display(),
            layer.index().blob_digest,
            spec.layer
        );
    }
    let mut tree = Tree::build(layer.entries());
    // The layers below may be starting right now, side by side with this one.
    super::servers::wait_for_lazy_lowers(&spec.lowers, Duration::from_secs(60))?;
    tree.fit_to_lowers(&spec.lowers);
    let len = layer.index().uncompressed_size;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("lazy-net")
        .build()
        .context("starting the async runtime")?;
    let reference = Reference::parse(&spec.image)?;
    let credentials = spec.username.clone().map(|username| Credentials {
        username,
        password: spec.password.clone().unwrap_or_default(),
    });
    let hosts = HostsConfig {
        dir: spec.hosts_dir.clone(),
    };
    let client = RegistryClient::new(&reference, &hosts, spec.plain_http, credentials)?;
    let policy = RetryPolicy {
        attempts: spec.read_attempts.max(1),
        timeout: Duration::from_millis(spec.read_timeout_ms.max(1)),
        ..RetryPolicy::default()
    };
    let blob = BlockingBlob::new(
        Arc::new(client),
        spec.layer.clone(),
        spec.size,
        runtime.handle().clone(),
        policy,
    );
    let stream = IndexedStream::new(layer, ReadAhead::new(RemoteBlob(blob), FETCH_WINDOW));
    let cache = Arc::new(
        ChunkCache::open(
            &dir.join(LAZY_DIR).join(CACHE_DIR),
            Arc::new(stream),
            len,
            spec.chunk_size,
        )
        .context("opening the chunk cache")?,
    );
    cache
        .start_readahead(READ_AHEAD.div_ceil(spec.chunk_size.max(1)))
        .context("starting the readahead thread")?;
    let state = LayerState::read(dir).map(|(s, _)| s);
    let data = Arc::new(Checked {
        cache: cache.clone(),
        bad: AtomicBool::new(state == Some(LayerState::Failed)),
    });
    let tree = Arc::new(tree);
    let access = if spec.allow_other {
        MountAccess::AllUsers
    } else {
        MountAccess::RootOnly
    };
    let log = Arc::new(AccessLog::new(tree.len()));
    let mount = LazyMount::mount_recording(
        tree.clone(),
        data.clone(),
        &dir.join("fs"),
        access,
        Some(log.clone()),
    )?;
    let pid_path = dir.join(LAZY_DIR).join(PID_FILE);
    std::fs::write(&pid_path, format!("{}\n", std::process::id()))
        .with_context(|| format!("writing {}", pid_path.display()))?;
    if !matches!(state, Some(LayerState::Verified | LayerState::Failed)) {
        LayerState::Fetching.write(dir, "")?;
    }
    tracing::info!(layer = %spec.layer, dir = %dir.display(), "serving lazy layer");
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{READY}")?;
        out.flush()?;
    }
    // laminad reads one line and lets go of the pipe: later writes would fail.
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = rustix::stdio::dup2_stdout(&null);
    }
    if !matches!(state, Some(LayerState::Verified | LayerState::Failed)) {
        let (dir, spec, tree) = (dir.to_path_buf(), spec.clone(), tree.clone());
        std::thread::Builder::new()
            .name("lazy-fill".into())
            .spawn(move || background_fetch(&dir, &spec, &tree, &data))
            .context("starting the background fetch")?;
    }
    // What `lamina lazy` reports comes from the saved bitmap and the access file: keep
    // them at most a second old.
    {
        let (cache, log) = (Arc::downgrade(&cache), Arc::downgrade(&log));
        let (dir, tree) = (dir.to_path_buf(), tree.clone());
        std::thread::Builder::new()
            .name("lazy-save".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_secs(1));
                let (Some(cache), Some(log)) = (cache.upgrade(), log.upgrade()) else {
                    return;
                };
                if let Err(e) = cache.flush() {
                    tracing::warn!(error = %e, "saving the chunk bitmap");
                }
                save_accessed(&dir, &tree, &log);
            })
            .context("starting the bitmap saver")?;
    }
    let served = mount.wait();
    if let Err(e) = cache.flush() {
        tracing::warn!(error = %e, "saving the chunk bitmap");
    }
    save_accessed(dir, &tree, &log);
    tracing::info!(dir = %dir.display(), "lazy layer unmounted");
    Ok(served?)
}

/// Appends the files first read since the last call to the layer's access file. Paths
/// a line-based prefetch list cannot hold (not UTF-8, or with a line break) are left out.
fn save_accessed(dir: &Path, tree: &Tree, log: &AccessLog) {
    let fresh = log.take();
    if fresh.is_empty() {
        return;
    }
    let inos: Vec<u64> = fresh.iter().map(|&(_, ino)| ino).collect();
    let paths = tree.paths(&inos);
    let reads: Vec<(u64, &str)> = fresh
        .iter()
        .zip(&paths)
        .filter_map(|((ms, _), path)| Some((*ms, path.as_deref()?.to_str()?)))
        .collect();
    if let Err(e) = super::spec::append_accessed(dir, &reads) {
        tracing::warn!(dir = %dir.display(), error = %e, "saving the files read");
    }
}

/// Prefetches the spec's paths, then (after the fill delay) fetches the whole layer,
/// retrying while the registry is away, and checks the stream against the diffID.
fn background_fetch(dir: &Path, spec: &LazySpec, tree: &Tree, data: &Checked) {
    let cache = &data.cache;
    if !spec.prefetch.is_empty() {
        let started = std::time::Instant::now();
        let ranges = tree.data_ranges(&spec.prefetch);
        let bytes: u64 = ranges.iter().map(|r| r.1).sum();
        match cache.prefetch(&ranges, PREFETCH_THREADS) {
            Ok(()) => tracing::info!(
                files = ranges.len(),
                bytes,
                secs = started.elapsed().as_secs_f64(),
                "prefetched"
            ),
            // The background fetch below gets the rest, retrying.
            Err(e) => tracing::warn!(error = %e, "prefetch failed"),
        }
    }
    // Wait out the delay, unless reads completed the layer already (then check it now).
    let delay = std::time::Instant::now() + Duration::from_millis(spec.fill_delay_ms);
    while !cache.is_complete() {
        let left = delay.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(Duration::from_secs(1)));
    }
    // The rest of the layer is for later: containers' reads come first (this thread runs
    // only when a CPU is idle), and one layer is completed at a time.
    run_when_idle();
    let _turn = spec.fill_lock.as_deref().and_then(|path| {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| tracing::warn!(path = %path.display(), error = %e, "fill lock"))
            .ok()?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).ok()?;
        Some(file)
    });
    let never = AtomicBool::new(false);
    let mut wait = Duration::from_secs(1);
    while let Err(e) = cache.fill(&never) {
        tracing::warn!(error = %e, retry_in = ?wait, "background fetch failed");
        std::thread::sleep(wait);
        wait = (wait * 2).min(Duration::from_secs(60));
    }
    let _ = LayerState::Complete.write(dir, "");
    match hash_stream(cache) {
        Ok(actual) if actual == spec.diff_id => {
            tracing::info!(layer = %spec.layer, "lazy layer fetched and verified");
            let _ = LayerState::Verified.write(dir, "");
        }
        Ok(actual) => {
            tracing::error!(layer = %spec.layer, expected = %spec.diff_id, %actual, "lazy layer does not match its diffID; its reads now fail");
            data.bad.store(true, Ordering::Relaxed);
            let _ = LayerState::Failed
                .write(dir, &format!("stream is {actual}, diffID {}", spec.diff_id));
        }
        Err(e) => tracing::warn!(error = %e, "hashing the fetched layer"),
    }
}

/// Puts the calling thread in the SCHED_IDLE class: it runs only on CPUs nothing else
/// wants, so a background fetch never slows the reads of a starting container.
fn run_when_idle() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads the parameter struct we pass (a valid, initialised
    // local) and changes only the scheduling class of the calling thread (pid 0).
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "SCHED_IDLE for the background fetch");
    }
}

/// The sha256 digest of the whole cached stream.
fn hash_stream(cache: &ChunkCache) -> std::io::Result<String> {
    let mut file = cache.stream_file().try_clone()?;
    std::io::Seek::rewind(&mut file)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf)? {
            0 => break,
            n => hasher.update(&buf[..n]),
        }
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}
