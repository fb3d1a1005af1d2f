//! Settings of one node's MQTT side, already validated.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use m2m_session::Limits;
use m2m_store::StoreConfig;

pub use crate::tls::TlsFiles;

/// A listener besides the main TCP one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Where it listens; port 0 picks a free port.
    pub addr: SocketAddr,
    /// What it speaks below MQTT.
    pub transport: Transport,
}

/// The transport of a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// Plain TCP.
    Tcp,
    /// TLS, optionally verifying client certificates (mutual TLS).
    Tls(TlsFiles),
    /// MQTT over WebSocket, on an HTTP path (usually `/mqtt`), subprotocol `mqtt`.
    Ws {
        /// The HTTP path.
        path: String,
    },
    /// MQTT over WebSocket over TLS.
    Wss {
        /// The TLS files.
        tls: TlsFiles,
        /// The HTTP path.
        path: String,
    },
}

/// Who may connect without credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Anonymous {
    /// Only clients connecting from a loopback address.
    #[default]
    LoopbackOnly,
    /// Everyone.
    Allow,
    /// No one.
    Deny,
}

/// Settings of the MQTT listener and the sessions behind it.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address of the MQTT over TCP listener; port 0 picks a free port.
    pub listen: SocketAddr,
    /// More listeners (TLS, more TCP addresses).
    pub listeners: Vec<Listener>,
    /// Connections held at once; more are refused with CONNACK 0x89 (Server busy).
    pub max_connections: usize,
    /// How long a new connection may take to send CONNECT (and to finish a TLS or WebSocket
    /// handshake, and each step of an enhanced authentication).
    pub connect_timeout: Duration,
    /// How long a packet may take to arrive once its first byte has: a client that sends part of a
    /// packet and stalls is disconnected (DISCONNECT 0x8D) after this, whatever its keep-alive.
    pub packet_timeout: Duration,
    /// Limits on new connections per address and on handshakes in progress.
    pub admission: crate::gate::Admission,
    /// Password verifications (argon2: tens of milliseconds and megabytes each) run at once; 0: half
    /// the cores (at least one).
    pub password_checks: usize,
    /// How long a CONNECT waits for a password verification to be free; past it, CONNACK 0x89
    /// (Server busy).
    pub password_check_wait: Duration,
    /// Bytes of messages the node's queues may hold at once (connections' mailboxes, the history's
    /// write queue); past it QoS 0 deliveries are dropped and the history records a gap. 0: no limit.
    pub memory_budget: usize,
    /// Highest keep-alive granted; a client asking more (or 0) gets Server Keep Alive (v5). 0: no cap.
    pub max_keep_alive: u16,
    /// Highest Session Expiry Interval granted, in seconds (`u32::MAX`: never expire).
    pub max_session_expiry: u32,
    /// Deliveries buffered between the router and one connection.
    pub mailbox_capacity: usize,
    /// How long a write to a client may block before the connection is dropped.
    pub write_timeout: Duration,
    /// Anonymous access policy.
    pub anonymous: Anonymous,
    /// Response Information returned to clients that request it (v5), e.g. a topic prefix.
    pub response_information: Option<String>,
    /// How often `$SYS` statistics are published; `None` disables them.
    pub sys_interval: Option<Duration>,
    /// Per-session limits.
    pub limits: Limits,
    /// Where sessions, queues, retained messages and wills are kept across restarts, and how
    /// durably; `None` keeps everything in memory only.
    pub store: Option<StoreConfig>,
    /// Access rules for every client, after each device's and its groups' rules (the registry's
    /// devices and groups are in the store).
    pub access_rules: Vec<m2m_access::Rule>,
    /// The detectors that quarantine misbehaving clients by themselves.
    pub detectors: crate::detect::DetectorsConfig,
    /// JSON Web Tokens accepted as passwords (of usernames that are not registered devices).
    pub jwt: Option<m2m_access::JwtConfig>,
    /// The history of messages kept in the store and its queries; `None` (or no store): off.
    pub history: Option<m2m_history::HistoryConfig>,
    /// More parts of the node that see every accepted message and client event (the rules engine).
    pub taps: Vec<Arc<dyn m2m_router::Tap>>,
    /// Kept up to date with the filters this node's sessions subscribe to (for the mesh).
    pub interest: Option<Arc<m2m_router::Interest>>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 1883)),
            listeners: Vec::new(),
            max_connections: 100_000,
            connect_timeout: Duration::from_secs(10),
            packet_timeout: Duration::from_secs(30),
            admission: crate::gate::Admission::default(),
            password_checks: 0,
            password_check_wait: crate::access::PASSWORD_CHECK_WAIT,
            memory_budget: 256 << 20,
            max_keep_alive: 0,
            max_session_expiry: u32::MAX,
            mailbox_capacity: 1024,
            write_timeout: Duration::from_secs(30),
            anonymous: Anonymous::LoopbackOnly,
            response_information: None,
            sys_interval: Some(Duration::from_secs(10)),
            limits: Limits::default(),
            store: None,
            access_rules: Vec::new(),
            detectors: crate::detect::DetectorsConfig::default(),
            jwt: None,
            history: Some(m2m_history::HistoryConfig::default()),
            taps: Vec::new(),
            interest: None,
        }
    }
}

impl Config {
    /// Defaults for tests: a free loopback port, `$SYS` every second.
    pub fn for_tests() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            sys_interval: Some(Duration::from_secs(1)),
            ..Self::default()
        }
    }
}
