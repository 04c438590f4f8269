//! Pulling an image from a registry: resolve the manifest, fetch config and every layer
//! at once (bounded), each streamed into the content store and verified on a thread of
//! its own, then unpack all layers side by side into the committed chain.

use std::sync::Arc;

use lamina_core::image::{ImageRecord, LayerRecord};
use lamina_core::layer::Digest;
use lamina_core::Snapshotter;
use lamina_registry::{Credentials, HostsConfig, Reference, RegistryClient, RegistryError};
use oci_spec::image::{ImageConfiguration, ImageManifest};
use tokio::sync::{mpsc, Semaphore};
use tonic::Status;

use crate::bridge::ChannelReader;
use crate::status::to_status;

/// Downloads running at once.
const DOWNLOADS: usize = 4;

/// What a pull needs besides the reference.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Use http for this registry even if it is not on loopback.
    pub plain_http: bool,
    /// Credentials, if the registry wants them.
    pub credentials: Option<Credentials>,
    /// Layers unpacked at once.
    pub parallelism: usize,
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
        RegistryError::Io { .. } => Status::internal(e.to_string()),
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

/// Streams blob `d` from the registry into the content store.
pub async fn download(
    store: Arc<Snapshotter>,
    client: Arc<RegistryClient>,
    d: Digest,
) -> Result<(), Status> {
    if store.content().has(&d) {
        return Ok(());
    }
    let mut blob = client.blob(d.as_str(), 0).await.map_err(registry_status)?;
    let (tx, rx) = mpsc::channel(16);
    let writer = {
        let (store, d) = (store.clone(), d.clone());
        tokio::task::spawn_blocking(move || {
            store
                .content()
                .ingest(Some(&d), ChannelReader::new(rx))
                .map(|_| ())
        })
    };
    let pumped = async {
        loop {
            match blob.chunk().await {
                Ok(Some(chunk)) => {
                    if tx.send(Ok(chunk.to_vec())).await.is_err() {
                        return Ok(()); // the writer stopped: its result says why
                    }
                }
                Ok(None) => return Ok(()),
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return Err(registry_status(e));
                }
            }
        }
    }
    .await;
    drop(tx);
    let written = writer
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(to_status);
    pumped.and(written)
}

/// Pulls `reference` into `store`.
pub async fn pull(
    store: Arc<Snapshotter>,
    hosts: &HostsConfig,
    reference: &str,
    opts: PullOptions,
) -> Result<ImageRecord, Status> {
    let r = Reference::parse(reference).map_err(registry_status)?;
    let client = Arc::new(
        RegistryClient::new(&r, hosts, opts.plain_http, opts.credentials)
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
    // Every layer downloads at once, DOWNLOADS at a time.
    let gate = Arc::new(Semaphore::new(DOWNLOADS));
    let mut tasks = tokio::task::JoinSet::new();
    for l in manifest.layers() {
        let (store, client, gate, d) = (
            store.clone(),
            client.clone(),
            gate.clone(),
            digest(l.digest().as_ref())?,
        );
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await;
            download(store, client, d).await
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| Status::internal(e.to_string()))??;
    }
    let layers = manifest
        .layers()
        .iter()
        .zip(diff_ids)
        .map(|(l, diff_id)| LayerRecord {
            digest: l.digest().to_string(),
            diff_id: diff_id.clone(),
            size: l.size(),
            media_type: l.media_type().to_string(),
        })
        .collect();
    let parallelism = opts.parallelism.max(1);
    tokio::task::spawn_blocking(move || {
        lamina_core::image::unpack_and_record(
            &store,
            &r.name(),
            &resolved.digest,
            &config_digest,
            layers,
            parallelism,
        )
    })
    .await
    .map_err(|e| Status::internal(e.to_string()))?
    .map_err(to_status)
}
