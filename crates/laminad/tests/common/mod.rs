//! Test support: a real laminad process on a private root and socket, and a client.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lamina_proto::snapshots as pb;
use lamina_proto::snapshots::snapshots_client::SnapshotsClient;
use tonic::transport::Channel;

/// Fails the test at once, with the reason, unless it runs as root (it mounts).
pub fn require_root() {
    let uid = rustix::process::geteuid();
    assert!(
        uid.is_root(),
        "this test mounts filesystems and must run as root (uid is {}); CI runs it as root",
        uid.as_raw()
    );
}

/// A laminad process serving a temporary root.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub socket: PathBuf,
    pub backend: String,
    /// Extra laminad arguments (e.g. `--config FILE`).
    pub extra: Vec<String>,
    child: Option<Child>,
}

impl Daemon {
    /// Starts laminad with `backend` on a fresh root (under $LAMINA_TEST_DIR or /tmp).
    pub fn start(backend: &str) -> Daemon {
        Daemon::start_with_config(backend, "")
    }

    /// Starts laminad with `config` (TOML) as its config file.
    pub fn start_with_config(backend: &str, config: &str) -> Daemon {
        require_root();
        let base = std::env::var_os("LAMINA_TEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let dir = tempfile::Builder::new()
            .prefix("laminad-test-")
            .tempdir_in(base)
            .expect("temp dir");
        let root = dir.path().join("root");
        let socket = dir.path().join("lamina.sock");
        let config_path = dir.path().join("laminad.toml");
        std::fs::write(&config_path, config).expect("write config");
        let extra = vec![
            "--config".to_string(),
            config_path.to_string_lossy().into_owned(),
        ];
        let mut d = Daemon {
            dir,
            root,
            socket,
            backend: backend.into(),
            extra,
            child: None,
        };
        d.spawn();
        d
    }

    /// Runs laminad on this daemon's root and socket and returns the process.
    pub fn command(&self) -> Command {
        self.command_for(&self.socket, &self.backend)
    }

    /// Runs laminad on this daemon's root with another socket or backend.
    pub fn command_for(&self, socket: &Path, backend: &str) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_laminad"));
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--socket")
            .arg(socket)
            .arg("--backend")
            .arg(backend)
            .arg("--log-level")
            .arg("warn")
            .args(&self.extra);
        cmd
    }

    /// (Re)starts the process and waits until the socket answers.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("laminad.log"))
            .expect("log file");
        let child = self
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn laminad");
        self.child = Some(child);
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "laminad exited with {status} before serving; log:\n{}",
                    self.log()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "laminad did not start; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("laminad.log")).unwrap_or_default()
    }

    /// SIGKILLs the process (a crash) and waits for it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill -9");
            c.wait().expect("wait");
        }
    }

    /// SIGTERMs the process (a graceful stop) and returns its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("daemon running");
        let pid = rustix::process::Pid::from_child(&c);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
        c.wait().expect("wait")
    }

    /// A connected client.
    pub async fn client(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(
            lamina_proto::connect_unix(&self.socket)
                .await
                .expect("connect"),
        )
    }

    /// Snapshot directories currently on disk.
    pub fn snapshot_dirs(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.root.join("snapshots"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        // Block layer images stay mounted after laminad exits (a restart adopts them):
        // detach them so that the temporary directory can go.
        let _ = lamina_core::sys::detach_mounts_under(self.dir.path());
    }
}

pub fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub async fn prepare(
    c: &mut SnapshotsClient<Channel>,
    key: &str,
    parent: &str,
    l: HashMap<String, String>,
) -> Result<Vec<lamina_proto::types::Mount>, tonic::Status> {
    c.prepare(pb::PrepareSnapshotRequest {
        snapshotter: String::new(),
        key: key.into(),
        parent: parent.into(),
        labels: l,
    })
    .await
    .map(|r| r.into_inner().mounts)
}

pub async fn view(
    c: &mut SnapshotsClient<Channel>,
    key: &str,
    parent: &str,
) -> Result<Vec<lamina_proto::types::Mount>, tonic::Status> {
    c.view(pb::ViewSnapshotRequest {
        snapshotter: String::new(),
        key: key.into(),
        parent: parent.into(),
        labels: HashMap::new(),
    })
    .await
    .map(|r| r.into_inner().mounts)
}

pub async fn commit(
    c: &mut SnapshotsClient<Channel>,
    name: &str,
    key: &str,
) -> Result<(), tonic::Status> {
    c.commit(pb::CommitSnapshotRequest {
        snapshotter: String::new(),
        name: name.into(),
        key: key.into(),
        labels: HashMap::new(),
    })
    .await
    .map(|_| ())
}

pub async fn remove(c: &mut SnapshotsClient<Channel>, key: &str) -> Result<(), tonic::Status> {
    c.remove(pb::RemoveSnapshotRequest {
        snapshotter: String::new(),
        key: key.into(),
    })
    .await
    .map(|_| ())
}

pub async fn stat(c: &mut SnapshotsClient<Channel>, key: &str) -> Result<pb::Info, tonic::Status> {
    c.stat(pb::StatSnapshotRequest {
        snapshotter: String::new(),
        key: key.into(),
    })
    .await
    .map(|r| r.into_inner().info.expect("info"))
}

pub async fn usage(
    c: &mut SnapshotsClient<Channel>,
    key: &str,
) -> Result<(i64, i64), tonic::Status> {
    c.usage(pb::UsageRequest {
        snapshotter: String::new(),
        key: key.into(),
    })
    .await
    .map(|r| (r.get_ref().size, r.get_ref().inodes))
}

pub async fn list(
    c: &mut SnapshotsClient<Channel>,
    filters: &[&str],
) -> Result<Vec<pb::Info>, tonic::Status> {
    let mut s = c
        .list(pb::ListSnapshotsRequest {
            snapshotter: String::new(),
            filters: filters.iter().map(|f| f.to_string()).collect(),
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.message().await? {
        out.extend(m.info);
    }
    Ok(out)
}

/// Mounts a mount list on `target` with Lamina's own mount code, runs `f`, unmounts.
pub fn with_mounted<T>(
    mounts: &[lamina_proto::types::Mount],
    target: &Path,
    f: impl FnOnce(&Path) -> T,
) -> T {
    std::fs::create_dir_all(target).expect("mkdir target");
    lamina_core::sys::mount_all(&lamina_proto::core_mounts(mounts), target).expect("mount");
    let out = f(target);
    lamina_core::sys::unmount(target).expect("unmount");
    out
}

/// Serves manifests (by tag) and blobs (by digest) of one repository over HTTP/1.1 on
/// 127.0.0.1 (404 for anything else), waiting `blob_delay` before answering each blob
/// request; gives its address.
pub async fn serve_registry(
    manifests: HashMap<String, Vec<u8>>,
    blobs: HashMap<String, Vec<u8>>,
    blob_delay: Duration,
) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (manifests, blobs) = (std::sync::Arc::new(manifests), std::sync::Arc::new(blobs));
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (manifests, blobs) = (manifests.clone(), blobs.clone());
            tokio::spawn(async move {
                loop {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tokio::io::AsyncReadExt::read(&mut sock, &mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&req).to_string();
                    let mut words = text.lines().next().unwrap_or("").split(' ');
                    let method = words.next().unwrap_or("").to_owned();
                    let path = words.next().unwrap_or("").to_owned();
                    let last = path.rsplit('/').next().unwrap_or("").to_owned();
                    let (status, kind, body) = if path.contains("/manifests/") {
                        match manifests.get(&last) {
                            Some(b) => ("200 OK", "application/vnd.oci.image.manifest.v1+json", b),
                            None => ("404 Not Found", "application/json", &Vec::new()),
                        }
                    } else if path.contains("/blobs/") {
                        tokio::time::sleep(blob_delay).await;
                        match blobs.get(&last) {
                            Some(b) => ("200 OK", "application/octet-stream", b),
                            None => ("404 Not Found", "application/json", &Vec::new()),
                        }
                    } else {
                        ("200 OK", "application/json", &Vec::new())
                    };
                    let digest = lamina_core::layer::Digest::of(body);
                    let head = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nDocker-Content-Digest: {digest}\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    if tokio::io::AsyncWriteExt::write_all(&mut sock, head.as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                    if method != "HEAD"
                        && tokio::io::AsyncWriteExt::write_all(&mut sock, body)
                            .await
                            .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A gzip layer of `files`: the blob, its digest and its diffID.
pub fn layer(
    files: &[(&str, &[u8])],
) -> (
    Vec<u8>,
    lamina_core::layer::Digest,
    lamina_core::layer::Digest,
) {
    use lamina_core::layer::Digest;
    let gz = tar_gz(files);
    let mut tar = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut tar).unwrap();
    (gz.clone(), Digest::of(&gz), Digest::of(&tar))
}

/// A gzip-compressed layer tar of regular files (mode 0644, a fixed mtime).
pub fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, path, *data).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut e, &tar).unwrap();
    e.finish().unwrap()
}
