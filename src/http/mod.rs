//! `/healthz` (alive), `/readyz` (the command's [`Health`]) and `/metrics`
//! (the command's [`Exposition`]); `run` adds the dashboard and its API.

pub mod api;
mod config;
pub mod dashboard;
pub mod ui;

pub use config::HttpConfig;

use crate::health::Health;
use crate::telemetry::Exposition;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use std::sync::Arc;

#[derive(Clone)]
struct AppState {
    metrics: Arc<Exposition>,
    health: Arc<Health>,
}

/// A bound HTTP listener with its routes; [`Server::serve`] runs it.
pub struct Server {
    listener: tokio::net::TcpListener,
    app: axum::Router,
}

impl Server {
    /// Bind `listen` now, so a wrong or taken address stops start-up with a
    /// clear message. `extra` routes (the dashboard) are merged in.
    pub async fn bind(
        listen: &str,
        metrics: Arc<Exposition>,
        health: Arc<Health>,
        extra: axum::Router,
    ) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let state = AppState { metrics, health };
        let app = axum::Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics_text))
            .with_state(state)
            .merge(extra);
        Ok(Self { listener, app })
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve until the task is dropped; an error ends the server.
    pub async fn serve(self) -> std::io::Result<()> {
        if let Ok(addr) = self.listener.local_addr() {
            tracing::info!(%addr, "HTTP endpoints: /healthz /readyz /metrics");
        }
        axum::serve(self.listener, self.app).await
    }
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    match s.health.ready() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
    }
}

async fn metrics_text(State(s): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render())
}
