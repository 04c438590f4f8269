//! lamina-loadtest: N concurrent gRPC clients run a seeded random mix of snapshot, lease,
//! merge and cache operations against a running laminad for a bounded time, over a key
//! space they share so that they really contend. Every error is classified: NotFound,
//! AlreadyExists and FailedPrecondition are expected only where the race makes them the
//! correct answer; anything else, and any success with a wrong answer, is unexpected and
//! printed. At the end: a table per operation (count, expected and unexpected errors,
//! p50/p99/max latency), overall calls/s, and laminad's resident memory and open fds
//! (start, peak, end) sampled once a second. The run then removes everything it made and
//! checks that laminad's fds come back to where they started (no leak).
//!
//! Exit code 0 only with zero unexpected errors, peak RSS within `--max-rss-mib` and the
//! fds back within `--fd-slack`. Latencies are reported, never judged.

mod procmon;
mod stats;
mod workload;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use lamina_proto::lamina::v1 as lpb;
use lamina_proto::lamina::v1::cache_client::CacheClient;
use lamina_proto::snapshots as pb;
use lamina_proto::snapshots::snapshots_client::SnapshotsClient;
use tonic::transport::Channel;
use tonic::Code;

use procmon::Range;
use stats::{percentile, Stats};
use workload::{Client, Workload, LABEL_LOADTEST};

/// Command-line flags.
#[derive(Parser, Debug)]
#[command(
    name = "lamina-loadtest",
    about = "Load test of a running laminad: concurrent clients, mixed operations, error classification, latency, memory and fd bounds"
)]
struct Args {
    /// laminad's socket.
    #[arg(long, default_value = "/run/lamina/lamina.sock")]
    socket: PathBuf,
    /// Concurrent clients, each on its own connection.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// How long the clients run, in seconds.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Seed of the operation mix (each client derives its own generator from it).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Keys per kind in the shared key space (default: twice the clients).
    #[arg(long)]
    keys: Option<u64>,
    /// Per mille of operations that mount an active snapshot and write files into it
    /// before committing (needs root).
    #[arg(long, default_value_t = 20)]
    write_permille: u32,
    /// Directory for the clients' mount points (default: a temporary directory).
    #[arg(long)]
    mount_dir: Option<PathBuf>,
    /// laminad's pid (default: the peer of a connection to the socket).
    #[arg(long)]
    daemon_pid: Option<u32>,
    /// Fail when laminad's peak VmRSS exceeds this many MiB.
    #[arg(long, default_value_t = 512)]
    max_rss_mib: u64,
    /// Fail when laminad has more than this many fds more at the end than at the start.
    #[arg(long, default_value_t = 8)]
    fd_slack: u64,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.clients > 0, "--clients must be at least 1");
    anyhow::ensure!(args.duration > 0, "--duration must be at least 1 second");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let passed = rt.block_on(run(args))?;
    std::process::exit(if passed { 0 } else { 1 });
}

/// laminad's pid, as the kernel reports the peer of a connection to its socket.
async fn peer_pid(socket: &Path) -> anyhow::Result<u32> {
    let s = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| format!("connect {}", socket.display()))?;
    let cred = s.peer_cred().context("SO_PEERCRED")?;
    let pid = cred
        .pid()
        .context("the kernel did not report the socket peer's pid")?;
    u32::try_from(pid).context("peer pid")
}

async fn connect(socket: &Path) -> anyhow::Result<Channel> {
    lamina_proto::connect_unix(socket)
        .await
        .with_context(|| format!("connect to laminad at {}", socket.display()))
}

/// Everything the monitor saw.
#[derive(Default, Clone, Copy)]
struct Watch {
    rss: Range,
    fds: Range,
    samples: u64,
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let pid = match args.daemon_pid {
        Some(p) => p,
        None => peer_pid(&args.socket).await?,
    };
    let control = connect(&args.socket).await?;
    let first = procmon::sample(pid)?;
    let watch = Arc::new(std::sync::Mutex::new(Watch {
        rss: Range::new(first.rss_kib),
        fds: Range::new(first.fds),
        samples: 1,
    }));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (watch, sampling) = (watch.clone(), sampling.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                match procmon::sample(pid) {
                    Ok(s) => {
                        let mut w = watch.lock().unwrap_or_else(|p| p.into_inner());
                        w.rss.push(s.rss_kib);
                        w.fds.push(s.fds);
                        w.samples += 1;
                    }
                    Err(e) => {
                        eprintln!("lamina-loadtest: sampling laminad (pid {pid}): {e:#}");
                        return Err(e);
                    }
                }
            }
            Ok(())
        })
    };

    let tmp;
    let mount_dir = match &args.mount_dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new()
                .prefix("lamina-loadtest-")
                .tempdir()
                .context("temporary mount directory")?;
            tmp.path().to_path_buf()
        }
    };
    let work = Arc::new(Workload {
        keys: args.keys.unwrap_or(2 * args.clients as u64).max(1),
        leases: (args.clients as u64 / 4).max(2),
        write_permille: args.write_permille,
        mount_dir,
        hot: std::sync::Mutex::new(Vec::new()),
    });
    let mut clients = Vec::with_capacity(args.clients);
    for id in 0..args.clients {
        let ch = connect(&args.socket).await?;
        clients.push(Client::new(id, args.seed, ch, work.clone()));
    }
    println!(
        "lamina-loadtest: {} clients for {} s against laminad pid {pid} ({}), seed {}, {} keys per kind",
        args.clients,
        args.duration,
        args.socket.display(),
        args.seed,
        work.keys
    );
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration);
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|c| tokio::spawn(c.run(deadline)))
        .collect();
    let mut all = Stats::default();
    let mut calls = 0u64;
    let mut panicked = 0;
    for t in tasks {
        match t.await {
            Ok(c) => {
                calls += c.calls;
                all.merge(c.stats);
            }
            Err(e) => {
                panicked += 1;
                all.wrong("client task", format!("{e}"));
            }
        }
    }
    let elapsed = started.elapsed();
    // The clients' connections closed with them; remove what the run made.
    let leftover = tear_down(&control, &mut all).await;
    let fds_start = first.fds;
    // Closing connections is asynchronous on the server side: give it a moment. This is
    // a wait for a figure to settle, not a bound: the check is on the count.
    let settle = Instant::now();
    let mut end = procmon::sample(pid)?;
    while end.fds > fds_start + args.fd_slack && settle.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        end = procmon::sample(pid)?;
    }
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let sampler_result = sampler.await;
    let w = {
        let mut w = *watch.lock().unwrap_or_else(|p| p.into_inner());
        w.rss.push(end.rss_kib);
        w.fds.push(end.fds);
        w.samples += 1;
        w
    };
    let alive = matches!(sampler_result, Ok(Ok(())));

    // --- report ----------------------------------------------------------------------
    println!();
    println!(
        "{:<30} {:>9} {:>9} {:>10} {:>9} {:>9} {:>9}  expected errors",
        "operation", "count", "expected", "unexpected", "p50 ms", "p99 ms", "max ms"
    );
    let mut json_ops = serde_json::Map::new();
    for (op, s) in all.ops.iter_mut() {
        s.latencies_us.sort_unstable();
        let v = &s.latencies_us;
        let (p50, p99, max) = (
            percentile(v, 50.0),
            percentile(v, 99.0),
            v.last().copied().unwrap_or(0),
        );
        let codes: Vec<String> = s
            .expected_codes
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect();
        println!(
            "{:<30} {:>9} {:>9} {:>10} {:>9.3} {:>9.3} {:>9.3}  {}",
            op,
            v.len(),
            s.expected,
            s.unexpected,
            ms(p50),
            ms(p99),
            ms(max),
            codes.join(", ")
        );
        json_ops.insert(
            op.to_string(),
            serde_json::json!({
                "count": v.len(), "expected_errors": s.expected, "unexpected_errors": s.unexpected,
                "expected_codes": s.expected_codes, "p50_ms": ms(p50), "p99_ms": ms(p99), "max_ms": ms(max),
            }),
        );
    }
    let per_s = calls as f64 / elapsed.as_secs_f64();
    println!();
    println!(
        "{calls} calls in {:.1} s: {per_s:.0} calls/s over {} clients",
        elapsed.as_secs_f64(),
        args.clients
    );
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "laminad VmRSS: start {:.1} MiB, peak {:.1} MiB, end {:.1} MiB ({} samples; bound {} MiB)",
        mib(w.rss.start),
        mib(w.rss.peak),
        mib(w.rss.end),
        w.samples,
        args.max_rss_mib
    );
    println!(
        "laminad open fds: start {}, peak {}, end {} (after the clients closed and the run's snapshots and leases were removed; slack {})",
        w.fds.start, w.fds.peak, w.fds.end, args.fd_slack
    );

    let mut failures = Vec::new();
    if all.unexpected_total > 0 {
        println!();
        println!("unexpected errors ({}):", all.unexpected_total);
        for m in &all.messages {
            println!("  {m}");
        }
        if all.unexpected_total > all.messages.len() as u64 {
            println!(
                "  ... and {} more",
                all.unexpected_total - all.messages.len() as u64
            );
        }
        failures.push(format!("{} unexpected errors", all.unexpected_total));
    }
    if panicked > 0 {
        failures.push(format!("{panicked} client tasks panicked"));
    }
    if !alive {
        failures.push("laminad could not be sampled to the end (did it exit?)".into());
    }
    if w.rss.peak > args.max_rss_mib * 1024 {
        failures.push(format!(
            "laminad's peak VmRSS {:.1} MiB exceeds {} MiB",
            mib(w.rss.peak),
            args.max_rss_mib
        ));
    }
    if w.fds.end > w.fds.start + args.fd_slack {
        failures.push(format!(
            "laminad holds {} fds after the run, {} at its start (slack {}): a leak",
            w.fds.end, w.fds.start, args.fd_slack
        ));
    }
    if leftover > 0 {
        failures.push(format!(
            "{leftover} snapshots of the run could not be removed"
        ));
    }
    let passed = failures.is_empty();
    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "clients": args.clients, "duration_s": elapsed.as_secs_f64(), "seed": args.seed,
            "keys_per_kind": work.keys, "calls": calls, "calls_per_s": per_s,
            "ops": json_ops,
            "rss_kib": {"start": w.rss.start, "peak": w.rss.peak, "end": w.rss.end},
            "fds": {"start": w.fds.start, "peak": w.fds.peak, "end": w.fds.end},
            "unexpected_errors": all.unexpected_total, "unexpected_messages": all.messages,
            "failures": failures, "passed": passed,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("write {}", path.display()))?;
    }
    println!();
    if passed {
        println!("result: passed (no unexpected errors; memory and fds bounded)");
    } else {
        println!("result: failed: {}", failures.join("; "));
    }
    Ok(passed)
}

fn ms(us: u32) -> f64 {
    f64::from(us) / 1000.0
}

/// Removes every snapshot and lease the run made (dependants first), then runs Cleanup.
/// Errors here count as unexpected; returns how many snapshots remain.
async fn tear_down(channel: &Channel, all: &mut Stats) -> usize {
    let mut snaps = SnapshotsClient::new(channel.clone());
    let mut cache = CacheClient::new(channel.clone());
    let op = "teardown (untimed)";
    match cache
        .list_leases(lpb::ListLeasesRequest {
            filters: vec![format!("labels.\"{LABEL_LOADTEST}\"")],
        })
        .await
    {
        Ok(r) => {
            for l in r.into_inner().leases {
                let r = cache
                    .delete_lease(lpb::DeleteLeaseRequest {
                        id: l.id.clone(),
                        sync: false,
                    })
                    .await;
                all.record(op, Duration::ZERO, r, &[]);
            }
        }
        Err(e) => all.wrong(op, format!("ListLeases: {e}")),
    }
    let mut left = usize::MAX;
    loop {
        let infos = match list_all(&mut snaps).await {
            Ok(v) => v,
            Err(e) => {
                all.wrong(op, format!("List: {e}"));
                return left;
            }
        };
        if infos.is_empty() || infos.len() >= left {
            left = infos.len();
            break;
        }
        left = infos.len();
        for i in infos {
            let r = snaps
                .remove(pb::RemoveSnapshotRequest {
                    snapshotter: String::new(),
                    key: i.name.clone(),
                })
                .await;
            // Something still built on it: it goes in a later round.
            all.record(op, Duration::ZERO, r, &[Code::FailedPrecondition]);
        }
    }
    if left > 0 {
        all.wrong(op, format!("{left} snapshots could not be removed"));
    }
    let r = snaps
        .cleanup(pb::CleanupRequest {
            snapshotter: String::new(),
        })
        .await;
    all.record(op, Duration::ZERO, r, &[]);
    left
}

async fn list_all(snaps: &mut SnapshotsClient<Channel>) -> Result<Vec<pb::Info>, tonic::Status> {
    let mut s = snaps
        .list(pb::ListSnapshotsRequest {
            snapshotter: String::new(),
            filters: vec![format!("labels.\"{LABEL_LOADTEST}\"")],
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.message().await? {
        out.extend(m.info);
    }
    Ok(out)
}
