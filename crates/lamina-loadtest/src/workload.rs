//! One load client: a seeded random mix of operations over a key space every client
//! shares, each result checked against what the race allows.
//!
//! Key kinds never mix, so every answer can be judged: `lt-a-N` are only ever prepared
//! (active), `lt-v-N` only viewed, `lt-c-N` only committed names, `lt-m-N` only merges
//! (committed), `lt-g-N` actives held by a lease alone (no GC root: a collection may
//! take them), `lt-w-CLIENT-N` a client's private actives that it mounts and writes
//! into. Parents are always committed names, so a Prepare can only fail with
//! AlreadyExists (key taken) or NotFound (parent removed meanwhile); a Remove of an
//! active or view can never be refused (nothing is built on them), one of a committed
//! snapshot can (FailedPrecondition: a child or merge depends on it). Everything but
//! the lease-held kind carries `containerd.io/gc.root`, so prunes and collections leave
//! it alone.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lamina_proto::lamina::v1 as lpb;
use lamina_proto::lamina::v1::cache_client::CacheClient;
use lamina_proto::lamina::v1::merges_client::MergesClient;
use lamina_proto::snapshots as pb;
use lamina_proto::snapshots::snapshots_client::SnapshotsClient;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::stats::Stats;

/// Label on everything the load test makes (the final cleanup finds it by this).
pub const LABEL_LOADTEST: &str = "lamina.io/loadtest";
/// containerd's GC root label.
const LABEL_GC_ROOT: &str = "containerd.io/gc.root";
/// The parent a snapshot was prepared on, as the preparing client asked: Stat must agree.
const LABEL_PARENT: &str = "lamina.io/loadtest.parent";
/// The private key a committed snapshot was written in (WriteCommit).
const LABEL_WRITER: &str = "lamina.io/loadtest.writer";
/// Set by Update.
const LABEL_TOUCH: &str = "lamina.io/loadtest.touch";

/// What every client shares.
pub struct Workload {
    /// Keys per kind in the shared key space.
    pub keys: u64,
    /// Shared lease ids.
    pub leases: u64,
    /// Per mille of operations that mount an active snapshot and write files into it.
    pub write_permille: u32,
    /// Where clients make their mount points.
    pub mount_dir: PathBuf,
    /// Shared active snapshots being written into right now: Usage, Commit, Remove,
    /// Mounts and Stat pick from these often, to race the writers.
    pub hot: std::sync::Mutex<Vec<String>>,
}

impl Workload {
    fn hot(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.hot.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A seeded generator (rand's StdRng) with the few draws the mix makes: the same seed
/// gives the same run.
pub struct Rng(rand::rngs::StdRng);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(rand::SeedableRng::seed_from_u64(seed))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        rand::Rng::next_u64(&mut self.0)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        rand::RngExt::random_range(&mut self.0, 0..n)
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The operations of the mix.
#[derive(Clone, Copy, Debug)]
enum Op {
    Prepare,
    View,
    Mounts,
    Stat,
    Update,
    Usage,
    List,
    Commit,
    Remove,
    Cleanup,
    WriteCommit,
    CreateLease,
    AddLeaseResource,
    DeleteLease,
    PrepareLeased,
    Merge,
    DiskUsage,
    Prune,
}

/// Relative weights (per mille of the whole, WriteCommit's weight comes from the flag).
const MIX: &[(Op, u32)] = &[
    (Op::Prepare, 130),
    (Op::View, 40),
    (Op::Mounts, 60),
    (Op::Stat, 130),
    (Op::Update, 50),
    (Op::Usage, 60),
    (Op::List, 50),
    (Op::Commit, 100),
    (Op::Remove, 120),
    (Op::Cleanup, 6),
    (Op::CreateLease, 25),
    (Op::AddLeaseResource, 40),
    (Op::DeleteLease, 20),
    (Op::PrepareLeased, 40),
    (Op::Merge, 25),
    (Op::DiskUsage, 4),
    (Op::Prune, 2),
];

/// The kind a key's prefix promises.
fn kind_of(key: &str) -> pb::Kind {
    match key.as_bytes().get(3) {
        Some(b'v') => pb::Kind::View,
        Some(b'c' | b'm') => pb::Kind::Committed,
        _ => pb::Kind::Active,
    }
}

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Awaits `f` and returns how long it took with its result.
async fn timed<T>(f: impl std::future::Future<Output = T>) -> (Duration, T) {
    let start = Instant::now();
    let out = f.await;
    (start.elapsed(), out)
}

/// What every info a List returns must satisfy, given its filters.
type InfoCheck = Box<dyn Fn(&pb::Info) -> bool + Send>;

const NF: &[Code] = &[Code::NotFound];
const AE: &[Code] = &[Code::AlreadyExists];
const NF_AE: &[Code] = &[Code::NotFound, Code::AlreadyExists];
const NF_FP: &[Code] = &[Code::NotFound, Code::FailedPrecondition];

/// One client with its own connection.
pub struct Client {
    id: usize,
    rng: Rng,
    snaps: SnapshotsClient<Channel>,
    cache: CacheClient<Channel>,
    merges: MergesClient<Channel>,
    work: std::sync::Arc<Workload>,
    /// Committed names this client saw lately: parents and merge sources.
    recent: VecDeque<String>,
    private_n: u64,
    mount_point: PathBuf,
    /// What it saw.
    pub stats: Stats,
    /// Calls made (RPCs; a composite operation counts each of its calls).
    pub calls: u64,
}

impl Client {
    /// A client numbered `id` on `channel`, seeded from `seed`.
    pub fn new(id: usize, seed: u64, channel: Channel, work: std::sync::Arc<Workload>) -> Client {
        let rng = Rng::new(seed ^ (id as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
        let mount_point = work.mount_dir.join(format!("client-{id}"));
        Client {
            id,
            rng,
            snaps: SnapshotsClient::new(channel.clone()),
            cache: CacheClient::new(channel.clone()),
            merges: MergesClient::new(channel),
            work,
            recent: VecDeque::new(),
            private_n: 0,
            mount_point,
            stats: Stats::default(),
            calls: 0,
        }
    }

    /// Runs operations until `deadline`, then removes what it left of its own.
    pub async fn run(mut self, deadline: Instant) -> Client {
        let total: u32 = MIX.iter().map(|(_, w)| w).sum::<u32>() + self.work.write_permille;
        while Instant::now() < deadline {
            let mut pick = self.rng.below(u64::from(total)) as u32;
            let mut op = Op::WriteCommit;
            for &(o, w) in MIX {
                if pick < w {
                    op = o;
                    break;
                }
                pick -= w;
            }
            self.step(op).await;
        }
        self
    }

    async fn step(&mut self, op: Op) {
        match op {
            Op::Prepare => self.prepare().await,
            Op::View => self.view().await,
            Op::Mounts => self.mounts().await,
            Op::Stat => {
                let k = self.any_key();
                self.stat("Stat", &k).await;
            }
            Op::Update => self.update().await,
            Op::Usage => self.usage().await,
            Op::List => self.list().await,
            Op::Commit => self.commit().await,
            Op::Remove => self.remove().await,
            Op::Cleanup => self.cleanup().await,
            Op::WriteCommit => {
                if self.rng.chance(50) {
                    self.write_commit().await
                } else {
                    self.write_shared().await
                }
            }
            Op::CreateLease => self.create_lease().await,
            Op::AddLeaseResource => {
                let k = self.any_key();
                self.add_lease_resource(&k).await;
            }
            Op::DeleteLease => self.delete_lease().await,
            Op::PrepareLeased => self.prepare_leased().await,
            Op::Merge => self.merge().await,
            Op::DiskUsage => self.disk_usage().await,
            Op::Prune => self.prune().await,
        }
    }

    fn key(&mut self, kind: char) -> String {
        format!("lt-{kind}-{}", self.rng.below(self.work.keys))
    }

    fn any_key(&mut self) -> String {
        if self.rng.chance(35) {
            if let Some(k) = self.hot_key() {
                return k;
            }
        }
        let kind = ['a', 'v', 'c', 'm', 'g'][self.rng.below(5) as usize];
        self.key(kind)
    }

    /// An active snapshot some client is writing into right now, if any.
    fn hot_key(&mut self) -> Option<String> {
        let n = self.work.hot().len() as u64;
        if n == 0 {
            return None;
        }
        let i = self.rng.below(n) as usize;
        self.work.hot().get(i).cloned()
    }

    fn lease_id(&mut self) -> String {
        format!("lt-lease-{}", self.rng.below(self.work.leases))
    }

    /// A committed name to build on: mostly one seen lately (likely to exist), else any.
    fn committed(&mut self) -> String {
        if !self.recent.is_empty() && self.rng.chance(80) {
            let i = self.rng.below(self.recent.len() as u64) as usize;
            return self.recent[i].clone();
        }
        let kind = if self.rng.chance(85) { 'c' } else { 'm' };
        self.key(kind)
    }

    /// A parent for a new snapshot: none a quarter of the time.
    fn parent(&mut self) -> String {
        if self.rng.chance(25) {
            String::new()
        } else {
            self.committed()
        }
    }

    fn saw_committed(&mut self, name: &str) {
        if self.recent.iter().any(|n| n == name) {
            return;
        }
        if self.recent.len() == 32 {
            self.recent.pop_front();
        }
        self.recent.push_back(name.to_owned());
    }

    fn forget(&mut self, name: &str) {
        self.recent.retain(|n| n != name);
    }

    async fn call_prepare(
        &mut self,
        op: &'static str,
        key: &str,
        parent: &str,
        rooted: bool,
        expected: &[Code],
    ) -> Option<Vec<lamina_proto::types::Mount>> {
        let mut l = labels(&[(LABEL_LOADTEST, "1"), (LABEL_PARENT, parent)]);
        if rooted {
            l.insert(LABEL_GC_ROOT.into(), "loadtest".into());
        }
        if self.rng.chance(30) {
            l.insert("lamina.io/loadtest.extra".into(), "x".repeat(64));
        }
        let req = pb::PrepareSnapshotRequest {
            snapshotter: String::new(),
            key: key.into(),
            parent: parent.into(),
            labels: l,
        };
        self.calls += 1;
        let (took, r) = timed(self.snaps.prepare(req)).await;
        if let Err(e) = &r {
            if e.code() == Code::NotFound && !parent.is_empty() {
                self.forget(parent);
            }
        }
        let mounts = self
            .stats
            .record(op, took, r.map(|r| r.into_inner().mounts), expected)?;
        if mounts.is_empty() {
            self.stats
                .wrong(op, format!("{key} on {parent:?}: success with no mounts"));
        }
        Some(mounts)
    }

    async fn prepare(&mut self) {
        let key = self.key('a');
        let parent = self.parent();
        self.call_prepare("Prepare", &key, &parent, true, NF_AE)
            .await;
    }

    async fn view(&mut self) {
        let key = self.key('v');
        let parent = self.committed();
        let req = pb::ViewSnapshotRequest {
            snapshotter: String::new(),
            key: key.clone(),
            parent: parent.clone(),
            labels: labels(&[
                (LABEL_LOADTEST, "1"),
                (LABEL_PARENT, &parent),
                (LABEL_GC_ROOT, "loadtest"),
            ]),
        };
        self.calls += 1;
        let (took, r) = timed(self.snaps.view(req)).await;
        if let Some(m) = self
            .stats
            .record("View", took, r.map(|r| r.into_inner().mounts), NF_AE)
        {
            if m.is_empty() {
                self.stats
                    .wrong("View", format!("{key} of {parent}: no mounts"));
            }
        }
    }

    async fn mounts(&mut self) {
        let key = self.any_key();
        let committed = kind_of(&key) == pb::Kind::Committed;
        let req = pb::MountsRequest {
            snapshotter: String::new(),
            key: key.clone(),
        };
        self.calls += 1;
        let (took, r) = timed(self.snaps.mounts(req)).await;
        // A committed snapshot has no mounts: FailedPrecondition is its correct answer.
        let expected = if committed { NF_FP } else { NF };
        if let Some(m) =
            self.stats
                .record("Mounts", took, r.map(|r| r.into_inner().mounts), expected)
        {
            if committed {
                self.stats
                    .wrong("Mounts", format!("{key} (committed) returned mounts"));
            } else if m.is_empty() {
                self.stats.wrong("Mounts", format!("{key}: no mounts"));
            }
        }
    }

    /// Stats `key` and checks the answer against what its key kind and labels promise.
    async fn stat(&mut self, op: &'static str, key: &str) -> Option<pb::Info> {
        let req = pb::StatSnapshotRequest {
            snapshotter: String::new(),
            key: key.into(),
        };
        self.calls += 1;
        let (took, r) = timed(self.snaps.stat(req)).await;
        let info = self
            .stats
            .record(op, took, r.map(|r| r.into_inner().info), NF)?;
        let Some(info) = info else {
            self.stats.wrong(op, format!("{key}: answer without info"));
            return None;
        };
        self.check_info(op, key, &info);
        Some(info)
    }

    fn check_info(&mut self, op: &'static str, key: &str, info: &pb::Info) {
        let want = kind_of(key);
        if info.name != key {
            self.stats
                .wrong(op, format!("{key}: info names {:?}", info.name));
        }
        if info.kind != want as i32 {
            self.stats.wrong(
                op,
                format!(
                    "{key}: kind {} where {want:?} is the only kind made under this key",
                    info.kind
                ),
            );
        }
        if let Some(p) = info.labels.get(LABEL_PARENT) {
            if *p != info.parent {
                self.stats.wrong(
                    op,
                    format!("{key}: parent {:?}, but it was made on {p:?}", info.parent),
                );
            }
        }
        if kind_of(key) == pb::Kind::Committed {
            self.saw_committed(key);
        }
    }

    async fn update(&mut self) {
        let key = self.any_key();
        let value = format!("{}-{}", self.id, self.rng.below(1000));
        let req = pb::UpdateSnapshotRequest {
            snapshotter: String::new(),
            info: Some(pb::Info {
                name: key.clone(),
                labels: labels(&[(LABEL_TOUCH, &value)]),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec![format!("labels.{LABEL_TOUCH}")],
            }),
        };
        self.calls += 1;
        let (took, r) = timed(self.snaps.update(req)).await;
        let Some(info) = self
            .stats
            .record("Update", took, r.map(|r| r.into_inner().info), NF)
        else {
            return;
        };
        let Some(info) = info else {
            self.stats.wrong("Update", format!("{key}: no info"));
            return;
        };
        if info.labels.get(LABEL_TOUCH) != Some(&value) || !info.labels.contains_key(LABEL_LOADTEST)
        {
            self.stats.wrong(
                "Update",
                format!("{key}: labels after the update: {:?}", info.labels),
            );
        }
        self.check_info("Update", &key, &info);
    }

    async fn usage(&mut self) {
        let key = self.any_key();
        let req = pb::UsageRequest {
            snapshotter: String::new(),
            key: key.clone(),
        };
        self.calls += 1;
        let (took, r) = timed(self.snaps.usage(req)).await;
        if let Some(u) = self
            .stats
            .record("Usage", took, r.map(|r| r.into_inner()), NF)
        {
            if u.size < 0 || u.inodes < 0 {
                self.stats
                    .wrong("Usage", format!("{key}: negative usage {u:?}"));
            }
        }
    }

    async fn list(&mut self) {
        let (filters, check): (Vec<String>, InfoCheck) = match self.rng.below(5) {
            0 => (
                vec!["kind==committed".into()],
                Box::new(|i: &pb::Info| i.kind == pb::Kind::Committed as i32),
            ),
            1 => (
                vec!["name~=^lt-a-".into()],
                Box::new(|i: &pb::Info| i.name.starts_with("lt-a-")),
            ),
            2 => {
                let p = self.committed();
                let q = p.clone();
                (
                    vec![format!("parent=={p}")],
                    Box::new(move |i: &pb::Info| i.parent == q),
                )
            }
            3 => {
                let p = self.committed();
                let q = p.clone();
                (
                    vec![
                        format!("kind==active,labels.\"{LABEL_PARENT}\"=={p}"),
                        format!("kind==view,labels.\"{LABEL_PARENT}\"=={p}"),
                    ],
                    Box::new(move |i: &pb::Info| {
                        i.kind != pb::Kind::Committed as i32
                            && i.labels.get(LABEL_PARENT) == Some(&q)
                            && i.parent == q
                    }),
                )
            }
            _ => (
                vec![format!("labels.\"{LABEL_LOADTEST}\"")],
                Box::new(|i: &pb::Info| i.labels.contains_key(LABEL_LOADTEST)),
            ),
        };
        let req = pb::ListSnapshotsRequest {
            snapshotter: String::new(),
            filters: filters.clone(),
        };
        self.calls += 1;
        let snaps = &mut self.snaps;
        let (took, r) = timed(async {
            let mut s = snaps.list(req).await?.into_inner();
            let mut out = Vec::new();
            while let Some(m) = s.message().await? {
                out.extend(m.info);
            }
            Ok::<_, Status>(out)
        })
        .await;
        let Some(infos) = self.stats.record("List", took, r, &[]) else {
            return;
        };
        for i in &infos {
            if !check(i) {
                self.stats.wrong(
                    "List",
                    format!(
                        "{filters:?} returned {} (kind {}, parent {:?})",
                        i.name, i.kind, i.parent
                    ),
                );
                break;
            }
            if kind_of(&i.name) == pb::Kind::Committed && i.name.starts_with("lt-") {
                self.saw_committed(&i.name);
            }
        }
    }

    async fn call_commit(
        &mut self,
        op: &'static str,
        name: &str,
        key: &str,
        extra: &[(&str, &str)],
        expected: &[Code],
    ) -> bool {
        let mut l = labels(&[(LABEL_LOADTEST, "1"), (LABEL_GC_ROOT, "loadtest")]);
        l.extend(labels(extra));
        let req = pb::CommitSnapshotRequest {
            snapshotter: String::new(),
            name: name.into(),
            key: key.into(),
            labels: l,
        };
        self.calls += 1;
        let (took, r) = timed(self.snaps.commit(req)).await;
        self.stats.record(op, took, r, expected).is_some()
    }

    async fn commit(&mut self) {
        let key = match self.rng.chance(20).then(|| self.hot_key()).flatten() {
            Some(k) => k,
            None => self.key('a'),
        };
        let name = self.key('c');
        if self.call_commit("Commit", &name, &key, &[], NF_AE).await {
            // Committed by this client a moment ago: gone (another client removed it) or
            // committed, never anything else.
            self.stat("Stat after Commit", &name).await;
        }
    }

    async fn remove(&mut self) {
        let key = self.any_key();
        // Only committed snapshots can have dependants.
        let expected = if kind_of(&key) == pb::Kind::Committed {
            NF_FP
        } else {
            NF
        };
        self.remove_key("Remove", &key, expected).await;
    }

    async fn remove_key(&mut self, op: &'static str, key: &str, expected: &[Code]) -> bool {
        let req = pb::RemoveSnapshotRequest {
            snapshotter: String::new(),
            key: key.into(),
        };
        self.calls += 1;
        let (took, r) = timed(self.snaps.remove(req)).await;
        let removed = self.stats.record(op, took, r, expected).is_some();
        if removed {
            self.forget(key);
        }
        removed
    }

    async fn cleanup(&mut self) {
        self.calls += 1;
        let (took, r) = timed(self.snaps.cleanup(pb::CleanupRequest {
            snapshotter: String::new(),
        }))
        .await;
        self.stats.record("Cleanup", took, r, &[]);
    }

    /// Prepares a private active snapshot, mounts it, writes (and deletes) files, unmounts
    /// and commits it under a shared name; a taken name removes it instead.
    async fn write_commit(&mut self) {
        self.private_n += 1;
        let key = format!("lt-w-{}-{}", self.id, self.private_n);
        let mut parent = self.committed();
        if self.rng.chance(20) {
            parent.clear();
        }
        let Some(mounts) = self
            .call_prepare("Prepare (to write)", &key, &parent, true, NF)
            .await
        else {
            return;
        };
        let seed = self.rng.next_u64();
        let target = self.mount_point.clone();
        let start = Instant::now();
        let wrote = tokio::task::spawn_blocking(move || write_files(&mounts, &target, seed))
            .await
            .map_err(|e| format!("task failed: {e}"))
            .and_then(|r| r);
        let took = start.elapsed();
        self.stats.record(
            "mount+write+unmount (local)",
            took,
            Ok::<_, Status>(()),
            &[],
        );
        if let Err(e) = wrote {
            self.stats
                .wrong("mount+write+unmount (local)", format!("{key}: {e}"));
            self.remove_key("Remove (own)", &key, &[]).await;
            return;
        }
        let name = self.key('c');
        if !self
            .call_commit("Commit (written)", &name, &key, &[(LABEL_WRITER, &key)], AE)
            .await
        {
            self.remove_key("Remove (own)", &key, &[]).await;
            return;
        }
        if let Some(info) = self.stat("Stat after Commit", &name).await {
            if info.labels.get(LABEL_WRITER) == Some(&key) && info.parent != parent {
                self.stats.wrong(
                    "Stat after Commit",
                    format!(
                        "{name}: committed from {key} on {parent:?}, Stat says parent {:?}",
                        info.parent
                    ),
                );
            }
        }
    }

    /// Prepares a shared active snapshot and, while other clients may stat, measure,
    /// commit or remove it, mounts it, creates and deletes files in it for a while,
    /// unmounts, and commits it. A local failure is the race's doing only if the snapshot
    /// is gone (or another one has its key) by then.
    async fn write_shared(&mut self) {
        let key = self.key('a');
        let parent = self.parent();
        self.private_n += 1;
        let token = format!("{}-{}", self.id, self.private_n);
        let mut l = labels(&[
            (LABEL_LOADTEST, "1"),
            (LABEL_PARENT, &parent),
            (LABEL_GC_ROOT, "loadtest"),
            (LABEL_WRITER, &token),
        ]);
        l.insert("lamina.io/loadtest.shared".into(), "1".into());
        let req = pb::PrepareSnapshotRequest {
            snapshotter: String::new(),
            key: key.clone(),
            parent: parent.clone(),
            labels: l,
        };
        self.calls += 1;
        let (took, r) = timed(self.snaps.prepare(req)).await;
        let Some(mounts) = self.stats.record(
            "Prepare (shared, to write)",
            took,
            r.map(|r| r.into_inner().mounts),
            NF_AE,
        ) else {
            return;
        };
        self.work.hot().push(key.clone());
        let seed = self.rng.next_u64();
        let target = self.mount_point.clone();
        let start = Instant::now();
        let wrote = tokio::task::spawn_blocking(move || churn_files(&mounts, &target, seed))
            .await
            .map_err(|e| format!("task failed: {e}"))
            .and_then(|r| r);
        let took = start.elapsed();
        {
            let mut hot = self.work.hot();
            if let Some(i) = hot.iter().position(|k| *k == key) {
                hot.swap_remove(i);
            }
        }
        const OP: &str = "mount+churn+unmount (shared)";
        self.stats.record(OP, took, Ok::<_, Status>(()), &[]);
        if let Err(e) = wrote {
            // Still there and still ours: the failure is not the race's.
            let req = pb::StatSnapshotRequest {
                snapshotter: String::new(),
                key: key.clone(),
            };
            self.calls += 1;
            let (took, r) = timed(self.snaps.stat(req)).await;
            let ours = match self
                .stats
                .record("Stat (after a failed write)", took, r, NF)
            {
                Some(info) => info
                    .into_inner()
                    .info
                    .is_some_and(|i| i.labels.get(LABEL_WRITER) == Some(&token)),
                None => false,
            };
            if ours {
                self.stats.wrong(OP, format!("{key}: {e}"));
            } else {
                self.stats.expected_local(OP, "snapshot gone");
            }
            return;
        }
        let name = self.key('c');
        self.call_commit("Commit (shared, written)", &name, &key, &[], NF_AE)
            .await;
    }

    async fn create_lease(&mut self) {
        let id = self.lease_id();
        // Some expire within seconds: collections then delete them, racing DeleteLease.
        let expire_at = self.rng.chance(30).then(|| {
            let at =
                std::time::SystemTime::now() + Duration::from_millis(500 + self.rng.below(2500));
            prost_types::Timestamp::from(at)
        });
        let req = lpb::CreateLeaseRequest {
            id: id.clone(),
            labels: labels(&[(LABEL_LOADTEST, "1")]),
            expire_at,
        };
        self.calls += 1;
        let (took, r) = timed(self.cache.create_lease(req)).await;
        if let Some(l) = self
            .stats
            .record("CreateLease", took, r.map(|r| r.into_inner()), AE)
        {
            if l.id != id {
                self.stats
                    .wrong("CreateLease", format!("asked for {id}, got {}", l.id));
            }
        }
    }

    async fn add_lease_resource(&mut self, key: &str) -> bool {
        let req = lpb::LeaseResourceRequest {
            lease: self.lease_id(),
            resource: Some(lpb::LeaseResource {
                id: key.into(),
                r#type: "snapshots/lamina".into(),
            }),
        };
        self.calls += 1;
        let (took, r) = timed(self.cache.add_lease_resource(req)).await;
        self.stats.record("AddLeaseResource", took, r, NF).is_some()
    }

    async fn delete_lease(&mut self) {
        // A synchronous delete collects garbage: rarely.
        let sync = self.rng.chance(10);
        let req = lpb::DeleteLeaseRequest {
            id: self.lease_id(),
            sync,
        };
        self.calls += 1;
        let (took, r) = timed(self.cache.delete_lease(req)).await;
        let op = if sync {
            "DeleteLease (sync, GC)"
        } else {
            "DeleteLease"
        };
        self.stats.record(op, took, r, NF);
    }

    /// An active snapshot held only by a lease (added to it first, as containerd does).
    async fn prepare_leased(&mut self) {
        let key = self.key('g');
        self.add_lease_resource(&key).await;
        let parent = self.parent();
        self.call_prepare("Prepare (leased)", &key, &parent, false, NF_AE)
            .await;
    }

    async fn merge(&mut self) {
        let key = self.key('m');
        let n = 1 + self.rng.below(3);
        let diffs = (0..n)
            .map(|_| lpb::SnapshotDiff {
                lower: String::new(),
                upper: self.committed(),
            })
            .collect();
        let req = lpb::MergeRequest {
            key: key.clone(),
            diffs,
            labels: labels(&[(LABEL_LOADTEST, "1"), (LABEL_GC_ROOT, "loadtest")]),
        };
        self.calls += 1;
        let (took, r) = timed(self.merges.merge(req)).await;
        if let Some(m) = self
            .stats
            .record("Merge", took, r.map(|r| r.into_inner()), NF_AE)
        {
            if m.method != "stacked" && m.method != "hardlinked" {
                self.stats
                    .wrong("Merge", format!("{key}: method {:?}", m.method));
            }
            self.stat("Stat after Merge", &key).await;
        }
    }

    async fn disk_usage(&mut self) {
        self.calls += 1;
        let (took, r) = timed(self.cache.disk_usage(lpb::DiskUsageRequest {})).await;
        if let Some(du) = self
            .stats
            .record("DiskUsage", took, r.map(|r| r.into_inner()), &[])
        {
            if du.total < 0 || du.snapshots.iter().any(|s| s.exclusive < 0) {
                self.stats
                    .wrong("DiskUsage", format!("negative figures: total {}", du.total));
            }
        }
    }

    async fn prune(&mut self) {
        let req = lpb::PruneRequest {
            filters: Vec::new(),
            all: false,
            keep_duration: None,
            keep_bytes: 0,
        };
        self.calls += 1;
        let (took, r) = timed(self.cache.prune(req)).await;
        if let Some(p) = self
            .stats
            .record("Prune", took, r.map(|r| r.into_inner()), &[])
        {
            // Everything but the lease-held kind is a GC root.
            let gc = p.gc.unwrap_or_default();
            if let Some(s) = gc
                .snapshots
                .iter()
                .find(|s| s.id.starts_with("lt-") && !s.id.starts_with("lt-g-"))
            {
                self.stats
                    .wrong("Prune", format!("collected {}, a GC root", s.id));
            }
        }
    }
}

/// Mounts `mounts` on `target`, writes a few files and a directory, deletes one entry it
/// finds (a whiteout over a lower layer's when there is one), and unmounts.
fn write_files(
    mounts: &[lamina_proto::types::Mount],
    target: &Path,
    seed: u64,
) -> Result<(), String> {
    with_mounted(mounts, target, |dir| write_into(dir, seed))
}

/// Mounts `mounts` on `target`, creates and deletes files and directories in a few
/// rounds, and unmounts (also after a failure).
fn churn_files(
    mounts: &[lamina_proto::types::Mount],
    target: &Path,
    seed: u64,
) -> Result<(), String> {
    with_mounted(mounts, target, |dir| churn_into(dir, seed))
}

/// Mounts `mounts` on `target`, runs `work` there and unmounts, also after a failure.
fn with_mounted(
    mounts: &[lamina_proto::types::Mount],
    target: &Path,
    work: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<(), String> {
    std::fs::create_dir_all(target).map_err(|e| format!("mkdir {}: {e}", target.display()))?;
    lamina_core::sys::mount_all(&lamina_proto::core_mounts(mounts), target)
        .map_err(|e| format!("mount: {e}"))?;
    let worked = work(target);
    let unmounted = lamina_core::sys::unmount(target).map_err(|e| format!("unmount: {e}"));
    worked.and(unmounted)
}

fn churn_into(target: &Path, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    for round in 0..16 {
        let d = target.join(format!("churn-{round}"));
        let r = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(d.join("sub"))?;
            for i in 0..8 {
                std::fs::write(d.join(format!("sub/f{i}")), vec![i as u8; 256 + i * 100])?;
            }
            if rng.chance(50) {
                std::fs::remove_dir_all(&d)?;
            } else {
                std::fs::remove_file(d.join("sub/f0"))?;
            }
            Ok(())
        })();
        r.map_err(|e| format!("round {round} in {}: {e}", d.display()))?;
    }
    Ok(())
}

fn write_into(dir: &Path, seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let io = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
    // Delete something an earlier layer made, when there is anything.
    let existing: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| io("read_dir", dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    if !existing.is_empty() && rng.chance(50) {
        let victim = &existing[rng.below(existing.len() as u64) as usize];
        std::fs::remove_file(victim).map_err(|e| io("remove", victim, e))?;
    }
    for _ in 0..3 {
        let p = dir.join(format!("f-{:x}", rng.next_u64() & 0xffff));
        let len = 512 + rng.below(8 * 1024) as usize;
        let data: Vec<u8> = (0..len).map(|i| (i as u64 ^ seed) as u8).collect();
        std::fs::write(&p, data).map_err(|e| io("write", &p, e))?;
    }
    let sub = dir.join(format!("d-{:x}", rng.next_u64() & 0xff));
    std::fs::create_dir_all(&sub).map_err(|e| io("mkdir", &sub, e))?;
    let f = sub.join("file");
    std::fs::write(&f, b"nested\n").map_err(|e| io("write", &f, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_kinds_follow_their_prefix() {
        assert_eq!(kind_of("lt-a-3"), pb::Kind::Active);
        assert_eq!(kind_of("lt-g-3"), pb::Kind::Active);
        assert_eq!(kind_of("lt-w-1-2"), pb::Kind::Active);
        assert_eq!(kind_of("lt-v-0"), pb::Kind::View);
        assert_eq!(kind_of("lt-c-9"), pb::Kind::Committed);
        assert_eq!(kind_of("lt-m-9"), pb::Kind::Committed);
    }

    #[test]
    fn the_generator_is_seeded() {
        let a: Vec<u64> = {
            let mut r = Rng::new(7);
            (0..4).map(|_| r.below(100)).collect()
        };
        let mut r = Rng::new(7);
        assert_eq!(a, (0..4).map(|_| r.below(100)).collect::<Vec<_>>());
        assert_ne!(Rng::new(8).next_u64(), Rng::new(7).next_u64());
    }

    #[test]
    fn writes_files_into_a_directory() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("old"), b"x").unwrap();
        write_into(d.path(), 1).unwrap();
        write_into(d.path(), 2).unwrap();
        let n = std::fs::read_dir(d.path()).unwrap().count();
        assert!(n >= 6, "{n} entries");
    }
}
