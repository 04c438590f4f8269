//! Registry hosts in containerd's `hosts.toml` format
//! (`<config dir>/<host>/hosts.toml`, `_default/hosts.toml` as fallback): mirrors tried in
//! order before the upstream server, each with capabilities, TLS settings (`ca`, `client`,
//! `skip_verify`), extra headers, and path override. Relative certificate paths are
//! resolved against the directory of the `hosts.toml` naming them, as containerd does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{RegistryError, Result};

/// Where hosts.toml files are looked up.
#[derive(Debug, Clone, Default)]
pub struct HostsConfig {
    /// e.g. `/etc/containerd/certs.d`; `None`: no configuration, upstream only.
    pub dir: Option<PathBuf>,
}

/// One place a registry can be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Base URL that repository paths are appended to, e.g. `https://mirror/v2`.
    pub base: String,
    /// May be asked for manifests by tag (`resolve`).
    pub resolve: bool,
    /// May be asked for blobs and manifests by digest (`pull`).
    pub pull: bool,
    /// May be sent blobs and manifests (`push`).
    pub push: bool,
    /// Skip TLS certificate verification.
    pub skip_verify: bool,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// PEM files of CA certificates trusted for this endpoint besides the system's roots
    /// (`ca`).
    pub ca: Vec<PathBuf>,
    /// Client certificates presented for TLS client authentication (`client`).
    pub client: Vec<ClientCert>,
}

/// A TLS client certificate and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientCert {
    /// The certificate (chain) file.
    pub cert: PathBuf,
    /// The private key file; `None`: the key is in the certificate file.
    pub key: Option<PathBuf>,
}

/// A hosts.toml value that may be one string or a list of them (`ca`, header values).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(all) => all,
        }
    }
}

/// containerd's `client`: a file holding certificate and key, a list of such files, or a
/// list of `[certificate, key]` pairs (the two forms may be mixed in one list).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum ClientValue {
    One(String),
    Many(Vec<OneOrMany>),
}

/// The settings one `hosts.toml` table (top level or `[host."URL"]`) may carry.
#[derive(Debug, Clone, Deserialize, Default)]
struct HostSettings {
    capabilities: Option<Vec<String>>,
    skip_verify: Option<bool>,
    #[serde(default)]
    header: BTreeMap<String, OneOrMany>,
    override_path: Option<bool>,
    ca: Option<OneOrMany>,
    client: Option<ClientValue>,
}

#[derive(Debug, Deserialize, Default)]
struct HostsFile {
    server: Option<String>,
    #[serde(flatten)]
    settings: HostSettings,
    #[serde(default)]
    host: toml::Table,
}

fn is_loopback(host: &str) -> bool {
    let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
    matches!(name, "localhost" | "127.0.0.1" | "[::1]") || name.starts_with("127.")
}

fn headers(h: &BTreeMap<String, OneOrMany>) -> Vec<(String, String)> {
    h.iter()
        .flat_map(|(k, v)| v.clone().into_vec().into_iter().map(|s| (k.clone(), s)))
        .collect()
}

/// `p` as containerd reads it: absolute as given, relative to `dir` (the hosts.toml's
/// directory) otherwise.
fn resolve_path(dir: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

/// The endpoint `url` with the settings of its table in the file at `path`.
fn endpoint(path: &Path, url: &str, settings: HostSettings) -> Result<Endpoint> {
    let config_err = |reason: String| RegistryError::Config {
        path: path.display().to_string(),
        reason,
    };
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return Err(config_err(format!("host {url:?} is not an http(s) URL")));
    };
    if rest.split(['/', '?', '#']).next().unwrap_or("").is_empty() {
        return Err(config_err(format!("host {url:?} names no host")));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let caps = settings
        .capabilities
        .unwrap_or_else(|| vec!["pull".into(), "resolve".into(), "push".into()]);
    let ca = settings
        .ca
        .map(OneOrMany::into_vec)
        .unwrap_or_default()
        .iter()
        .map(|p| resolve_path(dir, p))
        .collect();
    let client_items = match settings.client {
        None => Vec::new(),
        Some(ClientValue::One(file)) => vec![OneOrMany::One(file)],
        Some(ClientValue::Many(items)) => items,
    };
    let mut client = Vec::new();
    for item in client_items {
        client.push(match item {
            OneOrMany::One(file) => ClientCert {
                cert: resolve_path(dir, &file),
                key: None,
            },
            OneOrMany::Many(pair) => match &pair[..] {
                [cert, key] => ClientCert {
                    cert: resolve_path(dir, cert),
                    key: Some(resolve_path(dir, key)),
                },
                _ => {
                    return Err(config_err(format!(
                        "{url}: client pair {pair:?} must name two files, certificate and key"
                    )))
                }
            },
        });
    }
    Ok(Endpoint {
        base: base(url, settings.override_path.unwrap_or(false)),
        resolve: caps.iter().any(|x| x == "resolve"),
        pull: caps.iter().any(|x| x == "pull"),
        push: caps.iter().any(|x| x == "push"),
        skip_verify: settings.skip_verify.unwrap_or(false),
        headers: headers(&settings.header),
        ca,
        client,
    })
}

fn base(url: &str, override_path: bool) -> String {
    let url = url.trim_end_matches('/');
    if override_path || url.ends_with("/v2") {
        url.to_owned()
    } else {
        format!("{url}/v2")
    }
}

impl HostsConfig {
    /// The endpoints for registry `host`, mirrors first. Loopback registries and
    /// `plain_http` use http; everything else https.
    pub fn endpoints(&self, host: &str, plain_http: bool) -> Result<Vec<Endpoint>> {
        let scheme = if plain_http || is_loopback(host) {
            "http"
        } else {
            "https"
        };
        let upstream_host = if host == "docker.io" {
            "registry-1.docker.io"
        } else {
            host
        };
        let default_server = format!("{scheme}://{upstream_host}");
        let Some((path, file)) = self.read(host)? else {
            return Ok(vec![Endpoint {
                base: base(&default_server, false),
                resolve: true,
                pull: true,
                push: true,
                skip_verify: false,
                headers: Vec::new(),
                ca: Vec::new(),
                client: Vec::new(),
            }]);
        };
        let mut out = Vec::new();
        for (url, value) in &file.host {
            let settings: HostSettings =
                value
                    .clone()
                    .try_into()
                    .map_err(|e: toml::de::Error| RegistryError::Config {
                        path: path.display().to_string(),
                        reason: format!("host {url:?}: {e}"),
                    })?;
            out.push(endpoint(&path, url, settings)?);
        }
        let server = file.server.as_deref().unwrap_or(&default_server);
        out.push(endpoint(&path, server, file.settings)?);
        Ok(out)
    }

    fn read(&self, host: &str) -> Result<Option<(PathBuf, HostsFile)>> {
        let Some(dir) = &self.dir else {
            return Ok(None);
        };
        for name in [host, "_default"] {
            let path = dir.join(name.replace(':', "_").as_str()).join("hosts.toml");
            let alt = dir.join(name).join("hosts.toml");
            for p in [alt, path] {
                if let Some(f) = read_file(&p)? {
                    return Ok(Some((p, f)));
                }
            }
        }
        Ok(None)
    }
}

fn read_file(path: &Path) -> Result<Option<HostsFile>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(RegistryError::Config {
                path: path.display().to_string(),
                reason: e.to_string(),
            })
        }
    };
    toml::from_str(&text)
        .map(Some)
        .map_err(|e| RegistryError::Config {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_mirrors() {
        let none = HostsConfig::default();
        let e = none.endpoints("docker.io", false).unwrap();
        assert_eq!(e[0].base, "https://registry-1.docker.io/v2");
        assert_eq!(
            none.endpoints("127.0.0.1:5000", false).unwrap()[0].base,
            "http://127.0.0.1:5000/v2"
        );

        let t = std::env::temp_dir().join(format!("lamina-hosts-{}", std::process::id()));
        std::fs::create_dir_all(t.join("example.com")).unwrap();
        std::fs::write(
            t.join("example.com/hosts.toml"),
            "server = \"https://example.com\"\n[host.\"http://mirror.local:5000\"]\ncapabilities = [\"pull\"]\n[host.\"http://mirror.local:5000\".header]\nx-a = \"1\"\n",
        )
        .unwrap();
        let cfg = HostsConfig {
            dir: Some(t.clone()),
        };
        let e = cfg.endpoints("example.com", false).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].base, "http://mirror.local:5000/v2");
        assert!(e[0].pull && !e[0].resolve);
        assert_eq!(e[0].headers, vec![("x-a".to_string(), "1".to_string())]);
        assert_eq!(e[1].base, "https://example.com/v2");
        std::fs::write(t.join("example.com/hosts.toml"), "[host.\"ftp://x\"]\n").unwrap();
        assert!(cfg.endpoints("example.com", false).is_err());
        std::fs::write(t.join("example.com/hosts.toml"), "server = [").unwrap();
        assert!(cfg.endpoints("example.com", false).is_err());
        std::fs::remove_dir_all(&t).unwrap();
    }

    /// Found by the `hosts_toml` fuzz target: `server = "https://"` was taken, and gave
    /// the endpoint `https:/v2`.
    #[test]
    fn urls_without_a_host_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let host_dir = t.path().join("reg.example");
        std::fs::create_dir_all(&host_dir).unwrap();
        let cfg = HostsConfig {
            dir: Some(t.path().to_path_buf()),
        };
        for text in [
            "server = \"https://\"\n",
            "server = \"http:///v2\"\n",
            "[host.\"https://?x\"]\n",
            "[host.\"http://#\"]\n",
        ] {
            std::fs::write(host_dir.join("hosts.toml"), text).unwrap();
            match cfg.endpoints("reg.example", false) {
                Err(RegistryError::Config { reason, .. }) => {
                    assert!(reason.contains("names no host"), "{text}: {reason}")
                }
                other => panic!("{text}: not refused: {other:?}"),
            }
        }
    }

    #[test]
    fn tls_settings_resolve_paths_like_containerd() {
        let t = tempfile::tempdir().unwrap();
        let host_dir = t.path().join("reg.example:5000");
        std::fs::create_dir_all(&host_dir).unwrap();
        std::fs::write(
            host_dir.join("hosts.toml"),
            r#"
server = "https://reg.example:5000"
ca = "ca.pem"
client = [["/abs/client.pem", "client.key"], "combined.pem"]

[host."https://mirror.example"]
capabilities = ["pull", "resolve"]
ca = ["/etc/ssl/a.pem", "rel/b.pem"]
client = "mirror-client.pem"
skip_verify = true
"#,
        )
        .unwrap();
        let cfg = HostsConfig {
            dir: Some(t.path().to_path_buf()),
        };
        let e = cfg.endpoints("reg.example:5000", false).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].base, "https://mirror.example/v2");
        assert!(e[0].skip_verify && e[0].resolve && e[0].pull);
        assert_eq!(
            e[0].ca,
            vec![PathBuf::from("/etc/ssl/a.pem"), host_dir.join("rel/b.pem")]
        );
        assert_eq!(
            e[0].client,
            vec![ClientCert {
                cert: host_dir.join("mirror-client.pem"),
                key: None
            }]
        );
        assert_eq!(e[1].base, "https://reg.example:5000/v2");
        assert!(!e[1].skip_verify);
        assert_eq!(e[1].ca, vec![host_dir.join("ca.pem")]);
        assert_eq!(
            e[1].client,
            vec![
                ClientCert {
                    cert: "/abs/client.pem".into(),
                    key: Some(host_dir.join("client.key"))
                },
                ClientCert {
                    cert: host_dir.join("combined.pem"),
                    key: None
                },
            ]
        );

        // A client "pair" must be two files; the server must be a URL.
        for bad in [
            "client = [[\"a.pem\", \"b.key\", \"c\"]]\n",
            "server = \"reg.example:5000\"\n",
            "ca = 5\n",
        ] {
            std::fs::write(host_dir.join("hosts.toml"), bad).unwrap();
            let err = cfg.endpoints("reg.example:5000", false).unwrap_err();
            assert!(
                matches!(&err, RegistryError::Config { path, .. } if path.ends_with("hosts.toml")),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn default_hosts_file_applies_to_other_registries() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("_default")).unwrap();
        std::fs::create_dir_all(t.path().join("127.0.0.1_5000")).unwrap();
        std::fs::write(
            t.path().join("_default/hosts.toml"),
            "[host.\"http://127.0.0.1:6000\"]\ncapabilities = [\"pull\", \"resolve\"]\n",
        )
        .unwrap();
        std::fs::write(
            t.path().join("127.0.0.1_5000/hosts.toml"),
            "server = \"http://127.0.0.1:7000\"\n",
        )
        .unwrap();
        let cfg = HostsConfig {
            dir: Some(t.path().to_path_buf()),
        };
        let e = cfg.endpoints("other.example:1234", false).unwrap();
        let bases: Vec<_> = e.iter().map(|e| e.base.as_str()).collect();
        assert_eq!(
            bases,
            ["http://127.0.0.1:6000/v2", "https://other.example:1234/v2"]
        );
        // A host's own directory (":" written as "_") wins over _default.
        let e = cfg.endpoints("127.0.0.1:5000", false).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].base, "http://127.0.0.1:7000/v2");
        // override_path: the URL is the base as given.
        std::fs::write(
            t.path().join("127.0.0.1_5000/hosts.toml"),
            "[host.\"http://127.0.0.1:6001/prefix/v2-ish\"]\noverride_path = true\n",
        )
        .unwrap();
        let e = cfg.endpoints("127.0.0.1:5000", false).unwrap();
        assert_eq!(e[0].base, "http://127.0.0.1:6001/prefix/v2-ish");
        assert_eq!(e[1].base, "http://127.0.0.1:5000/v2");
    }
}
