//! Writing to a repository: blobs (monolithic upload), manifests, and artifacts that
//! refer to an image (OCI referrers: the referrers API where the registry has it, the
//! `sha256-<hex>` tag-schema index otherwise, as the OCI distribution spec's fallback).
//! Also bounded range reads of blobs, for reading parts of a layer on demand.

use bytes::Bytes;
use oci_spec::image::{Descriptor, ImageIndex, ImageIndexBuilder, MediaType};

use crate::client::{Call, RegistryClient};
use crate::hosts::Endpoint;
use crate::{RegistryError, Result};

/// The media type of an OCI image index, which the referrers fallback tag holds.
const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// What a manifest upload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The manifest's digest.
    pub digest: String,
    /// The registry said it indexed the manifest's subject (`OCI-Subject` header): it has
    /// the referrers API, no fallback index needed.
    pub subject_indexed: bool,
}

fn sha256(data: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// `sha256:<hex>` → `sha256-<hex>`: the tag that holds a subject's referrers index on
/// registries without the referrers API.
pub fn fallback_tag(subject: &str) -> String {
    subject.replacen(':', "-", 1)
}

impl RegistryClient {
    /// The endpoint that takes pushes (the first with the `push` capability).
    fn push_endpoint(&self) -> Result<(usize, &Endpoint, &reqwest::Client)> {
        self.endpoints
            .iter()
            .enumerate()
            .find(|(_, (e, _))| e.push)
            .map(|(i, (e, c))| (i, e, c))
            .ok_or_else(|| RegistryError::Config {
                path: "hosts.toml".into(),
                reason: "no endpoint has the push capability".into(),
            })
    }

    fn url(&self, ep: &Endpoint, path: &str) -> String {
        format!("{}/{}/{}", ep.base, self.repository, path)
    }

    /// Uploads blob `data` under `digest` (checked here first), unless the repository
    /// has it already.
    pub async fn push_blob(&self, digest: &str, data: Bytes) -> Result<()> {
        let actual = sha256(&data);
        if actual != digest {
            return Err(RegistryError::DigestMismatch {
                url: "(upload)".into(),
                expected: digest.into(),
                actual,
            });
        }
        let (index, ep, client) = self.push_endpoint()?;
        let head = self.url(ep, &format!("blobs/{digest}"));
        let exists = Call {
            method: reqwest::Method::HEAD,
            url: &head,
            accept: "*/*",
            range: None,
            body: None,
        };
        match self.send_to(index, ep, client, exists).await {
            Ok(_) => return Ok(()),
            Err(RegistryError::Status { status: 404, .. }) => {}
            Err(e) => return Err(e),
        }
        let start = self.url(ep, "blobs/uploads/");
        let post = Call {
            method: reqwest::Method::POST,
            url: &start,
            accept: "*/*",
            range: None,
            body: None,
        };
        let resp = self.send_to(index, ep, client, post).await?;
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| RegistryError::Status {
                method: "POST",
                url: start.clone(),
                status: resp.status().as_u16(),
                body: "upload started without a Location header".into(),
            })?;
        let location = absolute(&start, location);
        let sep = if location.contains('?') { '&' } else { '?' };
        let put_url = format!("{location}{sep}digest={digest}");
        let put = Call {
            method: reqwest::Method::PUT,
            url: &put_url,
            accept: "*/*",
            range: None,
            body: Some((&data, "application/octet-stream")),
        };
        self.send_to(index, ep, client, put).await?;
        Ok(())
    }

    /// Uploads manifest `data` of `media_type` as `reference` (a tag or its digest).
    pub async fn push_manifest(
        &self,
        reference: &str,
        media_type: &str,
        data: Bytes,
    ) -> Result<Pushed> {
        let (index, ep, client) = self.push_endpoint()?;
        let url = self.url(ep, &format!("manifests/{reference}"));
        let put = Call {
            method: reqwest::Method::PUT,
            url: &url,
            accept: "*/*",
            range: None,
            body: Some((&data, media_type)),
        };
        let resp = self.send_to(index, ep, client, put).await?;
        Ok(Pushed {
            digest: sha256(&data),
            subject_indexed: resp.headers().contains_key("oci-subject"),
        })
    }

    /// Pushes artifact manifest `data` (whose `subject` is `subject`) and makes it findable
    /// among the subject's referrers: on a registry without the referrers API, by adding
    /// it to the fallback index tagged `sha256-<hex>` of the subject.
    pub async fn push_referrer(
        &self,
        subject: &str,
        descriptor: Descriptor,
        data: Bytes,
    ) -> Result<Pushed> {
        let media_type = descriptor.media_type().to_string();
        let pushed = self
            .push_manifest(descriptor.digest().as_ref(), &media_type, data)
            .await?;
        if pushed.subject_indexed {
            return Ok(pushed);
        }
        let tag = fallback_tag(subject);
        let mut manifests = match self.fallback_index(&tag).await? {
            Some(index) => index.manifests().clone(),
            None => Vec::new(),
        };
        if !manifests.iter().any(|d| d.digest() == descriptor.digest()) {
            manifests.push(descriptor);
        }
        let index = ImageIndexBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageIndex)
            .manifests(manifests)
            .build()
            .map_err(|e| RegistryError::Manifest {
                digest: tag.clone(),
                reason: e.to_string(),
            })?;
        let body = serde_json::to_vec(&index).map_err(|e| RegistryError::Manifest {
            digest: tag.clone(),
            reason: e.to_string(),
        })?;
        self.push_manifest(&tag, INDEX_TYPE, Bytes::from(body))
            .await?;
        Ok(pushed)
    }

    /// The fallback referrers index of a tag, if there is one.
    async fn fallback_index(&self, tag: &str) -> Result<Option<ImageIndex>> {
        match self.manifest_bytes(tag, INDEX_TYPE).await {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| RegistryError::Manifest {
                        digest: tag.into(),
                        reason: format!("referrers index: {e}"),
                    })
            }
            Err(RegistryError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// What refers to `subject` (of `artifact_type`, if given): from the referrers API, or
    /// from the fallback tag when the registry has no such API.
    pub async fn referrers(
        &self,
        subject: &str,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Descriptor>> {
        let listed = match self
            .manifest_like(&format!("referrers/{subject}"), INDEX_TYPE)
            .await
        {
            Ok(bytes) => Some(bytes),
            // No referrers API (404, or an older registry's 400/405).
            Err(RegistryError::Status {
                status: 400 | 404 | 405,
                ..
            }) => None,
            Err(e) => return Err(e),
        };
        let index: Option<ImageIndex> = match listed {
            Some(bytes) => {
                Some(
                    serde_json::from_slice(&bytes).map_err(|e| RegistryError::Manifest {
                        digest: subject.into(),
                        reason: format!("referrers response: {e}"),
                    })?,
                )
            }
            None => self.fallback_index(&fallback_tag(subject)).await?,
        };
        let mut out = index.map(|i| i.manifests().clone()).unwrap_or_default();
        if let Some(t) = artifact_type {
            out.retain(|d| d.artifact_type().as_ref().map(|a| a.to_string()).as_deref() == Some(t));
        }
        Ok(out)
    }

    /// A manifest's raw bytes by tag or digest (no platform resolution).
    pub async fn manifest_bytes(&self, reference: &str, accept: &str) -> Result<Vec<u8>> {
        self.manifest_like(&format!("manifests/{reference}"), accept)
            .await
    }

    async fn manifest_like(&self, path: &str, accept: &str) -> Result<Vec<u8>> {
        let mut last = None;
        for (index, (ep, client)) in self
            .endpoints
            .iter()
            .enumerate()
            .filter(|(_, (e, _))| e.pull)
        {
            let url = self.url(ep, path);
            let call = Call {
                method: reqwest::Method::GET,
                url: &url,
                accept,
                range: None,
                body: None,
            };
            match self.send_to(index, ep, client, call).await {
                Ok(resp) => return Self::read_limited(resp, &url, crate::client::MAX_JSON).await,
                Err(e @ RegistryError::Transport { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| RegistryError::Config {
            path: "hosts.toml".into(),
            reason: "no endpoint may serve this request (check capabilities)".into(),
        }))
    }

    /// Bytes `start..start + len` of blob `digest` (fewer at its end), by a range request;
    /// a registry that ignores ranges is refused rather than downloaded whole.
    pub async fn blob_range(&self, digest: &str, start: u64, len: u64) -> Result<Bytes> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let range = format!("bytes={start}-{}", start + len - 1);
        let mut last = None;
        for (index, (ep, client)) in self
            .endpoints
            .iter()
            .enumerate()
            .filter(|(_, (e, _))| e.pull)
        {
            let url = self.url(ep, &format!("blobs/{digest}"));
            let call = Call {
                method: reqwest::Method::GET,
                url: &url,
                accept: "*/*",
                range: Some(&range),
                body: None,
            };
            match self.send_to(index, ep, client, call).await {
                Ok(resp) if resp.status().as_u16() == 206 => {
                    let body = Self::read_limited(resp, &url, len).await?;
                    return Ok(Bytes::from(body));
                }
                Ok(resp) => {
                    return Err(RegistryError::Status {
                        method: "GET",
                        url,
                        status: resp.status().as_u16(),
                        body: format!("asked for {range}, got the whole blob: no range support"),
                    })
                }
                Err(
                    e @ (RegistryError::Transport { .. }
                    | RegistryError::Status {
                        status: 404 | 500..=599,
                        ..
                    }),
                ) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| RegistryError::Config {
            path: "hosts.toml".into(),
            reason: "no endpoint may serve this request (check capabilities)".into(),
        }))
    }
}

/// `location` (absolute, or relative to the upload URL's origin) as an absolute URL.
fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.to_owned();
    }
    let origin_end = base
        .find("://")
        .and_then(|i| base[i + 3..].find('/').map(|j| i + 3 + j))
        .unwrap_or(base.len());
    format!("{}{}", &base[..origin_end], location)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_locations_and_fallback_tags() {
        assert_eq!(
            absolute(
                "http://127.0.0.1:5000/v2/a/blobs/uploads/",
                "/v2/a/blobs/uploads/x?s=1"
            ),
            "http://127.0.0.1:5000/v2/a/blobs/uploads/x?s=1"
        );
        assert_eq!(absolute("http://h/v2/", "https://o/up"), "https://o/up");
        assert_eq!(fallback_tag("sha256:abc"), "sha256-abc");
    }
}
