//! The laminad under test: started as a child process, killed with SIGKILL at random
//! points, restarted on the same root.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// How to start laminad.
pub struct DaemonSpec {
    /// The laminad binary.
    pub binary: PathBuf,
    /// Its root.
    pub root: PathBuf,
    /// Its socket.
    pub socket: PathBuf,
    /// Backend name.
    pub backend: String,
    /// Where its stderr goes (appended).
    pub log: PathBuf,
}

/// A running laminad; killed if dropped while running (the harness stopping on an
/// error must not leave it behind).
pub struct Daemon {
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl DaemonSpec {
    /// Starts laminad and waits until its socket accepts connections.
    pub fn start(&self) -> anyhow::Result<Daemon> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut child = Command::new(&self.binary)
            .arg("--root")
            .arg(&self.root)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--backend")
            .arg(&self.backend)
            .arg("--log-level")
            .arg("warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return Ok(Daemon { child });
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "laminad exited at start-up ({status}); its log: {}",
                    tail(&self.log)
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!(
                    "laminad did not listen on {} within 60 s; its log: {}",
                    self.socket.display(),
                    tail(&self.log)
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Daemon {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then reap.
    pub fn kill9(mut self) -> anyhow::Result<()> {
        self.child.kill().context("kill -9 laminad")?;
        self.child.wait().context("reaping laminad")?;
        Ok(())
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) -> anyhow::Result<()> {
        // SAFETY: kill(2) on our own child's pid; it has not been reaped yet, so the pid
        // cannot have been reused.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        if rc != 0 {
            bail!("SIGTERM laminad: {}", std::io::Error::last_os_error());
        }
        let status = self.child.wait().context("waiting for laminad")?;
        if !status.success() {
            bail!("laminad exited with {status} on SIGTERM");
        }
        Ok(())
    }
}

/// The last lines of a log file, for error messages.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
