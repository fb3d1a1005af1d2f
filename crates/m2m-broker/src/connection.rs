//! One client connection: the CONNECT handshake, then the loop that moves packets between the socket,
//! the session state machine and the router.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use m2m_codec::{
    decode, encode, encoded_len, Ack, Auth, AuthProperties, ConnAck, ConnAckProperties, Connect, DecodeError,
    Disconnect, DisconnectProperties, Packet, ProtocolVersion, QoS, ReasonCode,
};
use m2m_router::{
    apply_persist, session_record, ClientLink, Command, ConnectRequest, Disconnected, LinkFlow, Mailbox,
    Metrics, NodeEvent, NodeEventKind, PendingWill, RouterHandle, SessionKey,
};
use m2m_session::{check_topic_name, Action, LinkParams, Message, Persist, Session};
use m2m_store::{Batch, Store, WillRecord};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, trace};

use crate::access::{AccessControl, Identity, LiveClient, Refused};
use crate::auth::{AuthExchange, AuthStep, Authenticator};
use crate::clients::{ClientSubscription, ClientTransport, Clients, Connected, Counters};
use crate::config::{Anonymous, Config};
use crate::error::ConnectionError;

/// What every connection task shares.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) router: RouterHandle,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) authenticator: Arc<dyn Authenticator>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) conn_ids: AtomicU64,
    /// Distinguishes assigned client ids of this node run from those of earlier runs.
    pub(crate) id_prefix: String,
    /// The node's store, if it keeps state across restarts.
    pub(crate) store: Option<Store>,
    /// The device registry and access rules.
    pub(crate) access: Arc<AccessControl>,
    /// The history of messages, if it is on.
    pub(crate) history: Option<m2m_history::History>,
    /// The directory of connected (and recently connected) clients.
    pub(crate) clients: Clients,
    /// The admission limits of new connections.
    pub(crate) gate: Arc<crate::gate::Gate>,
    /// The memory budget of the node's queues.
    pub(crate) budget: Arc<m2m_session::MemoryBudget>,
}

/// Smallest read reservation: what an idle connection holds.
const MIN_READ: usize = 256;
/// Largest read reservation, and the write-buffer capacity kept between flushes.
const MAX_READ: usize = 64 * 1024;
/// How long a connection the node ended keeps draining the client's input (see [`Conn::linger`]).
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// A framed MQTT stream: buffered reads, encoded writes.
struct Conn<S> {
    stream: S,
    read_buf: BytesMut,
    /// Bytes reserved for the next read: doubles while reads fill the buffer, halves when they do not,
    /// so a busy connection reads in large chunks and an idle one holds only a small buffer.
    read_hint: usize,
    write_buf: BytesMut,
    version: ProtocolVersion,
    max_packet: usize,
    /// The client's Maximum Packet Size, once CONNECT has set one.
    client_max_packet: Option<u32>,
    peer: SocketAddr,
    /// The identity of the client's verified TLS certificate (its common name), if it sent one.
    certificate: Option<Arc<str>>,
    metrics: Arc<Metrics>,
    /// This connection's own counters, shown in the client directory.
    counters: Arc<Counters>,
    write_timeout: std::time::Duration,
    /// When the bytes of the packet now partly in `read_buf` began to arrive (no later than); `None`
    /// while the buffer holds no partial packet.
    partial_since: Option<Instant>,
    /// When the last bytes were read from the socket.
    last_read: Instant,
    /// How long a packet may take to arrive once it has begun.
    packet_timeout: std::time::Duration,
    /// The node's memory budget, charged with the bytes of a packet being read beyond [`MAX_READ`]:
    /// a large packet must fit in what is left of it as it arrives.
    budget: Arc<m2m_session::MemoryBudget>,
    /// Bytes of the read buffer charged to the budget now.
    charged: usize,
}

impl<S> Drop for Conn<S> {
    fn drop(&mut self) {
        self.budget.release(self.charged);
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Reads one packet; `Ok(None)` means the peer closed cleanly between packets.
    ///
    /// # Cancel safety
    /// Safe in `select!`: partial input stays in `read_buf` for the next call.
    async fn read_packet(&mut self) -> Result<Option<Packet>, ConnectionError> {
        loop {
            if let Some(p) = self.try_packet()? {
                return Ok(Some(p));
            }
            if self.read_buf.is_empty() && self.read_buf.capacity() > 4 * self.read_hint {
                // Give a burst's buffer back while the connection waits.
                self.read_buf = BytesMut::new();
            }
            if self.read_buf.capacity() - self.read_buf.len() < self.read_hint {
                self.read_buf.reserve(self.read_hint);
            }
            // What the buffer holds now is one packet, incomplete.
            self.charge_read_buffer()?;
            let spare = self.read_buf.capacity() - self.read_buf.len();
            let read = self.stream.read_buf(&mut self.read_buf);
            let n = match self.partial_since {
                // A packet has begun: the rest must come before its deadline.
                Some(since) => {
                    match tokio::time::timeout_at((since + self.packet_timeout).into(), read).await {
                        Ok(n) => n?,
                        Err(_) => return Err(ConnectionError::PacketTimeout),
                    }
                }
                None => read.await?,
            };
            self.last_read = Instant::now();
            self.partial_since.get_or_insert(self.last_read);
            if n == 0 {
                return if self.read_buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ConnectionError::ClosedMidPacket)
                };
            }
            self.read_hint = if n >= spare {
                (self.read_hint * 2).min(MAX_READ)
            } else if n < self.read_hint / 4 {
                (self.read_hint / 2).max(MIN_READ)
            } else {
                self.read_hint
            };
            Metrics::add(&self.metrics.bytes_received, n as u64);
            Counters::add(&self.counters.bytes_in, n as u64);
        }
    }

    /// Charges the bytes in the read buffer beyond [`MAX_READ`] to the memory budget (or gives back
    /// what it no longer holds). Called while the buffer holds one incomplete packet: only a packet
    /// larger than that holds more, as its bytes arrive (the room reserved for the rest is not touched
    /// until they do); one that does not fit in what is left of the budget ends the connection.
    fn charge_read_buffer(&mut self) -> Result<(), ConnectionError> {
        let wanted = self.read_buf.len().saturating_sub(MAX_READ);
        if wanted == self.charged {
            // The common case, small packets: no shared counter touched.
            return Ok(());
        }
        if wanted > self.charged {
            if !self.budget.try_charge(wanted - self.charged) {
                return Err(ConnectionError::OverBudget);
            }
        } else {
            self.budget.release(self.charged - wanted);
        }
        self.charged = wanted;
        Ok(())
    }

    /// The next packet if it is already in the read buffer, without reading from the socket.
    fn try_packet(&mut self) -> Result<Option<Packet>, ConnectionError> {
        let packet = decode(&mut self.read_buf, self.version, self.max_packet)?;
        if packet.is_some() {
            // What is left arrived with the last read at the latest.
            self.partial_since = (!self.read_buf.is_empty()).then_some(self.last_read);
        }
        Ok(packet)
    }

    /// Encodes a packet into the write buffer; [`Conn::flush`] sends it.
    fn queue(&mut self, packet: &Packet) -> Result<(), ConnectionError> {
        encode(packet, self.version, &mut self.write_buf)?;
        Ok(())
    }

    /// Writes everything buffered.
    ///
    /// # Cancel safety
    /// Not cancel safe: a cancelled flush may have written part of the buffer. Never used in `select!`.
    async fn flush(&mut self) -> Result<(), ConnectionError> {
        if self.write_buf.is_empty() {
            return Ok(());
        }
        let n = self.write_buf.len();
        // The flush matters below TLS and WebSocket, which buffer what is written (a WebSocket
        // message goes out only then).
        let write = async {
            self.stream.write_all(&self.write_buf).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(self.write_timeout, write).await {
            Ok(result) => result?,
            Err(_) => return Err(ConnectionError::WriteTimeout),
        }
        self.write_buf.clear();
        if self.write_buf.capacity() > MAX_READ {
            self.write_buf = BytesMut::new();
        }
        Metrics::add(&self.metrics.bytes_sent, n as u64);
        Counters::add(&self.counters.bytes_out, n as u64);
        Ok(())
    }

    /// Sends a packet now.
    async fn send(&mut self, packet: &Packet) -> Result<(), ConnectionError> {
        self.queue(packet)?;
        self.flush().await
    }

    /// Closes our side of a connection the node ended, then reads and discards whatever the client
    /// still sends until it closes too, [`LINGER`] passes or the node shuts down. A socket closed while
    /// the peer keeps writing (PUBREL for our PUBRECs, say) is reset by the kernel, and the client fails
    /// before it reads the DISCONNECT and its reason code (MQTT 5.0 §4.13).
    ///
    /// # Cancel safety
    /// Not cancel safe, and never used in `select!`: it is the last thing a connection does.
    async fn linger(&mut self, shutdown: &CancellationToken) {
        let drain = async {
            if self.stream.shutdown().await.is_err() {
                return;
            }
            loop {
                self.read_buf.clear();
                match self.stream.read_buf(&mut self.read_buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        tokio::select! {
            _ = tokio::time::timeout(LINGER, drain) => {}
            () = shutdown.cancelled() => {}
        }
    }
}

/// How the connection loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// DISCONNECT from the client.
    Disconnect { publish_will: bool },
    /// The node is shutting down: no will.
    Shutdown,
    /// Anything else (socket closed, keep-alive, protocol error, take-over): the will goes out.
    Abnormal,
}

/// Serves one accepted connection until it ends. Never panics the node: every error ends only this
/// connection and is logged here, once.
pub(crate) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: SocketAddr,
    shared: Arc<Shared>,
    certificate: Option<Arc<str>>,
    transport: ClientTransport,
    mut ticket: crate::gate::Ticket,
) {
    let mut conn = Conn {
        stream,
        read_buf: BytesMut::new(),
        read_hint: MIN_READ,
        write_buf: BytesMut::new(),
        version: ProtocolVersion::V311,
        max_packet: shared.config.limits.max_packet_size as usize,
        client_max_packet: None,
        peer,
        certificate,
        metrics: shared.metrics.clone(),
        counters: Arc::default(),
        write_timeout: shared.config.write_timeout,
        partial_since: None,
        last_read: Instant::now(),
        packet_timeout: shared.config.packet_timeout,
        budget: shared.budget.clone(),
        charged: 0,
    };
    let Some(connect) = Box::pin(read_connect(&mut conn, &shared)).await else { return };
    ticket.connected();
    conn.version = connect.protocol;
    let client_id = connect.client_id.clone();
    match Box::pin(run(&mut conn, connect, &shared, transport)).await {
        Ok(()) => {}
        Err(e) => debug!(%peer, %client_id, error = %e, "connection ended with an error"),
    }
}

/// Waits for the first packet, which must be CONNECT; `None` when the connection ends instead.
async fn read_connect<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    shared: &Shared,
) -> Option<Box<Connect>> {
    let peer = conn.peer;
    let first = tokio::select! {
        r = tokio::time::timeout(shared.config.connect_timeout, conn.read_packet()) => r,
        () = shared.shutdown.cancelled() => return None,
    };
    match first {
        Err(_) => debug!(%peer, "no CONNECT in time"),
        Ok(Ok(Some(Packet::Connect(c)))) => return Some(c),
        Ok(Ok(Some(other))) => {
            info!(%peer, packet = other.name(), "first packet is not CONNECT");
            Metrics::add(&shared.metrics.protocol_errors, 1);
            shared.access.malformed(conn.peer.ip());
        }
        Ok(Ok(None)) => {}
        Ok(Err(ConnectionError::Decode(e))) => {
            reject_undecodable_connect(conn, &e).await;
            info!(%peer, error = %e, "bad CONNECT");
            Metrics::add(&shared.metrics.protocol_errors, 1);
            shared.access.malformed(conn.peer.ip());
            Metrics::add(&shared.metrics.connections_rejected, 1);
        }
        Ok(Err(e)) => debug!(%peer, error = %e, "connection failed before CONNECT"),
    }
    None
}

/// Answers a CONNECT that could not be decoded, where the specification asks for a CONNACK.
async fn reject_undecodable_connect<S: AsyncRead + AsyncWrite + Unpin>(conn: &mut Conn<S>, e: &DecodeError) {
    if let DecodeError::UnsupportedProtocolVersion { level } = e {
        // A 3.x client gets return code 1 in 3.1.1 form; anything newer gets the v5 form (MQTT-3.1.2-2).
        let version = if *level > 5 { ProtocolVersion::V5 } else { ProtocolVersion::V311 };
        conn.version = version;
        let ack = ConnAck { reason_code: ReasonCode::UNSUPPORTED_PROTOCOL_VERSION, ..ConnAck::default() };
        let _ = conn.send(&Packet::ConnAck(ack)).await;
    }
}

/// Everything negotiated at CONNECT that the loop needs.
struct Accepted {
    key: SessionKey,
    conn_id: u64,
    session: Box<Session>,
    mailbox: Arc<Mailbox>,
    kick: oneshot::Receiver<ReasonCode>,
    flow: Arc<LinkFlow>,
    will: Option<Box<PendingWill>>,
    auth_method: Option<Arc<str>>,
    /// Who the client authenticated as, for its permit after a quarantine is released.
    identity: Identity,
    /// The quarantine entry isolating the connection, as the access control changes it.
    isolation: tokio::sync::watch::Receiver<Option<u64>>,
    /// The connection's counters, shared with the client directory.
    counters: Arc<Counters>,
}

async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    shared: &Shared,
    reason: ReasonCode,
    why: &str,
) -> Result<(), ConnectionError> {
    info!(peer = %conn.peer, %reason, why, "CONNECT refused");
    Metrics::add(&shared.metrics.connections_rejected, 1);
    let mut ack = ConnAck { reason_code: reason, ..ConnAck::default() };
    if conn.version.is_v5() {
        ack.properties.reason_string = Some(Arc::from(why));
    }
    conn.send(&Packet::ConnAck(ack)).await
}

async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    connect: Box<Connect>,
    shared: &Arc<Shared>,
    transport: ClientTransport,
) -> Result<(), ConnectionError> {
    // Each phase is boxed so the task only holds the state of the phase it is in: the handshake's
    // large locals are freed before the connection settles into its (mostly idle) life.
    let (protocol, clean_start, keep_alive) = (connect.protocol, connect.clean_start, connect.keep_alive);
    let Some(accepted) = Box::pin(accept(conn, connect, shared, transport)).await? else { return Ok(()) };
    Metrics::add(&shared.metrics.connections_current, 1);
    Metrics::add(&shared.metrics.connections_total, 1);
    let conn_id = accepted.conn_id;
    let client_id = accepted.session.client_id().clone();
    let username = accepted.identity.username.clone();
    emit(shared, NodeEventKind::ClientConnected, || NodeEvent::ClientConnected {
        client_id: client_id.clone(),
        username: username.clone(),
        peer: conn.peer,
        protocol: if protocol.is_v5() { 5 } else { 4 },
        clean_start,
        keep_alive,
    });
    let end = Box::pin(serve_session(conn, accepted, shared)).await;
    shared.access.disconnected(conn_id);
    let reason = match &end {
        Ok(End::Disconnect { .. }) => "normal",
        Ok(End::Shutdown) => "shutdown",
        Ok(End::Abnormal) => "abnormal",
        Err(_) => "error",
    };
    emit(shared, NodeEventKind::ClientDisconnected, || NodeEvent::ClientDisconnected {
        client_id,
        username,
        peer: conn.peer,
        reason,
    });
    Metrics::dec(&shared.metrics.connections_current);
    if matches!(end, Ok(End::Abnormal)) {
        conn.linger(&shared.shutdown).await;
    }
    end.map(|_| ())
}

/// Hands an event to the node's taps (the rules engine) that want its kind; `event` is built only then.
fn emit(shared: &Shared, kind: NodeEventKind, event: impl FnOnce() -> NodeEvent) {
    m2m_router::emit_event(&shared.config.taps, kind, event);
}

/// Whether a rule wants to hear of deliveries or drops: the session then reports them.
fn observing(shared: &Shared) -> bool {
    let taps = &shared.config.taps;
    !taps.is_empty()
        && (m2m_router::wants_event(taps, NodeEventKind::MessageDelivered)
            || m2m_router::wants_event(taps, NodeEventKind::MessageDropped))
}

/// Validates CONNECT, authenticates, obtains the session from the router and sends CONNACK.
/// `Ok(None)` when the connection was refused (CONNACK with an error already sent).
async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    connect: Box<Connect>,
    shared: &Arc<Shared>,
    transport: ClientTransport,
) -> Result<Option<Box<Accepted>>, ConnectionError> {
    let config = &shared.config;
    let v5 = connect.protocol.is_v5();
    let now = Instant::now();
    let props = &connect.properties;

    if Metrics::get(&shared.metrics.connections_current) as usize >= config.max_connections {
        refuse(conn, shared, ReasonCode::SERVER_BUSY, "too many connections").await?;
        return Ok(None);
    }

    let mut client_id = connect.client_id.clone();
    let mut assigned = None;
    if client_id.is_empty() {
        let allowed = match connect.protocol {
            ProtocolVersion::V5 => true,
            ProtocolVersion::V311 => connect.clean_start,
            ProtocolVersion::V31 => false,
        };
        if !allowed {
            refuse(conn, shared, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID, "empty client identifier").await?;
            return Ok(None);
        }
        let n = shared.conn_ids.fetch_add(1, Ordering::Relaxed);
        client_id = Arc::from(format!("{}{n}", shared.id_prefix));
        assigned = Some(client_id.clone());
    }

    // The will: validated now so a bad one refuses the connection instead of failing later.
    let will = match &connect.will {
        None => None,
        Some(w) => {
            let topic = match check_topic_name(&w.topic, &config.limits) {
                Ok(t) => t,
                Err(e) => {
                    refuse(conn, shared, ReasonCode::TOPIC_NAME_INVALID, e.message).await?;
                    return Ok(None);
                }
            };
            if w.qos > config.limits.max_qos {
                refuse(conn, shared, ReasonCode::QOS_NOT_SUPPORTED, "will QoS above the maximum").await?;
                return Ok(None);
            }
            if w.retain && !config.limits.retain_available {
                refuse(conn, shared, ReasonCode::RETAIN_NOT_SUPPORTED, "retain is not available").await?;
                return Ok(None);
            }
            let delay = w.properties.will_delay_interval.unwrap_or(0);
            Some(Box::new(PendingWill {
                message: Message::from_will(topic, w, client_id.clone(), now),
                delay,
            }))
        }
    };

    // Authentication: an enhanced method if the client names one, else a username and password
    // against the device registry (once it holds anything), else the anonymous policy.
    let mut ack_props = ConnAckProperties::default();
    let mut identity = Identity::default();
    let auth_method = props.authentication_method.clone();
    if let Some(method) = &auth_method {
        let Some(mut exchange) = shared.authenticator.begin(method, &client_id) else {
            refuse(
                conn,
                shared,
                ReasonCode::BAD_AUTHENTICATION_METHOD,
                "authentication method not supported",
            )
            .await?;
            return Ok(None);
        };
        match authenticate(
            conn,
            &mut *exchange,
            method,
            props.authentication_data.clone(),
            config.connect_timeout,
        )
        .await?
        {
            Ok(data) => {
                ack_props.authentication_method = Some(method.clone());
                ack_props.authentication_data = data;
                if let Some(device) = exchange.authenticated_as() {
                    match shared.access.device_identity(device) {
                        Ok(who) => identity = who,
                        Err(_) => {
                            refuse(conn, shared, ReasonCode::NOT_AUTHORIZED, "the device is disabled")
                                .await?;
                            return Ok(None);
                        }
                    }
                }
            }
            Err(reason) => {
                Metrics::add(&shared.metrics.auth_failures, 1);
                shared.access.auth_failed(conn.peer.ip());
                refuse(conn, shared, reason, "authentication failed").await?;
                return Ok(None);
            }
        }
    } else if let Some(name) = conn.certificate.clone() {
        // A certificate the listener verified: its common name is the device, no password needed.
        match shared.access.device_identity(&name) {
            Ok(who) => identity = who,
            Err(refused) => {
                Metrics::add(&shared.metrics.auth_failures, 1);
                shared.access.auth_failed(conn.peer.ip());
                let why = match refused {
                    Refused::BadCredentials | Refused::Busy => "the certificate names no registered device",
                    Refused::Disabled => "the device is disabled",
                };
                refuse(conn, shared, ReasonCode::NOT_AUTHORIZED, why).await?;
                return Ok(None);
            }
        }
    } else if let Some(username) =
        connect.username.as_ref().filter(|_| shared.access.is_enabled() || config.jwt.is_some())
    {
        // A registered device's password; else, with tokens configured, the password is a token.
        let jwt = config.jwt.as_ref().filter(|_| !shared.access.has_device(username));
        let checked = match jwt {
            Some(jwt) => shared.access.check_jwt(jwt, connect.password.as_deref(), &client_id),
            None => shared.access.check_password(username, connect.password.as_deref()).await,
        };
        match checked {
            Ok(who) => identity = who,
            Err(Refused::Busy) => {
                refuse(conn, shared, ReasonCode::SERVER_BUSY, "too many password checks at once").await?;
                return Ok(None);
            }
            Err(refused) => {
                Metrics::add(&shared.metrics.auth_failures, 1);
                shared.access.auth_failed(conn.peer.ip());
                let (reason, why) = match refused {
                    Refused::BadCredentials => {
                        (ReasonCode::BAD_USER_NAME_OR_PASSWORD, "bad user name or password")
                    }
                    Refused::Disabled | Refused::Busy => {
                        (ReasonCode::NOT_AUTHORIZED, "the device is disabled")
                    }
                };
                refuse(conn, shared, reason, why).await?;
                return Ok(None);
            }
        }
    } else {
        let allowed = match config.anonymous {
            Anonymous::Allow => true,
            Anonymous::Deny => false,
            Anonymous::LoopbackOnly => conn.peer.ip().is_loopback(),
        };
        if !allowed {
            refuse(
                conn,
                shared,
                ReasonCode::NOT_AUTHORIZED,
                "anonymous access is not allowed from this address",
            )
            .await?;
            return Ok(None);
        }
    }

    // Quarantine: a banned client is refused; an isolated one may only reach its repair namespace.
    let username = identity.username.clone().or_else(|| connect.username.clone());
    let quarantine = shared.access.quarantined(&client_id, username.as_deref(), conn.peer.ip());
    if let Some(entry) = &quarantine {
        info!(%client_id, peer = %conn.peer, entry = entry.id, mode = ?entry.mode, reason = %entry.reason,
            "quarantined client connecting");
        if entry.mode == m2m_access::Mode::Ban {
            shared.access.refused(&client_id, "CONNECT", "", 0, entry.id);
            refuse(conn, shared, ReasonCode::BANNED, "the client is banned").await?;
            return Ok(None);
        }
    }

    // Session expiry and keep-alive, capped by the node's settings.
    let requested_expiry = if v5 {
        props.session_expiry_interval.unwrap_or(0)
    } else if connect.clean_start {
        0
    } else {
        u32::MAX
    };
    let expiry = requested_expiry.min(config.max_session_expiry);
    if v5 && expiry != requested_expiry {
        ack_props.session_expiry_interval = Some(expiry);
    }
    let mut keep_alive = connect.keep_alive;
    if v5 && config.max_keep_alive > 0 && (keep_alive == 0 || keep_alive > config.max_keep_alive) {
        keep_alive = config.max_keep_alive;
        ack_props.server_keep_alive = Some(keep_alive);
    }
    let params = LinkParams {
        version: connect.protocol,
        keep_alive,
        receive_maximum: props.receive_maximum.unwrap_or(u16::MAX),
        max_packet_size: props.maximum_packet_size,
        topic_alias_maximum: props.topic_alias_maximum.unwrap_or(0),
        request_problem_information: props.request_problem_information.unwrap_or(true),
    };
    conn.client_max_packet = props.maximum_packet_size;

    // The router hands over the session (waiting for a take-over if the id is online elsewhere).
    let conn_id = shared.conn_ids.fetch_add(1, Ordering::Relaxed);
    let mailbox = Arc::new(Mailbox::with_budget(config.mailbox_capacity, Some(shared.budget.clone())));
    let (kick_tx, kick) = oneshot::channel();
    let flow = Arc::new(LinkFlow::default());
    let (reply_tx, reply_rx) = oneshot::channel();
    let request = ConnectRequest {
        client_id: client_id.clone(),
        clean_start: connect.clean_start,
        expiry,
        v5,
        link: ClientLink { conn_id, mailbox: mailbox.clone(), kick: kick_tx, flow: flow.clone() },
        reply: reply_tx,
    };
    if shared.router.send(Command::Connect(Box::new(request))).await.is_err() {
        refuse(conn, shared, ReasonCode::SERVER_SHUTTING_DOWN, "node is shutting down").await?;
        return Ok(None);
    }
    let reply = tokio::select! {
        r = reply_rx => r,
        () = shared.shutdown.cancelled() => return Ok(None),
    };
    let Ok(reply) = reply else {
        // Another connection took the client id over while this one waited.
        refuse(conn, shared, ReasonCode::SESSION_TAKEN_OVER, "client id taken over while connecting").await?;
        return Ok(None);
    };

    if v5 {
        let limits = &config.limits;
        ack_props.assigned_client_identifier = assigned;
        ack_props.receive_maximum = Some(limits.receive_maximum);
        ack_props.maximum_packet_size = Some(limits.max_packet_size);
        ack_props.topic_alias_maximum = Some(limits.topic_alias_maximum);
        if limits.max_qos < QoS::ExactlyOnce {
            ack_props.maximum_qos = Some(limits.max_qos);
        }
        if !limits.retain_available {
            ack_props.retain_available = Some(false);
        }
        if props.request_response_information == Some(true) {
            ack_props.response_information = config.response_information.as_deref().map(Arc::from);
        }
    }
    let ack = ConnAck {
        session_present: reply.session_present,
        reason_code: ReasonCode::SUCCESS,
        properties: ack_props,
    };
    conn.queue(&Packet::ConnAck(ack))?;

    let mut session = reply.session;
    let mut actions = Vec::new();
    let isolated_by = quarantine.as_ref().map(|e| e.id);
    // Before the session is attached, so that what isolation holds is not sent.
    let mut to_router = Vec::new();
    set_isolation(&mut session, reply.key, isolated_by, now, &mut actions, &mut to_router);
    session.observe(observing(shared));
    session.attach(params, expiry, now, &mut actions);
    session.set_permit(permit(shared, &client_id, &identity, isolated_by));
    for cmd in to_router {
        // The router is gone only when the node is stopping; the connection ends with it.
        let _ = shared.router.send(cmd).await;
    }
    if let (Some(store), Some(w)) = (&shared.store, &will) {
        // Kept while the client is connected: if the node stops without a clean close, the will
        // still goes out after the restart.
        let record = WillRecord { message: w.message.clone(), delay: w.delay, publish_at: None };
        let mut batch = store.batch();
        batch.put_will(&client_id, &record, now);
        if let Err(e) = batch.commit() {
            debug!(%client_id, error = %e, "will not kept in the store");
        }
    }
    let (isolation_tx, isolation) = tokio::sync::watch::channel(isolated_by);
    shared.clients.connected(Connected {
        conn_id,
        client_id: client_id.clone(),
        username: username.clone(),
        address: conn.peer,
        protocol: connect.protocol,
        transport,
        keep_alive,
        clean_start: connect.clean_start,
        session_expiry: expiry,
        subscriptions: subscriptions_of(&session),
        counters: conn.counters.clone(),
    });
    shared.access.connected(
        conn_id,
        LiveClient {
            client_id: client_id.clone(),
            username,
            address: conn.peer.ip(),
            isolated_by,
            isolation: Arc::new(isolation_tx),
        },
    );
    let accepted = Box::new(Accepted {
        key: reply.key,
        conn_id,
        session,
        mailbox,
        kick,
        flow,
        will,
        auth_method,
        identity,
        isolation,
        counters: conn.counters.clone(),
    });
    // Queued messages sent on attach get their flight state recorded, as in the session loop.
    let store = shared.store.as_ref();
    let mut must_sync = false;
    let mut batch = None;
    for action in actions {
        match action {
            Action::Send(p) => queue_counted(conn, &p)?,
            Action::Persist(op) => must_sync |= record(store, &accepted.session, op, &mut batch),
            observed @ (Action::Delivered { .. } | Action::Dropped { .. }) => {
                m2m_router::observe_reports(&shared.config.taps, &client_id, &[observed]);
            }
            _ => {}
        }
    }
    commit(batch, &client_id);
    if must_sync {
        sync(store, &client_id).await;
    }
    if let Err(e) = conn.flush().await {
        // The session goes back to the router even if the client vanished right after CONNECT.
        shared.access.disconnected(conn_id);
        Box::pin(hand_back(accepted, shared, End::Abnormal)).await;
        return Err(e);
    }
    debug!(%client_id, peer = %conn.peer, version = ?connect.protocol, clean_start = connect.clean_start,
        session_present = reply.session_present, "client connected");
    Ok(Some(accepted))
}

/// Isolates the session to its repair namespace (`isolated_by` an entry) or gives it normal service
/// back (`None`, if it was isolated); the router learns which subscriptions left or came back.
fn set_isolation(
    session: &mut Session,
    key: SessionKey,
    isolated_by: Option<u64>,
    now: Instant,
    actions: &mut Vec<Action>,
    to_router: &mut Vec<Command>,
) {
    match isolated_by {
        Some(_) => {
            let prefix = Arc::from(m2m_access::repair_prefix(session.client_id()));
            let subscriptions = session.isolate(prefix);
            if !subscriptions.is_empty() {
                to_router.push(Command::Unsubscribe { key, subscriptions });
            }
        }
        None if session.is_isolated() => {
            let requests = session.release(now, actions);
            if !requests.is_empty() {
                to_router.push(Command::Subscribe { key, requests });
            }
        }
        None => {}
    }
}

/// What a connection may do: only its repair namespace while isolated, else what the rules (its
/// token's, then the registry's) allow; everything when neither has any.
fn permit(
    shared: &Shared,
    client_id: &Arc<str>,
    identity: &Identity,
    isolated_by: Option<u64>,
) -> Option<Arc<dyn m2m_session::Permit>> {
    match isolated_by {
        Some(entry) => Some(shared.access.isolated_permit(client_id.clone(), entry)),
        None if shared.access.is_enabled() || identity.rules.is_some() => {
            Some(shared.access.permit(client_id.clone(), identity.clone()))
        }
        None => None,
    }
}

/// Runs an enhanced-authentication exchange (AUTH 0x18 round trips) until success or failure.
async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    exchange: &mut dyn AuthExchange,
    method: &Arc<str>,
    first: Option<Bytes>,
    limit: std::time::Duration,
) -> Result<Result<Option<Bytes>, ReasonCode>, ConnectionError> {
    let mut data = first;
    loop {
        match exchange.step(data.as_deref()) {
            AuthStep::Success(d) => return Ok(Ok(d)),
            AuthStep::Fail => return Ok(Err(ReasonCode::NOT_AUTHORIZED)),
            AuthStep::Continue(challenge) => {
                let auth = Auth {
                    reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
                    properties: AuthProperties {
                        authentication_method: Some(method.clone()),
                        authentication_data: Some(challenge),
                        ..AuthProperties::default()
                    },
                };
                conn.send(&Packet::Auth(auth)).await?;
                let Ok(reply) = tokio::time::timeout(limit, conn.read_packet()).await else {
                    return Ok(Err(ReasonCode::NOT_AUTHORIZED));
                };
                match reply? {
                    Some(Packet::Auth(a))
                        if a.reason_code == ReasonCode::CONTINUE_AUTHENTICATION
                            && a.properties.authentication_method.as_ref() == Some(method) =>
                    {
                        data = a.properties.authentication_data;
                    }
                    _ => return Ok(Err(ReasonCode::PROTOCOL_ERROR)),
                }
            }
        }
    }
}

fn queue_counted<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    p: &Packet,
) -> Result<(), ConnectionError> {
    if let Packet::Publish(publish) = p {
        conn.metrics.sent(publish.qos);
        Counters::add(&conn.counters.messages_out, 1);
    }
    conn.queue(p)
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Packets handled per wake-up when more are already buffered.
const READ_BATCH: usize = 64;

/// Deliveries taken from the mailbox per wake-up before the writes are flushed.
const DELIVERY_BATCH: usize = 256;

/// How long a throttled publisher is held before one more of its packets is read anyway. Bounds the
/// stall when subscribers throttle each other in a cycle (each waiting on the other's acknowledgements).
const MAX_THROTTLE: std::time::Duration = std::time::Duration::from_secs(1);

async fn serve_session<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    mut a: Box<Accepted>,
    shared: &Arc<Shared>,
) -> Result<End, ConnectionError> {
    let mut actions = Vec::new();
    let mut reauth: Option<Box<dyn AuthExchange>> = None;
    let client_id = a.session.client_id().clone();
    let max_queued = shared.config.limits.max_queued;
    let drain_below = (shared.config.mailbox_capacity / 2).max(1);
    let mut blocked_since: Option<Instant> = None;
    // The publish budget: not read from until `rate_until` when over it; quarantined once only.
    let budget = shared.access.publish_budget();
    let mut bucket = budget.as_ref().map(|b| crate::detect::Bucket::new(b, Instant::now()));
    let mut rate_until: Option<Instant> = None;
    let mut over_reported = false;
    let mut to_router = Vec::new();
    let store = shared.store.as_ref();
    // With `sync = "always"`, acknowledgements wait until what they acknowledge is durable.
    let acks_wait = store.is_some_and(Store::waits_for_sync);
    let mut batch: Option<Batch> = None;
    let mut after_sync: Vec<Packet> = Vec::new();
    let end = loop {
        let mut must_sync = false;
        // Whether the session's subscriptions changed, for the client directory.
        let mut subscriptions_changed = false;
        // A DISCONNECT for bad input, written after what the packets before it were answered with.
        let mut closing: Option<(ReasonCode, Option<&'static str>)> = None;
        let deadline = a.session.keep_alive_deadline();
        let mut end = None;
        let mut failure = None;
        // Back-pressure: a publisher whose subscribers are congested is not read from (see LinkFlow).
        let can_read = match (a.flow.is_blocked(), blocked_since) {
            (false, _) => {
                blocked_since = None;
                true
            }
            (true, None) => {
                blocked_since = Some(Instant::now());
                false
            }
            (true, Some(since)) => since.elapsed() >= MAX_THROTTLE,
        };
        let throttle_until = blocked_since.map(|since| since + MAX_THROTTLE);
        let rate_wait = rate_until.filter(|t| *t > Instant::now());
        let can_read = can_read && rate_wait.is_none();
        let has_room = a.session.queued() < max_queued;
        a.session.observe(observing(shared));
        tokio::select! {
            biased;
            () = shared.shutdown.cancelled() => {
                disconnect(conn, ReasonCode::SERVER_SHUTTING_DOWN, None);
                end = Some(End::Shutdown);
            }
            reason = &mut a.kick => {
                let reason = reason.unwrap_or(ReasonCode::SESSION_TAKEN_OVER);
                if reason == ReasonCode::SESSION_TAKEN_OVER {
                    shared.access.taken_over(&client_id);
                }
                disconnect(conn, reason, None);
                end = Some(End::Abnormal);
            }
            Ok(()) = a.isolation.changed() => {
                let isolated_by = *a.isolation.borrow_and_update();
                info!(%client_id, entry = ?isolated_by, "quarantine changed for a connected client");
                set_isolation(&mut a.session, a.key, isolated_by, Instant::now(), &mut actions, &mut to_router);
                subscriptions_changed = true;
                a.session.set_permit(permit(shared, &client_id, &a.identity, isolated_by));
            }
            () = a.flow.unblocked.notified(), if !can_read => {}
            read = conn.read_packet(), if can_read => {
                // Every packet already buffered is handled before the writes and syncs below, so a
                // burst of acknowledgements shares one store sync.
                let mut read = read;
                let mut budget_left = READ_BATCH;
                loop {
                    match read {
                        Ok(Some(packet)) => {
                            if blocked_since.is_some() {
                                blocked_since = Some(Instant::now());
                            }
                            if let Packet::Publish(p) = &packet {
                                shared.metrics.received(p.qos);
                                Counters::add(&conn.counters.messages_in, 1);
                                if let (Some(b), Some(budget)) = (bucket.as_mut(), budget.as_ref()) {
                                    let now = Instant::now();
                                    if let Some((wait, since)) = b.take(budget, now) {
                                        rate_until = Some(now + wait);
                                        if !over_reported && now.duration_since(since) >= budget.quarantine_after {
                                            over_reported = true;
                                            shared.access.over_budget(&client_id);
                                        }
                                    }
                                }
                            }
                            trace!(%client_id, packet = packet.name(), "received");
                            let refused = match &packet {
                                Packet::Publish(p) if p.qos > QoS::AtMostOnce && store.is_some_and(|s| !s.is_healthy()) => {
                                    refuse_publish(conn, p)
                                }
                                _ => false,
                            };
                            // What earlier packets of this batch asked for still happens.
                            let mark = actions.len();
                            match if refused { Ok(()) } else { a.session.handle_packet(packet, Instant::now(), &mut actions) } {
                                Ok(()) => {}
                                Err(e) => {
                                    info!(%client_id, peer = %conn.peer, reason = %e.reason, error = e.message, "protocol violation");
                                    Metrics::add(&shared.metrics.protocol_errors, 1);
                                    shared.access.malformed(conn.peer.ip());
                                    actions.truncate(mark);
                                    closing = Some((e.reason, Some(e.message)));
                                    end = Some(End::Abnormal);
                                }
                            }
                        }
                        Ok(None) => end = Some(End::Abnormal),
                        Err(ConnectionError::PacketTimeout) => {
                            info!(%client_id, peer = %conn.peer, "a packet took too long to arrive");
                            Metrics::add(&shared.metrics.protocol_errors, 1);
                            closing = Some((ReasonCode::KEEP_ALIVE_TIMEOUT, Some("a packet took too long to arrive")));
                            end = Some(End::Abnormal);
                        }
                        Err(ConnectionError::OverBudget) => {
                            info!(%client_id, peer = %conn.peer, "no room in the memory budget for a large packet");
                            closing = Some((ReasonCode::QUOTA_EXCEEDED, Some("the node's memory budget is spent")));
                            end = Some(End::Abnormal);
                        }
                        Err(ConnectionError::Decode(e)) => {
                            info!(%client_id, peer = %conn.peer, error = %e, "undecodable packet");
                            Metrics::add(&shared.metrics.protocol_errors, 1);
                            shared.access.malformed(conn.peer.ip());
                            closing = Some((e.reason_code(), None));
                            end = Some(End::Abnormal);
                        }
                        Err(e) => failure = Some(e),
                    }
                    budget_left -= 1;
                    // Over the publish budget: nothing more is read until it is within it again.
                    let over = rate_until.is_some_and(|t| t > Instant::now());
                    if end.is_some() || failure.is_some() || budget_left == 0 || over {
                        break;
                    }
                    read = match conn.try_packet() {
                        Ok(None) => break,
                        other => other,
                    };
                }
            }
            () = a.mailbox.ready(has_room) => {
                for p in a.mailbox.take_packets() {
                    if let Err(e) = conn.queue(&p) {
                        failure = Some(e);
                    }
                }
                if has_room {
                    let now = Instant::now();
                    let room = max_queued.saturating_sub(a.session.queued()).min(DELIVERY_BATCH);
                    for d in a.mailbox.take(room) {
                        a.session.deliver(d, now, &mut actions);
                    }
                }
            }
            () = sleep_until_opt(earliest(deadline, earliest(throttle_until.filter(|_| rate_wait.is_none() && !can_read), rate_wait))) => {
                // One timer serves both the keep-alive and the throttle limit; only the first ends.
                if deadline.is_some_and(|d| d <= Instant::now()) {
                    debug!(%client_id, peer = %conn.peer, "keep-alive timeout");
                    disconnect(conn, ReasonCode::KEEP_ALIVE_TIMEOUT, None);
                    end = Some(End::Abnormal);
                }
            }
        }
        for action in actions.drain(..) {
            match action {
                Action::Send(p @ (Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_)))
                    if acks_wait =>
                {
                    // In order with the acknowledgements the router sends once their messages are
                    // durable; a PUBCOMP also waits for the released packet id to be forgotten.
                    after_sync.push(p);
                }
                Action::Send(p) => {
                    if let Err(e) = queue_counted(conn, &p) {
                        failure = Some(e);
                    }
                }
                Action::Publish { message, ack } => {
                    let (to_router_ack, direct_ack) = if acks_wait { (ack, None) } else { (None, ack) };
                    if message.topic.is_sys() {
                        trace!(%client_id, topic = %message.topic, "client publish to $SYS ignored");
                        after_sync.extend(to_router_ack);
                    } else {
                        to_router.push(Command::Publish { message, from: Some(a.key), ack: to_router_ack });
                    }
                    if let Some(p) = direct_ack {
                        if let Packet::PubRec(rec) = &p {
                            // Acknowledged without the router, which would otherwise keep the
                            // packet id with the message: keep it here.
                            incoming_received(store, &a.session, rec, &mut batch);
                        }
                        if let Err(e) = queue_counted(conn, &p) {
                            failure = Some(e);
                        }
                    }
                }
                Action::Persist(op) => must_sync |= record(store, &a.session, op, &mut batch),
                Action::Subscribe(requests) => {
                    for r in &requests {
                        emit(shared, NodeEventKind::SessionSubscribed, || NodeEvent::SessionSubscribed {
                            client_id: client_id.clone(),
                            filter: r.filter.clone(),
                            qos: r.entry.options.qos as u8,
                        });
                    }
                    to_router.push(Command::Subscribe { key: a.key, requests });
                    must_sync |= keep_session(store, &a.session, &mut batch);
                    subscriptions_changed = true;
                }
                Action::Unsubscribe(subscriptions) => {
                    for sub in &subscriptions {
                        emit(shared, NodeEventKind::SessionUnsubscribed, || NodeEvent::SessionUnsubscribed {
                            client_id: client_id.clone(),
                            filter: Arc::from(sub.filter().as_str()),
                        });
                    }
                    to_router.push(Command::Unsubscribe { key: a.key, subscriptions });
                    must_sync |= keep_session(store, &a.session, &mut batch);
                    subscriptions_changed = true;
                }
                Action::Disconnect { publish_will } => {
                    // A Session Expiry Interval on DISCONNECT is capped like the one on CONNECT.
                    a.session.expiry_interval =
                        a.session.expiry_interval.min(shared.config.max_session_expiry);
                    end = Some(End::Disconnect { publish_will });
                }
                Action::Auth(auth) => {
                    if let Err(reason) = reauthenticate(conn, &mut a, &mut reauth, auth, shared) {
                        disconnect(conn, reason, Some("re-authentication failed"));
                        end = Some(End::Abnormal);
                    }
                }
                observed @ (Action::Delivered { .. } | Action::Dropped { .. }) => {
                    m2m_router::observe_reports(&shared.config.taps, &client_id, &[observed]);
                }
            }
        }
        if subscriptions_changed {
            shared.clients.set_subscriptions(&client_id, a.conn_id, subscriptions_of(&a.session));
        }
        a.counters.set_queues(a.session.queued(), a.session.inflight());
        if a.flow.wants_drain.load(std::sync::atomic::Ordering::Acquire)
            && a.mailbox.len() < drain_below
            && a.flow.wants_drain.swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            to_router.push(Command::Drained { key: a.key });
        }
        if let Some((reason, why)) = closing {
            disconnect(conn, reason, why);
        }
        commit(batch.take(), &client_id);
        if let (false, Some(store)) = (after_sync.is_empty(), store) {
            let packets = std::mem::take(&mut after_sync);
            let mailbox = a.mailbox.clone();
            store.on_durable(move |_| {
                for p in packets {
                    mailbox.push_packet(p);
                }
            });
        }
        // SUBACK, and QoS 2 PUBLISH/PUBREL of a persistent session, go out once the store has them.
        if must_sync {
            sync(store, &client_id).await;
        }
        // One await point for every command to the router keeps the task's state small. The router
        // sees them before the acknowledgements below are written (SUBACK after the subscription).
        for cmd in to_router.drain(..) {
            if shared.router.send(cmd).await.is_err() {
                end = Some(End::Shutdown);
                break;
            }
        }
        if failure.is_none() {
            if let Err(e) = conn.flush().await {
                failure = Some(e);
            }
        }
        if let Some(e) = failure {
            Box::pin(hand_back(a, shared, End::Abnormal)).await;
            return Err(e);
        }
        if let Some(end) = end {
            break end;
        }
    };
    debug!(%client_id, peer = %conn.peer, ?end, "client disconnected");
    Box::pin(hand_back(a, shared, end)).await;
    Ok(end)
}

/// Adds a change the session reported to the batch if the session is kept in the store (a non-zero
/// expiry); whether the packet that follows must wait for it to be durable ([`Persist::precedes_send`]).
fn record(store: Option<&Store>, session: &Session, op: Persist, batch: &mut Option<Batch>) -> bool {
    let Some(store) = store.filter(|_| session.expiry_interval > 0) else { return false };
    apply_persist(batch.get_or_insert_with(|| store.batch()), session.client_id(), op);
    op.precedes_send()
}

/// Keeps the packet id of a QoS 2 PUBLISH acknowledged with a PUBREC (until its PUBREL) if the session
/// is kept in the store, so that a resend after a restart is acknowledged and not routed again.
fn incoming_received(store: Option<&Store>, session: &Session, rec: &Ack, batch: &mut Option<Batch>) {
    let Some(store) = store.filter(|_| session.expiry_interval > 0) else { return };
    if !rec.reason_code.is_error() {
        batch.get_or_insert_with(|| store.batch()).put_incoming(session.client_id(), rec.packet_id.get());
    }
}

/// Writes a connection's batch, if it has one. A failure is logged; the store reports itself
/// unhealthy and the node refuses QoS 1/2 publishes until it recovers.
fn commit(batch: Option<Batch>, client_id: &str) {
    if let Some(Err(e)) = batch.map(Batch::commit) {
        debug!(%client_id, error = %e, "session state not kept in the store");
    }
}

/// Waits until what this connection wrote is durable, with `sync = "always"`.
async fn sync(store: Option<&Store>, client_id: &str) {
    let Some(store) = store.filter(|s| s.waits_for_sync()) else { return };
    if let Err(e) = store.durable().await {
        debug!(%client_id, error = %e, "store sync failed");
    }
}

/// Writes the session's record (expiry, subscriptions) into the batch if it is kept in the store;
/// `true` when it was, so that the SUBACK waits for it.
fn keep_session(store: Option<&Store>, session: &Session, batch: &mut Option<Batch>) -> bool {
    let Some(store) = store else { return false };
    if session.expiry_interval == 0 {
        return false;
    }
    let record = session_record(session, session.expiry_interval, None);
    batch.get_or_insert_with(|| store.batch()).put_session(&record);
    true
}

/// Answers a QoS 1/2 PUBLISH the node cannot keep because its store is failing (full disk): MQTT 5
/// gets PUBACK/PUBREC 0x97 (Quota exceeded), 3.1.1 gets no acknowledgement and sends it again later.
/// The message is not routed. Returns `true`: the packet is consumed.
fn refuse_publish<S: AsyncRead + AsyncWrite + Unpin>(conn: &mut Conn<S>, p: &m2m_codec::Publish) -> bool {
    Metrics::add(&conn.metrics.publishes_refused, 1);
    if let (true, Some(id)) = (conn.version.is_v5(), p.packet_id) {
        let mut ack = m2m_codec::Ack::new(id);
        ack.reason_code = ReasonCode::QUOTA_EXCEEDED;
        let packet = if p.qos == QoS::AtLeastOnce { Packet::PubAck(ack) } else { Packet::PubRec(ack) };
        let _ = conn.queue(&packet);
    }
    true
}

/// Queues a DISCONNECT for a v5 client; 3.1.1 has no server DISCONNECT, the socket just closes.
/// The Reason String is left out if it would exceed the client's Maximum Packet Size (MQTT-3.14.2-3).
fn disconnect<S: AsyncRead + AsyncWrite + Unpin>(conn: &mut Conn<S>, reason: ReasonCode, why: Option<&str>) {
    if conn.version.is_v5() {
        let properties = DisconnectProperties { reason_string: why.map(Arc::from), ..Default::default() };
        let mut packet = Packet::Disconnect(Disconnect { reason_code: reason, properties });
        if conn.client_max_packet.is_some_and(|max| encoded_len(&packet, conn.version) > max as usize) {
            packet = Packet::Disconnect(Disconnect { reason_code: reason, ..Disconnect::default() });
        }
        let _ = conn.queue(&packet);
    }
}

/// Handles AUTH after CONNECT: re-authentication with the method used at CONNECT (MQTT 5.0 §4.12.1).
fn reauthenticate<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    a: &mut Accepted,
    exchange: &mut Option<Box<dyn AuthExchange>>,
    auth: Auth,
    shared: &Shared,
) -> Result<(), ReasonCode> {
    let Some(method) = a.auth_method.clone() else { return Err(ReasonCode::PROTOCOL_ERROR) };
    if auth.properties.authentication_method.as_ref() != Some(&method) {
        return Err(ReasonCode::PROTOCOL_ERROR);
    }
    match auth.reason_code {
        ReasonCode::RE_AUTHENTICATE => {
            *exchange = shared.authenticator.begin(&method, a.session.client_id());
        }
        ReasonCode::CONTINUE_AUTHENTICATION if exchange.is_some() => {}
        _ => return Err(ReasonCode::PROTOCOL_ERROR),
    }
    let Some(ex) = exchange.as_mut() else { return Err(ReasonCode::NOT_AUTHORIZED) };
    let (reason_code, data) = match ex.step(auth.properties.authentication_data.as_deref()) {
        AuthStep::Success(data) => {
            *exchange = None;
            (ReasonCode::SUCCESS, data)
        }
        AuthStep::Continue(data) => (ReasonCode::CONTINUE_AUTHENTICATION, Some(data)),
        AuthStep::Fail => return Err(ReasonCode::NOT_AUTHORIZED),
    };
    let properties = AuthProperties {
        authentication_method: Some(method),
        authentication_data: data,
        ..Default::default()
    };
    conn.queue(&Packet::Auth(Auth { reason_code, properties })).map_err(|_| ReasonCode::UNSPECIFIED_ERROR)
}

/// The subscriptions of a session, by filter, for the client directory.
fn subscriptions_of(session: &Session) -> Vec<ClientSubscription> {
    let mut subscriptions: Vec<ClientSubscription> = session
        .subscriptions()
        .iter()
        .map(|(filter, entry)| ClientSubscription { filter: filter.clone(), qos: entry.options.qos as u8 })
        .collect();
    subscriptions.sort_unstable_by(|a, b| a.filter.cmp(&b.filter));
    subscriptions
}

/// Returns the session to the router with whatever is still in the mailbox, and the will if due;
/// the client directory marks the client offline.
async fn hand_back(a: Box<Accepted>, shared: &Shared, end: End) {
    let Accepted { key, conn_id, mut session, mailbox, will, counters, .. } = *a;
    session.detach();
    let now = Instant::now();
    let mut reports = Vec::new();
    for d in mailbox.close() {
        if session.deliver(d, now, &mut reports) == m2m_session::DeliveryOutcome::Dropped {
            Metrics::add(&shared.metrics.messages_dropped, 1);
        }
    }
    m2m_router::observe_reports(&shared.config.taps, session.client_id(), &reports);
    let mut batch = None;
    for action in reports {
        if let Action::Persist(op) = action {
            record(shared.store.as_ref(), &session, op, &mut batch);
        }
    }
    commit(batch, session.client_id());
    counters.set_queues(session.queued(), session.inflight());
    shared.clients.disconnected(session.client_id(), conn_id, session.expiry_interval);
    let will = match end {
        End::Abnormal | End::Disconnect { publish_will: true } => will.map(|w| *w),
        End::Disconnect { publish_will: false } | End::Shutdown => None,
    };
    let d = Disconnected { key, conn_id, session, will };
    let _ = shared.router.send(Command::Disconnected(Box::new(d))).await;
}
