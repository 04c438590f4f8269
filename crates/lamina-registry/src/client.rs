//! Talking to one repository of a registry: manifests (with platform choice) and blobs,
//! endpoint by endpoint (mirrors first), answering auth challenges on the way.

use std::time::Duration;

use base64::Engine;
use oci_spec::image::ImageIndex;
use sha2::{Digest as _, Sha256};
use tokio::sync::Mutex;

use crate::auth::parse_challenge;
use crate::hosts::{Endpoint, HostsConfig};
use crate::reference::Reference;
use crate::{RegistryError, Result};

/// What manifests we can read, in the Accept header.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";
/// Largest manifest, index or config accepted.
pub const MAX_JSON: u64 = 4 << 20;

/// Username and password (or token) for a registry.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

/// A resolved image manifest (indexes already followed to this platform's manifest).
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Digest of the manifest.
    pub digest: String,
    /// Its raw bytes.
    pub bytes: Vec<u8>,
}

/// A blob download in progress.
pub struct Blob {
    response: reqwest::Response,
    url: String,
    /// Offset the body starts at (non-zero when a partial download resumed).
    pub offset: u64,
}

impl Blob {
    /// The next chunk of the body, or `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<bytes::Bytes>> {
        self.response
            .chunk()
            .await
            .map_err(|source| RegistryError::Transport {
                url: self.url.clone(),
                source,
            })
    }
}

/// One repository on one registry (all its endpoints).
pub struct RegistryClient {
    http: reqwest::Client,
    insecure: reqwest::Client,
    endpoints: Vec<Endpoint>,
    repository: String,
    credentials: Option<Credentials>,
    /// The Authorization header that last worked.
    auth: Mutex<Option<String>>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

impl RegistryClient {
    /// A client for `reference`'s repository.
    pub fn new(
        reference: &Reference,
        hosts: &HostsConfig,
        plain_http: bool,
        credentials: Option<Credentials>,
    ) -> Result<Self> {
        let build = |insecure: bool| {
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .read_timeout(Duration::from_secs(60))
                .danger_accept_invalid_certs(insecure)
                .user_agent(concat!("lamina/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|source| RegistryError::Transport {
                    url: reference.host.clone(),
                    source,
                })
        };
        Ok(RegistryClient {
            http: build(false)?,
            insecure: build(true)?,
            endpoints: hosts.endpoints(&reference.host, plain_http)?,
            repository: reference.repository.clone(),
            credentials,
            auth: Mutex::new(None),
        })
    }

    /// GETs `path` (below `/v2/<repo>/`) from the first endpoint that has it.
    async fn get(
        &self,
        path: &str,
        accept: &str,
        range_from: u64,
        by_tag: bool,
    ) -> Result<(reqwest::Response, String)> {
        let mut last_err = None;
        for ep in self
            .endpoints
            .iter()
            .filter(|e| if by_tag { e.resolve } else { e.pull })
        {
            let url = format!("{}/{}/{}", ep.base, self.repository, path);
            match self.get_from(ep, &url, accept, range_from).await {
                Ok(r) => return Ok((r, url)),
                // A mirror without the content: try the next endpoint.
                Err(
                    e @ (RegistryError::Transport { .. }
                    | RegistryError::Status {
                        status: 404 | 500..=599,
                        ..
                    }),
                ) => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| RegistryError::Config {
            path: "hosts.toml".into(),
            reason: "no endpoint may serve this request (check capabilities)".into(),
        }))
    }

    async fn get_from(
        &self,
        ep: &Endpoint,
        url: &str,
        accept: &str,
        range_from: u64,
    ) -> Result<reqwest::Response> {
        let client = if ep.skip_verify {
            &self.insecure
        } else {
            &self.http
        };
        for attempt in 0..2 {
            let mut req = client.get(url).header("Accept", accept);
            for (k, v) in &ep.headers {
                req = req.header(k.as_str(), v.as_str());
            }
            if range_from > 0 {
                req = req.header("Range", format!("bytes={range_from}-"));
            }
            if let Some(a) = self.auth.lock().await.clone() {
                req = req.header("Authorization", a);
            }
            let resp = req
                .send()
                .await
                .map_err(|source| RegistryError::Transport {
                    url: url.to_owned(),
                    source,
                })?;
            let status = resp.status().as_u16();
            if status == 401 && attempt == 0 {
                let challenge = resp
                    .headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let header = self.authenticate(client, url, &challenge).await?;
                *self.auth.lock().await = Some(header);
                continue;
            }
            if !(200..300).contains(&status) {
                let body = resp.text().await.unwrap_or_default();
                let body: String = body.trim().chars().take(300).collect();
                return Err(RegistryError::Status {
                    method: "GET",
                    url: url.to_owned(),
                    status,
                    body,
                });
            }
            return Ok(resp);
        }
        Err(RegistryError::Auth {
            url: url.to_owned(),
            reason: "credentials were refused".into(),
        })
    }

    /// Turns a challenge into an Authorization header value.
    async fn authenticate(
        &self,
        client: &reqwest::Client,
        url: &str,
        challenge: &str,
    ) -> Result<String> {
        let auth_err = |reason: String| RegistryError::Auth {
            url: url.to_owned(),
            reason,
        };
        let c = parse_challenge(challenge)
            .ok_or_else(|| auth_err("no WWW-Authenticate challenge".into()))?;
        match c.scheme.as_str() {
            "basic" => {
                let cr = self.credentials.as_ref().ok_or_else(|| {
                    auth_err("registry wants basic auth: give credentials".into())
                })?;
                let raw = format!("{}:{}", cr.username, cr.password);
                Ok(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(raw)
                ))
            }
            "bearer" => {
                let realm = c
                    .params
                    .get("realm")
                    .ok_or_else(|| auth_err("bearer challenge without realm".into()))?;
                let scope = c
                    .params
                    .get("scope")
                    .cloned()
                    .unwrap_or_else(|| format!("repository:{}:pull", self.repository));
                let mut req = client.get(realm).query(&[("scope", scope.as_str())]);
                if let Some(service) = c.params.get("service") {
                    req = req.query(&[("service", service.as_str())]);
                }
                if let Some(cr) = &self.credentials {
                    req = req.basic_auth(&cr.username, Some(&cr.password));
                }
                let resp = req
                    .send()
                    .await
                    .map_err(|source| RegistryError::Transport {
                        url: realm.clone(),
                        source,
                    })?;
                if !resp.status().is_success() {
                    return Err(auth_err(format!(
                        "token endpoint {realm} answered HTTP {}",
                        resp.status().as_u16()
                    )));
                }
                let body: serde_json::Value =
                    resp.json()
                        .await
                        .map_err(|source| RegistryError::Transport {
                            url: realm.clone(),
                            source,
                        })?;
                let token = body
                    .get("token")
                    .or_else(|| body.get("access_token"))
                    .and_then(|t| t.as_str())
                    .ok_or_else(|| auth_err("token endpoint returned no token".into()))?;
                Ok(format!("Bearer {token}"))
            }
            other => Err(auth_err(format!("unsupported auth scheme {other:?}"))),
        }
    }

    /// Reads a whole (small) response, refusing more than `limit` bytes.
    async fn read_limited(mut resp: reqwest::Response, url: &str, limit: u64) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|source| RegistryError::Transport {
                url: url.to_owned(),
                source,
            })?
        {
            out.extend_from_slice(&chunk);
            if out.len() as u64 > limit {
                return Err(RegistryError::TooLarge {
                    url: url.to_owned(),
                    limit,
                });
            }
        }
        Ok(out)
    }

    /// Resolves `reference` to this platform's image manifest (following an index).
    pub async fn resolve(&self, reference: &Reference) -> Result<Resolved> {
        let by_tag = reference.digest.is_none();
        let (resp, url) = self
            .get(
                &format!("manifests/{}", reference.object()),
                MANIFEST_TYPES,
                0,
                by_tag,
            )
            .await?;
        let media_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let bytes = Self::read_limited(resp, &url, MAX_JSON).await?;
        let digest = sha256_hex(&bytes);
        if let Some(want) = &reference.digest {
            if *want != digest {
                return Err(RegistryError::DigestMismatch {
                    url,
                    expected: want.clone(),
                    actual: digest,
                });
            }
        }
        let is_index = media_type.contains("index") || media_type.contains("manifest.list") || {
            // Some registries omit the content type: look at the document itself.
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .is_some_and(|v| v.get("manifests").is_some())
        };
        if !is_index {
            return Ok(Resolved { digest, bytes });
        }
        let index = ImageIndex::from_reader(&bytes[..]).map_err(|e| RegistryError::Manifest {
            digest: digest.clone(),
            reason: e.to_string(),
        })?;
        let all = index.manifests();
        let chosen = all
            .iter()
            .find(|m| {
                m.platform().as_ref().is_some_and(|p| {
                    p.os().to_string() == "linux" && p.architecture().to_string() == host_arch()
                })
            })
            .or_else(|| (all.len() == 1).then(|| &all[0]))
            .ok_or_else(|| RegistryError::Manifest {
                digest: digest.clone(),
                reason: format!("no manifest for linux/{}", host_arch()),
            })?;
        let child = chosen.digest().to_string();
        let (resp, url) = self
            .get(&format!("manifests/{child}"), MANIFEST_TYPES, 0, false)
            .await?;
        let bytes = Self::read_limited(resp, &url, MAX_JSON).await?;
        let actual = sha256_hex(&bytes);
        if actual != child {
            return Err(RegistryError::DigestMismatch {
                url,
                expected: child,
                actual,
            });
        }
        Ok(Resolved {
            digest: child,
            bytes,
        })
    }

    /// Downloads a small blob (a config) whole, verifying its digest.
    pub async fn blob_bytes(&self, digest: &str) -> Result<Vec<u8>> {
        let (resp, url) = self
            .get(&format!("blobs/{digest}"), "*/*", 0, false)
            .await?;
        let bytes = Self::read_limited(resp, &url, MAX_JSON).await?;
        let actual = sha256_hex(&bytes);
        if actual != digest {
            return Err(RegistryError::DigestMismatch {
                url,
                expected: digest.to_owned(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Starts downloading blob `digest` from byte `offset` (resuming a partial download
    /// when the registry honours ranges; otherwise from 0, as `Blob::offset` tells).
    pub async fn blob(&self, digest: &str, offset: u64) -> Result<Blob> {
        let (response, url) = self
            .get(&format!("blobs/{digest}"), "*/*", offset, false)
            .await?;
        let offset = if response.status().as_u16() == 206 {
            offset
        } else {
            0
        };
        Ok(Blob {
            response,
            url,
            offset,
        })
    }
}
