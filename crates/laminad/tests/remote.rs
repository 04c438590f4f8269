//! containerd's remote-snapshotter protocol against a real laminad and a minimal
//! registry served by the test: a Prepare with `containerd.io/snapshot.ref` and CRI's
//! labels makes laminad fetch and commit the layer and answer AlreadyExists; containerd's
//! lookup filter then finds it.

mod common;

use std::collections::HashMap;

use common::*;
use lamina_core::layer::Digest;
use tonic::Code;

#[tokio::test(flavor = "multi_thread")]
async fn prepare_with_target_labels_is_done_by_lamina() {
    let (l1, d1, diff1) = layer(&[("etc/base", b"base")]);
    let (l2, d2, diff2) = layer(&[("etc/top", b"top"), ("etc/.wh.base", b"")]);
    let blobs = HashMap::from([(d1.to_string(), l1), (d2.to_string(), l2)]);
    let addr = serve_registry(HashMap::new(), blobs, std::time::Duration::ZERO).await;
    let chain1 = diff1.to_string();
    let chain2 = Digest::of(format!("{chain1} {diff2}").as_bytes()).to_string();
    let image = format!("{addr}/test/app:1");
    let d = Daemon::start("overlayfs");
    let mut c = d.client().await;
    let cri = |chain: &str, digest: &Digest| {
        labels(&[
            ("containerd.io/snapshot.ref", chain),
            ("containerd.io/snapshot/cri.image-ref", &image),
            ("containerd.io/snapshot/cri.layer-digest", digest.as_str()),
            (
                "containerd.io/snapshot/cri.image-layers",
                &format!("{d1},{d2}"),
            ),
        ])
    };

    // Layer 1, as containerd's unpacker asks for it.
    let e = prepare(&mut c, "ns/1/extract-1 sha256:x", "", cri(&chain1, &d1))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let filter = format!("labels.\"containerd.io/snapshot.ref\"=={chain1},parent==\"\"");
    let found = list(&mut c, &[&filter]).await.unwrap();
    assert_eq!(
        found.len(),
        1,
        "containerd's lookup finds the committed layer"
    );
    let base = found[0].name.clone();
    assert_eq!(
        found[0].kind,
        lamina_proto::snapshots::Kind::Committed as i32
    );

    // Layer 2 on it.
    let e = prepare(&mut c, "ns/1/extract-2 sha256:y", &base, cri(&chain2, &d2))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let filter = format!("labels.\"containerd.io/snapshot.ref\"=={chain2},parent=={base:?}");
    let top = list(&mut c, &[&filter]).await.unwrap();
    assert_eq!(top.len(), 1);
    let m = view(&mut c, "look", &top[0].name).await.unwrap();
    with_mounted(&m, &d.dir.path().join("mnt"), |p| {
        assert_eq!(std::fs::read(p.join("etc/top")).unwrap(), b"top");
        assert!(!p.join("etc/base").exists(), "whiteout of layer 2 applied");
    });

    // A chain ID the layer does not make is refused, and nothing is left behind.
    let before = d.snapshot_dirs().len();
    let e = prepare(&mut c, "ns/1/extract-3 sha256:z", &base, cri(&chain1, &d2))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_eq!(d.snapshot_dirs().len(), before);

    // Without a reachable registry, the Prepare is an ordinary one: containerd unpacks.
    let mut gone = cri(
        "sha256:0000000000000000000000000000000000000000000000000000000000000000",
        &d1,
    );
    gone.insert(
        "containerd.io/snapshot/cri.image-ref".into(),
        "127.0.0.1:1/none/x:1".into(),
    );
    gone.insert(
        "containerd.io/snapshot/cri.layer-digest".into(),
        Digest::of(b"absent").to_string(),
    );
    let mounts = prepare(&mut c, "ns/1/extract-4", "", gone)
        .await
        .expect("falls back to a normal Prepare");
    assert_eq!(mounts.len(), 1);
    // And a plain Prepare without the labels is untouched by all this.
    prepare(&mut c, "plain", &base, labels(&[])).await.unwrap();
}
