//! `lamina snapshot ...`: containerd's snapshot operations against laminad.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use clap::Subcommand;
use lamina_proto::snapshots as pb;
use lamina_proto::snapshots::snapshots_client::SnapshotsClient;
use serde::Serialize;
use tonic::transport::Channel;

use crate::Output;

/// Snapshot subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a writable snapshot KEY on committed PARENT; print its mounts.
    Prepare(CreateArgs),
    /// Create a read-only view KEY of committed PARENT; print its mounts.
    View(CreateArgs),
    /// Print the mounts of an active snapshot or view (as mount commands for TARGET).
    Mounts {
        /// Snapshot key.
        key: String,
        /// Mount point to write into the printed commands.
        #[arg(default_value = "TARGET")]
        target: String,
    },
    /// Mount an active snapshot or view on TARGET.
    Mount {
        /// Snapshot key.
        key: String,
        /// Directory to mount on.
        target: PathBuf,
    },
    /// Unmount TARGET (what `mount` or `--target` mounted).
    Umount {
        /// Mount point.
        target: PathBuf,
    },
    /// Commit active snapshot KEY as NAME.
    Commit {
        /// Name of the committed snapshot.
        name: String,
        /// Active snapshot to commit.
        key: String,
        /// Label KEY=VALUE (repeatable).
        #[arg(long = "label", short = 'l')]
        labels: Vec<String>,
    },
    /// Remove snapshots (children first).
    #[command(visible_alias = "remove")]
    Rm {
        /// Keys or names.
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Show one snapshot's info.
    Info {
        /// Key or name.
        key: String,
    },
    /// List snapshots, optionally filtered (containerd filter syntax; any filter may match).
    #[command(visible_alias = "list")]
    Ls {
        /// Filter, e.g. 'kind==committed' or 'labels."a.b"==c' (repeatable).
        #[arg(long = "filter", short = 'f')]
        filters: Vec<String>,
    },
    /// Show snapshots as a tree of parents and children.
    Tree,
    /// Show disk usage of one snapshot, or of all.
    Usage {
        /// Key or name (default: every snapshot).
        key: Option<String>,
    },
    /// Set (KEY=VALUE) or remove (KEY=) labels of a snapshot; print the resulting labels.
    Label {
        /// Key or name.
        key: String,
        /// KEY=VALUE to set, KEY= to remove.
        #[arg(required = true)]
        labels: Vec<String>,
    },
    /// Ask laminad to delete directories of removed snapshots.
    Cleanup,
}

/// Arguments shared by `prepare` and `view`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Key of the new snapshot.
    key: String,
    /// Committed parent (none: an empty snapshot).
    parent: Option<String>,
    /// Label KEY=VALUE (repeatable).
    #[arg(long = "label", short = 'l')]
    labels: Vec<String>,
    /// Also mount it on this directory.
    #[arg(long)]
    target: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct InfoOut {
    name: String,
    parent: String,
    kind: &'static str,
    created: String,
    updated: String,
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
struct MountOut {
    r#type: String,
    source: String,
    options: Vec<String>,
}

#[derive(Debug, Serialize)]
struct UsageOut {
    name: String,
    size: i64,
    inodes: i64,
}

fn kind_name(kind: i32) -> &'static str {
    match pb::Kind::try_from(kind) {
        Ok(pb::Kind::View) => "view",
        Ok(pb::Kind::Active) => "active",
        Ok(pb::Kind::Committed) => "committed",
        _ => "unknown",
    }
}

fn rfc3339(ts: Option<&prost_types::Timestamp>) -> String {
    ts.map(|t| t.to_string()).unwrap_or_default()
}

fn info_out(i: pb::Info) -> InfoOut {
    InfoOut {
        kind: kind_name(i.kind),
        created: rfc3339(i.created_at.as_ref()),
        updated: rfc3339(i.updated_at.as_ref()),
        labels: i.labels.into_iter().collect(),
        name: i.name,
        parent: i.parent,
    }
}

pub(crate) fn parse_labels(items: &[String]) -> anyhow::Result<HashMap<String, String>> {
    items
        .iter()
        .map(|s| {
            s.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| anyhow!("label {s:?} is not KEY=VALUE"))
        })
        .collect()
}

pub(crate) fn print_json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn print_mounts(
    output: Output,
    mounts: Vec<lamina_proto::types::Mount>,
    target: &str,
) -> anyhow::Result<()> {
    match output {
        Output::Json => print_json(
            &mounts
                .into_iter()
                .map(|m| MountOut {
                    r#type: m.r#type,
                    source: m.source,
                    options: m.options,
                })
                .collect::<Vec<_>>(),
        ),
        Output::Text => {
            for m in mounts {
                println!(
                    "mount -t {} {} {} -o {}",
                    m.r#type,
                    m.source,
                    target,
                    m.options.join(",")
                );
            }
            Ok(())
        }
    }
}

/// Prints rows as left-aligned columns.
pub(crate) fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

async fn list(
    client: &mut SnapshotsClient<Channel>,
    filters: Vec<String>,
) -> anyhow::Result<Vec<pb::Info>> {
    let mut stream = client
        .list(pb::ListSnapshotsRequest {
            snapshotter: String::new(),
            filters,
        })
        .await?
        .into_inner();
    let mut all = Vec::new();
    while let Some(batch) = stream.message().await? {
        all.extend(batch.info);
    }
    Ok(all)
}

async fn usage_of(client: &mut SnapshotsClient<Channel>, key: &str) -> anyhow::Result<UsageOut> {
    let u = client
        .usage(pb::UsageRequest {
            snapshotter: String::new(),
            key: key.to_owned(),
        })
        .await?
        .into_inner();
    Ok(UsageOut {
        name: key.to_owned(),
        size: u.size,
        inodes: u.inodes,
    })
}

fn mount_on(mounts: &[lamina_proto::types::Mount], target: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(target).with_context(|| format!("creating {}", target.display()))?;
    lamina_core::sys::mount_all(&lamina_proto::core_mounts(mounts), target)
        .with_context(|| format!("mounting on {}", target.display()))
}

/// Prepares (or, with `view`, views) a snapshot, mounts it if asked, prints its mounts.
async fn create(
    client: &mut SnapshotsClient<Channel>,
    output: Output,
    args: CreateArgs,
    view: bool,
) -> anyhow::Result<()> {
    let (key, parent, labels) = (
        args.key,
        args.parent.unwrap_or_default(),
        parse_labels(&args.labels)?,
    );
    let snapshotter = String::new();
    let mounts = if view {
        let req = pb::ViewSnapshotRequest {
            snapshotter,
            key,
            parent,
            labels,
        };
        client.view(req).await?.into_inner().mounts
    } else {
        let req = pb::PrepareSnapshotRequest {
            snapshotter,
            key,
            parent,
            labels,
        };
        client.prepare(req).await?.into_inner().mounts
    };
    if let Some(t) = &args.target {
        mount_on(&mounts, t)?;
    }
    let target = args
        .target
        .map_or("TARGET".into(), |t| t.display().to_string());
    print_mounts(output, mounts, &target)
}

/// The mounts of an existing active snapshot or view.
async fn fetch_mounts(
    client: &mut SnapshotsClient<Channel>,
    key: String,
) -> anyhow::Result<Vec<lamina_proto::types::Mount>> {
    let req = pb::MountsRequest {
        snapshotter: String::new(),
        key,
    };
    Ok(client.mounts(req).await?.into_inner().mounts)
}

/// Runs one snapshot subcommand against the daemon at `socket`.
pub async fn run(socket: &Path, output: Output, cmd: Command) -> anyhow::Result<()> {
    let channel = lamina_proto::connect_unix(socket)
        .await
        .with_context(|| format!("connecting to laminad at {}", socket.display()))?;
    let mut client = SnapshotsClient::new(channel);
    let sn = String::new;
    match cmd {
        Command::Prepare(args) => create(&mut client, output, args, false).await,
        Command::View(args) => create(&mut client, output, args, true).await,
        Command::Mounts { key, target } => {
            print_mounts(output, fetch_mounts(&mut client, key).await?, &target)
        }
        Command::Mount { key, target } => mount_on(&fetch_mounts(&mut client, key).await?, &target),
        Command::Umount { target } => lamina_core::sys::unmount(&target)
            .with_context(|| format!("unmounting {}", target.display())),
        Command::Commit { name, key, labels } => {
            client
                .commit(pb::CommitSnapshotRequest {
                    snapshotter: sn(),
                    name,
                    key,
                    labels: parse_labels(&labels)?,
                })
                .await?;
            Ok(())
        }
        Command::Rm { keys } => {
            for key in keys {
                client
                    .remove(pb::RemoveSnapshotRequest {
                        snapshotter: sn(),
                        key: key.clone(),
                    })
                    .await
                    .with_context(|| format!("removing {key}"))?;
            }
            Ok(())
        }
        Command::Info { key } => {
            let info = client
                .stat(pb::StatSnapshotRequest {
                    snapshotter: sn(),
                    key,
                })
                .await?
                .into_inner()
                .info
                .ok_or_else(|| anyhow!("laminad returned no info"))?;
            let info = info_out(info);
            match output {
                Output::Json => print_json(&info),
                Output::Text => {
                    println!("name:    {}", info.name);
                    println!("parent:  {}", info.parent);
                    println!("kind:    {}", info.kind);
                    println!("created: {}", info.created);
                    println!("updated: {}", info.updated);
                    for (k, v) in &info.labels {
                        println!("label:   {k}={v}");
                    }
                    Ok(())
                }
            }
        }
        Command::Ls { filters } => {
            let infos: Vec<InfoOut> = list(&mut client, filters)
                .await?
                .into_iter()
                .map(info_out)
                .collect();
            match output {
                Output::Json => print_json(&infos),
                Output::Text => {
                    let rows: Vec<Vec<String>> = infos
                        .into_iter()
                        .map(|i| vec![i.name, i.parent, i.kind.to_owned()])
                        .collect();
                    print_table(&["KEY", "PARENT", "KIND"], &rows);
                    Ok(())
                }
            }
        }
        Command::Tree => {
            let infos = list(&mut client, Vec::new()).await?;
            tree(output, infos)
        }
        Command::Usage { key } => {
            let keys = match key {
                Some(k) => vec![k],
                None => list(&mut client, Vec::new())
                    .await?
                    .into_iter()
                    .map(|i| i.name)
                    .collect(),
            };
            let mut rows = Vec::with_capacity(keys.len());
            for k in keys {
                rows.push(usage_of(&mut client, &k).await?);
            }
            match output {
                Output::Json => print_json(&rows),
                Output::Text => {
                    let rows: Vec<Vec<String>> = rows
                        .into_iter()
                        .map(|u| vec![u.name, u.size.to_string(), u.inodes.to_string()])
                        .collect();
                    print_table(&["KEY", "SIZE", "INODES"], &rows);
                    Ok(())
                }
            }
        }
        Command::Label { key, labels } => {
            let labels = parse_labels(&labels)?;
            let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
            let set = labels.into_iter().filter(|(_, v)| !v.is_empty()).collect();
            let info = client
                .update(pb::UpdateSnapshotRequest {
                    snapshotter: sn(),
                    info: Some(pb::Info {
                        name: key,
                        labels: set,
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask { paths }),
                })
                .await?
                .into_inner()
                .info
                .ok_or_else(|| anyhow!("laminad returned no info"))?;
            let labels: BTreeMap<_, _> = info.labels.into_iter().collect();
            match output {
                Output::Json => print_json(&labels),
                Output::Text => {
                    for (k, v) in labels {
                        println!("{k}={v}");
                    }
                    Ok(())
                }
            }
        }
        Command::Cleanup => {
            client
                .cleanup(pb::CleanupRequest { snapshotter: sn() })
                .await?;
            Ok(())
        }
    }
}

#[derive(Debug, Serialize)]
struct TreeNode {
    name: String,
    kind: &'static str,
    children: Vec<TreeNode>,
}

fn tree(output: Output, infos: Vec<pb::Info>) -> anyhow::Result<()> {
    let mut children: BTreeMap<String, Vec<(String, &'static str)>> = BTreeMap::new();
    let names: std::collections::HashSet<String> = infos.iter().map(|i| i.name.clone()).collect();
    for i in &infos {
        // A parent that is not in the listing (it cannot be, but be safe) shows as a root.
        let parent = if names.contains(&i.parent) {
            i.parent.clone()
        } else {
            String::new()
        };
        children
            .entry(parent)
            .or_default()
            .push((i.name.clone(), kind_name(i.kind)));
    }
    fn build(
        name: &str,
        kind: &'static str,
        children: &BTreeMap<String, Vec<(String, &'static str)>>,
        depth: usize,
    ) -> anyhow::Result<TreeNode> {
        if depth > 4096 {
            bail!("snapshot tree deeper than 4096 levels");
        }
        let kids = children
            .get(name)
            .map(|v| {
                v.iter()
                    .map(|(n, k)| build(n, k, children, depth + 1))
                    .collect::<anyhow::Result<Vec<_>>>()
            })
            .transpose()?
            .unwrap_or_default();
        Ok(TreeNode {
            name: name.to_owned(),
            kind,
            children: kids,
        })
    }
    let roots = build("", "", &children, 0)?.children;
    match output {
        Output::Json => print_json(&roots),
        Output::Text => {
            fn show(n: &TreeNode, prefix: &str, last: bool, top: bool) {
                let (branch, next) = match (top, last) {
                    (true, _) => ("", String::new()),
                    (false, true) => ("└── ", format!("{prefix}    ")),
                    (false, false) => ("├── ", format!("{prefix}│   ")),
                };
                println!("{prefix}{branch}{} ({})", n.name, n.kind);
                for (i, c) in n.children.iter().enumerate() {
                    show(c, &next, i + 1 == n.children.len(), false);
                }
            }
            for r in &roots {
                show(r, "", true, true);
            }
            Ok(())
        }
    }
}
