//! Seekable layer indexes: built from gzip (one member and several), zstd (one frame,
//! several, and re-encoded seekable) and plain tars, checked entry by entry against the
//! tar they were made from, read back at random offsets, and fed damaged blobs and
//! damaged indexes. Needs no root.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::OnceLock;

use lamina_core::index::{
    build_index, reencode_seekable, BlobSource, BuildOptions, EntryKind, IndexError, IndexedLayer,
    LayerIndex, SparseChunk, TocEntry, DEFAULT_SPAN, DEFAULT_ZSTD_LEVEL, FORMAT_VERSION, MAGIC,
};
use lamina_core::layer::{Compression, Digest};
use proptest::prelude::*;
use tar::{Builder, EntryType, GnuExtSparseHeader, Header};

/// The span the test layers are indexed with: small, so that files cross many spans.
const SPAN: u64 = 64 << 10;

/// A deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Text-like bytes (words, compressing about 3x) with random runs in between, so
    /// deflate makes blocks of varied kinds.
    fn content(&mut self, len: usize) -> Vec<u8> {
        const WORDS: [&str; 16] = [
            "lamina",
            "layer",
            "index",
            "zran",
            "checkpoint",
            "window",
            "deflate",
            "zstd",
            "frame",
            "the",
            "of",
            "and",
            "\n",
            "0123456789",
            "container",
            "snapshot",
        ];
        let mut out = Vec::with_capacity(len + 300);
        while out.len() < len {
            if self.below(24) == 0 {
                let n = 16 + self.below(240);
                out.extend((0..n).map(|_| self.next() as u8));
            } else {
                out.extend_from_slice(WORDS[self.below(16) as usize].as_bytes());
                out.push(b' ');
            }
        }
        out.truncate(len);
        out
    }
}

/// What an entry must look like in the index, and a file's bytes.
struct Expect {
    toc: TocEntry,
    content: Option<Vec<u8>>,
}

/// A tar under construction with the entries it should index to.
struct LayerBuilder {
    b: Builder<Vec<u8>>,
    expect: Vec<Expect>,
}

fn header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(1000);
    h.set_gid(1001);
    h.set_mtime(1_600_000_000);
    h
}

fn toc(path: &str, kind: EntryKind, mode: u32) -> TocEntry {
    TocEntry {
        path: PathBuf::from(path),
        kind,
        mode,
        uid: 1000,
        gid: 1001,
        size: 0,
        mtime: (1_600_000_000, 0),
        xattrs: Vec::new(),
        link_target: None,
        device: None,
        data_offset: if kind == EntryKind::File {
            Some(0)
        } else {
            None
        },
        sparse: None,
    }
}

impl LayerBuilder {
    fn new() -> Self {
        LayerBuilder {
            b: Builder::new(Vec::new()),
            expect: Vec::new(),
        }
    }

    fn expect(&mut self, toc: TocEntry, content: Option<Vec<u8>>) {
        self.expect.push(Expect { toc, content });
    }

    fn file(&mut self, path: &str, data: &[u8], mode: u32) {
        let mut h = header(EntryType::Regular, mode, data.len() as u64);
        self.b.append_data(&mut h, path, data).unwrap();
        let mut t = toc(path, EntryKind::File, mode);
        t.size = data.len() as u64;
        self.expect(t, Some(data.to_vec()));
    }

    fn dir(&mut self, path: &str, mode: u32) {
        let mut h = header(EntryType::Directory, mode, 0);
        self.b.append_data(&mut h, path, &[][..]).unwrap();
        self.expect(toc(path.trim_end_matches('/'), EntryKind::Dir, mode), None);
    }

    fn link(&mut self, kind: EntryType, path: &str, target: &str) {
        let mut h = header(kind, 0o777, 0);
        self.b.append_link(&mut h, path, target).unwrap();
        let k = if kind == EntryType::Link {
            EntryKind::HardLink
        } else {
            EntryKind::Symlink
        };
        let mut t = toc(path, k, 0o777);
        t.link_target = Some(PathBuf::from(target));
        self.expect(t, None);
    }

    fn device(&mut self, kind: EntryType, path: &str, major: u32, minor: u32) {
        let mut h = header(kind, 0o660, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.b.append_data(&mut h, path, &[][..]).unwrap();
        let k = if kind == EntryType::Char {
            EntryKind::Char
        } else {
            EntryKind::Block
        };
        let mut t = toc(path, k, 0o660);
        t.device = Some((major, minor));
        self.expect(t, None);
    }

    /// A GNU sparse file: `chunks` (offset, data) in order, every one but the last a
    /// multiple of 512 bytes long, the file `size` bytes long (more than the end of the
    /// last chunk makes a trailing hole, written as GNU tar does: an empty last chunk).
    fn sparse(&mut self, path: &str, size: u64, chunks: &[(u64, Vec<u8>)]) {
        let mut map: Vec<(u64, u64)> = chunks.iter().map(|(o, d)| (*o, d.len() as u64)).collect();
        let end = map.last().map_or(0, |(o, l)| o + l);
        if end < size {
            map.push((size, 0));
        }
        let stored: u64 = map.iter().map(|(_, l)| l).sum();
        let mut h = header(EntryType::GNUSparse, 0o644, stored);
        h.set_path(path).unwrap();
        let gnu = h.as_gnu_mut().unwrap();
        gnu.set_real_size(size);
        for (slot, (o, l)) in gnu.sparse.iter_mut().zip(&map) {
            slot.set_offset(*o);
            slot.set_length(*l);
        }
        gnu.set_is_extended(map.len() > 4);
        h.set_cksum();
        let mut bytes = h.as_bytes().to_vec();
        let rest: Vec<_> = map.iter().skip(4).collect();
        let groups: Vec<_> = rest.chunks(21).collect();
        for (i, group) in groups.iter().enumerate() {
            let mut ext = GnuExtSparseHeader::new();
            for (slot, (o, l)) in ext.sparse.iter_mut().zip(group.iter()) {
                slot.set_offset(*o);
                slot.set_length(*l);
            }
            ext.set_is_extended(i + 1 < groups.len());
            bytes.extend_from_slice(ext.as_bytes());
        }
        for (_, d) in chunks {
            bytes.extend_from_slice(d);
        }
        bytes.resize(bytes.len().div_ceil(512) * 512, 0);
        self.b.get_mut().extend_from_slice(&bytes);
        let mut logical = vec![0u8; size as usize];
        for (o, d) in chunks {
            logical[*o as usize..*o as usize + d.len()].copy_from_slice(d);
        }
        let mut t = toc(path, EntryKind::File, 0o644);
        t.size = size;
        t.sparse = Some(
            chunks
                .iter()
                .map(|(o, d)| SparseChunk {
                    offset: *o,
                    len: d.len() as u64,
                })
                .collect(),
        );
        self.expect(t, Some(logical));
    }

    fn finish(self) -> (Vec<u8>, Vec<Expect>) {
        (self.b.into_inner().unwrap(), self.expect)
    }
}

/// The test layer: every entry type, names and metadata only PAX or GNU extensions can
/// carry, sparse files, a replaced file, and files of sizes around block and span edges
/// up to a few MiB.
fn test_layer() -> (Vec<u8>, Vec<Expect>) {
    let mut rng = Rng(0x1a31_4a5e_ed00_0001);
    let mut l = LayerBuilder::new();
    l.dir("./", 0o755);
    l.expect.last_mut().unwrap().toc.path = PathBuf::new();
    l.dir("etc/", 0o755);
    l.file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644);
    l.file("bin/su", b"#!setuid", 0o4755);
    l.dir("tmp/", 0o1777);
    l.link(
        EntryType::Symlink,
        "etc/localtime",
        "/usr/share/zoneinfo/UTC",
    );
    for size in [
        0usize, 1, 100, 511, 512, 513, 4096, 65535, 65536, 65537, 200_000, 1_000_000, 3_000_000,
    ] {
        let data = rng.content(size);
        l.file(&format!("data/f{size}"), &data, 0o644);
    }
    l.link(EntryType::Link, "data/hard", "data/f200000");
    l.link(EntryType::Link, "data/hard2", "data/hard");
    l.device(EntryType::Char, "dev/null", 1, 3);
    l.device(EntryType::Block, "dev/loop0", 7, 0);
    let mut h = header(EntryType::Fifo, 0o600, 0);
    l.b.append_data(&mut h, "run/fifo", &[][..]).unwrap();
    l.expect(toc("run/fifo", EntryKind::Fifo, 0o600), None);
    // Whiteouts and markers keep their raw names; aufs bookkeeping too.
    for (path, kind) in [
        ("usr/.wh.gone", EntryKind::Whiteout),
        ("var/cache/.wh..wh..opq", EntryKind::Opaque),
        (".wh..wh.aufs", EntryKind::Whiteout),
    ] {
        let mut h = header(EntryType::Regular, 0o600, 0);
        l.b.append_data(&mut h, path, &[][..]).unwrap();
        let mut t = toc(path, kind, 0o600);
        t.data_offset = None;
        l.expect(t, None);
    }
    // A GNU long name (the tar crate writes an `L` entry).
    let long = format!("deep/{}/file", "n".repeat(150));
    let data = rng.content(70_000);
    l.file(&long, &data, 0o600);
    // PAX: a long name, xattrs (trusted.overlay.* kept raw), a sub-second mtime, big ids.
    let pax_path = format!("pax/{}/file", "p".repeat(200));
    let data = rng.content(150_000);
    l.b.append_pax_extensions([
        ("path", pax_path.as_bytes()),
        ("SCHILY.xattr.user.origin", &b"lamina"[..]),
        (
            "SCHILY.xattr.security.capability",
            &[1, 0, 0, 2, 0, 0x20, 0, 0][..],
        ),
        ("SCHILY.xattr.trusted.overlay.opaque", &b"y"[..]),
        ("mtime", &b"1600000000.123456789"[..]),
        ("uid", &b"3000000"[..]),
        ("gid", &b"4000000"[..]),
    ])
    .unwrap();
    let mut h = header(EntryType::Regular, 0o640, data.len() as u64);
    l.b.append_data(&mut h, "pax-short-name", &data[..])
        .unwrap();
    let mut t = toc(&pax_path, EntryKind::File, 0o640);
    t.size = data.len() as u64;
    t.uid = 3_000_000;
    t.gid = 4_000_000;
    t.mtime = (1_600_000_000, 123_456_789);
    t.xattrs = vec![
        (
            "security.capability".into(),
            vec![1, 0, 0, 2, 0, 0x20, 0, 0],
        ),
        ("trusted.overlay.opaque".into(), b"y".to_vec()),
        ("user.origin".into(), b"lamina".to_vec()),
    ];
    l.expect(t, Some(data));
    // PAX on a directory, a time before the epoch, a long symlink target.
    l.b.append_pax_extensions([
        ("mtime", &b"-1.5"[..]),
        ("SCHILY.xattr.user.dir", &b"d"[..]),
    ])
    .unwrap();
    l.dir("old/", 0o700);
    let t = &mut l.expect.last_mut().unwrap().toc;
    t.mtime = (-2, 500_000_000);
    t.xattrs = vec![("user.dir".into(), b"d".to_vec())];
    let target = format!("/{}/target", "t".repeat(180));
    l.b.append_pax_extensions([("linkpath", target.as_bytes())])
        .unwrap();
    let mut h = header(EntryType::Symlink, 0o777, 0);
    h.set_link_name("short").unwrap();
    l.b.append_data(&mut h, "old/long-link", &[][..]).unwrap();
    let mut t = toc("old/long-link", EntryKind::Symlink, 0o777);
    t.link_target = Some(PathBuf::from(&target));
    l.expect(t, None);
    // A PAX global header is no entry of the layer.
    let comment = b"20 comment=ignored\n";
    let mut h = header(EntryType::XGlobalHeader, 0o644, comment.len() as u64);
    l.b.append_data(&mut h, "pax_global_header", &comment[..])
        .unwrap();
    // Sparse files: a map in the header, and one continued in extension headers with a
    // trailing hole.
    let c = |rng: &mut Rng, n| rng.content(n);
    let small = vec![
        (0, c(&mut rng, 1024)),
        (300_000, c(&mut rng, 512)),
        (700_000, c(&mut rng, 1000)),
    ];
    l.sparse("sparse/small", 701_000, &small);
    let mut big = Vec::new();
    for i in 0..30u64 {
        big.push((
            i * 100_000 + 4096,
            c(
                &mut rng,
                if i == 29 {
                    777
                } else {
                    1024 * (1 + i as usize % 3)
                },
            ),
        ));
    }
    l.sparse("sparse/big", 3_500_000, &big);
    // `./`-prefixed names are cleaned; a later entry replaces an earlier one.
    l.file("./etc/passwd", b"root:x:0:0::/root:/bin/bash\n", 0o644);
    l.expect.last_mut().unwrap().toc.path = PathBuf::from("etc/passwd");
    l.finish()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// gzip members of the tar cut at arbitrary (not block-aligned) points, concatenated.
fn gzip_members(data: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&data.len())) {
        out.extend(gzip(&data[start..end]));
        start = end;
    }
    out
}

fn zstd_one_frame(data: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(data, 3).unwrap()
}

fn zstd_frames(data: &[u8], frame: usize) -> Vec<u8> {
    data.chunks(frame)
        .flat_map(|c| zstd::bulk::compress(c, 3).unwrap())
        .collect()
}

fn opts(span: u64) -> BuildOptions {
    BuildOptions {
        span,
        ..BuildOptions::default()
    }
}

/// One test layer in one compression, built and indexed once for all tests.
struct Variant {
    name: &'static str,
    blob: Vec<u8>,
    layer: IndexedLayer,
}

struct Fixture {
    tar: Vec<u8>,
    expect: Vec<Expect>,
    variants: Vec<Variant>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let (tar, expect) = test_layer();
        let third = tar.len() / 3;
        let mut blobs: Vec<(&'static str, Vec<u8>)> = vec![
            ("tar", tar.clone()),
            ("gzip", gzip(&tar)),
            (
                "gzip-members",
                gzip_members(&tar, &[third + 77, 2 * third + 1234]),
            ),
            ("zstd-frames", zstd_frames(&tar, 100_000)),
            ("zstd-one-frame", zstd_one_frame(&tar)),
        ];
        let mut seekable = Vec::new();
        reencode_seekable(
            &blobs[4].1[..],
            &mut seekable,
            &opts(SPAN),
            DEFAULT_ZSTD_LEVEL,
        )
        .unwrap();
        blobs.push(("zstd-reencoded", seekable));
        let variants = blobs
            .into_iter()
            .map(|(name, blob)| {
                let index =
                    build_index(&blob[..], &opts(SPAN)).unwrap_or_else(|e| panic!("{name}: {e}"));
                Variant {
                    name,
                    layer: IndexedLayer::new(index).unwrap(),
                    blob,
                }
            })
            .collect();
        Fixture {
            tar,
            expect,
            variants,
        }
    })
}

fn sha(data: &[u8]) -> Digest {
    Digest::of(data)
}

#[test]
fn every_variant_indexes_the_tar_entry_by_entry() {
    let f = fixture();
    for v in &f.variants {
        let idx = v.layer.index();
        let name = v.name;
        assert_eq!(idx.version, FORMAT_VERSION);
        let compression = match name {
            "tar" => Compression::None,
            n if n.starts_with("gzip") => Compression::Gzip,
            _ => Compression::Zstd,
        };
        assert_eq!(idx.compression, compression, "{name}");
        assert_eq!(idx.blob_digest, sha(&v.blob), "{name}: blob digest");
        assert_eq!(idx.blob_size, v.blob.len() as u64, "{name}");
        assert_eq!(idx.diff_id, sha(&f.tar), "{name}: diffID");
        assert_eq!(idx.uncompressed_size, f.tar.len() as u64, "{name}");
        assert_eq!(idx.span, SPAN);
        assert_eq!(idx.entries.len(), f.expect.len(), "{name}: entry count");
        for (e, x) in idx.entries.iter().zip(&f.expect) {
            let mut got = e.clone();
            if got.data_offset.is_some() {
                got.data_offset = Some(0); // compared below, against the tar
            }
            assert_eq!(got, x.toc, "{name}: {:?}", x.toc.path);
            if let (Some(off), Some(content), None) = (e.data_offset, &x.content, &e.sparse) {
                let off = off as usize;
                assert_eq!(
                    &f.tar[off..off + content.len()],
                    &content[..],
                    "{name}: data offset"
                );
            }
        }
        // Checkpoints: as many as the spans and the compression allow.
        let spans = f.tar.len() as u64 / SPAN;
        match name {
            "tar" => assert!(idx.checkpoints.is_empty()),
            "zstd-one-frame" => {
                assert_eq!(idx.checkpoints.len(), 1);
                assert!(idx.needs_reencoding());
            }
            "zstd-frames" => {
                // Frames of 100,000 bytes: every one at least a span after the last.
                assert_eq!(
                    idx.checkpoints.len() as u64,
                    (f.tar.len() as u64).div_ceil(100_000)
                );
                assert!(!idx.needs_reencoding());
            }
            "zstd-reencoded" => {
                assert_eq!(
                    idx.checkpoints.len() as u64,
                    (f.tar.len() as u64).div_ceil(SPAN)
                );
                assert_eq!(idx.max_gap(), SPAN);
            }
            _ => {
                assert!(
                    idx.checkpoints.len() as u64 >= spans * 3 / 4,
                    "{name}: {} checkpoints for {spans} spans",
                    idx.checkpoints.len()
                );
                assert!(!idx.needs_reencoding(), "{name}: gap {}", idx.max_gap());
                assert!(
                    idx.checkpoints.iter().skip(1).any(|c| c.bits != 0),
                    "{name}: some checkpoint mid-byte"
                );
                assert!(idx.checkpoints.iter().skip(1).all(|c| !c.window.is_empty()));
            }
        }
        // Decompression from every checkpoint gives the tar's bytes there.
        for cp in &idx.checkpoints {
            let at = cp.uncompressed_offset as usize;
            let mut buf = vec![0u8; 3000.min(f.tar.len() - at)];
            let n = v
                .layer
                .read(&v.blob, cp.uncompressed_offset, &mut buf)
                .unwrap();
            assert_eq!(n, buf.len());
            assert_eq!(buf, f.tar[at..at + n], "{name}: checkpoint at {at}");
        }
        // The encoded index decodes to the same index.
        let bytes = idx.encode().unwrap();
        assert_eq!(
            &LayerIndex::decode(&bytes).unwrap(),
            idx,
            "{name}: round trip"
        );
        // Every file reads back whole, in one call and through a reader; the stream too.
        for (i, x) in f.expect.iter().enumerate() {
            let Some(content) = &x.content else { continue };
            let mut buf = vec![0u8; content.len() + 10];
            let n = v.layer.read_file(&v.blob, i, 0, &mut buf).unwrap();
            assert_eq!(&buf[..n], &content[..], "{name}: {:?}", x.toc.path);
            let mut r = v.layer.file_reader(&v.blob, i).unwrap();
            let mut all = Vec::new();
            r.read_to_end(&mut all).unwrap();
            assert_eq!(all, *content, "{name}: reader of {:?}", x.toc.path);
        }
        let mut all = Vec::new();
        v.layer.reader(&v.blob, 0).read_to_end(&mut all).unwrap();
        assert!(all == f.tar, "{name}: the whole stream");
    }
}

#[test]
fn lookups_follow_replacements_and_hard_links() {
    let f = fixture();
    let l = &f.variants[1].layer;
    let passwd = l.lookup("/etc/passwd".as_ref()).unwrap();
    assert_eq!(passwd, f.expect.len() - 1, "the later entry wins");
    let mut buf = [0u8; 64];
    let n = l
        .read_file(&f.variants[1].blob, passwd, 0, &mut buf)
        .unwrap();
    assert_eq!(&buf[..n], b"root:x:0:0::/root:/bin/bash\n");
    let target = l.lookup("data/f200000".as_ref()).unwrap();
    for link in ["data/hard", "data/hard2"] {
        let i = l.lookup(link.as_ref()).unwrap();
        assert_eq!(l.entries()[i].kind, EntryKind::HardLink);
        assert_eq!(l.resolve_file(i), Some(target), "{link}");
        let r = l.file_reader(&f.variants[1].blob, i).unwrap();
        assert_eq!(r.entry().path, PathBuf::from("data/f200000"));
    }
    let null = l.lookup("dev/null".as_ref()).unwrap();
    assert_eq!(l.resolve_file(null), None);
    let err = l
        .read_file(&f.variants[1].blob, null, 0, &mut buf)
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(l.lookup("no/such".as_ref()).is_none());
    // Whiteout names.
    let wh = &l.entries()[l.lookup("usr/.wh.gone".as_ref()).unwrap()];
    assert_eq!(wh.whiteout_target(), Some("gone".as_ref()));
    let aufs = &l.entries()[l.lookup(".wh..wh.aufs".as_ref()).unwrap()];
    assert_eq!(aufs.kind, EntryKind::Whiteout);
    assert_eq!(aufs.whiteout_target(), None);
}

#[test]
fn multi_member_gzip_has_checkpoints_in_every_member() {
    let f = fixture();
    let v = f
        .variants
        .iter()
        .find(|v| v.name == "gzip-members")
        .unwrap();
    let third = f.tar.len() as u64 / 3;
    let cps = &v.layer.index().checkpoints;
    for (lo, hi) in [
        (0, third + 77),
        (third + 77, 2 * third + 1234),
        (2 * third + 1234, u64::MAX),
    ] {
        assert!(
            cps.iter()
                .filter(|c| c.uncompressed_offset > lo && c.uncompressed_offset < hi)
                .count()
                > 3,
            "member {lo}..{hi}"
        );
    }
    // A read that crosses a member boundary, from a checkpoint in the member before.
    let at = third + 77 - 5000;
    let mut buf = vec![0u8; 20_000];
    v.layer.read(&v.blob, at, &mut buf).unwrap();
    assert_eq!(buf, f.tar[at as usize..at as usize + 20_000]);
}

#[test]
fn reencoding_one_frame_zstd_gives_the_index_a_build_would() {
    let f = fixture();
    let one = f
        .variants
        .iter()
        .find(|v| v.name == "zstd-one-frame")
        .unwrap();
    let mut seekable = Vec::new();
    let index = reencode_seekable(
        &one.blob[..],
        &mut seekable,
        &BuildOptions {
            span: SPAN,
            expected_digest: Some(sha(&one.blob)),
            expected_diff_id: Some(sha(&f.tar)),
            ..BuildOptions::default()
        },
        DEFAULT_ZSTD_LEVEL,
    )
    .unwrap();
    // Any zstd decoder reads it (the seek table is a skippable frame).
    assert!(zstd::decode_all(&seekable[..]).unwrap() == f.tar);
    assert_eq!(
        &seekable[seekable.len() - 4..],
        &0x8F92_EAB1u32.to_le_bytes()
    );
    // Same table of contents and diffID, new blob; the same index a build of it gives.
    assert_eq!(index.entries, one.layer.index().entries);
    assert_eq!(index.diff_id, one.layer.index().diff_id);
    assert_eq!(index.blob_digest, sha(&seekable));
    assert_ne!(index.blob_digest, one.layer.index().blob_digest);
    assert_eq!(index, build_index(&seekable[..], &opts(SPAN)).unwrap());
    // gzip and plain layers re-encode too.
    for v in f
        .variants
        .iter()
        .filter(|v| v.name == "gzip" || v.name == "tar")
    {
        let mut out = Vec::new();
        let i = reencode_seekable(&v.blob[..], &mut out, &opts(SPAN), 1).unwrap();
        assert_eq!(i.entries, index.entries);
        assert!(zstd::decode_all(&out[..]).unwrap() == f.tar);
    }
}

fn read_bytes(
    v: &Variant,
    cursor: &mut lamina_core::index::Cursor,
    at: u64,
    len: usize,
) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let n = v.layer.read_with(cursor, &v.blob, at, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random ranges of random files, in every variant, match the original bytes.
    #[test]
    fn random_file_reads_match(v in 0usize..6, pick in any::<prop::sample::Index>(),
                               off in 0.0f64..1.0, len in 0usize..300_000) {
        let f = fixture();
        let v = &f.variants[v];
        let files: Vec<usize> = (0..f.expect.len()).filter(|i| f.expect[*i].content.is_some()).collect();
        let i = files[pick.index(files.len())];
        let content = f.expect[i].content.as_ref().unwrap();
        let start = (content.len() as f64 * off) as usize;
        let mut buf = vec![0u8; len];
        let n = v.layer.read_file(&v.blob, i, start as u64, &mut buf).unwrap();
        let end = (start + len).min(content.len());
        prop_assert_eq!(n, end - start);
        prop_assert!(buf[..n] == content[start..end], "{} {:?} {}+{}", v.name, f.expect[i].toc.path, start, len);
    }

    /// A cursor moved around at random (forward, backward, far, near) always reads the
    /// right bytes, whether it continues or restarts.
    #[test]
    fn cursor_reads_in_any_order_match(v in 0usize..6,
                                       reads in prop::collection::vec((0.0f64..1.0, 0usize..100_000, 0u64..200_000), 1..12)) {
        let f = fixture();
        let v = &f.variants[v];
        let mut cursor = v.layer.cursor();
        let mut at = 0u64;
        for (jump, len, step) in reads {
            // Half the time continue just after the last read (sequential), else jump.
            at = if step % 2 == 0 { at + step / 2 } else { (f.tar.len() as f64 * jump) as u64 };
            let got = read_bytes(v, &mut cursor, at, len);
            let s = (at as usize).min(f.tar.len());
            let e = (s + len).min(f.tar.len());
            prop_assert!(got == f.tar[s..e], "{} at {}+{}", v.name, at, len);
            at += got.len() as u64;
        }
    }
}

#[test]
fn sequential_file_reading_continues_the_decoder() {
    // Reading a large file in 4 KiB pieces through one cursor must not restart at a
    // checkpoint per piece: count source reads.
    struct Counting<'a>(&'a [u8], std::sync::atomic::AtomicUsize);
    impl BlobSource for Counting<'_> {
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.0.read_at(offset, buf)
        }
    }
    let f = fixture();
    for v in f.variants.iter().filter(|v| v.name != "tar") {
        let src = Counting(&v.blob, Default::default());
        let i = v.layer.lookup("data/f3000000".as_ref()).unwrap();
        let mut r = v.layer.file_reader(&src, i).unwrap();
        let mut piece = [0u8; 4096];
        let mut all = Vec::new();
        loop {
            let n = r.read(&mut piece).unwrap();
            if n == 0 {
                break;
            }
            all.extend_from_slice(&piece[..n]);
        }
        assert!(all == *f.expect[i].content.as_ref().unwrap());
        let reads = src.1.load(std::sync::atomic::Ordering::Relaxed);
        // The file's compressed bytes in 256 KiB requests, plus one start.
        assert!(
            reads <= v.blob.len() / (256 << 10) + 4,
            "{}: {reads} source reads",
            v.name
        );
        // Seeking back restarts at a checkpoint and still reads right.
        r.seek(SeekFrom::Start(1_000_000)).unwrap();
        let mut buf = vec![0u8; 1000];
        r.read_exact(&mut buf).unwrap();
        assert!(buf == f.expect[i].content.as_ref().unwrap()[1_000_000..1_001_000]);
    }
}

#[test]
fn corrupt_gzip_fails_the_build_with_a_clear_error() {
    let f = fixture();
    let gz = &f.variants[1].blob;
    let mut bad = gz.clone();
    let mid = bad.len() / 2;
    for b in &mut bad[mid..mid + 64] {
        *b = 0xff;
    }
    match build_index(&bad[..], &opts(SPAN)) {
        Err(IndexError::Corrupt(msg)) => assert!(msg.starts_with("gzip: "), "{msg}"),
        other => panic!("expected a corrupt gzip error, got {other:?}"),
    }
    // A flipped bit in the CRC trailer: the data inflates, the check fails.
    let mut bad = gz.clone();
    let n = bad.len();
    bad[n - 6] ^= 1;
    match build_index(&bad[..], &opts(SPAN)) {
        Err(IndexError::Corrupt(msg)) => assert!(msg.contains("check"), "{msg}"),
        other => panic!("expected a CRC error, got {other:?}"),
    }
    // Truncated in the middle, and garbage after the last member.
    for (what, blob) in [
        ("truncated", gz[..gz.len() / 2].to_vec()),
        ("trailing garbage", [&gz[..], b"garbage!"].concat()),
    ] {
        match build_index(&blob[..], &opts(SPAN)) {
            Err(IndexError::Corrupt(msg)) => assert!(msg.starts_with("gzip: "), "{what}: {msg}"),
            other => panic!("{what}: expected a corrupt gzip error, got {other:?}"),
        }
    }
}

#[test]
fn truncated_or_corrupt_zstd_and_tar_fail_the_build() {
    let f = fixture();
    for v in f.variants.iter().filter(|v| v.name.starts_with("zstd")) {
        let cut = &v.blob[..v.blob.len() * 2 / 3];
        match build_index(cut, &opts(SPAN)) {
            Err(IndexError::Corrupt(msg)) => {
                assert!(msg.starts_with("zstd: "), "{}: {msg}", v.name)
            }
            other => panic!("{}: expected a corrupt zstd error, got {other:?}", v.name),
        }
    }
    let mut bad = f.variants[3].blob.clone(); // frames carry no checksum: damage a header
    bad[0] ^= 0xff;
    assert!(matches!(
        build_index(&bad[..], &opts(SPAN)),
        Err(IndexError::Corrupt(_))
    ));
    // A tar cut in the middle of a file.
    let cut = &f.tar[..f.tar.len() / 2];
    assert!(matches!(
        build_index(cut, &opts(SPAN)),
        Err(IndexError::Corrupt(_))
    ));
    // An entry type no unpack handles.
    let mut b = Builder::new(Vec::new());
    let mut h = header(EntryType::new(b'V'), 0o644, 0);
    b.append_data(&mut h, "volume", &[][..]).unwrap();
    let tar = b.into_inner().unwrap();
    assert!(matches!(
        build_index(&tar[..], &opts(SPAN)),
        Err(IndexError::BadEntry { .. })
    ));
}

#[test]
fn expectations_and_limits_are_enforced() {
    let f = fixture();
    let gz = &f.variants[1].blob;
    let wrong = sha(b"something else");
    for o in [
        BuildOptions {
            expected_digest: Some(wrong.clone()),
            ..opts(SPAN)
        },
        BuildOptions {
            expected_diff_id: Some(wrong.clone()),
            ..opts(SPAN)
        },
    ] {
        assert!(matches!(
            build_index(&gz[..], &o),
            Err(IndexError::DigestMismatch { .. })
        ));
    }
    let ok = BuildOptions {
        expected_digest: Some(sha(gz)),
        expected_diff_id: Some(sha(&f.tar)),
        ..opts(SPAN)
    };
    build_index(&gz[..], &ok).unwrap();
    let few = BuildOptions {
        max_entries: 5,
        ..opts(SPAN)
    };
    assert!(matches!(
        build_index(&gz[..], &few),
        Err(IndexError::TooManyEntries { limit: 5 })
    ));
    let small = BuildOptions {
        max_uncompressed_bytes: 1 << 20,
        ..opts(SPAN)
    };
    assert!(matches!(
        build_index(&gz[..], &small),
        Err(IndexError::LayerTooLarge { .. })
    ));
    assert!(matches!(
        build_index(&gz[..], &opts(100)),
        Err(IndexError::BadOption(_))
    ));
}

/// A small index, for tests that try every byte of it.
fn small_index() -> Vec<u8> {
    let mut l = LayerBuilder::new();
    l.dir("a/", 0o755);
    l.file("a/b", &Rng(7).content(300_000), 0o644);
    l.link(EntryType::Symlink, "a/c", "b");
    let (tar, _) = l.finish();
    build_index(&gzip(&tar)[..], &opts(SPAN))
        .unwrap()
        .encode()
        .unwrap()
}

#[test]
fn truncated_or_damaged_indexes_are_refused() {
    let good = small_index();
    LayerIndex::decode(&good).unwrap();
    for n in 0..good.len() {
        match LayerIndex::decode(&good[..n]) {
            Err(IndexError::Truncated(_)) => {}
            Err(IndexError::BadMagic) if n >= 8 => panic!("prefix {n}: bad magic"),
            Err(IndexError::BadMagic) => {}
            other => panic!("prefix of {n} bytes: {other:?}"),
        }
    }
    let mut e = good.clone();
    e[0] = b'X';
    assert!(matches!(LayerIndex::decode(&e), Err(IndexError::BadMagic)));
    let mut e = good.clone();
    e[8] = 2;
    assert!(matches!(
        LayerIndex::decode(&e),
        Err(IndexError::UnsupportedVersion { found: 2 })
    ));
    let mut e = good.clone();
    e[10] = 1;
    assert!(matches!(
        LayerIndex::decode(&e),
        Err(IndexError::UnknownFlags(1))
    ));
    let mut e = good.clone();
    let mid = e.len() / 2;
    e[mid] ^= 0x10;
    assert!(matches!(
        LayerIndex::decode(&e),
        Err(IndexError::Checksum { .. })
    ));
    let mut e = good.clone();
    e.push(0);
    assert!(matches!(
        LayerIndex::decode(&e),
        Err(IndexError::Invalid(_))
    ));
    assert_eq!(&good[..8], &MAGIC);
}

#[test]
fn a_checkpoint_past_the_blob_is_an_error_not_a_panic() {
    let f = fixture();
    for v in f.variants.iter() {
        let mut index = v.layer.index().clone();
        // An index that puts a checkpoint past the blob does not validate.
        if let Some(cp) = index.checkpoints.last_mut() {
            cp.compressed_offset = v.blob.len() as u64 + 100;
            assert!(
                matches!(index.validate(), Err(IndexError::Invalid(_))),
                "{}",
                v.name
            );
            assert!(IndexedLayer::new(index.clone()).is_err());
            assert!(index.encode().is_err());
        }
        // A blob source shorter than the index says: reads past its end fail cleanly.
        let short = &v.blob[..v.blob.len() / 2];
        let end = f.tar.len() as u64;
        let mut buf = vec![0u8; 1000];
        let err = v.layer.read(&short, end - 1000, &mut buf).unwrap_err();
        assert!(
            matches!(
                err.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
            ),
            "{}: {err}",
            v.name
        );
        // The start still reads.
        let n = v.layer.read(&short, 0, &mut buf).unwrap();
        assert!(buf[..n] == f.tar[..n]);
    }
    // A source with other bytes than the blob: an error, or wrong bytes, never a panic.
    let v = &f.variants[1];
    let other = &f.variants[2].blob;
    for cp in v.layer.index().checkpoints.iter().step_by(7) {
        let mut buf = vec![0u8; 10_000];
        let _ = v.layer.read(other, cp.uncompressed_offset + 10, &mut buf);
    }
}

/// Re-encodes `index` with a damaged body: the header's length and checksum fixed up,
/// so the body parser and validation see the damage.
fn with_body(body: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&MAGIC);
    b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes());
    b.extend_from_slice(&(body.len() as u32).to_le_bytes());
    b.extend_from_slice(body);
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

fn small_index_cached() -> &'static [u8] {
    static I: OnceLock<Vec<u8>> = OnceLock::new();
    I.get_or_init(small_index)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn decoder_survives_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let _ = LayerIndex::decode(&bytes);
        // The same with a valid header and checksum around them.
        let _ = LayerIndex::decode(&with_body(&bytes));
    }

    #[test]
    fn decoder_survives_mutated_indexes(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..8),
        fix_checksum in any::<bool>(),
    ) {
        let good = small_index_cached();
        let mut body = good[16..good.len() - 4].to_vec();
        for (at, byte, op) in edits {
            if body.is_empty() { break; }
            let i = at.index(body.len());
            match op {
                0 => body[i] = byte,
                1 => body[i] ^= 1 << (byte % 8),
                2 => body.insert(i, byte),
                _ => { body.remove(i); }
            }
        }
        let bytes = if fix_checksum {
            with_body(&body)
        } else {
            [&good[..16], &body[..], &good[good.len() - 4..]].concat()
        };
        if let Ok(index) = LayerIndex::decode(&bytes) {
            // Whatever decodes is valid, re-encodes, and can be read without panicking
            // (the blob no longer matches, so errors or wrong bytes are fine).
            index.validate().unwrap();
            let again = LayerIndex::decode(&index.encode().unwrap()).unwrap();
            prop_assert_eq!(&again, &index);
            let layer = IndexedLayer::new(index).unwrap();
            let blob = vec![0x5au8; layer.index().blob_size.min(1 << 20) as usize];
            for i in 0..layer.entries().len() {
                let mut buf = [0u8; 512];
                let _ = layer.read_file(&blob, i, 0, &mut buf);
            }
        }
    }
}

/// A layer of about 50 MB shaped like the benchmark images (`../shared/bench/mkimage.py`:
/// many small text-like files, a few large binary-like ones).
fn fifty_mb_layer() -> Vec<u8> {
    let mut rng = Rng(0xbe7c_4a11_0000_0050);
    let mut b = Builder::new(Vec::new());
    let mut total = 0usize;
    let mut n = 0;
    while total < 50_000_000 {
        let size = if n % 500 == 499 {
            2_000_000 + rng.below(2_000_000) as usize
        } else {
            // Roughly log-normal around 3 KB.
            let e = (rng.below(1000) as f64 / 1000.0 - 0.5) * 4.0;
            (3000.0 * e.exp()) as usize
        };
        let data = if size > 1_000_000 {
            // Binary-like: random runs between structured ones (about 2x).
            let mut d = Vec::with_capacity(size);
            while d.len() < size {
                let run = 64 + rng.below(4000) as usize;
                if rng.below(2) == 0 {
                    d.extend((0..run).map(|_| rng.next() as u8));
                } else {
                    d.extend((0..run).map(|i| (i % 251) as u8));
                }
            }
            d.truncate(size);
            d
        } else {
            rng.content(size)
        };
        let mut h = header(EntryType::Regular, 0o644, size as u64);
        b.append_data(
            &mut h,
            format!("usr/lib/pkg{}/file{n}.txt", n / 100),
            &data[..],
        )
        .unwrap();
        total += size;
        n += 1;
    }
    b.into_inner().unwrap()
}

/// Not a check but a measurement (run with `--nocapture`): the encoded index's size
/// against the blob's, for a ~50 MB layer at the default span.
#[test]
fn index_size_for_a_50_mb_layer() {
    let tar = fifty_mb_layer();
    let mut rows = Vec::new();
    let gz = gzip(&tar);
    let mut zst = Vec::new();
    let reencoded = reencode_seekable(
        &tar[..],
        &mut zst,
        &BuildOptions::default(),
        DEFAULT_ZSTD_LEVEL,
    )
    .unwrap();
    for (name, blob) in [("gzip", &gz), ("zstd seekable", &zst)] {
        let index = build_index(&blob[..], &BuildOptions::default()).unwrap();
        let bytes = index.encode().unwrap();
        let windows: usize = index.checkpoints.iter().map(|c| c.window.len()).sum();
        rows.push(format!(
            "{name:14} blob {:>10} B, tar {:>10} B, {} entries, {} checkpoints, index {:>8} B \
             ({:.3}% of the blob; windows {} B)",
            blob.len(),
            tar.len(),
            index.entries.len(),
            index.checkpoints.len(),
            bytes.len(),
            bytes.len() as f64 * 100.0 / blob.len() as f64,
            windows,
        ));
        if name == "zstd seekable" {
            assert_eq!(index, reencoded);
        }
    }
    for r in rows {
        println!("{r}");
    }
    assert_eq!(DEFAULT_SPAN, 4 << 20);
}

#[test]
fn a_cursor_recovers_after_the_source_fails() {
    // A source that fails while `down` is set, as a registry that goes away and returns.
    struct Flaky<'a>(&'a [u8], std::sync::atomic::AtomicBool);
    impl BlobSource for Flaky<'_> {
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.1.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(std::io::Error::other("registry down"));
            }
            self.0.read_at(offset, buf)
        }
    }
    let f = fixture();
    for v in &f.variants {
        let src = Flaky(&v.blob, Default::default());
        let i = v.layer.lookup("data/f3000000".as_ref()).unwrap();
        let content = f.expect[i].content.as_ref().unwrap();
        let mut cursor = v.layer.cursor();
        let mut buf = vec![0u8; 300_000];
        v.layer
            .read_file_with(&mut cursor, &src, i, 0, &mut buf)
            .unwrap();
        assert!(buf == content[..300_000]);
        src.1.store(true, std::sync::atomic::Ordering::Relaxed);
        let err = v
            .layer
            .read_file_with(&mut cursor, &src, i, 300_000, &mut buf)
            .unwrap_err();
        assert_eq!(err.to_string(), "registry down", "{}", v.name);
        src.1.store(false, std::sync::atomic::Ordering::Relaxed);
        v.layer
            .read_file_with(&mut cursor, &src, i, 300_000, &mut buf)
            .unwrap();
        assert!(buf == content[300_000..600_000], "{}", v.name);
    }
}

#[test]
fn validation_refuses_inconsistent_indexes() {
    let good = LayerIndex::decode(small_index_cached()).unwrap();
    let file = good
        .entries
        .iter()
        .position(|e| e.kind == EntryKind::File)
        .unwrap();
    type Damage = fn(&mut LayerIndex, usize);
    let cases: [(&str, Damage); 16] = [
        ("unclean path", |i, f| {
            i.entries[f].path = PathBuf::from("a/./b")
        }),
        ("absolute path", |i, f| {
            i.entries[f].path = PathBuf::from("/a/b")
        }),
        ("mode", |i, f| i.entries[f].mode = 0o10644),
        ("nanoseconds", |i, f| i.entries[f].mtime.1 = 1_000_000_000),
        ("file without data", |i, f| i.entries[f].data_offset = None),
        ("data past the end", |i, f| {
            i.entries[f].data_offset = Some(i.uncompressed_size - 10)
        }),
        ("device on a file", |i, f| {
            i.entries[f].device = Some((1, 1))
        }),
        ("unsorted xattrs", |i, f| {
            i.entries[f].xattrs = vec![("user.b".into(), vec![]), ("user.a".into(), vec![])]
        }),
        ("overlapping sparse runs", |i, f| {
            i.entries[f].sparse = Some(vec![
                SparseChunk { offset: 0, len: 10 },
                SparseChunk { offset: 5, len: 10 },
            ])
        }),
        ("checkpoints out of order", |i, _| i.checkpoints.swap(1, 2)),
        ("first checkpoint not at 0", |i, _| {
            i.checkpoints.remove(0);
        }),
        ("bits", |i, _| i.checkpoints[1].bits = 8),
        ("garbage window", |i, _| {
            i.checkpoints[1].window = vec![1, 2, 3]
        }),
        ("plain with checkpoints", |i, _| {
            i.compression = Compression::None
        }),
        ("span", |i, _| i.span = 100),
        ("version", |i, _| i.version = 2),
    ];
    for (what, damage) in cases {
        let mut index = good.clone();
        damage(&mut index, file);
        assert!(index.validate().is_err(), "{what}");
        assert!(index.encode().is_err(), "{what}");
        assert!(IndexedLayer::new(index).is_err(), "{what}");
    }
    good.validate().unwrap();
}
