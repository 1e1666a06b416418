//! `START_TIME`: Envoy's default rendering and `START_TIME(format)` with
//! strftime's common specifiers, always in UTC.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// One piece of a `START_TIME(...)` format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum TimePart {
    Literal(String),
    Year,
    Year2,
    Month,
    Day,
    DaySpace,
    DayOfYear,
    Hour,
    Hour12,
    Minute,
    Second,
    /// `%E<n>S`: seconds with `n` decimals.
    SecondFrac(u8),
    EpochSeconds,
    /// `%<n>f` (`%f`: 9): the fraction of the second.
    Fraction(u8),
    AmPm,
    WeekdayShort,
    WeekdayLong,
    MonthShort,
    MonthLong,
    Offset,
    OffsetColon,
    Zone,
}

/// A `START_TIME(...)` format: strftime's common specifiers plus Envoy's
/// `%s` (epoch seconds), `%f`/`%<n>f` (fraction) and `%E<n>S`.
pub(super) fn time_format(f: &str) -> Result<Vec<TimePart>, String> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut chars = f.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            literal.push(c);
            continue;
        }
        let part = match chars.next() {
            Some('%') => {
                literal.push('%');
                continue;
            }
            Some('n') => {
                literal.push('\n');
                continue;
            }
            Some('t') => {
                literal.push('\t');
                continue;
            }
            Some('Y') => TimePart::Year,
            Some('y') => TimePart::Year2,
            Some('m') => TimePart::Month,
            Some('d') => TimePart::Day,
            Some('e') => TimePart::DaySpace,
            Some('j') => TimePart::DayOfYear,
            Some('H') => TimePart::Hour,
            Some('I') => TimePart::Hour12,
            Some('M') => TimePart::Minute,
            Some('S') => TimePart::Second,
            Some('s') => TimePart::EpochSeconds,
            Some('f') => TimePart::Fraction(9),
            Some('p') => TimePart::AmPm,
            Some('a') => TimePart::WeekdayShort,
            Some('A') => TimePart::WeekdayLong,
            Some('b' | 'h') => TimePart::MonthShort,
            Some('B') => TimePart::MonthLong,
            Some('z') => TimePart::Offset,
            Some('Z') => TimePart::Zone,
            Some('F') => {
                parts.extend(flush(&mut literal));
                parts.extend([
                    TimePart::Year,
                    TimePart::Literal("-".into()),
                    TimePart::Month,
                    TimePart::Literal("-".into()),
                    TimePart::Day,
                ]);
                continue;
            }
            Some('T') => {
                parts.extend(flush(&mut literal));
                parts.extend([
                    TimePart::Hour,
                    TimePart::Literal(":".into()),
                    TimePart::Minute,
                    TimePart::Literal(":".into()),
                    TimePart::Second,
                ]);
                continue;
            }
            Some(d @ '1'..='9') if chars.peek() == Some(&'f') => {
                chars.next();
                TimePart::Fraction(d as u8 - b'0')
            }
            Some('E') => match chars.next() {
                Some('z') => TimePart::OffsetColon,
                Some(d @ '0'..='9') if chars.peek() == Some(&'S') => {
                    chars.next();
                    TimePart::SecondFrac(d as u8 - b'0')
                }
                _ => {
                    return Err(format!(
                        "START_TIME format {f:?}: of the %E specifiers only %E<digit>S and %Ez are supported"
                    ));
                }
            },
            Some(other) => {
                return Err(format!(
                    "START_TIME format {f:?}: specifier %{other} is not supported \
                     (supported: %Y %y %m %d %e %j %H %I %M %S %s %f %1f-%9f %E<n>S %p %a %A %b %B %z %Ez %Z %F %T %%)"
                ));
            }
            None => return Err(format!("START_TIME format {f:?} ends with a lone %")),
        };
        parts.extend(flush(&mut literal));
        parts.push(part);
    }
    parts.extend(flush(&mut literal));
    Ok(parts)
}

fn flush(literal: &mut String) -> Option<TimePart> {
    (!literal.is_empty()).then(|| TimePart::Literal(std::mem::take(literal)))
}

/// Envoy's `%START_TIME%`: UTC, millisecond precision
/// (`2024-05-01T12:00:00.123Z`).
pub fn start_time(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, of_day) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(i64::try_from(days).unwrap_or(0));
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60,
        since.subsec_millis()
    )
}

/// `t` in a `START_TIME(...)` format (UTC).
pub(super) fn format_time(t: SystemTime, parts: &[TimePart]) -> String {
    const WEEKDAYS: [&str; 7] = [
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
    ];
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let nanos = since.subsec_nanos();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let of_day = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    let (hour, minute, second) = (of_day / 3600, of_day % 3600 / 60, of_day % 60);
    let month = MONTHS[(m as usize).saturating_sub(1) % 12];
    // 1970-01-01 was a Thursday.
    let weekday = WEEKDAYS[usize::try_from((days + 4).rem_euclid(7)).unwrap_or(0)];
    let fraction = |n: u8| {
        let digits = format!("{nanos:09}");
        digits[..usize::from(n.min(9))].to_string()
    };
    let mut out = String::new();
    for part in parts {
        let _ = match part {
            TimePart::Literal(s) => write!(out, "{s}"),
            TimePart::Year => write!(out, "{y:04}"),
            TimePart::Year2 => write!(out, "{:02}", y.rem_euclid(100)),
            TimePart::Month => write!(out, "{m:02}"),
            TimePart::Day => write!(out, "{d:02}"),
            TimePart::DaySpace => write!(out, "{d:2}"),
            TimePart::DayOfYear => {
                let jan1 = days_from_civil(y, 1, 1);
                write!(out, "{:03}", days - jan1 + 1)
            }
            TimePart::Hour => write!(out, "{hour:02}"),
            TimePart::Hour12 => write!(out, "{:02}", (hour + 11) % 12 + 1),
            TimePart::Minute => write!(out, "{minute:02}"),
            TimePart::Second => write!(out, "{second:02}"),
            TimePart::SecondFrac(0) => write!(out, "{second:02}"),
            TimePart::SecondFrac(n) => write!(out, "{second:02}.{}", fraction(*n)),
            TimePart::EpochSeconds => write!(out, "{secs}"),
            TimePart::Fraction(n) => write!(out, "{}", fraction(*n)),
            TimePart::AmPm => write!(out, "{}", if hour < 12 { "AM" } else { "PM" }),
            TimePart::WeekdayShort => write!(out, "{}", &weekday[..3]),
            TimePart::WeekdayLong => write!(out, "{weekday}"),
            TimePart::MonthShort => write!(out, "{}", &month[..3]),
            TimePart::MonthLong => write!(out, "{month}"),
            TimePart::Offset => write!(out, "+0000"),
            TimePart::OffsetColon => write!(out, "+00:00"),
            TimePart::Zone => write!(out, "UTC"),
        };
    }
    out
}

/// The proleptic Gregorian date of a day number counted from 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m as u32, d as u32)
}

/// The day number of a date (Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}
