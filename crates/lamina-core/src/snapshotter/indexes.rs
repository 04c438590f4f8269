//! Seekable indexes of an image's layers, built from the blobs in the content store and
//! kept there, so the layers can be served lazily (and the indexes pushed beside the
//! image for other hosts).

use super::Snapshotter;
use crate::error::{Error, Result};
use crate::index::{build_index, BuildOptions, LayerIndex};
use crate::layer::Digest;

/// The index of one layer, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerIndexInfo {
    /// The layer blob.
    pub layer: String,
    /// The index blob (in the content store).
    pub index: String,
    /// Bytes of the index.
    pub size: u64,
    /// Entries in the layer.
    pub entries: u64,
    /// Places decompression can start.
    pub checkpoints: u64,
    /// Whether the layer has too few checkpoints for lazy reads (one big zstd frame):
    /// it would need re-encoding.
    pub needs_reencoding: bool,
}

impl Snapshotter {
    /// Builds (or finds) the seekable index of every layer of image `name`, checking each
    /// layer against its digest and diffID on the way, and stores them in the content
    /// store. `span` is the uncompressed distance between checkpoints.
    pub fn build_layer_indexes(&self, name: &str, span: u64) -> Result<Vec<LayerIndexInfo>> {
        let image = self.image(name)?;
        let mut out = Vec::with_capacity(image.layers.len());
        for l in &image.layers {
            let digest = parse(&l.digest)?;
            if let Some(existing) = self.meta.layer_index(&l.digest)? {
                let d = parse(&existing)?;
                if self.content().has(&d) {
                    let bytes = std::fs::read(self.content().path(&d))
                        .map_err(|e| Error::io("read", self.content().path(&d), e))?;
                    let index = LayerIndex::decode(&bytes).map_err(invalid)?;
                    out.push(info(&l.digest, &existing, bytes.len() as u64, &index));
                    continue;
                }
            }
            let blob = self.content().open_blob(&digest)?;
            let opts = BuildOptions {
                span,
                expected_digest: Some(digest.clone()),
                expected_diff_id: Some(parse(&l.diff_id)?),
                ..BuildOptions::default()
            };
            let index = build_index(blob, &opts).map_err(invalid)?;
            let bytes = index.encode().map_err(invalid)?;
            let (stored, size) = self.content().ingest(None, &bytes[..])?;
            self.meta.put_layer_index(&l.digest, stored.as_str())?;
            out.push(info(&l.digest, stored.as_str(), size, &index));
        }
        Ok(out)
    }

    /// Keeps an index fetched from elsewhere (a registry) as the index of layer blob
    /// `layer`, whose uncompressed stream should hash to `diff_id` and be `size` bytes
    /// compressed: the index is parsed (a malformed one is refused) and must describe that
    /// very blob. Gives the index and where it is stored. The index is still only a claim
    /// about the blob's contents until the layer's bytes are checked against `diff_id`.
    pub fn adopt_layer_index(
        &self,
        layer: &str,
        diff_id: &str,
        size: u64,
        bytes: &[u8],
    ) -> Result<(LayerIndex, Digest)> {
        let index = LayerIndex::decode(bytes).map_err(invalid)?;
        if index.blob_digest.as_str() != layer
            || index.diff_id.as_str() != diff_id
            || index.blob_size != size
        {
            return Err(Error::InvalidArgument(format!(
                "the index offered for layer {layer} describes blob {} ({} bytes, diffID {})",
                index.blob_digest, index.blob_size, index.diff_id
            )));
        }
        let (stored, _) = self.content().ingest(None, bytes)?;
        self.meta.put_layer_index(layer, stored.as_str())?;
        Ok((index, stored))
    }

    /// The stored index of layer blob `layer`, if one was built or fetched.
    pub fn layer_index(&self, layer: &str) -> Result<Option<String>> {
        self.meta.layer_index(layer)
    }
}

fn parse(s: &str) -> Result<Digest> {
    Digest::parse(s).ok_or_else(|| Error::InvalidArgument(format!("bad digest {s:?}")))
}

fn invalid(e: crate::index::IndexError) -> Error {
    Error::InvalidArgument(e.to_string())
}

fn info(layer: &str, index: &str, size: u64, i: &LayerIndex) -> LayerIndexInfo {
    LayerIndexInfo {
        layer: layer.into(),
        index: index.into(),
        size,
        entries: i.entries.len() as u64,
        checkpoints: i.checkpoints.len() as u64,
        needs_reencoding: i.needs_reencoding(),
    }
}
