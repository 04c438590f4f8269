//! File trees as the harness expects and sees them: every entry's kind, permission bits
//! and content digest, read from a mounted snapshot or changed by random writes.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use rand::rngs::StdRng;
use rand::RngExt;
use sha2::{Digest, Sha256};

/// One entry of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory and its permission bits.
    Dir {
        /// Permission bits.
        mode: u32,
    },
    /// A regular file: permission bits, size and SHA-256 of its bytes.
    File {
        /// Permission bits.
        mode: u32,
        /// Bytes.
        size: u64,
        /// SHA-256 of the contents, hex.
        digest: String,
    },
    /// A symbolic link and its target.
    Symlink {
        /// Link target.
        target: String,
    },
    /// A device, fifo or socket: its file type bits, permission bits and device number.
    Special {
        /// `st_mode`.
        mode: u32,
        /// `st_rdev`.
        rdev: u64,
    },
}

/// A whole tree: relative path (no leading '/') to entry. The root itself is left out.
pub type Tree = BTreeMap<String, Entry>;

/// Reads the tree under `root` (a mounted snapshot).
pub fn read_tree(root: &Path) -> std::io::Result<Tree> {
    let mut tree = Tree::new();
    walk(root, "", &mut tree)?;
    Ok(tree)
}

fn walk(dir: &Path, prefix: &str, tree: &mut Tree) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path)?;
        let ft = meta.file_type();
        let perm = meta.permissions().mode() & 0o7777;
        if ft.is_dir() {
            tree.insert(rel.clone(), Entry::Dir { mode: perm });
            walk(&path, &rel, tree)?;
        } else if ft.is_file() {
            tree.insert(
                rel,
                Entry::File {
                    mode: perm,
                    size: meta.len(),
                    digest: file_digest(&path)?,
                },
            );
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path)?.to_string_lossy().into_owned();
            tree.insert(rel, Entry::Symlink { target });
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() || ft.is_socket() {
            tree.insert(
                rel,
                Entry::Special {
                    mode: meta.mode(),
                    rdev: meta.rdev(),
                },
            );
        }
    }
    Ok(())
}

fn file_digest(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Where `actual` differs from `expected`, as at most `max` readable lines.
pub fn differences(expected: &Tree, actual: &Tree, max: usize) -> Vec<String> {
    let mut out = Vec::new();
    for (path, want) in expected {
        match actual.get(path) {
            None => out.push(format!("missing {path} ({})", describe(want))),
            Some(got) if got != want => out.push(format!(
                "changed {path}: expected {}, found {}",
                describe(want),
                describe(got)
            )),
            Some(_) => {}
        }
    }
    for (path, got) in actual {
        if !expected.contains_key(path) {
            out.push(format!("unexpected {path} ({})", describe(got)));
        }
    }
    out.truncate(max);
    out
}

fn describe(entry: &Entry) -> String {
    match entry {
        Entry::Dir { mode } => format!("dir {mode:o}"),
        Entry::File { mode, size, digest } => {
            format!(
                "file {mode:o} {size} B sha256:{}",
                digest.get(..12).unwrap_or(digest)
            )
        }
        Entry::Symlink { target } => format!("symlink -> {target}"),
        Entry::Special { mode, rdev } => format!("special {mode:o} rdev {rdev}"),
    }
}

/// The tree of a merge of full-tree diffs: each tree applied over the ones before it,
/// later entries replacing earlier ones at the same path.
pub fn overlay_all<'a>(trees: impl IntoIterator<Item = &'a Tree>) -> Tree {
    let mut out = Tree::new();
    for tree in trees {
        for (path, entry) in tree {
            // A non-directory replacing a directory hides what was below it.
            if !matches!(entry, Entry::Dir { .. })
                && matches!(out.get(path), Some(Entry::Dir { .. }))
            {
                let prefix = format!("{path}/");
                out.retain(|p, _| !p.starts_with(&prefix));
            }
            out.insert(path.clone(), entry.clone());
        }
    }
    out
}

/// Makes a few random changes in the mounted tree `root` (writes, overwrites,
/// deletions, symlinks, mode changes, directory removal) and the same in `tree`.
/// Paths come from a small pool (`d0`..`d3` holding `f0`..`f7`) so that snapshots
/// overwrite and delete what their parents hold.
pub fn random_changes(
    root: &Path,
    tree: &mut Tree,
    rng: &mut StdRng,
    count: usize,
) -> std::io::Result<()> {
    for _ in 0..count {
        let dir = format!("d{}", rng.random_range(0..4u32));
        let leaf = format!("{dir}/f{}", rng.random_range(0..8u32));
        match rng.random_range(0..100u32) {
            0..=54 => write_file(root, tree, rng, &dir, &leaf)?,
            55..=74 => {
                // delete some non-directory entry, if there is one
                let victims: Vec<String> = tree
                    .iter()
                    .filter(|(p, e)| !matches!(e, Entry::Dir { .. }) && p.starts_with('d'))
                    .map(|(p, _)| p.clone())
                    .collect();
                if !victims.is_empty() {
                    let victim = &victims[rng.random_range(0..victims.len())];
                    std::fs::remove_file(root.join(victim))?;
                    tree.remove(victim);
                }
            }
            75..=84 => {
                ensure_dir(root, tree, &dir)?;
                remove_leaf(root, tree, &leaf)?;
                let target = format!("f{}", rng.random_range(0..8u32));
                std::os::unix::fs::symlink(&target, root.join(&leaf))?;
                tree.insert(leaf, Entry::Symlink { target });
            }
            85..=94 => {
                if let Some(Entry::File { mode, .. }) = tree.get_mut(&leaf) {
                    let new = if *mode == 0o644 { 0o755 } else { 0o644 };
                    std::fs::set_permissions(
                        root.join(&leaf),
                        std::fs::Permissions::from_mode(new),
                    )?;
                    *mode = new;
                }
            }
            _ => {
                if matches!(tree.get(&dir), Some(Entry::Dir { .. })) {
                    std::fs::remove_dir_all(root.join(&dir))?;
                    let prefix = format!("{dir}/");
                    tree.retain(|p, _| p != &dir && !p.starts_with(&prefix));
                }
            }
        }
    }
    Ok(())
}

fn ensure_dir(root: &Path, tree: &mut Tree, dir: &str) -> std::io::Result<()> {
    if !matches!(tree.get(dir), Some(Entry::Dir { .. })) {
        std::fs::create_dir(root.join(dir))?;
        std::fs::set_permissions(root.join(dir), std::fs::Permissions::from_mode(0o755))?;
        tree.insert(dir.to_owned(), Entry::Dir { mode: 0o755 });
    }
    Ok(())
}

fn remove_leaf(root: &Path, tree: &mut Tree, leaf: &str) -> std::io::Result<()> {
    if tree.remove(leaf).is_some() {
        std::fs::remove_file(root.join(leaf))?;
    }
    Ok(())
}

fn write_file(
    root: &Path,
    tree: &mut Tree,
    rng: &mut StdRng,
    dir: &str,
    leaf: &str,
) -> std::io::Result<()> {
    ensure_dir(root, tree, dir)?;
    if matches!(tree.get(leaf), Some(Entry::Symlink { .. })) {
        remove_leaf(root, tree, leaf)?;
    }
    let size = match rng.random_range(0..100u32) {
        0..=9 => 0,
        10..=94 => rng.random_range(1..64 << 10),
        _ => rng.random_range(1 << 20..2 << 20),
    };
    let word: u64 = rng.random();
    let mut bytes = Vec::with_capacity(size);
    while bytes.len() < size {
        bytes.extend_from_slice(&(word.wrapping_add(bytes.len() as u64)).to_le_bytes());
    }
    bytes.truncate(size);
    let mode = if rng.random_bool(0.2) { 0o755 } else { 0o644 };
    let path = root.join(leaf);
    let mut file = std::fs::File::create(&path)?;
    file.write_all(&bytes)?;
    drop(file);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    tree.insert(
        leaf.to_owned(),
        Entry::File {
            mode,
            size: size as u64,
            digest: hex::encode(Sha256::digest(&bytes)),
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn random_changes_match_what_is_read_back() {
        let dir = tempfile_dir();
        let mut tree = Tree::new();
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..20 {
            random_changes(&dir, &mut tree, &mut rng, 10).unwrap();
            assert_eq!(read_tree(&dir).unwrap(), tree);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn later_trees_win_and_files_hide_directories() {
        let file = Entry::File {
            mode: 0o644,
            size: 0,
            digest: String::new(),
        };
        let a = Tree::from([
            ("x".into(), Entry::Dir { mode: 0o755 }),
            ("x/y".into(), file.clone()),
            ("z".into(), file.clone()),
        ]);
        let b = Tree::from([
            ("x".into(), Entry::Symlink { target: "z".into() }),
            ("z".into(), Entry::Dir { mode: 0o700 }),
        ]);
        let merged = overlay_all([&a, &b]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged["x"], Entry::Symlink { target: "z".into() });
        assert_eq!(merged["z"], Entry::Dir { mode: 0o700 });
        // x changed kind, x/y went with it, z changed kind.
        assert_eq!(differences(&a, &merged, 10).len(), 3);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("crashtest-tree-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
