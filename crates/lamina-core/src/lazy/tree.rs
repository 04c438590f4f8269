//! A layer's file tree, built from its table of contents (the entries of its seekable
//! index, [`TocEntry`], in tar order) the way an unpack would build
//! it in an overlay upper directory: later entries replace earlier ones, hard links share
//! an inode (which takes the link entry's metadata, as containerd applies it), `.wh.NAME`
//! becomes a 0:0 character device and `.wh..wh..opq` the `trusted.overlay.opaque` xattr,
//! so the mounted tree can be an overlayfs lower directory.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::index::{EntryKind, TocEntry};
use crate::layer::clean_path;

/// The inode number of the root directory (FUSE's fixed root id).
pub const ROOT: u64 = 1;

/// What a node of the tree is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A character device (a 0:0 one is an overlay whiteout).
    Char,
    /// A block device.
    Block,
    /// A named pipe.
    Fifo,
}

/// One inode of the tree.
#[derive(Debug, Clone)]
pub struct Node {
    /// What it is.
    pub kind: NodeKind,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Bytes (regular files).
    pub size: u64,
    /// Modification time.
    pub mtime: (i64, u32),
    /// Device number.
    pub rdev: u64,
    /// Symlink target.
    pub link: Option<PathBuf>,
    /// Extended attributes, by name.
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Layer data handle of a regular file.
    pub data: Option<u64>,
    /// Names in a directory, sorted.
    pub children: BTreeMap<OsString, u64>,
    /// The directory a directory sits in (the root is its own).
    pub parent: u64,
    /// Names that point at it.
    pub nlink: u32,
}

impl Node {
    fn dir(parent: u64) -> Node {
        Node {
            kind: NodeKind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: (0, 0),
            rdev: 0,
            link: None,
            xattrs: BTreeMap::new(),
            data: None,
            children: BTreeMap::new(),
            parent,
            nlink: 1,
        }
    }
}

/// A layer's tree: inode `n` is `nodes[n - 1]`, inode [`ROOT`] the root.
#[derive(Debug, Clone)]
pub struct Tree {
    nodes: Vec<Node>,
    /// Directories made only because an entry below them needed a parent.
    implicit: std::collections::BTreeSet<u64>,
}

impl Tree {
    /// Builds the tree of `entries` (tar order). A regular file's data handle is where
    /// its bytes start in the layer stream.
    pub fn build(entries: &[TocEntry]) -> Tree {
        let mut t = Tree {
            nodes: vec![Node::dir(ROOT)],
            implicit: Default::default(),
        };
        for e in entries {
            t.add(e);
        }
        t
    }

    /// The node of inode `ino`.
    pub fn node(&self, ino: u64) -> Option<&Node> {
        usize::try_from(ino)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| self.nodes.get(i))
    }

    /// Inodes in the tree (reachable or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the tree has only its root.
    pub fn is_empty(&self) -> bool {
        self.nodes.len() == 1
    }

    /// Fits the tree to the layers it will sit on (`lowers`, topmost first), as an unpack
    /// into an overlay upper directory does: a directory the layer left implicit takes
    /// the owner, mode and xattrs of the same directory below (overlayfs would show those),
    /// and a whiteout that hides nothing below is dropped (overlayfs lists it as a broken
    /// entry in a directory no lower layer has).
    pub fn fit_to_lowers(&mut self, lowers: &[PathBuf]) {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let below = |rel: &Path| {
            lowers.iter().find_map(|l| {
                let p = l.join(rel);
                std::fs::symlink_metadata(&p).ok().map(|m| (p, m))
            })
        };
        let implicit: Vec<u64> = std::mem::take(&mut self.implicit).into_iter().collect();
        let paths = self.paths(&implicit);
        for (ino, rel) in implicit.into_iter().zip(paths) {
            // A directory replaced later in the layer is no longer in the tree.
            let Some(rel) = rel else { continue };
            let Some((path, meta)) = below(&rel).filter(|(_, m)| m.is_dir()) else {
                continue;
            };
            let xattrs: BTreeMap<String, Vec<u8>> = crate::sys::list_xattrs(&path)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|name| {
                    let value = crate::sys::get_xattr(&path, &name).ok().flatten()?;
                    let name = name.into_string().ok()?;
                    (!name.starts_with("trusted.overlay.")).then_some((name, value))
                })
                .collect();
            let n = self.node_mut(ino);
            n.uid = meta.uid();
            n.gid = meta.gid();
            n.mode = meta.mode() & 0o7777;
            let opaque = n.xattrs.remove("trusted.overlay.opaque");
            n.xattrs = xattrs;
            if let Some(o) = opaque {
                n.xattrs.insert("trusted.overlay.opaque".into(), o);
            }
        }
        let mut stack = vec![(ROOT, PathBuf::new())];
        while let Some((dir, rel)) = stack.pop() {
            let children: Vec<(OsString, u64)> = self
                .node(dir)
                .map(|n| n.children.iter().map(|(k, v)| (k.clone(), *v)).collect())
                .unwrap_or_default();
            for (name, child) in children {
                let path = rel.join(&name);
                match self.node(child).map(|n| (n.kind, n.rdev, n.parent)) {
                    Some((NodeKind::Char, 0, _)) => {
                        let hides = below(&path).is_some_and(|(_, m)| {
                            !(m.file_type().is_char_device() && m.rdev() == 0)
                        });
                        if !hides {
                            self.node_mut(dir).children.remove(&name);
                        }
                    }
                    Some((NodeKind::Dir, _, p)) if p == dir => stack.push((child, path)),
                    _ => {}
                }
            }
        }
    }

    /// The paths of inodes `inos` (of a hard-linked file, one of its names), `None` for
    /// one not in the tree. Each directory involved is scanned once, however many of its
    /// entries are asked for.
    pub fn paths(&self, inos: &[u64]) -> Vec<Option<PathBuf>> {
        use std::collections::HashMap;
        // Directory -> (entry inode -> name), and directory -> its path, as met.
        let mut names: HashMap<u64, HashMap<u64, &OsString>> = HashMap::new();
        let mut dirs: HashMap<u64, PathBuf> = HashMap::from([(ROOT, PathBuf::new())]);
        let mut path_of = |ino: u64| -> Option<PathBuf> {
            // Up to the nearest directory whose path is known, then down again.
            let mut up = Vec::new();
            let mut at = ino;
            let mut base = loop {
                if let Some(p) = dirs.get(&at) {
                    break p.clone();
                }
                let parent = self.node(at)?.parent;
                if up.contains(&at) || up.len() > self.nodes.len() {
                    return None; // not reachable from the root
                }
                up.push(at);
                at = parent;
            };
            for &child in up.iter().rev() {
                let parent = self.node(child)?.parent;
                let dir = names.entry(parent).or_insert_with(|| {
                    self.node(parent)
                        .map(|p| p.children.iter().map(|(n, &c)| (c, n)).collect())
                        .unwrap_or_default()
                });
                base.push(dir.get(&child)?);
                if self.node(child)?.kind == NodeKind::Dir {
                    dirs.insert(child, base.clone());
                }
            }
            Some(base)
        };
        inos.iter()
            .map(|&ino| if ino == ROOT { None } else { path_of(ino) })
            .collect()
    }

    /// The inode at `path`, following no symlinks.
    pub fn lookup_path(&self, path: &Path) -> Option<u64> {
        let mut ino = ROOT;
        for c in clean_path(path).components() {
            ino = *self.node(ino)?.children.get(c.as_os_str())?;
        }
        Some(ino)
    }

    /// Where the bytes of the files at `paths` lie in the layer stream, as (start, length)
    /// in the order given: a directory stands for every file below it (in name order), a
    /// path the layer lacks for nothing. What a prefetch list asks for.
    pub fn data_ranges(&self, paths: &[PathBuf]) -> Vec<(u64, u64)> {
        let mut ranges = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for path in paths {
            let Some(top) = self.lookup_path(path) else {
                continue;
            };
            let mut stack = vec![top];
            while let Some(ino) = stack.pop() {
                let Some(n) = self.node(ino) else { continue };
                if !seen.insert(ino) {
                    continue; // a hard link met again, or a path listed twice
                }
                match (n.kind, n.data) {
                    (NodeKind::File, Some(start)) if n.size > 0 => ranges.push((start, n.size)),
                    // Children pushed in reverse so they come off the stack in name order.
                    (NodeKind::Dir, _) => stack.extend(n.children.values().rev()),
                    _ => {}
                }
            }
        }
        ranges
    }

    fn node_mut(&mut self, ino: u64) -> &mut Node {
        &mut self.nodes[ino as usize - 1]
    }

    fn push(&mut self, node: Node) -> u64 {
        self.nodes.push(node);
        self.nodes.len() as u64
    }

    /// The directory at `dir` (components), made (0755, root) where missing or where
    /// something else stands.
    fn dir_at(&mut self, dir: &Path) -> u64 {
        let mut ino = ROOT;
        for c in dir.components() {
            let name = c.as_os_str().to_owned();
            let next = match self.node(ino).and_then(|n| n.children.get(&name)) {
                Some(&child) if self.node(child).is_some_and(|n| n.kind == NodeKind::Dir) => child,
                _ => {
                    let child = self.push(Node::dir(ino));
                    self.link(ino, name, child);
                    self.implicit.insert(child);
                    child
                }
            };
            ino = next;
        }
        ino
    }

    /// Whether `dir` or a directory above it is opaque.
    fn opaque_above(&self, mut dir: u64) -> bool {
        loop {
            let Some(n) = self.node(dir) else {
                return false;
            };
            if n.xattrs.contains_key("trusted.overlay.opaque") {
                return true;
            }
            if dir == ROOT {
                return false;
            }
            dir = n.parent;
        }
    }

    /// Removes every whiteout in the tree below directory `dir`.
    fn drop_whiteouts_below(&mut self, dir: u64) {
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            let children: Vec<(OsString, u64)> = self
                .node(d)
                .map(|n| n.children.iter().map(|(k, v)| (k.clone(), *v)).collect())
                .unwrap_or_default();
            for (name, child) in children {
                match self.node(child).map(|n| (n.kind, n.rdev, n.parent)) {
                    Some((NodeKind::Char, 0, _)) => {
                        self.node_mut(d).children.remove(&name);
                    }
                    Some((NodeKind::Dir, _, p)) if p == d => stack.push(child),
                    _ => {}
                }
            }
        }
    }

    /// Points `name` in directory `dir` at `ino`, dropping what was there.
    fn link(&mut self, dir: u64, name: OsString, ino: u64) {
        if let Some(old) = self.node_mut(dir).children.insert(name, ino) {
            let n = self.node_mut(old);
            n.nlink = n.nlink.saturating_sub(1);
        }
    }

    fn add(&mut self, e: &TocEntry) {
        let path = clean_path(&e.path);
        let Some(name) = path.file_name().map(OsStr::to_owned) else {
            // "./" itself: only a directory entry changes the root's attributes.
            if e.kind == EntryKind::Dir {
                let root = self.node_mut(ROOT);
                set_meta(root, e);
            }
            return;
        };
        let parent = self.dir_at(path.parent().unwrap_or(Path::new("")));
        let raw = name.as_bytes();
        if raw == b".wh..wh..opq" {
            // Hides the lower layers' contents, not this layer's: whiteouts this layer
            // wrote below it are redundant now (and overlayfs would list them).
            self.node_mut(parent)
                .xattrs
                .insert("trusted.overlay.opaque".into(), b"y".to_vec());
            self.drop_whiteouts_below(parent);
            return;
        }
        if let Some(hidden) = raw.strip_prefix(b".wh.") {
            if hidden.starts_with(b".wh.") {
                return; // aufs bookkeeping
            }
            if self.opaque_above(parent) {
                // Already hidden by an opaque directory: drop only this layer's entry.
                if let Some(old) = self
                    .node_mut(parent)
                    .children
                    .remove(OsStr::from_bytes(hidden))
                {
                    let n = self.node_mut(old);
                    n.nlink = n.nlink.saturating_sub(1);
                }
                return;
            }
            let mut wh = Node::dir(parent);
            wh.kind = NodeKind::Char;
            wh.mode = 0;
            wh.mtime = e.mtime;
            let ino = self.push(wh);
            self.link(parent, OsStr::from_bytes(hidden).to_owned(), ino);
            return;
        }
        match e.kind {
            EntryKind::Dir => {
                let existing = self
                    .node(parent)
                    .and_then(|p| p.children.get(&name).copied())
                    .filter(|&c| self.node(c).is_some_and(|n| n.kind == NodeKind::Dir));
                let over_whiteout = self
                    .node(parent)
                    .and_then(|p| p.children.get(&name))
                    .and_then(|&c| self.node(c))
                    .is_some_and(|n| n.kind == NodeKind::Char && n.rdev == 0);
                let ino = match existing {
                    Some(ino) => ino,
                    None => {
                        let ino = self.push(Node::dir(parent));
                        self.link(parent, name, ino);
                        ino
                    }
                };
                set_meta(self.node_mut(ino), e);
                self.implicit.remove(&ino);
                if over_whiteout {
                    // Deleted, then made again in this layer: nothing below shows through.
                    self.node_mut(ino)
                        .xattrs
                        .insert("trusted.overlay.opaque".into(), b"y".to_vec());
                }
            }
            EntryKind::HardLink => {
                let target = e
                    .link_target
                    .as_deref()
                    .and_then(|t| self.lookup_path(t))
                    .filter(|&t| self.node(t).is_some_and(|n| n.kind != NodeKind::Dir));
                // A link to nothing in this layer (or to a directory) is left out: such
                // a layer is refused by the full unpack, which the caller falls back to.
                if let Some(target) = target {
                    self.link(parent, name, target);
                    let n = self.node_mut(target);
                    n.nlink += 1;
                    set_meta(n, e);
                }
            }
            kind => {
                let mut node = Node::dir(parent);
                node.kind = match kind {
                    EntryKind::Symlink => NodeKind::Symlink,
                    EntryKind::Char => NodeKind::Char,
                    EntryKind::Block => NodeKind::Block,
                    EntryKind::Fifo => NodeKind::Fifo,
                    // Whiteouts and opaque markers were taken by their names above.
                    _ => NodeKind::File,
                };
                if node.kind == NodeKind::File {
                    node.size = e.size;
                    node.data = e.data_offset;
                }
                if kind == EntryKind::Symlink {
                    node.link = e.link_target.clone();
                }
                node.rdev = e
                    .device
                    .map(|(major, minor)| rustix::fs::makedev(major, minor))
                    .unwrap_or(0);
                set_meta(&mut node, e);
                let ino = self.push(node);
                self.link(parent, name, ino);
            }
        }
    }
}

/// Owner, mode, mtime and xattrs of `e` onto `n` (overlayfs' own xattrs are not the
/// layer's to set).
fn set_meta(n: &mut Node, e: &TocEntry) {
    n.mode = e.mode & 0o7777;
    n.uid = e.uid;
    n.gid = e.gid;
    n.mtime = e.mtime;
    let opaque = n.xattrs.get("trusted.overlay.opaque").cloned();
    n.xattrs = e
        .xattrs
        .iter()
        .filter(|(k, _)| !k.starts_with("trusted.overlay."))
        .cloned()
        .collect();
    if let Some(v) = opaque {
        n.xattrs.insert("trusted.overlay.opaque".into(), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(path: &str, kind: EntryKind) -> TocEntry {
        TocEntry {
            path: path.into(),
            kind,
            mode: 0o644,
            uid: 1,
            gid: 2,
            size: 3,
            mtime: (5, 6),
            xattrs: Vec::new(),
            link_target: None,
            device: None,
            data_offset: Some(9),
            sparse: None,
        }
    }

    #[test]
    fn replacements_links_whiteouts_and_opaque_dirs() {
        let mut link = e("a/l", EntryKind::HardLink);
        link.link_target = Some("a/f".into());
        link.mode = 0o600;
        let t = Tree::build(&[
            e("a/f", EntryKind::File),
            link,
            e("a/.wh.gone", EntryKind::Whiteout),
            e("b/x", EntryKind::File),
            e("b/.wh..wh..opq", EntryKind::Opaque),
            e("b/y", EntryKind::File),
            e("../../c", EntryKind::File),
            e("c", EntryKind::Dir),
        ]);
        let f = t.lookup_path(Path::new("a/f")).unwrap();
        assert_eq!(t.lookup_path(Path::new("a/l")), Some(f));
        let n = t.node(f).unwrap();
        assert_eq!(
            (n.nlink, n.mode),
            (2, 0o600),
            "the link entry's metadata wins"
        );
        let wh = t.node(t.lookup_path(Path::new("a/gone")).unwrap()).unwrap();
        assert_eq!((wh.kind, wh.rdev), (NodeKind::Char, 0));
        let b = t.node(t.lookup_path(Path::new("b")).unwrap()).unwrap();
        assert_eq!(
            b.xattrs.get("trusted.overlay.opaque").map(Vec::as_slice),
            Some(&b"y"[..])
        );
        assert_eq!(
            b.children.keys().collect::<Vec<_>>(),
            ["x", "y"],
            "an opaque marker hides lower layers, not this one"
        );
        let c = t.node(t.lookup_path(Path::new("c")).unwrap()).unwrap();
        assert_eq!(c.kind, NodeKind::Dir, "a later directory replaces the file");
        let a = t.node(t.lookup_path(Path::new("a")).unwrap()).unwrap();
        assert_eq!((a.mode, a.uid), (0o755, 0), "implicit parents: 0755, root");
    }

    #[test]
    fn data_ranges_follow_the_list_and_expand_directories() {
        let file = |path: &str, at: u64, size: u64| {
            let mut f = e(path, EntryKind::File);
            (f.data_offset, f.size) = (Some(at), size);
            f
        };
        let mut link = e("d/link", EntryKind::HardLink);
        link.link_target = Some("d/b".into());
        let t = Tree::build(&[
            file("d/b", 100, 10),
            file("d/a", 200, 20),
            file("d/e/c", 300, 30),
            file("d/empty", 400, 0),
            link,
            file("top", 500, 50),
            e("d/sym", EntryKind::Symlink),
        ]);
        let paths = ["top", "missing", "d", "/d/a", "d/sym"].map(PathBuf::from);
        assert_eq!(
            t.data_ranges(&paths),
            [(500, 50), (200, 20), (100, 10), (300, 30)],
            "listed order, a directory's files in name order, each file once, \
             empty files, symlinks and missing paths left out"
        );
        assert!(t.data_ranges(&[]).is_empty());
    }

    #[test]
    fn paths_of_inodes() {
        let mut link = e("a/b/link", EntryKind::HardLink);
        link.link_target = Some("a/f".into());
        let t = Tree::build(&[
            e("a/f", EntryKind::File),
            e("a/b/g", EntryKind::File),
            link,
            e("top", EntryKind::File),
        ]);
        let ino = |p: &str| t.lookup_path(Path::new(p)).unwrap();
        let asked = [
            ino("a/b/g"),
            ino("top"),
            ino("a/f"),
            ino("a/b"),
            ROOT,
            9999,
            ino("a/b/g"),
        ];
        let want = ["a/b/g", "top", "a/f", "a/b"].map(|p| Some(PathBuf::from(p)));
        assert_eq!(
            t.paths(&asked),
            [
                want[0].clone(),
                want[1].clone(),
                want[2].clone(),
                want[3].clone(),
                None,
                None,
                want[0].clone()
            ]
        );
        assert_eq!(
            t.paths(&[ino("a/b/link")]),
            [Some(PathBuf::from("a/f"))],
            "a hard link: its first name"
        );
    }

    #[test]
    fn fitted_to_lowers_like_an_unpack_into_an_upper_dir() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let lower = tempfile::tempdir().unwrap();
        let a = lower.path().join("a");
        std::fs::create_dir(&a).unwrap();
        std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o710)).unwrap();
        std::os::unix::fs::chown(&a, Some(7), Some(8)).unwrap();
        std::fs::write(a.join("kept"), b"x").unwrap();
        let mut t = Tree::build(&[
            e("a/f", EntryKind::File),
            e("a/.wh.kept", EntryKind::Whiteout),
            e("a/.wh.gone", EntryKind::Whiteout),
            e("n/f", EntryKind::File),
            e("d", EntryKind::Dir),
            e("d/.wh.nothing", EntryKind::Whiteout),
        ]);
        t.fit_to_lowers(&[lower.path().to_path_buf()]);
        let node = |p: &str| t.lookup_path(Path::new(p)).and_then(|i| t.node(i));
        let fitted = node("a").unwrap();
        let m = std::fs::metadata(&a).unwrap();
        assert_eq!(
            (fitted.mode, fitted.uid, fitted.gid),
            (m.mode() & 0o7777, 7, 8),
            "an implicit directory takes the lower directory's attributes"
        );
        assert_eq!(
            node("n").unwrap().mode,
            0o755,
            "no lower directory: as made"
        );
        assert_eq!(
            node("d").unwrap().mode,
            0o644,
            "explicit entries keep their own"
        );
        assert!(node("a/kept").is_some_and(|n| n.kind == NodeKind::Char));
        assert!(
            node("a/gone").is_none(),
            "a whiteout hiding nothing is dropped"
        );
        assert!(node("d/nothing").is_none());
        assert!(node("a/f").is_some());
    }
}
