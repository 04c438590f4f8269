//! Crash and restart: after `kill -9`, every snapshot, label and usage is back, mounts of
//! active snapshots still work, and leftovers of interrupted work are cleaned up.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn kill9_then_restart_keeps_everything() {
    for backend in ["overlayfs", "native"] {
        let mut d = Daemon::start(backend);
        let mut c = d.client().await;
        let mnt = d.dir.path().join("mnt");

        let m = prepare(&mut c, "l1-a", "", labels(&[("tier", "base")]))
            .await
            .unwrap();
        with_mounted(&m, &mnt, |p| {
            std::fs::write(p.join("base.txt"), b"base layer").unwrap()
        });
        c.commit(lamina_proto::snapshots::CommitSnapshotRequest {
            snapshotter: String::new(),
            name: "l1".into(),
            key: "l1-a".into(),
            labels: labels(&[("containerd.io/gc.root", "x")]),
        })
        .await
        .unwrap();
        let m = prepare(&mut c, "l2-a", "l1", labels(&[])).await.unwrap();
        with_mounted(&m, &mnt, |p| {
            std::fs::write(p.join("second.txt"), vec![9u8; 70_000]).unwrap()
        });
        commit(&mut c, "l2", "l2-a").await.unwrap();
        let active = prepare(&mut c, "work", "l2", labels(&[("owner", "test")]))
            .await
            .unwrap();
        with_mounted(&active, &mnt, |p| {
            std::fs::write(p.join("scratch"), b"uncommitted").unwrap()
        });
        view(&mut c, "look", "l2").await.unwrap();

        let before = list(&mut c, &[]).await.unwrap();
        let mut usages = Vec::new();
        for i in &before {
            usages.push(usage(&mut c, &i.name).await.unwrap());
        }
        drop(c);

        d.kill9();
        // Leftovers a crash can leave: a directory whose record never committed.
        std::fs::create_dir_all(d.root.join("snapshots/999999/fs")).unwrap();
        d.spawn();
        let mut c = d.client().await;

        let after = list(&mut c, &[]).await.unwrap();
        assert_eq!(
            before, after,
            "{backend}: infos, labels and timestamps survive"
        );
        for (i, u) in after.iter().zip(&usages) {
            assert_eq!(
                usage(&mut c, &i.name).await.unwrap(),
                *u,
                "{backend}: usage of {}",
                i.name
            );
        }
        assert!(
            !d.root.join("snapshots/999999").exists(),
            "{backend}: leftover removed at start-up"
        );

        let mounts = c
            .mounts(lamina_proto::snapshots::MountsRequest {
                snapshotter: String::new(),
                key: "work".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .mounts;
        assert_eq!(mounts, active, "{backend}: same mounts after restart");
        with_mounted(&mounts, &mnt, |p| {
            assert_eq!(std::fs::read(p.join("scratch")).unwrap(), b"uncommitted");
            assert_eq!(std::fs::read(p.join("base.txt")).unwrap(), b"base layer");
            assert_eq!(std::fs::read(p.join("second.txt")).unwrap().len(), 70_000);
            std::fs::write(p.join("after-restart"), b"ok").unwrap();
        });
        // Work goes on: commit the active snapshot and build on it.
        commit(&mut c, "l3", "work").await.unwrap();
        prepare(&mut c, "next", "l3", labels(&[])).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_daemon_per_root() {
    let d = Daemon::start("overlayfs");
    let out = d
        .command_for(&d.dir.path().join("second.sock"), "overlayfs")
        .output()
        .expect("run second laminad");
    assert!(
        !out.status.success(),
        "second daemon on the same root must not start"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("in use by another laminad"),
        "clear message, got: {err}"
    );
    // The first one is unaffected.
    let mut c = d.client().await;
    prepare(&mut c, "still-serving", "", labels(&[]))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_gracefully_and_removes_socket() {
    let mut d = Daemon::start("overlayfs");
    let mut c = d.client().await;
    prepare(&mut c, "a", "", labels(&[])).await.unwrap();
    drop(c);
    let status = d.terminate();
    assert!(status.success(), "exit status {status}; log:\n{}", d.log());
    assert!(!d.socket.exists(), "socket removed on shutdown");
    d.spawn();
    let mut c = d.client().await;
    stat(&mut c, "a")
        .await
        .expect("snapshot kept across graceful restart");
}

#[tokio::test(flavor = "multi_thread")]
async fn root_created_with_other_backend_is_refused() {
    let mut d = Daemon::start("overlayfs");
    d.kill9();
    let out = d
        .command_for(&d.socket, "native")
        .output()
        .expect("run laminad");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("overlayfs backend"),
        "clear message, got: {err}"
    );
}
