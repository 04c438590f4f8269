//! `lamina merge|diff|export`: merged and diff snapshots, and diffs exported as layers.

use std::path::{Path, PathBuf};

use anyhow::Context;
use lamina_proto::lamina::v1 as pb;
use lamina_proto::lamina::v1::merges_client::MergesClient;
use serde::Serialize;

use crate::Output;

/// Arguments of `lamina merge`.
#[derive(Debug, clap::Args)]
pub struct MergeArgs {
    /// Name of the committed snapshot to create.
    pub key: String,
    /// The diffs, applied in order: `UPPER` (all of it, from an empty tree) or
    /// `LOWER..UPPER` (the changes from committed LOWER to committed UPPER).
    #[arg(required = true)]
    pub diffs: Vec<String>,
    /// Label KEY=VALUE (repeatable).
    #[arg(long = "label", short = 'l')]
    pub labels: Vec<String>,
}

/// Arguments of `lamina diff`.
#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// Name of the committed snapshot to create (it holds only the changes).
    pub key: String,
    /// Where the changes start ("" or absent: an empty tree).
    #[arg(long, default_value = "")]
    pub lower: String,
    /// Where they lead.
    #[arg(long)]
    pub upper: String,
    /// Label KEY=VALUE (repeatable).
    #[arg(long = "label", short = 'l')]
    pub labels: Vec<String>,
}

/// Arguments of `lamina export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The snapshot the changes lead to.
    pub upper: String,
    /// Where they start (default: an empty tree, so the whole of UPPER).
    #[arg(long, default_value = "")]
    pub lower: String,
    /// Where to write the blob ("-" = stdout).
    #[arg(long, short = 'f', default_value = "-")]
    pub file: PathBuf,
    /// gzip, zstd or none.
    #[arg(long, default_value = "gzip")]
    pub compression: String,
}

/// `LOWER..UPPER` or `UPPER`.
fn parse_diff(s: &str) -> pb::SnapshotDiff {
    match s.split_once("..") {
        Some((lower, upper)) => pb::SnapshotDiff {
            lower: lower.into(),
            upper: upper.into(),
        },
        None => pb::SnapshotDiff {
            lower: String::new(),
            upper: s.into(),
        },
    }
}

#[derive(Debug, Serialize)]
struct MergeOut {
    key: String,
    method: String,
    entries: i64,
    size: i64,
    inodes: i64,
}

fn print(output: Output, key: String, r: pb::MergeResponse) -> anyhow::Result<()> {
    let out = MergeOut {
        key,
        method: r.method,
        entries: r.entries,
        size: r.size,
        inodes: r.inodes,
    };
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&out)?),
        Output::Text => println!(
            "{}: {} ({} entries written, {} bytes and {} inodes of its own)",
            out.key, out.method, out.entries, out.size, out.inodes
        ),
    }
    Ok(())
}

async fn client(socket: &Path) -> anyhow::Result<MergesClient<tonic::transport::Channel>> {
    let channel = lamina_proto::connect_unix(socket)
        .await
        .with_context(|| format!("connecting to laminad at {}", socket.display()))?;
    Ok(MergesClient::new(channel))
}

/// `lamina merge`.
pub async fn merge(socket: &Path, output: Output, args: MergeArgs) -> anyhow::Result<()> {
    let req = pb::MergeRequest {
        key: args.key.clone(),
        diffs: args.diffs.iter().map(|d| parse_diff(d)).collect(),
        labels: crate::snapshot::parse_labels(&args.labels)?,
    };
    let r = client(socket).await?.merge(req).await?.into_inner();
    print(output, args.key, r)
}

/// `lamina diff`.
pub async fn diff(socket: &Path, output: Output, args: DiffArgs) -> anyhow::Result<()> {
    let req = pb::DiffSnapshotRequest {
        key: args.key.clone(),
        lower: args.lower,
        upper: args.upper,
        labels: crate::snapshot::parse_labels(&args.labels)?,
    };
    let r = client(socket).await?.diff(req).await?.into_inner();
    print(output, args.key, r)
}

/// `lamina export`.
pub async fn export(socket: &Path, output: Output, args: ExportArgs) -> anyhow::Result<()> {
    let stream = client(socket)
        .await?
        .export(pb::ExportDiffRequest {
            lower: args.lower,
            upper: args.upper,
            compression: args.compression,
        })
        .await?
        .into_inner();
    crate::layer::save_blob(stream, &args.file, output).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_parse_with_and_without_a_lower() {
        let d = parse_diff("default/1/sha256:ab..top");
        assert_eq!(
            (d.lower.as_str(), d.upper.as_str()),
            ("default/1/sha256:ab", "top")
        );
        let d = parse_diff("sha256:abc");
        assert_eq!((d.lower.as_str(), d.upper.as_str()), ("", "sha256:abc"));
    }
}
