//! Times and durations as people write them in queries: RFC 3339, unix seconds/milliseconds/
//! microseconds, `now`, `now-1h`, `-15m`; durations `500ms`, `90s`, `15m`, `1h30m`, `7d`.
//!
//! Times inside the history are microseconds since the unix epoch (`u64`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Microseconds since the unix epoch now.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Parses a duration: one or more `<number><unit>` with units `us`, `ms`, `s`, `m`, `h`, `d`, `w`
/// (`1h30m`, `500ms`, `7d`).
///
/// # Errors
/// A message naming what is wrong.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (e.g. 500ms, 90s, 15m, 1h30m, 7d)");
    let s = s.trim();
    if s.is_empty() {
        return Err(bad());
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let n: u128 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let micros: u128 = match &rest[..unit_len] {
            "us" => 1,
            "ms" => 1_000,
            "s" => 1_000_000,
            "m" => 60_000_000,
            "h" => 3_600_000_000,
            "d" => 86_400_000_000,
            "w" => 604_800_000_000,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total = total.checked_add(n.checked_mul(micros).ok_or_else(bad)?).ok_or_else(bad)?;
    }
    u64::try_from(total).map(Duration::from_micros).map_err(|_| bad())
}

/// Parses a point in time into microseconds since the unix epoch: RFC 3339
/// (`2026-12-02T10:00:00Z`, `2026-12-02T10:00:00.250+01:00`), a unix time in seconds (up to 11
/// digits), milliseconds (12 to 14) or microseconds (15 or more), `now`, `now-<duration>` or
/// `-<duration>` (before `now_us`), `now+<duration>`.
///
/// # Errors
/// A message naming what is wrong.
pub fn parse_time(s: &str, now_us: u64) -> Result<u64, String> {
    let s = s.trim();
    let relative = |d: &str, sign: i8| -> Result<u64, String> {
        let d = u64::try_from(parse_duration(d)?.as_micros()).unwrap_or(u64::MAX);
        Ok(if sign < 0 { now_us.saturating_sub(d) } else { now_us.saturating_add(d) })
    };
    if s == "now" {
        return Ok(now_us);
    }
    if let Some(d) = s.strip_prefix("now-").or_else(|| s.strip_prefix('-')) {
        return relative(d, -1);
    }
    if let Some(d) = s.strip_prefix("now+") {
        return relative(d, 1);
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        let n: u64 = s.parse().map_err(|_| format!("{s:?} is too large for a time"))?;
        return Ok(match s.len() {
            0..=11 => n.saturating_mul(1_000_000),
            12..=14 => n.saturating_mul(1_000),
            _ => n,
        });
    }
    parse_rfc3339(s).ok_or_else(|| {
        format!(
            "{s:?} is not a time (RFC 3339 like 2026-12-02T10:00:00Z, unix seconds/ms/us, now, now-1h, -15m)"
        )
    })
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a number of days since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<u32> {
        let part = s.get(from..from + len)?;
        part.bytes().all(|c| c.is_ascii_digit()).then(|| part.parse().ok())?
    };
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut micros: u64 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 6 {
                micros = micros * 10 + u64::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..6 {
            micros *= 10;
        }
    }
    let offset_secs: i64 = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let (oh, om) = (num(i + 1, 2)?, num(i + 4, 2)?);
            let secs = i64::from(oh * 3600 + om * 60);
            if *sign == b'+' {
                secs
            } else {
                -secs
            }
        }
        _ => return None,
    };
    let days = days_from_civil(i64::from(year), month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_secs;
    u64::try_from(secs).ok().map(|s| s * 1_000_000 + micros)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Formats microseconds since the unix epoch as RFC 3339 in UTC with microseconds
/// (`2026-12-02T10:00:00.250000Z`).
pub fn format_rfc3339(us: u64) -> String {
    let secs = us / 1_000_000;
    let micros = us % 1_000_000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_every_unit_and_combined() {
        for (s, us) in [
            ("500ms", 500_000),
            ("90s", 90_000_000),
            ("15m", 900_000_000),
            ("1h30m", 5_400_000_000),
            ("7d", 604_800_000_000),
            ("250us", 250),
        ] {
            assert_eq!(parse_duration(s).unwrap().as_micros(), us, "{s}");
        }
        for bad in ["", "h", "10", "10x", "1h-5m", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn times_absolute_unix_and_relative() {
        let now = 1_764_669_600_000_000; // 2025-12-02T10:00:00Z
        assert_eq!(parse_time("2025-12-02T10:00:00Z", 0).unwrap(), now);
        assert_eq!(parse_time("2025-12-02T11:00:00.5+01:00", 0).unwrap(), now + 500_000);
        assert_eq!(parse_time("2025-12-02T09:30:00-00:30", 0).unwrap(), now);
        assert_eq!(parse_time("1764669600", 0).unwrap(), now);
        assert_eq!(parse_time("1764669600000", 0).unwrap(), now);
        assert_eq!(parse_time("1764669600000000", 0).unwrap(), now);
        assert_eq!(parse_time("now", now).unwrap(), now);
        assert_eq!(parse_time("now-1h", now).unwrap(), now - 3_600_000_000);
        assert_eq!(parse_time("-15m", now).unwrap(), now - 900_000_000);
        assert_eq!(parse_time("now+1s", now).unwrap(), now + 1_000_000);
        for bad in [
            "2025-13-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2025-12-02 10:00",
            "yesterday",
            "2025-12-02T10:00:00",
        ] {
            assert!(parse_time(bad, now).is_err(), "{bad:?}");
        }
        assert_eq!(parse_time("2024-02-29T00:00:00Z", 0).unwrap(), 1_709_164_800_000_000, "a leap day");
    }

    #[test]
    fn formatting_reverses_parsing() {
        for us in [0, 1_764_669_600_123_456, 951_782_400_000_000, 4_102_444_799_999_999] {
            assert_eq!(parse_time(&format_rfc3339(us), 0).unwrap(), us, "{}", format_rfc3339(us));
        }
        assert_eq!(format_rfc3339(1_764_669_600_000_001), "2025-12-02T10:00:00.000001Z");
    }
}
