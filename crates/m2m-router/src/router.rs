//! The router task: the one owner of subscriptions, retained messages, sessions and wills.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use m2m_codec::{Packet, PacketId, QoS, ReasonCode, RetainHandling};
use m2m_session::{Action, Delivery, Limits, Message, Persist, Session, SubscribeRequest, SubscriptionEntry};
use m2m_store::{unix_ms, Batch, Phase, Recovered, SessionRecord, Store, WillRecord};
use m2m_topic::{Match, SharedGroupId, Subscription, SubscriptionTrie, TopicFilter, TopicName, TopicTree};
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::{debug, error, info, trace};

use crate::interest::Interest;
use crate::mailbox::{Mailbox, PushError};
use crate::metrics::Metrics;

/// How often the router sweeps expired retained messages.
const HOUSEKEEPING: Duration = Duration::from_secs(10);
/// How often the router records in the store that the node is alive: after a crash, sessions that were
/// online count as disconnected from the last record on (expiry, will delay).
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Identifies a session inside the router; stable for the session's life.
pub type SessionKey = u64;

/// Router settings.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Session limits shared by every session.
    pub limits: Arc<Limits>,
    /// How often `$SYS/broker/...` statistics are published; `None` disables them.
    pub sys_interval: Option<Duration>,
    /// Capacity of the router's command channel.
    pub channel_capacity: usize,
    /// Text published on `$SYS/broker/version`.
    pub version: String,
    /// What sees every message the node accepts (the history, rules), in the order they are routed.
    pub taps: Vec<Arc<dyn Tap>>,
    /// Kept up to date with the filters subscribed to, for the mesh.
    pub interest: Option<Arc<Interest>>,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            limits: Arc::new(Limits::default()),
            sys_interval: Some(Duration::from_secs(10)),
            channel_capacity: 4096,
            version: concat!("m2m ", env!("CARGO_PKG_VERSION")).to_string(),
            taps: Vec::new(),
            interest: None,
        }
    }
}

/// Sees every message the router accepts: published by a client (and kept, for QoS 1/2), a will, or
/// the node's own. Called on the router's thread for each message, so it must only hand the message
/// on (a bounded queue, counting what it drops) and never block.
pub trait Tap: Send + Sync + std::fmt::Debug {
    /// A message was accepted and routed.
    fn message(&self, message: &Arc<Message>);

    /// Adds its own `$SYS/broker/<name>` values (e.g. `history/stored`) to `out`.
    fn sys_values(&self, out: &mut Vec<(&'static str, String)>) {
        let _ = out;
    }

    /// Something happened to a client (called from connection tasks; must not block either). Only
    /// events of the kinds [`Tap::wants`] are given.
    fn event(&self, event: &NodeEvent) {
        let _ = event;
    }

    /// Whether it wants events of this kind now (asked before each event is built; must be cheap).
    fn wants(&self, kind: NodeEventKind) -> bool {
        let _ = kind;
        false
    }
}

/// Whether any of `taps` wants events of `kind`.
pub fn wants_event(taps: &[Arc<dyn Tap>], kind: NodeEventKind) -> bool {
    taps.iter().any(|t| t.wants(kind))
}

/// Builds the event (only if some tap wants its kind) and gives it to the taps that want it.
pub fn emit_event(taps: &[Arc<dyn Tap>], kind: NodeEventKind, event: impl FnOnce() -> NodeEvent) {
    if !wants_event(taps, kind) {
        return;
    }
    let event = event();
    for tap in taps {
        if tap.wants(kind) {
            tap.event(&event);
        }
    }
}

/// The kinds of [`NodeEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeEventKind {
    /// [`NodeEvent::ClientConnected`].
    ClientConnected,
    /// [`NodeEvent::ClientDisconnected`].
    ClientDisconnected,
    /// [`NodeEvent::SessionSubscribed`].
    SessionSubscribed,
    /// [`NodeEvent::SessionUnsubscribed`].
    SessionUnsubscribed,
    /// [`NodeEvent::MessageDelivered`].
    MessageDelivered,
    /// [`NodeEvent::MessageDropped`].
    MessageDropped,
    /// [`NodeEvent::Quarantined`].
    Quarantined,
    /// [`NodeEvent::Released`].
    Released,
}

impl NodeEvent {
    /// Its kind.
    pub fn kind(&self) -> NodeEventKind {
        match self {
            NodeEvent::ClientConnected { .. } => NodeEventKind::ClientConnected,
            NodeEvent::ClientDisconnected { .. } => NodeEventKind::ClientDisconnected,
            NodeEvent::SessionSubscribed { .. } => NodeEventKind::SessionSubscribed,
            NodeEvent::SessionUnsubscribed { .. } => NodeEventKind::SessionUnsubscribed,
            NodeEvent::MessageDelivered { .. } => NodeEventKind::MessageDelivered,
            NodeEvent::MessageDropped { .. } => NodeEventKind::MessageDropped,
            NodeEvent::Quarantined { .. } => NodeEventKind::Quarantined,
            NodeEvent::Released { .. } => NodeEventKind::Released,
        }
    }
}

/// What happened to a client, for taps (the rules engine's `$events/...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// A client completed CONNECT.
    ClientConnected {
        /// Client id.
        client_id: Arc<str>,
        /// Username, if it gave or proved one.
        username: Option<Arc<str>>,
        /// Its address.
        peer: std::net::SocketAddr,
        /// MQTT protocol level (4 for 3.1.1, 5).
        protocol: u8,
        /// Clean start / clean session.
        clean_start: bool,
        /// Keep-alive in seconds.
        keep_alive: u16,
    },
    /// A client's connection ended.
    ClientDisconnected {
        /// Client id.
        client_id: Arc<str>,
        /// Username.
        username: Option<Arc<str>>,
        /// Its address.
        peer: std::net::SocketAddr,
        /// Why: `normal` (DISCONNECT), `taken_over`, `kicked`, `keep_alive_timeout`, `error`, `shutdown`.
        reason: &'static str,
    },
    /// A session added a subscription.
    SessionSubscribed {
        /// Client id.
        client_id: Arc<str>,
        /// The filter as the client wrote it.
        filter: Arc<str>,
        /// Granted QoS.
        qos: u8,
    },
    /// A session removed a subscription.
    SessionUnsubscribed {
        /// Client id.
        client_id: Arc<str>,
        /// The filter.
        filter: Arc<str>,
    },
    /// A message went out to a subscriber (the first time; resends are not counted).
    MessageDelivered {
        /// The subscriber's client id.
        client_id: Arc<str>,
        /// The message (its publisher, topic, payload, properties).
        message: Arc<Message>,
        /// QoS it went out with.
        qos: u8,
    },
    /// A message was dropped: for a subscriber (queue full, expired, offline, too large), or because
    /// no subscription matched it (`no_subscribers`).
    MessageDropped {
        /// The subscriber that lost it; `None` for `no_subscribers`.
        client_id: Option<Arc<str>>,
        /// The message.
        message: Arc<Message>,
        /// `queue_full`, `expired`, `offline`, `too_large` or `no_subscribers`.
        reason: &'static str,
    },
    /// A quarantine entry was added.
    Quarantined {
        /// The entry's id.
        entry: u64,
        /// What it names, e.g. `client id "press-7"`.
        target: String,
        /// The client id, when the entry names one.
        client_id: Option<Arc<str>>,
        /// `ban` or `isolate`.
        mode: &'static str,
        /// Why.
        reason: String,
        /// Who: `api`, `cli`, `detector:<name>`, `rule:<id>`…
        actor: String,
    },
    /// A quarantine entry was released (or expired).
    Released {
        /// The entry's id.
        entry: u64,
        /// What it named.
        target: String,
        /// The client id, when the entry named one.
        client_id: Option<Arc<str>>,
        /// Who released it (`node` for an expiry).
        actor: String,
    },
}

/// A will to publish when the connection ends without a clean DISCONNECT.
#[derive(Debug, Clone)]
pub struct PendingWill {
    /// The message the will turns into.
    pub message: Message,
    /// Will Delay Interval in seconds.
    pub delay: u32,
}

/// A client's request to connect, sent by its connection task.
#[derive(Debug)]
pub struct ConnectRequest {
    /// Client identifier (already assigned if the client sent none).
    pub client_id: Arc<str>,
    /// Clean Start / Clean Session.
    pub clean_start: bool,
    /// Session Expiry Interval, as capped by the node: 0 ends the session with the connection,
    /// `u32::MAX` never. A session with a non-zero expiry is kept in the store, if there is one.
    pub expiry: u32,
    /// Whether the client speaks MQTT 5 (an acknowledgement can carry a failure reason code).
    pub v5: bool,
    /// How the router reaches the connection.
    pub link: ClientLink,
    /// The router's answer.
    pub reply: oneshot::Sender<ConnectReply>,
}

/// Flow control between the router and one connection, shared by both.
///
/// Back-pressure for QoS 1/2 (DESIGN §3): when a subscriber's mailbox is full, the router keeps the
/// delivery in that subscriber's overflow and throttles the publisher: `blocked` counts the congested
/// subscribers it waits for, and the publisher's connection stops reading PUBLISHes until it is zero.
/// The subscriber's connection sees `wants_drain` and tells the router when its mailbox has room.
#[derive(Debug, Default)]
pub struct LinkFlow {
    /// Congested subscribers this connection (as a publisher) waits for.
    pub blocked: AtomicUsize,
    /// Signalled when `blocked` goes down.
    pub unblocked: Notify,
    /// Set when the router holds overflow for this connection (as a subscriber) and wants to hear
    /// [`Command::Drained`] once the mailbox has room.
    pub wants_drain: AtomicBool,
}

impl LinkFlow {
    /// Whether the connection must hold back further PUBLISHes.
    pub fn is_blocked(&self) -> bool {
        self.blocked.load(Ordering::Acquire) > 0
    }

    /// Waits until the flow is not blocked (at once if it is not). Checks again at least every 100
    /// ms, so that several waiters sharing one flow all go on once it is released.
    pub async fn wait_unblocked(&self) {
        while self.is_blocked() {
            let _ = tokio::time::timeout(Duration::from_millis(100), self.unblocked.notified()).await;
        }
    }

    fn release(&self) {
        // Saturating: a waiter is released at most once per registration.
        let _ = self.blocked.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        self.unblocked.notify_one();
    }
}

/// How the router reaches one connection.
#[derive(Debug)]
pub struct ClientLink {
    /// Unique id of the connection, to tell its later messages from a successor's.
    pub conn_id: u64,
    /// Where the router sends deliveries while the client is online.
    pub mailbox: Arc<Mailbox>,
    /// Fired by the router to close the connection (session take-over).
    pub kick: oneshot::Sender<ReasonCode>,
    /// Flow control shared with the connection.
    pub flow: Arc<LinkFlow>,
}

/// The router's answer to a [`ConnectRequest`].
#[derive(Debug)]
pub struct ConnectReply {
    /// Key of the session, for later commands.
    pub key: SessionKey,
    /// The session, now owned by the connection until it disconnects.
    pub session: Box<Session>,
    /// Whether an existing session was resumed.
    pub session_present: bool,
}

/// A connection ended; its session goes back to the router.
#[derive(Debug)]
pub struct Disconnected {
    /// Key of the session.
    pub key: SessionKey,
    /// The connection that ended.
    pub conn_id: u64,
    /// The session, detached, with anything the connection had not sent yet.
    pub session: Box<Session>,
    /// The will to publish, if the connection ended without a clean DISCONNECT.
    pub will: Option<PendingWill>,
}

/// Commands to the router.
#[derive(Debug)]
pub enum Command {
    /// A client connects.
    Connect(Box<ConnectRequest>),
    /// Route a message to subscribers and the retained store.
    Publish {
        /// The message.
        message: Arc<Message>,
        /// The publishing session, throttled if a subscriber is congested; `None` for the node's own.
        from: Option<SessionKey>,
        /// The acknowledgement (PUBACK, PUBREC) to put into the publisher's mailbox once the message
        /// and its copies for persistent sessions are durable. `None` when the connection sends it.
        ack: Option<Packet>,
    },
    /// A connection's mailbox has room again after the router set [`LinkFlow::wants_drain`].
    Drained {
        /// The session.
        key: SessionKey,
    },
    /// Add subscriptions of a session, then send it matching retained messages.
    Subscribe {
        /// The session.
        key: SessionKey,
        /// The subscriptions, as the session accepted them.
        requests: Vec<SubscribeRequest>,
    },
    /// Remove subscriptions of a session.
    Unsubscribe {
        /// The session.
        key: SessionKey,
        /// The subscriptions to remove.
        subscriptions: Vec<Subscription>,
    },
    /// Ends the connection of `client_id`, if it is online, with DISCONNECT `reason` (for MQTT 5) —
    /// an operator's or the node's own decision, such as a quarantine.
    Kick {
        /// The client.
        client_id: Arc<str>,
        /// The reason, e.g. 0x98 Administrative action.
        reason: ReasonCode,
    },
    /// A connection ended.
    Disconnected(Box<Disconnected>),
    /// Reports counts for `$SYS` and the API.
    Stats(oneshot::Sender<RouterStats>),
    /// Keeps a retained message that came from another node (an empty payload removes the topic's),
    /// without delivering it: subscribers got it, if they wanted it, on its way.
    Retain(Arc<Message>),
    /// Answers the retained messages matching a filter (not expired).
    Retained {
        /// The filter.
        filter: TopicFilter,
        /// Where the answer goes.
        reply: oneshot::Sender<Vec<Arc<Message>>>,
    },
    /// Answers, for each of these clients, the messages queued and in flight in its session while
    /// it is offline; `None` for a client that is online or has no session.
    OfflineQueues {
        /// The clients.
        client_ids: Vec<Arc<str>>,
        /// Where the answer goes, in the order of `client_ids`.
        reply: oneshot::Sender<Vec<Option<(usize, usize)>>>,
    },
    /// Stops the router after the commands before it; sent by the node once its connections ended.
    Stop,
}

/// Counts the router owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RouterStats {
    /// Sessions known (online and offline).
    pub sessions: usize,
    /// Sessions with a client connected.
    pub online: usize,
    /// Subscriptions in the trie.
    pub subscriptions: usize,
    /// Retained messages.
    pub retained: usize,
}

/// A cheap, cloneable sender of commands to the router.
#[derive(Debug, Clone)]
pub struct RouterHandle {
    tx: mpsc::Sender<Command>,
    /// The flow of the node's own messages (`from: None`): throttled like a client's.
    node_flow: Arc<LinkFlow>,
}

/// The router has stopped; the node is shutting down.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("router has stopped")]
pub struct RouterGone;

impl RouterHandle {
    /// Sends a command, waiting while the channel is full (back-pressure on the caller).
    ///
    /// # Errors
    /// [`RouterGone`] when the router has stopped.
    ///
    /// # Cancel safety
    /// Cancel safe: a cancelled call sent nothing.
    pub async fn send(&self, cmd: Command) -> Result<(), RouterGone> {
        self.tx.send(cmd).await.map_err(|_| RouterGone)
    }

    /// Sends a command from a thread outside the runtime (a worker thread), blocking while the
    /// channel is full. Must not be called from within the runtime.
    ///
    /// # Errors
    /// [`RouterGone`] when the router has stopped.
    pub fn blocking_send(&self, cmd: Command) -> Result<(), RouterGone> {
        self.tx.blocking_send(cmd).map_err(|_| RouterGone)
    }

    /// The flow control of the node's own messages (the mesh, uplinks, rules, the API): set while a
    /// subscriber of such a QoS 1/2 message is congested. A source of many acknowledged messages
    /// waits for it with [`LinkFlow::wait_unblocked`] before sending more, as a client's connection
    /// stops reading; a source that does not wait sees what outruns the limit dropped.
    pub fn node_flow(&self) -> &Arc<LinkFlow> {
        &self.node_flow
    }

    /// Asks for the router's counts.
    ///
    /// # Errors
    /// [`RouterGone`] when the router has stopped.
    pub async fn stats(&self) -> Result<RouterStats, RouterGone> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Stats(tx)).await?;
        rx.await.map_err(|_| RouterGone)
    }

    /// Asks for the messages queued and in flight in the sessions of offline clients (see
    /// [`Command::OfflineQueues`]).
    ///
    /// # Errors
    /// [`RouterGone`] when the router has stopped.
    pub async fn offline_queues(
        &self,
        client_ids: Vec<Arc<str>>,
    ) -> Result<Vec<Option<(usize, usize)>>, RouterGone> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::OfflineQueues { client_ids, reply: tx }).await?;
        rx.await.map_err(|_| RouterGone)
    }
}

/// Where a client's session is.
#[derive(Debug)]
enum State {
    /// A connection owns the session.
    Online {
        conn_id: u64,
        mailbox: Arc<Mailbox>,
        kick: Option<oneshot::Sender<ReasonCode>>,
        flow: Arc<LinkFlow>,
        /// QoS 1/2 deliveries that found the mailbox full (or closed: the connection is ending), in
        /// order; at most `max_queued` plus the command channel's capacity. Moved to the mailbox on [`Command::Drained`], or to the session
        /// when the connection ends.
        overflow: VecDeque<Delivery>,
        /// Publishers throttled until `overflow` is empty.
        waiters: Vec<Arc<LinkFlow>>,
        /// A connect waiting for this connection to hand the session back (take-over).
        successor: Option<Box<ConnectRequest>>,
    },
    /// No connection; the router holds the session until it expires.
    Offline { session: Box<Session>, expires_at: Option<Instant> },
}

#[derive(Debug)]
struct Client {
    client_id: Arc<str>,
    state: State,
    /// A will waiting for its delay to pass.
    will: Option<(Arc<Message>, Instant)>,
    /// Session Expiry Interval: non-zero sessions are kept in the store.
    expiry: u32,
    /// Whether the connected client speaks MQTT 5.
    v5: bool,
}

impl Client {
    fn new(client_id: Arc<str>, state: State, expiry: u32, v5: bool) -> Self {
        Self { client_id, state, will: None, expiry, v5 }
    }

    fn persistent(&self) -> bool {
        self.expiry > 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    Will,
    Expiry,
}

/// Per-subscription data in the trie.
#[derive(Debug, Clone)]
struct SubData {
    entry: SubscriptionEntry,
}

/// The router's state. Build with [`Router::new`], then run [`Router::run`] on a task.
pub struct Router {
    config: RouterConfig,
    rx: mpsc::Receiver<Command>,
    metrics: Arc<Metrics>,
    clients: HashMap<SessionKey, Client>,
    by_id: HashMap<Arc<str>, SessionKey>,
    next_key: SessionKey,
    trie: SubscriptionTrie<SessionKey, SubData>,
    retained: TopicTree<Arc<Message>>,
    /// Round-robin cursors of shared subscription groups.
    shared_cursor: HashMap<SharedGroupId, usize>,
    timers: BTreeMap<(Instant, u64), (SessionKey, Timer)>,
    timer_seq: u64,
    /// Reused per publish: matched sessions and what each gets.
    scratch: Vec<(SessionKey, QoS, bool, Vec<u32>)>,
    scratch_index: HashMap<SessionKey, usize>,
    /// Reused per publish: the deliveries of one message.
    targets: Vec<(SessionKey, Delivery)>,
    started: Instant,
    /// Where sessions, their queues, retained messages and wills are kept; `None`: memory only.
    store: Option<Store>,
    /// Sequence number of the next delivery kept in the store.
    next_seq: u64,
    /// The flow of the node's own messages, shared with every [`RouterHandle`].
    node_flow: Arc<LinkFlow>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").field("clients", &self.clients.len()).finish_non_exhaustive()
    }
}

impl Router {
    /// Creates the router and the handle to reach it.
    pub fn new(config: RouterConfig, metrics: Arc<Metrics>) -> (Self, RouterHandle) {
        let (tx, rx) = mpsc::channel(config.channel_capacity);
        let node_flow = Arc::new(LinkFlow::default());
        let router = Self {
            config,
            rx,
            metrics,
            clients: HashMap::new(),
            by_id: HashMap::new(),
            next_key: 1,
            trie: SubscriptionTrie::new(),
            retained: TopicTree::new(),
            shared_cursor: HashMap::new(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            scratch: Vec::new(),
            scratch_index: HashMap::new(),
            targets: Vec::new(),
            started: Instant::now(),
            store: None,
            next_seq: 1,
            node_flow: node_flow.clone(),
        };
        (router, RouterHandle { tx, node_flow })
    }

    /// Creates a router that keeps its state in `store`, starting from what the store held: sessions
    /// (with their subscriptions, queues and messages in flight), retained messages and wills.
    ///
    /// Sessions whose expiry passed while the node was down end now; wills whose delay passed are
    /// published now, the others wait for the rest of their delay. A session that was online when the
    /// node stopped counts as disconnected from the node's last heartbeat.
    pub fn with_store(
        config: RouterConfig,
        metrics: Arc<Metrics>,
        store: Store,
        recovered: Recovered,
    ) -> (Self, RouterHandle) {
        let (mut router, handle) = Self::new(config, metrics);
        router.store = Some(store);
        router.restore(recovered, Instant::now(), unix_ms(SystemTime::now()));
        (router, handle)
    }

    fn restore(&mut self, recovered: Recovered, now: Instant, wall: u64) {
        let Recovered { sessions, retained, wills, next_seq, alive_at, .. } = recovered;
        self.next_seq = next_seq.max(1);
        let alive = alive_at.unwrap_or(wall);
        let at_instant = |ms: u64| now.checked_add(Duration::from_millis(ms.saturating_sub(wall)));
        for message in retained {
            let topic = message.topic.clone();
            self.retained.insert(&topic, Arc::new(message));
        }
        let (mut restored, mut ended) = (0usize, 0usize);
        let mut gone_at = HashMap::new();
        for stored in sessions {
            let record = stored.record;
            let client_id = record.client_id.clone();
            let left = record.disconnected_at.unwrap_or(alive);
            let ends_at = (record.expiry_interval != u32::MAX)
                .then(|| left.saturating_add(u64::from(record.expiry_interval) * 1000));
            if record.expiry_interval == 0 || ends_at.is_some_and(|at| at <= wall) {
                self.write(|b| b.remove_session(&client_id));
                ended += 1;
                continue;
            }
            let mut inflight = Vec::new();
            let mut queued = Vec::new();
            for d in stored.deliveries {
                match d.flight.and_then(|(id, phase)| Some((PacketId::new(id)?, phase))) {
                    Some((id, phase)) => inflight.push((id, phase == Phase::Released, d.delivery)),
                    None => queued.push(d.delivery),
                }
            }
            let session = Session::restore(
                client_id.clone(),
                self.config.limits.clone(),
                record.expiry_interval,
                record.subscriptions,
                inflight,
                queued,
                stored.incoming,
            );
            let key = self.next_key;
            self.next_key += 1;
            for entry in session.subscriptions().values() {
                self.trie_insert(&entry.subscription, key, SubData { entry: entry.clone() });
            }
            let expires_at = ends_at.and_then(at_instant);
            if let Some(at) = expires_at {
                self.add_timer(at, key, Timer::Expiry);
            }
            let state = State::Offline { session: Box::new(session), expires_at };
            self.by_id.insert(client_id.clone(), key);
            gone_at.insert(client_id.clone(), left);
            self.clients.insert(key, Client::new(client_id, state, record.expiry_interval, false));
            restored += 1;
        }
        let mut due = Vec::new();
        for (client_id, will) in wills {
            let key = self.by_id.get(&client_id).copied();
            let delay = key.and_then(|k| self.clients.get(&k)).map_or(0, |c| will.delay.min(c.expiry));
            let left = gone_at.get(&client_id).copied().unwrap_or(alive);
            let publish_at = will.publish_at.unwrap_or(left.saturating_add(u64::from(delay) * 1000));
            match (key, at_instant(publish_at)) {
                (Some(key), Some(at)) if publish_at > wall => {
                    let was_online = will.publish_at.is_none();
                    let will = WillRecord { publish_at: Some(publish_at), ..will };
                    if was_online {
                        // Its due time is fixed now, so a second crash does not postpone it.
                        self.write(|b| b.put_will(&client_id, &will, now));
                    }
                    if let Some(client) = self.clients.get_mut(&key) {
                        client.will = Some((Arc::new(will.message), at));
                    }
                    self.add_timer(at, key, Timer::Will);
                }
                _ => due.push((client_id, will.message)),
            }
        }
        let wills_published = due.len();
        for (client_id, message) in due {
            self.write(|b| b.remove_will(&client_id));
            self.publish(Arc::new(message), None, None, now);
        }
        info!(
            sessions = restored,
            expired = ended,
            retained = self.retained.len(),
            wills_published,
            "state restored from the store"
        );
    }

    /// Writes one batch to the store, if there is one. A failure is logged; the store reports itself
    /// unhealthy and refuses acknowledgements until it recovers.
    fn write(&self, f: impl FnOnce(&mut Batch)) {
        let Some(store) = &self.store else { return };
        let mut batch = store.batch();
        f(&mut batch);
        if batch.is_empty() {
            return;
        }
        if let Err(e) = batch.commit() {
            error!(error = %e, "store write failed");
        }
    }

    /// Writes what an offline session reported about its stored deliveries (drops, mostly).
    fn write_persist(&self, client_id: &str, actions: &[Action]) {
        if actions.is_empty() {
            return;
        }
        self.write(|b| apply_reports(b, client_id, actions));
    }

    /// Runs until every [`RouterHandle`] is dropped.
    ///
    /// Commands are handled one at a time in arrival order; timers (will delays, session expiry, `$SYS`)
    /// fire between commands.
    pub async fn run(mut self) {
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sys_tick = self.config.sys_interval.map(|every| {
            let mut t = tokio::time::interval(every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        let mut heartbeat = self.store.as_ref().map(|_| {
            let mut t = tokio::time::interval(HEARTBEAT);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        loop {
            let next_timer = self.timers.keys().next().map(|(at, _)| *at);
            tokio::select! {
                cmd = self.rx.recv() => {
                    let Some(cmd) = cmd else { break };
                    if self.handle(cmd).is_break() {
                        break;
                    }
                    // Drain what is already waiting before looking at timers again.
                    let mut stop = false;
                    for _ in 0..256 {
                        match self.rx.try_recv() {
                            Ok(cmd) => if self.handle(cmd).is_break() {
                                stop = true;
                                break;
                            },
                            Err(_) => break,
                        }
                    }
                    if stop {
                        break;
                    }
                }
                () = sleep_until_opt(next_timer) => self.fire_timers(Instant::now()),
                _ = tick_opt(&mut sys_tick) => self.publish_sys(Instant::now()),
                _ = housekeeping.tick() => self.sweep_expired_retained(Instant::now()),
                _ = tick_opt(&mut heartbeat) => {
                    self.write(|b| b.set_alive(unix_ms(SystemTime::now())));
                }
            }
        }
        debug!(sessions = self.clients.len(), "router stopped");
    }

    /// Handles one command, as [`Router::run`] does for each it receives. For embedding the router in
    /// another loop and for benchmarks; `Break` means [`Command::Stop`].
    pub fn handle(&mut self, cmd: Command) -> ControlFlow<()> {
        let now = Instant::now();
        match cmd {
            Command::Connect(req) => self.connect(*req, now),
            Command::Publish { message, from, ack } => self.publish(message, from, ack, now),
            Command::Retain(message) => self.retain_only(&message, now),
            Command::Retained { filter, reply } => {
                let mut found = Vec::new();
                self.retained.match_filter(&filter, |_, m| {
                    if !m.is_expired(now) {
                        found.push(m.clone());
                    }
                });
                let _ = reply.send(found);
            }
            Command::Drained { key } => self.drained(key),
            Command::Subscribe { key, requests } => self.subscribe(key, requests, now),
            Command::Unsubscribe { key, subscriptions } => {
                for sub in &subscriptions {
                    self.trie_remove(sub, key);
                }
            }
            Command::Kick { client_id, reason } => {
                let client = self.by_id.get(&client_id).and_then(|key| self.clients.get_mut(key));
                if let Some(Client { state: State::Online { kick, .. }, .. }) = client {
                    if let Some(kick) = kick.take() {
                        debug!(%client_id, %reason, "connection ended by the node");
                        let _ = kick.send(reason);
                    }
                }
            }
            Command::Disconnected(d) => self.disconnected(*d, now),
            Command::Stats(reply) => {
                let _ = reply.send(self.stats());
            }
            Command::OfflineQueues { client_ids, reply } => {
                let found = client_ids
                    .iter()
                    .map(|id| match self.by_id.get(id).and_then(|key| self.clients.get(key)) {
                        Some(Client { state: State::Offline { session, .. }, .. }) => {
                            Some((session.queued(), session.inflight()))
                        }
                        _ => None,
                    })
                    .collect();
                let _ = reply.send(found);
            }
            Command::Stop => return ControlFlow::Break(()),
        }
        ControlFlow::Continue(())
    }

    fn stats(&self) -> RouterStats {
        RouterStats {
            sessions: self.clients.len(),
            online: self.clients.values().filter(|c| matches!(c.state, State::Online { .. })).count(),
            subscriptions: self.trie.len(),
            retained: self.retained.len(),
        }
    }

    fn connect(&mut self, req: ConnectRequest, now: Instant) {
        let Some(&key) = self.by_id.get(&req.client_id) else {
            let key = self.next_key;
            self.next_key += 1;
            let (link, waiting) = split(req);
            self.by_id.insert(waiting.client_id.clone(), key);
            let session = Box::new(Session::new(waiting.client_id.clone(), self.config.limits.clone()));
            if waiting.expiry > 0 {
                let record = session_record(&session, waiting.expiry, None);
                self.write(|b| b.put_session(&record));
            }
            let client = Client::new(waiting.client_id, online(link), waiting.expiry, waiting.v5);
            self.clients.insert(key, client);
            let _ = waiting.reply.send(ConnectReply { key, session, session_present: false });
            return;
        };
        let Some(client) = self.clients.get_mut(&key) else { return };
        match &mut client.state {
            State::Online { kick, successor, .. } => {
                debug!(client_id = %req.client_id, "session taken over");
                if let Some(kick) = kick.take() {
                    let _ = kick.send(ReasonCode::SESSION_TAKEN_OVER);
                }
                // A third connect while a take-over is under way replaces the second, which is dropped
                // (its reply channel closes, so its connection ends).
                *successor = Some(Box::new(req));
            }
            State::Offline { .. } => {
                let (link, waiting) = split(req);
                let State::Offline { session, .. } = std::mem::replace(&mut client.state, online(link))
                else {
                    return;
                };
                let fresh = waiting.clean_start;
                self.resume(key, session, waiting, fresh, now);
            }
        }
    }

    /// Hands a session to a connecting client whose entry is already `Online`: the old one, or a new one
    /// when `fresh` (Clean Start, or the old session ended with the connection it was taken from).
    fn resume(
        &mut self,
        key: SessionKey,
        mut session: Box<Session>,
        req: Waiting,
        fresh: bool,
        now: Instant,
    ) {
        let Some(client) = self.clients.get_mut(&key) else { return };
        let pending_will = client.will.take();
        client.expiry = req.expiry;
        client.v5 = req.v5;
        let session_present = !fresh;
        if fresh {
            // The old session ends: its will goes out now, if its delay was still running.
            self.write(|b| b.remove_session(&req.client_id));
            if let Some((will, _)) = pending_will {
                self.publish(will, None, None, now);
            }
            self.drop_subscriptions(key, &session);
            session = Box::new(Session::new(req.client_id.clone(), self.config.limits.clone()));
        } else if pending_will.is_some() {
            // A will still waiting is cancelled: the client came back in time (MQTT-3.1.3-9).
            self.write(|b| b.remove_will(&req.client_id));
        }
        // A session resumed with expiry 0 ends with this connection: the store forgets it now.
        if req.expiry > 0 {
            let record = session_record(&session, req.expiry, None);
            self.write(|b| b.put_session(&record));
        } else if !fresh {
            self.write(|b| b.remove_session(&req.client_id));
        }
        if req.reply.send(ConnectReply { key, session, session_present }).is_err() {
            trace!(client_id = %req.client_id, "connection went away before its CONNACK");
        }
    }

    fn disconnected(&mut self, d: Disconnected, now: Instant) {
        let Some(client) = self.clients.get_mut(&d.key) else { return };
        let State::Online { conn_id, .. } = &client.state else { return };
        if *conn_id != d.conn_id {
            return;
        }
        let State::Online { overflow, successor, waiters, .. } =
            std::mem::replace(&mut client.state, State::Offline { session: d.session, expires_at: None })
        else {
            return;
        };
        for waiter in waiters {
            waiter.release();
        }
        let State::Offline { session, .. } = &mut client.state else { return };
        let mut reports = Vec::new();
        session.observe(wants_event(&self.config.taps, NodeEventKind::MessageDropped));
        for delivery in overflow {
            if session.deliver(delivery, now, &mut reports) == m2m_session::DeliveryOutcome::Dropped {
                Metrics::add(&self.metrics.messages_dropped, 1);
            }
        }
        observe_reports(&self.config.taps, &client.client_id, &reports);
        let expiry = session.expiry_interval;
        client.expiry = expiry;
        let client_id = client.client_id.clone();
        let record = (expiry > 0).then(|| session_record(session, expiry, Some(unix_ms(SystemTime::now()))));
        let will_delay = d.will.as_ref().map(|w| w.delay.min(expiry));
        // One batch: the session as it left, its dropped deliveries, its will. A session with expiry 0
        // is removed whole by `end_session` below.
        self.write(|b| {
            if let Some(record) = &record {
                b.put_session(record);
                apply_reports(b, &client_id, &reports);
            }
            match (&d.will, will_delay) {
                (Some(will), Some(delay)) if delay > 0 && successor.is_none() => {
                    let at = unix_ms(SystemTime::now()).saturating_add(u64::from(delay) * 1000);
                    let record = WillRecord { message: will.message.clone(), delay, publish_at: Some(at) };
                    b.put_will(&client_id, &record, now);
                }
                _ => b.remove_will(&client_id),
            }
        });

        if let Some(req) = successor {
            let (link, req) = split(*req);
            let Some(client) = self.clients.get_mut(&d.key) else { return };
            let State::Offline { session, .. } = std::mem::replace(&mut client.state, online(link)) else {
                return;
            };
            let session_ends = req.clean_start || expiry == 0;
            if let Some(will) = d.will {
                if will.delay == 0 || session_ends {
                    self.publish(Arc::new(will.message), None, None, now);
                }
            }
            // With a Session Expiry Interval of 0 the old session ended with its connection, so even
            // a client asking to resume it starts afresh (MQTT 5.0 §3.1.2.11.2).
            self.resume(d.key, session, req, session_ends, now);
            return;
        }

        if let Some(will) = d.will {
            let delay = will.delay.min(expiry);
            if delay == 0 {
                self.publish(Arc::new(will.message), None, None, now);
            } else if let Some(at) = now.checked_add(Duration::from_secs(u64::from(delay))) {
                if let Some(client) = self.clients.get_mut(&d.key) {
                    client.will = Some((Arc::new(will.message), at));
                }
                self.add_timer(at, d.key, Timer::Will);
            }
        }
        if expiry == 0 {
            self.end_session(d.key, now);
        } else if expiry != u32::MAX {
            if let Some(at) = now.checked_add(Duration::from_secs(u64::from(expiry))) {
                if let Some(Client { state: State::Offline { expires_at, .. }, .. }) =
                    self.clients.get_mut(&d.key)
                {
                    *expires_at = Some(at);
                }
                self.add_timer(at, d.key, Timer::Expiry);
            }
        }
        trace!(%client_id, expiry, "client disconnected");
    }

    /// Ends an offline session: its will (if still waiting) goes out, its subscriptions go away.
    fn end_session(&mut self, key: SessionKey, now: Instant) {
        let Some(client) = self.clients.remove(&key) else { return };
        self.by_id.remove(&client.client_id);
        self.write(|b| b.remove_session(&client.client_id));
        if let Some((will, _)) = client.will {
            self.publish(will, None, None, now);
        }
        if let State::Offline { session, .. } = client.state {
            let dropped = (session.queued() + session.held()) as u64;
            Metrics::add(&self.metrics.messages_dropped, dropped);
            self.drop_subscriptions(key, &session);
        }
        debug!(client_id = %client.client_id, "session ended");
    }

    fn drop_subscriptions(&mut self, key: SessionKey, session: &Session) {
        for entry in session.subscriptions().values() {
            self.trie_remove(&entry.subscription, key);
        }
    }

    fn trie_insert(&mut self, sub: &Subscription, key: SessionKey, data: SubData) {
        if self.trie.insert(sub, key, data).is_none() {
            if let Some(interest) = &self.config.interest {
                interest.add(sub);
            }
        }
    }

    fn trie_remove(&mut self, sub: &Subscription, key: SessionKey) {
        if self.trie.remove(sub, &key).is_some() {
            if let Some(interest) = &self.config.interest {
                interest.remove(sub);
            }
        }
    }

    fn add_timer(&mut self, at: Instant, key: SessionKey, timer: Timer) {
        self.timer_seq += 1;
        self.timers.insert((at, self.timer_seq), (key, timer));
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((at, _), (key, timer)) = entry.remove_entry();
            let Some(client) = self.clients.get_mut(&key) else { continue };
            match timer {
                Timer::Will => {
                    if client.will.as_ref().is_some_and(|(_, due)| *due == at) {
                        if let Some((will, _)) = client.will.take() {
                            let client_id = client.client_id.clone();
                            self.write(|b| b.remove_will(&client_id));
                            self.publish(will, None, None, now);
                        }
                    }
                }
                Timer::Expiry => {
                    if matches!(client.state, State::Offline { expires_at: Some(due), .. } if due == at) {
                        self.end_session(key, now);
                    }
                }
            }
        }
    }

    fn subscribe(&mut self, key: SessionKey, requests: Vec<SubscribeRequest>, now: Instant) {
        if !self.clients.contains_key(&key) {
            return;
        }
        let mut retained = Vec::new();
        for req in requests {
            let entry = &req.entry;
            self.trie_insert(&entry.subscription, key, SubData { entry: entry.clone() });
            let Subscription::Plain(filter) = &entry.subscription else {
                // Retained messages are not sent to shared subscriptions (MQTT 5.0 §4.8.2).
                continue;
            };
            let send = match entry.options.retain_handling {
                RetainHandling::SendAtSubscribe => true,
                RetainHandling::SendIfNew => req.is_new,
                RetainHandling::DoNotSend => false,
            };
            if !send {
                continue;
            }
            let ids: Vec<u32> = entry.id.into_iter().collect();
            let qos = entry.options.qos;
            self.retained.match_filter(filter, |_, message| {
                if !message.is_expired(now) {
                    retained.push(Delivery {
                        message: message.clone(),
                        qos: message.qos.min(qos),
                        retain: true,
                        subscription_ids: ids.clone(),
                        stored: None,
                    });
                }
            });
        }
        let mut targets: Vec<(SessionKey, Delivery)> = retained.into_iter().map(|d| (key, d)).collect();
        if let Err(e) = self.keep(&mut targets, |_| {}, now) {
            // They are still sent now; only a restart before they are acknowledged would lose them.
            debug!(error = %e, "retained messages for a new subscription not kept in the store");
        }
        for (key, delivery) in targets {
            self.deliver(key, delivery, now);
        }
    }

    /// Routes a message, keeps it for persistent sessions (and as retained) in the store, then
    /// acknowledges it to its publisher once that is durable.
    ///
    /// If the store refuses the write, a QoS 1/2 message is not routed at all: the publisher gets a
    /// refusal (MQTT 5: 0x97 Quota exceeded; 3.1.1 has no negative acknowledgement, so none) and sends
    /// it again later. QoS 0 messages are routed in any case.
    fn publish(
        &mut self,
        message: Arc<Message>,
        from: Option<SessionKey>,
        ack: Option<Packet>,
        now: Instant,
    ) {
        let mut targets = std::mem::take(&mut self.targets);
        targets.clear();
        self.route(&message, from, &mut targets);
        let incoming = match (&ack, from.and_then(|k| self.clients.get(&k))) {
            (Some(Packet::PubRec(a)), Some(c)) if c.persistent() => {
                Some((c.client_id.clone(), a.packet_id.get()))
            }
            _ => None,
        };
        // The node's own `$SYS` topics are published afresh after a restart; they are not kept.
        let keep_retained = message.retain && !message.topic.is_sys();
        let kept = self.keep(
            &mut targets,
            |b| {
                if keep_retained {
                    if message.payload.is_empty() {
                        b.remove_retained(message.topic.as_str());
                    } else {
                        b.put_retained(&message, now);
                    }
                }
                if let Some((client_id, id)) = &incoming {
                    b.put_incoming(client_id, *id);
                }
            },
            now,
        );
        if let Err(e) = &kept {
            if message.qos > QoS::AtMostOnce {
                debug!(topic = %message.topic, error = %e, "publish refused: the store cannot keep it");
                Metrics::add(&self.metrics.publishes_refused, 1);
                targets.clear();
                self.targets = targets;
                if let Some(ack) = ack {
                    self.acknowledge(from, ack, false);
                }
                return;
            }
            for (_, d) in &mut targets {
                d.stored = None;
            }
        }
        if message.retain {
            if message.payload.is_empty() {
                self.retained.remove(&message.topic);
            } else {
                self.retained.insert(&message.topic, message.clone());
            }
        }
        for tap in &self.config.taps {
            tap.message(&message);
        }
        if targets.is_empty() && !message.topic.is_sys() {
            emit_event(&self.config.taps, NodeEventKind::MessageDropped, || NodeEvent::MessageDropped {
                client_id: None,
                message: message.clone(),
                reason: "no_subscribers",
            });
        }
        let publisher_flow = match from.map(|k| self.clients.get(&k)) {
            Some(Some(Client { state: State::Online { flow, .. }, .. })) => Some(flow.clone()),
            Some(_) => None,
            // The node's own message: its sources share one flow.
            None => Some(self.node_flow.clone()),
        };
        for (key, delivery) in targets.drain(..) {
            // A publisher is never throttled by its own subscriptions: it could not read the
            // acknowledgements that would unblock it.
            let throttle = publisher_flow.as_ref().filter(|_| Some(key) != from);
            self.deliver_from(key, delivery, throttle, now);
        }
        self.targets = targets;
        if let Some(ack) = ack {
            self.acknowledge(from, ack, true);
        }
    }

    /// Puts an acknowledgement into the publisher's mailbox once everything written so far is durable,
    /// in the order the publishes came; `kept: false` (or a failed sync) turns it into a refusal.
    fn acknowledge(&self, from: Option<SessionKey>, ack: Packet, kept: bool) {
        let Some(Client { state: State::Online { mailbox, .. }, v5, .. }) =
            from.and_then(|k| self.clients.get(&k))
        else {
            return;
        };
        let mailbox = mailbox.clone();
        let v5 = *v5;
        let send = move |ok: bool| {
            if ok {
                mailbox.push_packet(ack);
            } else if v5 {
                mailbox.push_packet(refused(ack));
            }
        };
        match &self.store {
            Some(store) => store.on_durable(move |r| send(kept && r.is_ok())),
            None => send(kept),
        }
    }

    /// Gives a sequence number to each delivery a persistent session keeps (QoS 1/2; QoS 0 only for an
    /// offline session when the node queues QoS 0) and writes them, with `extra`, in one batch.
    fn keep(
        &mut self,
        targets: &mut [(SessionKey, Delivery)],
        extra: impl FnOnce(&mut Batch),
        now: Instant,
    ) -> Result<(), m2m_store::StoreError> {
        let Some(store) = &self.store else { return Ok(()) };
        let mut batch = store.batch();
        extra(&mut batch);
        let queue_qos0 = self.config.limits.queue_qos0_offline;
        for (key, d) in targets.iter_mut() {
            // Decided without a lookup for the common case, a QoS 0 fan-out.
            if d.qos == QoS::AtMostOnce && !queue_qos0 {
                continue;
            }
            let Some(client) = self.clients.get(key) else { continue };
            if !client.persistent() {
                continue;
            }
            let offline = matches!(client.state, State::Offline { .. });
            if d.qos == QoS::AtMostOnce && !offline {
                continue;
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            d.stored = Some(seq);
            batch.put_delivery(&client.client_id, seq, d, now);
        }
        if batch.is_empty() {
            return Ok(());
        }
        batch.commit()
    }

    /// Fans a message out: one copy per session, at the highest QoS of its matching subscriptions, with
    /// every subscription identifier (MQTT 5.0 §3.3.4); one member per shared group.
    fn route(
        &mut self,
        message: &Arc<Message>,
        from: Option<SessionKey>,
        targets: &mut Vec<(SessionKey, Delivery)>,
    ) {
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut index = std::mem::take(&mut self.scratch_index);
        scratch.clear();
        index.clear();
        let publisher_key =
            from.or_else(|| message.publisher.as_ref().and_then(|id| self.by_id.get(id)).copied());
        let mut merge = |key: SessionKey, data: &SubData| {
            let options = &data.entry.options;
            if options.no_local && Some(key) == publisher_key {
                return;
            }
            let qos = message.qos.min(options.qos);
            let retain = message.retain && options.retain_as_published;
            match index.get(&key) {
                Some(&i) => {
                    let slot = &mut scratch[i];
                    slot.1 = slot.1.max(qos);
                    slot.2 |= retain;
                    slot.3.extend(data.entry.id);
                }
                None => {
                    index.insert(key, scratch.len());
                    scratch.push((key, qos, retain, data.entry.id.into_iter().collect()));
                }
            }
        };
        let clients = &self.clients;
        let cursors = &mut self.shared_cursor;
        self.trie.for_each_match(&message.topic, |m| match m {
            Match::Plain(key, data) => merge(*key, data),
            Match::Shared(group, members) => {
                if members.is_empty() {
                    return;
                }
                if !cursors.contains_key(group) {
                    cursors.insert(group.clone(), 0);
                }
                let Some(cursor) = cursors.get_mut(group) else { return };
                // Prefer an online member, starting from the cursor.
                let n = members.len();
                let start = *cursor % n;
                let pick = (0..n)
                    .map(|i| (start + i) % n)
                    .find(|&i| {
                        matches!(clients.get(&members[i].0).map(|c| &c.state), Some(State::Online { .. }))
                    })
                    .unwrap_or(start);
                *cursor = pick + 1;
                let (key, data) = &members[pick];
                merge(*key, data);
            }
        });
        for (key, qos, retain, ids) in scratch.drain(..) {
            let delivery =
                Delivery { message: message.clone(), qos, retain, subscription_ids: ids, stored: None };
            targets.push((key, delivery));
        }
        self.scratch = scratch;
        self.scratch_index = index;
    }

    fn deliver(&mut self, key: SessionKey, delivery: Delivery, now: Instant) {
        self.deliver_from(key, delivery, None, now);
    }

    /// Puts one delivery into a session. For an online client with a full mailbox, QoS 0 is dropped
    /// and QoS 1/2 waits in the overflow while `publisher` (if any) is throttled.
    fn deliver_from(
        &mut self,
        key: SessionKey,
        delivery: Delivery,
        publisher: Option<&Arc<LinkFlow>>,
        now: Instant,
    ) {
        let Some(client) = self.clients.get_mut(&key) else { return };
        // A publisher learns it is throttled only when the router reaches its first congested delivery;
        // what it sent before that is already in the command channel. Room for that backlog keeps
        // acknowledged QoS 1/2 messages from being dropped while the throttle takes hold.
        let max_overflow = self.config.limits.max_queued + self.config.channel_capacity;
        let mut reports = Vec::new();
        let observe = wants_event(&self.config.taps, NodeEventKind::MessageDropped);
        // The message of a delivery dropped here (the session reports its own drops).
        let mut lost = None;
        let dropped = match &mut client.state {
            State::Online { mailbox, overflow, flow, waiters, .. } => {
                let delivery = if overflow.is_empty() {
                    match mailbox.try_push(delivery) {
                        Ok(()) => None,
                        Err(PushError::Full(d) | PushError::Closed(d)) => Some(d),
                    }
                } else {
                    Some(delivery)
                };
                match delivery {
                    None => false,
                    Some(d) if d.qos == QoS::AtMostOnce && !mailbox.is_closed() => {
                        lost = Some(d.message);
                        true
                    }
                    Some(d) if overflow.len() >= max_overflow => {
                        if let Some(seq) = d.stored {
                            reports.push(Action::Persist(Persist::Done { seq }));
                        }
                        lost = Some(d.message);
                        true
                    }
                    Some(d) => {
                        overflow.push_back(d);
                        flow.wants_drain.store(true, Ordering::Release);
                        if let Some(p) = publisher {
                            if !waiters.iter().any(|w| Arc::ptr_eq(w, p)) {
                                p.blocked.fetch_add(1, Ordering::AcqRel);
                                waiters.push(p.clone());
                            }
                        }
                        false
                    }
                }
            }
            State::Offline { session, .. } => {
                session.observe(observe);
                session.deliver(delivery, now, &mut reports) == m2m_session::DeliveryOutcome::Dropped
            }
        };
        if dropped {
            Metrics::add(&self.metrics.messages_dropped, 1);
            trace!(client_id = %client.client_id, "delivery dropped: queue full");
        }
        if observe {
            let client_id = &client.client_id;
            if let Some(message) = lost {
                emit_event(&self.config.taps, NodeEventKind::MessageDropped, || NodeEvent::MessageDropped {
                    client_id: Some(client_id.clone()),
                    message,
                    reason: "queue_full",
                });
            }
            observe_reports(&self.config.taps, client_id, &reports);
        }
        if !reports.is_empty() {
            let client_id = client.client_id.clone();
            self.write_persist(&client_id, &reports);
        }
    }

    fn retain_only(&mut self, message: &Arc<Message>, now: Instant) {
        if message.topic.is_sys() {
            return;
        }
        self.write(|b| {
            if message.payload.is_empty() {
                b.remove_retained(message.topic.as_str());
            } else {
                b.put_retained(message, now);
            }
        });
        if message.payload.is_empty() {
            self.retained.remove(&message.topic);
        } else {
            self.retained.insert(&message.topic, message.clone());
        }
    }

    /// Drops retained messages whose Message Expiry Interval has passed (MQTT 5.0 §3.3.2.3.3); they are
    /// already skipped when sent, this returns their memory.
    fn sweep_expired_retained(&mut self, now: Instant) {
        self.retained.retain(|_, message| !message.is_expired(now));
    }

    /// Moves overflow into a mailbox that has room again; releases throttled publishers once it is empty.
    fn drained(&mut self, key: SessionKey) {
        let Some(Client { state: State::Online { mailbox, overflow, flow, waiters, .. }, .. }) =
            self.clients.get_mut(&key)
        else {
            return;
        };
        while let Some(d) = overflow.pop_front() {
            if let Err(e) = mailbox.try_push(d) {
                let (PushError::Full(d) | PushError::Closed(d)) = e;
                overflow.push_front(d);
                break;
            }
        }
        if overflow.is_empty() {
            for waiter in waiters.drain(..) {
                waiter.release();
            }
        } else {
            flow.wants_drain.store(true, Ordering::Release);
        }
    }

    fn publish_sys(&mut self, now: Instant) {
        let stats = self.stats();
        let m = &self.metrics;
        let uptime = now.duration_since(self.started).as_secs();
        let mut values: Vec<(&str, String)> = vec![
            ("version", self.config.version.clone()),
            ("uptime", format!("{uptime} seconds")),
            ("clients/connected", Metrics::get(&m.connections_current).to_string()),
            ("clients/total", stats.sessions.to_string()),
            ("clients/disconnected", (stats.sessions - stats.online).to_string()),
            ("clients/accepted", Metrics::get(&m.connections_total).to_string()),
            ("clients/rejected", Metrics::get(&m.connections_rejected).to_string()),
            ("messages/received", m.received_total().to_string()),
            ("messages/sent", m.sent_total().to_string()),
            ("messages/dropped", Metrics::get(&m.messages_dropped).to_string()),
            ("subscriptions/count", stats.subscriptions.to_string()),
            ("retained messages/count", stats.retained.to_string()),
            ("bytes/received", Metrics::get(&m.bytes_received).to_string()),
            ("bytes/sent", Metrics::get(&m.bytes_sent).to_string()),
            ("messages/refused", Metrics::get(&m.publishes_refused).to_string()),
            ("clients/auth_failures", Metrics::get(&m.auth_failures).to_string()),
            ("access/denied", Metrics::get(&m.access_denied).to_string()),
        ];
        if let Some(store) = &self.store {
            values.push(("store/healthy", u8::from(store.is_healthy()).to_string()));
            values.push(("store/bytes", store.disk_space().to_string()));
        }
        for tap in &self.config.taps {
            tap.sys_values(&mut values);
        }
        for (suffix, value) in values {
            let Ok(topic) = TopicName::try_from(format!("$SYS/broker/{suffix}").as_str()) else { continue };
            let message = Message::new(topic, value.into_bytes(), QoS::AtMostOnce, true);
            self.publish(Arc::new(message), None, None, now);
        }
    }
}

/// What the store keeps of a session: its expiry and subscriptions; `disconnected_at` (unix ms) is
/// `None` while a client is connected.
pub fn session_record(session: &Session, expiry: u32, disconnected_at: Option<u64>) -> SessionRecord {
    SessionRecord {
        client_id: session.client_id().clone(),
        expiry_interval: expiry,
        disconnected_at,
        // Those set aside by an isolation are still the client's: they come back on release, or
        // after a restart (when the quarantine entry, if still there, sets them aside again).
        subscriptions: session
            .subscriptions()
            .iter()
            .chain(session.suspended())
            .map(|(f, e)| (f.clone(), e.clone()))
            .collect(),
    }
}

/// Applies one change a session reported about its stored deliveries to a batch.
pub fn apply_persist(batch: &mut Batch, client_id: &str, op: Persist) {
    match op {
        Persist::Sent { seq, id, .. } => batch.set_flight(client_id, seq, id.get(), Phase::Sent),
        Persist::Released { seq, id } => batch.set_flight(client_id, seq, id.get(), Phase::Released),
        Persist::Done { seq } => batch.remove_delivery(client_id, seq),
        Persist::IncomingReleased { id } => batch.remove_incoming(client_id, id.get()),
    }
}

/// Applies the [`Action::Persist`] reports among `actions` to a batch.
/// Gives the taps the deliveries and drops a session reported (while it was observed).
pub fn observe_reports(taps: &[Arc<dyn Tap>], client_id: &Arc<str>, actions: &[Action]) {
    for action in actions {
        match action {
            Action::Delivered { message, qos } => {
                emit_event(taps, NodeEventKind::MessageDelivered, || NodeEvent::MessageDelivered {
                    client_id: client_id.clone(),
                    message: message.clone(),
                    qos: *qos as u8,
                });
            }
            Action::Dropped { message, reason } => {
                emit_event(taps, NodeEventKind::MessageDropped, || NodeEvent::MessageDropped {
                    client_id: Some(client_id.clone()),
                    message: message.clone(),
                    reason: reason.as_str(),
                });
            }
            _ => {}
        }
    }
}

fn apply_reports(batch: &mut Batch, client_id: &str, actions: &[Action]) {
    for action in actions {
        if let Action::Persist(op) = action {
            apply_persist(batch, client_id, *op);
        }
    }
}

/// The acknowledgement of a publish the node could not keep: MQTT 5 reason 0x97 Quota exceeded.
fn refused(mut ack: Packet) -> Packet {
    if let Packet::PubAck(a) | Packet::PubRec(a) = &mut ack {
        a.reason_code = ReasonCode::QUOTA_EXCEEDED;
    }
    ack
}

fn online(link: ClientLink) -> State {
    State::Online {
        conn_id: link.conn_id,
        mailbox: link.mailbox,
        kick: Some(link.kick),
        flow: link.flow,
        overflow: VecDeque::new(),
        waiters: Vec::new(),
        successor: None,
    }
}

/// What a connect request still needs once its link is installed.
#[derive(Debug)]
struct Waiting {
    client_id: Arc<str>,
    clean_start: bool,
    expiry: u32,
    v5: bool,
    reply: oneshot::Sender<ConnectReply>,
}

fn split(req: ConnectRequest) -> (ClientLink, Waiting) {
    let ConnectRequest { client_id, clean_start, expiry, v5, link, reply } = req;
    (link, Waiting { client_id, clean_start, expiry, v5, reply })
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

async fn tick_opt(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[path = "router_tests.rs"]
mod tests;
