//! Pulling an image from a registry: resolve the manifest, fetch the config, then fetch
//! every layer at once; each layer's bytes go both into the content store (verified) and
//! straight into its own unpack, so downloading, decompressing and writing files overlap.
//! One transaction commits the chain once every blob is complete.

use std::sync::Arc;

use bytes::Bytes;
use lamina_core::image::{ImageRecord, LayerRecord};
use lamina_core::layer::Digest;
use lamina_core::Snapshotter;
use lamina_registry::{Credentials, HostsConfig, Reference, RegistryClient, RegistryError};
use oci_spec::image::{ImageConfiguration, ImageManifest};
use tokio::sync::{mpsc, Semaphore};
use tonic::Status;

use crate::bridge::ChannelReader;
use crate::status::to_status;

/// Downloads running at once (each also feeds its layer's unpack as it arrives).
const DOWNLOADS: usize = 8;

/// A step of a pull, for progress displays.
#[derive(Debug, Clone)]
pub enum Progress {
    /// The image's layers to download, bottom first, once the manifest is read (layers
    /// mounted lazily are not downloaded, and not listed).
    Layers(Vec<LayerRecord>),
    /// Bytes of a layer blob received (and unpacked as they arrive) so far.
    Bytes {
        /// The blob.
        digest: String,
        /// Received so far.
        bytes: u64,
    },
}

/// Where progress goes.
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// What a pull needs besides the reference.
#[derive(Clone, Default)]
pub struct PullOptions {
    /// Use http for this registry even if it is not on loopback.
    pub plain_http: bool,
    /// Credentials, if the registry wants them.
    pub credentials: Option<Credentials>,
    /// Layers unpacked at once.
    pub parallelism: usize,
    /// Told how the pull advances.
    pub progress: Option<ProgressFn>,
    /// Mount indexed layers lazily, with these settings; `None`: unpack every layer.
    pub lazy: Option<crate::lazy::LazySettings>,
    /// Paths lazy layers fetch first.
    pub prefetch: Vec<std::path::PathBuf>,
}

/// What a pull made.
pub struct Pulled {
    /// The image, recorded.
    pub image: ImageRecord,
    /// Digests of the layers mounted lazily.
    pub lazy: Vec<String>,
}

/// Maps registry failures onto gRPC status codes.
pub fn registry_status(e: RegistryError) -> Status {
    match &e {
        RegistryError::InvalidReference { .. } | RegistryError::Config { .. } => {
            Status::invalid_argument(e.to_string())
        }
        RegistryError::Status { status: 404, .. } => Status::not_found(e.to_string()),
        RegistryError::Status {
            status: 401 | 403, ..
        }
        | RegistryError::Auth { .. } => Status::permission_denied(e.to_string()),
        RegistryError::DigestMismatch { .. }
        | RegistryError::Manifest { .. }
        | RegistryError::TooLarge { .. } => Status::invalid_argument(e.to_string()),
        RegistryError::Transport { .. } | RegistryError::Status { .. } => {
            Status::unavailable(e.to_string())
        }
        RegistryError::Io { .. } => {
            crate::status::exhausted(&e).unwrap_or_else(|| Status::internal(e.to_string()))
        }
    }
}

fn digest(s: &str) -> Result<Digest, Status> {
    Digest::parse(s)
        .ok_or_else(|| Status::invalid_argument(format!("unsupported digest {s:?} (only sha256)")))
}

/// Stores `bytes` as blob `d` (verified).
async fn store_bytes(store: &Arc<Snapshotter>, d: Digest, bytes: Vec<u8>) -> Result<(), Status> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.content().ingest(Some(&d), &bytes[..]).map(|_| ()))
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(to_status)
}

/// Streams blob `d` from the registry into the content store (resuming a download that
/// broke off earlier), with nothing unpacking it: [`pump`] with no reader on its unpack side.
pub async fn download(
    store: Arc<Snapshotter>,
    client: Arc<RegistryClient>,
    d: Digest,
) -> Result<(), Status> {
    if store.content().has(&d) {
        return Ok(());
    }
    let writers = BlobWriters::default();
    let (nobody_unpacks, _) = mpsc::channel(1);
    let pumped = pump(store, writers.clone(), client, d, nobody_unpacks, None).await;
    let written = tokio::task::spawn_blocking(move || join_writers(&writers))
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(to_status);
    pumped.and(written)
}

/// Waits for every registered blob writer; the first error wins.
fn join_writers(writers: &BlobWriters) -> lamina_core::Result<()> {
    let handles = std::mem::take(&mut *writers.lock().unwrap_or_else(|p| p.into_inner()));
    let mut first_err = Ok(());
    for h in handles {
        let r = h.join().unwrap_or_else(|_| {
            Err(lamina_core::Error::FailedPrecondition(
                "blob writer panicked".into(),
            ))
        });
        if first_err.is_ok() {
            first_err = r;
        }
    }
    first_err
}

/// Pulls `reference` into `store`.
pub async fn pull(
    store: Arc<Snapshotter>,
    hosts: &HostsConfig,
    reference: &str,
    opts: PullOptions,
) -> Result<Pulled, Status> {
    let r = Reference::parse(reference).map_err(registry_status)?;
    let client = Arc::new(
        RegistryClient::new(&r, hosts, opts.plain_http, opts.credentials.clone())
            .map_err(registry_status)?,
    );
    let resolved = client.resolve(&r).await.map_err(registry_status)?;
    let manifest = ImageManifest::from_reader(&resolved.bytes[..])
        .map_err(|e| Status::invalid_argument(format!("manifest {}: {e}", resolved.digest)))?;
    store_bytes(&store, digest(&resolved.digest)?, resolved.bytes.clone()).await?;
    let config_digest = manifest.config().digest().to_string();
    let config_bytes = client
        .blob_bytes(&config_digest)
        .await
        .map_err(registry_status)?;
    let config = ImageConfiguration::from_reader(&config_bytes[..])
        .map_err(|e| Status::invalid_argument(format!("config {config_digest}: {e}")))?;
    store_bytes(&store, digest(&config_digest)?, config_bytes).await?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(Status::invalid_argument(format!(
            "manifest has {} layers, config {} diffIDs",
            manifest.layers().len(),
            diff_ids.len()
        )));
    }
    for l in manifest.layers() {
        lamina_core::image::check_layer_media_type(l.media_type().as_ref()).map_err(to_status)?;
    }
    let report = |p: Progress| {
        if let Some(f) = &opts.progress {
            f(p)
        }
    };
    let layers = layer_records(&manifest, &config);
    if let Some(settings) = &opts.lazy {
        let found =
            crate::lazy::find_indexes(&client, &resolved.digest, &layers, settings.min_layer_size)
                .await;
        if !found.candidates.is_empty() {
            // What will be downloaded: the layers not mounted lazily.
            report(Progress::Layers(
                layers
                    .iter()
                    .filter(|l| !found.candidates.contains_key(&l.digest))
                    .cloned()
                    .collect(),
            ));
            let image = ImageParts {
                name: r.name(),
                reference: reference.to_owned(),
                manifest: resolved.digest.clone(),
                config: config_digest,
                layers,
            };
            return pull_lazily(store, client, image, found, settings.clone(), &opts).await;
        }
    }
    report(Progress::Layers(layers.clone()));
    // Every layer downloads at once; each download is written to the content store and,
    // at the same time, unpacked into its own directory as it arrives.
    let gate = Arc::new(Semaphore::new(DOWNLOADS));
    let mut pumps = tokio::task::JoinSet::new();
    let mut streams: Vec<Option<Box<dyn std::io::Read + Send>>> = Vec::new();
    let ingests: BlobWriters = Arc::default();
    let downloads = Downloads::default();
    for l in manifest.layers() {
        let d = digest(l.digest().as_ref())?;
        if store.content().has(&d) {
            report(Progress::Bytes {
                digest: d.to_string(),
                bytes: l.size(),
            });
            streams.push(None);
            continue;
        }
        let (to_unpack, unpack_rx) = mpsc::channel(32);
        streams.push(Some(Box::new(ChannelReader::new(unpack_rx))));
        let (client, gate, progress) = (client.clone(), gate.clone(), opts.progress.clone());
        let (pump_store, writers) = (store.clone(), ingests.clone());
        let running = downloads.start();
        pumps.spawn(async move {
            let _running = running;
            let _permit = gate.acquire_owned().await;
            pump(pump_store, writers, client, d, to_unpack, progress).await
        });
    }
    let parallelism = opts.parallelism.max(1);
    let unpack = tokio::task::spawn_blocking(move || {
        // Waits for every blob to be complete and verified in the content store: first
        // for the downloads to end (one registers its writer only once the registry has
        // answered), then for their writers.
        let blobs_ready = || {
            downloads.wait_all();
            join_writers(&ingests)
        };
        lamina_core::image::unpack_and_record_streamed(
            &store,
            &r.name(),
            &resolved.digest,
            &config_digest,
            layers,
            parallelism,
            streams,
            &blobs_ready,
        )
    });
    // A network failure is the clearer error, so it is reported before the unpack's.
    let mut network = Ok(());
    while let Some(done) = pumps.join_next().await {
        let r = done
            .map_err(|e| Status::internal(e.to_string()))
            .and_then(|r| r);
        if network.is_ok() {
            network = r;
        }
    }
    let unpacked = unpack.await.map_err(|e| Status::internal(e.to_string()))?;
    network?;
    Ok(Pulled {
        image: unpacked.map_err(to_status)?,
        lazy: Vec::new(),
    })
}

/// The layers of an image, bottom first: each manifest entry with its config's diffID.
pub fn layer_records(manifest: &ImageManifest, config: &ImageConfiguration) -> Vec<LayerRecord> {
    manifest
        .layers()
        .iter()
        .zip(config.rootfs().diff_ids())
        .map(|(l, diff_id)| LayerRecord {
            digest: l.digest().to_string(),
            diff_id: diff_id.clone(),
            size: l.size(),
            media_type: l.media_type().to_string(),
        })
        .collect()
}

/// An image being pulled, once its manifest and config are read.
struct ImageParts {
    name: String,
    reference: String,
    manifest: String,
    config: String,
    layers: Vec<LayerRecord>,
}

/// Pulls an image some of whose layers have indexes in `found`: those are mounted lazily,
/// the others downloaded (all at once) and unpacked, bottom first, on top of them. The
/// prefetch list is the caller's, or else the one published with the indexes.
async fn pull_lazily(
    store: Arc<Snapshotter>,
    client: Arc<RegistryClient>,
    image: ImageParts,
    found: crate::lazy::Found,
    settings: crate::lazy::LazySettings,
    opts: &PullOptions,
) -> Result<Pulled, Status> {
    let lazy = found.candidates;
    let mut downloads = tokio::task::JoinSet::new();
    let gate = Arc::new(Semaphore::new(DOWNLOADS));
    for l in image
        .layers
        .iter()
        .filter(|l| !lazy.contains_key(&l.digest))
    {
        let (store, client, gate, d) = (
            store.clone(),
            client.clone(),
            gate.clone(),
            digest(&l.digest)?,
        );
        let (progress, size) = (opts.progress.clone(), l.size);
        downloads.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let r = download(store, client, d.clone()).await;
            if let (Ok(()), Some(f)) = (&r, &progress) {
                f(Progress::Bytes {
                    digest: d.to_string(),
                    bytes: size,
                });
            }
            r
        });
    }
    while let Some(done) = downloads.join_next().await {
        done.map_err(|e| Status::internal(e.to_string()))??;
    }
    let prefetch = if opts.prefetch.is_empty() {
        found.prefetch
    } else {
        opts.prefetch.clone()
    };
    let (credentials, plain_http) = (opts.credentials.clone(), opts.plain_http);
    tokio::task::spawn_blocking(move || {
        build_chain(
            &store,
            &image,
            &lazy,
            &settings,
            credentials.as_ref(),
            plain_http,
            &prefetch,
        )
    })
    .await
    .map_err(|e| Status::internal(e.to_string()))?
    .map_err(to_status)
}

/// Makes the image's chain, bottom first: each missing layer mounted lazily when it has an
/// index, unpacked from its blob otherwise; then records the image.
fn build_chain(
    store: &Snapshotter,
    image: &ImageParts,
    lazy: &std::collections::HashMap<String, crate::lazy::LazyCandidate>,
    settings: &crate::lazy::LazySettings,
    credentials: Option<&Credentials>,
    plain_http: bool,
    prefetch: &[std::path::PathBuf],
) -> lamina_core::Result<Pulled> {
    let mut sources = Vec::with_capacity(image.layers.len());
    for l in &image.layers {
        let parse = |s: &str| {
            Digest::parse(s).ok_or_else(|| {
                lamina_core::Error::InvalidArgument(format!("unsupported digest {s:?}"))
            })
        };
        let digest = parse(&l.digest)?;
        sources.push(lamina_core::LayerSource {
            blob: store.content().path(&digest),
            digest,
            diff_id: parse(&l.diff_id)?,
        });
    }
    let names = lamina_core::chain_ids(&sources);
    let mut labels = lamina_core::Labels::new();
    if image.name.len() + 16 <= lamina_core::model::MAX_LABEL_BYTES {
        labels.insert("lamina.io/image".into(), image.name.clone());
    }
    let source = crate::lazy::Source {
        image: &image.reference,
        plain_http,
        credentials,
        prefetch,
    };
    // Lazy layers' servers start side by side; a layer unpacked on top of them waits
    // until they are mounted (it reads its lowers). On any failure, what this pull made is
    // removed again, top first.
    let mut made: Vec<&str> = Vec::new();
    let mut pending: Vec<(usize, crate::lazy::servers::Starting)> = Vec::new();
    let await_all = |pending: &mut Vec<(usize, crate::lazy::servers::Starting)>| {
        let mut first = Ok(());
        for (i, starting) in pending.drain(..) {
            if first.is_err() {
                starting.abandon(); // it would wait for the failed layer below it
                continue;
            }
            first = crate::lazy::await_lazy(&names[i], &image.layers[i], starting);
        }
        first
    };
    let mut result = Ok(());
    for (i, l) in image.layers.iter().enumerate() {
        if store
            .stat(&names[i])
            .is_ok_and(|s| s.kind == lamina_core::Kind::Committed)
        {
            continue;
        }
        let parent = if i == 0 { "" } else { names[i - 1].as_str() };
        let step = match lazy.get(&l.digest) {
            Some(candidate) => crate::lazy::commit_lazy(
                store,
                settings,
                &names[i],
                parent,
                labels.clone(),
                candidate,
                &source,
            )
            .map(|starting| pending.push((i, starting))),
            None => await_all(&mut pending).and_then(|()| {
                let mut layer_labels = labels.clone();
                layer_labels.insert("lamina.io/layer.digest".into(), l.digest.clone());
                let blob = store.content().open_blob(&sources[i].digest)?;
                let opts = lamina_core::layer::ApplyOptions {
                    expected_digest: Some(sources[i].digest.clone()),
                    expected_diff_id: Some(sources[i].diff_id.clone()),
                    // The content store verified the blob as it stored it.
                    blob_digest_checked_elsewhere: true,
                    ..Default::default()
                };
                store
                    .apply_layer(
                        &names[i],
                        parent,
                        layer_labels,
                        std::io::BufReader::new(blob),
                        opts,
                    )
                    .map(drop)
            }),
        };
        match step {
            Ok(()) => made.push(&names[i]),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let awaited = await_all(&mut pending);
    if let Err(e) = result.and(awaited) {
        for name in made.iter().rev() {
            if let Err(r) = store.remove(name) {
                tracing::warn!(snapshot = name, error = %r, "removing a layer of a failed pull");
            }
        }
        return Err(e);
    }
    let mounted = image
        .layers
        .iter()
        .zip(&names)
        .filter(|(l, n)| lazy.contains_key(&l.digest) && made.contains(&n.as_str()))
        .map(|(l, _)| l.digest.clone())
        .collect();
    let rec = ImageRecord {
        name: image.name.clone(),
        manifest: image.manifest.clone(),
        config: image.config.clone(),
        layers: image.layers.clone(),
        chain_ids: names,
    };
    store.put_image(&rec)?;
    Ok(Pulled {
        image: rec,
        lazy: mounted,
    })
}

/// The threads writing blobs into the content store; `blobs_ready` waits for them.
/// The downloads of one pull still running, for whoever must wait until all have ended.
#[derive(Clone, Default)]
struct Downloads(Arc<(std::sync::Mutex<usize>, std::sync::Condvar)>);

/// One running download; it counts as ended when dropped, however its task ends.
struct Download(Downloads);

impl Downloads {
    fn start(&self) -> Download {
        *self.0 .0.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        Download(self.clone())
    }

    /// Blocks until every download started has ended.
    fn wait_all(&self) {
        let (count, ended) = &*self.0;
        let mut n = count.lock().unwrap_or_else(|p| p.into_inner());
        while *n > 0 {
            n = ended.wait(n).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        let (count, ended) = &*self.0 .0;
        *count.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        ended.notify_all();
    }
}

type BlobWriters = Arc<std::sync::Mutex<Vec<std::thread::JoinHandle<lamina_core::Result<()>>>>>;

/// Moves blob `d` from the registry to a content store writer (started here, registered
/// in `writers`) and to the unpacker. A download that broke off earlier resumes where it
/// stopped when the registry honours ranges; the unpacker then gets the kept bytes first.
/// The unpacker may stop early (it failed: its own error says why); the writer must not.
async fn pump(
    store: Arc<Snapshotter>,
    writers: BlobWriters,
    client: Arc<RegistryClient>,
    d: Digest,
    to_unpack: mpsc::Sender<std::io::Result<Bytes>>,
    progress: Option<ProgressFn>,
) -> Result<(), Status> {
    let (mut received, mut reported) = (0u64, 0u64);
    let mut report = |received: u64, last: bool| {
        if let Some(f) = &progress {
            if last || received - reported >= 1 << 20 {
                reported = received;
                f(Progress::Bytes {
                    digest: d.to_string(),
                    bytes: received,
                });
            }
        }
    };
    let kept = store.content().partial_len(&d);
    let mut blob = match client.blob(d.as_str(), kept).await {
        Ok(b) => b,
        Err(e) => {
            let _ = to_unpack
                .send(Err(std::io::Error::other(e.to_string())))
                .await;
            return Err(registry_status(e));
        }
    };
    let offset = blob.offset;
    let (to_store, store_rx) = mpsc::channel(32);
    let (writer_store, writer_digest) = (store.clone(), d.clone());
    writers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(std::thread::spawn(move || {
            writer_store
                .content()
                .ingest_from(Some(&writer_digest), offset, ChannelReader::new(store_rx))
                .map(|_| ())
                .map_err(|e| e.in_layer(&writer_digest))
        }));
    if offset > 0 {
        tracing::info!(digest = %d, offset, "resuming an interrupted download");
        let path = store.content().partial_path(&d);
        let mut prefix = match tokio::fs::File::open(&path).await {
            Ok(f) => tokio::io::AsyncReadExt::take(f, offset),
            Err(e) => {
                let _ = to_unpack
                    .send(Err(std::io::Error::other(e.to_string())))
                    .await;
                return Err(crate::status::io_status(
                    &format!("open {}", path.display()),
                    e,
                ));
            }
        };
        loop {
            let mut buf = vec![0u8; 256 << 10];
            let n = tokio::io::AsyncReadExt::read(&mut prefix, &mut buf)
                .await
                .map_err(|e| crate::status::io_status(&format!("read {}", path.display()), e))?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            received += n as u64;
            if to_unpack.send(Ok(Bytes::from(buf))).await.is_err() {
                break;
            }
        }
    }
    let mut unpacking = true;
    loop {
        match blob.chunk().await {
            Ok(Some(chunk)) => {
                received += chunk.len() as u64;
                report(received, false);
                if unpacking && to_unpack.send(Ok(chunk.clone())).await.is_err() {
                    unpacking = false;
                }
                if to_store.send(Ok(chunk)).await.is_err() {
                    return Ok(()); // the store writer failed: its error is reported
                }
            }
            Ok(None) => {
                report(received, true);
                return Ok(());
            }
            Err(e) => {
                let msg = e.to_string();
                let _ = to_store.send(Err(std::io::Error::other(msg.clone()))).await;
                let _ = to_unpack.send(Err(std::io::Error::other(msg))).await;
                return Err(registry_status(e));
            }
        }
    }
}
