//! `lamina du|prune|gc|lease ...`: the cache service of laminad (containerd's leases and
//! garbage collector, BuildKit's prune and disk usage).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use clap::Subcommand;
use lamina_proto::lamina::v1 as pb;
use lamina_proto::lamina::v1::cache_client::CacheClient;
use serde::Serialize;
use tonic::transport::Channel;

use crate::snapshot::{parse_labels, print_json, print_table};
use crate::Output;

/// `lamina lease` subcommands.
#[derive(Debug, Subcommand)]
pub enum LeaseCommand {
    /// Create a lease and print its id.
    Create {
        /// Lease id (default: generated).
        id: Option<String>,
        /// Expiry: a duration from now (Go syntax: 30m, 24h, 1h30m) or an RFC 3339 time;
        /// stored as the containerd.io/gc.expire label.
        #[arg(long)]
        expire: Option<String>,
        /// Label KEY=VALUE (repeatable).
        #[arg(long = "label", short = 'l')]
        labels: Vec<String>,
    },
    /// Delete leases (what they held stays until a GC finds nothing else holds it).
    #[command(visible_alias = "remove")]
    Rm {
        /// Lease ids.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Collect garbage right after deleting them.
        #[arg(long)]
        sync: bool,
    },
    /// List leases with what they hold.
    #[command(visible_alias = "list")]
    Ls {
        /// Filter on id or labels, e.g. 'labels."team"==infra' (repeatable; any may match).
        #[arg(long = "filter", short = 'f')]
        filters: Vec<String>,
    },
    /// Make a lease hold snapshots (by key) and blobs (by digest).
    Add(ResourceArgs),
    /// Make a lease stop holding snapshots and blobs.
    RmResource(ResourceArgs),
}

/// What `lease add` and `lease rm-resource` act on.
#[derive(Debug, clap::Args)]
pub struct ResourceArgs {
    /// Lease id.
    lease: String,
    /// Snapshot key (repeatable).
    #[arg(long = "snapshot", short = 's')]
    snapshots: Vec<String>,
    /// Blob digest, sha256:... (repeatable).
    #[arg(long = "content", short = 'c')]
    content: Vec<String>,
}

/// Arguments of `lamina prune`.
#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// Also internal, frontend and shared records (never records in use).
    #[arg(long, short = 'a')]
    all: bool,
    /// Filter on records, e.g. 'type==exec.cachemount', 'description~=^apt' (repeatable;
    /// any may match). Fields: id, parents, description, type, snapshot, inuse, mutable,
    /// immutable, shared, private, "last-used-at".
    #[arg(long = "filter", short = 'f')]
    filters: Vec<String>,
    /// Keep records used within this long (Go syntax: 30m, 24h, 1h30m).
    #[arg(long)]
    keep_duration: Option<String>,
    /// Remove least-recently-used records until snapshot usage is at most this, e.g.
    /// 10GB (K, M, G, T: powers of 1024, as docker's --keep-storage).
    #[arg(long)]
    keep_bytes: Option<String>,
}

async fn client(socket: &Path) -> anyhow::Result<CacheClient<Channel>> {
    let channel = lamina_proto::connect_unix(socket)
        .await
        .with_context(|| format!("connecting to laminad at {}", socket.display()))?;
    Ok(CacheClient::new(channel))
}

/// `1.5 MiB`-style sizes for people.
fn human(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v.abs() >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Parses `1024`, `512K`, `10GB`, `1.5GiB`: K, M, G, T (with or without B or iB) are
/// powers of 1024.
fn parse_bytes(s: &str) -> anyhow::Result<i64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| anyhow!("{s:?} is not a size (e.g. 512M, 10GB)"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => bail!("unknown size unit {other:?} in {s:?} (B, K, M, G, T)"),
    };
    let v = n * mult;
    if !v.is_finite() || v >= i64::MAX as f64 {
        bail!("size {s:?} is too large");
    }
    Ok(v as i64)
}

fn parse_duration(s: &str) -> anyhow::Result<std::time::Duration> {
    lamina_core::cache::time::parse_duration(s).map_err(anyhow::Error::from)
}

fn ts(t: Option<&prost_types::Timestamp>) -> String {
    t.map(|t| t.to_string()).unwrap_or_default()
}

#[derive(Debug, Serialize)]
struct RecordOut {
    id: String,
    snapshot: String,
    mutable: bool,
    parents: Vec<String>,
    description: String,
    record_type: String,
    policy: String,
    created: String,
    last_used: Option<String>,
    use_count: i64,
    in_use: bool,
    shared: bool,
    size: i64,
}

fn record_out(r: pb::CacheRecord) -> RecordOut {
    RecordOut {
        created: ts(r.created_at.as_ref()),
        last_used: r.last_used_at.as_ref().map(|t| t.to_string()),
        id: r.id,
        snapshot: r.snapshot,
        mutable: r.mutable,
        parents: r.parents,
        description: r.description,
        record_type: r.record_type,
        policy: r.policy,
        use_count: r.use_count,
        in_use: r.in_use,
        shared: r.shared,
        size: r.size,
    }
}

fn print_record(r: &RecordOut) {
    println!("ID:          {}", r.id);
    println!("Snapshot:    {}", r.snapshot);
    if !r.parents.is_empty() {
        println!("Parents:     {}", r.parents.join(", "));
    }
    println!("Description: {}", r.description);
    println!("Type:        {}", r.record_type);
    println!("Mutable:     {}", r.mutable);
    println!("In use:      {}", r.in_use);
    println!("Shared:      {}", r.shared);
    println!("Policy:      {}", r.policy);
    println!("Size:        {}", human(r.size));
    println!("Created at:  {}", r.created);
    println!("Last used:   {}", r.last_used.as_deref().unwrap_or("never"));
    println!("Usage count: {}", r.use_count);
    println!();
}

#[derive(Debug, Serialize)]
struct SnapshotOut {
    key: String,
    kind: String,
    exclusive: i64,
    shared: i64,
    inodes: i64,
}

#[derive(Debug, Serialize)]
struct DuOut {
    snapshots: Vec<SnapshotOut>,
    records: Vec<RecordOut>,
    total: i64,
    shared_total: i64,
}

/// `lamina du`: per-snapshot exclusive and shared bytes and totals; with `verbose`, the
/// cache records too (JSON always has them).
pub async fn du(socket: &Path, output: Output, verbose: bool) -> anyhow::Result<()> {
    let r = client(socket)
        .await?
        .disk_usage(pb::DiskUsageRequest {})
        .await?
        .into_inner();
    let out = DuOut {
        snapshots: r
            .snapshots
            .into_iter()
            .map(|s| SnapshotOut {
                key: s.key,
                kind: s.kind,
                exclusive: s.exclusive,
                shared: s.shared,
                inodes: s.inodes,
            })
            .collect(),
        records: r.records.into_iter().map(record_out).collect(),
        total: r.total,
        shared_total: r.shared_total,
    };
    if output == Output::Json {
        return print_json(&out);
    }
    if verbose {
        for rec in &out.records {
            print_record(rec);
        }
    }
    let rows: Vec<Vec<String>> = out
        .snapshots
        .iter()
        .map(|s| {
            vec![
                s.key.clone(),
                s.kind.clone(),
                human(s.exclusive),
                human(s.shared),
                s.inodes.to_string(),
            ]
        })
        .collect();
    print_table(&["KEY", "KIND", "EXCLUSIVE", "SHARED", "INODES"], &rows);
    println!();
    let exclusive: i64 = out.snapshots.iter().map(|s| s.exclusive).sum();
    println!("Exclusive:   {}", human(exclusive));
    println!("Shared:      {}", human(out.shared_total));
    println!("Total:       {}", human(out.total));
    println!(
        "Cache:       {} record(s), {} in use",
        out.records.len(),
        out.records.iter().filter(|r| r.in_use).count()
    );
    Ok(())
}

#[derive(Debug, Serialize)]
struct RemovedOut {
    id: String,
    bytes: i64,
}

#[derive(Debug, Serialize)]
struct GcOut {
    expired_leases: Vec<String>,
    snapshots: Vec<RemovedOut>,
    content: Vec<RemovedOut>,
    snapshot_bytes: i64,
    content_bytes: i64,
}

fn gc_out(r: pb::GarbageCollectResponse) -> GcOut {
    let removed = |v: Vec<pb::RemovedObject>| {
        v.into_iter()
            .map(|o| RemovedOut {
                id: o.id,
                bytes: o.bytes,
            })
            .collect()
    };
    GcOut {
        expired_leases: r.expired_leases,
        snapshots: removed(r.snapshots),
        content: removed(r.content),
        snapshot_bytes: r.snapshot_bytes,
        content_bytes: r.content_bytes,
    }
}

fn print_gc(g: &GcOut) {
    for id in &g.expired_leases {
        println!("expired lease {id}");
    }
    for s in &g.snapshots {
        println!("removed snapshot {} ({})", s.id, human(s.bytes));
    }
    for c in &g.content {
        println!("removed blob {} ({})", c.id, human(c.bytes));
    }
    println!(
        "GC: {} snapshot(s), {} blob(s), {} lease(s) expired; freed {}",
        g.snapshots.len(),
        g.content.len(),
        g.expired_leases.len(),
        human(g.snapshot_bytes + g.content_bytes)
    );
}

/// `lamina gc`: delete expired leases, remove every snapshot and blob nothing holds.
pub async fn gc(socket: &Path, output: Output) -> anyhow::Result<()> {
    let r = client(socket)
        .await?
        .garbage_collect(pb::GarbageCollectRequest {})
        .await?
        .into_inner();
    let g = gc_out(r);
    match output {
        Output::Json => print_json(&g),
        Output::Text => {
            print_gc(&g);
            Ok(())
        }
    }
}

#[derive(Debug, Serialize)]
struct PruneOut {
    removed: Vec<RecordOut>,
    gc: Option<GcOut>,
    usage_before: i64,
    usage_after: i64,
}

/// `lamina prune`: remove cache records like `buildctl prune`, then collect garbage.
pub async fn prune(socket: &Path, output: Output, args: PruneArgs) -> anyhow::Result<()> {
    let keep_duration = args
        .keep_duration
        .as_deref()
        .map(parse_duration)
        .transpose()
        .context("--keep-duration")?
        .map(|d| prost_types::Duration {
            seconds: d.as_secs() as i64,
            nanos: d.subsec_nanos() as i32,
        });
    let keep_bytes = args
        .keep_bytes
        .as_deref()
        .map(parse_bytes)
        .transpose()
        .context("--keep-bytes")?
        .unwrap_or(0);
    let r = client(socket)
        .await?
        .prune(pb::PruneRequest {
            filters: args.filters,
            all: args.all,
            keep_duration,
            keep_bytes,
        })
        .await?
        .into_inner();
    let out = PruneOut {
        removed: r.removed.into_iter().map(record_out).collect(),
        gc: r.gc.map(gc_out),
        usage_before: r.usage_before,
        usage_after: r.usage_after,
    };
    if output == Output::Json {
        return print_json(&out);
    }
    let rows: Vec<Vec<String>> = out
        .removed
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.record_type.clone(),
                human(r.size),
                r.last_used.clone().unwrap_or_else(|| "never".into()),
                r.description.clone(),
            ]
        })
        .collect();
    print_table(&["ID", "TYPE", "SIZE", "LAST USED", "DESCRIPTION"], &rows);
    println!(
        "Removed {} record(s); snapshot usage {} -> {}",
        out.removed.len(),
        human(out.usage_before),
        human(out.usage_after)
    );
    if let Some(g) = &out.gc {
        print_gc(g);
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct LeaseOut {
    id: String,
    created: String,
    labels: BTreeMap<String, String>,
    resources: Vec<ResourceOut>,
}

#[derive(Debug, Serialize)]
struct ResourceOut {
    r#type: String,
    id: String,
}

fn lease_out(l: pb::Lease) -> LeaseOut {
    LeaseOut {
        created: ts(l.created_at.as_ref()),
        labels: l.labels.into_iter().collect(),
        resources: l
            .resources
            .into_iter()
            .map(|r| ResourceOut {
                r#type: r.r#type,
                id: r.id,
            })
            .collect(),
        id: l.id,
    }
}

/// Parses `--expire`: an RFC 3339 time, or a duration from now.
fn expiry(s: &str) -> anyhow::Result<std::time::SystemTime> {
    if let Ok(t) = lamina_core::cache::time::parse_rfc3339(s) {
        return Ok(t);
    }
    let d = parse_duration(s)
        .with_context(|| format!("--expire {s:?} is neither an RFC 3339 time nor a duration"))?;
    Ok(std::time::SystemTime::now() + d)
}

fn resources(args: &ResourceArgs) -> anyhow::Result<Vec<pb::LeaseResource>> {
    if args.snapshots.is_empty() && args.content.is_empty() {
        bail!("name at least one --snapshot KEY or --content DIGEST");
    }
    let snaps = args.snapshots.iter().map(|k| pb::LeaseResource {
        id: k.clone(),
        r#type: "snapshots".into(),
    });
    let blobs = args.content.iter().map(|d| pb::LeaseResource {
        id: d.clone(),
        r#type: "content".into(),
    });
    Ok(snaps.chain(blobs).collect())
}

/// Runs one `lamina lease` subcommand.
pub async fn lease(socket: &Path, output: Output, cmd: LeaseCommand) -> anyhow::Result<()> {
    let mut c = client(socket).await?;
    match cmd {
        LeaseCommand::Create { id, expire, labels } => {
            let expire_at = expire
                .as_deref()
                .map(expiry)
                .transpose()?
                .map(prost_types::Timestamp::from);
            let l = c
                .create_lease(pb::CreateLeaseRequest {
                    id: id.unwrap_or_default(),
                    labels: parse_labels(&labels)?,
                    expire_at,
                })
                .await?
                .into_inner();
            match output {
                Output::Json => print_json(&lease_out(l)),
                Output::Text => {
                    println!("{}", l.id);
                    Ok(())
                }
            }
        }
        LeaseCommand::Rm { ids, sync } => {
            let mut reports = Vec::new();
            for (i, id) in ids.iter().enumerate() {
                // One collection at the end is enough.
                let sync = sync && i + 1 == ids.len();
                let r = c
                    .delete_lease(pb::DeleteLeaseRequest {
                        id: id.clone(),
                        sync,
                    })
                    .await
                    .with_context(|| format!("deleting lease {id}"))?
                    .into_inner();
                reports.extend(r.gc.map(gc_out));
            }
            match output {
                Output::Json => print_json(&reports),
                Output::Text => {
                    reports.iter().for_each(print_gc);
                    Ok(())
                }
            }
        }
        LeaseCommand::Ls { filters } => {
            let leases: Vec<LeaseOut> = c
                .list_leases(pb::ListLeasesRequest { filters })
                .await?
                .into_inner()
                .leases
                .into_iter()
                .map(lease_out)
                .collect();
            match output {
                Output::Json => print_json(&leases),
                Output::Text => {
                    let rows: Vec<Vec<String>> = leases
                        .iter()
                        .map(|l| {
                            let expires = l
                                .labels
                                .get(lamina_core::cache::LABEL_GC_EXPIRE)
                                .cloned()
                                .unwrap_or_else(|| "never".into());
                            let labels = l
                                .labels
                                .iter()
                                .map(|(k, v)| format!("{k}={v}"))
                                .collect::<Vec<_>>()
                                .join(",");
                            vec![
                                l.id.clone(),
                                l.created.clone(),
                                expires,
                                l.resources.len().to_string(),
                                labels,
                            ]
                        })
                        .collect();
                    print_table(&["ID", "CREATED", "EXPIRES", "RESOURCES", "LABELS"], &rows);
                    Ok(())
                }
            }
        }
        LeaseCommand::Add(args) => {
            for resource in resources(&args)? {
                c.add_lease_resource(pb::LeaseResourceRequest {
                    lease: args.lease.clone(),
                    resource: Some(resource),
                })
                .await?;
            }
            Ok(())
        }
        LeaseCommand::RmResource(args) => {
            for resource in resources(&args)? {
                c.delete_lease_resource(pb::LeaseResourceRequest {
                    lease: args.lease.clone(),
                    resource: Some(resource),
                })
                .await?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_docker_keep_storage() {
        assert_eq!(parse_bytes("1024").unwrap(), 1024);
        assert_eq!(parse_bytes("512K").unwrap(), 512 << 10);
        assert_eq!(parse_bytes("10GB").unwrap(), 10 << 30);
        assert_eq!(parse_bytes("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("3 mb").unwrap(), 3 << 20);
        assert!(parse_bytes("ten").is_err());
        assert!(parse_bytes("5PB").is_err());
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 << 20), "3.0 MiB");
    }
}
