//! Lamina's `lamina.v1.Images` service: import, list and forget images.

use std::path::PathBuf;
use std::sync::Arc;

use lamina_core::image::ImageRecord;
use lamina_core::Snapshotter;
use lamina_proto::lamina::v1 as pb;
use lamina_proto::lamina::v1::images_server::Images;
use tonic::{Request, Response, Status};

use crate::status::to_status;

/// The image service over a store.
#[derive(Clone)]
pub struct ImageService {
    store: Arc<Snapshotter>,
    parallelism: usize,
    hosts: lamina_registry::HostsConfig,
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
        }
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
        let rec = tokio::task::spawn_blocking(move || {
            let name = (!r.name.is_empty()).then_some(r.name.as_str());
            lamina_core::image::import(&store, &PathBuf::from(&r.path), name, n)
        })
        .await
        .map_err(|e| Status::internal(format!("import task failed: {e}")))?
        .map_err(to_status)?;
        Ok(Response::new(image_to_pb(rec)))
    }

    async fn pull(&self, req: Request<pb::PullRequest>) -> Result<Response<pb::Image>, Status> {
        let r = req.into_inner();
        let credentials = (!r.username.is_empty()).then_some(lamina_registry::Credentials {
            username: r.username,
            password: r.password,
        });
        let opts = crate::pull::PullOptions {
            plain_http: r.plain_http,
            credentials,
            parallelism: self.parallelism,
        };
        let started = std::time::Instant::now();
        let rec = crate::pull::pull(self.store.clone(), &self.hosts, &r.reference, opts).await?;
        tracing::info!(image = %rec.name, layers = rec.layers.len(), secs = started.elapsed().as_secs_f64(), "pulled");
        Ok(Response::new(image_to_pb(rec)))
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
