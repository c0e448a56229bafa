//! The built-in dashboard page: hand-written files under `assets/dashboard/`,
//! embedded in the binary so `iotpipe run` / `iotpipe demo` need nothing on
//! disk and nothing from the network. The page reads the JSON API in
//! `docs/api.md`; see `docs/dashboard.md`.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const INDEX_HTML: &str = include_str!("../../assets/dashboard/index.html");
const APP_JS: &str = include_str!("../../assets/dashboard/app.js");
const CHART_JS: &str = include_str!("../../assets/dashboard/chart.js");
const FORMAT_JS: &str = include_str!("../../assets/dashboard/format.js");
const APP_CSS: &str = include_str!("../../assets/dashboard/app.css");
const FAVICON_SVG: &str = include_str!("../../assets/dashboard/favicon.svg");

/// Same origin only: no inline script or style, no third-party hosts, no
/// framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One embedded file: its path, content type and body.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: [Asset; 6] = [
    Asset { path: "/", content_type: "text/html; charset=utf-8", body: INDEX_HTML },
    Asset { path: "/app.js", content_type: "text/javascript; charset=utf-8", body: APP_JS },
    Asset { path: "/chart.js", content_type: "text/javascript; charset=utf-8", body: CHART_JS },
    Asset { path: "/format.js", content_type: "text/javascript; charset=utf-8", body: FORMAT_JS },
    Asset { path: "/app.css", content_type: "text/css; charset=utf-8", body: APP_CSS },
    Asset { path: "/favicon.svg", content_type: "image/svg+xml", body: FAVICON_SVG },
];

/// Routes for the page and its files; merge it into the HTTP server next to
/// the `/api/` routes.
pub fn router() -> axum::Router {
    ASSETS.iter().fold(axum::Router::new(), |router, asset| {
        let (content_type, body) = (asset.content_type, asset.body);
        router.route(asset.path, get(move || async move { respond(content_type, body) }))
    })
}

fn respond(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Always revalidate: a new binary must not run with an old app.js.
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serve `router()` on a free loopback port and GET `path` over a raw
    /// connection; returns the status line, headers (lower-cased names) and body.
    async fn get_raw(addr: std::net::SocketAddr, path: &str) -> (String, Vec<(String, String)>, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        let raw = String::from_utf8(raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let mut lines = head.lines();
        let status = lines.next().unwrap_or_default().to_string();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        (status, headers, body.to_string())
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
        headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or("")
    }

    #[tokio::test]
    async fn serves_the_page_and_its_files_with_headers() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router()).await });

        for (path, content_type, needle) in [
            ("/", "text/html; charset=utf-8", "<title>iotpipe dashboard</title>"),
            ("/app.js", "text/javascript; charset=utf-8", "data-testid"),
            ("/chart.js", "text/javascript; charset=utf-8", "export function drawChart"),
            ("/format.js", "text/javascript; charset=utf-8", "export function fmtTime"),
            ("/app.css", "text/css; charset=utf-8", ".chart"),
            ("/favicon.svg", "image/svg+xml", "<svg"),
        ] {
            let (status, headers, body) = get_raw(addr, path).await;
            assert!(status.starts_with("HTTP/1.1 200"), "{path}: {status}");
            assert_eq!(header(&headers, "content-type"), content_type, "{path}");
            assert_eq!(header(&headers, "cache-control"), "no-cache", "{path}");
            assert_eq!(header(&headers, "content-security-policy"), CSP, "{path}");
            assert_eq!(header(&headers, "x-content-type-options"), "nosniff", "{path}");
            assert!(body.contains(needle), "{path}: body lacks {needle:?}");
        }
        let (status, _, _) = get_raw(addr, "/nope.js").await;
        assert!(status.starts_with("HTTP/1.1 404"), "{status}");
    }

    #[test]
    fn assets_are_small_and_load_nothing_from_elsewhere() {
        let total: usize = ASSETS.iter().map(|a| a.body.len()).sum();
        assert!(total < 60 * 1024, "dashboard assets are {total} bytes; the budget is 60 KiB");
        for asset in &ASSETS {
            // The SVG namespace is a name, never fetched.
            let body = asset.body.replace("http://www.w3.org/2000/svg", "");
            for needle in ["http://", "https://", "//cdn", "@import", "<style", " style="] {
                assert!(
                    !body.contains(needle),
                    "{} contains {needle:?}: it must work offline under the CSP",
                    asset.path
                );
            }
        }
        assert!(!INDEX_HTML.contains("<script>"), "index.html has an inline script, which the CSP blocks");
        assert!(!has_inline_handler(INDEX_HTML), "index.html has an inline on…= handler, which the CSP blocks");
    }

    /// ` onclick=` and the like.
    fn has_inline_handler(html: &str) -> bool {
        html.split(" on").skip(1).any(|rest| {
            rest.split_once('=')
                .is_some_and(|(name, _)| !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase()))
        })
    }
}
