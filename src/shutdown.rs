//! The two shutdown signals of a pipeline's tasks, as two types.
//!
//! [`Signals`] is held by the supervisor; every finishing task gets the
//! receivers it watches: [`Drain`] (take no new input) and [`Stop`] (wrap up
//! and end). They are distinct types, so a task cannot be handed one where
//! it expects the other. Both only ever turn from unset to set; a signal
//! whose sender is gone counts as set (nobody is left to send it).

use tokio::sync::watch;

/// The senders of both signals; only the supervisor sets them.
pub struct Signals {
    drain: watch::Sender<bool>,
    stop: watch::Sender<bool>,
}

impl Default for Signals {
    fn default() -> Self {
        Self { drain: watch::channel(false).0, stop: watch::channel(false).0 }
    }
}

impl Signals {
    /// Set when shutdown begins: take no new input.
    pub fn drain(&self) -> Drain {
        Drain(self.drain.subscribe())
    }

    /// Set when the drain is over: finish up and end.
    pub fn stop(&self) -> Stop {
        Stop(self.stop.subscribe())
    }

    /// Begin the drain (`supervise` does, once).
    pub(crate) fn set_drain(&self) {
        self.drain.send_replace(true);
    }

    /// Begin the stop (`supervise` does, once, after the drain).
    pub(crate) fn set_stop(&self) {
        self.stop.send_replace(true);
    }
}

/// Set when shutdown begins: take no new input.
#[derive(Debug, Clone)]
pub struct Drain(watch::Receiver<bool>);

/// Set when the drain is over: finish up and end.
#[derive(Debug, Clone)]
pub struct Stop(watch::Receiver<bool>);

impl Drain {
    /// Wait until the drain begins (at once if it has). Cancel-safe.
    pub async fn until_set(&mut self) {
        until_set(&mut self.0).await;
    }

    /// Whether the drain has begun.
    pub fn is_set(&self) -> bool {
        is_set(&self.0)
    }
}

impl Stop {
    /// Wait until the stop begins (at once if it has). Cancel-safe.
    pub async fn until_set(&mut self) {
        until_set(&mut self.0).await;
    }

    /// Whether the stop has begun.
    pub fn is_set(&self) -> bool {
        is_set(&self.0)
    }
}

async fn until_set(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|set| *set).await;
}

fn is_set(rx: &watch::Receiver<bool>) -> bool {
    *rx.borrow() || rx.has_changed().is_err()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn each_signal_sets_only_its_own_receivers() {
        let signals = Signals::default();
        let (mut drain, mut stop) = (signals.drain(), signals.stop());
        assert!(!drain.is_set() && !stop.is_set());
        signals.set_drain();
        drain.until_set().await;
        assert!(drain.is_set() && !stop.is_set());
        let waited = tokio::time::timeout(Duration::from_secs(1), stop.until_set()).await;
        assert!(waited.is_err(), "stop is not set by the drain");
        signals.set_stop();
        stop.until_set().await;
        assert!(stop.is_set());
        assert!(signals.drain().is_set(), "a receiver taken later sees the signal already set");
    }

    #[tokio::test(start_paused = true)]
    async fn a_signal_whose_sender_is_gone_counts_as_set() {
        let signals = Signals::default();
        let mut stop = signals.stop();
        drop(signals);
        assert!(stop.is_set());
        stop.until_set().await;
    }
}
