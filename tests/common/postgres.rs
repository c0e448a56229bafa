//! PostgreSQL for tests: the shared server of `scripts/services.sh` (and the
//! TimescaleDB one, when the env file names it), or a private cluster (its
//! own state dir) for tests that stop and start it; psql and tokio-postgres
//! access for checks.
//!
//! Needs only `super::services`, so examples can include it with `#[path]`.

use super::services;
use std::process::Command;
use std::sync::OnceLock;

/// A PostgreSQL server, known by its base URL (`postgres://iotpipe@127.0.0.1:PORT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub base: String,
}

impl Server {
    /// From a URL that names a database (`…/postgres`), as the env file has it.
    pub fn from_url(url: &str) -> Self {
        let (base, _) = url.rsplit_once('/').expect("postgres URL with a database");
        Self { base: base.to_string() }
    }

    /// The shared server (`scripts/services.sh up postgres`).
    pub fn shared() -> &'static Server {
        static S: OnceLock<Server> = OnceLock::new();
        S.get_or_init(|| Server::from_url(services::shared(&["postgres"]).require("IOTPIPE_TEST_POSTGRES_URL")))
    }

    /// The TimescaleDB server, when the services env file names one
    /// (`IOTPIPE_TEST_TIMESCALE_URL`).
    pub fn timescale() -> Option<&'static Server> {
        static S: OnceLock<Option<Server>> = OnceLock::new();
        S.get_or_init(|| services::shared(&["postgres"]).get("IOTPIPE_TEST_TIMESCALE_URL").map(Server::from_url))
            .as_ref()
    }

    /// The URL of `database` on this server.
    pub fn url(&self, database: &str) -> String {
        format!("{}/{database}?sslmode=disable", self.base)
    }

    /// A client on `database`, for checks and cleanup.
    pub async fn admin(&self, database: &str) -> tokio_postgres::Client {
        let (client, connection) =
            tokio_postgres::connect(&self.url(database), tokio_postgres::NoTls).await.expect("connect to postgres");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }

    pub async fn drop_database(&self, name: &str) {
        let admin = self.admin("postgres").await;
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await.expect("drop database");
    }
}

/// A private cluster that a test may stop and start.
pub struct PrivatePostgres {
    pub dir: tempfile::TempDir,
    pub server: Server,
}

impl PrivatePostgres {
    pub fn start() -> Self {
        let dir = tempfile::Builder::new().prefix("iotpipe-pg-").tempdir_in("/var/tmp").expect("tempdir");
        let env = services::up_in(dir.path(), &["postgres"]);
        let server = Server::from_url(env.require("IOTPIPE_TEST_POSTGRES_URL"));
        Self { dir, server }
    }

    pub fn url(&self, database: &str) -> String {
        self.server.url(database)
    }

    pub fn stop(&self) {
        services::down_in(self.dir.path(), &["postgres"]);
    }

    /// Start again on the same port.
    pub fn restart(&self) {
        let env = services::up_in(self.dir.path(), &["postgres"]);
        let again = env.get("IOTPIPE_TEST_POSTGRES_URL").map(Server::from_url);
        assert_eq!(again.as_ref(), Some(&self.server), "postgres came back on the same port");
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(services::repo().join("scripts/services.sh"))
            .args(["down", "postgres"])
            .env("IOTPIPE_SERVICES_DIR", self.dir.path())
            .output();
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
