//! The node's HTTP API: the device registry, groups, the quarantine list, the history of messages
//! and the rules of a running node, as JSON under `/api/v1`.
//!
//! # Layout
//! - [`HttpServer`]: binds ([`HttpServer::bind`], reporting [`HttpServer::local_addr`]), then serves
//!   until a shutdown token is cancelled ([`HttpServer::run`]); [`serve`] does both.
//! - [`router`]: the routes as an [`axum::Router`], for embedding or in-process tests.
//! - [`HttpConfig`]: where to listen and the optional API token.
//!
//! # Routes
//! | method and path | success | body |
//! |---|---|---|
//! | `POST /api/v1/login` | 200 | `{user, password}` → `{user, role, csrf}` and the session cookie `m2m_session` |
//! | `POST /api/v1/logout` | 204 | |
//! | `GET /api/v1/me` | 200 | `{user, role, via (session\|token\|loopback), csrf?}` |
//! | `POST /api/v1/me/password` | 204 | `{current, new}` |
//! | `GET /api/v1/users`, `POST /api/v1/users` | 200, 201 | `[{name, role, created}]`; `{name, password, role}` → the user |
//! | `PATCH /api/v1/users/{name}`, `DELETE ...` | 200, 204 | `{password?, role?}` → the user |
//! | `GET /api/v1/tokens`, `POST /api/v1/tokens` | 200, 201 | `[{id, name, role, created}]`; `{name, role}` → the token with its secret `token` (shown once) |
//! | `DELETE /api/v1/tokens/{id}` | 204 | |
//! | `GET /api/v1/stream?filter=F` | 200 | Server-Sent Events: `stats`, `client`, `quarantine`, `message`, `lagged` |
//! | `GET /api/v1/node/rates?seconds=N` | 200 | `{samples: [{ts, connections, messages_in, messages_out, dropped, in_rate, out_rate, drop_rate}]}` |
//! | `GET /api/v1/devices` | 200 | array of devices |
//! | `POST /api/v1/devices` | 201 | `{id, password?, groups?, attributes?, disabled?, rules?}` → the device |
//! | `GET /api/v1/devices/{id}` | 200 | the device |
//! | `PATCH /api/v1/devices/{id}` | 200 | `{password? (null removes), groups?, attributes? (merged; a null value removes), rules?, enabled?}` → the device |
//! | `DELETE /api/v1/devices/{id}` | 204 | |
//! | `POST /api/v1/devices/import` | 200 | `application/json` array or `text/csv` lines `id,password,groups,disabled` → `{"imported": n}` |
//! | `GET /api/v1/groups` | 200 | array of `{name, rules}` |
//! | `GET /api/v1/groups/{name}` | 200 | `{name, rules}` |
//! | `PUT /api/v1/groups/{name}` | 201 (new), 200 | `{rules}` → the group |
//! | `DELETE /api/v1/groups/{name}` | 204 | |
//! | `GET /api/v1/quarantine` | 200 | array of entries, each with `expired` |
//! | `POST /api/v1/quarantine` | 201 | `{target: {kind, value}, mode, reason, actor?, expires_in_secs?}` → the entry |
//! | `DELETE /api/v1/quarantine/{id}` | 200 | the released entry |
//! | `GET /api/v1/audit?limit=N` | 200 | array of audit events, newest first |
//! | `GET /api/v1/clients/{client_id}/refusals` | 200 | what a quarantined client was refused |
//! | `GET /api/v1/clients?state=online\|offline\|all&search=S&limit=N` | 200 | array of clients (see [Clients](#clients)), by id |
//! | `GET /api/v1/clients/{client_id}` | 200 | the client |
//! | `POST /api/v1/clients/{client_id}/disconnect` | 204 | (404 when it is not connected) |
//! | `POST /api/v1/publish` | 200 | `{topic, payload (string\|JSON), encoding? (text\|base64), qos?, retain?, user_properties? ([[k, v]])}` → `{topic, qos}` |
//! | `GET /api/v1/node` | 200 | `{node_id, version, started, uptime_secs, listeners: [{address, transport}], features: {history, rules, mesh}, stats: {...}}` |
//! | `GET /api/v1/nodes` | 200 | array of `{node_id, local, reachable, rtt_ms?, backlog?}`, this node first |
//! | `GET /api/v1/config` | 200 | the effective configuration, secrets as `"<redacted>"` |
//! | `GET /metrics` | 200 | Prometheus text format 0.0.4 (not under `/api/v1`; see [Metrics](#metrics)) |
//! | `GET /api/v1/history?filter=F&from=T&to=T&limit=N&order=asc\|desc&cursor=C&field=P` | 200 | `{points: [point], next: cursor\|null, gaps: [{from, to, dropped}]}`, streamed |
//! | `GET /api/v1/history/aggregate?filter=F&from=T&to=T&field=P&bucket=D&agg=avg,max` | 200 | `{series: [{topic, skipped, buckets: [{start, start_us, count, avg?, ...}]}]}` |
//! | `GET /api/v1/latest?filter=F&field=P` | 200 | `{values: [point]}`: the last message of each topic |
//! | `GET /api/v1/mesh` | 200 | the mesh as this node sees it: other nodes, reachable, round trips, backlogs, filters |
//! | `GET /api/v1/uplinks` | 200 | array of the bridges to external brokers: connected, backlog, counters, last error |
//! | `GET /api/v1/topics?filter=F` | 200 | `{topics: [{topic, messages, first, last, first_us, last_us}]}` |
//! | `GET /api/v1/rules` | 200 | array of rules, each with `state` and `metrics` |
//! | `POST /api/v1/rules` | 201 | `{id, sql, actions?, enabled?, description?, window?, silence?}` → the rule |
//! | `GET /api/v1/rules/{id}` | 200 | the rule |
//! | `PUT /api/v1/rules/{id}` | 201 (new), 200 | `{id? (the path's), sql, actions?, ...}` → the rule |
//! | `DELETE /api/v1/rules/{id}` | 204 | |
//! | `POST /api/v1/rules/{id}/enable`, `.../disable` | 200 | the rule |
//! | `POST /api/v1/rules/test` | 200 | `{sql, topic, payload, clientid?}` → `{output: {...}\|null}` |
//! | `GET /api/v1/openapi.json`, `GET /api/openapi.json` | 200 | the OpenAPI 3.1 document of these routes |
//! | `GET /`, `GET /console/...` | 303, 200 | the operator's console (see `console.rs`): static files, no authentication |
//!
//! A device is shown without its password hash: `has_password` says whether it has one. Every
//! error is a JSON body `{"error": "<code>", "message": "..."}`: 400 invalid input (a bad id, rule
//! or target, a body that is not the expected JSON), 401 no caller (no or a wrong token, an ended
//! session), 403 a role short of the route's or a change without its session's CSRF token, 404 no
//! such device, group, entry, rule or route, 405 a method the route does not have, 409 a device,
//! rule or user that exists already (or the last admin), 413 a body over 8 MiB, 415 a body of
//! another content type, 429 too many failed logins, 500 a failure of the node (logged; the client
//! sees a generic message).
//!
//! # History
//! A point is `{topic, ts (RFC 3339, µs), ts_us, publisher_ts?, qos, retain, client_id?,
//! content_type?, user_properties? ([[name, value]]), payload, encoding}`, and `value` (the JSON at
//! `field`, or `null`) when a field is asked for. `payload` is the JSON value itself when the
//! payload parses as JSON (unless its content type is `text/*`), else a string: the text when it is
//! UTF-8 (`encoding: "text"`), else base64 (`"base64"`). Times (`from`, `to`) are RFC 3339, unix
//! seconds, milliseconds or microseconds, `now`, `now-1h` or `-15m`; `from` is included, `to` is
//! not; `to` is now by default, `from` an hour before `to`. `limit` is 1000 by default and 100 000 at most; when it stops a
//! query, `next` is the `cursor` of the next page, and paging with it yields every point once.
//! Filters are MQTT filters (percent-encode `+` as `%2B` and `#` as `%23` in a query string);
//! `#` does not match `$SYS/...`. `/history` streams its body (chunked) from a blocking thread as
//! it reads the store: a bad parameter is a 400 before anything is sent, but a store failure
//! after the 200 went out is logged and cuts the body off before its closing `}` (an incomplete
//! chunked body): a client must treat a body it cannot parse to the end as a failed query.
//! Aggregates show `count` and the functions asked for (`agg`, default all of count, min, max, avg,
//! sum, first, last) per bucket (`bucket`, a duration, default `1m`) of the numbers found at `field`
//! (a JSON number, a numeric string, or a boolean as 1/0); `skipped` counts points without one. A
//! node that keeps no history (`[history] enabled = false`, or no store) answers these routes with
//! 404 `{"error": "history is off on this node"}`.
//!
//! # Rules
//! A rule is shown as the engine reports it (`m2m_engine::RuleStatus`): its members, `state`
//! (`running`, `disabled`, `disabled_failing` when the engine stopped it for failing, `invalid` when
//! a stored rule no longer compiles) and `metrics` (`matched`, `passed`, `failed`, `actions_ok`,
//! `actions_failed`, `eval_mean_ns`, `last_error`). A body with a member a rule does not have is a
//! 400, as is a rule the engine refuses (its message says why). Changes are audited (actor `api`,
//! actions `rule.add`, `rule.replace`, `rule.remove`, `rule.enable`, `rule.disable`). `POST
//! /rules/test` evaluates a query on a sample message (a `payload` string is its text, another JSON
//! value is sent as JSON) and runs no action. A rule may be called `test`: `GET`, `PUT` and
//! `DELETE /rules/test` act on it. A node whose rules engine is off (`[rules] enabled = false`)
//! answers these routes with 404 `{"error": "rules are off on this node"}`.
//!
//! # Clients
//! A client is `{client_id, online, username?, address, protocol ("3.1", "3.1.1", "5.0"), transport
//! (tcp, tls, ws, wss), connected_at? (RFC 3339, while connected), last_seen (now, or when it
//! disconnected), keep_alive, clean_start, session_expiry, subscriptions: [{filter, qos}],
//! messages_in, messages_out, bytes_in, bytes_out, in_rate, out_rate (messages/s), queued,
//! inflight}`. The node lists the clients that connected since it started: those connected now,
//! and those whose session it keeps (a non-zero session expiry, until it expires; at most 10 000,
//! the oldest forgotten first). Counters are those of the current (or last) connection; rates are
//! measured between reads at least a second apart (the first read after a connection gives the
//! average since it began). `queued` counts the messages waiting in the session's queue (not yet in
//! flight), `inflight` the QoS 1/2 messages sent and not yet acknowledged; for an offline client,
//! those its kept session holds now. A disconnection (`POST .../disconnect`) sends MQTT 5
//! clients DISCONNECT 0x98 (Administrative action), keeps the session and is audited
//! (`client.disconnect`). `POST /publish` publishes as the node itself (publisher `$api`): a string
//! payload is sent as its text (or decoded, with `encoding: "base64"`), any other JSON value as
//! JSON; topics under `$SYS` are refused.
//!
//! # Metrics
//! `GET /metrics` writes counters and gauges named `m2m_...`: connections (`m2m_connections`,
//! `_total`, `_rejected_total`), messages received and sent by `qos` label, dropped, bytes, protocol
//! errors, authentication failures, access denied, sessions, subscriptions, retained messages,
//! quarantine entries, the history's stored and dropped messages, the store's group commit time
//! (`m2m_store_commit_seconds`, a histogram from 0.1 ms to 1 s), per-rule counters (label `rule`),
//! the mesh backlog per node (label `node`) and per uplink (label `uplink`); families a node does
//! not have are left out.
//!
//! # Security
//! Every request but a login and the console's files is made by a caller with a role (see `auth`):
//! a bearer token (an API token, or the configured [`HttpConfig::token`] as admin), a console
//! session (cookie, and its CSRF token on every change), or a non-browser client on loopback when
//! [`HttpConfig::trust_loopback`] and no token is configured. Reads need `viewer`, changes
//! `operator`, users, tokens and the configuration `admin`. Every change is audited under the
//! caller's name. The API speaks plain HTTP: serve it on a non-loopback address only behind
//! something that adds TLS, or passwords, cookies and tokens cross the network in clear.
//!
//! # What this crate does not do
//! No TLS, no request timeouts, no rate limits but on failed logins; console sessions live in
//! memory (a restart logs everyone out). The OpenAPI document is behind the same gate as every
//! other route. Password hashing and registry writes run on blocking threads;
//! an import hashes its passwords while holding the registry's lock (it is all or nothing), so a
//! large import delays connections' access checks for its duration.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use m2m_access::Operators;
use m2m_broker::{AccessControl, Broker, Clients, Metrics, RouterHandle};
use m2m_engine::Engine;
use m2m_history::History;
use m2m_mesh::{Mesh, Uplink};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

mod auth;
mod clients;
mod console;
mod devices;
mod error;
mod extract;
mod groups;
mod history;
mod live;
mod mesh;
mod metrics;
mod node;
mod openapi;
mod operators;
mod publish;
mod quarantine;
mod rules;

pub use error::HttpError;
pub use history::{gap_json, point_json, series_json, topic_json, DEFAULT_LIMIT};
pub use live::{Live, Sample, SAMPLES, STREAM_RATE};
pub use node::{redact_secrets, REDACTED};
pub use rules::rule_from_json;

use auth::Gate;
use error::ApiError;

/// The error type of this crate.
pub type Error = HttpError;

/// A `Result` with this crate's [`Error`].
pub type Result<T, E = HttpError> = std::result::Result<T, E>;

/// The largest request body accepted (an import of many devices); larger ones get 413.
pub const BODY_LIMIT: usize = 8 * 1024 * 1024;

/// Where the API listens by default: loopback only.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8080);

/// Settings of the HTTP API.
#[derive(Clone)]
pub struct HttpConfig {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// A bearer token that admits its bearers as admin (besides users and API tokens); with one,
    /// loopback clients are not trusted. Must not be empty.
    pub token: Option<String>,
    /// Whether clients on loopback that carry no credentials and are not browsers are admitted
    /// as admin (so the CLI manages the node it runs beside). Only without a `token`.
    pub trust_loopback: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self { listen: DEFAULT_LISTEN, token: None, trust_loopback: true }
    }
}

impl std::fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a credential: never in logs.
        f.debug_struct("HttpConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("trust_loopback", &self.trust_loopback)
            .finish()
    }
}

/// What every handler shares.
#[derive(Debug, Clone)]
pub(crate) struct ApiState {
    pub(crate) access: Arc<AccessControl>,
    /// Bounds the password hashes in progress: [`CONCURRENT_HASHES`] permits.
    pub(crate) hashing: Arc<Semaphore>,
    /// The node's history; `None` when it keeps none (the history routes answer 404).
    pub(crate) history: Option<History>,
    /// The node's rules engine; `None` when it runs none (the rules routes answer 404).
    pub(crate) engine: Option<Engine>,
    /// The node's place in a mesh; `None` when it is on its own (the mesh route answers 404).
    pub(crate) mesh: Option<Mesh>,
    /// Its bridges to external brokers.
    pub(crate) uplinks: Arc<[Uplink]>,
    /// Who may call, and the console's sessions.
    pub(crate) gate: Arc<Gate>,
    /// The live view (streams, rates); `None`: the stream routes answer 404.
    pub(crate) live: Option<Live>,
    /// Cancelled when the server stops: open event streams end, so that a graceful stop does not
    /// wait for them.
    pub(crate) closing: CancellationToken,
    /// The broker's side: clients, counters, the router (see [`NodeParts`]).
    pub(crate) broker: Arc<BrokerParts>,
}

/// What the node, clients, publish and metrics routes read, shared by every request.
#[derive(Debug)]
pub(crate) struct BrokerParts {
    pub(crate) router: Option<RouterHandle>,
    pub(crate) metrics: Option<Arc<Metrics>>,
    pub(crate) clients: Option<Clients>,
    pub(crate) store: Option<m2m_store::Store>,
    pub(crate) node_id: String,
    pub(crate) started: std::time::SystemTime,
    pub(crate) listeners: Vec<(SocketAddr, &'static str)>,
    pub(crate) config: Option<serde_json::Value>,
    pub(crate) memory: Option<Arc<m2m_session::MemoryBudget>>,
}

/// The parts of a running node the API reaches.
#[derive(Debug, Clone)]
pub struct NodeParts {
    /// Devices, groups, quarantine and the audit log.
    pub access: Arc<AccessControl>,
    /// The history; `None`: the node keeps none.
    pub history: Option<History>,
    /// The rules engine; `None`: the node runs no rules.
    pub engine: Option<Engine>,
    /// The mesh; `None`: the node is on its own.
    pub mesh: Option<Mesh>,
    /// Bridges to external MQTT brokers.
    pub uplinks: Vec<Uplink>,
    /// The router, for publishing and disconnecting clients; `None`: those routes answer 404.
    pub router: Option<RouterHandle>,
    /// The node's counters, for `/node` and `/metrics`; `None`: they show zeros.
    pub metrics: Option<Arc<Metrics>>,
    /// The directory of clients; `None`: the clients routes answer 404.
    pub clients: Option<Clients>,
    /// The store, for its commit latency in `/metrics`.
    pub store: Option<m2m_store::Store>,
    /// The node's name (its mesh id, when it is in a mesh).
    pub node_id: String,
    /// When the node started.
    pub started: std::time::SystemTime,
    /// The MQTT listeners: address and transport (`tcp`, `tls`, `ws`, `wss`).
    pub listeners: Vec<(SocketAddr, &'static str)>,
    /// The effective configuration, secrets already redacted, for `/config`; `None`: 404.
    pub config: Option<serde_json::Value>,
    /// The users and API tokens of the API and console.
    pub operators: Arc<Operators>,
    /// The live view: a tap of the router, sampling the node's counters; `None`: no streams.
    pub live: Option<Live>,
    /// The memory budget of the node's queues, for the metrics; `None`: not shown.
    pub memory: Option<Arc<m2m_session::MemoryBudget>>,
}

impl NodeParts {
    /// A node with access control only: no history, no rules, no mesh, no uplinks, no broker, no
    /// live view, and operators kept in memory only.
    ///
    /// # Panics
    /// Never in practice: operators without a store cannot fail to open.
    pub fn new(access: Arc<AccessControl>) -> Self {
        #[allow(clippy::expect_used)]
        let operators = Arc::new(Operators::open(None).expect("operators in memory"));
        Self {
            access,
            history: None,
            engine: None,
            mesh: None,
            uplinks: Vec::new(),
            router: None,
            metrics: None,
            clients: None,
            store: None,
            node_id: DEFAULT_NODE_ID.to_owned(),
            started: std::time::SystemTime::now(),
            listeners: Vec::new(),
            config: None,
            operators,
            live: None,
            memory: None,
        }
    }

    /// The parts of a bound `broker`: its access control, history, router, counters, clients,
    /// store and listeners; no rules, mesh, uplinks, configuration or live view, and operators in
    /// memory only.
    pub fn with_broker(broker: &Broker) -> Self {
        Self {
            history: broker.history(),
            router: Some(broker.router()),
            metrics: Some(broker.metrics()),
            clients: Some(broker.clients()),
            store: broker.store(),
            listeners: broker.listener_addrs(),
            memory: Some(broker.memory_budget()),
            ..Self::new(broker.access())
        }
    }
}

/// The node id shown when none is given.
pub const DEFAULT_NODE_ID: &str = "m2m";

/// How many passwords are hashed at once, at most (argon2id takes 19 MiB and tens of milliseconds
/// each); further requests wait.
pub(crate) const CONCURRENT_HASHES: usize = 2;

/// The API's routes over `access`, `history` (if the node keeps one) and `engine` (if it runs
/// rules), admitting requests as `token` says (see [`HttpConfig::token`]).
///
/// Without a token, a request is served only if the connection's address is known to be loopback:
/// serve the router with `into_make_service_with_connect_info::<SocketAddr>()`, as
/// [`HttpServer::run`] does, or every request gets 403.
pub fn router(parts: NodeParts, config: &HttpConfig) -> Router {
    routes(parts, config, CancellationToken::new())
}

/// [`router`], with event streams that end when `closing` is cancelled.
fn routes(parts: NodeParts, config: &HttpConfig, closing: CancellationToken) -> Router {
    let NodeParts {
        access,
        history,
        engine,
        mesh,
        uplinks,
        router: mqtt_router,
        metrics,
        clients,
        store,
        node_id,
        started,
        listeners,
        config: shown_config,
        operators,
        live,
        memory,
    } = parts;
    let broker = Arc::new(BrokerParts {
        router: mqtt_router,
        metrics,
        clients,
        store,
        node_id,
        started,
        listeners,
        config: shown_config,
        memory,
    });
    let gate = Arc::new(Gate::new(config.token.as_deref(), config.trust_loopback, operators, access.clone()));
    Router::new()
        .route("/api/v1/login", post(operators::login))
        .route("/api/v1/logout", post(operators::logout))
        .route("/api/v1/me", get(operators::me))
        .route("/api/v1/me/password", post(operators::change_password))
        .route("/api/v1/users", get(operators::list_users).post(operators::add_user))
        .route(
            "/api/v1/users/{name}",
            axum::routing::patch(operators::change_user).delete(operators::remove_user),
        )
        .route("/api/v1/tokens", get(operators::list_tokens).post(operators::create_token))
        .route("/api/v1/tokens/{id}", axum::routing::delete(operators::revoke_token))
        .route("/api/v1/devices", get(devices::list).post(devices::create))
        .route(
            "/api/v1/devices/import",
            post(devices::import)
                .get(devices::named_import::show)
                .patch(devices::named_import::change)
                .delete(devices::named_import::remove),
        )
        .route("/api/v1/devices/{id}", get(devices::show).patch(devices::change).delete(devices::remove))
        .route("/api/v1/groups", get(groups::list))
        .route("/api/v1/groups/{name}", get(groups::show).put(groups::put).delete(groups::remove))
        .route("/api/v1/quarantine", get(quarantine::list).post(quarantine::add))
        .route("/api/v1/quarantine/{id}", axum::routing::delete(quarantine::release))
        .route("/api/v1/audit", get(quarantine::audit))
        .route("/api/v1/clients/{client_id}/refusals", get(quarantine::refusals))
        .route("/api/v1/clients", get(clients::list))
        .route("/api/v1/clients/{client_id}", get(clients::show))
        .route("/api/v1/clients/{client_id}/disconnect", post(clients::disconnect))
        .route("/api/v1/publish", post(publish::publish))
        .route("/api/v1/node", get(node::show))
        .route("/api/v1/nodes", get(node::nodes))
        .route("/api/v1/config", get(node::config))
        .route("/metrics", get(metrics::exposition))
        .route("/api/v1/history", get(history::points))
        .route("/api/v1/history/aggregate", get(history::aggregate))
        .route("/api/v1/latest", get(history::latest))
        .route("/api/v1/topics", get(history::topics))
        .route("/api/v1/rules", get(rules::list).post(rules::create))
        .route(
            "/api/v1/rules/test",
            post(rules::test)
                .get(rules::named_test::show)
                .put(rules::named_test::put)
                .delete(rules::named_test::remove),
        )
        .route("/api/v1/rules/{id}", get(rules::show).put(rules::put).delete(rules::remove))
        .route("/api/v1/rules/{id}/enable", post(rules::enable))
        .route("/api/v1/rules/{id}/disable", post(rules::disable))
        .route("/api/v1/stream", get(live::stream))
        .route("/api/v1/node/rates", get(live::rates))
        .route("/api/v1/mesh", get(mesh::status))
        .route("/api/v1/uplinks", get(mesh::uplinks))
        .route("/api/v1/openapi.json", get(openapi::document))
        .route("/api/openapi.json", get(openapi::document))
        .fallback(no_route)
        .method_not_allowed_fallback(no_method)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(gate.clone(), auth::check))
        .with_state(ApiState {
            access,
            hashing: Arc::new(Semaphore::new(CONCURRENT_HASHES)),
            history,
            engine,
            mesh,
            uplinks: uplinks.into(),
            gate,
            live,
            closing,
            broker,
        })
        // The console's static files need no authentication: they are merged outside the gate.
        .merge(console::routes())
}

async fn no_route() -> ApiError {
    ApiError::not_found("no such route")
}

async fn no_method() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "the route does not have this method")
}

/// Runs `f` on a blocking thread: password hashing, registry writes (which commit to the store) and
/// history reads, so that they never stall the async threads. A panic in `f` is an internal error.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ApiError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(joined) => Err(ApiError::internal("a blocking task", &joined)),
    }
}

/// Now, in unix milliseconds.
pub(crate) fn now_ms() -> u64 {
    m2m_store::unix_ms(std::time::SystemTime::now())
}

/// How this node answers the mesh queries of other nodes (history and last values), for
/// [`m2m_mesh::Mesh::serve_queries`].
pub fn mesh_queries(parts: &NodeParts) -> m2m_mesh::QueryHandler {
    let history = parts.history.clone();
    std::sync::Arc::new(move |kind, asked| Box::pin(history::mesh_answer(history.clone(), kind, asked)))
}

/// The HTTP API server: bound, not yet serving.
#[derive(Debug)]
pub struct HttpServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    router: Router,
    closing: CancellationToken,
}

impl HttpServer {
    /// Binds `config.listen` and prepares the routes over `access`, `history` (`None`: the node
    /// keeps no history, and its routes answer 404) and `engine` (`None`: the node runs no rules,
    /// and the rules routes answer 404).
    ///
    /// # Errors
    /// [`HttpError::EmptyToken`] for an empty token; [`HttpError::Bind`] when the address cannot be
    /// bound.
    pub async fn bind(config: &HttpConfig, parts: NodeParts) -> Result<Self> {
        if config.token.as_deref().is_some_and(str::is_empty) {
            return Err(HttpError::EmptyToken);
        }
        let addr = config.listen;
        let listener = TcpListener::bind(addr).await.map_err(|source| HttpError::Bind { addr, source })?;
        let local_addr = listener.local_addr().map_err(|source| HttpError::Bind { addr, source })?;
        if config.token.is_none() && !addr.ip().to_canonical().is_loopback() {
            warn!(%local_addr, "HTTP API without a token: only clients on loopback addresses are served");
        }
        let closing = CancellationToken::new();
        Ok(Self { listener, local_addr, router: routes(parts, config, closing.clone()), closing })
    }

    /// The address the server is bound to (with the real port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves requests until `shutdown` is cancelled, then stops accepting and waits for the
    /// requests in progress to finish.
    ///
    /// # Errors
    /// [`HttpError::Serve`] when the server fails.
    ///
    /// # Cancel safety
    /// Dropping the future closes the listener and every connection at once; cancel `shutdown` for
    /// a graceful stop.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        info!(local_addr = %self.local_addr, "HTTP API ready");
        let (stopping, closing) = (shutdown.clone(), self.closing.clone());
        tokio::spawn(async move {
            stopping.cancelled().await;
            closing.cancel();
        });
        let service = self.router.into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(self.listener, service)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .map_err(HttpError::Serve)?;
        info!(local_addr = %self.local_addr, "HTTP API stopped");
        Ok(())
    }
}

/// Binds `config.listen` and serves the API over `access`, `history` and `engine` until `shutdown`
/// is cancelled.
///
/// # Errors
/// As [`HttpServer::bind`] and [`HttpServer::run`].
pub async fn serve(config: HttpConfig, parts: NodeParts, shutdown: CancellationToken) -> Result<()> {
    HttpServer::bind(&config, parts).await?.run(shutdown).await
}
