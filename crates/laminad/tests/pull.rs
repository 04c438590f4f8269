//! Images.Pull against a real laminad and a minimal registry served by the test that
//! answers slowly: every backend unpacks the same tree, whenever the layer downloads
//! start relative to the unpack.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use lamina_core::layer::Digest;
use lamina_proto::lamina::v1 as lpb;
use lamina_proto::lamina::v1::images_client::ImagesClient;

/// An image of three layers (the second deletes a file of the first) as a registry
/// holds it: tag "1" to manifest, and every blob by digest.
fn image() -> (HashMap<String, Vec<u8>>, HashMap<String, Vec<u8>>) {
    let layers = [
        layer(&[("etc/base", b"base"), ("etc/gone", b"gone")]),
        layer(&[("etc/.wh.gone", b""), ("usr/bin/tool", &[7u8; 70_000])]),
        layer(&[("etc/top", b"top")]),
    ];
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.2.to_string()).collect::<Vec<_>>(),
        },
    })
    .to_string()
    .into_bytes();
    let config_digest = Digest::of(&config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest.to_string(),
            "size": config.len(),
        },
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": l.1.to_string(),
            "size": l.0.len(),
        })).collect::<Vec<_>>(),
    })
    .to_string()
    .into_bytes();
    let mut blobs: HashMap<String, Vec<u8>> = layers
        .into_iter()
        .map(|(blob, d, _)| (d.to_string(), blob))
        .collect();
    blobs.insert(config_digest.to_string(), config);
    blobs.insert(Digest::of(&manifest).to_string(), manifest.clone());
    (HashMap::from([("1".to_owned(), manifest)]), blobs)
}

/// Found by the crash harness: the native backend unpacks from the stored blobs and
/// waited for the downloads that had registered so far, so with a registry slower to
/// answer than the unpack was to start, it opened blobs that did not exist yet.
#[tokio::test(flavor = "multi_thread")]
async fn every_backend_pulls_from_a_slow_registry() {
    let (manifests, blobs) = image();
    let addr = serve_registry(manifests, blobs, Duration::from_millis(300)).await;
    for backend in ["native", "overlayfs", "block"] {
        let d = Daemon::start(backend);
        let channel = lamina_proto::connect_unix(d.socket.clone()).await.unwrap();
        let mut images = ImagesClient::new(channel);
        let mut stream = images
            .pull(lpb::PullRequest {
                reference: format!("{addr}/test/app:1"),
                plain_http: true,
                lazy: Some(false),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{backend}: pull: {e:?}"))
            .into_inner();
        let mut image = None;
        loop {
            match stream.message().await {
                Ok(Some(m)) => image = m.image.or(image),
                Ok(None) => break,
                Err(e) => panic!("{backend}: pull: {e:?}"),
            }
        }
        let image = image.unwrap_or_else(|| panic!("{backend}: no image in the pull's answer"));
        assert_eq!(image.chain_ids.len(), 3, "{backend}");
        let mut c = d.client().await;
        let top = image.chain_ids.last().unwrap();
        let m = view(&mut c, "look", top).await.unwrap();
        with_mounted(&m, &d.dir.path().join("mnt"), |p| {
            assert_eq!(
                std::fs::read(p.join("etc/base")).unwrap(),
                b"base",
                "{backend}"
            );
            assert_eq!(
                std::fs::read(p.join("etc/top")).unwrap(),
                b"top",
                "{backend}"
            );
            assert_eq!(
                std::fs::read(p.join("usr/bin/tool")).unwrap(),
                vec![7u8; 70_000],
                "{backend}"
            );
            assert!(!p.join("etc/gone").exists(), "{backend}: whiteout applied");
        });
        remove(&mut c, "look").await.unwrap();
    }
}
