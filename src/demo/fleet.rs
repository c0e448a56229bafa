//! The demo's simulated fleet: steady telemetry from a few tenants, projects
//! and devices, plus an occasional malformed message so the dead-letter view
//! has something to show.

use crate::simulate::{self, SimulateArgs};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use std::convert::Infallible;
use std::time::Duration;

/// Messages per second the fleet publishes.
pub const DEFAULT_RATE: u64 = 40;

pub fn args(broker: &str, rate: u64) -> SimulateArgs {
    SimulateArgs {
        broker: broker.to_string(),
        count: u64::MAX,
        rate: rate.max(1),
        tenants: 3,
        projects: 2,
        devices: 4,
        qos: 1,
        payload_size: 0,
        topic_prefix: "mtic/msg/client/realtime".into(),
        run_id: "demo".into(),
        start_seq: 0,
        inflight: 100,
        client_id: Some(format!("iotpipe-demo-fleet-{}", std::process::id())),
        subscribe: None,
        timeout: Duration::ZERO.into(),
    }
}

/// Publish telemetry until aborted (the demo runs it as a background task);
/// a lost broker restarts the fleet after a second.
pub async fn run(broker: String, rate: u64) -> Result<(), Infallible> {
    let args = args(&broker, rate);
    loop {
        if let Err(error) = simulate::publish(&args).await {
            tracing::warn!(%error, "Simulated fleet lost the broker; restarting it.");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Every `every`, one malformed message: bad JSON, a topic without a project,
/// an empty payload. Runs until aborted; the client's event loop is polled
/// on the same task, so aborting it ends both. Returns only if the client
/// ends, which does not happen while the task runs.
pub async fn malformed(host: String, port: u16, every: Duration) -> Result<(), Infallible> {
    let mut o = MqttOptions::new(format!("iotpipe-demo-bad-{}", std::process::id()), host, port);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = AsyncClient::new(o, 16);
    let poll = async move {
        loop {
            if el.poll().await.is_err() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let samples: [(&str, &[u8]); 3] = [
        ("mtic/msg/client/realtime/tenant-2/project-1", b"{\"deviceId\": \"dev-2-1-3\", \"temperature\": 21."),
        ("mtic/msg/client/realtime/tenant-3", b"{\"deviceId\":\"dev-3-0-1\",\"temperature\":19.5}"),
        ("mtic/msg/client/realtime/tenant-1/project-2", b""),
    ];
    let publish = async move {
        let mut i = 0usize;
        loop {
            tokio::time::sleep(every).await;
            let (topic, payload) = samples[i % samples.len()];
            let _ = client.publish(topic, QoS::AtLeastOnce, false, payload.to_vec()).await;
            i += 1;
        }
    };
    tokio::join!(poll, publish);
    Ok(())
}
