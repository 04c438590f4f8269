//! The order in which a lazy layer's files were first read: recorded while a container
//! starts, it is the prefetch list of the next start (the files it needs, first needed
//! first), fetched right after the mount instead of one cold read at a time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// First reads of a layer's inodes, in order, with when they happened.
pub struct AccessLog {
    /// One bit per inode: read before.
    seen: Vec<AtomicU64>,
    /// First reads not taken yet: (milliseconds since the Unix epoch, inode).
    fresh: Mutex<Vec<(u64, u64)>>,
}

impl AccessLog {
    /// A log for a tree of `inodes` inodes (numbered from 1).
    pub fn new(inodes: usize) -> Self {
        AccessLog {
            seen: (0..inodes.div_ceil(64) + 1)
                .map(|_| AtomicU64::new(0))
                .collect(),
            fresh: Mutex::new(Vec::new()),
        }
    }

    /// Notes a read of inode `ino`; only its first counts. Cheap after that: one atomic
    /// load, as it sits on every read.
    pub fn note(&self, ino: u64) {
        let Some(word) = self.seen.get((ino / 64) as usize) else {
            return;
        };
        let bit = 1u64 << (ino % 64);
        if word.load(Ordering::Relaxed) & bit != 0
            || word.fetch_or(bit, Ordering::Relaxed) & bit != 0
        {
            return;
        }
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        // A list of plain pairs: a panic elsewhere cannot tear it.
        self.fresh
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((ms, ino));
    }

    /// The first reads noted since the last call, in order: (ms since the epoch, inode).
    pub fn take(&self) -> Vec<(u64, u64)> {
        std::mem::take(&mut *self.fresh.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_first_reads_in_order_and_each_once() {
        let log = AccessLog::new(200);
        for ino in [5, 130, 5, 1, 130, 200, 201, 10_000] {
            log.note(ino);
        }
        let got: Vec<u64> = log.take().into_iter().map(|(_, i)| i).collect();
        // 201 still fits the last bitmap word; 10_000 is beyond the tree and ignored.
        assert_eq!(got, [5, 130, 1, 200, 201]);
        assert!(log.take().is_empty(), "taken");
        log.note(5);
        log.note(7);
        assert_eq!(
            log.take().into_iter().map(|(_, i)| i).collect::<Vec<_>>(),
            [7]
        );
    }
}
