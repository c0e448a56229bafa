//! One MQTT session, 3.1.1 or 5 behind one interface: the client handle
//! (acks, subscribe, disconnect) and the driver that owns the connection.
//!
//! The driver reads whatever the socket holds, hands out the packets in it
//! one by one, and before it waits again writes everything queued through
//! the client (acks, subscriptions, the disconnect) in one write: the acks
//! of a batch of messages cost one system call, not one each. The session
//! task can stop the reading while its window is full
//! ([`Driver::poll_gated`]); pings and acks go on.

use super::options::{self, ConnectSpec};
use super::wire::{self, Incoming, Malformed, Unencodable};
use super::{MqttConfig, MqttVersion, Qos};
use crate::record::{now_ms, Inbound};
use crate::transport::{self, Stream, TransportError};
use bytes::BytesMut;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::Instant;

/// What an ack needs: the packet id and the QoS it arrived with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckToken {
    pub pkid: u16,
    pub qos: u8,
}

/// A request other than an ack, queued for the driver.
#[derive(Debug)]
enum Request {
    Subscribe(Vec<String>, Qos),
    Unsubscribe(String),
    Disconnect,
}

/// What the client queued and the driver has not written yet.
#[derive(Default)]
struct Outbox {
    acks: Vec<AckToken>,
    requests: VecDeque<Request>,
}

struct Shared {
    outbox: Mutex<Outbox>,
    /// Wakes the driver when the outbox stops being empty.
    wake: Notify,
    /// Most acks the outbox holds (`mqtt.max_in_flight` × 2 + 64).
    ack_capacity: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Outbox> {
        // A poisoned lock means a panic elsewhere; the queues stay consistent.
        self.outbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Change the outbox under its lock, and wake the driver when that made
    /// an empty outbox non-empty (otherwise it is awake, or already woken).
    fn queue<R>(&self, change: impl FnOnce(&mut Outbox) -> R) -> R {
        let mut o = self.lock();
        let was_empty = o.is_empty();
        let result = change(&mut o);
        let now_empty = o.is_empty();
        drop(o);
        if was_empty && !now_empty {
            self.wake.notify_one();
        }
        result
    }

    fn push(&self, request: Request) {
        self.queue(|o| o.requests.push_back(request));
    }
}

impl Outbox {
    fn is_empty(&self) -> bool {
        self.acks.is_empty() && self.requests.is_empty()
    }
}

/// The handle through which acks, subscriptions and the disconnect are sent.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

impl Client {
    /// Queue acks from the front of `acks` while the outbox has room; returns
    /// how many were taken (one lock for all of them). What did not fit stays
    /// with the caller, to be offered again.
    pub fn try_ack_many(&self, acks: &mut VecDeque<AckToken>) -> usize {
        let capacity = self.shared.ack_capacity;
        self.shared.queue(|o| {
            let n = capacity.saturating_sub(o.acks.len()).min(acks.len());
            o.acks.extend(acks.drain(..n));
            n
        })
    }

    /// Queue the subscriptions (the caller polls the driver, which sends them).
    pub fn subscribe(&self, filters: &[String], qos: Qos) {
        self.shared.push(Request::Subscribe(filters.to_vec(), qos));
    }

    /// Queue one UNSUBSCRIBE per filter.
    pub fn unsubscribe(&self, filters: &[String]) {
        for f in filters {
            self.shared.push(Request::Unsubscribe(f.clone()));
        }
    }

    pub fn disconnect(&self) {
        self.shared.push(Request::Disconnect);
    }
}

/// What the driver reports, whatever the protocol version.
#[derive(Debug)]
pub enum Event {
    Connected {
        session_present: bool,
    },
    Subscribed {
        failures: Vec<String>,
    },
    /// One UNSUBACK (one per filter: they are sent one by one).
    Unsubscribed,
    Publish(Inbound, Option<AckToken>),
    DisconnectSent,
    Other,
}

/// The connection failed or ended (the driver reconnects on the next poll).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("no CONNACK within {0:?}")]
    ConnectTimeout(Duration),
    #[error("the broker refused the connection: {0}")]
    Refused(String),
    #[error("the broker answered CONNECT with another packet: {0:?}")]
    NotConnAck(Incoming),
    #[error(transparent)]
    Malformed(#[from] Malformed),
    #[error(transparent)]
    Unencodable(#[from] Unencodable),
    #[error("I/O with the broker: {0}")]
    Io(#[from] std::io::Error),
    #[error("the broker closed the connection")]
    Closed,
    #[error("the broker disconnected: {0}")]
    ServerDisconnect(String),
    #[error("no PINGRESP within the keep-alive interval ({0:?})")]
    PingTimeout(Duration),
}

/// Build a session. `clean` is for one-off probes (`iotpipe check`); the
/// bridge always uses a persistent session.
pub fn connect(cfg: &MqttConfig, client_id: &str, clean: bool) -> Result<(Client, Driver), options::OptionsError> {
    let spec = options::spec(cfg, client_id, clean)?;
    let shared = Arc::new(Shared {
        outbox: Mutex::new(Outbox::default()),
        wake: Notify::new(),
        ack_capacity: usize::from(cfg.max_in_flight) * 2 + 64,
    });
    let driver = Driver { spec, shared: shared.clone(), conn: None };
    Ok((Client { shared }, driver))
}

/// Owns the connection; must be polled continuously.
pub struct Driver {
    spec: ConnectSpec,
    shared: Arc<Shared>,
    conn: Option<Conn>,
}

/// What the read buffer keeps free before each read.
const READ_CHUNK: usize = 64 * 1024;

struct Conn {
    io: Box<dyn Stream>,
    version: MqttVersion,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// The acks taken from the outbox in this step (swapped with the
    /// outbox's vector, so neither allocates again).
    acks: Vec<AckToken>,
    keep_alive: Duration,
    next_ping: Instant,
    awaiting_pingresp: bool,
    /// Reading was paused since the last PINGREQ went out.
    paused_since_ping: bool,
    /// Packet id of our next SUBSCRIBE/UNSUBSCRIBE (never 0).
    next_pkid: u16,
    /// DISCONNECT went out: nothing more is read or written.
    closed: bool,
}

impl Driver {
    /// The next event. Connects first when there is no connection; after an
    /// error the next call connects again.
    pub async fn poll(&mut self) -> Result<Event, SessionError> {
        self.poll_gated(|| true).await
    }

    /// Like [`Driver::poll`], but takes messages from the broker only while
    /// `may_read()` is true. While it is false nothing is read from the
    /// socket (TCP then holds the broker back) and nothing more is decoded,
    /// but acks, requests and keep-alive pings still go out; every ack
    /// queued wakes the session to ask `may_read` again.
    pub async fn poll_gated(&mut self, may_read: impl Fn() -> bool) -> Result<Event, SessionError> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                let (conn, session_present) = self.open().await?;
                self.conn = Some(conn);
                return Ok(Event::Connected { session_present });
            };
            if conn.closed {
                // Only a stop follows a DISCONNECT; wait for it.
                std::future::pending::<()>().await;
            }
            // A packet already read goes out first; only then does the
            // session write, wait and read again.
            let reading = may_read();
            let decoded = if reading { conn.next_event() } else { Ok(None) };
            let result = match decoded {
                Ok(None) => conn.step(&self.shared, reading).await,
                other => other,
            };
            match result {
                Ok(Some(event)) => return Ok(event),
                Ok(None) => {}
                Err(e) => {
                    self.conn = None;
                    return Err(e);
                }
            }
        }
    }

    /// Connect, send CONNECT and wait for the CONNACK, all within the connect timeout.
    async fn open(&self) -> Result<(Conn, bool), SessionError> {
        let spec = &self.spec;
        let attempt = async {
            let io = transport::open(&spec.host, spec.port, spec.tls.as_ref()).await?;
            let mut conn = Conn {
                io,
                version: spec.version,
                rbuf: BytesMut::with_capacity(READ_CHUNK),
                wbuf: BytesMut::with_capacity(4096),
                acks: Vec::new(),
                keep_alive: spec.fields.keep_alive,
                next_ping: Instant::now() + spec.fields.keep_alive,
                awaiting_pingresp: false,
                paused_since_ping: false,
                next_pkid: 1,
                closed: false,
            };
            wire::connect(spec.version, &spec.fields, &mut conn.wbuf)?;
            conn.write_out().await?;
            match conn.read_packet().await? {
                Incoming::ConnAck { refused: Some(code), .. } => Err(SessionError::Refused(code)),
                Incoming::ConnAck { session_present, server_keep_alive, .. } => {
                    if let Some(secs) = server_keep_alive {
                        conn.keep_alive = Duration::from_secs(u64::from(secs.max(1)));
                        conn.next_ping = Instant::now() + conn.keep_alive;
                    }
                    Ok((conn, session_present))
                }
                other => Err(SessionError::NotConnAck(other)),
            }
        };
        tokio::time::timeout(spec.connect_timeout, attempt)
            .await
            .map_err(|_| SessionError::ConnectTimeout(spec.connect_timeout))?
    }

    /// Drop the connection and everything queued for it: acks belong to the
    /// connection that delivered their messages, and the session task asks
    /// again for the subscriptions it still needs once reconnected.
    pub fn clean(&mut self) {
        self.conn = None;
        let mut o = self.shared.lock();
        o.acks.clear();
        o.requests.clear();
    }
}

impl Conn {
    /// Write what is queued (and a PINGREQ when one is due), then wait for
    /// the broker (when `reading`), the client or the keep-alive. Returns
    /// `DisconnectSent` once the DISCONNECT went out.
    async fn step(&mut self, shared: &Shared, reading: bool) -> Result<Option<Event>, SessionError> {
        let disconnect = self.take_outbox(shared)?;
        if !reading {
            self.paused_since_ping = true;
        }
        if !disconnect && Instant::now() >= self.next_ping {
            self.ping()?;
        }
        self.write_out().await?;
        if disconnect {
            self.closed = true;
            return Ok(Some(Event::DisconnectSent));
        }
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
            self.rbuf.reserve(READ_CHUNK);
        }
        tokio::select! {
            biased;
            read = self.io.read_buf(&mut self.rbuf), if reading => {
                if read? == 0 {
                    return Err(SessionError::Closed);
                }
            }
            () = shared.wake.notified() => {}
            // The ping itself goes out at the start of the next step.
            () = tokio::time::sleep_until(self.next_ping) => {}
        }
        Ok(None)
    }

    /// Queue a PINGREQ. The broker's PINGRESP must have come by the next
    /// one, unless reading paused in between (it may be unread in the socket).
    fn ping(&mut self) -> Result<(), SessionError> {
        if self.awaiting_pingresp && !self.paused_since_ping {
            return Err(SessionError::PingTimeout(self.keep_alive));
        }
        wire::pingreq(&mut self.wbuf);
        self.awaiting_pingresp = true;
        self.paused_since_ping = false;
        self.next_ping = Instant::now() + self.keep_alive;
        Ok(())
    }

    /// Encode the outbox into the write buffer; true when it held a disconnect.
    fn take_outbox(&mut self, shared: &Shared) -> Result<bool, SessionError> {
        let requests = {
            let mut o = shared.lock();
            if o.is_empty() {
                return Ok(false);
            }
            std::mem::swap(&mut o.acks, &mut self.acks);
            std::mem::take(&mut o.requests)
        };
        for t in self.acks.drain(..) {
            wire::publish_ack(&mut self.wbuf, t.qos, t.pkid);
        }
        let mut disconnect = false;
        for r in requests {
            match r {
                Request::Subscribe(filters, qos) => {
                    let pkid = self.pkid();
                    wire::subscribe(self.version, pkid, &filters, qos, &mut self.wbuf)?;
                }
                Request::Unsubscribe(filter) => {
                    let pkid = self.pkid();
                    wire::unsubscribe(self.version, pkid, &filter, &mut self.wbuf)?;
                }
                Request::Disconnect => {
                    wire::disconnect(&mut self.wbuf);
                    disconnect = true;
                    break;
                }
            }
        }
        Ok(disconnect)
    }

    fn pkid(&mut self) -> u16 {
        let id = self.next_pkid;
        self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
        id
    }

    /// Write the buffer out. Cancel-safe: `write_buf` takes what it wrote
    /// off the front of the buffer, so when the session task's select drops
    /// this half-way, the next step goes on from the first unwritten byte
    /// (with `write_all` the written part would go out again).
    async fn write_out(&mut self) -> Result<(), SessionError> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        while !self.wbuf.is_empty() {
            if self.io.write_buf(&mut self.wbuf).await? == 0 {
                return Err(SessionError::Closed);
            }
        }
        self.io.flush().await?;
        Ok(())
    }

    /// Read until one whole packet is in (the CONNACK).
    async fn read_packet(&mut self) -> Result<Incoming, SessionError> {
        let mut need = 0;
        loop {
            if let Some(p) = wire::read(self.version, &mut self.rbuf, &mut need)? {
                return Ok(p);
            }
            self.rbuf.reserve(need.max(1024));
            if self.io.read_buf(&mut self.rbuf).await? == 0 {
                return Err(SessionError::Closed);
            }
        }
    }

    /// Decode packets from the read buffer up to the next one the session
    /// task must see; `None` when no whole packet is left. PUBREL and
    /// PINGRESP are handled here.
    fn next_event(&mut self) -> Result<Option<Event>, SessionError> {
        let mut need = 0;
        while let Some(packet) = wire::read(self.version, &mut self.rbuf, &mut need)? {
            let event = match packet {
                Incoming::Publish { topic, payload, qos, pkid, dup } => {
                    let token = (qos > 0).then_some(AckToken { pkid, qos });
                    let msg = Inbound { topic, payload, received_ms: now_ms(), redelivered: dup };
                    Event::Publish(msg, token)
                }
                Incoming::PubRel { pkid } => {
                    wire::pubcomp(&mut self.wbuf, pkid);
                    continue;
                }
                Incoming::PingResp => {
                    self.awaiting_pingresp = false;
                    continue;
                }
                Incoming::SubAck { failures } => Event::Subscribed { failures },
                Incoming::UnsubAck => Event::Unsubscribed,
                Incoming::Disconnect { reason } => return Err(SessionError::ServerDisconnect(reason)),
                Incoming::ConnAck { .. } | Incoming::Other => Event::Other,
            };
            return Ok(Some(event));
        }
        // A packet larger than what is free: make room for all of it at once.
        if need > self.rbuf.capacity() - self.rbuf.len() {
            self.rbuf.reserve(need);
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::HumanDuration;
    use rumqttc::v5::mqttbytes::v5 as p5;
    use rumqttc::v5::mqttbytes::QoS;
    use tokio::net::{TcpListener, TcpStream};

    /// A broker of one connection, scripted by the test.
    async fn broker() -> (TcpListener, MqttConfig) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cfg = MqttConfig {
            url: format!("mqtt://127.0.0.1:{port}"),
            keep_alive: HumanDuration::secs(1),
            connect_timeout: HumanDuration::secs(5),
            max_in_flight: 10,
            ..MqttConfig::default()
        };
        (listener, cfg)
    }

    /// Accept, read the CONNECT and answer it.
    async fn accept(listener: &TcpListener, code: p5::ConnectReturnCode) -> TcpStream {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = BytesMut::new();
        loop {
            s.read_buf(&mut buf).await.unwrap();
            if let Ok(p) = p5::Packet::read(&mut buf, None) {
                assert!(matches!(p, p5::Packet::Connect(..)), "{p:?}");
                break;
            }
        }
        let mut out = BytesMut::new();
        let ack = p5::ConnAck { session_present: false, code, properties: None };
        p5::Packet::ConnAck(ack).write(&mut out, None).unwrap();
        s.write_all(&out).await.unwrap();
        s
    }

    fn publish(buf: &mut BytesMut, qos: QoS, pkid: u16) {
        let mut p = p5::Publish::new("mtic/msg/client/realtime/t/p", qos, format!("{{\"n\":{pkid}}}"), None);
        p.pkid = pkid;
        p5::Packet::Publish(p).write(buf, None).unwrap();
    }

    /// Poll the driver in a task; its events come out of the channel.
    fn drive(driver: Driver) -> tokio::sync::mpsc::UnboundedReceiver<Result<Event, SessionError>> {
        drive_gated(driver, || true)
    }

    /// The same, reading from the broker only while `gate()` is true.
    fn drive_gated(
        mut driver: Driver,
        gate: impl Fn() -> bool + Send + Sync + 'static,
    ) -> tokio::sync::mpsc::UnboundedReceiver<Result<Event, SessionError>> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let ev = driver.poll_gated(&gate).await;
                let failed = ev.is_err();
                if tx.send(ev).is_err() || failed {
                    return;
                }
            }
        });
        rx
    }

    async fn next(
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<Result<Event, SessionError>>,
    ) -> Result<Event, SessionError> {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("an event within 10 s")
            .expect("driver running")
    }

    #[tokio::test]
    async fn acks_go_out_in_order_as_queued_and_qos2_is_completed() {
        let (listener, cfg) = broker().await;
        let (client, driver) = connect(&cfg, "t1", false).unwrap();
        let mut events = drive(driver);
        let mut s = accept(&listener, p5::ConnectReturnCode::Success).await;
        assert!(matches!(next(&mut events).await, Ok(Event::Connected { session_present: false })));

        let mut out = BytesMut::new();
        for pkid in 1..=3 {
            publish(&mut out, QoS::AtLeastOnce, pkid);
        }
        publish(&mut out, QoS::ExactlyOnce, 4);
        publish(&mut out, QoS::AtMostOnce, 0);
        s.write_all(&out).await.unwrap();
        let mut tokens = Vec::new();
        for _ in 0..5 {
            match next(&mut events).await {
                Ok(Event::Publish(msg, token)) => {
                    assert_eq!(msg.topic, "mtic/msg/client/realtime/t/p");
                    tokens.push(token);
                }
                other => panic!("expected a publish, got {other:?}"),
            }
        }
        assert_eq!(tokens[4], None, "QoS 0 needs no ack");
        let mut queued: VecDeque<AckToken> = tokens.into_iter().flatten().collect();
        assert_eq!(client.try_ack_many(&mut queued), 4);

        let mut acks = [0u8; 16];
        s.read_exact(&mut acks).await.unwrap();
        assert_eq!(acks, [0x40, 2, 0, 1, 0x40, 2, 0, 2, 0x40, 2, 0, 3, 0x50, 2, 0, 4]);

        // QoS 2's second step: PUBREL is answered with PUBCOMP.
        let mut out = BytesMut::new();
        p5::Packet::PubRel(p5::PubRel::new(4, None)).write(&mut out, None).unwrap();
        s.write_all(&out).await.unwrap();
        let mut comp = [0u8; 4];
        s.read_exact(&mut comp).await.unwrap();
        assert_eq!(comp, [0x70, 2, 0, 4]);
        client.subscribe(&["a/#".to_string()], Qos::AtLeastOnce);
        let mut buf = BytesMut::new();
        let sub = loop {
            s.read_buf(&mut buf).await.unwrap();
            if let Ok(p) = p5::Packet::read(&mut buf, None) {
                break p;
            }
        };
        let p5::Packet::Subscribe(sub) = sub else { panic!("{sub:?}") };
        assert_eq!(sub.filters[0].path, "a/#");
        assert_ne!(sub.pkid, 0);

        client.disconnect();
        assert!(matches!(next(&mut events).await, Ok(Event::DisconnectSent)));
        let mut disc = [0u8; 2];
        s.read_exact(&mut disc).await.unwrap();
        assert_eq!(disc, [0xE0, 0]);
    }

    #[tokio::test]
    async fn a_broker_that_stops_answering_pings_ends_the_connection() {
        let (listener, cfg) = broker().await;
        let (_client, driver) = connect(&cfg, "t2", false).unwrap();
        let mut events = drive(driver);
        let mut s = accept(&listener, p5::ConnectReturnCode::Success).await;
        assert!(matches!(next(&mut events).await, Ok(Event::Connected { .. })));
        let mut ping = [0u8; 2];
        s.read_exact(&mut ping).await.unwrap();
        assert_eq!(ping, [0xC0, 0], "a PINGREQ after the keep-alive interval");
        // Not answered: the next interval ends the connection.
        assert!(matches!(next(&mut events).await, Err(SessionError::PingTimeout(_))));
    }

    #[tokio::test]
    async fn a_refused_connection_names_the_reason_and_a_closed_one_is_an_error() {
        let (listener, cfg) = broker().await;
        let (_client, mut driver) = connect(&cfg, "t3", false).unwrap();
        let (res, _s) = tokio::join!(driver.poll(), accept(&listener, p5::ConnectReturnCode::NotAuthorized));
        let err = res.unwrap_err();
        assert!(matches!(&err, SessionError::Refused(code) if code == "NotAuthorized"), "{err}");

        let (res, s) = tokio::join!(driver.poll(), accept(&listener, p5::ConnectReturnCode::Success));
        assert!(matches!(res, Ok(Event::Connected { .. })));
        drop(s);
        assert!(matches!(driver.poll().await, Err(SessionError::Closed)));
    }

    #[tokio::test]
    async fn the_outbox_holds_at_most_its_capacity_and_clean_empties_it() {
        let (_listener, cfg) = broker().await;
        let (client, mut driver) = connect(&cfg, "t4", false).unwrap();
        let cap = usize::from(cfg.max_in_flight) * 2 + 64;
        let mut queued: VecDeque<AckToken> = (1..=cap as u16 + 5).map(|pkid| AckToken { pkid, qos: 1 }).collect();
        assert_eq!(client.try_ack_many(&mut queued), cap);
        assert_eq!(queued.len(), 5, "what did not fit stays with the caller");
        let mut one = VecDeque::from([AckToken { pkid: 9, qos: 1 }]);
        assert_eq!(client.try_ack_many(&mut one), 0, "a full outbox takes nothing");
        driver.clean();
        assert_eq!(client.try_ack_many(&mut queued), 5);
    }

    #[tokio::test]
    async fn a_closed_gate_takes_no_message_but_keeps_pinging_and_an_ack_reopens_it() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let (listener, cfg) = broker().await;
        let (client, driver) = connect(&cfg, "t5", false).unwrap();
        let open = Arc::new(AtomicBool::new(false));
        let gate = open.clone();
        let mut events = drive_gated(driver, move || gate.load(Ordering::SeqCst));
        let mut s = accept(&listener, p5::ConnectReturnCode::Success).await;
        assert!(matches!(next(&mut events).await, Ok(Event::Connected { .. })));
        let mut out = BytesMut::new();
        publish(&mut out, QoS::AtLeastOnce, 1);
        s.write_all(&out).await.unwrap();

        // Gate closed for three keep-alive intervals: no message is taken,
        // and the unanswered pings (they are not even read) end nothing.
        let mut pings = [0u8; 6];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut pings)).await.unwrap().unwrap();
        assert_eq!(pings, [0xC0, 0, 0xC0, 0, 0xC0, 0]);
        assert!(events.try_recv().is_err(), "nothing was handed out while the gate was closed");

        // An ack queued wakes the session, which asks the gate again.
        open.store(true, Ordering::SeqCst);
        assert_eq!(client.try_ack_many(&mut VecDeque::from([AckToken { pkid: 77, qos: 1 }])), 1);
        match next(&mut events).await {
            Ok(Event::Publish(msg, Some(t))) => assert_eq!((msg.payload.as_ref(), t.pkid), (&b"{\"n\":1}"[..], 1)),
            other => panic!("expected the publish, got {other:?}"),
        }
        let mut ack = [0u8; 4];
        s.read_exact(&mut ack).await.unwrap();
        assert_eq!(ack, [0x40, 2, 0, 77]);
    }
}
