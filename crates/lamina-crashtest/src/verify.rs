//! After each restart: learn how the operations that were cut off ended (each must have
//! happened wholly or not at all), then check every invariant of the store against the
//! model: records, kinds, parents, labels, contents, images, and disk against metadata.

use std::collections::BTreeMap;
use std::path::Path;

use crate::client::{Client, Info, Kind};
use crate::model::{Model, Pending, Snap, UPDATE_LABEL};
use crate::ops::tree_of;
use crate::tree::{differences, read_tree, Tree};

/// How the cut-off operations ended, counted per operation: (done, not done).
pub type Outcomes = BTreeMap<&'static str, (u64, u64)>;

/// Resolves `model.pending` by looking at the restarted store.
pub fn resolve_pending(model: &mut Model, client: &Client, outcomes: &mut Outcomes) {
    let mut pending = std::mem::take(&mut model.pending);
    // A cut-off collection may have removed any snapshot no root keeps, including one
    // another cut-off operation worked on: those are resolved first, knowing that.
    let collected = pending.iter().any(|p| matches!(p, Pending::Collect));
    pending.sort_by_key(|p| matches!(p, Pending::Collect));
    for op in pending {
        let done = match resolve(model, client, &op, collected) {
            Ok(done) => done,
            Err(e) => {
                model.violation(format!("resolving a cut-off {}: {e:#}", op.op()));
                false
            }
        };
        let slot = outcomes.entry(op.op()).or_default();
        if done {
            slot.0 += 1;
        } else {
            slot.1 += 1;
        }
    }
}

fn stat(client: &Client, key: &str) -> anyhow::Result<Option<Info>> {
    client
        .stat(key)
        .map_err(|s| anyhow::anyhow!("stat {key}: {s:?}"))
}

/// Whether `key` may be gone because a cut-off collection removed it.
fn maybe_collected(model: &Model, key: &str, collected: bool) -> bool {
    collected && !model.protected().contains(key)
}

fn resolve(
    model: &mut Model,
    client: &Client,
    op: &Pending,
    collected: bool,
) -> anyhow::Result<bool> {
    Ok(match op {
        Pending::Prepare {
            key,
            parent,
            view,
            labels,
            owner,
        } => match stat(client, key)? {
            None => false,
            Some(info) => {
                let kind = if *view { Kind::View } else { Kind::Active };
                if info.kind != kind || &info.parent != parent || &info.labels != labels {
                    model.violation(format!(
                        "cut-off {} of {key} on {parent:?} left {info:?}",
                        op.op()
                    ));
                }
                let tree = tree_of(model, parent);
                model.snaps.insert(
                    key.clone(),
                    Snap {
                        kind,
                        parent: parent.clone(),
                        tree,
                        labels: Some(labels.clone()),
                        owner: Some(*owner),
                        deps: Vec::new(),
                        maybe_deps: Vec::new(),
                    },
                );
                true
            }
        },
        Pending::Commit { name, key, labels } => match (stat(client, name)?, stat(client, key)?) {
            (Some(c), None) if c.kind == Kind::Committed && &c.labels == labels => {
                if let Some(mut s) = model.snaps.remove(key) {
                    s.kind = Kind::Committed;
                    s.labels = Some(labels.clone());
                    model.snaps.insert(name.clone(), s);
                }
                true
            }
            (None, Some(a)) if a.kind == Kind::Active => false,
            (None, None) if maybe_collected(model, key, collected) => {
                model.snaps.remove(key);
                false
            }
            (c, a) => {
                model.violation(format!(
                    "cut-off commit of {key} as {name} is half done: {name} = {c:?}, {key} = {a:?}"
                ));
                false
            }
        },
        Pending::Remove { key } => match stat(client, key)? {
            None => {
                model.snaps.remove(key);
                true
            }
            Some(_) => false,
        },
        Pending::Update { key, old, new } => {
            let info = stat(client, key)?;
            if info.is_none() && maybe_collected(model, key, collected) {
                model.snaps.remove(key);
                return Ok(false);
            }
            let now = info.as_ref().and_then(|i| i.labels.get(UPDATE_LABEL));
            if now == Some(new) {
                if let Some(l) = model.snaps.get_mut(key).and_then(|s| s.labels.as_mut()) {
                    l.insert(UPDATE_LABEL.to_owned(), new.clone());
                }
                true
            } else {
                if now != old.as_ref() {
                    model.violation(format!(
                        "cut-off label update of {key}: label is {now:?}, neither {old:?} nor {new:?}"
                    ));
                }
                false
            }
        }
        Pending::Merge {
            key,
            sources,
            tree,
            labels,
            owner,
        } => match stat(client, key)? {
            None => false,
            Some(info) => {
                if info.kind != Kind::Committed || !info.parent.is_empty() {
                    model.violation(format!("cut-off merge left {key} as {info:?}"));
                }
                model.snaps.insert(
                    key.clone(),
                    Snap {
                        kind: Kind::Committed,
                        parent: String::new(),
                        tree: tree.clone(),
                        labels: Some(labels.clone()),
                        owner: Some(*owner),
                        // Stacked or hard-linked is unknown: the sources are not
                        // removed while it lives, but a collection may take them.
                        deps: Vec::new(),
                        maybe_deps: sources.clone(),
                    },
                );
                true
            }
        },
        Pending::Collect => {
            let protected = model.protected();
            let candidates: Vec<String> = model
                .snaps
                .keys()
                .filter(|k| !protected.contains(*k))
                .cloned()
                .collect();
            let mut any = false;
            for key in candidates {
                if stat(client, &key)?.is_none() {
                    model.snaps.remove(&key);
                    any = true;
                }
            }
            any
        }
        Pending::Pull => {
            let images = client
                .images()
                .map_err(|s| anyhow::anyhow!("listing images: {s:?}"))?;
            let reference = model.reference.clone();
            let chain: Vec<String> = reference.chain.iter().map(|(c, _)| c.clone()).collect();
            for c in &chain {
                if stat(client, c)?.is_some() {
                    model.add_pulled(c);
                }
            }
            match images.get(&reference.image) {
                Some(got) => {
                    model.images.insert(reference.image.clone(), got.clone());
                    true
                }
                None => false,
            }
        }
        Pending::RemoveImage { name } => {
            let images = client
                .images()
                .map_err(|s| anyhow::anyhow!("listing images: {s:?}"))?;
            if images.contains_key(name) {
                false
            } else {
                model.images.remove(name);
                true
            }
        }
    })
}

/// What one verification looked at.
#[derive(Debug, Default)]
pub struct Checked {
    /// Snapshots whose tree was mounted and compared.
    pub trees: usize,
    /// Snapshot directories on disk after Cleanup.
    pub dirs: usize,
}

/// Checks every invariant against the running daemon; violations go into the model.
pub fn verify(model: &mut Model, client: &Client, root: &Path, mnt: &Path) -> Checked {
    let mut checked = Checked::default();
    let actual = match client.walk() {
        Ok(a) => a,
        Err(s) => {
            model.violation(format!("walk after restart: {s:?}"));
            return checked;
        }
    };
    // 1. Records: every acknowledged snapshot, as acknowledged; nothing else.
    for (key, snap) in &model.snaps.clone() {
        match actual.get(key) {
            None => model.violation(format!(
                "acknowledged {:?} snapshot {key} is missing after the restart",
                snap.kind
            )),
            Some(info) => {
                if info.kind != snap.kind || info.parent != snap.parent {
                    model.violation(format!(
                        "{key}: expected {:?} on {:?}, found {:?} on {:?}",
                        snap.kind, snap.parent, info.kind, info.parent
                    ));
                }
                if let Some(labels) = &snap.labels {
                    if &info.labels != labels {
                        model.violation(format!(
                            "{key}: labels {:?}, expected {labels:?}",
                            info.labels
                        ));
                    }
                }
            }
        }
    }
    for (key, info) in &actual {
        if !model.snaps.contains_key(key) {
            model.violation(format!(
                "{key} ({:?} on {:?}) exists but was never acknowledged (an orphan)",
                info.kind, info.parent
            ));
        }
    }
    // 2. Images: as acknowledged, each with its whole chain.
    match client.images() {
        Ok(images) => {
            let want: Vec<&String> = model.images.keys().collect();
            let got: Vec<&String> = images.keys().collect();
            if want != got {
                model.violation(format!("images {got:?}, expected {want:?}"));
            }
            for (name, chain) in &images {
                for c in chain {
                    if !actual.contains_key(c) {
                        model.violation(format!("image {name}: layer snapshot {c} is missing"));
                    }
                }
            }
        }
        Err(s) => model.violation(format!("listing images: {s:?}")),
    }
    // 3. Contents: every snapshot mounts and shows exactly its expected tree.
    let target = mnt.join("verify");
    let keys: Vec<(String, Snap)> = model
        .snaps
        .iter()
        .filter(|(k, _)| actual.contains_key(*k))
        .map(|(k, s)| (k.clone(), s.clone()))
        .collect();
    for (key, snap) in keys {
        match mounted_tree(client, &key, &snap, &target) {
            Ok(tree) => {
                checked.trees += 1;
                let diff = differences(&snap.tree, &tree, 5);
                if !diff.is_empty() {
                    model.violation(format!(
                        "{key} ({:?}): contents differ: {diff:?}",
                        snap.kind
                    ));
                }
            }
            Err(e) => model.violation(format!("{key} ({:?}) does not mount: {e:#}", snap.kind)),
        }
    }
    // 4. Disk against metadata: after Cleanup, one directory per snapshot, no more.
    if let Err(s) = client.cleanup() {
        model.violation(format!("cleanup: {s:?}"));
    }
    match (
        client.walk(),
        std::fs::read_dir(root.join("snapshots")).map(|d| d.count()),
    ) {
        (Ok(now), Ok(dirs)) => {
            checked.dirs = dirs;
            if dirs != now.len() {
                model.violation(format!(
                    "after Cleanup {dirs} snapshot directories for {} snapshots",
                    now.len()
                ));
            }
        }
        (Err(s), _) => model.violation(format!("walk after cleanup: {s:?}")),
        (_, Err(e)) => model.violation(format!("reading {}/snapshots: {e}", root.display())),
    }
    checked
}

/// Mounts `key` (a view of it, if committed), reads its tree and unmounts.
fn mounted_tree(client: &Client, key: &str, snap: &Snap, target: &Path) -> anyhow::Result<Tree> {
    let view = format!("crashtest-verify-{key}");
    let mounts = match snap.kind {
        Kind::Committed => client
            .prepare(&view, key, &BTreeMap::new(), true)
            .map_err(|s| anyhow::anyhow!("view of {key}: {s:?}"))?,
        _ => client
            .mounts(key)
            .map_err(|s| anyhow::anyhow!("mounts: {s:?}"))?,
    };
    std::fs::create_dir_all(target)?;
    lamina_core::sys::mount_all(&mounts, target)?;
    let tree = read_tree(target);
    lamina_core::sys::unmount(target)?;
    if snap.kind == Kind::Committed {
        client
            .remove(&view)
            .map_err(|s| anyhow::anyhow!("removing view {view}: {s:?}"))?;
    }
    Ok(tree?)
}

/// Nothing but the harness' own files may appear in its work directory: laminad writes
/// only under its root (and its socket).
pub fn check_work_dir(model: &mut Model, work: &Path, allowed: &[&str]) {
    let Ok(entries) = std::fs::read_dir(work) else {
        return;
    };
    let strays: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !allowed.contains(&name.as_str()))
        .collect();
    if !strays.is_empty() {
        model.violation(format!(
            "files outside laminad's root in {}: {strays:?}",
            work.display()
        ));
    }
}

/// Mounts and loop devices laminad holds under its root: each mount point mounted once
/// (a restart that mounted a layer image again on top would stack them), and no loop
/// device left on a deleted file or twice on the same one.
pub fn check_mounts(model: &mut Model, root: &Path) {
    let prefix = format!("{}/", root.display());
    let mut seen = std::collections::HashMap::<String, usize>::new();
    if let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") {
        for line in text.lines() {
            if let Some(point) = line.split(' ').nth(4) {
                if point.starts_with(&prefix) {
                    *seen.entry(point.to_owned()).or_default() += 1;
                }
            }
        }
    }
    for (point, n) in seen {
        if n > 1 {
            model.violation(format!("{point} is mounted {n} times over"));
        }
    }
    let mut backing = std::collections::HashMap::<String, usize>::new();
    if let Ok(devices) = std::fs::read_dir("/sys/block") {
        for dev in devices.flatten() {
            let file = dev.path().join("loop/backing_file");
            if let Ok(name) = std::fs::read_to_string(&file) {
                let name = name.trim().to_owned();
                if name.starts_with(&prefix) {
                    if name.ends_with("(deleted)") {
                        model.violation(format!(
                            "loop device {} is left on deleted file {name}",
                            dev.file_name().to_string_lossy()
                        ));
                    }
                    *backing.entry(name).or_default() += 1;
                }
            }
        }
    }
    for (file, n) in backing {
        if n > 1 {
            model.violation(format!("{n} loop devices on {file}"));
        }
    }
}
