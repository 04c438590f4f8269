//! `lamina.v1.Merges`: merge and diff snapshots, and the export of any diff as a layer.

use std::sync::Arc;

use lamina_core::{DiffSpec, MergeMethod, MergeReport, Snapshotter};
use lamina_proto::lamina::v1 as pb;
use lamina_proto::lamina::v1::merges_server::Merges;
use tonic::{Request, Response, Status};

use crate::layers::{compression, stream_layer, DiffStream};
use crate::status::to_status;

/// The merge service over a store.
#[derive(Clone)]
pub struct MergeService {
    store: Arc<Snapshotter>,
    /// Held shared while a snapshot is made, as a collection must not run meanwhile.
    gc_gate: crate::cache::GcGate,
}

impl MergeService {
    /// Serves `store`; `gc_gate` is the cache service's.
    pub fn new(store: Arc<Snapshotter>, gc_gate: crate::cache::GcGate) -> Self {
        MergeService { store, gc_gate }
    }
}

fn response(r: MergeReport) -> pb::MergeResponse {
    pb::MergeResponse {
        method: match r.method {
            MergeMethod::Stacked => "stacked",
            MergeMethod::HardLinked => "hardlinked",
        }
        .into(),
        entries: r.entries as i64,
        size: r.usage.size,
        inodes: r.usage.inodes,
    }
}

#[tonic::async_trait]
impl Merges for MergeService {
    async fn merge(
        &self,
        req: Request<pb::MergeRequest>,
    ) -> Result<Response<pb::MergeResponse>, Status> {
        let r = req.into_inner();
        let diffs: Vec<DiffSpec> = r
            .diffs
            .into_iter()
            .map(|d| DiffSpec::new(d.lower, d.upper))
            .collect();
        let labels = r.labels.into_iter().collect();
        let store = self.store.clone();
        let gate = self.gc_gate.clone().read_owned().await;
        let report = tokio::task::spawn_blocking(move || {
            let _gate = gate;
            store.merge(&r.key, &diffs, labels)
        })
        .await
        .map_err(|e| Status::internal(format!("merge task failed: {e}")))?
        .map_err(to_status)?;
        Ok(Response::new(response(report)))
    }

    async fn diff(
        &self,
        req: Request<pb::DiffSnapshotRequest>,
    ) -> Result<Response<pb::MergeResponse>, Status> {
        let r = req.into_inner();
        let labels = r.labels.into_iter().collect();
        let store = self.store.clone();
        let gate = self.gc_gate.clone().read_owned().await;
        let report = tokio::task::spawn_blocking(move || {
            let _gate = gate;
            store.diff_snapshot(&r.key, &r.lower, &r.upper, labels)
        })
        .await
        .map_err(|e| Status::internal(format!("diff task failed: {e}")))?
        .map_err(to_status)?;
        Ok(Response::new(response(report)))
    }

    type ExportStream = DiffStream;

    async fn export(
        &self,
        req: Request<pb::ExportDiffRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        let r = req.into_inner();
        let compression = compression(&r.compression)?;
        let store = self.store.clone();
        Ok(stream_layer(move |out| {
            store.export_diff(&r.lower, &r.upper, compression, out)
        }))
    }
}
