//! Is Kafka reachable? A metadata request, for `/readyz`, the
//! `iotpipe_kafka_reachable` gauges and `iotpipe check`. The request blocks,
//! so the periodic probe runs it on the blocking pool.

use super::KafkaConfig;
use crate::health::Health;
use rdkafka::error::KafkaError;
use std::sync::Arc;
use std::time::Duration;

/// How often Kafka reachability is checked.
const INTERVAL: Duration = Duration::from_secs(5);

/// How long one metadata request may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Asks the cluster for metadata: can the brokers be reached?
pub struct Prober {
    client: rdkafka::consumer::BaseConsumer,
}

impl Prober {
    pub fn new(cfg: &KafkaConfig) -> Result<Self, KafkaError> {
        Ok(Self { client: super::common_config(cfg).create()? })
    }

    /// Number of brokers in the metadata (blocking).
    pub fn check(&self, timeout: Duration) -> Result<usize, KafkaError> {
        let md = rdkafka::consumer::Consumer::fetch_metadata(&self.client, None, timeout)?;
        Ok(md.brokers().len())
    }
}

/// Probe every few seconds and report into `health`, logging changes.
/// Runs until the task is dropped; fails only if the client cannot be built.
pub async fn run_probe(cfg: KafkaConfig, health: Arc<Health>) -> Result<(), KafkaError> {
    let prober = Arc::new(Prober::new(&cfg)?);
    let mut first = true;
    loop {
        let p = prober.clone();
        let ok = tokio::task::spawn_blocking(move || p.check(PROBE_TIMEOUT).is_ok()).await.unwrap_or(false);
        if health.set_kafka_reachable(ok) != ok || (first && !ok) {
            if ok {
                tracing::info!(brokers = cfg.brokers, "Kafka reachable.");
            } else {
                tracing::warn!(brokers = cfg.brokers, "Kafka unreachable.");
            }
        }
        first = false;
        tokio::time::sleep(INTERVAL).await;
    }
}
