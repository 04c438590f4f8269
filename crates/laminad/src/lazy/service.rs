//! `lamina.v1.LazyLayers`: what the lazy layers of the store are doing.

use std::sync::Arc;

use lamina_core::Snapshotter;
use lamina_proto::lamina::v1 as pb;
use lamina_proto::lamina::v1::lazy_layers_server::LazyLayers;
use tonic::{Request, Response, Status};

/// The lazy-layer service over a store.
pub struct LazyService {
    store: Arc<Snapshotter>,
}

impl LazyService {
    /// Reports on `store`'s lazy layers.
    pub fn new(store: Arc<Snapshotter>) -> Self {
        LazyService { store }
    }
}

#[tonic::async_trait]
impl LazyLayers for LazyService {
    async fn list(
        &self,
        _req: Request<pb::ListLazyRequest>,
    ) -> Result<Response<pb::ListLazyResponse>, Status> {
        let store = self.store.clone();
        let layers = tokio::task::spawn_blocking(move || super::servers::list(&store))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(format!("{e:#}")))?;
        Ok(Response::new(pb::ListLazyResponse {
            layers: layers
                .into_iter()
                .map(|l| pb::LazyLayer {
                    snapshot: l.snapshot,
                    layer: l.layer,
                    mount: l.mount.display().to_string(),
                    pid: l.pid.unwrap_or(0),
                    fetched: l.fetched,
                    total: l.total,
                    state: l.state,
                    detail: l.detail,
                })
                .collect(),
        }))
    }

    async fn accessed(
        &self,
        req: Request<pb::AccessedRequest>,
    ) -> Result<Response<pb::AccessedResponse>, Status> {
        let (store, image) = (self.store.clone(), req.into_inner().image);
        let paths = tokio::task::spawn_blocking(move || super::servers::accessed(&store, &image))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(crate::status::to_status)?;
        Ok(Response::new(pb::AccessedResponse { paths }))
    }
}
