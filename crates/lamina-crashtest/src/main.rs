//! lamina-crashtest: proves that laminad loses nothing across crashes. Workers run a random
//! mix of operations (prepare, view, write, commit, remove, label updates, merge, pull,
//! image removal, garbage collection and prune) while laminad is killed with SIGKILL at a
//! random moment; after each restart every invariant is checked: each acknowledged
//! operation is there with the same contents, each cut-off one happened wholly or not at
//! all, every snapshot mounts, nothing is orphaned, and after Cleanup the snapshot
//! directories on disk are exactly the records. Runs as root (it mounts snapshots).

mod client;
mod daemon;
mod model;
mod ops;
mod tree;
mod verify;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::client::Client;
use crate::daemon::DaemonSpec;
use crate::model::{Model, Reference};
use crate::ops::Shared;
use crate::verify::Outcomes;

/// Random operations against laminad, kill -9 at random points, invariants after each restart.
#[derive(Debug, Parser)]
#[command(name = "lamina-crashtest", version, about)]
struct Cli {
    /// The laminad binary under test.
    #[arg(long)]
    laminad: PathBuf,
    /// An empty directory for laminad's root, socket, log and the harness' mount points.
    #[arg(long)]
    work: PathBuf,
    /// laminad's backend: overlayfs, native or block.
    #[arg(long, default_value = "overlayfs")]
    backend: String,
    /// How many times laminad is killed.
    #[arg(long, default_value_t = 500)]
    crash_points: u64,
    /// Concurrent workers.
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// Longest a round runs before the kill, in milliseconds (the kill time is uniform
    /// below it).
    #[arg(long, default_value_t = 400)]
    max_round_ms: u64,
    /// Seed of the operation mix and kill times (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// An image reference on a plain-HTTP loopback registry: adds pulls and image
    /// removals to the mix.
    #[arg(long)]
    pull: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if rustix::process::geteuid().as_raw() != 0 {
        bail!("lamina-crashtest must run as root: it mounts snapshots and runs laminad");
    }
    std::fs::create_dir_all(&cli.work)
        .with_context(|| format!("creating {}", cli.work.display()))?;
    let work = std::fs::canonicalize(&cli.work)?;
    if std::fs::read_dir(&work)?.next().is_some() {
        bail!(
            "{} is not empty: give an empty work directory",
            work.display()
        );
    }
    let seed = cli.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    println!(
        "lamina-crashtest: {} crash points, backend {}, {} workers, seed {seed}{}",
        cli.crash_points,
        cli.backend,
        cli.workers,
        cli.pull
            .as_deref()
            .map(|r| format!(", pulls of {r}"))
            .unwrap_or_default()
    );
    let spec = DaemonSpec {
        binary: cli.laminad.clone(),
        root: work.join("root"),
        socket: work.join("lamina.sock"),
        backend: cli.backend.clone(),
        log: work.join("laminad.log"),
    };
    let mnt = work.join("mnt");
    std::fs::create_dir_all(&mnt)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut daemon = spec.start()?;
    let mut client = Client::connect(rt.handle(), &spec.socket)?;

    let mut model = Model::default();
    if let Some(image) = &cli.pull {
        model.reference = Arc::new(reference(&client, image, &mnt)?);
        let chain: Vec<String> = model
            .reference
            .chain
            .iter()
            .map(|(c, _)| c.clone())
            .collect();
        for c in &chain {
            model.add_pulled(c);
        }
        model.images.insert(model.reference.image.clone(), chain);
    }
    let shared = Shared {
        model: Mutex::new(model),
        killed: AtomicBool::new(false),
        gate: RwLock::new(()),
        pulls: cli.pull.clone(),
        backend: cli.backend.clone(),
        acked: AtomicU64::new(0),
    };

    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut outcomes = Outcomes::new();
    let mut cut_off_rounds = 0u64;
    let mut trees_checked = 0usize;
    for round in 1..=cli.crash_points {
        shared.killed.store(false, Ordering::SeqCst);
        let kill_after = Duration::from_millis(rng.random_range(0..=cli.max_round_ms));
        std::thread::scope(|scope| {
            for w in 0..cli.workers {
                let (shared, client) = (&shared, &client);
                let wrng = StdRng::seed_from_u64(seed ^ (round << 16) ^ w as u64);
                let dir = ops::worker_mnt(&mnt, w);
                scope.spawn(move || ops::worker(shared, client, w, wrng, &dir));
            }
            std::thread::sleep(kill_after);
            shared.killed.store(true, Ordering::SeqCst);
            // Killed while the workers keep sending: whatever was in flight is cut off.
            let pid = daemon.pid();
            // SAFETY: kill(2) on our own child, not reaped yet (reaped by kill9 below).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        });
        daemon.kill9()?;
        let mut m = shared.model();
        if !m.pending.is_empty() {
            cut_off_rounds += 1;
        }
        daemon = spec.start()?;
        client = Client::connect(rt.handle(), &spec.socket)?;
        verify::resolve_pending(&mut m, &client, &mut outcomes);
        let checked = verify::verify(&mut m, &client, &spec.root, &mnt);
        trees_checked += checked.trees;
        verify::check_mounts(&mut m, &spec.root);
        verify::check_work_dir(
            &mut m,
            &work,
            &["root", "mnt", "lamina.sock", "laminad.log"],
        );
        if !m.violations.is_empty() {
            eprintln!(
                "round {round}: {} invariant violations (seed {seed}); laminad's root is kept at {}",
                m.violations.len(),
                spec.root.display()
            );
            drop(m);
            let _ = daemon.stop();
            bail!("invariant violations after crash point {round}");
        }
        if round % 25 == 0 || round == cli.crash_points {
            println!(
                "crash point {round}/{}: {} snapshots ({} dirs), {} images, {} operations acknowledged, {:.0} s",
                cli.crash_points,
                m.snaps.len(),
                checked.dirs,
                m.images.len(),
                shared.acked.load(Ordering::Relaxed),
                started.elapsed().as_secs_f64()
            );
        }
    }
    daemon.stop()?;
    println!("operations cut off by a kill, and how they ended (done / not done):");
    for (op, (done, not)) in &outcomes {
        println!("  {op:<13} {done:>5} / {not}");
    }
    println!(
        "{} crash points ({} cut at least one operation off), {} operations acknowledged, {} snapshot trees compared, 0 invariant violations, {:.0} s",
        cli.crash_points,
        cut_off_rounds,
        shared.acked.load(Ordering::Relaxed),
        trees_checked,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Pulls the image once, before any crash, and reads every layer's tree: what later
/// pulls must give again.
fn reference(client: &Client, image: &str, mnt: &std::path::Path) -> anyhow::Result<Reference> {
    let (name, chain) = client
        .pull(image)
        .map_err(|s| anyhow::anyhow!("first pull of {image}: {s:?}"))?;
    let target = mnt.join("reference");
    std::fs::create_dir_all(&target)?;
    let mut trees = Vec::new();
    for c in chain {
        let view = format!("crashtest-reference-{c}");
        let mounts = client
            .prepare(&view, &c, &Default::default(), true)
            .map_err(|s| anyhow::anyhow!("view of {c}: {s:?}"))?;
        lamina_core::sys::mount_all(&mounts, &target)?;
        let tree = tree::read_tree(&target);
        lamina_core::sys::unmount(&target)?;
        client
            .remove(&view)
            .map_err(|s| anyhow::anyhow!("removing {view}: {s:?}"))?;
        trees.push((c, Arc::new(tree?)));
    }
    Ok(Reference {
        image: name,
        chain: trees,
    })
}
