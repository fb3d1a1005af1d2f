//! Uplinks: a node bridged to an external MQTT broker (a cloud), with a durable outbox.
//!
//! ```text
//!  router ──Tap (router thread)── out route ──▶ outbox: store, Table::Uplink, `<name>\0<seq u64 BE>`
//!                                                 │  (same commit as the publish, before its PUBACK)
//!                                                 ▼
//!              connection task: in order, ≤ window unacknowledged ──PUBLISH──▶ remote broker
//!              outbox −= acknowledged (PUBACK; QoS 0 once written) ◀──PUBACK──
//!  router ◀── in route (origin `uplink:<name>`) ◀──PUBLISH── remote (the in filters, subscribed)
//!              PUBACK / PUBREC once the node has made the message durable ──▶
//! ```
//!
//! - The uplink is an MQTT client of the remote, written on `m2m-codec` over TCP or TLS (rustls),
//!   speaking MQTT 3.1.1 or 5.0. It connects without a clean session (MQTT 5: Clean Start 0 and a
//!   Session Expiry Interval of [`SESSION_EXPIRY`]) so that the remote keeps its subscriptions and
//!   what it holds for the node while the link is down.
//! - Out: every message accepted by the node whose topic matches an out route (the first that
//!   matches) is numbered and written into the outbox under its remote topic, QoS 0 and QoS 1/2
//!   alike, unless the outbox holds `outbox_limit` messages already (then it is dropped and
//!   counted). The connection task sends the outbox in order with the lower of the message's QoS and
//!   `qos`; an entry is deleted when the remote acknowledges it (QoS 0: once written). After a
//!   reconnection it sends everything still in the outbox again, from the start, with fresh packet
//!   identifiers: delivery is at least once, a message may arrive twice.
//! - In: the uplink subscribes to the in routes' filters on the remote. A message from the remote
//!   gets its local topic from the first in route that matches and is published on the node with
//!   the origin `uplink:<name>`, which this uplink never sends back out (no loops). It is
//!   acknowledged (PUBACK, or PUBREC then PUBCOMP for QoS 2) once the node made it durable.
//! - Reconnection: exponential back-off between `backoff_min` and `backoff_max` with jitter; the
//!   back-off starts again from `backoff_min` after a connection that stayed up [`STABLE_AFTER`].
//!   Anything unexpected from the remote (a malformed packet, a protocol error) is logged and counted
//!   as the connection's end; the uplink connects again.
//!
//! Not done: per-route QoS, shared subscriptions on the remote (`$share/...`), QoS 2 towards the
//! remote, client certificates, WebSocket transport.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use bytes::{BufMut, Bytes, BytesMut};
use m2m_codec::{
    decode, encode, encoded_len, Ack, ConnAck, Connect, ConnectProperties, Disconnect, Packet, PacketId,
    ProtocolVersion, Publish, QoS, ReasonCode, RetainHandling, Subscribe, SubscriptionOptions,
};
use m2m_router::{Command, RouterHandle, Tap};
use m2m_session::{expiry_deadline, Message};
use m2m_store::{unix_ms, Store, StoreError, Table};
use m2m_topic::{TopicFilter, TopicName};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tracing::{debug, info, trace, warn};

use crate::wire::{self, Stamp};

/// The Session Expiry Interval asked of an MQTT 5 remote: a week, in seconds.
pub const SESSION_EXPIRY: u32 = 7 * 24 * 3600;
/// Unacknowledged messages towards the remote at most (less if its Receive Maximum is lower).
const WINDOW: usize = 100;
/// The back-off starts again from its minimum after a connection that stayed up this long.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);
/// The largest packet taken from the remote (announced to an MQTT 5 remote as Maximum Packet Size).
const MAX_PACKET: usize = 64 * 1024 * 1024;
/// Outbox entries read at once.
const BATCH: usize = 256;
/// Opening the connection (TCP, TLS, CONNECT/CONNACK) must take less than this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A write that does not finish within this ends the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Uplink::close`] waits for the DISCONNECT to go out.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// One topic rewrite of an uplink.
///
/// Out (local → remote): a local message on topic `T` matching `filter` goes to the remote topic
/// `remote_prefix + rest`, where `rest` is `T` without `local_prefix` (or all of `T` when it does not
/// start with `local_prefix`). In (remote → local): `filter` is subscribed on the remote, and a remote
/// message on `R` becomes the local topic `local_prefix + rest`, `rest` being `R` without
/// `remote_prefix` (or all of `R`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Route {
    /// The topic filter: of local topics for an out route, of remote topics for an in route.
    pub filter: String,
    /// The prefix of local topics (taken off going out, put on coming in).
    pub local_prefix: String,
    /// The prefix of remote topics (put on going out, taken off coming in).
    pub remote_prefix: String,
}

impl Route {
    /// A route with its filter and both prefixes.
    pub fn new(filter: &str, local_prefix: &str, remote_prefix: &str) -> Route {
        Route {
            filter: filter.to_owned(),
            local_prefix: local_prefix.to_owned(),
            remote_prefix: remote_prefix.to_owned(),
        }
    }
}

/// How a node bridges to one external MQTT broker. [`Uplink::new`] checks it.
#[derive(Clone, PartialEq, Eq)]
pub struct UplinkConfig {
    /// The uplink's name, unique on the node: 1 to 64 of `A-Z a-z 0-9 - _ .`.
    pub name: String,
    /// The remote broker: `mqtt://host[:port]` (port 1883 by default) or `mqtts://host[:port]` (TLS,
    /// port 8883 by default). IPv6 addresses go in brackets.
    pub url: String,
    /// The MQTT protocol level: 4 (3.1.1) or 5 (5.0). MQTT 5 properties (user properties, content
    /// type, ...) travel only with 5.
    pub protocol: u8,
    /// The client identifier on the remote; empty means `m2m-<name>`.
    pub client_id: String,
    /// The user name given to the remote.
    pub username: Option<String>,
    /// The password given to the remote (with MQTT 3.1.1 only together with a user name).
    pub password: Option<String>,
    /// For `mqtts://`: trust only the certificate authorities in this PEM file; without it, the
    /// public web roots.
    pub ca: Option<PathBuf>,
    /// The keep-alive in seconds (0: none); a PINGREQ goes out when the link is quiet.
    pub keep_alive: u16,
    /// What goes to the remote: local filters and their topic rewrite; the first match wins.
    pub out: Vec<Route>,
    /// What comes from the remote: remote filters (subscribed there) and their topic rewrite; the
    /// first match wins.
    pub in_: Vec<Route>,
    /// The highest QoS of the uplink's publishes and subscriptions on the remote: 0 or 1.
    pub qos: u8,
    /// Messages kept in the outbox at most while the remote is away; beyond, new ones are dropped
    /// and counted.
    pub outbox_limit: u64,
    /// The first reconnection delay.
    pub backoff_min: Duration,
    /// The longest reconnection delay.
    pub backoff_max: Duration,
}

impl Default for UplinkConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            url: String::new(),
            protocol: 4,
            client_id: String::new(),
            username: None,
            password: None,
            ca: None,
            keep_alive: 30,
            out: Vec::new(),
            in_: Vec::new(),
            qos: 1,
            outbox_limit: 1_000_000,
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
        }
    }
}

impl fmt::Debug for UplinkConfig {
    /// As derived, with the password hidden.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UplinkConfig")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("protocol", &self.protocol)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("ca", &self.ca)
            .field("keep_alive", &self.keep_alive)
            .field("out", &self.out)
            .field("in_", &self.in_)
            .field("qos", &self.qos)
            .field("outbox_limit", &self.outbox_limit)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .finish()
    }
}

/// Why an uplink was refused or could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UplinkError {
    /// The name is empty, too long or holds characters other than `A-Z a-z 0-9 - _ .`.
    #[error("invalid uplink name {0:?}: use 1 to 64 of A-Z a-z 0-9 - _ .")]
    Name(String),
    /// The URL is not `mqtt://host[:port]` or `mqtts://host[:port]`.
    #[error("uplink {name}: invalid URL {url:?}: {reason}")]
    Url {
        /// The uplink.
        name: String,
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The protocol level is neither 4 nor 5.
    #[error("uplink {name}: unsupported MQTT protocol level {protocol}: use 4 (MQTT 3.1.1) or 5 (MQTT 5.0)")]
    Protocol {
        /// The uplink.
        name: String,
        /// The level as given.
        protocol: u8,
    },
    /// A route's filter or prefix is not valid.
    #[error("uplink {name}: {direction} route {filter:?}: {reason}")]
    Route {
        /// The uplink.
        name: String,
        /// `out` or `in`.
        direction: &'static str,
        /// The route's filter as given.
        filter: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Another setting is out of range (QoS, client id, credentials, limits, back-off, no routes).
    #[error("uplink {name}: {reason}")]
    Setting {
        /// The uplink.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The TLS client could not be set up (CA file, server name).
    #[error("uplink {name}: TLS: {reason}")]
    Tls {
        /// The uplink.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// [`Uplink::start`] was called before.
    #[error("uplink {0} is already started")]
    AlreadyStarted(String),
    /// The outbox could not be read from the store.
    #[error("uplink {name}: the outbox cannot be read")]
    Store {
        /// The uplink.
        name: String,
        /// The store's error.
        #[source]
        source: StoreError,
    },
}

/// What an uplink is doing, for the API and logs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UplinkStatus {
    /// The uplink's name.
    pub name: String,
    /// The remote broker's URL.
    pub url: String,
    /// Whether the remote accepted the connection and it is up.
    pub connected: bool,
    /// Messages waiting in the outbox (sent and not yet acknowledged included).
    pub backlog: u64,
    /// How long the oldest waiting message has waited, in milliseconds; `None` with no backlog.
    pub oldest_ms: Option<u64>,
    /// PUBLISH packets written to the remote, sent again after a reconnection included.
    pub sent: u64,
    /// Messages the remote acknowledged (QoS 0: written), taken out of the outbox.
    pub acknowledged: u64,
    /// Messages the remote refused (MQTT 5 PUBACK with an error, or larger than its Maximum Packet
    /// Size), taken out of the outbox.
    pub refused: u64,
    /// Messages that expired (Message Expiry Interval) while waiting in the outbox.
    pub expired: u64,
    /// Messages not put into the outbox: it was full (`outbox_limit`) or could not be written.
    pub dropped: u64,
    /// Messages received from the remote and published on the node.
    pub received: u64,
    /// Messages received from the remote that no in route maps to a valid local topic.
    pub unrouted: u64,
    /// Connections established after the first.
    pub reconnects: u64,
    /// The last reason a connection failed or ended.
    pub last_error: Option<String>,
}

/// An uplink: a cheap handle. Give it to the node as a [`Tap`] (so that messages are written into
/// its outbox as the node accepts them), then [`Uplink::start`] it once the node runs.
#[derive(Debug, Clone)]
pub struct Uplink {
    inner: Arc<Inner>,
}

/// A route ready to use.
#[derive(Debug)]
struct Mapping {
    filter: TopicFilter,
    /// Taken off the front of a matching topic, if it is there.
    strip: String,
    /// Put in front of what is left.
    add: String,
}

impl Mapping {
    fn apply(&self, topic: &str) -> Option<TopicName> {
        let rest = topic.strip_prefix(self.strip.as_str()).unwrap_or(topic);
        TopicName::try_from(format!("{}{rest}", self.add).as_str()).ok()
    }
}

/// The first route matching `topic`; `Some(None)` when it matches but the rewritten topic is not a
/// valid topic name.
fn route(routes: &[Mapping], topic: &TopicName) -> Option<Option<TopicName>> {
    routes.iter().find(|r| r.filter.matches(topic)).map(|r| r.apply(topic.as_str()))
}

/// Where the remote is.
struct Remote {
    host: String,
    port: u16,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    acknowledged: AtomicU64,
    refused: AtomicU64,
    expired: AtomicU64,
    dropped: AtomicU64,
    received: AtomicU64,
    unrouted: AtomicU64,
    reconnects: AtomicU64,
}

struct Inner {
    config: UplinkConfig,
    version: ProtocolVersion,
    qos: QoS,
    client_id: Arc<str>,
    /// The origin of messages that came in through this uplink: `uplink:<name>`.
    origin: Arc<str>,
    remote: Remote,
    out: Vec<Mapping>,
    in_: Vec<Mapping>,
    /// `<name>\0`: every outbox key of this uplink starts with it.
    prefix: Vec<u8>,
    /// Set by [`Uplink::start`]; until then the tap keeps messages in `early`.
    store: OnceLock<Store>,
    /// Messages accepted before the start, with their remote topic. The lock also orders the start
    /// against the tap (see [`Uplink::start`]); it is never held across an await.
    early: Mutex<Vec<(TopicName, Arc<Message>)>>,
    /// The number of the last entry written.
    seq: AtomicU64,
    /// Entries in the outbox.
    backlog: AtomicU64,
    /// When the oldest entry was written (Unix ms), 0 if unknown.
    head_ms: AtomicU64,
    counters: Counters,
    connected: AtomicBool,
    started: AtomicBool,
    /// The last error; never held across an await.
    last_error: Mutex<Option<String>>,
    /// Wakes the connection task when an entry was written.
    wake: Notify,
    closing: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Uplink").field("name", &self.config.name).field("url", &self.config.url).finish()
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Splits `mqtt://host[:port]` / `mqtts://host[:port]` into (TLS, host, port).
fn parse_url(url: &str) -> Result<(bool, String, u16), &'static str> {
    let (scheme, rest) = url.split_once("://").ok_or("expected mqtt://host[:port] or mqtts://host[:port]")?;
    let tls = if scheme.eq_ignore_ascii_case("mqtts") {
        true
    } else if scheme.eq_ignore_ascii_case("mqtt") {
        false
    } else {
        return Err("unknown scheme: use mqtt:// or mqtts://");
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@']) {
        return Err("only host and port may follow the scheme (credentials go in username and password)");
    }
    let (host, port) = match rest.strip_prefix('[') {
        Some(bracketed) => {
            let (host, after) = bracketed.split_once(']').ok_or("unclosed [ in the host")?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err("not an IPv6 address between [ and ]");
            }
            match after {
                "" => (host, None),
                _ => (host, Some(after.strip_prefix(':').ok_or("expected :port after ]")?)),
            }
        }
        None => match rest.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        },
    };
    if host.is_empty() {
        return Err("no host");
    }
    // An IPv6 address (checked above) is the only host with a colon.
    let ipv6 = host.parse::<std::net::Ipv6Addr>().is_ok() && rest.starts_with('[');
    if !ipv6 && host.contains(|c: char| c.is_whitespace() || c == ':' || c == '[' || c == ']') {
        return Err("invalid host");
    }
    let port = match port {
        None if tls => 8883,
        None => 1883,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => return Err("the port is not a number from 1 to 65535"),
        },
    };
    Ok((tls, host.to_owned(), port))
}

/// The TLS client for `host`: the public roots, or the authorities in `ca` only.
/// A TLS client for `host`: the public roots built in, or only the authorities in `ca` (PEM). The
/// error names the problem (an unreadable or empty CA file, a host that is not a server name).
pub fn tls_client(host: &str, ca: Option<&Path>) -> Result<(TlsConnector, ServerName<'static>), String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|e| format!("cannot read the CA file {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("no certificate in the CA file {}", path.display()));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("a certificate in {} is not usable: {e}", path.display()))?;
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| format!("{host:?} is not a valid TLS server name"))?;
    Ok((TlsConnector::from(Arc::new(config)), name))
}

fn mapping(name: &str, direction: &'static str, route: &Route) -> Result<Mapping, UplinkError> {
    let err = |reason: String| UplinkError::Route {
        name: name.to_owned(),
        direction,
        filter: route.filter.clone(),
        reason,
    };
    if route.filter.starts_with("$share/") {
        return Err(err("shared subscriptions are not supported".to_owned()));
    }
    let filter = TopicFilter::try_from(route.filter.as_str()).map_err(|e| err(e.to_string()))?;
    for (which, prefix) in [("local_prefix", &route.local_prefix), ("remote_prefix", &route.remote_prefix)] {
        if prefix.contains(['+', '#', '\0']) {
            return Err(err(format!("{which} {prefix:?} holds + or # (or NUL): a prefix is not a filter")));
        }
        if prefix.len() > usize::from(u16::MAX) {
            return Err(err(format!("{which} is too long")));
        }
    }
    let (strip, add) = match direction {
        "out" => (route.local_prefix.clone(), route.remote_prefix.clone()),
        _ => (route.remote_prefix.clone(), route.local_prefix.clone()),
    };
    Ok(Mapping { filter, strip, add })
}

fn check_string(name: &str, what: &str, s: &str) -> Result<(), UplinkError> {
    if s.len() > usize::from(u16::MAX) || s.contains('\0') {
        return Err(UplinkError::Setting {
            name: name.to_owned(),
            reason: format!("{what} is longer than 65535 bytes or holds NUL"),
        });
    }
    Ok(())
}

fn outbox_key(prefix: &[u8], seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 8);
    k.extend_from_slice(prefix);
    k.put_u64(seq);
    k
}

/// The number at the end of an outbox key of this uplink.
fn key_seq(key: &[u8], prefix: &[u8]) -> Option<u64> {
    let tail = key.strip_prefix(prefix)?;
    Some(u64::from_be_bytes(tail.try_into().ok()?))
}

/// An outbox entry: when it was written (Unix ms) and the message (with its remote topic) as a
/// [`wire`] frame.
fn entry(remote: TopicName, m: &Message, origin: &Arc<str>, seq: u64) -> Vec<u8> {
    let mut copy = m.clone();
    copy.topic = remote;
    let frame = wire::encode(&copy, &Stamp { origin: origin.clone(), boot: 0, seq }, Instant::now());
    let mut value = Vec::with_capacity(frame.len() + 8);
    value.put_u64(unix_ms(SystemTime::now()));
    value.extend_from_slice(&frame);
    value
}

impl Uplink {
    /// Checks `config` and prepares the uplink; nothing is opened until [`Uplink::start`].
    ///
    /// # Errors
    /// An [`UplinkError`] naming the setting that is wrong: the name, the URL, the protocol, a
    /// route, the TLS setup (CA file), or another setting.
    pub fn new(mut config: UplinkConfig) -> Result<Uplink, UplinkError> {
        if !valid_name(&config.name) {
            return Err(UplinkError::Name(config.name));
        }
        let name = config.name.clone();
        let setting = |reason: &str| UplinkError::Setting { name: name.clone(), reason: reason.to_owned() };
        let (tls, host, port) = parse_url(&config.url).map_err(|reason| UplinkError::Url {
            name: name.clone(),
            url: config.url.clone(),
            reason,
        })?;
        let version = match config.protocol {
            4 => ProtocolVersion::V311,
            5 => ProtocolVersion::V5,
            protocol => return Err(UplinkError::Protocol { name, protocol }),
        };
        let qos = match config.qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => return Err(setting(&format!("qos {} is not supported: use 0 or 1", config.qos))),
        };
        if config.client_id.is_empty() {
            config.client_id = format!("m2m-{name}");
        }
        check_string(&name, "client_id", &config.client_id)?;
        if let Some(user) = &config.username {
            check_string(&name, "username", user)?;
        }
        if let Some(password) = &config.password {
            if password.len() > usize::from(u16::MAX) {
                return Err(setting("password is longer than 65535 bytes"));
            }
            if config.username.is_none() && version == ProtocolVersion::V311 {
                return Err(setting("a password needs a username with MQTT 3.1.1 (protocol 4)"));
            }
        }
        if config.outbox_limit == 0 {
            return Err(setting("outbox_limit must be at least 1"));
        }
        if config.backoff_min.is_zero() || config.backoff_max < config.backoff_min {
            return Err(setting("the back-off needs 0 < backoff_min <= backoff_max"));
        }
        if config.out.is_empty() && config.in_.is_empty() {
            return Err(setting("no routes: give at least one out or in route"));
        }
        let out = config.out.iter().map(|r| mapping(&name, "out", r)).collect::<Result<Vec<_>, _>>()?;
        let in_ = config.in_.iter().map(|r| mapping(&name, "in", r)).collect::<Result<Vec<_>, _>>()?;
        let tls = match (tls, &config.ca) {
            (false, Some(_)) => return Err(setting("ca is set but the URL is mqtt://: use mqtts://")),
            (false, None) => None,
            (true, ca) => Some(
                tls_client(&host, ca.as_deref())
                    .map_err(|reason| UplinkError::Tls { name: name.clone(), reason })?,
            ),
        };
        let (closing, _) = watch::channel(false);
        Ok(Uplink {
            inner: Arc::new(Inner {
                version,
                qos,
                client_id: config.client_id.as_str().into(),
                origin: format!("uplink:{name}").into(),
                remote: Remote { host, port, tls },
                out,
                in_,
                prefix: [name.as_bytes(), b"\0"].concat(),
                config,
                store: OnceLock::new(),
                early: Mutex::new(Vec::new()),
                seq: AtomicU64::new(0),
                backlog: AtomicU64::new(0),
                head_ms: AtomicU64::new(0),
                counters: Counters::default(),
                connected: AtomicBool::new(false),
                started: AtomicBool::new(false),
                last_error: Mutex::new(None),
                wake: Notify::new(),
                closing,
                task: Mutex::new(None),
            }),
        })
    }

    /// The uplink's name.
    pub fn name(&self) -> &str {
        &self.inner.config.name
    }

    /// The origin given to messages that came in through this uplink: `uplink:<name>`.
    pub fn origin(&self) -> &str {
        &self.inner.origin
    }

    /// Counts what the store holds of the outbox, writes what the tap kept before, and starts the
    /// connection task (which connects at once and keeps reconnecting until [`Uplink::close`]).
    ///
    /// # Errors
    /// [`UplinkError::AlreadyStarted`]; [`UplinkError::Store`] when the outbox cannot be read.
    pub async fn start(&self, router: RouterHandle, store: Store) -> Result<(), UplinkError> {
        let inner = &self.inner;
        if inner.started.swap(true, Ordering::SeqCst) {
            return Err(UplinkError::AlreadyStarted(inner.config.name.clone()));
        }
        let (loading, prefix) = (store.clone(), inner.prefix.clone());
        let loaded = match tokio::task::spawn_blocking(move || load(&loading, &prefix)).await {
            Ok(loaded) => loaded,
            Err(e) => {
                warn!(uplink = %inner.config.name, error = %e, "uplink outbox load failed");
                Err(StoreError::Unavailable)
            }
        };
        let (count, last, first_ms) = loaded.map_err(|source| {
            // Not started after all: it may be tried again.
            inner.started.store(false, Ordering::SeqCst);
            UplinkError::Store { name: inner.config.name.clone(), source }
        })?;
        inner.seq.store(last, Ordering::SeqCst);
        inner.backlog.store(count, Ordering::SeqCst);
        inner.head_ms.store(first_ms, Ordering::SeqCst);
        if count > 0 {
            info!(uplink = %inner.config.name, backlog = count, "uplink outbox found on disk");
        }
        {
            // Written before the store is made visible to the tap, under the lock the tap takes
            // when it finds no store: what came before the start keeps its place in the order.
            let mut early = inner.early.lock().unwrap_or_else(PoisonError::into_inner);
            for (topic, m) in early.drain(..) {
                let _ = inner.enqueue(&store, topic, &m);
            }
            let _ = inner.store.set(store.clone());
        }
        let closing = inner.closing.subscribe();
        let task = tokio::spawn(run(inner.clone(), router, store, closing));
        *inner.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
        Ok(())
    }

    /// Where the uplink stands.
    pub fn status(&self) -> UplinkStatus {
        let inner = &self.inner;
        let c = &inner.counters;
        let early = inner.early.lock().unwrap_or_else(PoisonError::into_inner).len() as u64;
        let backlog = inner.backlog.load(Ordering::Relaxed) + early;
        let head = inner.head_ms.load(Ordering::Relaxed);
        let oldest_ms = (backlog > 0 && head > 0).then(|| unix_ms(SystemTime::now()).saturating_sub(head));
        UplinkStatus {
            name: inner.config.name.clone(),
            url: inner.config.url.clone(),
            connected: inner.connected.load(Ordering::Relaxed),
            backlog,
            oldest_ms,
            sent: c.sent.load(Ordering::Relaxed),
            acknowledged: c.acknowledged.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            expired: c.expired.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
            unrouted: c.unrouted.load(Ordering::Relaxed),
            reconnects: c.reconnects.load(Ordering::Relaxed),
            last_error: inner.last_error.lock().unwrap_or_else(PoisonError::into_inner).clone(),
        }
    }

    /// Puts `message` into the outbox as it is, whatever the routes say: its topic is the remote
    /// topic (a rule's `forward` action).
    ///
    /// # Errors
    /// The uplink has not started (no outbox yet), or its outbox is full.
    pub fn forward(&self, message: &Message) -> Result<(), String> {
        let inner = &self.inner;
        let Some(store) = inner.store.get() else {
            return Err(format!("uplink {} has not started", inner.config.name));
        };
        if !inner.enqueue(store, message.topic.clone(), message) {
            return Err(format!("uplink {}: the outbox is full or cannot be written", inner.config.name));
        }
        Ok(())
    }

    /// Ends the connection (with a DISCONNECT) and stops reconnecting. The tap still writes
    /// messages into the outbox, for the next start of the node. Call it before the node stops.
    ///
    /// # Cancel safety
    /// Safe to drop: the connection task was told to stop and stops by itself.
    pub async fn close(&self) {
        self.inner.closing.send_replace(true);
        let task = self.inner.task.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(mut task) = task {
            if tokio::time::timeout(CLOSE_TIMEOUT, &mut task).await.is_err() {
                task.abort();
            }
        }
        self.inner.connected.store(false, Ordering::Relaxed);
    }
}

impl Inner {
    /// Writes `m` into the outbox under its remote topic, unless the outbox is full; `false` (and
    /// counted as dropped) when it was not kept.
    fn enqueue(&self, store: &Store, remote: TopicName, m: &Message) -> bool {
        if self.backlog.load(Ordering::Relaxed) >= self.config.outbox_limit {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            trace!(uplink = %self.config.name, topic = %m.topic, "uplink outbox full, message dropped");
            return false;
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let mut batch = store.batch();
        batch.put_record(Table::Uplink, &outbox_key(&self.prefix, seq), entry(remote, m, &self.origin, seq));
        if let Err(e) = batch.commit() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            warn!(uplink = %self.config.name, error = %e, topic = %m.topic, "uplink outbox write failed");
            return false;
        }
        if self.backlog.fetch_add(1, Ordering::Relaxed) == 0 {
            self.head_ms.store(unix_ms(SystemTime::now()), Ordering::Relaxed);
        }
        self.wake.notify_one();
        true
    }

    fn forget(&self, n: u64) {
        let _ =
            self.backlog.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| Some(b.saturating_sub(n)));
    }

    fn set_error(&self, error: &str) {
        *self.last_error.lock().unwrap_or_else(PoisonError::into_inner) = Some(error.to_owned());
    }
}

impl Tap for Uplink {
    /// Called on the router's thread while it handles the publish: the outbox write is in the store
    /// before the publisher's acknowledgement waits for durability.
    fn message(&self, message: &Arc<Message>) {
        let inner = &self.inner;
        if message.origin.as_deref() == Some(&*inner.origin) {
            return;
        }
        let Some(remote) = route(&inner.out, &message.topic) else { return };
        let Some(remote) = remote else {
            inner.counters.dropped.fetch_add(1, Ordering::Relaxed);
            debug!(uplink = %inner.config.name, topic = %message.topic, "no valid remote topic, dropped");
            return;
        };
        if let Some(store) = inner.store.get() {
            let _ = inner.enqueue(store, remote, message);
            return;
        }
        let mut early = inner.early.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(store) = inner.store.get() {
            // Started meanwhile.
            drop(early);
            let _ = inner.enqueue(store, remote, message);
        } else if early.len() as u64 >= inner.config.outbox_limit {
            inner.counters.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            early.push((remote, message.clone()));
        }
    }
}

/// This uplink's outbox in the store: (entries, the last number, when the first was written).
fn load(store: &Store, prefix: &[u8]) -> Result<(u64, u64, u64), StoreError> {
    let (mut count, mut last, mut first_ms) = (0u64, 0u64, 0u64);
    let mut after = prefix.to_vec();
    loop {
        let chunk = store.records_after(Table::Uplink, Some(&after), 10_000)?;
        let mut ended = chunk.len() < 10_000;
        for (k, v) in chunk {
            let Some(seq) = key_seq(&k, prefix) else {
                ended = true;
                break;
            };
            if count == 0 {
                first_ms = v.get(..8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_be_bytes);
            }
            count += 1;
            last = last.max(seq);
            after = k;
        }
        if ended {
            return Ok((count, last, first_ms));
        }
    }
}

/// How a connection ended.
#[derive(Debug)]
enum Ended {
    /// Closed, or the node is stopping: no reconnection.
    Stop,
    /// Lost or refused: reconnect after the back-off.
    Lost(String),
}

impl From<String> for Ended {
    fn from(error: String) -> Self {
        Ended::Lost(error)
    }
}

type Step<T> = Result<T, Ended>;

/// Waits until [`Uplink::close`] was called.
async fn closed(closing: &mut watch::Receiver<bool>) {
    // An error means the sender is gone: the uplink itself is gone.
    let _ = closing.wait_for(|c| *c).await;
}

/// The connection task: connects, runs the connection, and reconnects after a back-off.
async fn run(inner: Arc<Inner>, router: RouterHandle, store: Store, mut closing: watch::Receiver<bool>) {
    let mut attempt = 0u32;
    let mut jitter = Jitter::new();
    // Incoming QoS 2 packet ids received and not released yet; the remote keeps its session.
    let mut incoming: HashSet<u16> = HashSet::new();
    let mut connections = 0u64;
    let name = &inner.config.name;
    loop {
        let began = Instant::now();
        let ended = session(&inner, &router, &store, &mut closing, &mut incoming, &mut connections).await;
        inner.connected.store(false, Ordering::Relaxed);
        match ended {
            Ended::Stop => {
                debug!(uplink = %name, "uplink closed");
                return;
            }
            Ended::Lost(error) => {
                let repeated = inner.last_error.lock().unwrap_or_else(PoisonError::into_inner).as_deref()
                    == Some(&error);
                if repeated {
                    debug!(uplink = %name, %error, "uplink connection failed again");
                } else {
                    warn!(uplink = %name, %error, "uplink connection lost or refused");
                }
                inner.set_error(&error);
            }
        }
        if began.elapsed() >= STABLE_AFTER {
            attempt = 0;
        }
        attempt = attempt.saturating_add(1);
        let delay =
            backoff_delay(inner.config.backoff_min, inner.config.backoff_max, attempt, jitter.next_unit());
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = closed(&mut closing) => return,
        }
    }
}

/// One connection, from opening it to its end.
async fn session(
    inner: &Inner,
    router: &RouterHandle,
    store: &Store,
    closing: &mut watch::Receiver<bool>,
    incoming: &mut HashSet<u16>,
    connections: &mut u64,
) -> Ended {
    let opened = tokio::select! {
        () = closed(closing) => return Ended::Stop,
        opened = tokio::time::timeout(CONNECT_TIMEOUT, open(inner)) => opened,
    };
    let (mut opened, connack) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(e)) => return Ended::Lost(e),
        Err(_) => return Ended::Lost(format!("no connection within {} s", CONNECT_TIMEOUT.as_secs())),
    };
    let (store, router) = (store.clone(), router.clone());
    let mut link = Link::new(inner, store, router, &mut opened, &connack);
    *connections += 1;
    if *connections > 1 {
        inner.counters.reconnects.fetch_add(1, Ordering::Relaxed);
    }
    inner.connected.store(true, Ordering::Relaxed);
    info!(
        uplink = %inner.config.name,
        url = %inner.config.url,
        session_present = connack.session_present,
        backlog = inner.backlog.load(Ordering::Relaxed),
        "uplink connected"
    );
    match link.run(closing, incoming).await {
        Ok(()) => Ended::Stop,
        Err(ended) => ended,
    }
}

/// A byte stream to the remote: TCP, or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An open connection: the writing half and the packets read by the reader task.
struct Opened {
    wr: WriteHalf<Box<dyn Io>>,
    rx: mpsc::Receiver<Result<Packet, String>>,
    /// The reader task, stopped with the connection.
    _reader: AbortOnDrop,
}

/// Aborts the task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Opens TCP (and TLS), sends CONNECT and waits for the CONNACK.
async fn open(inner: &Inner) -> Result<(Opened, ConnAck), String> {
    let remote = &inner.remote;
    let tcp = TcpStream::connect((remote.host.as_str(), remote.port))
        .await
        .map_err(|e| format!("cannot connect to {}:{}: {e}", remote.host, remote.port))?;
    // Packets are written whole, one batch at a time: Nagle only adds delay.
    tcp.set_nodelay(true).map_err(|e| format!("cannot set TCP_NODELAY: {e}"))?;
    let stream: Box<dyn Io> = match &remote.tls {
        None => Box::new(tcp),
        Some((connector, server)) => Box::new(
            connector.connect(server.clone(), tcp).await.map_err(|e| format!("TLS handshake failed: {e}"))?,
        ),
    };
    let (rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel(256);
    let reader = AbortOnDrop(tokio::spawn(read_packets(rd, inner.version, tx)));
    let config = &inner.config;
    let v5 = inner.version.is_v5();
    let connect = Connect {
        protocol: inner.version,
        clean_start: false,
        keep_alive: config.keep_alive,
        client_id: inner.client_id.clone(),
        will: None,
        username: config.username.as_deref().map(Arc::from),
        password: config.password.as_ref().map(|p| Bytes::copy_from_slice(p.as_bytes())),
        properties: ConnectProperties {
            session_expiry_interval: v5.then_some(SESSION_EXPIRY),
            maximum_packet_size: v5.then(|| u32::try_from(MAX_PACKET).unwrap_or(u32::MAX)),
            ..ConnectProperties::default()
        },
    };
    let mut buf = BytesMut::new();
    encode(&Packet::Connect(Box::new(connect)), inner.version, &mut buf)
        .map_err(|e| format!("cannot encode CONNECT: {e}"))?;
    wr.write_all(&buf).await.map_err(|e| format!("write failed: {e}"))?;
    wr.flush().await.map_err(|e| format!("write failed: {e}"))?;
    let connack = match rx.recv().await {
        Some(Ok(Packet::ConnAck(ack))) => ack,
        Some(Ok(other)) => return Err(format!("expected CONNACK, the remote sent {}", other.name())),
        Some(Err(e)) => return Err(e),
        None => return Err("connection closed before CONNACK".to_owned()),
    };
    if connack.reason_code.is_error() {
        let mut error = format!("the remote refused the connection: {}", connack.reason_code.description());
        if let Some(reason) = &connack.properties.reason_string {
            error.push_str(&format!(" ({reason})"));
        }
        return Err(error);
    }
    Ok((Opened { wr, rx, _reader: reader }, connack))
}

/// Reads packets until the connection ends; the last item is the reason it ended.
///
/// A task of its own, so that the connection is read even while a write waits.
async fn read_packets(
    mut rd: ReadHalf<Box<dyn Io>>,
    version: ProtocolVersion,
    tx: mpsc::Sender<Result<Packet, String>>,
) {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    loop {
        let item = match decode(&mut buf, version, MAX_PACKET) {
            Ok(Some(packet)) => Ok(packet),
            Ok(None) => match rd.read_buf(&mut buf).await {
                Ok(0) => Err("connection closed by the remote".to_owned()),
                Ok(_) => continue,
                Err(e) => Err(format!("read failed: {e}")),
            },
            Err(e) => Err(format!("malformed packet from the remote: {e}")),
        };
        let end = item.is_err();
        if tx.send(item).await.is_err() || end {
            return;
        }
    }
}

/// One live connection: what is in flight on it.
struct Link<'a> {
    inner: &'a Inner,
    store: Store,
    router: RouterHandle,
    opened: &'a mut Opened,
    out: BytesMut,
    window: usize,
    max_qos: QoS,
    retain_available: bool,
    /// The remote's Maximum Packet Size.
    max_packet: usize,
    keep_alive: Option<Duration>,
    next_id: u16,
    /// Sent and not acknowledged: outbox number → when it was written (Unix ms).
    inflight: BTreeMap<u64, u64>,
    /// Packet id → outbox number.
    by_id: HashMap<u16, u64>,
    /// The last outbox key read on this connection.
    cursor: Vec<u8>,
    /// Whether the outbox may hold entries after `cursor`.
    more: bool,
    /// Outbox keys to delete.
    done: Vec<Vec<u8>>,
    /// QoS 0 entries written to `out`, deleted once it is flushed.
    written: Vec<Vec<u8>>,
    /// Acknowledgements of incoming messages, sent once the node made them durable.
    acks: Vec<Packet>,
    /// Whether a message was handed to the router since the last durability wait.
    delivered: bool,
    subscribed: Vec<Arc<str>>,
    last_sent: Instant,
    last_heard: Instant,
    ping_sent: Option<Instant>,
}

impl<'a> Link<'a> {
    fn new(
        inner: &'a Inner,
        store: Store,
        router: RouterHandle,
        opened: &'a mut Opened,
        connack: &ConnAck,
    ) -> Link<'a> {
        let p = &connack.properties;
        let window = p.receive_maximum.map_or(WINDOW, |m| WINDOW.min(usize::from(m).max(1)));
        let keep_alive = p.server_keep_alive.unwrap_or(inner.config.keep_alive);
        let now = Instant::now();
        Link {
            inner,
            store,
            router,
            opened,
            out: BytesMut::with_capacity(16 * 1024),
            window,
            max_qos: p.maximum_qos.unwrap_or(QoS::ExactlyOnce),
            retain_available: p.retain_available.unwrap_or(true),
            max_packet: p
                .maximum_packet_size
                .map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX)),
            keep_alive: (keep_alive > 0).then(|| Duration::from_secs(u64::from(keep_alive))),
            next_id: 0,
            inflight: BTreeMap::new(),
            by_id: HashMap::new(),
            cursor: inner.prefix.clone(),
            more: true,
            done: Vec::new(),
            written: Vec::new(),
            acks: Vec::new(),
            delivered: false,
            subscribed: Vec::new(),
            last_sent: now,
            last_heard: now,
            ping_sent: None,
        }
    }

    /// Runs the connection until it is closed (`Ok`) or ends.
    async fn run(&mut self, closing: &mut watch::Receiver<bool>, incoming: &mut HashSet<u16>) -> Step<()> {
        self.subscribe()?;
        loop {
            if self.more && self.inflight.len() < self.window {
                self.fill().await?;
            }
            self.flush().await?;
            // QoS 0: delivered as far as it ever will be once written.
            let written = self.written.len() as u64;
            self.inner.counters.acknowledged.fetch_add(written, Ordering::Relaxed);
            self.done.append(&mut self.written);
            self.forget_done();
            let room = self.inflight.len() < self.window;
            let deadline = self.deadline();
            let inner = self.inner;
            tokio::select! {
                () = closed(closing) => {
                    let disconnect = Disconnect {
                        reason_code: ReasonCode::NORMAL_DISCONNECTION,
                        properties: Default::default(),
                    };
                    // Leaving anyway: a failure to say goodbye changes nothing.
                    if self.send(&Packet::Disconnect(disconnect)).is_ok() {
                        let _ = self.flush().await;
                    }
                    return Ok(());
                }
                item = self.opened.rx.recv() => {
                    let Some(item) = item else { return Err(Ended::Lost("reader stopped".to_owned())) };
                    let mut packet = item?;
                    // Take what else is there, then wait for durability once for all of it.
                    for _ in 0..BATCH {
                        self.handle(packet, incoming).await?;
                        match self.opened.rx.try_recv() {
                            Ok(item) => packet = item?,
                            Err(_) => break,
                        }
                    }
                    self.confirm().await?;
                }
                () = inner.wake.notified(), if room && !self.more => self.more = true,
                () = tokio::time::sleep_until(deadline.into()) => self.tick()?,
            }
        }
    }

    /// Subscribes to the in filters.
    fn subscribe(&mut self) -> Step<()> {
        if self.inner.in_.is_empty() {
            return Ok(());
        }
        let options = SubscriptionOptions {
            qos: self.inner.qos,
            // MQTT 5: not what this uplink publishes itself, retained messages only for a new
            // subscription (the remote keeps the session), and the retain flag as published.
            no_local: true,
            retain_as_published: true,
            retain_handling: RetainHandling::SendIfNew,
        };
        self.subscribed = self.inner.in_.iter().map(|m| m.filter.as_arc().clone()).collect();
        let subscribe = Subscribe {
            packet_id: self.packet_id(),
            subscription_identifier: None,
            user_properties: Vec::new(),
            filters: self.subscribed.iter().map(|f| (f.clone(), options)).collect(),
        };
        self.send(&Packet::Subscribe(subscribe))
    }

    /// A packet id not in use.
    fn packet_id(&mut self) -> PacketId {
        loop {
            self.next_id = self.next_id.wrapping_add(1);
            if let Some(id) = PacketId::new(self.next_id).filter(|id| !self.by_id.contains_key(&id.get())) {
                return id;
            }
        }
    }

    fn send(&mut self, packet: &Packet) -> Step<()> {
        encode(packet, self.inner.version, &mut self.out)
            .map_err(|e| Ended::Lost(format!("cannot encode {}: {e}", packet.name())))
    }

    async fn flush(&mut self) -> Step<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let wr = &mut self.opened.wr;
        let out = &self.out;
        let written = tokio::time::timeout(WRITE_TIMEOUT, async {
            wr.write_all(out).await?;
            wr.flush().await
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Ended::Lost(format!("write failed: {e}"))),
            Err(_) => return Err(Ended::Lost(format!("write blocked for {} s", WRITE_TIMEOUT.as_secs()))),
        }
        self.out.clear();
        self.last_sent = Instant::now();
        Ok(())
    }

    /// Sends the next outbox entries, as many as the window has room for.
    async fn fill(&mut self) -> Step<()> {
        let room = (self.window - self.inflight.len()).min(BATCH);
        let (store, after) = (self.store.clone(), self.cursor.clone());
        let records =
            match tokio::task::spawn_blocking(move || store.records_after(Table::Uplink, Some(&after), room))
                .await
            {
                Ok(Ok(records)) => records,
                Ok(Err(e)) => return Err(Ended::Lost(format!("the outbox cannot be read: {e}"))),
                Err(e) => return Err(Ended::Lost(format!("the outbox cannot be read: {e}"))),
            };
        let inner = self.inner;
        let prefix = &inner.prefix;
        let mut taken = 0;
        let was_empty = self.inflight.is_empty();
        let (now, now_ms) = (Instant::now(), unix_ms(SystemTime::now()));
        for (key, value) in records {
            let Some(seq) = key_seq(&key, prefix) else { break };
            taken += 1;
            self.cursor.clone_from(&key);
            let enqueued_ms =
                value.get(..8).and_then(|b| b.try_into().ok()).map_or(now_ms, u64::from_be_bytes);
            if was_empty && taken == 1 {
                inner.head_ms.store(enqueued_ms, Ordering::Relaxed);
            }
            let frame = value.get(8..).unwrap_or_default();
            let spent = Duration::from_millis(now_ms.saturating_sub(enqueued_ms));
            let decoded = match wire::age(frame, spent) {
                wire::Aged::Same => wire::decode(frame, now),
                wire::Aged::Updated(aged) => wire::decode(&aged, now),
                wire::Aged::Expired => {
                    inner.counters.expired.fetch_add(1, Ordering::Relaxed);
                    self.done.push(key);
                    continue;
                }
            };
            let Ok((_, m)) = decoded else {
                warn!(uplink = %inner.config.name, seq, "unreadable uplink outbox entry, dropped");
                inner.counters.dropped.fetch_add(1, Ordering::Relaxed);
                self.done.push(key);
                continue;
            };
            let qos = m.qos.min(inner.qos).min(self.max_qos);
            let mut properties = m.properties;
            properties.topic_alias = None;
            properties.subscription_identifiers.clear();
            let mut publish = Publish {
                dup: false,
                qos,
                retain: m.retain && self.retain_available,
                topic: m.topic.into_arc(),
                packet_id: None,
                properties,
                payload: m.payload,
            };
            if qos != QoS::AtMostOnce {
                publish.packet_id = Some(self.packet_id());
            }
            let packet = Packet::Publish(publish);
            if encoded_len(&packet, inner.version) > self.max_packet {
                inner.counters.refused.fetch_add(1, Ordering::Relaxed);
                warn!(uplink = %inner.config.name, seq, "message larger than the remote takes, dropped");
                self.done.push(key);
                continue;
            }
            self.send(&packet)?;
            inner.counters.sent.fetch_add(1, Ordering::Relaxed);
            match packet {
                Packet::Publish(Publish { packet_id: Some(id), .. }) => {
                    self.inflight.insert(seq, enqueued_ms);
                    self.by_id.insert(id.get(), seq);
                }
                _ => self.written.push(key),
            }
        }
        if taken < room {
            self.more = false;
        }
        Ok(())
    }

    /// Deletes the entries that are done with from the outbox.
    fn forget_done(&mut self) {
        if self.done.is_empty() {
            return;
        }
        let inner = self.inner;
        let n = self.done.len() as u64;
        let mut batch = self.store.batch();
        for key in self.done.drain(..) {
            batch.remove_record(Table::Uplink, &key);
        }
        // A delete that is lost only sends the message again: at least once.
        if let Err(e) = batch.commit() {
            warn!(uplink = %inner.config.name, error = %e, "uplink outbox cleanup failed");
        }
        inner.forget(n);
        match self.inflight.values().next() {
            Some(first) => inner.head_ms.store(*first, Ordering::Relaxed),
            None if inner.backlog.load(Ordering::Relaxed) == 0 => inner.head_ms.store(0, Ordering::Relaxed),
            None => {}
        }
    }

    async fn handle(&mut self, packet: Packet, incoming: &mut HashSet<u16>) -> Step<()> {
        self.last_heard = Instant::now();
        match packet {
            Packet::PubAck(ack) => self.acknowledged(&ack),
            Packet::Publish(publish) => self.inbound(publish, incoming).await?,
            Packet::PubRel(rel) => {
                incoming.remove(&rel.packet_id.get());
                self.send(&Packet::PubComp(Ack::new(rel.packet_id)))?;
            }
            Packet::SubAck(suback) => {
                for (filter, code) in self.subscribed.iter().zip(&suback.reason_codes) {
                    if code.is_error() {
                        let error = format!(
                            "the remote refused the subscription to {filter}: {}",
                            code.description()
                        );
                        warn!(uplink = %self.inner.config.name, %error);
                        self.inner.set_error(&error);
                    }
                }
            }
            Packet::PingResp => self.ping_sent = None,
            Packet::Disconnect(d) => {
                let mut error = format!("the remote disconnected: {}", d.reason_code.description());
                if let Some(reason) = &d.properties.reason_string {
                    error.push_str(&format!(" ({reason})"));
                }
                return Err(Ended::Lost(error));
            }
            other => return Err(Ended::Lost(format!("unexpected {} from the remote", other.name()))),
        }
        Ok(())
    }

    fn acknowledged(&mut self, ack: &Ack) {
        let inner = self.inner;
        let Some(seq) = self.by_id.remove(&ack.packet_id.get()) else {
            debug!(uplink = %inner.config.name, packet_id = ack.packet_id, "PUBACK for no message in flight");
            return;
        };
        self.inflight.remove(&seq);
        if ack.reason_code.is_error() {
            inner.counters.refused.fetch_add(1, Ordering::Relaxed);
            let error = format!("the remote refused a message: {}", ack.reason_code.description());
            debug!(uplink = %inner.config.name, seq, %error);
            inner.set_error(&error);
        } else {
            inner.counters.acknowledged.fetch_add(1, Ordering::Relaxed);
        }
        self.done.push(outbox_key(&inner.prefix, seq));
        self.more = true;
    }

    /// A message from the remote: published on the node (unless it is a QoS 2 message received
    /// already), its acknowledgement queued for [`Link::confirm`].
    async fn inbound(&mut self, publish: Publish, incoming: &mut HashSet<u16>) -> Step<()> {
        let id = match (publish.qos, publish.packet_id) {
            (QoS::AtMostOnce, _) => None,
            (_, Some(id)) => Some(id),
            (_, None) => return Err(Ended::Lost("a QoS 1/2 PUBLISH without packet id".to_owned())),
        };
        let qos = publish.qos;
        let fresh = match (qos, id) {
            (QoS::ExactlyOnce, Some(id)) => incoming.insert(id.get()),
            _ => true,
        };
        if fresh {
            self.deliver(publish).await?;
        }
        match (qos, id) {
            (QoS::AtLeastOnce, Some(id)) => self.acks.push(Packet::PubAck(Ack::new(id))),
            (QoS::ExactlyOnce, Some(id)) => self.acks.push(Packet::PubRec(Ack::new(id))),
            _ => {}
        }
        Ok(())
    }

    async fn deliver(&mut self, publish: Publish) -> Step<()> {
        let inner = self.inner;
        let topic = TopicName::try_from(&*publish.topic).ok();
        let Some(Some(local)) = topic.as_ref().and_then(|t| route(&inner.in_, t)) else {
            inner.counters.unrouted.fetch_add(1, Ordering::Relaxed);
            debug!(uplink = %inner.config.name, topic = %publish.topic, "message from the remote matches no in route");
            return Ok(());
        };
        let mut properties = publish.properties;
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        if !inner.version.is_v5() {
            properties = Default::default();
        }
        let message = Message {
            topic: local,
            payload: publish.payload,
            qos: publish.qos,
            retain: publish.retain,
            expires_at: expiry_deadline(properties.message_expiry_interval, Instant::now()),
            properties,
            publisher: None,
            origin: Some(inner.origin.clone()),
        };
        trace!(uplink = %inner.config.name, topic = %message.topic, "message from the remote");
        if message.qos != m2m_codec::QoS::AtMostOnce {
            // Acknowledged to the remote once kept: a congested subscriber here holds the remote
            // back (as a client's connection stops reading) rather than seeing messages dropped.
            self.router.node_flow().wait_unblocked().await;
        }
        let command = Command::Publish { message: Arc::new(message), from: None, ack: None };
        if self.router.send(command).await.is_err() {
            return Err(Ended::Stop);
        }
        inner.counters.received.fetch_add(1, Ordering::Relaxed);
        self.delivered = true;
        Ok(())
    }

    /// Sends the queued acknowledgements once what they acknowledge is durable on the node.
    async fn confirm(&mut self) -> Step<()> {
        if self.acks.is_empty() {
            return Ok(());
        }
        if std::mem::take(&mut self.delivered) {
            // Once the router answered, it has handled the publishes before and written the copies
            // for persistent sessions.
            let (tx, answered) = tokio::sync::oneshot::channel();
            if self.router.send(Command::Stats(tx)).await.is_err() || answered.await.is_err() {
                return Err(Ended::Stop);
            }
            if let Err(e) = self.store.durable().await {
                return Err(Ended::Lost(format!("messages from the remote not durable on the node: {e}")));
            }
        }
        for ack in std::mem::take(&mut self.acks) {
            self.send(&ack)?;
        }
        Ok(())
    }

    /// When the keep-alive next needs attention.
    fn deadline(&self) -> Instant {
        let now = Instant::now();
        let Some(ka) = self.keep_alive else { return now + Duration::from_secs(3600) };
        match self.ping_sent {
            Some(at) => at + ka,
            None => self.last_sent.min(self.last_heard) + ka * 3 / 4,
        }
    }

    /// Sends a PINGREQ when the link has been quiet; ends the connection when it went unanswered.
    fn tick(&mut self) -> Step<()> {
        let Some(ka) = self.keep_alive else { return Ok(()) };
        let now = Instant::now();
        match self.ping_sent {
            Some(at) if now >= at + ka => {
                Err(Ended::Lost(format!("no answer to PINGREQ within {} s", ka.as_secs())))
            }
            Some(_) => Ok(()),
            None if now >= self.last_sent.min(self.last_heard) + ka * 3 / 4 => {
                self.ping_sent = Some(now);
                self.send(&Packet::PingReq)
            }
            None => Ok(()),
        }
    }
}

/// The delay before attempt `attempt` (from 1): `min(min × 2^(attempt-1), max)` with equal jitter,
/// i.e. scaled to between half and all of it by `unit` in `[0, 1)`.
fn backoff_delay(min: Duration, max: Duration, attempt: u32, unit: f64) -> Duration {
    let doubling = 2u32.saturating_pow(attempt.saturating_sub(1));
    let delay = min.saturating_mul(doubling).min(max);
    (delay / 2).saturating_add(delay.mul_f64(unit / 2.0))
}

/// A small pseudo-random generator for back-off jitter (SplitMix64), seeded from the std hasher's
/// per-process random keys. Jitter needs spread, not unpredictability.
struct Jitter(u64);

impl Jitter {
    fn new() -> Self {
        Jitter(std::collections::hash_map::RandomState::new().build_hasher().finish())
    }

    /// A number in `[0, 1)`.
    fn next_unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> UplinkConfig {
        UplinkConfig {
            name: "cloud".into(),
            url: url.into(),
            out: vec![Route::new("plant/#", "", "site-1/")],
            ..UplinkConfig::default()
        }
    }

    #[test]
    fn urls_give_scheme_host_and_default_ports() {
        assert_eq!(parse_url("mqtt://broker.example.com"), Ok((false, "broker.example.com".into(), 1883)));
        assert_eq!(parse_url("mqtts://broker.example.com"), Ok((true, "broker.example.com".into(), 8883)));
        assert_eq!(parse_url("MQTT://10.0.0.1:1884/"), Ok((false, "10.0.0.1".into(), 1884)));
        assert_eq!(parse_url("mqtts://[::1]:8884"), Ok((true, "::1".into(), 8884)));
        for bad in [
            "broker:1883",
            "http://broker",
            "mqtt://",
            "mqtt://:1883",
            "mqtt://broker:0",
            "mqtt://broker:99999",
            "mqtt://broker:x",
            "mqtt://user:pw@broker",
            "mqtt://broker/path",
            "mqtt://[zz]:1",
            "mqtt://a b",
        ] {
            assert!(parse_url(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn routes_rewrite_prefixes_both_ways() {
        let out = mapping("u", "out", &Route::new("plant/#", "plant/", "site-1/plant/")).unwrap();
        let topic = |s: &str| TopicName::try_from(s).unwrap();
        assert_eq!(route(&[out], &topic("plant/a/temp")), Some(Some(topic("site-1/plant/a/temp"))));
        let out = mapping("u", "out", &Route::new("plant/#", "", "site-1/")).unwrap();
        assert_eq!(out.apply("plant"), Some(topic("site-1/plant")));
        let inbound = mapping("u", "in", &Route::new("cmd/site-1/#", "cmd/", "cmd/site-1/")).unwrap();
        assert_eq!(inbound.apply("cmd/site-1/valve/open"), Some(topic("cmd/valve/open")));
        // A topic without the prefix keeps all of itself; a rewrite to nothing is no topic.
        assert_eq!(inbound.apply("other/x"), Some(topic("cmd/other/x")));
        let strip_all = mapping("u", "in", &Route::new("a/#", "", "a/")).unwrap();
        assert_eq!(strip_all.apply("a/"), None);
        assert_eq!(route(&[strip_all], &topic("b")), None);
    }

    #[test]
    fn bad_configurations_are_refused_with_what_is_wrong() {
        let err = |c: UplinkConfig| Uplink::new(c).unwrap_err().to_string();
        assert!(
            err(UplinkConfig { name: "a b".into(), ..config("mqtt://h") }).contains("invalid uplink name")
        );
        assert!(err(config("tcp://h")).contains("unknown scheme"));
        assert!(err(UplinkConfig { protocol: 3, ..config("mqtt://h") }).contains("protocol level 3"));
        assert!(err(UplinkConfig { qos: 2, ..config("mqtt://h") }).contains("qos 2"));
        let bad_filter = UplinkConfig { out: vec![Route::new("a/#/b", "", "")], ..config("mqtt://h") };
        assert!(err(bad_filter).contains("out route \"a/#/b\""));
        let bad_prefix = UplinkConfig { in_: vec![Route::new("a/#", "x/+", "")], ..config("mqtt://h") };
        assert!(err(bad_prefix).contains("in route"));
        let no_routes = UplinkConfig { out: vec![], ..config("mqtt://h") };
        assert!(err(no_routes).contains("no routes"));
        let ca = UplinkConfig { ca: Some("/nonexistent/ca.pem".into()), ..config("mqtt://h") };
        assert!(err(ca).contains("use mqtts://"));
        let ca = UplinkConfig { ca: Some("/nonexistent/ca.pem".into()), ..config("mqtts://h") };
        assert!(err(ca).contains("cannot read the CA file"));
        let password = UplinkConfig { password: Some("x".into()), ..config("mqtt://h") };
        assert!(err(password).contains("needs a username"));
        let backoff = UplinkConfig {
            backoff_min: Duration::from_secs(2),
            backoff_max: Duration::from_secs(1),
            ..config("mqtt://h")
        };
        assert!(err(backoff).contains("back-off"));
        let ok = Uplink::new(config("mqtts://broker.example.com")).unwrap();
        assert_eq!((ok.name(), ok.origin()), ("cloud", "uplink:cloud"));
        assert_eq!(&*ok.inner.client_id, "m2m-cloud");
    }

    #[test]
    fn the_password_is_not_in_debug_output() {
        let c = UplinkConfig {
            username: Some("u".into()),
            password: Some("s3cret".into()),
            ..config("mqtt://h")
        };
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn outbox_keys_sort_by_number_within_an_uplink() {
        let p = b"up\0".to_vec();
        let (a, b) = (outbox_key(&p, 9), outbox_key(&p, 256));
        assert!(a < b);
        assert_eq!(key_seq(&b, &p), Some(256));
        assert_eq!(key_seq(&outbox_key(b"up2\0", 1), &p), None);
    }

    #[test]
    fn back_off_doubles_up_to_its_maximum_with_jitter() {
        let (min, max) = (Duration::from_millis(250), Duration::from_secs(30));
        assert_eq!(backoff_delay(min, max, 1, 0.0), Duration::from_millis(125));
        assert_eq!(backoff_delay(min, max, 3, 0.999_999).as_millis(), 999);
        assert_eq!(backoff_delay(min, max, 40, 0.0), Duration::from_secs(15));
        let mut jitter = Jitter::new();
        assert!((0..1000).map(|_| jitter.next_unit()).all(|u| (0.0..1.0).contains(&u)));
    }
}
