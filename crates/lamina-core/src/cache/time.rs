//! Times as containerd and BuildKit write them: RFC 3339 timestamps (the
//! `containerd.io/gc.expire` label) and Go durations (`buildctl prune --keep-duration 24h`).
//! Written by hand: both grammars are small and no dependency of the workspace has them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::CacheError;

/// Nanoseconds since the Unix epoch (negative before it), the unit records store.
pub(crate) fn to_nanos(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

/// The inverse of [`to_nanos`].
pub(crate) fn from_nanos(n: i64) -> SystemTime {
    if n >= 0 {
        UNIX_EPOCH + Duration::from_nanos(n as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(n.unsigned_abs())
    }
}

/// The current time in record units.
pub(crate) fn now_nanos() -> i64 {
    to_nanos(SystemTime::now())
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number from [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Parses an RFC 3339 timestamp as Go's `time.RFC3339` does:
/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`.
pub fn parse_rfc3339(s: &str) -> Result<SystemTime, CacheError> {
    let bad = |reason: &str| CacheError::BadTime {
        value: s.to_owned(),
        reason: reason.to_owned(),
    };
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Result<i64, CacheError> {
        let part = b
            .get(from..from + len)
            .ok_or_else(|| bad("too short for YYYY-MM-DDTHH:MM:SSZ"))?;
        if !part.iter().all(u8::is_ascii_digit) {
            return Err(bad("expected digits"));
        }
        Ok(part
            .iter()
            .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0')))
    };
    let sep = |at: usize, want: &[u8]| -> Result<(), CacheError> {
        match b.get(at) {
            Some(c) if want.contains(c) => Ok(()),
            _ => Err(bad("expected YYYY-MM-DDTHH:MM:SS")),
        }
    };
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    sep(4, b"-")?;
    sep(7, b"-")?;
    sep(10, b"Tt")?;
    let (hour, min, sec) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    sep(13, b":")?;
    sep(16, b":")?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(bad("no such date"));
    }
    if hour > 23 || min > 59 || sec > 59 {
        return Err(bad("no such time of day"));
    }
    let mut at = 19;
    let mut nanos = 0i64;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            if at - start < 9 {
                nanos = nanos * 10 + i64::from(b[at] - b'0');
            }
            at += 1;
        }
        if at == start {
            return Err(bad("empty fraction of a second"));
        }
        for _ in (at - start)..9 {
            nanos *= 10;
        }
    }
    let offset = match b.get(at) {
        Some(b'Z' | b'z') if at + 1 == b.len() => 0,
        Some(&c @ (b'+' | b'-')) if at + 6 == b.len() => {
            sep(at + 3, b":")?;
            let (oh, om) = (num(at + 1, 2)?, num(at + 4, 2)?);
            if oh > 23 || om > 59 {
                return Err(bad("no such zone offset"));
            }
            let o = oh * 3600 + om * 60;
            if c == b'-' {
                -o
            } else {
                o
            }
        }
        _ => return Err(bad("expected Z or a zone offset ±HH:MM at the end")),
    };
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec - offset;
    Ok(from_nanos(secs * 1_000_000_000 + nanos))
}

/// Formats `t` in UTC as RFC 3339 (`2006-01-02T15:04:05Z`, with nanoseconds only when
/// there are some), which [`parse_rfc3339`] and Go's `time.Parse(time.RFC3339, …)` read.
pub fn format_rfc3339(t: SystemTime) -> String {
    let n = to_nanos(t);
    let (secs, nanos) = (n.div_euclid(1_000_000_000), n.rem_euclid(1_000_000_000));
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let mut s = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// Parses a Go duration (`time.ParseDuration`): a sequence of decimal numbers, each with
/// a unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`), e.g. `24h`, `1h30m`, `1.5s`; `0` alone
/// is allowed. Negative durations are refused: nothing here means "the future".
pub fn parse_duration(s: &str) -> Result<Duration, CacheError> {
    let bad = |reason: &str| CacheError::BadDuration {
        value: s.to_owned(),
        reason: reason.to_owned(),
    };
    let rest = s.strip_prefix('+').unwrap_or(s);
    if rest.starts_with('-') {
        return Err(bad("negative durations are not allowed"));
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(bad("empty"));
    }
    let mut total: u128 = 0;
    let mut chars = rest.char_indices().peekable();
    while chars.peek().is_some() {
        let (mut whole, mut frac, mut scale, mut digits) = (0u128, 0u128, 1u128, 0);
        while let Some((_, c)) = chars.next_if(|(_, c)| c.is_ascii_digit()) {
            whole = whole
                .checked_mul(10)
                .and_then(|w| w.checked_add(u128::from(c as u8 - b'0')))
                .ok_or_else(|| bad("too large"))?;
            digits += 1;
        }
        if chars.next_if(|(_, c)| *c == '.').is_some() {
            while let Some((_, c)) = chars.next_if(|(_, c)| c.is_ascii_digit()) {
                if scale < 1_000_000_000_000_000_000 {
                    frac = frac * 10 + u128::from(c as u8 - b'0');
                    scale *= 10;
                }
                digits += 1;
            }
        }
        if digits == 0 {
            return Err(bad("expected a number"));
        }
        let mut unit = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_ascii_digit() && *c != '.') {
            unit.push(c);
        }
        let nanos_per: u128 = match unit.as_str() {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(bad("missing unit (ns, us, ms, s, m or h)")),
            _ => return Err(bad("unknown unit (ns, us, ms, s, m or h)")),
        };
        let part = whole
            .checked_mul(nanos_per)
            .and_then(|p| p.checked_add(frac * nanos_per / scale))
            .ok_or_else(|| bad("too large"))?;
        total = total.checked_add(part).ok_or_else(|| bad("too large"))?;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| bad("too large"))?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_and_honours_offsets() {
        let t = parse_rfc3339("2024-02-29T23:59:58Z").unwrap();
        assert_eq!(to_nanos(t), 1_709_251_198 * 1_000_000_000);
        assert_eq!(format_rfc3339(t), "2024-02-29T23:59:58Z");
        assert_eq!(
            parse_rfc3339("2024-03-01T01:59:58+02:00").unwrap(),
            t,
            "same instant"
        );
        assert_eq!(parse_rfc3339("2024-02-29T18:59:58-05:00").unwrap(), t);
        let f = parse_rfc3339("1970-01-01T00:00:00.5Z").unwrap();
        assert_eq!(to_nanos(f), 500_000_000);
        assert_eq!(format_rfc3339(f), "1970-01-01T00:00:00.5Z");
        assert_eq!(
            to_nanos(parse_rfc3339("1969-12-31T23:59:59Z").unwrap()),
            -1_000_000_000
        );
        for t in [0i64, 1, 951_782_400, 4_102_444_800, -86_400 * 365] {
            let st = from_nanos(t * 1_000_000_000);
            assert_eq!(parse_rfc3339(&format_rfc3339(st)).unwrap(), st);
        }
        for bad in [
            "",
            "2024-02-30T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-01-01 00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:00:00",
            "2024-01-01T00:00:00+0200",
            "2024-01-01T00:00:00.Z",
            "2024-01-01T00:00:00Zjunk",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn go_durations() {
        let d = |s| parse_duration(s).unwrap();
        assert_eq!(d("24h"), Duration::from_secs(86_400));
        assert_eq!(d("1h30m"), Duration::from_secs(5_400));
        assert_eq!(d("1.5s"), Duration::from_millis(1_500));
        assert_eq!(d("100ms"), Duration::from_millis(100));
        assert_eq!(d("2us"), Duration::from_micros(2));
        assert_eq!(d("0"), Duration::ZERO);
        assert_eq!(d(".5m"), Duration::from_secs(30));
        for bad in ["", "-1h", "10", "1d", "h", "1h30", "1..5s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should fail");
        }
    }
}
