//! Image references as docker and containerd read them: `[host[:port]/]path[:tag][@digest]`,
//! `docker.io` by default, `library/` for single-component Docker Hub names.

use crate::{RegistryError, Result};

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Registry host (with port), e.g. `docker.io` or `127.0.0.1:5000`.
    pub host: String,
    /// Repository path, e.g. `library/busybox`.
    pub repository: String,
    /// Tag, if any (`latest` when neither tag nor digest is given).
    pub tag: Option<String>,
    /// Digest, if pinned.
    pub digest: Option<String>,
}

impl Reference {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Reference> {
        let bad = |reason: &str| RegistryError::InvalidReference {
            reference: text.to_owned(),
            reason: reason.to_owned(),
        };
        if text.is_empty()
            || text.len() > 4096
            || text.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad("empty, too long, or has spaces or control characters"));
        }
        let (rest, digest) = match text.split_once('@') {
            Some((r, d)) => {
                let hex = d
                    .strip_prefix("sha256:")
                    .ok_or_else(|| bad("only sha256 digests are supported"))?;
                if hex.len() != 64
                    || !hex
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                {
                    return Err(bad("digest is not 64 lowercase hex digits"));
                }
                (r, Some(d.to_owned()))
            }
            None => (text, None),
        };
        let (host, path) = match rest.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), path.to_owned())
            }
            _ => ("docker.io".to_owned(), rest.to_owned()),
        };
        // A tag is after the last ':' that follows the last '/'.
        let (path, tag) = match path.rsplit_once(':') {
            Some((p, t)) if !t.contains('/') => (p.to_owned(), Some(t.to_owned())),
            _ => (path, None),
        };
        if path.is_empty()
            || !path.split('/').all(|c| {
                !c.is_empty()
                    && c.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            })
        {
            return Err(bad("repository must be lowercase path components"));
        }
        if let Some(t) = &tag {
            if t.is_empty()
                || t.len() > 128
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err(bad("invalid tag"));
            }
        }
        if !valid_host(&host) {
            return Err(bad(
                "registry host must be a DNS name or IP address (ASCII letters, digits, '.', '-'; IPv6 in brackets) with an optional :port",
            ));
        }
        let repository = if host == "docker.io" && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        // distribution's limit on a repository name (counted as written in full, so
        // Docker Hub's `library/` counts); with the host's 255 it also bounds the
        // canonical name, so every reference that parses can be written and read back.
        if repository.len() > 255 {
            return Err(bad("repository name longer than 255 bytes"));
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".into())
        } else {
            tag
        };
        Ok(Reference {
            host,
            repository,
            tag,
            digest,
        })
    }

    /// What to ask the manifests endpoint for: the digest if pinned, else the tag.
    pub fn object(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// The canonical name, e.g. `docker.io/library/busybox:latest`.
    pub fn name(&self) -> String {
        let mut s = format!("{}/{}", self.host, self.repository);
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
        s
    }
}

/// A registry host as references write it: a DNS name or IPv4 address, or an IPv6 address
/// in brackets, then an optional `:port`; at most 255 bytes.
fn valid_host(host: &str) -> bool {
    let (name, port) = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, after)) => {
                if v6.is_empty() || !v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
                    return false;
                }
                match after {
                    "" => return host.len() <= 255,
                    p => (None, p.strip_prefix(':').map(Some).unwrap_or(Some(""))),
                }
            }
            None => return false,
        },
        None => match host.rsplit_once(':') {
            Some((n, p)) => (Some(n), Some(p)),
            None => (Some(host), None),
        },
    };
    let name_ok = name.is_none_or(|n| {
        !n.is_empty()
            && n.split('.').all(|label| {
                !label.is_empty()
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
    });
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    name_ok && port_ok && host.len() <= 255
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_docker() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(
            (r.host.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("docker.io", "library/busybox", Some("latest"))
        );
        let r = Reference::parse("127.0.0.1:5000/bench/small:gzip").unwrap();
        assert_eq!(
            (r.host.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "bench/small", Some("gzip"))
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("localhost/x/y@{d}")).unwrap();
        assert_eq!(
            (r.tag.as_deref(), r.digest.as_deref(), r.object()),
            (None, Some(d.as_str()), d.as_str())
        );
        assert_eq!(
            Reference::parse("ghcr.io/o/r:v1").unwrap().name(),
            "ghcr.io/o/r:v1"
        );
        for bad in [
            "",
            "UPPER/case",
            "a b",
            "x@md5:00",
            "x:",
            "registry.io/",
            "x@sha256:abc",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?}");
        }
    }
    /// Found by fuzzing (scripts/tests/fuzz.sh in CI): any text before the first '/' that
    /// held a '.' or ':' was taken as the host, non-ASCII included, and a long reference
    /// parsed but its canonical name (with ":latest") was too long to parse again.
    #[test]
    fn hosts_are_checked_and_every_parsed_reference_reads_back() {
        for good in [
            "registry.example.com/a/b:1",
            "127.0.0.1:5000/x",
            "[::1]:5000/x:y",
            "[fe80::1]/x",
            "localhost/x",
            "my-registry.local:443/team/app@sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            let r = Reference::parse(good).unwrap_or_else(|e| panic!("{good}: {e}"));
            assert_eq!(Reference::parse(&r.name()).unwrap(), r, "{good}");
        }
        for bad in [
            "f\u{e0820}.example/x",
            "bad_host.example/x",
            "-lead.example/x",
            "a..b/x",
            "host.example:/x",
            "host.example:123456/x",
            "[zz::1]/x",
            "[::1/x",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad} accepted");
        }
        let long = format!("registry.example/{}", "a".repeat(256));
        assert!(Reference::parse(&long).is_err());
        let longest = format!("registry.example/{}", "a".repeat(255));
        let r = Reference::parse(&longest).unwrap();
        assert_eq!(Reference::parse(&r.name()).unwrap(), r);
        // On Docker Hub, `library/` counts (found by fuzzing too).
        assert!(Reference::parse(&"a".repeat(250)).is_err());
        let r = Reference::parse(&"a".repeat(247)).unwrap();
        assert_eq!(Reference::parse(&r.name()).unwrap(), r);
        // The input CI's fuzzer found, in short: a non-ASCII host.
        let found = std::fs::read("tests/data/fuzz-reference-crash").unwrap();
        let text = String::from_utf8(found).unwrap();
        assert!(Reference::parse(&text).is_err());
    }
}
