//! laminad's configuration: a TOML file, each setting also a command-line flag.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use lamina_core::BackendKind;
use serde::Deserialize;

/// Where laminad keeps its state unless told otherwise.
pub const DEFAULT_ROOT: &str = "/var/lib/lamina";
/// Where laminad listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/lamina/lamina.sock";
/// The config file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG: &str = "/etc/lamina/laminad.toml";

/// The settings of one daemon.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// State directory: metadata and snapshots. Nothing is written outside it but the socket.
    /// Refused when it is a symlink, writable by group or others, or owned by a user
    /// other than laminad's (root); created 0700 when missing.
    pub root: PathBuf,
    /// Unix socket serving containerd's snapshots API. Its directory must be writable by
    /// root only: laminad refuses to serve when it is owned by another user or writable
    /// by group or others (unless root-owned and sticky, like /tmp); a missing directory
    /// is created 0711.
    pub socket: PathBuf,
    /// Permission bits of the socket, in octal (default "0600": root only).
    pub socket_mode: String,
    /// Group id owning the socket, so a non-root group may connect with mode 0660.
    pub socket_group: Option<u32>,
    /// Backend: "overlayfs" or "native".
    pub backend: String,
    /// tracing filter: "info", "debug", "laminad=debug,lamina_core=info", ...
    pub log_level: String,
    /// Most bytes one layer may decompress to (default 64 GiB); a larger layer fails its
    /// pull or import with InvalidArgument naming this setting (decompression bombs).
    pub max_layer_bytes: u64,
    /// Most entries (files, directories, links) one layer may hold (default 10 million);
    /// more fail the layer with InvalidArgument naming this setting.
    pub max_layer_entries: u64,
    /// Most gRPC requests served at once over all connections (default 256); more wait
    /// in a queue until one finishes (they do not fail). A remote-snapshotter Prepare
    /// (containerd fetching a layer through Lamina) holds one for its whole length.
    pub max_concurrent_requests: usize,
    /// Most `lamina pull`s (lamina.v1.Images.Pull) running at once (default 8); more wait
    /// their turn, streaming no progress until it comes.
    pub max_concurrent_pulls: usize,
    /// Layers one import or pull unpacks at once from blob files (default 4); layers
    /// arriving from a registry each unpack as they download (at most 8 downloads a pull).
    pub unpack_parallelism: usize,
    /// Directory of containerd-style `<host>/hosts.toml` registry configs (mirrors,
    /// plain HTTP, headers); empty for none.
    pub registry_config_path: PathBuf,
    /// Mount layers lazily (FUSE, read from the registry on demand) when the registry
    /// has their seekable indexes; a pull may ask otherwise.
    pub lazy_pull: bool,
    /// Layers smaller than this are downloaded and unpacked even when indexed.
    pub lazy_min_layer_size: u64,
    /// Bytes a lazy layer fetches and caches at a time.
    pub lazy_chunk_size: u64,
    /// Longest one range request of a lazy read may take, in milliseconds.
    pub lazy_read_timeout_ms: u64,
    /// Range requests a lazy read makes before it fails with EIO.
    pub lazy_read_attempts: u32,
    /// How long after mounting a lazy layer its background fetch starts, in milliseconds.
    pub lazy_fill_delay_ms: u64,
    /// Mount lazy layers with FUSE's `allow_other`, so any user may read them directly
    /// (default false: only root, their mounter, can; containers of any user still read
    /// them through their overlayfs snapshots, which use the mounter's credentials).
    pub lazy_allow_other: bool,
    /// Block backend: every writable layer is an ext4 image of this size (a hard quota,
    /// e.g. "10G"), unless a Prepare's `containerd.io/snapshot/lamina.quota` label says
    /// otherwise; empty: plain directories unless the label asks.
    pub writable_quota: String,
}

/// How lazy layers are made, from laminad's config.
#[derive(Debug, Clone)]
pub struct LazySettings {
    /// Mount layers lazily when their image has indexes (pulls may override it).
    pub enabled: bool,
    /// Smaller layers are downloaded and unpacked (cheaper than a mount).
    pub min_layer_size: u64,
    /// Bytes fetched and cached at a time.
    pub chunk_size: u64,
    /// Longest one range request may take (ms).
    pub read_timeout_ms: u64,
    /// Range requests before a read fails with EIO.
    pub read_attempts: u32,
    /// Delay before a layer's background fetch starts (ms).
    pub fill_delay_ms: u64,
    /// Mount with FUSE's `allow_other` (any user may read the layer directly).
    pub allow_other: bool,
    /// The servers' log filter.
    pub log_level: String,
    /// hosts.toml directory the servers read the registry through.
    pub hosts_dir: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: DEFAULT_ROOT.into(),
            socket: DEFAULT_SOCKET.into(),
            socket_mode: "0600".into(),
            socket_group: None,
            backend: BackendKind::default().as_str().into(),
            log_level: "info".into(),
            registry_config_path: "/etc/containerd/certs.d".into(),
            max_layer_bytes: 64 << 30,
            max_layer_entries: 10_000_000,
            max_concurrent_requests: 256,
            max_concurrent_pulls: 8,
            unpack_parallelism: 4,
            lazy_pull: true,
            lazy_min_layer_size: 4 << 20,
            lazy_chunk_size: 256 << 10,
            lazy_read_timeout_ms: 5000,
            lazy_read_attempts: 3,
            lazy_fill_delay_ms: 2000,
            lazy_allow_other: false,
            writable_quota: String::new(),
        }
    }
}

impl Config {
    /// Reads `path`, or the default config file if `path` is `None` and the file exists,
    /// or returns the defaults.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let path = match path {
            Some(p) => p.to_path_buf(),
            None if Path::new(DEFAULT_CONFIG).exists() => DEFAULT_CONFIG.into(),
            None => return Ok(Config::default()),
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading config {}", path.display()))?;
        Config::parse(&text).with_context(|| format!("in config {}", path.display()))
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let cfg: Config = toml::from_str(text)?;
        cfg.backend()?;
        cfg.socket_mode()?;
        cfg.writable_quota()?;
        cfg.check_limits()?;
        Ok(cfg)
    }

    /// Refuses limits that would stop laminad from working at all.
    pub fn check_limits(&self) -> anyhow::Result<()> {
        for (key, value) in [
            ("max_layer_bytes", self.max_layer_bytes),
            ("max_layer_entries", self.max_layer_entries),
            (
                "max_concurrent_requests",
                self.max_concurrent_requests as u64,
            ),
            ("max_concurrent_pulls", self.max_concurrent_pulls as u64),
            ("unpack_parallelism", self.unpack_parallelism as u64),
        ] {
            if value == 0 {
                bail!("{key} must be at least 1");
            }
        }
        Ok(())
    }

    /// The writable-layer quota, parsed; `None` when not set.
    pub fn writable_quota(&self) -> anyhow::Result<Option<u64>> {
        if self.writable_quota.trim().is_empty() {
            return Ok(None);
        }
        let bytes = lamina_core::parse_size(&self.writable_quota).context("writable_quota")?;
        if self.backend()? != BackendKind::Block {
            bail!("writable_quota needs backend = \"block\"");
        }
        Ok(Some(bytes))
    }

    /// The backend, parsed.
    pub fn backend(&self) -> anyhow::Result<BackendKind> {
        Ok(self.backend.parse()?)
    }

    /// The lazy-layer settings.
    pub fn lazy(&self) -> LazySettings {
        LazySettings {
            enabled: self.lazy_pull,
            min_layer_size: self.lazy_min_layer_size,
            chunk_size: self.lazy_chunk_size.clamp(4096, 64 << 20),
            read_timeout_ms: self.lazy_read_timeout_ms,
            read_attempts: self.lazy_read_attempts,
            fill_delay_ms: self.lazy_fill_delay_ms,
            allow_other: self.lazy_allow_other,
            log_level: self.log_level.clone(),
            hosts_dir: Some(self.registry_config_path.clone())
                .filter(|p| !p.as_os_str().is_empty()),
        }
    }

    /// The socket mode, parsed from octal; only permission bits are allowed.
    pub fn socket_mode(&self) -> anyhow::Result<u32> {
        let mode = u32::from_str_radix(self.socket_mode.trim_start_matches("0o"), 8).with_context(
            || format!("socket_mode {:?} is not an octal number", self.socket_mode),
        )?;
        if mode > 0o777 {
            bail!("socket_mode {:?} has bits beyond 0777", self.socket_mode);
        }
        Ok(mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_config() {
        let c = Config::parse(
            "root = \"/srv/lamina\"\nsocket = \"/tmp/l.sock\"\nsocket_mode = \"0660\"\nsocket_group = 5\nbackend = \"native\"\nlog_level = \"debug\"\n",
        )
        .unwrap();
        assert_eq!(c.root, Path::new("/srv/lamina"));
        assert_eq!(c.socket_mode().unwrap(), 0o660);
        assert_eq!(c.backend().unwrap(), BackendKind::Native);
    }

    #[test]
    fn defaults_and_errors() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
        assert!(Config::parse("backend = \"zfs\"").is_err());
        assert!(Config::parse("socket_mode = \"0999\"").is_err());
        assert!(Config::parse("socket_mode = \"7777\"").is_err());
        assert!(Config::parse("rooot = \"/x\"").is_err());
        assert!(
            Config::parse("writable_quota = \"1G\"").is_err(),
            "needs the block backend"
        );
        let c = Config::parse("backend = \"block\"\nwritable_quota = \"1G\"").unwrap();
        assert_eq!(c.writable_quota().unwrap(), Some(1 << 30));
        assert!(Config::parse("backend = \"block\"\nwritable_quota = \"big\"").is_err());
    }

    /// Every limit: its default, its key, and that a limit of zero is refused by name.
    #[test]
    fn limits() {
        let d = Config::default();
        assert_eq!(d.max_layer_bytes, 64 << 30);
        assert_eq!(d.max_layer_entries, 10_000_000);
        assert_eq!(d.max_concurrent_requests, 256);
        assert_eq!(d.max_concurrent_pulls, 8);
        assert_eq!(d.unpack_parallelism, 4);
        assert_eq!(d.socket_mode().unwrap(), 0o600, "root only by default");
        assert!(!d.lazy_allow_other && !d.lazy().allow_other);
        let c = Config::parse(
            "max_layer_bytes = 1048576\nmax_layer_entries = 10\nmax_concurrent_requests = 8\nmax_concurrent_pulls = 3\nunpack_parallelism = 2\nlazy_allow_other = true\n",
        )
        .unwrap();
        assert_eq!(c.max_layer_bytes, 1 << 20);
        assert_eq!(c.max_layer_entries, 10);
        assert_eq!(c.max_concurrent_requests, 8);
        assert_eq!(c.max_concurrent_pulls, 3);
        assert_eq!(c.unpack_parallelism, 2);
        assert!(c.lazy().allow_other);
        for key in [
            "max_layer_bytes",
            "max_layer_entries",
            "max_concurrent_requests",
            "max_concurrent_pulls",
            "unpack_parallelism",
        ] {
            let err = Config::parse(&format!("{key} = 0")).unwrap_err();
            assert!(err.to_string().contains(key), "{key}: {err:#}");
        }
        assert!(Config::parse("max_concurrent_requests = -1").is_err());
    }
}
