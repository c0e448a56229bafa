//! Command line: parse, load config, dispatch. Exit codes: 0 success,
//! 1 runtime failure (a failed check, a pipeline task that failed or ended,
//! a store that refuses the configured role), 2 bad config or arguments.

mod check;

use crate::config::{self, Config};
use crate::simulate::{self, SimulateArgs};
use crate::telemetry::{init_logging, LogFormat};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "iotpipe", version, about = "IoT telemetry pipeline: MQTT → Kafka with end-to-end acknowledgement.")]
#[command(long_about = "IoT telemetry pipeline. Devices publish JSON over MQTT on topics such as \
mtic/msg/client/realtime/{tenantId}/{projectId}; iotpipe forwards every message to Kafka and acks \
it to the broker only once Kafka has it.\n\nConfig: a TOML file (see `iotpipe config`), every key \
overridable as IOTPIPE_<SECTION>__<KEY>.")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// MQTT → Kafka. PUBACKs go to the broker only after Kafka acknowledged the message.
    Bridge {
        /// Config file (TOML). Without it: defaults plus IOTPIPE_* environment.
        #[arg(long, short, env = "IOTPIPE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Kafka → PostgreSQL/TimescaleDB or InfluxDB. Offsets are committed only after the database commit.
    Sink {
        /// Config file (TOML). Without it: defaults plus IOTPIPE_* environment.
        #[arg(long, short, env = "IOTPIPE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Everything on one machine without Kafka: MQTT → local journal → store (SQLite by default) + dashboard.
    Run {
        /// Config file (TOML). Without it: defaults plus IOTPIPE_* environment.
        #[arg(long, short, env = "IOTPIPE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Zero-config demo: embedded MQTT broker, simulated devices, the pipeline and the dashboard.
    Demo(crate::demo::DemoArgs),
    /// Publish simulated device telemetry (or count messages with --subscribe).
    ///
    /// Exits 0 once the broker acknowledged every message. At QoS 1 and 2 a
    /// lost connection (a broker restart) loses nothing: the publishes not
    /// yet acknowledged are sent again after the reconnect (at QoS 1 some may
    /// arrive twice).
    Simulate(SimulateArgs),
    /// Validate a config and try each connection the command it is for uses.
    ///
    /// bridge: MQTT and Kafka (and the journal directory); sink: Kafka and the
    /// store, with its schema version; run: MQTT, the store and the journal.
    /// Exits 0 when everything works, 1 when a check failed, 2 when the
    /// config is invalid.
    Check {
        /// Config file (TOML). Without it: defaults plus IOTPIPE_* environment.
        #[arg(long, short, env = "IOTPIPE_CONFIG")]
        config: Option<PathBuf>,
        /// Which command the config is for. Without it, the file (or the
        /// environment) must name exactly one command's own section:
        /// [bridge], [sink] or [run].
        #[arg(long, value_enum)]
        command: Option<config::Command>,
        /// Only validate the config; try no connection (for CI and
        /// manifests rendered without the services).
        #[arg(long)]
        offline: bool,
    },
    /// Print a documented example config.
    Config,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Config => {
            print!("{}", config::EXAMPLE);
            ExitCode::SUCCESS
        }
        Command::Bridge { config } => with_config(config, config::Command::Bridge, |cfg| {
            let settings = cfg.into_bridge();
            block_on(single_thread_runtime()?, async move {
                crate::pipeline::mqtt_kafka::run(settings, shutdown_signal()).await.map_err(|e| e.to_string())
            })
        }),
        Command::Sink { config } => with_config(config, config::Command::Sink, |cfg| {
            let settings = cfg.into_sink();
            block_on(runtime()?, async move {
                crate::pipeline::kafka_store::run(settings, shutdown_signal()).await.map_err(|e| e.to_string())
            })
        }),
        Command::Run { config } => with_config(config, config::Command::Run, |cfg| {
            let settings = cfg.into_run();
            let token = settings.http.token.clone();
            block_on(single_thread_runtime()?, async move {
                crate::pipeline::mqtt_store::run(
                    settings,
                    shutdown_signal(),
                    Some(crate::http::ui::routes(token)),
                    crate::pipeline::supervisor::Tasks::new(),
                )
                .await
                .map_err(|e| e.to_string())
            })
        }),
        Command::Demo(args) => {
            crate::telemetry::init_logging_dropping(
                "info,rumqttd=warn,rumqttc=warn",
                LogFormat::Text,
                crate::demo::is_clean_leave_noise,
            );
            crate::tls::install_crypto_provider();
            let res = single_thread_runtime()
                .and_then(|rt| block_on(rt, crate::demo::run(args, shutdown_signal())).map_err(|e| e.to_string()));
            finish(res)
        }
        Command::Check { config, command, offline } => check::main(config, command, offline),
        Command::Simulate(args) => {
            init_logging("warn", LogFormat::Text);
            let res = runtime().and_then(|rt| {
                rt.block_on(async {
                    match &args.subscribe {
                        Some(filter) => simulate::subscribe(&args, filter).await.map(|s| {
                            println!(
                                "received {} messages in {:.3} s ({:.0} msg/s)",
                                s.messages,
                                s.elapsed.as_secs_f64(),
                                s.rate()
                            );
                        }),
                        None => simulate::publish(&args).await.map(|s| {
                            println!(
                                "published {} messages in {:.3} s ({:.0} msg/s)",
                                s.messages,
                                s.elapsed.as_secs_f64(),
                                s.rate()
                            );
                            if s.reconnects.reconnects > 0 {
                                println!(
                                    "reconnected {} times; {} unacknowledged publishes sent again",
                                    s.reconnects.reconnects, s.reconnects.resent
                                );
                            }
                        }),
                    }
                    .map_err(|e| e.to_string())
                })
            });
            finish(res)
        }
    }
}

/// Load the config for `command` (exit 2 when it is invalid), start
/// logging, and run `f` with it.
fn with_config(
    path: Option<PathBuf>,
    command: config::Command,
    f: impl FnOnce(Config) -> Result<(), String>,
) -> ExitCode {
    let cfg = match load_for(path.as_deref(), command) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&cfg.log.level, cfg.log.format);
    crate::tls::install_crypto_provider();
    finish(f(cfg))
}

/// The config as `command` reads it, with the rules only that command has
/// (`run` serves the dashboard API, which must not be open by accident).
fn load_for(path: Option<&std::path::Path>, command: config::Command) -> Result<Config, config::ConfigError> {
    let cfg = config::load(path, command)?;
    if command == config::Command::Run {
        config::validate::validate_for_run(&cfg)?;
    }
    Ok(cfg)
}

fn finish(res: Result<(), String>) -> ExitCode {
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// Run `fut` to completion, then stop the runtime without waiting on calls
/// still blocking its pool (a Kafka metadata probe against a stalled broker
/// would otherwise hold the exit for seconds after the pipeline is done).
fn block_on<T>(rt: tokio::runtime::Runtime, fut: impl std::future::Future<Output = T>) -> T {
    let out = rt.block_on(fut);
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    out
}

/// The bridge's work (MQTT session, routing, the native Kafka producer) fits
/// one runtime thread; one thread avoids cross-thread wake-ups on every
/// message (measured: fewer context switches, lower CPU per message).
fn single_thread_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received."),
                    _ = int.recv() => tracing::info!("SIGINT received."),
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
