//! The MQTT side of `bridge` and `run`: the persistent session on its own
//! task, and the ack handle through which whatever makes a message durable
//! releases its PUBACK. The supervisor's drain and stop signals reach the
//! session here; the supervisor's tick retries acks the client had no room
//! for (`acks.flush()`), and `acks.outstanding() == 0` tells it that every
//! received message has been acked (`acks.settled()`: and that a member
//! leaving its shared group expects no more).

use super::supervisor::{Signals, Tasks};
use super::PipelineError;
use crate::health::Health;
use crate::mqtt::{AckHandle, MqttConfig, Received, Source};
use crate::telemetry::MessageMetrics;
use std::sync::Arc;
use tokio::sync::mpsc;

pub struct Ingress {
    /// Completes messages (in any order) and sends their acks (in order).
    pub acks: AckHandle,
    /// The received messages, in arrival order.
    pub messages: mpsc::Receiver<Received>,
}

impl Ingress {
    /// Configure the session and start it as the `mqtt-session` task.
    pub fn start(
        cfg: &MqttConfig,
        metrics: Arc<MessageMetrics>,
        health: Arc<Health>,
        tasks: &mut Tasks,
        signals: &Signals,
    ) -> Result<Self, PipelineError> {
        let source = Source::new(cfg, metrics, health)?;
        let acks = source.acks();
        // Room for every message the session can hold unacked (it stops
        // reading past `max_in_flight + 1`), so sending does not wait and
        // the session task keeps writing acks and pings whatever downstream
        // does. (Just after a reconnect the channel may still hold messages
        // of the ended connection, which no longer count: then a send can
        // wait until they are taken.)
        let (tx, messages) = mpsc::channel::<Received>(usize::from(cfg.max_in_flight) + 1);
        tasks.finishing("mqtt-session", source.run(tx, signals.drain(), signals.stop()));
        Ok(Self { acks, messages })
    }
}
