//! lamina.v1.Layers through a real laminad: apply streamed blobs, refuse bad ones
//! without leaving anything behind, stream diffs back.

mod common;

use common::*;
use lamina_proto::lamina::v1 as lpb;
use lamina_proto::lamina::v1::layers_client::LayersClient;
use tonic::Code;

async fn apply(
    d: &Daemon,
    name: &str,
    parent: &str,
    blob: Vec<u8>,
    digest: &str,
) -> Result<lpb::LayerInfo, tonic::Status> {
    let mut c = LayersClient::new(lamina_proto::connect_unix(&d.socket).await.unwrap());
    let header = lpb::ApplyLayerHeader {
        name: name.into(),
        parent: parent.into(),
        labels: labels(&[("origin", "test")]),
        expected_digest: digest.into(),
        expected_diff_id: String::new(),
    };
    let mut msgs = vec![lpb::ApplyLayerChunk {
        header: Some(header),
        data: Vec::new(),
    }];
    for chunk in blob.chunks(1000) {
        msgs.push(lpb::ApplyLayerChunk {
            header: None,
            data: chunk.to_vec(),
        });
    }
    c.apply(tokio_stream::iter(msgs))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_refuse_and_diff() {
    for backend in ["overlayfs", "native"] {
        let d = Daemon::start(backend);
        let base = apply(
            &d,
            "base",
            "",
            tar_gz(&[("etc/os-release", b"ID=test\n"), ("bin/sh", b"ELF")]),
            "",
        )
        .await
        .unwrap();
        assert_eq!(base.entries, 2);
        let top = apply(
            &d,
            "top",
            "base",
            tar_gz(&[("etc/.wh.os-release", b""), ("etc/motd", b"hi")]),
            "",
        )
        .await
        .unwrap();
        assert_eq!(top.entries, 2);
        let mut c = d.client().await;
        assert_eq!(stat(&mut c, "top").await.unwrap().parent, "base");
        assert_eq!(
            stat(&mut c, "top")
                .await
                .unwrap()
                .labels
                .get("origin")
                .map(String::as_str),
            Some("test")
        );
        let m = view(&mut c, "look", "top").await.unwrap();
        with_mounted(&m, &d.dir.path().join("mnt"), |p| {
            assert!(
                !p.join("etc/os-release").exists(),
                "{backend}: whiteout applied"
            );
            assert_eq!(std::fs::read(p.join("etc/motd")).unwrap(), b"hi");
            assert_eq!(std::fs::read(p.join("bin/sh")).unwrap(), b"ELF");
        });

        // Bad blobs: each refused with InvalidArgument, nothing left behind.
        let good = tar_gz(&[("f", b"x")]);
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("garbage", b"\x1f\x8b\x08\x00garbage".to_vec(), ""),
            ("truncated", good[..good.len() / 2].to_vec(), ""),
            (
                "digest mismatch",
                good.clone(),
                "sha256:0000000000000000000000000000000000000000000000000000000000000000",
            ),
            ("bad digest syntax", good.clone(), "md5:abc"),
        ];
        for (label, blob, digest) in cases {
            let e = apply(&d, "bad", "base", blob, digest)
                .await
                .expect_err(label);
            assert_eq!(e.code(), Code::InvalidArgument, "{backend} {label}: {e:?}");
        }
        assert_eq!(
            apply(&d, "base", "", good.clone(), "")
                .await
                .unwrap_err()
                .code(),
            Code::AlreadyExists
        );
        assert_eq!(
            apply(&d, "orphan", "nope", good, "")
                .await
                .unwrap_err()
                .code(),
            Code::NotFound
        );
        let names: Vec<String> = list(&mut c, &[])
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(
            names,
            ["base", "look", "top"],
            "{backend}: failed applies leave no snapshot"
        );
        assert_eq!(d.snapshot_dirs().len(), 3, "{backend}: and no directory");

        // Diff of "top" streams a layer with the whiteout and the new file.
        let mut lc = LayersClient::new(lamina_proto::connect_unix(&d.socket).await.unwrap());
        let mut s = lc
            .diff(lpb::DiffRequest {
                key: "top".into(),
                compression: "none".into(),
            })
            .await
            .unwrap()
            .into_inner();
        let (mut blob, mut info) = (Vec::new(), None);
        while let Some(m) = s.message().await.unwrap() {
            blob.extend(m.data);
            info = info.or(m.info);
        }
        let info = info.expect("digests at the end");
        assert_eq!(
            info.digest,
            lamina_core::layer::Digest::of(&blob).to_string()
        );
        let mut names: Vec<String> = tar::Archive::new(&blob[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["etc/", "etc/.wh.os-release", "etc/motd"],
            "{backend}"
        );
    }
}

/// A layer whose entries climb out of the root, through `..`, absolute names and
/// symlinks: refused or confined, nothing outside the daemon's root changes, and the
/// daemon keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_layers_change_nothing_outside() {
    let d = Daemon::start("overlayfs");
    let outside = d.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"secret").unwrap();
    let out = outside.to_str().unwrap().to_string();
    let mut b = tar::Builder::new(Vec::new());
    let mut raw = |kind: tar::EntryType, name: &str, target: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..target.len()].copy_from_slice(target.as_bytes());
        h.set_cksum();
        b.append(&h, data).unwrap();
    };
    raw(tar::EntryType::Regular, "../../outside/evil", "", b"x");
    raw(tar::EntryType::Regular, &format!("{out}/evil2"), "", b"x");
    raw(tar::EntryType::Symlink, "esc", &out, b"");
    raw(tar::EntryType::Regular, "esc/evil3", "", b"x");
    raw(tar::EntryType::Symlink, "s", &format!("{out}/secret"), b"");
    raw(tar::EntryType::Regular, "s", "", b"pwned");
    let tar = b.into_inner().unwrap();
    let info = apply(&d, "confined", "", tar, "")
        .await
        .expect("confined entries apply inside the root");
    assert_eq!(info.entries, 6);
    let mut b2 = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Link);
    h.set_size(0);
    b2.append_link(&mut h, "hl", "esc/secret").unwrap();
    let e = apply(&d, "linked", "confined", b2.into_inner().unwrap(), "")
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::InvalidArgument,
        "hard link through a symlink to outside: {e:?}"
    );
    let names: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["secret"], "nothing created outside");
    assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"secret");
    let mut c = d.client().await;
    assert_eq!(
        list(&mut c, &[]).await.unwrap().len(),
        1,
        "only the confined layer is committed"
    );
    prepare(&mut c, "still-serving", "confined", labels(&[]))
        .await
        .unwrap();
}

/// A decompression bomb stops at the configured limit with a clear error.
#[tokio::test(flavor = "multi_thread")]
async fn decompression_bomb_hits_the_configured_limit() {
    let d = Daemon::start_with_config("overlayfs", "max_layer_bytes = 1048576\n");
    let zeros = vec![0u8; 16 << 20];
    let bomb = tar_gz(&[("zeros", &zeros)]);
    assert!(
        bomb.len() < 100_000,
        "compresses well: {} bytes",
        bomb.len()
    );
    let e = apply(&d, "bomb", "", bomb, "").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("limit of 1048576"), "{}", e.message());
    let mut c = d.client().await;
    assert!(
        list(&mut c, &[]).await.unwrap().is_empty(),
        "nothing committed"
    );
    assert!(d.snapshot_dirs().is_empty(), "nothing left on disk");
    apply(&d, "small", "", tar_gz(&[("f", b"fits")]), "")
        .await
        .expect("a small layer still applies");
}
