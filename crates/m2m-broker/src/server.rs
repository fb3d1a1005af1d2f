//! The node's MQTT side: bind, accept, serve, shut down.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use m2m_access::{AuditLog, Quarantine, Registry};
use m2m_router::{Command, Metrics, Router, RouterConfig, RouterHandle};
use m2m_store::Store;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::access::{AccessControl, RegistryAuth};
use crate::auth::Authenticator;
use crate::clients::{ClientTransport, Clients};
use crate::config::{Config, Transport};
use crate::connection::{serve, Shared};
use crate::error::{Error, Result};
use crate::gate::{Gate, Ticket};
use crate::{tls, ws};

/// A bound, not yet running node.
pub struct Broker {
    /// The main TCP listener first, then the others in configuration order.
    listeners: Vec<Bound>,
    router: Router,
    shared: Shared,
}

/// A bound listener.
struct Bound {
    listener: TcpListener,
    local_addr: SocketAddr,
    transport: Accept,
}

/// How a listener turns an accepted socket into an MQTT byte stream.
#[derive(Clone)]
enum Accept {
    Tcp,
    Tls(TlsAcceptor),
    Ws(Arc<str>),
    Wss(TlsAcceptor, Arc<str>),
}

impl Accept {
    fn name(&self) -> &'static str {
        match self {
            Accept::Tcp => "tcp",
            Accept::Tls(_) => "tls",
            Accept::Ws(_) => "ws",
            Accept::Wss(..) => "wss",
        }
    }
}

async fn bind_one(addr: SocketAddr, transport: Accept) -> Result<Bound> {
    let listener = TcpListener::bind(addr).await.map_err(|source| Error::Bind { addr, source })?;
    let local_addr = listener.local_addr().map_err(|source| Error::Bind { addr, source })?;
    Ok(Bound { listener, local_addr, transport })
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("listeners", &self.listener_addrs()).finish_non_exhaustive()
    }
}

impl Broker {
    /// Binds the listener and builds the router; nothing runs until [`Broker::run`].
    ///
    /// With a store configured, the node's state is read from it first (sessions, queues, retained
    /// messages, wills), before the listener accepts anyone.
    ///
    /// # Errors
    /// [`Error::Bind`] when the address cannot be bound; [`Error::Store`] when the store cannot be
    /// opened (the message says where and what to do).
    pub async fn bind(config: &Config) -> Result<Self> {
        let mut listeners = vec![bind_one(config.listen, Accept::Tcp).await?];
        for l in &config.listeners {
            let transport = match &l.transport {
                Transport::Tcp => Accept::Tcp,
                Transport::Tls(files) => {
                    Accept::Tls(tls::acceptor(files).map_err(|source| Error::Tls { addr: l.addr, source })?)
                }
                Transport::Ws { path } => Accept::Ws(Arc::from(path.as_str())),
                Transport::Wss { tls: files, path } => Accept::Wss(
                    tls::acceptor(files).map_err(|source| Error::Tls { addr: l.addr, source })?,
                    Arc::from(path.as_str()),
                ),
            };
            listeners.push(bind_one(l.addr, transport).await?);
        }
        let metrics = Arc::new(Metrics::default());
        let mut router_config = RouterConfig {
            limits: Arc::new(config.limits.clone()),
            sys_interval: config.sys_interval,
            taps: config.taps.clone(),
            interest: config.interest.clone(),
            ..RouterConfig::default()
        };
        let budget = Arc::new(m2m_session::MemoryBudget::new(config.memory_budget));
        let mut history = None;
        let (router, handle, store) = match &config.store {
            None => {
                if config.history.is_some() {
                    info!("history is off: it is kept in the store, and this node has none");
                }
                let (router, handle) = Router::new(router_config, metrics.clone());
                (router, handle, None)
            }
            Some(store_config) => {
                let started = std::time::Instant::now();
                let store_config = store_config.clone();
                let history_config = config.history.clone();
                let (store, recovered, opened) = tokio::task::spawn_blocking(move || {
                    let (store, recovered) = Store::open(store_config)?;
                    let history = history_config.map(|c| m2m_history::History::open(store.clone(), c));
                    Ok::<_, m2m_store::StoreError>((store, recovered, history))
                })
                .await
                .map_err(|e| m2m_store::StoreError::Engine(format!("store opening task failed: {e}")))??;
                if let Some(opened) = opened {
                    let opened = opened?;
                    opened.set_budget(budget.clone());
                    router_config.taps.push(Arc::new(opened.clone()));
                    history = Some(opened);
                }
                let sessions = recovered.sessions.len();
                let (router, handle) =
                    Router::with_store(router_config, metrics.clone(), store.clone(), recovered);
                info!(path = %store.path().display(), sessions, elapsed_ms = started.elapsed().as_millis() as u64,
                    "store opened");
                (router, handle, Some(store))
            }
        };
        let registry = Registry::open(store.clone(), config.access_rules.clone())?;
        if registry.is_enabled() {
            info!(
                devices = registry.devices().count(),
                groups = registry.groups().count(),
                "device registry enabled: passwords are checked and access rules enforced"
            );
        }
        match config.anonymous {
            crate::config::Anonymous::LoopbackOnly => {
                info!("anonymous clients are accepted from loopback addresses only (mqtt.anonymous)")
            }
            crate::config::Anonymous::Allow => {
                warn!("anonymous clients are accepted from any address (mqtt.anonymous = \"allow\")")
            }
            crate::config::Anonymous::Deny => info!("anonymous clients are refused (mqtt.anonymous)"),
        }
        let quarantine = Quarantine::open(store.clone())?;
        let audit = AuditLog::new(store.clone());
        let access = Arc::new(
            AccessControl::new(
                registry,
                quarantine,
                audit,
                config.detectors,
                metrics.clone(),
                handle.clone(),
                config.taps.clone(),
            )
            .with_password_checks(config.password_checks, config.password_check_wait),
        );
        access.spawn_expiry();
        let started = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let shared = Shared {
            config: config.clone(),
            router: handle,
            metrics,
            authenticator: Arc::new(RegistryAuth { access: access.clone() }),
            shutdown: CancellationToken::new(),
            conn_ids: AtomicU64::new(1),
            id_prefix: format!("m2m-{started:x}-"),
            store,
            access,
            history,
            clients: Clients::new(),
            gate: Gate::new(config.admission),
            budget,
        };
        Ok(Self { listeners, router, shared })
    }

    /// Replaces the enhanced-authentication hook.
    pub fn with_authenticator(mut self, authenticator: Arc<dyn Authenticator>) -> Self {
        self.shared.authenticator = authenticator;
        self
    }

    /// The address the main MQTT listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.listeners[0].local_addr
    }

    /// Every listener's address and transport (`tcp`, `tls`), the main one first, then the others
    /// in configuration order.
    pub fn listener_addrs(&self) -> Vec<(SocketAddr, &'static str)> {
        self.listeners.iter().map(|l| (l.local_addr, l.transport.name())).collect()
    }

    /// The node's counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    /// The device registry and access rules, for other parts of the node (the API, the CLI).
    pub fn access(&self) -> Arc<AccessControl> {
        self.shared.access.clone()
    }

    /// The node's store, if it keeps state across restarts (for other parts of the node).
    pub fn store(&self) -> Option<m2m_store::Store> {
        self.shared.store.clone()
    }

    /// The history of messages, if it is on (for the API and the CLI).
    pub fn history(&self) -> Option<m2m_history::History> {
        self.shared.history.clone()
    }

    /// A handle to the router, for other parts of the node.
    pub fn router(&self) -> RouterHandle {
        self.shared.router.clone()
    }

    /// The memory budget of the node's queues (for the API's metrics).
    pub fn memory_budget(&self) -> Arc<m2m_session::MemoryBudget> {
        self.shared.budget.clone()
    }

    /// The directory of connected and recently connected clients (for the API).
    pub fn clients(&self) -> Clients {
        self.shared.clients.clone()
    }

    /// Accepts and serves connections until `shutdown` is cancelled, then closes every connection
    /// (v5 clients get DISCONNECT 0x8B; no wills are sent; sessions are kept) and stops the router.
    ///
    /// # Errors
    /// None yet after binding; accept errors are logged and retried.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let Self { listeners, router, shared } = self;
        let shared = Arc::new(shared);
        let router_task = tokio::spawn(router.run());
        let connections = TaskTracker::new();
        let accepting = TaskTracker::new();
        for bound in listeners {
            info!(local_addr = %bound.local_addr, transport = bound.transport.name(), "MQTT listener ready");
            accepting.spawn(accept_loop(bound, shared.clone(), connections.clone(), shutdown.clone()));
        }
        accepting.close();
        accepting.wait().await;
        shared.shutdown.cancel();
        connections.close();
        connections.wait().await;
        let _ = shared.router.send(Command::Stop).await;
        if let Err(e) = router_task.await {
            warn!(error = %e, "router task failed");
        }
        debug!("node stopped");
        Ok(())
    }
}

/// Accepts connections on one listener until `shutdown`.
async fn accept_loop(
    bound: Bound,
    shared: Arc<Shared>,
    connections: TaskTracker,
    shutdown: CancellationToken,
) {
    let Bound { listener, transport, .. } = bound;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Waits here while every handshake slot is taken: back-pressure on the listener.
                    let ticket = tokio::select! {
                        () = shutdown.cancelled() => break,
                        t = shared.gate.admit(peer.ip()) => t,
                    };
                    let ticket = match ticket {
                        Ok(t) => t,
                        Err(turned) => {
                            Metrics::add(&shared.metrics.connections_rejected, 1);
                            debug!(%peer, why = turned.as_str(), "connection turned away");
                            drop(stream);
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let shared = shared.clone();
                    match &transport {
                        Accept::Tcp => {
                            connections.spawn(serve(stream, peer, shared, None, ClientTransport::Tcp, ticket));
                        }
                        Accept::Tls(acceptor) => {
                            connections.spawn(serve_tls(acceptor.clone(), stream, peer, shared, None, ticket));
                        }
                        Accept::Ws(path) => {
                            let transport = ClientTransport::Ws;
                            connections.spawn(serve_ws(stream, path.clone(), peer, shared, None, transport, ticket));
                        }
                        Accept::Wss(acceptor, path) => {
                            let path = Some(path.clone());
                            connections.spawn(serve_tls(acceptor.clone(), stream, peer, shared, path, ticket));
                        }
                    }
                }
                Err(e) => {
                    // Out of descriptors or similar: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// Runs the TLS handshake (bounded by the CONNECT timeout), then serves the connection (over a
/// WebSocket on `ws_path`, if given) with the identity its client certificate gives, if it sent one.
async fn serve_tls(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    ws_path: Option<Arc<str>>,
    ticket: Ticket,
) {
    let limit = shared.config.connect_timeout;
    let stream = match tokio::time::timeout(limit, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            Metrics::add(&shared.metrics.connections_rejected, 1);
            info!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            Metrics::add(&shared.metrics.connections_rejected, 1);
            debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let identity =
        stream.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(tls::certificate_identity);
    match ws_path {
        None => serve(stream, peer, shared, identity, ClientTransport::Tls, ticket).await,
        Some(path) => serve_ws(stream, path, peer, shared, identity, ClientTransport::Wss, ticket).await,
    }
}

/// Runs the WebSocket handshake (bounded by the CONNECT timeout), then serves the connection.
async fn serve_ws<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    path: Arc<str>,
    peer: SocketAddr,
    shared: Arc<Shared>,
    identity: Option<Arc<str>>,
    transport: ClientTransport,
    ticket: Ticket,
) {
    let limit = shared.config.connect_timeout;
    // Room for the largest packet the node accepts, and for smaller ones sent with it.
    let max_message = shared.config.limits.max_packet_size as usize + (1 << 20);
    match tokio::time::timeout(limit, ws::accept_with_max_message(stream, &path, max_message)).await {
        Ok(Ok(stream)) => serve(stream, peer, shared, identity, transport, ticket).await,
        Ok(Err(e)) => {
            Metrics::add(&shared.metrics.connections_rejected, 1);
            info!(%peer, error = %e, "WebSocket handshake failed");
        }
        Err(_) => {
            Metrics::add(&shared.metrics.connections_rejected, 1);
            debug!(%peer, "WebSocket handshake timed out");
        }
    }
}
