//! Metrics of the message path from MQTT: received, delivered (acknowledged
//! by Kafka: `bridge`) or stored (committed to the store: `run`),
//! dead-lettered, in flight, the MQTT session, the Kafka producer and the
//! journal, and the log events that go with them.

use super::pairs::PairSeries;
use super::{clock, counter, escape, gauge, gauge_f64, Histogram};
use crate::record::DeadLetterReason;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// Most (tenant, project) series `iotpipe_tenant_messages_total` keeps; past
/// it the pairs delivered to least recently are dropped (`PairSeries`).
pub const MAX_TENANT_SERIES: usize = 5000;

/// Shared as `Arc<MessageMetrics>`.
#[derive(Default)]
pub struct MessageMetrics {
    pub received: AtomicU64,
    /// Messages Kafka acknowledged (`bridge`).
    pub delivered: AtomicU64,
    /// Messages committed to the store (`run`).
    pub stored: AtomicU64,
    dead_lettered: [AtomicU64; DeadLetterReason::ALL.len()],
    pub in_flight: AtomicI64,
    pub mqtt_reconnects: AtomicU64,
    pub mqtt_redelivered: AtomicU64,
    pub acks_sent: AtomicU64,
    /// Deliveries whose ack was not sent because the MQTT connection that
    /// carried the message had ended; the broker redelivers those.
    pub acks_abandoned: AtomicU64,
    /// QoS 1/2 messages the broker sent while `mqtt.max_in_flight` were
    /// already unacked (MQTT 5 receive maximum broken).
    pub mqtt_past_receive_maximum: AtomicU64,
    pub kafka_retries: AtomicU64,
    pub kafka_producer_restarts: AtomicU64,
    /// Messages received while shutting down, left unacked for the broker to keep.
    pub left_with_broker: AtomicU64,
    /// Journal: records appended and not yet delivered, and bytes on disk.
    pub journal_depth: AtomicI64,
    pub journal_bytes: AtomicI64,
    /// Records replayed from the journal at start-up (received by an earlier process).
    pub journal_replayed: AtomicU64,
    /// Journal: fdatasync calls for appends (one per group commit).
    pub journal_fsyncs: AtomicU64,
    /// Bridge, journal mode: records the feed passed on from the ingest's
    /// handoff (in memory, right after their commit), and records it read
    /// from the journal's files.
    pub journal_handed_over: AtomicU64,
    pub journal_read: AtomicU64,
    /// Journal: records read from the journal and not yet delivered (bounded
    /// by `journal.forward_max_records`), and their payload bytes.
    pub journal_forward_records: AtomicI64,
    pub journal_forward_bytes: AtomicI64,
    /// The journal's `max_size` (0: no journal).
    pub journal_limit_bytes: AtomicI64,
    pub delivery_latency: Histogram,
    /// When delivery last made progress, or work started waiting (ms on
    /// `clock::now_ms`): the base of `iotpipe_delivery_stalled_seconds`.
    progress_ms: AtomicU64,
    per_tenant: Option<Mutex<PairSeries<u64>>>,
    /// Dead letters logged so far (the log is thinned out past the first few).
    dead_letters_logged: AtomicU64,
}

/// Which groups of series a command exposes.
#[derive(Debug, Clone, Copy, Default)]
pub struct MessageSeries {
    /// The Kafka producer's, and messages delivered to Kafka (bridge).
    pub kafka: bool,
    /// Messages committed to the store (run, demo).
    pub store: bool,
    /// The journal's (run, demo, bridge with `[journal]`).
    pub journal: bool,
}

impl MessageMetrics {
    pub fn new(per_tenant: bool) -> Self {
        Self { per_tenant: per_tenant.then(|| Mutex::new(PairSeries::new(MAX_TENANT_SERIES))), ..Self::default() }
    }

    pub fn dead_lettered(&self, reason: DeadLetterReason) -> u64 {
        self.dead_lettered[reason.index()].load(Relaxed)
    }

    pub fn dead_lettered_total(&self) -> u64 {
        self.dead_lettered.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// A message accepted from MQTT into the pipeline.
    pub fn on_received(&self, redelivered: bool) {
        self.received.fetch_add(1, Relaxed);
        self.add_in_flight(1);
        if redelivered {
            self.mqtt_redelivered.fetch_add(1, Relaxed);
        }
    }

    /// `n` more messages wait for delivery (received, or replayed from the
    /// journal). Waiting starts the stall clock when nothing waited before.
    pub fn add_in_flight(&self, n: i64) {
        if self.in_flight.fetch_add(n, Relaxed) <= 0 && n > 0 {
            self.progress_ms.store(clock::now_ms(), Relaxed);
        }
    }

    /// Seconds since delivery last made progress while messages were
    /// waiting; 0 when none waits.
    pub fn stalled_seconds(&self) -> f64 {
        if self.in_flight.load(Relaxed) <= 0 {
            return 0.0;
        }
        clock::now_ms().saturating_sub(self.progress_ms.load(Relaxed)) as f64 / 1000.0
    }

    /// Delivery made progress now: called once per batch of
    /// [`Self::on_delivered`] / [`Self::on_stored`] calls (a clock read per
    /// batch, not per message).
    pub fn progressed(&self) {
        self.progress_ms.store(clock::now_ms(), Relaxed);
    }

    /// `bridge`: Kafka acknowledged a message (or its dead letter); the
    /// caller marks the batch's progress with [`Self::progressed`].
    pub fn on_delivered(&self, reason: Option<DeadLetterReason>, tenant: &str, project: &str, latency: Duration) {
        self.on_durable(&self.delivered, reason, tenant, project, latency);
    }

    /// `run`: a message (or its dead letter) is committed to the store;
    /// the caller marks the batch's progress with [`Self::progressed`].
    pub fn on_stored(&self, reason: Option<DeadLetterReason>, tenant: &str, project: &str, latency: Duration) {
        self.on_durable(&self.stored, reason, tenant, project, latency);
    }

    /// A message is durable downstream (or its dead letter is); `done`
    /// counts the messages, dead letters are counted by reason.
    fn on_durable(
        &self,
        done: &AtomicU64,
        reason: Option<DeadLetterReason>,
        tenant: &str,
        project: &str,
        latency: Duration,
    ) {
        self.in_flight.fetch_sub(1, Relaxed);
        self.delivery_latency.observe(latency);
        match reason {
            Some(r) => {
                self.dead_lettered[r.index()].fetch_add(1, Relaxed);
            }
            None => {
                done.fetch_add(1, Relaxed);
                if let Some(map) = &self.per_tenant {
                    if let Ok(mut m) = map.lock() {
                        m.touch(tenant, project, |n| *n += 1);
                    }
                }
            }
        }
    }

    /// Routing turned a message into a dead letter. Logged: the first ten,
    /// then one in a thousand (bad input must not flood the log).
    pub fn on_dead_letter_routed(&self, reason: DeadLetterReason, mqtt_topic: &str, detail: &str) {
        let n = self.dead_letters_logged.fetch_add(1, Relaxed) + 1;
        if n <= 10 || n % 1000 == 0 {
            let topic: String = mqtt_topic.chars().take(200).collect();
            tracing::warn!(reason = reason.as_str(), mqtt_topic = topic, detail, count = n, "Dead-lettering message.");
        }
    }

    pub fn on_kafka_retry(&self, topic: &str, error: &str) {
        let n = self.kafka_retries.fetch_add(1, Relaxed);
        // One line per hundred retries: an outage must not flood the log.
        if n % 100 == 0 {
            tracing::warn!(topic, error, retries = n + 1, "Kafka delivery failed; sending again.");
        }
    }

    /// Prometheus text of the series `series` selects.
    pub fn render(&self, o: &mut String, series: MessageSeries) {
        counter(o, "iotpipe_messages_received_total", "Messages accepted from MQTT.", self.received.load(Relaxed));
        if series.kafka {
            counter(
                o,
                "iotpipe_messages_delivered_total",
                "Messages acknowledged by Kafka.",
                self.delivered.load(Relaxed),
            );
        }
        if series.store {
            counter(o, "iotpipe_messages_stored_total", "Messages committed to the store.", self.stored.load(Relaxed));
        }
        let _ = writeln!(
            o,
            "# HELP iotpipe_messages_dead_lettered_total Messages dead-lettered, by reason.\n# TYPE iotpipe_messages_dead_lettered_total counter"
        );
        for r in DeadLetterReason::ALL {
            let n = self.dead_lettered(r);
            if DeadLetterReason::ROUTING.contains(&r) || n > 0 {
                let _ = writeln!(o, "iotpipe_messages_dead_lettered_total{{reason=\"{}\"}} {n}", r.as_str());
            }
        }
        gauge(
            o,
            "iotpipe_messages_in_flight",
            "Messages received and not yet durable downstream.",
            self.in_flight.load(Relaxed),
        );
        gauge_f64(
            o,
            "iotpipe_delivery_stalled_seconds",
            "Seconds since delivery downstream last made progress while messages were waiting (0: none waits).",
            self.stalled_seconds(),
        );
        counter(o, "iotpipe_mqtt_reconnects_total", "MQTT connections lost.", self.mqtt_reconnects.load(Relaxed));
        counter(
            o,
            "iotpipe_mqtt_redelivered_total",
            "Messages the broker flagged as redelivered.",
            self.mqtt_redelivered.load(Relaxed),
        );
        counter(
            o,
            "iotpipe_mqtt_acks_sent_total",
            "PUBACKs (or PUBRECs) handed to the MQTT client.",
            self.acks_sent.load(Relaxed),
        );
        counter(
            o,
            "iotpipe_mqtt_acks_abandoned_total",
            "Delivered messages not acked because their MQTT connection had ended (the broker redelivers them).",
            self.acks_abandoned.load(Relaxed),
        );
        counter(
            o,
            "iotpipe_mqtt_past_receive_maximum_total",
            "QoS 1/2 messages the broker sent while mqtt.max_in_flight were unacked (MQTT 5 receive maximum broken).",
            self.mqtt_past_receive_maximum.load(Relaxed),
        );
        counter(
            o,
            "iotpipe_mqtt_left_with_broker_total",
            "Messages received during shutdown and left unacked.",
            self.left_with_broker.load(Relaxed),
        );
        if series.kafka {
            counter(
                o,
                "iotpipe_kafka_retries_total",
                "Kafka deliveries that failed and were sent again.",
                self.kafka_retries.load(Relaxed),
            );
            counter(
                o,
                "iotpipe_kafka_producer_restarts_total",
                "Kafka producers recreated after a fatal error.",
                self.kafka_producer_restarts.load(Relaxed),
            );
        }
        if series.journal {
            self.render_journal(o);
        }
        self.delivery_latency.render(
            o,
            "iotpipe_delivery_latency_seconds",
            "Time from receiving a message to it being durable downstream (Kafka ack, or store commit in `run`).",
        );
        if let Some(map) = &self.per_tenant {
            let _ = writeln!(
                o,
                "# HELP iotpipe_tenant_messages_total Messages delivered to Kafka (bridge) or stored (run), by tenant and project.\n# TYPE iotpipe_tenant_messages_total counter"
            );
            if let Ok(m) = map.lock() {
                for (t, p, n) in m.sorted() {
                    let _ = writeln!(
                        o,
                        "iotpipe_tenant_messages_total{{tenant_id=\"{}\",project_id=\"{}\"}} {n}",
                        escape(t),
                        escape(p)
                    );
                }
                counter(
                    o,
                    "iotpipe_tenant_series_evicted_total",
                    "Tenant/project pairs dropped from iotpipe_tenant_messages_total to stay at its cap (least recently delivered first).",
                    m.evicted(),
                );
            }
        }
    }

    fn render_journal(&self, o: &mut String) {
        gauge(o, "iotpipe_journal_depth", "Journal records not yet delivered.", self.journal_depth.load(Relaxed));
        gauge(o, "iotpipe_journal_bytes", "Bytes of live journal segments.", self.journal_bytes.load(Relaxed));
        gauge(
            o,
            "iotpipe_journal_limit_bytes",
            "The journal's size limit (journal.max_size); appends are refused at it.",
            self.journal_limit_bytes.load(Relaxed),
        );
        counter(
            o,
            "iotpipe_journal_replayed_total",
            "Journal records replayed at start-up.",
            self.journal_replayed.load(Relaxed),
        );
        counter(
            o,
            "iotpipe_journal_fsyncs_total",
            "Journal fdatasync calls for appends (one per group commit).",
            self.journal_fsyncs.load(Relaxed),
        );
        counter(
            o,
            "iotpipe_journal_handed_over_total",
            "Bridge: journal records passed on to Kafka from memory right after their commit.",
            self.journal_handed_over.load(Relaxed),
        );
        counter(
            o,
            "iotpipe_journal_read_total",
            "Bridge: journal records read back from the journal's files to pass on to Kafka.",
            self.journal_read.load(Relaxed),
        );
        gauge(
            o,
            "iotpipe_journal_forward_records",
            "Records read from the journal and not yet delivered (at most journal.forward_max_records).",
            self.journal_forward_records.load(Relaxed),
        );
        gauge(
            o,
            "iotpipe_journal_forward_bytes",
            "Payload bytes read from the journal and not yet delivered (at most journal.forward_max_bytes).",
            self.journal_forward_bytes.load(Relaxed),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &MessageMetrics, series: MessageSeries) -> String {
        let mut o = String::new();
        m.render(&mut o, series);
        o
    }

    /// The stall clock moves once per batch (`progressed`), not with each
    /// message counted: a batch of deliveries reads the clock once.
    #[test]
    fn progress_is_marked_per_batch() {
        let m = MessageMetrics::new(true);
        m.add_in_flight(2);
        m.progress_ms.store(u64::MAX, Relaxed); // "later than now": no stall shows
        m.on_delivered(None, "acme", "p", Duration::ZERO);
        m.on_stored(None, "acme", "p", Duration::ZERO);
        assert_eq!(m.progress_ms.load(Relaxed), u64::MAX, "counting a message does not read the clock");
        m.progressed();
        assert!(m.progress_ms.load(Relaxed) <= clock::now_ms());
        assert_eq!(m.stalled_seconds(), 0.0, "nothing waits after both were counted");
    }

    #[test]
    fn renders_counters_gauges_and_histogram() {
        let m = MessageMetrics::new(true);
        m.on_received(false);
        m.on_received(true);
        m.on_delivered(None, "acme", "p\"1", Duration::from_millis(3));
        m.on_delivered(Some(DeadLetterReason::InvalidJson), "", "", Duration::from_millis(1));
        let text = text(&m, MessageSeries { kafka: true, store: false, journal: false });
        assert!(text.contains("iotpipe_messages_received_total 2\n"));
        assert!(text.contains("iotpipe_messages_delivered_total 1\n"));
        assert!(!text.contains("iotpipe_messages_stored_total"), "the bridge stores nothing");
        assert!(text.contains("iotpipe_messages_dead_lettered_total{reason=\"invalid_json\"} 1\n"));
        assert!(text.contains("iotpipe_messages_dead_lettered_total{reason=\"oversize\"} 0\n"));
        assert!(!text.contains("reason=\"store_rejected\""), "reasons routing never gives stay out until they happen");
        assert!(text.contains("iotpipe_messages_in_flight 0\n"));
        assert!(text.contains("iotpipe_mqtt_redelivered_total 1\n"));
        assert!(text.contains("iotpipe_kafka_retries_total 0\n"));
        assert!(!text.contains("iotpipe_journal_depth"), "no journal, no journal series");
        assert!(text.contains("iotpipe_delivery_latency_seconds_bucket{le=\"0.002\"} 1\n"));
        assert!(text.contains("iotpipe_delivery_latency_seconds_bucket{le=\"0.005\"} 2\n"));
        assert!(text.contains("iotpipe_delivery_latency_seconds_count 2\n"));
        assert!(text.contains("iotpipe_tenant_messages_total{tenant_id=\"acme\",project_id=\"p\\\"1\"} 1\n"));
    }

    #[test]
    fn run_counts_what_it_stored_not_what_kafka_acknowledged() {
        let m = MessageMetrics::new(true);
        m.on_received(false);
        m.on_received(false);
        m.on_stored(None, "acme", "p", Duration::from_millis(3));
        m.on_stored(Some(DeadLetterReason::InvalidJson), "", "", Duration::from_millis(1));
        let text = text(&m, MessageSeries { kafka: false, store: true, journal: true });
        assert!(text.contains("iotpipe_messages_stored_total 1\n"), "{text}");
        assert!(!text.contains("iotpipe_messages_delivered_total"), "run has no Kafka to deliver to:\n{text}");
        assert!(text.contains("iotpipe_messages_dead_lettered_total{reason=\"invalid_json\"} 1\n"));
        assert!(text.contains("iotpipe_messages_in_flight 0\n"));
        assert!(text.contains("iotpipe_tenant_messages_total{tenant_id=\"acme\",project_id=\"p\"} 1\n"));
        assert_eq!((m.stored.load(Relaxed), m.delivered.load(Relaxed)), (1, 0));
    }

    #[test]
    fn per_tenant_counters_are_off_by_default() {
        let m = MessageMetrics::new(false);
        m.on_delivered(None, "acme", "p", Duration::ZERO);
        assert!(!text(&m, MessageSeries::default()).contains("iotpipe_tenant_messages_total"));
        assert!(!text(&m, MessageSeries::default()).contains("iotpipe_kafka_retries_total"));
    }

    #[test]
    fn per_tenant_series_are_capped() {
        let m = MessageMetrics::new(true);
        for i in 0..(MAX_TENANT_SERIES + 50) {
            m.on_delivered(None, &format!("t{i}"), "p", Duration::ZERO);
        }
        let t = text(&m, MessageSeries::default());
        let series = t.lines().filter(|l| l.starts_with("iotpipe_tenant_messages_total{")).count();
        assert!(series <= MAX_TENANT_SERIES, "{series}");
        assert!(t.contains(&format!(
            "iotpipe_tenant_messages_total{{tenant_id=\"t{}\",project_id=\"p\"}} 1\n",
            MAX_TENANT_SERIES + 49
        )));
        assert!(!t.contains("tenant_id=\"t0\""), "the least recently delivered pair went first");
        assert!(t.contains(&format!("iotpipe_tenant_series_evicted_total {}\n", MAX_TENANT_SERIES + 50 - series)));
    }
}
