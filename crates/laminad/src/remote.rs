//! containerd's remote-snapshotter protocol: when a Prepare carries
//! `containerd.io/snapshot.ref` (the layer's chain ID) and CRI's image labels, Lamina
//! fetches that layer from the registry itself (starting every layer of the image at
//! once), commits it with the same `snapshot.ref` label on the requested parent, and
//! answers AlreadyExists, so containerd skips its own download and unpack. Without the
//! labels, or when fetching fails, the Prepare proceeds normally and containerd unpacks.

use std::collections::HashMap;
use std::sync::Arc;

use lamina_core::layer::{ApplyOptions, Digest};
use lamina_core::{Labels, Snapshotter};
use lamina_registry::{HostsConfig, Reference, RegistryClient};
use oci_spec::image::{ImageConfiguration, ImageManifest};
use tokio::sync::{Mutex, OnceCell};

/// The label that names the chain ID a Prepare is meant to produce.
pub const SNAPSHOT_REF: &str = "containerd.io/snapshot.ref";
/// CRI: the image reference being pulled.
pub const CRI_IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
/// CRI: the digest of this layer's blob.
pub const CRI_LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
/// CRI: this layer's and the following layers' digests, comma-separated.
pub const CRI_IMAGE_LAYERS: &str = "containerd.io/snapshot/cri.image-layers";

/// The outcome of one blob download, shared by everyone who asked for that blob.
type SharedFetch = Arc<OnceCell<Result<(), String>>>;

/// The layers of an image that can be mounted lazily, by digest, found once per image.
type LazyLayers = Arc<crate::lazy::Found>;

/// Fetches layers for remote-snapshotter Prepares, each blob once however many ask.
pub struct RemoteFetcher {
    store: Arc<Snapshotter>,
    hosts: HostsConfig,
    blobs: Mutex<HashMap<String, SharedFetch>>,
    /// Mount indexed layers lazily with these settings.
    lazy: Option<crate::lazy::LazySettings>,
    /// Lazy layers by image reference.
    images: Mutex<HashMap<String, Arc<OnceCell<LazyLayers>>>>,
}

/// What a Prepare asks for, when it is a remote-snapshotter Prepare.
pub struct RemoteRequest {
    image: Reference,
    chain_id: String,
    layer: Digest,
    others: Vec<Digest>,
}

impl RemoteRequest {
    /// Reads the protocol's labels; `None` if they are not all there.
    pub fn from_labels(labels: &HashMap<String, String>) -> Option<RemoteRequest> {
        let chain_id = labels.get(SNAPSHOT_REF)?.clone();
        let image = Reference::parse(labels.get(CRI_IMAGE_REF)?).ok()?;
        let layer = Digest::parse(labels.get(CRI_LAYER_DIGEST)?)?;
        let others = labels
            .get(CRI_IMAGE_LAYERS)
            .map(|l| {
                l.split(',')
                    .filter_map(|d| Digest::parse(d.trim()))
                    .collect()
            })
            .unwrap_or_default();
        Some(RemoteRequest {
            image,
            chain_id,
            layer,
            others,
        })
    }
}

impl RemoteFetcher {
    /// A fetcher over `store`, reaching registries as `hosts` says.
    pub fn new(store: Arc<Snapshotter>, hosts: HostsConfig) -> Self {
        RemoteFetcher {
            store,
            hosts,
            blobs: Mutex::new(HashMap::new()),
            lazy: None,
            images: Mutex::new(HashMap::new()),
        }
    }

    /// Mounts the layers of images with indexes lazily, with `settings`.
    pub fn with_lazy(mut self, settings: crate::lazy::LazySettings) -> Self {
        self.lazy = Some(settings).filter(|s| s.enabled);
        self
    }

    /// The lazily mountable layers of `image`: its manifest and config read from the
    /// registry, its indexes found there (once per image; none on any failure).
    async fn lazy_layers(
        &self,
        image: &Reference,
        settings: &crate::lazy::LazySettings,
    ) -> LazyLayers {
        let cell = self
            .images
            .lock()
            .await
            .entry(image.name())
            .or_default()
            .clone();
        cell.get_or_init(|| async {
            match self.find_lazy(image, settings).await {
                Ok(found) => Arc::new(found),
                Err(e) => {
                    tracing::info!(image = %image.name(), error = %e, "no lazy layers: containerd's layers are fetched whole");
                    Arc::default()
                }
            }
        })
        .await
        .clone()
    }

    async fn find_lazy(
        &self,
        image: &Reference,
        settings: &crate::lazy::LazySettings,
    ) -> Result<crate::lazy::Found, String> {
        let client = Arc::new(
            RegistryClient::new(image, &self.hosts, false, None).map_err(|e| e.to_string())?,
        );
        let resolved = client.resolve(image).await.map_err(|e| e.to_string())?;
        let manifest =
            ImageManifest::from_reader(&resolved.bytes[..]).map_err(|e| e.to_string())?;
        let config = client
            .blob_bytes(manifest.config().digest().as_ref())
            .await
            .map_err(|e| e.to_string())?;
        let config = ImageConfiguration::from_reader(&config[..]).map_err(|e| e.to_string())?;
        let layers = crate::pull::layer_records(&manifest, &config);
        Ok(
            crate::lazy::find_indexes(&client, &resolved.digest, &layers, settings.min_layer_size)
                .await,
        )
    }

    /// Makes sure blob `d` of `image` is in the content store, downloading it once.
    async fn fetch(self: &Arc<Self>, image: &Reference, d: &Digest) -> Result<(), String> {
        if self.store.content().has(d) {
            return Ok(());
        }
        let cell = self
            .blobs
            .lock()
            .await
            .entry(d.to_string())
            .or_default()
            .clone();
        let result = cell
            .get_or_init(|| async {
                let client = RegistryClient::new(image, &self.hosts, false, None)
                    .map_err(|e| e.to_string())?;
                crate::pull::download(self.store.clone(), Arc::new(client), d.clone())
                    .await
                    .map_err(|s| s.message().to_owned())
            })
            .await
            .clone();
        // Finished either way: later requests look at the content store, or retry.
        self.blobs.lock().await.remove(d.as_str());
        result
    }

    /// Mounts `candidate`'s layer lazily as committed snapshot `key` on `parent` (its
    /// server prefetching `prefetch`), when that makes the chain ID containerd asked for
    /// and lazy pulls are on.
    async fn prepare_lazy(
        &self,
        key: &str,
        parent: &str,
        req: &RemoteRequest,
        labels: Labels,
        candidate: &crate::lazy::LazyCandidate,
        prefetch: &[std::path::PathBuf],
    ) -> Result<bool, String> {
        let Some(settings) = &self.lazy else {
            return Ok(false);
        };
        let parent_chain = parent_chain_id(&self.store, parent)?;
        if parent_chain.is_none() && !parent.is_empty() {
            return Ok(false); // a parent of unknown chain: let containerd unpack
        }
        let made = lamina_core::next_chain_id(parent_chain.as_deref(), &candidate.layer.diff_id);
        if made != req.chain_id {
            return Ok(false);
        }
        let (store, settings, key, parent) = (
            self.store.clone(),
            settings.clone(),
            key.to_owned(),
            parent.to_owned(),
        );
        let (candidate, image, prefetch) = (candidate.clone(), req.image.name(), prefetch.to_vec());
        tokio::task::spawn_blocking(move || {
            let source = crate::lazy::Source {
                image: &image,
                plain_http: false,
                credentials: None,
                prefetch: &prefetch,
            };
            let starting = crate::lazy::commit_lazy(
                &store, &settings, &key, &parent, labels, &candidate, &source,
            )?;
            crate::lazy::await_lazy(&key, &candidate.layer, starting).inspect_err(|_| {
                if let Err(e) = store.remove(&key) {
                    tracing::warn!(key, error = %e, "removing a lazy layer that did not mount");
                }
            })
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        Ok(true)
    }

    /// Produces the layer `req` names on `parent` as committed snapshot `key`, labelled
    /// with its chain ID. `Ok(true)`: done (answer AlreadyExists); `Ok(false)`: cannot
    /// (containerd should unpack); `Err`: the layer is bad.
    pub async fn prepare(
        self: &Arc<Self>,
        key: &str,
        parent: &str,
        req: RemoteRequest,
        labels: Labels,
    ) -> Result<bool, String> {
        if self.store.stat(key).is_ok() {
            return Ok(false); // the ordinary Prepare answers AlreadyExists for the key
        }
        let lazy = match &self.lazy {
            Some(settings) => self.lazy_layers(&req.image, settings).await,
            None => LazyLayers::default(),
        };
        if let Some(candidate) = lazy.candidates.get(req.layer.as_str()) {
            match self
                .prepare_lazy(key, parent, &req, labels.clone(), candidate, &lazy.prefetch)
                .await
            {
                Ok(true) => return Ok(true),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(layer = %req.layer, error = %e, "cannot mount the layer lazily; fetching it")
                }
            }
        }
        // Start every other layer of the image downloading now (those not mounted lazily);
        // the later Prepares find them.
        for d in req
            .others
            .iter()
            .filter(|d| **d != req.layer && !lazy.candidates.contains_key(d.as_str()))
        {
            let (me, image, d) = (self.clone(), req.image.clone(), d.clone());
            tokio::spawn(async move {
                if let Err(e) = me.fetch(&image, &d).await {
                    tracing::warn!(digest = %d, error = %e, "prefetch failed");
                }
            });
        }
        if let Err(e) = self.fetch(&req.image, &req.layer).await {
            tracing::warn!(image = %req.image.name(), digest = %req.layer, error = %e, "cannot fetch layer; containerd will unpack");
            return Ok(false);
        }
        let store = self.store.clone();
        let (key, parent, layer, chain_id) = (
            key.to_owned(),
            parent.to_owned(),
            req.layer.clone(),
            req.chain_id.clone(),
        );
        tokio::task::spawn_blocking(move || -> Result<bool, String> {
            let parent_chain = parent_chain_id(&store, &parent)?;
            let blob = store
                .content()
                .open_blob(&layer)
                .map_err(|e| e.to_string())?;
            let opts = ApplyOptions {
                expected_digest: Some(layer.clone()),
                // The content store verified the blob when it stored it.
                blob_digest_checked_elsewhere: true,
                ..ApplyOptions::default()
            };
            let report = store
                .apply_layer(&key, &parent, labels, blob, opts)
                .map_err(|e| e.to_string())?;
            // The chain ID containerd expects must be the one this layer really makes.
            let made = lamina_core::next_chain_id(parent_chain.as_deref(), report.diff_id.as_str());
            // (A parent without the label was not made by an unpack: nothing to check.)
            if (parent_chain.is_some() || parent.is_empty()) && made != chain_id {
                let _ = store.remove(&key);
                return Err(format!(
                    "layer {layer} on {parent:?} makes chain {made}, not the requested {chain_id}"
                ));
            }
            Ok(true)
        })
        .await
        .map_err(|e| e.to_string())?
    }
}

/// The chain ID `parent` was made as (its `snapshot.ref` label); `None` for no parent, or a
/// parent not made by an unpack.
fn parent_chain_id(store: &Snapshotter, parent: &str) -> Result<Option<String>, String> {
    if parent.is_empty() {
        return Ok(None);
    }
    Ok(store
        .stat(parent)
        .map_err(|e| e.to_string())?
        .labels
        .get(SNAPSHOT_REF)
        .cloned())
}
