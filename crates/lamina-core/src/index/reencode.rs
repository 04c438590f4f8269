//! Re-encoding a layer as seekable zstd: independent frames of `span` uncompressed bytes
//! each, so every frame start is a checkpoint, followed by the seek table of zstd's
//! seekable format (a skippable frame every zstd decoder passes over).

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::rc::Rc;

use sha2::{Digest as _, Sha256};
use zstd::zstd_safe::CParameter;

use super::build::{check_digests, scan_tar, sha256_digest, sniff, BlobIn, BuildOptions, Failure};
use super::format::{Checkpoint, LayerIndex, FORMAT_VERSION};
use super::IndexError;
use crate::layer::Compression;

/// The zstd level [`reencode_seekable`] is meant to be used with by default (zstd's own
/// default, as fast as gzip -1 and smaller than gzip -6 on typical layers).
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// Magic of a zstd skippable frame that holds a seek table.
const SKIPPABLE_MAGIC: u32 = 0x184D_2A5E;
/// Magic at the very end of a seekable zstd stream.
const SEEKABLE_MAGIC: u32 = 0x8F92_EAB1;

/// Collects the uncompressed stream into frames of `span` bytes and writes each as one
/// zstd frame (with content size and checksum) to `out`, hashing what it writes.
struct FrameWriter<W: Write> {
    out: W,
    hasher: Sha256,
    written: u64,
    buf: Vec<u8>,
    span: usize,
    cctx: zstd::bulk::Compressor<'static>,
    /// (compressed, uncompressed) size of every frame, for the seek table.
    frames: Vec<(u32, u32)>,
    checkpoints: Vec<Checkpoint>,
    uncompressed: u64,
}

impl<W: Write> FrameWriter<W> {
    fn new(out: W, span: u64, level: i32) -> io::Result<Self> {
        let mut cctx = zstd::bulk::Compressor::new(level)?;
        cctx.set_parameter(CParameter::ChecksumFlag(true))?;
        Ok(FrameWriter {
            out,
            hasher: Sha256::new(),
            written: 0,
            buf: Vec::with_capacity(span as usize),
            span: span as usize,
            cctx,
            frames: Vec::new(),
            checkpoints: Vec::new(),
            uncompressed: 0,
        })
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn emit(&mut self) -> io::Result<()> {
        self.checkpoints.push(Checkpoint {
            uncompressed_offset: self.uncompressed,
            compressed_offset: self.written,
            bits: 0,
            window: Vec::new(),
        });
        let frame = self.cctx.compress(&self.buf)?;
        self.put(&frame)?;
        // Both fit: a span is at most 1 GiB, and so is its compressed bound plus a little.
        let sizes = (
            u32::try_from(frame.len()).map_err(io::Error::other)?,
            u32::try_from(self.buf.len()).map_err(io::Error::other)?,
        );
        self.frames.push(sizes);
        self.uncompressed += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Writes the last frame and the seek table; gives the checkpoints, digest and size
    /// of the new blob.
    fn finish(mut self) -> io::Result<(Vec<Checkpoint>, crate::layer::Digest, u64)> {
        if !self.buf.is_empty() || self.frames.is_empty() {
            self.emit()?;
        }
        let mut table = Vec::with_capacity(8 + self.frames.len() * 8 + 9);
        table.extend_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
        let frame_size = u32::try_from(self.frames.len() * 8 + 9).map_err(io::Error::other)?;
        table.extend_from_slice(&frame_size.to_le_bytes());
        for (c, d) in &self.frames {
            table.extend_from_slice(&c.to_le_bytes());
            table.extend_from_slice(&d.to_le_bytes());
        }
        let count = u32::try_from(self.frames.len()).map_err(io::Error::other)?;
        table.extend_from_slice(&count.to_le_bytes());
        table.push(0); // descriptor: no per-frame checksums in the table
        table.extend_from_slice(&SEEKABLE_MAGIC.to_le_bytes());
        self.put(&table)?;
        self.out.flush()?;
        let digest = sha256_digest(self.hasher.finalize().as_slice());
        Ok((self.checkpoints, digest, self.written))
    }
}

impl<W: Write> Write for FrameWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(self.span - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == self.span {
            self.emit()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Re-encodes the layer read from `blob` (gzip, zstd or plain) as seekable zstd written
/// to `out`: frames of `opts.span` uncompressed bytes at zstd `level`, each with its
/// checksum, then a zstd seekable-format seek table. Returns the index of the new blob
/// (built in the same pass: its digest and size, the unchanged diffID and table of
/// contents, a checkpoint at every frame).
///
/// This is what `lamina index build` does for a layer whose own index has checkpoints
/// too far apart ([`LayerIndex::needs_reencoding`], typically zstd written as one
/// frame): the new blob is a new layer blob with its own digest, pushed alongside its
/// index, while the image's diffIDs stay valid. `opts.expected_digest` and
/// `opts.expected_diff_id` are checked against the input blob and its tar.
pub fn reencode_seekable(
    blob: impl Read,
    out: impl Write,
    opts: &BuildOptions,
    level: i32,
) -> Result<LayerIndex, IndexError> {
    opts.check()?;
    let (compression, blob) = sniff(blob)?;
    let failure: Failure = Rc::new(RefCell::new(None));
    let mut writer = FrameWriter::new(out, opts.span, level).map_err(|e| IndexError::Io {
        op: "start the zstd encoder",
        source: e,
    })?;
    let mut blob_in = BlobIn::new(blob, true);
    let scanned = {
        let decoded: Box<dyn Read + '_> = match compression {
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&mut blob_in)),
            Compression::Zstd => {
                Box::new(zstd::stream::read::Decoder::new(&mut blob_in).map_err(|e| {
                    IndexError::Io {
                        op: "start the zstd decoder",
                        source: e,
                    }
                })?)
            }
            Compression::None => Box::new(&mut blob_in),
        };
        let decoded = Labelled {
            inner: decoded,
            what: match compression {
                Compression::Gzip => "gzip",
                Compression::Zstd => "zstd",
                Compression::None => "tar",
            },
            failure: failure.clone(),
        };
        scan_tar(decoded, opts, &failure, Some(&mut writer))?
    };
    // Whatever the decoder left unread still belongs to the blob's digest.
    io::copy(&mut blob_in, &mut io::sink()).map_err(|e| IndexError::Io {
        op: "read the blob",
        source: e,
    })?;
    let (source_digest, _) = blob_in.finish();
    check_digests(
        opts,
        &source_digest.expect("the input blob is hashed"),
        &scanned.diff_id,
    )?;
    let (checkpoints, blob_digest, blob_size) = writer.finish().map_err(|e| IndexError::Io {
        op: "write the re-encoded blob",
        source: e,
    })?;
    let index = LayerIndex {
        version: FORMAT_VERSION,
        compression: Compression::Zstd,
        blob_digest,
        blob_size,
        diff_id: scanned.diff_id,
        uncompressed_size: scanned.size,
        span: opts.span,
        entries: scanned.entries,
        checkpoints,
    };
    index.validate()?;
    Ok(index)
}

/// Records a decoder's first error as a corrupt layer, naming the decoder.
struct Labelled<R> {
    inner: R,
    what: &'static str,
    failure: Failure,
}

impl<R: Read> Read for Labelled<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            let mut slot = self.failure.borrow_mut();
            if slot.is_none() {
                *slot = Some(IndexError::Corrupt(format!("{}: {e}", self.what)));
            }
            e
        })
    }
}
