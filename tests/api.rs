//! The dashboard's JSON API over real HTTP: a SQLite store with known rows,
//! the router on 127.0.0.1:0, and a tiny HTTP/1.1 client that can send any
//! request target (including ones a URL library would refuse to build).

mod common;

use common::store::{dead_letter, row};
use iotpipe::http::api::{router, ApiState};
use iotpipe::record::now_ms;
use iotpipe::store::{Store, StoreConfig, StoreRow};
use rand::Rng;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest wait for one answer: a hang fails the test instead of blocking it.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

const UNICODE_TENANT: &str = "Zürich 東京";
const UNICODE_PROJECT: &str = "projekt ü";
const SLASH_DEVICE: &str = "dév/1";

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("{}: body is not JSON ({e}): {}", self.status, String::from_utf8_lossy(&self.body))
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// An error answer: the status and `{"error": "…"}`.
    fn assert_error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{}", String::from_utf8_lossy(&self.body));
        let v = self.json();
        let message = v["error"].as_str().unwrap_or_else(|| panic!("no error message: {v}")).to_string();
        assert!(!message.is_empty());
        assert!(self.header("content-type").is_some_and(|c| c.starts_with("application/json")));
        message
    }
}

/// One request on a fresh connection (`Connection: close`), answer read to the end.
async fn send(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)]) -> Answer {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await.expect("send");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read");
        raw
    };
    let raw = tokio::time::timeout(ANSWER_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| panic!("no answer within {ANSWER_TIMEOUT:?}: {method} {target}"));
    parse(&raw).unwrap_or_else(|| panic!("not an HTTP answer to {target}: {}", String::from_utf8_lossy(&raw)))
}

async fn get(addr: SocketAddr, target: &str) -> Answer {
    send(addr, "GET", target, &[]).await
}

fn parse(raw: &[u8]) -> Option<Answer> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked")) {
        body = unchunk(&body)?;
    }
    Some(Answer { status, headers, body })
}

fn unchunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&data[..line_end]).ok()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// Percent-encode every byte outside the unreserved set.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

struct Fixture {
    addr: SocketAddr,
    rows: Vec<StoreRow>,
    now: i64,
    _dir: tempfile::TempDir,
}

fn json_row(tenant: &str, project: &str, device: &str, ts: i64, body: Value) -> StoreRow {
    row(tenant, project, device, ts, serde_json::to_vec(&body).expect("json"))
}

/// A store with known rows and the API in front of it.
async fn start(token: Option<&str>) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg =
        StoreConfig { url: format!("sqlite://{}", dir.path().join("api.db").display()), ..StoreConfig::default() };
    let mut store = Store::connect(&cfg).await.expect("connect");
    let now = now_ms();
    let mut rows = Vec::new();
    for i in 0..20 {
        let ts = now - 600_000 + i * 30_000;
        rows.push(json_row("tenant-1", "project-1", "dev-1", ts, json!({"temperature": 20 + i % 5, "humidity": 40})));
    }
    for i in 0..5 {
        rows.push(json_row("tenant-1", "project-1", "dev-2", now - 5_000 + i, json!({"temperature": 30.5})));
    }
    for i in 0..3 {
        rows.push(json_row("tenant-1", "project-2", "dev-1", now - 2 * 3_600_000 + i, json!({"v": i})));
    }
    rows.push(json_row(UNICODE_TENANT, UNICODE_PROJECT, SLASH_DEVICE, now - 2_000, json!({"température": -3.5})));
    rows.push(row(UNICODE_TENANT, UNICODE_PROJECT, SLASH_DEVICE, now - 1_000, b"not json \xff".to_vec()));
    let dead =
        [dead_letter("journal:1", now - 3_000), dead_letter("journal:2", now - 2_000), dead_letter("journal:3", now)];
    store.write(&rows, &dead).await.expect("write");
    let state = ApiState {
        query: store.query_handle().expect("query handle"),
        health: Arc::new(|| json!({"status": "ok", "received": 7})),
        token: token.map(str::to_string),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        // The store lives as long as the server: the query handle reads its file.
        let _store = store;
        axum::serve(listener, router(state)).await.expect("serve");
    });
    Fixture { addr, rows, now, _dir: dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_with_the_documented_json() {
    let f = start(None).await;
    let a = get(f.addr, "/api/tenants").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("cache-control"), Some("no-store"));
    let tenants = a.json();
    assert_eq!(tenants.as_array().map(Vec::len), Some(2));
    // Sorted by name (bytes): "Z" before "t".
    assert_eq!(tenants[0]["tenant_id"], json!(UNICODE_TENANT));
    let t1 = &tenants[1];
    assert_eq!(
        (t1["tenant_id"].clone(), t1["projects"].clone(), t1["devices"].clone(), t1["messages"].clone()),
        (json!("tenant-1"), json!(2), json!(3), json!(28))
    );
    let received_max = f.rows.iter().filter(|r| r.tenant_id == "tenant-1").map(|r| r.received_ms).max();
    assert_eq!(t1["last_seen"].as_i64(), received_max);

    assert_eq!(a.header("link"), None, "one page holds every tenant");

    // Pages: `limit` entries, a `Link` to the next page while a page is full.
    let page1 = get(f.addr, "/api/tenants?limit=1").await;
    assert_eq!(page1.json()[0]["tenant_id"], json!(UNICODE_TENANT));
    let link = page1.header("link").expect("a full page links the next").to_string();
    let next = link.strip_prefix('<').and_then(|l| l.split_once(">; rel=\"next\"")).map(|(u, _)| u.to_string());
    let next = next.unwrap_or_else(|| panic!("Link header {link}"));
    let page2 = get(f.addr, &next).await;
    assert_eq!(
        page2.json().as_array().map(|a| a.iter().map(|t| t["tenant_id"].clone()).collect::<Vec<_>>()),
        Some(vec![json!("tenant-1")]),
        "the cursor ({next}) is percent-encoded and resumes after the first page"
    );
    let page3 = get(f.addr, &page2.header("link").map(|l| l[1..l.find('>').unwrap()].to_string()).unwrap()).await;
    assert_eq!((page3.status, page3.json()), (200, json!([])), "past the end: an empty page");
    let p2 = get(f.addr, "/api/tenants/tenant-1/projects?after=project-1").await.json();
    assert_eq!(p2.as_array().map(|a| a.len()), Some(1));
    assert_eq!(p2[0]["project_id"], json!("project-2"));
    assert_eq!(get(f.addr, "/api/tenants?limit=0").await.status, 400);
    assert_eq!(get(f.addr, "/api/tenants?limit=1001").await.status, 400);

    let projects = get(f.addr, "/api/tenants/tenant-1/projects").await.json();
    assert_eq!(projects[0]["project_id"], json!("project-1"));
    assert_eq!((projects[0]["devices"].clone(), projects[0]["messages"].clone()), (json!(2), json!(25)));
    assert_eq!((projects[1]["project_id"].clone(), projects[1]["messages"].clone()), (json!("project-2"), json!(3)));
    assert!(projects[0]["last_seen"].is_i64());

    let devices = get(f.addr, "/api/tenants/tenant-1/projects/project-1/devices").await.json();
    assert_eq!(devices, {
        let last = |d: &str| {
            f.rows.iter().filter(|r| r.device_id == d && r.project_id == "project-1").map(|r| r.received_ms).max()
        };
        json!([{"device_id": "dev-1", "messages": 20, "last_seen": last("dev-1")},
               {"device_id": "dev-2", "messages": 5, "last_seen": last("dev-2")}])
    });

    let base = "/api/tenants/tenant-1/projects/project-1/devices/dev-1";
    let series = get(f.addr, &format!("{base}/series")).await.json();
    assert_eq!((series["device_id"].clone(), series["range"].clone()), (json!("dev-1"), json!("15m")));
    let (from, to) = (series["from"].as_i64().unwrap(), series["to"].as_i64().unwrap());
    assert!(to >= f.now && to - from <= 900_000 && to - from > 897_000, "{from}..{to}");
    let temps = series["fields"]["temperature"].as_array().expect("temperature points");
    assert_eq!(temps.len(), 20, "one row per 3 s bucket: {temps:?}");
    for p in temps {
        let (t, v) = (p[0].as_i64().unwrap(), p[1].as_f64().unwrap());
        assert!(t >= from && t <= to && (20.0..=24.0).contains(&v), "{p}");
    }
    assert_eq!(series["fields"]["humidity"][0][1], json!(40.0));
    let hour = get(f.addr, &format!("{base}/series?range=1h&field=temperature")).await.json();
    assert_eq!(hour["range"], json!("1h"));
    assert_eq!(
        hour["fields"].as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["temperature".into()])
    );
    let days = get(f.addr, "/api/tenants/tenant-1/projects/project-2/devices/dev-1/series?range=3d").await.json();
    assert_eq!(days["fields"]["v"].as_array().map(Vec::len), Some(1), "3 rows within one 14.4 min bucket");
    assert_eq!(days["fields"]["v"][0][1], json!(1.0));
    let odd = get(f.addr, &format!("{base}/series?field={}", encode("no \"such\" field ü\u{0}"))).await;
    assert_eq!((odd.status, odd.json()["fields"].clone()), (200, json!({})));

    let latest = get(f.addr, &format!("{base}/latest")).await.json();
    let newest = f
        .rows
        .iter()
        .filter(|r| r.device_id == "dev-1" && r.project_id == "project-1")
        .max_by_key(|r| r.time_ms)
        .unwrap();
    assert_eq!(
        latest,
        json!({"time": newest.time_ms, "received_at": newest.received_ms, "event_time": newest.time_ms,
               "id": newest.id.to_string(), "mqtt_topic": newest.mqtt_topic, "payload": {"temperature": 24, "humidity": 40}})
    );

    // Unicode names, percent-encoded, and a device with a slash in its name.
    let (t, p, d) = (encode(UNICODE_TENANT), encode(UNICODE_PROJECT), encode(SLASH_DEVICE));
    let projects = get(f.addr, &format!("/api/tenants/{t}/projects")).await.json();
    assert_eq!(projects[0]["project_id"], json!(UNICODE_PROJECT));
    let devices = get(f.addr, &format!("/api/tenants/{t}/projects/{p}/devices")).await.json();
    assert_eq!(devices[0]["device_id"], json!(SLASH_DEVICE));
    let latest = get(f.addr, &format!("/api/tenants/{t}/projects/{p}/devices/{d}/latest")).await.json();
    assert_eq!(latest["payload"], json!("not json \u{FFFD}"), "a payload that is not JSON comes as text");
    let series = get(f.addr, &format!("/api/tenants/{t}/projects/{p}/devices/{d}/series")).await.json();
    assert_eq!(series["fields"]["température"][0][1], json!(-3.5));

    let dead = get(f.addr, "/api/dead-letters").await.json();
    let sources: Vec<&str> = dead.as_array().unwrap().iter().map(|d| d["source"].as_str().unwrap()).collect();
    assert_eq!(sources, vec!["journal:3", "journal:2", "journal:1"], "newest first");
    assert_eq!(
        dead[0],
        json!({"received_at": f.now, "reason": "invalid_json", "error": "payload is not JSON: expected value at line 1 column 1",
               "mqtt_topic": "mtic/msg/client/realtime/acme/p1", "source": "journal:3", "payload_preview": "\u{0}\u{1}not json"})
    );
    assert_eq!(get(f.addr, "/api/dead-letters?limit=2").await.json().as_array().map(Vec::len), Some(2));
    assert_eq!(get(f.addr, "/api/dead-letters?limit=500").await.json().as_array().map(Vec::len), Some(3));

    assert_eq!(get(f.addr, "/api/health").await.json(), json!({"status": "ok", "received": 7}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_names_are_404_and_bad_parameters_400() {
    let f = start(None).await;
    let addr = f.addr;
    for target in [
        "/api/tenants/nobody/projects",
        "/api/tenants/tenant-1/projects/nope/devices",
        "/api/tenants/nobody/projects/project-1/devices",
        "/api/tenants/tenant-1/projects/project-1/devices/nope/series",
        "/api/tenants/tenant-1/projects/project-1/devices/nope/latest",
        "/api/tenants/tenant-1/projects/project-2/devices/dev-2/latest",
        "/api/tenants/%F0%9F%98%80/projects",
    ] {
        let message = get(addr, target).await.assert_error(404);
        assert!(message.starts_with("unknown "), "{target}: {message}");
    }
    for target in [
        "/api",
        "/api/",
        "/api/nothing",
        "/api/tenants/",
        "/api/tenants/tenant-1",
        "/api/health/x",
        "/api/tenants/a/b/c/d/e/f/g/h",
    ] {
        let message = get(addr, target).await.assert_error(404);
        assert!(message.starts_with("no such endpoint"), "{target}: {message}");
    }
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        send(addr, method, "/api/tenants", &[("Content-Length", "0")]).await.assert_error(405);
    }
    let series = "/api/tenants/tenant-1/projects/project-1/devices/dev-1/series";
    for query in ["range=2h", "range=", "range=15M", "range=%FF", "range=3d&range=7d"] {
        let message = get(addr, &format!("{series}?{query}")).await.assert_error(400);
        assert!(message.contains("range"), "{query}: {message}");
    }
    for query in ["limit=0", "limit=501", "limit=abc", "limit=-1", "limit=", "limit=1.5", "limit=99999999999999999999"]
    {
        let message = get(addr, &format!("/api/dead-letters?{query}")).await.assert_error(400);
        assert!(message.contains("limit"), "{query}: {message}");
    }
    // Percent-escapes that do not decode to UTF-8.
    for target in ["/api/tenants/%FF/projects", "/api/tenants/tenant-1/projects/%C3%28/devices/x/latest"] {
        let message = get(addr, target).await.assert_error(400);
        assert!(message.starts_with("bad path"), "{target}: {message}");
    }
    // Repeated or unknown parameters are fine.
    assert_eq!(get(addr, &format!("{series}?range=1h&range=15m&foo=bar")).await.json()["range"], json!("15m"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_token_is_required() {
    let f = start(Some("s3cret")).await;
    for headers in [
        &[][..],
        &[("Authorization", "Bearer wrong")],
        &[("Authorization", "Basic s3cret")],
        &[("Authorization", "Bearer ")],
    ] {
        for target in ["/api/tenants", "/api/health", "/api/nothing", "/api/dead-letters?limit=0"] {
            let a = send(f.addr, "GET", target, headers).await;
            let message = a.assert_error(401);
            assert!(message.contains("bearer token"), "{message}");
            assert_eq!(a.header("www-authenticate"), Some("Bearer"));
        }
    }
    for auth in ["Bearer s3cret", "bearer s3cret"] {
        let a = send(f.addr, "GET", "/api/tenants", &[("Authorization", auth)]).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.json().as_array().map(Vec::len), Some(2));
    }
    send(f.addr, "GET", "/api/nothing", &[("Authorization", "Bearer s3cret")]).await.assert_error(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_requests_never_get_a_server_error_or_hang() {
    let f = start(None).await;
    let segments = [
        "api",
        "tenants",
        "projects",
        "devices",
        "series",
        "latest",
        "dead-letters",
        "health",
        "tenant-1",
        "project-1",
        "dev-1",
        "",
        ".",
        "..",
        "%00",
        "%FF",
        "%2F",
        "%25",
        "%",
        "%G1",
        "%C3%28",
        "%F0%9F%98%80",
        "Z%C3%BCrich",
        "~",
        "a;b",
        "a=b",
        "*",
        "{tenant}",
        "%7Btenant%7D",
        "%20",
        "+",
    ];
    let params = ["range", "field", "limit", "", "x", "range%00", "%FF"];
    let values =
        ["15m", "1h", "3d", "0", "1", "500", "501", "-1", "", "%", "%FF", "%00", "1e3", "+", "%2B", "a&b", "🙂"];
    let mut rng = rand::thread_rng();
    let mut statuses: std::collections::BTreeMap<u16, usize> = Default::default();
    for i in 0..500 {
        let mut target = String::from("/api");
        // Mostly the real shapes, with one part swapped for something odd.
        let shape: Vec<&str> = match i % 4 {
            0 => vec!["tenants", "tenant-1", "projects", "project-1", "devices", "dev-1", "series"],
            1 => vec!["tenants", "tenant-1", "projects", "project-1", "devices", "dev-1", "latest"],
            2 => vec!["dead-letters"],
            _ => (0..rng.gen_range(0..9)).map(|_| segments[rng.gen_range(0..segments.len())]).collect(),
        };
        // Half of the real shapes keep their path and get odd parameters only.
        let odd = if i % 4 != 3 && rng.gen_bool(0.5) { rng.gen_range(0..shape.len()) } else { usize::MAX };
        for (k, s) in shape.iter().enumerate() {
            target.push('/');
            target.push_str(if k == odd { segments[rng.gen_range(0..segments.len())] } else { s });
        }
        if rng.gen_bool(0.7) {
            let query: Vec<String> = (0..rng.gen_range(1..4))
                .map(|_| {
                    format!("{}={}", params[rng.gen_range(0..params.len())], values[rng.gen_range(0..values.len())])
                })
                .collect();
            target.push('?');
            target.push_str(&query.join("&"));
        }
        // A request line carries no raw spaces or non-ASCII: encode those as a client would.
        let target: String =
            target.chars().map(|c| if c.is_ascii_graphic() { c.to_string() } else { encode(&c.to_string()) }).collect();
        let a = get(f.addr, &target).await;
        *statuses.entry(a.status).or_default() += 1;
        assert!(a.status < 500, "{target}: {} {}", a.status, String::from_utf8_lossy(&a.body));
        if !(a.status == 400 && a.body.is_empty()) {
            // Anything but the HTTP layer's own refusal of a malformed request is JSON.
            a.json();
        }
    }
    println!("statuses: {statuses:?}");
    for status in [200, 400, 404] {
        assert!(statuses.contains_key(&status), "the odd requests reach every kind of answer: {statuses:?}");
    }
    // The server still answers normally.
    assert_eq!(get(f.addr, "/api/tenants").await.status, 200);
}
