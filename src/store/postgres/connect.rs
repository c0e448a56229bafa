//! Opening PostgreSQL connections: URL and secrets, TLS (rustls with ring),
//! and creating the database when it is missing.

use crate::store::config::redact;
use crate::store::{tls, StoreConfig, StoreError};
use std::str::FromStr;
use std::time::Duration;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{Client, Config, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

/// How often an idle connection is probed, so a dead server is noticed.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);

/// Everything needed to (re)open a connection.
pub struct Target {
    /// Driver config: hosts, user, password, database, TLS mode, timeouts.
    config: Config,
    /// rustls connector; None with `sslmode=disable`.
    tls: Option<MakeRustlsConnect>,
    /// The database the URL names.
    pub database: String,
    /// The user connecting.
    pub user: String,
    /// `postgres host:port/db`, without secrets.
    pub describe: String,
    /// Limit on opening one connection.
    connect_timeout: Duration,
}

impl Target {
    /// Read the URL, the password file and the CA file.
    pub fn new(cfg: &StoreConfig, url: &str) -> Result<Self, StoreError> {
        let url = normalize_sslmode(url);
        let mut config = Config::from_str(&url)
            .map_err(|e| StoreError::config("url", format!("`{}` is not a PostgreSQL URL: {e}", redact(&url))))?;
        if let Some(password) = cfg.file_password()? {
            config.password(password);
        }
        let user = config
            .get_user()
            .map(str::to_string)
            .ok_or_else(|| StoreError::config("url", "name the user: postgres://user@host:port/database"))?;
        let database = config.get_dbname().map(str::to_string).unwrap_or_else(|| user.clone());
        check_database_name(&database).map_err(|m| StoreError::config("url", m))?;
        config.dbname(&database);
        config.connect_timeout(cfg.connect_timeout.get());
        config.keepalives(true);
        config.keepalives_idle(KEEPALIVE_IDLE);
        if config.get_application_name().is_none() {
            config.application_name("iotpipe");
        }
        let tls = match config.get_ssl_mode() {
            SslMode::Disable => None,
            _ => Some(MakeRustlsConnect::new(tls::client_config(cfg.ca_file.as_deref())?)),
        };
        let describe = describe(&config, &database);
        Ok(Self { config, tls, database, user, describe, connect_timeout: cfg.connect_timeout.get() })
    }

    /// Open a connection to the target database.
    pub async fn open(&self) -> Result<Client, StoreError> {
        self.open_config(&self.config).await
    }

    /// Open a connection, creating the database first if it is missing and `create` allows it.
    pub async fn open_creating(&self, create: bool) -> Result<Client, StoreError> {
        match self.open().await {
            Err(e) if create && e.sqlstate() == Some("3D000") => {
                self.create_database().await?;
                self.open().await
            }
            other => other,
        }
    }

    async fn open_config(&self, config: &Config) -> Result<Client, StoreError> {
        let what = "postgres connect";
        let opened = match &self.tls {
            None => {
                tokio::time::timeout(self.connect_timeout, async {
                    let (client, connection) = config.connect(NoTls).await?;
                    spawn_connection(connection, self.describe.clone());
                    Ok(client)
                })
                .await
            }
            Some(tls) => {
                tokio::time::timeout(self.connect_timeout, async {
                    let (client, connection) = config.connect(tls.clone()).await?;
                    spawn_connection(connection, self.describe.clone());
                    Ok(client)
                })
                .await
            }
        };
        match opened {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(StoreError::pg(format!("connect to {}", self.describe), e)),
            Err(_) => Err(StoreError::Timeout { what, after: self.connect_timeout }),
        }
    }

    /// `CREATE DATABASE`, through the `postgres` maintenance database.
    /// Another sink creating it at the same moment is fine.
    async fn create_database(&self) -> Result<(), StoreError> {
        let mut admin = self.config.clone();
        admin.dbname("postgres");
        let client = self.open_config(&admin).await?;
        let sql = format!("CREATE DATABASE {}", quote_ident(&self.database));
        match client.batch_execute(&sql).await {
            Ok(()) => {
                tracing::info!(store = %self.describe, "Created the database.");
                Ok(())
            }
            // 42P04 duplicate_database; 23505 when two CREATEs race on the catalog.
            Err(e) if matches!(e.code().map(|c| c.code()), Some("42P04" | "23505")) => Ok(()),
            Err(e) if e.code().map(|c| c.code()) == Some("42501") => Err(StoreError::CreateDatabase {
                database: self.database.clone(),
                user: self.user.clone(),
                detail: e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string()),
            }),
            Err(e) => Err(StoreError::pg(format!("create database {}", self.database), e)),
        }
    }
}

fn spawn_connection<S, T>(connection: tokio_postgres::Connection<S, T>, store: String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(store, %error, "PostgreSQL connection ended.");
        }
    });
}

/// rustls always verifies the server's certificate, so libpq's
/// `verify-ca`/`verify-full` mean the same as `require` here.
fn normalize_sslmode(url: &str) -> String {
    url.replace("sslmode=verify-full", "sslmode=require").replace("sslmode=verify-ca", "sslmode=require")
}

/// Database names go into `CREATE DATABASE`: letters, digits, `_`, `-`, `.`,
/// `$`, at most 63 bytes.
pub fn check_database_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'$'));
    if ok {
        Ok(())
    } else {
        Err(format!("database name `{name}` must be 1-63 letters, digits, `_`, `-`, `.` or `$`"))
    }
}

/// A double-quoted SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn describe(config: &Config, database: &str) -> String {
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) if h.contains(':') => format!("[{h}]:{port}"),
        Some(Host::Tcp(h)) => format!("{h}:{port}"),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => format!("localhost:{port}"),
    };
    format!("postgres {host}/{database}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> Result<Target, StoreError> {
        let cfg = StoreConfig { url: url.into(), ..StoreConfig::default() };
        Target::new(&cfg, url)
    }

    #[test]
    fn describes_without_secrets() {
        let t = target("postgres://writer:s3cret@db.example:6432/iot?sslmode=disable").unwrap();
        assert_eq!(t.describe, "postgres db.example:6432/iot");
        assert_eq!((t.database.as_str(), t.user.as_str()), ("iot", "writer"));
        let t = target("postgres://writer@127.0.0.1/iot?sslmode=verify-full").unwrap();
        assert_eq!(t.describe, "postgres 127.0.0.1:5432/iot");
    }

    #[test]
    fn the_database_defaults_to_the_user_and_is_checked() {
        assert_eq!(target("postgres://iot@h?sslmode=disable").unwrap().database, "iot");
        assert!(target("postgres://u@h/bad%22name?sslmode=disable").is_err());
        assert!(target("postgres://h/db?sslmode=disable").err().unwrap().to_string().contains("user"));
        let e = target("postgres://u:pw@h/db?sslmode=sometimes").err().unwrap().to_string();
        assert!(e.starts_with("store.url:") && !e.contains("pw@"), "{e}");
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("iot"), "\"iot\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert!(check_database_name("iot_test_1f2e").is_ok());
        assert!(check_database_name("a b").is_err());
        assert!(check_database_name("").is_err());
    }
}
