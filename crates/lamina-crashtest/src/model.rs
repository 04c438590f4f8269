//! What the harness knows the store must hold: every snapshot whose creation was
//! acknowledged (kind, parent, labels, expected tree), the recorded images, and the
//! operations that were in flight when laminad was killed (their outcome is learnt after
//! the restart: either outcome is allowed, a half-done one is not).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use crate::client::Kind;
use crate::tree::Tree;

/// containerd's GC root label: snapshots carrying it are never collected.
pub const ROOT_LABEL: &str = "containerd.io/gc.root";
/// The label the harness' Update calls set.
pub const UPDATE_LABEL: &str = "lamina.crashtest/updated";

/// A snapshot the store must have.
#[derive(Debug, Clone)]
pub struct Snap {
    /// Kind.
    pub kind: Kind,
    /// Parent key ("" for none).
    pub parent: String,
    /// The tree a mount of it must show.
    pub tree: Arc<Tree>,
    /// Its labels; `None` for snapshots the daemon labels itself (pulled layers).
    pub labels: Option<BTreeMap<String, String>>,
    /// The worker that made it and alone changes it; `None` for pulled layers.
    pub owner: Option<usize>,
    /// Snapshots it needs besides its parent (a stacked merge's sources).
    pub deps: Vec<String>,
    /// Snapshots it may need: the sources of a merge whose answer was cut off (stacked
    /// or hard-linked is not known). They are not removed while it lives, but a
    /// collection may take them.
    pub maybe_deps: Vec<String>,
}

impl Snap {
    fn rooted(&self) -> bool {
        self.labels
            .as_ref()
            .is_some_and(|l| l.contains_key(ROOT_LABEL))
    }
}

/// An operation whose answer never came (laminad was killed while it ran).
#[derive(Debug, Clone)]
pub enum Pending {
    /// Prepare or View of `key`.
    Prepare {
        /// Key.
        key: String,
        /// Parent.
        parent: String,
        /// View rather than Prepare.
        view: bool,
        /// Labels asked for.
        labels: BTreeMap<String, String>,
        /// Worker.
        owner: usize,
    },
    /// Commit of `key` as `name`.
    Commit {
        /// New name.
        name: String,
        /// Active key.
        key: String,
        /// Labels asked for.
        labels: BTreeMap<String, String>,
    },
    /// Remove of `key`.
    Remove {
        /// Key.
        key: String,
    },
    /// Label update of `key`.
    Update {
        /// Key.
        key: String,
        /// The label's value before.
        old: Option<String>,
        /// The value asked for.
        new: String,
    },
    /// Merge into `key`.
    Merge {
        /// Key.
        key: String,
        /// Sources, bottom first.
        sources: Vec<String>,
        /// The merged tree.
        tree: Arc<Tree>,
        /// Labels asked for.
        labels: BTreeMap<String, String>,
        /// Worker.
        owner: usize,
    },
    /// Garbage collection or prune.
    Collect,
    /// Image pull.
    Pull,
    /// Image removal.
    RemoveImage {
        /// Image name.
        name: String,
    },
}

impl Pending {
    /// A short name of the operation, for the report.
    pub fn op(&self) -> &'static str {
        match self {
            Pending::Prepare { view: false, .. } => "prepare",
            Pending::Prepare { view: true, .. } => "view",
            Pending::Commit { .. } => "commit",
            Pending::Remove { .. } => "remove",
            Pending::Update { .. } => "update",
            Pending::Merge { .. } => "merge",
            Pending::Collect => "gc/prune",
            Pending::Pull => "pull",
            Pending::RemoveImage { .. } => "remove-image",
        }
    }
}

/// The image every pull fetches, as first unpacked: its name and each layer's chain ID,
/// parent chain ID and tree.
#[derive(Debug, Default)]
pub struct Reference {
    /// Image name as the daemon records it.
    pub image: String,
    /// Chain IDs bottom first, with their trees.
    pub chain: Vec<(String, Arc<Tree>)>,
}

impl Reference {
    /// The parent chain ID of layer `i`.
    pub fn parent(&self, i: usize) -> String {
        if i == 0 {
            String::new()
        } else {
            self.chain[i - 1].0.clone()
        }
    }
}

/// The expected state, shared by the workers.
#[derive(Debug, Default)]
pub struct Model {
    /// Snapshots, by key.
    pub snaps: BTreeMap<String, Snap>,
    /// Keys an operation in flight reads or changes (not to be removed meanwhile).
    pub busy: HashMap<String, usize>,
    /// Recorded images: name to chain IDs.
    pub images: BTreeMap<String, Vec<String>>,
    /// A pull or image removal is in flight.
    pub image_busy: bool,
    /// Operations without an answer.
    pub pending: Vec<Pending>,
    /// Invariant violations seen.
    pub violations: Vec<String>,
    /// The pulled image, if pulls are part of the mix.
    pub reference: Arc<Reference>,
    /// Counter for unique keys.
    pub counter: u64,
}

impl Model {
    /// A fresh key number.
    pub fn next(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    /// Marks `keys` busy.
    pub fn hold(&mut self, keys: &[String]) {
        for k in keys {
            *self.busy.entry(k.clone()).or_default() += 1;
        }
    }

    /// Releases what [`Model::hold`] marked.
    pub fn release(&mut self, keys: &[String]) {
        for k in keys {
            if let Some(n) = self.busy.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    self.busy.remove(k);
                }
            }
        }
    }

    /// Whether `key` has children or dependants in the model.
    pub fn has_dependants(&self, key: &str) -> bool {
        self.snaps
            .values()
            .any(|s| s.parent == key || s.deps.iter().chain(&s.maybe_deps).any(|d| d == key))
    }

    /// Snapshots garbage collection must keep: the rooted ones (root label, a recorded
    /// image's layers) and everything they need.
    pub fn protected(&self) -> HashSet<String> {
        let mut keep: Vec<String> = self
            .snaps
            .iter()
            .filter(|(_, s)| s.rooted())
            .map(|(k, _)| k.clone())
            .collect();
        keep.extend(self.images.values().flatten().cloned());
        let mut seen = HashSet::new();
        while let Some(k) = keep.pop() {
            if !seen.insert(k.clone()) {
                continue;
            }
            if let Some(s) = self.snaps.get(&k) {
                if !s.parent.is_empty() {
                    keep.push(s.parent.clone());
                }
                keep.extend(s.deps.iter().cloned());
            }
        }
        seen
    }

    /// Why `key` must survive garbage collection, for messages.
    pub fn why_kept(&self, key: &str) -> String {
        let mut why = Vec::new();
        if self.snaps.get(key).is_some_and(|s| s.rooted()) {
            why.push("it has the root label".to_owned());
        }
        for (image, chain) in &self.images {
            if chain.iter().any(|c| c == key) {
                why.push(format!("image {image} uses it"));
            }
        }
        for (k, s) in &self.snaps {
            if s.parent == key {
                why.push(format!(
                    "{k} ({:?}, rooted: {}) is its child",
                    s.kind,
                    s.rooted()
                ));
            }
            if s.deps.iter().any(|d| d == key) {
                why.push(format!(
                    "{k} ({:?}, rooted: {}) stacks it",
                    s.kind,
                    s.rooted()
                ));
            }
        }
        why.join("; ")
    }

    /// Adds the pulled layer `chain_id` (its tree from the reference) if missing.
    pub fn add_pulled(&mut self, chain_id: &str) {
        if self.snaps.contains_key(chain_id) {
            return;
        }
        let reference = self.reference.clone();
        if let Some(i) = reference.chain.iter().position(|(c, _)| c == chain_id) {
            self.snaps.insert(
                chain_id.to_owned(),
                Snap {
                    kind: Kind::Committed,
                    parent: reference.parent(i),
                    tree: reference.chain[i].1.clone(),
                    labels: None,
                    owner: None,
                    deps: Vec::new(),
                    maybe_deps: Vec::new(),
                },
            );
        }
    }

    /// Records a violation.
    pub fn violation(&mut self, what: String) {
        eprintln!("VIOLATION: {what}");
        self.violations.push(what);
    }
}
