//! The engine against a scripted broker on loopback: each test decides how
//! the broker answers produce requests and checks what the engine sends and
//! reports.

use super::batch::Compression;
use super::engine::{Cmd, Engine, Settings, Shared};
use super::protocol::{API_INIT_PRODUCER_ID, API_METADATA, API_PRODUCE, API_VERSIONS};
use crate::kafka::diagnosis::ErrorReporter;
use crate::kafka::producer::{Delivery, Pending};
use crate::kafka::Failure;
use crate::record::{Inbound, Outbound, RecordId};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// One batch as the broker saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SeenBatch {
    topic: String,
    partition: i32,
    producer_id: i64,
    base_sequence: i32,
    records: i32,
    /// The raw records section (compression none in these tests).
    body: Vec<u8>,
}

/// What the broker saw: every produce request's batches, and how many producer ids it gave.
#[derive(Default)]
struct Seen {
    requests: Vec<Vec<SeenBatch>>,
    producer_ids: i64,
}

/// How the broker answers one batch: an error code.
type Answer = Box<dyn Fn(&SeenBatch, &Seen) -> i16 + Send + Sync>;

fn string(b: &mut Bytes) -> String {
    let n = b.get_i16();
    if n < 0 {
        return String::new();
    }
    let s = String::from_utf8_lossy(&b[..n as usize]).into_owned();
    b.advance(n as usize);
    s
}

fn put_string(b: &mut BytesMut, s: &str) {
    b.put_i16(s.len() as i16);
    b.put_slice(s.as_bytes());
}

/// A broker (node 1) on loopback whose topics are `topics`, one partition each.
async fn broker(topics: Vec<String>, answer: Answer) -> (String, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (seen2, answer, topics) = (seen.clone(), Arc::new(answer), Arc::new(topics));
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else { return };
            let (seen, answer, topics) = (seen2.clone(), answer.clone(), topics.clone());
            tokio::spawn(serve(sock, port, topics, seen, answer));
        }
    });
    (format!("127.0.0.1:{port}"), seen)
}

async fn serve(mut sock: TcpStream, port: u16, topics: Arc<Vec<String>>, seen: Arc<Mutex<Seen>>, answer: Arc<Answer>) {
    loop {
        let Ok(size) = sock.read_i32().await else { return };
        let mut req = vec![0u8; size as usize];
        if sock.read_exact(&mut req).await.is_err() {
            return;
        }
        let mut b = Bytes::from(req);
        let (api, version, corr) = (b.get_i16(), b.get_i16(), b.get_i32());
        let _client = string(&mut b);
        let mut out = BytesMut::new();
        out.put_i32(corr);
        match api {
            API_VERSIONS => {
                out.put_i16(0);
                out.put_i32(4);
                for (k, max) in [(API_PRODUCE, 8), (API_METADATA, 4), (API_INIT_PRODUCER_ID, 4), (API_VERSIONS, 0)] {
                    out.put_i16(k);
                    out.put_i16(0);
                    out.put_i16(max);
                }
            }
            API_INIT_PRODUCER_ID => {
                assert!(version >= 2, "flexible InitProducerId");
                let id = {
                    let mut s = seen.lock().expect("lock");
                    s.producer_ids += 1;
                    s.producer_ids
                };
                out.put_u8(0);
                out.put_i32(0);
                out.put_i16(0);
                out.put_i64(id * 1000);
                out.put_i16(0);
                out.put_u8(0);
            }
            API_METADATA => {
                let asked: Vec<String> = (0..b.get_i32()).map(|_| string(&mut b)).collect();
                out.put_i32(0);
                out.put_i32(1);
                out.put_i32(1);
                put_string(&mut out, "127.0.0.1");
                out.put_i32(i32::from(port));
                out.put_i16(-1);
                out.put_i16(-1);
                out.put_i32(1);
                out.put_i32(asked.len() as i32);
                for t in &asked {
                    let known = topics.contains(t);
                    out.put_i16(if known { 0 } else { 3 });
                    put_string(&mut out, t);
                    out.put_i8(0);
                    out.put_i32(i32::from(known));
                    if known {
                        out.put_i16(0);
                        out.put_i32(0);
                        out.put_i32(1);
                        out.put_i32(1);
                        out.put_i32(1);
                        out.put_i32(1);
                        out.put_i32(1);
                    }
                }
            }
            API_PRODUCE => {
                let _txn = string(&mut b);
                let (_acks, _timeout) = (b.get_i16(), b.get_i32());
                let mut batches = Vec::new();
                for _ in 0..b.get_i32() {
                    let topic = string(&mut b);
                    for _ in 0..b.get_i32() {
                        let partition = b.get_i32();
                        let n = b.get_i32() as usize;
                        let batch = b.split_to(n);
                        batches.push(SeenBatch {
                            topic: topic.clone(),
                            partition,
                            producer_id: (&batch[43..51]).get_i64(),
                            base_sequence: (&batch[53..57]).get_i32(),
                            records: (&batch[57..61]).get_i32(),
                            body: batch[61..].to_vec(),
                        });
                    }
                }
                let codes: Vec<i16> = {
                    let s = seen.lock().expect("lock");
                    batches.iter().map(|x| answer(x, &s)).collect()
                };
                out.put_i32(batches.len() as i32);
                for (x, code) in batches.iter().zip(&codes) {
                    put_string(&mut out, &x.topic);
                    out.put_i32(1);
                    out.put_i32(x.partition);
                    out.put_i16(*code);
                    out.put_i64(0);
                    out.put_i64(-1);
                    out.put_i64(0);
                    out.put_i32(0);
                    out.put_i16(-1);
                }
                out.put_i32(0);
                seen.lock().expect("lock").requests.push(batches);
            }
            _ => return,
        }
        let mut framed = BytesMut::with_capacity(out.len() + 4);
        framed.put_i32(out.len() as i32);
        framed.put_slice(&out);
        if sock.write_all(&framed).await.is_err() {
            return;
        }
    }
}

fn pending(seq: u64, topic: &str, value: &str) -> Box<Pending> {
    Box::new(Pending {
        seq,
        inbound: Inbound { topic: "m".into(), payload: Bytes::new(), received_ms: 0, redelivered: false },
        out: Outbound {
            id: RecordId::derive(None, 0, "m", value.as_bytes()),
            topic: topic.into(),
            key: Some(format!("k{seq}")),
            value: Bytes::from(value.to_string()),
            headers: Default::default(),
            timestamp_ms: 1_000,
            reason: None,
        },
        received_at: Instant::now(),
        attempts: 0,
    })
}

struct Running {
    tx: mpsc::Sender<Cmd>,
    reports: mpsc::UnboundedReceiver<Delivery>,
}

fn start(bootstrap: &str, linger: Duration) -> Running {
    start_with(bootstrap, linger, Duration::from_secs(30))
}

fn start_with(bootstrap: &str, linger: Duration, delivery_timeout: Duration) -> Running {
    let (host, port) = bootstrap.rsplit_once(':').expect("host:port");
    let settings = Settings {
        bootstrap: vec![(host.to_string(), port.parse().expect("port"))],
        tls: None,
        client_id: Arc::from("test"),
        compression: Compression::None,
        linger,
        delivery_timeout,
        request_timeout: Duration::from_secs(5),
        batch_bytes: 1_000_000,
        request_bytes: 4 << 20,
        metadata_max_age: Duration::from_secs(300),
        auto_create: false,
    };
    let (tx, rx) = mpsc::channel(1024);
    let (rtx, reports) = mpsc::unbounded_channel();
    let engine = Engine::new(settings, rx, rtx, Arc::new(Shared::default()), Arc::new(ErrorReporter::new("test")));
    tokio::spawn(engine.run());
    Running { tx, reports }
}

impl Running {
    async fn send(&self, p: Box<Pending>) {
        self.tx.send(Cmd::Send(p)).await.expect("engine running");
    }

    /// The next `n` reports: `(seq, None)` delivered, `(seq, Some(failure))` failed.
    async fn reports(&mut self, n: usize) -> Vec<(u64, Option<Failure>)> {
        let mut out = Vec::new();
        while out.len() < n {
            let r = tokio::time::timeout(Duration::from_secs(10), self.reports.recv())
                .await
                .expect("a report within 10 s")
                .expect("engine running");
            out.push(match r {
                Delivery::Delivered(p) => (p.seq, None),
                Delivery::Failed(p, e) => (p.seq, Some(e.failure())),
            });
        }
        out.sort_by_key(|r| r.0);
        out
    }
}

#[tokio::test]
async fn every_ready_partition_goes_in_one_request() {
    let topics: Vec<String> = (0..50).map(|i| format!("t{i}")).collect();
    let (addr, seen) = broker(topics.clone(), Box::new(|_, _| 0)).await;
    let mut e = start(&addr, Duration::from_millis(50));
    // One record per topic first, so that the measured ones meet known topics.
    for (i, t) in topics.iter().enumerate() {
        e.send(pending(i as u64, t, "warm")).await;
    }
    assert!(e.reports(50).await.iter().all(|r| r.1.is_none()));
    let before = seen.lock().expect("lock").requests.len();
    for (i, t) in topics.iter().enumerate() {
        e.send(pending(100 + i as u64, t, "{}")).await;
    }
    let reports = e.reports(50).await;
    assert!(reports.iter().all(|r| r.1.is_none()), "{reports:?}");
    let s = seen.lock().expect("lock");
    let measured = &s.requests[before..];
    assert!(measured.len() <= 2, "50 partitions in one or two requests: {}", measured.len());
    assert!(measured.iter().map(Vec::len).max() >= Some(25), "one request carried many partitions");
}

/// Records handed over together (`Cmd::SendMany`, the forwarder's runs of
/// messages) go out in their order with consecutive sequence numbers, and
/// between single sends.
#[tokio::test]
async fn records_handed_over_together_keep_their_order() {
    let (addr, seen) = broker(vec!["t".into()], Box::new(|_, _| 0)).await;
    let mut e = start(&addr, Duration::from_millis(20));
    e.send(pending(0, "t", "{}")).await;
    e.tx.send(Cmd::SendMany((1..40).map(|i| pending(i, "t", "{}")).collect())).await.expect("engine running");
    e.send(pending(40, "t", "{}")).await;
    assert_eq!(e.reports(41).await, (0..41).map(|i| (i, None)).collect::<Vec<_>>());
    let s = seen.lock().expect("lock");
    let batches: Vec<&SeenBatch> = s.requests.iter().flatten().collect();
    let mut next = 0;
    for b in &batches {
        assert_eq!(b.base_sequence, next, "consecutive sequence numbers");
        next += b.records;
    }
    assert_eq!(next, 41, "every record sent once");
    // Record i's key is `k{i}` and its value `{}`: each as its zigzag varint
    // length and bytes, so the pair is found once, in the order handed over.
    let body: Vec<u8> = batches.iter().flat_map(|b| b.body.iter().copied()).collect();
    let on_wire = |i: u64| {
        let key = format!("k{i}");
        let mut needle = vec![(key.len() * 2) as u8];
        needle.extend_from_slice(key.as_bytes());
        needle.extend_from_slice(b"\x04{}");
        needle
    };
    let keys: Vec<usize> = (0..41).filter_map(|i| find(&body, &on_wire(i))).collect();
    assert_eq!(keys.len(), 41, "every key on the wire");
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "in the order handed over");
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[tokio::test]
async fn a_batch_of_unknown_outcome_goes_again_with_its_sequence_number() {
    // The first produce "times out" (a retriable error); the same batch must come again.
    let (addr, seen) =
        broker(vec!["t".into()], Box::new(|_, s: &Seen| if s.requests.is_empty() { 7 } else { 0 })).await;
    let mut e = start(&addr, Duration::from_millis(20));
    for i in 0..5 {
        e.send(pending(i, "t", "{}")).await;
    }
    assert_eq!(e.reports(5).await, (0..5).map(|i| (i, None)).collect::<Vec<_>>());
    for i in 5..8 {
        e.send(pending(i, "t", "{}")).await;
    }
    assert_eq!(e.reports(3).await, (5..8).map(|i| (i, None)).collect::<Vec<_>>());
    let s = seen.lock().expect("lock");
    let batches: Vec<&SeenBatch> = s.requests.iter().flatten().collect();
    assert_eq!(batches[0].base_sequence, 0);
    assert_eq!(batches[1].base_sequence, 0, "sent again with its sequence number");
    assert_eq!(batches[1].body, batches[0].body, "sent again exactly as it was");
    assert_eq!(batches[1].records, batches[0].records);
    let after = batches[2];
    assert_eq!(after.base_sequence, batches[0].records, "the next batch numbers after it");
}

#[tokio::test]
async fn a_batch_too_large_is_split_and_only_the_record_at_fault_fails() {
    let big = |b: &SeenBatch| b.body.windows(3).any(|w| w == b"BIG");
    let (addr, seen) = broker(vec!["t".into()], Box::new(move |b, _| if big(b) { 10 } else { 0 })).await;
    let mut e = start(&addr, Duration::from_millis(50));
    e.send(pending(0, "t", "warm")).await;
    assert_eq!(e.reports(1).await, vec![(0, None)]);
    for (i, v) in ["a", "BIG", "c"].iter().enumerate() {
        e.send(pending(i as u64 + 1, "t", v)).await;
    }
    let reports = e.reports(3).await;
    assert_eq!(reports, vec![(1, None), (2, Some(Failure::Reject)), (3, None)]);
    let s = seen.lock().expect("lock");
    let batches: Vec<&SeenBatch> = s.requests.iter().flatten().collect();
    let sequences: Vec<(i32, i32)> = batches.iter().map(|b| (b.base_sequence, b.records)).collect();
    // warm-up, the refused batch of 3, then one record per batch: a, BIG (refused: no number used), c.
    assert_eq!(sequences, vec![(0, 1), (1, 3), (1, 1), (2, 1), (2, 1)]);
}

#[tokio::test]
async fn an_out_of_order_sequence_takes_a_new_producer_id_and_sends_again() {
    // The first produce is answered OUT_OF_ORDER_SEQUENCE_NUMBER (45).
    let (addr, seen) =
        broker(vec!["t".into()], Box::new(|_, s: &Seen| if s.requests.is_empty() { 45 } else { 0 })).await;
    let mut e = start(&addr, Duration::from_millis(20));
    for i in 0..3 {
        e.send(pending(i, "t", "{}")).await;
    }
    assert_eq!(e.reports(3).await, (0..3).map(|i| (i, None)).collect::<Vec<_>>());
    let s = seen.lock().expect("lock");
    assert_eq!(s.producer_ids, 2, "a second producer id");
    let batches: Vec<&SeenBatch> = s.requests.iter().flatten().collect();
    assert_eq!((batches[0].producer_id, batches[0].base_sequence), (1000, 0));
    assert_eq!((batches[1].producer_id, batches[1].base_sequence), (2000, 0), "new id, sequence from 0");
    assert_eq!(batches[1].body, batches[0].body);
}

#[tokio::test]
async fn records_for_a_topic_that_never_appears_fail_after_the_delivery_timeout() {
    let (addr, _seen) = broker(vec![], Box::new(|_, _| 0)).await;
    let mut e = start_with(&addr, Duration::from_millis(5), Duration::from_millis(700));
    let t0 = Instant::now();
    e.send(pending(0, "missing", "{}")).await;
    assert_eq!(e.reports(1).await, vec![(0, Some(Failure::Retry))], "the bridge sends it again later");
    assert!(t0.elapsed() >= Duration::from_millis(700), "not before the delivery timeout");
}
