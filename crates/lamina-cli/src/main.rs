//! lamina: the command-line client of laminad.

mod cache;
mod images;
mod index;
mod layer;
mod lazy;
mod merge;
mod snapshot;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Lamina's command-line client.
#[derive(Debug, Parser)]
#[command(name = "lamina", version, about)]
struct Cli {
    /// laminad's socket.
    #[arg(
        long,
        global = true,
        env = "LAMINA_SOCKET",
        default_value = "/run/lamina/lamina.sock"
    )]
    socket: PathBuf,
    /// Output format of listings and info.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned tables for people.
    Text,
    /// JSON for scripts.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Work with snapshots.
    #[command(subcommand, visible_alias = "snapshots")]
    Snapshot(snapshot::Command),
    /// Pull an image from its registry (every layer downloads and unpacks at once).
    Pull {
        /// Reference, e.g. 127.0.0.1:5000/app:1 or docker.io/library/busybox:latest.
        reference: String,
        /// Use http even for a registry that is not on loopback.
        #[arg(long)]
        plain_http: bool,
        /// Registry credentials, USER:PASSWORD.
        #[arg(long, env = "LAMINA_REGISTRY_USER")]
        user: Option<String>,
        #[command(flatten)]
        lazy: images::LazyFlags,
    },
    /// Import an image from an OCI layout directory or an image archive (OCI or docker save).
    Import {
        /// Layout directory or archive.
        path: PathBuf,
        /// Which image, when the source holds several; also names the result.
        #[arg(long)]
        name: Option<String>,
    },
    /// List or forget images.
    Images {
        #[command(subcommand)]
        command: Option<images::ImagesCommand>,
    },
    /// Prepare a writable snapshot on top of an image and mount it on DIR.
    Rootfs {
        /// Image name (see lamina images).
        image: String,
        /// Mount point.
        dir: PathBuf,
        /// Snapshot key (default: rootfs:<DIR>).
        #[arg(long)]
        key: Option<String>,
    },
    /// Print a tree's manifest (every entry's type, mode, owner, size, content hash, link
    /// target, xattrs, device, mtime, hard-link group), one line per entry, to compare
    /// two unpacks of one image with diff(1). Runs locally, without laminad.
    Manifest {
        /// Directory (e.g. a mounted rootfs).
        dir: PathBuf,
        /// Leave directory mtimes out.
        #[arg(long)]
        no_dir_mtimes: bool,
    },
    /// Ask a CRI runtime (e.g. containerd) to pull an image, as kubelet would: with a
    /// remote snapshotter such as Lamina configured, the runtime hands the layers over.
    CriPull {
        /// Image reference.
        reference: String,
        /// The CRI endpoint (containerd's socket).
        #[arg(long, default_value = "/run/containerd/containerd.sock")]
        endpoint: PathBuf,
    },
    /// Apply layer blobs into snapshots; export snapshots as layers.
    #[command(subcommand)]
    Layer(layer::Command),
    /// List the layers mounted lazily and how much of each is on disk.
    Lazy {
        /// What else to show about lazy layers.
        #[command(subcommand)]
        command: Option<lazy::Command>,
    },
    /// Build seekable layer indexes of an image and push them beside it (lazy loading).
    #[command(subcommand)]
    Index(index::Command),
    /// Merge snapshots: a committed snapshot made of the diffs applied in order, as if
    /// each were exported as a layer and unpacked (stacked on overlayfs when every diff is
    /// one layer over its parent, else a tree of hard links: no file data is copied).
    Merge(merge::MergeArgs),
    /// Make a committed snapshot holding only the changes from one snapshot to another.
    Diff(merge::DiffArgs),
    /// Write the changes from one snapshot to another as a layer blob.
    Export(merge::ExportArgs),
    /// Show disk usage: per snapshot the bytes only it holds and those it shares (hard
    /// links, each inode counted once), totals, and (verbose) the cache records.
    Du {
        /// Also list the cache records, as `buildctl du -v` does.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Remove cache records (like `buildctl prune`), then collect garbage.
    Prune(cache::PruneArgs),
    /// Delete expired leases and remove every snapshot and blob that nothing holds (no
    /// lease, gc.root label, image, cache record, or gc.ref label from any of those).
    Gc,
    /// Create, list and delete leases, and change what they hold.
    #[command(subcommand, visible_alias = "leases")]
    Lease(cache::LeaseCommand),
}

fn main() {
    // Like other Unix tools, end quietly when the reader of our output goes away
    // (`lamina images | head`) instead of panicking on a broken pipe.
    // SAFETY: called first thing in main, before any other thread exists; SIG_DFL is a
    // valid disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| {
            runtime.block_on(async move {
                match cli.command {
                    Command::Snapshot(cmd) => snapshot::run(&cli.socket, cli.output, cmd).await,
                    Command::Layer(cmd) => layer::run(&cli.socket, cli.output, cmd).await,
                    Command::Index(cmd) => index::run(&cli.socket, cli.output, cmd).await,
                    Command::Merge(args) => merge::merge(&cli.socket, cli.output, args).await,
                    Command::Diff(args) => merge::diff(&cli.socket, cli.output, args).await,
                    Command::Export(args) => merge::export(&cli.socket, cli.output, args).await,
                    Command::Du { verbose } => cache::du(&cli.socket, cli.output, verbose).await,
                    Command::Prune(args) => cache::prune(&cli.socket, cli.output, args).await,
                    Command::Gc => cache::gc(&cli.socket, cli.output).await,
                    Command::Lease(cmd) => cache::lease(&cli.socket, cli.output, cmd).await,
                    Command::CriPull {
                        reference,
                        endpoint,
                    } => images::cri_pull(&endpoint, &reference).await,
                    Command::Manifest { dir, no_dir_mtimes } => manifest(&dir, no_dir_mtimes),
                    Command::Pull {
                        reference,
                        plain_http,
                        user,
                        lazy,
                    } => {
                        images::pull(&cli.socket, cli.output, &reference, plain_http, user, lazy)
                            .await
                    }
                    Command::Lazy { command: None } => lazy::list(&cli.socket, cli.output).await,
                    Command::Lazy {
                        command: Some(lazy::Command::Accessed { image }),
                    } => lazy::accessed(&cli.socket, cli.output, &image).await,
                    Command::Import { path, name } => {
                        images::import(&cli.socket, cli.output, &path, name).await
                    }
                    Command::Images { command } => {
                        images::images(&cli.socket, cli.output, command).await
                    }
                    Command::Rootfs { image, dir, key } => {
                        images::rootfs(&cli.socket, cli.output, &image, &dir, key).await
                    }
                }
            })
        });
    if let Err(e) = result {
        eprintln!("lamina: {}", describe(&e));
        std::process::exit(1);
    }
}

fn manifest(dir: &std::path::Path, no_dir_mtimes: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let m = lamina_core::fsutil::tree_manifest(dir)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (path, mut f) in m {
        if no_dir_mtimes && f.kind == "dir" {
            f.mtime = (0, 0);
        }
        let xattrs: Vec<String> = f
            .xattrs
            .iter()
            .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v).escape_debug()))
            .collect();
        writeln!(
            out,
            "/{} {} {:o} {}:{} size={} sha256={} link={} rdev={} mtime={}.{:09} group={} xattrs=[{}]",
            path.display(),
            f.kind,
            f.mode,
            f.uid,
            f.gid,
            f.size,
            f.sha256.as_deref().unwrap_or("-"),
            f.link.as_ref().map_or("-".into(), |l| l.display().to_string()),
            f.rdev,
            f.mtime.0,
            f.mtime.1,
            f.link_group.as_ref().map_or("-".into(), |g| format!("/{}", g.display())),
            xattrs.join(",")
        )?;
    }
    Ok(())
}

/// One line for an error chain, with gRPC statuses shown as "message (Code)".
fn describe(e: &anyhow::Error) -> String {
    e.chain()
        .map(|cause| match cause.downcast_ref::<tonic::Status>() {
            Some(s) => format!("{} ({:?})", s.message(), s.code()),
            None => cause.to_string(),
        })
        .collect::<Vec<_>>()
        .join(": ")
}
