//! Is Kafka reachable? A metadata request, for `/readyz`, the
//! `iotpipe_kafka_reachable` gauges and `iotpipe check`. The request blocks,
//! so the periodic probe runs it on the blocking pool.
//!
//! The request names one topic (the dead-letter topic), never "all
//! topics": a metadata answer for every topic of a cluster grows with the
//! number of tenants (a topic per pair, thousands of partitions), and
//! librdkafka keeps what it is told in its metadata cache, so asking for all
//! of them every few seconds made every process pay for every topic of the
//! cluster (docs/topology.md).

use super::diagnosis::{Diagnosis, Reporting, Step};
use super::ClientError;
use super::KafkaConfig;
use crate::health::Health;
use rdkafka::consumer::Consumer as _;
use std::sync::Arc;
use std::time::Duration;

/// How often Kafka reachability is checked.
const INTERVAL: Duration = Duration::from_secs(5);

/// How long one metadata request may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Asks the cluster for metadata: can the brokers be reached?
pub struct Prober {
    client: rdkafka::consumer::BaseConsumer<Reporting>,
    /// The one topic the metadata request names (whether it exists does not matter).
    topic: String,
}

impl Prober {
    pub fn new(cfg: &KafkaConfig) -> Result<Self, ClientError> {
        let client = super::common_config(cfg).create_with_context(Reporting::new("probe"))?;
        Ok(Self { client, topic: cfg.dead_letter_topic.clone() })
    }

    /// Number of brokers in the metadata (blocking).
    pub fn check(&self, timeout: Duration) -> Result<usize, ClientError> {
        let md = rdkafka::consumer::Consumer::fetch_metadata(&self.client, Some(&self.topic), timeout)?;
        Ok(md.brokers().len())
    }

    /// Like [`check`](Self::check), but a failure says which step of
    /// connecting failed when librdkafka reported why.
    pub fn diagnose(&self, timeout: Duration) -> Result<usize, Diagnosis> {
        self.client.context().errors.clear();
        let result = self.check(timeout);
        // Error events reach the context when the client is polled.
        for _ in 0..32 {
            if self.client.poll(Duration::ZERO).is_none() {
                break;
            }
        }
        result.map_err(|e| {
            self.client.context().errors.last().unwrap_or_else(|| Diagnosis {
                step: Step::Other,
                detail: format!("no metadata within {timeout:?}: {e}"),
            })
        })
    }
}

/// Probe every few seconds and report into `health`, logging changes.
/// Runs until the task is dropped; fails only if the client cannot be built.
pub async fn run_probe(cfg: KafkaConfig, health: Arc<Health>) -> Result<(), ClientError> {
    let prober = Arc::new(Prober::new(&cfg)?);
    let mut first = true;
    loop {
        let p = prober.clone();
        let outcome = tokio::task::spawn_blocking(move || p.diagnose(PROBE_TIMEOUT))
            .await
            .unwrap_or_else(|e| Err(Diagnosis { step: Step::Other, detail: format!("the probe task failed: {e}") }));
        let ok = outcome.is_ok();
        if health.set_kafka_reachable(ok) != ok || (first && !ok) {
            match outcome {
                Ok(_) => tracing::info!(brokers = cfg.brokers, "Kafka reachable."),
                Err(d) => tracing::warn!(brokers = cfg.brokers, reason = %d, "Kafka unreachable: {d}."),
            }
        }
        first = false;
        tokio::time::sleep(INTERVAL).await;
    }
}
