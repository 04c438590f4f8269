//! Images from an OCI image-layout directory or an image archive (OCI layout or
//! `docker save` tar): blobs into the content store, verified; layers unpacked side by
//! side into the committed chain; the image recorded by name.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};
use serde::{Deserialize, Serialize};

use crate::content::ContentStore;
use crate::error::{Error, IoContext, Result};
use crate::layer::Digest;
use crate::model::Labels;
use crate::snapshotter::{LayerSource, Snapshotter};

/// The most bytes an index, manifest or config JSON may have.
const MAX_JSON: u64 = 4 << 20;

/// An image Lamina has unpacked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Its reference, e.g. `docker.io/library/busybox:latest`.
    pub name: String,
    /// Digest of its manifest.
    pub manifest: String,
    /// Digest of its config.
    pub config: String,
    /// Layers, bottom first.
    pub layers: Vec<LayerRecord>,
    /// Chain IDs, bottom first; the last names the snapshot a rootfs is prepared on.
    pub chain_ids: Vec<String>,
}

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Blob digest.
    pub digest: String,
    /// Uncompressed digest.
    pub diff_id: String,
    /// Blob size.
    pub size: u64,
    /// Media type as given by the manifest.
    pub media_type: String,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

fn digest_of(d: &Descriptor) -> Result<Digest> {
    let s = d.digest().to_string();
    Digest::parse(&s).ok_or_else(|| invalid(format!("unsupported digest {s:?} (only sha256)")))
}

/// Refuses layer media types Lamina cannot unpack (encrypted, unknown), with a clear error.
pub fn check_layer_media_type(mt: &str) -> Result<()> {
    const OK: [&str; 8] = [
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.docker.image.rootfs.diff.tar",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    ];
    if OK.contains(&mt) || mt == "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" {
        Ok(())
    } else {
        Err(invalid(format!("unsupported layer media type {mt:?}")))
    }
}

/// The platform this host runs, in OCI's names.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

fn is_index(desc: &Descriptor) -> bool {
    let mt = desc.media_type().to_string();
    mt.contains("image.index") || mt.contains("manifest.list")
}

/// The entry of an index for linux on this host's architecture (or its only entry).
fn choose_platform<'a>(index: &'a ImageIndex, digest: &Digest) -> Result<&'a Descriptor> {
    let all = index.manifests();
    all.iter()
        .find(|m| {
            m.platform().as_ref().is_some_and(|p| {
                p.os().to_string() == "linux" && p.architecture().to_string() == host_arch()
            })
        })
        .or_else(|| (all.len() == 1).then(|| &all[0]))
        .ok_or_else(|| {
            invalid(format!(
                "index {digest} has no manifest for linux/{}",
                host_arch()
            ))
        })
}

/// Reads JSON blob `digest` from the content store, within the size limit.
fn read_json(content: &ContentStore, digest: &Digest) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    content
        .open_blob(digest)?
        .take(MAX_JSON + 1)
        .read_to_end(&mut buf)
        .ctx("read", &content.path(digest))?;
    if buf.len() as u64 > MAX_JSON {
        return Err(invalid(format!("{digest} is larger than {MAX_JSON} bytes")));
    }
    Ok(buf)
}

/// Follows an index (or manifest list) to the manifest for this host's platform.
fn pick_manifest(
    content: &ContentStore,
    desc: &Descriptor,
    depth: usize,
) -> Result<(Digest, ImageManifest)> {
    if depth > 4 {
        return Err(invalid("image indexes nested too deeply"));
    }
    let digest = digest_of(desc)?;
    let bytes = read_json(content, &digest)?;
    if is_index(desc) {
        let index = ImageIndex::from_reader(&bytes[..])
            .map_err(|e| invalid(format!("index {digest}: {e}")))?;
        let chosen = choose_platform(&index, &digest)?;
        return pick_manifest(content, chosen, depth + 1);
    }
    let manifest = ImageManifest::from_reader(&bytes[..])
        .map_err(|e| invalid(format!("manifest {digest}: {e}")))?;
    Ok((digest, manifest))
}

/// Unpacks the image whose top descriptor is `top` (blobs already in the content store)
/// and records it as `name`.
fn unpack(
    store: &Snapshotter,
    content: &ContentStore,
    name: &str,
    top: &Descriptor,
    parallelism: usize,
) -> Result<ImageRecord> {
    let (manifest_digest, manifest) = pick_manifest(content, top, 0)?;
    let config_digest = digest_of(manifest.config())?;
    let config = ImageConfiguration::from_reader(&read_json(content, &config_digest)?[..])
        .map_err(|e| invalid(format!("config {config_digest}: {e}")))?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(invalid(format!(
            "manifest {manifest_digest} has {} layers but its config lists {} diffIDs",
            manifest.layers().len(),
            diff_ids.len()
        )));
    }
    let mut layers = Vec::new();
    for (desc, diff_id) in manifest.layers().iter().zip(diff_ids) {
        let media_type = desc.media_type().to_string();
        check_layer_media_type(&media_type)?;
        layers.push(LayerRecord {
            digest: digest_of(desc)?.to_string(),
            diff_id: diff_id.clone(),
            size: desc.size(),
            media_type,
        });
    }
    unpack_and_record(
        store,
        name,
        manifest_digest.as_str(),
        config_digest.as_str(),
        layers,
        parallelism,
    )
}

/// Unpacks `layers` (bottom first, their blobs already in the content store) into the
/// committed chain, records the image as `name`, and returns its record.
pub fn unpack_and_record(
    store: &Snapshotter,
    name: &str,
    manifest: &str,
    config: &str,
    layers: Vec<LayerRecord>,
    parallelism: usize,
) -> Result<ImageRecord> {
    let ready = || Ok(());
    unpack_and_record_streamed(
        store,
        name,
        manifest,
        config,
        layers,
        parallelism,
        Vec::new(),
        &ready,
    )
}

/// [`unpack_and_record`] for blobs still arriving: see
/// [`Snapshotter::unpack_chain_streamed`] for `streams` and `blobs_ready`.
#[allow(clippy::too_many_arguments)] // each is one fact about the image; a struct would only rename them
pub fn unpack_and_record_streamed(
    store: &Snapshotter,
    name: &str,
    manifest: &str,
    config: &str,
    layers: Vec<LayerRecord>,
    parallelism: usize,
    streams: Vec<Option<Box<dyn Read + Send>>>,
    blobs_ready: &(dyn Fn() -> Result<()> + Sync),
) -> Result<ImageRecord> {
    let content = store.content();
    let mut sources = Vec::with_capacity(layers.len());
    for l in &layers {
        let digest = Digest::parse(&l.digest)
            .ok_or_else(|| invalid(format!("bad layer digest {:?}", l.digest)))?;
        let diff_id = Digest::parse(&l.diff_id)
            .ok_or_else(|| invalid(format!("bad diffID {:?}", l.diff_id)))?;
        if streams.is_empty() && !content.has(&digest) {
            return Err(Error::NotFound {
                key: digest.to_string(),
                context: " (layer blob)",
            });
        }
        sources.push(LayerSource {
            blob: content.path(&digest),
            digest,
            diff_id,
        });
    }
    let mut labels = Labels::new();
    if name.len() + 16 <= crate::model::MAX_LABEL_BYTES {
        labels.insert("lamina.io/image".into(), name.to_owned());
    }
    let chain_ids =
        store.unpack_chain_streamed(&sources, &labels, parallelism, streams, blobs_ready)?;
    let rec = ImageRecord {
        name: name.to_owned(),
        manifest: manifest.to_owned(),
        config: config.to_owned(),
        layers,
        chain_ids,
    };
    store.put_image(&rec)?;
    Ok(rec)
}

/// The name an index entry gives its image.
fn ref_name(d: &Descriptor) -> Option<String> {
    let a = d.annotations().as_ref()?;
    a.get("io.containerd.image.name")
        .or_else(|| a.get("org.opencontainers.image.ref.name"))
        .cloned()
}

/// Picks the entry of `index.json` to import: the one named `wanted` (full name, or the
/// ref.name annotation), else the only one.
fn pick_entry<'a>(index: &'a ImageIndex, wanted: Option<&str>) -> Result<(&'a Descriptor, String)> {
    let entries = index.manifests();
    let found = match wanted {
        Some(w) => entries.iter().find(|d| {
            let a = d.annotations().as_ref();
            a.is_some_and(|a| {
                a.get("io.containerd.image.name").map(String::as_str) == Some(w)
                    || a.get("org.opencontainers.image.ref.name")
                        .map(String::as_str)
                        == Some(w)
            })
        }),
        None if entries.len() == 1 => entries.first(),
        None => None,
    };
    let d = found.ok_or_else(|| match wanted {
        Some(w) => invalid(format!("no image named {w:?} in the layout")),
        None => invalid(format!(
            "the layout holds {} images: name one",
            entries.len()
        )),
    })?;
    let name = wanted
        .map(str::to_owned)
        .or_else(|| ref_name(d))
        .unwrap_or_else(|| d.digest().to_string());
    Ok((d, name))
}

/// Imports from an OCI image-layout directory or an image archive (a tar of an OCI
/// layout, or a `docker save` tar). `name` picks the image when there are several and
/// names the result.
pub fn import(
    store: &Snapshotter,
    path: &Path,
    name: Option<&str>,
    parallelism: usize,
) -> Result<ImageRecord> {
    let content = store.content();
    let meta = std::fs::metadata(path).ctx("stat", path)?;
    if meta.is_dir() {
        let index_bytes =
            std::fs::read(path.join("index.json")).ctx("read", &path.join("index.json"))?;
        let index = ImageIndex::from_reader(&index_bytes[..])
            .map_err(|e| invalid(format!("index.json: {e}")))?;
        let (desc, image_name) = pick_entry(&index, name)?;
        // Ingest every blob the image needs, verifying each against its digest.
        let blob_path = |d: &Digest| {
            path.join("blobs/sha256")
                .join(d.as_str().trim_start_matches("sha256:"))
        };
        let ingest = |d: &Digest| -> Result<()> {
            let p = blob_path(d);
            let f = std::fs::File::open(&p).ctx("open", &p)?;
            content.ingest(Some(d), f).map(|_| ())
        };
        ingest_tree(content, desc, &ingest, 0)?;
        return unpack(store, content, &image_name, desc, parallelism);
    }
    import_archive(store, content, path, name, parallelism)
}

/// Ingests `desc` and everything it refers to (index → manifests → config and layers).
fn ingest_tree(
    content: &ContentStore,
    desc: &Descriptor,
    ingest: &dyn Fn(&Digest) -> Result<()>,
    depth: usize,
) -> Result<()> {
    if depth > 4 {
        return Err(invalid("image indexes nested too deeply"));
    }
    let digest = digest_of(desc)?;
    ingest(&digest)?;
    if is_index(desc) {
        // Only the manifest for this platform (and what it names) is needed.
        let bytes = read_json(content, &digest)?;
        let index = ImageIndex::from_reader(&bytes[..])
            .map_err(|e| invalid(format!("index {digest}: {e}")))?;
        return ingest_tree(
            content,
            choose_platform(&index, &digest)?,
            ingest,
            depth + 1,
        );
    }
    let bytes = read_json(content, &digest)?;
    let manifest = ImageManifest::from_reader(&bytes[..])
        .map_err(|e| invalid(format!("manifest {digest}: {e}")))?;
    ingest_manifest(&manifest, ingest)
}

fn ingest_manifest(m: &ImageManifest, ingest: &dyn Fn(&Digest) -> Result<()>) -> Result<()> {
    ingest(&digest_of(m.config())?)?;
    for l in m.layers() {
        ingest(&digest_of(l)?)?;
    }
    Ok(())
}

/// `docker save`'s manifest.json entry.
#[derive(Debug, Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// Imports from a tar archive: every file is ingested as a blob (verified when its name
/// is its digest), then the archive's index.json (OCI) or manifest.json (docker) says
/// which blobs form the image.
fn import_archive(
    store: &Snapshotter,
    content: &ContentStore,
    path: &Path,
    name: Option<&str>,
    parallelism: usize,
) -> Result<ImageRecord> {
    let file = std::fs::File::open(path).ctx("open", path)?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let mut by_path: HashMap<PathBuf, (Digest, u64)> = HashMap::new();
    let mut index_json = None;
    let mut docker_json = None;
    let bad = |e: std::io::Error| invalid(format!("archive {}: {e}", path.display()));
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let p = crate::layer::clean_path(&entry.path().map_err(bad)?);
        let small = entry.header().size().unwrap_or(u64::MAX) <= MAX_JSON;
        if p == Path::new("index.json") || p == Path::new("manifest.json") {
            if !small {
                return Err(invalid(format!("{} is too large", p.display())));
            }
            let mut buf = Vec::new();
            entry.read_to_end(&mut buf).map_err(bad)?;
            if p == Path::new("index.json") {
                index_json = Some(buf)
            } else {
                docker_json = Some(buf)
            }
            continue;
        }
        let expected = p
            .strip_prefix("blobs/sha256")
            .ok()
            .and_then(|h| h.to_str())
            .and_then(|h| Digest::parse(&format!("sha256:{h}")));
        let got = content.ingest(expected.as_ref(), &mut entry)?;
        by_path.insert(p, got);
    }
    if let Some(index_bytes) = index_json {
        let index = ImageIndex::from_reader(&index_bytes[..])
            .map_err(|e| invalid(format!("index.json: {e}")))?;
        let (desc, image_name) = pick_entry(&index, name)?;
        return unpack(store, content, &image_name, desc, parallelism);
    }
    let docker =
        docker_json.ok_or_else(|| invalid("archive has neither index.json nor manifest.json"))?;
    let entries: Vec<DockerEntry> =
        serde_json::from_slice(&docker).map_err(|e| invalid(format!("manifest.json: {e}")))?;
    let entry = match name {
        Some(n) => entries.iter().find(|e| {
            e.repo_tags
                .as_ref()
                .is_some_and(|t| t.iter().any(|t| t == n))
        }),
        None if entries.len() == 1 => entries.first(),
        None => None,
    }
    .ok_or_else(|| invalid("pick the image by one of its RepoTags"))?;
    let image_name = name
        .map(str::to_owned)
        .or_else(|| entry.repo_tags.as_ref().and_then(|t| t.first().cloned()))
        .unwrap_or_else(|| entry.config.clone());
    let lookup = |p: &str| {
        by_path
            .get(&crate::layer::clean_path(Path::new(p)))
            .cloned()
            .ok_or_else(|| {
                invalid(format!(
                    "manifest.json names {p:?}, which the archive lacks"
                ))
            })
    };
    let (config_digest, _) = lookup(&entry.config)?;
    let config = ImageConfiguration::from_reader(&read_json(content, &config_digest)?[..])
        .map_err(|e| invalid(format!("config: {e}")))?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != entry.layers.len() {
        return Err(invalid(
            "manifest.json and the config disagree on the number of layers",
        ));
    }
    let mut layers = Vec::new();
    for (lp, diff_id) in entry.layers.iter().zip(diff_ids) {
        let (digest, size) = lookup(lp)?;
        layers.push(LayerRecord {
            digest: digest.to_string(),
            diff_id: diff_id.clone(),
            size,
            media_type: "application/vnd.docker.image.rootfs.diff.tar".into(),
        });
    }
    unpack_and_record(
        store,
        &image_name,
        "",
        config_digest.as_str(),
        layers,
        parallelism,
    )
}
