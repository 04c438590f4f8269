//! lamina.v1.Merges through a real laminad: a stacked merge and a hard-link merge of
//! the same diffs show the same tree; a diff snapshot and an exported diff rebuild the
//! upper snapshot on the lower one; merge sources cannot go first; GC keeps what a kept
//! merge stacks and removes the rest.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use lamina_proto::lamina::v1 as lpb;
use lamina_proto::lamina::v1::cache_client::CacheClient;
use lamina_proto::lamina::v1::layers_client::LayersClient;
use lamina_proto::lamina::v1::merges_client::MergesClient;
use tonic::Code;

async fn apply(d: &Daemon, name: &str, parent: &str, blob: Vec<u8>) {
    let mut c = LayersClient::new(lamina_proto::connect_unix(&d.socket).await.unwrap());
    let msgs = vec![
        lpb::ApplyLayerChunk {
            header: Some(lpb::ApplyLayerHeader {
                name: name.into(),
                parent: parent.into(),
                ..Default::default()
            }),
            data: Vec::new(),
        },
        lpb::ApplyLayerChunk {
            header: None,
            data: blob,
        },
    ];
    c.apply(tokio_stream::iter(msgs)).await.unwrap();
}

fn diff(lower: &str, upper: &str) -> lpb::SnapshotDiff {
    lpb::SnapshotDiff {
        lower: lower.into(),
        upper: upper.into(),
    }
}

/// Files (path -> content) a read-only view of committed `name` shows.
async fn files(d: &Daemon, name: &str) -> BTreeMap<String, Vec<u8>> {
    let mut s = d.client().await;
    let key = format!("view-of-{name}");
    let mounts = view(&mut s, &key, name).await.unwrap();
    let target = d.root.join("..").join(format!("mnt-{name}"));
    let out = with_mounted(&mounts, &target, |dir| {
        let mut out = BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(p) = stack.pop() {
            for e in std::fs::read_dir(&p).unwrap() {
                let e = e.unwrap();
                let ft = e.file_type().unwrap();
                if ft.is_dir() {
                    stack.push(e.path());
                } else {
                    let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
                    out.insert(rel, std::fs::read(e.path()).unwrap_or_default());
                }
            }
        }
        out
    });
    remove(&mut s, &key).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn merges_diffs_exports_and_gc() {
    let d = Daemon::start("overlayfs");
    apply(&d, "base", "", tar_gz(&[("a/x", b"x"), ("a/y", b"y")])).await;
    apply(
        &d,
        "top",
        "base",
        tar_gz(&[("a/.wh.y", b""), ("a/z", b"z")]),
    )
    .await;
    apply(&d, "other", "", tar_gz(&[("b/w", b"w")])).await;
    let mut m = MergesClient::new(lamina_proto::connect_unix(&d.socket).await.unwrap());

    let stacked = m
        .merge(lpb::MergeRequest {
            key: "m1".into(),
            diffs: vec![diff("", "base"), diff("base", "top"), diff("", "other")],
            labels: labels(&[]),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stacked.method, "stacked");
    let linked = m
        .merge(lpb::MergeRequest {
            key: "m2".into(),
            diffs: vec![diff("", "top"), diff("", "other")],
            labels: labels(&[]),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(linked.method, "hardlinked");
    assert!(linked.entries >= 3, "{linked:?}");
    let expected: BTreeMap<String, Vec<u8>> = [("a/x", "x"), ("a/z", "z"), ("b/w", "w")]
        .iter()
        .map(|(p, c)| (p.to_string(), c.as_bytes().to_vec()))
        .collect();
    assert_eq!(files(&d, "m1").await, expected);
    assert_eq!(files(&d, "m2").await, expected);

    // A diff snapshot, and the same diff exported, rebuild `top` on `base`.
    let ds = m
        .diff(lpb::DiffSnapshotRequest {
            key: "d".into(),
            lower: "base".into(),
            upper: "top".into(),
            labels: labels(&[]),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ds.method, "hardlinked");
    let mut stream = m
        .export(lpb::ExportDiffRequest {
            lower: "base".into(),
            upper: "top".into(),
            compression: "zstd".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let (mut blob, mut info) = (Vec::new(), None);
    while let Some(c) = stream.message().await.unwrap() {
        blob.extend_from_slice(&c.data);
        info = c.info.or(info);
    }
    let info = info.expect("digests at the end");
    assert!(
        info.digest.starts_with("sha256:") && info.entries >= 2,
        "{info:?}"
    );
    apply(&d, "rebuilt", "base", blob).await;
    let merged_diff = m
        .merge(lpb::MergeRequest {
            key: "m3".into(),
            diffs: vec![diff("", "base"), diff("", "d")],
            labels: labels(&[]),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(merged_diff.method, "stacked");
    let top = files(&d, "top").await;
    assert_eq!(files(&d, "rebuilt").await, top);
    assert_eq!(files(&d, "m3").await, top);

    // Bad input.
    let err = m
        .merge(lpb::MergeRequest {
            key: "bad".into(),
            diffs: vec![diff("", "nope")],
            labels: labels(&[]),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    let err = m
        .merge(lpb::MergeRequest {
            key: "m1".into(),
            diffs: vec![diff("", "base")],
            labels: labels(&[]),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err}");

    // The stacked merge holds its sources.
    let mut s = d.client().await;
    let err = remove(&mut s, "top").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");

    // GC with only m1 held: its sources stay, everything else goes.
    let mut c = CacheClient::new(lamina_proto::connect_unix(&d.socket).await.unwrap());
    c.create_lease(lpb::CreateLeaseRequest {
        id: "keep-m1".into(),
        labels: labels(&[]),
        expire_at: None,
    })
    .await
    .unwrap();
    c.add_lease_resource(lpb::LeaseResourceRequest {
        lease: "keep-m1".into(),
        resource: Some(lpb::LeaseResource {
            id: "m1".into(),
            r#type: "snapshots/lamina".into(),
        }),
    })
    .await
    .unwrap();
    c.garbage_collect(lpb::GarbageCollectRequest {})
        .await
        .unwrap();
    let mut left: Vec<String> = list(&mut s, &[])
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    left.sort();
    assert_eq!(left, ["base", "m1", "other", "top"]);
    assert!(Path::new(&d.root).exists());
}
