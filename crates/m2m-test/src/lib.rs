//! Test helpers: a real node on a loopback port, a raw MQTT client for byte-level tests, time limits.
//!
//! Only used as a dev-dependency. Every step a test waits on goes through [`within`], so a hung node
//! fails the test instead of hanging CI.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use bytes::BytesMut;
use m2m_broker::{Authenticator, Broker, Config, Metrics, RouterHandle};
use m2m_codec::{decode, encode, Packet, ProtocolVersion, ReasonCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod disk;
mod http;
mod mosquitto;
pub use disk::{fill_disk, noise, Tmpfs};
pub use http::{http, sse, HttpReply, SseStream};
pub use mosquitto::Mosquitto;

/// A loopback port that was free a moment ago, for a process that must be told its port before it
/// starts (or come back on the same one after a restart).
///
/// The port is taken below the kernel's ephemeral range, so the local end of some outgoing connection
/// cannot take it between this call and the bind, nor while a node that used it restarts; and from a
/// sequence of its own per test process, so two tests of one run never get the same one.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOWEST: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .filter(|low| *low > LOWEST + 1_000)
        .unwrap_or(32_768);
    let span = ephemeral_low - LOWEST;
    // Test processes running side by side start at different places.
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let Ok(port) = u16::try_from(LOWEST + start.wrapping_add(n) % span) else { continue };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port below {ephemeral_low}");
}

/// The longest any single test step may take.
pub const STEP_LIMIT: Duration = Duration::from_secs(10);

/// Awaits `f`, failing the test if it takes longer than [`STEP_LIMIT`].
///
/// # Panics
/// When the step times out.
pub async fn within<F: IntoFuture>(f: F) -> F::Output {
    tokio::time::timeout(STEP_LIMIT, f).await.expect("step timed out")
}

/// A fresh directory under the system temp dir, removed on drop unless the test is failing (so
/// that what it holds can be looked at).
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `<temp>/m2m-<name>-<pid>-<nanos>-<n>`: unique within the process even for two tests
    /// that ask in the same clock tick (`n` counts), and across processes (the pid).
    ///
    /// # Panics
    /// When the directory cannot be created.
    pub fn new(name: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("m2m-{name}-{}-{nanos}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The directory as text, for command lines.
    ///
    /// # Panics
    /// When the path is not UTF-8.
    pub fn as_str(&self) -> &str {
        self.0.to_str().expect("UTF-8 temp path")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A node running on `127.0.0.1:0` inside the test process.
#[derive(Debug)]
pub struct TestBroker {
    /// Address of the main MQTT listener.
    pub addr: SocketAddr,
    /// Every listener's address and transport, the main one first (see `Broker::listener_addrs`).
    pub listeners: Vec<(SocketAddr, &'static str)>,
    /// The node's counters.
    pub metrics: Arc<Metrics>,
    /// The router, for stats.
    pub router: RouterHandle,
    /// The device registry and quarantine of the node.
    pub access: Arc<m2m_broker::AccessControl>,
    /// The node's history, if it keeps one.
    pub history: Option<m2m_history::History>,
    /// The node's store, if it has one.
    pub store: Option<m2m_store::Store>,
    shutdown: CancellationToken,
    task: JoinHandle<m2m_broker::Result<()>>,
    /// The store's directory, for a node started by [`TestBroker::start`].
    _dir: Option<TempDir>,
}

impl TestBroker {
    /// Starts a node with [`Config::for_tests`] and, as a node runs by default, a store in a fresh
    /// temporary directory that syncs before acknowledging.
    pub async fn start() -> Self {
        let dir = TempDir::new("test-broker");
        let mut config = Config::for_tests();
        config.store = Some(m2m_store::StoreConfig::new(dir.path().join("store")));
        let mut broker = Self::start_with(config).await;
        broker._dir = Some(dir);
        broker
    }

    /// Starts a node with the given configuration (its listen address should use port 0).
    ///
    /// # Panics
    /// When the node cannot bind.
    pub async fn start_with(config: Config) -> Self {
        Self::start_with_auth(config, None).await
    }

    /// Starts a node with an enhanced-authentication hook.
    ///
    /// # Panics
    /// When the node cannot bind.
    pub async fn start_with_auth(config: Config, auth: Option<Arc<dyn Authenticator>>) -> Self {
        let mut broker = Broker::bind(&config).await.expect("bind test broker");
        if let Some(auth) = auth {
            broker = broker.with_authenticator(auth);
        }
        let (addr, metrics, router) = (broker.local_addr(), broker.metrics(), broker.router());
        let listeners = broker.listener_addrs();
        let (access, history, store) = (broker.access(), broker.history(), broker.store());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(broker.run(shutdown.clone()));
        Self { addr, listeners, metrics, router, access, history, store, shutdown, task, _dir: None }
    }

    /// Stops the node; fails the test if it panicked or returned an error.
    ///
    /// # Panics
    /// When the node panicked, failed, or did not stop in time.
    pub async fn stop(self) {
        self.shutdown.cancel();
        within(self.task).await.expect("broker panicked").expect("broker failed");
    }
}

/// A byte-level MQTT client built on the project's codec, for tests that must send exactly chosen
/// bytes (bad input) or inspect exactly what the node sends.
#[derive(Debug)]
pub struct RawClient {
    stream: TcpStream,
    buf: BytesMut,
    /// Version used to decode what the node sends.
    pub version: ProtocolVersion,
}

impl RawClient {
    /// Opens a TCP connection.
    ///
    /// # Panics
    /// When the connection fails.
    pub async fn connect(addr: SocketAddr, version: ProtocolVersion) -> Self {
        let stream = within(TcpStream::connect(addr)).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Self { stream, buf: BytesMut::new(), version }
    }

    /// Writes raw bytes.
    ///
    /// # Panics
    /// When the write fails.
    pub async fn write_raw(&mut self, bytes: &[u8]) {
        within(self.stream.write_all(bytes)).await.expect("write");
    }

    /// Encodes and writes a packet.
    ///
    /// # Panics
    /// When encoding or the write fails.
    pub async fn send(&mut self, packet: &Packet) {
        self.try_send(packet).await.expect("write");
    }

    /// Encodes and writes a packet; the write's error if the connection is gone (a node killed
    /// while the client writes resets it).
    ///
    /// # Panics
    /// When encoding fails or the write takes longer than [`STEP_LIMIT`].
    pub async fn try_send(&mut self, packet: &Packet) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        encode(packet, self.version, &mut out).expect("encode");
        within(self.stream.write_all(&out)).await
    }

    /// Reads the next packet; `None` when the node closed the connection.
    ///
    /// # Panics
    /// When the node sends something undecodable or nothing within [`STEP_LIMIT`].
    pub async fn recv(&mut self) -> Option<Packet> {
        within(async {
            loop {
                if let Some(p) =
                    decode(&mut self.buf, self.version, usize::MAX).expect("node sent a bad packet")
                {
                    return Some(p);
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
    }

    /// Reads packets until the node closes the connection, returning them.
    pub async fn until_closed(&mut self) -> Vec<Packet> {
        let mut packets = Vec::new();
        while let Some(p) = self.recv().await {
            packets.push(p);
        }
        packets
    }
}

// ---------------------------------------------------------------------------------------------------
// Packets and exchanges for RawClient tests.
// ---------------------------------------------------------------------------------------------------

/// A v5 CONNECT with Clean Start and keep-alive 60.
pub fn v5_connect(id: &str) -> m2m_codec::Connect {
    m2m_codec::Connect {
        protocol: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 60,
        client_id: Arc::from(id),
        will: None,
        username: None,
        password: None,
        properties: m2m_codec::ConnectProperties::default(),
    }
}

/// Connects a raw v5 client and returns it with the node's CONNACK (whatever its reason code).
pub async fn raw_connect(addr: SocketAddr, connect: m2m_codec::Connect) -> (RawClient, m2m_codec::ConnAck) {
    let mut client = RawClient::connect(addr, ProtocolVersion::V5).await;
    client.send(&Packet::Connect(Box::new(connect))).await;
    match client.recv().await {
        Some(Packet::ConnAck(ack)) => (client, ack),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// Connects a raw v5 client that must be accepted.
pub async fn raw_connect_ok(addr: SocketAddr, connect: m2m_codec::Connect) -> RawClient {
    let (client, ack) = raw_connect(addr, connect).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS, "CONNACK {ack:?}");
    client
}

/// A packet id.
pub fn pid(n: u16) -> m2m_codec::PacketId {
    m2m_codec::PacketId::new(n).expect("non-zero packet id")
}

/// A PUBLISH without properties.
pub fn raw_publish(
    topic: &str,
    qos: m2m_codec::QoS,
    id: Option<u16>,
    payload: &'static [u8],
) -> m2m_codec::Publish {
    m2m_codec::Publish {
        dup: false,
        qos,
        retain: false,
        topic: Arc::from(topic),
        packet_id: id.map(pid),
        properties: m2m_codec::PublishProperties::default(),
        payload: Bytes::from_static(payload),
    }
}

/// Subscribes to `filters` and returns the SUBACK.
pub async fn raw_subscribe(
    client: &mut RawClient,
    id: u16,
    filters: &[(&str, m2m_codec::QoS)],
) -> m2m_codec::SubAck {
    let filters = filters
        .iter()
        .map(|(f, qos)| (Arc::from(*f), m2m_codec::SubscriptionOptions { qos: *qos, ..Default::default() }))
        .collect();
    raw_subscribe_with(
        client,
        m2m_codec::Subscribe {
            packet_id: pid(id),
            subscription_identifier: None,
            user_properties: Vec::new(),
            filters,
        },
    )
    .await
}

/// Sends a SUBSCRIBE and returns the SUBACK.
pub async fn raw_subscribe_with(
    client: &mut RawClient,
    subscribe: m2m_codec::Subscribe,
) -> m2m_codec::SubAck {
    client.send(&Packet::Subscribe(subscribe)).await;
    match client.recv().await {
        Some(Packet::SubAck(ack)) => ack,
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

/// Expects a DISCONNECT with `reason` from the node, then the connection to close.
pub async fn expect_disconnect(client: &mut RawClient, reason: ReasonCode) {
    match client.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, reason, "DISCONNECT {d:?}"),
        other => panic!("expected DISCONNECT {reason}, got {other:?}"),
    }
    assert_eq!(client.recv().await, None, "connection still open after DISCONNECT");
}

/// The PUBLISH a `recv` returned.
///
/// # Panics
/// When it is anything else.
pub fn expect_raw_publish(packet: Option<Packet>) -> m2m_codec::Publish {
    match packet {
        Some(Packet::Publish(p)) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

/// A v5 CONNECT with a Session Expiry Interval of 60 s.
pub fn persistent_connect(id: &str, clean_start: bool) -> m2m_codec::Connect {
    let mut c = v5_connect(id);
    c.clean_start = clean_start;
    c.properties.session_expiry_interval = Some(60);
    c
}
