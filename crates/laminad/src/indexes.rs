//! `lamina.v1.Indexes`: seekable indexes of an image's layers, built into the content
//! store and pushed beside the image as an OCI artifact that refers to it.

use std::sync::Arc;

use bytes::Bytes;
use lamina_core::{LayerIndexInfo, Snapshotter};
use lamina_proto::lamina::v1 as pb;
use lamina_proto::lamina::v1::indexes_server::Indexes;
use lamina_registry::{Credentials, Reference, RegistryClient};
use oci_spec::image::{DescriptorBuilder, ImageManifestBuilder, MediaType};
use tonic::{Request, Response, Status};

use crate::pull::registry_status;
use crate::status::to_status;

/// The artifact type of Lamina's layer indexes, and the media type of each index blob.
pub const INDEX_ARTIFACT: &str = "application/vnd.lamina.layer-index.v1";
/// Annotation on each index blob: the layer it indexes.
pub const LAYER_ANNOTATION: &str = "io.lamina.layer.digest";
/// Media type of the artifact's prefetch list (paths in the image, one per line, first
/// needed first).
pub const PREFETCH_LIST: &str = "application/vnd.lamina.prefetch-list.v1+text";
/// Largest prefetch list published or fetched, in bytes and in paths.
pub const MAX_PREFETCH_BYTES: u64 = 4 << 20;
/// See [`MAX_PREFETCH_BYTES`].
pub const MAX_PREFETCH_PATHS: usize = 200_000;
/// Default uncompressed bytes between checkpoints: a lazy read that starts cold
/// decompresses half a span on average before its first byte, so spans are kept short;
/// each checkpoint costs a compressed 32 KiB window in the index (about 3 % of a gzip
/// layer at 1 MiB).
const DEFAULT_SPAN: u64 = 1 << 20;

/// The index service over a store.
pub struct IndexService {
    store: Arc<Snapshotter>,
    hosts: lamina_registry::HostsConfig,
}

impl IndexService {
    /// Serves `store`, reaching registries as `hosts` says.
    pub fn new(store: Arc<Snapshotter>, hosts: lamina_registry::HostsConfig) -> Self {
        IndexService { store, hosts }
    }

    async fn build(&self, image: String, span: i64) -> Result<Vec<LayerIndexInfo>, Status> {
        let span = if span > 0 { span as u64 } else { DEFAULT_SPAN };
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.build_layer_indexes(&image, span))
            .await
            .map_err(|e| Status::internal(format!("index task failed: {e}")))?
            .map_err(to_status)
    }
}

fn info(l: &LayerIndexInfo) -> pb::LayerIndexInfo {
    pb::LayerIndexInfo {
        layer: l.layer.clone(),
        index: l.index.clone(),
        size: l.size as i64,
        entries: l.entries as i64,
        checkpoints: l.checkpoints as i64,
        needs_reencoding: l.needs_reencoding,
    }
}

fn sha256(data: &[u8]) -> String {
    lamina_core::layer::Digest::of(data).to_string()
}

fn descriptor(
    media_type: MediaType,
    digest: &str,
    size: u64,
) -> Result<oci_spec::image::Descriptor, Status> {
    let digest = digest
        .parse::<oci_spec::image::Digest>()
        .map_err(|e| Status::invalid_argument(format!("digest {digest}: {e}")))?;
    DescriptorBuilder::default()
        .media_type(media_type)
        .digest(digest)
        .size(size)
        .build()
        .map_err(|e| Status::internal(e.to_string()))
}

/// The blob of prefetch list `paths` (none if empty): one path per line. Also the check
/// of a pull's own list: the same bounds either way.
pub(crate) fn prefetch_list(paths: &[String]) -> Result<Option<Vec<u8>>, Status> {
    if paths.is_empty() {
        return Ok(None);
    }
    if paths.len() > MAX_PREFETCH_PATHS {
        return Err(Status::invalid_argument(format!(
            "the prefetch list has {} paths; at most {MAX_PREFETCH_PATHS}",
            paths.len()
        )));
    }
    let mut blob = Vec::new();
    for p in paths {
        if p.is_empty() || p.contains(['\n', '\r', '\0']) {
            return Err(Status::invalid_argument(format!(
                "prefetch path {p:?}: empty, or holds a line break or NUL"
            )));
        }
        blob.extend_from_slice(p.as_bytes());
        blob.push(b'\n');
    }
    if blob.len() as u64 > MAX_PREFETCH_BYTES {
        return Err(Status::invalid_argument(format!(
            "the prefetch list is {} bytes; at most {MAX_PREFETCH_BYTES}",
            blob.len()
        )));
    }
    Ok(Some(blob))
}

#[tonic::async_trait]
impl Indexes for IndexService {
    async fn build(
        &self,
        req: Request<pb::BuildIndexesRequest>,
    ) -> Result<Response<pb::BuildIndexesResponse>, Status> {
        let r = req.into_inner();
        let layers = IndexService::build(self, r.image, r.span).await?;
        Ok(Response::new(pb::BuildIndexesResponse {
            layers: layers.iter().map(info).collect(),
        }))
    }

    async fn push(
        &self,
        req: Request<pb::PushIndexesRequest>,
    ) -> Result<Response<pb::PushIndexesResponse>, Status> {
        let r = req.into_inner();
        let prefetch = prefetch_list(&r.prefetch)?;
        let layers = IndexService::build(self, r.image.clone(), r.span).await?;
        let image = self.store.image(&r.image).map_err(to_status)?;
        let reference = Reference::parse(&image.name).map_err(registry_status)?;
        let credentials = (!r.username.is_empty()).then_some(Credentials {
            username: r.username,
            password: r.password,
        });
        let client = RegistryClient::new(&reference, &self.hosts, r.plain_http, credentials)
            .map_err(registry_status)?;
        // Off the runtime's threads: an index of a large layer is megabytes.
        let read = |digest: &str| {
            let d = lamina_core::layer::Digest::parse(digest)
                .ok_or_else(|| Status::internal(format!("bad digest {digest}")));
            let path = d.map(|d| self.store.content().path(&d));
            async move {
                let path = path?;
                tokio::fs::read(&path)
                    .await
                    .map_err(|e| Status::internal(format!("reading {}: {e}", path.display())))
            }
        };
        // The subject: the image manifest as the registry has it.
        let manifest = read(&image.manifest).await?;
        let manifest_type = serde_json::from_slice::<serde_json::Value>(&manifest)
            .ok()
            .and_then(|v| {
                v.get("mediaType")
                    .and_then(|m| m.as_str())
                    .map(String::from)
            })
            .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".into());
        let subject = descriptor(
            MediaType::from(manifest_type.as_str()),
            &image.manifest,
            manifest.len() as u64,
        )?;
        let mut blobs = Vec::new();
        for l in &layers {
            let bytes = read(&l.index).await?;
            let mut d = descriptor(
                MediaType::Other(INDEX_ARTIFACT.into()),
                &l.index,
                bytes.len() as u64,
            )?;
            d.set_annotations(Some(
                [(LAYER_ANNOTATION.to_string(), l.layer.clone())].into(),
            ));
            client
                .push_blob(&l.index, Bytes::from(bytes))
                .await
                .map_err(registry_status)?;
            blobs.push(d);
        }
        if let Some(list) = prefetch {
            let digest = sha256(&list);
            blobs.push(descriptor(
                MediaType::Other(PREFETCH_LIST.into()),
                &digest,
                list.len() as u64,
            )?);
            client
                .push_blob(&digest, Bytes::from(list))
                .await
                .map_err(registry_status)?;
        }
        let empty = b"{}";
        client
            .push_blob(&sha256(empty), Bytes::from_static(empty))
            .await
            .map_err(registry_status)?;
        let artifact = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .artifact_type(MediaType::Other(INDEX_ARTIFACT.into()))
            .config(descriptor(
                MediaType::EmptyJSON,
                &sha256(empty),
                empty.len() as u64,
            )?)
            .layers(blobs)
            .subject(subject)
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        let bytes = serde_json::to_vec(&artifact).map_err(|e| Status::internal(e.to_string()))?;
        let mut d = descriptor(
            MediaType::ImageManifest,
            &sha256(&bytes),
            bytes.len() as u64,
        )?;
        d.set_artifact_type(Some(MediaType::Other(INDEX_ARTIFACT.into())));
        let pushed = client
            .push_referrer(&image.manifest, d, Bytes::from(bytes))
            .await
            .map_err(registry_status)?;
        Ok(Response::new(pb::PushIndexesResponse {
            artifact: pushed.digest,
            subject: image.manifest,
            referrers_api: pushed.subject_indexed,
            layers: layers.iter().map(info).collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetch_list_blobs_are_lines_and_bounded() {
        assert_eq!(prefetch_list(&[]).unwrap(), None);
        let paths = ["/usr/bin/app".to_owned(), "etc/x".to_owned()];
        assert_eq!(
            prefetch_list(&paths).unwrap().as_deref(),
            Some(&b"/usr/bin/app\netc/x\n"[..])
        );
        for bad in ["", "a\nb", "a\rb", "a\0b"] {
            let e = prefetch_list(&[bad.to_owned()]).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
        let many = vec!["/f".to_owned(); MAX_PREFETCH_PATHS + 1];
        assert_eq!(
            prefetch_list(&many).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let big = vec!["x".repeat(4096); 1100];
        assert_eq!(
            prefetch_list(&big).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
