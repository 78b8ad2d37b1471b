//! Values of the commonest types in the one text form PostgreSQL prints
//! them in under the settings edgesync pins on both sides (DateStyle ISO,
//! extra_float_digits 3, TimeZone UTC), read straight into the numbers
//! PostgreSQL stores: the integers, `float4`/`float8` (shortest text that
//! reads back as the same bits), `date`, `timestamp` and `timestamptz`
//! (microseconds since 2000-01-01). Apply reads most values of a batch
//! this way instead of through the types' general input functions.
//!
//! Anything else (another spelling, infinity, a BC date, a year past 9999,
//! a float that would overflow or underflow, an integer out of range) is
//! None, and the caller reads it with the type's own input function, which
//! accepts every spelling and raises the errors: a value read here is
//! always the value that function returns.

/// Days from 0000-03-01 (proleptic Gregorian) to 2000-01-01.
const EPOCH_DAYS: i64 = 730_425;
const MICROS_PER_SECOND: i64 = 1_000_000;
const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;

/// A `smallint`, `integer` or `bigint` of `bits` bits: an optional minus
/// and decimal digits, no leading zero (but "0" itself).
pub fn integer(text: &str, bits: u32) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if (digits.len() > 1 && digits.starts_with('0')) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // no digits, or more than an i64 holds: not a number here
    let value: i64 = text.parse().ok()?;
    let limit = 1i128 << (bits - 1);
    (-limit..limit).contains(&(value as i128)).then_some(value)
}

/// A `double precision` in plain decimal or exponent form, finite and not
/// zero unless written as zero (PostgreSQL refuses what over- or
/// underflows; its input then says so).
pub fn float8(text: &str) -> Option<f64> {
    let value: f64 = plain_float(text)?.parse().ok()?;
    usable_float(text, value.is_finite(), value == 0.0).then_some(value)
}

/// A `real`, as `float8` reads a `double precision`.
pub fn float4(text: &str) -> Option<f32> {
    let value: f32 = plain_float(text)?.parse().ok()?;
    usable_float(text, value.is_finite(), value == 0.0).then_some(value)
}

/// `text` if it is `-?digits[.digits][e[+-]digits]` (what float8out and
/// float4out print for finite values), else None.
fn plain_float(text: &str) -> Option<&str> {
    let b = text.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i > start
    };
    if !digits(&mut i) {
        return None;
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if !digits(&mut i) {
            return None;
        }
    }
    if b.get(i) == Some(&b'e') {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digits(&mut i) {
            return None;
        }
    }
    (i == b.len()).then_some(text)
}

/// Is a parsed float one PostgreSQL reads the same: finite, and zero only
/// when all its digits are zero (a zero from underflow is an error there).
fn usable_float(text: &str, finite: bool, zero: bool) -> bool {
    let mantissa = text.split('e').next().unwrap_or(text);
    finite && (!zero || mantissa.bytes().all(|b| matches!(b, b'0' | b'.' | b'-')))
}

/// A `date`, `YYYY-MM-DD` (year 1 to 9999): days since 2000-01-01.
pub fn date(text: &str) -> Option<i32> {
    let days = day_number(text.as_bytes())?;
    (text.len() == 10).then_some(days as i32)
}

/// A `timestamp`, `YYYY-MM-DD HH:MM:SS[.ffffff]`: microseconds since
/// 2000-01-01 00:00:00.
pub fn timestamp(text: &str) -> Option<i64> {
    let (micros, rest) = date_and_time(text.as_bytes())?;
    rest.is_empty().then_some(micros)
}

/// A `timestamptz`, a timestamp followed by its offset from UTC
/// (`+HH`, `+HH:MM` or `+HH:MM:SS`, or `-`): microseconds since
/// 2000-01-01 00:00:00 UTC.
pub fn timestamptz(text: &str) -> Option<i64> {
    let (local, rest) = date_and_time(text.as_bytes())?;
    let (sign, offset) = match rest.split_first()? {
        (b'+', offset) => (1, offset),
        (b'-', offset) => (-1, offset),
        _ => return None,
    };
    let mut seconds = 0;
    for (n, part) in offset.split(|&b| b == b':').enumerate() {
        let limit = if n == 0 { 15 } else { 59 };
        if n > 2 || part.len() != 2 {
            return None;
        }
        seconds = seconds * 60 + number(part).filter(|&v| v <= limit)?;
    }
    // an offset given as hours alone is hours; add the missing places
    let places = offset.split(|&b| b == b':').count() as u32;
    seconds *= 60i64.pow(3 - places);
    Some(local - sign * seconds * MICROS_PER_SECOND)
}

/// `YYYY-MM-DD HH:MM:SS[.f..]` at the start of `b`: its microseconds since
/// 2000-01-01, and the bytes after it.
fn date_and_time(b: &[u8]) -> Option<(i64, &[u8])> {
    if b.len() < 19 || b[10] != b' ' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let days = day_number(&b[..10])?;
    let hour = number(&b[11..13]).filter(|&h| h < 24)?;
    let minute = number(&b[14..16]).filter(|&m| m < 60)?;
    let second = number(&b[17..19]).filter(|&s| s < 60)?;
    let mut micros = ((days * 24 + hour) * 60 + minute) * 60 * MICROS_PER_SECOND + second * MICROS_PER_SECOND;
    let mut rest = &b[19..];
    if let Some(fraction) = rest.strip_prefix(b".") {
        let digits = fraction.iter().take_while(|b| b.is_ascii_digit()).count();
        // more than microseconds would be rounded there: its own input does it
        if digits == 0 || digits > 6 {
            return None;
        }
        micros += number(&fraction[..digits])? * 10i64.pow(6 - digits as u32);
        rest = &fraction[digits..];
    }
    debug_assert!(micros.abs() < 10_000 * 366 * MICROS_PER_DAY);
    Some((micros, rest))
}

/// `YYYY-MM-DD` (exactly; year 1 to 9999, a real day): days since 2000-01-01.
fn day_number(b: &[u8]) -> Option<i64> {
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (year, month, day) = (number(&b[0..4])?, number(&b[5..7])?, number(&b[8..10])?);
    if year < 1 || !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    Some(days_from_civil(year, month, day) - EPOCH_DAYS)
}

/// Decimal digits (the callers' fields are never empty) as a number.
fn number(digits: &[u8]) -> Option<i64> {
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0, |n, &d| n * 10 + i64::from(d - b'0')))
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 0000-03-01 to the given (valid) date, proleptic Gregorian
/// (the era-based count of H. Hinnant's `days_from_civil`, shifted).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let shifted_month = (month + 9) % 12;
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_in_their_printed_form_only() {
        assert_eq!(integer("0", 16), Some(0));
        assert_eq!(integer("-32768", 16), Some(-32768));
        assert_eq!(integer("32767", 16), Some(32767));
        assert_eq!(integer("32768", 16), None, "out of range: the input function says so");
        assert_eq!(integer("-2147483648", 32), Some(-2_147_483_648));
        assert_eq!(integer("2147483648", 32), None);
        assert_eq!(integer("9223372036854775807", 64), Some(i64::MAX));
        assert_eq!(integer("-9223372036854775808", 64), Some(i64::MIN));
        assert_eq!(integer("9223372036854775808", 64), None);
        for other in ["", "-", "+1", " 1", "1 ", "01", "-0x1", "1_000", "1.0", "1e3", "١"] {
            assert_eq!(integer(other, 64), None, "{other:?}");
        }
    }

    #[test]
    fn floats_in_their_printed_form_read_back_to_the_same_bits() {
        for v in [0.1 + 0.2, 1.0 / 3.0, 1e-308 * 1.5, 5e-324, f64::MAX, -f64::MIN_POSITIVE, 123456789.0, -0.5, 1e22] {
            let printed = format!("{v:e}");
            assert_eq!(float8(&printed).map(f64::to_bits), Some(v.to_bits()), "{printed}");
            let printed = format!("{v}");
            assert_eq!(float8(&printed).map(f64::to_bits), Some(v.to_bits()), "{printed}");
        }
        assert_eq!(float8("1e+22"), Some(1e22));
        assert_eq!(float8("0").map(f64::to_bits), Some(0f64.to_bits()));
        assert_eq!(float8("-0").map(f64::to_bits), Some((-0f64).to_bits()));
        assert_eq!(float4("3.4028235e+38"), Some(f32::MAX));
        assert_eq!(float4("0.33333334"), Some(1.0 / 3.0));
        // what PostgreSQL refuses or spells its own way goes to its input function
        for other in ["1e400", "1e-400", "NaN", "Infinity", "-Infinity", "inf", " 1", "1.", ".5", "1e", "+1", "1E5", "0x1p3", ""] {
            assert_eq!(float8(other), None, "{other:?}");
        }
        assert_eq!(float4("1e39"), None);
        assert_eq!(float4("1e-46"), None);
    }

    #[test]
    fn dates_and_times_count_from_2000_01_01() {
        assert_eq!(date("2000-01-01"), Some(0));
        assert_eq!(date("1999-12-31"), Some(-1));
        assert_eq!(date("2000-03-01"), Some(60), "2000 is a leap year");
        assert_eq!(date("1970-01-01"), Some(-10_957));
        assert_eq!(date("0001-01-01"), Some(-730_119));
        assert_eq!(date("9999-12-31"), Some(2_921_939));
        assert_eq!(date("2024-02-29"), Some(8_825));
        assert_eq!(date("2000-02-29"), Some(59), "a year divisible by 400 is a leap year");
        assert_eq!(date("1600-02-29"), Some(-146_038));
        for other in ["2023-02-29", "1900-02-29", "2100-02-29", "2000/01/01", "2000-01/01", "2000-01-1", "2000-0-01", "2024-13-01", "2024-00-10", "2024-01-32", "0000-01-01", "44-03-15", "2024-1-1", "0044-03-15 BC", "infinity", "10000-01-01"] {
            assert_eq!(date(other), None, "{other:?}");
        }
        assert_eq!(timestamp("2000-01-01 00:00:00"), Some(0));
        assert_eq!(timestamp("2000-01-01 00:00:01.5"), Some(1_500_000));
        assert_eq!(timestamp("1999-12-31 23:59:59.999999"), Some(-1));
        assert_eq!(timestamp("2026-01-01 00:00:00"), Some(9_497 * MICROS_PER_DAY));
        for other in ["2000-01-01 00-00:00", "2000-01-01 00:00-00", "2000-01-01 00:00:0", "2000-01-01 24:00:00", "2000-01-01 00:60:00", "2000-01-01 00:00:60", "2000-01-01 00:00:00.", "2000-01-01 00:00:00.1234567", "2000-01-01T00:00:00", "2000-01-01 00:00:00+00", "2000-01-01"] {
            assert_eq!(timestamp(other), None, "{other:?}");
        }
    }

    #[test]
    fn timestamps_with_an_offset_are_moved_to_utc() {
        assert_eq!(timestamptz("2000-01-01 00:00:00+00"), Some(0));
        assert_eq!(timestamptz("2000-01-01 05:30:00+05:30"), Some(0));
        assert_eq!(timestamptz("1999-12-31 19:00:00-05"), Some(0));
        assert_eq!(timestamptz("2000-01-01 00:00:00.000001-00:00:01"), Some(1_000_001));
        assert_eq!(timestamptz("2024-07-01 23:59:59.999999+05:45"), timestamp("2024-07-01 18:14:59.999999"));
        for other in ["2000-01-01 00:00:00", "2000-01-01 00:00:00+0", "2000-01-01 00:00:00+000", "2000-01-01 00:00:00+16", "2000-01-01 00:00:00+05:60", "2000-01-01 00:00:00+00:00:00:00", "2000-01-01 00:00:00 UTC", "2000-01-01 00:00:00+"] {
            assert_eq!(timestamptz(other), None, "{other:?}");
        }
    }

    #[test]
    fn days_from_civil_counts_every_day_of_four_centuries() {
        let mut expected = days_from_civil(1600, 3, 1);
        for year in 1600..2000 {
            for month in 1..=12 {
                for day in 1..=days_in_month(year, month) {
                    if (year, month) >= (1600, 3) {
                        assert_eq!(days_from_civil(year, month, day), expected, "{year}-{month}-{day}");
                        expected += 1;
                    }
                }
            }
        }
        assert_eq!(days_from_civil(2000, 1, 1), EPOCH_DAYS);
    }
}
