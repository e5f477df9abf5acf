//! Wall-clock formatting for message times and day separators, in the
//! user's local time zone. The offset comes from the C library (which reads
//! `TZ` and the system zone) for each timestamp, so messages from before a
//! daylight-saving change still show the hour they were written at. Tests
//! use [`utc`] to stay independent of the machine's zone.

use chat_proto::export::civil_from_days;

/// Gives the offset from UTC, in seconds, in force at a timestamp (ms).
pub type ZoneFn = fn(i64) -> i32;

/// The UTC zone: offset 0 at every instant.
pub fn utc(_ts_ms: i64) -> i32 {
    0
}

/// The local zone of this machine.
#[cfg(unix)]
pub fn local(ts_ms: i64) -> i32 {
    let secs = ts_ms.div_euclid(1000) as libc::time_t;
    let mut tm = std::mem::MaybeUninit::<libc::tm>::zeroed();
    // SAFETY: localtime_r is thread-safe and writes only into `tm`, which is
    // valid for writes; a null result means failure and leaves it unread.
    let ok = unsafe { !libc::localtime_r(&secs, tm.as_mut_ptr()).is_null() };
    if !ok {
        return 0;
    }
    // SAFETY: localtime_r succeeded, so it initialized `tm`.
    let tm = unsafe { tm.assume_init() };
    i32::try_from(tm.tm_gmtoff).unwrap_or(0)
}

/// The local zone of this machine (UTC where the C library offers no zone).
#[cfg(not(unix))]
pub fn local(ts_ms: i64) -> i32 {
    utc(ts_ms)
}

/// A moment in local time, as the screen needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalTime {
    /// Days since 1970-01-01, local.
    pub day: i32,
    /// Minutes since local midnight.
    pub minute: u16,
}

impl LocalTime {
    /// Converts a timestamp in ms since the epoch.
    pub fn at(ts_ms: i64, zone: ZoneFn) -> Self {
        let local_secs = ts_ms.div_euclid(1000) + i64::from(zone(ts_ms));
        let day = local_secs.div_euclid(86_400);
        let minute = (local_secs.rem_euclid(86_400) / 60) as u16;
        LocalTime {
            day: i32::try_from(day).unwrap_or(0),
            minute,
        }
    }

    /// `HH:MM`.
    pub fn hhmm(self) -> String {
        format!("{:02}:{:02}", self.minute / 60, self.minute % 60)
    }
}

const WEEKDAYS: [&str; 7] = [
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
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

/// A day for a separator line: `Tuesday 25 November 2025`.
pub fn format_day(day: i32) -> String {
    let (y, m, d) = civil_from_days(i64::from(day));
    let weekday = WEEKDAYS[i64::from(day).rem_euclid(7) as usize];
    let month = MONTHS[(m - 1) as usize];
    format!("{weekday} {d} {month} {y}")
}

/// A short moment for lists: `24 Nov 16:00`.
pub fn format_short(ts_ms: i64, zone: ZoneFn) -> String {
    let time = LocalTime::at(ts_ms, zone);
    let (_, m, d) = civil_from_days(i64::from(time.day));
    format!("{d} {} {}", &MONTHS[(m - 1) as usize][..3], time.hhmm())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_days() {
        // 2025-11-25 14:13:20 UTC, a Tuesday.
        let t = LocalTime::at(1_764_080_000_000, utc);
        assert_eq!(t.hhmm(), "14:13");
        assert_eq!(format_day(t.day), "Tuesday 25 November 2025");
        assert_eq!(format_day(0), "Thursday 1 January 1970");
        assert_eq!(format_day(-1), "Wednesday 31 December 1969");
        assert_eq!(format_day(11_016), "Tuesday 29 February 2000");
    }

    #[test]
    fn zone_offsets_shift_the_day() {
        fn plus_two(_: i64) -> i32 {
            7200
        }
        let t = LocalTime::at(1_764_111_600_000, plus_two); // 23:00 UTC
        assert_eq!(t.hhmm(), "01:00");
        assert_eq!(format_day(t.day), "Wednesday 26 November 2025");
    }
}
