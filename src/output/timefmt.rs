//! Wall-clock timestamps for log records, formatted as RFC 3339 UTC with milliseconds.
//!
//! Supervision never uses these: backoff, uptime and deadlines run on the monotonic
//! clock (`Instant`), so a wall-clock jump changes only what the log says.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch; 0 if the clock is before 1970.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

thread_local! {
    /// The last second formatted on this thread, as `2026-11-27T05:53:17.`: log lines
    /// come in bursts within one second, and the calendar arithmetic is then done once.
    static LAST: std::cell::RefCell<(u64, [u8; 20])> = const { std::cell::RefCell::new((u64::MAX, [0; 20])) };
}

/// Appends `2026-11-27T05:53:17.123Z` for `ms` milliseconds since the epoch.
pub fn push_rfc3339(out: &mut Vec<u8>, ms: u64) {
    let secs = ms / 1000;
    let frac = (ms % 1000) as u32;
    let cached = LAST.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            let mut s = Vec::with_capacity(24);
            push_rfc3339_slow(&mut s, secs * 1000);
            if s.len() != 24 {
                return false; // Years beyond 9999: no cache, format in full.
            }
            c.1.copy_from_slice(&s[..20]);
            c.0 = secs;
        }
        out.extend_from_slice(&c.1);
        true
    });
    if !cached {
        push_rfc3339_slow(out, ms);
        return;
    }
    out.push(b'0' + (frac / 100) as u8);
    out.push(b'0' + (frac / 10 % 10) as u8);
    out.push(b'0' + (frac % 10) as u8);
    out.push(b'Z');
}

fn push_rfc3339_slow(out: &mut Vec<u8>, ms: u64) {
    let secs = ms / 1000;
    let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let (h, mi, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    use std::io::Write;
    // Writing to a Vec cannot fail.
    let _ = write!(
        out,
        "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:03}Z",
        ms % 1000
    );
}

pub fn rfc3339(ms: u64) -> String {
    let mut s = Vec::with_capacity(24);
    push_rfc3339(&mut s, ms);
    // ASCII digits and punctuation only.
    String::from_utf8_lossy(&s).into_owned()
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_seconds_match_the_slow_path() {
        for ms in [
            0u64,
            999,
            1000,
            1_795_758_797_123,
            1_795_758_797_999,
            1_795_758_798_000,
            5,
        ] {
            let mut slow = Vec::new();
            push_rfc3339_slow(&mut slow, ms);
            assert_eq!(rfc3339(ms).as_bytes(), slow);
        }
    }

    #[test]
    fn formats_epoch_and_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        // 2026-11-27T05:53:17.123Z
        assert_eq!(rfc3339(1_795_758_797_123), "2026-11-27T05:53:17.123Z");
        // A leap day.
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }
}
