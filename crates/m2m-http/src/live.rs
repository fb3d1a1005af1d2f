//! What the console watches as it happens: `GET /api/v1/stream` (Server-Sent Events) and
//! `GET /api/v1/node/rates` (the last hour of per-second rates).
//!
//! [`Live`] is a router tap. It costs the message path one atomic load per message while nobody
//! watches a topic, and one filter match per watcher while someone does; a watcher's queue is
//! bounded, and what does not fit is dropped and counted, never waited for. Client and quarantine
//! events are built only while a stream is open. A sampler reads the node's counters once a
//! second into a ring of [`SAMPLES`] samples.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use m2m_router::{Metrics, NodeEvent, NodeEventKind, Tap};
use m2m_session::Message;
use m2m_topic::TopicFilter;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::error::{ApiError, ErrorBody};
use crate::extract::Query;
use crate::ApiState;

/// Samples kept: one an second, an hour.
pub const SAMPLES: usize = 3600;
/// Messages a stream sends per second at most; the rest are dropped and reported (`lagged`).
pub const STREAM_RATE: u32 = 50;
/// A watcher's queue of messages not yet sent.
const WATCH_QUEUE: usize = 256;

/// The node's counters at one second, and the rates since the second before.
#[derive(Debug, Clone, Copy, Default, Serialize, utoipa::ToSchema)]
pub struct Sample {
    /// When (unix ms).
    pub ts: u64,
    /// Clients connected.
    pub connections: u64,
    /// PUBLISH packets received since the node started.
    pub messages_in: u64,
    /// PUBLISH packets sent since the node started.
    pub messages_out: u64,
    /// Deliveries dropped since the node started.
    pub dropped: u64,
    /// Received per second over the last interval.
    pub in_rate: f64,
    /// Sent per second.
    pub out_rate: f64,
    /// Dropped per second.
    pub drop_rate: f64,
}

#[derive(Debug, Clone)]
enum LiveEvent {
    Stats(Sample),
    /// An event's name and its JSON data.
    Json(&'static str, Arc<str>),
}

#[derive(Debug)]
struct Watcher {
    filter: TopicFilter,
    tx: mpsc::Sender<Arc<Message>>,
    dropped: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    watchers: RwLock<Vec<Arc<Watcher>>>,
    /// `watchers.len()`, read without the lock on every message.
    watching: AtomicUsize,
    /// Open streams.
    listeners: AtomicUsize,
    events: broadcast::Sender<LiveEvent>,
    samples: Mutex<VecDeque<Sample>>,
}

/// The live view of a node: a [`Tap`] to add to the router's taps, and the source of the
/// console's streams. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Live {
    inner: Arc<Inner>,
}

impl Default for Live {
    fn default() -> Self {
        Self::new()
    }
}

impl Live {
    /// A live view with nobody watching yet.
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(1024);
        Self {
            inner: Arc::new(Inner {
                watchers: RwLock::new(Vec::new()),
                watching: AtomicUsize::new(0),
                listeners: AtomicUsize::new(0),
                events,
                samples: Mutex::new(VecDeque::with_capacity(SAMPLES)),
            }),
        }
    }

    /// Starts sampling `metrics` once a second (on the current runtime), until the last clone of
    /// this view is dropped.
    pub fn start(&self, metrics: Arc<Metrics>) {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut last: Option<(Sample, std::time::Instant)> = None;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let now = std::time::Instant::now();
                let mut sample = Sample {
                    ts: crate::now_ms(),
                    connections: Metrics::get(&metrics.connections_current),
                    messages_in: metrics.received_total(),
                    messages_out: metrics.sent_total(),
                    dropped: Metrics::get(&metrics.messages_dropped),
                    ..Sample::default()
                };
                if let Some((before, at)) = last {
                    let secs = now.duration_since(at).as_secs_f64().max(0.001);
                    let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
                    sample.in_rate = rate(sample.messages_in, before.messages_in);
                    sample.out_rate = rate(sample.messages_out, before.messages_out);
                    sample.drop_rate = rate(sample.dropped, before.dropped);
                }
                last = Some((sample, now));
                {
                    let mut samples = inner.samples.lock().unwrap_or_else(PoisonError::into_inner);
                    if samples.len() == SAMPLES {
                        samples.pop_front();
                    }
                    samples.push_back(sample);
                }
                // No receiver is not an error: nobody is watching.
                let _ = inner.events.send(LiveEvent::Stats(sample));
            }
        });
    }

    /// The samples of the last `seconds` seconds, oldest first.
    pub fn samples(&self, seconds: usize) -> Vec<Sample> {
        let samples = self.inner.samples.lock().unwrap_or_else(PoisonError::into_inner);
        samples.iter().skip(samples.len().saturating_sub(seconds)).copied().collect()
    }

    fn publish(&self, name: &'static str, data: serde_json::Value) {
        let _ = self.inner.events.send(LiveEvent::Json(name, Arc::from(data.to_string())));
    }

    fn watch(&self, filter: TopicFilter) -> (Arc<Watcher>, mpsc::Receiver<Arc<Message>>) {
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        let watcher = Arc::new(Watcher { filter, tx, dropped: AtomicU64::new(0) });
        let mut watchers = self.inner.watchers.write().unwrap_or_else(PoisonError::into_inner);
        watchers.push(watcher.clone());
        self.inner.watching.store(watchers.len(), Ordering::Release);
        (watcher, rx)
    }

    fn unwatch(&self, watcher: &Arc<Watcher>) {
        let mut watchers = self.inner.watchers.write().unwrap_or_else(PoisonError::into_inner);
        watchers.retain(|w| !Arc::ptr_eq(w, watcher));
        self.inner.watching.store(watchers.len(), Ordering::Release);
    }
}

impl Tap for Live {
    fn message(&self, message: &Arc<Message>) {
        if self.inner.watching.load(Ordering::Acquire) == 0 {
            return;
        }
        let watchers = self.inner.watchers.read().unwrap_or_else(PoisonError::into_inner);
        for w in watchers.iter().filter(|w| w.filter.matches(&message.topic)) {
            if w.tx.try_send(message.clone()).is_err() {
                w.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn wants(&self, kind: NodeEventKind) -> bool {
        matches!(
            kind,
            NodeEventKind::ClientConnected
                | NodeEventKind::ClientDisconnected
                | NodeEventKind::Quarantined
                | NodeEventKind::Released
        ) && self.inner.listeners.load(Ordering::Relaxed) > 0
    }

    fn event(&self, event: &NodeEvent) {
        let ts = crate::now_ms();
        match event {
            NodeEvent::ClientConnected { client_id, username, peer, protocol, .. } => self.publish(
                "client",
                json!({"event": "connected", "client_id": &**client_id, "username": username.as_deref(),
                    "address": peer.to_string(), "protocol": if *protocol == 5 { "5.0" } else { "3.1.1" }, "ts": ts}),
            ),
            NodeEvent::ClientDisconnected { client_id, username, peer, reason } => self.publish(
                "client",
                json!({"event": "disconnected", "client_id": &**client_id, "username": username.as_deref(),
                    "address": peer.to_string(), "reason": reason, "ts": ts}),
            ),
            NodeEvent::Quarantined { entry, target, client_id, mode, reason, actor } => self.publish(
                "quarantine",
                json!({"event": "added", "id": entry, "target": target, "client_id": client_id.as_deref(),
                    "mode": mode, "reason": reason, "actor": actor, "ts": ts}),
            ),
            NodeEvent::Released { entry, target, client_id, actor } => self.publish(
                "quarantine",
                json!({"event": "released", "id": entry, "released": entry, "target": target,
                    "client_id": client_id.as_deref(), "actor": actor, "ts": ts}),
            ),
            _ => {}
        }
    }
}

/// Ends a stream's registrations when its pump stops.
struct Registration {
    live: Live,
    watcher: Option<Arc<Watcher>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.live.inner.listeners.fetch_sub(1, Ordering::Relaxed);
        if let Some(w) = &self.watcher {
            self.live.unwatch(w);
        }
    }
}

/// The query of `GET /stream`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamQuery {
    /// An MQTT filter: messages on matching topics are sent as `message` events (at most 50 a
    /// second; `lagged` says how many were left out).
    filter: Option<String>,
}

fn live(state: &ApiState) -> Result<Live, ApiError> {
    state.live.clone().ok_or_else(|| ApiError::not_found("this node has no live view"))
}

/// `GET /stream`: Server-Sent Events. `stats` every second (a [`Sample`]), `client`
/// (connected/disconnected), `quarantine` (added/released), and with `filter`, `message` and
/// `lagged`.
#[utoipa::path(
    get,
    path = "/api/v1/stream",
    tag = "live",
    params(StreamQuery),
    responses(
        (status = 200, description = "A `text/event-stream`: events `stats`, `client`, `quarantine`, `message`, `lagged`, each with JSON data", content_type = "text/event-stream", body = String),
        (status = 400, description = "An invalid filter", body = ErrorBody),
    )
)]
pub(crate) async fn stream(
    State(state): State<ApiState>,
    Query(query): Query<StreamQuery>,
) -> Result<impl axum::response::IntoResponse, ApiError> {
    let live = live(&state)?;
    let filter = query
        .filter
        .map(|f| {
            TopicFilter::try_from(f.as_str())
                .map_err(|e| ApiError::bad_request(format!("invalid filter {f:?}: {e}")))
        })
        .transpose()?;
    let mut events = live.inner.events.subscribe();
    live.inner.listeners.fetch_add(1, Ordering::Relaxed);
    let (watcher, mut messages) = match filter {
        Some(f) => {
            let (w, rx) = live.watch(f);
            (Some(w), Some(rx))
        }
        None => (None, None),
    };
    let registration = Registration { live: live.clone(), watcher: watcher.clone() };
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(64);
    let closing = state.closing.clone();
    tokio::spawn(async move {
        let _registration = registration;
        let mut budget = STREAM_RATE;
        let mut left_out = 0u64;
        let mut second = tokio::time::interval(Duration::from_secs(1));
        loop {
            let event = tokio::select! {
                () = closing.cancelled() => return,
                got = events.recv() => match got {
                    Ok(LiveEvent::Stats(sample)) => Event::default().event("stats").json_data(sample).ok(),
                    Ok(LiveEvent::Json(name, data)) => Some(Event::default().event(name).data(&*data)),
                    Err(broadcast::error::RecvError::Lagged(n)) => Some(Event::default().event("lagged").data(json!({"events": n}).to_string())),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                Some(message) = async { match messages.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                    if budget == 0 {
                        left_out += 1;
                        None
                    } else {
                        budget -= 1;
                        Some(Event::default().event("message").data(message_json(&message).to_string()))
                    }
                }
                _ = second.tick() => {
                    budget = STREAM_RATE;
                    let queue_dropped = watcher.as_ref().map_or(0, |w| w.dropped.swap(0, Ordering::Relaxed));
                    let dropped = left_out + queue_dropped;
                    left_out = 0;
                    (dropped > 0).then(|| Event::default().event("lagged").data(json!({"dropped": dropped}).to_string()))
                }
            };
            if let Some(event) = event {
                if tx.send(Ok(event)).await.is_err() {
                    return; // The client went away.
                }
            }
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default()))
}

/// A message as a `message` event shows it.
fn message_json(message: &Message) -> serde_json::Value {
    let content_type = message.properties.content_type.as_deref();
    let (payload, encoding) = crate::history::payload(content_type, &message.payload);
    json!({
        "topic": message.topic.as_str(),
        "payload": payload,
        "encoding": encoding,
        "qos": message.qos as u8,
        "retain": message.retain,
        "client_id": message.publisher.as_deref(),
        "ts": crate::now_ms(),
    })
}

/// The query of `GET /node/rates`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct RatesQuery {
    /// How many seconds back (default 300, at most 3600).
    seconds: Option<usize>,
}

/// `GET /node/rates`: the per-second samples of the last minutes, for charts that open with a
/// history.
#[utoipa::path(
    get,
    path = "/api/v1/node/rates",
    tag = "live",
    params(RatesQuery),
    responses((status = 200, description = "`{samples: [sample]}`, oldest first", body = serde_json::Value))
)]
pub(crate) async fn rates(
    State(state): State<ApiState>,
    Query(query): Query<RatesQuery>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let live = live(&state)?;
    let seconds = query.seconds.unwrap_or(300).min(SAMPLES);
    Ok(axum::Json(json!({ "samples": live.samples(seconds) })))
}
