//! laminad: serves Lamina's snapshot store to containerd (as a proxy snapshotter plugin)
//! and to the `lamina` CLI over a unix socket.

mod bridge;
mod cache;
mod images;
mod indexes;
mod layers;
mod lazy;
mod merge;
mod pull;
mod remote;
mod server;
mod service;
mod status;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::Config;
pub(crate) use laminad::config;

/// Lamina's snapshotter daemon.
#[derive(Debug, Parser)]
#[command(name = "laminad", version, about)]
struct Cli {
    /// TOML config file (default: /etc/lamina/laminad.toml if it exists).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// State directory (default /var/lib/lamina).
    #[arg(long, global = true)]
    root: Option<PathBuf>,
    /// Unix socket to serve on (default /run/lamina/lamina.sock).
    #[arg(long, visible_alias = "address", global = true)]
    socket: Option<PathBuf>,
    /// Backend: overlayfs (default), native, or block (committed layers as EROFS images).
    #[arg(long, global = true)]
    backend: Option<String>,
    /// Log filter, e.g. info or debug.
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the [proxy_plugins.lamina] snippet for containerd's config.toml.
    ContainerdConfig {
        /// Plugin name containerd will know Lamina by.
        #[arg(long, default_value = "lamina")]
        name: String,
    },
    /// Serve one lazy layer (started by laminad itself; runs until the layer is unmounted).
    #[command(hide = true)]
    LazyServe {
        /// The layer's snapshot directory.
        dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut cfg = Config::load(cli.config.as_deref())?;
    if let Some(root) = cli.root {
        cfg.root = root;
    }
    if let Some(socket) = cli.socket {
        cfg.socket = socket;
    }
    if let Some(backend) = cli.backend {
        cfg.backend = backend;
    }
    if let Some(level) = cli.log_level {
        cfg.log_level = level;
    }
    cfg.backend().context("--backend")?;
    match cli.command {
        Some(Command::ContainerdConfig { name }) => {
            print!(
                "[proxy_plugins]\n  [proxy_plugins.{name}]\n    type = \"snapshot\"\n    address = \"{}\"\n",
                cfg.socket.display()
            );
            Ok(())
        }
        Some(Command::LazyServe { dir }) => {
            init_logging(&cfg.log_level)?;
            lazy::serve::run(&dir)
        }
        None => {
            init_logging(&cfg.log_level)?;
            server::run(cfg)
        }
    }
}

/// Logs to stderr at `level` (a tracing filter).
fn init_logging(level: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .with_context(|| format!("log level {level:?}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    Ok(())
}
