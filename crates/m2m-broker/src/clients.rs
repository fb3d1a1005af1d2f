//! The client directory: which clients are connected, which were (while their session lasts), and
//! what each connection has done, for the API and the console.
//!
//! A connection registers its client once CONNECT succeeded and marks it offline when it ends. Its
//! counters (messages and bytes in and out) are relaxed atomics the connection task updates as it
//! reads and writes, so the hot path takes no lock; the directory's own lock is taken on connect,
//! disconnect, SUBSCRIBE/UNSUBSCRIBE and reads only.
//!
//! What it does not do: it knows only the clients that connected since the node started (sessions
//! restored from the store appear once their client comes back), and it keeps an offline client
//! only while its session would last (a non-zero expiry, counted from when it went offline), at
//! most [`OFFLINE_LIMIT`] of them (the oldest are forgotten first).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use m2m_codec::ProtocolVersion;

/// How many offline clients the directory keeps at most by default; the oldest go first.
pub const OFFLINE_LIMIT: usize = 10_000;

/// How long at least between two rate samples of a client: reads closer together get the rates of
/// the last sample.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// How a client reached the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClientTransport {
    /// MQTT over plain TCP.
    Tcp,
    /// MQTT over TLS.
    Tls,
    /// MQTT over WebSocket.
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
}

impl ClientTransport {
    /// Its name: `tcp`, `tls`, `ws` or `wss`.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientTransport::Tcp => "tcp",
            ClientTransport::Tls => "tls",
            ClientTransport::Ws => "ws",
            ClientTransport::Wss => "wss",
        }
    }
}

impl std::fmt::Display for ClientTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which clients a listing shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientState {
    /// Connected now.
    Online,
    /// Not connected, with a session the node keeps.
    Offline,
    /// Both.
    #[default]
    All,
}

/// A subscription of a client, as its session accepted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSubscription {
    /// The filter as the client wrote it (`$share/<group>/...` included).
    pub filter: Arc<str>,
    /// Its maximum QoS (0, 1 or 2).
    pub qos: u8,
}

/// One client as the directory sees it at the moment it was asked.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ClientInfo {
    /// The client identifier (an assigned one for a client that sent none).
    pub client_id: Arc<str>,
    /// Whether it is connected now.
    pub online: bool,
    /// The username it logged in with (or the device its certificate or token named), if any.
    pub username: Option<Arc<str>>,
    /// Its address (the last one, when offline).
    pub address: SocketAddr,
    /// Its MQTT version: `3.1`, `3.1.1` or `5.0`.
    pub protocol: &'static str,
    /// How it reached the node.
    pub transport: ClientTransport,
    /// When its connection was accepted; `None` when offline.
    pub connected_at: Option<SystemTime>,
    /// Now for a connected client; when it disconnected, for an offline one.
    pub last_seen: SystemTime,
    /// The keep-alive in seconds, as the node applies it (the client's, or the node's maximum).
    pub keep_alive: u16,
    /// Whether it connected with Clean Start (Clean Session in 3.1.1).
    pub clean_start: bool,
    /// The Session Expiry Interval in seconds (`u32::MAX`: never; 3.1.1 persistent sessions).
    pub session_expiry: u32,
    /// Its subscriptions, by filter.
    pub subscriptions: Vec<ClientSubscription>,
    /// PUBLISH packets received from it, on its current (or last) connection.
    pub messages_in: u64,
    /// PUBLISH packets sent to it, on its current (or last) connection.
    pub messages_out: u64,
    /// Bytes read from it (every packet, CONNECT included).
    pub bytes_in: u64,
    /// Bytes written to it.
    pub bytes_out: u64,
    /// PUBLISH packets received per second, over the time since the previous sample (at least a
    /// second); 0 when offline.
    pub in_rate: f64,
    /// PUBLISH packets sent per second, likewise.
    pub out_rate: f64,
    /// Messages waiting in its session's queue (not yet in flight), as its connection last saw
    /// them; for an offline client, as they were when it disconnected (the router, which holds the
    /// session then, knows the current count: `RouterHandle::offline_queues`).
    pub queued: u64,
    /// QoS 1/2 messages sent and not yet acknowledged (as of its disconnection, when offline).
    pub inflight: u64,
}

/// The counters of one connection, updated by its task with relaxed atomics (each is read on its
/// own; no ordering between them is promised).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) messages_in: AtomicU64,
    pub(crate) messages_out: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    /// Set by the connection after each turn of its loop: a gauge.
    pub(crate) queued: AtomicU64,
    /// Likewise.
    pub(crate) inflight: AtomicU64,
}

impl Counters {
    /// Adds `n` to a counter.
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Sets the queue gauges.
    pub(crate) fn set_queues(&self, queued: usize, inflight: usize) {
        self.queued.store(queued as u64, Ordering::Relaxed);
        self.inflight.store(inflight as u64, Ordering::Relaxed);
    }
}

/// What a connection reports when its client is accepted.
#[derive(Debug)]
pub(crate) struct Connected {
    pub(crate) conn_id: u64,
    pub(crate) client_id: Arc<str>,
    pub(crate) username: Option<Arc<str>>,
    pub(crate) address: SocketAddr,
    pub(crate) protocol: ProtocolVersion,
    pub(crate) transport: ClientTransport,
    pub(crate) keep_alive: u16,
    pub(crate) clean_start: bool,
    pub(crate) session_expiry: u32,
    pub(crate) subscriptions: Vec<ClientSubscription>,
    pub(crate) counters: Arc<Counters>,
}

/// The directory of clients. Cheap to clone: clones share one directory.
#[derive(Debug, Clone)]
pub struct Clients {
    inner: Arc<Directory>,
}

impl Default for Clients {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug)]
struct Directory {
    /// A `std` mutex: held to change or copy entries, never across an await, and never per packet.
    state: Mutex<State>,
    offline_limit: usize,
}

#[derive(Debug, Default)]
struct State {
    clients: HashMap<Arc<str>, Entry>,
    /// Clients in the order they went offline, with the connection that ended; a pair whose client
    /// came back (or was forgotten) since is stale and skipped.
    offline_order: VecDeque<(Arc<str>, u64)>,
    /// Offline entries in `clients`.
    offline: usize,
}

#[derive(Debug)]
struct Entry {
    /// The connection that registered the entry: only it may mark the client offline.
    conn_id: u64,
    /// `None` while connected; when it went offline, else.
    offline_since: Option<(SystemTime, Instant)>,
    username: Option<Arc<str>>,
    address: SocketAddr,
    protocol: ProtocolVersion,
    transport: ClientTransport,
    connected_at: SystemTime,
    keep_alive: u16,
    clean_start: bool,
    session_expiry: u32,
    subscriptions: Vec<ClientSubscription>,
    counters: Arc<Counters>,
    sample: Sample,
}

/// The counters at the last rate sample, and the rates it gave.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    messages_in: u64,
    messages_out: u64,
    in_rate: f64,
    out_rate: f64,
}

impl Entry {
    fn is_online(&self) -> bool {
        self.offline_since.is_none()
    }

    /// Whether the session of an offline client has expired by `now`.
    fn expired(&self, now: Instant) -> bool {
        match self.offline_since {
            Some((_, since)) if self.session_expiry != u32::MAX => {
                now.duration_since(since) >= Duration::from_secs(u64::from(self.session_expiry))
            }
            _ => false,
        }
    }

    /// The rates, from a new sample if the last one is at least [`RATE_WINDOW`] old.
    fn rates(&mut self, now: Instant) -> (f64, f64) {
        if !self.is_online() {
            return (0.0, 0.0);
        }
        let elapsed = now.saturating_duration_since(self.sample.at);
        if elapsed >= RATE_WINDOW {
            let messages_in = self.counters.messages_in.load(Ordering::Relaxed);
            let messages_out = self.counters.messages_out.load(Ordering::Relaxed);
            let secs = elapsed.as_secs_f64();
            self.sample = Sample {
                at: now,
                messages_in,
                messages_out,
                in_rate: messages_in.saturating_sub(self.sample.messages_in) as f64 / secs,
                out_rate: messages_out.saturating_sub(self.sample.messages_out) as f64 / secs,
            };
        }
        (self.sample.in_rate, self.sample.out_rate)
    }

    fn info(&mut self, client_id: &Arc<str>, now: Instant, wall: SystemTime) -> ClientInfo {
        let (in_rate, out_rate) = self.rates(now);
        let c = &self.counters;
        ClientInfo {
            client_id: client_id.clone(),
            online: self.is_online(),
            username: self.username.clone(),
            address: self.address,
            protocol: protocol_name(self.protocol),
            transport: self.transport,
            connected_at: self.is_online().then_some(self.connected_at),
            last_seen: self.offline_since.map_or(wall, |(at, _)| at),
            keep_alive: self.keep_alive,
            clean_start: self.clean_start,
            session_expiry: self.session_expiry,
            subscriptions: self.subscriptions.clone(),
            messages_in: c.messages_in.load(Ordering::Relaxed),
            messages_out: c.messages_out.load(Ordering::Relaxed),
            bytes_in: c.bytes_in.load(Ordering::Relaxed),
            bytes_out: c.bytes_out.load(Ordering::Relaxed),
            in_rate,
            out_rate,
            queued: c.queued.load(Ordering::Relaxed),
            inflight: c.inflight.load(Ordering::Relaxed),
        }
    }
}

/// The name of an MQTT version, as the API shows it.
fn protocol_name(version: ProtocolVersion) -> &'static str {
    match version {
        ProtocolVersion::V31 => "3.1",
        ProtocolVersion::V311 => "3.1.1",
        ProtocolVersion::V5 => "5.0",
    }
}

impl Clients {
    /// An empty directory keeping at most [`OFFLINE_LIMIT`] offline clients.
    pub fn new() -> Self {
        Self::with_offline_limit(OFFLINE_LIMIT)
    }

    /// An empty directory keeping at most `limit` offline clients.
    pub fn with_offline_limit(limit: usize) -> Self {
        Self { inner: Arc::new(Directory { state: Mutex::default(), offline_limit: limit }) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while the lock was held left the map consistent (every change is one insert or
        // remove): keep serving it.
        self.inner.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The clients `state` selects whose id or username contains `search` (if given, case
    /// sensitive), ordered by client id, at most `limit` of them.
    pub fn list(&self, state: ClientState, search: Option<&str>, limit: usize) -> Vec<ClientInfo> {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut guard = self.lock();
        guard.forget_expired(now);
        let mut found: Vec<(&Arc<str>, &mut Entry)> = guard
            .clients
            .iter_mut()
            .filter(|(_, e)| match state {
                ClientState::Online => e.is_online(),
                ClientState::Offline => !e.is_online(),
                ClientState::All => true,
            })
            .filter(|(id, e)| {
                search.is_none_or(|s| id.contains(s) || e.username.as_deref().is_some_and(|u| u.contains(s)))
            })
            .collect();
        found.sort_unstable_by(|a, b| a.0.cmp(b.0));
        found.truncate(limit);
        found.into_iter().map(|(id, e)| e.info(id, now, wall)).collect()
    }

    /// The client `client_id`, if the directory knows it.
    pub fn get(&self, client_id: &str) -> Option<ClientInfo> {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut guard = self.lock();
        let (id, expired) =
            guard.clients.get_key_value(client_id).map(|(id, e)| (id.clone(), e.expired(now)))?;
        if expired {
            guard.clients.remove(client_id);
            guard.offline -= 1;
            return None;
        }
        let entry = guard.clients.get_mut(client_id)?;
        Some(entry.info(&id, now, wall))
    }

    /// Whether `client_id` is connected now.
    pub fn is_online(&self, client_id: &str) -> bool {
        self.lock().clients.get(client_id).is_some_and(Entry::is_online)
    }

    /// How many clients are connected now, and how many offline ones the directory keeps.
    pub fn counts(&self) -> (usize, usize) {
        let guard = self.lock();
        (guard.clients.len() - guard.offline, guard.offline)
    }

    /// Registers a client whose CONNECT was accepted, replacing what was known of it.
    pub(crate) fn connected(&self, c: Connected) {
        let now = Instant::now();
        let entry = Entry {
            conn_id: c.conn_id,
            offline_since: None,
            username: c.username,
            address: c.address,
            protocol: c.protocol,
            transport: c.transport,
            connected_at: SystemTime::now(),
            keep_alive: c.keep_alive,
            clean_start: c.clean_start,
            session_expiry: c.session_expiry,
            subscriptions: c.subscriptions,
            counters: c.counters,
            // The first rate is the average since the connection began.
            sample: Sample { at: now, messages_in: 0, messages_out: 0, in_rate: 0.0, out_rate: 0.0 },
        };
        let mut guard = self.lock();
        if let Some(old) = guard.clients.insert(c.client_id, entry) {
            if !old.is_online() {
                guard.offline -= 1;
            }
        }
    }

    /// Replaces the subscriptions of the client connected as `conn_id`.
    pub(crate) fn set_subscriptions(
        &self,
        client_id: &str,
        conn_id: u64,
        subscriptions: Vec<ClientSubscription>,
    ) {
        if let Some(e) = self.lock().clients.get_mut(client_id).filter(|e| e.conn_id == conn_id) {
            e.subscriptions = subscriptions;
        }
    }

    /// Marks the client connected as `conn_id` offline, its session lasting `session_expiry`
    /// seconds from now (0: it is forgotten at once). Nothing happens if another connection of the
    /// client registered since.
    pub(crate) fn disconnected(&self, client_id: &Arc<str>, conn_id: u64, session_expiry: u32) {
        let now = (SystemTime::now(), Instant::now());
        let mut guard = self.lock();
        let Some(entry) = guard.clients.get_mut(client_id).filter(|e| e.conn_id == conn_id && e.is_online())
        else {
            return;
        };
        if session_expiry == 0 {
            guard.clients.remove(client_id);
            return;
        }
        entry.offline_since = Some(now);
        entry.session_expiry = session_expiry;
        guard.offline += 1;
        guard.offline_order.push_back((client_id.clone(), conn_id));
        guard.evict(self.inner.offline_limit);
    }
}

impl State {
    /// Forgets offline clients (the oldest first) until at most `limit` are left, and drops stale
    /// pairs from the order once they outnumber the live ones.
    fn evict(&mut self, limit: usize) {
        while self.offline > limit {
            let Some((id, conn_id)) = self.offline_order.pop_front() else { break };
            if self.clients.get(&id).is_some_and(|e| e.conn_id == conn_id && !e.is_online()) {
                self.clients.remove(&id);
                self.offline -= 1;
            }
        }
        if self.offline_order.len() > 2 * self.offline + 64 {
            let clients = &self.clients;
            self.offline_order.retain(|(id, conn_id)| {
                clients.get(id).is_some_and(|e| e.conn_id == *conn_id && !e.is_online())
            });
        }
    }

    /// Forgets offline clients whose session has expired.
    fn forget_expired(&mut self, now: Instant) {
        let before = self.clients.len();
        self.clients.retain(|_, e| !e.expired(now));
        self.offline -= before - self.clients.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(clients: &Clients, id: &str, conn_id: u64) -> Arc<Counters> {
        let counters = Arc::new(Counters::default());
        clients.connected(Connected {
            conn_id,
            client_id: Arc::from(id),
            username: Some(Arc::from("dev")),
            address: SocketAddr::from(([127, 0, 0, 1], 1000)),
            protocol: ProtocolVersion::V5,
            transport: ClientTransport::Tcp,
            keep_alive: 30,
            clean_start: false,
            session_expiry: 60,
            subscriptions: Vec::new(),
            counters: counters.clone(),
        });
        counters
    }

    #[test]
    fn a_disconnected_client_with_a_session_stays_offline_and_a_clean_one_is_forgotten() {
        let clients = Clients::new();
        connect(&clients, "keeps", 1);
        connect(&clients, "clean", 2);
        assert_eq!(clients.counts(), (2, 0));
        clients.disconnected(&Arc::from("keeps"), 1, 60);
        clients.disconnected(&Arc::from("clean"), 2, 0);
        let keeps = clients.get("keeps").unwrap();
        assert!(!keeps.online);
        assert_eq!(keeps.connected_at, None);
        assert!(clients.get("clean").is_none());
        assert_eq!(clients.counts(), (0, 1));
        assert_eq!(clients.list(ClientState::Online, None, 10).len(), 0);
        assert_eq!(clients.list(ClientState::Offline, None, 10).len(), 1);
    }

    #[test]
    fn an_old_connection_ending_after_a_take_over_leaves_the_new_one_online() {
        let clients = Clients::new();
        connect(&clients, "c", 1);
        connect(&clients, "c", 2);
        clients.disconnected(&Arc::from("c"), 1, 60);
        assert!(clients.is_online("c"));
        clients.disconnected(&Arc::from("c"), 2, 60);
        assert!(!clients.is_online("c"));
        connect(&clients, "c", 3);
        assert_eq!(clients.counts(), (1, 0));
    }

    #[test]
    fn the_oldest_offline_clients_are_forgotten_beyond_the_limit() {
        let clients = Clients::with_offline_limit(2);
        for (n, id) in ["a", "b", "c"].into_iter().enumerate() {
            connect(&clients, id, n as u64);
            clients.disconnected(&Arc::from(id), n as u64, 60);
        }
        let ids: Vec<_> = clients.list(ClientState::All, None, 10).into_iter().map(|c| c.client_id).collect();
        assert_eq!(ids, [Arc::from("b"), Arc::from("c")]);
        assert_eq!(clients.counts(), (0, 2));
    }

    #[test]
    fn flapping_clients_do_not_grow_the_offline_order_without_bound() {
        let clients = Clients::with_offline_limit(10);
        for n in 0..10_000 {
            connect(&clients, "flappy", n);
            clients.disconnected(&Arc::from("flappy"), n, 60);
        }
        assert!(clients.lock().offline_order.len() <= 2 + 64, "{}", clients.lock().offline_order.len());
    }

    #[test]
    fn listing_searches_ids_and_usernames_and_sorts_by_id() {
        let clients = Clients::new();
        connect(&clients, "sensor-2", 1);
        connect(&clients, "sensor-1", 2);
        connect(&clients, "pump", 3);
        let ids = |search| -> Vec<Arc<str>> {
            clients.list(ClientState::All, search, 10).into_iter().map(|c| c.client_id).collect()
        };
        assert_eq!(ids(Some("sensor")), [Arc::from("sensor-1"), Arc::from("sensor-2")]);
        assert_eq!(ids(Some("dev")).len(), 3);
        assert_eq!(ids(Some("nothing")).len(), 0);
        assert_eq!(clients.list(ClientState::All, None, 1).len(), 1);
    }

    #[test]
    fn counters_and_rates_come_from_the_connection() {
        let clients = Clients::new();
        let counters = connect(&clients, "c", 1);
        Counters::add(&counters.messages_in, 5);
        Counters::add(&counters.bytes_out, 100);
        counters.set_queues(3, 2);
        let info = clients.get("c").unwrap();
        assert_eq!((info.messages_in, info.bytes_out, info.queued, info.inflight), (5, 100, 3, 2));
        // A sample older than the window gives the rate since it.
        {
            let mut guard = clients.lock();
            let e = guard.clients.get_mut("c").unwrap();
            e.sample.at -= Duration::from_secs(2);
        }
        Counters::add(&counters.messages_in, 5);
        let info = clients.get("c").unwrap();
        assert!((info.in_rate - 5.0).abs() < 0.1, "{}", info.in_rate);
    }

    #[test]
    fn an_expired_offline_session_is_forgotten() {
        let clients = Clients::new();
        connect(&clients, "c", 1);
        clients.disconnected(&Arc::from("c"), 1, 1);
        {
            let mut guard = clients.lock();
            let e = guard.clients.get_mut("c").unwrap();
            let (wall, at) = e.offline_since.unwrap();
            e.offline_since = Some((wall, at - Duration::from_secs(2)));
        }
        assert!(clients.get("c").is_none());
        assert_eq!(clients.counts(), (0, 0));
    }
}
