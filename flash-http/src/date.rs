//! IMF-fixdate formatting (RFC 9110 5.6.7) without allocation, and a
//! per-second cache for the `Date` header that every response carries.

use std::time::{SystemTime, UNIX_EPOCH};

/// 9999-12-31T23:59:59Z: the last instant a four-digit year can show.
/// Later times are clamped to it instead of producing a malformed date.
const MAX_SECS: u64 = 253_402_300_799;

const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// Formats unix seconds as "Sun, 06 Nov 1994 08:49:37 GMT" into a fixed array.
pub(crate) fn imf_fixdate(unix_secs: u64) -> [u8; 29] {
    let secs = unix_secs.min(MAX_SECS);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);

    let mut out = *b"Thu, 01 Jan 1970 00:00:00 GMT";
    let put2 = |out: &mut [u8; 29], at: usize, v: u64| {
        // Every caller passes v < 100, so both digits are in range.
        if let Some(slot) = out.get_mut(at..at + 2) {
            slot.copy_from_slice(&[b'0' + (v / 10 % 10) as u8, b'0' + (v % 10) as u8]);
        }
    };
    // 1970-01-01 was a Thursday, hence the table's order.
    out[..3].copy_from_slice(DAYS[(days % 7) as usize]);
    put2(&mut out, 5, day);
    out[8..11].copy_from_slice(MONTHS[((month + 11) % 12) as usize]);
    put2(&mut out, 12, year / 100);
    put2(&mut out, 14, year % 100);
    put2(&mut out, 17, rem / 3600);
    put2(&mut out, 20, rem / 60 % 60);
    put2(&mut out, 23, rem % 60);
    out
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31); Howard Hinnant's
/// `civil_from_days`, restricted to non-negative days. (Also used by the
/// access log's timestamps.)
pub fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Format unix seconds as an IMF-fixdate into `out` (29 bytes).
/// Times after the year 9999 are clamped to its last second.
pub fn format_http_date(unix_secs: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(&imf_fixdate(unix_secs));
}

/// The value of the `Date` header, formatted at most once per second.
pub struct DateCache {
    secs: Option<u64>,
    text: [u8; 29],
    /// How many times the text was (re)formatted; lets tests see the caching.
    formats: u64,
}

impl DateCache {
    /// An empty cache; the first `get` formats.
    pub fn new() -> Self {
        DateCache {
            secs: None,
            text: imf_fixdate(0),
            formats: 0,
        }
    }

    /// IMF-fixdate for `now`, e.g. "Sun, 06 Nov 1994 08:49:37 GMT".
    /// Times before 1970 are shown as the epoch.
    pub fn get(&mut self, now: SystemTime) -> &str {
        let secs = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if self.secs != Some(secs) {
            self.text = imf_fixdate(secs);
            self.secs = Some(secs);
            self.formats += 1;
        }
        // Always ASCII; the fallback only exists to avoid a panic path.
        std::str::from_utf8(&self.text).unwrap_or("Thu, 01 Jan 1970 00:00:00 GMT")
    }
}

impl Default for DateCache {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn fmt(secs: u64) -> String {
        let mut v = Vec::new();
        format_http_date(secs, &mut v);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn known_dates() {
        assert_eq!(fmt(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(fmt(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(fmt(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(fmt(MAX_SECS), "Fri, 31 Dec 9999 23:59:59 GMT");
        assert_eq!(fmt(u64::MAX), "Fri, 31 Dec 9999 23:59:59 GMT");
    }

    #[test]
    fn agrees_with_httpdate() {
        let mut secs = 0u64;
        while secs < MAX_SECS {
            let ours = fmt(secs);
            let theirs = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
            assert_eq!(ours, theirs, "{secs}");
            // Round-trips through the parser used for conditional headers.
            let back = httpdate::parse_http_date(&ours).unwrap();
            assert_eq!(back, UNIX_EPOCH + Duration::from_secs(secs));
            secs = secs * 3 + 86_399 + secs / 7;
        }
    }

    #[test]
    fn cache_reformats_only_when_second_changes() {
        let mut cache = DateCache::new();
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(cache.get(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(
            cache.get(t + Duration::from_millis(999)),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert_eq!(cache.formats, 1);
        assert_eq!(
            cache.get(t + Duration::from_secs(1)),
            "Sun, 06 Nov 1994 08:49:38 GMT"
        );
        assert_eq!(cache.formats, 2);
        // Pre-epoch clocks do not panic.
        assert_eq!(
            cache.get(UNIX_EPOCH - Duration::from_secs(5)),
            "Thu, 01 Jan 1970 00:00:00 GMT"
        );
    }
}
