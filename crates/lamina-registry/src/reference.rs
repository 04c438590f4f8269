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
        let repository = if host == "docker.io" && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
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
}
