//! `lamina layer ...`: apply layer blobs into snapshots and export snapshots as layers.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use clap::Subcommand;
use lamina_proto::lamina::v1 as pb;
use lamina_proto::lamina::v1::layers_client::LayersClient;
use serde::Serialize;

use crate::Output;

/// Layer subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply a layer blob (tar, tar+gzip, tar+zstd; "-" = stdin) on PARENT, commit it as NAME.
    Apply {
        /// The blob.
        file: PathBuf,
        /// Name of the committed snapshot to create.
        name: String,
        /// Committed parent (none: the layer starts from an empty tree).
        #[arg(long, default_value = "")]
        parent: String,
        /// Label KEY=VALUE (repeatable).
        #[arg(long = "label", short = 'l')]
        labels: Vec<String>,
        /// Refuse the blob unless it has this sha256 digest.
        #[arg(long)]
        digest: Option<String>,
        /// Refuse the blob unless its uncompressed tar has this digest.
        #[arg(long)]
        diff_id: Option<String>,
    },
    /// Write the changes of snapshot KEY over its parent as a layer blob.
    Diff {
        /// Snapshot key or name.
        key: String,
        /// Where to write the blob ("-" = stdout).
        #[arg(long, short = 'f', default_value = "-")]
        file: PathBuf,
        /// gzip, zstd or none.
        #[arg(long, default_value = "gzip")]
        compression: String,
    },
}

#[derive(Debug, Serialize)]
struct InfoOut {
    digest: String,
    diff_id: String,
    size: i64,
    compressed_size: i64,
    entries: i64,
}

fn print_info(output: Output, i: pb::LayerInfo, to_stderr: bool) -> anyhow::Result<()> {
    let out = InfoOut {
        digest: i.digest,
        diff_id: i.diff_id,
        size: i.size,
        compressed_size: i.compressed_size,
        entries: i.entries,
    };
    let text = match output {
        Output::Json => serde_json::to_string_pretty(&out)?,
        Output::Text => format!(
            "digest:          {}\ndiff_id:         {}\nsize:            {}\ncompressed size: {}\nentries:         {}",
            out.digest, out.diff_id, out.size, out.compressed_size, out.entries
        ),
    };
    if to_stderr {
        eprintln!("{text}");
    } else {
        println!("{text}");
    }
    Ok(())
}

/// Writes a streamed layer blob to `file` ("-" = stdout) and prints its digests (to
/// stderr when the blob goes to stdout).
pub(crate) async fn save_blob(
    mut stream: tonic::Streaming<pb::DiffChunk>,
    file: &Path,
    output: Output,
) -> anyhow::Result<()> {
    let to_stdout = file == Path::new("-");
    let mut sink: Box<dyn Write> = if to_stdout {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(
            std::fs::File::create(file).with_context(|| format!("creating {}", file.display()))?,
        )
    };
    let mut info = None;
    while let Some(chunk) = stream.message().await? {
        sink.write_all(&chunk.data)?;
        if chunk.info.is_some() {
            info = chunk.info;
        }
    }
    sink.flush()?;
    let info = info.ok_or_else(|| anyhow!("laminad ended the layer without its digests"))?;
    print_info(output, info, to_stdout)
}

fn open_input(file: &Path) -> anyhow::Result<Box<dyn Read + Send>> {
    if file == Path::new("-") {
        return Ok(Box::new(std::io::stdin()));
    }
    let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    Ok(Box::new(f))
}

/// Runs one layer subcommand against the daemon at `socket`.
pub async fn run(socket: &Path, output: Output, cmd: Command) -> anyhow::Result<()> {
    let channel = lamina_proto::connect_unix(socket)
        .await
        .with_context(|| format!("connecting to laminad at {}", socket.display()))?;
    let mut client = LayersClient::new(channel);
    match cmd {
        Command::Apply {
            file,
            name,
            parent,
            labels,
            digest,
            diff_id,
        } => {
            let header = pb::ApplyLayerHeader {
                name,
                parent,
                labels: crate::snapshot::parse_labels(&labels)?,
                expected_digest: digest.unwrap_or_default(),
                expected_diff_id: diff_id.unwrap_or_default(),
            };
            let mut input = open_input(&file)?;
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send(pb::ApplyLayerChunk {
                header: Some(header),
                data: Vec::new(),
            })
            .await
            .map_err(|_| anyhow!("request stream closed"))?;
            // Reading the file is blocking work: a thread feeds the request stream.
            let reader = std::thread::spawn(move || -> std::io::Result<()> {
                loop {
                    let mut buf = vec![0u8; 256 << 10];
                    let n = input.read(&mut buf)?;
                    if n == 0 {
                        return Ok(());
                    }
                    buf.truncate(n);
                    if tx
                        .blocking_send(pb::ApplyLayerChunk {
                            header: None,
                            data: buf,
                        })
                        .is_err()
                    {
                        return Ok(()); // the daemon answered early (an error): it says why
                    }
                }
            });
            let info = client
                .apply(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await?
                .into_inner();
            reader
                .join()
                .map_err(|_| anyhow!("reader thread panicked"))?
                .with_context(|| format!("reading {}", file.display()))?;
            print_info(output, info, false)
        }
        Command::Diff {
            key,
            file,
            compression,
        } => {
            let stream = client
                .diff(pb::DiffRequest { key, compression })
                .await?
                .into_inner();
            save_blob(stream, &file, output).await
        }
    }
}
