//! Is Kafka reachable? A metadata request, for `/readyz`, the
//! `iotpipe_kafka_reachable` gauges and `iotpipe check`, on the process's
//! client library ([`ClientLibrary`]). librdkafka's request blocks, so it
//! runs on the blocking pool.
//!
//! The request names one topic (the dead-letter topic), never "all
//! topics": a metadata answer for every topic of a cluster grows with the
//! number of tenants (a topic per pair, thousands of partitions), and
//! librdkafka keeps what it is told in its metadata cache, so asking for all
//! of them every few seconds made every process pay for every topic of the
//! cluster (docs/topology.md).

use super::diagnosis::{Diagnosis, Reporting, Step};
use super::native::NativeAdmin;
use super::ClientError;
use super::{ClientLibrary, KafkaConfig};
use crate::health::Health;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use std::sync::Arc;
use std::time::Duration;

/// How often Kafka reachability is checked.
const INTERVAL: Duration = Duration::from_secs(5);

/// How long one metadata request may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Asks the cluster for metadata: can the brokers be reached?
pub struct Prober {
    client: Client,
    /// The one topic the metadata request names (whether it exists does not matter).
    topic: String,
}

enum Client {
    Native(Box<tokio::sync::Mutex<NativeAdmin>>),
    Librdkafka(Arc<BaseConsumer<Reporting>>),
}

impl Prober {
    /// A prober on `library`, whose requests give up after `timeout`.
    pub fn new(cfg: &KafkaConfig, library: ClientLibrary, timeout: Duration) -> Result<Self, ClientError> {
        let client = match library {
            ClientLibrary::Native => {
                Client::Native(Box::new(tokio::sync::Mutex::new(NativeAdmin::probe(cfg, timeout)?)))
            }
            ClientLibrary::Librdkafka => {
                Client::Librdkafka(Arc::new(super::common_config(cfg).create_with_context(Reporting::new("probe"))?))
            }
        };
        Ok(Self { client, topic: cfg.dead_letter_topic.clone() })
    }

    /// The number of brokers in the metadata, or which step of connecting
    /// failed (for librdkafka, when it reported why).
    pub async fn diagnose(&self, timeout: Duration) -> Result<usize, Diagnosis> {
        match &self.client {
            Client::Native(admin) => {
                let mut admin = admin.lock().await;
                match tokio::time::timeout(timeout, admin.metadata(&self.topic)).await {
                    Ok(Ok(md)) => Ok(md.brokers.len()),
                    Ok(Err(e)) => Err(e.diagnosis()),
                    Err(_) => {
                        admin.disconnect();
                        Err(Diagnosis { step: Step::Other, detail: format!("no metadata within {timeout:?}") })
                    }
                }
            }
            Client::Librdkafka(client) => {
                let (client, topic) = (client.clone(), self.topic.clone());
                tokio::task::spawn_blocking(move || diagnose_blocking(&client, &topic, timeout)).await.unwrap_or_else(
                    |e| Err(Diagnosis { step: Step::Other, detail: format!("the probe task failed: {e}") }),
                )
            }
        }
    }
}

/// librdkafka's metadata request; a failure says which step of connecting
/// failed when librdkafka reported why.
fn diagnose_blocking(client: &BaseConsumer<Reporting>, topic: &str, timeout: Duration) -> Result<usize, Diagnosis> {
    client.context().errors.clear();
    let result = client.fetch_metadata(Some(topic), timeout).map(|md| md.brokers().len());
    // Error events reach the context when the client is polled.
    for _ in 0..32 {
        if client.poll(Duration::ZERO).is_none() {
            break;
        }
    }
    result.map_err(|e| {
        client
            .context()
            .errors
            .last()
            .unwrap_or_else(|| Diagnosis { step: Step::Other, detail: format!("no metadata within {timeout:?}: {e}") })
    })
}

/// Probe every few seconds and report into `health`, logging changes.
/// Runs until the task is dropped; fails only if the client cannot be built.
pub async fn run_probe(cfg: KafkaConfig, library: ClientLibrary, health: Arc<Health>) -> Result<(), ClientError> {
    let prober = Prober::new(&cfg, library, PROBE_TIMEOUT)?;
    let mut first = true;
    loop {
        let outcome = prober.diagnose(PROBE_TIMEOUT).await;
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
