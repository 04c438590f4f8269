//! Content digests (`sha256:<hex>`) and a reader that computes one while data streams by.

use std::io::Read;

use sha2::{Digest as _, Sha256};

/// An OCI content digest; only sha256 is produced or accepted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:<64 lowercase hex>`, the only form OCI images use in practice.
    pub fn parse(s: &str) -> Option<Digest> {
        let hex = s.strip_prefix("sha256:")?;
        (hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| Digest(s.to_owned()))
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(format!("sha256:{}", hex::encode(Sha256::digest(bytes))))
    }

    /// `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Passes reads through while hashing and counting them.
pub struct HashingReader<R> {
    inner: R,
    /// `None` when only counting: the digest is checked elsewhere.
    hasher: Option<Sha256>,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Some(Sha256::new()),
            count: 0,
        }
    }

    /// Wraps `inner`, counting bytes but not hashing them (`finish` gives no digest),
    /// for a stream whose digest someone else already checks.
    pub fn counting(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: None,
            count: 0,
        }
    }

    /// The wrapped reader.
    pub fn inner_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Reads `inner` to its end (so the digest covers all of it) and returns the digest
    /// (`None` if only counting) and byte count.
    pub fn finish(mut self) -> std::io::Result<(Option<Digest>, u64)> {
        std::io::copy(&mut self, &mut std::io::sink())?;
        let digest = self
            .hasher
            .map(|h| Digest(format!("sha256:{}", hex::encode(h.finalize()))));
        Ok((digest, self.count))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_hash() {
        let d = Digest::of(b"");
        assert_eq!(
            d.as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(Digest::parse(d.as_str()), Some(d));
        assert!(Digest::parse("sha256:abc").is_none());
        assert!(Digest::parse(
            "md5:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        )
        .is_none());
        let (h, n) = HashingReader::new(&b"hello"[..]).finish().unwrap();
        assert_eq!((h, n), (Some(Digest::of(b"hello")), 5));
        let (h, n) = HashingReader::counting(&b"hello"[..]).finish().unwrap();
        assert_eq!((h, n), (None, 5));
    }
}
