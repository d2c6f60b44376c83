//! Times: the store keeps `i64` unix milliseconds (UTC); exports and filters speak RFC 3339.
//! Written here on Howard Hinnant's public-domain calendar algorithms rather than pulling in a
//! date crate.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::StoreError;

const MS_PER_DAY: i64 = 86_400_000;

/// Now, in unix milliseconds.
pub fn now_ms() -> i64 {
    system_time_ms(SystemTime::now())
}

/// A `SystemTime` in unix milliseconds (negative before 1970).
pub fn system_time_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// `ms` as RFC 3339 UTC with milliseconds: `2026-03-08T14:02:11.123Z`.
pub fn format_rfc3339_ms(ms: i64) -> String {
    let days = ms.div_euclid(MS_PER_DAY);
    let in_day = ms.rem_euclid(MS_PER_DAY);
    let (y, m, d) = civil_from_days(days);
    let secs = in_day / 1000;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        in_day % 1000
    )
}

/// Parse an RFC 3339 time into unix milliseconds. Accepts `2026-03-08T14:02:11Z`, fractions of a
/// second (kept to the millisecond, the rest dropped), offsets such as `+01:00`, `t`/`z`/space
/// spellings, and a bare date `2026-03-08` (midnight UTC).
pub fn parse_rfc3339_ms(s: &str) -> Result<i64, StoreError> {
    let bad = || StoreError::Invalid(format!("not an RFC 3339 time: {s:?}"));
    let b = s.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Result<i64, StoreError> {
        let part = b.get(range).ok_or_else(bad)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        Ok(part.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(bad());
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(bad());
    }
    let date_ms = days_from_civil(year, month, day) * MS_PER_DAY;
    if b.len() == 10 {
        return Ok(date_ms);
    }
    if !matches!(b[10], b'T' | b't' | b' ') || b.len() < 19 || b[13] != b':' || b[16] != b':' {
        return Err(bad());
    }
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if hour > 23 || minute > 59 || second > 59 {
        return Err(bad());
    }
    let mut i = 19;
    let mut millis = 0;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        let mut end = start;
        while b.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
        if end == start {
            return Err(bad());
        }
        for k in 0..3 {
            millis = millis * 10
                + b.get(start + k)
                    .filter(|_| start + k < end)
                    .map_or(0, |d| i64::from(d - b'0'));
        }
        i = end;
    }
    let offset_ms = match b.get(i) {
        Some(b'Z' | b'z') if b.len() == i + 1 => 0,
        Some(sign @ (b'+' | b'-')) if b.len() == i + 6 && b[i + 3] == b':' => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return Err(bad());
            }
            let off = (oh * 60 + om) * 60_000;
            if *sign == b'+' { off } else { -off }
        }
        _ => return Err(bad()),
    };
    Ok(date_ms + ((hour * 60 + minute) * 60 + second) * 1000 + millis - offset_ms)
}

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// (year, month, day) of the day `z` days after 1970-01-01.
pub(crate) fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Days from 1970-01-01 to (year, month, day).
pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_rfc3339_ms(1_772_978_531_123),
            "2026-03-08T14:02:11.123Z"
        );
        assert_eq!(
            format_rfc3339_ms(951_782_400_000),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(format_rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(
            format_rfc3339_ms(253_402_300_799_999),
            "9999-12-31T23:59:59.999Z"
        );
    }

    #[test]
    fn parses_what_it_formats() {
        for ms in [
            0,
            -1,
            1_772_978_531_123,
            951_782_400_000,
            4_107_542_400_000,
            1_709_251_199_999,
        ] {
            assert_eq!(parse_rfc3339_ms(&format_rfc3339_ms(ms)).unwrap(), ms);
        }
        // Every day over a few leap cycles survives the round trip.
        for day in -800..3000 {
            let ms = day * MS_PER_DAY + 12_345;
            assert_eq!(parse_rfc3339_ms(&format_rfc3339_ms(ms)).unwrap(), ms);
        }
    }

    #[test]
    fn parses_variants() {
        let t = 1_772_978_531_000;
        assert_eq!(parse_rfc3339_ms("2026-03-08T14:02:11Z").unwrap(), t);
        assert_eq!(parse_rfc3339_ms("2026-03-08t14:02:11z").unwrap(), t);
        assert_eq!(parse_rfc3339_ms("2026-03-08 14:02:11Z").unwrap(), t);
        assert_eq!(parse_rfc3339_ms("2026-03-08T15:02:11+01:00").unwrap(), t);
        assert_eq!(parse_rfc3339_ms("2026-03-08T09:32:11-04:30").unwrap(), t);
        assert_eq!(parse_rfc3339_ms("2026-03-08T14:02:11.5Z").unwrap(), t + 500);
        assert_eq!(
            parse_rfc3339_ms("2026-03-08T14:02:11.123456789Z").unwrap(),
            t + 123
        );
        assert_eq!(parse_rfc3339_ms("2026-03-08").unwrap(), 1_772_928_000_000);
    }

    #[test]
    fn rejects_nonsense() {
        for s in [
            "",
            "2026",
            "2026-13-01",
            "2026-02-29",
            "2026-03-08T24:00:00Z",
            "2026-03-08T14:02:11",
            "2026-03-08T14:02:11.Z",
            "2026-03-08T14:02:11+0100",
            "2026-03-08T14:02Z",
            "2026-03-08T14:02:11Zjunk",
            "20a6-03-08",
            "2026-03-08X14:02:11Z",
        ] {
            assert!(parse_rfc3339_ms(s).is_err(), "{s:?} parsed");
        }
        assert!(parse_rfc3339_ms("2024-02-29").is_ok());
    }

    #[test]
    fn system_time_round_trip() {
        let t = UNIX_EPOCH + std::time::Duration::from_millis(1_772_978_531_123);
        assert_eq!(system_time_ms(t), 1_772_978_531_123);
        let before = UNIX_EPOCH - std::time::Duration::from_millis(5);
        assert_eq!(system_time_ms(before), -5);
    }
}
