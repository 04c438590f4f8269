//! Lamina's `lamina.v1.Layers` service: layer blobs streamed in and applied into
//! snapshots, snapshot changes streamed out as layer blobs. The bytes cross between the
//! async edge and the synchronous layer engine through bounded channels.

use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;

use lamina_core::layer::{ApplyOptions, Compression, Digest};
use lamina_core::Snapshotter;
use lamina_proto::lamina::v1 as pb;
use lamina_proto::lamina::v1::layers_server::Layers;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::bridge::ChannelReader;
use crate::status::to_status;

/// Bytes per streamed diff message.
const CHUNK: usize = 256 << 10;

/// The layer service over a store.
#[derive(Clone)]
pub struct LayerService {
    store: Arc<Snapshotter>,
    /// Held shared while a layer is applied: its snapshot is unreferenced until then.
    gc_gate: crate::cache::GcGate,
}

impl LayerService {
    /// Serves `store`.
    pub fn new(store: Arc<Snapshotter>) -> Self {
        LayerService {
            store,
            gc_gate: crate::cache::GcGate::default(),
        }
    }

    /// Shares `gate` with the cache service, so no collection removes the snapshot a
    /// layer is being applied into.
    pub fn with_gc_gate(mut self, gate: crate::cache::GcGate) -> Self {
        self.gc_gate = gate;
        self
    }
}

/// A blocking `Write` that sends full chunks to a gRPC response stream; fails with
/// BrokenPipe when the client has gone, which stops the diff.
pub(crate) struct ChannelWriter {
    tx: mpsc::Sender<Result<pb::DiffChunk, Status>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    /// A writer sending to `tx`.
    pub(crate) fn new(tx: mpsc::Sender<Result<pb::DiffChunk, Status>>) -> Self {
        ChannelWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        }
    }

    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(Ok(pb::DiffChunk { data, info: None }))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

fn digest_arg(what: &str, s: &str) -> Result<Option<Digest>, Status> {
    if s.is_empty() {
        return Ok(None);
    }
    Digest::parse(s)
        .map(Some)
        .ok_or_else(|| Status::invalid_argument(format!("{what} {s:?} is not a sha256 digest")))
}

/// Streams the layer blob that `write` produces (on a blocking thread) as the response,
/// its digests in the last message; an error ends the stream with its status.
pub(crate) fn stream_layer(
    write: impl FnOnce(&mut ChannelWriter) -> lamina_core::Result<lamina_core::layer::DiffReport>
        + Send
        + 'static,
) -> Response<DiffStream> {
    let (tx, rx) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let mut writer = ChannelWriter::new(tx.clone());
        let last = match write(&mut writer) {
            Ok(rep) => Ok(pb::DiffChunk {
                data: Vec::new(),
                info: Some(info(
                    rep.digest,
                    rep.diff_id,
                    rep.size,
                    rep.compressed_size,
                    rep.entries,
                )),
            }),
            Err(e) => Err(to_status(e)),
        };
        let _ = tx.blocking_send(last);
    });
    Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

/// The compression a request names ("" = gzip).
pub(crate) fn compression(name: &str) -> Result<Compression, Status> {
    match name {
        "" | "gzip" => Ok(Compression::Gzip),
        "zstd" => Ok(Compression::Zstd),
        "none" => Ok(Compression::None),
        other => Err(Status::invalid_argument(format!(
            "unknown compression {other:?} (gzip, zstd or none)"
        ))),
    }
}

pub(crate) fn info(
    digest: Digest,
    diff_id: Digest,
    size: u64,
    compressed: u64,
    entries: u64,
) -> pb::LayerInfo {
    pb::LayerInfo {
        digest: digest.to_string(),
        diff_id: diff_id.to_string(),
        size: size as i64,
        compressed_size: compressed as i64,
        entries: entries as i64,
    }
}

pub(crate) type DiffStream = Pin<Box<dyn Stream<Item = Result<pb::DiffChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Layers for LayerService {
    async fn apply(
        &self,
        req: Request<Streaming<pb::ApplyLayerChunk>>,
    ) -> Result<Response<pb::LayerInfo>, Status> {
        let mut stream = req.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty Apply stream"))?;
        let header = first.header.ok_or_else(|| {
            Status::invalid_argument("the first Apply message must carry the header")
        })?;
        let opts = ApplyOptions {
            expected_digest: digest_arg("expected_digest", &header.expected_digest)?,
            expected_diff_id: digest_arg("expected_diff_id", &header.expected_diff_id)?,
            ..ApplyOptions::default()
        };
        let (tx, rx) = mpsc::channel(8);
        let store = self.store.clone();
        let gate = self.gc_gate.clone().read_owned().await;
        let task = tokio::task::spawn_blocking(move || {
            let _gate = gate;
            let reader = ChannelReader::new(rx);
            let labels = header.labels.into_iter().collect();
            store.apply_layer(&header.name, &header.parent, labels, reader, opts)
        });
        if !first.data.is_empty() {
            let _ = tx.send(Ok(first.data)).await;
        }
        loop {
            match stream.message().await {
                Ok(Some(chunk)) => {
                    if tx.send(Ok(chunk.data)).await.is_err() {
                        break; // the applier stopped early; its result says why
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    let _ = tx
                        .send(Err(std::io::Error::other(format!(
                            "client stream failed: {status}"
                        ))))
                        .await;
                    break;
                }
            }
        }
        drop(tx);
        let report = task
            .await
            .map_err(|e| Status::internal(format!("apply task failed: {e}")))?
            .map_err(to_status)?;
        Ok(Response::new(info(
            report.digest,
            report.diff_id,
            report.size,
            report.compressed_size,
            report.entries,
        )))
    }

    type DiffStream = DiffStream;

    async fn diff(
        &self,
        req: Request<pb::DiffRequest>,
    ) -> Result<Response<Self::DiffStream>, Status> {
        let r = req.into_inner();
        let compression = compression(&r.compression)?;
        let store = self.store.clone();
        Ok(stream_layer(move |out| {
            store.diff(&r.key, compression, out)
        }))
    }
}
