//! The daemon's life: open the store, bind the socket, serve until SIGTERM/SIGINT, then
//! stop accepting, let requests in flight finish and remove the socket.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use lamina_core::cache::CacheManager;
use lamina_core::{Snapshotter, StoreConfig};
use lamina_proto::lamina::v1::cache_server::CacheServer;
use lamina_proto::lamina::v1::images_server::ImagesServer;
use lamina_proto::lamina::v1::indexes_server::IndexesServer;
use lamina_proto::lamina::v1::layers_server::LayersServer;
use lamina_proto::lamina::v1::lazy_layers_server::LazyLayersServer;
use lamina_proto::lamina::v1::merges_server::MergesServer;
use lamina_proto::snapshots::snapshots_server::SnapshotsServer;
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_stream::wrappers::ReceiverStream;

use crate::cache::CacheService;
use crate::config::Config;
use crate::images::ImageService;
use crate::indexes::IndexService;
use crate::layers::LayerService;
use crate::lazy::service::LazyService;
use crate::merge::MergeService;
use crate::remote::RemoteFetcher;
use crate::service::SnapshotService;

/// Runs the daemon with `cfg` until it is told to stop.
pub fn run(cfg: Config) -> anyhow::Result<()> {
    // Nothing laminad creates (socket, lock, metadata) starts out readable by others;
    // snapshot directories get explicit modes.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    raise_open_file_limit();
    let backend = cfg.backend()?;
    let store = Snapshotter::open(StoreConfig {
        layer_limits: lamina_core::LayerLimits {
            max_uncompressed_bytes: cfg.max_layer_bytes,
            max_entries: cfg.max_layer_entries,
        },
        writable_quota: cfg.writable_quota()?,
        ..StoreConfig::new(cfg.root.clone(), backend)
    })
    .with_context(|| format!("opening store at {}", cfg.root.display()))?;
    let store = Arc::new(store);
    tracing::info!(root = %store.root().display(), %backend, "store open");
    // Containers may be reading lazy layers right now: every one is served again (or
    // still) before anything else happens.
    crate::lazy::servers::restore(&store, &cfg.log_level).context("serving lazy layers")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("laminad")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(cfg, store))
}

async fn serve(cfg: Config, store: Arc<Snapshotter>) -> anyhow::Result<()> {
    let hosts = lamina_registry::HostsConfig {
        dir: Some(cfg.registry_config_path.clone()).filter(|p| !p.as_os_str().is_empty()),
    };
    let cache = CacheManager::open(store.clone()).context("opening the cache manager")?;
    let lazy = (store.backend() == lamina_core::BackendKind::Overlayfs).then(|| cfg.lazy());
    let gc_gate = crate::cache::GcGate::default();
    let listener = bind(&cfg).await?;
    tracing::info!(socket = %cfg.socket.display(), "serving containerd.services.snapshots.v1.Snapshots");
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    };
    tracing::info!(
        max_concurrent_requests = cfg.max_concurrent_requests,
        max_concurrent_pulls = cfg.max_concurrent_pulls,
        unpack_parallelism = cfg.unpack_parallelism,
        max_layer_bytes = cfg.max_layer_bytes,
        max_layer_entries = cfg.max_layer_entries,
        "limits"
    );
    let result = tonic::transport::Server::builder()
        // Requests beyond the limit wait for a slot (over every connection): none fails.
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            cfg.max_concurrent_requests.max(1),
        ))
        .add_service(SnapshotsServer::new(SnapshotService::new(store.clone(), {
            let fetcher = RemoteFetcher::new(store.clone(), hosts.clone());
            Arc::new(match &lazy {
                Some(settings) => fetcher.with_lazy(settings.clone()),
                None => fetcher,
            })
        })))
        .add_service(LazyLayersServer::new(LazyService::new(store.clone())))
        .add_service(LayersServer::new(
            LayerService::new(store.clone()).with_gc_gate(gc_gate.clone()),
        ))
        .add_service(CacheServer::new(CacheService::new(cache, gc_gate.clone())))
        .add_service(IndexesServer::new(IndexService::new(
            store.clone(),
            hosts.clone(),
        )))
        .add_service(MergesServer::new(MergeService::new(
            store.clone(),
            gc_gate.clone(),
        )))
        .add_service(ImagesServer::new({
            let images = ImageService::new(store, cfg.unpack_parallelism.max(1), hosts)
                .with_gc_gate(gc_gate)
                .with_concurrent_pulls(cfg.max_concurrent_pulls);
            match lazy {
                Some(settings) => images.with_lazy(settings),
                None => images,
            }
        }))
        .serve_with_incoming_shutdown(accept_loop(listener), shutdown)
        .await;
    let _ = std::fs::remove_file(&cfg.socket);
    result.context("gRPC server")?;
    tracing::info!("stopped");
    Ok(())
}

/// Accepts connections for the gRPC server. An accept that fails (above all for want of
/// file descriptors, EMFILE/ENFILE) is logged and retried after a pause: handing the
/// error to the server would end it, and with it every request in flight. Ends when the
/// server stops taking connections.
fn accept_loop(listener: UnixListener) -> ReceiverStream<std::io::Result<tokio::net::UnixStream>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            let conn = tokio::select! {
                r = listener.accept() => r,
                () = tx.closed() => return,
            };
            match conn {
                Ok((stream, _)) => {
                    if std::mem::take(&mut failing) {
                        tracing::info!("accepting connections again");
                    }
                    if tx.send(Ok(stream)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    if !std::mem::replace(&mut failing, true) {
                        match e.raw_os_error() {
                            Some(libc::EMFILE | libc::ENFILE) => tracing::error!(
                                error = %e,
                                "cannot accept connections: out of file descriptors; \
                                 raise laminad's LimitNOFILE (retrying)"
                            ),
                            _ => tracing::error!(error = %e, "accepting a connection (retrying)"),
                        }
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Raises the soft limit on open files to the hard limit, as containerd does: every
/// layer unpacking at once, every blob download and every connection holds descriptors.
fn raise_open_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    let show = |v: Option<u64>| v.map_or("unlimited".to_string(), |n| n.to_string());
    if limit.current == limit.maximum {
        tracing::info!(soft = %show(limit.current), hard = %show(limit.maximum), "open file limit");
        return;
    }
    let raised = rustix::process::Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::info!(
            from = %show(limit.current),
            to = %show(limit.maximum),
            "raised the open file limit to its hard limit"
        ),
        Err(e) => tracing::warn!(
            soft = %show(limit.current),
            hard = %show(limit.maximum),
            error = %e,
            "could not raise the open file limit; raise LimitNOFILE if pulls fail with EMFILE"
        ),
    }
}

/// Refuses to serve from a socket directory anyone but root (or laminad's own user)
/// could write: whoever can write it can replace the socket with their own and receive
/// containerd's requests. A root-owned sticky directory (like /tmp) is accepted: there
/// nobody can remove or rename another user's socket.
pub fn check_socket_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::metadata(dir).with_context(|| format!("socket directory {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("socket directory {} is not a directory", dir.display());
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        bail!(
            "socket directory {} is owned by uid {}: refusing to serve from a directory \
             another user controls (it must be owned by root)",
            dir.display(),
            meta.uid()
        );
    }
    let sticky_root = meta.uid() == 0 && meta.mode() & 0o1000 != 0;
    if meta.mode() & 0o022 != 0 && !sticky_root {
        bail!(
            "socket directory {} has mode {:04o}: writable by group or others, who could \
             replace the socket; refusing to serve (chmod go-w it, or choose another socket path)",
            dir.display(),
            meta.mode() & 0o7777
        );
    }
    Ok(())
}

/// Creates the socket's directory (0711 if new) or checks an existing one
/// ([`check_socket_dir`]), refuses a socket another process is serving, replaces a stale
/// one, and applies the configured mode and group.
async fn bind(cfg: &Config) -> anyhow::Result<UnixListener> {
    let path = &cfg.socket;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating socket directory {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
                .with_context(|| format!("chmod {}", dir.display()))?;
        }
        check_socket_dir(dir)?;
    }
    if std::fs::symlink_metadata(path).is_ok() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            bail!(
                "socket {} is already served by another process",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    set_socket_access(path, cfg.socket_mode()?, cfg.socket_group)?;
    Ok(listener)
}

fn set_socket_access(path: &Path, mode: u32, group: Option<u32>) -> anyhow::Result<()> {
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid))
            .with_context(|| format!("chgrp {gid} {}", path.display()))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {:o} {}", mode, path.display()))
}
