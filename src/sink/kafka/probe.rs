//! Kafka reachability for /readyz, checked on a thread of its own (the
//! metadata request blocks).

use super::Prober;
use crate::config::KafkaConfig;
use std::sync::Arc;
use std::time::Duration;

/// How often Kafka reachability is checked.
const INTERVAL: Duration = Duration::from_secs(5);

/// Where the probe reports; returns the previous value.
pub trait Reachability: Send + Sync + 'static {
    fn set(&self, ok: bool) -> bool;
}

pub fn spawn_probe(cfg: &KafkaConfig, flag: Arc<dyn Reachability>) -> Result<(), rdkafka::error::KafkaError> {
    let prober = Prober::new(cfg)?;
    let brokers = cfg.brokers.clone();
    let spawned = std::thread::Builder::new().name("kafka-probe".into()).spawn(move || loop {
        let ok = prober.check(Duration::from_secs(3)).is_ok();
        if flag.set(ok) != ok {
            if ok {
                tracing::info!(brokers, "Kafka reachable.");
            } else {
                tracing::warn!(brokers, "Kafka unreachable.");
            }
        }
        std::thread::sleep(INTERVAL);
    });
    if let Err(error) = spawned {
        tracing::error!(%error, "Cannot start the Kafka probe thread; /readyz will report Kafka unreachable.");
    }
    Ok(())
}
