//! Bad requests get containerd's status codes and leave nothing half-written.

mod common;

use common::*;
use lamina_proto::snapshots as pb;
use tonic::Code;

/// Every record has exactly one directory and vice versa.
async fn assert_consistent(d: &Daemon) {
    let mut c = d.client().await;
    let records = list(&mut c, &[]).await.expect("list").len();
    assert_eq!(
        d.snapshot_dirs().len(),
        records,
        "directories {:?} vs {records} records",
        d.snapshot_dirs()
    );
}

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
    r.expect_err("request should fail").code()
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_keys_parents_and_labels() {
    for backend in ["overlayfs", "native"] {
        let d = Daemon::start(backend);
        let mut c = d.client().await;
        prepare(&mut c, "base-a", "", labels(&[])).await.unwrap();
        commit(&mut c, "base", "base-a").await.unwrap();
        prepare(&mut c, "active", "base", labels(&[]))
            .await
            .unwrap();
        view(&mut c, "view", "base").await.unwrap();

        assert_eq!(
            code(prepare(&mut c, "", "", labels(&[])).await),
            Code::InvalidArgument,
            "empty key"
        );
        assert_eq!(
            code(prepare(&mut c, "a\0b", "", labels(&[])).await),
            Code::InvalidArgument,
            "NUL in key"
        );
        assert_eq!(
            code(view(&mut c, "", "base").await),
            Code::InvalidArgument,
            "empty view key"
        );
        assert_eq!(
            code(prepare(&mut c, "x", "missing", labels(&[])).await),
            Code::NotFound,
            "unknown parent"
        );
        assert_eq!(
            code(prepare(&mut c, "x", "active", labels(&[])).await),
            Code::InvalidArgument,
            "active parent"
        );
        assert_eq!(
            code(prepare(&mut c, "x", "view", labels(&[])).await),
            Code::InvalidArgument,
            "view parent"
        );
        let big = "v".repeat(4096);
        assert_eq!(
            code(prepare(&mut c, "x", "", labels(&[("k", &big)])).await),
            Code::InvalidArgument,
            "label > 4096"
        );
        let just_fits = "v".repeat(4095);
        prepare(&mut c, "fits", "", labels(&[("k", &just_fits)]))
            .await
            .expect("label of exactly 4096 bytes");
        assert_eq!(
            code(prepare(&mut c, "fits", "", labels(&[])).await),
            Code::AlreadyExists,
            "duplicate key"
        );
        assert_eq!(
            code(prepare(&mut c, "base", "", labels(&[])).await),
            Code::AlreadyExists,
            "key = committed name"
        );

        assert_eq!(
            code(commit(&mut c, "v-committed", "view").await),
            Code::FailedPrecondition,
            "commit of a view"
        );
        assert_eq!(
            code(commit(&mut c, "again", "base").await),
            Code::FailedPrecondition,
            "commit of committed"
        );
        assert_eq!(
            code(commit(&mut c, "base", "fits").await),
            Code::AlreadyExists,
            "commit onto existing name"
        );
        assert_eq!(
            code(commit(&mut c, "n", "missing").await),
            Code::NotFound,
            "commit of missing"
        );
        assert_eq!(
            code(commit(&mut c, "", "fits").await),
            Code::InvalidArgument,
            "empty name"
        );

        assert_eq!(
            code(remove(&mut c, "base").await),
            Code::FailedPrecondition,
            "remove with children"
        );
        stat(&mut c, "base").await.expect("parent still there");
        stat(&mut c, "active").await.expect("child still there");
        assert_eq!(
            code(remove(&mut c, "missing").await),
            Code::NotFound,
            "remove missing"
        );
        assert_eq!(
            code(stat(&mut c, "missing").await),
            Code::NotFound,
            "stat missing"
        );
        assert_eq!(
            code(usage(&mut c, "missing").await),
            Code::NotFound,
            "usage missing"
        );
        let m = c
            .mounts(pb::MountsRequest {
                snapshotter: String::new(),
                key: "base".into(),
            })
            .await;
        assert_eq!(code(m), Code::FailedPrecondition, "mounts of committed");

        let upd = |name: &str, paths: &[&str]| pb::UpdateSnapshotRequest {
            snapshotter: String::new(),
            info: Some(pb::Info {
                name: name.into(),
                parent: "other".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
        };
        assert_eq!(
            code(c.update(upd("base", &["parent"])).await),
            Code::InvalidArgument,
            "immutable field"
        );
        assert_eq!(
            code(c.update(upd("missing", &["labels"])).await),
            Code::NotFound,
            "update missing"
        );
        let mut huge = upd("base", &["labels.k"]);
        huge.info.as_mut().unwrap().labels = labels(&[("k", &big)]);
        assert_eq!(
            code(c.update(huge).await),
            Code::InvalidArgument,
            "update with label > 4096"
        );
        assert!(
            stat(&mut c, "base").await.unwrap().labels.is_empty(),
            "failed update changed nothing"
        );

        assert_eq!(
            code(list(&mut c, &["name=="]).await),
            Code::InvalidArgument,
            "bad filter"
        );
        assert_eq!(
            code(list(&mut c, &["labels.\"unterminated"]).await),
            Code::InvalidArgument,
            "bad filter"
        );

        assert_consistent(&d).await;
        assert_eq!(
            list(&mut c, &[]).await.unwrap().len(),
            4,
            "{backend}: only the successful snapshots exist"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_prepares_of_one_key_have_one_winner() {
    let d = Daemon::start("overlayfs");
    let mut c = d.client().await;
    prepare(&mut c, "p-a", "", labels(&[])).await.unwrap();
    commit(&mut c, "p", "p-a").await.unwrap();
    for round in 0..5 {
        let key = format!("contended-{round}");
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let mut c = d.client().await;
            let key = key.clone();
            tasks.push(tokio::spawn(async move {
                prepare(&mut c, &key, "p", labels(&[])).await
            }));
        }
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => ok += 1,
                Err(s) => assert_eq!(s.code(), Code::AlreadyExists, "{s:?}"),
            }
        }
        assert_eq!(ok, 1, "exactly one Prepare of {key} wins");
    }
    assert_consistent(&d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn client_disconnecting_mid_list_does_not_hurt() {
    let d = Daemon::start("overlayfs");
    let mut c = d.client().await;
    for i in 0..1500 {
        view(&mut c, &format!("v{i:05}"), "").await.unwrap();
    }
    for _ in 0..20 {
        let mut other = d.client().await;
        let mut stream = other
            .list(pb::ListSnapshotsRequest {
                snapshotter: String::new(),
                filters: vec![],
            })
            .await
            .unwrap()
            .into_inner();
        let first = stream.message().await.unwrap().expect("a first batch");
        assert!(
            !first.info.is_empty() && first.info.len() <= 100,
            "batches of at most 100"
        );
        drop(stream);
        drop(other);
    }
    // The daemon still answers, writes still work, and a full List sees everything.
    assert_eq!(list(&mut c, &[]).await.unwrap().len(), 1500);
    prepare(&mut c, "after", "", labels(&[])).await.unwrap();
    assert_eq!(list(&mut c, &["kind==active"]).await.unwrap().len(), 1);
    assert_consistent(&d).await;
}
