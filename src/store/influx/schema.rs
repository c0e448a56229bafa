//! InfluxQL for the database and its retention policy, and reading
//! InfluxDB's answers. Pure.

use std::time::Duration;

/// The retention policy iotpipe writes into (made the database's default).
pub const RETENTION_POLICY: &str = "iotpipe";

/// A retention policy as `SHOW RETENTION POLICIES` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Go duration text, e.g. `72h0m0s`.
    pub duration: String,
    /// Shard group duration, e.g. `24h0m0s`.
    pub shard: String,
    /// Whether it is the database's default.
    pub default: bool,
}

impl Policy {
    /// The policy for a retention window: whole seconds, and InfluxDB's own
    /// choice of shard duration (1h under 2 days, 1d up to 6 months, else
    /// 7d), stated so that shortening the window does not fail.
    pub fn for_retention(retention: Duration) -> Self {
        let secs = retention.as_secs().max(3600);
        let shard = if secs < 2 * 86_400 {
            3600
        } else if secs <= 180 * 86_400 {
            86_400
        } else {
            7 * 86_400
        };
        Policy { duration: go_duration(secs), shard: go_duration(shard), default: true }
    }
}

/// Seconds as Go prints a `time.Duration`: `72h0m0s`, `30m0s`, `5s`.
pub fn go_duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// Back from Go duration text to seconds (`72h0m0s` → 259200).
fn go_secs(text: &str) -> Option<u64> {
    let (mut total, mut num) = (0u64, String::new());
    for c in text.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        total += n * match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
    }
    num.is_empty().then_some(total)
}

/// A double-quoted InfluxQL identifier.
pub fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `CREATE DATABASE "db"` (a no-op when it exists).
pub fn create_database(db: &str) -> String {
    format!("CREATE DATABASE {}", quote(db))
}

/// `SHOW RETENTION POLICIES ON "db"`.
pub fn show_retention_policies(db: &str) -> String {
    format!("SHOW RETENTION POLICIES ON {}", quote(db))
}

fn policy_clause(p: &Policy) -> Option<String> {
    Some(format!("DURATION {}s REPLICATION 1 SHARD DURATION {}s DEFAULT", go_secs(&p.duration)?, go_secs(&p.shard)?))
}

/// Creates the `iotpipe` policy as the default.
pub fn create_policy(db: &str, p: &Policy) -> String {
    format!(
        "CREATE RETENTION POLICY {} ON {} {}",
        quote(RETENTION_POLICY),
        quote(db),
        policy_clause(p).unwrap_or_default()
    )
}

/// Sets the `iotpipe` policy's duration and makes it the default.
pub fn alter_policy(db: &str, p: &Policy) -> String {
    format!(
        "ALTER RETENTION POLICY {} ON {} {}",
        quote(RETENTION_POLICY),
        quote(db),
        policy_clause(p).unwrap_or_default()
    )
}

/// The `iotpipe` policy in a `SHOW RETENTION POLICIES` answer.
pub fn find_policy(answer: &serde_json::Value) -> Option<Policy> {
    let series = answer.pointer("/results/0/series/0")?;
    let columns: Vec<&str> = series.get("columns")?.as_array()?.iter().filter_map(|c| c.as_str()).collect();
    let col = |name: &str| columns.iter().position(|c| *c == name);
    let (name, duration, shard, default) =
        (col("name")?, col("duration")?, col("shardGroupDuration")?, col("default")?);
    series.get("values")?.as_array()?.iter().find_map(|row| {
        let row = row.as_array()?;
        (row.get(name)?.as_str()? == RETENTION_POLICY).then(|| Policy {
            duration: row.get(duration).and_then(|v| v.as_str()).unwrap_or_default().to_string(),
            shard: row.get(shard).and_then(|v| v.as_str()).unwrap_or_default().to_string(),
            default: row.get(default).and_then(|v| v.as_bool()).unwrap_or(false),
        })
    })
}

/// The first statement error in a `/query` answer.
pub fn statement_error(answer: &serde_json::Value) -> Option<String> {
    if let Some(e) = answer.get("error").and_then(|e| e.as_str()) {
        return Some(e.to_string());
    }
    answer.get("results")?.as_array()?.iter().find_map(|r| r.get("error").and_then(|e| e.as_str()).map(str::to_string))
}

/// `partial write: ... dropped=N` → N.
pub fn partial_write_dropped(message: &str) -> Option<u64> {
    if !message.starts_with("partial write") {
        return None;
    }
    let tail = &message[message.rfind("dropped=")? + "dropped=".len()..];
    tail.chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations_print_like_go() {
        assert_eq!(go_duration(3 * 86_400), "72h0m0s");
        assert_eq!(go_duration(5_400), "1h30m0s");
        assert_eq!(go_duration(90), "1m30s");
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_secs("72h0m0s"), Some(259_200));
        assert_eq!(go_secs("1h30m0s"), Some(5_400));
        assert_eq!(go_secs("72x"), None);
    }

    #[test]
    fn policies_follow_influx_shard_rules() {
        let p = Policy::for_retention(Duration::from_secs(3 * 86_400));
        assert_eq!(p, Policy { duration: "72h0m0s".into(), shard: "24h0m0s".into(), default: true });
        assert_eq!(Policy::for_retention(Duration::from_secs(86_400)).shard, "1h0m0s");
        assert_eq!(Policy::for_retention(Duration::from_secs(365 * 86_400)).shard, "168h0m0s");
        assert_eq!(
            create_policy("iot", &p),
            "CREATE RETENTION POLICY \"iotpipe\" ON \"iot\" DURATION 259200s REPLICATION 1 SHARD DURATION 86400s DEFAULT"
        );
        assert_eq!(
            alter_policy("a\"b", &p),
            "ALTER RETENTION POLICY \"iotpipe\" ON \"a\\\"b\" DURATION 259200s REPLICATION 1 SHARD DURATION 86400s DEFAULT"
        );
    }

    #[test]
    fn reads_show_retention_policies() {
        let answer = json!({"results":[{"statement_id":0,"series":[{"columns":["name","duration","shardGroupDuration","replicaN","default"],
            "values":[["autogen","0s","168h0m0s",1,false],["iotpipe","72h0m0s","24h0m0s",1,true]]}]}]});
        assert_eq!(find_policy(&answer), Some(Policy::for_retention(Duration::from_secs(3 * 86_400))));
        assert_eq!(find_policy(&json!({"results":[{"statement_id":0}]})), None);
    }

    #[test]
    fn reads_errors() {
        assert_eq!(
            statement_error(&json!({"results":[{"statement_id":0,"error":"database not found: x"}]})).as_deref(),
            Some("database not found: x")
        );
        assert_eq!(statement_error(&json!({"results":[{"statement_id":0}]})), None);
        let msg = "partial write: field type conflict: input field \"t\" on measurement \"telemetry\" is type string, already exists as type float dropped=3";
        assert_eq!(partial_write_dropped(msg), Some(3));
        assert_eq!(partial_write_dropped("unable to parse 'x'"), None);
    }
}
