//! `lamina import`, `lamina images`, `lamina rootfs`: images into snapshots and onto disk.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use clap::Subcommand;
use lamina_proto::lamina::v1 as pb;
use lamina_proto::lamina::v1::images_client::ImagesClient;
use lamina_proto::snapshots as spb;
use lamina_proto::snapshots::snapshots_client::SnapshotsClient;
use serde::Serialize;

use crate::Output;

/// Image subcommands (`lamina images ...`).
#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// List images.
    #[command(visible_alias = "list")]
    Ls,
    /// Forget an image (its layer snapshots stay until removed).
    Rm {
        /// Image name.
        name: String,
    },
}

#[derive(Debug, Serialize)]
struct ImageOut {
    name: String,
    manifest: String,
    config: String,
    layers: Vec<LayerOut>,
    chain_ids: Vec<String>,
    /// Layers a pull mounted lazily.
    lazy: Vec<String>,
}

#[derive(Debug, Serialize)]
struct LayerOut {
    digest: String,
    diff_id: String,
    size: i64,
    media_type: String,
}

fn image_out(i: pb::Image) -> ImageOut {
    ImageOut {
        name: i.name,
        manifest: i.manifest,
        config: i.config,
        layers: i
            .layers
            .into_iter()
            .map(|l| LayerOut {
                digest: l.digest,
                diff_id: l.diff_id,
                size: l.size,
                media_type: l.media_type,
            })
            .collect(),
        chain_ids: i.chain_ids,
        lazy: i.lazy,
    }
}

/// How a pull treats layers whose seekable indexes are in the registry.
#[derive(Debug, Clone, clap::Args)]
pub struct LazyFlags {
    /// Mount indexed layers lazily (read from the registry on demand), whatever laminad's
    /// lazy_pull setting says.
    #[arg(long, conflicts_with = "no_lazy")]
    lazy: bool,
    /// Download and unpack every layer.
    #[arg(long)]
    no_lazy: bool,
    /// Unpack layers smaller than this many bytes even when indexed.
    #[arg(long, value_name = "BYTES")]
    lazy_min_size: Option<u64>,
    /// A path in the image whose bytes lazy layers fetch first, right after mounting; a
    /// directory means every file below it (repeatable).
    #[arg(long, value_name = "PATH")]
    prefetch: Vec<String>,
    /// A file listing such paths, one per line, first needed first (blank lines and lines
    /// starting with '#' ignored): what a container read as it started, for example.
    #[arg(long, value_name = "FILE")]
    prefetch_file: Option<std::path::PathBuf>,
}

impl LazyFlags {
    /// The prefetch paths of `--prefetch`, then those of `--prefetch-file`.
    fn prefetch_paths(&self) -> anyhow::Result<Vec<String>> {
        let mut paths = self.prefetch.clone();
        if let Some(file) = &self.prefetch_file {
            paths.extend(read_prefetch_list(file)?);
        }
        Ok(paths)
    }
}

/// The paths of prefetch list `file`: one per line, blank lines and '#' comments skipped.
pub fn read_prefetch_list(file: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading the prefetch list {}", file.display()))?;
    Ok(lamina_core::lazy::prefetch_list_paths(&text)
        .map(str::to_owned)
        .collect())
}

async fn images_client(socket: &Path) -> anyhow::Result<ImagesClient<tonic::transport::Channel>> {
    let channel = lamina_proto::connect_unix(socket)
        .await
        .with_context(|| format!("connecting to laminad at {}", socket.display()))?;
    Ok(ImagesClient::new(channel))
}

fn print_images(output: Output, images: Vec<pb::Image>) -> anyhow::Result<()> {
    let images: Vec<ImageOut> = images.into_iter().map(image_out).collect();
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&images)?),
        Output::Text => {
            println!(
                "{:<50}  {:>6}  {:>12}  TOP SNAPSHOT",
                "NAME", "LAYERS", "SIZE"
            );
            for i in images {
                let size: i64 = i.layers.iter().map(|l| l.size).sum();
                let top = i.chain_ids.last().cloned().unwrap_or_default();
                println!(
                    "{:<50}  {:>6}  {:>12}  {}",
                    i.name,
                    i.layers.len(),
                    size,
                    top
                );
            }
        }
    }
    Ok(())
}

/// `lamina import PATH [--name N]`.
pub async fn import(
    socket: &Path,
    output: Output,
    path: &Path,
    name: Option<String>,
) -> anyhow::Result<()> {
    let abs =
        std::fs::canonicalize(path).with_context(|| format!("resolving {}", path.display()))?;
    let mut c = images_client(socket).await?;
    let started = std::time::Instant::now();
    let image = c
        .import(pb::ImportRequest {
            path: abs.to_string_lossy().into_owned(),
            name: name.unwrap_or_default(),
        })
        .await?
        .into_inner();
    if output == Output::Text {
        eprintln!(
            "imported {} ({} layers) in {:.2}s",
            image.name,
            image.layers.len(),
            started.elapsed().as_secs_f64()
        );
    }
    print_images(output, vec![image])
}

/// `lamina pull REF`.
pub async fn pull(
    socket: &Path,
    output: Output,
    reference: &str,
    plain_http: bool,
    user: Option<String>,
    lazy: LazyFlags,
) -> anyhow::Result<()> {
    let (username, password) = split_user(user)?;
    let mut c = images_client(socket).await?;
    let started = std::time::Instant::now();
    let mut stream = c
        .pull(pb::PullRequest {
            reference: reference.to_owned(),
            plain_http,
            username,
            password,
            lazy: (lazy.lazy || lazy.no_lazy).then_some(lazy.lazy),
            lazy_min_size: lazy.lazy_min_size,
            prefetch: lazy.prefetch_paths()?,
        })
        .await?
        .into_inner();
    let mut show = PullDisplay::new(
        output == Output::Text && std::io::IsTerminal::is_terminal(&std::io::stderr()),
    );
    let mut image = None;
    while let Some(msg) = stream.message().await? {
        if !msg.layers.is_empty() {
            show.layers(&msg.layers);
        }
        if !msg.digest.is_empty() {
            show.bytes(&msg.digest, msg.bytes as u64);
        }
        if msg.image.is_some() {
            image = msg.image;
        }
    }
    show.finish();
    let image = image.ok_or_else(|| anyhow!("laminad ended the pull without its result"))?;
    if output == Output::Text {
        let bytes: i64 = image.layers.iter().map(|l| l.size).sum();
        eprintln!(
            "pulled {} ({} layers, {:.1} MB{}) in {:.2}s",
            image.name,
            image.layers.len(),
            bytes as f64 / 1e6,
            match image.lazy.len() {
                0 => String::new(),
                n => format!(", {n} mounted lazily"),
            },
            started.elapsed().as_secs_f64()
        );
    }
    print_images(output, vec![image])
}

/// `lamina images ...`.
pub async fn images(
    socket: &Path,
    output: Output,
    cmd: Option<ImagesCommand>,
) -> anyhow::Result<()> {
    let mut c = images_client(socket).await?;
    match cmd.unwrap_or(ImagesCommand::Ls) {
        ImagesCommand::Ls => {
            let images = c.list(pb::ListImagesRequest {}).await?.into_inner().images;
            print_images(output, images)
        }
        ImagesCommand::Rm { name } => {
            c.remove(pb::RemoveImageRequest { name }).await?;
            Ok(())
        }
    }
}

/// `lamina rootfs REF DIR`: a writable snapshot on top of image REF, mounted on DIR.
pub async fn rootfs(
    socket: &Path,
    output: Output,
    image: &str,
    dir: &Path,
    key: Option<String>,
) -> anyhow::Result<()> {
    let mut c = images_client(socket).await?;
    let images = c.list(pb::ListImagesRequest {}).await?.into_inner().images;
    let found = images
        .into_iter()
        .find(|i| i.name == image)
        .ok_or_else(|| anyhow!("no image named {image:?} (see lamina images)"))?;
    let top = found
        .chain_ids
        .last()
        .cloned()
        .ok_or_else(|| anyhow!("image {image:?} has no layers"))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let abs: PathBuf = std::fs::canonicalize(dir)?;
    let key = key.unwrap_or_else(|| format!("rootfs:{}", abs.display()));
    let channel = lamina_proto::connect_unix(socket).await?;
    let mut s = SnapshotsClient::new(channel);
    let mut labels = std::collections::HashMap::new();
    labels.insert("lamina.io/rootfs.image".to_string(), image.to_string());
    let mounts = s
        .prepare(spb::PrepareSnapshotRequest {
            snapshotter: String::new(),
            key: key.clone(),
            parent: top,
            labels,
        })
        .await
        .with_context(|| format!("preparing snapshot {key}"))?
        .into_inner()
        .mounts;
    let core = lamina_proto::core_mounts(&mounts);
    lamina_core::sys::mount_all(&core, &abs)
        .with_context(|| format!("mounting on {}", abs.display()))?;
    match output {
        Output::Json => println!("{}", serde_json::json!({"key": key, "target": abs})),
        Output::Text => println!("{} mounted on {} (snapshot {key})", image, abs.display()),
    }
    Ok(())
}

/// `lamina cri-pull REF`: CRI ImageService.PullImage on `endpoint`.
pub async fn cri_pull(endpoint: &Path, reference: &str) -> anyhow::Result<()> {
    use lamina_proto::runtime::v1 as cri;
    let channel = lamina_proto::connect_unix(endpoint)
        .await
        .with_context(|| format!("connecting to the CRI endpoint {}", endpoint.display()))?;
    let mut c = cri::image_service_client::ImageServiceClient::new(channel);
    let started = std::time::Instant::now();
    let r = c
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: reference.to_owned(),
                annotations: Default::default(),
            }),
        })
        .await?
        .into_inner();
    eprintln!(
        "pulled {reference} through CRI in {:.2}s",
        started.elapsed().as_secs_f64()
    );
    println!("{}", r.image_ref);
    Ok(())
}

/// Pull progress: bars per layer and in total on a terminal, a line per finished layer
/// otherwise.
struct PullDisplay {
    bars: Option<(indicatif::MultiProgress, indicatif::ProgressBar)>,
    layers: std::collections::HashMap<String, (u64, u64, Option<indicatif::ProgressBar>)>,
    enabled: bool,
    terminal: bool,
}

impl PullDisplay {
    fn new(terminal: bool) -> Self {
        PullDisplay {
            bars: None,
            layers: Default::default(),
            enabled: true,
            terminal,
        }
    }

    fn short(digest: &str) -> &str {
        let hex = digest.trim_start_matches("sha256:");
        &hex[..hex.len().min(12)]
    }

    fn layers(&mut self, layers: &[pb::Layer]) {
        if !self.enabled {
            return;
        }
        let total: u64 = layers.iter().map(|l| l.size.max(0) as u64).sum();
        if self.terminal {
            let multi = indicatif::MultiProgress::new();
            let style = indicatif::ProgressStyle::with_template(
                "{prefix:>14} [{bar:30}] {bytes:>10}/{total_bytes:<10} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ");
            let all = multi.add(indicatif::ProgressBar::new(total));
            all.set_style(style.clone());
            all.set_prefix("total");
            for l in layers {
                let bar =
                    multi.insert_before(&all, indicatif::ProgressBar::new(l.size.max(0) as u64));
                bar.set_style(style.clone());
                bar.set_prefix(Self::short(&l.digest).to_string());
                self.layers
                    .insert(l.digest.clone(), (l.size.max(0) as u64, 0, Some(bar)));
            }
            self.bars = Some((multi, all));
        } else {
            eprintln!(
                "{} layers, {:.1} MB to fetch; each layer unpacks as it arrives",
                layers.len(),
                total as f64 / 1e6
            );
            for l in layers {
                self.layers
                    .insert(l.digest.clone(), (l.size.max(0) as u64, 0, None));
            }
        }
    }

    fn bytes(&mut self, digest: &str, bytes: u64) {
        if !self.enabled {
            return;
        }
        let Some((size, done, bar)) = self.layers.get_mut(digest) else {
            return;
        };
        let delta = bytes.saturating_sub(*done);
        *done = bytes;
        match (bar, &self.bars) {
            (Some(bar), Some((_, all))) => {
                bar.set_position(bytes);
                all.inc(delta);
                if bytes >= *size {
                    bar.finish_with_message("done");
                }
            }
            _ if bytes >= *size => eprintln!(
                "layer {}: {:.1} MB received, unpacked as it came",
                Self::short(digest),
                *size as f64 / 1e6
            ),
            _ => {}
        }
    }

    fn finish(&mut self) {
        if let Some((_, all)) = &self.bars {
            all.finish_with_message("committed");
        }
        self.enabled = false;
    }
}

/// `--user USER:PASSWORD` as its two parts (empty when not given).
pub(crate) fn split_user(user: Option<String>) -> anyhow::Result<(String, String)> {
    Ok(match user {
        Some(u) => {
            let (n, p) = u
                .split_once(':')
                .ok_or_else(|| anyhow!("--user takes USER:PASSWORD"))?;
            (n.to_owned(), p.to_owned())
        }
        None => (String::new(), String::new()),
    })
}
