//! Health: the one place that knows whether the running command is ready.
//!
//! Components report their state here (the MQTT session, the Kafka probe,
//! the store writer, the journal, shutdown); `/readyz`, `/api/health` and the
//! state gauges of `/metrics` read it. A command only has the parts it uses
//! (`run` has no Kafka), so it never reports on something it does not have.
//!
//! A command with a journal starts *recovering* it (the HTTP endpoints are
//! up while every undelivered segment is read) until the pipeline says it
//! is open.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

/// Which parts the running command has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Parts {
    /// An MQTT session (bridge, run, demo).
    pub mqtt: bool,
    /// A Kafka client (bridge, sink).
    pub kafka: bool,
    /// A store connection (sink, run, demo).
    pub store: bool,
    /// A local journal (run, demo, bridge with `[journal]`).
    pub journal: bool,
}

/// Shared state; clone the `Arc`.
#[derive(Debug, Default)]
pub struct Health {
    parts: Parts,
    mqtt_connected: AtomicBool,
    mqtt_subscribed: AtomicBool,
    kafka_reachable: AtomicBool,
    store_reachable: AtomicBool,
    journal_recovering: AtomicBool,
    journal_full: AtomicBool,
    draining: AtomicBool,
}

impl Health {
    /// A command with a journal starts with it recovering.
    pub fn new(parts: Parts) -> Arc<Self> {
        Arc::new(Self { parts, journal_recovering: AtomicBool::new(parts.journal), ..Self::default() })
    }

    pub fn parts(&self) -> Parts {
        self.parts
    }

    /// The MQTT connection came up (`true`) or went down; returns the previous value.
    pub fn set_mqtt_connected(&self, up: bool) -> bool {
        if !up {
            self.mqtt_subscribed.store(false, Relaxed);
        }
        self.mqtt_connected.swap(up, Relaxed)
    }

    pub fn set_mqtt_subscribed(&self, yes: bool) {
        self.mqtt_subscribed.store(yes, Relaxed);
    }

    /// Kafka answered (or stopped answering) the probe; returns the previous value.
    pub fn set_kafka_reachable(&self, yes: bool) -> bool {
        self.kafka_reachable.swap(yes, Relaxed)
    }

    /// The store accepted a write (or failed one); returns the previous value.
    pub fn set_store_reachable(&self, yes: bool) -> bool {
        self.store_reachable.swap(yes, Relaxed)
    }

    /// The journal is being recovered (`true`) or is open.
    pub fn set_journal_recovering(&self, yes: bool) {
        self.journal_recovering.store(yes, Relaxed);
    }

    /// The journal refuses appends (full) or accepts them again; returns the previous value.
    pub fn set_journal_full(&self, yes: bool) -> bool {
        self.journal_full.swap(yes, Relaxed)
    }

    /// Shutdown began: no longer ready for new work.
    pub fn set_draining(&self) {
        self.draining.store(true, Relaxed);
    }

    pub fn mqtt_connected(&self) -> bool {
        self.mqtt_connected.load(Relaxed)
    }

    pub fn mqtt_subscribed(&self) -> bool {
        self.mqtt_subscribed.load(Relaxed)
    }

    pub fn kafka_reachable(&self) -> bool {
        self.kafka_reachable.load(Relaxed)
    }

    pub fn store_reachable(&self) -> bool {
        self.store_reachable.load(Relaxed)
    }

    pub fn journal_recovering(&self) -> bool {
        self.journal_recovering.load(Relaxed)
    }

    pub fn journal_full(&self) -> bool {
        self.journal_full.load(Relaxed)
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    /// Why the command is not ready; empty when it is.
    pub fn problems(&self) -> Vec<&'static str> {
        let p = self.parts;
        let mut why = Vec::new();
        if self.draining() {
            why.push("shutting down");
        }
        if p.journal && self.journal_recovering() {
            why.push("recovering journal");
        }
        if p.mqtt {
            if !self.mqtt_connected() {
                why.push("MQTT not connected");
            } else if !self.mqtt_subscribed() {
                why.push("MQTT not subscribed");
            }
        }
        if p.kafka && !self.kafka_reachable() {
            why.push("Kafka not reachable");
        }
        if p.store && !self.store_reachable() {
            why.push("store not reachable");
        }
        if p.journal && self.journal_full() {
            why.push("journal full (MQTT acks paused)");
        }
        why
    }

    /// `Ok` when ready, else the reasons joined for `/readyz`.
    pub fn ready(&self) -> Result<(), String> {
        let why = self.problems();
        if why.is_empty() {
            Ok(())
        } else {
            Err(why.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_names_only_the_parts_the_command_has() {
        let run = Health::new(Parts { mqtt: true, store: true, journal: true, kafka: false });
        assert_eq!(run.problems(), ["recovering journal", "MQTT not connected", "store not reachable"]);
        run.set_journal_recovering(false);
        run.set_mqtt_connected(true);
        run.set_mqtt_subscribed(true);
        run.set_store_reachable(true);
        assert_eq!(run.ready(), Ok(()), "no Kafka in `run`: its absence is not a problem");
        run.set_journal_full(true);
        assert_eq!(run.ready(), Err("journal full (MQTT acks paused)".into()));

        let sink = Health::new(Parts { kafka: true, store: true, ..Parts::default() });
        assert!(!sink.journal_recovering(), "no journal, nothing to recover");
        assert_eq!(sink.problems(), ["Kafka not reachable", "store not reachable"]);
        sink.set_draining();
        assert_eq!(sink.problems()[0], "shutting down");
    }

    #[test]
    fn a_lost_connection_is_no_longer_subscribed() {
        let h = Health::new(Parts { mqtt: true, ..Parts::default() });
        h.set_mqtt_connected(true);
        h.set_mqtt_subscribed(true);
        assert!(h.set_mqtt_connected(false), "it was connected");
        assert!(!h.mqtt_subscribed());
        assert_eq!(h.problems(), ["MQTT not connected"]);
    }
}
