//! A lazy layer read from a real registry: the layer blob pushed to docker-registry, its
//! seekable index built, the FUSE mount reading file bytes by range requests through the
//! chunk cache. With the registry stopped, a read of bytes not yet fetched fails with EIO
//! within the retry policy's bound (the mount stays up, fetched bytes still read); once
//! the registry is back, reads work again.

mod common;

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{start_registry, start_registry_at};
use lamina_core::index::{build_index, BlobSource, BuildOptions, IndexedLayer};
use lamina_core::lazy::{indexed, ChunkCache, IndexedStream, LazyMount, Tree};
use lamina_registry::{BlockingBlob, HostsConfig, Reference, RegistryClient, RetryPolicy};

/// The registry blob as the index reads it.
struct Remote(BlockingBlob);

impl BlobSource for Remote {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read_at(offset, buf)
    }
}

fn pseudo_random(n: usize, mut x: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 56) as u8
        })
        .collect()
}

/// A gzip layer: a few small files and one of 2 MB.
fn layer() -> (Vec<u8>, Vec<(String, Vec<u8>)>) {
    let files = vec![
        ("etc/hostname".to_string(), b"lazy\n".to_vec()),
        ("srv/big".to_string(), pseudo_random(2 << 20, 7)),
        ("srv/small".to_string(), pseudo_random(5000, 9)),
    ];
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in &files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, path, &data[..]).unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&b.into_inner().unwrap()).unwrap();
    (gz.finish().unwrap(), files)
}

#[test]
fn lazy_reads_come_from_the_registry_and_fail_cleanly_while_it_is_down() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test mounts FUSE: run as root"
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (registry, storage) = start_registry();
    let addr = registry.addr.clone();
    let (blob, files) = layer();
    let digest = {
        use sha2::Digest as _;
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&blob)))
    };
    let reference = Reference::parse(&format!("{addr}/lazy/test:1")).unwrap();
    let client =
        Arc::new(RegistryClient::new(&reference, &HostsConfig::default(), false, None).unwrap());
    runtime
        .block_on(client.push_blob(&digest, Bytes::from(blob.clone())))
        .unwrap();
    let index = build_index(
        &blob[..],
        &BuildOptions {
            span: 256 << 10,
            ..BuildOptions::default()
        },
    )
    .unwrap();
    let policy = RetryPolicy {
        attempts: 2,
        timeout: Duration::from_secs(2),
        backoff: Duration::from_millis(50),
    };
    let remote = Remote(BlockingBlob::new(
        client,
        digest,
        blob.len() as u64,
        runtime.handle().clone(),
        policy,
    ));
    let stream = IndexedStream::new(IndexedLayer::new(index.clone()).unwrap(), remote);
    let work = tempfile::tempdir().unwrap();
    let cache = Arc::new(
        ChunkCache::open(
            &work.path().join("cache"),
            Arc::new(stream),
            index.uncompressed_size,
            64 << 10,
        )
        .unwrap(),
    );
    indexed::check(&index).unwrap();
    let tree = Arc::new(Tree::build(&index.entries));
    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let lazy = LazyMount::mount(tree, cache.clone(), &mnt).unwrap();

    // Reading a small file fetches only what it needs.
    assert_eq!(std::fs::read(mnt.join("etc/hostname")).unwrap(), files[0].1);
    let (have, all) = cache.progress();
    assert!(
        have < all / 2,
        "{have} of {all} chunks fetched for one small file"
    );

    // Registry down: what is cached still reads; the rest fails with EIO, in bounded time.
    drop(registry);
    assert_eq!(std::fs::read(mnt.join("etc/hostname")).unwrap(), files[0].1);
    let started = Instant::now();
    let err = std::fs::read(mnt.join("srv/big")).unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // A liveness guard with room to spare, not a performance bound.
    assert!(
        took < policy.bound() + Duration::from_secs(30),
        "EIO after {took:?}, policy bound {:?}",
        policy.bound()
    );
    eprintln!("EIO after {took:?} (policy bound {:?})", policy.bound());

    // Back up: everything reads, byte for byte.
    let _registry = start_registry_at(storage.path(), &addr);
    for (path, data) in &files {
        assert_eq!(&std::fs::read(mnt.join(path)).unwrap(), data, "{path}");
    }
    drop(lazy);
}
