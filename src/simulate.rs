//! `iotpipe simulate`: a load generator that publishes realistic device JSON,
//! and a `--subscribe` mode that counts what a plain subscriber receives
//! (the broker baseline for benchmarks).

mod acks;

use crate::mqtt::parse_mqtt_url;
use crate::record::now_ms;
pub use acks::Reconnects;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to publish (or count).
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Broker to publish to.
    #[arg(long, default_value = "mqtt://127.0.0.1:1883", env = "IOTPIPE_SIMULATE_BROKER")]
    pub broker: String,
    /// Messages to publish (or, with --subscribe, to receive) before exiting.
    #[arg(long, default_value_t = 10_000)]
    pub count: u64,
    /// Messages per second; 0 publishes as fast as the broker acknowledges.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Number of tenants (tenant-1 …).
    #[arg(long, default_value_t = 3)]
    pub tenants: u32,
    /// Projects per tenant.
    #[arg(long, default_value_t = 2)]
    pub projects: u32,
    /// Devices per project.
    #[arg(long, default_value_t = 20)]
    pub devices: u32,
    /// QoS of the publishes (0, 1 or 2). At QoS 1 and 2, publishes not yet
    /// acknowledged when the connection drops (a broker restart) are sent
    /// again after the reconnect, so nothing is lost; at QoS 1 a message whose
    /// acknowledgement was lost may then arrive twice.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Pad each payload to at least this many bytes.
    #[arg(long, default_value_t = 0)]
    pub payload_size: usize,
    /// Topic prefix; tenant and project ids follow it.
    #[arg(long, default_value = "mtic/msg/client/realtime")]
    pub topic_prefix: String,
    /// Free text copied into every payload as "run", to tell runs apart.
    #[arg(long, default_value = "")]
    pub run_id: String,
    /// First sequence number ("seq" in the payload).
    #[arg(long, default_value_t = 0)]
    pub start_seq: u64,
    /// Unacknowledged publishes allowed at once.
    #[arg(long, default_value_t = 1000)]
    pub inflight: u16,
    /// MQTT client id (default: iotpipe-sim-<pid>).
    #[arg(long)]
    pub client_id: Option<String>,
    /// Count messages on this filter instead of publishing.
    #[arg(long, value_name = "FILTER")]
    pub subscribe: Option<String>,
    /// Give up after this long (e.g. "60s"), counted from the start of the
    /// run (publishing included); 0 waits forever. The error says how many
    /// messages were acknowledged by then.
    #[arg(long, default_value = "0s")]
    pub timeout: humantime::Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("--broker: {0}")]
    Broker(String),
    #[error("--tenants, --projects and --devices must be at least 1")]
    Fleet,
    #[error("MQTT: {0}")]
    Mqtt(String),
    #[error("timed out after {elapsed:?}: {done} of {count} {what}")]
    Timeout { elapsed: Duration, done: u64, count: u64, what: &'static str },
}

/// Outcome of a run, printed as one line.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub messages: u64,
    pub elapsed: Duration,
    /// Reconnects while publishing, and the publishes sent again after them.
    pub reconnects: Reconnects,
}

impl Summary {
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn options(args: &SimulateArgs, suffix: &str) -> Result<MqttOptions, SimulateError> {
    let url = parse_mqtt_url(&args.broker).map_err(SimulateError::Broker)?;
    if url.tls {
        return Err(SimulateError::Broker("the simulator speaks plain mqtt:// only".into()));
    }
    let id = args.client_id.clone().unwrap_or_else(|| format!("iotpipe-sim-{}{suffix}", std::process::id()));
    let mut o = MqttOptions::new(id, url.host, url.port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(args.inflight.max(1));
    o.set_max_packet_size(64 << 20, 64 << 20);
    o.set_request_channel_capacity(usize::from(args.inflight) * 2 + 16);
    Ok(o)
}

fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// One device reading. Deterministic per (device, sequence) apart from the clock.
pub fn device_payload(device: &str, seq: u64, device_seq: u64, run: &str, pad_to: usize) -> Vec<u8> {
    let phase = (seq % 3600) as f64 / 3600.0 * std::f64::consts::TAU;
    let jitter = ((seq.wrapping_mul(2654435761) >> 7) % 100) as f64 / 100.0;
    let temperature = 21.0 + 4.0 * phase.sin() + jitter;
    let humidity = 45.0 + 10.0 * phase.cos() - jitter;
    let battery = 100.0 - (device_seq % 1000) as f64 / 10.0;
    let status = if seq % 97 == 0 { "warn" } else { "ok" };
    let mut s = format!(
        r#"{{"deviceId":"{device}","ts":{},"seq":{seq},"deviceSeq":{device_seq},"run":"{run}","temperature":{temperature:.2},"humidity":{humidity:.2},"battery":{battery:.1},"status":"{status}""#,
        now_ms()
    );
    if s.len() + 10 < pad_to {
        let n = pad_to - s.len() - 10;
        s.push_str(",\"pad\":\"");
        s.extend(std::iter::repeat_n('x', n));
        s.push('"');
    }
    s.push('}');
    s.into_bytes()
}

/// Publish `count` messages across the fleet; returns once the broker acknowledged all.
pub async fn publish(args: &SimulateArgs) -> Result<Summary, SimulateError> {
    if args.tenants == 0 || args.projects == 0 || args.devices == 0 {
        return Err(SimulateError::Fleet);
    }
    let (client, eventloop) = AsyncClient::new(options(args, "")?, usize::from(args.inflight) * 2 + 16);
    let start = Instant::now();
    let acked = Arc::new(AtomicU64::new(0));
    let ack_task = tokio::spawn(acks::count_acks(eventloop, args.count, args.qos, acked.clone()));
    // The sender ends by itself when the event loop is gone (its channel closes).
    let sender = tokio::spawn(send_all(client.clone(), args.clone()));
    // Both end with this future, also when it is dropped (the demo's fleet is aborted).
    let _tasks = [AbortOnDrop(ack_task.abort_handle()), AbortOnDrop(sender.abort_handle())];
    let res = wait(ack_task, &acked, args, start, "acknowledged").await;
    sender.abort();
    let reconnects = res?;
    let _ = client.disconnect().await;
    Ok(Summary { messages: acked.load(Ordering::Relaxed), elapsed: start.elapsed(), reconnects })
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Hand the `count` publishes to the client at `rate`.
async fn send_all(client: AsyncClient, args: SimulateArgs) {
    let fleet = u64::from(args.tenants) * u64::from(args.projects) * u64::from(args.devices);
    let mut next_tick = Instant::now();
    let per_tick = if args.rate == 0 { u64::MAX } else { (args.rate / 100).max(1) };
    let tick =
        if args.rate == 0 { Duration::ZERO } else { Duration::from_secs_f64(per_tick as f64 / args.rate as f64) };
    let mut sent = 0u64;
    while sent < args.count {
        let batch_end = (sent.saturating_add(per_tick)).min(args.count);
        while sent < batch_end {
            let seq = args.start_seq + sent;
            let d = seq % fleet;
            let t = d / (u64::from(args.projects) * u64::from(args.devices)) + 1;
            let p = (d / u64::from(args.devices)) % u64::from(args.projects) + 1;
            let dev = d % u64::from(args.devices) + 1;
            let device = format!("dev-{t}-{p}-{dev}");
            let topic = format!("{}/tenant-{t}/project-{p}", args.topic_prefix);
            let payload = device_payload(&device, seq, seq / fleet, &args.run_id, args.payload_size);
            if client.publish(topic, qos(args.qos), false, payload).await.is_err() {
                return;
            }
            sent += 1;
        }
        if !tick.is_zero() {
            next_tick += tick;
            tokio::time::sleep_until(next_tick.into()).await;
        }
    }
}

/// Wait for the event loop task, up to `--timeout` from `start`.
async fn wait(
    task: tokio::task::JoinHandle<Result<Reconnects, String>>,
    acked: &AtomicU64,
    args: &SimulateArgs,
    start: Instant,
    what: &'static str,
) -> Result<Reconnects, SimulateError> {
    let limit: Duration = args.timeout.into();
    let res = if limit.is_zero() {
        task.await
    } else {
        let abort = task.abort_handle();
        let Ok(r) = tokio::time::timeout(limit.saturating_sub(start.elapsed()), task).await else {
            abort.abort();
            let done = acked.load(Ordering::Relaxed);
            return Err(SimulateError::Timeout { elapsed: start.elapsed(), done, count: args.count, what });
        };
        r
    };
    match res {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => Err(SimulateError::Mqtt(e)),
        Err(e) => Err(SimulateError::Mqtt(e.to_string())),
    }
}

/// Subscribe to `filter` and count `count` messages; the rate is measured
/// from the first message to the last.
pub async fn subscribe(args: &SimulateArgs, filter: &str) -> Result<Summary, SimulateError> {
    let (client, mut el) = AsyncClient::new(options(args, "-sub")?, 64);
    client.subscribe(filter, qos(args.qos)).await.map_err(|e| SimulateError::Mqtt(e.to_string()))?;
    let started = Instant::now();
    let limit: Duration = args.timeout.into();
    let mut first: Option<Instant> = None;
    let mut got = 0u64;
    let mut failures = 0u32;
    while got < args.count {
        let remaining = if limit.is_zero() {
            Duration::from_secs(3600 * 24 * 365)
        } else {
            limit.saturating_sub(started.elapsed())
        };
        let ev = match tokio::time::timeout(remaining, el.poll()).await {
            Ok(ev) => ev,
            Err(_) => {
                return Err(SimulateError::Timeout {
                    elapsed: started.elapsed(),
                    done: got,
                    count: args.count,
                    what: "received",
                })
            }
        };
        match ev {
            Ok(Event::Incoming(Packet::Publish(_))) => {
                first.get_or_insert_with(Instant::now);
                got += 1;
            }
            Ok(Event::Incoming(Packet::ConnAck(_))) => failures = 0,
            Ok(_) => {}
            Err(e) => {
                failures += 1;
                if failures > 50 {
                    return Err(SimulateError::Mqtt(e.to_string()));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let elapsed = first.map(|f| f.elapsed()).unwrap_or_default();
    Ok(Summary { messages: got, elapsed, reconnects: Reconnects::default() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_json_with_the_expected_fields_and_size() {
        let p = device_payload("dev-1-1-1", 42, 2, "run-x", 300);
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(v["deviceId"], "dev-1-1-1");
        assert_eq!(v["seq"], 42);
        assert_eq!(v["deviceSeq"], 2);
        assert_eq!(v["run"], "run-x");
        assert!(v["temperature"].is_number() && v["humidity"].is_number() && v["battery"].is_number());
        assert!(p.len() >= 290 && p.len() <= 300, "{}", p.len());
        let small = device_payload("d", 1, 0, "", 0);
        assert!(serde_json::from_slice::<serde_json::Value>(&small).is_ok());
    }
}
