//! Registry hosts in containerd's `hosts.toml` format
//! (`<config dir>/<host>/hosts.toml`, `_default/hosts.toml` as fallback): mirrors tried in
//! order before the upstream server, each with capabilities, TLS verification switch,
//! extra headers, and path override.

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
    /// Skip TLS certificate verification.
    pub skip_verify: bool,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Deserialize, Default)]
struct HostsFile {
    server: Option<String>,
    capabilities: Option<Vec<String>>,
    skip_verify: Option<bool>,
    #[serde(default)]
    header: BTreeMap<String, HeaderValue>,
    override_path: Option<bool>,
    #[serde(default)]
    host: toml::Table,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum HeaderValue {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize, Default)]
struct HostEntry {
    capabilities: Option<Vec<String>>,
    skip_verify: Option<bool>,
    #[serde(default)]
    header: BTreeMap<String, HeaderValue>,
    override_path: Option<bool>,
}

fn is_loopback(host: &str) -> bool {
    let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
    matches!(name, "localhost" | "127.0.0.1" | "[::1]") || name.starts_with("127.")
}

fn headers(h: &BTreeMap<String, HeaderValue>) -> Vec<(String, String)> {
    h.iter()
        .flat_map(|(k, v)| match v {
            HeaderValue::One(s) => vec![(k.clone(), s.clone())],
            HeaderValue::Many(all) => all.iter().map(|s| (k.clone(), s.clone())).collect(),
        })
        .collect()
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
        let file = self.read(host)?;
        let Some((path, file)) = file else {
            return Ok(vec![Endpoint {
                base: base(&default_server, false),
                resolve: true,
                pull: true,
                skip_verify: false,
                headers: Vec::new(),
            }]);
        };
        let caps = |c: &Option<Vec<String>>| {
            let c = c
                .clone()
                .unwrap_or_else(|| vec!["pull".into(), "resolve".into(), "push".into()]);
            (
                c.iter().any(|x| x == "resolve"),
                c.iter().any(|x| x == "pull"),
            )
        };
        let mut out = Vec::new();
        for (url, value) in &file.host {
            let entry: HostEntry =
                value
                    .clone()
                    .try_into()
                    .map_err(|e: toml::de::Error| RegistryError::Config {
                        path: path.display().to_string(),
                        reason: format!("host {url:?}: {e}"),
                    })?;
            if !url.starts_with("http://") && !url.starts_with("https://") {
                return Err(RegistryError::Config {
                    path: path.display().to_string(),
                    reason: format!("host {url:?} is not an http(s) URL"),
                });
            }
            let (resolve, pull) = caps(&entry.capabilities);
            out.push(Endpoint {
                base: base(url, entry.override_path.unwrap_or(false)),
                resolve,
                pull,
                skip_verify: entry.skip_verify.unwrap_or(false),
                headers: headers(&entry.header),
            });
        }
        let (resolve, pull) = caps(&file.capabilities);
        out.push(Endpoint {
            base: base(
                file.server.as_deref().unwrap_or(&default_server),
                file.override_path.unwrap_or(false),
            ),
            resolve,
            pull,
            skip_verify: file.skip_verify.unwrap_or(false),
            headers: headers(&file.header),
        });
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
}
