//! Lazy layers in the daemon: finding a layer's seekable index beside its image in the
//! registry (pushed there by `lamina index push`), committing the layer as a snapshot
//! whose file tree is a FUSE mount served by a process of its own (`laminad lazy-serve`),
//! and keeping those mounts served across laminad restarts.

pub mod serve;
pub mod servers;
pub mod service;
pub mod spec;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use lamina_core::image::LayerRecord;
use lamina_core::{Labels, Snapshotter, Usage};
use lamina_registry::{Credentials, RegistryClient};
use oci_spec::image::ImageManifest;

pub use crate::config::LazySettings;
pub use spec::LazySpec;

use crate::indexes::{
    INDEX_ARTIFACT, LAYER_ANNOTATION, MAX_PREFETCH_BYTES, MAX_PREFETCH_PATHS, PREFETCH_LIST,
};

/// The label marking a lazily mounted layer snapshot.
pub const LAZY_LABEL: &str = "lamina.io/lazy";
/// Largest index blob fetched (a layer of a few hundred thousand files).
const MAX_INDEX_BYTES: u64 = 256 << 20;

/// A layer that can be mounted lazily, and its index (checked against the layer).
#[derive(Clone)]
pub struct LazyCandidate {
    /// The layer.
    pub layer: LayerRecord,
    /// Its index, as fetched.
    pub bytes: Vec<u8>,
}

/// What the registry holds for a lazy pull of an image.
#[derive(Clone, Default)]
pub struct Found {
    /// The layers that can be mounted lazily, by layer digest.
    pub candidates: HashMap<String, LazyCandidate>,
    /// The prefetch list published with the indexes (`lamina index push --prefetch-file`).
    pub prefetch: Vec<PathBuf>,
}

/// Finds, in the registry, the indexes of the layers of image manifest `manifest` that
/// are at least `min_size` bytes and can be served lazily, and the prefetch list
/// published with them. Anything missing or broken means "unpack that layer" (or "no
/// list"): the result is a hint, never an error.
pub async fn find_indexes(
    client: &Arc<RegistryClient>,
    manifest: &str,
    layers: &[LayerRecord],
    min_size: u64,
) -> Found {
    let mut out = Found::default();
    if !layers.iter().any(|l| l.size >= min_size) {
        return out;
    }
    let artifacts = match client.referrers(manifest, Some(INDEX_ARTIFACT)).await {
        Ok(a) => a,
        Err(e) => {
            tracing::info!(%manifest, error = %e, "no layer indexes found: layers are unpacked");
            return out;
        }
    };
    // The newest push is listed last.
    let Some(artifact) = artifacts.last() else {
        tracing::info!(%manifest, "the image has no layer indexes: layers are unpacked");
        return out;
    };
    let bytes = match client
        .manifest_bytes(
            artifact.digest().as_ref(),
            "application/vnd.oci.image.manifest.v1+json",
        )
        .await
    {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(artifact = %artifact.digest(), error = %e, "cannot read the index artifact");
            return out;
        }
    };
    let Ok(art) = ImageManifest::from_reader(&bytes[..]) else {
        tracing::warn!(artifact = %artifact.digest(), "the index artifact is not an OCI manifest");
        return out;
    };
    let by_layer: HashMap<&str, &oci_spec::image::Descriptor> = art
        .layers()
        .iter()
        .filter_map(|d| {
            let layer = d.annotations().as_ref()?.get(LAYER_ANNOTATION)?;
            Some((layer.as_str(), d))
        })
        .collect();
    // The prefetch list (if any) and every index are fetched and checked at once.
    let list = art
        .layers()
        .iter()
        .find(|d| d.media_type().to_string() == PREFETCH_LIST)
        .map(|d| {
            let (client, digest) = (client.clone(), d.digest().to_string());
            tokio::spawn(async move { fetch_prefetch_list(&client, &digest).await })
        });
    let mut checks = tokio::task::JoinSet::new();
    for l in layers.iter().filter(|l| l.size >= min_size) {
        let Some(d) = by_layer.get(l.digest.as_str()) else {
            continue;
        };
        let (client, index_digest, layer) = (client.clone(), d.digest().to_string(), l.clone());
        checks.spawn(async move {
            let bytes = match client.blob_bytes_max(&index_digest, MAX_INDEX_BYTES).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(layer = %layer.digest, error = %e, "cannot fetch its index: unpacked");
                    return None;
                }
            };
            tokio::task::spawn_blocking(move || check_index(layer, bytes))
                .await
                .ok()
                .flatten()
        });
    }
    while let Some(done) = checks.join_next().await {
        if let Ok(Some(candidate)) = done {
            out.candidates
                .insert(candidate.layer.digest.clone(), candidate);
        }
    }
    if let Some(list) = list {
        out.prefetch = list.await.unwrap_or_default();
    }
    out
}

/// The published prefetch list `digest`: its paths, or none if it cannot be fetched, is
/// too big or not text (a hint only).
async fn fetch_prefetch_list(client: &RegistryClient, digest: &str) -> Vec<PathBuf> {
    let bytes = match client.blob_bytes_max(digest, MAX_PREFETCH_BYTES).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(list = digest, error = %e, "cannot fetch the prefetch list: none used");
            return Vec::new();
        }
    };
    match parse_prefetch_list(&bytes) {
        Some(paths) => paths,
        None => {
            tracing::warn!(list = digest, "the prefetch list is not UTF-8 text of at most {MAX_PREFETCH_PATHS} paths: none used");
            Vec::new()
        }
    }
}

/// Paths of a prefetch list (one per line; blank lines and '#' comments skipped), if it
/// is UTF-8 of at most [`MAX_PREFETCH_PATHS`] paths.
pub fn parse_prefetch_list(bytes: &[u8]) -> Option<Vec<PathBuf>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let paths: Vec<PathBuf> = lamina_core::lazy::prefetch_list_paths(text)
        .map(PathBuf::from)
        .collect();
    (paths.len() <= MAX_PREFETCH_PATHS).then_some(paths)
}

/// `bytes` as the index of `layer`, if it parses, describes that layer and the layer
/// can be served lazily.
fn check_index(layer: LayerRecord, bytes: Vec<u8>) -> Option<LazyCandidate> {
    match lamina_core::index::LayerIndex::decode(&bytes) {
        Ok(index)
            if index.blob_digest.as_str() == layer.digest
                && index.diff_id.as_str() == layer.diff_id
                && index.blob_size == layer.size =>
        {
            if let Err(e) = lamina_core::lazy::indexed::check(&index) {
                tracing::info!(layer = %layer.digest, reason = %e, "not lazy");
                return None;
            }
            Some(LazyCandidate { layer, bytes })
        }
        Ok(_) => {
            tracing::warn!(layer = %layer.digest, "its index describes another layer: unpacked");
            None
        }
        Err(e) => {
            tracing::warn!(layer = %layer.digest, error = %e, "bad index: unpacked");
            None
        }
    }
}

/// Where a lazy layer's bytes come from.
pub struct Source<'a> {
    /// The image reference (its repository is read).
    pub image: &'a str,
    /// http even off loopback.
    pub plain_http: bool,
    /// Registry credentials.
    pub credentials: Option<&'a Credentials>,
    /// Paths (in the image) fetched first, right after mounting.
    pub prefetch: &'a [PathBuf],
}

/// Commits `candidate`'s layer as snapshot `name` on `parent`, mounted lazily from its
/// index: the index is kept in the content store, the spec written into the snapshot
/// directory, and the layer's server started. The snapshot is recorded before its mount
/// is up: [`await_lazy`] before anything uses it, and remove the snapshot if that fails
/// (a laminad that crashes meanwhile starts the server again when it restarts).
pub fn commit_lazy(
    store: &Snapshotter,
    settings: &LazySettings,
    name: &str,
    parent: &str,
    mut labels: Labels,
    candidate: &LazyCandidate,
    source: &Source<'_>,
) -> lamina_core::Result<servers::Starting> {
    let l = &candidate.layer;
    let (index, stored) =
        store.adopt_layer_index(&l.digest, &l.diff_id, l.size, &candidate.bytes)?;
    labels.insert("lamina.io/layer.digest".into(), l.digest.clone());
    labels.insert(LAZY_LABEL.into(), "true".into());
    let mut starting = None;
    store.commit_mounted(
        name,
        parent,
        labels,
        Usage::default(),
        |dir, _fs, lowers| {
            let spec = LazySpec {
                image: source.image.to_owned(),
                layer: l.digest.clone(),
                diff_id: l.diff_id.clone(),
                size: l.size,
                index: store.content().path(&stored),
                stream_size: index.uncompressed_size,
                lowers: lowers.to_vec(),
                chunk_size: settings.chunk_size,
                read_timeout_ms: settings.read_timeout_ms,
                read_attempts: settings.read_attempts,
                fill_delay_ms: settings.fill_delay_ms,
                fill_lock: Some(store.root().join("lazy-fill.lock")),
                prefetch: source.prefetch.to_vec(),
                plain_http: source.plain_http,
                hosts_dir: settings.hosts_dir.clone(),
                username: source.credentials.map(|c| c.username.clone()),
                password: source.credentials.map(|c| c.password.clone()),
                allow_other: settings.allow_other,
            };
            let started = spec
                .write(dir)
                .and_then(|()| servers::spawn(dir, &settings.log_level));
            match started {
                Ok(s) => {
                    starting = Some(s);
                    Ok(())
                }
                Err(e) => Err(start_failed(l, e)),
            }
        },
    )?;
    starting.ok_or_else(|| lamina_core::Error::FailedPrecondition("no server started".into()))
}

/// Waits for the server of lazy layer `l`, committed as `name`, to mount it.
pub fn await_lazy(
    name: &str,
    l: &LayerRecord,
    starting: servers::Starting,
) -> lamina_core::Result<()> {
    let pid = starting.wait().map_err(|e| start_failed(l, e))?;
    tracing::info!(snapshot = name, layer = %l.digest, pid, "layer mounted lazily");
    Ok(())
}

fn start_failed(l: &LayerRecord, e: anyhow::Error) -> lamina_core::Error {
    lamina_core::Error::FailedPrecondition(format!("mounting layer {} lazily: {e:#}", l.digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetch_lists_parse_as_paths_or_not_at_all() {
        let got =
            parse_prefetch_list(b"# recorded\n/usr/bin/app\n\n  /etc/app.conf  \nlib\n").unwrap();
        assert_eq!(
            got,
            ["/usr/bin/app", "/etc/app.conf", "lib"].map(PathBuf::from)
        );
        assert_eq!(parse_prefetch_list(b""), Some(Vec::new()));
        assert_eq!(parse_prefetch_list(b"\xff\xfe"), None, "not UTF-8");
        let long = "/f\n".repeat(MAX_PREFETCH_PATHS + 1);
        assert_eq!(parse_prefetch_list(long.as_bytes()), None, "too many paths");
    }
}
