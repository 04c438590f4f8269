//! Lamina's `lamina.v1.Cache` service: leases, garbage collection, prune and disk usage
//! over the store's cache manager. Every call runs on the blocking pool (they read the
//! metadata file and walk snapshot trees).
//!
//! Collections (GC, prune, a synchronous lease delete) wait for the image imports and
//! pulls in flight and hold new ones back while they run: an image's snapshots and
//! blobs are referenced by nothing until its record is written at the end, and a
//! collection in between would remove them.

use std::sync::Arc;
use std::time::SystemTime;

use lamina_core::cache::{
    CacheManager, DiskUsage, GcReport, Lease, LeaseResource, PruneOptions, RecordInfo,
};
use lamina_proto::lamina::v1 as pb;
use lamina_proto::lamina::v1::cache_server::Cache;
use tokio::sync::RwLock;
use tonic::{Request, Response, Status};

use crate::status::to_status;

/// Held shared by work whose results nothing references until it ends (image imports
/// and pulls), exclusively by collections.
pub type GcGate = Arc<RwLock<()>>;

/// The cache service over a store's cache manager.
#[derive(Clone)]
pub struct CacheService {
    cache: CacheManager,
    gate: GcGate,
}

impl CacheService {
    /// Serves `cache`; collections take `gate` exclusively.
    pub fn new(cache: CacheManager, gate: GcGate) -> Self {
        CacheService { cache, gate }
    }

    /// Runs `f` with the manager on the blocking pool, mapping its error.
    async fn blocking<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&CacheManager) -> lamina_core::Result<T> + Send + 'static,
    ) -> Result<T, Status> {
        let cache = self.cache.clone();
        tokio::task::spawn_blocking(move || f(&cache))
            .await
            .map_err(|e| Status::internal(format!("{what} task failed: {e}")))?
            .map_err(to_status)
    }
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

fn resource_to_pb(r: &LeaseResource) -> pb::LeaseResource {
    pb::LeaseResource {
        id: r.id().to_owned(),
        r#type: r.kind().to_owned(),
    }
}

fn resource_from_pb(r: Option<pb::LeaseResource>) -> Result<LeaseResource, Status> {
    let r = r.ok_or_else(|| Status::invalid_argument("a lease resource is required"))?;
    LeaseResource::parse(&r.r#type, &r.id).map_err(to_status)
}

fn lease_to_pb(l: Lease, resources: &[LeaseResource]) -> pb::Lease {
    pb::Lease {
        id: l.id,
        labels: l.labels.into_iter().collect(),
        created_at: Some(timestamp(l.created)),
        resources: resources.iter().map(resource_to_pb).collect(),
    }
}

fn removed_to_pb(r: lamina_core::cache::Removed) -> pb::RemovedObject {
    pb::RemovedObject {
        id: r.id,
        bytes: r.bytes as i64,
    }
}

fn gc_to_pb(r: GcReport) -> pb::GarbageCollectResponse {
    pb::GarbageCollectResponse {
        expired_leases: r.expired_leases,
        snapshot_bytes: r.snapshot_bytes as i64,
        content_bytes: r.content_bytes as i64,
        snapshots: r.snapshots.into_iter().map(removed_to_pb).collect(),
        content: r.content.into_iter().map(removed_to_pb).collect(),
    }
}

fn record_to_pb(r: RecordInfo) -> pb::CacheRecord {
    pb::CacheRecord {
        id: r.id,
        snapshot: r.snapshot,
        mutable: r.mutable,
        parents: r.parents,
        description: r.description,
        record_type: r.record_type.as_str().to_owned(),
        policy: r.policy.as_str().to_owned(),
        created_at: Some(timestamp(r.created)),
        last_used_at: r.last_used.map(timestamp),
        use_count: r.use_count as i64,
        in_use: r.in_use,
        shared: r.shared,
        size: r.size as i64,
    }
}

fn du_to_pb(du: DiskUsage) -> pb::DiskUsageResponse {
    pb::DiskUsageResponse {
        snapshots: du
            .snapshots
            .into_iter()
            .map(|s| pb::SnapshotDiskUsage {
                key: s.key,
                kind: s.kind.as_str().to_owned(),
                exclusive: s.exclusive as i64,
                shared: s.shared as i64,
                inodes: s.inodes as i64,
            })
            .collect(),
        records: du.records.into_iter().map(record_to_pb).collect(),
        total: du.total as i64,
        shared_total: du.shared_total as i64,
    }
}

fn system_time(t: prost_types::Timestamp) -> Result<SystemTime, Status> {
    SystemTime::try_from(t).map_err(|e| Status::invalid_argument(format!("bad time: {e}")))
}

#[tonic::async_trait]
impl Cache for CacheService {
    async fn create_lease(
        &self,
        req: Request<pb::CreateLeaseRequest>,
    ) -> Result<Response<pb::Lease>, Status> {
        let r = req.into_inner();
        let expires = r.expire_at.map(system_time).transpose()?;
        let lease = self
            .blocking("create lease", move |c| {
                c.create_lease(&r.id, r.labels.into_iter().collect(), expires)
            })
            .await?;
        Ok(Response::new(lease_to_pb(lease, &[])))
    }

    async fn delete_lease(
        &self,
        req: Request<pb::DeleteLeaseRequest>,
    ) -> Result<Response<pb::DeleteLeaseResponse>, Status> {
        let r = req.into_inner();
        let gate = if r.sync {
            Some(self.gate.clone().write_owned().await)
        } else {
            None
        };
        // The guards move into the work: a client that goes away does not end it early.
        let gc = self
            .blocking("delete lease", move |c| {
                let _gate = gate;
                c.delete_lease(&r.id)?;
                r.sync.then(|| c.gc()).transpose()
            })
            .await?;
        Ok(Response::new(pb::DeleteLeaseResponse {
            gc: gc.map(gc_to_pb),
        }))
    }

    async fn list_leases(
        &self,
        req: Request<pb::ListLeasesRequest>,
    ) -> Result<Response<pb::ListLeasesResponse>, Status> {
        let filters = req.into_inner().filters;
        let leases = self
            .blocking("list leases", move |c| {
                let mut out = Vec::new();
                for lease in c.leases(&filters)? {
                    let resources = match c.lease_resources(&lease.id) {
                        Ok(r) => r,
                        // Deleted since it was listed.
                        Err(lamina_core::Error::Cache(
                            lamina_core::cache::CacheError::LeaseNotFound { .. },
                        )) => continue,
                        Err(e) => return Err(e),
                    };
                    out.push(lease_to_pb(lease, &resources));
                }
                Ok(out)
            })
            .await?;
        Ok(Response::new(pb::ListLeasesResponse { leases }))
    }

    async fn add_lease_resource(
        &self,
        req: Request<pb::LeaseResourceRequest>,
    ) -> Result<Response<pb::LeaseResourceResponse>, Status> {
        let r = req.into_inner();
        let resource = resource_from_pb(r.resource)?;
        self.blocking("add lease resource", move |c| {
            c.add_lease_resource(&r.lease, &resource)
        })
        .await?;
        Ok(Response::new(pb::LeaseResourceResponse {}))
    }

    async fn delete_lease_resource(
        &self,
        req: Request<pb::LeaseResourceRequest>,
    ) -> Result<Response<pb::LeaseResourceResponse>, Status> {
        let r = req.into_inner();
        let resource = resource_from_pb(r.resource)?;
        self.blocking("delete lease resource", move |c| {
            c.delete_lease_resource(&r.lease, &resource)
        })
        .await?;
        Ok(Response::new(pb::LeaseResourceResponse {}))
    }

    async fn garbage_collect(
        &self,
        _req: Request<pb::GarbageCollectRequest>,
    ) -> Result<Response<pb::GarbageCollectResponse>, Status> {
        let gate = self.gate.clone().write_owned().await;
        let report = self
            .blocking("garbage collection", move |c| {
                let _gate = gate;
                c.gc()
            })
            .await?;
        Ok(Response::new(gc_to_pb(report)))
    }

    async fn prune(
        &self,
        req: Request<pb::PruneRequest>,
    ) -> Result<Response<pb::PruneResponse>, Status> {
        let r = req.into_inner();
        let keep_duration = r
            .keep_duration
            .map(|d| {
                std::time::Duration::try_from(d).map_err(|e| {
                    Status::invalid_argument(format!("keep_duration must not be negative: {e}"))
                })
            })
            .transpose()?;
        let keep_bytes = u64::try_from(r.keep_bytes)
            .map_err(|_| Status::invalid_argument("keep_bytes must not be negative"))?;
        let opts = PruneOptions {
            filters: r.filters,
            all: r.all,
            keep_duration,
            keep_bytes,
        };
        let gate = self.gate.clone().write_owned().await;
        let report = self
            .blocking("prune", move |c| {
                let _gate = gate;
                c.prune(&opts)
            })
            .await?;
        Ok(Response::new(pb::PruneResponse {
            removed: report.removed.into_iter().map(record_to_pb).collect(),
            gc: Some(gc_to_pb(report.gc)),
            usage_before: report.usage_before as i64,
            usage_after: report.usage_after as i64,
        }))
    }

    async fn disk_usage(
        &self,
        _req: Request<pb::DiskUsageRequest>,
    ) -> Result<Response<pb::DiskUsageResponse>, Status> {
        let du = self.blocking("disk usage", |c| c.disk_usage()).await?;
        Ok(Response::new(du_to_pb(du)))
    }
}
