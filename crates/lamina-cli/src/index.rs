//! `lamina index build|push`: seekable layer indexes of an image, what lazy loading reads
//! layers through.

use std::path::Path;

use anyhow::Context;
use clap::Subcommand;
use lamina_proto::lamina::v1 as pb;
use lamina_proto::lamina::v1::indexes_client::IndexesClient;
use serde::Serialize;

use crate::Output;

/// Index subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build the seekable index of every layer of IMAGE into the content store.
    Build {
        /// Image name (see lamina images).
        image: String,
        /// Uncompressed bytes between decompression checkpoints (default 1 MiB).
        #[arg(long, default_value_t = 0)]
        span: i64,
    },
    /// Build the indexes if needed and push them to IMAGE's repository as an OCI artifact
    /// that refers to the image (referrers API, or the sha256-<hex> tag).
    Push {
        /// Image name; also where the indexes go.
        image: String,
        /// Use http even for a registry that is not on loopback.
        #[arg(long)]
        plain_http: bool,
        /// Registry credentials, USER:PASSWORD.
        #[arg(long, env = "LAMINA_REGISTRY_USER")]
        user: Option<String>,
        /// Uncompressed bytes between decompression checkpoints (default 1 MiB).
        #[arg(long, default_value_t = 0)]
        span: i64,
        /// Publish this prefetch list with the indexes (paths its containers read first,
        /// one per line, e.g. from `lamina lazy accessed`): lazy pulls of the image on any
        /// host then fetch those files first, unless given a list of their own.
        #[arg(long, value_name = "FILE")]
        prefetch_file: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Serialize)]
struct LayerOut {
    layer: String,
    index: String,
    size: i64,
    entries: i64,
    checkpoints: i64,
    needs_reencoding: bool,
}

#[derive(Debug, Serialize)]
struct PushOut {
    artifact: String,
    subject: String,
    referrers_api: bool,
    layers: Vec<LayerOut>,
}

fn layers(l: Vec<pb::LayerIndexInfo>) -> Vec<LayerOut> {
    l.into_iter()
        .map(|l| LayerOut {
            layer: l.layer,
            index: l.index,
            size: l.size,
            entries: l.entries,
            checkpoints: l.checkpoints,
            needs_reencoding: l.needs_reencoding,
        })
        .collect()
}

fn print_layers(rows: &[LayerOut]) {
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|l| {
            vec![
                l.layer.clone(),
                l.index.clone(),
                l.size.to_string(),
                l.entries.to_string(),
                l.checkpoints.to_string(),
                if l.needs_reencoding { "re-encode" } else { "" }.into(),
            ]
        })
        .collect();
    crate::snapshot::print_table(
        &["LAYER", "INDEX", "SIZE", "ENTRIES", "CHECKPOINTS", ""],
        &table,
    );
}

/// Runs one index subcommand against the daemon at `socket`.
pub async fn run(socket: &Path, output: Output, cmd: Command) -> anyhow::Result<()> {
    let channel = lamina_proto::connect_unix(socket)
        .await
        .with_context(|| format!("connecting to laminad at {}", socket.display()))?;
    let mut client = IndexesClient::new(channel);
    match cmd {
        Command::Build { image, span } => {
            let r = client
                .build(pb::BuildIndexesRequest { image, span })
                .await?
                .into_inner();
            let rows = layers(r.layers);
            match output {
                Output::Json => crate::snapshot::print_json(&rows),
                Output::Text => {
                    print_layers(&rows);
                    Ok(())
                }
            }
        }
        Command::Push {
            image,
            plain_http,
            user,
            span,
            prefetch_file,
        } => {
            let (username, password) = crate::images::split_user(user)?;
            let prefetch = match &prefetch_file {
                Some(file) => crate::images::read_prefetch_list(file)?,
                None => Vec::new(),
            };
            let r = client
                .push(pb::PushIndexesRequest {
                    image,
                    plain_http,
                    username,
                    password,
                    span,
                    prefetch,
                })
                .await?
                .into_inner();
            let out = PushOut {
                artifact: r.artifact,
                subject: r.subject,
                referrers_api: r.referrers_api,
                layers: layers(r.layers),
            };
            match output {
                Output::Json => crate::snapshot::print_json(&out),
                Output::Text => {
                    print_layers(&out.layers);
                    println!(
                        "pushed {} referring to {} ({})",
                        out.artifact,
                        out.subject,
                        if out.referrers_api {
                            "referrers API"
                        } else {
                            "fallback tag"
                        }
                    );
                    Ok(())
                }
            }
        }
    }
}
