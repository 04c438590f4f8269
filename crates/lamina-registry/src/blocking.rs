//! A blob read at any offset from synchronous code (FUSE handlers, a chunk cache): each
//! read is one range request, bounded in time and retried a few times, so a registry that
//! is down or stalls makes the read fail (the reader gets EIO) instead of hanging, and a
//! registry that comes back serves the next read.

use std::sync::Arc;
use std::time::Duration;

use crate::{RegistryClient, RegistryError};

/// How hard a read tries before it fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Requests made in all.
    pub attempts: u32,
    /// Longest one request may take.
    pub timeout: Duration,
    /// Wait before the second request; doubled before each further one.
    pub backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            timeout: Duration::from_secs(10),
            backoff: Duration::from_millis(200),
        }
    }
}

impl RetryPolicy {
    /// The longest a failing read can take: every attempt timing out, plus the waits.
    pub fn bound(&self) -> Duration {
        let waits: Duration = (1..self.attempts)
            .map(|i| self.backoff * 2u32.saturating_pow(i - 1))
            .sum();
        self.timeout * self.attempts + waits
    }
}

/// Blob `digest` (of `size` bytes) of a repository, for synchronous readers.
pub struct BlockingBlob {
    client: Arc<RegistryClient>,
    digest: String,
    size: u64,
    runtime: tokio::runtime::Handle,
    policy: RetryPolicy,
}

impl BlockingBlob {
    /// Reads through `client` on `runtime`. Reads must come from threads outside that
    /// runtime (they block on it).
    pub fn new(
        client: Arc<RegistryClient>,
        digest: impl Into<String>,
        size: u64,
        runtime: tokio::runtime::Handle,
        policy: RetryPolicy,
    ) -> Self {
        BlockingBlob {
            client,
            digest: digest.into(),
            size,
            runtime,
            policy,
        }
    }

    /// Bytes of the blob.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Reads bytes from `offset` into `buf` (fewer only at the end of the blob).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        if offset >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let len = (buf.len() as u64).min(self.size - offset);
        let started = std::time::Instant::now();
        let mut last = String::new();
        for attempt in 0..self.policy.attempts.max(1) {
            if attempt > 0 {
                std::thread::sleep(self.policy.backoff * 2u32.saturating_pow(attempt - 1));
            }
            let request = self.client.blob_range(&self.digest, offset, len);
            match self
                .runtime
                .block_on(async { tokio::time::timeout(self.policy.timeout, request).await })
            {
                Ok(Ok(bytes)) => {
                    tracing::debug!(
                        offset,
                        len,
                        secs = started.elapsed().as_secs_f64(),
                        "range read"
                    );
                    let n = bytes.len().min(buf.len());
                    buf[..n].copy_from_slice(&bytes[..n]);
                    return Ok(n);
                }
                // Not there, or not allowed: asking again will not help.
                Ok(Err(
                    e @ (RegistryError::Status {
                        status: 400..=499, ..
                    }
                    | RegistryError::Auth { .. }
                    | RegistryError::Config { .. }),
                )) => return Err(std::io::Error::other(e.to_string())),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => {
                    last = format!("no answer within {:?}", self.policy.timeout);
                }
            }
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "reading {} bytes at {offset} of {} failed {} times: {last}",
                len, self.digest, self.policy.attempts
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_adds_timeouts_and_waits() {
        let p = RetryPolicy {
            attempts: 3,
            timeout: Duration::from_secs(2),
            backoff: Duration::from_millis(100),
        };
        assert_eq!(p.bound(), Duration::from_millis(6000 + 100 + 200));
    }
}
