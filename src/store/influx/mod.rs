//! InfluxDB 1.x store over HTTP: `/query` for the database and the
//! `iotpipe` retention policy, `/write` with line protocol for the points.

pub mod fields;
pub mod line;
mod schema;

use crate::record::now_ms;
use crate::store::config::InfluxUrl;
use crate::store::time_rule::effective_time_ms;
use crate::store::{
    tls, DeadLetterRow, RetentionOutcome, StoreConfig, StoreError, StoreRow, StoreStatus, WriteOutcome,
};
use std::time::Duration;

pub use schema::{go_duration, RETENTION_POLICY};

/// Lines sent in one `/write` request.
const LINES_PER_REQUEST: usize = 5_000;

/// An InfluxDB database with the `iotpipe` retention policy in place.
pub struct InfluxStore {
    /// Pooled HTTP client (rustls with ring).
    http: reqwest::Client,
    /// Endpoint, database and credentials.
    url: InfluxUrl,
    /// The retention window (the policy's duration).
    retention: Duration,
    /// Whether the database and retention policy are known to exist; cleared
    /// when a write finds the database gone, so the next write recreates it.
    ready: bool,
    /// `influxdb http://host:port/db`.
    describe: String,
}

impl InfluxStore {
    /// Check the server answers, create the database and the retention policy.
    pub async fn connect(cfg: &StoreConfig, url: InfluxUrl) -> Result<Self, StoreError> {
        let mut store = Self::unready(cfg, url)?;
        store.ping().await?;
        store.setup().await?;
        tracing::info!(store = %store.describe, "Store ready.");
        Ok(store)
    }

    /// The client, before anything was asked of the server.
    fn unready(cfg: &StoreConfig, mut url: InfluxUrl) -> Result<Self, StoreError> {
        if let Some(password) = cfg.file_password()? {
            url.password = Some(password);
        }
        let tls = tls::client_config(cfg.ca_file.as_deref())?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(cfg.connect_timeout.get())
            .timeout(cfg.write_timeout.get())
            .build()
            .map_err(|source| StoreError::Http { context: "build the HTTP client", source })?;
        let describe = format!("influxdb {}/{}", url.base(), url.database);
        Ok(Self { http, url, retention: cfg.retention.get(), ready: false, describe })
    }

    /// Ping and look for the database and its `iotpipe` retention policy, changing nothing.
    pub async fn inspect(cfg: &StoreConfig, url: InfluxUrl) -> Result<StoreStatus, StoreError> {
        let mut store = Self::unready(cfg, url)?;
        store.ping().await?;
        let answer = store.query("SHOW DATABASES").await?;
        let db = &store.url.database;
        let exists = answer
            .pointer("/results/0/series/0/values")
            .and_then(|v| v.as_array())
            .is_some_and(|rows| rows.iter().any(|r| r.get(0).and_then(|n| n.as_str()) == Some(db.as_str())));
        let detail = if !exists {
            format!("database `{db}` does not exist yet (created on first start)")
        } else {
            let answer = store.query(&schema::show_retention_policies(db)).await?;
            match schema::find_policy(&answer) {
                Some(p) => format!("database `{db}`, retention policy {RETENTION_POLICY} of {}", p.duration),
                None => format!("database `{db}`, no {RETENTION_POLICY} retention policy yet (created on first start)"),
            }
        };
        Ok(StoreStatus { describe: store.describe, detail })
    }

    /// Write one batch; rows overwrite themselves on replay (same series and
    /// timestamp), so duplicates are always reported as 0.
    pub async fn write(&mut self, rows: &[StoreRow], dead: &[DeadLetterRow]) -> Result<WriteOutcome, StoreError> {
        if rows.is_empty() && dead.is_empty() {
            return Ok(WriteOutcome::default());
        }
        if !self.ready {
            self.setup().await?;
        }
        let now = now_ms();
        let mut rejected = 0;
        for chunk in rows.chunks(LINES_PER_REQUEST) {
            let mut body = String::with_capacity(chunk.len() * 256);
            for row in chunk {
                line::telemetry_line(
                    &mut body,
                    row,
                    effective_time_ms(row.time_ms, row.received_ms, now, self.retention),
                );
            }
            rejected += self.post_lines(body).await?;
        }
        let mut dead_rejected = 0;
        for chunk in dead.chunks(LINES_PER_REQUEST) {
            let mut body = String::new();
            for d in chunk {
                line::dead_letter_line(&mut body, d);
            }
            dead_rejected += self.post_lines(body).await?;
        }
        let rejected = rejected.min(rows.len() as u64);
        let dead_rejected = dead_rejected.min(dead.len() as u64);
        Ok(WriteOutcome {
            inserted: rows.len() as u64 - rejected,
            duplicates: 0,
            rejected,
            dead_letters_inserted: dead.len() as u64 - dead_rejected,
            dead_letters_duplicates: 0,
            redone_by_insert: false,
        })
    }

    /// InfluxDB expires points itself; this re-applies the retention policy
    /// (in case someone changed it) and reports nothing dropped.
    pub async fn enforce_retention(&mut self) -> Result<RetentionOutcome, StoreError> {
        self.setup().await?;
        Ok(RetentionOutcome::default())
    }

    /// `GET /ping`.
    pub async fn ping(&mut self) -> Result<(), StoreError> {
        let resp = self
            .authed(self.http.get(format!("{}/ping", self.url.base())))
            .send()
            .await
            .map_err(|source| StoreError::Http { context: "ping", source })?;
        let status = resp.status().as_u16();
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(StoreError::Influx { context: "ping", status, message: error_text(resp).await })
        }
    }

    /// `influxdb http://host:port/db`.
    pub fn describe(&self) -> String {
        self.describe.clone()
    }

    /// Create the database (a no-op when it exists) and make the `iotpipe`
    /// retention policy the default, with the window's duration.
    async fn setup(&mut self) -> Result<(), StoreError> {
        let db = &self.url.database;
        self.query(&schema::create_database(db)).await?;
        let answer = self.query(&schema::show_retention_policies(db)).await?;
        let wanted = schema::Policy::for_retention(self.retention);
        match schema::find_policy(&answer) {
            Some(existing) if existing == wanted => {}
            Some(_) => {
                self.query(&schema::alter_policy(db, &wanted)).await?;
                tracing::info!(store = %self.describe, duration = %wanted.duration, "Changed the retention policy.");
            }
            None => {
                self.query(&schema::create_policy(db, &wanted)).await?;
            }
        }
        self.ready = true;
        Ok(())
    }

    /// Run one InfluxQL statement; statement errors are errors.
    async fn query(&self, q: &str) -> Result<serde_json::Value, StoreError> {
        let resp = self
            .authed(self.http.post(format!("{}/query", self.url.base())))
            .form(&[("q", q)])
            .send()
            .await
            .map_err(|source| StoreError::Http { context: "query", source })?;
        let status = resp.status().as_u16();
        if !resp.status().is_success() {
            return Err(StoreError::Influx { context: "query", status, message: error_text(resp).await });
        }
        let body = resp.bytes().await.map_err(|source| StoreError::Http { context: "query", source })?;
        let answer: serde_json::Value = serde_json::from_slice(&body).map_err(|e| StoreError::Influx {
            context: "query",
            status,
            message: format!("unreadable answer: {e}"),
        })?;
        match schema::statement_error(&answer) {
            Some(message) => Err(StoreError::Influx { context: "query", status, message }),
            None => Ok(answer),
        }
    }

    /// POST lines to `/write`; returns how many points InfluxDB dropped in a
    /// partial write (field type conflicts, points outside the retention policy).
    async fn post_lines(&mut self, body: String) -> Result<u64, StoreError> {
        let resp = self
            .authed(self.http.post(format!("{}/write", self.url.base())))
            .query(&[("db", self.url.database.as_str()), ("rp", RETENTION_POLICY), ("precision", "ns")])
            .body(body)
            .send()
            .await
            .map_err(|source| StoreError::Http { context: "write", source })?;
        let status = resp.status().as_u16();
        if resp.status().is_success() {
            return Ok(0);
        }
        let message = error_text(resp).await;
        if status == 400 {
            if let Some(dropped) = schema::partial_write_dropped(&message) {
                tracing::warn!(store = %self.describe, dropped, error = %message, "InfluxDB dropped points of a batch.");
                return Ok(dropped);
            }
        }
        if status == 404 {
            self.ready = false;
        }
        Err(StoreError::Influx { context: "write", status, message })
    }

    fn authed(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.url.username {
            Some(user) => req.basic_auth(user, self.url.password.as_deref()),
            None => req,
        }
    }
}

/// The `error` of an InfluxDB error answer, or the body as text.
async fn error_text(resp: reqwest::Response) -> String {
    let text = resp.text().await.unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or(text)
}
