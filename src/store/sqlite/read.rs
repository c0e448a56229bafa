//! Dashboard queries on read-only connections of their own (WAL: readers
//! and the writer never wait for each other). The lists read the small
//! `telemetry_devices` table; series and latest rows walk the
//! `(tenant_id, project_id, device_id, time)` index of one device.

use super::{blocking, open};
use crate::record::now_ms;
use crate::store::query::{
    payload_value, preview, DeadLetterSummary, DeviceSummary, Latest, Page, ProjectSummary, Series, SeriesRange,
    SeriesWindow, TenantSummary, LATEST_RAW_BYTES, MAX_FIELDS, PREVIEW_BYTES,
};
use crate::store::StoreError;
use rusqlite::{Connection, OptionalExtension, Row};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Queries running at once; more wait. Two cores: more would only queue in the kernel.
const MAX_CONCURRENT: usize = 4;

// Pages walk the primary key (tenant_id, project_id, device_id) from the
// cursor on: a page costs its own rows, not the whole table's.
const TENANTS_SQL: &str = "SELECT tenant_id, count(DISTINCT project_id), count(*), sum(messages), max(last_seen) \
    FROM telemetry_devices WHERE ?1 IS NULL OR tenant_id > ?1 GROUP BY tenant_id ORDER BY tenant_id LIMIT ?2";

const PROJECTS_SQL: &str = "SELECT project_id, count(*), sum(messages), max(last_seen) \
    FROM telemetry_devices WHERE tenant_id = ?1 AND (?2 IS NULL OR project_id > ?2) \
    GROUP BY project_id ORDER BY project_id LIMIT ?3";

const DEVICES_SQL: &str = "SELECT device_id, messages, last_seen \
    FROM telemetry_devices WHERE tenant_id = ?1 AND project_id = ?2 AND (?3 IS NULL OR device_id > ?3) \
    ORDER BY device_id LIMIT ?4";

const DEVICE_EXISTS_SQL: &str =
    "SELECT 1 FROM telemetry_devices WHERE tenant_id = ?1 AND project_id = ?2 AND device_id = ?3";

/// `?4` = window start, `?5` = window end, `?6` = bucket width, `?7` = field
/// (NULL: every field). `typeof(key) = 'text'` keeps the members of an
/// object (an array's elements have integer keys, a scalar a NULL key).
const SERIES_SQL: &str = "SELECT (t.time - ?4) / ?6 AS bucket, j.key, avg(j.value) \
    FROM telemetry AS t, json_each(t.payload) AS j \
    WHERE t.tenant_id = ?1 AND t.project_id = ?2 AND t.device_id = ?3 AND t.time >= ?4 AND t.time < ?5 \
    AND t.is_json AND typeof(j.key) = 'text' AND j.type IN ('integer', 'real') AND (?7 IS NULL OR j.key = ?7) \
    GROUP BY bucket, j.key ORDER BY bucket";

const LATEST_SQL: &str = "SELECT time, received_at, event_time, id, mqtt_topic, payload, \
    CASE WHEN is_json THEN NULL ELSE substr(raw, 1, ?4) END \
    FROM telemetry WHERE tenant_id = ?1 AND project_id = ?2 AND device_id = ?3 ORDER BY time DESC LIMIT 1";

// An empty payload reads back as NULL from substr(): coalesce to an empty blob.
const DEAD_LETTERS_SQL: &str = "SELECT received_at, reason, error, mqtt_topic, source, \
    coalesce(substr(payload, 1, ?2), x''), coalesce(length(payload), 0) FROM dead_letters ORDER BY received_at DESC, source DESC LIMIT ?1";

/// Read-only connections to one SQLite file. Clones share them.
#[derive(Clone)]
pub struct Reader {
    /// The connections and their settings.
    shared: Arc<Shared>,
}

struct Shared {
    /// The database file.
    path: PathBuf,
    /// Connections not in use (at most [`MAX_CONCURRENT`]).
    idle: Mutex<Vec<Connection>>,
    /// Bounds the queries running at once.
    permits: tokio::sync::Semaphore,
    /// Longest time one query may take before it is interrupted.
    timeout: Duration,
}

impl Reader {
    /// Readers of `path`; connections are opened when first needed.
    pub fn new(path: PathBuf, timeout: Duration) -> Self {
        Self {
            shared: Arc::new(Shared {
                path,
                idle: Mutex::new(Vec::new()),
                permits: tokio::sync::Semaphore::new(MAX_CONCURRENT),
                timeout,
            }),
        }
    }

    /// `sqlite /path/to/file.db`.
    pub fn describe(&self) -> String {
        format!("sqlite {}", self.shared.path.display())
    }

    /// See [`crate::store::QueryHandle::tenants`].
    pub async fn tenants(&self, page: &Page) -> Result<Vec<TenantSummary>, StoreError> {
        let (after, limit) = (page.after.clone(), page.sql_limit());
        self.run("sqlite tenants query", move |c| {
            collect(c, TENANTS_SQL, rusqlite::params![after, limit], |r| {
                Ok(TenantSummary {
                    tenant_id: r.get(0)?,
                    projects: count(r, 1)?,
                    devices: count(r, 2)?,
                    messages: count(r, 3)?,
                    last_seen: r.get(4)?,
                })
            })
        })
        .await
    }

    /// See [`crate::store::QueryHandle::projects`].
    pub async fn projects(&self, tenant: &str, page: &Page) -> Result<Vec<ProjectSummary>, StoreError> {
        let (tenant, after, limit) = (tenant.to_string(), page.after.clone(), page.sql_limit());
        self.run("sqlite projects query", move |c| {
            collect(c, PROJECTS_SQL, rusqlite::params![tenant, after, limit], |r| {
                Ok(ProjectSummary {
                    project_id: r.get(0)?,
                    devices: count(r, 1)?,
                    messages: count(r, 2)?,
                    last_seen: r.get(3)?,
                })
            })
        })
        .await
    }

    /// See [`crate::store::QueryHandle::devices`].
    pub async fn devices(&self, tenant: &str, project: &str, page: &Page) -> Result<Vec<DeviceSummary>, StoreError> {
        let (tenant, project, after, limit) =
            (tenant.to_string(), project.to_string(), page.after.clone(), page.sql_limit());
        self.run("sqlite devices query", move |c| {
            collect(c, DEVICES_SQL, rusqlite::params![tenant, project, after, limit], |r| {
                Ok(DeviceSummary { device_id: r.get(0)?, messages: count(r, 1)?, last_seen: r.get(2)? })
            })
        })
        .await
    }

    /// See [`crate::store::QueryHandle::series`].
    pub async fn series(
        &self,
        tenant: &str,
        project: &str,
        device: &str,
        range: SeriesRange,
        field: Option<&str>,
    ) -> Result<Option<Series>, StoreError> {
        let (tenant, project, device) = (tenant.to_string(), project.to_string(), device.to_string());
        let field = field.map(str::to_string);
        self.run("sqlite series query", move |c| {
            if !device_exists(c, &tenant, &project, &device)? {
                return Ok(None);
            }
            let now = now_ms();
            let w = SeriesWindow::new(range, now);
            let mut stmt = c.prepare_cached(SERIES_SQL).map_err(|e| StoreError::sqlite("prepare series query", e))?;
            let mut rows = stmt
                .query((&tenant, &project, &device, w.from, w.end, w.bucket_ms, field.as_deref()))
                .map_err(|e| StoreError::sqlite("series query", e))?;
            let mut fields: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
            while let Some(r) = rows.next().map_err(|e| StoreError::sqlite("series query", e))? {
                let point = || -> rusqlite::Result<(i64, String, f64)> { Ok((r.get(0)?, r.get(1)?, r.get(2)?)) };
                let (bucket, name, avg) = point().map_err(|e| StoreError::sqlite("read series", e))?;
                if fields.len() >= MAX_FIELDS && !fields.contains_key(&name) {
                    // Keep the first MAX_FIELDS names: drop the greatest when a smaller one comes.
                    match fields.last_key_value() {
                        Some((last, _)) if name < *last => {
                            fields.pop_last();
                        }
                        _ => continue,
                    }
                }
                fields.entry(name).or_default().push((w.from + bucket * w.bucket_ms, avg));
            }
            Ok(Some(Series { device_id: device, range, from: w.from, to: now, fields }))
        })
        .await
    }

    /// See [`crate::store::QueryHandle::latest`].
    pub async fn latest(&self, tenant: &str, project: &str, device: &str) -> Result<Option<Latest>, StoreError> {
        let (tenant, project, device) = (tenant.to_string(), project.to_string(), device.to_string());
        self.run("sqlite latest query", move |c| {
            let mut stmt = c.prepare_cached(LATEST_SQL).map_err(|e| StoreError::sqlite("prepare latest query", e))?;
            stmt.query_row((&tenant, &project, &device, LATEST_RAW_BYTES as i64), |r| {
                let json: Option<String> = r.get(5)?;
                let raw: Option<Vec<u8>> = r.get(6)?;
                Ok(Latest {
                    time: r.get(0)?,
                    received_at: r.get(1)?,
                    event_time: r.get(2)?,
                    id: r.get(3)?,
                    mqtt_topic: r.get(4)?,
                    payload: payload_value(json.as_deref(), raw.as_deref().unwrap_or_default()),
                })
            })
            .optional()
            .map_err(|e| StoreError::sqlite("latest query", e))
        })
        .await
    }

    /// See [`crate::store::QueryHandle::dead_letters`].
    pub async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetterSummary>, StoreError> {
        self.run("sqlite dead-letter query", move |c| {
            collect(c, DEAD_LETTERS_SQL, [i64::from(limit), PREVIEW_BYTES as i64 + 1], |r| {
                let head: Vec<u8> = r.get(5)?;
                let len: i64 = r.get(6)?;
                Ok(DeadLetterSummary {
                    received_at: r.get(0)?,
                    reason: r.get(1)?,
                    error: r.get(2)?,
                    mqtt_topic: r.get(3)?,
                    source: r.get(4)?,
                    payload_preview: preview(&head, usize::try_from(len).unwrap_or(0)),
                })
            })
        })
        .await
    }

    /// Run `work` on an idle connection (or a new one), off the runtime.
    async fn run<T, F>(&self, what: &'static str, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let shared = &self.shared;
        let _permit =
            shared.permits.acquire().await.map_err(|e| StoreError::Worker { what, message: e.to_string() })?;
        let idle = shared.idle.lock().map(|mut idle| idle.pop()).unwrap_or(None);
        let conn = match idle {
            Some(c) => c,
            None => {
                let (path, timeout) = (shared.path.clone(), shared.timeout);
                blocking::open("open a sqlite reader", move || open::reader(&path, timeout)).await?
            }
        };
        let (conn, result) = blocking::run(conn, shared.timeout, what, move |c| work(c)).await;
        if let (Some(conn), Ok(mut idle)) = (conn, shared.idle.lock()) {
            if idle.len() < MAX_CONCURRENT {
                idle.push(conn);
            }
        }
        result
    }
}

/// Whether the device has stored rows.
fn device_exists(c: &Connection, tenant: &str, project: &str, device: &str) -> Result<bool, StoreError> {
    let mut stmt = c.prepare_cached(DEVICE_EXISTS_SQL).map_err(|e| StoreError::sqlite("prepare device lookup", e))?;
    stmt.exists((tenant, project, device)).map_err(|e| StoreError::sqlite("device lookup", e))
}

/// All rows of `sql`, mapped.
fn collect<T, P: rusqlite::Params>(
    c: &Connection,
    sql: &str,
    params: P,
    map: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, StoreError> {
    let mut stmt = c.prepare_cached(sql).map_err(|e| StoreError::sqlite("prepare query", e))?;
    let rows = stmt.query_map(params, map).map_err(|e| StoreError::sqlite("query", e))?;
    rows.collect::<Result<_, _>>().map_err(|e| StoreError::sqlite("read rows", e))
}

/// A count column (never negative in practice; read as 0 if it were).
fn count(r: &Row<'_>, i: usize) -> rusqlite::Result<u64> {
    Ok(u64::try_from(r.get::<_, i64>(i)?).unwrap_or(0))
}
