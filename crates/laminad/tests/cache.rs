//! lamina.v1.Cache through a real laminad: leases (one expired) and gc.root labels keep
//! snapshots through GarbageCollect, DiskUsage shows a hard link between two snapshot
//! trees as shared and counts it once, errors map to the right status codes.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use common::*;
use lamina_proto::lamina::v1 as cpb;
use lamina_proto::lamina::v1::cache_client::CacheClient;
use tonic::transport::Channel;
use tonic::Code;

async fn cache_client(d: &Daemon) -> CacheClient<Channel> {
    CacheClient::new(lamina_proto::connect_unix(&d.socket).await.unwrap())
}

fn snapshot(key: &str) -> Option<cpb::LeaseResource> {
    Some(cpb::LeaseResource {
        id: key.into(),
        r#type: "snapshots/lamina".into(),
    })
}

async fn keys(d: &Daemon) -> Vec<String> {
    let mut c = d.client().await;
    let mut k: Vec<String> = list(&mut c, &[])
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    k.sort();
    k
}

#[tokio::test(flavor = "multi_thread")]
async fn leases_gc_and_disk_usage_over_grpc() {
    let d = Daemon::start("overlayfs");
    let mut s = d.client().await;
    let mut c = cache_client(&d).await;

    // Parentless active snapshots are binds of their own trees: write into them.
    let tree = |m: &[lamina_proto::types::Mount]| PathBuf::from(&m[0].source);
    let a = tree(&prepare(&mut s, "a", "", labels(&[])).await.unwrap());
    let rooted = prepare(
        &mut s,
        "rooted",
        "",
        labels(&[("containerd.io/gc.root", "1")]),
    )
    .await
    .unwrap();
    assert!(!rooted.is_empty());
    let junk = tree(&prepare(&mut s, "junk", "", labels(&[])).await.unwrap());
    prepare(&mut s, "expiring", "", labels(&[])).await.unwrap();
    std::fs::write(a.join("big"), vec![7u8; 300_000]).unwrap();
    std::fs::hard_link(a.join("big"), junk.join("link")).unwrap();
    std::fs::write(junk.join("own"), vec![1u8; 100_000]).unwrap();
    let big = std::fs::metadata(a.join("big")).unwrap().blocks() as i64 * 512;

    let lease = c
        .create_lease(cpb::CreateLeaseRequest {
            id: "build".into(),
            labels: labels(&[("team", "infra")]),
            expire_at: Some((SystemTime::now() + Duration::from_secs(3600)).into()),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(lease.labels.contains_key("containerd.io/gc.expire"));
    c.create_lease(cpb::CreateLeaseRequest {
        id: "stale".into(),
        labels: labels(&[]),
        expire_at: Some((SystemTime::now() - Duration::from_secs(60)).into()),
    })
    .await
    .unwrap();
    for (l, k) in [("build", "a"), ("stale", "expiring")] {
        c.add_lease_resource(cpb::LeaseResourceRequest {
            lease: l.into(),
            resource: snapshot(k),
        })
        .await
        .unwrap();
    }

    // Disk usage: the linked file is shared by a and junk, and counted once.
    let du = c
        .disk_usage(cpb::DiskUsageRequest {})
        .await
        .unwrap()
        .into_inner();
    let get = |k: &str| du.snapshots.iter().find(|s| s.key == k).unwrap().clone();
    assert_eq!((get("a").shared, get("junk").shared), (big, big));
    assert_eq!(get("rooted").shared, 0);
    assert_eq!(du.shared_total, big);
    let exclusive: i64 = du.snapshots.iter().map(|s| s.exclusive).sum();
    assert_eq!(du.total, exclusive + big);
    let out = std::process::Command::new("du")
        .args(["-s", "-c", "-B1"])
        .args(
            std::fs::read_dir(d.root.join("snapshots"))
                .unwrap()
                .map(|e| e.unwrap().path().join("fs")),
        )
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let du_total: i64 = text
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        du.total, du_total,
        "same as du, which counts each inode once"
    );

    // GC: the expired lease goes first, then everything nothing holds.
    let gc = c
        .garbage_collect(cpb::GarbageCollectRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(gc.expired_leases, vec!["stale".to_string()]);
    let mut removed: Vec<String> = gc.snapshots.iter().map(|r| r.id.clone()).collect();
    removed.sort();
    assert_eq!(removed, vec!["expiring".to_string(), "junk".to_string()]);
    assert_eq!(keys(&d).await, vec!["a".to_string(), "rooted".to_string()]);
    assert!(
        gc.snapshot_bytes >= 100_000 && gc.snapshot_bytes < big + 100_000,
        "junk's own file is freed, the file a still links is not: {}",
        gc.snapshot_bytes
    );

    let leases = c
        .list_leases(cpb::ListLeasesRequest {
            filters: vec!["labels.team==infra".into()],
        })
        .await
        .unwrap()
        .into_inner()
        .leases;
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].id, "build");
    assert_eq!(
        leases[0].resources,
        vec![cpb::LeaseResource {
            id: "a".into(),
            r#type: "snapshots".into(),
        }],
        "one store: the snapshotter name is not kept"
    );

    // Deleting the lease synchronously collects what it held.
    let r = c
        .delete_lease(cpb::DeleteLeaseRequest {
            id: "build".into(),
            sync: true,
        })
        .await
        .unwrap()
        .into_inner();
    let gc = r.gc.expect("a synchronous delete reports its collection");
    assert_eq!(
        gc.snapshots
            .iter()
            .map(|r| r.id.as_str())
            .collect::<Vec<_>>(),
        vec!["a"]
    );
    assert_eq!(keys(&d).await, vec!["rooted".to_string()]);

    // Prune with no cache records removes no record.
    let p = c
        .prune(cpb::PruneRequest {
            filters: vec![],
            all: true,
            keep_duration: None,
            keep_bytes: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(p.removed.is_empty());

    // Errors come back with containerd's codes.
    let code =
        |r: Result<tonic::Response<cpb::DeleteLeaseResponse>, tonic::Status>| r.unwrap_err().code();
    assert_eq!(
        code(
            c.delete_lease(cpb::DeleteLeaseRequest {
                id: "build".into(),
                sync: false
            })
            .await
        ),
        Code::NotFound
    );
    c.create_lease(cpb::CreateLeaseRequest {
        id: "dup".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let dup = c
        .create_lease(cpb::CreateLeaseRequest {
            id: "dup".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
    let bad = c
        .add_lease_resource(cpb::LeaseResourceRequest {
            lease: "dup".into(),
            resource: Some(cpb::LeaseResource {
                id: "x".into(),
                r#type: "images".into(),
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let bad = c
        .prune(cpb::PruneRequest {
            filters: vec!["id==".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
}
