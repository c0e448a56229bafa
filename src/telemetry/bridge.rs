//! The bridge's metrics and the log events that go with them.

use super::{counter, escape, gauge, Histogram};
use crate::record::DeadLetterReason;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// The bridge's metrics. Shared as `Arc<BridgeMetrics>`.
#[derive(Default)]
pub struct BridgeMetrics {
    pub received: AtomicU64,
    pub delivered: AtomicU64,
    dead_lettered: [AtomicU64; DeadLetterReason::ALL.len()],
    pub in_flight: AtomicI64,
    pub mqtt_reconnects: AtomicU64,
    pub mqtt_redelivered: AtomicU64,
    pub acks_sent: AtomicU64,
    /// Deliveries whose ack was not sent because the MQTT connection that
    /// carried the message had ended; the broker redelivers those.
    pub acks_abandoned: AtomicU64,
    pub kafka_retries: AtomicU64,
    pub kafka_producer_restarts: AtomicU64,
    /// Messages received while shutting down, left unacked for the broker to keep.
    pub left_with_broker: AtomicU64,
    pub mqtt_connected: AtomicBool,
    pub mqtt_subscribed: AtomicBool,
    pub kafka_reachable: AtomicBool,
    /// Journal mode: records appended and not yet delivered, and bytes on disk.
    pub journal_depth: AtomicI64,
    pub journal_bytes: AtomicI64,
    /// Journal mode: the journal refused appends (full).
    pub journal_full: AtomicBool,
    /// Records replayed from the journal at start-up (received by an earlier process).
    pub journal_replayed: AtomicU64,
    /// Journal mode: fdatasync calls for appends (one per group commit).
    pub journal_fsyncs: AtomicU64,
    pub delivery_latency: Histogram,
    per_tenant: Option<Mutex<HashMap<(String, String), u64>>>,
}

impl BridgeMetrics {
    pub fn new(per_tenant: bool) -> Self {
        Self { per_tenant: per_tenant.then(|| Mutex::new(HashMap::new())), ..Self::default() }
    }

    pub fn dead_lettered(&self, reason: DeadLetterReason) -> u64 {
        self.dead_lettered[reason as usize].load(Relaxed)
    }

    pub fn dead_lettered_total(&self) -> u64 {
        self.dead_lettered.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// A message accepted from MQTT into the pipeline.
    pub fn on_received(&self, redelivered: bool) {
        self.received.fetch_add(1, Relaxed);
        self.in_flight.fetch_add(1, Relaxed);
        if redelivered {
            self.mqtt_redelivered.fetch_add(1, Relaxed);
        }
    }

    /// Kafka acknowledged a message (or its dead letter).
    pub fn on_delivered(&self, reason: Option<DeadLetterReason>, tenant: &str, project: &str, latency: Duration) {
        self.in_flight.fetch_sub(1, Relaxed);
        self.delivery_latency.observe(latency);
        match reason {
            Some(r) => {
                self.dead_lettered[r as usize].fetch_add(1, Relaxed);
            }
            None => {
                self.delivered.fetch_add(1, Relaxed);
                if let Some(map) = &self.per_tenant {
                    if let Ok(mut m) = map.lock() {
                        *m.entry((tenant.to_string(), project.to_string())).or_insert(0) += 1;
                    }
                }
            }
        }
    }

    pub fn on_dead_letter_routed(&self, reason: DeadLetterReason, mqtt_topic: &str, detail: &str) {
        tracing::warn!(reason = reason.as_str(), mqtt_topic, detail, "Dead-lettering message.");
    }

    pub fn on_kafka_retry(&self, topic: &str, error: &str) {
        let n = self.kafka_retries.fetch_add(1, Relaxed);
        // One line per hundred retries: an outage must not flood the log.
        if n % 100 == 0 {
            tracing::warn!(topic, error, retries = n + 1, "Kafka delivery failed; sending again.");
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(4096);
        counter(&mut o, "iotpipe_messages_received_total", "Messages accepted from MQTT.", self.received.load(Relaxed));
        counter(
            &mut o,
            "iotpipe_messages_delivered_total",
            "Messages acknowledged by Kafka.",
            self.delivered.load(Relaxed),
        );
        let _ = writeln!(
            o,
            "# HELP iotpipe_messages_dead_lettered_total Messages written to the dead-letter topic, by reason.\n# TYPE iotpipe_messages_dead_lettered_total counter"
        );
        for r in DeadLetterReason::ALL {
            let _ = writeln!(
                o,
                "iotpipe_messages_dead_lettered_total{{reason=\"{}\"}} {}",
                r.as_str(),
                self.dead_lettered(r)
            );
        }
        gauge(
            &mut o,
            "iotpipe_messages_in_flight",
            "Messages received and not yet acknowledged by Kafka.",
            self.in_flight.load(Relaxed),
        );
        counter(&mut o, "iotpipe_mqtt_reconnects_total", "MQTT connections lost.", self.mqtt_reconnects.load(Relaxed));
        counter(
            &mut o,
            "iotpipe_mqtt_redelivered_total",
            "Messages the broker flagged as redelivered.",
            self.mqtt_redelivered.load(Relaxed),
        );
        counter(
            &mut o,
            "iotpipe_mqtt_acks_sent_total",
            "PUBACKs (or PUBRECs) handed to the MQTT client.",
            self.acks_sent.load(Relaxed),
        );
        counter(
            &mut o,
            "iotpipe_mqtt_acks_abandoned_total",
            "Delivered messages not acked because their MQTT connection had ended (the broker redelivers them).",
            self.acks_abandoned.load(Relaxed),
        );
        counter(
            &mut o,
            "iotpipe_mqtt_left_with_broker_total",
            "Messages received during shutdown and left unacked.",
            self.left_with_broker.load(Relaxed),
        );
        counter(
            &mut o,
            "iotpipe_kafka_retries_total",
            "Kafka deliveries that failed and were sent again.",
            self.kafka_retries.load(Relaxed),
        );
        counter(
            &mut o,
            "iotpipe_kafka_producer_restarts_total",
            "Kafka producers recreated after a fatal error.",
            self.kafka_producer_restarts.load(Relaxed),
        );
        gauge(
            &mut o,
            "iotpipe_mqtt_connected",
            "1 while connected to the MQTT broker.",
            i64::from(self.mqtt_connected.load(Relaxed)),
        );
        gauge(
            &mut o,
            "iotpipe_mqtt_subscribed",
            "1 once the subscriptions are in place.",
            i64::from(self.mqtt_subscribed.load(Relaxed)),
        );
        gauge(
            &mut o,
            "iotpipe_kafka_reachable",
            "1 while Kafka answers metadata requests.",
            i64::from(self.kafka_reachable.load(Relaxed)),
        );
        gauge(&mut o, "iotpipe_journal_depth", "Journal records not yet delivered.", self.journal_depth.load(Relaxed));
        gauge(&mut o, "iotpipe_journal_bytes", "Bytes of live journal segments.", self.journal_bytes.load(Relaxed));
        gauge(
            &mut o,
            "iotpipe_journal_full",
            "1 while the journal refuses appends.",
            i64::from(self.journal_full.load(Relaxed)),
        );
        counter(
            &mut o,
            "iotpipe_journal_replayed_total",
            "Journal records replayed at start-up.",
            self.journal_replayed.load(Relaxed),
        );
        counter(
            &mut o,
            "iotpipe_journal_fsyncs_total",
            "Journal fdatasync calls for appends (one per group commit).",
            self.journal_fsyncs.load(Relaxed),
        );
        self.delivery_latency.render(
            &mut o,
            "iotpipe_delivery_latency_seconds",
            "Time from receiving a message to Kafka acknowledging it.",
        );
        if let Some(map) = &self.per_tenant {
            let _ = writeln!(
                o,
                "# HELP iotpipe_tenant_messages_total Messages delivered, by tenant and project.\n# TYPE iotpipe_tenant_messages_total counter"
            );
            if let Ok(m) = map.lock() {
                for ((t, p), n) in m.iter() {
                    let _ = writeln!(
                        o,
                        "iotpipe_tenant_messages_total{{tenant_id=\"{}\",project_id=\"{}\"}} {n}",
                        escape(t),
                        escape(p)
                    );
                }
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_histogram() {
        let m = BridgeMetrics::new(true);
        m.on_received(false);
        m.on_received(true);
        m.on_delivered(None, "acme", "p\"1", Duration::from_millis(3));
        m.on_delivered(Some(DeadLetterReason::InvalidJson), "", "", Duration::from_millis(1));
        let text = m.render();
        assert!(text.contains("iotpipe_messages_received_total 2\n"));
        assert!(text.contains("iotpipe_messages_delivered_total 1\n"));
        assert!(text.contains("iotpipe_messages_dead_lettered_total{reason=\"invalid_json\"} 1\n"));
        assert!(text.contains("iotpipe_messages_in_flight 0\n"));
        assert!(text.contains("iotpipe_mqtt_redelivered_total 1\n"));
        assert!(text.contains("iotpipe_delivery_latency_seconds_bucket{le=\"0.002\"} 1\n"));
        assert!(text.contains("iotpipe_delivery_latency_seconds_bucket{le=\"0.005\"} 2\n"));
        assert!(text.contains("iotpipe_delivery_latency_seconds_count 2\n"));
        assert!(text.contains("iotpipe_tenant_messages_total{tenant_id=\"acme\",project_id=\"p\\\"1\"} 1\n"));
    }

    #[test]
    fn per_tenant_counters_are_off_by_default() {
        let m = BridgeMetrics::new(false);
        m.on_delivered(None, "acme", "p", Duration::ZERO);
        assert!(!m.render().contains("iotpipe_tenant_messages_total"));
    }
}
