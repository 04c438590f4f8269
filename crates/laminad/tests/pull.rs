//! Images.Pull against a real laminad and a minimal registry served by the test that
//! answers slowly: every backend unpacks the same tree, whenever the layer downloads
//! start relative to the unpack.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use lamina_core::layer::Digest;
use lamina_proto::lamina::v1 as lpb;
use lamina_proto::lamina::v1::images_client::ImagesClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serves manifests (by tag) and blobs (by digest) of one repository on 127.0.0.1,
/// waiting `blob_delay` before answering each blob request.
async fn slow_registry(
    manifests: HashMap<String, Vec<u8>>,
    blobs: HashMap<String, Vec<u8>>,
    blob_delay: Duration,
) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (manifests, blobs) = (Arc::new(manifests), Arc::new(blobs));
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (manifests, blobs) = (manifests.clone(), blobs.clone());
            tokio::spawn(async move {
                loop {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&req).to_string();
                    let mut words = text.lines().next().unwrap_or("").split(' ');
                    let method = words.next().unwrap_or("").to_owned();
                    let path = words.next().unwrap_or("").to_owned();
                    let last = path.rsplit('/').next().unwrap_or("").to_owned();
                    let (status, kind, body) = if path.contains("/manifests/") {
                        match manifests.get(&last) {
                            Some(b) => ("200 OK", "application/vnd.oci.image.manifest.v1+json", b),
                            None => ("404 Not Found", "application/json", &Vec::new()),
                        }
                    } else if path.contains("/blobs/") {
                        tokio::time::sleep(blob_delay).await;
                        match blobs.get(&last) {
                            Some(b) => ("200 OK", "application/octet-stream", b),
                            None => ("404 Not Found", "application/json", &Vec::new()),
                        }
                    } else {
                        ("200 OK", "application/json", &Vec::new())
                    };
                    let digest = format!("sha256:{}", &Digest::of(body).as_str()[7..]);
                    let head = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nDocker-Content-Digest: {digest}\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    if sock.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    if method != "HEAD" && sock.write_all(body).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

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
    let addr = slow_registry(manifests, blobs, Duration::from_millis(300)).await;
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
