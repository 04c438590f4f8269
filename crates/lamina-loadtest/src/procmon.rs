//! laminad's resident memory and open file descriptors, from /proc.

use std::path::Path;

use anyhow::Context;

/// One reading of the daemon.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// VmRSS, KiB.
    pub rss_kib: u64,
    /// Entries of /proc/PID/fd.
    pub fds: u64,
}

/// Reads `pid`'s VmRSS and open fd count.
pub fn sample(pid: u32) -> anyhow::Result<Sample> {
    let status_path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&status_path)
        .with_context(|| format!("read {status_path} (is laminad still running?)"))?;
    let rss_kib = vm_rss_kib(&status).with_context(|| format!("no VmRSS line in {status_path}"))?;
    let fd_dir = format!("/proc/{pid}/fd");
    let fds = std::fs::read_dir(Path::new(&fd_dir))
        .with_context(|| format!("read {fd_dir} (run as root or as laminad's user)"))?
        .count() as u64;
    Ok(Sample { rss_kib, fds })
}

/// The VmRSS figure (KiB) of a /proc/PID/status text.
fn vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line["VmRSS:".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Start, peak and end of a series of samples.
#[derive(Debug, Clone, Copy, Default)]
pub struct Range {
    /// First reading.
    pub start: u64,
    /// Largest reading.
    pub peak: u64,
    /// Last reading.
    pub end: u64,
}

impl Range {
    /// A range holding only `v`.
    pub fn new(v: u64) -> Range {
        Range {
            start: v,
            peak: v,
            end: v,
        }
    }

    /// Adds a later reading.
    pub fn push(&mut self, v: u64) {
        self.peak = self.peak.max(v);
        self.end = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss_from_a_status_text() {
        let status = "Name:\tlaminad\nVmPeak:\t  99999 kB\nVmRSS:\t   12345 kB\nThreads:\t9\n";
        assert_eq!(vm_rss_kib(status), Some(12345));
        assert_eq!(vm_rss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn samples_this_process() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_kib > 0 && s.fds > 0, "{s:?}");
    }

    #[test]
    fn range_keeps_start_peak_end() {
        let mut r = Range::new(5);
        r.push(9);
        r.push(7);
        assert_eq!((r.start, r.peak, r.end), (5, 9, 7));
    }
}
