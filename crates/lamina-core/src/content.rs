//! The content store: blobs by digest under `ROOT/content/blobs/sha256/<hex>`, written
//! through a temporary file, verified against their digest while they stream in, and
//! made visible by an atomic rename only once complete and synced.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::layer::Digest;

/// Blobs by digest.
#[derive(Debug, Clone)]
pub struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
}

impl ContentStore {
    /// Opens (creating) the store under `root/content`; partial ingests of a crashed run
    /// are discarded.
    pub fn open(root: &Path) -> Result<ContentStore> {
        let blobs = root.join("content/blobs/sha256");
        let ingest = root.join("content/ingest");
        std::fs::create_dir_all(&blobs).ctx("mkdir", &blobs)?;
        if ingest.exists() {
            std::fs::remove_dir_all(&ingest).ctx("remove", &ingest)?;
        }
        std::fs::create_dir_all(&ingest).ctx("mkdir", &ingest)?;
        Ok(ContentStore { blobs, ingest })
    }

    /// Where blob `digest` lives (whether or not it is there).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.as_str().trim_start_matches("sha256:");
        self.blobs.join(hex)
    }

    /// Whether blob `digest` is present.
    pub fn has(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Opens blob `digest` for reading.
    pub fn open_blob(&self, digest: &Digest) -> Result<File> {
        let p = self.path(digest);
        File::open(&p).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound {
                key: digest.to_string(),
                context: " (blob)",
            },
            _ => Error::io("open", p, e),
        })
    }

    /// Streams `data` into the store. With `expected`, the bytes must hash to it (else
    /// nothing is stored); an existing blob is not written again.
    pub fn ingest(&self, expected: Option<&Digest>, mut data: impl Read) -> Result<(Digest, u64)> {
        if let Some(d) = expected {
            if self.has(d) {
                let size = std::fs::metadata(self.path(d))
                    .ctx("stat", &self.path(d))?
                    .len();
                return Ok((d.clone(), size));
            }
        }
        let tmp = tempfile_in(&self.ingest)?;
        let (mut file, tmp_path) = tmp;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 256 << 10];
        let result: Result<()> = (|| {
            loop {
                let n = data
                    .read(&mut buf)
                    .map_err(|e| Error::io("read blob for", &tmp_path, e))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                file.write_all(&buf[..n]).ctx("write", &tmp_path)?;
                size += n as u64;
            }
            file.sync_all().ctx("fsync", &tmp_path)
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp_path);
            return Err(e);
        }
        let digest = Digest::parse(&format!("sha256:{}", hex::encode(hasher.finalize())))
            .expect("sha256 digests are well-formed");
        if let Some(expected) = expected {
            if *expected != digest {
                let _ = std::fs::remove_file(&tmp_path);
                return Err(crate::layer::LayerError::DigestMismatch {
                    expected: expected.clone(),
                    actual: digest,
                }
                .into());
            }
        }
        let dest = self.path(&digest);
        std::fs::rename(&tmp_path, &dest).ctx("rename", &dest)?;
        File::open(&self.blobs)
            .and_then(|d| d.sync_all())
            .ctx("fsync", &self.blobs)?;
        Ok((digest, size))
    }

    /// Deletes blob `digest`; a missing blob is not an error.
    pub fn remove(&self, digest: &Digest) -> Result<()> {
        match std::fs::remove_file(self.path(digest)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io("remove", self.path(digest), e))
            }
            _ => Ok(()),
        }
    }

    /// Every blob present.
    pub fn list(&self) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.blobs).ctx("read directory", &self.blobs)? {
            let e = e.ctx("read directory", &self.blobs)?;
            if let Some(d) = e
                .file_name()
                .to_str()
                .and_then(|h| Digest::parse(&format!("sha256:{h}")))
            {
                out.push(d);
            }
        }
        out.sort();
        Ok(out)
    }
}

/// A new file with a unique name in `dir`.
fn tempfile_in(dir: &Path) -> Result<(File, PathBuf)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    loop {
        let name = format!(
            "{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let p = dir.join(name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
        {
            Ok(f) => return Ok((f, p)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io("create", p, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_verifies_and_dedupes() {
        let t = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(t.path()).unwrap();
        let (d, n) = cs.ingest(None, &b"hello"[..]).unwrap();
        assert_eq!((d.clone(), n), (Digest::of(b"hello"), 5));
        assert!(cs.has(&d));
        assert_eq!(
            cs.ingest(Some(&d), &b"ignored: already there"[..]).unwrap(),
            (d.clone(), 5)
        );
        let wrong = Digest::of(b"other");
        assert!(cs.ingest(Some(&wrong), &b"hello!"[..]).is_err());
        assert!(!cs.has(&wrong));
        assert_eq!(
            std::fs::read_dir(t.path().join("content/ingest"))
                .unwrap()
                .count(),
            0,
            "no partial left"
        );
        assert_eq!(cs.list().unwrap(), vec![d.clone()]);
        cs.remove(&d).unwrap();
        assert!(!cs.has(&d));
    }
}
