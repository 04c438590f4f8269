//! Per-operation counts and latencies, kept per client and merged at the end.

use std::collections::BTreeMap;
use std::time::Duration;

use tonic::{Code, Status};

/// How many unexpected-error messages are kept (all are counted).
const KEEP_MESSAGES: usize = 200;

/// One operation's figures.
#[derive(Default)]
pub struct OpStats {
    /// Latency of every call, in microseconds (successes and errors alike).
    pub latencies_us: Vec<u32>,
    /// Calls that failed with a code the race makes correct.
    pub expected: u64,
    /// Calls that failed otherwise, or succeeded with a wrong answer.
    pub unexpected: u64,
    /// Expected errors by code name.
    pub expected_codes: BTreeMap<&'static str, u64>,
}

/// Everything one client (or all of them, merged) saw.
#[derive(Default)]
pub struct Stats {
    /// By operation name.
    pub ops: BTreeMap<&'static str, OpStats>,
    /// The first unexpected errors, "op: message".
    pub messages: Vec<String>,
    /// All unexpected errors.
    pub unexpected_total: u64,
}

/// The name of a gRPC code as printed.
pub fn code_name(c: Code) -> &'static str {
    match c {
        Code::Ok => "Ok",
        Code::Cancelled => "Cancelled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

impl Stats {
    /// Records a call of `op` that took `took` and ended in `result`; an error is
    /// expected when its code is in `expected`. Returns the success value.
    pub fn record<T>(
        &mut self,
        op: &'static str,
        took: Duration,
        result: Result<T, Status>,
        expected: &[Code],
    ) -> Option<T> {
        let s = self.ops.entry(op).or_default();
        s.latencies_us
            .push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
        match result {
            Ok(v) => Some(v),
            Err(e) if expected.contains(&e.code()) => {
                s.expected += 1;
                *s.expected_codes.entry(code_name(e.code())).or_default() += 1;
                None
            }
            Err(e) => {
                s.unexpected += 1;
                self.note(
                    op,
                    format!("{}: {}", code_name(e.code()), e.message().trim()),
                );
                None
            }
        }
    }

    /// Records a wrong answer (or a local failure) of `op` as an unexpected error, without
    /// a latency sample of its own.
    pub fn wrong(&mut self, op: &'static str, what: String) {
        self.ops.entry(op).or_default().unexpected += 1;
        self.note(op, what);
    }

    /// Records a local failure of `op` that the race explains (`why`) as expected.
    pub fn expected_local(&mut self, op: &'static str, why: &'static str) {
        let s = self.ops.entry(op).or_default();
        s.expected += 1;
        *s.expected_codes.entry(why).or_default() += 1;
    }

    fn note(&mut self, op: &'static str, what: String) {
        self.unexpected_total += 1;
        if self.messages.len() < KEEP_MESSAGES {
            self.messages.push(format!("{op}: {what}"));
        }
    }

    /// Adds `other`'s figures to these.
    pub fn merge(&mut self, other: Stats) {
        for (op, o) in other.ops {
            let s = self.ops.entry(op).or_default();
            s.latencies_us.extend(o.latencies_us);
            s.expected += o.expected;
            s.unexpected += o.unexpected;
            for (c, n) in o.expected_codes {
                *s.expected_codes.entry(c).or_default() += n;
            }
        }
        for m in other.messages {
            if self.messages.len() < KEEP_MESSAGES {
                self.messages.push(m);
            }
        }
        self.unexpected_total += other.unexpected_total;
    }
}

/// Nearest-rank percentile `p` (0..=100) of sorted `v`, in microseconds; 0 when empty.
pub fn percentile(v: &[u32], p: f64) -> u32 {
    if v.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }

    #[test]
    fn errors_are_classified_by_the_codes_allowed() {
        let mut s = Stats::default();
        let d = Duration::from_micros(5);
        assert_eq!(s.record("Op", d, Ok::<_, Status>(1), &[]), Some(1));
        assert_eq!(
            s.record::<()>("Op", d, Err(Status::not_found("gone")), &[Code::NotFound]),
            None
        );
        s.record::<()>("Op", d, Err(Status::internal("boom")), &[Code::NotFound]);
        s.wrong("Op", "wrong kind".into());
        let op = &s.ops["Op"];
        assert_eq!(op.latencies_us.len(), 3);
        assert_eq!((op.expected, op.unexpected), (1, 2));
        assert_eq!(op.expected_codes["NotFound"], 1);
        assert_eq!(s.unexpected_total, 2);
        assert_eq!(s.messages, ["Op: Internal: boom", "Op: wrong kind"]);
    }
}
