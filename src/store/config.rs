//! The `[store]` section: which database, how long data is kept, timeouts
//! and secrets. Parsing the URL is pure and checked once.

use super::StoreError;
use crate::units::{HumanDuration, KeyError};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// InfluxDB's HTTP port when the URL names none.
const INFLUX_DEFAULT_PORT: u16 = 8086;

/// Shortest retention window: InfluxDB refuses retention policies under an
/// hour, and a day partition would be dropped as soon as it was made.
const MIN_RETENTION: Duration = Duration::from_secs(3600);

/// Whether `telemetry` becomes a TimescaleDB hypertable on PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimescaleMode {
    /// When the server offers the extension and preloads it
    /// (`shared_preload_libraries`); otherwise daily partitions, with a warning
    /// when the extension is there but not preloaded.
    #[default]
    Auto,
    /// Required: refuse to start without it.
    On,
    /// Never: daily partitions managed by iotpipe.
    Off,
}

/// Where and how telemetry is stored.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `postgres://user[:password]@host:port/db[?sslmode=disable|prefer|require]`,
    /// `influxdb://[user:password@]host:port/db` (`influxdbs://` for HTTPS;
    /// `http://` and `https://` are accepted too), or a SQLite file:
    /// `sqlite:///absolute/path.db`, `sqlite://relative/path.db`.
    pub url: String,
    /// How long data is kept (e.g. `"3d"`); older partitions, chunks and
    /// points are dropped. At least `"1h"`.
    pub retention: HumanDuration,
    /// How often the retention task runs.
    pub retention_interval: HumanDuration,
    /// Daily partitions created ahead of today (PostgreSQL without TimescaleDB).
    pub partitions_ahead: u32,
    /// Create the database when it does not exist (the user needs the right
    /// to; for SQLite: the file and its directory).
    pub create_database: bool,
    /// PEM CA bundle that signs the server's certificate; the system roots
    /// are used when absent. The certificate is always verified.
    pub ca_file: Option<PathBuf>,
    /// File holding the password (trailing newline stripped); it wins over a
    /// password in the URL.
    pub password_file: Option<PathBuf>,
    /// Longest time one batch may take to write before it is abandoned (the
    /// transaction rolls back) and reported as a retryable error.
    pub write_timeout: HumanDuration,
    /// Longest time to open a connection (TCP, TLS and authentication).
    pub connect_timeout: HumanDuration,
    /// PostgreSQL only: `"auto"`, `"on"` or `"off"` (see [`TimescaleMode`]).
    /// Decides only when the schema is first created.
    pub timescaledb: TimescaleMode,
    /// TimescaleDB: the time one chunk of `telemetry` covers (new chunks);
    /// a window shorter than this is used instead.
    pub chunk_interval: HumanDuration,
    /// TimescaleDB: compress chunks (segmented by tenant, project and device).
    pub compression: bool,
    /// TimescaleDB: compress a chunk once all of it is older than this.
    pub compress_after: HumanDuration,
    /// TimescaleDB: keep `telemetry_numeric_rollup`, a continuous aggregate of
    /// the numeric fields per device and field, for dashboards over long ranges.
    pub rollup: bool,
    /// TimescaleDB: the rollup's bucket width (decided when it is first created).
    pub rollup_bucket: HumanDuration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: "postgres://iotpipe@127.0.0.1:5432/iotpipe".into(),
            retention: HumanDuration::secs(3 * 86_400),
            retention_interval: HumanDuration::secs(600),
            partitions_ahead: 2,
            create_database: true,
            ca_file: None,
            password_file: None,
            write_timeout: HumanDuration::secs(30),
            connect_timeout: HumanDuration::secs(10),
            timescaledb: TimescaleMode::Auto,
            chunk_interval: HumanDuration::secs(86_400),
            compression: true,
            compress_after: HumanDuration::secs(86_400),
            rollup: true,
            rollup_bucket: HumanDuration::secs(60),
        }
    }
}

/// The backend a `store.url` selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// A PostgreSQL connection URL, as written.
    Postgres(String),
    /// An InfluxDB 1.x HTTP endpoint and database.
    Influx(InfluxUrl),
    /// A SQLite database file (relative paths are relative to the working directory).
    Sqlite(PathBuf),
}

/// `influxdb://[user:password@]host[:port]/database`, decoded.
#[derive(Clone, PartialEq, Eq)]
pub struct InfluxUrl {
    /// HTTPS (`influxdbs://`, `https://`) or plain HTTP.
    pub tls: bool,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// HTTP port (8086 when the URL names none).
    pub port: u16,
    /// Database name.
    pub database: String,
    /// User for basic authentication.
    pub username: Option<String>,
    /// Password for basic authentication.
    pub password: Option<String>,
}

impl std::fmt::Debug for InfluxUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InfluxUrl")
            .field("tls", &self.tls)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl InfluxUrl {
    /// `http(s)://host:port`, the base of every request.
    pub fn base(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl StoreConfig {
    /// Check the keys that need more than a type; run once at start-up.
    /// Keys are relative to `[store]`.
    pub fn validate(&self) -> Result<(), KeyError> {
        parse_url(&self.url).map_err(|m| KeyError::new("url", m))?;
        if self.retention.get() < MIN_RETENTION {
            return Err(KeyError::new("retention", format!("`{}` is too short; the minimum is 1h", self.retention)));
        }
        if self.retention_interval.get() < Duration::from_secs(1) {
            return Err(KeyError::new("retention_interval", "must be at least 1s"));
        }
        if self.partitions_ahead > 366 {
            return Err(KeyError::new("partitions_ahead", "must be at most 366"));
        }
        if self.write_timeout.get().is_zero() {
            return Err(KeyError::new("write_timeout", "must be more than 0s"));
        }
        if self.connect_timeout.get().is_zero() {
            return Err(KeyError::new("connect_timeout", "must be more than 0s"));
        }
        if self.chunk_interval.get() < Duration::from_secs(60) {
            return Err(KeyError::new("chunk_interval", format!("`{}` must be at least 1m", self.chunk_interval)));
        }
        if self.compress_after.get() < Duration::from_secs(60) {
            return Err(KeyError::new("compress_after", "must be at least 1m"));
        }
        let bucket = self.rollup_bucket.get();
        if bucket < Duration::from_secs(1) || bucket > Duration::from_secs(86_400) || bucket * 3 > self.retention.get()
        {
            return Err(KeyError::new(
                "rollup_bucket",
                format!("`{}` must be between 1s and 1d, and at most a third of store.retention", self.rollup_bucket),
            ));
        }
        Ok(())
    }

    /// Which backend `url` selects, with its parts.
    pub fn parse_url(&self) -> Result<StoreUrl, StoreError> {
        parse_url(&self.url).map_err(|m| StoreError::config("url", m))
    }

    /// The password from `password_file`, if one is configured.
    pub(crate) fn file_password(&self) -> Result<Option<String>, StoreError> {
        let Some(path) = &self.password_file else { return Ok(None) };
        let text = std::fs::read_to_string(path).map_err(|source| StoreError::File {
            key: "password_file",
            path: path.display().to_string(),
            source,
        })?;
        Ok(Some(text.trim_end_matches(['\n', '\r']).to_string()))
    }
}

fn parse_url(url: &str) -> Result<StoreUrl, String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| format!("`{}` needs a scheme: {SCHEMES}", redact(url)))?;
    match scheme {
        "postgres" | "postgresql" => Ok(StoreUrl::Postgres(url.to_string())),
        "influxdb" | "http" => parse_influx(rest, false).map(StoreUrl::Influx),
        "influxdbs" | "https" => parse_influx(rest, true).map(StoreUrl::Influx),
        "sqlite" => parse_sqlite(rest).map(StoreUrl::Sqlite),
        other => Err(format!("scheme `{other}` is not supported; use {SCHEMES}")),
    }
}

/// The schemes `store.url` accepts, for messages.
const SCHEMES: &str = "postgres://, influxdb://, influxdbs:// or sqlite://";

/// `sqlite:///abs/path.db` → `/abs/path.db`; `sqlite://rel.db` → `rel.db`.
fn parse_sqlite(rest: &str) -> Result<PathBuf, String> {
    if rest.contains(['?', '#']) {
        return Err("a SQLite URL takes no query parameters: sqlite:///path/to/iotpipe.db".into());
    }
    let path = percent_decode(rest)?;
    if path.is_empty() || path.ends_with('/') || path.contains('\0') {
        return Err("name the database file: sqlite:///var/lib/iotpipe/iotpipe.db or sqlite://iotpipe.db".into());
    }
    Ok(PathBuf::from(path))
}

fn parse_influx(rest: &str, tls: bool) -> Result<InfluxUrl, String> {
    if rest.contains(['?', '#']) {
        return Err("an InfluxDB URL takes no query parameters: influxdb://[user:password@]host:port/database".into());
    }
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(u) => match u.split_once(':') {
            Some((name, pw)) => (Some(percent_decode(name)?), Some(percent_decode(pw)?)),
            None => (Some(percent_decode(u)?), None),
        },
    };
    let (host, port) = split_host_port(hostport)?;
    let database = percent_decode(path.trim_end_matches('/'))?;
    if database.is_empty() || database.contains('/') {
        return Err("name the database as the URL's path: influxdb://host:8086/iot".into());
    }
    Ok(InfluxUrl { tls, host, port, database, username: username.filter(|u| !u.is_empty()), password })
}

fn split_host_port(s: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(v6) = s.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| format!("`{s}`: unclosed `[`"))?;
        (h, after.strip_prefix(':'))
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return Err("the URL names no host".into());
    }
    let port = match port {
        None => INFLUX_DEFAULT_PORT,
        Some(p) => p.parse().map_err(|_| format!("`{p}` is not a port number"))?,
    };
    Ok((host.to_string(), port))
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or_else(|| format!("bad percent escape in `{s}`"))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("bad percent escape in `{s}`"))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("`{s}` is not UTF-8 once decoded"))
}

/// `url` with the password replaced by `***`, for messages.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn influx(url: &str) -> InfluxUrl {
        match parse_url(url) {
            Ok(StoreUrl::Influx(u)) => u,
            other => panic!("{url}: {other:?}"),
        }
    }

    #[test]
    fn influx_urls_decode_host_port_database_and_credentials() {
        let u = influx("influxdb://127.0.0.1:8087/iot");
        assert_eq!((u.tls, u.host.as_str(), u.port, u.database.as_str()), (false, "127.0.0.1", 8087, "iot"));
        assert_eq!(u.base(), "http://127.0.0.1:8087");
        let u = influx("influxdbs://writer:p%40ss@influx.example:9999/tele%20metry");
        assert!(u.tls);
        assert_eq!(u.username.as_deref(), Some("writer"));
        assert_eq!(u.password.as_deref(), Some("p@ss"));
        assert_eq!(u.database, "tele metry");
        assert_eq!(u.base(), "https://influx.example:9999");
        let u = influx("http://[::1]/iot");
        assert_eq!((u.host.as_str(), u.port), ("::1", 8086));
        assert_eq!(u.base(), "http://[::1]:8086");
        assert!(!format!("{u:?}").contains("p@ss"));
    }

    #[test]
    fn bad_urls_are_refused_with_the_reason() {
        assert!(parse_url("localhost:5432").unwrap_err().contains("needs a scheme"));
        assert!(parse_url("mysql://x/y").unwrap_err().contains("not supported"));
        assert!(parse_url("influxdb://host:8086").unwrap_err().contains("database"));
        assert!(parse_url("influxdb://host:80x/db").unwrap_err().contains("port"));
        assert!(parse_url("influxdb://host/db?rp=x").unwrap_err().contains("no query"));
        assert!(matches!(parse_url("postgresql://u@h/db"), Ok(StoreUrl::Postgres(_))));
        assert!(parse_url("sqlite://").unwrap_err().contains("database file"));
        assert!(parse_url("sqlite:///var/lib/").unwrap_err().contains("database file"));
        assert!(parse_url("sqlite:///x.db?mode=ro").unwrap_err().contains("no query"));
    }

    #[test]
    fn sqlite_urls_name_a_file() {
        let path = |url: &str| match parse_url(url) {
            Ok(StoreUrl::Sqlite(p)) => p,
            other => panic!("{url}: {other:?}"),
        };
        assert_eq!(path("sqlite:///var/lib/iotpipe/iotpipe.db"), PathBuf::from("/var/lib/iotpipe/iotpipe.db"));
        assert_eq!(path("sqlite://iotpipe.db"), PathBuf::from("iotpipe.db"));
        assert_eq!(path("sqlite://data/my%20db.sqlite"), PathBuf::from("data/my db.sqlite"));
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn validation_names_the_key() {
        let mut c = StoreConfig::default();
        assert!(c.validate().is_ok());
        c.retention = HumanDuration::secs(60);
        assert_eq!(c.validate().unwrap_err().key, "retention");
        let key = |c: StoreConfig| c.validate().unwrap_err().key;
        assert_eq!(
            key(StoreConfig { chunk_interval: HumanDuration::secs(30), ..StoreConfig::default() }),
            "chunk_interval"
        );
        assert_eq!(
            key(StoreConfig { compress_after: HumanDuration::secs(0), ..StoreConfig::default() }),
            "compress_after"
        );
        let long_bucket = StoreConfig {
            retention: HumanDuration::secs(3600),
            chunk_interval: HumanDuration::secs(600),
            rollup_bucket: HumanDuration::secs(1800),
            ..StoreConfig::default()
        };
        assert_eq!(key(long_bucket), "rollup_bucket");
    }

    #[test]
    fn config_parses_with_units_and_rejects_unknown_keys() {
        let c: StoreConfig =
            toml::from_str("url = \"influxdb://h/db\"\nretention = \"7d\"\nwrite_timeout = \"5s\"").unwrap();
        assert_eq!(c.retention.get(), Duration::from_secs(7 * 86_400));
        assert_eq!(c.partitions_ahead, 2);
        assert!(toml::from_str::<StoreConfig>("retension = \"7d\"").is_err());
    }
}
