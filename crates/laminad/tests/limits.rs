//! Limits with clear errors: layer size and entry count (InvalidArgument naming the
//! setting), label size, the open-file limit raised at start, and concurrent requests
//! queued (never refused) beyond max_concurrent_requests.

mod common;

use common::*;
use lamina_proto::lamina::v1 as lpb;
use lamina_proto::lamina::v1::layers_client::LayersClient;
use tonic::Code;

/// A process killed (and reaped) when dropped, so a failing test leaves none behind.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A gzip-compressed tar of regular files.
fn tar_gz(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

/// Applies `blob` as committed snapshot `name` through lamina.v1.Layers.
async fn apply(d: &Daemon, name: &str, blob: Vec<u8>) -> Result<lpb::LayerInfo, tonic::Status> {
    let mut c = LayersClient::new(lamina_proto::connect_unix(&d.socket).await.unwrap());
    let mut msgs = vec![lpb::ApplyLayerChunk {
        header: Some(lpb::ApplyLayerHeader {
            name: name.into(),
            parent: String::new(),
            labels: labels(&[]),
            expected_digest: String::new(),
            expected_diff_id: String::new(),
        }),
        data: Vec::new(),
    }];
    msgs.extend(blob.chunks(4096).map(|c| lpb::ApplyLayerChunk {
        header: None,
        data: c.to_vec(),
    }));
    c.apply(tokio_stream::iter(msgs))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread")]
async fn layer_limits_fail_with_the_setting_named() {
    let d = Daemon::start_with_config(
        "overlayfs",
        "max_layer_bytes = 1048576\nmax_layer_entries = 10\n",
    );
    let e = apply(&d, "big", tar_gz(&[("f".into(), vec![7u8; 2 << 20])]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("1048576") && e.message().contains("max_layer_bytes"),
        "{}",
        e.message()
    );
    let many: Vec<(String, Vec<u8>)> = (0..20).map(|i| (format!("f{i}"), vec![1])).collect();
    let e = apply(&d, "many", tar_gz(&many)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("10 entries") && e.message().contains("max_layer_entries"),
        "{}",
        e.message()
    );
    assert!(
        d.snapshot_dirs().is_empty(),
        "nothing left of refused layers"
    );
    apply(&d, "fits", tar_gz(&many[..5]))
        .await
        .expect("a layer within the limits applies");
    // Labels: containerd's fixed limit, named in the message.
    let mut c = d.client().await;
    let e = prepare(&mut c, "x", "", labels(&[("k", &"v".repeat(4096))]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("4096 bytes"), "{}", e.message());
}

/// laminad raises its soft open-file limit to the hard limit (as containerd does).
#[test]
fn open_file_limit_is_raised_to_the_hard_limit() {
    require_root();
    let mut d = Daemon::start("overlayfs");
    d.kill9();
    // Started again with a low soft limit, through util-linux's prlimit.
    let mut cmd = std::process::Command::new("prlimit");
    cmd.arg("--nofile=256:8192")
        .arg(env!("CARGO_BIN_EXE_laminad"))
        .arg("--root")
        .arg(&d.root)
        .arg("--socket")
        .arg(&d.socket)
        .args(["--log-level", "info"])
        .stderr(std::process::Stdio::piped());
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("run prlimit (util-linux)");
    let start = std::time::Instant::now();
    while std::os::unix::net::UnixStream::connect(&d.socket).is_err() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "laminad exited under prlimit"
        );
        assert!(start.elapsed() < std::time::Duration::from_secs(30));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[3..5], ["8192", "8192"], "{line}");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("raised the open file limit") && log.contains("8192"),
        "{log}"
    );
}

/// 64 clients at once against max_concurrent_requests = 2: every request waits its turn,
/// none fails.
#[tokio::test(flavor = "multi_thread")]
async fn requests_beyond_the_limit_wait_instead_of_failing() {
    let d = Daemon::start_with_config("overlayfs", "max_concurrent_requests = 2\n");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..64 {
        let socket = d.socket.clone();
        tasks.spawn(async move {
            let mut c = lamina_proto::snapshots::snapshots_client::SnapshotsClient::new(
                lamina_proto::connect_unix(&socket).await?,
            );
            for j in 0..4 {
                let key = format!("c{i}-{j}");
                prepare(&mut c, &key, "", labels(&[])).await?;
                commit(&mut c, &format!("{key}-done"), &key).await?;
                list(&mut c, &[]).await?;
                remove(&mut c, &format!("{key}-done")).await?;
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        });
    }
    let mut errors = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r.unwrap() {
            errors.push(e.to_string());
        }
    }
    assert!(errors.is_empty(), "{} failed: {errors:?}", errors.len());
    let mut c = d.client().await;
    assert!(list(&mut c, &[]).await.unwrap().is_empty());
    assert!(d.snapshot_dirs().is_empty());
}

/// Out of file descriptors while accepting connections (EMFILE), laminad keeps running,
/// says what to raise, and serves again once connections close.
#[tokio::test(flavor = "multi_thread")]
async fn running_out_of_file_descriptors_does_not_stop_the_server() {
    require_root();
    let mut d = Daemon::start("overlayfs");
    d.kill9();
    let log_path = d.dir.path().join("emfile.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = std::process::Command::new("prlimit")
        .arg("--nofile=64:64")
        .arg(env!("CARGO_BIN_EXE_laminad"))
        .arg("--root")
        .arg(&d.root)
        .arg("--socket")
        .arg(&d.socket)
        .args(["--log-level", "info"])
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("run prlimit (util-linux)");
    let mut guard = Killed(child);
    let child = &mut guard.0;
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let wait_for = |what: &str, child: &mut std::process::Child| {
        let start = std::time::Instant::now();
        while !read_log().contains(what) {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "laminad exited ({status}) waiting for {what:?}:\n{}",
                    read_log()
                );
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(60),
                "no {what:?} in laminad's log:\n{}",
                read_log()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    wait_for("serving", child);
    // More connections than descriptors: the server accepts until EMFILE.
    let conns: Vec<std::os::unix::net::UnixStream> = (0..100)
        .map(|_| std::os::unix::net::UnixStream::connect(&d.socket).unwrap())
        .collect();
    wait_for("out of file descriptors", child);
    assert!(read_log().contains("LimitNOFILE"), "{}", read_log());
    drop(conns);
    let mut c = d.client().await;
    list(&mut c, &[])
        .await
        .expect("laminad serves again once connections close");
    assert!(child.try_wait().unwrap().is_none(), "laminad still runs");
    assert!(
        read_log().contains("accepting connections again"),
        "{}",
        read_log()
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
