//! The publisher's event loop: counts acknowledgements and keeps every
//! unacknowledged publish across a reconnect.
//!
//! When the connection drops, rumqttc moves the unacknowledged publishes and
//! the requests still in its channel to `EventLoop::pending`, and it clears
//! that list when the next CONNACK says `session_present = false` (a clean
//! session, or a broker that restarted without the session). The simulator
//! takes the list out before reconnecting and puts it back after the CONNACK,
//! so those publishes are sent again whatever the broker remembers. At QoS 1
//! a message whose PUBACK was lost in the disconnect is therefore published
//! twice; the pipeline's record ids make that harmless.

use rumqttc::{Event, EventLoop, Outgoing, Packet, Request};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Consecutive failed polls (one every 200 ms while the broker is away)
/// before the simulator gives up.
const MAX_FAILURES: u32 = 50;

/// What happened to the connection while publishing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reconnects {
    /// Connections after the first one.
    pub reconnects: u64,
    /// Requests carried over a disconnect and queued again.
    pub resent: u64,
}

/// Poll `el` until `count` publishes are acknowledged (QoS 1/2) or written
/// (QoS 0), keeping `acked` up to date for the caller. Connection errors are
/// retried up to [`MAX_FAILURES`] times in a row.
pub async fn count_acks(
    mut el: EventLoop,
    count: u64,
    qos_level: u8,
    acked: Arc<AtomicU64>,
) -> Result<Reconnects, String> {
    let mut failures = 0u32;
    let mut connected_once = false;
    let mut carried: VecDeque<Request> = VecDeque::new();
    let mut stats = Reconnects::default();
    while acked.load(Ordering::Relaxed) < count {
        match el.poll().await {
            Ok(Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_))) if qos_level > 0 => {
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Outgoing(Outgoing::Publish(_))) if qos_level == 0 => {
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                failures = 0;
                if connected_once {
                    stats.reconnects += 1;
                }
                connected_once = true;
                stats.resent += restore(&mut el, &mut carried);
            }
            Ok(_) => {}
            Err(e) => {
                carry(&mut el, &mut carried);
                failures += 1;
                if failures > MAX_FAILURES {
                    return Err(e.to_string());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Ok(stats)
}

/// Take what rumqttc kept for the next session before it can clear it.
/// At QoS 0 nothing is waiting for an acknowledgement: nothing to carry.
fn carry(el: &mut EventLoop, carried: &mut VecDeque<Request>) {
    carried.extend(el.pending.drain(..).filter(|r| matches!(r, Request::Publish(_) | Request::PubRel(_))));
}

/// Queue the carried requests again, ahead of anything newer.
fn restore(el: &mut EventLoop, carried: &mut VecDeque<Request>) -> u64 {
    let n = carried.len() as u64;
    while let Some(r) = carried.pop_back() {
        el.pending.push_front(r);
    }
    n
}
