//! `iotpipe simulate` against a real Mosquitto: a broker restart in the
//! middle of a QoS 1 run loses nothing, and a timeout reports how many
//! messages the broker had acknowledged.

mod common;

use common::eventually_async;
use common::mqtt::Mosquitto;
use iotpipe::simulate::{self, SimulateArgs, SimulateError};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const FILTER: &str = "mtic/msg/client/realtime/#";

fn args(url: &str, count: u64, rate: u64, inflight: u16, timeout: &str) -> SimulateArgs {
    SimulateArgs {
        broker: url.to_string(),
        count,
        rate,
        tenants: 1,
        projects: 2,
        devices: 5,
        qos: 1,
        payload_size: 0,
        topic_prefix: "mtic/msg/client/realtime".into(),
        run_id: "test".into(),
        start_seq: 0,
        inflight,
        client_id: Some(format!("sim-test-{}", std::process::id())),
        subscribe: None,
        timeout: timeout.parse().expect("duration"),
    }
}

/// A subscriber with a persistent session (QoS 1) that records the `seq` of
/// every message it receives, across broker restarts.
struct Seen(Arc<Mutex<HashSet<u64>>>);

impl Seen {
    async fn subscribe(port: u16) -> Self {
        let mut o = MqttOptions::new(format!("sim-test-sub-{}", std::process::id()), "127.0.0.1", port);
        o.set_clean_session(false);
        o.set_keep_alive(Duration::from_secs(30));
        let (client, mut el) = AsyncClient::new(o, 64);
        let seen = Arc::new(Mutex::new(HashSet::new()));
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        let set = seen.clone();
        tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) if !ack.session_present => {
                        let _ = client.try_subscribe(FILTER, QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let v: serde_json::Value = serde_json::from_slice(&p.payload).expect("payload is JSON");
                        let seq = v["seq"].as_u64().expect("seq");
                        set.lock().expect("seen").insert(seq);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        subscribed_rx.await.expect("subscribed");
        Seen(seen)
    }

    fn len(&self) -> usize {
        self.0.lock().expect("seen").len()
    }

    fn missing(&self, count: u64) -> Vec<u64> {
        let s = self.0.lock().expect("seen");
        (0..count).filter(|q| !s.contains(q)).collect()
    }
}

/// The broker is frozen (SIGSTOP) while the simulator keeps publishing, so
/// its in-flight window fills with publishes the broker never reads; then it
/// is stopped for good (SIGTERM before SIGCONT: it exits without reading
/// them) and started again on the same port. The simulator has a clean
/// session, so the broker's CONNACK says `session_present = false`: every
/// unacknowledged publish must still be sent again and acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_in_the_middle_of_a_run_loses_no_qos1_message() {
    let mut broker = Mosquitto::start_with(1_000_000, true);
    let seen = Seen::subscribe(broker.port).await;
    let count = 3_000;
    let a = args(&broker.url(), count, 500, 100, "120s");
    let run = tokio::spawn(async move { simulate::publish(&a).await });

    eventually_async(Duration::from_secs(60), "the first 500 messages at the subscriber", || seen.len() >= 500).await;
    common::signal(broker.pid(), "STOP");
    // Let the simulator write its whole in-flight window into the frozen broker.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    common::signal(broker.pid(), "TERM");
    common::signal(broker.pid(), "CONT");
    tokio::task::block_in_place(|| broker.start_again());

    let summary = run.await.expect("simulate task").expect("simulate across the broker restart");
    assert_eq!(summary.messages, count);
    assert!(summary.reconnects.reconnects >= 1, "{:?}", summary.reconnects);
    assert!(summary.reconnects.resent >= 1, "nothing was carried over the restart: {:?}", summary.reconnects);
    eventually_async(Duration::from_secs(60), "every message at the subscriber", || seen.len() as u64 >= count).await;
    assert_eq!(seen.missing(count), Vec::<u64>::new());
}

/// A broker that stops answering mid-run: the timeout fires even though the
/// simulator's request queue is full, and says how many messages were
/// acknowledged before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_reports_the_acknowledged_count() {
    let broker = Mosquitto::start(1_000);
    let seen = Seen::subscribe(broker.port).await;
    let count = 100_000;
    let a = args(&broker.url(), count, 1_000, 100, "5s");
    let run = tokio::spawn(async move { simulate::publish(&a).await });
    eventually_async(Duration::from_secs(60), "the first 100 messages at the subscriber", || seen.len() >= 100).await;
    common::signal(broker.pid(), "STOP");

    let res = tokio::time::timeout(Duration::from_secs(120), run).await.expect("simulate gave up").expect("task");
    common::signal(broker.pid(), "CONT");
    match res {
        Err(SimulateError::Timeout { done, count: c, .. }) => {
            assert_eq!(c, count);
            assert!(done > 0 && done < count, "acknowledged {done} of {count}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}
