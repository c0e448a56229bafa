//! The dashboard page against the real API, on the fixture of
//! `examples/dashboard_fixture.rs` (a SQLite file seeded through
//! `Store::write`), started in-process: the fixture's edge cases through the
//! API, and the page in headless Chromium (`scripts/dashboard_check.py`).

#[allow(dead_code)]
#[path = "../examples/dashboard_fixture.rs"]
mod dashboard_fixture;

mod common;

use common::http_get;
use common::services::repo;
use dashboard_fixture::{start, Options};
use serde_json::{json, Value};
use std::path::PathBuf;

/// GET `path` on the fixture: status and JSON body.
async fn get(port: u16, path: &str) -> (u16, Value) {
    let path = path.to_string();
    let (status, body) = tokio::task::spawn_blocking(move || http_get(port, &path)).await.expect("request");
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {body}"));
    (status, json)
}

/// Points of `field` in a series answer.
fn points(series: &Value, field: &str) -> Vec<(i64, f64)> {
    let list = series["fields"][field].as_array().map(Vec::as_slice).unwrap_or_default();
    list.iter().map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fixture_serves_every_edge_case_through_the_real_api() {
    let f = start(Options::default()).await.expect("start the fixture");
    assert!(f.seeded);
    let (status, tenants) = get(f.port, "/api/tenants").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = tenants.as_array().unwrap().iter().map(|t| t["tenant_id"].as_str().unwrap()).collect();
    assert_eq!(names, ["acme-industrial", "tenant-1", "tenant-2"]);
    let projects = get(f.port, "/api/tenants/tenant-1/projects").await.1;
    assert_eq!(projects.as_array().map(Vec::len), Some(2));
    let base = "/api/tenants/tenant-1/projects/project-1/devices";
    let devices = get(f.port, base).await.1;
    let devices: Vec<&str> = devices.as_array().unwrap().iter().map(|d| d["device_id"].as_str().unwrap()).collect();
    assert_eq!(devices, ["dev-1-1-1", "dev-1-1-2", "dev-1-1-3", "dev-1-1-4", "dev-1-1-5", "dev-1-1-6"]);

    // ~200 points per field in 15 min, with a one-minute gap.
    let dense = get(f.port, &format!("{base}/dev-1-1-1/series")).await.1;
    let fields: Vec<&String> = dense["fields"].as_object().unwrap().keys().collect();
    assert_eq!(fields, ["battery", "humidity", "seq", "temperature", "ts"]);
    let temps = points(&dense, "temperature");
    assert!((180..=200).contains(&temps.len()), "{} points", temps.len());
    let widest = temps.windows(2).map(|w| w[1].0 - w[0].0).max().unwrap();
    assert!((55_000..=70_000).contains(&widest), "a one-minute gap, widest step {widest} ms");
    let days = get(f.port, &format!("{base}/dev-1-1-1/series?range=3d&field=temperature")).await.1;
    assert!(points(&days, "temperature").len() > 150, "{days}");
    // A single point; nothing in the last hour; text payloads.
    let single = get(f.port, &format!("{base}/dev-1-1-2/series")).await.1;
    assert!(single["fields"].as_object().unwrap().values().all(|p| p.as_array().map(Vec::len) == Some(1)), "{single}");
    let quiet = get(f.port, &format!("{base}/dev-1-1-3/series?range=1h")).await.1;
    assert_eq!(quiet["fields"], json!({}));
    assert_eq!(points(&get(f.port, &format!("{base}/dev-1-1-3/series?range=3d")).await.1, "temperature").len(), 1);
    let text = get(f.port, &format!("{base}/dev-1-1-4/latest")).await.1;
    assert!(text["payload"].as_str().is_some_and(|p| p.starts_with("temp=")), "{text}");
    assert_eq!(get(f.port, &format!("{base}/dev-1-1-4/series")).await.1["fields"], json!({}));
    let (status, unknown) = get(f.port, &format!("{base}/dev-1-1-9/latest")).await;
    assert_eq!(status, 404, "{unknown}");
    let slash = "/api/tenants/acme-industrial/projects/project-1/devices/dev%2F%C3%BC-3/latest";
    assert_eq!(get(f.port, slash).await.0, 200);

    let dead = get(f.port, "/api/dead-letters").await.1;
    let mut reasons: Vec<&str> = dead.as_array().unwrap().iter().map(|d| d["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons.len(), 12);
    reasons.sort();
    reasons.dedup();
    assert_eq!(reasons, ["empty_payload", "invalid_json", "invalid_utf8", "oversize", "topic_mismatch"]);
    let health = get(f.port, "/api/health").await.1;
    let stored: u64 = tenants.as_array().unwrap().iter().map(|t| t["messages"].as_u64().unwrap()).sum();
    assert_eq!((health["stored"].as_u64(), health["dead_lettered"].as_u64()), (Some(stored), Some(12)), "{health}");

    // The same file again: served as it is, not seeded twice.
    let again = start(Options { db: Some(f.db.clone()), ..Options::default() }).await.expect("reuse the file");
    assert!(!again.seeded);
    assert_eq!(get(again.port, "/api/tenants").await.1, tenants);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_asked_for_when_given() {
    let f = start(Options { token: Some("s3cret".into()), ..Options::default() }).await.expect("start the fixture");
    let (status, body) = get(f.port, "/api/tenants").await;
    assert_eq!(status, 401, "{body}");
    let (status, page) = tokio::task::spawn_blocking(move || http_get(f.port, "/")).await.unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("<title>iotpipe dashboard</title>"));
}

/// The browser the check runs, or a failure saying how to install it.
fn chromium() -> PathBuf {
    let path = std::env::var_os("CHROMIUM").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "Chromium is not installed ({} missing): run `bash scripts/services.sh tools`",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_renders_the_fixture_in_chromium() {
    let browser = chromium();
    let f = start(Options::default()).await.expect("start the fixture");
    let artifacts = repo().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    // The page as it opens (the first tenant), and the dense device with a gap.
    for (url, shot) in [
        (f.url.clone(), "dashboard-fixture.png"),
        (format!("{}#/tenant-1/project-1/dev-1-1-1?range=15m", f.url), "dashboard-fixture-gap.png"),
    ] {
        let shot = artifacts.join(shot);
        let check = tokio::process::Command::new("python3")
            .arg(repo().join("scripts/dashboard_check.py"))
            .arg(&url)
            .arg(&shot)
            .env("CHROMIUM", &browser)
            .output()
            .await
            .expect("run scripts/dashboard_check.py");
        let stdout = String::from_utf8_lossy(&check.stdout);
        assert!(
            check.status.success(),
            "dashboard check failed for {url}:\n{stdout}\n{}",
            String::from_utf8_lossy(&check.stderr)
        );
        println!("{}", stdout.trim());
        assert!(std::fs::metadata(&shot).map(|m| m.len() > 10_000).unwrap_or(false), "screenshot saved");
    }
}
