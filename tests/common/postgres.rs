//! PostgreSQL for tests: the shared instance of scripts/services.sh, or a
//! private one (its own state dir) for tests that stop and start it.

use std::path::PathBuf;
use std::process::{Command, Stdio};

fn services(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(super::repo().join("scripts/services.sh"))
        .args(args)
        .env("IOTPIPE_SERVICES_DIR", dir)
        .stderr(Stdio::inherit())
        .output()
        .expect("run services.sh");
    assert!(out.status.success(), "services.sh {args:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The shared instance's base URL (`postgres://iotpipe@127.0.0.1:PORT`).
pub fn shared_base() -> String {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URL.get_or_init(|| {
        let dir = std::env::var("IOTPIPE_SERVICES_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| super::repo().join(".services"));
        let env = services(&dir, &["up", "postgres"]);
        let url =
            env.lines().find_map(|l| l.strip_prefix("IOTPIPE_TEST_POSTGRES_URL=")).expect("postgres url").to_string();
        url.trim_end_matches("/postgres").to_string()
    })
    .clone()
}

/// A private cluster that a test may stop and start.
pub struct PrivatePostgres {
    pub dir: tempfile::TempDir,
    pub base: String,
}

impl PrivatePostgres {
    pub fn start() -> Self {
        let dir = tempfile::Builder::new().prefix("iotpipe-pg-").tempdir_in("/var/tmp").expect("tempdir");
        let env = services(dir.path(), &["up", "postgres"]);
        let url = env.lines().find_map(|l| l.strip_prefix("IOTPIPE_TEST_POSTGRES_URL=")).expect("postgres url");
        Self { base: url.trim_end_matches("/postgres").to_string(), dir }
    }

    pub fn stop(&self) {
        services(self.dir.path(), &["down", "postgres"]);
    }

    /// Start again on the same port.
    pub fn restart(&self) {
        let env = services(self.dir.path(), &["up", "postgres"]);
        let url = env.lines().find_map(|l| l.strip_prefix("IOTPIPE_TEST_POSTGRES_URL=")).unwrap_or_default();
        assert_eq!(url.trim_end_matches("/postgres"), self.base, "postgres came back on the same port");
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(super::repo().join("scripts/services.sh"))
            .args(["down", "postgres"])
            .env("IOTPIPE_SERVICES_DIR", self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// One value from `psql -At`; `None` if psql fails (e.g. the server is down).
pub fn query(url: &str, sql: &str) -> Option<String> {
    let out = Command::new("psql").args(["-XAtq", "-v", "ON_ERROR_STOP=1", url, "-c", sql]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub fn count(url: &str, sql: &str) -> i64 {
    query(url, sql).and_then(|s| s.parse().ok()).unwrap_or(-1)
}

/// A fresh database name.
pub fn unique_db(prefix: &str) -> String {
    format!("{prefix}_{}_{}", std::process::id(), rand_suffix())
}

fn rand_suffix() -> u32 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    t % 1_000_000
}
