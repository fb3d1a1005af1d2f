//! The mesh runtime: an embedded zenoh router per node, MQTT traffic carried between nodes by topic.
//!
//! ```text
//!  router ──Tap──▶ outbound queue ──▶ put m2m/t/<topic key> ──▶ zenoh ──▶ other nodes
//!  router ◀── inbound queue ◀── subscriber callbacks on m2m/t/<filter key> ◀── zenoh
//!        (one zenoh subscriber per filter the node's sessions subscribe to: interest, not flooding)
//! ```
//!
//! A message that came through the mesh carries its origin and is never sent on again, so a message
//! crosses each link at most once whatever the topology; zenoh routes it (through intermediate
//! nodes) only to nodes that declared a matching subscriber. A node whose filters overlap receives
//! one copy per matching subscriber: frames are numbered per origin and run, and a number already
//! seen is dropped.
//!
//! zenoh calls the subscriber callbacks on its own threads; a panic there would silently wedge the
//! link, so every callback runs inside [`guarded`], which catches it, counts it and logs it.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use m2m_codec::QoS;
use m2m_router::{Command, Interest, RouterHandle, Tap};
use m2m_session::Message;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};
use zenoh::qos::CongestionControl;
use zenoh::sample::Sample;
use zenoh::Session;

use crate::keyexpr::{filter_to_key, topic_to_key};
use crate::outbox::Reliable;
use crate::wire::{self, Stamp};

/// The key space of MQTT messages: `m2m/t/<escaped topic>`.
pub const DATA_PREFIX: &str = "m2m/t";
/// The liveliness token of each node: `m2m/node/<node id>`.
pub const NODE_PREFIX: &str = "m2m/node";
/// Retained messages, replicated to every node: `m2m/r/<escaped topic>` (also answered as queries).
pub const RETAINED_PREFIX: &str = "m2m/r";
/// Each node answers `m2m/ping/<node id>` with its id and zenoh id (round trips, links).
pub const PING_PREFIX: &str = "m2m/ping";
/// Queries every node answers: `m2m/q/<node id>/<kind>` (`history`, `latest`), parameters and
/// answers as JSON.
pub const QUERY_PREFIX: &str = "m2m/q";

/// Answers a mesh query of a kind (`history`, `latest`) with its parameters, as JSON.
pub type QueryHandler = Arc<
    dyn Fn(
            String,
            serde_json::Value,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<serde_json::Value, String>> + Send>>
        + Send
        + Sync,
>;

/// What the nodes answered to a mesh query.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MeshAnswers {
    /// Each node's answer, by node id.
    pub answers: Vec<(String, serde_json::Value)>,
    /// Nodes that answered with an error, and the error.
    pub errors: Vec<(String, String)>,
    /// Nodes reachable when asked that did not answer in time.
    pub missing: Vec<String>,
}

/// The mesh as one node sees it, for `GET /api/v1/mesh` and `m2m mesh status`.
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct MeshStatus {
    /// This node's id.
    pub node_id: String,
    /// Its endpoints.
    pub listen: Vec<String>,
    /// The endpoints it connects to.
    pub connect: Vec<String>,
    /// Every other node it knows of: reachable now, or with filters or a backlog remembered.
    pub nodes: Vec<NodeStatus>,
    /// Messages put into the mesh by topic (QoS 0).
    pub sent: u64,
    /// Messages received from other nodes (by topic and through outboxes).
    pub received: u64,
    /// Messages dropped: full queues, full outboxes.
    pub dropped: u64,
    /// Frames that could not be read.
    pub malformed: u64,
    /// Panics caught in mesh callbacks.
    pub panics: u64,
}

/// Another node, as this one sees it.
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct NodeStatus {
    /// Its id.
    pub id: String,
    /// Whether it is reachable now (directly or through other nodes).
    pub reachable: bool,
    /// Whether this node has a link of its own to it.
    pub linked: bool,
    /// Round trip of a query to it, in milliseconds; `None` when it did not answer within 1 s.
    pub rtt_ms: Option<f64>,
    /// QoS 1 and 2 messages waiting for it in this node's outbox.
    pub backlog: u64,
    /// Messages it acknowledged since this node started.
    pub acknowledged: u64,
    /// Its filters, as last announced.
    pub filters: Vec<String>,
}

/// What goes out: a message by topic (QoS 0, or any QoS without a store), or a retained message to
/// replicate.
#[derive(Debug)]
enum Out {
    Topic(Arc<Message>),
    Retained(Arc<Message>),
}

/// What came in: a message to route, or another node's retained message to keep.
#[derive(Debug)]
enum In {
    Publish(Message),
    Retain(Message),
}

/// How a node joins the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshConfig {
    /// This node's name in the mesh: unique, 1 to 64 of `A-Z a-z 0-9 - _ .`.
    pub node_id: String,
    /// zenoh endpoints to listen on, e.g. `tcp/0.0.0.0:7447`.
    pub listen: Vec<String>,
    /// zenoh endpoints of other nodes to connect to (retried until they answer).
    pub connect: Vec<String>,
    /// Messages waiting to go out, and to come in, at most; beyond, QoS 0 is dropped and counted.
    pub queue: usize,
    /// Messages kept for one unreachable node at most (QoS 1 and 2); beyond, new ones for it are
    /// dropped and counted.
    pub outbox_limit: u64,
    /// Certificates for `tls/` endpoints; `None`: only `tcp/` endpoints.
    pub tls: Option<MeshTls>,
}

/// The certificates of a node's TLS mesh links. Both ends of a link authenticate: a node accepts
/// (and connects to) only nodes whose certificate the CA signed, and checks the name it connects to
/// against the other node's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshTls {
    /// The CA certificate (PEM) the other nodes' certificates are signed by.
    pub ca: std::path::PathBuf,
    /// This node's certificate (PEM), valid for the names other nodes connect to, and for client
    /// authentication (`m2m cert dev` makes such a `server.pem`).
    pub cert: std::path::PathBuf,
    /// Its private key (PEM).
    pub key: std::path::PathBuf,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            node_id: String::new(),
            listen: Vec::new(),
            connect: Vec::new(),
            queue: 65_536,
            outbox_limit: 10_000_000,
            tls: None,
        }
    }
}

/// Why the mesh could not start.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// The node id is empty, too long or holds characters other than `A-Z a-z 0-9 - _ .`.
    #[error("invalid mesh node id {0:?}: use 1 to 64 of A-Z a-z 0-9 - _ .")]
    NodeId(String),
    /// An endpoint is not of the form `tcp/host:port` or `tls/host:port`.
    #[error("invalid mesh endpoint {0:?}: expected tcp/host:port or tls/host:port")]
    Endpoint(String),
    /// A `tls/` endpoint without certificates, or a certificate file that cannot be read.
    #[error("mesh TLS: {0}")]
    Tls(String),
    /// zenoh refused the configuration or could not open.
    #[error("the mesh could not start: {0}")]
    Zenoh(String),
}

/// Counters of the mesh, for `$SYS/broker/mesh/...` and the API.
#[derive(Debug, Default)]
pub struct MeshStats {
    /// Messages put into the mesh.
    pub sent: AtomicU64,
    /// Messages received from other nodes and handed to the router.
    pub received: AtomicU64,
    /// Messages not sent: the outbound queue was full.
    pub dropped_out: AtomicU64,
    /// Messages received but dropped: the inbound queue was full.
    pub dropped_in: AtomicU64,
    /// Copies of a message already received (overlapping filters), dropped.
    pub duplicates: AtomicU64,
    /// Frames that could not be read.
    pub malformed: AtomicU64,
    /// Panics caught in zenoh callbacks.
    pub panics: AtomicU64,
}

/// A node's place in the mesh: a cheap handle. Give it to the router as a [`Tap`] and its
/// [`Mesh::interest`] as the router's interest, then [`Mesh::start`] it.
#[derive(Debug, Clone)]
pub struct Mesh {
    inner: Arc<Inner>,
}

struct Inner {
    config: MeshConfig,
    node_id: Arc<str>,
    boot: u64,
    seq: AtomicU64,
    interest: Arc<Interest>,
    out_tx: mpsc::Sender<Out>,
    out_rx: Mutex<Option<mpsc::Receiver<Out>>>,
    in_tx: mpsc::Sender<In>,
    in_rx: Mutex<Option<mpsc::Receiver<In>>>,
    stats: Arc<MeshStats>,
    /// QoS 1 and 2 through durable outboxes, once started on a node with a store.
    reliable: OnceLock<Arc<Reliable>>,
    /// The highest frame number seen per (origin, run).
    seen: Mutex<HashMap<(Arc<str>, u64), u64>>,
    session: OnceLock<Session>,
    token: OnceLock<zenoh::liveliness::LivelinessToken>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh").field("node_id", &self.node_id).field("config", &self.config).finish()
    }
}

impl Mesh {
    /// Checks `config` and prepares the queues; nothing is opened until [`Mesh::start`].
    ///
    /// # Errors
    /// [`MeshError::NodeId`] or [`MeshError::Endpoint`].
    pub fn new(config: MeshConfig) -> Result<Mesh, MeshError> {
        let id = &config.node_id;
        if id.is_empty()
            || id.len() > 64
            || !id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(MeshError::NodeId(id.clone()));
        }
        for e in config.listen.iter().chain(&config.connect) {
            let address = e.strip_prefix("tcp/").or_else(|| e.strip_prefix("tls/"));
            let ok = address
                .and_then(|a| a.rsplit_once(':'))
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                return Err(MeshError::Endpoint(e.clone()));
            }
            if e.starts_with("tls/") && config.tls.is_none() {
                return Err(MeshError::Tls(format!(
                    "endpoint {e:?} needs certificates (mesh.tls_ca, mesh.tls_cert, mesh.tls_key)"
                )));
            }
        }
        if let Some(tls) = &config.tls {
            for (what, path) in [("CA", &tls.ca), ("certificate", &tls.cert), ("key", &tls.key)] {
                if let Err(e) = std::fs::metadata(path) {
                    return Err(MeshError::Tls(format!(
                        "cannot read the {what} file {}: {e}",
                        path.display()
                    )));
                }
            }
        }
        let queue = config.queue.max(1);
        let (out_tx, out_rx) = mpsc::channel(queue);
        let (in_tx, in_rx) = mpsc::channel(queue);
        let boot = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        Ok(Mesh {
            inner: Arc::new(Inner {
                node_id: config.node_id.as_str().into(),
                config,
                boot,
                seq: AtomicU64::new(0),
                interest: Arc::new(Interest::new()),
                out_tx,
                out_rx: Mutex::new(Some(out_rx)),
                in_tx,
                in_rx: Mutex::new(Some(in_rx)),
                stats: Arc::new(MeshStats::default()),
                reliable: OnceLock::new(),
                seen: Mutex::new(HashMap::new()),
                session: OnceLock::new(),
                token: OnceLock::new(),
                tasks: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The set of filters the router keeps for the mesh (its `RouterConfig::interest`).
    pub fn interest(&self) -> Arc<Interest> {
        self.inner.interest.clone()
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// The counters.
    pub fn stats(&self) -> &MeshStats {
        &self.inner.stats
    }

    /// Opens the embedded zenoh router (router mode, scouting off, the configured endpoints),
    /// announces the node and starts carrying messages. Connections to `connect` endpoints are
    /// retried in the background until they answer, and after they drop.
    ///
    /// # Errors
    /// [`MeshError::Zenoh`] when zenoh cannot open (a listen endpoint in use, say).
    pub async fn start(
        &self,
        router: RouterHandle,
        store: Option<m2m_store::Store>,
    ) -> Result<(), MeshError> {
        let inner = &self.inner;
        let mut config = serde_json::json!({
            "mode": "router",
            "metadata": { "name": &*inner.node_id },
            "listen": { "endpoints": inner.config.listen },
            "connect": {
                "endpoints": inner.config.connect,
                "retry": { "period_init_ms": 250, "period_max_ms": 2000, "period_increase_factor": 2.0 },
            },
            "scouting": { "multicast": { "enabled": false }, "gossip": { "enabled": false } },
        });
        if let Some(tls) = &inner.config.tls {
            let path = |p: &std::path::PathBuf| p.display().to_string();
            config["transport"] = serde_json::json!({ "link": { "tls": {
                "root_ca_certificate": path(&tls.ca),
                "listen_certificate": path(&tls.cert),
                "listen_private_key": path(&tls.key),
                "connect_certificate": path(&tls.cert),
                "connect_private_key": path(&tls.key),
                "enable_mtls": true,
                "verify_name_on_connect": true,
            } } });
        }
        let zconfig =
            zenoh::Config::from_json5(&config.to_string()).map_err(|e| MeshError::Zenoh(e.to_string()))?;
        let session = zenoh::open(zconfig).await.map_err(|e| MeshError::Zenoh(e.to_string()))?;
        let token = format!("{NODE_PREFIX}/{}", inner.node_id);
        // Other nodes see this node while the token lives: until the session closes.
        let token =
            session.liveliness().declare_token(token).await.map_err(|e| MeshError::Zenoh(e.to_string()))?;
        let _ = inner.token.set(token);
        let session = inner.session.get_or_init(|| session).clone();
        if let Some(store) = store {
            let reliable = Reliable::start(
                inner.node_id.clone(),
                inner.boot,
                store,
                session.clone(),
                router.clone(),
                inner.config.outbox_limit.max(1),
                inner.stats.clone(),
            )
            .await
            .map_err(MeshError::Zenoh)?;
            let _ = inner.reliable.set(reliable);
        }
        info!(node = %inner.node_id, listen = ?inner.config.listen, connect = ?inner.config.connect, "mesh started");

        let out_rx = inner.out_rx.lock().unwrap_or_else(PoisonError::into_inner).take();
        let in_rx = inner.in_rx.lock().unwrap_or_else(PoisonError::into_inner).take();
        let mut spawned = vec![tokio::spawn(follow_interest(self.inner.clone(), session.clone()))];
        if let Some(rx) = out_rx {
            spawned.push(tokio::spawn(outbound(self.inner.clone(), session.clone(), rx)));
        }
        if let Some(rx) = in_rx {
            spawned.push(tokio::spawn(inbound(self.inner.clone(), router.clone(), rx)));
        }
        inner.tasks.lock().unwrap_or_else(PoisonError::into_inner).extend(spawned);
        self.replicate_retained(&session, router).await?;
        let (id, zid) = (self.inner.node_id.to_string(), session.zid().to_string());
        session
            .declare_queryable(format!("{PING_PREFIX}/{}", self.inner.node_id))
            .callback(move |query| {
                let body = serde_json::json!({ "node": id, "zid": zid }).to_string();
                let _ = zenoh::Wait::wait(query.reply(query.key_expr().clone(), body));
            })
            .background()
            .await
            .map_err(|e| MeshError::Zenoh(e.to_string()))?;
        Ok(())
    }

    /// Answers the queries of other nodes (and this one's) with `handler`.
    ///
    /// # Errors
    /// [`MeshError::Zenoh`] when the queryable cannot be declared, or the mesh has not started.
    pub async fn serve_queries(&self, handler: QueryHandler) -> Result<(), MeshError> {
        let Some(session) = self.inner.session.get() else {
            return Err(MeshError::Zenoh("the mesh has not started".into()));
        };
        let (inner, runtime) = (self.inner.clone(), tokio::runtime::Handle::current());
        let node = self.inner.node_id.clone();
        session
            .declare_queryable(format!("{QUERY_PREFIX}/{}/*", self.inner.node_id))
            .callback(move |query| {
                guarded(&inner.stats, || {
                    // The query's own key (`m2m/q/*/history`): its last chunk is the kind.
                    let kind = query.key_expr().as_str().rsplit('/').next().unwrap_or_default().to_owned();
                    let params = query
                        .payload()
                        .and_then(|p| serde_json::from_slice(&p.to_bytes()).ok())
                        .unwrap_or(serde_json::Value::Null);
                    let handler = handler.clone();
                    let key = format!("{QUERY_PREFIX}/{node}/{kind}");
                    runtime.spawn(async move {
                        let body = match handler(kind, params).await {
                            Ok(answer) => serde_json::json!({ "ok": answer }),
                            Err(error) => serde_json::json!({ "error": error }),
                        };
                        let _ = query.reply(key, body.to_string()).await;
                    });
                });
            })
            .background()
            .await
            .map_err(|e| MeshError::Zenoh(e.to_string()))
    }

    /// Asks every reachable node (this one included) a query of `kind` with `params`, and waits at
    /// most `timeout` for the answers.
    pub async fn ask_all(
        &self,
        kind: &str,
        params: &serde_json::Value,
        timeout: std::time::Duration,
    ) -> MeshAnswers {
        let mut result = MeshAnswers::default();
        let Some(session) = self.inner.session.get() else { return result };
        let expected = self.nodes().await;
        let replies = session
            .get(format!("{QUERY_PREFIX}/*/{kind}"))
            .payload(params.to_string())
            .target(zenoh::query::QueryTarget::All)
            .consolidation(zenoh::query::ConsolidationMode::None)
            .timeout(timeout)
            .await;
        if let Ok(replies) = replies {
            while let Ok(reply) = replies.recv_async().await {
                let Ok(sample) = reply.result() else { continue };
                let node = sample
                    .key_expr()
                    .as_str()
                    .strip_prefix(QUERY_PREFIX)
                    .and_then(|r| r.strip_prefix('/'))
                    .and_then(|r| r.split('/').next())
                    .unwrap_or_default()
                    .to_owned();
                let body: serde_json::Value =
                    serde_json::from_slice(&sample.payload().to_bytes()).unwrap_or_default();
                match (body.get("ok"), body.get("error").and_then(serde_json::Value::as_str)) {
                    (Some(answer), _) => result.answers.push((node, answer.clone())),
                    (None, Some(error)) => result.errors.push((node, error.to_owned())),
                    (None, None) => result.errors.push((node, "an answer that is not JSON".to_owned())),
                }
            }
        }
        result.missing = expected
            .into_iter()
            .filter(|n| {
                !result.answers.iter().any(|(a, _)| a == n) && !result.errors.iter().any(|(e, _)| e == n)
            })
            .collect();
        result
    }

    /// The mesh as this node sees it: the other nodes, whether they are reachable, round trips,
    /// backlogs and filters.
    pub async fn status(&self) -> MeshStatus {
        let inner = &self.inner;
        let s = &inner.stats;
        let mut status = MeshStatus {
            node_id: inner.node_id.to_string(),
            listen: inner.config.listen.clone(),
            connect: inner.config.connect.clone(),
            nodes: Vec::new(),
            sent: s.sent.load(Ordering::Relaxed),
            received: s.received.load(Ordering::Relaxed),
            dropped: s.dropped_out.load(Ordering::Relaxed) + s.dropped_in.load(Ordering::Relaxed),
            malformed: s.malformed.load(Ordering::Relaxed),
            panics: s.panics.load(Ordering::Relaxed),
        };
        let Some(session) = inner.session.get() else { return status };
        let reachable = self.nodes().await;
        let direct: std::collections::HashSet<String> = session
            .info()
            .routers_zid()
            .await
            .chain(session.info().peers_zid().await)
            .map(|z| z.to_string())
            .collect();
        let mut nodes: std::collections::BTreeMap<String, NodeStatus> = std::collections::BTreeMap::new();
        let blank = |id: &str| NodeStatus {
            id: id.to_owned(),
            reachable: false,
            linked: false,
            rtt_ms: None,
            backlog: 0,
            acknowledged: 0,
            filters: Vec::new(),
        };
        if let Some(r) = inner.reliable.get() {
            for (id, filters) in r.peer_filters() {
                nodes.entry(id.clone()).or_insert_with(|| blank(&id)).filters = filters;
            }
            for (id, backlog, acknowledged, _) in r.backlogs() {
                let n = nodes.entry(id.clone()).or_insert_with(|| blank(&id));
                n.backlog = backlog;
                n.acknowledged = acknowledged;
            }
            status.dropped += r.stats.overflow.load(Ordering::Relaxed);
            status.received += r.stats.received.load(Ordering::Relaxed);
        }
        for id in reachable.iter().filter(|id| **id != *inner.node_id) {
            let n = nodes.entry(id.clone()).or_insert_with(|| blank(id));
            n.reachable = true;
            let started = Instant::now();
            let replies =
                session.get(format!("{PING_PREFIX}/{id}")).timeout(std::time::Duration::from_secs(1)).await;
            if let Ok(replies) = replies {
                if let Ok(reply) = replies.recv_async().await {
                    if let Ok(sample) = reply.result() {
                        n.rtt_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
                        let body: serde_json::Value =
                            serde_json::from_slice(&sample.payload().to_bytes()).unwrap_or_default();
                        n.linked = body["zid"].as_str().is_some_and(|z| direct.contains(z));
                    }
                }
            }
        }
        status.nodes = nodes.into_values().collect();
        status
    }

    /// Keeps other nodes' retained messages here: live as they are set, and, when a node appears
    /// (and at start), those this node lacks.
    async fn replicate_retained(&self, session: &Session, router: RouterHandle) -> Result<(), MeshError> {
        let zerr = |e: zenoh::Error| MeshError::Zenoh(e.to_string());
        let inner = self.inner.clone();
        session
            .declare_subscriber(format!("{RETAINED_PREFIX}/**"))
            .callback(move |sample| {
                guarded(&inner.stats, || {
                    let Ok((stamp, m)) = wire::decode(&sample.payload().to_bytes(), Instant::now()) else {
                        inner.stats.malformed.fetch_add(1, Ordering::Relaxed);
                        return;
                    };
                    if stamp.origin != inner.node_id && inner.in_tx.try_send(In::Retain(m)).is_err() {
                        inner.stats.dropped_in.fetch_add(1, Ordering::Relaxed);
                    }
                });
            })
            .background()
            .await
            .map_err(zerr)?;
        let (inner, answering) = (self.inner.clone(), router.clone());
        let runtime = tokio::runtime::Handle::current();
        session
            .declare_queryable(format!("{RETAINED_PREFIX}/**"))
            .callback(move |query| {
                let (inner, router) = (inner.clone(), answering.clone());
                runtime.spawn(async move {
                    let stamp = Stamp { origin: inner.node_id.clone(), boot: inner.boot, seq: 0 };
                    for m in local_retained(&router).await {
                        let key = format!("{RETAINED_PREFIX}/{}", topic_to_key(m.topic.as_str()));
                        let _ = query.reply(key, wire::encode(&m, &stamp, Instant::now())).await;
                    }
                });
            })
            .background()
            .await
            .map_err(zerr)?;
        let wake = Arc::new(tokio::sync::Notify::new());
        let on_node = wake.clone();
        session
            .liveliness()
            .declare_subscriber(format!("{NODE_PREFIX}/*"))
            .callback(move |sample| {
                if sample.kind() == zenoh::sample::SampleKind::Put {
                    on_node.notify_one();
                }
            })
            .background()
            .await
            .map_err(zerr)?;
        let (inner, session) = (self.inner.clone(), session.clone());
        let task = tokio::spawn(async move {
            loop {
                sync_retained(&inner, &session, &router).await;
                wake.notified().await;
                // Nodes often appear together: one sync for a burst.
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        });
        self.inner.tasks.lock().unwrap_or_else(PoisonError::into_inner).push(task);
        Ok(())
    }

    /// The QoS 1/2 messages waiting in this node's outbox for each other node it knows, by node id
    /// (sorted), and whether the outbox sees that node alive. Cheap: no network round trip, unlike
    /// [`Mesh::status`] (for metrics).
    pub fn backlogs(&self) -> Vec<(String, u64, bool)> {
        let Some(r) = self.inner.reliable.get() else { return Vec::new() };
        r.backlogs().into_iter().map(|(id, backlog, _, alive)| (id, backlog, alive)).collect()
    }

    /// The ids of the nodes reachable now (this one included), sorted.
    pub async fn nodes(&self) -> Vec<String> {
        let Some(session) = self.inner.session.get() else { return Vec::new() };
        let mut nodes = Vec::new();
        if let Ok(replies) = session.liveliness().get(format!("{NODE_PREFIX}/*")).await {
            while let Ok(reply) = replies.recv_async().await {
                if let Ok(sample) = reply.result() {
                    if let Some(id) = node_of(sample, NODE_PREFIX) {
                        nodes.push(id.to_owned());
                    }
                }
            }
        }
        nodes.sort();
        nodes.dedup();
        nodes
    }

    /// Stops carrying messages and closes the zenoh session.
    pub async fn close(&self) {
        let tasks = std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        for t in tasks {
            t.abort();
        }
        if let Some(session) = self.inner.session.get() {
            if let Err(e) = session.close().await {
                warn!(error = %e, "mesh session did not close cleanly");
            }
        }
    }
}

impl Tap for Mesh {
    fn message(&self, message: &Arc<Message>) {
        // What came through the mesh is not sent on (what came through an uplink is: it entered the
        // mesh here); `$` topics stay on their node.
        let from_mesh = message.origin.as_deref().is_some_and(|o| !o.starts_with("uplink:"));
        if from_mesh || message.topic.as_str().starts_with('$') {
            return;
        }
        if message.retain && self.inner.out_tx.try_send(Out::Retained(message.clone())).is_err() {
            self.inner.stats.dropped_out.fetch_add(1, Ordering::Relaxed);
        }
        if message.qos != QoS::AtMostOnce {
            if let Some(reliable) = self.inner.reliable.get() {
                reliable.enqueue(message);
                return;
            }
        }
        if self.inner.out_tx.try_send(Out::Topic(message.clone())).is_err() {
            self.inner.stats.dropped_out.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn sys_values(&self, out: &mut Vec<(&'static str, String)>) {
        let s = &self.inner.stats;
        out.push(("mesh/sent", s.sent.load(Ordering::Relaxed).to_string()));
        if let Some(r) = self.inner.reliable.get() {
            let backlog: u64 = r.backlogs().iter().map(|b| b.1).sum();
            out.push(("mesh/outbox/backlog", backlog.to_string()));
            out.push(("mesh/outbox/acknowledged", r.stats.acknowledged.load(Ordering::Relaxed).to_string()));
            out.push(("mesh/outbox/overflow", r.stats.overflow.load(Ordering::Relaxed).to_string()));
        }
        out.push(("mesh/received", s.received.load(Ordering::Relaxed).to_string()));
        out.push((
            "mesh/dropped",
            (s.dropped_out.load(Ordering::Relaxed) + s.dropped_in.load(Ordering::Relaxed)).to_string(),
        ));
    }
}

/// Puts each message the node accepted into the mesh, under its topic's key.
async fn outbound(inner: Arc<Inner>, session: Session, mut rx: mpsc::Receiver<Out>) {
    let mut batch = Vec::with_capacity(256);
    while rx.recv_many(&mut batch, 256).await > 0 {
        for out in batch.drain(..) {
            let (m, prefix, congestion) = match out {
                Out::Topic(m) if m.qos == QoS::AtMostOnce => (m, DATA_PREFIX, CongestionControl::Drop),
                Out::Topic(m) => (m, DATA_PREFIX, CongestionControl::Block),
                Out::Retained(m) => (m, RETAINED_PREFIX, CongestionControl::Block),
            };
            let seq = if prefix == DATA_PREFIX { inner.seq.fetch_add(1, Ordering::Relaxed) + 1 } else { 0 };
            let stamp = Stamp { origin: inner.node_id.clone(), boot: inner.boot, seq };
            let frame = wire::encode(&m, &stamp, Instant::now());
            let key = format!("{prefix}/{}", topic_to_key(m.topic.as_str()));
            match session.put(key, frame).congestion_control(congestion).await {
                Ok(()) => {
                    inner.stats.sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    inner.stats.dropped_out.fetch_add(1, Ordering::Relaxed);
                    debug!(error = %e, topic = %m.topic, "mesh put failed");
                }
            }
        }
    }
}

/// Hands what the mesh brought to the router, in order.
async fn inbound(inner: Arc<Inner>, router: RouterHandle, mut rx: mpsc::Receiver<In>) {
    while let Some(m) = rx.recv().await {
        let cmd = match m {
            In::Publish(m) => {
                inner.stats.received.fetch_add(1, Ordering::Relaxed);
                Command::Publish { message: Arc::new(m), from: None, ack: None }
            }
            In::Retain(m) => Command::Retain(Arc::new(m)),
        };
        if router.send(cmd).await.is_err() {
            break;
        }
    }
}

/// Keeps one zenoh subscriber per filter the node's sessions subscribe to.
async fn follow_interest(inner: Arc<Inner>, session: Session) {
    let mut declared: HashMap<String, zenoh::pubsub::Subscriber<()>> = HashMap::new();
    loop {
        let (_, filters) = inner.interest.snapshot();
        declared.retain(|f, _| filters.binary_search(f).is_ok());
        for filter in filters {
            if declared.contains_key(&filter) {
                continue;
            }
            let key = format!("{DATA_PREFIX}/{}", filter_to_key(&filter));
            let handler = inner.clone();
            let declared_sub = session
                .declare_subscriber(key)
                .callback(move |sample| guarded(&handler.stats, || receive(&handler, &sample)))
                .await;
            match declared_sub {
                Ok(sub) => {
                    debug!(%filter, "mesh subscriber declared");
                    declared.insert(filter, sub);
                }
                Err(e) => error!(%filter, error = %e, "mesh subscriber could not be declared"),
            }
        }
        if let Some(reliable) = inner.reliable.get() {
            let (_, filters) = inner.interest.snapshot();
            reliable.announce(&filters).await;
        }
        inner.interest.changed().await;
    }
}

/// This node's retained messages (all topics).
async fn local_retained(router: &RouterHandle) -> Vec<Arc<Message>> {
    let Ok(all) = m2m_topic::TopicFilter::try_from("#") else { return Vec::new() };
    let (tx, rx) = tokio::sync::oneshot::channel();
    if router.send(Command::Retained { filter: all, reply: tx }).await.is_err() {
        return Vec::new();
    }
    rx.await.unwrap_or_default()
}

/// Asks every node for its retained messages and keeps those whose topic this node has none for.
async fn sync_retained(inner: &Inner, session: &Session, router: &RouterHandle) {
    let have: std::collections::HashSet<String> =
        local_retained(router).await.iter().map(|m| m.topic.as_str().to_owned()).collect();
    let replies = session
        .get(format!("{RETAINED_PREFIX}/**"))
        .target(zenoh::query::QueryTarget::All)
        .consolidation(zenoh::query::ConsolidationMode::None)
        .timeout(std::time::Duration::from_secs(3))
        .await;
    let Ok(replies) = replies else { return };
    let mut kept = std::collections::HashSet::new();
    while let Ok(reply) = replies.recv_async().await {
        let Ok(sample) = reply.result() else { continue };
        let Ok((stamp, m)) = wire::decode(&sample.payload().to_bytes(), Instant::now()) else {
            inner.stats.malformed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let topic = m.topic.as_str().to_owned();
        if stamp.origin == inner.node_id || have.contains(&topic) || !kept.insert(topic) {
            continue;
        }
        if router.send(Command::Retain(Arc::new(m))).await.is_err() {
            return;
        }
    }
    if !kept.is_empty() {
        debug!(count = kept.len(), "retained messages of other nodes kept");
    }
}

/// The node id at the end of a sample's key `<prefix>/<node>`.
pub(crate) fn node_of<'a>(sample: &'a Sample, prefix: &str) -> Option<&'a str> {
    sample.key_expr().as_str().strip_prefix(prefix)?.strip_prefix('/')
}

/// Runs `f`, catching a panic (counted in `stats.panics` and logged) so that it never unwinds into
/// zenoh.
pub fn guarded(stats: &MeshStats, f: impl FnOnce()) {
    if std::panic::catch_unwind(AssertUnwindSafe(f)).is_err() {
        stats.panics.fetch_add(1, Ordering::Relaxed);
        error!("a mesh callback panicked; the message was dropped");
    }
}

fn receive(inner: &Inner, sample: &Sample) {
    let frame = sample.payload().to_bytes();
    let (stamp, message) = match wire::decode(&frame, Instant::now()) {
        Ok(x) => x,
        Err(e) => {
            inner.stats.malformed.fetch_add(1, Ordering::Relaxed);
            debug!(key = %sample.key_expr(), error = %e, "mesh frame dropped");
            return;
        }
    };
    if stamp.origin == inner.node_id {
        return;
    }
    {
        let mut seen = inner.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let last = seen.entry((stamp.origin.clone(), stamp.boot)).or_insert(0);
        if stamp.seq <= *last {
            inner.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = stamp.seq;
    }
    if inner.in_tx.try_send(In::Publish(message)).is_err() {
        inner.stats.dropped_in.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_in_a_callback_is_caught_and_counted() {
        let stats = MeshStats::default();
        guarded(&stats, || panic!("boom"));
        let mut ran = false;
        guarded(&stats, || ran = true);
        assert!(ran);
        assert_eq!(stats.panics.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn bad_node_ids_and_endpoints_are_refused() {
        let config = |id: &str, e: &str| MeshConfig {
            node_id: id.into(),
            listen: vec![e.into()],
            ..MeshConfig::default()
        };
        assert!(Mesh::new(config("plant-1", "tcp/127.0.0.1:7447")).is_ok());
        for id in ["", "a/b", "a*", &"x".repeat(65)] {
            assert!(matches!(Mesh::new(config(id, "tcp/127.0.0.1:7447")), Err(MeshError::NodeId(_))), "{id}");
        }
        for e in ["127.0.0.1:7447", "udp/127.0.0.1:7447", "tcp/127.0.0.1", "tcp/:80", "tcp/h:99999"] {
            assert!(matches!(Mesh::new(config("n", e)), Err(MeshError::Endpoint(_))), "{e}");
        }
    }
}
