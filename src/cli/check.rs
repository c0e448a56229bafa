//! `iotpipe check`: validate the config, then try exactly what the command
//! it is for uses — MQTT and Kafka for `bridge`, Kafka and the store for
//! `sink`, MQTT and the store for `run` (and the journal directory where
//! there is one) — printing one line per check; Kafka step by step (TCP,
//! TLS handshake, authentication) so that a failure names its step. Nothing is created or
//! changed: the store's schema version is read, not migrated.

use crate::config::{self, Config};
use crate::kafka::{Diagnosis, Prober, Step};
use crate::mqtt::{connect, Event};
use crate::store::Store;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// The command a config is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    Bridge,
    Sink,
    Run,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Self::Bridge => "bridge",
            Self::Sink => "sink",
            Self::Run => "run",
        }
    }
}

/// One line of the report.
struct Check {
    name: &'static str,
    result: Result<String, String>,
}

pub fn main(path: Option<PathBuf>, command: Option<Target>, offline: bool) -> ExitCode {
    let sections = match sections(path.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(target) = command.or_else(|| infer(&sections)) else {
        eprintln!("error: cannot tell which command this config is for; pass --command bridge, sink or run");
        return ExitCode::from(2);
    };
    let defaults = if target == Target::Run { super::RUN_DEFAULTS } else { "" };
    let for_target = |c: Config| match target {
        Target::Run => config::validate::validate_for_run(&c).map(|()| c),
        Target::Bridge | Target::Sink => Ok(c),
    };
    let cfg = match config::load_with_defaults(path.as_deref(), defaults).and_then(for_target) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    crate::telemetry::init_logging("error", cfg.log.format);
    crate::tls::install_crypto_provider();
    let origin = path.as_deref().map(|p| p.display().to_string()).unwrap_or_else(|| "defaults and environment".into());
    println!("ok    {:<8} valid for `iotpipe {}` ({origin})", "config", target.name());
    if offline {
        return ExitCode::SUCCESS;
    }
    let checks = match super::runtime() {
        Ok(rt) => rt.block_on(run(&cfg, target)),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = false;
    for c in &checks {
        match &c.result {
            Ok(m) => println!("ok    {:<8} {m}", c.name),
            Err(m) => {
                failed = true;
                println!("FAIL  {:<8} {m}", c.name);
            }
        }
    }
    if failed {
        eprintln!("error: some checks failed");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The sections the file and the environment name (`IOTPIPE_<SECTION>__…`).
fn sections(path: Option<&Path>) -> Result<BTreeSet<String>, String> {
    let mut names = BTreeSet::new();
    if let Some(p) = path {
        let text = std::fs::read_to_string(p).map_err(|e| format!("cannot read config file {}: {e}", p.display()))?;
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| format!("config file {} is not valid TOML: {e}", p.display()))?;
        names.extend(table.keys().cloned());
    }
    for (var, _) in std::env::vars() {
        if let Some((section, _)) = var.strip_prefix("IOTPIPE_").and_then(|r| r.split_once("__")) {
            names.insert(section.to_ascii_lowercase());
        }
    }
    Ok(names)
}

/// `[sink]`, or `[store]` without `[mqtt]`: sink. `[mqtt]` with `[store]`
/// and without `[kafka]`: run. `[mqtt]` or `[kafka]`: bridge.
fn infer(sections: &BTreeSet<String>) -> Option<Target> {
    let has = |s: &str| sections.contains(s);
    if has("sink") || (has("store") && !has("mqtt")) {
        Some(Target::Sink)
    } else if has("mqtt") && has("store") && !has("kafka") {
        Some(Target::Run)
    } else if has("mqtt") || has("kafka") {
        Some(Target::Bridge)
    } else {
        None
    }
}

async fn run(cfg: &Config, target: Target) -> Vec<Check> {
    let mut checks = Vec::new();
    if target != Target::Sink {
        checks.push(Check { name: "mqtt", result: check_mqtt(cfg).await });
    }
    if target != Target::Run {
        checks.extend(check_kafka(cfg).await);
    }
    if target != Target::Bridge {
        let result = Store::inspect(&cfg.store)
            .await
            .map(|s| format!("{}: {}", s.describe, s.detail))
            .map_err(|e| e.to_string());
        checks.push(Check { name: "store", result });
    }
    let journal = match target {
        Target::Run => Some(cfg.journal.clone().unwrap_or_default()),
        _ => cfg.journal.clone(),
    };
    if let Some(j) = journal {
        checks.push(Check { name: "journal", result: check_dir(&j.path) });
    }
    checks
}

/// Kafka step by step: TCP to each bootstrap server, then a metadata
/// request through librdkafka, whose failure names the TLS handshake or the
/// authentication when that is where it stopped.
async fn check_kafka(cfg: &Config) -> Vec<Check> {
    let kafka = &cfg.kafka;
    let mut checks = Vec::new();
    let mut reachable = 0;
    for server in kafka.brokers.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let result = check_tcp(server).await;
        reachable += usize::from(result.is_ok());
        checks.push(Check { name: "kafka", result });
    }
    if reachable == 0 {
        return checks;
    }
    let protocol = crate::kafka::protocol(&kafka.properties);
    let tls = crate::kafka::uses_tls(&protocol);
    let sasl = crate::kafka::uses_sasl(&protocol).then(|| {
        let user = kafka.properties.get("sasl.username").map(|u| format!(" as `{u}`")).unwrap_or_default();
        format!("SASL {}{user}", crate::kafka::mechanism(&kafka.properties))
    });
    let owned = kafka.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let prober = Prober::new(&owned).map_err(|e| Diagnosis { step: Step::Other, detail: e.to_string() })?;
        prober.diagnose(Duration::from_secs(5))
    })
    .await
    .unwrap_or_else(|e| Err(Diagnosis { step: Step::Other, detail: e.to_string() }));
    let ca = kafka.properties.get("ssl.ca.location").map(String::as_str).unwrap_or("system roots");
    let tls_ok = || Check { name: "kafka", result: Ok(format!("TLS handshake ok (CA: {ca})")) };
    match outcome {
        Ok(n) => {
            if tls {
                checks.push(tls_ok());
            }
            if let Some(s) = &sasl {
                checks.push(Check { name: "kafka", result: Ok(format!("authentication ok ({s})")) });
            }
            checks.push(Check { name: "kafka", result: Ok(format!("{n} broker(s) answered ({protocol})")) });
        }
        Err(d) => {
            if d.step == Step::Auth && tls {
                checks.push(tls_ok());
            }
            let what = match (&d.step, &sasl) {
                (Step::Auth, Some(s)) => format!("authentication failed ({s}): {}", d.detail),
                _ => format!("{d} ({protocol})"),
            };
            checks.push(Check { name: "kafka", result: Err(what) });
        }
    }
    checks
}

/// A TCP connection to one `host:port` (a `scheme://` prefix is ignored).
async fn check_tcp(server: &str) -> Result<String, String> {
    let addr = server.rsplit_once("://").map_or(server, |(_, a)| a);
    let timeout = Duration::from_secs(3);
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(format!("TCP {addr} connected")),
        Ok(Err(e)) => Err(format!("TCP connection to {addr} failed: {e}")),
        Err(_) => Err(format!("TCP connection to {addr} failed: no answer within {timeout:?}")),
    }
}

/// Connect with a throw-away clean session (a different client id, so the
/// bridge's persistent session is not disturbed).
async fn check_mqtt(config: &Config) -> Result<String, String> {
    let id = format!("{}-check-{}", config.mqtt.effective_client_id(), std::process::id());
    let (client, mut driver) = connect(&config.mqtt, &id, true).map_err(|e| e.to_string())?;
    let timeout = config.mqtt.connect_timeout.get() + Duration::from_secs(1);
    let outcome = tokio::time::timeout(timeout, async {
        loop {
            match driver.poll().await {
                Ok(Event::Connected { .. }) => return Ok(format!("{} connected", config.mqtt.url)),
                Ok(Event::Refused(code)) => return Err(format!("{} refused the connection: {code}", config.mqtt.url)),
                Ok(_) => {}
                Err(e) => return Err(format!("{}: {e}", config.mqtt.url)),
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err(format!("{}: no answer within {timeout:?}", config.mqtt.url)));
    if outcome.is_ok() {
        client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(500), driver.poll()).await;
    }
    outcome
}

/// The journal directory exists and is writable, or can be created.
fn check_dir(path: &Path) -> Result<String, String> {
    let mut existing = path;
    while !existing.exists() {
        match existing.parent() {
            Some(p) if !p.as_os_str().is_empty() => existing = p,
            _ => {
                existing = Path::new(".");
                break;
            }
        }
    }
    let probe = existing.join(format!(".iotpipe-check-{}", std::process::id()));
    match std::fs::write(&probe, b"") {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
            if existing == path {
                Ok(format!("{} writable", path.display()))
            } else {
                Ok(format!("{} does not exist yet; {} is writable", path.display(), existing.display()))
            }
        }
        Err(e) => Err(format!("{}: cannot write in {}: {e}", path.display(), existing.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_command_is_inferred_from_the_sections() {
        assert_eq!(infer(&set(&["kafka", "sink", "store"])), Some(Target::Sink));
        assert_eq!(infer(&set(&["kafka", "store"])), Some(Target::Sink));
        assert_eq!(infer(&set(&["mqtt", "store", "journal"])), Some(Target::Run));
        assert_eq!(infer(&set(&["mqtt", "kafka", "route"])), Some(Target::Bridge));
        assert_eq!(infer(&set(&["mqtt", "kafka", "journal"])), Some(Target::Bridge));
        assert_eq!(infer(&set(&["log"])), None);
    }

    #[test]
    fn a_journal_directory_is_writable_or_creatable() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_dir(dir.path()).is_ok());
        let below = dir.path().join("a/b/journal");
        assert!(check_dir(&below).unwrap().contains("does not exist yet"));
    }
}
