//! Reading for the dashboard: the answers of `docs/api.md` as typed
//! structs, and [`QueryHandle`], which asks the store on connections of its
//! own so that dashboard reads never wait behind a batch being written.
//!
//! An empty list from [`QueryHandle::projects`] or [`QueryHandle::devices`]
//! and `None` from [`QueryHandle::series`] or [`QueryHandle::latest`] mean
//! the tenant, project or device is unknown (it has no stored rows).

use super::{sqlite, StoreError};
use serde::Serialize;
use std::collections::BTreeMap;

/// Points of one field in a series: at most this many buckets.
pub const MAX_BUCKETS: i64 = 300;

/// A series carries at most this many fields (the first by name), so one
/// device with hundreds of numeric keys cannot make an answer huge.
pub const MAX_FIELDS: usize = 64;

/// Bytes of a dead letter's payload shown in [`DeadLetterSummary::payload_preview`].
pub const PREVIEW_BYTES: usize = 200;

/// Longest payload of [`Latest::payload`] when it is not JSON (bytes).
pub const LATEST_RAW_BYTES: usize = 64 * 1024;

/// Most entries one list query returns (`GET /api/tenants?limit=`).
pub const MAX_LIST_LIMIT: u32 = 1000;

/// A page of a list sorted by name: the entries after `after` (all when
/// `None`), at most `limit` of them. The lists grow with the number of
/// tenants, projects and devices, so none is read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The last name of the previous page.
    pub after: Option<String>,
    /// Entries wanted, 1..=`MAX_LIST_LIMIT` (larger values are capped).
    pub limit: u32,
}

impl Page {
    /// The first `limit` entries.
    pub fn first(limit: u32) -> Self {
        Self { after: None, limit }
    }

    /// `limit`, capped, as SQL wants it.
    pub fn sql_limit(&self) -> i64 {
        i64::from(self.limit.clamp(1, MAX_LIST_LIMIT))
    }
}

/// One tenant of `GET /api/tenants`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantSummary {
    /// The tenant.
    pub tenant_id: String,
    /// Projects with stored rows.
    pub projects: u64,
    /// Devices with stored rows.
    pub devices: u64,
    /// Stored rows.
    pub messages: u64,
    /// Latest receive time of its rows (epoch ms).
    pub last_seen: i64,
}

/// One project of `GET /api/tenants/{tenant}/projects`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProjectSummary {
    /// The project.
    pub project_id: String,
    /// Devices with stored rows.
    pub devices: u64,
    /// Stored rows.
    pub messages: u64,
    /// Latest receive time of its rows (epoch ms).
    pub last_seen: i64,
}

/// One device of `GET /api/tenants/{tenant}/projects/{project}/devices`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceSummary {
    /// The device.
    pub device_id: String,
    /// Stored rows.
    pub messages: u64,
    /// Latest receive time of its rows (epoch ms).
    pub last_seen: i64,
}

/// The time spans a series can cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum SeriesRange {
    /// The last 15 minutes (3 s buckets).
    #[default]
    #[serde(rename = "15m")]
    Minutes15,
    /// The last hour (12 s buckets).
    #[serde(rename = "1h")]
    Hour1,
    /// The last 3 days (14.4 min buckets).
    #[serde(rename = "3d")]
    Days3,
}

impl SeriesRange {
    /// Every range, in the order the dashboard offers them.
    pub const ALL: [SeriesRange; 3] = [SeriesRange::Minutes15, SeriesRange::Hour1, SeriesRange::Days3];

    /// `15m`, `1h` or `3d`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Minutes15 => "15m",
            Self::Hour1 => "1h",
            Self::Days3 => "3d",
        }
    }

    /// The span in milliseconds.
    pub fn millis(self) -> i64 {
        match self {
            Self::Minutes15 => 15 * 60_000,
            Self::Hour1 => 3_600_000,
            Self::Days3 => 3 * 86_400_000,
        }
    }
}

/// The buckets of a series ending now: [`MAX_BUCKETS`] buckets of equal
/// width (the range / 300), aligned to multiples of the width so that
/// successive polls average the same rows, the last one holding `now`. They
/// cover the range less the part of the current bucket that is still ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesWindow {
    /// Start of the first bucket (epoch ms), less than one bucket after `now - range`.
    pub from: i64,
    /// End of the last bucket (exclusive), after `now`.
    pub end: i64,
    /// Width of a bucket (ms).
    pub bucket_ms: i64,
}

impl SeriesWindow {
    /// The window of `range` ending at `now_ms`.
    pub fn new(range: SeriesRange, now_ms: i64) -> Self {
        let bucket_ms = (range.millis() + MAX_BUCKETS - 1) / MAX_BUCKETS;
        let end = now_ms.div_euclid(bucket_ms).saturating_mul(bucket_ms).saturating_add(bucket_ms);
        Self { from: end.saturating_sub(MAX_BUCKETS * bucket_ms), end, bucket_ms }
    }
}

/// `GET …/devices/{device}/series`: numeric top-level payload fields
/// averaged per bucket.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    /// The device.
    pub device_id: String,
    /// The range asked for.
    pub range: SeriesRange,
    /// Start of the first bucket (epoch ms).
    pub from: i64,
    /// The time of the query (epoch ms).
    pub to: i64,
    /// Field name → `[bucket start, average]`, in time order; buckets
    /// without a value are left out.
    pub fields: BTreeMap<String, Vec<(i64, f64)>>,
}

/// `GET …/devices/{device}/latest`: the device's newest stored row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Latest {
    /// The time the row is filed under (epoch ms).
    pub time: i64,
    /// When iotpipe received it (epoch ms).
    pub received_at: i64,
    /// The device's own timestamp, when it had one (epoch ms).
    pub event_time: Option<i64>,
    /// The record id (UUID).
    pub id: String,
    /// The MQTT topic it arrived on.
    pub mqtt_topic: String,
    /// The payload as JSON, or as a string (lossy UTF-8, at most
    /// [`LATEST_RAW_BYTES`]) when it is not JSON.
    pub payload: serde_json::Value,
}

/// One entry of `GET /api/dead-letters`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetterSummary {
    /// When iotpipe received the message (epoch ms).
    pub received_at: i64,
    /// Machine-readable reason, e.g. `invalid_json`.
    pub reason: String,
    /// Human-readable detail.
    pub error: String,
    /// The MQTT topic, when known.
    pub mqtt_topic: Option<String>,
    /// The unique origin, e.g. `journal:42`.
    pub source: String,
    /// The start of the payload as text (lossy UTF-8, at most
    /// [`PREVIEW_BYTES`] bytes; `…` marks a cut).
    pub payload_preview: String,
}

/// Reads for the dashboard, on connections separate from the writer's.
/// Cheap to clone; every clone shares the same connections.
#[derive(Clone)]
pub struct QueryHandle {
    /// The backend's reader.
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    /// Read-only SQLite connections.
    Sqlite(sqlite::Reader),
}

impl QueryHandle {
    pub(crate) fn sqlite(reader: sqlite::Reader) -> Self {
        Self { inner: Inner::Sqlite(reader) }
    }

    /// A page of the tenants with stored rows, by name.
    pub async fn tenants(&self, page: &Page) -> Result<Vec<TenantSummary>, StoreError> {
        match &self.inner {
            Inner::Sqlite(r) => r.tenants(page).await,
        }
    }

    /// A page of the tenant's projects, by name; empty when the tenant is unknown.
    pub async fn projects(&self, tenant: &str, page: &Page) -> Result<Vec<ProjectSummary>, StoreError> {
        match &self.inner {
            Inner::Sqlite(r) => r.projects(tenant, page).await,
        }
    }

    /// A page of the project's devices, by name; empty when the project is unknown.
    pub async fn devices(&self, tenant: &str, project: &str, page: &Page) -> Result<Vec<DeviceSummary>, StoreError> {
        match &self.inner {
            Inner::Sqlite(r) => r.devices(tenant, project, page).await,
        }
    }

    /// The device's numeric top-level fields (or only `field`) over `range`
    /// ending now; `None` when the device is unknown.
    pub async fn series(
        &self,
        tenant: &str,
        project: &str,
        device: &str,
        range: SeriesRange,
        field: Option<&str>,
    ) -> Result<Option<Series>, StoreError> {
        match &self.inner {
            Inner::Sqlite(r) => r.series(tenant, project, device, range, field).await,
        }
    }

    /// The device's newest row; `None` when the device is unknown.
    pub async fn latest(&self, tenant: &str, project: &str, device: &str) -> Result<Option<Latest>, StoreError> {
        match &self.inner {
            Inner::Sqlite(r) => r.latest(tenant, project, device).await,
        }
    }

    /// The newest `limit` dead letters, newest first.
    pub async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetterSummary>, StoreError> {
        match &self.inner {
            Inner::Sqlite(r) => r.dead_letters(limit).await,
        }
    }

    /// Where the handle reads, without secrets.
    pub fn describe(&self) -> String {
        match &self.inner {
            Inner::Sqlite(r) => r.describe(),
        }
    }
}

/// The first [`PREVIEW_BYTES`] of `bytes` as text, `…` appended when cut.
pub(crate) fn preview(bytes: &[u8], total_len: usize) -> String {
    let cut = &bytes[..bytes.len().min(PREVIEW_BYTES)];
    let mut text = String::from_utf8_lossy(cut).into_owned();
    if total_len > cut.len() {
        // A character split by the cut shows as U+FFFD; drop it.
        if text.ends_with('\u{FFFD}') && std::str::from_utf8(cut).is_err() {
            text.pop();
        }
        text.push('…');
    }
    text
}

/// A stored payload for [`Latest::payload`]: the JSON value, else the text.
pub(crate) fn payload_value(json: Option<&str>, raw: &[u8]) -> serde_json::Value {
    if let Some(v) = json.and_then(|j| serde_json::from_str(j).ok()) {
        return v;
    }
    let cut = &raw[..raw.len().min(LATEST_RAW_BYTES)];
    serde_json::Value::String(String::from_utf8_lossy(cut).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_print() {
        for r in SeriesRange::ALL {
            assert_eq!(SeriesRange::parse(r.as_str()), Some(r));
            assert_eq!(serde_json::to_value(r).unwrap(), serde_json::json!(r.as_str()));
        }
        for bad in ["", "15M", "2h", "1d", "15m ", "3d\0"] {
            assert_eq!(SeriesRange::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn windows_have_300_aligned_buckets_covering_the_range() {
        let now = 1_700_000_000_123;
        for r in SeriesRange::ALL {
            let w = SeriesWindow::new(r, now);
            assert_eq!(w.end - w.from, MAX_BUCKETS * w.bucket_ms, "{r:?}");
            assert!(w.end > now && w.end - w.bucket_ms <= now, "{r:?}: {w:?}");
            assert!(w.from >= now - r.millis() && w.from < now - r.millis() + w.bucket_ms, "{r:?}: {w:?}");
            assert_eq!(w.from % w.bucket_ms, 0);
        }
        assert_eq!(SeriesWindow::new(SeriesRange::Minutes15, now).bucket_ms, 3_000);
        assert_eq!(SeriesWindow::new(SeriesRange::Hour1, now).bucket_ms, 12_000);
        assert_eq!(SeriesWindow::new(SeriesRange::Days3, now).bucket_ms, 864_000);
        // Extreme clocks do not overflow.
        SeriesWindow::new(SeriesRange::Days3, i64::MAX);
        SeriesWindow::new(SeriesRange::Days3, i64::MIN);
    }

    #[test]
    fn previews_are_cut_on_characters() {
        assert_eq!(preview(b"{not json", 9), "{not json");
        let long = "é".repeat(150);
        let p = preview(&long.as_bytes()[..PREVIEW_BYTES], long.len());
        assert_eq!(p, format!("{}…", "é".repeat(100)));
        let split = format!("a{}", "é".repeat(150));
        assert_eq!(preview(&split.as_bytes()[..PREVIEW_BYTES], split.len()), format!("a{}…", "é".repeat(99)));
        assert_eq!(preview(b"\xff\x00", 2), "\u{FFFD}\0");
    }

    #[test]
    fn payloads_are_json_or_text() {
        assert_eq!(payload_value(Some(r#"{"a":1}"#), b"{\"a\":1}"), serde_json::json!({"a": 1}));
        assert_eq!(payload_value(None, b"plain"), serde_json::json!("plain"));
        assert_eq!(payload_value(None, b"\xff"), serde_json::json!("\u{FFFD}"));
    }
}
