//! The webhook action: rules post JSON bodies to an HTTP endpoint without ever slowing the message path.
//!
//! [`Webhook::start`] validates a [`WebhookConfig`] and spawns one background tokio task per webhook.
//! [`Webhook::send`] hands a body to that task through a bounded queue and returns at once; the task
//! delivers the bodies with a small HTTP/1.1 client of its own and counts what happened in
//! [`WebhookStats`].
//!
//! # Queue
//! At most [`WebhookConfig::queue`] bodies are pending at a time: waiting in the queue or being
//! delivered. `send` never blocks and never awaits; when the queue is full it refuses the body,
//! returns `false` and counts it in [`WebhookStats::dropped`]. A slow or dead endpoint therefore costs
//! the caller one atomic update and one channel push per message, never a wait.
//!
//! # Order
//! Bodies are delivered in the order `send` accepted them, one at a time: the next body is not sent
//! before the previous one was delivered or given up. A body that is being retried holds up the ones
//! behind it, which is what keeps the order; a webhook that must not wait behind a struggling endpoint
//! should get a short [`timeout`](WebhookConfig::timeout) and few retries.
//!
//! # Attempts and retries
//! Each attempt (connecting if needed, writing the request, reading the response) has
//! [`WebhookConfig::timeout`]. The status line decides the outcome of an attempt; once it is in, a body
//! that fails or is not read to its end by the timeout only closes the connection. The outcomes:
//!
//! | response | counted as |
//! |---|---|
//! | `2xx` | delivered: [`sent`](WebhookStats::sent) |
//! | `408`, `429`, `5xx`, a network error, a malformed response, a timeout | retried, up to [`max_retries`](WebhookConfig::max_retries) times |
//! | any other status (`3xx`, other `4xx`) | given up at once: redirects are not followed, and a request the endpoint refuses will not get better |
//!
//! Each retry adds one to [`retries`](WebhookStats::retries). A body given up, at once or after the last
//! retry, is a dead letter: it adds one to [`failed`](WebhookStats::failed) and is discarded (the
//! count is the dead-letter queue; bodies are not kept). Every failed attempt, retried or not, sets
//! [`last_error`](WebhookStats::last_error), which stays after later successes. Logs follow the
//! state, not each body: the first dead letter after a delivery is a warning, the next delivery an
//! info line; single dead letters and retries are at debug level.
//!
//! Delivery is at least once: when a request got no response (a timeout, a dropped connection), it is
//! sent again, even though the endpoint may have acted on it. Endpoints should tolerate duplicates.
//!
//! # Back-off
//! Retry `n` (from 1) waits `min(backoff × 2ⁿ⁻¹, max_backoff)` with equal jitter: a random delay
//! between half that and all of it, so webhooks that failed together do not retry in lockstep. A
//! `Retry-After` header in seconds on a `429` or `503` response replaces that delay, still capped by
//! [`max_backoff`](WebhookConfig::max_backoff); the HTTP-date form of `Retry-After` is ignored.
//!
//! # Connections
//! The client keeps its TCP connection alive between bodies and reconnects after an error, a timeout,
//! a response with `Connection: close` (or an HTTP/1.0 response without keep-alive) or a response
//! whose body ends with the connection. When a kept-alive connection turns out to have been closed by
//! the server before any byte of a response came back, the request is sent again at once on a new
//! connection within the same attempt; that is not counted as a retry. Response bodies are read and
//! discarded, whatever their framing (`Content-Length`, chunked, or until the connection closes), up to
//! 1 MiB; beyond that the rest is not read and the connection is closed, and the status still counts.
//!
//! Each request carries `Host`, `User-Agent: m2m/<version>`, `Content-Type: application/json` and
//! `Content-Length`, plus the configured [`headers`](WebhookConfig::headers); a configured `Host`,
//! `User-Agent` or `Content-Type` replaces the built-in one.
//!
//! # Stopping
//! [`Webhook`] is a cheap handle; clones share the task. When the last handle is dropped, the task
//! finishes the attempt in progress (at most one [`timeout`](WebhookConfig::timeout)), does not retry
//! it, counts the bodies still queued as dropped, closes its connection and ends.
//!
//! # What this module does not do
//! - `https://` checks the server's certificate against the public roots built in (Mozilla's), or
//!   against the authorities of [`WebhookConfig::ca`] only; there is no way to skip the check.
//! - No proxies, no redirects, no credentials in the URL (put them in an `Authorization` header), no
//!   request compression; host names are resolved by the system resolver on every new connection.
//! - Dead letters are counted and logged, not stored for a later replay.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsConnector;
use tracing::{debug, info, trace, warn};

/// The most of a response body that is read (and discarded) before the connection is closed instead.
pub const MAX_RESPONSE_BODY: u64 = 1024 * 1024;

/// The longest response status line plus headers accepted.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// The longest chunk-size or trailer line accepted in a chunked response body.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// Headers the client writes itself because they frame the request or manage the connection.
const RESERVED_HEADERS: [&str; 8] =
    ["content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer", "upgrade", "expect"];

/// Where and how a [`Webhook`] delivers its bodies.
#[derive(Clone)]
pub struct WebhookConfig {
    /// `http://host[:port]/path?query` or `https://…`. The host is a name, an IPv4 address or a
    /// bracketed IPv6 address; the port defaults to 80 (443 for https); a `#fragment` is not sent.
    pub url: String,
    /// For `https://`: a PEM file of the certificate authorities to trust instead of the public roots
    /// (a site's own CA).
    pub ca: Option<PathBuf>,
    /// Extra request headers, e.g. `("Authorization", "Bearer …")`. Names must be HTTP tokens and values
    /// must not hold control characters other than tab; framing headers (`Content-Length`,
    /// `Transfer-Encoding`, `Connection`…) are refused.
    pub headers: Vec<(String, String)>,
    /// The limit on one attempt: connecting, writing the request and reading the response (a body
    /// still unread when it runs out closes the connection without changing the outcome).
    pub timeout: Duration,
    /// How many times a body is tried again after a retryable failure; attempts are `1 + max_retries`.
    pub max_retries: u32,
    /// The delay before the first retry, doubled for each further one (with jitter).
    pub backoff: Duration,
    /// The longest delay between two attempts, also the cap on `Retry-After`.
    pub max_backoff: Duration,
    /// The most bodies pending at a time (queued or being delivered); at least 1.
    pub queue: usize,
}

impl Default for WebhookConfig {
    /// No URL (it must be set), no extra headers, 5 s per attempt, 5 retries from 200 ms up to 30 s,
    /// 1000 pending bodies.
    fn default() -> Self {
        Self {
            url: String::new(),
            ca: None,
            headers: Vec::new(),
            timeout: Duration::from_secs(5),
            max_retries: 5,
            backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            queue: 1000,
        }
    }
}

impl fmt::Debug for WebhookConfig {
    /// Header values are left out: they often hold credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("ca", &self.ca)
            .field("headers", &header_names)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("backoff", &self.backoff)
            .field("max_backoff", &self.max_backoff)
            .field("queue", &self.queue)
            .finish()
    }
}

/// Why a [`WebhookConfig`] was refused by [`Webhook::start`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// The certificate authorities for `https://` could not be loaded.
    #[error("webhook TLS: {0}")]
    Tls(String),
    /// The URL is not of the form `http://host[:port]/path?query`.
    #[error("invalid webhook URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as configured.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A configured header name is empty or not an HTTP token (letters, digits, ``!#$%&'*+-.^_`|~``).
    #[error("invalid header name {name:?}: expected letters, digits or one of !#$%&'*+-.^_`|~")]
    InvalidHeaderName {
        /// The header name as configured.
        name: String,
    },
    /// A configured header value contains CR, LF, NUL or another control character.
    #[error("the value of header {name:?} contains a line break or another control character")]
    InvalidHeaderValue {
        /// The name of the header (the value is not repeated: it may be a credential).
        name: String,
    },
    /// A configured header is one the client writes itself, such as `Content-Length` or `Connection`.
    #[error("header {name:?} is set by the webhook client and cannot be configured")]
    ReservedHeader {
        /// The header name as configured.
        name: String,
    },
    /// A limit in the configuration is out of range.
    #[error("invalid webhook configuration: {reason}")]
    InvalidConfig {
        /// Which limit and why.
        reason: &'static str,
    },
    /// [`Webhook::start`] was called outside a tokio runtime, so its task could not be spawned.
    #[error("a webhook must be started within a tokio runtime")]
    NoRuntime(#[source] tokio::runtime::TryCurrentError),
}

/// A snapshot of a webhook's counters, from [`Webhook::stats`].
///
/// Each counter is read on its own, so a snapshot taken during a delivery may be off by one between
/// them (a body counted in `sent` and still in `queued`, say).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct WebhookStats {
    /// Bodies delivered (a `2xx` response).
    pub sent: u64,
    /// Attempts after the first, over all bodies.
    pub retries: u64,
    /// Bodies given up on, at once or after the last retry: the dead letters.
    pub failed: u64,
    /// Bodies refused by [`Webhook::send`] because the queue was full (or the task had ended), plus
    /// those still queued when the last handle was dropped.
    pub dropped: u64,
    /// Bodies pending now: queued or being delivered.
    pub queued: u64,
    /// The error of the most recent failed attempt, if any attempt ever failed.
    pub last_error: Option<String>,
}

/// A handle on a running webhook: [`send`](Webhook::send) bodies to it, read its [`stats`](Webhook::stats).
///
/// Clones share one queue, one task and one set of counters. Dropping the last clone stops the task
/// (see the [module docs](self#stopping)).
#[derive(Clone)]
pub struct Webhook {
    handle: Arc<Handle>,
}

/// What the handles share. Dropping it closes the queue and the stop channel, which ends the task.
struct Handle {
    queue: mpsc::UnboundedSender<serde_json::Value>,
    shared: Arc<Shared>,
    /// Never sent on: the task watches for it being dropped.
    _stop: watch::Sender<()>,
    /// `host:port`, for `Debug` (the path and query may hold a token).
    authority: String,
}

/// The counters, shared by the handles and the task.
#[derive(Default)]
struct Shared {
    /// The bound on `pending`.
    capacity: u64,
    /// Bodies accepted and not yet delivered or given up. Only `send` increments it, and only below
    /// `capacity`, which is what bounds the otherwise unbounded channel.
    pending: AtomicU64,
    sent: AtomicU64,
    retries: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    /// A std mutex: it is held only to swap or clone a string, never across an `.await`.
    last_error: Mutex<Option<String>>,
}

impl Shared {
    fn set_last_error(&self, error: String) {
        *self.last_error.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(error);
    }
}

impl Webhook {
    /// Validates `config` and spawns the task that delivers the bodies.
    ///
    /// # Errors
    /// [`WebhookError::InvalidUrl`], [`WebhookError::Tls`] (an unreadable CA file), a header error or
    /// [`WebhookError::InvalidConfig`] (a zero `queue` or `timeout`) when the configuration is invalid;
    /// [`WebhookError::NoRuntime`] when called outside a tokio runtime.
    pub fn start(config: WebhookConfig) -> Result<Webhook, WebhookError> {
        let target = Target::parse(&config.url)?;
        let request_head = request_head(&target, &config.headers)?;
        if config.queue == 0 {
            return Err(WebhookError::InvalidConfig { reason: "the queue must hold at least one body" });
        }
        if config.timeout.is_zero() {
            return Err(WebhookError::InvalidConfig { reason: "the timeout must be longer than zero" });
        }
        let tls = match target.tls {
            false => None,
            true => Some(tls_client(&target, config.ca.as_ref())?),
        };
        let runtime = tokio::runtime::Handle::try_current().map_err(WebhookError::NoRuntime)?;

        let shared = Arc::new(Shared {
            capacity: u64::try_from(config.queue).unwrap_or(u64::MAX),
            ..Shared::default()
        });
        let (queue, bodies) = mpsc::unbounded_channel();
        let (stop_tx, stop) = watch::channel(());
        let authority = format!("{}:{}", target.host_header_host(), target.port);
        let worker = Worker {
            target,
            tls,
            request_head,
            timeout: config.timeout,
            max_retries: config.max_retries,
            backoff: config.backoff,
            max_backoff: config.max_backoff,
            shared: Arc::clone(&shared),
            connection: None,
            jitter: Jitter::new(),
            endpoint: authority.clone(),
            healthy: true,
        };
        runtime.spawn(worker.run(bodies, stop));
        Ok(Webhook { handle: Arc::new(Handle { queue, shared, _stop: stop_tx, authority }) })
    }

    /// Queues `body` for delivery; never blocks and never awaits.
    ///
    /// Returns `false`, counting the body in [`WebhookStats::dropped`], when the queue already holds
    /// [`WebhookConfig::queue`] pending bodies (or the task has ended, which happens only if the
    /// runtime shut down).
    pub fn send(&self, body: serde_json::Value) -> bool {
        let shared = &self.handle.shared;
        let reserved = shared
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < shared.capacity).then_some(n + 1))
            .is_ok();
        if !reserved {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            trace!(endpoint = %self.handle.authority, "webhook queue full, body dropped");
            return false;
        }
        if self.handle.queue.send(body).is_err() {
            shared.pending.fetch_sub(1, Ordering::AcqRel);
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> WebhookStats {
        let shared = &self.handle.shared;
        WebhookStats {
            sent: shared.sent.load(Ordering::Relaxed),
            retries: shared.retries.load(Ordering::Relaxed),
            failed: shared.failed.load(Ordering::Relaxed),
            dropped: shared.dropped.load(Ordering::Relaxed),
            queued: shared.pending.load(Ordering::Acquire),
            last_error: shared.last_error.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone(),
        }
    }
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook").field("endpoint", &self.handle.authority).finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------------------------------
// Configuration checks

/// A parsed `http://` or `https://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    /// `https://`.
    tls: bool,
    /// The host to connect to: a name or an IP address, without brackets.
    host: String,
    port: u16,
    /// The request target: the path (at least `/`) and the query.
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target, WebhookError> {
        let invalid = |reason| WebhookError::InvalidUrl { url: url.to_owned(), reason };
        let scheme_end = url.find("://").ok_or_else(|| invalid("expected http://host[:port]/path"))?;
        let scheme = &url[..scheme_end];
        let tls = scheme.eq_ignore_ascii_case("https");
        if !tls && !scheme.eq_ignore_ascii_case("http") {
            return Err(invalid("the scheme must be http or https"));
        }
        let rest = &url[scheme_end + 3..];
        if let Some(c) = rest.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(invalid(if c.is_ascii_whitespace() || c.is_ascii_control() {
                "contains whitespace or a control character"
            } else {
                "contains a character that is not ASCII; percent-encode it"
            }));
        }
        let rest = rest.split_once('#').map_or(rest, |(before, _fragment)| before);
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(authority_end);
        if authority.contains('@') {
            return Err(invalid("credentials in the URL are not supported; use an Authorization header"));
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (ip, after) =
                bracketed.split_once(']').ok_or_else(|| invalid("an IPv6 address is missing its `]`"))?;
            ip.parse::<std::net::Ipv6Addr>().map_err(|_| invalid("not a valid IPv6 address"))?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or_else(|| invalid("expected `:port` after `]`"))?),
            };
            (ip, port)
        } else if authority.matches(':').count() > 1 {
            return Err(invalid("an IPv6 address must be in brackets"));
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(invalid("missing host"));
        }
        if !authority.starts_with('[')
            && !host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        {
            return Err(invalid("the host may hold only letters, digits, `-`, `.` and `_`"));
        }
        let port = match port {
            None if tls => 443,
            None => 80,
            Some(digits) => match digits.parse::<u16>() {
                Ok(0) => return Err(invalid("port 0 cannot be connected to")),
                // `parse` also takes a leading `+`, which a URL port may not have.
                Ok(port) if digits.bytes().all(|b| b.is_ascii_digit()) => port,
                _ => return Err(invalid("the port must be a number from 1 to 65535")),
            },
        };
        let path = if path.starts_with('/') { path.to_owned() } else { format!("/{path}") };
        Ok(Target { tls, host: host.to_owned(), port, path })
    }

    /// The host as it appears in a URL or `Host` header: IPv6 addresses in brackets.
    fn host_header_host(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }

    fn host_header(&self) -> String {
        match self.port {
            443 if self.tls => self.host_header_host(),
            80 if !self.tls => self.host_header_host(),
            port => format!("{}:{port}", self.host_header_host()),
        }
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Builds the request line and headers, all but `Content-Length` and the blank line that ends them.
fn request_head(target: &Target, headers: &[(String, String)]) -> Result<Vec<u8>, WebhookError> {
    for (name, value) in headers {
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(WebhookError::InvalidHeaderName { name: name.clone() });
        }
        if value.bytes().any(|b| (b.is_ascii_control() && b != b'\t') || b == 0x7f) {
            return Err(WebhookError::InvalidHeaderValue { name: name.clone() });
        }
        if RESERVED_HEADERS.iter().any(|reserved| name.eq_ignore_ascii_case(reserved)) {
            return Err(WebhookError::ReservedHeader { name: name.clone() });
        }
    }
    let configured = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let mut head = format!("POST {} HTTP/1.1\r\n", target.path);
    let built_in = [
        ("Host", target.host_header()),
        ("User-Agent", concat!("m2m/", env!("CARGO_PKG_VERSION")).to_owned()),
        ("Content-Type", "application/json".to_owned()),
    ];
    for (name, value) in built_in.iter().filter(|(name, _)| !configured(name)) {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    Ok(head.into_bytes())
}

// ---------------------------------------------------------------------------------------------------
// Delivery task

/// The task's state: the parsed configuration and the kept-alive connection.
struct Worker {
    target: Target,
    /// For `https://`: the TLS client and the name the certificate must carry.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    request_head: Vec<u8>,
    timeout: Duration,
    max_retries: u32,
    backoff: Duration,
    max_backoff: Duration,
    shared: Arc<Shared>,
    connection: Option<Connection>,
    jitter: Jitter,
    /// `host:port`, for logs.
    endpoint: String,
    /// Whether the last body given up on came before the last delivery, so that a failing endpoint
    /// is logged once when it starts failing and once when it recovers, not once per body.
    healthy: bool,
}

impl Worker {
    async fn run(
        mut self,
        mut bodies: mpsc::UnboundedReceiver<serde_json::Value>,
        mut stop: watch::Receiver<()>,
    ) {
        loop {
            let body = tokio::select! {
                biased;
                _ = stop.changed() => break,
                body = bodies.recv() => match body {
                    Some(body) => body,
                    None => break,
                },
            };
            let stopping = self.deliver(&body, &mut stop).await;
            self.shared.pending.fetch_sub(1, Ordering::AcqRel);
            if stopping {
                break;
            }
        }
        bodies.close();
        let mut left = 0;
        while bodies.try_recv().is_ok() {
            left += 1;
        }
        self.shared.pending.fetch_sub(left, Ordering::AcqRel);
        self.shared.dropped.fetch_add(left, Ordering::Relaxed);
        if left > 0 {
            warn!(endpoint = %self.endpoint, dropped = left, "webhook stopped with bodies still queued");
        }
        debug!(endpoint = %self.endpoint, "webhook task ended");
    }

    /// Delivers one body, retrying as configured. Returns `true` when the last handle was dropped
    /// meanwhile, so that the task should stop.
    async fn deliver(&mut self, body: &serde_json::Value, stop: &mut watch::Receiver<()>) -> bool {
        let json = serde_json::to_vec(body).expect("a JSON value always serializes");
        let mut request = Vec::with_capacity(self.request_head.len() + json.len() + 32);
        request.extend_from_slice(&self.request_head);
        request.extend_from_slice(format!("Content-Length: {}\r\n\r\n", json.len()).as_bytes());
        request.extend_from_slice(&json);

        let mut retry = 0;
        loop {
            let (error, retry_after) = match judge(self.attempt(&request).await) {
                Verdict::Delivered => {
                    self.shared.sent.fetch_add(1, Ordering::Relaxed);
                    trace!(endpoint = %self.endpoint, retries = retry, "webhook body delivered");
                    if !self.healthy {
                        info!(endpoint = %self.endpoint, "webhook delivers again");
                        self.healthy = true;
                    }
                    return false;
                }
                Verdict::GiveUp(error) => {
                    self.dead_letter(error, retry);
                    return false;
                }
                Verdict::Retry { error, retry_after } => (error, retry_after),
            };
            let stopping = stop.has_changed().is_err();
            if retry >= self.max_retries || stopping {
                self.dead_letter(error, retry);
                return stopping;
            }
            debug!(endpoint = %self.endpoint, %error, retry = retry + 1, "webhook attempt failed, will retry");
            let delay = match retry_after {
                Some(after) => after.min(self.max_backoff),
                None => backoff_delay(self.backoff, self.max_backoff, retry + 1, self.jitter.next_unit()),
            };
            self.shared.set_last_error(error.clone());
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = stop.changed() => {
                    self.dead_letter(error, retry);
                    return true;
                }
            }
            retry += 1;
            self.shared.retries.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn dead_letter(&mut self, error: String, retries: u32) {
        debug!(endpoint = %self.endpoint, %error, retries, "webhook body given up (dead letter)");
        if self.healthy {
            warn!(endpoint = %self.endpoint, %error, "webhook is giving up on bodies; see its failed count");
            self.healthy = false;
        }
        self.shared.failed.fetch_add(1, Ordering::Relaxed);
        self.shared.set_last_error(error);
    }

    /// One attempt within the timeout.
    ///
    /// The response head decides the outcome. The body is read afterwards, in what is left of the
    /// timeout, only so that the connection can be used again: a body that fails or runs late closes
    /// the connection but does not undo the status (retrying then would deliver the body twice).
    async fn attempt(&mut self, request: &[u8]) -> Result<Response, Failure> {
        let now = tokio::time::Instant::now();
        // A timeout too long to add is as good as none (tokio's own far future is about 30 years).
        let deadline = now.checked_add(self.timeout).unwrap_or(now + Duration::from_secs(30 * 365 * 86_400));
        let head = match tokio::time::timeout_at(deadline, self.send_request(request)).await {
            Ok(Ok(head)) => head,
            Ok(Err(failure)) => {
                self.connection = None;
                return Err(failure);
            }
            // The connection is mid-exchange, in a state nobody knows.
            Err(_elapsed) => {
                self.connection = None;
                return Err(Failure::Timeout(self.timeout));
            }
        };
        let connection = self.connection.as_mut().expect("send_request keeps the connection it used");
        let body = tokio::time::timeout_at(deadline, connection.skip_body(head.body)).await;
        if !(head.keep_alive && matches!(body, Ok(Ok(true)))) {
            self.connection = None;
        }
        Ok(Response { status: head.status, reason: head.reason, retry_after: head.retry_after })
    }

    /// Writes the request on the kept-alive connection, or a new one, and reads the response head.
    /// On success `self.connection` is the connection the head came on, its body still unread.
    ///
    /// # Cancel safety
    /// Not cancel safe: a cancelled call leaves `self.connection` mid-exchange, so the caller drops it.
    async fn send_request(&mut self, request: &[u8]) -> Result<Head, Failure> {
        if let Some(connection) = self.connection.as_mut() {
            match connection.send_request(request).await {
                Ok(head) => return Ok(head),
                // The server closed the idle connection before reading this request (or as it
                // came): nothing came back, so send it again on a fresh connection.
                Err(Failure::Io(_) | Failure::Closed) if !connection.received_any => {
                    trace!(endpoint = %self.endpoint, "kept-alive connection was closed, reconnecting");
                    self.connection = None;
                }
                Err(failure) => return Err(failure),
            }
        }
        let stream = TcpStream::connect((self.target.host.as_str(), self.target.port))
            .await
            .map_err(Failure::Connect)?;
        // Requests are written in one piece and answered before the next: Nagle only adds delay.
        stream.set_nodelay(true).map_err(Failure::Connect)?;
        let stream: Box<dyn Io> = match &self.tls {
            None => Box::new(stream),
            Some((connector, name)) => {
                Box::new(connector.connect(name.clone(), stream).await.map_err(Failure::Connect)?)
            }
        };
        let connection = self.connection.insert(Connection {
            stream,
            buf: BytesMut::with_capacity(8 * 1024),
            received_any: false,
        });
        connection.send_request(request).await
    }
}

/// The delay before retry `retry` (from 1): `min(backoff × 2^(retry-1), max_backoff)` with equal
/// jitter, i.e. scaled to between half and all of it by `unit` in `[0, 1)`.
fn backoff_delay(backoff: Duration, max_backoff: Duration, retry: u32, unit: f64) -> Duration {
    let doubling = 2u32.saturating_pow(retry.saturating_sub(1));
    let delay = backoff.saturating_mul(doubling).min(max_backoff);
    (delay / 2).saturating_add(delay.mul_f64(unit / 2.0))
}

/// A small pseudo-random generator for back-off jitter (SplitMix64), seeded from the std hasher's
/// per-process random keys. Jitter needs spread, not unpredictability.
struct Jitter(u64);

impl Jitter {
    fn new() -> Self {
        Jitter(RandomState::new().build_hasher().finish())
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

/// What came of one attempt, short of a response.
#[derive(Debug)]
enum Failure {
    Connect(io::Error),
    Io(io::Error),
    /// The server closed the connection before the response was complete.
    Closed,
    Malformed(&'static str),
    Timeout(Duration),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "cannot connect: {e}"),
            Failure::Io(e) => write!(f, "connection failed: {e}"),
            Failure::Closed => f.write_str("connection closed before a complete response"),
            Failure::Malformed(what) => write!(f, "malformed response: {what}"),
            Failure::Timeout(limit) => write!(f, "no response within {limit:?}"),
        }
    }
}

/// The parts of a response that matter to the retry decision.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Response {
    status: u16,
    reason: String,
    retry_after: Option<Duration>,
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Delivered,
    Retry { error: String, retry_after: Option<Duration> },
    GiveUp(String),
}

/// Sorts an attempt's outcome into delivered, retry or give up (see the module docs).
fn judge(outcome: Result<Response, Failure>) -> Verdict {
    let response = match outcome {
        Ok(response) => response,
        Err(failure) => return Verdict::Retry { error: failure.to_string(), retry_after: None },
    };
    let error = if response.reason.is_empty() {
        format!("HTTP status {}", response.status)
    } else {
        format!("HTTP status {} {}", response.status, response.reason)
    };
    match response.status {
        200..=299 => Verdict::Delivered,
        429 | 503 => Verdict::Retry { error, retry_after: response.retry_after },
        408 | 500..=599 => Verdict::Retry { error, retry_after: None },
        _ => Verdict::GiveUp(error),
    }
}

/// A byte stream to the server: TCP, or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The TLS client for `target`: the public roots, or the authorities in `ca` only.
fn tls_client(
    target: &Target,
    ca: Option<&PathBuf>,
) -> Result<(TlsConnector, ServerName<'static>), WebhookError> {
    m2m_mesh::tls_client(&target.host, ca.map(PathBuf::as_path)).map_err(WebhookError::Tls)
}

/// A client connection and the bytes read from it but not yet parsed.
struct Connection {
    stream: Box<dyn Io>,
    buf: BytesMut,
    /// Whether any byte of the current response arrived, which tells a connection the server had
    /// already closed from one that failed while answering.
    received_any: bool,
}

impl Connection {
    /// Writes `request` and reads the final response head (skipping interim `1xx` responses).
    ///
    /// # Cancel safety
    /// Not cancel safe: a cancelled call leaves a partly read response behind.
    async fn send_request(&mut self, request: &[u8]) -> Result<Head, Failure> {
        // Bytes left over from the previous response would be a server bug; `skip_body` closed the
        // connection then.
        self.buf.clear();
        self.received_any = false;
        self.stream.write_all(request).await.map_err(Failure::Io)?;
        loop {
            if let Some((head, len)) = parse_head(&self.buf).map_err(Failure::Malformed)? {
                self.buf.advance(len);
                match head.status {
                    101 => return Err(Failure::Malformed("switching protocols without an upgrade request")),
                    // An interim response (100 Continue, 103 Early Hints); the final one follows.
                    100..=199 => continue,
                    _ => return Ok(head),
                }
            }
            self.read_more().await?;
        }
    }

    /// Reads and discards the body after a head. Returns whether the connection can carry another
    /// request: the body was read to its end and nothing came after it.
    ///
    /// # Cancel safety
    /// Not cancel safe: a cancelled call leaves part of the body unread.
    async fn skip_body(&mut self, body: BodyLength) -> Result<bool, Failure> {
        let complete = match body {
            BodyLength::Exactly(len) => self.skip_exactly(len).await?,
            BodyLength::Chunked => self.skip_chunked().await?,
            BodyLength::UntilClose => self.skip_until_close().await?,
        };
        Ok(complete && self.buf.is_empty())
    }

    /// Reads more bytes into the buffer; the connection closing is [`Failure::Closed`].
    async fn read_more(&mut self) -> Result<(), Failure> {
        if self.read_some().await? == 0 {
            return Err(Failure::Closed);
        }
        Ok(())
    }

    async fn read_some(&mut self) -> Result<usize, Failure> {
        self.buf.reserve(8 * 1024);
        let n = self.stream.read_buf(&mut self.buf).await.map_err(Failure::Io)?;
        self.received_any |= n > 0;
        Ok(n)
    }

    /// Discards a body of `len` bytes. Returns whether it was read to its end (not if too long).
    async fn skip_exactly(&mut self, mut len: u64) -> Result<bool, Failure> {
        if len > MAX_RESPONSE_BODY {
            return Ok(false);
        }
        loop {
            let take = len.min(self.buf.len() as u64);
            self.buf.advance(take as usize);
            len -= take;
            if len == 0 {
                return Ok(true);
            }
            self.read_more().await?;
        }
    }

    /// Discards a chunked body. Returns whether it was read to its end (not if too long).
    async fn skip_chunked(&mut self) -> Result<bool, Failure> {
        let mut decoder = ChunkedDecoder::default();
        loop {
            if decoder.skip(&mut self.buf).map_err(Failure::Malformed)? {
                return Ok(true);
            }
            if decoder.data_len > MAX_RESPONSE_BODY {
                return Ok(false);
            }
            self.read_more().await?;
        }
    }

    /// Discards a body that ends when the connection does. Returns `false`: the connection is done.
    async fn skip_until_close(&mut self) -> Result<bool, Failure> {
        let mut len = self.buf.len() as u64;
        self.buf.clear();
        while len <= MAX_RESPONSE_BODY {
            let n = self.read_some().await?;
            if n == 0 {
                break;
            }
            len += n as u64;
            self.buf.clear();
        }
        Ok(false)
    }
}

// ---------------------------------------------------------------------------------------------------
// Response parsing (no IO)

/// How the body of a response is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyLength {
    Exactly(u64),
    Chunked,
    UntilClose,
}

/// A response's status line and the headers the client acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    status: u16,
    /// The reason phrase, cut to 64 printable characters.
    reason: String,
    retry_after: Option<Duration>,
    /// Whether the server lets the connection be used again (before looking at the body).
    keep_alive: bool,
    body: BodyLength,
}

/// The end of the head at the front of `buf`: the index after the blank line.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = buf[from..].iter().position(|&b| b == b'\n') {
        let next = from + i + 1;
        match &buf[next..] {
            [b'\n', ..] => return Some(next + 1),
            [b'\r', b'\n', ..] => return Some(next + 2),
            _ => from = next,
        }
    }
    None
}

/// Parses the status line and headers at the front of `buf`. `Ok(None)` means more bytes are needed;
/// `Ok(Some((head, len)))` gives the head and its length in bytes.
///
/// ```text
/// HTTP/1.1 503 Service Unavailable\r\n
/// Retry-After: 2\r\n
/// Content-Length: 0\r\n
/// \r\n
/// ```
fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, &'static str> {
    let Some(end) = head_end(buf) else {
        return if buf.len() > MAX_RESPONSE_HEAD {
            Err("status line and headers exceed 64 KiB")
        } else {
            Ok(None)
        };
    };
    if end > MAX_RESPONSE_HEAD {
        return Err("status line and headers exceed 64 KiB");
    }
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| "headers are not UTF-8")?;
    let mut lines = text.lines().take_while(|line| !line.is_empty());
    let status_line = lines.next().ok_or("missing status line")?;
    let (version, rest) = status_line.split_once(' ').ok_or("malformed status line")?;
    let http_1_0 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err("not an HTTP/1.x response"),
    };
    let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err("malformed status code");
    }
    let status: u16 = code.parse().map_err(|_| "malformed status code")?;
    let reason: String = reason.chars().filter(|c| !c.is_control()).take(64).collect();

    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut other_encoding = false;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut retry_after = None;
    for line in lines {
        if line.starts_with([' ', '\t']) {
            return Err("folded header line");
        }
        let (name, value) = line.split_once(':').ok_or("header line without a colon")?;
        let value = value.trim_matches([' ', '\t']);
        if name.eq_ignore_ascii_case("content-length") {
            let len = value.parse::<u64>().map_err(|_| "malformed Content-Length")?;
            if content_length.is_some_and(|previous| previous != len) {
                return Err("conflicting Content-Length headers");
            }
            content_length = Some(len);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Only the last coding says how the body ends (RFC 9112 §6.3).
            for coding in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                chunked = coding.eq_ignore_ascii_case("chunked");
                other_encoding = !chunked;
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for option in value.split(',').map(str::trim) {
                close |= option.eq_ignore_ascii_case("close");
                keep_alive_token |= option.eq_ignore_ascii_case("keep-alive");
            }
        } else if name.eq_ignore_ascii_case("retry-after") {
            retry_after = value.parse::<u64>().ok().map(Duration::from_secs);
        }
    }
    let body = if (100..200).contains(&status) || status == 204 || status == 304 {
        BodyLength::Exactly(0)
    } else if chunked {
        BodyLength::Chunked
    } else if other_encoding {
        BodyLength::UntilClose
    } else if let Some(len) = content_length {
        BodyLength::Exactly(len)
    } else {
        BodyLength::UntilClose
    };
    let keep_alive = !close && (!http_1_0 || keep_alive_token) && !matches!(body, BodyLength::UntilClose);
    Ok(Some((Head { status, reason, retry_after, keep_alive, body }, end)))
}

/// Where a [`ChunkedDecoder`] is in a chunked body (RFC 9112 §7.1).
///
/// ```text
/// 1a;ext=1\r\n            chunk size in hex, optional extensions
/// <26 bytes of data>\r\n
/// 0\r\n                   last chunk
/// Trailer: value\r\n      optional trailers
/// \r\n
/// ```
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// Skips through a chunked body as its bytes arrive, without IO.
#[derive(Debug, Default)]
struct ChunkedDecoder {
    state: ChunkState,
    /// Chunk data bytes skipped so far.
    data_len: u64,
}

impl ChunkedDecoder {
    /// Consumes what it can from the front of `buf`. Returns `Ok(true)` once the body has ended (the
    /// bytes after it stay in `buf`) and `Ok(false)` when it needs more bytes.
    fn skip(&mut self, buf: &mut BytesMut) -> Result<bool, &'static str> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(line) = take_line(buf)? else { return Ok(false) };
                    let digits = line[..].split(|&b| b == b';').next().unwrap_or_default();
                    let digits = std::str::from_utf8(digits).map_err(|_| "malformed chunk size")?;
                    let digits = digits.trim_matches([' ', '\t']);
                    if digits.is_empty() || digits.len() > 16 {
                        return Err("malformed chunk size");
                    }
                    let size = u64::from_str_radix(digits, 16).map_err(|_| "malformed chunk size")?;
                    self.state = if size == 0 { ChunkState::Trailers } else { ChunkState::Data(size) };
                }
                ChunkState::Data(left) => {
                    let take = left.min(buf.len() as u64);
                    buf.advance(take as usize);
                    self.data_len += take;
                    if take < left {
                        self.state = ChunkState::Data(left - take);
                        return Ok(false);
                    }
                    self.state = ChunkState::DataEnd;
                }
                ChunkState::DataEnd => {
                    let Some(line) = take_line(buf)? else { return Ok(false) };
                    if !line.is_empty() {
                        return Err("chunk data longer than its size");
                    }
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    let Some(line) = take_line(buf)? else { return Ok(false) };
                    if line.is_empty() {
                        self.state = ChunkState::Done;
                    }
                }
                ChunkState::Done => return Ok(true),
            }
        }
    }
}

/// Takes one line off the front of `buf`, without its `\r\n` or `\n`; `Ok(None)` until it is whole.
fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, &'static str> {
    let Some(i) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() > MAX_CHUNK_LINE { Err("chunk line too long") } else { Ok(None) };
    };
    if i > MAX_CHUNK_LINE {
        return Err("chunk line too long");
    }
    let mut line = buf.split_to(i + 1);
    line.truncate(i);
    if line.last() == Some(&b'\r') {
        line.truncate(i - 1);
    }
    Ok(Some(line))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> Target {
        Target::parse(url).unwrap()
    }

    fn url_error(url: &str) -> &'static str {
        match Target::parse(url) {
            Err(WebhookError::InvalidUrl { reason, .. }) => reason,
            other => panic!("{url}: expected InvalidUrl, got {other:?}"),
        }
    }

    #[test]
    fn urls_give_host_port_and_request_target() {
        let t = target("http://example.com/hook");
        assert_eq!((t.host.as_str(), t.port, t.path.as_str()), ("example.com", 80, "/hook"));
        assert_eq!(t.host_header(), "example.com");

        let t = target("HTTP://10.0.0.1:8080/a/b?x=1&y=2#frag");
        assert_eq!((t.host.as_str(), t.port, t.path.as_str()), ("10.0.0.1", 8080, "/a/b?x=1&y=2"));
        assert_eq!(t.host_header(), "10.0.0.1:8080");

        let t = target("http://[::1]:9000");
        assert_eq!((t.host.as_str(), t.port, t.path.as_str()), ("::1", 9000, "/"));
        assert_eq!(t.host_header(), "[::1]:9000");

        let t = target("http://h?q=1");
        assert_eq!((t.host.as_str(), t.path.as_str()), ("h", "/?q=1"));
    }

    #[test]
    fn malformed_urls_are_refused_with_the_reason() {
        let t = Target::parse("HTTPS://example.com/x").unwrap();
        assert_eq!((t.tls, t.port, t.host_header()), (true, 443, "example.com".to_owned()));
        let t = Target::parse("https://example.com:8443/x").unwrap();
        assert_eq!((t.tls, t.port, t.host_header()), (true, 8443, "example.com:8443".to_owned()));
        assert_eq!(url_error("example.com/hook"), "expected http://host[:port]/path");
        assert_eq!(url_error("ftp://example.com/"), "the scheme must be http or https");
        assert_eq!(url_error("http:///hook"), "missing host");
        assert_eq!(url_error("http://:80/hook"), "missing host");
        assert_eq!(url_error("http://h:99999/"), "the port must be a number from 1 to 65535");
        assert_eq!(url_error("http://h:+80/"), "the port must be a number from 1 to 65535");
        assert_eq!(url_error("http://h:/"), "the port must be a number from 1 to 65535");
        assert_eq!(url_error("http://h:x/"), "the port must be a number from 1 to 65535");
        assert_eq!(url_error("http://h:0/"), "port 0 cannot be connected to");
        assert_eq!(url_error("http://h/a b"), "contains whitespace or a control character");
        assert_eq!(url_error("http://h/\r\nX: y"), "contains whitespace or a control character");
        assert_eq!(url_error("http://h/é"), "contains a character that is not ASCII; percent-encode it");
        assert_eq!(
            url_error("http://user:pw@h/"),
            "credentials in the URL are not supported; use an Authorization header"
        );
        assert_eq!(url_error("http://[::1/"), "an IPv6 address is missing its `]`");
        assert_eq!(url_error("http://[zz]/"), "not a valid IPv6 address");
        assert_eq!(url_error("http://[::1]x/"), "expected `:port` after `]`");
        assert_eq!(url_error("http://fe80::1/"), "an IPv6 address must be in brackets");
        assert_eq!(url_error("http://::1/"), "an IPv6 address must be in brackets");
        assert!(url_error("http://a,b/").starts_with("the host may hold only"));
    }

    #[test]
    fn configured_headers_replace_the_built_in_ones_of_the_same_name() {
        let t = target("http://h:81/p");
        let headers =
            vec![("user-agent".to_owned(), "probe".to_owned()), ("X-Token".to_owned(), "a\tb".to_owned())];
        let head = String::from_utf8(request_head(&t, &headers).unwrap()).unwrap();
        assert_eq!(
            head,
            "POST /p HTTP/1.1\r\nHost: h:81\r\nContent-Type: application/json\r\n\
             user-agent: probe\r\nX-Token: a\tb\r\n"
        );
    }

    #[test]
    fn invalid_or_reserved_headers_are_refused() {
        let t = target("http://h/");
        let check = |name: &str, value: &str| request_head(&t, &[(name.to_owned(), value.to_owned())]);
        assert!(matches!(check("X-A", "1\r\nX-B: 2"), Err(WebhookError::InvalidHeaderValue { .. })));
        assert!(matches!(check("X-A", "1\n"), Err(WebhookError::InvalidHeaderValue { .. })));
        assert!(matches!(check("X-A", "1\0"), Err(WebhookError::InvalidHeaderValue { .. })));
        assert!(matches!(check("X A", "1"), Err(WebhookError::InvalidHeaderName { .. })));
        assert!(matches!(check("X-A:", "1"), Err(WebhookError::InvalidHeaderName { .. })));
        assert!(matches!(check("", "1"), Err(WebhookError::InvalidHeaderName { .. })));
        assert!(matches!(check("X-A\r\n", "1"), Err(WebhookError::InvalidHeaderName { .. })));
        assert!(matches!(check("content-length", "1"), Err(WebhookError::ReservedHeader { .. })));
        assert!(matches!(check("Connection", "close"), Err(WebhookError::ReservedHeader { .. })));
        assert!(check("Authorization", "Bearer x.y-z").is_ok());
    }

    fn head(text: &str) -> Head {
        let (head, len) = parse_head(text.as_bytes()).unwrap().expect("complete head");
        assert_eq!(len, text.len());
        head
    }

    #[test]
    fn heads_give_status_framing_and_keep_alive() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n");
        assert_eq!(
            (h.status, h.reason.as_str(), h.body, h.keep_alive),
            (200, "OK", BodyLength::Exactly(12), true)
        );

        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n");
        assert_eq!((h.body, h.keep_alive), (BodyLength::Chunked, true));

        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n");
        assert_eq!((h.body, h.keep_alive), (BodyLength::UntilClose, false));

        let h = head("HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!((h.body, h.keep_alive), (BodyLength::Exactly(0), true));

        let h = head("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((h.body, h.keep_alive), (BodyLength::UntilClose, false));

        let h = head("HTTP/1.1 200 OK\r\nconnection: Keep-Alive, Close\r\ncontent-length: 0\r\n\r\n");
        assert!(!h.keep_alive);

        let h = head("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert!(!h.keep_alive);
        let h = head("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n");
        assert!(h.keep_alive);

        let h = head("HTTP/1.1 503\nRetry-After:  7 \nContent-Length: 0\n\n");
        assert_eq!((h.status, h.reason.as_str(), h.retry_after), (503, "", Some(Duration::from_secs(7))));

        let h = head("HTTP/1.1 429 Slow Down\r\nRetry-After: Wed, 21 Oct 2015 07:28:00 GMT\r\n\r\n");
        assert_eq!(h.retry_after, None);
    }

    #[test]
    fn malformed_heads_are_errors() {
        let err = |text: &str| parse_head(text.as_bytes()).unwrap_err();
        assert_eq!(err("HTTP/2 200 OK\r\n\r\n"), "not an HTTP/1.x response");
        assert_eq!(err("HTTP/1.1 20 OK\r\n\r\n"), "malformed status code");
        assert_eq!(err("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"), "malformed Content-Length");
        assert_eq!(
            err("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            "conflicting Content-Length headers"
        );
        assert_eq!(err("HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\n\r\n"), "folded header line");
        assert_eq!(err("HTTP/1.1 200 OK\r\nnocolon\r\n\r\n"), "header line without a colon");
        let huge = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_RESPONSE_HEAD));
        assert_eq!(err(&huge), "status line and headers exceed 64 KiB");
    }

    #[test]
    fn heads_wait_for_the_blank_line_at_every_split_point() {
        let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        let head_len = wire.len() - 5;
        for split in 0..head_len {
            assert_eq!(parse_head(&wire[..split]).unwrap(), None, "split at {split}");
        }
        for split in head_len..=wire.len() {
            let (head, len) = parse_head(&wire[..split]).unwrap().expect("complete");
            assert_eq!((head.status, len), (200, head_len));
        }
    }

    #[test]
    fn chunked_bodies_are_skipped_at_every_split_point() {
        let wire =
            b"5;name=value\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        let body_len = wire.len() - 4;
        for split in 0..wire.len() {
            let mut decoder = ChunkedDecoder::default();
            let mut buf = BytesMut::from(&wire[..split]);
            let done = decoder.skip(&mut buf).unwrap();
            assert_eq!(done, split >= body_len, "split at {split}");
            let mut rest = buf;
            rest.extend_from_slice(&wire[split..]);
            assert!(decoder.skip(&mut rest).unwrap(), "split at {split}");
            assert_eq!(&rest[..], b"NEXT", "split at {split}");
            assert_eq!(decoder.data_len, 31);
        }
    }

    #[test]
    fn malformed_chunked_bodies_are_errors() {
        let err = |wire: &[u8]| ChunkedDecoder::default().skip(&mut BytesMut::from(wire)).unwrap_err();
        assert_eq!(err(b"zz\r\n"), "malformed chunk size");
        assert_eq!(err(b"\r\n"), "malformed chunk size");
        assert_eq!(err(b"11111111111111111\r\n"), "malformed chunk size");
        assert_eq!(err(b"2\r\nabc\r\n"), "chunk data longer than its size");
        assert_eq!(err(&[b'1'; MAX_CHUNK_LINE + 2]), "chunk line too long");
    }

    fn response(status: u16, retry_after: Option<u64>) -> Result<Response, Failure> {
        Ok(Response { status, reason: String::new(), retry_after: retry_after.map(Duration::from_secs) })
    }

    #[test]
    fn outcomes_are_delivered_retried_or_given_up_by_status() {
        assert_eq!(judge(response(200, None)), Verdict::Delivered);
        assert_eq!(judge(response(204, None)), Verdict::Delivered);
        for status in [408, 500, 502, 504] {
            assert!(matches!(judge(response(status, Some(3))), Verdict::Retry { retry_after: None, .. }));
        }
        for status in [429, 503] {
            assert_eq!(
                judge(response(status, Some(3))),
                Verdict::Retry {
                    error: format!("HTTP status {status}"),
                    retry_after: Some(Duration::from_secs(3))
                }
            );
        }
        for status in [301, 400, 401, 404, 410] {
            assert_eq!(judge(response(status, None)), Verdict::GiveUp(format!("HTTP status {status}")));
        }
        assert!(matches!(judge(Err(Failure::Closed)), Verdict::Retry { retry_after: None, .. }));
        assert!(matches!(
            judge(Err(Failure::Timeout(Duration::from_millis(5)))),
            Verdict::Retry { retry_after: None, .. }
        ));
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let ms = Duration::from_millis;
        let (backoff, cap) = (ms(200), ms(1000));
        assert_eq!(backoff_delay(backoff, cap, 1, 0.0), ms(100));
        assert_eq!(backoff_delay(backoff, cap, 1, 0.5), ms(150));
        assert_eq!(backoff_delay(backoff, cap, 2, 0.0), ms(200));
        assert_eq!(backoff_delay(backoff, cap, 3, 0.0), ms(400));
        assert_eq!(backoff_delay(backoff, cap, 4, 0.0), ms(500));
        assert!(backoff_delay(backoff, cap, 4, 0.999_999) <= cap);
        assert!(backoff_delay(backoff, cap, u32::MAX, 0.999_999) <= cap);
        // No overflow however many retries: the doubling saturates (at over 27 years here).
        assert!(
            backoff_delay(backoff, Duration::MAX, 200, 0.999_999) > Duration::from_secs(27 * 365 * 86_400)
        );
    }

    #[test]
    fn jitter_stays_in_the_unit_interval_and_varies() {
        let mut jitter = Jitter::new();
        let draws: Vec<f64> = (0..1000).map(|_| jitter.next_unit()).collect();
        assert!(draws.iter().all(|x| (0.0..1.0).contains(x)));
        assert!(draws.iter().any(|&x| x < 0.1) && draws.iter().any(|&x| x > 0.9));
    }
}
