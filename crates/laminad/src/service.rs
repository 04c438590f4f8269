//! containerd's `Snapshots` gRPC service over the snapshot store. Handlers run the
//! (synchronous) store on tokio's blocking pool; only this edge is async.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use lamina_core::{Filter, Info, Kind, Labels, Mount, Snapshotter};
use lamina_proto::snapshots as pb;
use lamina_proto::snapshots::snapshots_server::Snapshots;
use lamina_proto::types as pbtypes;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::status::to_status;

/// How many infos one `List` response message carries.
const LIST_BATCH: usize = 100;

/// The gRPC face of a [`Snapshotter`].
#[derive(Clone)]
pub struct SnapshotService {
    store: Arc<Snapshotter>,
    remote: Arc<crate::remote::RemoteFetcher>,
}

impl SnapshotService {
    /// Serves `store`; remote-snapshotter Prepares fetch layers through `remote`.
    pub fn new(store: Arc<Snapshotter>, remote: Arc<crate::remote::RemoteFetcher>) -> Self {
        SnapshotService { store, remote }
    }

    /// Runs `f` against the store right here, on the async worker. Only for calls that
    /// read metadata and never touch the snapshot trees: a redb read is microseconds, far
    /// less than the thread hand-off of the blocking pool.
    fn read<T>(&self, f: impl FnOnce(&Snapshotter) -> lamina_core::Result<T>) -> Result<T, Status> {
        f(&self.store).map_err(to_status)
    }

    /// Runs `f` against the store on the blocking pool: for calls that write (fsync) or
    /// walk directory trees.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Snapshotter) -> lamina_core::Result<T> + Send + 'static,
    ) -> Result<T, Status> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| Status::internal(format!("request task failed: {e}")))?
            .map_err(to_status)
    }
}

fn labels(map: std::collections::HashMap<String, String>) -> Labels {
    map.into_iter().collect()
}

fn mounts_to_pb(mounts: Vec<Mount>) -> Vec<pbtypes::Mount> {
    mounts.into_iter().map(Into::into).collect()
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn info_to_pb(info: Info) -> pb::Info {
    let kind = match info.kind {
        Kind::View => pb::Kind::View,
        Kind::Active => pb::Kind::Active,
        Kind::Committed => pb::Kind::Committed,
    };
    pb::Info {
        name: info.name,
        parent: info.parent,
        kind: kind as i32,
        created_at: Some(timestamp(info.created)),
        updated_at: Some(timestamp(info.updated)),
        labels: info.labels.into_iter().collect(),
    }
}

type ListStream = Pin<Box<dyn Stream<Item = Result<pb::ListSnapshotsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Snapshots for SnapshotService {
    async fn prepare(
        &self,
        req: Request<pb::PrepareSnapshotRequest>,
    ) -> Result<Response<pb::PrepareSnapshotResponse>, Status> {
        let r = req.into_inner();
        if let Some(remote) = crate::remote::RemoteRequest::from_labels(&r.labels) {
            let ls = labels(r.labels.clone());
            match self.remote.prepare(&r.key, &r.parent, remote, ls).await {
                Ok(true) => {
                    return Err(Status::already_exists(format!(
                        "target snapshot of {:?} prepared by lamina",
                        r.key
                    )))
                }
                Ok(false) => {}
                Err(e) => return Err(Status::invalid_argument(e)),
            }
        }
        let mounts = self
            .run(move |s| s.prepare(&r.key, &r.parent, labels(r.labels)))
            .await?;
        Ok(Response::new(pb::PrepareSnapshotResponse {
            mounts: mounts_to_pb(mounts),
        }))
    }

    async fn view(
        &self,
        req: Request<pb::ViewSnapshotRequest>,
    ) -> Result<Response<pb::ViewSnapshotResponse>, Status> {
        let r = req.into_inner();
        let mounts = self
            .run(move |s| s.view(&r.key, &r.parent, labels(r.labels)))
            .await?;
        Ok(Response::new(pb::ViewSnapshotResponse {
            mounts: mounts_to_pb(mounts),
        }))
    }

    async fn mounts(
        &self,
        req: Request<pb::MountsRequest>,
    ) -> Result<Response<pb::MountsResponse>, Status> {
        let r = req.into_inner();
        let mounts = self.read(|s| s.mounts(&r.key))?;
        Ok(Response::new(pb::MountsResponse {
            mounts: mounts_to_pb(mounts),
        }))
    }

    async fn commit(
        &self,
        req: Request<pb::CommitSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let r = req.into_inner();
        self.run(move |s| s.commit(&r.name, &r.key, labels(r.labels)))
            .await?;
        Ok(Response::new(()))
    }

    async fn remove(
        &self,
        req: Request<pb::RemoveSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let r = req.into_inner();
        self.run(move |s| s.remove(&r.key)).await?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        req: Request<pb::StatSnapshotRequest>,
    ) -> Result<Response<pb::StatSnapshotResponse>, Status> {
        let r = req.into_inner();
        let info = self.read(|s| s.stat(&r.key))?;
        Ok(Response::new(pb::StatSnapshotResponse {
            info: Some(info_to_pb(info)),
        }))
    }

    async fn update(
        &self,
        req: Request<pb::UpdateSnapshotRequest>,
    ) -> Result<Response<pb::UpdateSnapshotResponse>, Status> {
        let r = req.into_inner();
        let info = r
            .info
            .ok_or_else(|| Status::invalid_argument("update request carries no info"))?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let info = self
            .run(move |s| {
                // Only the name and labels are read: everything else is immutable.
                let wanted = Info {
                    name: info.name,
                    parent: String::new(),
                    kind: Kind::Active,
                    labels: labels(info.labels),
                    created: UNIX_EPOCH,
                    updated: UNIX_EPOCH,
                };
                s.update(&wanted, &paths)
            })
            .await?;
        Ok(Response::new(pb::UpdateSnapshotResponse {
            info: Some(info_to_pb(info)),
        }))
    }

    type ListStream = ListStream;

    async fn list(
        &self,
        req: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let r = req.into_inner();
        let filter = Filter::parse_all(&r.filters).map_err(to_status)?;
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let store = self.store.clone();
        // Streams straight out of one read transaction; if the client goes away the send
        // fails and the walk stops, so a dropped List costs nothing further.
        tokio::task::spawn_blocking(move || {
            let mut batch = Vec::with_capacity(LIST_BATCH);
            let mut open = true;
            let result = store.walk(&filter, |info| {
                batch.push(info_to_pb(info));
                if batch.len() == LIST_BATCH {
                    let msg = pb::ListSnapshotsResponse {
                        info: std::mem::take(&mut batch),
                    };
                    open = tx.blocking_send(Ok(msg)).is_ok();
                }
                open
            });
            match result {
                Err(e) => {
                    let _ = tx.blocking_send(Err(to_status(e)));
                }
                Ok(()) if open && !batch.is_empty() => {
                    let _ = tx.blocking_send(Ok(pb::ListSnapshotsResponse { info: batch }));
                }
                Ok(()) if !open => tracing::debug!("List client went away; walk stopped"),
                Ok(()) => {}
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn usage(
        &self,
        req: Request<pb::UsageRequest>,
    ) -> Result<Response<pb::UsageResponse>, Status> {
        let r = req.into_inner();
        let u = match self.read(|s| s.recorded_usage(&r.key))? {
            Some(u) => u,
            None => self.run(move |s| s.usage(&r.key)).await?,
        };
        Ok(Response::new(pb::UsageResponse {
            size: u.size,
            inodes: u.inodes,
        }))
    }

    async fn cleanup(&self, _req: Request<pb::CleanupRequest>) -> Result<Response<()>, Status> {
        let report = self.run(|s| s.cleanup()).await?;
        if report.removed > 0 {
            tracing::info!(
                removed = report.removed,
                "cleanup removed snapshot directories"
            );
        }
        Ok(Response::new(()))
    }
}
