//! The commands that read the file, and what each is handed: the sections
//! it uses, as the settings type of its pipeline.

use super::Config;
use crate::pipeline::{BridgeSettings, RunSettings, SinkSettings};

/// A command that reads the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Command {
    Bridge,
    Sink,
    Run,
}

impl Command {
    pub const ALL: [Command; 3] = [Command::Bridge, Command::Sink, Command::Run];

    /// The command's name, which is also the name of its own section.
    pub fn name(self) -> &'static str {
        match self {
            Self::Bridge => "bridge",
            Self::Sink => "sink",
            Self::Run => "run",
        }
    }
}

impl Config {
    /// What `iotpipe bridge` reads.
    pub fn into_bridge(self) -> BridgeSettings {
        BridgeSettings {
            targets: self.route_targets(),
            mqtt: self.mqtt,
            route: self.route,
            kafka: self.kafka,
            bridge: self.bridge,
            http: self.http,
            journal: self.journal,
        }
    }

    /// What `iotpipe sink` reads.
    pub fn into_sink(self) -> SinkSettings {
        SinkSettings { kafka: self.kafka, sink: self.sink, store: self.store, http: self.http }
    }

    /// What `iotpipe run` reads; without `[journal]`, the journal's defaults.
    pub fn into_run(self) -> RunSettings {
        RunSettings {
            targets: self.route_targets(),
            mqtt: self.mqtt,
            route: self.route,
            run: self.run,
            store: self.store,
            journal: self.journal.unwrap_or_default(),
            http: self.http,
        }
    }
}
