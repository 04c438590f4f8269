//! The workers: each picks random operations against the model, sends them to laminad
//! and records the answer (acknowledged, a semantic error, or no answer at all because
//! laminad was killed meanwhile).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use rand::rngs::StdRng;
use rand::RngExt;
use tonic::Status;

use crate::client::{is_transport, Client, Kind};
use crate::model::{Model, Pending, Snap, ROOT_LABEL, UPDATE_LABEL};
use crate::tree::{differences, overlay_all, random_changes, read_tree};

/// What every worker shares.
pub struct Shared {
    /// The expected state.
    pub model: Mutex<Model>,
    /// Set once laminad has been killed: workers stop after their current operation.
    pub killed: AtomicBool,
    /// Garbage collection runs alone (write); every other operation takes it for read.
    pub gate: RwLock<()>,
    /// Include pulls (a registry image was given).
    pub pulls: Option<String>,
    /// Backend name (block refuses hard-link merges).
    pub backend: String,
    /// Acknowledged operations, for the report.
    pub acked: AtomicU64,
}

impl Shared {
    /// Locks the model (a poisoned lock means a worker panicked: keep going to report).
    pub fn model(&self) -> MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs operations until laminad is killed.
pub fn worker(shared: &Shared, client: &Client, worker: usize, mut rng: StdRng, mnt: &Path) {
    while !shared.killed.load(Ordering::SeqCst) {
        let choice = rng.random_range(0..100u32);
        if choice < 3 {
            let _gate = shared.gate.write().unwrap_or_else(|p| p.into_inner());
            collect(shared, client, rng.random_bool(0.5));
            continue;
        }
        let _gate = shared.gate.read().unwrap_or_else(|p| p.into_inner());
        // Past 32 snapshots, most operations become removals (verification mounts all).
        let choice = if choice < 50 && shared.model().snaps.len() > 32 {
            65 + choice % 15
        } else {
            choice
        };
        match choice {
            3..=22 => prepare(shared, client, worker, &mut rng, false),
            23..=27 => prepare(shared, client, worker, &mut rng, true),
            28..=49 => write(shared, client, worker, &mut rng, mnt),
            50..=64 => commit(shared, client, worker, &mut rng),
            65..=79 => remove(shared, client, worker, &mut rng),
            80..=84 => update(shared, client, worker, &mut rng),
            85..=91 => merge(shared, client, worker, &mut rng),
            92..=96 => pull(shared, client),
            _ => remove_image(shared, client),
        }
    }
}

/// How a call ended, as the model sees it.
enum Outcome<T> {
    /// Acknowledged.
    Ok(T),
    /// No answer: laminad died; the operation is pending.
    NoAnswer,
    /// A real error from a live daemon.
    Failed(Status),
}

fn classify<T>(shared: &Shared, result: Result<T, Status>) -> Outcome<T> {
    match result {
        Ok(v) => {
            shared.acked.fetch_add(1, Ordering::Relaxed);
            Outcome::Ok(v)
        }
        Err(s) if is_transport(&s) && shared.killed.load(Ordering::SeqCst) => Outcome::NoAnswer,
        Err(s) => Outcome::Failed(s),
    }
}

fn labels(rng: &mut StdRng) -> BTreeMap<String, String> {
    let mut l = BTreeMap::new();
    if rng.random_bool(0.8) {
        l.insert(ROOT_LABEL.to_owned(), "crashtest".to_owned());
    }
    if rng.random_bool(0.3) {
        l.insert("lamina.crashtest/note".to_owned(), "x".repeat(100));
    }
    l
}

fn pick<'a>(rng: &mut StdRng, keys: &'a [String]) -> Option<&'a String> {
    (!keys.is_empty()).then(|| &keys[rng.random_range(0..keys.len())])
}

/// Committed snapshots no other operation is using (one may be on its way out).
fn committed(model: &Model) -> Vec<String> {
    model
        .snaps
        .iter()
        .filter(|(k, s)| s.kind == Kind::Committed && !model.busy.contains_key(*k))
        .map(|(k, _)| k.clone())
        .collect()
}

fn owned(model: &Model, worker: usize, kind: Option<Kind>) -> Vec<String> {
    model
        .snaps
        .iter()
        .filter(|(k, s)| {
            s.owner == Some(worker)
                && kind.is_none_or(|kind| s.kind == kind)
                && !model.busy.contains_key(*k)
        })
        .map(|(k, _)| k.clone())
        .collect()
}

fn prepare(shared: &Shared, client: &Client, worker: usize, rng: &mut StdRng, view: bool) {
    let (key, parent, labels) = {
        let mut m = shared.model();
        if m.snaps.len() > 32 {
            return;
        }
        let parents = committed(&m);
        let parent = if rng.random_bool(0.25) {
            String::new()
        } else {
            pick(rng, &parents).cloned().unwrap_or_default()
        };
        let key = format!("w{worker}-{}{}", if view { "v" } else { "a" }, m.next());
        m.hold(&[key.clone(), parent.clone()]);
        (key, parent, labels(rng))
    };
    let result = client.prepare(&key, &parent, &labels, view);
    let mut m = shared.model();
    match classify(shared, result) {
        Outcome::Ok(_) => {
            let tree = tree_of(&m, &parent);
            m.snaps.insert(
                key.clone(),
                Snap {
                    kind: if view { Kind::View } else { Kind::Active },
                    parent: parent.clone(),
                    tree,
                    labels: Some(labels),
                    owner: Some(worker),
                    deps: Vec::new(),
                    maybe_deps: Vec::new(),
                },
            );
        }
        Outcome::NoAnswer => m.pending.push(Pending::Prepare {
            key: key.clone(),
            parent: parent.clone(),
            view,
            labels,
            owner: worker,
        }),
        Outcome::Failed(s) => m.violation(format!("prepare {key} on {parent:?}: {s:?}")),
    }
    m.release(&[key, parent]);
}

/// The expected tree of `key` ("" = empty).
pub fn tree_of(m: &Model, key: &str) -> Arc<crate::tree::Tree> {
    m.snaps.get(key).map(|s| s.tree.clone()).unwrap_or_default()
}

fn write(shared: &Shared, client: &Client, worker: usize, rng: &mut StdRng, mnt: &Path) {
    let (key, mut tree) = {
        let mut m = shared.model();
        let Some(key) = pick(rng, &owned(&m, worker, Some(Kind::Active))).cloned() else {
            return;
        };
        m.hold(std::slice::from_ref(&key));
        let tree = (*tree_of(&m, &key)).clone();
        (key, tree)
    };
    let result = client.mounts(&key);
    let mounts = match classify(shared, result) {
        Outcome::Ok(mounts) => mounts,
        Outcome::NoAnswer => {
            shared.model().release(&[key]);
            return;
        }
        Outcome::Failed(s) => {
            let mut m = shared.model();
            m.violation(format!("mounts of active {key}: {s:?}"));
            m.release(&[key]);
            return;
        }
    };
    let target = mnt.join("write");
    let outcome = (|| -> anyhow::Result<Vec<String>> {
        std::fs::create_dir_all(&target)?;
        lamina_core::sys::mount_all(&mounts, &target)?;
        let count = rng.random_range(1..12);
        let changed = random_changes(&target, &mut tree, rng, count);
        let seen = read_tree(&target);
        lamina_core::sys::unmount(&target)?;
        changed?;
        Ok(differences(&tree, &seen?, 5))
    })();
    let mut m = shared.model();
    match outcome {
        Ok(diff) if diff.is_empty() => {
            if let Some(s) = m.snaps.get_mut(&key) {
                s.tree = Arc::new(tree);
            }
        }
        Ok(diff) => m.violation(format!("active {key} right after writing: {diff:?}")),
        Err(e) => m.violation(format!("writing into active {key}: {e:#}")),
    }
    m.release(&[key]);
}

fn commit(shared: &Shared, client: &Client, worker: usize, rng: &mut StdRng) {
    let (key, name, labels) = {
        let mut m = shared.model();
        let Some(key) = pick(rng, &owned(&m, worker, Some(Kind::Active))).cloned() else {
            return;
        };
        let name = format!("w{worker}-c{}", m.next());
        m.hold(&[key.clone(), name.clone()]);
        (key, name, labels(rng))
    };
    let result = client.commit(&name, &key, &labels);
    let mut m = shared.model();
    match classify(shared, result) {
        Outcome::Ok(()) => {
            if let Some(mut s) = m.snaps.remove(&key) {
                s.kind = Kind::Committed;
                s.labels = Some(labels);
                m.snaps.insert(name.clone(), s);
            }
        }
        Outcome::NoAnswer => m.pending.push(Pending::Commit {
            name: name.clone(),
            key: key.clone(),
            labels,
        }),
        Outcome::Failed(s) => m.violation(format!("commit {key} as {name}: {s:?}")),
    }
    m.release(&[key, name]);
}

fn remove(shared: &Shared, client: &Client, worker: usize, rng: &mut StdRng) {
    let key = {
        let mut m = shared.model();
        let candidates: Vec<String> = owned(&m, worker, None)
            .into_iter()
            .filter(|k| !m.has_dependants(k))
            .collect();
        let Some(key) = pick(rng, &candidates).cloned() else {
            return;
        };
        m.hold(std::slice::from_ref(&key));
        key
    };
    let result = client.remove(&key);
    let mut m = shared.model();
    match classify(shared, result) {
        Outcome::Ok(()) => {
            m.snaps.remove(&key);
        }
        Outcome::NoAnswer => m.pending.push(Pending::Remove { key: key.clone() }),
        Outcome::Failed(s) => m.violation(format!("remove {key} (no dependants): {s:?}")),
    }
    m.release(&[key]);
}

fn update(shared: &Shared, client: &Client, worker: usize, rng: &mut StdRng) {
    let (key, old, new) = {
        let mut m = shared.model();
        let Some(key) = pick(rng, &owned(&m, worker, None)).cloned() else {
            return;
        };
        let old = m.snaps[&key]
            .labels
            .as_ref()
            .and_then(|l| l.get(UPDATE_LABEL).cloned());
        let new = format!("v{}", m.next());
        m.hold(std::slice::from_ref(&key));
        (key, old, new)
    };
    let result = client.set_label(&key, UPDATE_LABEL, &new);
    let mut m = shared.model();
    match classify(shared, result) {
        Outcome::Ok(()) => {
            if let Some(l) = m.snaps.get_mut(&key).and_then(|s| s.labels.as_mut()) {
                l.insert(UPDATE_LABEL.to_owned(), new);
            }
        }
        Outcome::NoAnswer => m.pending.push(Pending::Update {
            key: key.clone(),
            old,
            new,
        }),
        Outcome::Failed(s) => m.violation(format!("update labels of {key}: {s:?}")),
    }
    m.release(&[key]);
}

fn merge(shared: &Shared, client: &Client, worker: usize, rng: &mut StdRng) {
    let (key, sources, tree, labels) = {
        let mut m = shared.model();
        let block = shared.backend == "block";
        // Block stores refuse hard-link merges: only single layers without a parent
        // (stacked), not merges of merges.
        let candidates: Vec<String> = committed(&m)
            .into_iter()
            .filter(|k| {
                let s = &m.snaps[k];
                !block || (s.parent.is_empty() && s.deps.is_empty() && s.maybe_deps.is_empty())
            })
            .collect();
        if candidates.len() < 2 {
            return;
        }
        let count = rng.random_range(2..=3.min(candidates.len()));
        let mut sources = Vec::new();
        while sources.len() < count {
            let s = pick(rng, &candidates).cloned().unwrap_or_default();
            if !sources.contains(&s) {
                sources.push(s);
            }
        }
        let trees: Vec<_> = sources.iter().map(|s| tree_of(&m, s)).collect();
        let tree = Arc::new(overlay_all(trees.iter().map(|t| t.as_ref())));
        let key = format!("w{worker}-m{}", m.next());
        let mut hold = sources.clone();
        hold.push(key.clone());
        m.hold(&hold);
        (key, sources, tree, labels(rng))
    };
    let result = client.merge(&key, &sources, &labels);
    let mut m = shared.model();
    match classify(shared, result) {
        Outcome::Ok(method) => {
            let deps = if method == "stacked" {
                sources.clone()
            } else {
                Vec::new()
            };
            m.snaps.insert(
                key.clone(),
                Snap {
                    kind: Kind::Committed,
                    parent: String::new(),
                    tree,
                    labels: Some(labels),
                    owner: Some(worker),
                    deps,
                    maybe_deps: Vec::new(),
                },
            );
        }
        Outcome::NoAnswer => m.pending.push(Pending::Merge {
            key: key.clone(),
            sources: sources.clone(),
            tree,
            labels,
            owner: worker,
        }),
        Outcome::Failed(s) => m.violation(format!("merge {sources:?} into {key}: {s:?}")),
    }
    let mut hold = sources;
    hold.push(key);
    m.release(&hold);
}

fn collect(shared: &Shared, client: &Client, prune: bool) {
    let result = client.collect(prune);
    let mut m = shared.model();
    match classify(shared, result) {
        Outcome::Ok(removed) => {
            let protected = m.protected();
            for key in removed {
                if protected.contains(&key) {
                    let why = m.why_kept(&key);
                    m.violation(format!(
                        "garbage collection removed {key}, which a root keeps: {why}"
                    ));
                } else if m.snaps.remove(&key).is_none() {
                    m.violation(format!(
                        "garbage collection removed {key}, unknown to the model"
                    ));
                }
            }
        }
        Outcome::NoAnswer => m.pending.push(Pending::Collect),
        Outcome::Failed(s) => m.violation(format!("garbage collection (prune: {prune}): {s:?}")),
    }
}

fn pull(shared: &Shared, client: &Client) {
    let Some(reference) = shared.pulls.as_deref() else {
        return;
    };
    {
        let mut m = shared.model();
        if m.image_busy {
            return;
        }
        m.image_busy = true;
    }
    let result = client.pull(reference);
    let mut m = shared.model();
    match classify(shared, result) {
        Outcome::Ok((name, chain)) => {
            let expected: Vec<String> = m.reference.chain.iter().map(|(c, _)| c.clone()).collect();
            if chain != expected {
                m.violation(format!(
                    "pull gave chain {chain:?}, first pull gave {expected:?}"
                ));
            }
            for c in &chain {
                m.add_pulled(c);
            }
            m.images.insert(name, chain);
        }
        Outcome::NoAnswer => m.pending.push(Pending::Pull),
        Outcome::Failed(s) => m.violation(format!("pull {reference}: {s:?}")),
    }
    m.image_busy = false;
}

fn remove_image(shared: &Shared, client: &Client) {
    let name = {
        let mut m = shared.model();
        if m.image_busy {
            return;
        }
        let Some(name) = m.images.keys().next().cloned() else {
            return;
        };
        m.image_busy = true;
        name
    };
    let result = client.remove_image(&name);
    let mut m = shared.model();
    match classify(shared, result) {
        Outcome::Ok(()) => {
            m.images.remove(&name);
        }
        Outcome::NoAnswer => m.pending.push(Pending::RemoveImage { name }),
        Outcome::Failed(s) => m.violation(format!("remove image {name}: {s:?}")),
    }
    m.image_busy = false;
}

/// The directory a worker mounts snapshots on.
pub fn worker_mnt(base: &Path, worker: usize) -> PathBuf {
    base.join(format!("w{worker}"))
}
