//! A client of the OCI distribution API, for pulling images: references, containerd's
//! `hosts.toml` registry configuration (mirrors, plain HTTP, headers, private CAs and
//! client certificates), bearer-token and basic authentication, manifest resolution with
//! platform choice, and blob downloads.

mod auth;
mod blocking;
mod client;
mod hosts;
mod push;
mod reference;

/// The parsers of registry responses, for the fuzz targets in `fuzz/` (not a stable API).
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::auth::{parse_challenge, Challenge};
    pub use crate::client::{platform_manifest, token_from_response};
}

pub use blocking::{BlockingBlob, RetryPolicy};
pub use client::{Blob, Credentials, RegistryClient, Resolved};
pub use hosts::{ClientCert, Endpoint, HostsConfig};
pub use push::{fallback_tag, Pushed};
pub use reference::Reference;

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The image reference cannot be parsed.
    #[error("invalid reference {reference:?}: {reason}")]
    InvalidReference {
        /// The text given.
        reference: String,
        /// What is wrong.
        reason: String,
    },
    /// A hosts.toml file is malformed.
    #[error("registry config {path}: {reason}")]
    Config {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The registry answered with an error status.
    #[error("{method} {url}: HTTP {status}{}: {body}", status_reason(*.status))]
    Status {
        /// GET or HEAD.
        method: &'static str,
        /// The URL asked.
        url: String,
        /// HTTP status code.
        status: u16,
        /// The start of the response body (registries explain errors there).
        body: String,
    },
    /// The registry could not be reached (after trying every endpoint); the message
    /// carries the whole cause chain (e.g. the TLS certificate problem).
    #[error("{url}: {}{hint}", error_chain(.source))]
    Transport {
        /// The URL asked.
        url: String,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
        /// What the cause likely is, when the error itself cannot say (empty, or starts
        /// with a space).
        hint: &'static str,
    },
    /// Authentication failed or the challenge could not be answered.
    #[error("authentication with {url}: {reason}")]
    Auth {
        /// The URL that challenged.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// A manifest or index is malformed, or has nothing for this platform.
    #[error("manifest {digest}: {reason}")]
    Manifest {
        /// Which one.
        digest: String,
        /// What is wrong.
        reason: String,
    },
    /// Downloaded bytes do not hash to the digest they were fetched by.
    #[error("digest mismatch for {url}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// Where from.
        url: String,
        /// Asked-for digest.
        expected: String,
        /// What arrived.
        actual: String,
    },
    /// A response is larger than allowed.
    #[error("{url}: response larger than {limit} bytes")]
    TooLarge {
        /// Where from.
        url: String,
        /// The limit.
        limit: u64,
    },
    /// Writing a download failed.
    #[error("writing {what}: {source}")]
    Io {
        /// What was being written.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl RegistryError {
    /// A transport error without a hint.
    pub(crate) fn transport(url: impl Into<String>, source: reqwest::Error) -> Self {
        RegistryError::Transport {
            url: url.into(),
            source,
            hint: "",
        }
    }
}

/// " Unauthorized" for 401: the reason phrase of an HTTP status, after a space.
fn status_reason(status: u16) -> String {
    reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .map(|r| format!(" {r}"))
        .unwrap_or_default()
}

/// `e` and its sources, joined by ": ", each message once (HTTP client errors repeat
/// their causes).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let msg = cause.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        next = cause.source();
    }
    out
}

/// Result alias for registry operations.
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;
