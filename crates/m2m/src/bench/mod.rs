//! `m2m bench`: load and latency against any MQTT broker (this node or another), over MQTT 3.1.1 so
//! that every broker is measured the same way.
//!
//! Scenarios: `fan-in` (N publishers → 1 subscriber), `fan-out` (1 publisher → N subscribers),
//! `latency` (a fixed rate, one-way latency percentiles), `storm` (N connections opened at once,
//! CONNACK latency), `connect` (connect and disconnect in a loop), `conns` (idle connections,
//! resident memory of the broker process), `queue` and `drain` (messages left for offline sessions,
//! then received by them), and `sink` (the publishers against a sink inside the tool: the tool's own
//! ceiling). QoS 1 and 2 run their whole acknowledgement flows (PUBACK; PUBREC, PUBREL, PUBCOMP)
//! with a window of messages in flight.
//!
//! Every scenario is bounded in time and count and stops by itself, then prints a [`Report`] as a
//! table, or as one JSON object with `--json`; `m2m bench table` prints saved reports side by side.
//!
//! Layout: this file holds the command line, the MQTT clients and the scenarios; [`report`] the
//! figures, their table and the progress bar; [`sink`] the sink.

mod report;
mod sink;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

use report::{Latency, Progress, Report};

/// `m2m bench`: how to print, and what to run.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// Print one JSON object with every figure (field names in README.md) instead of the table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    scenario: Scenario,
}

/// Arguments shared by the scenarios that publish to a broker.
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
    /// QoS of publishes and subscriptions: 0, 1 (PUBACK) or 2 (PUBREC, PUBREL, PUBCOMP).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Seconds measured, after one second of warm-up.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Send exactly this many messages per publisher instead of running for --duration, and wait
    /// until every subscriber has them all (at QoS 0 until no more arrive): exact counts.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// With --count: seconds before giving up on messages that have not arrived.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Label shown in the result (e.g. the broker's name).
    #[arg(long, default_value = "broker")]
    label: String,
    /// QoS 1/2 messages a publisher keeps in flight (sent, not yet completely acknowledged).
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

    fn qos(&self) -> QoS {
        QoS::from_u8(self.qos).unwrap_or(QoS::AtMostOnce)
    }

    /// Refuses what cannot be measured, before any connection is made.
    fn check(&self) -> anyhow::Result<()> {
        if self.window == 0 || self.window >= usize::from(u16::MAX) {
            bail!("--window must be between 1 and 65534 (packet identifiers in flight)");
        }
        if self.count == Some(0) {
            bail!("--count must be at least 1");
        }
        if self.count.is_none() && self.duration == 0 {
            bail!("--duration must be at least 1 second");
        }
        Ok(())
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
    /// Label shown in the result.
    #[arg(long, default_value = "broker")]
    label: String,
}

/// Connections opened by `storm`, `connect` and `conns`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Crowd {
    /// Broker address.
    #[arg(long, default_value = "127.0.0.1:1883")]
    addr: SocketAddr,
    /// Username.
    #[arg(long)]
    username: Option<String>,
    /// Password.
    #[arg(long, requires = "username")]
    password: Option<String>,
    /// Label shown in the result.
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
    /// One publisher at a fixed rate, one subscriber: one-way latency percentiles.
    Latency {
        #[command(flatten)]
        common: Common,
        /// Messages per second.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
    },
    /// Opens `count` connections as fast as the broker accepts them, `concurrency` handshakes at
    /// once, holds them until all are open, then closes them: connections per second and CONNACK
    /// latency.
    Storm {
        #[command(flatten)]
        crowd: Crowd,
        /// Connections in all.
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Handshakes in progress at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// Connection rate: CONNECT, CONNACK, DISCONNECT, `count` times, `concurrency` at once (with a
    /// username and password: the cost of checking them).
    Connect {
        #[command(flatten)]
        crowd: Crowd,
        /// Connections in all.
        #[arg(long, default_value_t = 2000)]
        count: usize,
        /// Connections at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// Opens idle connections and holds them two seconds; with --pid, the broker's resident memory
    /// per connection.
    Conns {
        #[command(flatten)]
        crowd: Crowd,
        /// Connections to open.
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        /// Process id of the broker, to read its resident memory from /proc.
        #[arg(long)]
        pid: Option<u32>,
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
    /// The fan-in publishers against a sink inside the tool that only counts PUBLISH packets: QoS 0
    /// messages per second the tool itself can send, the ceiling of every other figure.
    Sink {
        /// Publishing connections.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Payload size in bytes.
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// Seconds measured, after one second of warm-up.
        #[arg(long, default_value_t = 5)]
        duration: u64,
        /// Send exactly this many messages per connection instead of running for --duration.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Prints reports saved with `--json` (one object per line, in one or more files) as one table.
    Table {
        /// Files of reports.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// A Markdown table.
        #[arg(long)]
        markdown: bool,
    },
}

/// Runs a scenario and prints its report (or prints saved reports).
///
/// # Errors
///
/// Arguments that cannot be measured, a broker that cannot be reached, or a run with errors (after
/// its report is printed).
pub(crate) fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Scenario::Table { files, markdown } = &args.scenario {
        return print_saved(files, *markdown, args.json);
    }
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start runtime")?;
    let report = runtime.block_on(run_scenario(args.scenario))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report::table(std::slice::from_ref(&report), false));
    }
    match (report.errors, &report.first_error) {
        (0, _) => Ok(()),
        (n, Some(first)) => bail!("{n} errors; the first: {first}"),
        (n, None) => bail!("{n} errors"),
    }
}

async fn run_scenario(scenario: Scenario) -> anyhow::Result<Report> {
    match scenario {
        Scenario::FanIn { common, publishers } => throughput(&common, "fan-in", publishers, 1).await,
        Scenario::FanOut { common, subscribers } => throughput(&common, "fan-out", 1, subscribers).await,
        Scenario::Latency { common, rate } => latency(&common, rate).await,
        Scenario::Storm { crowd, count, concurrency } => storm(&crowd, count, concurrency).await,
        Scenario::Connect { crowd, count, concurrency } => connect_rate(&crowd, count, concurrency).await,
        Scenario::Conns { crowd, count, pid } => conns(&crowd, count, pid).await,
        Scenario::Queue { fleet, payload, window, publish_only } => {
            queue(&fleet, payload, window, publish_only).await
        }
        Scenario::Drain { fleet, timeout } => drain(&fleet, Duration::from_secs(timeout)).await,
        Scenario::Sink { connections, payload, duration, count } => {
            sink_rate(connections, payload, duration, count).await
        }
        Scenario::Table { .. } => bail!("`table` runs no scenario"),
    }
}

/// `m2m bench table`: reports from files, one JSON object per line.
fn print_saved(files: &[PathBuf], markdown: bool, json: bool) -> anyhow::Result<()> {
    let mut reports = Vec::new();
    for file in files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let report: Report = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not a report", file.display(), n + 1))?;
            reports.push(report);
        }
    }
    if json {
        println!("{}", serde_json::to_string(&reports)?);
    } else {
        print!("{}", report::table(&reports, markdown));
    }
    Ok(())
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

fn publish_packet(topic: &str, qos: QoS, packet_id: Option<PacketId>, payload: &Bytes) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: Arc::from(topic),
        packet_id,
        properties: PublishProperties::default(),
        payload: payload.clone(),
    })
}

/// Nanoseconds since `epoch`, as carried in latency payloads.
fn nanos_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

/// Where a latency subscriber records: one-way latencies in nanoseconds, of messages whose sequence
/// number is at least `from_seq` (the payload starts with the send time in nanoseconds since `epoch`,
/// then the sequence number).
struct LatencySink {
    epoch: Instant,
    from_seq: u64,
    samples: Arc<Mutex<Vec<u64>>>,
}

/// Who a bench subscriber is: its address, client id, and whether it keeps its session.
struct SubscriberId {
    addr: SocketAddr,
    id: String,
    keep_session: bool,
    login: Login,
}

/// Subscribes, then counts PUBLISHes, answering QoS 1 with PUBACK and QoS 2 with PUBREC and each
/// PUBREL with PUBCOMP; records latency when `latencies` is given. Runs until the broker closes the
/// connection or the task is aborted.
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
                                local.push(nanos_since(sink.epoch).saturating_sub(sent));
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
        if let Some(sink) = &latencies {
            if !local.is_empty() {
                sink.samples.lock().map_err(|_| anyhow::anyhow!("latency lock poisoned"))?.append(&mut local);
            }
        }
        // Counted after the latencies are recorded, so that a count seen complete has them all.
        if n > 0 {
            received.fetch_add(n, Ordering::Relaxed);
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

/// What one publisher sends, and where it reports.
struct PublisherSpec {
    addr: SocketAddr,
    login: Login,
    id: String,
    topic: &'static str,
    qos: QoS,
    payload: Bytes,
    /// QoS 1/2 messages in flight at most (below 65 535, the packet identifiers).
    window: usize,
    /// Messages to send, or `None` to send until `stop`.
    count: Option<u64>,
    /// Bytes of pre-encoded QoS 0 publishes written at once.
    batch_bytes: usize,
    stop: Arc<AtomicBool>,
    /// Acknowledgement latencies are recorded while this is set (not during the warm-up).
    measuring: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
}

/// What a publisher saw of its acknowledgements.
#[derive(Debug, Default)]
struct Published {
    /// From PUBLISH to PUBACK (QoS 1) or PUBCOMP (QoS 2), in nanoseconds.
    latencies: Vec<u64>,
    /// Messages never completely acknowledged (counts only with a fixed count).
    unacknowledged: u64,
}

/// Publishes as fast as the broker accepts, `count` messages or until `stop`: QoS 0 in large writes
/// of pre-encoded frames, QoS 1 and 2 with a window of messages in flight. With a count, waits for
/// the last acknowledgement and disconnects.
async fn publisher(spec: PublisherSpec) -> anyhow::Result<Published> {
    let (read, write, buf) = connect_as(spec.addr, &spec.id, 0, false, &spec.login).await?;
    if spec.qos == QoS::AtMostOnce {
        publish_at_most_once(&spec, write).await?;
        return Ok(Published::default());
    }
    publish_confirmed(&spec, read, write, buf).await
}

async fn publish_at_most_once(spec: &PublisherSpec, mut write: OwnedWriteHalf) -> anyhow::Result<()> {
    let mut frame = BytesMut::new();
    encode(
        &publish_packet(spec.topic, QoS::AtMostOnce, None, &spec.payload),
        ProtocolVersion::V311,
        &mut frame,
    )?;
    let per_batch = (spec.batch_bytes / frame.len()).max(1);
    let mut batch = BytesMut::with_capacity(per_batch * frame.len());
    for _ in 0..per_batch {
        batch.extend_from_slice(&frame);
    }
    let mut left = spec.count.unwrap_or(u64::MAX);
    while left > 0 && !spec.stop.load(Ordering::Relaxed) {
        let n = left.min(per_batch as u64);
        write.write_all(&batch[..n as usize * frame.len()]).await?;
        spec.sent.fetch_add(n, Ordering::Relaxed);
        left -= n;
    }
    write_packet(&mut write, &Packet::Disconnect(Default::default())).await
}

/// QoS 1 and 2 from one task: writes as many publishes as the window allows, then reads
/// acknowledgements, answering each PUBREC with a PUBREL in the next write. A message leaves the
/// window at its PUBACK or PUBCOMP.
async fn publish_confirmed(
    spec: &PublisherSpec,
    mut read: OwnedReadHalf,
    mut write: OwnedWriteHalf,
    mut buf: BytesMut,
) -> anyhow::Result<Published> {
    let window = spec.window.clamp(1, usize::from(u16::MAX) - 1);
    let epoch = Instant::now();
    // Send time of each packet identifier in flight, in nanoseconds since `epoch` plus one; 0: free.
    let mut sent_at = vec![0u64; usize::from(u16::MAX) + 1];
    let (mut in_flight, mut next, mut sent) = (0usize, 0u16, 0u64);
    let limit = spec.count.unwrap_or(u64::MAX);
    let mut out = BytesMut::new();
    let mut done = Published::default();
    buf.reserve(64 * 1024);
    while !spec.stop.load(Ordering::Relaxed) && (sent < limit || in_flight > 0) {
        let now = nanos_since(epoch) + 1;
        let mut n = 0;
        while in_flight < window && sent < limit {
            // A free identifier exists: fewer than 65 535 are in flight.
            loop {
                next = next.wrapping_add(1);
                if next != 0 && sent_at[usize::from(next)] == 0 {
                    break;
                }
            }
            sent_at[usize::from(next)] = now;
            encode(
                &publish_packet(spec.topic, spec.qos, Some(pid(next)), &spec.payload),
                ProtocolVersion::V311,
                &mut out,
            )?;
            (in_flight, sent, n) = (in_flight + 1, sent + 1, n + 1);
        }
        if n > 0 {
            spec.sent.fetch_add(n, Ordering::Relaxed);
        }
        if !out.is_empty() {
            write.write_all(&out).await?;
            out.clear();
        }
        // Bounded, so that `stop` is seen even when no acknowledgement comes.
        match tokio::time::timeout(Duration::from_millis(200), read.read_buf(&mut buf)).await {
            Err(_) => continue,
            Ok(read) => {
                if read? == 0 {
                    bail!("the broker closed the connection");
                }
            }
        }
        let measuring = spec.measuring.load(Ordering::Relaxed);
        while let Some(p) = decode(&mut buf, ProtocolVersion::V311, usize::MAX)? {
            let id = match (spec.qos, p) {
                (QoS::AtLeastOnce, Packet::PubAck(a)) | (QoS::ExactlyOnce, Packet::PubComp(a)) => a.packet_id,
                (QoS::ExactlyOnce, Packet::PubRec(a)) => {
                    encode(&Packet::PubRel(Ack::new(a.packet_id)), ProtocolVersion::V311, &mut out)?;
                    continue;
                }
                (_, other) => bail!("unexpected {} from the broker", other.name()),
            };
            let at = std::mem::take(&mut sent_at[usize::from(id.get())]);
            if at == 0 {
                bail!("acknowledgement of packet identifier {} that is not in flight", id.get());
            }
            in_flight -= 1;
            if measuring {
                done.latencies.push((nanos_since(epoch) + 1).saturating_sub(at));
            }
        }
    }
    done.unacknowledged = in_flight as u64;
    if in_flight == 0 {
        write_packet(&mut write, &Packet::Disconnect(Default::default())).await?;
    }
    Ok(done)
}

/// Tasks of one run, and what became of them.
struct Crew<T> {
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<T>>>,
}

impl<T> Crew<T> {
    fn new() -> Self {
        Crew { tasks: Vec::new() }
    }

    fn all_finished(&self) -> bool {
        self.tasks.iter().all(|t| t.is_finished())
    }

    /// Waits `grace` for each task, then aborts those still running; errors go into `report`.
    async fn join(self, grace: Duration, report: &mut Report) -> Vec<T> {
        let mut results = Vec::new();
        for task in self.tasks {
            if grace.is_zero() && !task.is_finished() {
                task.abort();
                continue;
            }
            match tokio::time::timeout(grace, task).await {
                Ok(Ok(Ok(value))) => results.push(value),
                Ok(Ok(Err(e))) => report.error(&e),
                Ok(Err(e)) if e.is_cancelled() => {}
                Ok(Err(e)) => report.error(&anyhow::anyhow!("a client panicked: {e}")),
                Err(_) => {}
            }
        }
        results
    }
}

async fn throughput(
    common: &Common,
    scenario: &str,
    publishers: usize,
    subscribers: usize,
) -> anyhow::Result<Report> {
    common.check()?;
    if publishers == 0 || subscribers == 0 {
        bail!("--publishers and --subscribers must be at least 1");
    }
    let qos = common.qos();
    let topic = "bench/throughput";
    let mut report = Report::new(scenario, &common.label);
    report.qos = Some(common.qos);
    report.payload_bytes = Some(common.payload);
    (report.publishers, report.subscribers, report.clients) =
        (publishers, subscribers, publishers + subscribers);
    if subscribers > 1 {
        report.rate_unit = "deliveries/s".into();
    }
    let received = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(common.count.is_some()));
    let ready = Arc::new(Semaphore::new(0));
    let mut subs = Crew::new();
    for i in 0..subscribers {
        let who = SubscriberId {
            addr: common.sub_addr(),
            id: format!("bench-sub-{i}"),
            keep_session: common.persistent,
            login: common.login(),
        };
        subs.tasks.push(tokio::spawn(subscriber(who, topic, qos, received.clone(), None, ready.clone())));
    }
    // Until every subscriber has its SUBACK; a subscriber that ends before fails the run at once.
    let started = Instant::now();
    while ready.available_permits() < subscribers {
        if subs.tasks.iter().any(|t| t.is_finished()) || started.elapsed() > Duration::from_secs(30) {
            subs.join(Duration::ZERO, &mut report).await;
            match report.first_error {
                Some(e) => bail!("a subscriber failed: {e}"),
                None => bail!("subscribers did not subscribe within 30 s"),
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let payload = Bytes::from(vec![b'x'; common.payload]);
    let mut pubs = Crew::new();
    for i in 0..publishers {
        pubs.tasks.push(tokio::spawn(publisher(PublisherSpec {
            addr: common.addr,
            login: common.login(),
            id: format!("bench-pub-{i}"),
            topic,
            qos,
            payload: payload.clone(),
            window: common.window,
            count: common.count,
            batch_bytes: 64 * (payload.len() + topic.len() + 4),
            stop: stop.clone(),
            measuring: measuring.clone(),
            sent: sent.clone(),
        })));
    }
    let expected = common.count.map(|c| c * publishers as u64 * subscribers as u64);
    report.expected = expected;
    let (secs, s, r) = match expected {
        Some(expected) => {
            let limit = Duration::from_secs(common.timeout);
            let progress = Progress::start("receiving", "msg/s", Some(expected), limit, received.clone());
            let (secs, r) = wait_for(&received, expected, limit, || pubs.all_finished()).await;
            progress.finish();
            if qos != QoS::AtMostOnce && r < expected {
                report.error(&anyhow::anyhow!("{} of {expected} messages did not arrive", expected - r));
            }
            (secs, sent.load(Ordering::Relaxed), r)
        }
        None => {
            let warm = Progress::start("warm-up", "msg/s", None, Duration::from_secs(1), received.clone());
            tokio::time::sleep(Duration::from_secs(1)).await;
            warm.finish();
            measuring.store(true, Ordering::Relaxed);
            let (r0, s0, t0) =
                (received.load(Ordering::Relaxed), sent.load(Ordering::Relaxed), Instant::now());
            let limit = Duration::from_secs(common.duration);
            let progress = Progress::start("measuring", "msg/s", None, limit, received.clone());
            tokio::time::sleep(limit).await;
            progress.finish();
            let (r1, s1) = (received.load(Ordering::Relaxed), sent.load(Ordering::Relaxed));
            (t0.elapsed().as_secs_f64(), s1 - s0, r1 - r0)
        }
    };
    stop.store(true, Ordering::Relaxed);
    let done = pubs.join(Duration::from_secs(5), &mut report).await;
    subs.join(Duration::ZERO, &mut report).await;
    report.counted(secs, s, r);
    let unacknowledged: u64 = done.iter().map(|p| p.unacknowledged).sum();
    if common.count.is_some() && unacknowledged > 0 {
        report.error(&anyhow::anyhow!("{unacknowledged} messages were never acknowledged"));
    }
    let mut acks: Vec<u64> = done.into_iter().flat_map(|p| p.latencies).collect();
    report.latency = Latency::from_nanos("ack", &mut acks);
    Ok(report)
}

/// Waits until `counter` reaches `target`, or nothing more arrives for half a second once `idle()`
/// holds, or `limit` passes. Returns the seconds until the last increase, and the count.
async fn wait_for(counter: &AtomicU64, target: u64, limit: Duration, idle: impl Fn() -> bool) -> (f64, u64) {
    let started = Instant::now();
    let (mut last, mut last_at) = (counter.load(Ordering::Relaxed), started);
    while last < target && started.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = counter.load(Ordering::Relaxed);
        if now != last {
            (last, last_at) = (now, Instant::now());
        } else if idle() && last_at.elapsed() > Duration::from_millis(500) {
            break;
        }
    }
    (last_at.duration_since(started).as_secs_f64(), last)
}

async fn latency(common: &Common, rate: u64) -> anyhow::Result<Report> {
    common.check()?;
    let qos = common.qos();
    if common.payload < 16 {
        bail!("--payload must be at least 16 bytes for latency");
    }
    if rate == 0 || rate > 100_000 {
        bail!("--rate must be between 1 and 100000");
    }
    let mut report = Report::new("latency", &common.label);
    report.qos = Some(common.qos);
    report.payload_bytes = Some(common.payload);
    (report.publishers, report.subscribers, report.clients) = (1, 1, 2);
    let topic = "bench/latency";
    let epoch = Instant::now();
    // With a fixed count every message is measured; otherwise the first second is a warm-up.
    let (total, warmup) = match common.count {
        Some(count) => (count, 0),
        None => (rate * (common.duration + 1), rate),
    };
    let samples = Arc::new(Mutex::new(Vec::new()));
    let received = Arc::new(AtomicU64::new(0));
    let ready = Arc::new(Semaphore::new(0));
    let who = SubscriberId {
        addr: common.sub_addr(),
        id: "bench-lat-sub".into(),
        keep_session: common.persistent,
        login: common.login(),
    };
    let sink = LatencySink { epoch, from_seq: warmup, samples: samples.clone() };
    let sub = tokio::spawn(subscriber(who, topic, qos, received.clone(), Some(sink), ready.clone()));
    let started = Instant::now();
    while ready.available_permits() == 0 {
        if sub.is_finished() {
            let e = sub.await?.err().unwrap_or_else(|| anyhow::anyhow!("the broker closed the connection"));
            bail!("the subscriber failed: {e:#}");
        }
        if started.elapsed() > Duration::from_secs(10) {
            bail!("the subscriber did not subscribe within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (mut read, mut write, mut buf) =
        connect_as(common.addr, "bench-lat-pub", 0, false, &common.login()).await?;
    let mut ticker = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let progress = Progress::start("measuring", "msg/s", Some(total), Duration::ZERO, received.clone());
    let mut out = BytesMut::new();
    let (mut i, mut t0) = (0u64, Instant::now());
    let mut last_sent = None::<Instant>;
    // Sends at `rate`, answers PUBRECs, and after the last message waits up to two seconds for it.
    loop {
        if i == total
            && (received.load(Ordering::Relaxed) >= total
                || last_sent.is_some_and(|t| t.elapsed() > Duration::from_secs(2)))
        {
            break;
        }
        tokio::select! {
            _ = ticker.tick(), if i < total => {
                if i == warmup {
                    t0 = Instant::now();
                }
                let mut payload = BytesMut::with_capacity(common.payload);
                payload.put_u64(nanos_since(epoch));
                payload.put_u64(i);
                payload.resize(common.payload, b'x');
                let id = (qos != QoS::AtMostOnce).then(|| pid((i % 65_535) as u16 + 1));
                encode(&publish_packet(topic, qos, id, &payload.freeze()), ProtocolVersion::V311, &mut out)?;
                i += 1;
                if i == total {
                    last_sent = Some(Instant::now());
                }
            }
            n = read.read_buf(&mut buf) => {
                if n? == 0 {
                    bail!("the broker closed the publisher's connection");
                }
                while let Some(p) = decode(&mut buf, ProtocolVersion::V311, usize::MAX)? {
                    if let Packet::PubRec(a) = p {
                        encode(&Packet::PubRel(Ack::new(a.packet_id)), ProtocolVersion::V311, &mut out)?;
                    }
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(20)), if i == total => {}
        }
        if !out.is_empty() {
            write.write_all(&out).await?;
            out.clear();
        }
    }
    let secs = last_sent.map_or(0.0, |t| t.duration_since(t0).as_secs_f64());
    progress.finish();
    sub.abort();
    let mut s = std::mem::take(&mut *samples.lock().map_err(|_| anyhow::anyhow!("latency lock poisoned"))?);
    let measured = total - warmup;
    report.expected = Some(measured);
    report.counted(secs, measured, s.len() as u64);
    report.latency = Latency::from_nanos("one-way", &mut s);
    if report.latency.is_none() {
        report.error(&anyhow::anyhow!("no message received"));
    } else if qos != QoS::AtMostOnce && report.received < measured {
        report
            .error(&anyhow::anyhow!("{} of {measured} messages did not arrive", measured - report.received));
    }
    Ok(report)
}

/// Resident memory of a process in KiB, from /proc.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("no process {pid}"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS line")?;
    line.split_whitespace().nth(1).context("bad VmRSS line")?.parse().context("bad VmRSS value")
}

/// Connections opened by [`open_connections`], and what it took.
struct Opened {
    connections: Vec<Connected>,
    /// From TCP connect to CONNACK, in nanoseconds, of each connection opened.
    connack: Vec<u64>,
    seconds: f64,
}

/// Opens `count` connections, `concurrency` handshakes at once, each given 10 s; failures go into
/// `report`. Stops starting new ones after 120 s.
async fn open_connections(
    crowd: &Crowd,
    id_prefix: &str,
    count: usize,
    concurrency: usize,
    report: &mut Report,
) -> anyhow::Result<Opened> {
    if count == 0 || concurrency == 0 {
        bail!("--count and --concurrency must be at least 1");
    }
    let login = login(crowd.username.as_deref(), crowd.password.as_deref());
    let next = Arc::new(AtomicU64::new(0));
    let opened = Arc::new(AtomicU64::new(0));
    let progress =
        Progress::start("connecting", "conn/s", Some(count as u64), Duration::ZERO, opened.clone());
    let started = Instant::now();
    let mut workers = Crew::new();
    for _ in 0..concurrency.min(count) {
        let (next, opened, login, addr) = (next.clone(), opened.clone(), login.clone(), crowd.addr);
        let prefix = id_prefix.to_owned();
        workers.tasks.push(tokio::spawn(async move {
            let (mut held, mut connack, mut failures) = (Vec::new(), Vec::new(), Vec::new());
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count as u64 || started.elapsed() > Duration::from_secs(120) {
                    return Ok::<_, anyhow::Error>((held, connack, failures));
                }
                let t = Instant::now();
                let id = format!("{prefix}-{i}");
                let attempt = connect_as(addr, &id, 0, false, &login);
                match tokio::time::timeout(Duration::from_secs(10), attempt).await {
                    Ok(Ok(conn)) => {
                        connack.push(t.elapsed().as_nanos() as u64);
                        held.push(conn);
                        opened.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => failures.push(e.context(format!("connection {i}"))),
                    Err(_) => failures.push(anyhow::anyhow!("connection {i}: no CONNACK in 10 s")),
                }
            }
        }));
    }
    let mut all =
        Opened { connections: Vec::with_capacity(count), connack: Vec::with_capacity(count), seconds: 0.0 };
    for (held, connack, failures) in workers.join(Duration::from_secs(150), report).await {
        all.connections.extend(held);
        all.connack.extend(connack);
        for e in failures {
            report.error(&e);
        }
    }
    all.seconds = started.elapsed().as_secs_f64();
    progress.finish();
    Ok(all)
}

/// Sends DISCONNECT on every connection (a second at most) and closes them.
async fn close_all(connections: Vec<Connected>) {
    let goodbye = async {
        for (_, mut write, _) in connections {
            let _ = write_packet(&mut write, &Packet::Disconnect(Default::default())).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), goodbye).await;
}

async fn storm(crowd: &Crowd, count: usize, concurrency: usize) -> anyhow::Result<Report> {
    let mut report = Report::new("storm", &crowd.label);
    report.rate_unit = "conn/s".into();
    report.clients = count;
    report.expected = Some(count as u64);
    let mut opened = open_connections(crowd, "bench-storm", count, concurrency, &mut report).await?;
    report.counted(opened.seconds, count as u64, opened.connections.len() as u64);
    report.latency = Latency::from_nanos("connack", &mut opened.connack);
    close_all(opened.connections).await;
    Ok(report)
}

async fn conns(crowd: &Crowd, count: usize, pid: Option<u32>) -> anyhow::Result<Report> {
    let mut report = Report::new("conns", &crowd.label);
    report.rate_unit = "conn/s".into();
    report.clients = count;
    report.expected = Some(count as u64);
    let before = pid.map(rss_kib).transpose()?;
    let mut opened = open_connections(crowd, "bench-idle", count, 16, &mut report).await?;
    report.counted(opened.seconds, count as u64, opened.connections.len() as u64);
    report.latency = Latency::from_nanos("connack", &mut opened.connack);
    // Let the broker settle before its memory is read.
    tokio::time::sleep(Duration::from_secs(2)).await;
    if let (Some(pid), Some(before)) = (pid, before) {
        let after = rss_kib(pid)?;
        report.rss_before_kib = Some(before);
        report.rss_after_kib = Some(after);
        let held = opened.connections.len().max(1) as f64;
        report.rss_per_connection_bytes = Some(after.saturating_sub(before) as f64 * 1024.0 / held);
    }
    close_all(opened.connections).await;
    Ok(report)
}

async fn connect_rate(crowd: &Crowd, count: usize, concurrency: usize) -> anyhow::Result<Report> {
    if count == 0 || concurrency == 0 {
        bail!("--count and --concurrency must be at least 1");
    }
    let mut report = Report::new("connect", &crowd.label);
    report.rate_unit = "conn/s".into();
    report.clients = count;
    report.expected = Some(count as u64);
    let login = login(crowd.username.as_deref(), crowd.password.as_deref());
    let (next, done) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let progress = Progress::start("connecting", "conn/s", Some(count as u64), Duration::ZERO, done.clone());
    let started = Instant::now();
    let mut workers = Crew::new();
    for _ in 0..concurrency.min(count) {
        let (next, done, login, addr) = (next.clone(), done.clone(), login.clone(), crowd.addr);
        workers.tasks.push(tokio::spawn(async move {
            let (mut latencies, mut failures) = (Vec::new(), Vec::new());
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count as u64 || started.elapsed() > Duration::from_secs(300) {
                    return Ok::<_, anyhow::Error>((latencies, failures));
                }
                let t = Instant::now();
                // A refusal (a wrong password) is measured too: checking it is the cost.
                match connect_as(addr, &format!("bench-connect-{i}"), 0, false, &login).await {
                    Ok((_, mut write, _)) => {
                        latencies.push(t.elapsed().as_nanos() as u64);
                        write_packet(&mut write, &Packet::Disconnect(Default::default())).await?;
                    }
                    Err(e) => {
                        latencies.push(t.elapsed().as_nanos() as u64);
                        failures.push(e.context(format!("connection {i}")));
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut all = Vec::with_capacity(count);
    for (latencies, failures) in workers.join(Duration::from_secs(310), &mut report).await {
        all.extend(latencies);
        for e in failures {
            report.error(&e);
        }
    }
    progress.finish();
    let accepted = all.len() as u64 - report.errors.min(all.len() as u64);
    report.counted(started.elapsed().as_secs_f64(), all.len() as u64, accepted);
    report.latency = Latency::from_nanos("connack", &mut all);
    Ok(report)
}

/// QoS 0 publishers against the built-in sink: the tool's own ceiling.
async fn sink_rate(
    connections: usize,
    payload: usize,
    duration: u64,
    count: Option<u64>,
) -> anyhow::Result<Report> {
    if connections == 0 || count == Some(0) || (count.is_none() && duration == 0) {
        bail!("--connections, --count and --duration must be at least 1");
    }
    let sink = sink::Sink::start().await?;
    let mut report = Report::new("sink", "built-in sink");
    report.qos = Some(0);
    report.payload_bytes = Some(payload);
    (report.publishers, report.clients) = (connections, connections);
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let payload = Bytes::from(vec![b'x'; payload]);
    let mut pubs = Crew::new();
    for i in 0..connections {
        pubs.tasks.push(tokio::spawn(publisher(PublisherSpec {
            addr: sink.addr,
            login: None,
            id: format!("bench-sink-{i}"),
            topic: "bench/sink",
            qos: QoS::AtMostOnce,
            payload: payload.clone(),
            window: 1,
            count,
            // Large writes: one system call carries thousands of publishes.
            batch_bytes: 1 << 20,
            stop: stop.clone(),
            measuring: Arc::new(AtomicBool::new(true)),
            sent: sent.clone(),
        })));
    }
    let counted = sink.published.clone();
    let (secs, s, r) = match count {
        Some(count) => {
            let expected = count * connections as u64;
            report.expected = Some(expected);
            let limit = Duration::from_secs(60);
            let progress = Progress::start("sending", "msg/s", Some(expected), limit, counted.clone());
            let (secs, r) = wait_for(&counted, expected, limit, || pubs.all_finished()).await;
            progress.finish();
            (secs, sent.load(Ordering::Relaxed), r)
        }
        None => {
            let warm = Progress::start("warm-up", "msg/s", None, Duration::from_secs(1), counted.clone());
            tokio::time::sleep(Duration::from_secs(1)).await;
            warm.finish();
            let (r0, s0, t0) =
                (counted.load(Ordering::Relaxed), sent.load(Ordering::Relaxed), Instant::now());
            let limit = Duration::from_secs(duration);
            let progress = Progress::start("measuring", "msg/s", None, limit, counted.clone());
            tokio::time::sleep(limit).await;
            progress.finish();
            let (r1, s1) = (counted.load(Ordering::Relaxed), sent.load(Ordering::Relaxed));
            (t0.elapsed().as_secs_f64(), s1 - s0, r1 - r0)
        }
    };
    stop.store(true, Ordering::Relaxed);
    pubs.join(Duration::from_secs(5), &mut report).await;
    // Everything written must have been counted: the sink and the publishers agree, or the tool
    // miscounts.
    let total = sent.load(Ordering::Relaxed);
    let (_, all) = wait_for(&counted, total, Duration::from_secs(10), || true).await;
    sink.stop();
    if all != total {
        report.error(&anyhow::anyhow!("the sink counted {all} of {total} publishes sent"));
    }
    if sink.errors.load(Ordering::Relaxed) > 0 {
        report.error(&anyhow::anyhow!("a sink connection failed"));
    }
    report.counted(secs, s, r);
    Ok(report)
}

const QUEUE_TOPIC: &str = "bench/queue";

fn fleet_id(i: usize) -> String {
    format!("bench-queue-{i}")
}

async fn queue(fleet: &Fleet, payload: usize, window: usize, publish_only: bool) -> anyhow::Result<Report> {
    if fleet.sessions == 0 || fleet.messages == 0 || window == 0 {
        bail!("--sessions, --messages and --window must be at least 1");
    }
    let mut report = Report::new("queue", &fleet.label);
    report.qos = Some(1);
    report.payload_bytes = Some(payload);
    report.rate_unit = "deliveries/s".into();
    (report.publishers, report.subscribers, report.clients) = (1, fleet.sessions, fleet.sessions + 1);
    report.expected = Some(fleet.messages);
    let subscribed = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(
        "sessions",
        "sessions/s",
        Some(fleet.sessions as u64),
        Duration::ZERO,
        subscribed.clone(),
    );
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
        subscribed.fetch_add(1, Ordering::Relaxed);
    }
    progress.finish();
    let (mut read, mut write, mut buf) = connect(fleet.addr, "bench-queue-pub", 0, false).await?;
    let payload = Bytes::from(vec![b'q'; payload]);
    let (mut sent, acked) = (0u64, Arc::new(AtomicU64::new(0)));
    let progress =
        Progress::start("publishing", "msg/s", Some(fleet.messages), Duration::ZERO, acked.clone());
    let mut out = BytesMut::new();
    let mut latencies = Vec::new();
    let mut sent_at = vec![Instant::now(); usize::from(u16::MAX) + 1];
    let started = Instant::now();
    while acked.load(Ordering::Relaxed) < fleet.messages {
        let done = acked.load(Ordering::Relaxed);
        if started.elapsed() > Duration::from_secs(600) {
            bail!("only {done} of {} messages acknowledged in 600 s", fleet.messages);
        }
        while sent < fleet.messages && sent - done < window as u64 {
            sent += 1;
            let id = pid((sent % u64::from(u16::MAX)) as u16);
            sent_at[usize::from(id.get())] = Instant::now();
            encode(
                &publish_packet(QUEUE_TOPIC, QoS::AtLeastOnce, Some(id), &payload),
                ProtocolVersion::V311,
                &mut out,
            )?;
        }
        if !out.is_empty() {
            write.write_all(&out).await?;
            out.clear();
        }
        match tokio::time::timeout(Duration::from_secs(30), read_packet(&mut read, &mut buf)).await {
            Ok(Ok(Packet::PubAck(a))) => {
                latencies.push(sent_at[usize::from(a.packet_id.get())].elapsed().as_nanos() as u64);
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Ok(other)) => bail!("expected PUBACK, got {}", other.name()),
            Ok(Err(e)) => return Err(e),
            Err(_) => bail!("no PUBACK in 30 s ({done} of {} acknowledged)", fleet.messages),
        }
    }
    progress.finish();
    write_packet(&mut write, &Packet::Disconnect(Default::default())).await?;
    report.counted(started.elapsed().as_secs_f64(), sent, acked.load(Ordering::Relaxed));
    // The rate counts what the broker queued: each message once per offline session.
    report.rate *= fleet.sessions as f64;
    report.latency = Latency::from_nanos("ack", &mut latencies);
    Ok(report)
}

/// One session of `drain`: resumes it and acknowledges QoS 1 messages until `messages` arrived.
/// Returns the time to its CONNACK, in nanoseconds.
async fn drain_one(
    addr: SocketAddr,
    id: String,
    messages: u64,
    received: Arc<AtomicU64>,
) -> anyhow::Result<u64> {
    let started = Instant::now();
    let (mut read, mut write, mut buf) = connect(addr, &id, 0, true).await?;
    let connected = started.elapsed().as_nanos() as u64;
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

async fn drain(fleet: &Fleet, timeout: Duration) -> anyhow::Result<Report> {
    if fleet.sessions == 0 || fleet.messages == 0 {
        bail!("--sessions and --messages must be at least 1");
    }
    let mut report = Report::new("drain", &fleet.label);
    report.qos = Some(1);
    (report.subscribers, report.clients) = (fleet.sessions, fleet.sessions);
    let expected = fleet.messages * fleet.sessions as u64;
    report.expected = Some(expected);
    let received = Arc::new(AtomicU64::new(0));
    let progress = Progress::start("draining", "msg/s", Some(expected), timeout, received.clone());
    let started = Instant::now();
    let mut sessions = Crew::new();
    for i in 0..fleet.sessions {
        sessions.tasks.push(tokio::spawn(drain_one(
            fleet.addr,
            fleet_id(i),
            fleet.messages,
            received.clone(),
        )));
    }
    let (_, got) = wait_for(&received, expected, timeout, || sessions.all_finished()).await;
    let secs = started.elapsed().as_secs_f64();
    progress.finish();
    let mut connack = sessions.join(Duration::from_secs(1), &mut report).await;
    if got < expected {
        report.error(&anyhow::anyhow!("{} of {expected} messages did not arrive", expected - got));
    }
    report.counted(secs, expected, got);
    report.sent = 0;
    report.sent_rate = 0.0;
    report.latency = Latency::from_nanos("connack", &mut connack);
    Ok(report)
}
