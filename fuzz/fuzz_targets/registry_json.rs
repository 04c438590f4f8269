//! JSON a registry serves: image indexes and manifest lists (which manifest this
//! platform pulls), image manifests, image configs, referrers responses and token
//! answers, parsed as `lamina_registry`, `lamina_core::image` and laminad parse them
//! (oci-spec's types): never panics; a document that parses serializes and parses back
//! to the same value.
//!
//! Input: one selector byte, then the document.

#![no_main]

use lamina_registry::fuzzing::{platform_manifest, token_from_response};
use libfuzzer_sys::fuzz_target;
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};

/// Parses `bytes` as `T` the way the pull path does; if that works, checks that it
/// serializes and reads back the same.
fn round_trip<T>(bytes: &[u8]) -> Option<T>
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    let value: T = serde_json::from_slice(bytes).ok()?;
    let written = serde_json::to_vec(&value).expect("a parsed document serializes");
    let again: T = serde_json::from_slice(&written).expect("a serialized document parses");
    assert_eq!(again, value, "{}", String::from_utf8_lossy(&written));
    Some(value)
}

fuzz_target!(|input: &[u8]| {
    let Some((&which, doc)) = input.split_first() else {
        return;
    };
    match which % 5 {
        0 => {
            // A manifest response by tag: index or manifest, told by type or content.
            for media_type in [
                "",
                "application/vnd.oci.image.index.v1+json",
                "application/vnd.docker.distribution.manifest.v2+json",
            ] {
                if let Ok(Some(child)) = platform_manifest(media_type, doc, "sha256:x") {
                    assert!(!child.is_empty());
                }
            }
            // Indexes are read with from_reader by lamina-core, with serde_json as
            // referrers responses: the same parse.
            let _ = ImageIndex::from_reader(doc);
            let _: Option<ImageIndex> = round_trip(doc);
        }
        1 => {
            let _ = ImageManifest::from_reader(doc);
            let _: Option<ImageManifest> = round_trip(doc);
        }
        2 => {
            if let Ok(config) = ImageConfiguration::from_reader(doc) {
                // What unpacking reads from a config.
                let _ = config.rootfs().diff_ids().len();
            }
            let _: Option<ImageConfiguration> = round_trip(doc);
        }
        3 => {
            if let Some(token) = token_from_response(doc) {
                let v: serde_json::Value = serde_json::from_slice(doc).unwrap();
                assert!(v.get("token").or_else(|| v.get("access_token")).is_some());
                let _ = token;
            }
        }
        _ => {
            // Lazy pulls look up index artifacts by artifact type among referrers.
            if let Some(index) = round_trip::<ImageIndex>(doc) {
                for d in index.manifests() {
                    let _ = d.artifact_type().as_ref().map(|a| a.to_string());
                    let _ = d.digest().to_string();
                }
            }
        }
    }
});
