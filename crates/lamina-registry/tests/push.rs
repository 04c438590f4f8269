//! Pushing to a real registry (Debian's docker-registry, started here on 127.0.0.1):
//! blobs, an image manifest, artifacts that refer to it (docker-registry 2.8 has no
//! referrers API, so through the `sha256-<hex>` fallback index), and range reads.

mod common;

use bytes::Bytes;
use common::start_registry;
use lamina_registry::{fallback_tag, HostsConfig, Reference, RegistryClient, RegistryError};
use oci_spec::image::{Descriptor, DescriptorBuilder, ImageManifestBuilder, MediaType};

fn sha256(data: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

fn descriptor(media_type: MediaType, data: &[u8]) -> Descriptor {
    DescriptorBuilder::default()
        .media_type(media_type)
        .digest(sha256(data).parse::<oci_spec::image::Digest>().unwrap())
        .size(data.len() as u64)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn blobs_manifests_referrers_and_ranges() {
    let (reg, _storage) = start_registry();
    let reference = Reference::parse(&format!("{}/lamina/app:1", reg.addr)).unwrap();
    let client = RegistryClient::new(&reference, &HostsConfig::default(), false, None).unwrap();

    // Blobs: a wrong digest is refused before upload; a second push is a no-op.
    let layer: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let err = client
        .push_blob(&sha256(b"other"), Bytes::from(layer.clone()))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
    client
        .push_blob(&sha256(&layer), Bytes::from(layer.clone()))
        .await
        .unwrap();
    client
        .push_blob(&sha256(&layer), Bytes::from(layer.clone()))
        .await
        .unwrap();
    client
        .push_blob(&sha256(config), Bytes::from_static(config))
        .await
        .unwrap();

    // Range reads, including one past the end.
    let part = client
        .blob_range(&sha256(&layer), 4096, 1000)
        .await
        .unwrap();
    assert_eq!(&part[..], &layer[4096..5096]);
    let tail = client
        .blob_range(&sha256(&layer), 99_990, 100)
        .await
        .unwrap();
    assert_eq!(&tail[..], &layer[99_990..]);

    // The image, then two artifacts about it.
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(descriptor(MediaType::ImageConfig, config))
        .layers(vec![descriptor(MediaType::ImageLayerGzip, &layer)])
        .build()
        .unwrap();
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    let pushed = client
        .push_manifest(
            "1",
            "application/vnd.oci.image.manifest.v1+json",
            Bytes::from(manifest_bytes.clone()),
        )
        .await
        .unwrap();
    assert_eq!(pushed.digest, sha256(&manifest_bytes));
    let subject = descriptor(MediaType::ImageManifest, &manifest_bytes);
    let empty = b"{}";
    client
        .push_blob(&sha256(empty), Bytes::from_static(empty))
        .await
        .unwrap();
    let mut artifacts = Vec::new();
    for (kind, payload) in [
        ("application/vnd.lamina.index.v1", &b"index one"[..]),
        ("application/vnd.example.sbom", &b"sbom"[..]),
    ] {
        client
            .push_blob(&sha256(payload), Bytes::copy_from_slice(payload))
            .await
            .unwrap();
        let artifact = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .artifact_type(MediaType::Other(kind.into()))
            .config(descriptor(MediaType::EmptyJSON, empty))
            .layers(vec![descriptor(MediaType::Other(kind.into()), payload)])
            .subject(subject.clone())
            .build()
            .unwrap();
        let bytes = serde_json::to_vec(&artifact).unwrap();
        let mut d = descriptor(MediaType::ImageManifest, &bytes);
        d.set_artifact_type(Some(MediaType::Other(kind.into())));
        let pushed = client
            .push_referrer(&pushed.digest, d, Bytes::from(bytes))
            .await
            .unwrap();
        assert!(
            !pushed.subject_indexed,
            "docker-registry 2.8 has no referrers API: the fallback index must be used"
        );
        artifacts.push(pushed.digest);
    }
    let all = client.referrers(&pushed.digest, None).await.unwrap();
    let digests: Vec<String> = all.iter().map(|d| d.digest().to_string()).collect();
    assert_eq!(digests, artifacts);
    let ours = client
        .referrers(&pushed.digest, Some("application/vnd.lamina.index.v1"))
        .await
        .unwrap();
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0].digest().to_string(), artifacts[0]);
    // The fallback tag is an ordinary index in the repository.
    let index = client
        .manifest_bytes(
            &fallback_tag(&pushed.digest),
            "application/vnd.oci.image.index.v1+json",
        )
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&index).contains(&artifacts[1]));
    // Nothing refers to the config: an empty list, not an error.
    assert!(client
        .referrers(&sha256(config), None)
        .await
        .unwrap()
        .is_empty());
}
