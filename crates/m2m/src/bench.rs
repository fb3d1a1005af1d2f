//! `m2m bench`: load and latency against any MQTT broker (this node or another), over MQTT 3.1.1 so
//! that every broker is measured the same way.
//!
//! Scenarios: `fan-in` (N publishers → 1 subscriber), `fan-out` (1 publisher → N subscribers),
//! `latency` (a fixed rate, one-way latency percentiles), `queue` and `drain` (messages left for
//! offline sessions, then received by them), `conns` (idle connections, resident memory of the broker
//! process). Every scenario is bounded in time and count and stops by itself.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{BufMut, Bytes, BytesMut};
use m2m_codec::{
    decode, encode, Ack, Connect, ConnectProperties, Packet, PacketId, ProtocolVersion, Publish,
    PublishProperties, QoS, ReasonCode, Subscribe, SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Arguments shared by every scenario.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Common {
    /// Broker address.
    #[arg(long, default_value = "127.0.0.1:1883")]
    addr: SocketAddr,
    /// Subscribers connect here instead of --addr: another node of a mesh, so that every message
    /// crosses the mesh.
    #[arg(long, value_name = "ADDR")]
    sub_addr: Option<SocketAddr>,
    /// Payload size in bytes (at least 16 for latency).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// QoS of publishes and subscriptions (0, 1 or 2; 2 is measured as 1 by the publisher window).
    #[arg(long, default_value_t = 0)]
    qos: u8,
    /// Seconds measured, after one second of warm-up.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Label printed in the result line (e.g. the broker's name).
    #[arg(long, default_value = "broker")]
    label: String,
    /// Inflight window of a QoS 1 publisher.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Subscribers keep their session (3.1.1 Clean Session 0), so a node with a store writes every
    /// QoS 1 message for them before acknowledging it.
    #[arg(long)]
    persistent: bool,
    /// Username every client connects with (with a device registry: a device id).
    #[arg(long)]
    username: Option<String>,
    /// Password every client connects with.
    #[arg(long, requires = "username")]
    password: Option<String>,
}

impl Common {
    fn sub_addr(&self) -> SocketAddr {
        self.sub_addr.unwrap_or(self.addr)
    }

    fn login(&self) -> Login {
        login(self.username.as_deref(), self.password.as_deref())
    }
}

/// A username and password to connect with, if any.
type Login = Option<(Arc<str>, Option<Bytes>)>;

fn login(username: Option<&str>, password: Option<&str>) -> Login {
    username.map(|u| (Arc::from(u), password.map(|p| Bytes::copy_from_slice(p.as_bytes()))))
}

/// The offline sessions of `queue` and `drain`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Fleet {
    /// Broker address.
    #[arg(long, default_value = "127.0.0.1:1883")]
    addr: SocketAddr,
    /// Persistent sessions (client ids `bench-queue-0`, `bench-queue-1`, ...).
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// Messages queued for each session (the node keeps `max_queued`, default 1000, per session).
    #[arg(long, default_value_t = 1000)]
    messages: u64,
    /// Label printed in the result line.
    #[arg(long, default_value = "broker")]
    label: String,
}

/// The scenarios.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Scenario {
    /// N publishers → 1 subscriber: messages per second received.
    FanIn {
        #[command(flatten)]
        common: Common,
        /// Publishers.
        #[arg(long, default_value_t = 4)]
        publishers: usize,
    },
    /// 1 publisher → N subscribers: deliveries per second.
    FanOut {
        #[command(flatten)]
        common: Common,
        /// Subscribers.
        #[arg(long, default_value_t = 50)]
        subscribers: usize,
    },
    /// One publisher at a fixed rate, one subscriber: latency percentiles.
    Latency {
        #[command(flatten)]
        common: Common,
        /// Messages per second.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
    },
    /// Leaves messages queued for offline sessions: `sessions` persistent subscribers subscribe to
    /// `bench/queue` at QoS 1 and disconnect, then one publisher sends `messages` QoS 1 messages, each
    /// acknowledged (with a store: once it is durable for every session).
    Queue {
        #[command(flatten)]
        fleet: Fleet,
        /// Payload size in bytes.
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// Inflight window of the publisher.
        #[arg(long, default_value_t = 256)]
        window: usize,
        /// Only publish: the sessions already exist (elsewhere: on another node of a mesh, whose
        /// outbox then keeps the messages while that node is down).
        #[arg(long)]
        publish_only: bool,
    },
    /// Reconnects the sessions `queue` left and receives their messages until each has `messages`:
    /// how long a fleet takes to catch up (for example after a restart of the node).
    Drain {
        #[command(flatten)]
        fleet: Fleet,
        /// Seconds before giving up.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Connection rate: CONNECT, CONNACK, DISCONNECT, `count` times, `concurrency` at once (with a
    /// username and password: the cost of checking them).
    Connect {
        /// Broker address.
        #[arg(long, default_value = "127.0.0.1:1883")]
        addr: SocketAddr,
        /// Connections in all.
        #[arg(long, default_value_t = 2000)]
        count: usize,
        /// Connections at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Username.
        #[arg(long)]
        username: Option<String>,
        /// Password.
        #[arg(long, requires = "username")]
        password: Option<String>,
        /// Label printed in the result line.
        #[arg(long, default_value = "broker")]
        label: String,
    },
    /// Opens idle connections and reports the broker's resident memory per connection.
    Conns {
        /// Broker address.
        #[arg(long, default_value = "127.0.0.1:1883")]
        addr: SocketAddr,
        /// Connections to open.
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        /// Process id of the broker, to read its resident memory from /proc.
        #[arg(long)]
        pid: u32,
        /// Label printed in the result line.
        #[arg(long, default_value = "broker")]
        label: String,
    },
}

/// Runs a scenario and prints one result line.
pub(crate) fn run(scenario: Scenario) -> anyhow::Result<()> {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start runtime")?;
    let line = runtime.block_on(async move {
        match scenario {
            Scenario::FanIn { common, publishers } => throughput(&common, publishers, 1).await,
            Scenario::FanOut { common, subscribers } => throughput(&common, 1, subscribers).await,
            Scenario::Latency { common, rate } => latency(&common, rate).await,
            Scenario::Queue { fleet, payload, window, publish_only } => {
                queue(&fleet, payload, window, publish_only).await
            }
            Scenario::Drain { fleet, timeout } => drain(&fleet, Duration::from_secs(timeout)).await,
            Scenario::Connect { addr, count, concurrency, username, password, label } => {
                let login = login(username.as_deref(), password.as_deref());
                connect_rate(addr, count, concurrency, login, &label).await
            }
            Scenario::Conns { addr, count, pid, label } => conns(addr, count, pid, &label).await,
        }
    })?;
    println!("{line}");
    Ok(())
}

fn qos_of(common: &Common) -> anyhow::Result<QoS> {
    match QoS::from_u8(common.qos) {
        Some(q) => Ok(q),
        None => bail!("--qos must be 0, 1 or 2"),
    }
}

/// A connected bench client: its two halves, and what arrived after the CONNACK (a resumed session's
/// messages can share its TCP segment).
type Connected = (OwnedReadHalf, OwnedWriteHalf, BytesMut);

/// A bench client connection: 3.1.1, with a clean session unless `keep_session`, anonymous.
async fn connect(
    addr: SocketAddr,
    client_id: &str,
    keep_alive: u16,
    keep_session: bool,
) -> anyhow::Result<Connected> {
    connect_as(addr, client_id, keep_alive, keep_session, &None).await
}

/// As [`connect`], with a username and password.
async fn connect_as(
    addr: SocketAddr,
    client_id: &str,
    keep_alive: u16,
    keep_session: bool,
    login: &Login,
) -> anyhow::Result<Connected> {
    let stream = TcpStream::connect(addr).await.with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let (mut read, mut write) = stream.into_split();
    let connect = Connect {
        protocol: ProtocolVersion::V311,
        clean_start: !keep_session,
        keep_alive,
        client_id: Arc::from(client_id),
        will: None,
        username: login.as_ref().map(|(u, _)| u.clone()),
        password: login.as_ref().and_then(|(_, p)| p.clone()),
        properties: ConnectProperties::default(),
    };
    write_packet(&mut write, &Packet::Connect(Box::new(connect))).await?;
    let mut buf = BytesMut::new();
    match read_packet(&mut read, &mut buf).await? {
        Packet::ConnAck(ack) if ack.reason_code == ReasonCode::SUCCESS => Ok((read, write, buf)),
        Packet::ConnAck(ack) => bail!("connection refused: {}", ack.reason_code),
        other => bail!("expected CONNACK, got {}", other.name()),
    }
}

async fn write_packet(write: &mut OwnedWriteHalf, packet: &Packet) -> anyhow::Result<()> {
    let mut out = BytesMut::new();
    encode(packet, ProtocolVersion::V311, &mut out)?;
    write.write_all(&out).await?;
    Ok(())
}

async fn read_packet(read: &mut OwnedReadHalf, buf: &mut BytesMut) -> anyhow::Result<Packet> {
    loop {
        if let Some(p) = decode(buf, ProtocolVersion::V311, usize::MAX)? {
            return Ok(p);
        }
        if read.read_buf(buf).await? == 0 {
            bail!("broker closed the connection");
        }
    }
}

fn pid(n: u16) -> PacketId {
    PacketId::new(n.max(1)).unwrap_or(PacketId::MIN)
}

/// Where a latency subscriber records: one-way latencies in nanoseconds, of messages whose sequence
/// number is at least `from_seq` (the payload starts with the send time in nanoseconds since `epoch`,
/// then the sequence number).
struct LatencySink {
    epoch: Instant,
    from_seq: u64,
    samples: Arc<std::sync::Mutex<Vec<u64>>>,
}

/// Subscribes and then counts PUBLISHes (acknowledging QoS 1/2), recording latency when `latencies`
/// is given.
/// Who a bench subscriber is: its address, client id, and whether it keeps its session.
struct SubscriberId {
    addr: SocketAddr,
    id: String,
    keep_session: bool,
    login: Login,
}

async fn subscriber(
    who: SubscriberId,
    topic: &'static str,
    qos: QoS,
    received: Arc<AtomicU64>,
    latencies: Option<LatencySink>,
    ready: Arc<Semaphore>,
) -> anyhow::Result<()> {
    if who.keep_session {
        // Start from an empty session, so that nothing left by an earlier run is counted.
        let (_, mut write, _) = connect_as(who.addr, &who.id, 0, false, &who.login).await?;
        write_packet(&mut write, &Packet::Disconnect(Default::default())).await?;
    }
    let (mut read, mut write, mut buf) =
        connect_as(who.addr, &who.id, 0, who.keep_session, &who.login).await?;
    let options = SubscriptionOptions { qos, ..Default::default() };
    let sub = Subscribe {
        packet_id: pid(1),
        subscription_identifier: None,
        user_properties: vec![],
        filters: vec![(Arc::from(topic), options)],
    };
    write_packet(&mut write, &Packet::Subscribe(sub)).await?;
    buf.reserve(64 * 1024);
    loop {
        if let Packet::SubAck(_) = read_packet(&mut read, &mut buf).await? {
            break;
        }
    }
    ready.add_permits(1);
    let mut acks = BytesMut::new();
    let mut local = Vec::new();
    loop {
        let mut n = 0;
        while let Some(p) = decode(&mut buf, ProtocolVersion::V311, usize::MAX)? {
            match p {
                Packet::Publish(p) => {
                    n += 1;
                    if let Some(sink) = &latencies {
                        if let (Some(sent), Some(seq)) = (p.payload.get(..8), p.payload.get(8..16)) {
                            let sent = u64::from_be_bytes(sent.try_into().unwrap_or_default());
                            let seq = u64::from_be_bytes(seq.try_into().unwrap_or_default());
                            if seq >= sink.from_seq {
                                let now = sink.epoch.elapsed().as_nanos() as u64;
                                local.push(now.saturating_sub(sent));
                            }
                        }
                    }
                    match (p.qos, p.packet_id) {
                        (QoS::AtLeastOnce, Some(id)) => {
                            encode(&Packet::PubAck(Ack::new(id)), ProtocolVersion::V311, &mut acks)?
                        }
                        (QoS::ExactlyOnce, Some(id)) => {
                            encode(&Packet::PubRec(Ack::new(id)), ProtocolVersion::V311, &mut acks)?
                        }
                        _ => {}
                    }
                }
                Packet::PubRel(a) => {
                    encode(&Packet::PubComp(Ack::new(a.packet_id)), ProtocolVersion::V311, &mut acks)?
                }
                _ => {}
            }
        }
        if n > 0 {
            received.fetch_add(n, Ordering::Relaxed);
        }
        if let Some(sink) = &latencies {
            if !local.is_empty() {
                sink.samples.lock().map_err(|_| anyhow::anyhow!("latency lock poisoned"))?.append(&mut local);
            }
        }
        if !acks.is_empty() {
            write.write_all(&acks).await?;
            acks.clear();
        }
        if read.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

/// Publishes as fast as the broker accepts until `stop`: QoS 0 in batches of pre-encoded frames,
/// QoS 1/2 with a bounded window of unacknowledged messages.
/// What one publisher sends, and where it reports.
struct PublisherSpec {
    addr: SocketAddr,
    login: Login,
    id: String,
    topic: &'static str,
    qos: QoS,
    payload: Bytes,
    window: usize,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    /// Acknowledgement latencies of QoS 1 publishes, in nanoseconds.
    ack_latencies: Arc<std::sync::Mutex<Vec<u64>>>,
}

async fn publisher(spec: PublisherSpec) -> anyhow::Result<()> {
    let PublisherSpec { addr, login, id, topic, qos, payload, window, stop, sent, ack_latencies } = spec;
    let (mut read, mut write, mut buf) = connect_as(addr, &id, 0, false, &login).await?;
    let publish = |packet_id| Publish {
        dup: false,
        qos,
        retain: false,
        topic: Arc::from(topic),
        packet_id,
        properties: PublishProperties::default(),
        payload: payload.clone(),
    };
    if qos == QoS::AtMostOnce {
        let mut batch = BytesMut::new();
        const BATCH: u64 = 64;
        for _ in 0..BATCH {
            encode(&Packet::Publish(publish(None)), ProtocolVersion::V311, &mut batch)?;
        }
        let batch = batch.freeze();
        while !stop.load(Ordering::Relaxed) {
            write.write_all(&batch).await?;
            sent.fetch_add(BATCH, Ordering::Relaxed);
        }
        return Ok(());
    }
    let permits = Arc::new(Semaphore::new(window));
    let acks = permits.clone();
    // Send time of each packet id, in nanoseconds since `epoch`.
    let epoch = Instant::now();
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..=u16::MAX).map(|_| AtomicU64::new(0)).collect());
    let sent_at_reader = sent_at.clone();
    let reader = tokio::spawn(async move {
        buf.reserve(64 * 1024);
        let mut out = BytesMut::new();
        let mut latencies = Vec::new();
        loop {
            while let Some(p) = decode(&mut buf, ProtocolVersion::V311, usize::MAX)? {
                match p {
                    Packet::PubAck(a) => {
                        let at = sent_at_reader[usize::from(a.packet_id.get())].load(Ordering::Relaxed);
                        latencies.push((epoch.elapsed().as_nanos() as u64).saturating_sub(at));
                        if latencies.len() >= 1024 {
                            if let Ok(mut all) = ack_latencies.lock() {
                                all.append(&mut latencies);
                            }
                        }
                        acks.add_permits(1);
                    }
                    Packet::PubComp(_) => acks.add_permits(1),
                    Packet::PubRec(a) => {
                        encode(&Packet::PubRel(Ack::new(a.packet_id)), ProtocolVersion::V311, &mut out)?
                    }
                    _ => {}
                }
            }
            if !out.is_empty() {
                return Ok::<_, anyhow::Error>(out.split().freeze());
            }
            if read.read_buf(&mut buf).await? == 0 {
                return Ok(Bytes::new());
            }
        }
    });
    // QoS 2 needs PUBREL on the write half; keep the bench to QoS 1 semantics for the window.
    if qos == QoS::ExactlyOnce {
        reader.abort();
        bail!("the publisher measures QoS 0 and 1; use --qos 1");
    }
    let mut next: u16 = 0;
    let mut out = BytesMut::new();
    while !stop.load(Ordering::Relaxed) {
        let Ok(permit) = tokio::time::timeout(Duration::from_millis(200), permits.acquire()).await else {
            continue;
        };
        permit.context("window closed")?.forget();
        let mut n = 1;
        let now = epoch.elapsed().as_nanos() as u64;
        next = next.wrapping_add(1).max(1);
        sent_at[usize::from(next)].store(now, Ordering::Relaxed);
        encode(&Packet::Publish(publish(Some(pid(next)))), ProtocolVersion::V311, &mut out)?;
        while n < 64 {
            let Ok(p) = permits.try_acquire() else { break };
            p.forget();
            next = next.wrapping_add(1).max(1);
            sent_at[usize::from(next)].store(now, Ordering::Relaxed);
            encode(&Packet::Publish(publish(Some(pid(next)))), ProtocolVersion::V311, &mut out)?;
            n += 1;
        }
        write.write_all(&out).await?;
        out.clear();
        sent.fetch_add(n, Ordering::Relaxed);
    }
    reader.abort();
    Ok(())
}

async fn throughput(common: &Common, publishers: usize, subscribers: usize) -> anyhow::Result<String> {
    let qos = qos_of(common)?;
    let topic = "bench/throughput";
    let received = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(Semaphore::new(0));
    let ack_latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..subscribers {
        let fut = subscriber(
            SubscriberId {
                addr: common.sub_addr(),
                id: format!("bench-sub-{i}"),
                keep_session: common.persistent,
                login: common.login(),
            },
            topic,
            qos,
            received.clone(),
            None,
            ready.clone(),
        );
        tasks.push(tokio::spawn(fut));
    }
    let ready_all = ready.acquire_many(subscribers as u32);
    if tokio::time::timeout(Duration::from_secs(30), ready_all).await.is_err() {
        for t in tasks.into_iter().filter(|t| t.is_finished()) {
            if let Ok(Err(e)) = t.await {
                bail!("a subscriber failed: {e:#}");
            }
        }
        bail!("subscribers did not subscribe within 30 s");
    }
    let payload = Bytes::from(vec![b'x'; common.payload]);
    let mut pubs = Vec::new();
    for i in 0..publishers {
        let fut = publisher(PublisherSpec {
            addr: common.addr,
            login: common.login(),
            id: format!("bench-pub-{i}"),
            topic,
            qos,
            payload: payload.clone(),
            window: common.window,
            stop: stop.clone(),
            sent: sent.clone(),
            ack_latencies: ack_latencies.clone(),
        });
        pubs.push(tokio::spawn(fut));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (r0, s0, t0) = (received.load(Ordering::Relaxed), sent.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(Duration::from_secs(common.duration)).await;
    let (r1, s1, t1) = (received.load(Ordering::Relaxed), sent.load(Ordering::Relaxed), Instant::now());
    stop.store(true, Ordering::Relaxed);
    for p in pubs {
        match tokio::time::timeout(Duration::from_secs(5), p).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => bail!("publisher failed: {e:#}"),
            Ok(Err(e)) => bail!("publisher panicked: {e}"),
            Err(_) => {}
        }
    }
    for t in &tasks {
        t.abort();
    }
    let secs = t1.duration_since(t0).as_secs_f64();
    let recv_rate = (r1 - r0) as f64 / secs;
    let send_rate = (s1 - s0) as f64 / secs;
    let mut acks = std::mem::take(&mut *ack_latencies.lock().map_err(|_| anyhow::anyhow!("lock poisoned"))?);
    let ack_text = if acks.is_empty() {
        String::new()
    } else {
        acks.sort_unstable();
        let pct = |p: f64| acks[((acks.len() as f64 * p) as usize).min(acks.len() - 1)] as f64 / 1000.0;
        format!(", ack latency p50 {:.0} µs p99 {:.0} µs max {:.0} µs", pct(0.5), pct(0.99), pct(1.0))
    };
    Ok(format!(
        "{label}: {publishers} pub -> {subscribers} sub, qos {q}{persistent}, {size} B: received {recv_rate:.0} msg/s, published {send_rate:.0} msg/s{ack_text}",
        label = common.label,
        q = common.qos,
        persistent = if common.persistent { " persistent" } else { "" },
        size = common.payload,
    ))
}

async fn latency(common: &Common, rate: u64) -> anyhow::Result<String> {
    let qos = qos_of(common)?;
    if common.payload < 16 {
        bail!("--payload must be at least 16 bytes for latency");
    }
    if rate == 0 || rate > 100_000 {
        bail!("--rate must be between 1 and 100000");
    }
    let topic = "bench/latency";
    let epoch = Instant::now();
    let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
    let received = Arc::new(AtomicU64::new(0));
    let ready = Arc::new(Semaphore::new(0));
    let sub = tokio::spawn(subscriber(
        SubscriberId {
            addr: common.sub_addr(),
            id: "bench-lat-sub".into(),
            keep_session: common.persistent,
            login: common.login(),
        },
        topic,
        qos,
        received.clone(),
        Some(LatencySink { epoch, from_seq: rate, samples: samples.clone() }),
        ready.clone(),
    ));
    tokio::time::timeout(Duration::from_secs(10), ready.acquire())
        .await
        .context("subscriber did not subscribe")??
        .forget();
    let (mut read, mut write, _) =
        connect_as(common.addr, "bench-lat-pub", 0, false, &common.login()).await?;
    // Drain acknowledgements so the socket never fills.
    let drain = tokio::spawn(async move {
        let mut buf = BytesMut::new();
        while read.read_buf(&mut buf).await.map(|n| n > 0).unwrap_or(false) {
            buf.clear();
        }
    });
    let total = rate * (common.duration + 1);
    let warmup = rate;
    let interval = Duration::from_nanos(1_000_000_000 / rate);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut out = BytesMut::new();
    for i in 0..total {
        ticker.tick().await;
        let mut payload = BytesMut::with_capacity(common.payload);
        payload.put_u64(epoch.elapsed().as_nanos() as u64);
        payload.put_u64(i);
        payload.resize(common.payload, b'x');
        let id = if qos == QoS::AtMostOnce { None } else { Some(pid((i % 65_535) as u16 + 1)) };
        let publish = Publish {
            dup: false,
            qos: qos.min(QoS::AtLeastOnce),
            retain: false,
            topic: Arc::from(topic),
            packet_id: id,
            properties: PublishProperties::default(),
            payload: payload.freeze(),
        };
        encode(&Packet::Publish(publish), ProtocolVersion::V311, &mut out)?;
        write.write_all(&out).await?;
        out.clear();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    sub.abort();
    drain.abort();
    let mut s = std::mem::take(&mut *samples.lock().map_err(|_| anyhow::anyhow!("latency lock poisoned"))?);
    if s.is_empty() {
        bail!("no messages received");
    }
    s.sort_unstable();
    let pct = |p: f64| s[((s.len() as f64 * p) as usize).min(s.len() - 1)] as f64 / 1000.0;
    let expected = total - warmup;
    Ok(format!(
        "{label}: latency at {rate} msg/s, qos {q}, {size} B: p50 {p50:.0} µs, p99 {p99:.0} µs, p99.9 {p999:.0} µs, max {max:.0} µs ({got}/{expected} received)",
        label = common.label,
        q = common.qos,
        size = common.payload,
        p50 = pct(0.50),
        p99 = pct(0.99),
        p999 = pct(0.999),
        max = pct(1.0),
        got = s.len(),
    ))
}

/// Resident memory of a process in KiB, from /proc.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("no process {pid}"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS line")?;
    line.split_whitespace().nth(1).context("bad VmRSS line")?.parse().context("bad VmRSS value")
}

async fn conns(addr: SocketAddr, count: usize, pid: u32, label: &str) -> anyhow::Result<String> {
    let before = rss_kib(pid)?;
    let mut held = Vec::with_capacity(count);
    let started = Instant::now();
    for i in 0..count {
        if started.elapsed() > Duration::from_secs(120) {
            bail!("only {i} of {count} connections opened in 120 s");
        }
        let conn = connect(addr, &format!("bench-idle-{i}"), 0, false)
            .await
            .with_context(|| format!("connection {i}"))?;
        held.push(conn);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid)?;
    let per = (after.saturating_sub(before) as f64 * 1024.0) / count as f64;
    drop(held);
    Ok(format!(
        "{label}: {count} idle connections: RSS {before} KiB -> {after} KiB, {per:.0} bytes per connection"
    ))
}

const QUEUE_TOPIC: &str = "bench/queue";

fn fleet_id(i: usize) -> String {
    format!("bench-queue-{i}")
}

async fn queue(fleet: &Fleet, payload: usize, window: usize, publish_only: bool) -> anyhow::Result<String> {
    if fleet.sessions == 0 || fleet.messages == 0 || window == 0 {
        bail!("--sessions, --messages and --window must be at least 1");
    }
    let started = Instant::now();
    for i in (0..fleet.sessions).filter(|_| !publish_only) {
        let id = fleet_id(i);
        let (_, mut write, _) = connect(fleet.addr, &id, 0, false).await?;
        write_packet(&mut write, &Packet::Disconnect(Default::default())).await?;
        let (mut read, mut write, mut buf) = connect(fleet.addr, &id, 0, true).await?;
        let sub = Subscribe {
            packet_id: pid(1),
            subscription_identifier: None,
            user_properties: vec![],
            filters: vec![(
                Arc::from(QUEUE_TOPIC),
                SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() },
            )],
        };
        write_packet(&mut write, &Packet::Subscribe(sub)).await?;
        let ack = tokio::time::timeout(Duration::from_secs(10), read_packet(&mut read, &mut buf))
            .await
            .with_context(|| format!("{id}: no SUBACK in 10 s"))??;
        if !matches!(ack, Packet::SubAck(_)) {
            bail!("{id}: expected SUBACK, got {}", ack.name());
        }
        write_packet(&mut write, &Packet::Disconnect(Default::default())).await?;
    }
    let subscribed = started.elapsed();
    let (mut read, mut write, mut buf) = connect(fleet.addr, "bench-queue-pub", 0, false).await?;
    let payload = Bytes::from(vec![b'q'; payload]);
    let (mut sent, mut acked) = (0u64, 0u64);
    let mut out = BytesMut::new();
    let started = Instant::now();
    while acked < fleet.messages {
        if started.elapsed() > Duration::from_secs(600) {
            bail!("only {acked} of {} messages acknowledged in 600 s", fleet.messages);
        }
        while sent < fleet.messages && sent - acked < window as u64 {
            sent += 1;
            let publish = Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: Arc::from(QUEUE_TOPIC),
                packet_id: Some(pid((sent % u64::from(u16::MAX)) as u16)),
                properties: PublishProperties::default(),
                payload: payload.clone(),
            };
            encode(&Packet::Publish(publish), ProtocolVersion::V311, &mut out)?;
        }
        if !out.is_empty() {
            write.write_all(&out).await?;
            out.clear();
        }
        match tokio::time::timeout(Duration::from_secs(30), read_packet(&mut read, &mut buf)).await {
            Ok(Ok(Packet::PubAck(_))) => acked += 1,
            Ok(Ok(other)) => bail!("expected PUBACK, got {}", other.name()),
            Ok(Err(e)) => return Err(e),
            Err(_) => bail!("no PUBACK in 30 s ({acked} of {} acknowledged)", fleet.messages),
        }
    }
    write_packet(&mut write, &Packet::Disconnect(Default::default())).await?;
    let secs = started.elapsed().as_secs_f64();
    Ok(format!(
        "{label}: {sessions} offline sessions subscribed in {sub:.1} s; {messages} QoS 1 messages acknowledged in {secs:.1} s ({rate:.0} deliveries/s queued, {total} in all)",
        label = fleet.label,
        sessions = fleet.sessions,
        sub = subscribed.as_secs_f64(),
        messages = fleet.messages,
        rate = (fleet.messages * fleet.sessions as u64) as f64 / secs,
        total = fleet.messages * fleet.sessions as u64,
    ))
}

/// One session of `drain`: resumes it and acknowledges QoS 1 messages until `messages` arrived.
/// Returns the time to its CONNACK.
async fn drain_one(
    addr: SocketAddr,
    id: String,
    messages: u64,
    received: Arc<AtomicU64>,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let (mut read, mut write, mut buf) = connect(addr, &id, 0, true).await?;
    let connected = started.elapsed();
    let mut got = 0;
    let mut acks = BytesMut::new();
    while got < messages {
        while let Some(p) = decode(&mut buf, ProtocolVersion::V311, usize::MAX)? {
            if let Packet::Publish(p) = p {
                got += 1;
                received.fetch_add(1, Ordering::Relaxed);
                if let Some(id) = p.packet_id {
                    encode(&Packet::PubAck(Ack::new(id)), ProtocolVersion::V311, &mut acks)?;
                }
            }
        }
        if !acks.is_empty() {
            write.write_all(&acks).await?;
            acks.clear();
        }
        if got < messages && read.read_buf(&mut buf).await? == 0 {
            bail!("{id}: the broker closed the connection after {got} of {messages} messages");
        }
    }
    write_packet(&mut write, &Packet::Disconnect(Default::default())).await?;
    Ok(connected)
}

async fn drain(fleet: &Fleet, timeout: Duration) -> anyhow::Result<String> {
    let received = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(fleet.sessions);
    for i in 0..fleet.sessions {
        tasks.push(tokio::spawn(drain_one(fleet.addr, fleet_id(i), fleet.messages, received.clone())));
    }
    let mut connack = Vec::with_capacity(fleet.sessions);
    for t in tasks {
        let left = timeout.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, t).await {
            Ok(Ok(Ok(d))) => connack.push(d),
            Ok(Ok(Err(e))) => bail!("a session failed: {e:#}"),
            Ok(Err(e)) => bail!("a session panicked: {e}"),
            Err(_) => bail!(
                "{} of {} messages received in {} s",
                received.load(Ordering::Relaxed),
                fleet.messages * fleet.sessions as u64,
                timeout.as_secs()
            ),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    connack.sort_unstable();
    let total = received.load(Ordering::Relaxed);
    Ok(format!(
        "{label}: {sessions} sessions resumed (CONNACK p50 {p50:.0} ms, max {max:.0} ms) and received {total} messages in {secs:.1} s ({rate:.0} msg/s)",
        label = fleet.label,
        sessions = fleet.sessions,
        p50 = connack[connack.len() / 2].as_secs_f64() * 1000.0,
        max = connack[connack.len() - 1].as_secs_f64() * 1000.0,
        rate = total as f64 / secs,
    ))
}

async fn connect_rate(
    addr: SocketAddr,
    count: usize,
    concurrency: usize,
    login: Login,
    label: &str,
) -> anyhow::Result<String> {
    if count == 0 || concurrency == 0 {
        bail!("--count and --concurrency must be at least 1");
    }
    let next = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency.min(count) {
        let (next, refused, login) = (next.clone(), refused.clone(), login.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count as u64 || started.elapsed() > Duration::from_secs(300) {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let t = Instant::now();
                match connect_as(addr, &format!("bench-connect-{i}"), 0, false, &login).await {
                    Ok((_, mut write, _)) => {
                        latencies.push(t.elapsed());
                        write_packet(&mut write, &Packet::Disconnect(Default::default())).await?;
                    }
                    Err(e) if e.to_string().starts_with("connection refused") => {
                        latencies.push(t.elapsed());
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => return Err(e),
                }
            }
        }));
    }
    let mut all = Vec::with_capacity(count);
    for w in workers {
        all.extend(w.await.context("connect worker panicked")??);
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)].as_secs_f64() * 1000.0;
    let refused = refused.load(Ordering::Relaxed);
    Ok(format!(
        "{label}: {n} connections ({refused} refused), {concurrency} at once: {rate:.0} connections/s, CONNACK p50 {p50:.2} ms p99 {p99:.2} ms",
        n = all.len(),
        rate = all.len() as f64 / secs,
        p50 = pct(0.5),
        p99 = pct(0.99),
    ))
}
