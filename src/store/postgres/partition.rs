//! Daily partitions of `telemetry`: names, date math and the SQL that makes
//! and drops them. Pure: every identifier here is generated from a date,
//! never taken from input.

use crate::store::time_rule::{duration_ms, DAY_MS};
use std::time::Duration;
use time::{Date, OffsetDateTime};

/// The partitioned parent table.
pub const PARENT: &str = "telemetry";
/// The safety-net partition for rows whose day has no partition.
pub const DEFAULT_PARTITION: &str = "telemetry_default";
/// Day partitions are `telemetry_pYYYYMMDD`.
const PREFIX: &str = "telemetry_p";

/// The UTC day `ms` (epoch milliseconds) falls on.
pub fn day_of_ms(ms: i64) -> Option<Date> {
    OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)).ok().map(OffsetDateTime::date)
}

/// Epoch milliseconds of the day's first instant (00:00 UTC).
pub fn day_start_ms(day: Date) -> i64 {
    day.midnight().assume_utc().unix_timestamp() * 1000
}

/// The partition holding `day`: `telemetry_p20240131`. None for years
/// that do not fit four digits (such rows stay in the default partition).
pub fn name(day: Date) -> Option<String> {
    let year = day.year();
    (1..=9999).contains(&year).then(|| format!("{PREFIX}{year:04}{:02}{:02}", u8::from(day.month()), day.day()))
}

/// The day of a partition named by [`name`]; None for any other table.
pub fn parse_name(table: &str) -> Option<Date> {
    let digits = table.strip_prefix(PREFIX)?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year: i32 = digits[..4].parse().ok()?;
    let month: u8 = digits[4..6].parse().ok()?;
    let day: u8 = digits[6..].parse().ok()?;
    Date::from_calendar_date(year, time::Month::try_from(month).ok()?, day).ok()
}

/// Every row of the day is older than `now - retention`.
pub fn is_expired(day: Date, now_ms: i64, retention: Duration) -> bool {
    let cutoff = now_ms.saturating_sub(duration_ms(retention));
    day_start_ms(day).saturating_add(DAY_MS) <= cutoff
}

/// Today (UTC) and the `ahead` days after it.
pub fn days_ahead(now_ms: i64, ahead: u32) -> Vec<Date> {
    let Some(today) = day_of_ms(now_ms) else { return Vec::new() };
    let mut days = vec![today];
    let mut day = today;
    for _ in 0..ahead {
        match day.next_day() {
            Some(next) => {
                days.push(next);
                day = next;
            }
            None => break,
        }
    }
    days
}

/// Whether a write may create the partition of `day`: not already expired
/// (it would be dropped at once) and not beyond the days made ahead plus
/// the time rule's one day of tolerance. Rows of other days go to the
/// default partition, so a bad batch cannot create partitions by the hundred.
pub fn may_create(day: Date, now_ms: i64, retention: Duration, ahead: u32) -> bool {
    let Some(today) = day_of_ms(now_ms) else { return false };
    let horizon = i64::from(ahead.max(1)) + 1;
    !is_expired(day, now_ms, retention) && (day - today).whole_days() <= horizon
}

/// `'2024-01-31 00:00:00+00'`: a partition bound.
fn bound(day: Date) -> String {
    format!("'{:04}-{:02}-{:02} 00:00:00+00'", day.year(), u8::from(day.month()), day.day())
}

/// `FOR VALUES FROM (...) TO (...)` of the day.
fn range(day: Date) -> Option<String> {
    let next = day.next_day()?;
    Some(format!("FOR VALUES FROM ({}) TO ({})", bound(day), bound(next)))
}

/// Creates the day's partition (when the default partition holds no rows of that day).
pub fn create_sql(day: Date) -> Option<String> {
    Some(format!("CREATE TABLE IF NOT EXISTS {} PARTITION OF {PARENT} {}", name(day)?, range(day)?))
}

/// Creates the day's partition when the default partition holds rows of
/// that day: make the table, move the rows into it, attach it. Run in one
/// transaction.
pub fn create_moving_sql(day: Date) -> Option<[String; 3]> {
    let table = name(day)?;
    let next = day.next_day()?;
    Some([
        format!("CREATE TABLE {table} (LIKE {PARENT} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"),
        format!(
            "WITH moved AS (DELETE FROM {DEFAULT_PARTITION} WHERE time >= {} AND time < {} RETURNING *) \
             INSERT INTO {table} SELECT * FROM moved",
            bound(day),
            bound(next)
        ),
        format!("ALTER TABLE {PARENT} ATTACH PARTITION {table} {}", range(day)?),
    ])
}

/// Whether the default partition holds rows of the day.
pub fn default_has_rows_sql(day: Date) -> Option<String> {
    let next = day.next_day()?;
    Some(format!(
        "SELECT EXISTS (SELECT 1 FROM {DEFAULT_PARTITION} WHERE time >= {} AND time < {})",
        bound(day),
        bound(next)
    ))
}

/// Drops a day partition; None unless `table` is one.
pub fn drop_sql(table: &str) -> Option<String> {
    parse_name(table).map(|_| format!("DROP TABLE IF EXISTS {table}"))
}

/// Lists the partitions of `telemetry` (day partitions and the default one).
pub const LIST_SQL: &str = "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                            WHERE i.inhparent = 'telemetry'::regclass";

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    const NOW: i64 = 1_800_000_000_000; // 2027-01-15T08:00:00Z

    #[test]
    fn names_round_trip_and_reject_other_tables() {
        let d = date!(2024 - 01 - 31);
        assert_eq!(name(d).as_deref(), Some("telemetry_p20240131"));
        assert_eq!(parse_name("telemetry_p20240131"), Some(d));
        for other in
            ["telemetry_default", "telemetry_p2024013", "telemetry_p20241301", "telemetry_p2024013x", "x_p20240131"]
        {
            assert_eq!(parse_name(other), None, "{other}");
        }
        assert_eq!(name(date!(-0001 - 01 - 01)), None);
    }

    #[test]
    fn days_are_utc_and_negative_times_round_down() {
        assert_eq!(day_of_ms(NOW), Some(date!(2027 - 01 - 15)));
        assert_eq!(day_of_ms(0), Some(date!(1970 - 01 - 01)));
        assert_eq!(day_of_ms(-1), Some(date!(1969 - 12 - 31)));
        assert_eq!(day_start_ms(date!(2027 - 01 - 15)), 1_799_971_200_000);
        assert_eq!(day_of_ms(i64::MAX), None);
    }

    #[test]
    fn a_day_expires_once_all_of_it_is_older_than_the_window() {
        let three = Duration::from_secs(3 * 86_400);
        // cutoff = 2027-01-12T08:00Z: the 11th is wholly older, the 12th is not.
        assert!(is_expired(date!(2027 - 01 - 11), NOW, three));
        assert!(!is_expired(date!(2027 - 01 - 12), NOW, three));
        assert!(!is_expired(date!(2027 - 01 - 15), NOW, three));
        // Exactly at the boundary: the day ends at the cutoff.
        assert!(is_expired(date!(2027 - 01 - 11), day_start_ms(date!(2027 - 01 - 15)), three));
    }

    #[test]
    fn days_ahead_include_today() {
        assert_eq!(days_ahead(NOW, 2), vec![date!(2027 - 01 - 15), date!(2027 - 01 - 16), date!(2027 - 01 - 17)]);
        assert_eq!(days_ahead(NOW, 0), vec![date!(2027 - 01 - 15)]);
    }

    #[test]
    fn writes_create_partitions_only_inside_the_window() {
        let three = Duration::from_secs(3 * 86_400);
        assert!(may_create(date!(2027 - 01 - 12), NOW, three, 2));
        assert!(may_create(date!(2027 - 01 - 18), NOW, three, 2));
        assert!(!may_create(date!(2027 - 01 - 19), NOW, three, 2));
        assert!(!may_create(date!(2027 - 01 - 11), NOW, three, 2));
        assert!(!may_create(date!(2030 - 01 - 01), NOW, three, 2));
    }

    #[test]
    fn generated_sql() {
        let d = date!(2024 - 12 - 31);
        assert_eq!(
            create_sql(d).unwrap(),
            "CREATE TABLE IF NOT EXISTS telemetry_p20241231 PARTITION OF telemetry \
             FOR VALUES FROM ('2024-12-31 00:00:00+00') TO ('2025-01-01 00:00:00+00')"
        );
        let [create, moved, attach] = create_moving_sql(d).unwrap();
        assert_eq!(
            create,
            "CREATE TABLE telemetry_p20241231 (LIKE telemetry INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
        );
        assert!(moved.starts_with("WITH moved AS (DELETE FROM telemetry_default WHERE time >= '2024-12-31 00:00:00+00' AND time < '2025-01-01 00:00:00+00' RETURNING *)"));
        assert!(moved.ends_with("INSERT INTO telemetry_p20241231 SELECT * FROM moved"));
        assert_eq!(
            attach,
            "ALTER TABLE telemetry ATTACH PARTITION telemetry_p20241231 \
             FOR VALUES FROM ('2024-12-31 00:00:00+00') TO ('2025-01-01 00:00:00+00')"
        );
        assert_eq!(drop_sql("telemetry_p20241231").unwrap(), "DROP TABLE IF EXISTS telemetry_p20241231");
        assert_eq!(drop_sql("telemetry_default"), None);
        assert_eq!(drop_sql("telemetry_p20241231; DROP TABLE x"), None);
    }
}
