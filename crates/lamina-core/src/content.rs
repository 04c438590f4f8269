//! The content store: blobs by digest under `ROOT/content/blobs/sha256/<hex>`, written
//! through a temporary file, verified against their digest while they stream in, and
//! made visible by an atomic rename only once complete and synced. A download of a known
//! digest that breaks off keeps what it got (`ingest/<hex>.partial`), so the next attempt
//! resumes from there.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::layer::Digest;

/// Whether `e` is a write that failed for want of space (ENOSPC, or EDQUOT: a quota).
fn out_of_space(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. }
        if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)))
}

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
        std::fs::create_dir_all(&ingest).ctx("mkdir", &ingest)?;
        // Keep resumable partial downloads; anything else is a leftover of a crash.
        for entry in std::fs::read_dir(&ingest).ctx("read directory", &ingest)? {
            let entry = entry.ctx("read directory", &ingest)?;
            let keep = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".partial"))
                .and_then(|h| Digest::parse(&format!("sha256:{h}")))
                .is_some();
            if !keep {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(ContentStore { blobs, ingest })
    }

    /// Where the kept part of an interrupted download of `digest` lives.
    pub fn partial_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.as_str().trim_start_matches("sha256:");
        self.ingest.join(format!("{hex}.partial"))
    }

    /// Bytes of blob `digest` kept from an interrupted download (0 if none).
    pub fn partial_len(&self, digest: &Digest) -> u64 {
        std::fs::metadata(self.partial_path(digest)).map_or(0, |m| m.len())
    }

    /// The first `len` bytes kept of blob `digest`, to replay before a resumed download.
    pub fn open_partial(&self, digest: &Digest, len: u64) -> Result<impl Read + Send + 'static> {
        let p = self.partial_path(digest);
        Ok(File::open(&p).ctx("open", &p)?.take(len))
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
    pub fn ingest(&self, expected: Option<&Digest>, data: impl Read) -> Result<(Digest, u64)> {
        self.ingest_from(expected, 0, data)
    }

    /// [`Self::ingest`] resuming an interrupted download of `expected`: its first `offset`
    /// bytes are the ones kept (see [`Self::partial_len`]) and `data` carries on from there.
    /// If `data` breaks off, what arrived is kept for the next attempt.
    pub fn ingest_from(
        &self,
        expected: Option<&Digest>,
        offset: u64,
        mut data: impl Read,
    ) -> Result<(Digest, u64)> {
        if let Some(d) = expected {
            if self.has(d) {
                let size = std::fs::metadata(self.path(d))
                    .ctx("stat", &self.path(d))?
                    .len();
                return Ok((d.clone(), size));
            }
        }
        let (mut file, tmp_path, resumable) = match expected.map(|d| self.partial_path(d)) {
            Some(p) => {
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&p)
                    .ctx("open", &p)?;
                match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                    Ok(()) => (f, p, true),
                    // Another request downloads this blob right now: work on a copy.
                    Err(_) if offset == 0 => {
                        let (f, p) = tempfile_in(&self.ingest)?;
                        (f, p, false)
                    }
                    Err(_) => {
                        return Err(Error::FailedPrecondition(format!(
                            "{} is being downloaded by another request",
                            p.display()
                        )))
                    }
                }
            }
            None => {
                let (f, p) = tempfile_in(&self.ingest)?;
                (f, p, false)
            }
        };
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 256 << 10];
        let result: Result<()> = (|| {
            // Replay (and hash) the kept prefix, drop anything past it, append from there.
            let kept = file.metadata().ctx("stat", &tmp_path)?.len();
            if offset > kept {
                return Err(Error::FailedPrecondition(format!(
                    "cannot resume at byte {offset}: only {kept} bytes were kept"
                )));
            }
            file.set_len(offset).ctx("truncate", &tmp_path)?;
            let mut prefix = (&file).take(offset);
            loop {
                let n = prefix.read(&mut buf).ctx("read", &tmp_path)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                size += n as u64;
            }
            use std::io::Seek;
            file.seek(std::io::SeekFrom::End(0))
                .ctx("seek", &tmp_path)?;
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
            // What arrived is kept for the next attempt, unless the disk is full: then
            // those bytes are in the way, and would stay taken after the pull failed.
            if !resumable || out_of_space(&e) {
                let _ = std::fs::remove_file(&tmp_path);
            }
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

    /// Reads `n` bytes of `data`, then fails like a dropped connection.
    struct BreaksOff<'a>(&'a [u8], usize);

    impl Read for BreaksOff<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.1 == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "gone",
                ));
            }
            let n = buf.len().min(self.1).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            self.1 -= n;
            Ok(n)
        }
    }

    #[test]
    fn interrupted_downloads_resume() {
        let t = tempfile::tempdir().unwrap();
        let blob: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let d = Digest::of(&blob);
        let cs = ContentStore::open(t.path()).unwrap();
        assert!(cs.ingest(Some(&d), BreaksOff(&blob, 300_000)).is_err());
        assert!(!cs.has(&d));
        let kept = cs.partial_len(&d);
        assert_eq!(kept, 300_000, "what arrived is kept");
        // A restart keeps it too.
        let cs = ContentStore::open(t.path()).unwrap();
        assert_eq!(cs.partial_len(&d), kept);
        let mut replay = Vec::new();
        cs.open_partial(&d, kept)
            .unwrap()
            .read_to_end(&mut replay)
            .unwrap();
        assert_eq!(replay, blob[..kept as usize]);
        let (got, size) = cs
            .ingest_from(Some(&d), kept, &blob[kept as usize..])
            .unwrap();
        assert_eq!((got, size), (d.clone(), blob.len() as u64));
        assert!(cs.has(&d) && cs.partial_len(&d) == 0);
        // Resuming with the wrong rest fails the digest and starts over next time.
        let d2 = Digest::of(b"0123456789");
        assert!(cs.ingest(Some(&d2), BreaksOff(b"0123456789", 4)).is_err());
        assert!(cs.ingest_from(Some(&d2), 4, &b"XXXXXX"[..]).is_err());
        assert_eq!(cs.partial_len(&d2), 0);
        assert!(
            cs.ingest_from(Some(&d2), 4, &b"456789"[..]).is_err(),
            "nothing kept to resume from"
        );
    }
}
