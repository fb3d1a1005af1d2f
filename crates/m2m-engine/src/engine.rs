//! The engine: the rule set, the queue between the router and the worker thread, evaluation, actions
//! and metrics.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use m2m_broker::AccessControl;
use m2m_codec::QoS;
use m2m_history::History;
use m2m_router::{Command, NodeEvent, NodeEventKind, RouterHandle, Tap};
use m2m_rules::{EventKind, Input, RuleQuery, Source, Template};
use m2m_session::Message;
use m2m_store::{Store, Table};
use m2m_topic::{Subscription, SubscriptionTrie, TopicFilter, TopicName};
use serde_json::{Map, Value};

use crate::spec::{id_problem, ActionSpec, RuleSpec};
use crate::webhook::{Webhook, WebhookConfig};

/// The user property that counts how many rules a message went through (loop protection).
pub const HOPS_PROPERTY: &str = "m2m-rule-hops";

/// How the engine runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Messages and events waiting for the worker at most; beyond, they are dropped and counted.
    pub queue: usize,
    /// A message republished by rules this many times is not given to rules again.
    pub max_hops: u8,
    /// A rule that fails (evaluation or action) this many times in a row is disabled.
    pub disable_after: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self { queue: 10_000, max_hops: 8, disable_after: 1000 }
    }
}

/// What went wrong with a rule or a request about one.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The rule, an action or a request is invalid (an HTTP 400).
    #[error("{0}")]
    Invalid(String),
    /// No rule of that id.
    #[error("no rule {0:?}")]
    NotFound(String),
    /// A rule of that id exists.
    #[error("a rule {0:?} exists already")]
    Exists(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] m2m_store::StoreError),
}

/// A rule's counters.
#[derive(Debug, Default)]
struct Counters {
    matched: AtomicU64,
    passed: AtomicU64,
    failed: AtomicU64,
    actions_ok: AtomicU64,
    actions_failed: AtomicU64,
    eval_nanos: AtomicU64,
    /// Failures since the last success.
    failing: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// A rule's counters, as reported.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RuleMetrics {
    /// Inputs its FROM matched.
    pub matched: u64,
    /// Inputs its WHERE let through.
    pub passed: u64,
    /// Evaluations that failed.
    pub failed: u64,
    /// Actions carried out (queued, for webhooks).
    pub actions_ok: u64,
    /// Actions that failed.
    pub actions_failed: u64,
    /// Mean evaluation time, in nanoseconds.
    pub eval_mean_ns: u64,
    /// The last error.
    pub last_error: Option<String>,
}

/// One action, ready to run.
enum Action {
    Forward {
        uplink: String,
        topic: Template,
        payload: Option<Template>,
        qos: QoS,
        retain: bool,
    },
    Republish {
        topic: Template,
        payload: Option<Template>,
        qos: QoS,
        retain: bool,
        props: Vec<(String, Template)>,
    },
    Webhook {
        hook: Webhook,
        body: Option<Template>,
    },
    Quarantine {
        client: Template,
        mode: m2m_access::Mode,
        reason: Template,
        expires: Option<Duration>,
    },
    History {
        topic: Template,
        payload: Option<Template>,
    },
}

/// Topics a rule keeps a window for at most, and values in one window at most.
const MAX_WINDOWS: usize = 10_000;
const MAX_WINDOW_POINTS: usize = 100_000;
/// Keys a dead-man rule watches at most.
const MAX_WATCHED: usize = 100_000;
/// How often the worker looks for silences.
const SILENCE_CHECK: Duration = Duration::from_millis(250);

/// A compiled `window`.
struct Window {
    field: m2m_history::FieldPath,
    ms: u64,
}

/// A compiled `silence`.
struct Silence {
    filter: TopicFilter,
    per_client: bool,
    after_ms: u64,
}

/// The last message of one watched key.
#[derive(Clone)]
struct Seen {
    at_ms: u64,
    topic: String,
    clientid: Option<String>,
    payload: Bytes,
    /// The rule ran for this silence already.
    fired: bool,
}

/// What a time-aware rule remembers; touched only by the worker.
#[derive(Default)]
struct TimeState {
    windows: HashMap<Arc<str>, VecDeque<(u64, f64)>>,
    seen: HashMap<String, Seen>,
}

/// A rule, compiled.
struct Live {
    spec: RuleSpec,
    query: RuleQuery,
    actions: Vec<Action>,
    window: Option<Window>,
    silence: Option<Silence>,
    time: Mutex<TimeState>,
    counters: Counters,
    /// Set when the engine disabled it for failing.
    auto_disabled: AtomicBool,
}

/// The rules in force: what the worker reads, replaced as a whole on every change.
#[derive(Default)]
struct RuleSet {
    rules: Vec<Arc<Live>>,
    /// Topic filters of the enabled rules → rule index.
    topics: SubscriptionTrie<usize, ()>,
    /// Filters the enabled dead-man rules watch → rule index.
    silences: SubscriptionTrie<usize, ()>,
    /// Enabled rules on each event.
    events: Vec<(EventKind, Vec<usize>)>,
}

enum Job {
    Message(Arc<Message>, u64),
    Event(NodeEvent, u64),
}

/// What actions reach: the router, access control and the history.
struct Node {
    router: RouterHandle,
    /// Weak: access control tells the engine of quarantines (it holds the engine as a tap).
    access: std::sync::Weak<AccessControl>,
    history: Option<History>,
}

struct Inner {
    config: EngineConfig,
    /// Where rules are kept, once attached to a node that has a store.
    store: OnceLock<Store>,
    /// The specs, by id (what is stored).
    specs: Mutex<BTreeMap<String, RuleSpec>>,
    set: RwLock<Arc<RuleSet>>,
    queue: Mutex<(VecDeque<Job>, bool)>,
    ready: Condvar,
    node: OnceLock<Node>,
    dropped: AtomicU64,
    loops: AtomicU64,
    /// The node events some enabled rule reads, one bit per [`NodeEventKind`].
    wanted: AtomicU32,
    /// The node's uplinks, for `forward` actions.
    uplinks: RwLock<Vec<m2m_mesh::Uplink>>,
    /// Jobs taken by the worker, and handed to it: for [`Engine::flush`].
    queued_total: AtomicU64,
    done_total: AtomicU64,
}

/// Stops the worker when the last handle goes.
struct Handle {
    inner: Arc<Inner>,
    worker: Option<JoinHandle<()>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.inner.queue.lock().unwrap_or_else(PoisonError::into_inner).1 = true;
        self.inner.ready.notify_all();
        if let Some(w) = self.worker.take() {
            if w.join().is_err() {
                tracing::error!("rules worker thread panicked");
            }
        }
    }
}

/// The rules engine of a node. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("rules", &self.inner().set.read().map(|s| s.rules.len()).unwrap_or(0))
            .finish()
    }
}

impl Engine {
    /// A new engine without rules; its worker starts at once. Hand it to the broker as a tap, then
    /// [`Engine::attach`] it to the node.
    ///
    /// # Errors
    /// The worker thread cannot be started.
    pub fn new(config: EngineConfig) -> Result<Self, EngineError> {
        let inner = Arc::new(Inner {
            config,
            store: OnceLock::new(),
            specs: Mutex::new(BTreeMap::new()),
            set: RwLock::new(Arc::new(RuleSet::default())),
            queue: Mutex::new((VecDeque::new(), false)),
            ready: Condvar::new(),
            node: OnceLock::new(),
            dropped: AtomicU64::new(0),
            loops: AtomicU64::new(0),
            wanted: AtomicU32::new(0),
            uplinks: RwLock::new(Vec::new()),
            queued_total: AtomicU64::new(0),
            done_total: AtomicU64::new(0),
        });
        let engine_inner = inner.clone();
        let worker = std::thread::Builder::new()
            .name("m2m-rules".into())
            .spawn(move || run(&engine_inner))
            .map_err(|e| m2m_store::StoreError::Io(Arc::new(e)))?;
        Ok(Self { handle: Arc::new(Handle { inner, worker: Some(worker) }) })
    }

    fn inner(&self) -> &Inner {
        &self.handle.inner
    }

    /// Gives the engine what its actions reach, and loads the rules kept in `store` (rules added
    /// before are kept there too). Until then, actions fail (and are counted). Rules with webhooks
    /// need a tokio runtime: call it within one.
    ///
    /// # Errors
    /// A stored rule that does not decode; a store error. A stored rule that no longer compiles is
    /// kept, off (`invalid`), with its error.
    pub fn attach(
        &self,
        router: RouterHandle,
        access: Arc<AccessControl>,
        history: Option<History>,
        store: Option<Store>,
    ) -> Result<(), EngineError> {
        let _ = self.inner().node.set(Node { router, access: Arc::downgrade(&access), history });
        let Some(store) = store else { return Ok(()) };
        let mut loaded = BTreeMap::new();
        for (key, value) in store.records(Table::Rules)? {
            let spec: RuleSpec = serde_json::from_slice(&value).map_err(|e| {
                let key = String::from_utf8_lossy(&key).into_owned();
                EngineError::Invalid(format!("stored rule {key:?} does not decode: {e}"))
            })?;
            loaded.insert(spec.id.clone(), spec);
        }
        let keep = self.current();
        {
            let mut specs = self.inner().specs.lock().unwrap_or_else(PoisonError::into_inner);
            // Rules added before the store was there are kept in it now.
            let mut batch = store.batch();
            for spec in specs.values() {
                batch.put_record(
                    Table::Rules,
                    spec.id.as_bytes(),
                    serde_json::to_vec(spec).unwrap_or_default(),
                );
            }
            batch.commit()?;
            for (id, spec) in loaded {
                specs.entry(id).or_insert(spec);
            }
            let _ = self.inner().store.set(store);
        }
        self.rebuild(&keep);
        let n = self.inner().specs.lock().unwrap_or_else(PoisonError::into_inner).len();
        if n > 0 {
            tracing::info!(rules = n, "rules loaded");
        }
        Ok(())
    }

    /// Recompiles the rule set from the specs; rules whose compiled form is in `keep` (same spec)
    /// keep their counters.
    fn rebuild(&self, keep: &BTreeMap<String, Arc<Live>>) {
        let specs = self.inner().specs.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let mut set = RuleSet::default();
        let mut events: BTreeMap<&'static str, (EventKind, Vec<usize>)> = BTreeMap::new();
        for spec in specs.values() {
            let live = match keep.get(&spec.id).filter(|l| l.spec == *spec) {
                Some(l) => l.clone(),
                None => match compile(spec) {
                    Ok(l) => Arc::new(l),
                    Err(e) => {
                        tracing::warn!(rule = %spec.id, error = %e, "rule does not compile; it stays off");
                        continue;
                    }
                },
            };
            let index = set.rules.len();
            if spec.enabled && !live.auto_disabled.load(Ordering::Relaxed) {
                if let Some(silence) = &live.silence {
                    set.silences.insert(&Subscription::Plain(silence.filter.clone()), index, ());
                }
                for source in live.query.sources() {
                    match source {
                        Source::Topic(filter) => {
                            set.topics.insert(&Subscription::Plain(filter.clone()), index, ());
                        }
                        Source::Event(kind) => {
                            events.entry(kind.as_str()).or_insert((*kind, Vec::new())).1.push(index)
                        }
                    }
                }
            }
            set.rules.push(live);
        }
        set.events = events.into_values().collect();
        let wanted = set.events.iter().filter_map(|(k, _)| node_kind(*k)).fold(0, |m, k| m | bit(k));
        self.inner().wanted.store(wanted, Ordering::Relaxed);
        *self.inner().set.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(set);
    }

    fn current(&self) -> BTreeMap<String, Arc<Live>> {
        let set = self.inner().set.read().unwrap_or_else(PoisonError::into_inner).clone();
        set.rules.iter().map(|l| (l.spec.id.clone(), l.clone())).collect()
    }

    fn persist(&self, spec: Option<&RuleSpec>, id: &str) -> Result<(), EngineError> {
        let Some(store) = self.inner().store.get() else { return Ok(()) };
        let mut batch = store.batch();
        match spec {
            Some(spec) => {
                batch.put_record(Table::Rules, id.as_bytes(), serde_json::to_vec(spec).unwrap_or_default())
            }
            None => batch.remove_record(Table::Rules, id.as_bytes()),
        }
        batch.commit()?;
        Ok(())
    }

    /// Checks a rule without adding it: its id, SQL and actions.
    ///
    /// # Errors
    /// [`EngineError::Invalid`] naming the problem.
    pub fn check(spec: &RuleSpec) -> Result<(), EngineError> {
        if let Some(p) = id_problem(&spec.id) {
            return Err(EngineError::Invalid(format!("rule id {:?}: {p}", spec.id)));
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            return compile_checked(spec).map(|_| ());
        }
        // Compiling starts a webhook's sender on the current runtime: outside one (a tool checking a
        // rule file), a throwaway runtime is entered, and the sender, never polled, goes with it.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| EngineError::Invalid(format!("cannot check the rule: {e}")))?;
        let _entered = runtime.enter();
        compile_checked(spec).map(|_| ())
    }

    /// Adds a rule (or replaces one, with `replace`); it runs from the next message on.
    ///
    /// # Errors
    /// An invalid rule; [`EngineError::Exists`]; a store error.
    pub fn put(&self, spec: RuleSpec, replace: bool) -> Result<(), EngineError> {
        Self::check(&spec)?;
        let keep = self.current();
        {
            let mut specs = self.inner().specs.lock().unwrap_or_else(PoisonError::into_inner);
            if !replace && specs.contains_key(&spec.id) {
                return Err(EngineError::Exists(spec.id));
            }
            self.persist(Some(&spec), &spec.id)?;
            specs.insert(spec.id.clone(), spec);
        }
        self.rebuild(&keep);
        Ok(())
    }

    /// Removes a rule.
    ///
    /// # Errors
    /// [`EngineError::NotFound`]; a store error.
    pub fn remove(&self, id: &str) -> Result<RuleSpec, EngineError> {
        let keep = self.current();
        let removed = {
            let mut specs = self.inner().specs.lock().unwrap_or_else(PoisonError::into_inner);
            if !specs.contains_key(id) {
                return Err(EngineError::NotFound(id.to_owned()));
            }
            self.persist(None, id)?;
            specs.remove(id)
        };
        self.rebuild(&keep);
        removed.ok_or_else(|| EngineError::NotFound(id.to_owned()))
    }

    /// Enables or disables a rule (enabling clears a disable for failing, and its failure count).
    ///
    /// # Errors
    /// [`EngineError::NotFound`]; a store error.
    pub fn set_enabled(&self, id: &str, enabled: bool) -> Result<(), EngineError> {
        let mut keep = self.current();
        if enabled {
            // A fresh start: compiled again, counters from zero.
            keep.remove(id);
        }
        {
            let mut specs = self.inner().specs.lock().unwrap_or_else(PoisonError::into_inner);
            let spec = specs.get_mut(id).ok_or_else(|| EngineError::NotFound(id.to_owned()))?;
            let mut changed = spec.clone();
            changed.enabled = enabled;
            self.persist(Some(&changed), id)?;
            *spec = changed;
        }
        self.rebuild(&keep);
        Ok(())
    }

    /// Every rule, by id, with its state and metrics.
    pub fn list(&self) -> Vec<RuleStatus> {
        let live = self.current();
        let specs = self.inner().specs.lock().unwrap_or_else(PoisonError::into_inner).clone();
        specs
            .into_values()
            .map(|spec| {
                let compiled = live.get(&spec.id).filter(|l| l.spec == spec).cloned();
                status(spec, compiled.as_deref())
            })
            .collect()
    }

    /// One rule.
    ///
    /// # Errors
    /// [`EngineError::NotFound`].
    pub fn get(&self, id: &str) -> Result<RuleStatus, EngineError> {
        self.list().into_iter().find(|r| r.spec.id == id).ok_or_else(|| EngineError::NotFound(id.to_owned()))
    }

    /// Evaluates `sql` on a sample message or event (no actions run): the output, or `None` when
    /// WHERE rejects it.
    ///
    /// # Errors
    /// An invalid rule, an unknown event, or an evaluation error, as text.
    pub fn test(sql: &str, sample: &Sample) -> Result<Option<Map<String, Value>>, EngineError> {
        let query = RuleQuery::parse(sql).map_err(|e| EngineError::Invalid(e.to_string()))?;
        let now = now_ms();
        let mut input = match &sample.event {
            None => Input::message(&sample.topic, &sample.payload, now),
            Some(name) => {
                let name = name.strip_prefix("$events/").unwrap_or(name);
                let Some(kind) = EventKind::ALL.into_iter().find(|k| k.as_str() == name) else {
                    let known: Vec<_> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                    return Err(EngineError::Invalid(format!(
                        "no event {name:?}; events: {}",
                        known.join(", ")
                    )));
                };
                let mut input = Input::event(kind, &sample.fields, now);
                input.topic = &sample.topic;
                input.payload = &sample.payload;
                input.peerhost = sample.fields.get("peerhost").and_then(Value::as_str);
                input
            }
        };
        input.clientid = sample.clientid.as_deref();
        input.username = sample.username.as_deref();
        input.qos = sample.qos;
        input.retain = sample.retain;
        input.window = sample.window.as_ref();
        query.evaluate(&input).map_err(|e| EngineError::Invalid(e.to_string()))
    }

    /// The node's uplinks, which `forward` actions name.
    pub fn set_uplinks(&self, uplinks: Vec<m2m_mesh::Uplink>) {
        *self.inner().uplinks.write().unwrap_or_else(PoisonError::into_inner) = uplinks;
    }

    /// Waits (at most `timeout`) until everything handed to the engine so far was evaluated and its
    /// actions carried out (webhooks queued); `false` on timeout. For tests and tools.
    pub fn flush(&self, timeout: Duration) -> bool {
        let target = self.inner().queued_total.load(Ordering::Acquire);
        let deadline = Instant::now() + timeout;
        while self.inner().done_total.load(Ordering::Acquire) < target {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    /// Inputs dropped because the queue was full, and messages not given to rules for their hop count.
    pub fn dropped(&self) -> (u64, u64) {
        (self.inner().dropped.load(Ordering::Relaxed), self.inner().loops.load(Ordering::Relaxed))
    }

    fn push(&self, job: Job) {
        let inner = self.inner();
        let mut q = inner.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if q.0.len() >= inner.config.queue {
            inner.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let was_empty = q.0.is_empty();
        q.0.push_back(job);
        inner.queued_total.fetch_add(1, Ordering::AcqRel);
        drop(q);
        if was_empty {
            inner.ready.notify_one();
        }
    }
}

/// What [`Engine::test`] evaluates a rule on: a message, or an event with its fields.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// The message's topic (for an event, the topic it is about, or empty).
    pub topic: String,
    /// The payload.
    pub payload: Vec<u8>,
    /// The publisher's (or the event's) client id.
    pub clientid: Option<String>,
    /// Its user name.
    pub username: Option<String>,
    /// QoS of the message.
    pub qos: u8,
    /// Its retain flag.
    pub retain: bool,
    /// Evaluate as this event (`client_connected` or `$events/client_connected`…) instead of a
    /// message.
    pub event: Option<String>,
    /// The event's own fields (`reason`, `peerhost`, `filter`…).
    pub fields: Map<String, Value>,
    /// The `win.*` statistics a window rule sees (`count`, `avg`, `min`, `max`, `sum`, `secs`).
    pub window: Option<Map<String, Value>>,
}

/// A rule as reported: its spec, whether it runs, and its metrics.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RuleStatus {
    /// The rule.
    #[serde(flatten)]
    pub spec: RuleSpec,
    /// `running`, `disabled`, `disabled_failing` (by the engine) or `invalid` (does not compile).
    pub state: &'static str,
    /// Its counters since it was (re)compiled.
    pub metrics: RuleMetrics,
}

fn status(spec: RuleSpec, live: Option<&Live>) -> RuleStatus {
    let Some(live) = live else {
        let error = compile_checked(&spec).err().map(|e| e.to_string());
        return RuleStatus {
            spec,
            state: "invalid",
            metrics: RuleMetrics { last_error: error, ..RuleMetrics::default() },
        };
    };
    let c = &live.counters;
    let matched = c.matched.load(Ordering::Relaxed);
    let metrics = RuleMetrics {
        matched,
        passed: c.passed.load(Ordering::Relaxed),
        failed: c.failed.load(Ordering::Relaxed),
        actions_ok: c.actions_ok.load(Ordering::Relaxed),
        actions_failed: c.actions_failed.load(Ordering::Relaxed),
        eval_mean_ns: c.eval_nanos.load(Ordering::Relaxed) / matched.max(1),
        last_error: c.last_error.lock().unwrap_or_else(PoisonError::into_inner).clone(),
    };
    let state = if live.auto_disabled.load(Ordering::Relaxed) {
        "disabled_failing"
    } else if spec.enabled {
        "running"
    } else {
        "disabled"
    };
    RuleStatus { spec, state, metrics }
}

fn compile_checked(spec: &RuleSpec) -> Result<Live, EngineError> {
    let query =
        RuleQuery::parse(&spec.sql).map_err(|e| EngineError::Invalid(format!("rule {:?}: {e}", spec.id)))?;
    let template = |what: &str, t: &str| {
        Template::parse(t).map_err(|e| EngineError::Invalid(format!("rule {:?}: {what} {t:?}: {e}", spec.id)))
    };
    let mut actions = Vec::new();
    for a in &spec.actions {
        actions.push(match a {
            ActionSpec::Republish { topic, payload, qos, retain, user_properties } => Action::Republish {
                topic: template("republish topic", topic)?,
                payload: payload.as_deref().map(|p| template("republish payload", p)).transpose()?,
                qos: QoS::from_u8(*qos).ok_or_else(|| {
                    EngineError::Invalid(format!(
                        "rule {:?}: republish qos {qos}: expected 0, 1 or 2",
                        spec.id
                    ))
                })?,
                retain: *retain,
                props: user_properties
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), template("user property", v)?)))
                    .collect::<Result<_, EngineError>>()?,
            },
            ActionSpec::Forward { uplink, topic, payload, qos, retain } => Action::Forward {
                uplink: uplink.clone(),
                topic: template("forward topic", topic)?,
                payload: payload.as_deref().map(|p| template("forward payload", p)).transpose()?,
                qos: match qos {
                    0 => QoS::AtMostOnce,
                    1 => QoS::AtLeastOnce,
                    _ => {
                        return Err(EngineError::Invalid(format!(
                            "rule {:?}: forward qos {qos}: expected 0 or 1",
                            spec.id
                        )))
                    }
                },
                retain: *retain,
            },
            ActionSpec::Webhook { url, ca, headers, body, timeout_ms, max_retries } => {
                let mut config = WebhookConfig {
                    url: url.clone(),
                    ca: ca.as_ref().map(Into::into),
                    headers: headers.clone(),
                    ..WebhookConfig::default()
                };
                if let Some(ms) = timeout_ms {
                    config.timeout = Duration::from_millis(*ms);
                }
                if let Some(n) = max_retries {
                    config.max_retries = *n;
                }
                let hook = Webhook::start(config)
                    .map_err(|e| EngineError::Invalid(format!("rule {:?}: webhook: {e}", spec.id)))?;
                Action::Webhook {
                    hook,
                    body: body.as_deref().map(|b| template("webhook body", b)).transpose()?,
                }
            }
            ActionSpec::Quarantine { client_id, mode, reason, expires_secs } => Action::Quarantine {
                client: template("quarantine client_id", client_id)?,
                mode: m2m_access::Mode::from_name(mode).ok_or_else(|| {
                    EngineError::Invalid(format!(
                        "rule {:?}: quarantine mode {mode:?}: expected ban or isolate",
                        spec.id
                    ))
                })?,
                reason: template("quarantine reason", reason)?,
                expires: expires_secs.map(Duration::from_secs),
            },
            ActionSpec::History { topic, payload } => Action::History {
                topic: template("history topic", topic)?,
                payload: payload.as_deref().map(|p| template("history payload", p)).transpose()?,
            },
        });
    }
    let invalid = |what: String| EngineError::Invalid(format!("rule {:?}: {what}", spec.id));
    let window = match &spec.window {
        Some(w) => {
            if !(1..=86_400).contains(&w.secs) {
                return Err(invalid(format!("window secs {}: expected 1 to 86400", w.secs)));
            }
            let field =
                m2m_history::FieldPath::parse(&w.field).map_err(|e| invalid(format!("window: {e}")))?;
            Some(Window { field, ms: w.secs * 1000 })
        }
        None => None,
    };
    let silence = match &spec.silence {
        Some(d) => {
            let filter = TopicFilter::try_from(d.filter.as_str())
                .map_err(|e| invalid(format!("silence filter {:?}: {e}", d.filter)))?;
            let per_client = match d.per.as_str() {
                "clientid" => true,
                "topic" => false,
                other => return Err(invalid(format!("silence per {other:?}: expected clientid or topic"))),
            };
            if d.after_secs == 0 {
                return Err(invalid("silence after_secs must be at least 1".into()));
            }
            if !query.matches_event(EventKind::Silent) {
                return Err(invalid("a rule with silence reads FROM \"$events/silent\"".into()));
            }
            Some(Silence { filter, per_client, after_ms: d.after_secs * 1000 })
        }
        None => None,
    };
    if window.is_some() && !query.sources().iter().any(|s| matches!(s, Source::Topic(_))) {
        return Err(invalid("a rule with a window reads FROM topic filters".into()));
    }
    Ok(Live {
        spec: spec.clone(),
        query,
        actions,
        window,
        silence,
        time: Mutex::new(TimeState::default()),
        counters: Counters::default(),
        auto_disabled: AtomicBool::new(false),
    })
}

fn compile(spec: &RuleSpec) -> Result<Live, EngineError> {
    compile_checked(spec)
}

fn now_ms() -> u64 {
    m2m_store::unix_ms(std::time::SystemTime::now())
}

impl Tap for Engine {
    fn sys_values(&self, out: &mut Vec<(&'static str, String)>) {
        let set = self.inner().set.read().unwrap_or_else(PoisonError::into_inner).clone();
        let running =
            set.rules.iter().filter(|r| r.spec.enabled && !r.auto_disabled.load(Ordering::Relaxed)).count();
        let matched: u64 = set.rules.iter().map(|r| r.counters.matched.load(Ordering::Relaxed)).sum();
        let (dropped, loops) = self.dropped();
        out.push(("rules/running", running.to_string()));
        out.push(("rules/evaluations", matched.to_string()));
        out.push(("rules/dropped", dropped.to_string()));
        out.push(("rules/hop_limited", loops.to_string()));
    }

    fn message(&self, message: &Arc<Message>) {
        // Only what some rule's filter (or a dead-man rule's) matches goes to the worker: one trie
        // walk here saves the queue for the messages that matter.
        let any = self.inner().set.read().is_ok_and(|s| {
            let mut hit = false;
            if !s.topics.is_empty() {
                s.topics.match_topic(&message.topic, |_, ()| hit = true, |_, _| {});
            }
            if !hit && !s.silences.is_empty() {
                s.silences.match_topic(&message.topic, |_, ()| hit = true, |_, _| {});
            }
            hit
        });
        if any {
            self.push(Job::Message(message.clone(), now_ms()));
        }
    }

    fn event(&self, event: &NodeEvent) {
        if self.wants(event.kind()) {
            self.push(Job::Event(event.clone(), now_ms()));
        }
    }

    fn wants(&self, kind: NodeEventKind) -> bool {
        self.inner().wanted.load(Ordering::Relaxed) & bit(kind) != 0
    }
}

/// The node event a rule's event source hears; `None` for the engine's own (`silent`).
fn node_kind(kind: EventKind) -> Option<NodeEventKind> {
    Some(match kind {
        EventKind::ClientConnected => NodeEventKind::ClientConnected,
        EventKind::ClientDisconnected => NodeEventKind::ClientDisconnected,
        EventKind::SessionSubscribed => NodeEventKind::SessionSubscribed,
        EventKind::SessionUnsubscribed => NodeEventKind::SessionUnsubscribed,
        EventKind::MessageDropped => NodeEventKind::MessageDropped,
        EventKind::MessageDelivered => NodeEventKind::MessageDelivered,
        EventKind::Quarantined => NodeEventKind::Quarantined,
        EventKind::Released => NodeEventKind::Released,
        // `silent`, which the engine raises itself.
        _ => return None,
    })
}

fn bit(kind: NodeEventKind) -> u32 {
    1 << (kind as u32)
}

/// The worker: takes jobs in order, evaluates the rules they match, runs the actions; and every
/// [`SILENCE_CHECK`] looks for silences.
fn run(inner: &Arc<Inner>) {
    let mut next_check = Instant::now() + SILENCE_CHECK;
    loop {
        let jobs: Vec<Job> = {
            let mut q = inner.queue.lock().unwrap_or_else(PoisonError::into_inner);
            while q.0.is_empty() && !q.1 {
                let left = next_check.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                q = inner.ready.wait_timeout(q, left).unwrap_or_else(PoisonError::into_inner).0;
            }
            if q.0.is_empty() && q.1 {
                return;
            }
            q.0.drain(..).collect()
        };
        let set = inner.set.read().unwrap_or_else(PoisonError::into_inner).clone();
        for job in jobs {
            match &job {
                Job::Message(m, at) => on_message(inner, &set, m, *at),
                Job::Event(e, at) => on_event(inner, &set, e, *at),
            }
            inner.done_total.fetch_add(1, Ordering::AcqRel);
        }
        if Instant::now() >= next_check {
            check_silences(inner, &set, now_ms());
            next_check = Instant::now() + SILENCE_CHECK;
        }
    }
}

/// Runs the dead-man rules whose watched keys have been silent too long (once per silence).
fn check_silences(inner: &Inner, set: &RuleSet, now: u64) {
    for rule in &set.rules {
        let Some(silence) = &rule.silence else { continue };
        if !rule.spec.enabled || rule.auto_disabled.load(Ordering::Relaxed) {
            continue;
        }
        // The event's fields and the last message of each silence found.
        let mut fired: Vec<(Map<String, Value>, Seen)> = Vec::new();
        {
            let mut time = rule.time.lock().unwrap_or_else(PoisonError::into_inner);
            for (key, seen) in time.seen.iter_mut() {
                if seen.fired || now.saturating_sub(seen.at_ms) < silence.after_ms {
                    continue;
                }
                seen.fired = true;
                let mut f = Map::new();
                f.insert("filter".into(), silence.filter.as_str().into());
                f.insert("key".into(), key.clone().into());
                f.insert("last_seen".into(), seen.at_ms.into());
                f.insert("silent_ms".into(), now.saturating_sub(seen.at_ms).into());
                fired.push((f, seen.clone()));
            }
        }
        for (fields, seen) in &fired {
            let mut input = Input::event(EventKind::Silent, fields, now);
            input.clientid = seen.clientid.as_deref();
            input.topic = &seen.topic;
            input.payload = &seen.payload;
            evaluate(inner, rule, &input, 0);
        }
    }
}

/// Notes a message on a dead-man rule's watched filter.
fn watch(rule: &Live, silence: &Silence, m: &Message, at: u64) {
    let key = if silence.per_client {
        m.publisher.as_deref().unwrap_or("").to_owned()
    } else {
        m.topic.as_str().to_owned()
    };
    let mut time = rule.time.lock().unwrap_or_else(PoisonError::into_inner);
    if time.seen.len() >= MAX_WATCHED && !time.seen.contains_key(&key) {
        return;
    }
    time.seen.insert(
        key,
        Seen {
            at_ms: at,
            topic: m.topic.as_str().to_owned(),
            clientid: m.publisher.as_deref().map(str::to_owned),
            payload: m.payload.clone(),
            fired: false,
        },
    );
}

/// Adds the message's value to the rule's window over its topic and returns the window's statistics.
fn window_stats(rule: &Live, window: &Window, m: &Message, at: u64) -> Map<String, Value> {
    let mut time = rule.time.lock().unwrap_or_else(PoisonError::into_inner);
    let known = time.windows.contains_key(m.topic.as_arc());
    let values = if known || time.windows.len() < MAX_WINDOWS {
        Some(time.windows.entry(m.topic.as_arc().clone()).or_default())
    } else {
        None
    };
    let mut stats = Map::new();
    stats.insert("secs".into(), (window.ms / 1000).into());
    let Some(values) = values else { return stats };
    if let Some(v) = window.field.number(&m.payload) {
        if values.len() >= MAX_WINDOW_POINTS {
            values.pop_front();
        }
        values.push_back((at, v));
    }
    while values.front().is_some_and(|(t, _)| at.saturating_sub(*t) > window.ms) {
        values.pop_front();
    }
    let n = values.len();
    stats.insert("count".into(), n.into());
    if n > 0 {
        let sum: f64 = values.iter().map(|(_, v)| v).sum();
        let min = values.iter().map(|(_, v)| *v).fold(f64::INFINITY, f64::min);
        let max = values.iter().map(|(_, v)| *v).fold(f64::NEG_INFINITY, f64::max);
        stats.insert("sum".into(), Value::from(sum));
        stats.insert("avg".into(), Value::from(sum / n as f64));
        stats.insert("min".into(), Value::from(min));
        stats.insert("max".into(), Value::from(max));
    }
    stats
}

fn hops(message: &Message) -> u8 {
    message
        .properties
        .user_properties
        .iter()
        .find(|(k, _)| &**k == HOPS_PROPERTY)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

fn on_message(inner: &Inner, set: &RuleSet, m: &Arc<Message>, at: u64) {
    set.silences.match_topic(
        &m.topic,
        |i, ()| {
            if let Some(rule) = set.rules.get(*i) {
                if let Some(silence) = &rule.silence {
                    watch(rule, silence, m, at);
                }
            }
        },
        |_, _| {},
    );
    let mut matched: Vec<usize> = Vec::new();
    set.topics.match_topic(&m.topic, |i, ()| matched.push(*i), |_, _| {});
    if matched.is_empty() {
        return;
    }
    let hop = hops(m);
    if hop >= inner.config.max_hops {
        inner.loops.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(topic = %m.topic, hops = hop, "message not given to rules: too many rule hops");
        return;
    }
    matched.sort_unstable();
    matched.dedup();
    let mut input = Input::message(m.topic.as_str(), &m.payload, at);
    input.clientid = m.publisher.as_deref();
    input.qos = m.qos as u8;
    input.retain = m.retain;
    input.now_ms = now_ms();
    input.user_properties = &m.properties.user_properties;
    input.content_type = m.properties.content_type.as_deref();
    for i in matched {
        let Some(rule) = set.rules.get(i) else { continue };
        match &rule.window {
            Some(window) => {
                let stats = window_stats(rule, window, m, at);
                let mut with_window = input;
                with_window.window = Some(&stats);
                evaluate(inner, rule, &with_window, hop);
            }
            None => evaluate(inner, rule, &input, hop),
        }
    }
}

fn on_event(inner: &Inner, set: &RuleSet, event: &NodeEvent, at: u64) {
    let (kind, fields, clientid, username, topic) = event_input(event);
    let Some((_, rules)) = set.events.iter().find(|(k, _)| *k == kind) else { return };
    let mut input = Input::event(kind, &fields, at);
    input.clientid = Some(clientid);
    input.username = username;
    input.topic = topic;
    input.now_ms = now_ms();
    let peer = fields.get("peerhost").and_then(Value::as_str).map(str::to_owned);
    input.peerhost = peer.as_deref();
    let mut hop = 0;
    if let NodeEvent::MessageDelivered { message: m, .. } | NodeEvent::MessageDropped { message: m, .. } =
        event
    {
        hop = hops(m);
        if hop >= inner.config.max_hops {
            inner.loops.fetch_add(1, Ordering::Relaxed);
            return;
        }
        input.payload = &m.payload;
        input.qos = match event {
            NodeEvent::MessageDelivered { qos, .. } => *qos,
            _ => m.qos as u8,
        };
        input.retain = m.retain;
        input.user_properties = &m.properties.user_properties;
        input.content_type = m.properties.content_type.as_deref();
    }
    for &i in rules {
        if let Some(rule) = set.rules.get(i) {
            evaluate(inner, rule, &input, hop);
        }
    }
}

/// The kind, fields, client, username and topic of an event, as rules see it.
fn event_input(event: &NodeEvent) -> (EventKind, Map<String, Value>, &str, Option<&str>, &str) {
    let mut f = Map::new();
    match event {
        NodeEvent::ClientConnected { client_id, username, peer, protocol, clean_start, keep_alive } => {
            f.insert("peerhost".into(), peer.ip().to_string().into());
            f.insert("proto_ver".into(), (*protocol).into());
            f.insert("clean_start".into(), (*clean_start).into());
            f.insert("keepalive".into(), (*keep_alive).into());
            (EventKind::ClientConnected, f, client_id, username.as_deref(), "")
        }
        NodeEvent::ClientDisconnected { client_id, username, peer, reason } => {
            f.insert("peerhost".into(), peer.ip().to_string().into());
            f.insert("reason".into(), (*reason).into());
            (EventKind::ClientDisconnected, f, client_id, username.as_deref(), "")
        }
        NodeEvent::SessionSubscribed { client_id, filter, qos } => {
            f.insert("qos".into(), (*qos).into());
            (EventKind::SessionSubscribed, f, client_id, None, filter)
        }
        NodeEvent::SessionUnsubscribed { client_id, filter } => {
            (EventKind::SessionUnsubscribed, f, client_id, None, filter)
        }
        NodeEvent::Quarantined { entry, target, client_id, mode, reason, actor } => {
            f.insert("entry".into(), (*entry).into());
            f.insert("target".into(), target.clone().into());
            f.insert("mode".into(), (*mode).into());
            f.insert("reason".into(), reason.clone().into());
            f.insert("actor".into(), actor.clone().into());
            (EventKind::Quarantined, f, client_id.as_deref().unwrap_or(""), None, "")
        }
        NodeEvent::MessageDelivered { client_id, message, .. } => {
            f.insert("from_clientid".into(), message.publisher.as_deref().unwrap_or("").into());
            (EventKind::MessageDelivered, f, client_id, None, message.topic.as_str())
        }
        NodeEvent::MessageDropped { client_id, message, reason } => {
            let from = message.publisher.as_deref().unwrap_or("");
            f.insert("from_clientid".into(), from.into());
            f.insert("reason".into(), (*reason).into());
            (EventKind::MessageDropped, f, client_id.as_deref().unwrap_or(from), None, message.topic.as_str())
        }
        NodeEvent::Released { entry, target, client_id, actor } => {
            f.insert("entry".into(), (*entry).into());
            f.insert("target".into(), target.clone().into());
            f.insert("actor".into(), actor.clone().into());
            (EventKind::Released, f, client_id.as_deref().unwrap_or(""), None, "")
        }
    }
}

fn fail(inner: &Inner, rule: &Live, error: String) {
    let c = &rule.counters;
    *c.last_error.lock().unwrap_or_else(PoisonError::into_inner) = Some(error.clone());
    let failing = c.failing.fetch_add(1, Ordering::Relaxed) + 1;
    if failing >= inner.config.disable_after && !rule.auto_disabled.swap(true, Ordering::Relaxed) {
        tracing::warn!(rule = %rule.spec.id, failures = failing, error = %error, "rule disabled: it keeps failing");
        if let Some(access) = inner.node.get().and_then(|n| n.access.upgrade()) {
            access.audit(
                "rules",
                "rule.disable",
                &rule.spec.id,
                &format!("{failing} failures in a row; last: {error}"),
            );
        }
    }
}

fn evaluate(inner: &Inner, rule: &Live, input: &Input<'_>, hop: u8) {
    if rule.auto_disabled.load(Ordering::Relaxed) {
        return;
    }
    let c = &rule.counters;
    c.matched.fetch_add(1, Ordering::Relaxed);
    let started = Instant::now();
    let result = rule.query.evaluate(input);
    c.eval_nanos
        .fetch_add(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    let output = match result {
        Ok(Some(output)) => output,
        Ok(None) => {
            c.failing.store(0, Ordering::Relaxed);
            return;
        }
        Err(e) => {
            c.failed.fetch_add(1, Ordering::Relaxed);
            fail(inner, rule, format!("evaluation: {e}"));
            return;
        }
    };
    c.passed.fetch_add(1, Ordering::Relaxed);
    let mut all_ok = true;
    for action in &rule.actions {
        match act(inner, rule, action, &output, hop) {
            Ok(()) => {
                c.actions_ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                all_ok = false;
                c.actions_failed.fetch_add(1, Ordering::Relaxed);
                fail(inner, rule, e);
            }
        }
    }
    if all_ok {
        c.failing.store(0, Ordering::Relaxed);
    }
}

fn payload_of(template: Option<&Template>, output: &Map<String, Value>) -> Bytes {
    match template {
        Some(t) => Bytes::from(t.render(output)),
        None => Bytes::from(serde_json::to_vec(output).unwrap_or_default()),
    }
}

fn act(
    inner: &Inner,
    rule: &Live,
    action: &Action,
    output: &Map<String, Value>,
    hop: u8,
) -> Result<(), String> {
    let node = inner.node.get().ok_or("the node is not ready")?;
    match action {
        Action::Republish { topic, payload, qos, retain, props } => {
            let topic = topic.render(output);
            let topic =
                TopicName::try_from(topic.as_str()).map_err(|e| format!("republish topic {topic:?}: {e}"))?;
            let mut m = Message::new(topic, payload_of(payload.as_ref(), output), *qos, *retain);
            let mut user_properties: Vec<(Arc<str>, Arc<str>)> =
                props.iter().map(|(k, v)| (Arc::from(k.as_str()), Arc::from(v.render(output)))).collect();
            user_properties.push((Arc::from(HOPS_PROPERTY), Arc::from((hop + 1).to_string())));
            m.properties.user_properties = user_properties;
            m.publisher = Some(Arc::from(format!("$rule/{}", rule.spec.id)));
            node.router
                .blocking_send(Command::Publish { message: Arc::new(m), from: None, ack: None })
                .map_err(|e| e.to_string())
        }
        Action::Forward { uplink, topic, payload, qos, retain } => {
            let uplinks = inner.uplinks.read().unwrap_or_else(PoisonError::into_inner);
            let Some(to) = uplinks.iter().find(|u| u.name() == uplink) else {
                return Err(format!("forward: the node has no uplink {uplink:?}"));
            };
            let topic = topic.render(output);
            let topic =
                TopicName::try_from(topic.as_str()).map_err(|e| format!("forward topic {topic:?}: {e}"))?;
            let mut m = Message::new(topic, payload_of(payload.as_ref(), output), *qos, *retain);
            m.publisher = Some(Arc::from(format!("$rule/{}", rule.spec.id)));
            to.forward(&m)
        }
        Action::Webhook { hook, body } => {
            let body = match body {
                Some(t) => {
                    let text = t.render(output);
                    serde_json::from_str(&text).unwrap_or(Value::String(text))
                }
                None => Value::Object(output.clone()),
            };
            if hook.send(body) {
                Ok(())
            } else {
                Err("webhook queue full".into())
            }
        }
        Action::Quarantine { client, mode, reason, expires } => {
            let client = client.render(output);
            if client.is_empty() {
                return Err("quarantine: the client id is empty".into());
            }
            let expires_ms = expires.map(|d| now_ms() + u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            let actor = format!("rule:{}", rule.spec.id);
            let access = node.access.upgrade().ok_or("the node is stopping")?;
            access
                .add_quarantine(
                    m2m_access::Target::ClientId(client),
                    *mode,
                    &reason.render(output),
                    &actor,
                    expires_ms,
                )
                .map(|_| ())
                .map_err(|e| format!("quarantine: {e}"))
        }
        Action::History { topic, payload } => {
            let history = node.history.as_ref().ok_or("history is off on this node")?;
            let topic = topic.render(output);
            let topic =
                TopicName::try_from(topic.as_str()).map_err(|e| format!("history topic {topic:?}: {e}"))?;
            let mut m = Message::new(topic, payload_of(payload.as_ref(), output), QoS::AtMostOnce, false);
            m.publisher = Some(Arc::from(format!("$rule/{}", rule.spec.id)));
            if history.import(&Arc::new(m), m2m_history::time::now_us()) {
                Ok(())
            } else {
                Err("history queue full".into())
            }
        }
    }
}
