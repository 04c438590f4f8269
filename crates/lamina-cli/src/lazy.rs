//! `lamina lazy`: the layers mounted lazily, their servers and how much of each is on disk.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use lamina_proto::lamina::v1 as pb;
use lamina_proto::lamina::v1::lazy_layers_client::LazyLayersClient;
use serde::Serialize;

use crate::Output;

#[derive(Debug, Serialize)]
struct LazyOut {
    snapshot: String,
    layer: String,
    mount: String,
    pid: Option<u32>,
    fetched: u64,
    total: u64,
    state: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    detail: String,
}

/// `lamina lazy` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print the files of an image's lazy layers in the order they were first read, one
    /// per line: a prefetch list for `lamina pull --prefetch-file` (e.g. on other hosts).
    Accessed {
        /// The image, as `lamina images` names it.
        image: String,
    },
}

/// Prints the files of `image`'s lazy layers, first read first.
pub async fn accessed(socket: &Path, output: Output, image: &str) -> anyhow::Result<()> {
    let channel = lamina_proto::connect_unix(socket)
        .await
        .with_context(|| format!("connecting to laminad at {}", socket.display()))?;
    let paths = LazyLayersClient::new(channel)
        .accessed(pb::AccessedRequest {
            image: image.to_owned(),
        })
        .await?
        .into_inner()
        .paths;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&paths)?),
        Output::Text => {
            let mut out = std::io::stdout().lock();
            for p in paths {
                writeln!(out, "{p}")?;
            }
        }
    }
    Ok(())
}

/// Prints every lazy layer.
pub async fn list(socket: &Path, output: Output) -> anyhow::Result<()> {
    let channel = lamina_proto::connect_unix(socket)
        .await
        .with_context(|| format!("connecting to laminad at {}", socket.display()))?;
    let layers = LazyLayersClient::new(channel)
        .list(pb::ListLazyRequest {})
        .await?
        .into_inner()
        .layers;
    let layers: Vec<LazyOut> = layers
        .into_iter()
        .map(|l| LazyOut {
            snapshot: l.snapshot,
            layer: l.layer,
            mount: l.mount,
            pid: (l.pid != 0).then_some(l.pid),
            fetched: l.fetched,
            total: l.total,
            state: l.state,
            detail: l.detail,
        })
        .collect();
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&layers)?),
        Output::Text => {
            println!(
                "{:<20}  {:<20}  {:>8}  {:>7}  {:<11}  MOUNT",
                "SNAPSHOT", "LAYER", "PID", "FETCHED", "STATE"
            );
            for l in layers {
                let pct = if l.total == 0 {
                    100.0
                } else {
                    l.fetched as f64 * 100.0 / l.total as f64
                };
                println!(
                    "{:<20}  {:<20}  {:>8}  {:>6.1}%  {:<11}  {}",
                    short(&l.snapshot),
                    short(&l.layer),
                    l.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                    pct,
                    l.state,
                    l.mount
                );
            }
        }
    }
    Ok(())
}

/// A digest cut to a readable prefix.
fn short(s: &str) -> &str {
    s.char_indices().nth(20).map_or(s, |(i, _)| &s[..i])
}
