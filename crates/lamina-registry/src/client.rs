//! Talking to one repository of a registry: manifests (with platform choice) and blobs,
//! endpoint by endpoint (mirrors first), answering auth challenges on the way.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use oci_spec::image::ImageIndex;
use sha2::{Digest as _, Sha256};
use tokio::sync::Mutex;

use crate::auth::parse_challenge;
use crate::hosts::{ClientCert, Endpoint, HostsConfig};
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

/// One HTTP request to a registry endpoint.
pub(crate) struct Call<'a> {
    pub method: reqwest::Method,
    pub url: &'a str,
    pub accept: &'a str,
    /// A `Range` header value.
    pub range: Option<&'a str>,
    /// Body and its content type.
    pub body: Option<(&'a bytes::Bytes, &'a str)>,
}

impl Call<'_> {
    /// The method, for messages.
    fn method_name(&self) -> &'static str {
        match self.method.as_str() {
            "GET" => "GET",
            "HEAD" => "HEAD",
            "PUT" => "PUT",
            "POST" => "POST",
            "PATCH" => "PATCH",
            _ => "request",
        }
    }
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
            .map_err(|source| RegistryError::transport(self.url.clone(), source))
    }
}

/// One repository on one registry (all its endpoints).
pub struct RegistryClient {
    /// The endpoints, mirrors first, each with the HTTP client of its TLS settings.
    pub(crate) endpoints: Vec<(Endpoint, reqwest::Client)>,
    pub(crate) repository: String,
    credentials: Option<Credentials>,
    /// The Authorization header that last worked, per endpoint (by index), so one host's
    /// token never travels to another.
    auth: Mutex<HashMap<usize, String>>,
}

/// Reads a PEM file named by a hosts.toml.
fn read_pem(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| RegistryError::Config {
        path: path.display().to_string(),
        reason: format!("reading certificate file: {e}"),
    })
}

/// The TLS settings of an endpoint that need their own HTTP client.
#[derive(PartialEq, Eq, Hash)]
struct TlsSettings<'a> {
    skip_verify: bool,
    ca: &'a [std::path::PathBuf],
    client: Option<&'a ClientCert>,
}

/// An HTTP client for `tls`: system roots plus the `ca` files, the client certificate,
/// or no verification at all (`skip_verify`). Unusable files are `Config` errors.
fn http_client(tls: &TlsSettings<'_>, host: &str) -> Result<reqwest::Client> {
    let mut roots = Vec::new();
    for path in tls.ca {
        let pem = read_pem(path)?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| RegistryError::Config {
                path: path.display().to_string(),
                reason: format!("not a PEM certificate bundle: {e}"),
            })?;
        if certs.is_empty() {
            return Err(RegistryError::Config {
                path: path.display().to_string(),
                reason: "no certificate in the file".into(),
            });
        }
        roots.extend(certs);
    }
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        .user_agent(concat!("lamina/", env!("CARGO_PKG_VERSION")))
        .tls_danger_accept_invalid_certs(tls.skip_verify)
        .tls_certs_merge(roots);
    if let Some(c) = tls.client {
        let mut pem = read_pem(&c.cert)?;
        if let Some(key) = &c.key {
            pem.push(b'\n');
            pem.extend(read_pem(key)?);
        }
        let identity = reqwest::Identity::from_pem(&pem).map_err(|e| RegistryError::Config {
            path: c.cert.display().to_string(),
            reason: format!("client certificate and key: {e}"),
        })?;
        builder = builder.identity(identity);
    }
    builder.build().map_err(|e| {
        // Certificates that parse but are unusable (e.g. X.509 v1) fail here.
        let files: Vec<String> = tls
            .ca
            .iter()
            .chain(tls.client.map(|c| &c.cert))
            .map(|p| p.display().to_string())
            .collect();
        RegistryError::Config {
            path: if files.is_empty() {
                host.to_owned()
            } else {
                files.join(", ")
            },
            reason: format!("TLS settings: {}", crate::error_chain(&e)),
        }
    })
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

/// The token in a token endpoint's JSON answer (`token`, or OAuth2's `access_token`).
pub fn token_from_response(body: &[u8]) -> Option<String> {
    let body: serde_json::Value = serde_json::from_slice(body).ok()?;
    body.get("token")
        .or_else(|| body.get("access_token"))
        .and_then(|t| t.as_str())
        .map(str::to_owned)
}

/// For a manifest response (`bytes`, served as `media_type`, whose digest is `digest`):
/// `None` when it is an image manifest, the digest of this platform's manifest when it
/// is an index or manifest list (the only entry when none names the platform).
pub fn platform_manifest(media_type: &str, bytes: &[u8], digest: &str) -> Result<Option<String>> {
    let is_index = media_type.contains("index") || media_type.contains("manifest.list") || {
        // Some registries omit the content type: look at the document itself.
        serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()
            .is_some_and(|v| v.get("manifests").is_some())
    };
    if !is_index {
        return Ok(None);
    }
    let index = ImageIndex::from_reader(bytes).map_err(|e| RegistryError::Manifest {
        digest: digest.to_owned(),
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
            digest: digest.to_owned(),
            reason: format!("no manifest for linux/{}", host_arch()),
        })?;
    Ok(Some(chosen.digest().to_string()))
}

impl RegistryClient {
    /// A client for `reference`'s repository.
    pub fn new(
        reference: &Reference,
        hosts: &HostsConfig,
        plain_http: bool,
        credentials: Option<Credentials>,
    ) -> Result<Self> {
        let endpoints = hosts.endpoints(&reference.host, plain_http)?;
        // Endpoints with the same TLS settings share one client (and its connections).
        let mut clients: HashMap<TlsSettings<'_>, reqwest::Client> = HashMap::new();
        let mut with_clients = Vec::with_capacity(endpoints.len());
        for ep in &endpoints {
            if ep.client.len() > 1 {
                tracing::warn!(
                    endpoint = %ep.base,
                    "several client certificates configured; presenting only the first"
                );
            }
            let tls = TlsSettings {
                skip_verify: ep.skip_verify,
                ca: &ep.ca,
                client: ep.client.first(),
            };
            let client = match clients.get(&tls) {
                Some(c) => c.clone(),
                None => {
                    let c = http_client(&tls, &reference.host)?;
                    clients.insert(tls, c.clone());
                    c
                }
            };
            with_clients.push((ep.clone(), client));
        }
        Ok(RegistryClient {
            endpoints: with_clients,
            repository: reference.repository.clone(),
            credentials,
            auth: Mutex::new(HashMap::new()),
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
        for (index, (ep, client)) in
            self.endpoints
                .iter()
                .enumerate()
                .filter(|(_, (e, _))| if by_tag { e.resolve } else { e.pull })
        {
            let url = format!("{}/{}/{}", ep.base, self.repository, path);
            let range = (range_from > 0).then(|| format!("bytes={range_from}-"));
            let call = Call {
                method: reqwest::Method::GET,
                url: &url,
                accept,
                range: range.as_deref(),
                body: None,
            };
            match self.send_to(index, ep, client, call).await {
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

    /// Sends `call` to endpoint `index`, answering one auth challenge; a status outside
    /// 2xx is an error.
    pub(crate) async fn send_to(
        &self,
        index: usize,
        ep: &Endpoint,
        client: &reqwest::Client,
        call: Call<'_>,
    ) -> Result<reqwest::Response> {
        let url = call.url;
        // One retry, after answering the registry's auth challenge.
        let mut answered_challenge = false;
        loop {
            let mut req = client
                .request(call.method.clone(), url)
                .header("Accept", call.accept);
            for (k, v) in &ep.headers {
                req = req.header(k.as_str(), v.as_str());
            }
            if let Some(range) = call.range {
                req = req.header("Range", range);
            }
            if let Some((body, content_type)) = &call.body {
                req = req
                    .header("Content-Type", *content_type)
                    .body((*body).clone());
            }
            if let Some(a) = self.auth.lock().await.get(&index).cloned() {
                req = req.header("Authorization", a);
            }
            let resp = req.send().await.map_err(|source| {
                // Over TLS 1.3 a server refuses a missing client certificate only after
                // the handshake, and whether the request then fails with its alert, a
                // broken pipe or a cancellation is a race: say what it likely is.
                let hint = if url.starts_with("https://")
                    && ep.client.is_empty()
                    && source.is_request()
                    && !source.is_connect()
                    && !source.is_timeout()
                {
                    " (the server broke the connection off after the TLS handshake, as registries that require a TLS client certificate do: see `client` in hosts.toml)"
                } else {
                    ""
                };
                RegistryError::Transport {
                    url: url.to_owned(),
                    source,
                    hint,
                }
            })?;
            let status = resp.status().as_u16();
            if status == 401 && !answered_challenge {
                let challenge = resp
                    .headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let header = self.authenticate(client, url, &challenge).await?;
                self.auth.lock().await.insert(index, header);
                answered_challenge = true;
                continue;
            }
            if status == 401 {
                // Refused even with the answer to its challenge.
                let body = Self::body_start(resp).await;
                let who = if self.credentials.is_some() {
                    "the credentials given were refused"
                } else {
                    "anonymous access was refused (give credentials)"
                };
                return Err(RegistryError::Auth {
                    url: url.to_owned(),
                    reason: format!("HTTP 401 Unauthorized: {who}: {body}"),
                });
            }
            if !(200..300).contains(&status) {
                return Err(RegistryError::Status {
                    method: call.method_name(),
                    url: url.to_owned(),
                    status,
                    body: Self::body_start(resp).await,
                });
            }
            return Ok(resp);
        }
    }

    /// The start of an error response's body, where registries explain themselves.
    async fn body_start(resp: reqwest::Response) -> String {
        let body = resp.text().await.unwrap_or_default();
        body.trim().chars().take(300).collect()
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
        let c = parse_challenge(challenge).ok_or_else(|| {
            auth_err("HTTP 401 Unauthorized without a WWW-Authenticate challenge".into())
        })?;
        match c.scheme.as_str() {
            "basic" => {
                let cr = self.credentials.as_ref().ok_or_else(|| {
                    auth_err(
                        "HTTP 401 Unauthorized: the registry asks for basic auth credentials and none were given"
                            .into(),
                    )
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
                    .map_err(|source| RegistryError::transport(realm.clone(), source))?;
                if !resp.status().is_success() {
                    let status = resp.status();
                    let who = if self.credentials.is_some() {
                        "with the credentials given"
                    } else {
                        "to an anonymous request"
                    };
                    let body = Self::body_start(resp).await;
                    return Err(auth_err(format!(
                        "token endpoint {realm} answered HTTP {status} {who}: {body}"
                    )));
                }
                let body = Self::read_limited(resp, realm, MAX_JSON).await?;
                let token = token_from_response(&body)
                    .ok_or_else(|| auth_err(format!("token endpoint {realm} returned no token")))?;
                Ok(format!("Bearer {token}"))
            }
            other => Err(auth_err(format!("unsupported auth scheme {other:?}"))),
        }
    }

    /// Reads a whole (small) response, refusing more than `limit` bytes.
    pub(crate) async fn read_limited(
        mut resp: reqwest::Response,
        url: &str,
        limit: u64,
    ) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|source| RegistryError::transport(url.to_owned(), source))?
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
        let Some(child) = platform_manifest(&media_type, &bytes, &digest)? else {
            return Ok(Resolved { digest, bytes });
        };
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
        self.blob_bytes_max(digest, MAX_JSON).await
    }

    /// Downloads blob `digest` whole into memory, refusing one of more than `max` bytes,
    /// and verifies its digest.
    pub async fn blob_bytes_max(&self, digest: &str, max: u64) -> Result<Vec<u8>> {
        let (resp, url) = self
            .get(&format!("blobs/{digest}"), "*/*", 0, false)
            .await?;
        let bytes = Self::read_limited(resp, &url, max).await?;
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
        let path = format!("blobs/{digest}");
        let (response, url) = match self.get(&path, "*/*", offset, false).await {
            // 416: nothing lies at or past `offset`. The kept part is already the whole
            // blob (a crash came between its last byte and its commit) or is longer than
            // the blob: download it whole again rather than fail every later pull.
            Err(RegistryError::Status { status: 416, .. }) if offset > 0 => {
                self.get(&path, "*/*", 0, false).await?
            }
            other => other?,
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A self-signed EC CA, only ever used to check that certificate files load.
    const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBkzCCATmgAwIBAgIUZ8p9jfZd+ji4/RQBWPCea9CDDW8wCgYIKoZIzj0EAwIw
HjEcMBoGA1UEAwwTbGFtaW5hIHVuaXQtdGVzdCBDQTAgFw0yNjExMjQwNjAwNDFa
GA8yMTI2MTAzMTA2MDA0MVowHjEcMBoGA1UEAwwTbGFtaW5hIHVuaXQtdGVzdCBD
QTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABOmZ+BHHdSWhgOOsWaXfk2iyboHU
gBcPPt01pEvENGX7DB4xrYDgXgWJUf+JyEdh3ZsdszaK78rzE8QHW0HBgPSjUzBR
MB0GA1UdDgQWBBQ7AZ8T9qYkB5anmw1+400mCSnboTAfBgNVHSMEGDAWgBQ7AZ8T
9qYkB5anmw1+400mCSnboTAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gA
MEUCIGgCbnDV8YRqSkoephDhhWiRpEPzcjdHJHCWSAwA0x8mAiEArRLmY/CFCQEz
zsKxxEw7PtdHyMU7bsYKxz2bKhbMaXY=
-----END CERTIFICATE-----
";
    /// A client certificate signed by `CA_PEM`, and its key.
    const CLIENT_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBszCCAVmgAwIBAgIUGdL5talmKF3WyGLo0209LCjMrtYwCgYIKoZIzj0EAwIw
HjEcMBoGA1UEAwwTbGFtaW5hIHVuaXQtdGVzdCBDQTAgFw0yNjExMjQwNjAxMzRa
GA8yMTI2MTAzMTA2MDEzNFowIjEgMB4GA1UEAwwXbGFtaW5hIHVuaXQtdGVzdCBj
bGllbnQwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAATu/KjBRQ59HTQGotW5OU/R
8knE9+YczgpNH9vF26qnQUGFuPQjc39+7JDfCBQC2mooqzmzOuRCSlnxU71JECDu
o28wbTAJBgNVHRMEAjAAMAsGA1UdDwQEAwIHgDATBgNVHSUEDDAKBggrBgEFBQcD
AjAdBgNVHQ4EFgQUF5z22yJLlQ1sXPjrp0AvdG8UgKcwHwYDVR0jBBgwFoAUOwGf
E/amJAeWp5sNfuNNJgkp26EwCgYIKoZIzj0EAwIDSAAwRQIgIjqGSxNRBHE4Tysi
1xmVwqIWU09ukkFAKN9yS5j3ll0CIQC8TMmyy4M/qKT5SwKkUCpY9gg7I/K57G2b
ZFv1Wc3/qA==
-----END CERTIFICATE-----
";
    /// An X.509 version 1 certificate (no extensions).
    const V1_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBPDCB4wIUGdL5talmKF3WyGLo0209LCjMrtUwCgYIKoZIzj0EAwIwHjEcMBoG
A1UEAwwTbGFtaW5hIHVuaXQtdGVzdCBDQTAgFw0yNjExMjQwNjAwNDFaGA8yMTI2
MTAzMTA2MDA0MVowIjEgMB4GA1UEAwwXbGFtaW5hIHVuaXQtdGVzdCBjbGllbnQw
WTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAATu/KjBRQ59HTQGotW5OU/R8knE9+Yc
zgpNH9vF26qnQUGFuPQjc39+7JDfCBQC2mooqzmzOuRCSlnxU71JECDuMAoGCCqG
SM49BAMCA0gAMEUCIBd/F4mqdpmggznb87r2gKV04s2PsjFl7P0avReOs4PIAiEA
tdhAL2Icjtg6gn9/TybEpx6ajhV4AxzWRdOK7UuCY+Y=
-----END CERTIFICATE-----
";
    const CLIENT_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg9P7YV0V6XC+PHTS5
9hR5Chcx8PwQm7epEEH2C8ZZ/E6hRANCAATu/KjBRQ59HTQGotW5OU/R8knE9+Yc
zgpNH9vF26qnQUGFuPQjc39+7JDfCBQC2mooqzmzOuRCSlnxU71JECDu
-----END PRIVATE KEY-----
";

    /// A config dir whose `reg.example/hosts.toml` is `hosts_toml`, with the test
    /// certificates beside it.
    fn config(hosts_toml: &str) -> (tempfile::TempDir, HostsConfig) {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("reg.example");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("ca.pem"), CA_PEM).unwrap();
        std::fs::write(d.join("client.pem"), CLIENT_PEM).unwrap();
        std::fs::write(d.join("client.key"), CLIENT_KEY).unwrap();
        std::fs::write(d.join("combined.pem"), format!("{CLIENT_PEM}{CLIENT_KEY}")).unwrap();
        std::fs::write(d.join("garbage.pem"), "not a certificate\n").unwrap();
        std::fs::write(d.join("v1.pem"), V1_PEM).unwrap();
        std::fs::write(d.join("hosts.toml"), hosts_toml).unwrap();
        let cfg = HostsConfig {
            dir: Some(t.path().to_path_buf()),
        };
        (t, cfg)
    }

    fn client(cfg: &HostsConfig) -> Result<RegistryClient> {
        RegistryClient::new(
            &Reference::parse("reg.example/app:1").unwrap(),
            cfg,
            false,
            None,
        )
    }

    #[tokio::test]
    async fn loads_ca_and_client_certificates() {
        for good in [
            "ca = \"ca.pem\"\n",
            "ca = [\"ca.pem\", \"ca.pem\"]\nclient = [[\"client.pem\", \"client.key\"]]\n",
            "client = \"combined.pem\"\n",
            "[host.\"https://mirror.example\"]\nca = \"ca.pem\"\nclient = [\"combined.pem\"]\n",
        ] {
            let (_t, cfg) = config(good);
            let c = client(&cfg).unwrap_or_else(|e| panic!("{good}: {e}"));
            assert!(!c.endpoints.is_empty());
        }
        for (bad, file) in [
            ("ca = \"missing.pem\"\n", "missing.pem"),
            ("ca = \"garbage.pem\"\n", "garbage.pem"),
            // A certificate without its key.
            ("client = \"client.pem\"\n", "client.pem"),
            (
                "client = [[\"client.pem\", \"missing.key\"]]\n",
                "missing.key",
            ),
            // Parses, but rustls refuses an X.509 v1 client certificate.
            ("client = [[\"v1.pem\", \"client.key\"]]\n", "v1.pem"),
        ] {
            let (_t, cfg) = config(bad);
            match client(&cfg) {
                Err(RegistryError::Config { path, .. }) => {
                    assert!(path.ends_with(file), "{bad}: error names {path}")
                }
                Err(e) => panic!("{bad}: wrong error {e}"),
                Ok(_) => panic!("{bad}: accepted"),
            }
        }
    }

    #[tokio::test]
    async fn transport_errors_carry_their_cause() {
        // Port 1 on loopback: nothing listens there.
        let c = RegistryClient::new(
            &Reference::parse("127.0.0.1:1/app:1").unwrap(),
            &HostsConfig::default(),
            false,
            None,
        )
        .unwrap();
        let r = Reference::parse("127.0.0.1:1/app:1").unwrap();
        let err = c.resolve(&r).await.unwrap_err().to_string();
        assert!(err.contains("refused"), "{err}");
    }

    /// The head of one HTTP request (up to the blank line), as text.
    async fn read_head(conn: &mut tokio::net::TcpStream) -> String {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&head).into_owned()
    }

    /// A registry serving one blob, `body`, at any path: whole, or from the byte a
    /// `Range: bytes=N-` header asks for (206), or 416 when N is at or past its end.
    async fn ranged_registry(body: &'static [u8]) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let head = read_head(&mut conn).await.to_ascii_lowercase();
                let start = head.lines().find_map(|l| {
                    l.strip_prefix("range: bytes=")
                        .and_then(|r| r.trim().trim_end_matches('-').parse::<usize>().ok())
                });
                let resp = match start {
                    Some(n) if n >= body.len() => format!(
                        "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes(),
                    Some(n) => [
                        format!(
                            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {n}-{}/{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len() - 1,
                            body.len(),
                            body.len() - n
                        )
                        .as_bytes(),
                        &body[n..],
                    ]
                    .concat(),
                    None => [
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .as_bytes(),
                        body,
                    ]
                    .concat(),
                };
                let _ = conn.write_all(&resp).await;
            }
        });
        addr
    }

    async fn read_all(mut blob: Blob) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(chunk) = blob.chunk().await.unwrap() {
            out.extend_from_slice(&chunk);
        }
        out
    }

    /// Found by the crash harness: laminad killed after a blob's last byte was kept but
    /// before the blob was committed left a partial as long as the blob, and every later
    /// pull asked for the bytes past its end and failed with 416.
    #[tokio::test]
    async fn a_resume_past_the_end_downloads_the_blob_again() {
        const BODY: &[u8] = b"0123456789";
        let addr = ranged_registry(BODY).await;
        let r = Reference::parse(&format!("{addr}/app:1")).unwrap();
        let c = RegistryClient::new(&r, &HostsConfig::default(), false, None).unwrap();
        let digest = format!("sha256:{}", sha256_hex(BODY));
        let resumed = c.blob(&digest, 4).await.unwrap();
        assert_eq!(resumed.offset, 4);
        assert_eq!(read_all(resumed).await, &BODY[4..]);
        for past in [BODY.len() as u64, BODY.len() as u64 + 7] {
            let again = c.blob(&digest, past).await.unwrap();
            assert_eq!(again.offset, 0, "kept {past} bytes");
            assert_eq!(read_all(again).await, BODY);
        }
    }

    /// A registry that answers every request with 401 and a Basic challenge; sends the
    /// Authorization headers it saw (empty: none) down the channel.
    async fn refusing_registry() -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let head = read_head(&mut conn).await;
                let auth = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .starts_with("authorization:")
                            .then(|| l["authorization:".len()..].trim().to_owned())
                    })
                    .unwrap_or_default();
                let _ = tx.send(auth);
                let body =
                    r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
                let resp = format!(
                    "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"test\"\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
            }
        });
        (addr, rx)
    }

    #[tokio::test]
    async fn basic_auth_refusals_are_explained() {
        let (addr, mut seen) = refusing_registry().await;
        let r = Reference::parse(&format!("{addr}/app:1")).unwrap();
        let hosts = HostsConfig::default();

        let anonymous = RegistryClient::new(&r, &hosts, false, None).unwrap();
        let err = anonymous.resolve(&r).await.unwrap_err();
        assert!(matches!(err, RegistryError::Auth { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("401 Unauthorized") && msg.contains("none were given"),
            "{msg}"
        );
        assert_eq!(seen.recv().await.unwrap(), "");

        let creds = Credentials {
            username: "alice".into(),
            password: "wrong".into(),
        };
        let refused = RegistryClient::new(&r, &hosts, false, Some(creds)).unwrap();
        let err = refused.resolve(&r).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, RegistryError::Auth { .. }), "{msg}");
        assert!(
            msg.contains("401 Unauthorized")
                && msg.contains("credentials given were refused")
                && msg.contains("UNAUTHORIZED"),
            "{msg}"
        );
        // First without credentials, then with the Basic answer to the challenge.
        assert_eq!(seen.recv().await.unwrap(), "");
        let basic = base64::engine::general_purpose::STANDARD.encode("alice:wrong");
        assert_eq!(seen.recv().await.unwrap(), format!("Basic {basic}"));
    }
}
