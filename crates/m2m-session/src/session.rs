//! The per-client session state machine.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use m2m_codec::{
    encoded_len, Ack, AckProperties, Auth, Packet, PacketId, ProtocolVersion, Publish, PublishProperties,
    QoS, ReasonCode, RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe,
};
use m2m_topic::{parse_subscription, Subscription, TopicName};

use crate::message::{expiry_deadline, Delivery, Message};

/// Server-side limits a session enforces. One value is shared by every session of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Our Receive Maximum: QoS 2 publishes a client may have unreleased at once.
    pub receive_maximum: u16,
    /// Our Maximum Packet Size, in bytes.
    pub max_packet_size: u32,
    /// Our Topic Alias Maximum (client to server); 0 disables inbound aliases.
    pub topic_alias_maximum: u16,
    /// Upper bound on unacknowledged outgoing QoS 1/2 messages, whatever the client's Receive Maximum.
    pub max_inflight: u16,
    /// Messages queued per session beyond the inflight window (offline, or window full).
    pub max_queued: usize,
    /// Whether QoS 0 messages are queued for an offline session.
    pub queue_qos0_offline: bool,
    /// Subscriptions one session may hold.
    pub max_subscriptions: usize,
    /// Levels a topic name or filter may have.
    pub max_topic_levels: usize,
    /// Bytes a topic name or filter may have.
    pub max_topic_len: usize,
    /// Highest QoS the node accepts from publishers and grants to subscribers.
    pub max_qos: QoS,
    /// Whether retained messages are supported.
    pub retain_available: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            receive_maximum: 1024,
            max_packet_size: 1024 * 1024,
            topic_alias_maximum: 64,
            max_inflight: 128,
            max_queued: 1000,
            queue_qos0_offline: false,
            max_subscriptions: 1000,
            max_topic_levels: 64,
            max_topic_len: 1024,
            max_qos: QoS::ExactlyOnce,
            retain_available: true,
        }
    }
}

/// What one connection of the session negotiated in CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkParams {
    /// Protocol version of the connection.
    pub version: ProtocolVersion,
    /// Effective keep-alive in seconds (after any Server Keep Alive); 0 disables it.
    pub keep_alive: u16,
    /// The client's Receive Maximum.
    pub receive_maximum: u16,
    /// The client's Maximum Packet Size, if it set one.
    pub max_packet_size: Option<u32>,
    /// The client's Topic Alias Maximum (server to client aliases).
    pub topic_alias_maximum: u16,
    /// Whether the client wants reason strings and user properties on acknowledgements.
    pub request_problem_information: bool,
}

/// Access control for one connection of a session: asked about every PUBLISH the client sends and
/// every filter it subscribes to. The implementation knows who the client is, and logs and counts
/// what it refuses.
pub trait Permit: Send + Sync + std::fmt::Debug {
    /// Whether the client may publish `size` payload bytes to `topic`.
    fn may_publish(&self, topic: &TopicName, size: usize) -> bool;
    /// Whether the client may subscribe to `subscription`.
    fn may_subscribe(&self, subscription: &Subscription) -> bool;
}

/// Per-connection state: reset every time the client connects.
#[derive(Debug)]
struct Link {
    params: LinkParams,
    inbound_aliases: HashMap<u16, TopicName>,
    outbound_aliases: HashMap<TopicName, u16>,
    last_activity: Instant,
    /// Session Expiry Interval as set in CONNECT: a DISCONNECT may not raise it from 0 (MQTT-3.14.2-2).
    connect_expiry: u32,
    /// What this connection may publish and subscribe to; everything when `None`.
    permit: Option<Arc<dyn Permit>>,
}

/// A subscription as the session records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionEntry {
    /// The parsed filter (plain or shared).
    pub subscription: Subscription,
    /// Options, with the QoS as granted.
    pub options: SubscriptionOptions,
    /// Subscription Identifier, if the SUBSCRIBE carried one.
    pub id: Option<u32>,
}

/// A subscription the router must add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeRequest {
    /// The filter as the client wrote it (`$share/...` included): the session's key for it.
    pub filter: Arc<str>,
    /// The subscription, its options and identifier.
    pub entry: SubscriptionEntry,
    /// Whether no subscription with this filter existed before (for Retain Handling 1).
    pub is_new: bool,
}

/// Something the IO shell must do after the session handled an input.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Write this packet to the client.
    Send(Packet),
    /// Route this message to subscribers (and the retained store), then send `ack` (PUBACK for QoS 1,
    /// PUBREC for QoS 2). With a store that syncs, the acknowledgement waits until the message is durable.
    Publish {
        /// The message, ready to be shared with every subscriber.
        message: Arc<Message>,
        /// The acknowledgement owed to the client once the message is routed.
        ack: Option<Packet>,
    },
    /// Record this change in the store before sending the packets that follow.
    Persist(Persist),
    /// Add these subscriptions to the router, then send retained messages as their options say.
    Subscribe(Vec<SubscribeRequest>),
    /// Remove these subscriptions from the router.
    Unsubscribe(Vec<Subscription>),
    /// The client sent DISCONNECT; the will is published only for reason 0x04.
    Disconnect {
        /// Whether to publish the will (DISCONNECT with Will Message, 0x04).
        publish_will: bool,
    },
    /// The client sent AUTH (re-authentication); the shell runs the authenticator.
    Auth(Auth),
    /// A message went out to the client for the first time (only while [`Session::observe`] is on,
    /// for the rules' `$events/message_delivered`).
    Delivered {
        /// The message.
        message: Arc<Message>,
        /// The QoS it went out with.
        qos: QoS,
    },
    /// A delivery was dropped (only while [`Session::observe`] is on).
    Dropped {
        /// The message.
        message: Arc<Message>,
        /// Why.
        reason: DropReason,
    },
}

/// Why a session dropped a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Its Message Expiry Interval passed before it could be sent.
    Expired,
    /// The session's queue was full.
    QueueFull,
    /// QoS 0 for a client that is not connected (not queued by configuration).
    Offline,
    /// Larger than the client's Maximum Packet Size.
    TooLarge,
}

impl DropReason {
    /// The reason as rules and logs name it.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Expired => "expired",
            DropReason::QueueFull => "queue_full",
            DropReason::Offline => "offline",
            DropReason::TooLarge => "too_large",
        }
    }
}

/// A change to what the store keeps of a session, reported by sequence number (see
/// [`Delivery::stored`]); only deliveries that are stored are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    /// A stored delivery went out with this packet id (QoS 1/2, waiting for PUBACK or PUBREC).
    Sent {
        /// Sequence number in the store.
        seq: u64,
        /// Packet id it was sent with.
        id: PacketId,
        /// QoS 2: the client deduplicates by packet id, so the store must know it before it is sent.
        exactly_once: bool,
    },
    /// QoS 2: PUBREC received; PUBREL goes out next.
    Released {
        /// Sequence number in the store.
        seq: u64,
        /// Packet id of the exchange.
        id: PacketId,
    },
    /// Completed (PUBACK, PUBCOMP, an error PUBREC) or discarded (expired, too large, queue full):
    /// forget it.
    Done {
        /// Sequence number in the store.
        seq: u64,
    },
    /// An incoming QoS 2 packet id was released by PUBREL; PUBCOMP goes out next.
    IncomingReleased {
        /// The packet id.
        id: PacketId,
    },
}

impl Persist {
    /// Whether the packet that follows must not reach the client before this change is durable: a
    /// QoS 2 PUBLISH or PUBREL resent under another packet id after a crash would be delivered twice.
    /// QoS 1 allows a duplicate, and a removal lost in a crash only causes a resend.
    pub fn precedes_send(self) -> bool {
        matches!(self, Self::Sent { exactly_once: true, .. } | Self::Released { .. })
    }
}

/// A protocol violation: the connection ends with this reason code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({reason})")]
pub struct ProtocolError {
    /// Reason code for the DISCONNECT (v5).
    pub reason: ReasonCode,
    /// What the client did wrong, for logs and the Reason String.
    pub message: &'static str,
}

impl ProtocolError {
    fn new(reason: ReasonCode, message: &'static str) -> Self {
        Self { reason, message }
    }
}

/// What became of a delivery handed to [`Session::deliver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Written (or, for a too-large packet, discarded as if written).
    Sent,
    /// Waiting in the session queue.
    Queued,
    /// Dropped: queue full, expired, or QoS 0 for an offline session.
    Dropped,
}

#[derive(Debug, Clone)]
enum OutState {
    /// QoS 1 waiting for PUBACK, or QoS 2 waiting for PUBREC.
    AwaitAck(Delivery),
    /// QoS 2 PUBREL sent, waiting for PUBCOMP; the delivery's sequence number in the store.
    AwaitComp(Option<u64>),
}

#[derive(Debug, Clone)]
struct Outgoing {
    id: PacketId,
    state: OutState,
}

/// The state of one client session, connected or not. Owns nothing async: inputs are packets,
/// deliveries and the time; outputs are [`Action`]s.
///
/// Ownership moves: the connection task owns it while the client is connected; the router keeps it
/// while the client is away (and queues into it).
#[derive(Debug)]
pub struct Session {
    client_id: Arc<str>,
    limits: Arc<Limits>,
    /// Session Expiry Interval in seconds (`u32::MAX`: never).
    pub expiry_interval: u32,
    subscriptions: HashMap<Arc<str>, SubscriptionEntry>,
    /// Outgoing QoS 1/2 messages not yet completed, in the order they were first sent.
    outgoing: VecDeque<Outgoing>,
    /// Deliveries waiting for room in the inflight window or for the client to come back.
    queue: VecDeque<Delivery>,
    /// Incoming QoS 2 packet ids received and not yet released (exactly-once).
    incoming_qos2: HashSet<u16>,
    next_id: u16,
    link: Option<Link>,
    dropped: u64,
    /// Whether deliveries and drops are reported as [`Action::Delivered`] and [`Action::Dropped`].
    observe: bool,
    /// Set while the client is isolated (quarantined to its repair namespace).
    isolation: Option<Isolation>,
}

/// What an isolated session keeps aside until it is released.
#[derive(Debug)]
struct Isolation {
    /// Deliveries may still reach the client on topics starting with this (`$quarantine/<id>/`).
    prefix: Arc<str>,
    /// Subscriptions outside the namespace, by filter: out of the router until release.
    suspended: HashMap<Arc<str>, SubscriptionEntry>,
    /// Deliveries outside the namespace, queued before or since, in order: sent after release.
    held: VecDeque<Delivery>,
}

impl Session {
    /// A new, empty session.
    pub fn new(client_id: Arc<str>, limits: Arc<Limits>) -> Self {
        Self {
            client_id,
            limits,
            expiry_interval: 0,
            subscriptions: HashMap::new(),
            outgoing: VecDeque::new(),
            queue: VecDeque::new(),
            incoming_qos2: HashSet::new(),
            next_id: 0,
            link: None,
            dropped: 0,
            observe: false,
            isolation: None,
        }
    }

    /// Rebuilds a session from the store after a restart: its subscriptions, the messages that were
    /// in flight (`(packet id, PUBREL sent, delivery)`, resent on attach with DUP set, or as PUBREL),
    /// those still queued, and the incoming QoS 2 packet ids not yet released. All in their original
    /// order. The session is detached.
    pub fn restore(
        client_id: Arc<str>,
        limits: Arc<Limits>,
        expiry_interval: u32,
        subscriptions: impl IntoIterator<Item = (Arc<str>, SubscriptionEntry)>,
        inflight: impl IntoIterator<Item = (PacketId, bool, Delivery)>,
        queued: impl IntoIterator<Item = Delivery>,
        incoming_qos2: impl IntoIterator<Item = u16>,
    ) -> Self {
        let mut session = Self::new(client_id, limits);
        session.expiry_interval = expiry_interval;
        session.subscriptions = subscriptions.into_iter().collect();
        for (id, released, d) in inflight {
            session.next_id = session.next_id.max(id.get());
            let state = if released { OutState::AwaitComp(d.stored) } else { OutState::AwaitAck(d) };
            session.outgoing.push_back(Outgoing { id, state });
        }
        session.queue = queued.into_iter().collect();
        session.incoming_qos2 = incoming_qos2.into_iter().collect();
        session
    }

    /// Incoming QoS 2 packet ids received and not yet released.
    pub fn incoming_qos2(&self) -> impl Iterator<Item = u16> + '_ {
        self.incoming_qos2.iter().copied()
    }

    /// The client identifier.
    pub fn client_id(&self) -> &Arc<str> {
        &self.client_id
    }

    /// The subscriptions, by filter as the client wrote it.
    pub fn subscriptions(&self) -> &HashMap<Arc<str>, SubscriptionEntry> {
        &self.subscriptions
    }

    /// Removes the subscriptions `keep` rejects and returns them (for the router to forget too).
    pub fn drop_subscriptions(&mut self, keep: impl Fn(&Subscription) -> bool) -> Vec<Subscription> {
        let mut removed = Vec::new();
        self.subscriptions.retain(|_, entry| {
            let kept = keep(&entry.subscription);
            if !kept {
                removed.push(entry.subscription.clone());
            }
            kept
        });
        removed
    }

    /// Messages queued to be sent (held ones not included).
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Messages held while the client is isolated, to be sent when it is released.
    pub fn held(&self) -> usize {
        self.isolation.as_ref().map_or(0, |i| i.held.len())
    }

    /// Whether the session is isolated ([`Session::isolate`]).
    pub fn is_isolated(&self) -> bool {
        self.isolation.is_some()
    }

    /// Subscriptions set aside while the session is isolated, by filter; they are still the
    /// client's (and kept in the store with the others).
    pub fn suspended(&self) -> impl Iterator<Item = (&Arc<str>, &SubscriptionEntry)> {
        self.isolation.iter().flat_map(|i| i.suspended.iter())
    }

    /// Isolates the session to the topics starting with `prefix` (its repair namespace): its other
    /// subscriptions are set aside and returned (for the router to forget), and the messages queued
    /// outside the namespace — and any that still arrive — are held, not sent, until
    /// [`Session::release`]. Messages already in flight complete as usual. Isolating an isolated
    /// session again only sets aside what it subscribed to since.
    pub fn isolate(&mut self, prefix: Arc<str>) -> Vec<Subscription> {
        let isolation = self.isolation.get_or_insert_with(|| Isolation {
            prefix: prefix.clone(),
            suspended: HashMap::new(),
            held: VecDeque::new(),
        });
        isolation.prefix = prefix;
        let inside = |s: &Subscription| {
            matches!(s, Subscription::Plain(_)) && s.filter().starts_with(&*isolation.prefix)
        };
        let mut removed = Vec::new();
        let outside: Vec<Arc<str>> = self
            .subscriptions
            .iter()
            .filter(|(_, e)| !inside(&e.subscription))
            .map(|(f, _)| f.clone())
            .collect();
        for filter in outside {
            if let Some(entry) = self.subscriptions.remove(&filter) {
                removed.push(entry.subscription.clone());
                isolation.suspended.insert(filter, entry);
            }
        }
        let (keep, hold): (VecDeque<Delivery>, VecDeque<Delivery>) = std::mem::take(&mut self.queue)
            .into_iter()
            .partition(|d| d.message.topic.as_str().starts_with(&*isolation.prefix));
        self.queue = keep;
        isolation.held.extend(hold);
        removed
    }

    /// Ends the isolation: the subscriptions set aside come back (returned for the router to add
    /// again, without retained messages: they were never unsubscribed), and the held messages are
    /// queued ahead of newer ones and sent as the window allows.
    pub fn release(&mut self, now: Instant, out: &mut Vec<Action>) -> Vec<SubscribeRequest> {
        let Some(isolation) = self.isolation.take() else { return Vec::new() };
        let mut restored = Vec::new();
        for (filter, entry) in isolation.suspended {
            let mut request = entry.clone();
            request.options.retain_handling = RetainHandling::DoNotSend;
            restored.push(SubscribeRequest { filter: filter.clone(), entry: request, is_new: false });
            self.subscriptions.entry(filter).or_insert(entry);
        }
        let newer = std::mem::replace(&mut self.queue, isolation.held);
        self.queue.extend(newer);
        self.pump(now, out);
        restored
    }

    fn holds(&self, d: &Delivery) -> bool {
        self.isolation.as_ref().is_some_and(|i| !d.message.topic.as_str().starts_with(&*i.prefix))
    }

    /// Outgoing QoS 1/2 messages sent and not yet acknowledged.
    pub fn inflight(&self) -> usize {
        self.outgoing.len()
    }

    /// Deliveries dropped so far because the queue was full or the message expired.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Turns the reporting of deliveries and drops ([`Action::Delivered`], [`Action::Dropped`]) on or
    /// off; off by default, as nothing but a rule on those events wants them.
    pub fn observe(&mut self, on: bool) {
        self.observe = on;
    }

    /// Attaches a new connection: resends unacknowledged messages (PUBLISH with DUP, PUBREL) in their
    /// original order, then whatever waited in the queue (MQTT 5.0 §4.4).
    pub fn attach(&mut self, params: LinkParams, connect_expiry: u32, now: Instant, out: &mut Vec<Action>) {
        self.expiry_interval = connect_expiry;
        self.link = Some(Link {
            params,
            inbound_aliases: HashMap::new(),
            outbound_aliases: HashMap::new(),
            last_activity: now,
            connect_expiry,
            permit: None,
        });
        let resend: Vec<Outgoing> = self.outgoing.iter().cloned().collect();
        for o in resend {
            match o.state {
                OutState::AwaitAck(d) => {
                    if let Some(p) = self.build_publish(&d, Some(o.id), true, now) {
                        out.push(Action::Send(p));
                    }
                }
                OutState::AwaitComp(_) => out.push(Action::Send(Packet::PubRel(Ack::new(o.id)))),
            }
        }
        self.pump(now, out);
    }

    /// Detaches the connection; the session keeps its subscriptions, inflight and queue.
    pub fn detach(&mut self) {
        self.link = None;
    }

    /// Records activity from the client (any packet), for keep-alive.
    pub fn touch(&mut self, now: Instant) {
        if let Some(link) = &mut self.link {
            link.last_activity = now;
        }
    }

    /// When the client must have sent something by: 1.5 × keep-alive after its last packet (MQTT-3.1.2-22).
    pub fn keep_alive_deadline(&self) -> Option<Instant> {
        let link = self.link.as_ref()?;
        if link.params.keep_alive == 0 {
            return None;
        }
        let grace = Duration::from_millis(u64::from(link.params.keep_alive) * 1500);
        link.last_activity.checked_add(grace)
    }

    /// Sets what the attached connection may publish and subscribe to (until it detaches). Refused
    /// publishes are not routed: MQTT 5 gets PUBACK/PUBREC 0x87 (Not authorized), 3.1.1 the usual
    /// acknowledgement (it has no negative one, and a client would resend forever). Refused filters
    /// get SUBACK 0x87 (3.1.1: 0x80). Subscriptions already held are not checked again.
    pub fn set_permit(&mut self, permit: Option<Arc<dyn Permit>>) {
        if let Some(link) = &mut self.link {
            link.permit = permit;
        }
    }

    fn permit(&self) -> Option<&dyn Permit> {
        self.link.as_ref().and_then(|l| l.permit.as_deref())
    }

    /// Handles one packet from the client.
    ///
    /// # Errors
    /// A [`ProtocolError`] when the client broke the protocol; the connection must end with its reason.
    pub fn handle_packet(
        &mut self,
        packet: Packet,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> Result<(), ProtocolError> {
        self.touch(now);
        match packet {
            Packet::Publish(p) => self.handle_publish(p, now, out),
            Packet::PubAck(ack) => {
                let found = self.outgoing.iter().position(|o| {
                    o.id == ack.packet_id
                        && matches!(&o.state, OutState::AwaitAck(d) if d.qos == QoS::AtLeastOnce)
                });
                if let Some(i) = found {
                    if let Some(o) = self.outgoing.remove(i) {
                        done(&o, out);
                    }
                    self.pump(now, out);
                }
                Ok(())
            }
            Packet::PubRec(ack) => {
                let found = self.outgoing.iter().position(|o| o.id == ack.packet_id);
                match found.map(|i| (i, &self.outgoing[i].state)) {
                    Some((i, OutState::AwaitAck(d))) if d.qos == QoS::ExactlyOnce => {
                        if ack.reason_code.is_error() {
                            if let Some(o) = self.outgoing.remove(i) {
                                done(&o, out);
                            }
                            self.pump(now, out);
                        } else {
                            let stored = d.stored;
                            self.outgoing[i].state = OutState::AwaitComp(stored);
                            if let Some(seq) = stored {
                                out.push(Action::Persist(Persist::Released { seq, id: ack.packet_id }));
                            }
                            self.send(out, Packet::PubRel(Ack::new(ack.packet_id)));
                        }
                    }
                    Some((_, OutState::AwaitComp(_))) => {
                        self.send(out, Packet::PubRel(Ack::new(ack.packet_id)));
                    }
                    _ => {
                        let mut rel = Ack::new(ack.packet_id);
                        rel.reason_code = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                        self.send(out, Packet::PubRel(rel));
                    }
                }
                Ok(())
            }
            Packet::PubRel(ack) => {
                let mut comp = Ack::new(ack.packet_id);
                if self.incoming_qos2.remove(&ack.packet_id.get()) {
                    out.push(Action::Persist(Persist::IncomingReleased { id: ack.packet_id }));
                } else {
                    comp.reason_code = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                }
                self.send(out, Packet::PubComp(comp));
                Ok(())
            }
            Packet::PubComp(ack) => {
                let found = self
                    .outgoing
                    .iter()
                    .position(|o| o.id == ack.packet_id && matches!(o.state, OutState::AwaitComp(_)));
                if let Some(i) = found {
                    if let Some(o) = self.outgoing.remove(i) {
                        done(&o, out);
                    }
                    self.pump(now, out);
                }
                Ok(())
            }
            Packet::Subscribe(s) => self.handle_subscribe(s, out),
            Packet::Unsubscribe(u) => {
                self.handle_unsubscribe(u, out);
                Ok(())
            }
            Packet::PingReq => {
                out.push(Action::Send(Packet::PingResp));
                Ok(())
            }
            Packet::Disconnect(d) => {
                if let Some(expiry) = d.properties.session_expiry_interval {
                    let connect_expiry = self.link.as_ref().map_or(0, |l| l.connect_expiry);
                    if connect_expiry == 0 && expiry != 0 {
                        return Err(ProtocolError::new(
                            ReasonCode::PROTOCOL_ERROR,
                            "session expiry set on DISCONNECT after 0 on CONNECT",
                        ));
                    }
                    self.expiry_interval = expiry;
                }
                out.push(Action::Disconnect {
                    publish_will: d.reason_code == ReasonCode::DISCONNECT_WITH_WILL,
                });
                Ok(())
            }
            Packet::Auth(a) => {
                out.push(Action::Auth(a));
                Ok(())
            }
            Packet::Connect(_) => Err(ProtocolError::new(ReasonCode::PROTOCOL_ERROR, "second CONNECT")),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => Err(
                ProtocolError::new(ReasonCode::PROTOCOL_ERROR, "server-to-client packet sent by a client"),
            ),
        }
    }

    fn version(&self) -> ProtocolVersion {
        self.link.as_ref().map_or(ProtocolVersion::V311, |l| l.params.version)
    }

    fn handle_publish(
        &mut self,
        p: Publish,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> Result<(), ProtocolError> {
        if p.qos > self.limits.max_qos {
            return Err(ProtocolError::new(ReasonCode::QOS_NOT_SUPPORTED, "QoS above the maximum"));
        }
        if p.retain && !self.limits.retain_available {
            return Err(ProtocolError::new(ReasonCode::RETAIN_NOT_SUPPORTED, "retain is not available"));
        }
        if !p.properties.subscription_identifiers.is_empty() {
            return Err(ProtocolError::new(
                ReasonCode::PROTOCOL_ERROR,
                "subscription identifier in a PUBLISH from a client",
            ));
        }
        let topic = self.resolve_topic(&p)?;
        let v5 = self.version().is_v5();
        if v5
            && p.properties.payload_format_indicator == Some(true)
            && std::str::from_utf8(&p.payload).is_err()
        {
            if p.qos == QoS::AtMostOnce {
                return Err(ProtocolError::new(ReasonCode::PAYLOAD_FORMAT_INVALID, "payload is not UTF-8"));
            }
            let mut ack = Ack::new(p.packet_id.ok_or_else(missing_id)?);
            ack.reason_code = ReasonCode::PAYLOAD_FORMAT_INVALID;
            ack.properties = problem(&[ack.reason_code]);
            let packet = if p.qos == QoS::AtLeastOnce { Packet::PubAck(ack) } else { Packet::PubRec(ack) };
            self.send(out, packet);
            return Ok(());
        }
        if self.permit().is_some_and(|permit| !permit.may_publish(&topic, p.payload.len())) {
            return self.refuse_publish(&p, out);
        }
        let mut properties = p.properties;
        properties.topic_alias = None;
        let message = Message {
            topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            expires_at: expiry_deadline(properties.message_expiry_interval, now),
            properties,
            publisher: Some(self.client_id.clone()),
            origin: None,
        };
        match p.qos {
            QoS::AtMostOnce => out.push(Action::Publish { message: Arc::new(message), ack: None }),
            QoS::AtLeastOnce => {
                let id = p.packet_id.ok_or_else(missing_id)?;
                let ack = Some(Packet::PubAck(Ack::new(id)));
                out.push(Action::Publish { message: Arc::new(message), ack });
            }
            QoS::ExactlyOnce => {
                let id = p.packet_id.ok_or_else(missing_id)?;
                if !self.incoming_qos2.contains(&id.get()) {
                    if self.incoming_qos2.len() >= usize::from(self.limits.receive_maximum) {
                        return Err(ProtocolError::new(
                            ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                            "more unreleased QoS 2 publishes than our Receive Maximum",
                        ));
                    }
                    self.incoming_qos2.insert(id.get());
                    let ack = Some(Packet::PubRec(Ack::new(id)));
                    out.push(Action::Publish { message: Arc::new(message), ack });
                } else {
                    out.push(Action::Send(Packet::PubRec(Ack::new(id))));
                }
            }
        }
        Ok(())
    }

    /// Answers a PUBLISH the permit refused: it is not routed. QoS 0 is dropped; MQTT 5 gets
    /// PUBACK/PUBREC 0x87; 3.1.1 gets the acknowledgement of an accepted message (QoS 2 goes on with
    /// PUBREL/PUBCOMP as usual), so that the client does not send it again.
    fn refuse_publish(&mut self, p: &Publish, out: &mut Vec<Action>) -> Result<(), ProtocolError> {
        let Some(id) = p.packet_id else { return Ok(()) };
        let mut ack = Ack::new(id);
        if self.version().is_v5() {
            ack.reason_code = ReasonCode::NOT_AUTHORIZED;
            ack.properties = problem(&[ack.reason_code]);
        } else if p.qos == QoS::ExactlyOnce {
            if !self.incoming_qos2.contains(&id.get())
                && self.incoming_qos2.len() >= usize::from(self.limits.receive_maximum)
            {
                return Err(ProtocolError::new(
                    ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                    "more unreleased QoS 2 publishes than our Receive Maximum",
                ));
            }
            self.incoming_qos2.insert(id.get());
        }
        let packet = if p.qos == QoS::AtLeastOnce { Packet::PubAck(ack) } else { Packet::PubRec(ack) };
        self.send(out, packet);
        Ok(())
    }

    /// The topic of an incoming PUBLISH, resolving and recording topic aliases (MQTT 5.0 §3.3.2.3.4).
    fn resolve_topic(&mut self, p: &Publish) -> Result<TopicName, ProtocolError> {
        let alias_max = self.limits.topic_alias_maximum;
        let limits = self.limits.clone();
        let link = self.link.as_mut();
        match (p.properties.topic_alias, link) {
            (Some(alias), Some(link)) => {
                if alias == 0 || alias > alias_max {
                    return Err(ProtocolError::new(
                        ReasonCode::TOPIC_ALIAS_INVALID,
                        "topic alias out of range",
                    ));
                }
                if p.topic.is_empty() {
                    link.inbound_aliases
                        .get(&alias)
                        .cloned()
                        .ok_or_else(|| ProtocolError::new(ReasonCode::PROTOCOL_ERROR, "unknown topic alias"))
                } else {
                    let topic = check_topic_name(&p.topic, &limits)?;
                    link.inbound_aliases.insert(alias, topic.clone());
                    Ok(topic)
                }
            }
            _ => check_topic_name(&p.topic, &limits),
        }
    }

    fn handle_subscribe(&mut self, s: Subscribe, out: &mut Vec<Action>) -> Result<(), ProtocolError> {
        let v5 = self.version().is_v5();
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut requests = Vec::with_capacity(s.filters.len());
        for (filter, mut options) in s.filters {
            let subscription = match check_filter(&filter, &self.limits) {
                Ok(sub) => sub,
                Err(()) => {
                    codes.push(if v5 {
                        ReasonCode::TOPIC_FILTER_INVALID
                    } else {
                        ReasonCode::UNSPECIFIED_ERROR
                    });
                    continue;
                }
            };
            if matches!(subscription, Subscription::Shared(_)) && options.no_local {
                return Err(ProtocolError::new(
                    ReasonCode::PROTOCOL_ERROR,
                    "No Local set on a shared subscription",
                ));
            }
            if self.permit().is_some_and(|permit| !permit.may_subscribe(&subscription)) {
                codes.push(if v5 { ReasonCode::NOT_AUTHORIZED } else { ReasonCode::UNSPECIFIED_ERROR });
                continue;
            }
            let is_new = !self.subscriptions.contains_key(&filter);
            if is_new && self.subscriptions.len() >= self.limits.max_subscriptions {
                codes.push(if v5 { ReasonCode::QUOTA_EXCEEDED } else { ReasonCode::UNSPECIFIED_ERROR });
                continue;
            }
            options.qos = options.qos.min(self.limits.max_qos);
            let entry = SubscriptionEntry { subscription, options, id: s.subscription_identifier };
            self.subscriptions.insert(filter.clone(), entry.clone());
            codes.push(ReasonCode(options.qos as u8));
            requests.push(SubscribeRequest { filter, entry, is_new });
        }
        if !requests.is_empty() {
            out.push(Action::Subscribe(requests));
        }
        let ack = SubAck { packet_id: s.packet_id, properties: problem(&codes), reason_codes: codes };
        self.send(out, Packet::SubAck(ack));
        Ok(())
    }

    fn handle_unsubscribe(&mut self, u: Unsubscribe, out: &mut Vec<Action>) {
        let v5 = self.version().is_v5();
        let mut codes = Vec::with_capacity(u.filters.len());
        let mut removed = Vec::new();
        for filter in &u.filters {
            match self.subscriptions.remove(filter) {
                Some(entry) => {
                    removed.push(entry.subscription);
                    codes.push(ReasonCode::SUCCESS);
                }
                None if check_filter(filter, &self.limits).is_err() => {
                    codes.push(ReasonCode::TOPIC_FILTER_INVALID)
                }
                None => codes.push(ReasonCode::NO_SUBSCRIPTION_EXISTED),
            }
        }
        if !removed.is_empty() {
            out.push(Action::Unsubscribe(removed));
        }
        if !v5 {
            codes.clear();
        }
        let ack = UnsubAck { packet_id: u.packet_id, properties: problem(&codes), reason_codes: codes };
        self.send(out, Packet::UnsubAck(ack));
    }

    /// Hands a delivery to the session: sent now if connected and the window allows, else queued.
    ///
    /// A stored delivery that is dropped is reported as [`Persist::Done`].
    pub fn deliver(&mut self, d: Delivery, now: Instant, out: &mut Vec<Action>) -> DeliveryOutcome {
        if d.message.is_expired(now) {
            self.discard(&d, DropReason::Expired, out);
            return DeliveryOutcome::Dropped;
        }
        if self.link.is_none() || self.holds(&d) {
            return self.enqueue(d, out);
        }
        if d.qos == QoS::AtMostOnce {
            self.send_qos0(&d, now, out);
            return DeliveryOutcome::Sent;
        }
        if !self.queue.is_empty() || self.outgoing.len() >= self.window() {
            return self.enqueue(d, out);
        }
        self.send_qos(d, now, out);
        DeliveryOutcome::Sent
    }

    fn window(&self) -> usize {
        let client = self.link.as_ref().map_or(u16::MAX, |l| l.params.receive_maximum);
        usize::from(client.min(self.limits.max_inflight))
    }

    fn enqueue(&mut self, d: Delivery, out: &mut Vec<Action>) -> DeliveryOutcome {
        let offline_qos0 = self.link.is_none() && d.qos == QoS::AtMostOnce && !self.limits.queue_qos0_offline;
        if offline_qos0 || self.queue.len() + self.held() >= self.limits.max_queued {
            let reason = if offline_qos0 { DropReason::Offline } else { DropReason::QueueFull };
            self.discard(&d, reason, out);
            return DeliveryOutcome::Dropped;
        }
        if self.holds(&d) {
            if let Some(isolation) = &mut self.isolation {
                isolation.held.push_back(d);
            }
        } else {
            self.queue.push_back(d);
        }
        DeliveryOutcome::Queued
    }

    /// Sends queued messages while the window has room.
    fn pump(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.link.is_none() {
            return;
        }
        while self.outgoing.len() < self.window() {
            let Some(d) = self.queue.pop_front() else { break };
            if d.message.is_expired(now) {
                self.discard(&d, DropReason::Expired, out);
                continue;
            }
            if d.qos == QoS::AtMostOnce {
                self.send_qos0(&d, now, out);
            } else {
                self.send_qos(d, now, out);
            }
        }
    }

    fn send_qos(&mut self, d: Delivery, now: Instant, out: &mut Vec<Action>) {
        let id = self.next_packet_id();
        match self.build_publish(&d, Some(id), false, now) {
            Some(p) => {
                if let Some(seq) = d.stored {
                    let exactly_once = d.qos == QoS::ExactlyOnce;
                    out.push(Action::Persist(Persist::Sent { seq, id, exactly_once }));
                }
                out.push(Action::Send(p));
                if self.observe {
                    out.push(Action::Delivered { message: d.message.clone(), qos: d.qos });
                }
                self.outgoing.push_back(Outgoing { id, state: OutState::AwaitAck(d) });
            }
            // Too large for the client: discarded as if delivered (MQTT-3.1.2-25).
            None => self.discard(&d, DropReason::TooLarge, out),
        }
    }

    fn send_qos0(&mut self, d: &Delivery, now: Instant, out: &mut Vec<Action>) {
        match self.build_publish(d, None, false, now) {
            Some(p) => {
                out.push(Action::Send(p));
                if self.observe {
                    out.push(Action::Delivered { message: d.message.clone(), qos: QoS::AtMostOnce });
                }
            }
            // Too large for the client: discarded as if delivered (MQTT-3.1.2-25), not counted.
            None if self.observe => {
                out.push(Action::Dropped { message: d.message.clone(), reason: DropReason::TooLarge });
            }
            None => {}
        }
    }

    /// Counts a dropped delivery and, if it is stored, reports it.
    fn discard(&mut self, d: &Delivery, reason: DropReason, out: &mut Vec<Action>) {
        self.dropped += 1;
        if let Some(seq) = d.stored {
            out.push(Action::Persist(Persist::Done { seq }));
        }
        if self.observe {
            out.push(Action::Dropped { message: d.message.clone(), reason });
        }
    }

    fn next_packet_id(&mut self) -> PacketId {
        loop {
            self.next_id = self.next_id.wrapping_add(1);
            let Some(id) = PacketId::new(self.next_id) else { continue };
            // The window is at most 65535, so a free id always exists.
            if !self.outgoing.iter().any(|o| o.id == id) {
                return id;
            }
        }
    }

    /// Builds the PUBLISH for one delivery; `None` when it exceeds the client's Maximum Packet Size.
    fn build_publish(
        &mut self,
        d: &Delivery,
        id: Option<PacketId>,
        dup: bool,
        now: Instant,
    ) -> Option<Packet> {
        let link = self.link.as_mut()?;
        let m = &d.message;
        let v5 = link.params.version.is_v5();
        let properties = if v5 {
            let mut props = m.properties.clone();
            props.message_expiry_interval = m.remaining_expiry(now);
            props.subscription_identifiers.clone_from(&d.subscription_ids);
            props
        } else {
            PublishProperties::default()
        };
        let mut packet = Packet::Publish(Publish {
            dup,
            qos: d.qos,
            retain: d.retain,
            topic: m.topic.as_arc().clone(),
            packet_id: id,
            properties,
            payload: m.payload.clone(),
        });
        // Measured with the full topic, the largest form the packet can take.
        if let Some(max) = link.params.max_packet_size {
            if encoded_len(&packet, link.params.version) > max as usize {
                return None;
            }
        }
        let Packet::Publish(publish) = &mut packet else { return Some(packet) };
        if v5 && link.params.topic_alias_maximum > 0 {
            match link.outbound_aliases.get(&m.topic) {
                Some(&alias) => {
                    publish.topic = EMPTY_TOPIC.clone();
                    publish.properties.topic_alias = Some(alias);
                }
                None => {
                    let next = link.outbound_aliases.len() + 1;
                    if let Ok(alias) = u16::try_from(next) {
                        if alias <= link.params.topic_alias_maximum {
                            link.outbound_aliases.insert(m.topic.clone(), alias);
                            publish.properties.topic_alias = Some(alias);
                        }
                    }
                }
            }
        }
        Some(packet)
    }

    /// Queues a packet, stripping reason strings and user properties from acknowledgements when the
    /// client asked for no problem information (MQTT-3.1.2-29), or when they would take the packet over
    /// the client's Maximum Packet Size (MQTT-3.4.2-2, MQTT-3.9.2-1, MQTT-3.11.2-1).
    fn send(&self, out: &mut Vec<Action>, mut packet: Packet) {
        if let Some(link) = &self.link {
            let too_large = |p: &Packet| {
                link.params
                    .max_packet_size
                    .is_some_and(|max| encoded_len(p, link.params.version) > max as usize)
            };
            if !link.params.request_problem_information || too_large(&packet) {
                match &mut packet {
                    Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
                        a.properties = AckProperties::default();
                    }
                    Packet::SubAck(a) => a.properties = AckProperties::default(),
                    Packet::UnsubAck(a) => a.properties = AckProperties::default(),
                    _ => {}
                }
            }
        }
        out.push(Action::Send(packet));
    }
}

/// Reports a completed outgoing message to the store, if it is kept there.
fn done(o: &Outgoing, out: &mut Vec<Action>) {
    let stored = match &o.state {
        OutState::AwaitAck(d) => d.stored,
        OutState::AwaitComp(stored) => *stored,
    };
    if let Some(seq) = stored {
        out.push(Action::Persist(Persist::Done { seq }));
    }
}

/// A Reason String naming the first failure among `codes`, if any; [`Session::send`] strips it for a
/// client that asked for no problem information.
fn problem(codes: &[ReasonCode]) -> AckProperties {
    let reason_string = codes.iter().find(|c| c.is_error()).map(|c| Arc::from(c.description()));
    AckProperties { reason_string, ..AckProperties::default() }
}

/// The topic of a PUBLISH that carries only a topic alias; shared so that sending one allocates nothing.
static EMPTY_TOPIC: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(""));

fn missing_id() -> ProtocolError {
    ProtocolError::new(ReasonCode::MALFORMED_PACKET, "QoS > 0 PUBLISH without a packet identifier")
}

fn within_limits(s: &str, limits: &Limits) -> bool {
    s.len() <= limits.max_topic_len && s.split('/').count() <= limits.max_topic_levels
}

/// Validates a topic name against MQTT rules and the node's limits.
///
/// # Errors
/// `TOPIC_NAME_INVALID` for an empty name, wildcards, or a name over the limits.
pub fn check_topic_name(topic: &Arc<str>, limits: &Limits) -> Result<TopicName, ProtocolError> {
    if !within_limits(topic, limits) {
        return Err(ProtocolError::new(ReasonCode::TOPIC_NAME_INVALID, "topic name over the node's limits"));
    }
    TopicName::try_from(topic.clone())
        .map_err(|_| ProtocolError::new(ReasonCode::TOPIC_NAME_INVALID, "invalid topic name"))
}

fn check_filter(filter: &str, limits: &Limits) -> Result<Subscription, ()> {
    if !within_limits(filter, limits) {
        return Err(());
    }
    parse_subscription(filter).map_err(|_| ())
}

#[cfg(test)]
mod tests;
