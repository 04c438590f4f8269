//! The data model shared with containerd: snapshot kinds, info records, usage and mounts.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Labels of a snapshot: arbitrary key/value strings (containerd GC labels among them).
pub type Labels = BTreeMap<String, String>;

/// The most bytes a label's key plus value may take, as containerd enforces.
pub const MAX_LABEL_BYTES: usize = 4096;

/// The kind of a snapshot, as in containerd's `snapshots.Kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// A read-only view of a committed snapshot; cannot be committed.
    View,
    /// A writable snapshot that may be committed.
    Active,
    /// An immutable snapshot that may be a parent.
    Committed,
}

impl Kind {
    /// The name containerd's filters use for this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What containerd's `Stat` returns about a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// Key (active/view) or name (committed).
    pub name: String,
    /// Name of the parent committed snapshot, empty for none.
    pub parent: String,
    /// Kind of snapshot.
    pub kind: Kind,
    /// Labels.
    pub labels: Labels,
    /// When the snapshot was created (or committed).
    pub created: SystemTime,
    /// When its info last changed.
    pub updated: SystemTime,
}

/// Disk usage of one snapshot, excluding its parents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Bytes allocated on disk (hard-linked inodes counted once).
    pub size: i64,
    /// Number of inodes (hard-linked inodes counted once).
    pub inodes: i64,
}

/// One mount, in containerd's form: what a client passes to mount(2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    /// Filesystem type, e.g. `overlay` or `bind`.
    pub kind: String,
    /// Source path or device.
    pub source: String,
    /// Mount options, e.g. `ro`, `rbind`, `lowerdir=...`.
    pub options: Vec<String>,
}

/// Checks a snapshot key or name: non-empty, no NUL byte.
pub fn validate_key(what: &str, key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidArgument(format!("{what} must not be empty")));
    }
    if key.contains('\0') {
        return Err(Error::InvalidArgument(format!(
            "{what} {key:?} contains a NUL byte"
        )));
    }
    Ok(())
}

/// Checks labels against containerd's rules: each key+value at most 4096 bytes, keys non-empty.
pub fn validate_labels(labels: &Labels) -> Result<()> {
    for (k, v) in labels {
        if k.is_empty() {
            return Err(Error::InvalidArgument("label key must not be empty".into()));
        }
        if k.len() + v.len() > MAX_LABEL_BYTES {
            let shown: String = k.chars().take(64).collect();
            return Err(Error::InvalidArgument(format!(
                "label key and value greater than maximum size ({MAX_LABEL_BYTES} bytes), key: {shown}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_limit_is_inclusive() {
        let mut l = Labels::new();
        l.insert("k".into(), "v".repeat(MAX_LABEL_BYTES - 1));
        validate_labels(&l).unwrap();
        l.insert("k".into(), "v".repeat(MAX_LABEL_BYTES));
        assert!(matches!(
            validate_labels(&l),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn keys_reject_empty_and_nul() {
        assert!(validate_key("key", "").is_err());
        assert!(validate_key("key", "a\0b").is_err());
        validate_key("key", "default/1/sha256:abc").unwrap();
    }
}
