//! The dashboard and its JSON API, mounted next to /healthz and /metrics by
//! `iotpipe run` and `iotpipe demo`.

use crate::health::Health;
use crate::store::Store;
use crate::telemetry::MessageMetrics;
use serde_json::json;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What the page's `/api/health` reports from.
#[derive(Clone)]
pub struct UiState {
    pub health: Arc<Health>,
    pub messages: Arc<MessageMetrics>,
    pub started: Instant,
}

/// Builds the extra routes once the store is open.
pub type ExtraRoutes = Box<dyn FnOnce(&Store, UiState) -> axum::Router + Send>;

/// Routes for `/` (the page) and `/api/` (its data). Without a query
/// connection to the store only the page is served, and it says so.
pub fn routes(token: Option<String>) -> ExtraRoutes {
    Box::new(move |store, state| {
        let page = super::dashboard::router();
        match store.query_handle() {
            Ok(query) => {
                let state = super::api::ApiState { query, health: health_fn(state), token };
                page.merge(super::api::router(state))
            }
            Err(error) => {
                tracing::warn!(%error, "The store cannot answer dashboard queries; serving the page without data.");
                page
            }
        }
    })
}

/// `/api/health`: state, counters, the live rate and latency quantiles.
fn health_fn(s: UiState) -> Arc<dyn Fn() -> serde_json::Value + Send + Sync> {
    // (time, received, rate) of the previous sample, for the rate.
    let last = Mutex::new((Instant::now(), 0u64, 0.0f64));
    Arc::new(move || {
        let b = &s.messages;
        let received = b.received.load(Relaxed);
        let rate = {
            let mut l = last.lock().unwrap_or_else(|p| p.into_inner());
            let dt = l.0.elapsed().as_secs_f64();
            if dt >= 1.0 {
                l.2 = received.saturating_sub(l.1) as f64 / dt;
                *l = (Instant::now(), received, l.2);
            }
            l.2
        };
        let reasons = s.health.problems();
        let ms = |q: f64| b.delivery_latency.quantile(q).map(|s| (s * 1e5).round() / 100.0);
        json!({
            "status": if reasons.is_empty() { "ok" } else { "degraded" },
            "reasons": reasons,
            "uptime_s": (s.started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            "received": received,
            "stored": b.stored.load(Relaxed),
            "dead_lettered": b.dead_lettered_total(),
            "in_flight": b.in_flight.load(Relaxed),
            "rate_per_s": (rate * 10.0).round() / 10.0,
            "journal_depth": b.journal_depth.load(Relaxed),
            "journal_bytes": b.journal_bytes.load(Relaxed),
            "latency_p50_ms": ms(0.5),
            "latency_p99_ms": ms(0.99),
            "mqtt_connected": s.health.mqtt_connected(),
        })
    })
}
