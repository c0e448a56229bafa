//! `iotpipe demo`: zero configuration. An embedded MQTT broker, a simulated
//! fleet, the single-node pipeline (journal → SQLite) and the dashboard, all
//! on loopback.

mod broker;
mod fleet;

pub use broker::is_clean_leave_noise;

use crate::config;
use crate::pipeline::supervisor::Tasks;
use crate::pipeline::RunSettings;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often the demo publishes a malformed message.
const MALFORMED_EVERY: Duration = Duration::from_secs(7);

/// What `iotpipe demo` accepts.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Dashboard and API address (a free port is used if this one is taken).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Embedded MQTT broker address (a free port is used if this one is taken).
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub mqtt_listen: String,
    /// Where the journal and the SQLite database go (default: a temp dir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Simulated messages per second (0: no simulated fleet).
    #[arg(long, default_value_t = fleet::DEFAULT_RATE)]
    pub rate: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("--{flag}: `{value}` is not an address like 127.0.0.1:8080")]
    Addr { flag: &'static str, value: String },
    #[error("--data-dir {0}: {1}")]
    DataDir(String, std::io::Error),
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Run(#[from] crate::pipeline::PipelineError),
}

pub async fn run(args: DemoArgs, shutdown: impl std::future::Future<Output = ()>) -> Result<(), DemoError> {
    let http = available(&args.listen, "listen")?;
    let mqtt = available(&args.mqtt_listen, "mqtt-listen")?;
    let dir = args.data_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("iotpipe-demo"));
    std::fs::create_dir_all(&dir).map_err(|e| DemoError::DataDir(dir.display().to_string(), e))?;
    broker::start(mqtt)?;
    let cfg = demo_config(http, mqtt, &dir)?;
    let url = format!("http://{http}/");
    println!("iotpipe demo");
    println!("  dashboard     {url}");
    println!("  API           {url}api/tenants  (docs/api.md)");
    println!("  metrics       {url}metrics");
    println!("  MQTT broker   mqtt://{mqtt}  (embedded, MQTT 3.1.1)");
    println!("  data          {}", dir.display());
    println!();
    println!("Try your own device:");
    println!(
        "  mosquitto_pub -h {} -p {} -q 1 -t mtic/msg/client/realtime/acme/site-1 -m '{{\"deviceId\":\"my-device\",\"temperature\":21.5}}'",
        mqtt.ip(),
        mqtt.port()
    );
    println!("  curl -s {url}api/tenants");
    println!("Ctrl-C stops the demo.");
    if !http.ip().is_loopback() {
        tracing::warn!(
            listen = %http,
            "the demo's dashboard API has no token and listens beyond loopback: anyone who can reach {http} can read the data"
        );
    }
    // The fleet runs as background tasks of the pipeline: it is aborted when
    // the pipeline stops, and one that ends while running fails the run.
    let mut tasks = Tasks::new();
    if args.rate > 0 {
        tasks.background("demo-fleet", fleet::run(format!("mqtt://{mqtt}"), args.rate));
        tasks.background("demo-malformed", fleet::malformed(mqtt.ip().to_string(), mqtt.port(), MALFORMED_EVERY));
    }
    crate::pipeline::mqtt_store::run(cfg, shutdown, Some(crate::http::ui::routes(None)), tasks).await?;
    Ok(())
}

/// The configuration the demo runs with (printed nowhere; `iotpipe config`
/// shows every key): what differs from `iotpipe run`'s defaults.
fn demo_config(http: SocketAddr, mqtt: SocketAddr, dir: &Path) -> Result<RunSettings, config::ConfigError> {
    let text = config_text(http, mqtt, dir);
    Ok(config::load_str_for(&text, "(demo)", Vec::<(String, String)>::new(), config::Command::Run)?.into_run())
}

/// The demo's config file: the embedded broker, payload fields, a store and
/// journal in `dir`, the dashboard on `http`, a short shutdown.
pub(crate) fn config_text(http: SocketAddr, mqtt: SocketAddr, dir: &Path) -> String {
    format!(
        r#"
[mqtt]
url = "mqtt://{mqtt}"
version = "3.1.1"
client_id = "iotpipe-demo"
reconnect_backoff_max = "2s"
[route]
device_id = "/deviceId"
event_time = "/ts"
[store]
url = "sqlite://{db}"
[journal]
path = {journal:?}
max_size = "256MiB"
segment_size = "16MiB"
[http]
listen = "{http}"
per_tenant_metrics = true
[run]
grace_period = "5s"
"#,
        db = dir.join("iotpipe.db").display(),
        journal = dir.join("journal").display().to_string(),
    )
}

/// `wanted` if it can be bound, else a free port on the same address.
fn available(wanted: &str, flag: &'static str) -> Result<SocketAddr, DemoError> {
    let addr: SocketAddr = wanted.parse().map_err(|_| DemoError::Addr { flag, value: wanted.to_string() })?;
    if TcpListener::bind(addr).is_ok() {
        return Ok(addr);
    }
    let free = TcpListener::bind(SocketAddr::new(addr.ip(), 0))
        .and_then(|l| l.local_addr())
        .map_err(|_| DemoError::Addr { flag, value: wanted.to_string() })?;
    eprintln!("{wanted} is taken; using {free} instead.");
    Ok(free)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_config_loads_as_a_run_config() {
        let dir = tempfile::tempdir().unwrap();
        let http: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let s = demo_config(http, "127.0.0.1:1883".parse().unwrap(), dir.path()).unwrap();
        assert_eq!(s.run.grace_period.get(), Duration::from_secs(5));
        assert_eq!(s.run.batch_max_rows, crate::pipeline::RunConfig::default().batch_max_rows);
        assert_eq!(s.journal.path, dir.path().join("journal"));
        assert!(s.store.url.starts_with("sqlite://"), "{}", s.store.url);
    }
}
