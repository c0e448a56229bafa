//! The dashboard's JSON API under `/api/` (the contract is `docs/api.md`).
//!
//! Every answer is JSON, errors included (`{"error": "…"}`): path and query
//! parameters go through extractors of our own, so axum's plain-text
//! rejections never reach a client, and unknown paths and methods under
//! `/api/` get JSON too. With a token configured every request needs
//! `Authorization: Bearer <token>`.

use crate::store::query::SeriesRange;
use crate::store::{Page, QueryHandle, StoreError, MAX_LIST_LIMIT};
use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::Arc;

/// `limit` of `/api/dead-letters` when none is given.
const DEFAULT_DEAD_LETTER_LIMIT: u32 = 50;

/// Largest `limit` of `/api/dead-letters`.
const MAX_DEAD_LETTER_LIMIT: u32 = 500;

/// What the API handlers need.
#[derive(Clone)]
pub struct ApiState {
    /// Reads from the store, on connections separate from the writer's.
    pub query: QueryHandle,
    /// The body of `/api/health`.
    pub health: Arc<dyn Fn() -> serde_json::Value + Send + Sync>,
    /// When set, every request needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

/// The routes of `docs/api.md`, plus JSON answers for unknown paths and
/// methods under `/api/`. Merge it into the server's router.
pub fn router(state: ApiState) -> Router {
    let token: Option<Arc<str>> = state.token.as_deref().map(Arc::from);
    Router::new()
        .route("/api/tenants", get(tenants))
        .route("/api/tenants/{tenant}/projects", get(projects))
        .route("/api/tenants/{tenant}/projects/{project}/devices", get(devices))
        .route("/api/tenants/{tenant}/projects/{project}/devices/{device}/series", get(series))
        .route("/api/tenants/{tenant}/projects/{project}/devices/{device}/latest", get(latest))
        .route("/api/dead-letters", get(dead_letters))
        .route("/api/health", get(health))
        .route("/api", any(unknown_path))
        .route("/api/", any(unknown_path))
        .route("/api/{*rest}", any(unknown_path))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(token, authorize))
        .with_state(state)
}

/// An error answer: a status and `{"error": message}`.
#[derive(Debug)]
struct ApiError {
    /// The HTTP status.
    status: StatusCode,
    /// What went wrong, for the client.
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        tracing::warn!(%error, "Dashboard query failed.");
        let status =
            if error.is_retryable() { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::INTERNAL_SERVER_ERROR };
        Self::new(status, error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(serde_json::json!({ "error": self.message }))).into_response()
    }
}

/// Path parameters, percent-decoded; a rejection becomes a JSON 400.
struct ApiPath<T>(T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(Self(v)),
            Err(rejection) => Err(ApiError::bad_request(format!("bad path: {}", rejection.body_text()))),
        }
    }
}

/// Query parameters by name (the last of repeated names wins); a
/// rejection becomes a JSON 400.
struct ApiQuery(HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for ApiQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<HashMap<String, String>>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(Self(v)),
            Err(rejection) => Err(ApiError::bad_request(format!("bad query string: {}", rejection.body_text()))),
        }
    }
}

/// Refuse requests without the bearer token (when one is configured);
/// mark every answer as not cacheable.
async fn authorize(State(token): State<Option<Arc<str>>>, req: Request, next: Next) -> Response {
    if let Some(token) = token {
        let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer);
        if !given.is_some_and(|g| !g.is_empty() && constant_time_eq(g.as_bytes(), token.as_bytes())) {
            let mut resp =
                ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong bearer token (Authorization: Bearer …)")
                    .into_response();
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return resp;
        }
    }
    let mut resp = next.run(req).await;
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The credentials of `Bearer <credentials>` (the scheme is case-insensitive).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// Compare without stopping at the first difference (the length is not secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The page a list request asks for: `limit` (1..=`MAX_LIST_LIMIT`, default
/// `MAX_LIST_LIMIT`) entries after the name `after`.
fn list_page(params: &HashMap<String, String>) -> Result<Page, ApiError> {
    let limit =
        match params.get("limit") {
            None => MAX_LIST_LIMIT,
            Some(l) => l.parse().ok().filter(|l| (1..=MAX_LIST_LIMIT).contains(l)).ok_or_else(|| {
                ApiError::bad_request(format!("limit must be a whole number from 1 to {MAX_LIST_LIMIT}"))
            })?,
        };
    Ok(Page { after: params.get("after").filter(|a| !a.is_empty()).cloned(), limit })
}

/// A list as JSON; a full page also links the next one
/// (`Link: <path?limit=N&after=LAST>; rel="next"`).
fn list_response<T: serde::Serialize>(
    uri: &axum::http::Uri,
    page: &Page,
    items: Vec<T>,
    name: impl Fn(&T) -> &str,
) -> Response {
    let next = (items.len() as u64 >= u64::from(page.limit))
        .then(|| items.last().map(&name))
        .flatten()
        .map(|last| format!("<{}?limit={}&after={}>; rel=\"next\"", uri.path(), page.limit, query_escape(last)));
    let mut response = Json(items).into_response();
    if let Some(link) = next.and_then(|l| HeaderValue::from_str(&l).ok()) {
        response.headers_mut().insert(header::LINK, link);
    }
    response
}

/// Percent-encode a query value (everything but RFC 3986's unreserved characters).
fn query_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn tenants(
    State(s): State<ApiState>,
    uri: axum::http::Uri,
    ApiQuery(params): ApiQuery,
) -> Result<Response, ApiError> {
    let page = list_page(&params)?;
    let tenants = s.query.tenants(&page).await?;
    Ok(list_response(&uri, &page, tenants, |t| t.tenant_id.as_str()))
}

async fn projects(
    State(s): State<ApiState>,
    uri: axum::http::Uri,
    ApiPath(tenant): ApiPath<String>,
    ApiQuery(params): ApiQuery,
) -> Result<Response, ApiError> {
    let page = list_page(&params)?;
    let projects = s.query.projects(&tenant, &page).await?;
    if projects.is_empty() && page.after.is_none() {
        return Err(ApiError::not_found(format!("unknown tenant `{tenant}`")));
    }
    Ok(list_response(&uri, &page, projects, |p| p.project_id.as_str()))
}

async fn devices(
    State(s): State<ApiState>,
    uri: axum::http::Uri,
    ApiPath((tenant, project)): ApiPath<(String, String)>,
    ApiQuery(params): ApiQuery,
) -> Result<Response, ApiError> {
    let page = list_page(&params)?;
    let devices = s.query.devices(&tenant, &project, &page).await?;
    if devices.is_empty() && page.after.is_none() {
        return Err(ApiError::not_found(format!("unknown project `{project}` of tenant `{tenant}`")));
    }
    Ok(list_response(&uri, &page, devices, |d| d.device_id.as_str()))
}

async fn series(
    State(s): State<ApiState>,
    ApiPath((tenant, project, device)): ApiPath<(String, String, String)>,
    ApiQuery(params): ApiQuery,
) -> Result<Response, ApiError> {
    let range = match params.get("range") {
        None => SeriesRange::default(),
        Some(r) => SeriesRange::parse(r).ok_or_else(|| {
            let names: Vec<&str> = SeriesRange::ALL.iter().map(|r| r.as_str()).collect();
            ApiError::bad_request(format!("range must be one of {}", names.join(", ")))
        })?,
    };
    let field = params.get("field").map(String::as_str).filter(|f| !f.is_empty());
    match s.query.series(&tenant, &project, &device, range, field).await? {
        Some(series) => Ok(Json(series).into_response()),
        None => Err(unknown_device(&tenant, &project, &device)),
    }
}

async fn latest(
    State(s): State<ApiState>,
    ApiPath((tenant, project, device)): ApiPath<(String, String, String)>,
) -> Result<Response, ApiError> {
    match s.query.latest(&tenant, &project, &device).await? {
        Some(latest) => Ok(Json(latest).into_response()),
        None => Err(unknown_device(&tenant, &project, &device)),
    }
}

async fn dead_letters(State(s): State<ApiState>, ApiQuery(params): ApiQuery) -> Result<Response, ApiError> {
    let limit = match params.get("limit") {
        None => DEFAULT_DEAD_LETTER_LIMIT,
        Some(l) => parse_limit(l).ok_or_else(|| {
            ApiError::bad_request(format!("limit must be a whole number from 1 to {MAX_DEAD_LETTER_LIMIT}"))
        })?,
    };
    Ok(Json(s.query.dead_letters(limit).await?).into_response())
}

/// `1..=500`.
fn parse_limit(s: &str) -> Option<u32> {
    s.parse().ok().filter(|l| (1..=MAX_DEAD_LETTER_LIMIT).contains(l))
}

async fn health(State(s): State<ApiState>) -> Json<serde_json::Value> {
    Json((s.health)())
}

fn unknown_device(tenant: &str, project: &str, device: &str) -> ApiError {
    ApiError::not_found(format!("unknown device `{device}` in project `{project}` of tenant `{tenant}`"))
}

async fn unknown_path(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no such endpoint: {}", uri.path()))
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "only GET is supported")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_and_compared() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn list_pages_take_a_limit_and_a_cursor() {
        let params = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(list_page(&params(&[])).unwrap(), Page { after: None, limit: MAX_LIST_LIMIT });
        assert_eq!(
            list_page(&params(&[("limit", "2"), ("after", "t/1 ü")])).unwrap(),
            Page { after: Some("t/1 ü".into()), limit: 2 }
        );
        assert!(list_page(&params(&[("limit", "0")])).is_err());
        assert!(list_page(&params(&[("limit", "1001")])).is_err());
        assert_eq!(query_escape("t/1 ü"), "t%2F1%20%C3%BC");
    }

    #[test]
    fn limits_are_whole_numbers_from_1_to_500() {
        assert_eq!(parse_limit("1"), Some(1));
        assert_eq!(parse_limit("500"), Some(500));
        for bad in ["0", "501", "-1", "", "1.5", "ten", "99999999999999999999", " 5"] {
            assert_eq!(parse_limit(bad), None, "{bad:?}");
        }
    }
}
