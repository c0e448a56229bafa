//! `/healthz` (alive), `/readyz` (the command's [`Health`]) and `/metrics`
//! (the command's [`Exposition`]); `run` adds the dashboard and its API,
//! once the store is open ([`LateRoutes`]): the server itself is up before
//! the journal recovers, so that `/healthz` answers throughout.

pub mod api;
mod config;
pub mod dashboard;
pub mod ui;

pub use config::HttpConfig;

use crate::health::Health;
use crate::telemetry::Exposition;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::convert::Infallible;
use std::sync::{Arc, OnceLock};

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

/// Routes that can only be built after the server started serving (the
/// dashboard needs the store, which opens after the journal recovered).
/// Merged into the server as its fallback: until [`LateRoutes::set`] every
/// path they would serve answers 503 "starting"; after it they answer as
/// if they had been there from the start.
#[derive(Clone, Default)]
pub struct LateRoutes(Arc<OnceLock<axum::Router>>);

impl LateRoutes {
    /// The router to pass to [`Server::bind`] as its `extra` routes.
    pub fn router(&self) -> axum::Router {
        axum::Router::new().fallback(late).with_state(self.clone())
    }

    /// Mount `routes` (once; a second call is ignored).
    pub fn set(&self, routes: axum::Router) {
        if self.0.set(routes).is_err() {
            tracing::warn!("Late HTTP routes were already mounted; ignoring the second set.");
        }
    }
}

async fn late(State(late): State<LateRoutes>, req: Request) -> Response {
    match late.0.get() {
        Some(routes) => call(routes.clone(), req).await,
        None => (StatusCode::SERVICE_UNAVAILABLE, "starting: served once the journal and the store are open\n")
            .into_response(),
    }
}

/// Hand a request to a router (a `tower` service; `axum::ServiceExt` brings
/// the trait along without a direct dependency on `tower`).
async fn call<S>(mut routes: S, req: Request) -> Response
where
    S: axum::ServiceExt<Request, Response = Response, Error = Infallible>,
{
    let ready = std::future::poll_fn(|cx| routes.poll_ready(cx)).await;
    let outcome = match ready {
        Ok(()) => routes.call(req).await,
        Err(never) => Err(never),
    };
    match outcome {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Parts;
    use crate::telemetry::{Exposition, ProcessInfo};

    async fn fetch(port: u16, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.unwrap();
        let status = buf.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        (status, buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
    }

    /// While the journal recovers: alive, not ready (with the reason), the
    /// dashboard not there yet; once mounted, its routes answer.
    #[tokio::test]
    async fn healthz_answers_while_the_journal_recovers_and_late_routes_follow() {
        let health = Health::new(Parts { mqtt: true, store: true, journal: true, kafka: false });
        let metrics = Arc::new(Exposition {
            command: "run",
            health: health.clone(),
            messages: None,
            store: None,
            consumer: None,
            process: ProcessInfo::default(),
        });
        let late = LateRoutes::default();
        let server = Server::bind("127.0.0.1:0", metrics, health.clone(), late.router()).await.unwrap();
        let port = server.local_addr().unwrap().port();
        let serving = tokio::spawn(server.serve());

        assert_eq!(fetch(port, "/healthz").await, (200, "ok\n".into()));
        let (status, body) = fetch(port, "/readyz").await;
        assert_eq!(status, 503);
        assert!(body.starts_with("not ready: recovering journal"), "{body}");
        assert_eq!(fetch(port, "/").await.0, 503, "the dashboard waits for the store");

        health.set_journal_recovering(false);
        late.set(axum::Router::new().route("/", get_page()));
        assert!(!fetch(port, "/readyz").await.1.contains("recovering journal"));
        assert_eq!(fetch(port, "/").await, (200, "page".into()));
        assert_eq!(fetch(port, "/nothing").await.0, 404);
        assert_eq!(fetch(port, "/healthz").await.0, 200);
        serving.abort();
    }

    fn get_page() -> axum::routing::MethodRouter {
        axum::routing::get(|| async { "page" })
    }
}
