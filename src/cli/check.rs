//! `iotpipe check`: validate the config, then try exactly what the command
//! it is for uses — MQTT and Kafka for `bridge`, Kafka and the store for
//! `sink`, MQTT and the store for `run` (and the journal directory where
//! there is one) — printing one line per check; Kafka step by step (TCP,
//! TLS handshake, authentication) so that a failure names its step. Nothing is created or
//! changed: the store's schema version is read, not migrated.

use crate::config::{Command, Config};
use crate::kafka::{ClientLibrary, Diagnosis, Prober, Step};
use crate::mqtt::{connect, Event};
use crate::store::Store;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// One line of the report.
struct Check {
    name: &'static str,
    result: Result<String, String>,
}

pub fn main(path: Option<PathBuf>, command: Option<Command>, offline: bool) -> ExitCode {
    let target = match command {
        Some(c) => c,
        None => match sections(path.as_deref()).and_then(|s| command_of(&s)) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let cfg = match super::load_for(path.as_deref(), target) {
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
        names = sections_in(&text).map_err(|e| format!("config file {} is not valid TOML: {e}", p.display()))?;
    }
    for (var, _) in std::env::vars() {
        if let Some((section, _)) = var.strip_prefix("IOTPIPE_").and_then(|r| r.split_once("__")) {
            names.insert(section.to_ascii_lowercase());
        }
    }
    Ok(names)
}

/// The top-level sections of a TOML text.
fn sections_in(text: &str) -> Result<BTreeSet<String>, toml::de::Error> {
    Ok(toml::from_str::<toml::Table>(text)?.keys().cloned().collect())
}

/// The command whose own section (`[bridge]`, `[sink]`, `[run]`) is the only
/// one named. The shared sections (`[mqtt]`, `[kafka]`, `[store]`, …) say
/// nothing: the same file often serves several commands.
fn command_of(sections: &BTreeSet<String>) -> Result<Command, String> {
    let named: Vec<Command> = Command::ALL.into_iter().filter(|c| sections.contains(c.name())).collect();
    match named.as_slice() {
        [one] => Ok(*one),
        [] => Err("the config names none of [bridge], [sink] and [run], so it does not say which command it is \
                   for; pass --command bridge, sink or run"
            .into()),
        several => {
            let names: Vec<String> = several.iter().map(|c| format!("[{}]", c.name())).collect();
            Err(format!(
                "the config has {} and so serves more than one command; pass --command {}",
                names.join(" and "),
                several.iter().map(|c| c.name()).collect::<Vec<_>>().join(" or ")
            ))
        }
    }
}

async fn run(cfg: &Config, target: Command) -> Vec<Check> {
    let mut checks = Vec::new();
    if target != Command::Sink {
        checks.push(Check { name: "mqtt", result: check_mqtt(cfg).await });
    }
    if target != Command::Run {
        let library = match target {
            Command::Sink => cfg.kafka.sink_library(&cfg.sink.properties),
            _ => cfg.kafka.bridge_library(),
        };
        checks.extend(check_kafka(cfg, library).await);
    }
    if target != Command::Bridge {
        let result = Store::inspect(&cfg.store)
            .await
            .map(|s| format!("{}: {}", s.describe, s.detail))
            .map_err(|e| e.to_string());
        checks.push(Check { name: "store", result });
    }
    let journal = match target {
        Command::Run => Some(cfg.journal.clone().unwrap_or_default()),
        _ => cfg.journal.clone(),
    };
    if let Some(j) = journal {
        checks.push(Check { name: "journal", result: check_dir(&j.path) });
    }
    checks
}

/// Kafka step by step: TCP to each bootstrap server, then a metadata
/// request through the client library the command runs (`library`), whose
/// failure names the TLS handshake or the authentication when that is
/// where it stopped.
async fn check_kafka(cfg: &Config, library: ClientLibrary) -> Vec<Check> {
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
    let timeout = Duration::from_secs(5);
    let outcome = match Prober::new(kafka, library, timeout) {
        Ok(prober) => prober.diagnose(timeout).await,
        Err(e) => Err(Diagnosis { step: Step::Other, detail: e.to_string() }),
    };
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
                Ok(_) => {}
                Err(e) => return Err(format!("{}: {e}", config.mqtt.url)),
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err(format!("{}: no answer within {timeout:?}", config.mqtt.url)));
    if outcome.is_ok() {
        client.disconnect();
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
    fn the_command_is_the_one_whose_own_section_is_named() {
        assert_eq!(command_of(&set(&["kafka", "sink", "store"])), Ok(Command::Sink));
        assert_eq!(command_of(&set(&["mqtt", "store", "journal", "run"])), Ok(Command::Run));
        assert_eq!(command_of(&set(&["mqtt", "kafka", "bridge", "journal"])), Ok(Command::Bridge));
        // A run config that also names [kafka] (the routing templates) is still run's.
        assert_eq!(command_of(&set(&["mqtt", "kafka", "store", "run"])), Ok(Command::Run));
    }

    #[test]
    fn a_config_that_does_not_name_one_command_asks_for_it() {
        for sections in [
            &["log"][..],
            &["mqtt", "kafka"],
            &["kafka", "store"],
            &["mqtt", "store", "journal"],
            &["mqtt", "kafka", "store", "sink", "bridge"],
        ] {
            let e = command_of(&set(sections)).unwrap_err();
            assert!(e.contains("--command"), "{sections:?}: {e}");
        }
        let e = command_of(&set(&["sink", "run"])).unwrap_err();
        assert!(e.contains("[sink] and [run]"), "{e}");
    }

    #[test]
    fn the_demo_config_is_a_run_config() {
        let dir = std::path::Path::new("/tmp/iotpipe-demo");
        let text = crate::demo::config_text("127.0.0.1:8080".parse().unwrap(), "127.0.0.1:1883".parse().unwrap(), dir);
        assert_eq!(command_of(&sections_in(&text).unwrap()), Ok(Command::Run));
    }

    #[test]
    fn a_journal_directory_is_writable_or_creatable() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_dir(dir.path()).is_ok());
        let below = dir.path().join("a/b/journal");
        assert!(check_dir(&below).unwrap().contains("does not exist yet"));
    }
}
