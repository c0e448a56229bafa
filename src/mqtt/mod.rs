//! MQTT source: a persistent session whose PUBACKs are sent only when the
//! pipeline says a message is durable, in arrival order.
//!
//! The task that polls the session never waits on an ack: acks are queued
//! with `try_ack_many` by whoever completes a message, the session writes all
//! that are queued in one go, and the connection epoch guards against
//! acking on a connection that did not deliver the message.

mod config;
mod options;
mod sequencer;
mod session;
mod wire;

pub use config::{parse_mqtt_url, MqttConfig, MqttUrl, MqttVersion, Qos};
pub use options::{install_crypto_provider, OptionsError};
pub use sequencer::Sequencer;
pub use session::{connect, AckToken, Client, Driver, Event, SessionError};

use crate::health::Health;
use crate::record::Inbound;
use crate::retry::RetryPolicy;
use crate::shutdown::{Drain, Stop};
use crate::telemetry::MessageMetrics;
use std::collections::VecDeque;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A message handed to the pipeline with its place in the ack order.
#[derive(Debug)]
pub struct Received {
    pub seq: u64,
    pub msg: Inbound,
}

struct AckState {
    seq: Sequencer<AckToken>,
    leave: Leave,
    /// Incremented when a connection ends.
    epoch: u64,
    /// Acks released by the sequencer that the session's outbox had no room for yet.
    queued: VecDeque<AckToken>,
}

/// Shared between the session task (registers messages) and the pipeline
/// (completes them).
#[derive(Clone)]
pub struct AckHandle {
    state: Arc<Mutex<AckState>>,
    client: Client,
    metrics: Arc<MessageMetrics>,
    /// MQTT 5's receive maximum (`mqtt.max_in_flight`): the server must not
    /// send more QoS 1/2 messages than this unacked [MQTT-3.3.4-9]. `None`
    /// with 3.1.1, where the broker's own setting is the window.
    receive_maximum: Option<usize>,
    /// With 3.1.1: the most messages seen unacked at once, the window as
    /// far as it is known.
    peak_unacked: Arc<AtomicUsize>,
}

impl AckHandle {
    fn new(client: Client, metrics: Arc<MessageMetrics>, receive_maximum: Option<usize>) -> Self {
        let state = AckState { seq: Sequencer::new(), leave: Leave::Staying, epoch: 0, queued: VecDeque::new() };
        Self {
            state: Arc::new(Mutex::new(state)),
            client,
            metrics,
            receive_maximum,
            peak_unacked: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, AckState> {
        // A poisoned lock means a panic elsewhere; the state itself stays consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register a received message: its sequence number, and whether it is
    /// a QoS 1/2 message that came past the receive maximum. The broker's
    /// window holds every message it has no PUBACK for: those whose ack
    /// waits in the sequencer and those queued for the session's outbox.
    fn register(&self, token: Option<AckToken>) -> (u64, bool) {
        let mut s = self.lock();
        let epoch = s.epoch;
        let counted = token.is_some();
        let seq = s.seq.push(epoch, token);
        let unacked = s.seq.tokens() + s.queued.len();
        match self.receive_maximum {
            Some(max) => (seq, counted && unacked > max),
            None => {
                self.peak_unacked.fetch_max(unacked, Relaxed);
                (seq, false)
            }
        }
    }

    /// How many messages the broker sends before it waits for acks: the
    /// receive maximum with MQTT 5; with 3.1.1 (the broker's own setting)
    /// the most seen unacked at once so far.
    pub fn window(&self) -> usize {
        self.receive_maximum.unwrap_or_else(|| self.peak_unacked.load(Relaxed))
    }

    /// The message `seq` is durable downstream: ack it, and whatever it was holding back.
    pub fn complete(&self, seq: u64) {
        let mut s = self.lock();
        s.seq.complete(seq);
        self.release(&mut s);
    }

    /// Several messages are durable (a journal batch's fsync): one lock and
    /// one release for all of them.
    pub fn complete_many(&self, seqs: &[u64]) {
        let mut s = self.lock();
        for &seq in seqs {
            s.seq.complete(seq);
        }
        self.release(&mut s);
    }

    /// Retry acks that did not fit in the session's outbox.
    pub fn flush(&self) {
        let mut s = self.lock();
        self.release(&mut s);
    }

    /// Messages received and not yet acked (or abandoned).
    pub fn outstanding(&self) -> usize {
        let s = self.lock();
        s.seq.len() + s.queued.len()
    }

    /// False while a shared-group member that is leaving may still be sent
    /// messages: its UNSUBACKs are not all in, or the last message arrived
    /// less than [`LEAVE_QUIET`] ago. Always true for a member that stays.
    pub fn settled(&self) -> bool {
        match self.lock().leave {
            Leave::Staying => true,
            Leave::Requested { .. } => false,
            Leave::Left { last } => last.elapsed() >= LEAVE_QUIET,
        }
    }

    fn set_leave(&self, leave: Leave) {
        self.lock().leave = leave;
    }

    /// One UNSUBACK came in; true when it was the last one awaited.
    fn unsubscribed(&self) -> bool {
        let mut s = self.lock();
        match s.leave {
            Leave::Requested { waiting } if waiting > 1 => {
                s.leave = Leave::Requested { waiting: waiting - 1 };
                false
            }
            Leave::Requested { .. } => {
                s.leave = Leave::Left { last: Instant::now() };
                true
            }
            _ => false,
        }
    }

    /// A message arrived: a member that has left waits a little longer.
    fn arrived(&self) {
        let mut s = self.lock();
        if let Leave::Left { .. } = s.leave {
            s.leave = Leave::Left { last: Instant::now() };
        }
    }

    fn release(&self, s: &mut AckState) {
        let epoch = s.epoch;
        let AckState { seq, queued, .. } = s;
        let drained = seq.drain_ready(epoch, queued);
        if drained.abandoned > 0 {
            self.metrics.acks_abandoned.fetch_add(drained.abandoned, Relaxed);
        }
        if !s.queued.is_empty() {
            let sent = self.client.try_ack_many(&mut s.queued);
            self.metrics.acks_sent.fetch_add(sent as u64, Relaxed);
        }
    }

    /// The connection ended: nothing received on it may be acked any more.
    fn end_epoch(&self, driver: &mut Driver) {
        let mut s = self.lock();
        s.epoch += 1;
        let dropped = s.queued.len() as u64;
        s.queued.clear();
        self.metrics.acks_abandoned.fetch_add(dropped, Relaxed);
        // Under the lock, so no ack of the old epoch can slip in after this.
        driver.clean();
        self.release(&mut s);
    }
}

/// Leaving a shared subscription group on shutdown
/// (`mqtt.leave_group_on_shutdown`).
#[derive(Debug, Clone, Copy)]
enum Leave {
    Staying,
    /// UNSUBSCRIBEs sent; this many UNSUBACKs still to come.
    Requested {
        waiting: usize,
    },
    /// Unsubscribed; `last` is when the latest message (or the UNSUBACK) came.
    Left {
        last: Instant,
    },
}

/// After the UNSUBACK, what the broker had already queued for this member
/// still arrives; the drain waits until nothing has come for this long.
pub const LEAVE_QUIET: Duration = Duration::from_millis(500);

/// Everything the session task needs.
pub struct Source {
    cfg: MqttConfig,
    filters: Vec<String>,
    driver: Driver,
    client: Client,
    acks: AckHandle,
    metrics: Arc<MessageMetrics>,
    health: Arc<Health>,
}

/// Why the session task ended before it was told to stop.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The pipeline stopped taking messages (the task reading them ended).
    #[error("the pipeline stopped taking MQTT messages")]
    Downstream,
}

impl Source {
    pub fn new(cfg: &MqttConfig, metrics: Arc<MessageMetrics>, health: Arc<Health>) -> Result<Self, OptionsError> {
        let client_id = cfg.effective_client_id();
        let (client, driver) = connect(cfg, &client_id, false)?;
        let filters = cfg
            .topics
            .iter()
            .map(|t| match &cfg.shared_group {
                Some(g) => format!("$share/{g}/{t}"),
                None => t.clone(),
            })
            .collect();
        let receive_maximum = (cfg.version == MqttVersion::V5).then_some(usize::from(cfg.max_in_flight));
        let acks = AckHandle::new(client.clone(), metrics.clone(), receive_maximum);
        tracing::info!(client_id, url = cfg.url, "MQTT session configured.");
        Ok(Self { cfg: cfg.clone(), filters, driver, client, acks, metrics, health })
    }

    pub fn acks(&self) -> AckHandle {
        self.acks.clone()
    }

    /// Poll the session until `stop` is set and the disconnect went out.
    /// Once `drain` is set, new messages are left unacked with the broker.
    /// Ends early only when nothing takes the messages any more.
    pub async fn run(
        mut self,
        tx: mpsc::Sender<Received>,
        mut drain: Drain,
        mut stop: Stop,
    ) -> Result<(), SourceError> {
        let mut backoff =
            RetryPolicy::new(self.cfg.reconnect_backoff_min.get(), self.cfg.reconnect_backoff_max.get()).backoff();
        let mut last_error: Option<String> = None;
        // Whether the broker accepted our subscriptions (SUBACK without
        // failures): only then does a resumed session (session_present)
        // still hold them. A refused or unanswered request is sent again on
        // the next connection.
        let mut accepted = false;
        let mut draining = false;
        // Draining by leaving the shared group: what still arrives is taken,
        // not left with the broker.
        let mut leaving = false;
        let mut stopping = false;
        // The broker sending past the receive maximum is warned about once per connection.
        let mut warned_past_window = false;
        // What the session holds unacked is bounded whatever the broker
        // does: past the window (plus the one message that shows the broker
        // sent past it) the session stops taking messages until acks go out.
        let acks = self.acks.clone();
        let window = usize::from(self.cfg.max_in_flight);
        let may_read = || acks.outstanding() <= window;
        // The stop and drain signals, waited on for the whole run: a fresh
        // wait per event (a lock, a waiter registered and removed) cost ~3%
        // of the bridge's CPU per message (BENCHMARKS.md, "Bridge profile").
        let stop_signal = stop.until_set();
        tokio::pin!(stop_signal);
        let drain_signal = drain.until_set();
        tokio::pin!(drain_signal);
        loop {
            let event = tokio::select! {
                biased;
                () = &mut stop_signal, if !stopping => {
                    stopping = true;
                    self.client.disconnect();
                    continue;
                }
                () = &mut drain_signal, if !draining => {
                    draining = true;
                    if self.cfg.leave_group_on_shutdown && self.cfg.shared_group.is_some() {
                        self.leave_group();
                        leaving = true;
                    }
                    continue;
                }
                ev = self.driver.poll_gated(may_read) => ev,
            };
            match event {
                Ok(Event::Publish(msg, token)) => {
                    self.acks.arrived();
                    if draining && !leaving {
                        self.metrics.left_with_broker.fetch_add(1, Relaxed);
                        continue;
                    }
                    self.metrics.on_received(msg.redelivered);
                    let (seq, past) = self.acks.register(token);
                    if past {
                        self.past_window(&mut warned_past_window);
                    }
                    if tx.send(Received { seq, msg }).await.is_err() {
                        return if stopping { Ok(()) } else { Err(SourceError::Downstream) };
                    }
                }
                Ok(Event::Connected { session_present }) => {
                    backoff.reset();
                    warned_past_window = false;
                    self.health.set_mqtt_connected(true);
                    tracing::info!(session_present, "Connected to the MQTT broker.");
                    last_error = None;
                    if leaving {
                        // Reconnected while leaving: a resumed session may
                        // still hold the subscriptions (the UNSUBACK was lost).
                        if session_present {
                            self.leave_group();
                        } else {
                            self.acks.set_leave(Leave::Left { last: Instant::now() });
                        }
                    } else if !session_present || !accepted {
                        self.client.subscribe(&self.filters, self.cfg.qos);
                    } else {
                        self.health.set_mqtt_subscribed(true);
                    }
                }
                Ok(Event::Subscribed { failures }) => {
                    accepted = failures.is_empty();
                    if accepted {
                        self.health.set_mqtt_subscribed(true);
                        tracing::info!(filters = ?self.filters, qos = self.cfg.qos.level(), "Subscribed.");
                    } else {
                        tracing::error!(filters = ?self.filters, ?failures, "The broker refused the subscription.");
                    }
                }
                Ok(Event::Unsubscribed) => {
                    if self.acks.unsubscribed() {
                        self.health.set_mqtt_subscribed(false);
                        tracing::info!(
                            filters = ?self.filters,
                            "Left the shared subscription group; finishing what the broker had already sent."
                        );
                    }
                }
                Ok(Event::DisconnectSent) => {
                    if stopping {
                        return Ok(());
                    }
                }
                Ok(Event::Other) => {}
                Err(error) => {
                    if stopping {
                        return Ok(());
                    }
                    let was_connected = self.health.set_mqtt_connected(false);
                    if was_connected {
                        self.metrics.mqtt_reconnects.fetch_add(1, Relaxed);
                    }
                    self.acks.end_epoch(&mut self.driver);
                    let text = error.to_string();
                    let delay = backoff.next_delay();
                    if last_error.as_deref() != Some(text.as_str()) {
                        tracing::warn!(%error, retry_in = ?delay, "MQTT connection lost or refused; reconnecting.");
                        last_error = Some(text);
                    }
                    // Not stopping (returned above), so the signal is still pending.
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        () = &mut stop_signal => return Ok(()),
                    }
                }
            }
        }
    }
}

impl Source {
    /// A QoS 1/2 message came while `mqtt.max_in_flight` were unacked: the
    /// broker breaks MQTT 5's receive maximum. The session then stops
    /// reading until acks go out (docs/bridge.md).
    fn past_window(&self, warned: &mut bool) {
        self.metrics.mqtt_past_receive_maximum.fetch_add(1, Relaxed);
        if !*warned {
            *warned = true;
            tracing::warn!(
                max_in_flight = self.cfg.max_in_flight,
                "The MQTT broker sends more unacknowledged messages than the receive maximum \
                 (mqtt.max_in_flight); the bridge stops reading whenever the window is full, \
                 which holds the broker back. Mosquitto before 2.0.13 does this (docs/bridge.md)."
            );
        }
    }

    /// Send the UNSUBSCRIBEs that take this member out of its shared group.
    fn leave_group(&mut self) {
        self.client.unsubscribe(&self.filters);
        self.acks.set_leave(Leave::Requested { waiting: self.filters.len() });
        tracing::info!(filters = ?self.filters, "Shutting down: leaving the shared subscription group.");
    }
}

/// Poll for acks that did not fit in the session's outbox.
pub const ACK_RETRY_INTERVAL: Duration = Duration::from_millis(5);

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(receive_maximum: Option<usize>) -> AckHandle {
        // No I/O: the session connects only once its driver is polled.
        let (client, _driver) = connect(&MqttConfig::default(), "window-test", false).expect("client");
        AckHandle::new(client, Arc::new(MessageMetrics::new(false)), receive_maximum)
    }

    fn token(pkid: u16) -> Option<AckToken> {
        Some(AckToken { pkid, qos: 1 })
    }

    #[test]
    fn with_mqtt_5_the_window_is_the_receive_maximum_and_a_message_past_it_is_flagged() {
        let acks = handle(Some(3));
        assert_eq!(acks.window(), 3);
        let past: Vec<bool> = (1..=4).map(|i| acks.register(token(i)).1).collect();
        assert_eq!(past, [false, false, false, true]);
        assert_eq!(acks.window(), 3, "the receive maximum, whatever arrives");
    }

    #[test]
    fn with_mqtt_3_1_1_the_window_is_the_most_seen_unacked_at_once() {
        let acks = handle(None);
        assert_eq!(acks.window(), 0, "nothing seen yet");
        let seqs: Vec<u64> = (1..=5).map(|i| acks.register(token(i)).0).collect();
        assert_eq!(acks.window(), 5);
        // A QoS 0 message takes no place in the broker's window.
        assert!(!acks.register(None).1);
        assert_eq!(acks.window(), 5);
        // Acked messages leave the window; the peak stays what it was.
        acks.complete_many(&seqs[..3]);
        assert_eq!(acks.outstanding(), 3, "two QoS 1 messages and the QoS 0 one");
        for i in 6..=8 {
            acks.register(token(i));
        }
        assert_eq!(acks.window(), 5, "2 + 3 unacked: not past the peak");
        acks.register(token(9));
        assert_eq!(acks.window(), 6);
        // Never flagged past the window: with 3.1.1 the broker's setting is the window.
        assert!((10..=2_000).all(|i| !acks.register(token(i)).1));
    }
}
