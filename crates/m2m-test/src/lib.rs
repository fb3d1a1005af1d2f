//! Test helpers: a real node on a loopback port, a raw MQTT client for byte-level tests, time limits.
//!
//! Only used as a dev-dependency. Every step a test waits on goes through [`within`], so a hung node
//! fails the test instead of hanging CI.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use m2m_broker::{Authenticator, Broker, Config, Metrics, RouterHandle};
use m2m_codec::{decode, encode, Packet, ProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The longest any single test step may take.
pub const STEP_LIMIT: Duration = Duration::from_secs(10);

/// Awaits `f`, failing the test if it takes longer than [`STEP_LIMIT`].
///
/// # Panics
/// When the step times out.
pub async fn within<F: IntoFuture>(f: F) -> F::Output {
    tokio::time::timeout(STEP_LIMIT, f).await.expect("step timed out")
}

/// A node running on `127.0.0.1:0` inside the test process.
#[derive(Debug)]
pub struct TestBroker {
    /// Address of the MQTT listener.
    pub addr: SocketAddr,
    /// The node's counters.
    pub metrics: Arc<Metrics>,
    /// The router, for stats.
    pub router: RouterHandle,
    shutdown: CancellationToken,
    task: JoinHandle<m2m_broker::Result<()>>,
}

impl TestBroker {
    /// Starts a node with [`Config::for_tests`].
    pub async fn start() -> Self {
        Self::start_with(Config::for_tests()).await
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
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(broker.run(shutdown.clone()));
        Self { addr, metrics, router, shutdown, task }
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
        let mut out = BytesMut::new();
        encode(packet, self.version, &mut out).expect("encode");
        self.write_raw(&out).await;
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
