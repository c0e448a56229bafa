//! Helpers of the integration tests, one tree for every test binary.
//!
//! - [`services`]: `scripts/services.sh up` per service set, the env file parser;
//! - [`mqtt`], [`kafka`]: a private Mosquitto (also with a password or a
//!   client certificate) / Tansu per test, publishers, readers;
//! - [`postgres`], [`influx`]: the shared servers, a private PostgreSQL, queries;
//! - [`store`]: store rows, payloads and dead letters;
//! - [`tls`]: test certificates, Tansu behind stunnel (TLS, mTLS, SASL);
//! - [`process`]: a running `iotpipe bridge|sink|run` (`Iotpipe`), the
//!   bridge and sink configs, `iotpipe check`;
//! - here: ports, signals, a tiny HTTP GET, polling, whether we are root.
#![allow(dead_code)]

pub mod influx;
pub mod kafka;
pub mod mqtt;
pub mod postgres;
pub mod process;
pub mod services;
pub mod store;
pub mod tls;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

pub fn wait_for_port(port: u16, within: Duration) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < within, "port {port} did not open within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status();
}

/// Minimal HTTP/1.1 GET against 127.0.0.1: status and body.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let (status, answer) = http_get_answer(port, path, None);
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// A GET with an optional `Authorization` header value: status and the whole
/// answer, headers included (status 0 when nothing answers).
pub fn http_get_answer(port: u16, path: &str, authorization: Option<&str>) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return (0, String::new()) };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let auth = authorization.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n");
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    let status = buf.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, buf)
}

/// Whether the tests run as root (services then run as their own users).
pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

/// [`eventually`] for async tests: polls every 50 ms without blocking the runtime.
pub async fn eventually_async(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < within, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Poll `f` until it returns true.
pub fn eventually(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < within, "timed out after {within:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
