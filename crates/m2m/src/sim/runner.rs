//! One simulated machine on the wire: a tokio task that connects (after its place in the connect
//! ramp), subscribes to the machine's command topic, ticks the machine's model and publishes what
//! it says, hands it the commands that arrive, and reconnects with back-off when the broker goes
//! away. Machines that buffer (vehicles) keep what they measure while offline and publish the
//! backlog at QoS 1, in order, when the link returns.
//!
//! The model ([`Machine`]) is sans-IO: it gets simulated seconds and wall-clock timestamps and gives
//! back messages, so the physics is unit-tested without a broker.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use m2m_codec::{
    decode, encode, Ack, Connect, ConnectProperties, Disconnect, Packet, PacketId, ProtocolVersion, Publish,
    PublishProperties, QoS, Subscribe, SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::rng::Rng;

/// Most unacknowledged QoS 1/2 publishes of one machine (less if the broker's Receive Maximum is).
const WINDOW: usize = 32;
/// Largest packet read from the broker (commands are small).
const MAX_PACKET: usize = 1024 * 1024;
/// How long a TCP connect plus CONNACK, or one write, may take.
const IO_LIMIT: Duration = Duration::from_secs(10);
/// How many messages wait while a machine that does not buffer offline is connected but its window
/// is full; older ones are dropped.
const SEND_QUEUE: usize = 1000;

/// A message a machine publishes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Message {
    pub(crate) topic: Arc<str>,
    pub(crate) payload: Bytes,
    pub(crate) retain: bool,
}

impl Message {
    /// A JSON payload, its fields in the order of `value`'s.
    pub(crate) fn json(topic: &Arc<str>, value: &impl serde::Serialize, retain: bool) -> Message {
        // Serializing plain structs, maps of strings and numbers cannot fail.
        let payload = serde_json::to_vec(value).unwrap_or_default();
        Message { topic: topic.clone(), payload: Bytes::from(payload), retain }
    }
}

/// The model of a simulated machine: sans-IO.
pub(crate) trait Machine: Send + 'static {
    /// The machine's name: part of its topics, client id and (with a username prefix) username.
    fn name(&self) -> &str;
    /// The topic its commands arrive on.
    fn command_topic(&self) -> &Arc<str>;
    /// What it says on each (re)connection: retained state, current readings.
    fn connected(&mut self, ts: u64, out: &mut Vec<Message>);
    /// Advances by `dt` simulated seconds (at wall-clock time `ts`, Unix ms) and says what it measured.
    fn tick(&mut self, dt: f64, ts: u64, out: &mut Vec<Message>);
    /// Obeys a command (a JSON payload on [`Machine::command_topic`]); `{"cmd": "simulate_dropout"}`
    /// never reaches it (the link obeys that one).
    ///
    /// # Errors
    /// What is wrong with the command; the machine ignores it.
    fn command(&mut self, command: &serde_json::Value, ts: u64, out: &mut Vec<Message>)
        -> Result<(), String>;
}

/// Counters shared by every machine of a run, for the summary line.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Messages published (QoS 0: written; QoS 1/2: acknowledged).
    pub(crate) published: AtomicU64,
    /// Commands received.
    pub(crate) commands: AtomicU64,
    /// Machines connected now.
    pub(crate) connected: AtomicI64,
    /// Connections made after a machine's first.
    pub(crate) reconnects: AtomicU64,
    /// Drop-outs (simulated or triggered by a command).
    pub(crate) dropouts: AtomicU64,
    /// Messages waiting in machines' buffers now.
    pub(crate) buffered: AtomicI64,
    /// Messages lost: a full buffer, or refused by the broker.
    pub(crate) dropped: AtomicU64,
    /// The last connection or protocol error, for the summary line.
    pub(crate) last_error: Mutex<Option<String>>,
}

impl Stats {
    fn error(&self, error: String) {
        // Held only to swap a string: never across an await.
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(error);
        }
    }
}

/// Where the broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) host: String,
    pub(crate) port: u16,
}

/// Random drop-outs of the link.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dropouts {
    /// Drop-outs per hour (of wall-clock time).
    pub(crate) per_hour: f64,
    pub(crate) min: Duration,
    pub(crate) max: Duration,
}

/// How one machine connects and behaves on the wire.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) target: Arc<Target>,
    pub(crate) version: ProtocolVersion,
    pub(crate) qos: QoS,
    pub(crate) keep_alive: u16,
    pub(crate) client_id: Arc<str>,
    pub(crate) username: Option<Arc<str>>,
    pub(crate) password: Option<Bytes>,
    /// Wall-clock time between two ticks of the model.
    pub(crate) tick: Duration,
    /// Simulated seconds per wall-clock second.
    pub(crate) time_scale: f64,
    /// When to connect first: the machine's place in the connect ramp.
    pub(crate) start_delay: Duration,
    /// Messages kept while offline (0: what is measured offline is not kept).
    pub(crate) buffer: usize,
    pub(crate) dropouts: Option<Dropouts>,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    /// For back-off jitter and random drop-outs.
    pub(crate) rng: Rng,
}

/// A QoS 1/2 publish not yet acknowledged.
#[derive(Debug)]
struct Inflight {
    id: u16,
    message: Message,
}

/// A live connection to the broker.
struct Link {
    read: OwnedReadHalf,
    write: OwnedWriteHalf,
    buf: BytesMut,
    window: usize,
    max_qos: QoS,
    keep_alive: Option<Duration>,
    last_sent: Instant,
    ping_sent: Option<Instant>,
}

impl Link {
    /// When the link needs attention: a PINGREQ is due, or its PINGRESP is late.
    fn deadline(&self) -> Option<Instant> {
        let keep_alive = self.keep_alive?;
        Some(match self.ping_sent {
            Some(sent) => sent + keep_alive,
            None => self.last_sent + keep_alive,
        })
    }
}

type Opening = Pin<Box<dyn Future<Output = Result<Link, String>> + Send>>;

/// Runs machine `machine` until `stop`, then disconnects cleanly.
pub(crate) async fn run<M: Machine>(machine: M, plan: Plan, stats: Arc<Stats>, stop: CancellationToken) {
    tokio::select! {
        () = stop.cancelled() => return,
        () = tokio::time::sleep(plan.start_delay) => {}
    }
    let mut runner = Runner {
        command_topic: machine.command_topic().clone(),
        machine,
        plan,
        stats,
        link: None,
        opening: None,
        retry_at: None,
        attempts: 0,
        connections: 0,
        pending: VecDeque::new(),
        inflight: VecDeque::new(),
        incoming: HashSet::new(),
        next_id: 0,
        next_dropout: None,
        buffered: 0,
        out: Vec::new(),
    };
    runner.open();
    runner.schedule_dropout();
    let mut ticker = tokio::time::interval(runner.plan.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_tick = Instant::now();
    let far = || tokio::time::Instant::now() + Duration::from_secs(86_400);
    loop {
        let ping = runner.link.as_ref().and_then(Link::deadline).map_or_else(far, Into::into);
        let retry = runner.retry_at.map_or_else(far, Into::into);
        let dropout = runner.next_dropout.filter(|_| runner.link.is_some()).map_or_else(far, Into::into);
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticker.tick() => {
                let now = Instant::now();
                let dt = now.duration_since(last_tick).as_secs_f64() * runner.plan.time_scale;
                last_tick = now;
                let mut out = std::mem::take(&mut runner.out);
                runner.machine.tick(dt, unix_ms(), &mut out);
                runner.queue(&mut out);
                runner.out = out;
                runner.send().await;
            }
            opened = maybe(runner.opening.as_mut()) => {
                runner.opening = None;
                match opened {
                    Ok(link) => runner.up(link).await,
                    Err(e) => runner.failed(e),
                }
            }
            read = read_more(runner.link.as_mut()) => match read {
                Ok(0) => runner.lost("the broker closed the connection".to_owned()),
                Ok(_) => runner.received().await,
                Err(e) => runner.lost(format!("read failed: {e}")),
            },
            () = tokio::time::sleep_until(ping), if runner.link.is_some() => runner.keep_alive().await,
            () = tokio::time::sleep_until(retry), if runner.retry_at.is_some() => {
                runner.retry_at = None;
                runner.open();
            }
            () = tokio::time::sleep_until(dropout), if runner.link.is_some() && runner.next_dropout.is_some() => {
                let secs = runner.plan.dropouts.map_or(Duration::ZERO, |d| {
                    let span = d.max.saturating_sub(d.min).as_secs_f64();
                    d.min + Duration::from_secs_f64(span * runner.plan.rng.unit())
                });
                runner.dropout(secs);
                runner.schedule_dropout();
            }
        }
        runner.account();
    }
    runner.close().await;
}

/// Awaits `f` if there is one; never completes otherwise.
async fn maybe<F: Future + Unpin>(f: Option<&mut F>) -> F::Output {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// Reads more bytes into the link's buffer; never completes without a link.
///
/// # Cancel safety
/// Safe in `select!`: `read_buf` reads nothing when cancelled.
async fn read_more(link: Option<&mut Link>) -> std::io::Result<usize> {
    match link {
        Some(link) => {
            link.buf.reserve(4096);
            link.read.read_buf(&mut link.buf).await
        }
        None => std::future::pending().await,
    }
}

struct Runner<M> {
    machine: M,
    command_topic: Arc<str>,
    plan: Plan,
    stats: Arc<Stats>,
    link: Option<Link>,
    opening: Option<Opening>,
    /// When to try to connect again (after a failure or during a drop-out).
    retry_at: Option<Instant>,
    /// Failed attempts since the last connection, for the back-off.
    attempts: u32,
    connections: u64,
    /// Messages not yet written, oldest first.
    pending: VecDeque<(Message, QoS)>,
    /// Written, not yet acknowledged, oldest first.
    inflight: VecDeque<(Inflight, QoS)>,
    /// QoS 2 commands received and not yet released.
    incoming: HashSet<u16>,
    next_id: u16,
    next_dropout: Option<Instant>,
    /// What this machine last added to `stats.buffered`.
    buffered: i64,
    out: Vec<Message>,
}

impl<M: Machine> Runner<M> {
    fn open(&mut self) {
        let connect = Connect {
            protocol: self.plan.version,
            clean_start: true,
            keep_alive: self.plan.keep_alive,
            client_id: self.plan.client_id.clone(),
            will: None,
            username: self.plan.username.clone(),
            password: self.plan.password.clone(),
            properties: ConnectProperties {
                maximum_packet_size: self.plan.version.is_v5().then_some(MAX_PACKET as u32),
                ..ConnectProperties::default()
            },
        };
        self.opening = Some(Box::pin(open(self.plan.target.clone(), connect)));
    }

    fn schedule_dropout(&mut self) {
        self.next_dropout = self.plan.dropouts.filter(|d| d.per_hour > 0.0).map(|d| {
            let secs = self.plan.rng.exponential(3600.0 / d.per_hour).min(1e7);
            Instant::now() + Duration::from_secs_f64(secs)
        });
    }

    async fn up(&mut self, link: Link) {
        self.attempts = 0;
        self.connections += 1;
        if self.connections > 1 {
            self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        self.stats.connected.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(machine = self.machine.name(), "connected");
        self.link = Some(link);
        let subscribe = Subscribe {
            packet_id: PacketId::MIN,
            subscription_identifier: None,
            user_properties: vec![],
            filters: vec![(
                self.command_topic.clone(),
                SubscriptionOptions { qos: QoS::AtLeastOnce, ..SubscriptionOptions::default() },
            )],
        };
        let mut out = std::mem::take(&mut self.out);
        self.machine.connected(unix_ms(), &mut out);
        self.queue(&mut out);
        self.out = out;
        if self.write(&[Packet::Subscribe(subscribe)]).await {
            self.send().await;
        }
    }

    fn failed(&mut self, error: String) {
        tracing::debug!(machine = self.machine.name(), %error, "cannot connect");
        self.stats.error(error);
        self.attempts = self.attempts.saturating_add(1);
        let delay =
            backoff_delay(self.plan.backoff_min, self.plan.backoff_max, self.attempts, self.plan.rng.unit());
        self.retry_at = Some(Instant::now() + delay);
    }

    /// The connection ended: reconnect soon.
    fn lost(&mut self, error: String) {
        if self.drop_link() {
            tracing::debug!(machine = self.machine.name(), %error, "connection lost");
            self.stats.error(error);
            self.failed_soon();
        }
    }

    /// Closes the link, if there is one; what was in flight is sent again on the next, if kept.
    fn drop_link(&mut self) -> bool {
        if self.link.take().is_none() {
            return false;
        }
        self.stats.connected.fetch_sub(1, Ordering::Relaxed);
        self.incoming.clear();
        while let Some((inflight, qos)) = self.inflight.pop_back() {
            if self.plan.buffer > 0 {
                self.pending.push_front((inflight.message, qos));
            } else {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.trim();
        true
    }

    /// After a lost connection: try again at once the first time, then back off.
    fn failed_soon(&mut self) {
        let delay = if self.attempts == 0 {
            Duration::ZERO
        } else {
            backoff_delay(self.plan.backoff_min, self.plan.backoff_max, self.attempts, self.plan.rng.unit())
        };
        self.attempts = self.attempts.saturating_add(1);
        self.retry_at = Some(Instant::now() + delay);
    }

    /// Loses the link for `secs`, as a vehicle driving through a dead zone does.
    fn dropout(&mut self, secs: Duration) {
        self.stats.dropouts.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(machine = self.machine.name(), secs = secs.as_secs_f64(), "drop-out");
        self.drop_link();
        self.opening = None;
        self.retry_at = Some(Instant::now() + secs);
        // The end of a drop-out is not a failure: connect at once.
        self.attempts = 0;
    }

    /// Takes the model's messages: to be sent, kept while offline, or lost.
    fn queue(&mut self, out: &mut Vec<Message>) {
        let online = self.link.is_some();
        for message in out.drain(..) {
            if online {
                self.pending.push_back((message, self.plan.qos));
            } else if self.plan.buffer > 0 {
                // The backlog goes out at QoS 1 at least: it waited to be delivered.
                self.pending.push_back((message, self.plan.qos.max(QoS::AtLeastOnce)));
            }
        }
        self.trim();
    }

    fn trim(&mut self) {
        let cap = if self.plan.buffer > 0 { self.plan.buffer } else { SEND_QUEUE };
        while self.pending.len() > cap {
            self.pending.pop_front();
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Writes what may be written: QoS 0 at once, QoS 1/2 within the window, in order.
    async fn send(&mut self) {
        let Some(link) = &self.link else { return };
        let (window, max_qos, version) = (link.window, link.max_qos, self.plan.version);
        let mut out = BytesMut::new();
        let mut written0 = 0;
        while let Some((_, qos)) = self.pending.front() {
            let qos = (*qos).min(max_qos);
            if qos != QoS::AtMostOnce && self.inflight.len() >= window {
                break;
            }
            let Some((message, _)) = self.pending.pop_front() else { break };
            let packet_id = (qos != QoS::AtMostOnce).then(|| self.packet_id());
            let publish = Publish {
                dup: false,
                qos,
                retain: message.retain,
                topic: message.topic.clone(),
                packet_id: packet_id.and_then(PacketId::new),
                properties: PublishProperties::default(),
                payload: message.payload.clone(),
            };
            if let Err(e) = encode(&Packet::Publish(publish), version, &mut out) {
                self.stats.error(format!("cannot encode a publish: {e}"));
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            match packet_id {
                Some(id) => self.inflight.push_back((Inflight { id, message }, qos)),
                None => written0 += 1,
            }
        }
        if !out.is_empty() && self.write_bytes(&out).await {
            self.stats.published.fetch_add(written0, Ordering::Relaxed);
        }
    }

    fn packet_id(&mut self) -> u16 {
        loop {
            self.next_id = self.next_id.checked_add(1).unwrap_or(1);
            let id = self.next_id;
            if !self.inflight.iter().any(|(i, _)| i.id == id) {
                return id;
            }
        }
    }

    async fn write(&mut self, packets: &[Packet]) -> bool {
        let mut out = BytesMut::new();
        for p in packets {
            if let Err(e) = encode(p, self.plan.version, &mut out) {
                self.stats.error(format!("cannot encode {}: {e}", p.name()));
                return false;
            }
        }
        self.write_bytes(&out).await
    }

    /// Writes to the link; a failure (or a broker that stops reading) loses it.
    async fn write_bytes(&mut self, bytes: &[u8]) -> bool {
        let Some(link) = &mut self.link else { return false };
        match tokio::time::timeout(IO_LIMIT, link.write.write_all(bytes)).await {
            Ok(Ok(())) => {
                link.last_sent = Instant::now();
                true
            }
            Ok(Err(e)) => {
                self.lost(format!("write failed: {e}"));
                false
            }
            Err(_) => {
                self.lost("write timed out".to_owned());
                false
            }
        }
    }

    async fn keep_alive(&mut self) {
        let Some(link) = &mut self.link else { return };
        if link.ping_sent.is_some() {
            self.lost("no PINGRESP within the keep-alive".to_owned());
            return;
        }
        link.ping_sent = Some(Instant::now());
        self.write(&[Packet::PingReq]).await;
    }

    /// Handles the packets in the link's buffer.
    async fn received(&mut self) {
        let mut replies = Vec::new();
        let mut dropouts = Vec::new();
        loop {
            let Some(link) = &mut self.link else { return };
            let packet = match decode(&mut link.buf, self.plan.version, MAX_PACKET) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    self.lost(format!("malformed packet from the broker: {e}"));
                    return;
                }
            };
            match packet {
                Packet::Publish(p) => {
                    let fresh = match (p.qos, p.packet_id) {
                        (QoS::AtLeastOnce, Some(id)) => {
                            replies.push(Packet::PubAck(Ack::new(id)));
                            true
                        }
                        (QoS::ExactlyOnce, Some(id)) => {
                            replies.push(Packet::PubRec(Ack::new(id)));
                            self.incoming.insert(id.get())
                        }
                        _ => true,
                    };
                    if fresh && p.topic == self.command_topic {
                        dropouts.extend(self.command(&p.payload));
                    }
                }
                Packet::PubAck(ack) => self.acknowledged(&ack),
                Packet::PubRec(ack) => {
                    if ack.reason_code.is_error() {
                        self.acknowledged(&ack);
                    } else {
                        replies.push(Packet::PubRel(Ack::new(ack.packet_id)));
                    }
                }
                Packet::PubComp(ack) => self.acknowledged(&ack),
                Packet::PubRel(rel) => {
                    self.incoming.remove(&rel.packet_id.get());
                    replies.push(Packet::PubComp(Ack::new(rel.packet_id)));
                }
                Packet::SubAck(ack) if ack.reason_codes.iter().any(|c| c.is_error()) => {
                    self.stats
                        .error(format!("the broker refused the subscription to {}", self.command_topic));
                }
                Packet::PingResp => link.ping_sent = None,
                Packet::Disconnect(d) => {
                    self.lost(format!("the broker disconnected: {}", d.reason_code.description()));
                    return;
                }
                _ => {}
            }
        }
        if !replies.is_empty() && !self.write(&replies).await {
            return;
        }
        if let Some(secs) = dropouts.pop() {
            self.dropout(secs);
        }
        self.send().await;
    }

    /// Obeys a command; a drop-out asked for is returned, to be taken once the replies are out.
    fn command(&mut self, payload: &[u8]) -> Option<Duration> {
        self.stats.commands.fetch_add(1, Ordering::Relaxed);
        let command = match serde_json::from_slice::<serde_json::Value>(payload) {
            Ok(c) if c.is_object() => c,
            _ => {
                tracing::info!(machine = self.machine.name(), "command ignored: not a JSON object");
                return None;
            }
        };
        if command["cmd"] == "simulate_dropout" {
            return match command["secs"].as_f64() {
                Some(secs) if secs > 0.0 && secs <= 86_400.0 => Some(Duration::from_secs_f64(secs)),
                _ => {
                    tracing::info!(
                        machine = self.machine.name(),
                        "simulate_dropout ignored: secs must be from 0 to 86400"
                    );
                    None
                }
            };
        }
        let mut out = std::mem::take(&mut self.out);
        if let Err(e) = self.machine.command(&command, unix_ms(), &mut out) {
            tracing::info!(machine = self.machine.name(), error = %e, "command ignored");
        }
        self.queue(&mut out);
        self.out = out;
        None
    }

    fn acknowledged(&mut self, ack: &Ack) {
        let id = ack.packet_id.get();
        let Some(at) = self.inflight.iter().position(|(i, _)| i.id == id) else { return };
        let Some((inflight, _)) = self.inflight.remove(at) else { return };
        if ack.reason_code.is_error() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            self.stats.error(format!(
                "the broker refused a publish to {}: {}",
                inflight.message.topic,
                ack.reason_code.description()
            ));
        } else {
            self.stats.published.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Brings this machine's share of `stats.buffered` up to date.
    fn account(&mut self) {
        let now = i64::try_from(self.pending.len() + self.inflight.len()).unwrap_or(i64::MAX);
        if now != self.buffered {
            self.stats.buffered.fetch_add(now - self.buffered, Ordering::Relaxed);
            self.buffered = now;
        }
    }

    /// Says goodbye with DISCONNECT; what is still unsent is counted as dropped.
    async fn close(&mut self) {
        if self.link.is_some() {
            self.write(&[Packet::Disconnect(Disconnect::default())]).await;
            if let Some(mut link) = self.link.take() {
                let _ = link.write.shutdown().await;
                self.stats.connected.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let unsent = u64::try_from(self.pending.len()).unwrap_or(u64::MAX);
        self.stats.dropped.fetch_add(unsent, Ordering::Relaxed);
        self.pending.clear();
        self.inflight.clear();
        self.account();
    }
}

/// Opens TCP, sends CONNECT and waits for the CONNACK.
async fn open(target: Arc<Target>, connect: Connect) -> Result<Link, String> {
    let version = connect.protocol;
    let keep_alive = connect.keep_alive;
    let opening = async {
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| format!("cannot connect to {}:{}: {e}", target.host, target.port))?;
        tcp.set_nodelay(true).map_err(|e| format!("cannot set TCP_NODELAY: {e}"))?;
        let (mut read, mut write) = tcp.into_split();
        let mut out = BytesMut::new();
        encode(&Packet::Connect(Box::new(connect)), version, &mut out)
            .map_err(|e| format!("cannot encode CONNECT: {e}"))?;
        write.write_all(&out).await.map_err(|e| format!("write failed: {e}"))?;
        let mut buf = BytesMut::with_capacity(4096);
        let ack = loop {
            match decode(&mut buf, version, MAX_PACKET) {
                Ok(Some(Packet::ConnAck(ack))) => break ack,
                Ok(Some(other)) => return Err(format!("expected CONNACK, the broker sent {}", other.name())),
                Ok(None) => {}
                Err(e) => return Err(format!("malformed CONNACK: {e}")),
            }
            match read.read_buf(&mut buf).await {
                Ok(0) => return Err("the broker closed the connection before CONNACK".to_owned()),
                Ok(_) => {}
                Err(e) => return Err(format!("read failed: {e}")),
            }
        };
        if ack.reason_code.is_error() {
            return Err(format!("the broker refused the connection: {}", ack.reason_code.description()));
        }
        let props = &ack.properties;
        let keep_alive = props.server_keep_alive.unwrap_or(keep_alive);
        Ok(Link {
            read,
            write,
            buf,
            window: props.receive_maximum.map_or(WINDOW, |r| usize::from(r).clamp(1, WINDOW)),
            max_qos: props.maximum_qos.unwrap_or(QoS::ExactlyOnce),
            keep_alive: (keep_alive > 0).then(|| Duration::from_secs(u64::from(keep_alive))),
            last_sent: Instant::now(),
            ping_sent: None,
        })
    };
    match tokio::time::timeout(IO_LIMIT, opening).await {
        Ok(result) => result,
        Err(_) => Err(format!("no CONNACK from {}:{} within {IO_LIMIT:?}", target.host, target.port)),
    }
}

/// The delay before attempt `attempt` (from 1): `min(min × 2^(attempt-1), max)` with equal jitter,
/// i.e. scaled to between half and all of it by `unit` in `[0, 1)`, so that a fleet whose broker
/// comes back does not reconnect all at once.
pub(crate) fn backoff_delay(min: Duration, max: Duration, attempt: u32, unit: f64) -> Duration {
    let doubling = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
    let delay = min.saturating_mul(doubling).min(max);
    (delay / 2).saturating_add(delay.mul_f64(unit / 2.0))
}

/// Now, in milliseconds since the Unix epoch.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_up_to_its_maximum_with_jitter() {
        let (min, max) = (Duration::from_millis(500), Duration::from_secs(30));
        assert_eq!(backoff_delay(min, max, 1, 0.0), Duration::from_millis(250));
        assert_eq!(backoff_delay(min, max, 2, 0.0), Duration::from_millis(500));
        let third = backoff_delay(min, max, 3, 0.999);
        assert!(third > Duration::from_millis(1990) && third < Duration::from_millis(2000), "{third:?}");
        assert_eq!(backoff_delay(min, max, 40, 0.0), Duration::from_secs(15));
    }
}
