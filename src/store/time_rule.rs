//! The time a row is filed under.
//!
//! A device clock can be wrong by days or years. Filing a row under a time
//! outside the retention window would either lose it at once (a partition
//! or InfluxDB shard that is already expired) or create partitions far in the
//! future. So:
//!
//! `time` = the event time when it lies within `[now - retention, now + 1 day]`,
//! otherwise the receive time. The device's own timestamp is kept next to it
//! (`event_time`), so no row is ever rejected for its timestamp.

use std::time::Duration;

/// How far ahead of the store's clock an event time may be and still be used.
pub const FUTURE_TOLERANCE_MS: i64 = 86_400_000;

/// Milliseconds in a UTC day.
pub const DAY_MS: i64 = 86_400_000;

/// The time to file a row under (epoch ms). `candidate_ms` is the event time
/// when known, else the receive time.
pub fn effective_time_ms(candidate_ms: i64, received_ms: i64, now_ms: i64, retention: Duration) -> i64 {
    let oldest = now_ms.saturating_sub(duration_ms(retention));
    let newest = now_ms.saturating_add(FUTURE_TOLERANCE_MS);
    if (oldest..=newest).contains(&candidate_ms) {
        candidate_ms
    } else {
        received_ms
    }
}

/// A duration in whole milliseconds, saturating.
pub fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;
    const THREE_DAYS: Duration = Duration::from_secs(3 * 86_400);

    #[test]
    fn event_times_inside_the_window_are_kept() {
        let received = NOW - 5;
        for event in [NOW, NOW - 2 * DAY_MS, NOW - 3 * DAY_MS, NOW + DAY_MS, NOW + 3_600_000] {
            assert_eq!(effective_time_ms(event, received, NOW, THREE_DAYS), event);
        }
    }

    #[test]
    fn event_times_outside_the_window_fall_back_to_the_receive_time() {
        let received = NOW - 5;
        for event in [NOW - 3 * DAY_MS - 1, NOW + DAY_MS + 1, NOW + 30 * DAY_MS, 0, -5, i64::MAX, i64::MIN] {
            assert_eq!(effective_time_ms(event, received, NOW, THREE_DAYS), received);
        }
    }

    #[test]
    fn huge_windows_do_not_overflow() {
        assert_eq!(effective_time_ms(5, 9, NOW, Duration::MAX), 5);
    }
}
