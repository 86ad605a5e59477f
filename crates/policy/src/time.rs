//! RFC 3339 UTC timestamps, restricted to the `YYYY-MM-DDTHH:MM:SSZ` form.

/// What a timestamp must look like, for error messages.
pub(crate) const EXPECTED: &str = "must be an RFC 3339 UTC time like \"2026-11-01T00:00:00Z\" \
    (ending in Z, no fractional seconds)";

/// Parses `YYYY-MM-DDTHH:MM:SSZ` into seconds since the Unix epoch.
///
/// Years before 1970 cannot be represented and leap seconds are rejected.
pub(crate) fn parse_utc(s: &str) -> Result<u64, String> {
    let b = s.as_bytes();
    let shape_ok = b.len() == 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'Z';
    if !shape_ok {
        return Err(EXPECTED.to_owned());
    }
    let number = |range: std::ops::Range<usize>| -> Result<u64, String> {
        let digits = &b[range];
        if !digits.iter().all(u8::is_ascii_digit) {
            return Err(EXPECTED.to_owned());
        }
        Ok(digits
            .iter()
            .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0')))
    };
    let year = number(0..4)?;
    let month = number(5..7)?;
    let day = number(8..10)?;
    let hour = number(11..13)?;
    let minute = number(14..16)?;
    let second = number(17..19)?;

    if year < 1970 {
        return Err("must not be before 1970".to_owned());
    }
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(format!("has no such date ({s})"));
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err(format!("has no such time of day ({s})"));
    }
    // At most 9999-12-31T23:59:59Z, about 2.5e11: no overflow.
    Ok(days_since_epoch(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second)
}

fn is_leap(year: u64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the given date (which must be on or after it).
///
/// The "days from civil" algorithm: years start in March so that the leap
/// day is the last day of the year.
fn days_since_epoch(year: u64, month: u64, day: u64) -> u64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    // 719_468 days from 0000-03-01 to 1970-01-01.
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        assert_eq!(parse_utc("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(parse_utc("2000-03-01T00:00:00Z").unwrap(), 951_868_800);
        assert_eq!(parse_utc("2024-02-29T12:34:56Z").unwrap(), 1_709_210_096);
        assert_eq!(parse_utc("2026-11-01T00:00:00Z").unwrap(), 1_793_491_200);
        assert_eq!(parse_utc("9999-12-31T23:59:59Z").unwrap(), 253_402_300_799);
    }

    #[test]
    fn rejects_bad_forms() {
        for bad in [
            "",
            "2026-11-01",
            "2026-11-01T00:00:00",
            "2026-11-01T00:00:00+00:00",
            "2026-11-01T00:00:00.5Z",
            "2026-11-01t00:00:00z",
            "2026-11-01 00:00:00Z",
            "2026-1a-01T00:00:00Z",
            "+026-11-01T00:00:00Z",
            "1969-12-31T23:59:59Z",
            "2023-02-29T00:00:00Z",
            "2100-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-00-01T00:00:00Z",
            "2026-01-00T00:00:00Z",
            "2026-01-01T24:00:00Z",
            "2026-01-01T00:60:00Z",
            "2026-12-31T23:59:60Z",
            "２０２６-11-01T00:00:00Z",
        ] {
            assert!(parse_utc(bad).is_err(), "{bad}");
        }
    }
}
