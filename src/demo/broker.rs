//! The demo's embedded MQTT broker (rumqttd, MQTT 3.1.1) on a loopback port.

use std::net::SocketAddr;
use tracing::{Event, Level};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("embedded broker config: {0}")]
    Config(String),
    #[error("cannot start the embedded broker thread: {0}")]
    Thread(std::io::Error),
}

/// Start the broker on `addr` on a thread of its own (rumqttd runs its own runtime).
pub fn start(addr: SocketAddr) -> Result<(), BrokerError> {
    let toml = format!(
        r#"
id = 0
[router]
id = 0
max_connections = 1000
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "{addr}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 1048576
max_inflight_count = 500
dynamic_filters = true
"#
    );
    let config: rumqttd::Config = toml::from_str(&toml).map_err(|e| BrokerError::Config(e.to_string()))?;
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(error) = broker.start() {
                tracing::error!(%error, "Embedded MQTT broker stopped.");
            }
        })
        .map_err(BrokerError::Thread)?;
    Ok(())
}

/// Where rumqttd logs a client's departure.
const ROUTER: &str = "rumqttd::router::routing";

/// rumqttd's "no-connection id N is already gone" ERROR, logged for a
/// client that leaves the clean way: one that sends DISCONNECT and then
/// closes its socket gives rumqttd's router two disconnect events for one
/// connection (rumqttd's own comment there says so), and the second finds
/// the connection gone. The demo's pipeline leaves so on every Ctrl-C; the
/// demo's log drops this one message (`telemetry::logging::init_dropping`),
/// and every other event of the broker's passes.
pub fn is_clean_leave_noise(event: &Event<'_>) -> bool {
    let meta = event.metadata();
    if *meta.level() != Level::ERROR || meta.target() != ROUTER {
        return false;
    }
    let message = crate::telemetry::log_message(event);
    message.starts_with("no-connection id ") && message.ends_with(" is already gone")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::log_events_passing as passing;

    #[test]
    fn only_the_routers_double_disconnect_error_is_noise() {
        let noise = is_clean_leave_noise;
        // As rumqttd 0.20 logs it (router/routing.rs).
        assert_eq!(
            passing(
                noise,
                &|| tracing::error!(target: "rumqttd::router::routing", "no-connection id {} is already gone", 2)
            ),
            0
        );
        assert_eq!(
            passing(
                noise,
                &|| tracing::error!(target: "rumqttd::router::routing", "Unsolicited/ooo ack received for pkid {}", 7)
            ),
            1
        );
        assert_eq!(
            passing(
                noise,
                &|| tracing::warn!(target: "rumqttd::router::routing", "no-connection id {} is already gone", 2)
            ),
            1
        );
        assert_eq!(
            passing(noise, &|| tracing::error!(target: "iotpipe::mqtt", "no-connection id {} is already gone", 2)),
            1
        );
        assert_eq!(
            passing(noise, &|| tracing::error!(target: "rumqttd::router::routing", "no-connection id 3 is back")),
            1
        );
    }
}
