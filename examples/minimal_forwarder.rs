//! The benchmark's baseline (issue 19), not shipped: the least a correct
//! QoS 1 MQTT → Kafka forwarder does. Subscribe at QoS 1 with manual acks,
//! produce every message to one Kafka topic (keyed by its MQTT topic, so
//! each topic's order is kept), and PUBACK it only once Kafka has
//! acknowledged it, in receive order (rumqttc needs manual acks in order). No
//! routing, validation, headers, metrics or journal. A failed delivery is sent
//! again; a lost MQTT connection ends the process with an error (nothing
//! unacked is lost: the broker redelivers it to the persistent session).
//!
//! Run through `scripts/bench-forwarder.sh`:
//!
//! ```text
//! minimal_forwarder --mqtt mqtt://127.0.0.1:1883 --kafka 127.0.0.1:9092 \
//!     [--topic-filter 'mtic/msg/client/realtime/#'] [--kafka-topic iot.telemetry] \
//!     [--client-id minimal-forwarder] [--max-in-flight 1000] [--progress]
//! ```
//!
//! `--progress` prints `acked N` at most every 100 ms when N changed (for the
//! benchmark); nothing is printed per message.

use clap::Parser;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Parser)]
struct Args {
    /// mqtt://host:port
    #[arg(long)]
    mqtt: String,
    /// Kafka bootstrap servers.
    #[arg(long)]
    kafka: String,
    #[arg(long, default_value = "mtic/msg/client/realtime/#")]
    topic_filter: String,
    #[arg(long, default_value = "iot.telemetry")]
    kafka_topic: String,
    #[arg(long, default_value = "minimal-forwarder")]
    client_id: String,
    /// MQTT 5 receive maximum: messages the broker may send before an ack.
    #[arg(long, default_value_t = 1000)]
    max_in_flight: u16,
    /// Print `acked N` every 100 ms when N changed.
    #[arg(long)]
    progress: bool,
}

/// One message waiting for its Kafka acknowledgement.
struct InFlight {
    publish: Publish,
    delivery: DeliveryFuture,
}

/// The producer settings of iotpipe's bridge (src/kafka/producer.rs, with the
/// bridge's defaults) that bear on the cost per message, matched here:
/// enable.idempotence=true, acks=all, compression.type=lz4, linger.ms=5,
/// message.timeout.ms=60000, queue.buffering.max.messages=100000,
/// queue.buffering.max.kbytes=16384, batch.num.messages=10000,
/// statistics.interval.ms=0, log.connection.close=false. Not matched: the
/// bridge's record headers and its key (tenant/project/device; here the MQTT
/// topic), which are the bridge's own work.
fn producer(brokers: &str) -> Result<FutureProducer, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("log.connection.close", "false")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .set("queue.buffering.max.messages", "100000")
        .set("queue.buffering.max.kbytes", "16384")
        .set("batch.num.messages", "10000")
        .set("statistics.interval.ms", "0")
        .create()
}

/// Hand one message to librdkafka, waiting while its queue is full.
async fn send(producer: &FutureProducer, topic: &str, publish: &Publish) -> Result<DeliveryFuture, KafkaError> {
    loop {
        let record = FutureRecord::to(topic).key(&publish.topic[..]).payload(&publish.payload[..]);
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// PUBACK each message, in receive order, once Kafka has it; a failed
/// delivery is sent again until it succeeds (or the producer is fatally broken).
async fn acker(
    client: AsyncClient,
    producer: FutureProducer,
    topic: String,
    mut rx: mpsc::UnboundedReceiver<InFlight>,
    acked: Arc<AtomicU64>,
) -> Result<(), String> {
    while let Some(InFlight { publish, mut delivery }) = rx.recv().await {
        loop {
            let err = match delivery.await {
                Ok(Ok(_)) => break,
                Ok(Err((e, _))) => e.to_string(),
                Err(_) => "delivery report dropped".to_string(),
            };
            if let Some((code, msg)) = producer.client().fatal_error() {
                return Err(format!("kafka producer: fatal error {code:?}: {msg}"));
            }
            eprintln!("kafka delivery failed, sending again: {err}");
            tokio::time::sleep(Duration::from_millis(100)).await;
            delivery = send(&producer, &topic, &publish).await.map_err(|e| format!("kafka send: {e}"))?;
        }
        client.ack(&publish).await.map_err(|e| format!("mqtt ack: {e}"))?;
        acked.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

async fn run(args: Args) -> Result<(), String> {
    let url = args.mqtt.strip_prefix("mqtt://").ok_or("--mqtt: expected mqtt://host:port")?;
    let (host, port) = url.rsplit_once(':').ok_or("--mqtt: expected mqtt://host:port")?;
    let port: u16 = port.trim_end_matches('/').parse().map_err(|_| "--mqtt: bad port")?;
    let mut opts = MqttOptions::new(&args.client_id, host, port);
    opts.set_clean_start(false);
    opts.set_session_expiry_interval(Some(3600));
    opts.set_receive_maximum(Some(args.max_in_flight));
    opts.set_manual_acks(true);
    opts.set_keep_alive(Duration::from_secs(30));
    let cap = usize::from(args.max_in_flight) * 2 + 64;
    opts.set_request_channel_capacity(cap);
    let (client, mut eventloop) = AsyncClient::new(opts, cap);

    let producer = producer(&args.kafka).map_err(|e| format!("kafka producer: {e}"))?;
    let acked = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::unbounded_channel();
    let mut acks = tokio::spawn(acker(client.clone(), producer.clone(), args.kafka_topic.clone(), rx, acked.clone()));
    if args.progress {
        let acked = acked.clone();
        tokio::spawn(async move {
            let mut last = u64::MAX;
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let n = acked.load(Ordering::Relaxed);
                if n != last {
                    println!("acked {n}");
                    last = n;
                }
            }
        });
    }

    loop {
        let event = tokio::select! {
            ev = eventloop.poll() => ev.map_err(|e| format!("mqtt: {e}"))?,
            res = &mut acks => return match res {
                Ok(r) => r,
                Err(e) => Err(format!("acker: {e}")),
            },
        };
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                client.subscribe(&args.topic_filter, QoS::AtLeastOnce).await.map_err(|e| format!("mqtt: {e}"))?;
            }
            // A QoS 0 message (published at QoS 0) is forwarded too; its ack is a no-op.
            Event::Incoming(Packet::Publish(publish)) => {
                let delivery = send(&producer, &args.kafka_topic, &publish).await.map_err(|e| format!("kafka: {e}"))?;
                tx.send(InFlight { publish, delivery }).map_err(|_| "acker stopped")?;
            }
            _ => {}
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("minimal_forwarder: {e}");
            ExitCode::FAILURE
        }
    }
}
