//! QoS 1 and 2 between nodes: a durable outbox per destination node, acknowledged delivery,
//! de-duplication at the receiver.
//!
//! ```text
//! node A                                                     node C
//! Tap (router thread): C's filters match ──▶ outbox[C] (store, same commit as the publish)
//! sender task for C ──put m2m/o/C (batch of (run, number, frame))──▶ receiver: number = last + 1?
//!                                                                    ──▶ router ──▶ durable
//! outbox[C] −= acknowledged  ◀──────────put m2m/a/A (run, number)────  last received, kept
//! ```
//!
//! - Each node announces the filters its sessions subscribe to (`m2m/i/<node>`, also answered as a
//!   query), stamped with its run and a version that grows with each change: an announcement older
//!   than the one held (a query's answer overtaken by a later put) is dropped. Every few seconds a
//!   node puts the stamp alone (`m2m/iv/<node>`); a node holding another stamp asks again, so a lost
//!   announcement is made good. Every node keeps the filters of the others in its store, so that a
//!   message for a node that is down now still goes into that node's outbox.
//! - A message enters the outbox while the router handles the publish, before the publisher's
//!   acknowledgement: once acknowledged, it is kept. Frames are numbered per destination and run of
//!   the origin, from 1.
//! - The sender sends in order while the destination is alive (its liveliness token), at most
//!   [`WINDOW`] unacknowledged; without an acknowledgement for [`RESEND_AFTER`] it starts again from
//!   the last acknowledged (go-back-N).
//! - The receiver takes only the next number of each (origin, run); earlier ones are duplicates, later
//!   ones wait for the resend. It acknowledges once the messages are durable on its side, and keeps
//!   the last number taken in its store: a restart does not deliver twice.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::BufMut;
use m2m_router::{Command, RouterHandle};
use m2m_session::Message;
use m2m_store::{unix_ms, Store, Table};
use m2m_topic::{Subscription, SubscriptionTrie, TopicFilter};
use tokio::sync::{mpsc, Notify};
use tracing::{debug, info, warn};
use zenoh::qos::CongestionControl;
use zenoh::sample::{Sample, SampleKind};
use zenoh::Session;

use crate::mesh::{guarded, node_of, MeshStats, NODE_PREFIX};
use crate::wire::{self, Stamp};

/// Batches of frames for a node: `m2m/o/<destination>`.
pub const OUT_PREFIX: &str = "m2m/o";
/// Acknowledgements for a node: `m2m/a/<origin>`.
pub const ACK_PREFIX: &str = "m2m/a";
/// The filters a node's sessions subscribe to: `m2m/i/<node>`.
pub const INTEREST_PREFIX: &str = "m2m/i";
/// The stamp (run, version) of a node's filters, put every [`STAMP_EVERY`]: `m2m/iv/<node>`.
pub const STAMP_PREFIX: &str = "m2m/iv";
/// How often a node puts the stamp of its filters.
pub const STAMP_EVERY: Duration = Duration::from_secs(5);

/// Unacknowledged messages per destination at most.
pub const WINDOW: usize = 8192;
/// Messages per batch at most.
const BATCH: usize = 512;
/// Without an acknowledgement for this long, the sender starts again from the last acknowledged.
pub const RESEND_AFTER: Duration = Duration::from_secs(2);
const VERSION: u8 = 1;

/// Counters of the outboxes.
#[derive(Debug, Default)]
pub struct OutboxStats {
    /// Messages put into an outbox (one per destination).
    pub enqueued: AtomicU64,
    /// Messages acknowledged by their destination.
    pub acknowledged: AtomicU64,
    /// Messages not put into an outbox because it was full.
    pub overflow: AtomicU64,
    /// Messages received through an outbox and handed to the router.
    pub received: AtomicU64,
    /// Frames received again (already taken), dropped.
    pub duplicates: AtomicU64,
}

/// One destination's outbox, as seen by its sender.
#[derive(Debug)]
struct Dest {
    id: Arc<str>,
    /// The last number given in this run.
    seq: AtomicU64,
    /// Messages in the outbox.
    backlog: AtomicU64,
    acknowledged: AtomicU64,
    /// The highest acknowledged key (prefix, run, number), set by acknowledgements.
    acked: Mutex<Option<Vec<u8>>>,
    wake: Notify,
}

/// A node's filters as it announces them: the run of the node (its start time) and the version of
/// the set within that run, which grows with each change.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Announcement {
    pub(crate) run: u64,
    pub(crate) version: u64,
    pub(crate) filters: Vec<String>,
}

impl Announcement {
    /// Reads an announcement: the stamped form, or a bare list of filters (run and version 0).
    fn parse(bytes: &[u8]) -> Option<Announcement> {
        if let Ok(a) = serde_json::from_slice::<Announcement>(bytes) {
            return Some(a);
        }
        let filters = serde_json::from_slice::<Vec<String>>(bytes).ok()?;
        Some(Announcement { run: 0, version: 0, filters })
    }

    /// Whether it is to replace `held` (see [`newer`]).
    fn supersedes(&self, held: Option<&Announcement>) -> bool {
        newer(self.run, self.version, held)
    }
}

/// Whether the filters of `run` at `version` are newer than `held`: a later version of the same run,
/// or another run (a node's runs are told apart, not ordered: its clock may have been set back
/// between them).
fn newer(run: u64, version: u64, held: Option<&Announcement>) -> bool {
    held.is_none_or(|h| h.run != run || h.version < version)
}

/// What the mesh knows of the other nodes' filters.
#[derive(Default)]
struct Peers {
    held: BTreeMap<String, Announcement>,
    ids: Vec<Arc<str>>,
    trie: SubscriptionTrie<usize, ()>,
}

impl Peers {
    fn build(held: BTreeMap<String, Announcement>) -> Peers {
        let mut trie = SubscriptionTrie::new();
        let mut ids = Vec::new();
        for (node, a) in &held {
            let index = ids.len();
            ids.push(Arc::from(node.as_str()));
            for f in &a.filters {
                if let Ok(filter) = TopicFilter::try_from(f.as_str()) {
                    trie.insert(&Subscription::Plain(filter), index, ());
                }
            }
        }
        Peers { held, ids, trie }
    }

    fn matching(&self, topic: &m2m_topic::TopicName) -> Vec<Arc<str>> {
        let mut hit = Vec::new();
        self.trie.match_topic(topic, |i, ()| hit.push(*i), |_, _| {});
        hit.sort_unstable();
        hit.dedup();
        hit.into_iter().filter_map(|i| self.ids.get(i).cloned()).collect()
    }
}

/// A batch received for this node, handed to the receiver task.
struct Inbound {
    origin: Arc<str>,
    boot: u64,
    last: u64,
    messages: Vec<Message>,
}

/// The reliable half of the mesh on one node.
pub(crate) struct Reliable {
    node_id: Arc<str>,
    boot: u64,
    store: Store,
    session: Session,
    runtime: tokio::runtime::Handle,
    limit: u64,
    peers: RwLock<Arc<Peers>>,
    dests: Mutex<HashMap<Arc<str>, Arc<Dest>>>,
    alive: Mutex<HashSet<String>>,
    /// The last number taken per (origin, run).
    inbox: Mutex<HashMap<(Arc<str>, u64), u64>>,
    inbound: mpsc::Sender<Inbound>,
    peer_updates: mpsc::Sender<(String, Announcement)>,
    mine: Mutex<Announcement>,
    /// The nodes being asked for their filters now.
    asking: Mutex<HashSet<String>>,
    pub(crate) stats: OutboxStats,
    mesh_stats: Arc<MeshStats>,
}

fn dest_prefix(dest: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(dest.len() + 17);
    k.extend_from_slice(dest.as_bytes());
    k.push(0);
    k
}

fn out_key(dest: &str, boot: u64, seq: u64) -> Vec<u8> {
    let mut k = dest_prefix(dest);
    k.put_u64(boot);
    k.put_u64(seq);
    k
}

/// The run and number at the end of an outbox key.
fn key_stamp(key: &[u8]) -> Option<(u64, u64)> {
    let tail = key.len().checked_sub(16).map(|at| &key[at..])?;
    let boot = u64::from_be_bytes(tail[..8].try_into().ok()?);
    let seq = u64::from_be_bytes(tail[8..].try_into().ok()?);
    Some((boot, seq))
}

fn peer_key(node: &str) -> Vec<u8> {
    [b"peer\0".as_slice(), node.as_bytes()].concat()
}

fn inbox_key(origin: &str, boot: u64) -> Vec<u8> {
    let mut k = [b"in\0".as_slice(), origin.as_bytes(), b"\0"].concat();
    k.put_u64(boot);
    k
}

impl Reliable {
    /// Loads what the store remembers (other nodes' filters, what was received, the outboxes),
    /// declares the subscribers and starts a sender per destination with a backlog.
    pub(crate) async fn start(
        node_id: Arc<str>,
        boot: u64,
        store: Store,
        session: Session,
        router: RouterHandle,
        limit: u64,
        mesh_stats: Arc<MeshStats>,
    ) -> Result<Arc<Reliable>, String> {
        let (peers, inbox, backlogs) = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || load(&store)).await.map_err(|e| e.to_string())??
        };
        let (inbound_tx, inbound_rx) = mpsc::channel(64);
        let (peer_tx, peer_rx) = mpsc::channel(4096);
        let rel = Arc::new(Reliable {
            node_id,
            boot,
            store,
            session: session.clone(),
            runtime: tokio::runtime::Handle::current(),
            limit,
            peers: RwLock::new(Arc::new(Peers::build(peers))),
            dests: Mutex::new(HashMap::new()),
            alive: Mutex::new(HashSet::new()),
            inbox: Mutex::new(inbox),
            inbound: inbound_tx,
            peer_updates: peer_tx,
            mine: Mutex::new(Announcement { run: boot, version: 0, filters: Vec::new() }),
            asking: Mutex::new(HashSet::new()),
            stats: OutboxStats::default(),
            mesh_stats,
        });
        for (dest, count) in backlogs {
            let d = rel.dest(&dest);
            d.backlog.store(count, Ordering::Relaxed);
            info!(destination = %dest, backlog = count, "mesh outbox found on disk");
        }
        tokio::spawn(receive_loop(rel.clone(), router, inbound_rx));
        tokio::spawn(peer_loop(rel.clone(), peer_rx));

        let me = &rel.node_id;
        let r = rel.clone();
        let out = session
            .declare_subscriber(format!("{OUT_PREFIX}/{me}"))
            .callback(move |s| guarded(&r.mesh_stats, || r.on_batch(&s)))
            .background()
            .await;
        let r = rel.clone();
        let acks = session
            .declare_subscriber(format!("{ACK_PREFIX}/{me}"))
            .callback(move |s| guarded(&r.mesh_stats, || r.on_ack(&s)))
            .background()
            .await;
        let r = rel.clone();
        let interest = session
            .declare_subscriber(format!("{INTEREST_PREFIX}/*"))
            .callback(move |s| guarded(&r.mesh_stats, || r.interest_sample(&s)))
            .background()
            .await;
        let r = rel.clone();
        let queryable = session
            .declare_queryable(format!("{INTEREST_PREFIX}/{me}"))
            .callback(move |q| {
                guarded(&r.mesh_stats, || {
                    let body = serde_json::to_vec(&*r.mine.lock().unwrap_or_else(PoisonError::into_inner))
                        .unwrap_or_default();
                    let key = format!("{INTEREST_PREFIX}/{}", r.node_id);
                    let _ = zenoh::Wait::wait(q.reply(key, body));
                });
            })
            .background()
            .await;
        let r = rel.clone();
        let stamps = session
            .declare_subscriber(format!("{STAMP_PREFIX}/*"))
            .callback(move |s| guarded(&r.mesh_stats, || r.on_stamp(&s)))
            .background()
            .await;
        let r = rel.clone();
        let nodes = session
            .liveliness()
            .declare_subscriber(format!("{NODE_PREFIX}/*"))
            .history(true)
            .callback(move |s| guarded(&r.mesh_stats, || r.on_liveliness(&s)))
            .background()
            .await;
        for result in [out, acks, interest, queryable, stamps, nodes] {
            result.map_err(|e| e.to_string())?;
        }
        tokio::spawn(stamp_loop(Arc::downgrade(&rel)));
        Ok(rel)
    }

    fn dest(self: &Arc<Self>, id: &str) -> Arc<Dest> {
        let mut dests = self.dests.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(d) = dests.get(id) {
            return d.clone();
        }
        let d = Arc::new(Dest {
            id: id.into(),
            seq: AtomicU64::new(0),
            backlog: AtomicU64::new(0),
            acknowledged: AtomicU64::new(0),
            acked: Mutex::new(None),
            wake: Notify::new(),
        });
        dests.insert(d.id.clone(), d.clone());
        self.runtime.spawn(send_loop(self.clone(), d.clone()));
        d
    }

    /// Puts `m` into the outbox of every other node whose filters match its topic. Called on the
    /// router's thread while it handles the publish: the write is in the store before the
    /// publisher's acknowledgement waits for durability.
    pub(crate) fn enqueue(self: &Arc<Self>, m: &Message) {
        let peers = self.peers.read().unwrap_or_else(PoisonError::into_inner).clone();
        let dests = peers.matching(&m.topic);
        if dests.is_empty() {
            return;
        }
        let frame =
            wire::encode(m, &Stamp { origin: self.node_id.clone(), boot: self.boot, seq: 0 }, Instant::now());
        let mut value = Vec::with_capacity(frame.len() + 8);
        value.put_u64(unix_ms(SystemTime::now()));
        value.extend_from_slice(&frame);
        let mut batch = self.store.batch();
        let mut woken = Vec::new();
        for id in dests {
            if *id == *self.node_id {
                continue;
            }
            let d = self.dest(&id);
            if d.backlog.load(Ordering::Relaxed) >= self.limit {
                self.stats.overflow.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let seq = d.seq.fetch_add(1, Ordering::Relaxed) + 1;
            batch.put_record(Table::Outbox, &out_key(&id, self.boot, seq), value.clone());
            d.backlog.fetch_add(1, Ordering::Relaxed);
            self.stats.enqueued.fetch_add(1, Ordering::Relaxed);
            woken.push(d);
        }
        if let Err(e) = batch.commit() {
            warn!(error = %e, topic = %m.topic, "mesh outbox write failed");
        }
        for d in woken {
            d.wake.notify_one();
        }
    }

    /// Announces this node's filters to the others (a new version if they changed).
    pub(crate) async fn announce(&self, filters: &[String]) {
        let body = {
            let mut mine = self.mine.lock().unwrap_or_else(PoisonError::into_inner);
            if mine.filters != filters {
                mine.filters = filters.to_vec();
                mine.version += 1;
            }
            serde_json::to_vec(&*mine).unwrap_or_default()
        };
        if let Err(e) = self.session.put(format!("{INTEREST_PREFIX}/{}", self.node_id), body).await {
            warn!(error = %e, "mesh interest not announced");
        }
    }

    /// Puts the stamp (run, version) of this node's filters.
    async fn put_stamp(&self) {
        let mut body = Vec::with_capacity(16);
        {
            let mine = self.mine.lock().unwrap_or_else(PoisonError::into_inner);
            body.put_u64(mine.run);
            body.put_u64(mine.version);
        }
        if let Err(e) = self.session.put(format!("{STAMP_PREFIX}/{}", self.node_id), body).await {
            debug!(error = %e, "mesh interest stamp not put");
        }
    }

    /// Another node's stamp: if the filters held for it are of another run or an older version, asks
    /// it for them.
    fn on_stamp(self: &Arc<Self>, sample: &Sample) {
        let Some(node) = node_of(sample, STAMP_PREFIX) else { return };
        let Some((run, version)) = read_stamp(&sample.payload().to_bytes()) else {
            self.mesh_stats.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if *node == *self.node_id {
            return;
        }
        let peers = self.peers.read().unwrap_or_else(PoisonError::into_inner).clone();
        if newer(run, version, peers.held.get(node)) {
            debug!(node, run, version, "mesh node's filters behind its stamp: asking again");
            let (r, node) = (self.clone(), node.to_owned());
            self.runtime.spawn(async move { r.fetch_interest(&node).await });
        }
    }

    fn is_alive(&self, id: &str) -> bool {
        self.alive.lock().unwrap_or_else(PoisonError::into_inner).contains(id)
    }

    fn on_liveliness(self: &Arc<Self>, sample: &Sample) {
        let Some(id) = node_of(sample, NODE_PREFIX) else { return };
        if *id == *self.node_id {
            return;
        }
        let id = id.to_owned();
        match sample.kind() {
            SampleKind::Put => {
                debug!(node = %id, "mesh node reachable");
                self.alive.lock().unwrap_or_else(PoisonError::into_inner).insert(id.clone());
                // Ask it for its filters: it may have announced them before this node listened.
                let r = self.clone();
                self.runtime.spawn(async move { r.fetch_interest(&id).await });
            }
            SampleKind::Delete => {
                debug!(node = %id, "mesh node unreachable");
                self.alive.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
            }
        }
        for d in self.dests.lock().unwrap_or_else(PoisonError::into_inner).values() {
            d.wake.notify_one();
        }
    }

    /// Asks `node` for its filters, again a few times while it is reachable and gives no answer
    /// (its queryable may not be known here yet when its liveliness token is); once at a time.
    async fn fetch_interest(&self, node: &str) {
        if !self.asking.lock().unwrap_or_else(PoisonError::into_inner).insert(node.to_owned()) {
            return;
        }
        self.ask(node).await;
        self.asking.lock().unwrap_or_else(PoisonError::into_inner).remove(node);
    }

    async fn ask(&self, node: &str) {
        let mut wait = Duration::from_millis(100);
        for attempt in 0..8 {
            if attempt > 0 {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(STAMP_EVERY);
                if !self.is_alive(node) {
                    return;
                }
            }
            if let Ok(replies) = self.session.get(format!("{INTEREST_PREFIX}/{node}")).await {
                let mut answered = false;
                while let Ok(reply) = replies.recv_async().await {
                    if let Ok(sample) = reply.result() {
                        answered = true;
                        self.interest_sample(sample);
                    }
                }
                if answered {
                    return;
                }
            }
        }
        debug!(node, "mesh node did not answer for its filters");
    }

    fn interest_sample(&self, sample: &Sample) {
        let Some(node) = node_of(sample, INTEREST_PREFIX) else { return };
        if *node == *self.node_id {
            return;
        }
        let Some(announcement) = Announcement::parse(&sample.payload().to_bytes()) else {
            self.mesh_stats.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if self.peer_updates.try_send((node.to_owned(), announcement)).is_err() {
            warn!(node, "mesh interest update dropped: too many at once");
        }
    }

    fn on_ack(&self, sample: &Sample) {
        let bytes = sample.payload().to_bytes();
        let Some((dest, boot, seq)) = read_ack(&bytes) else {
            self.mesh_stats.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Some(d) = self.dests.lock().unwrap_or_else(PoisonError::into_inner).get(dest).cloned() else {
            return;
        };
        let key = out_key(dest, boot, seq);
        let mut acked = d.acked.lock().unwrap_or_else(PoisonError::into_inner);
        if acked.as_ref().is_none_or(|a| *a < key) {
            *acked = Some(key);
        }
        drop(acked);
        d.wake.notify_one();
    }

    fn on_batch(&self, sample: &Sample) {
        let bytes = sample.payload().to_bytes();
        let Some((origin, entries)) = read_batch(&bytes) else {
            self.mesh_stats.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let origin: Arc<str> = origin.into();
        // Entries of one batch share a run in practice; a batch crossing runs is taken run by run.
        let mut inbox = self.inbox.lock().unwrap_or_else(PoisonError::into_inner);
        let mut jobs: Vec<Inbound> = Vec::new();
        let now = Instant::now();
        for (boot, seq, frame) in entries {
            let last = match jobs.last() {
                Some(j) if j.boot == boot => j.last,
                _ => inbox.get(&(origin.clone(), boot)).copied().unwrap_or(0),
            };
            if jobs.last().is_none_or(|j| j.boot != boot) {
                jobs.push(Inbound { origin: origin.clone(), boot, last, messages: Vec::new() });
            }
            let Some(job) = jobs.last_mut() else { continue };
            if seq <= last {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if seq != last + 1 {
                // A gap: what follows waits for the sender to go back.
                break;
            }
            if frame.is_empty() {
                // It expired on the way.
                job.last = seq;
                continue;
            }
            match wire::decode(frame, now) {
                Ok((_, message)) => job.messages.push(message),
                // Taken (and acknowledged) so that it is not sent forever.
                Err(_) => {
                    self.mesh_stats.malformed.fetch_add(1, Ordering::Relaxed);
                }
            }
            job.last = seq;
        }
        for job in jobs {
            let key = (job.origin.clone(), job.boot);
            let last = job.last;
            if self.inbound.try_send(job).is_ok() {
                inbox.insert(key, last);
            }
        }
    }

    /// Backlog per destination (messages waiting), and acknowledged counts.
    pub(crate) fn backlogs(&self) -> Vec<(String, u64, u64, bool)> {
        let dests = self.dests.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<_> = dests
            .values()
            .map(|d| {
                (
                    d.id.to_string(),
                    d.backlog.load(Ordering::Relaxed),
                    d.acknowledged.load(Ordering::Relaxed),
                    self.is_alive(&d.id),
                )
            })
            .collect();
        out.sort();
        out
    }

    /// The filters of the other nodes, as last heard.
    pub(crate) fn peer_filters(&self) -> BTreeMap<String, Vec<String>> {
        let peers = self.peers.read().unwrap_or_else(PoisonError::into_inner).clone();
        peers.held.iter().map(|(node, a)| (node.clone(), a.filters.clone())).collect()
    }
}

type Loaded = (BTreeMap<String, Announcement>, HashMap<(Arc<str>, u64), u64>, Vec<(String, u64)>);

fn load(store: &Store) -> Result<Loaded, String> {
    let mut peers = BTreeMap::new();
    let mut inbox = HashMap::new();
    for (k, v) in store.records(Table::Mesh).map_err(|e| e.to_string())? {
        if let Some(node) = k.strip_prefix(b"peer\0") {
            if let (Ok(node), Some(a)) = (std::str::from_utf8(node), Announcement::parse(&v)) {
                peers.insert(node.to_owned(), a);
            }
        } else if let Some(rest) = k.strip_prefix(b"in\0") {
            if rest.len() > 9 && v.len() == 8 {
                let (origin, tail) = rest.split_at(rest.len() - 9);
                if let (Ok(origin), Ok(boot), Ok(last)) =
                    (std::str::from_utf8(origin), tail[1..].try_into(), v[..].try_into())
                {
                    inbox.insert((Arc::from(origin), u64::from_be_bytes(boot)), u64::from_be_bytes(last));
                }
            }
        }
    }
    // Count each destination's backlog, a chunk at a time.
    let mut backlogs: Vec<(String, u64)> = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let chunk =
            store.records_after(Table::Outbox, after.as_deref(), 10_000).map_err(|e| e.to_string())?;
        let Some((last, _)) = chunk.last() else { break };
        after = Some(last.clone());
        for (k, _) in &chunk {
            let Some(end) = k.iter().position(|&b| b == 0) else { continue };
            let Ok(dest) = std::str::from_utf8(&k[..end]) else { continue };
            match backlogs.last_mut() {
                Some((d, n)) if d == dest => *n += 1,
                _ => backlogs.push((dest.to_owned(), 1)),
            }
        }
    }
    Ok((peers, inbox, backlogs))
}

/// Applies other nodes' filter announcements, newer than those held, keeping them in the store.
async fn peer_loop(rel: Arc<Reliable>, mut rx: mpsc::Receiver<(String, Announcement)>) {
    while let Some((node, a)) = rx.recv().await {
        let mut all = rel.peers.read().unwrap_or_else(PoisonError::into_inner).held.clone();
        if !a.supersedes(all.get(&node)) {
            continue;
        }
        debug!(%node, run = a.run, version = a.version, filters = a.filters.len(), "mesh node's filters updated");
        let mut batch = rel.store.batch();
        batch.put_record(Table::Mesh, &peer_key(&node), serde_json::to_vec(&a).unwrap_or_default());
        if let Err(e) = batch.commit() {
            warn!(error = %e, "mesh peer filters not kept");
        }
        all.insert(node, a);
        *rel.peers.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(Peers::build(all));
    }
}

/// Puts this node's stamp every [`STAMP_EVERY`] while the mesh runs.
async fn stamp_loop(rel: std::sync::Weak<Reliable>) {
    let mut tick = tokio::time::interval(STAMP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(rel) = rel.upgrade() else { return };
        rel.put_stamp().await;
    }
}

/// Sends one destination's outbox, in order, while it is alive.
async fn send_loop(rel: Arc<Reliable>, d: Arc<Dest>) {
    let prefix = dest_prefix(&d.id);
    let mut cursor: Option<Vec<u8>> = None;
    let mut unacked: VecDeque<Vec<u8>> = VecDeque::new();
    let mut last_ack_at = Instant::now();
    let mut was_alive = false;
    // Everything up to here is deleted from the outbox.
    let mut deleted = prefix.clone();
    loop {
        // Forget what the destination acknowledged.
        let acked = d.acked.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if let Some(acked) = acked.as_ref().filter(|a| **a > deleted) {
            let n = delete_through(&rel, &prefix, &deleted, acked).await;
            deleted.clone_from(acked);
            unacked.retain(|k| k > acked);
            if n > 0 {
                d.backlog.fetch_sub(n.min(d.backlog.load(Ordering::Relaxed)), Ordering::Relaxed);
                d.acknowledged.fetch_add(n, Ordering::Relaxed);
                rel.stats.acknowledged.fetch_add(n, Ordering::Relaxed);
            }
            last_ack_at = Instant::now();
        }
        let alive = rel.is_alive(&d.id);
        if !alive {
            was_alive = false;
            let _ = tokio::time::timeout(Duration::from_secs(1), d.wake.notified()).await;
            continue;
        }
        if !was_alive || (!unacked.is_empty() && last_ack_at.elapsed() >= RESEND_AFTER) {
            // (Re)connected, or no acknowledgement for too long: from the last acknowledged on.
            was_alive = true;
            cursor = None;
            unacked.clear();
            last_ack_at = Instant::now();
        }
        if unacked.len() >= WINDOW {
            let _ = tokio::time::timeout(RESEND_AFTER, d.wake.notified()).await;
            continue;
        }
        let start = cursor.clone().unwrap_or_else(|| deleted.clone());
        let room = BATCH.min(WINDOW - unacked.len());
        let store = rel.store.clone();
        let records =
            match tokio::task::spawn_blocking(move || store.records_after(Table::Outbox, Some(&start), room))
                .await
            {
                Ok(Ok(r)) => r,
                other => {
                    warn!(destination = %d.id, error = ?other.err(), "mesh outbox read failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
        let records: Vec<_> = records.into_iter().take_while(|(k, _)| k.starts_with(&prefix)).collect();
        if records.is_empty() {
            let wait = if unacked.is_empty() { Duration::from_secs(1) } else { RESEND_AFTER };
            let _ = tokio::time::timeout(wait, d.wake.notified()).await;
            continue;
        }
        let now_ms = unix_ms(SystemTime::now());
        let mut body = Vec::with_capacity(64 + records.iter().map(|(_, v)| v.len() + 24).sum::<usize>());
        body.push(VERSION);
        put_str(&mut body, &rel.node_id);
        body.put_u32(u32::try_from(records.len()).unwrap_or(u32::MAX));
        for (k, v) in &records {
            let Some((boot, seq)) = key_stamp(k) else { continue };
            let enqueued = v.get(..8).and_then(|b| b.try_into().ok()).map_or(now_ms, u64::from_be_bytes);
            let frame = v.get(8..).unwrap_or_default();
            let spent = Duration::from_millis(now_ms.saturating_sub(enqueued));
            let aged = wire::age(frame, spent);
            let frame = match &aged {
                wire::Aged::Same => frame,
                wire::Aged::Updated(f) => f,
                // Still numbered, so sent empty: the receiver takes the number and nothing else.
                wire::Aged::Expired => &[],
            };
            body.put_u64(boot);
            body.put_u64(seq);
            body.put_u32(u32::try_from(frame.len()).unwrap_or(u32::MAX));
            body.extend_from_slice(frame);
        }
        let key = format!("{OUT_PREFIX}/{}", d.id);
        if let Err(e) = rel.session.put(key, body).congestion_control(CongestionControl::Block).await {
            warn!(destination = %d.id, error = %e, "mesh batch not sent");
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        if unacked.is_empty() {
            last_ack_at = Instant::now();
        }
        cursor = records.last().map(|(k, _)| k.clone());
        unacked.extend(records.into_iter().map(|(k, _)| k));
    }
}

/// Deletes the outbox records of a destination after `from` up to and including `through`; returns
/// how many.
async fn delete_through(rel: &Reliable, prefix: &[u8], from: &[u8], through: &[u8]) -> u64 {
    let (store, prefix, mut from, through) =
        (rel.store.clone(), prefix.to_vec(), from.to_vec(), through.to_vec());
    let deleted = tokio::task::spawn_blocking(move || {
        let mut n = 0u64;
        loop {
            let Ok(chunk) = store.records_after(Table::Outbox, Some(&from), 4096) else { return n };
            let keys: Vec<Vec<u8>> = chunk
                .into_iter()
                .map(|(k, _)| k)
                .take_while(|k| k.starts_with(&prefix) && *k <= through)
                .collect();
            let Some(last) = keys.last().cloned() else { return n };
            let mut batch = store.batch();
            for k in &keys {
                batch.remove_record(Table::Outbox, k);
            }
            if let Err(e) = batch.commit() {
                warn!(error = %e, "mesh outbox cleanup failed");
                return n;
            }
            n += keys.len() as u64;
            from = last;
        }
    })
    .await;
    deleted.unwrap_or(0)
}

/// Hands received batches to the router, makes them durable, keeps the last number and
/// acknowledges.
async fn receive_loop(rel: Arc<Reliable>, router: RouterHandle, mut rx: mpsc::Receiver<Inbound>) {
    while let Some(job) = rx.recv().await {
        let n = job.messages.len() as u64;
        for m in job.messages {
            // A congested subscriber holds the batch back, so nothing acknowledged to its origin is
            // dropped here; the origin's window waits for the acknowledgement meanwhile.
            router.node_flow().wait_unblocked().await;
            let cmd = Command::Publish { message: Arc::new(m), from: None, ack: None };
            if router.send(cmd).await.is_err() {
                return;
            }
        }
        // Once the router answered, it has written the copies for persistent sessions.
        let (tx, answered) = tokio::sync::oneshot::channel();
        if router.send(Command::Stats(tx)).await.is_err() || answered.await.is_err() {
            return;
        }
        let mut batch = rel.store.batch();
        batch.put_record(Table::Mesh, &inbox_key(&job.origin, job.boot), job.last.to_be_bytes().to_vec());
        if let Err(e) = batch.commit() {
            warn!(error = %e, "mesh inbox state not kept");
            continue;
        }
        if let Err(e) = rel.store.durable().await {
            warn!(error = %e, "mesh batch not durable; not acknowledged");
            continue;
        }
        rel.stats.received.fetch_add(n, Ordering::Relaxed);
        let mut ack = Vec::with_capacity(32 + rel.node_id.len());
        ack.push(VERSION);
        put_str(&mut ack, &rel.node_id);
        ack.put_u64(job.boot);
        ack.put_u64(job.last);
        if let Err(e) = rel.session.put(format!("{ACK_PREFIX}/{}", job.origin), ack).await {
            debug!(error = %e, "mesh acknowledgement not sent");
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(usize::from(u16::MAX))];
    out.put_u16(u16::try_from(b.len()).unwrap_or(u16::MAX));
    out.extend_from_slice(b);
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if b.len() < n {
        return None;
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Some(head)
}

fn take_u64(b: &mut &[u8]) -> Option<u64> {
    take(b, 8)?.try_into().ok().map(u64::from_be_bytes)
}

fn take_str<'a>(b: &mut &'a [u8]) -> Option<&'a str> {
    let n = u16::from_be_bytes(take(b, 2)?.try_into().ok()?);
    std::str::from_utf8(take(b, usize::from(n))?).ok()
}

type Entries<'a> = Vec<(u64, u64, &'a [u8])>;

fn read_batch(mut b: &[u8]) -> Option<(&str, Entries<'_>)> {
    if take(&mut b, 1)? != [VERSION] {
        return None;
    }
    let origin = take_str(&mut b)?;
    let count = u32::from_be_bytes(take(&mut b, 4)?.try_into().ok()?);
    let mut entries = Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(BATCH));
    for _ in 0..count {
        let boot = take_u64(&mut b)?;
        let seq = take_u64(&mut b)?;
        let len = u32::from_be_bytes(take(&mut b, 4)?.try_into().ok()?);
        entries.push((boot, seq, take(&mut b, usize::try_from(len).ok()?)?));
    }
    Some((origin, entries))
}

/// A stamp (`m2m/iv/<node>`): run and version.
fn read_stamp(mut b: &[u8]) -> Option<(u64, u64)> {
    Some((take_u64(&mut b)?, take_u64(&mut b)?))
}

fn read_ack(mut b: &[u8]) -> Option<(&str, u64, u64)> {
    if take(&mut b, 1)? != [VERSION] {
        return None;
    }
    let dest = take_str(&mut b)?;
    Some((dest, take_u64(&mut b)?, take_u64(&mut b)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_keys_sort_by_destination_run_and_number() {
        let a = out_key("c", 1, 9);
        let b = out_key("c", 1, 10);
        let c = out_key("c", 2, 1);
        let other = out_key("c2", 0, 0);
        assert!(a < b && b < c && c < other);
        assert!(c.starts_with(&dest_prefix("c")) && !other.starts_with(&dest_prefix("c")));
        assert_eq!(key_stamp(&b), Some((1, 10)));
    }

    #[test]
    fn batches_and_acks_read_back_and_cut_ones_are_refused() {
        let mut body = vec![VERSION];
        put_str(&mut body, "a");
        body.put_u32(2);
        for (seq, frame) in [(1u64, b"xy".as_slice()), (2, b"")] {
            body.put_u64(5);
            body.put_u64(seq);
            body.put_u32(u32::try_from(frame.len()).unwrap());
            body.extend_from_slice(frame);
        }
        let (origin, entries) = read_batch(&body).unwrap();
        assert_eq!((origin, entries), ("a", vec![(5, 1, b"xy".as_slice()), (5, 2, b"".as_slice())]));
        for cut in 0..body.len() {
            assert!(read_batch(&body[..cut]).is_none(), "cut at {cut}");
        }
        let mut ack = vec![VERSION];
        put_str(&mut ack, "c");
        ack.put_u64(5);
        ack.put_u64(2);
        assert_eq!(read_ack(&ack), Some(("c", 5, 2)));
        assert_eq!(read_ack(&ack[..ack.len() - 1]), None);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 2000, ..Default::default() })]

        /// What other nodes put on the mesh's keys is read without a panic, whatever the bytes: a
        /// batch, an acknowledgement, an announcement, a message frame (and its ageing).
        #[test]
        fn any_bytes_from_the_mesh_are_read_or_refused(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            head in 0u8..3,
        ) {
            let mut data = bytes;
            // Often a valid start, so that the readers get past their first checks.
            if head > 0 && !data.is_empty() {
                data[0] = if head == 1 { VERSION } else { crate::wire::VERSION };
            }
            if let Some((_, entries)) = read_batch(&data) {
                for (_, _, frame) in entries {
                    let _ = wire::decode(frame, Instant::now());
                }
            }
            let _ = read_ack(&data);
            let _ = read_stamp(&data);
            let _ = Announcement::parse(&data);
            let _ = wire::decode(&data, Instant::now());
            let _ = wire::age(&data, Duration::from_secs(1));
        }
    }

    #[test]
    fn an_announcement_replaces_only_an_older_version_of_the_same_run_or_another_run() {
        let a = |run, version, filters: &[&str]| Announcement {
            run,
            version,
            filters: filters.iter().map(|f| (*f).to_owned()).collect(),
        };
        let held = a(7, 3, &["plant/#"]);
        assert!(a(7, 4, &[]).supersedes(Some(&held)));
        // A query's answer overtaken by a later put: older, dropped; the same again: nothing new.
        assert!(!a(7, 2, &[]).supersedes(Some(&held)));
        assert!(!a(7, 3, &["plant/#"]).supersedes(Some(&held)));
        // A restart, whatever its clock says.
        assert!(a(6, 0, &[]).supersedes(Some(&held)));
        assert!(a(8, 1, &[]).supersedes(Some(&held)));
        assert!(a(0, 0, &[]).supersedes(None));

        let text = serde_json::to_vec(&held).unwrap();
        assert_eq!(Announcement::parse(&text), Some(held));
        // The bare list of filters kept or sent before announcements were stamped.
        assert_eq!(Announcement::parse(br#"["a/+","b"]"#), Some(a(0, 0, &["a/+", "b"])));
        for bad in [&b""[..], b"{}", b"[1]", br#"{"run":1,"version":-1,"filters":[]}"#] {
            assert_eq!(Announcement::parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
