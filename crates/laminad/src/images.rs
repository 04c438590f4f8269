//! Lamina's `lamina.v1.Images` service: import, list and forget images.

use std::path::PathBuf;
use std::sync::Arc;

use lamina_core::image::ImageRecord;
use lamina_core::Snapshotter;
use lamina_proto::lamina::v1 as pb;
use lamina_proto::lamina::v1::images_server::Images;
use tonic::{Request, Response, Status};

use crate::status::to_status;

/// Pulls run at once unless configured otherwise.
const DEFAULT_CONCURRENT_PULLS: usize = 8;

/// The image service over a store.
#[derive(Clone)]
pub struct ImageService {
    store: Arc<Snapshotter>,
    parallelism: usize,
    hosts: lamina_registry::HostsConfig,
    /// Held shared while an image is made, so no collection runs before it is recorded.
    gc_gate: crate::cache::GcGate,
    /// How pulls mount layers lazily.
    lazy: Option<crate::lazy::LazySettings>,
    /// Turns to run a pull: pulls beyond the limit wait for one.
    pulls: Arc<tokio::sync::Semaphore>,
}

impl ImageService {
    /// Serves `store`, unpacking up to `parallelism` layers at once.
    pub fn new(
        store: Arc<Snapshotter>,
        parallelism: usize,
        hosts: lamina_registry::HostsConfig,
    ) -> Self {
        ImageService {
            store,
            parallelism,
            hosts,
            gc_gate: crate::cache::GcGate::default(),
            lazy: None,
            pulls: Arc::new(tokio::sync::Semaphore::new(DEFAULT_CONCURRENT_PULLS)),
        }
    }

    /// Runs at most `n` pulls at once; more wait their turn (they do not fail).
    pub fn with_concurrent_pulls(mut self, n: usize) -> Self {
        self.pulls = Arc::new(tokio::sync::Semaphore::new(n.max(1)));
        self
    }

    /// Lets pulls mount indexed layers lazily with `settings` (whether they do by default
    /// is `settings.enabled`; a pull request may ask otherwise).
    pub fn with_lazy(mut self, settings: crate::lazy::LazySettings) -> Self {
        self.lazy = Some(settings);
        self
    }

    /// Shares `gate` with the cache service: imports and pulls hold it shared, so a
    /// collection waits for them (their snapshots and blobs are unreferenced until the
    /// image is recorded at the end).
    pub fn with_gc_gate(mut self, gate: crate::cache::GcGate) -> Self {
        self.gc_gate = gate;
        self
    }
}

fn layer_to_pb(l: lamina_core::image::LayerRecord) -> pb::Layer {
    pb::Layer {
        digest: l.digest,
        diff_id: l.diff_id,
        size: l.size as i64,
        media_type: l.media_type,
    }
}

/// The wire form of an image record.
pub fn image_to_pb(r: ImageRecord) -> pb::Image {
    pb::Image {
        name: r.name,
        manifest: r.manifest,
        config: r.config,
        layers: r
            .layers
            .into_iter()
            .map(|l| pb::Layer {
                digest: l.digest,
                diff_id: l.diff_id,
                size: l.size as i64,
                media_type: l.media_type,
            })
            .collect(),
        chain_ids: r.chain_ids,
        lazy: Vec::new(),
    }
}

#[tonic::async_trait]
impl Images for ImageService {
    async fn import(&self, req: Request<pb::ImportRequest>) -> Result<Response<pb::Image>, Status> {
        let r = req.into_inner();
        if r.path.is_empty() {
            return Err(Status::invalid_argument("import needs a path"));
        }
        let (store, n) = (self.store.clone(), self.parallelism);
        let gate = self.gc_gate.clone().read_owned().await;
        let rec = tokio::task::spawn_blocking(move || {
            let _gate = gate;
            let name = (!r.name.is_empty()).then_some(r.name.as_str());
            lamina_core::image::import(&store, &PathBuf::from(&r.path), name, n)
        })
        .await
        .map_err(|e| Status::internal(format!("import task failed: {e}")))?
        .map_err(to_status)?;
        Ok(Response::new(image_to_pb(rec)))
    }

    type PullStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::PullProgress, Status>> + Send>,
    >;

    async fn pull(
        &self,
        req: Request<pb::PullRequest>,
    ) -> Result<Response<Self::PullStream>, Status> {
        let r = req.into_inner();
        let credentials = (!r.username.is_empty()).then_some(lamina_registry::Credentials {
            username: r.username,
            password: r.password,
        });
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let progress_tx = tx.clone();
        let progress: crate::pull::ProgressFn = std::sync::Arc::new(move |p| {
            let msg = match p {
                crate::pull::Progress::Layers(layers) => pb::PullProgress {
                    layers: layers.into_iter().map(layer_to_pb).collect(),
                    ..Default::default()
                },
                crate::pull::Progress::Bytes { digest, bytes } => pb::PullProgress {
                    digest,
                    bytes: bytes as i64,
                    ..Default::default()
                },
            };
            let _ = progress_tx.send(Ok(msg));
        });
        let lazy = self.lazy.clone().and_then(|mut settings| {
            if let Some(min) = r.lazy_min_size {
                settings.min_layer_size = min;
            }
            r.lazy.unwrap_or(settings.enabled).then_some(settings)
        });
        crate::indexes::prefetch_list(&r.prefetch)?;
        if r.lazy == Some(true) && lazy.is_none() {
            return Err(Status::failed_precondition(
                "this daemon cannot mount layers lazily (it needs the overlayfs backend)",
            ));
        }
        let opts = crate::pull::PullOptions {
            plain_http: r.plain_http,
            credentials,
            parallelism: self.parallelism,
            progress: Some(progress),
            lazy,
            prefetch: r.prefetch.iter().map(std::path::PathBuf::from).collect(),
        };
        let (store, hosts, pulls) = (self.store.clone(), self.hosts.clone(), self.pulls.clone());
        let gate = self.gc_gate.clone().read_owned().await;
        tokio::spawn(async move {
            let _gate = gate;
            // The semaphore is never closed.
            let _turn = pulls.acquire_owned().await;
            let started = std::time::Instant::now();
            let last = match crate::pull::pull(store, &hosts, &r.reference, opts).await {
                Ok(pulled) => {
                    let rec = pulled.image;
                    tracing::info!(image = %rec.name, layers = rec.layers.len(), lazy = pulled.lazy.len(), secs = started.elapsed().as_secs_f64(), "pulled");
                    Ok(pb::PullProgress {
                        image: Some(pb::Image {
                            lazy: pulled.lazy,
                            ..image_to_pb(rec)
                        }),
                        ..Default::default()
                    })
                }
                Err(status) => Err(status),
            };
            let _ = tx.send(last);
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        )))
    }

    async fn list(
        &self,
        _req: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        let images = self.store.images().map_err(to_status)?;
        Ok(Response::new(pb::ListImagesResponse {
            images: images.into_iter().map(image_to_pb).collect(),
        }))
    }

    async fn remove(
        &self,
        req: Request<pb::RemoveImageRequest>,
    ) -> Result<Response<pb::RemoveImageResponse>, Status> {
        self.store
            .remove_image(&req.into_inner().name)
            .map_err(to_status)?;
        Ok(Response::new(pb::RemoveImageResponse {}))
    }
}
