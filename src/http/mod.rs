//! `/healthz` (alive), `/readyz` (connected, subscribed, downstream
//! reachable) and `/metrics` (Prometheus text).

pub mod api;
pub mod dashboard;
pub mod ui;

use crate::telemetry::Render;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use std::sync::Arc;

/// Readiness: `Ok` or the reasons it is not ready.
pub type ReadyFn = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

#[derive(Clone)]
struct AppState {
    metrics: Arc<dyn Render>,
    ready: ReadyFn,
}

/// Bind `listen` and serve in the background. Binding errors are returned
/// at once so a wrong address stops start-up with a clear message.
pub async fn serve(
    listen: &str,
    metrics: Arc<dyn Render>,
    ready: impl Fn() -> Result<(), String> + Send + Sync + 'static,
) -> std::io::Result<std::net::SocketAddr> {
    serve_with(listen, metrics, ready, axum::Router::new()).await
}

/// As `serve`, with more routes (the dashboard and its API) merged in.
pub async fn serve_with(
    listen: &str,
    metrics: Arc<dyn Render>,
    ready: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    extra: axum::Router,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let state = AppState { metrics, ready: Arc::new(ready) };
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(state)
        .merge(extra);
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "HTTP server stopped.");
        }
    });
    tracing::info!(%addr, "HTTP endpoints: /healthz /readyz /metrics");
    Ok(addr)
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    match (s.ready)() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
    }
}

async fn metrics_text(State(s): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render())
}
