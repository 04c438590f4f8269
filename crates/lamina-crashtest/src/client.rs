//! A blocking client for the laminad calls the harness makes: containerd's snapshots API
//! and Lamina's merge, cache and image services, each call bounded by a timeout.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use lamina_proto::lamina::v1 as lpb;
use lamina_proto::lamina::v1::cache_client::CacheClient;
use lamina_proto::lamina::v1::images_client::ImagesClient;
use lamina_proto::lamina::v1::merges_client::MergesClient;
use lamina_proto::snapshots as pb;
use lamina_proto::snapshots::snapshots_client::SnapshotsClient;
use tokio::runtime::Handle;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Longest a single call may take before the harness calls the daemon hung.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The kind of a snapshot, as containerd names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Read-only, not committable.
    View,
    /// Writable, committable.
    Active,
    /// Immutable, a parent for others.
    Committed,
    /// A kind this harness does not know (a violation wherever it is seen).
    Unknown,
}

/// A snapshot as the daemon reports it.
#[derive(Debug, Clone)]
pub struct Info {
    /// Kind.
    pub kind: Kind,
    /// Parent key ("" for none).
    pub parent: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

/// A mount as the daemon returns it.
pub type Mounts = Vec<lamina_core::Mount>;

/// One connection to laminad.
#[derive(Clone)]
pub struct Client {
    rt: Handle,
    snapshots: SnapshotsClient<Channel>,
    merges: MergesClient<Channel>,
    cache: CacheClient<Channel>,
    images: ImagesClient<Channel>,
}

/// Connection failures and timeouts look like this: the daemon went away.
pub fn is_transport(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
    ) || status.message().contains("transport")
}

impl Client {
    /// Connects to the socket.
    pub fn connect(rt: &Handle, socket: &Path) -> anyhow::Result<Client> {
        let channel = rt.block_on(lamina_proto::connect_unix(socket.to_path_buf()))?;
        Ok(Client {
            rt: rt.clone(),
            snapshots: SnapshotsClient::new(channel.clone()),
            merges: MergesClient::new(channel.clone()),
            cache: CacheClient::new(channel.clone()),
            images: ImagesClient::new(channel),
        })
    }

    fn run<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        self.rt.block_on(async {
            match tokio::time::timeout(CALL_TIMEOUT, call).await {
                Ok(result) => result,
                Err(_) => Err(Status::deadline_exceeded("the call took over 60 s")),
            }
        })
    }

    /// Prepare (or View, when `view`) `key` on `parent`.
    pub fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: &BTreeMap<String, String>,
        view: bool,
    ) -> Result<Mounts, Status> {
        let mut c = self.snapshots.clone();
        let labels: HashMap<String, String> = labels.clone().into_iter().collect();
        let mounts = if view {
            self.run(c.view(pb::ViewSnapshotRequest {
                snapshotter: String::new(),
                key: key.into(),
                parent: parent.into(),
                labels,
            }))?
            .into_inner()
            .mounts
        } else {
            self.run(c.prepare(pb::PrepareSnapshotRequest {
                snapshotter: String::new(),
                key: key.into(),
                parent: parent.into(),
                labels,
            }))?
            .into_inner()
            .mounts
        };
        Ok(lamina_proto::core_mounts(&mounts))
    }

    /// The mounts of an active snapshot or view.
    pub fn mounts(&self, key: &str) -> Result<Mounts, Status> {
        let mut c = self.snapshots.clone();
        let mounts = self
            .run(c.mounts(pb::MountsRequest {
                snapshotter: String::new(),
                key: key.into(),
            }))?
            .into_inner()
            .mounts;
        Ok(lamina_proto::core_mounts(&mounts))
    }

    /// Commit active `key` as `name`.
    pub fn commit(
        &self,
        name: &str,
        key: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), Status> {
        let mut c = self.snapshots.clone();
        self.run(c.commit(pb::CommitSnapshotRequest {
            snapshotter: String::new(),
            name: name.into(),
            key: key.into(),
            labels: labels.clone().into_iter().collect(),
        }))
        .map(|_| ())
    }

    /// Remove `key`.
    pub fn remove(&self, key: &str) -> Result<(), Status> {
        let mut c = self.snapshots.clone();
        self.run(c.remove(pb::RemoveSnapshotRequest {
            snapshotter: String::new(),
            key: key.into(),
        }))
        .map(|_| ())
    }

    /// Stat `key`; `Ok(None)` when it does not exist.
    pub fn stat(&self, key: &str) -> Result<Option<Info>, Status> {
        let mut c = self.snapshots.clone();
        match self.run(c.stat(pb::StatSnapshotRequest {
            snapshotter: String::new(),
            key: key.into(),
        })) {
            Ok(r) => Ok(r.into_inner().info.map(convert_info)),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(s),
        }
    }

    /// Sets label `name` of `key` to `value` (only that label is touched).
    pub fn set_label(&self, key: &str, name: &str, value: &str) -> Result<(), Status> {
        let mut c = self.snapshots.clone();
        self.run(c.update(pb::UpdateSnapshotRequest {
            snapshotter: String::new(),
            info: Some(pb::Info {
                name: key.into(),
                labels: HashMap::from([(name.to_owned(), value.to_owned())]),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec![format!("labels.{name}")],
            }),
        }))
        .map(|_| ())
    }

    /// Every snapshot, by key.
    pub fn walk(&self) -> Result<BTreeMap<String, Info>, Status> {
        let mut c = self.snapshots.clone();
        self.run(async move {
            let mut stream = c
                .list(pb::ListSnapshotsRequest {
                    snapshotter: String::new(),
                    filters: Vec::new(),
                })
                .await?
                .into_inner();
            let mut out = BTreeMap::new();
            while let Some(msg) = stream.message().await? {
                for info in msg.info {
                    let name = info.name.clone();
                    out.insert(name, convert_info(info));
                }
            }
            Ok(out)
        })
    }

    /// containerd's Cleanup: removes what no record owns.
    pub fn cleanup(&self) -> Result<(), Status> {
        let mut c = self.snapshots.clone();
        self.run(c.cleanup(pb::CleanupRequest {
            snapshotter: String::new(),
        }))
        .map(|_| ())
    }

    /// Merges the full trees of `sources` (each diff from nothing) into committed `key`;
    /// returns the method ("stacked" or "hardlinked").
    pub fn merge(
        &self,
        key: &str,
        sources: &[String],
        labels: &BTreeMap<String, String>,
    ) -> Result<String, Status> {
        let mut c = self.merges.clone();
        self.run(
            c.merge(lpb::MergeRequest {
                key: key.into(),
                diffs: sources
                    .iter()
                    .map(|s| lpb::SnapshotDiff {
                        lower: String::new(),
                        upper: s.clone(),
                    })
                    .collect(),
                labels: labels.clone().into_iter().collect(),
            }),
        )
        .map(|r| r.into_inner().method)
    }

    /// Garbage collection (`prune` also prunes cache records first); returns the keys
    /// of the snapshots removed.
    pub fn collect(&self, prune: bool) -> Result<Vec<String>, Status> {
        let mut c = self.cache.clone();
        let gc = if prune {
            self.run(c.prune(lpb::PruneRequest {
                all: true,
                ..Default::default()
            }))?
            .into_inner()
            .gc
            .unwrap_or_default()
        } else {
            self.run(c.garbage_collect(lpb::GarbageCollectRequest {}))?
                .into_inner()
        };
        Ok(gc.snapshots.into_iter().map(|r| r.id).collect())
    }

    /// Pulls `reference` (plain HTTP; the registry is on loopback); returns the image's
    /// name and chain IDs, bottom first.
    pub fn pull(&self, reference: &str) -> Result<(String, Vec<String>), Status> {
        let mut c = self.images.clone();
        self.run(async move {
            let mut stream = c
                .pull(lpb::PullRequest {
                    reference: reference.into(),
                    plain_http: true,
                    lazy: Some(false),
                    ..Default::default()
                })
                .await?
                .into_inner();
            while let Some(msg) = stream.message().await? {
                if let Some(image) = msg.image {
                    return Ok((image.name, image.chain_ids));
                }
            }
            Err(Status::internal("pull stream ended without the image"))
        })
    }

    /// The recorded images: name to chain IDs.
    pub fn images(&self) -> Result<BTreeMap<String, Vec<String>>, Status> {
        let mut c = self.images.clone();
        let list = self.run(c.list(lpb::ListImagesRequest {}))?.into_inner();
        Ok(list
            .images
            .into_iter()
            .map(|i| (i.name, i.chain_ids))
            .collect())
    }

    /// Forgets image `name`.
    pub fn remove_image(&self, name: &str) -> Result<(), Status> {
        let mut c = self.images.clone();
        self.run(c.remove(lpb::RemoveImageRequest { name: name.into() }))
            .map(|_| ())
    }
}

fn convert_info(info: pb::Info) -> Info {
    let kind = match pb::Kind::try_from(info.kind) {
        Ok(pb::Kind::View) => Kind::View,
        Ok(pb::Kind::Committed) => Kind::Committed,
        Ok(pb::Kind::Active) => Kind::Active,
        _ => Kind::Unknown,
    };
    Info {
        kind,
        parent: info.parent,
        labels: info.labels.into_iter().collect(),
    }
}
