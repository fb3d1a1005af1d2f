//! Who a client is and what it may do: usernames and passwords checked against the device registry,
//! and a [`Permit`] per connection that applies the registry's access rules.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use m2m_access::{
    Acl, AuditEvent, AuditLog, Decision, Quarantine, QuarantineEntry, Registry, VerifiedCache, Who,
};
use m2m_codec::ReasonCode;
use m2m_router::{Command, Metrics, RouterHandle};
use m2m_session::Permit;
use m2m_topic::{Subscription, TopicName};
use tracing::debug;

use crate::detect::{Detectors, DetectorsConfig};

/// Credentials remembered after a successful argon2 verification.
const VERIFIED_CACHE: usize = 100_000;
/// How long a CONNECT waits for a password verification unless set otherwise.
pub(crate) const PASSWORD_CHECK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Half the cores, at least one.
fn half_the_cores() -> usize {
    (std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get) / 2).max(1)
}

/// The node's identity and access control: the device registry, behind a lock held only for
/// lookups and changes (never across an await or a password verification).
pub struct AccessControl {
    registry: RwLock<Registry>,
    quarantine: RwLock<Quarantine>,
    /// The clients connected now, by connection id, for quarantine entries to act on at once.
    live: std::sync::Mutex<HashMap<u64, LiveClient>>,
    /// Ends connections (through the router) and the runtime to do it from synchronous callers.
    router: RouterHandle,
    runtime: tokio::runtime::Handle,
    audit: AuditLog,
    detectors: Detectors,
    /// What quarantined clients tried and were refused, newest last, per client id.
    refusals: std::sync::Mutex<HashMap<Arc<str>, std::collections::VecDeque<Refusal>>>,
    /// Audit events to publish on `$SYS`, in order, by one task.
    announce: tokio::sync::mpsc::Sender<Arc<m2m_session::Message>>,
    cache: VerifiedCache,
    /// Password hashes verified at once (half the cores unless set). Each costs tens of milliseconds
    /// and megabytes, so a flood of CONNECTs with wrong passwords waits here instead of taking every
    /// thread and the memory they need; passwords verified before are answered from the cache
    /// without waiting.
    verifying: tokio::sync::Semaphore,
    /// How long a CONNECT waits for a verification before it is refused as busy.
    verify_wait: std::time::Duration,
    metrics: Arc<Metrics>,
    /// Parts of the node told of quarantines and releases (the rules engine).
    taps: Vec<Arc<dyn m2m_router::Tap>>,
}

impl std::fmt::Debug for AccessControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessControl").field("enabled", &self.is_enabled()).finish_non_exhaustive()
    }
}

/// Packets of a quarantined client kept for the operator to see why: per client at most this many.
const REFUSALS_PER_CLIENT: usize = 50;
/// Clients whose refusals are kept at most.
const REFUSAL_CLIENTS: usize = 10_000;

/// One thing a quarantined client tried and was refused.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Refusal {
    /// When (unix ms).
    pub at_ms: u64,
    /// `CONNECT`, `PUBLISH` or `SUBSCRIBE`.
    pub kind: String,
    /// The topic or filter (empty for a CONNECT).
    pub topic: String,
    /// Payload bytes of a PUBLISH (0 for the others).
    pub size: usize,
    /// Why: the quarantine entry.
    pub reason: String,
}

/// A connected client, as quarantine entries match it.
#[derive(Debug, Clone)]
pub(crate) struct LiveClient {
    pub(crate) client_id: Arc<str>,
    pub(crate) username: Option<Arc<str>>,
    pub(crate) address: std::net::IpAddr,
    /// The quarantine entry isolating it, if one does.
    pub(crate) isolated_by: Option<u64>,
    /// Tells the connection which entry isolates it from now on (`None`: released).
    pub(crate) isolation: Arc<tokio::sync::watch::Sender<Option<u64>>>,
}

/// What a change of the quarantine list did to the live connections.
#[derive(Debug, Default, Clone, Copy)]
struct Applied {
    kicked: usize,
    isolated: usize,
    released: usize,
}

impl std::fmt::Display for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} disconnected, {} isolated, {} released", self.kicked, self.isolated, self.released)
    }
}

/// Who a connection authenticated as: a registered device (its username), or nobody in particular.
#[derive(Debug, Clone, Default)]
pub(crate) struct Identity {
    pub(crate) username: Option<Arc<str>>,
    pub(crate) device: Option<Arc<str>>,
    pub(crate) groups: Arc<[Arc<str>]>,
    /// Rules of the connection's own (from its token), checked before all others.
    pub(crate) rules: Option<Arc<Acl>>,
}

/// Why credentials were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Unknown device, no password, or the wrong one.
    BadCredentials,
    /// The device is disabled.
    Disabled,
    /// Too many passwords are being verified; try again later.
    Busy,
}

impl AccessControl {
    /// Access control over `registry` and `quarantine`, counting refusals in `metrics` and ending
    /// connections through `router`. Call it within the node's tokio runtime.
    pub fn new(
        registry: Registry,
        quarantine: Quarantine,
        audit: AuditLog,
        detectors: DetectorsConfig,
        metrics: Arc<Metrics>,
        router: RouterHandle,
        taps: Vec<Arc<dyn m2m_router::Tap>>,
    ) -> Self {
        let (announce, mut announcements) = tokio::sync::mpsc::channel::<Arc<m2m_session::Message>>(1024);
        let to_router = router.clone();
        tokio::spawn(async move {
            while let Some(message) = announcements.recv().await {
                if to_router.send(Command::Publish { message, from: None, ack: None }).await.is_err() {
                    return;
                }
            }
        });
        Self {
            refusals: std::sync::Mutex::new(HashMap::new()),
            audit,
            detectors: Detectors::new(detectors),
            announce,
            registry: RwLock::new(registry),
            quarantine: RwLock::new(quarantine),
            live: std::sync::Mutex::new(HashMap::new()),
            router,
            runtime: tokio::runtime::Handle::current(),
            cache: VerifiedCache::new(VERIFIED_CACHE),
            verifying: tokio::sync::Semaphore::new(half_the_cores()),
            verify_wait: PASSWORD_CHECK_WAIT,
            metrics,
            taps,
        }
    }

    /// Verifies at most `at_once` passwords at a time (0: half the cores, at least one); a CONNECT
    /// that waits `wait` for a turn is refused as busy.
    #[must_use]
    pub fn with_password_checks(mut self, at_once: usize, wait: std::time::Duration) -> Self {
        self.verifying = tokio::sync::Semaphore::new(if at_once == 0 { half_the_cores() } else { at_once });
        self.verify_wait = wait;
        self
    }

    /// The quarantine list, to read.
    pub fn quarantine(&self) -> RwLockReadGuard<'_, Quarantine> {
        self.quarantine.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The quarantine list, to change (it applies to connections made from then on).
    pub fn quarantine_mut(&self) -> RwLockWriteGuard<'_, Quarantine> {
        self.quarantine.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a CONNECT from `address` refused for its credentials (a detector).
    pub(crate) fn auth_failed(&self, address: std::net::IpAddr) {
        self.detectors.auth_failure(self, address);
    }

    /// Counts a malformed packet or protocol violation from `address` (a detector).
    pub(crate) fn malformed(&self, address: std::net::IpAddr) {
        self.detectors.malformed(self, address);
    }

    /// The publish budget of connections, if it is on.
    pub(crate) fn publish_budget(&self) -> Option<crate::detect::PublishBudget> {
        Some(self.detectors.publish_rate).filter(|b| b.enabled && b.rate > 0.0)
    }

    /// `client_id` stayed over its publish budget too long (a detector).
    pub(crate) fn over_budget(&self, client_id: &Arc<str>) {
        self.detectors.over_budget(self, client_id);
    }

    /// Counts a connection of `client_id` taken over by another (a detector).
    pub(crate) fn taken_over(&self, client_id: &Arc<str>) {
        self.detectors.taken_over(self, client_id);
    }

    /// Keeps what a quarantined client tried and was refused (the last [`REFUSALS_PER_CLIENT`]):
    /// `kind` of packet, its topic or filter and payload `size`.
    pub(crate) fn refused(&self, client_id: &Arc<str>, kind: &str, topic: &str, size: usize, entry: u64) {
        let mut all = self.refusals.lock().unwrap_or_else(PoisonError::into_inner);
        if all.len() >= REFUSAL_CLIENTS && !all.contains_key(client_id) {
            return;
        }
        let list = all.entry(client_id.clone()).or_default();
        if list.len() >= REFUSALS_PER_CLIENT {
            list.pop_front();
        }
        list.push_back(Refusal {
            at_ms: m2m_store::unix_ms(std::time::SystemTime::now()),
            kind: kind.to_owned(),
            topic: topic.to_owned(),
            size,
            reason: format!("quarantine entry {entry}"),
        });
    }

    /// What the quarantined client `client_id` tried and was refused, oldest first.
    pub fn refusals(&self, client_id: &str) -> Vec<Refusal> {
        let all = self.refusals.lock().unwrap_or_else(PoisonError::into_inner);
        all.get(client_id).map(|l| l.iter().cloned().collect()).unwrap_or_default()
    }

    /// The audit log.
    pub fn audit_log(&self) -> &AuditLog {
        &self.audit
    }

    /// Appends an event to the audit log and publishes it on `$SYS/m2m/audit/<action>` (JSON), and
    /// quarantine events also on `$SYS/m2m/quarantine/<action>`. A failure to store it is logged.
    pub fn audit(&self, actor: &str, action: &str, subject: &str, detail: &str) {
        let event = AuditEvent {
            at_ms: m2m_store::unix_ms(std::time::SystemTime::now()),
            actor: actor.to_owned(),
            action: action.to_owned(),
            subject: subject.to_owned(),
            detail: detail.to_owned(),
        };
        if let Err(e) = self.audit.append(&event) {
            tracing::error!(error = %e, ?event, "audit event not stored");
        }
        let payload = bytes::Bytes::from(serde_json::to_vec(&event).unwrap_or_default());
        let mut topics = vec![format!("$SYS/m2m/audit/{action}")];
        if let Some(what) = action.strip_prefix("quarantine.") {
            topics.push(format!("$SYS/m2m/quarantine/{what}"));
        }
        for topic in topics {
            let Ok(topic) = TopicName::try_from(topic.as_str()) else { continue };
            let message =
                m2m_session::Message::new(topic, payload.clone(), m2m_codec::QoS::AtMostOnce, false);
            if self.announce.try_send(Arc::new(message)).is_err() {
                tracing::warn!(action, subject, "audit event not published on $SYS: too many at once");
            }
        }
    }

    /// Records a connected client, for quarantine entries added while it is connected.
    pub(crate) fn connected(&self, conn_id: u64, client: LiveClient) {
        let client_id = client.client_id.clone();
        self.live.lock().unwrap_or_else(PoisonError::into_inner).insert(conn_id, client);
        // After it is in the table: a quarantine this connection triggers ends it too.
        self.detectors.connected(self, &client_id);
    }

    /// Forgets a connection that ended.
    pub(crate) fn disconnected(&self, conn_id: u64) {
        self.live.lock().unwrap_or_else(PoisonError::into_inner).remove(&conn_id);
    }

    /// Ends, with DISCONNECT 0x98 (Administrative action), the live connections `select` picks.
    fn kick(&self, select: impl Fn(&LiveClient) -> bool) -> usize {
        let clients: Vec<Arc<str>> = {
            let live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
            live.values().filter(|c| select(c)).map(|c| c.client_id.clone()).collect()
        };
        let n = clients.len();
        self.end(clients);
        n
    }

    /// Ends the connections of these clients with DISCONNECT 0x98 (Administrative action).
    fn end(&self, clients: Vec<Arc<str>>) {
        if clients.is_empty() {
            return;
        }
        let router = self.router.clone();
        self.runtime.spawn(async move {
            for client_id in clients {
                let reason = ReasonCode::ADMINISTRATIVE_ACTION;
                if router.send(Command::Kick { client_id, reason }).await.is_err() {
                    return;
                }
            }
        });
    }

    /// Disconnects (0x98 Administrative action) the clients logged in as device `id`: after it was
    /// removed, disabled or given a new password, they must log in again. Returns how many.
    pub fn disconnect_device(&self, id: &str) -> usize {
        self.kick(|c| c.username.as_deref() == Some(id))
    }

    /// Adds a quarantine entry. It applies at once to matching clients connected now: a banned one
    /// is disconnected (0x98 Administrative action) and cannot come back; an isolated one stays
    /// connected, restricted to its repair namespace, its other subscriptions set aside and its
    /// queued messages held.
    ///
    /// # Errors
    /// An invalid target; a store error.
    pub fn add_quarantine(
        &self,
        target: m2m_access::Target,
        mode: m2m_access::Mode,
        reason: &str,
        actor: &str,
        expires_ms: Option<u64>,
    ) -> Result<QuarantineEntry, m2m_access::QuarantineError> {
        let now = m2m_store::unix_ms(std::time::SystemTime::now());
        let entry = self.quarantine_mut().add(target, mode, reason, actor, now, expires_ms)?;
        let applied = self.enforce();
        tracing::warn!(entry = entry.id, target = %entry.target, mode = ?entry.mode, reason = %entry.reason,
            actor = %entry.actor, disconnected = applied.kicked, isolated = applied.isolated,
            "quarantine entry added");
        let detail = format!("{} {}: {} ({applied})", entry.mode.as_str(), entry.target, entry.reason);
        self.audit(actor, "quarantine.add", &entry.id.to_string(), &detail);
        self.announce_entry(&entry, true, actor);
        Ok(entry)
    }

    /// Tells the taps of a quarantine entry added (`added`) or released.
    fn announce_entry(&self, entry: &QuarantineEntry, added: bool, actor: &str) {
        if self.taps.is_empty() {
            return;
        }
        let client_id = match &entry.target {
            m2m_access::Target::ClientId(c) => Some(Arc::from(c.as_str())),
            _ => None,
        };
        let event = if added {
            m2m_router::NodeEvent::Quarantined {
                entry: entry.id,
                target: entry.target.to_string(),
                client_id,
                mode: entry.mode.as_str(),
                reason: entry.reason.clone(),
                actor: actor.to_owned(),
            }
        } else {
            m2m_router::NodeEvent::Released {
                entry: entry.id,
                target: entry.target.to_string(),
                client_id,
                actor: actor.to_owned(),
            }
        };
        m2m_router::emit_event(&self.taps, event.kind(), || event);
    }

    /// Releases the quarantine entry `id`: the clients it isolated get normal service back at once
    /// (unless another entry still applies to them).
    ///
    /// # Errors
    /// No such entry; a store error.
    pub fn release_quarantine(
        &self,
        id: u64,
        actor: &str,
    ) -> Result<QuarantineEntry, m2m_access::QuarantineError> {
        let entry = self.quarantine_mut().release(id)?;
        let applied = self.enforce();
        tracing::warn!(entry = entry.id, target = %entry.target, %actor, released = applied.released,
            "quarantine entry released");
        let detail = format!("{} ({applied})", entry.target);
        self.audit(actor, "quarantine.release", &entry.id.to_string(), &detail);
        self.announce_entry(&entry, false, actor);
        Ok(entry)
    }

    /// Lifts the entries that expired by now (audited as `quarantine.expire` by `node`), and gives
    /// the clients they isolated normal service back. Returns how many were lifted.
    pub fn lift_expired(&self) -> usize {
        let now = m2m_store::unix_ms(std::time::SystemTime::now());
        let expired: Vec<u64> = self
            .quarantine()
            .entries()
            .filter(|e| e.expires_ms.is_some_and(|at| at <= now))
            .map(|e| e.id)
            .collect();
        let mut lifted = 0;
        for id in expired {
            match self.quarantine_mut().release(id) {
                Ok(entry) => {
                    lifted += 1;
                    tracing::info!(entry = id, target = %entry.target, "quarantine entry expired");
                    self.audit("node", "quarantine.expire", &id.to_string(), &entry.target.to_string());
                    self.announce_entry(&entry, false, "node");
                }
                Err(e) => tracing::warn!(entry = id, error = %e, "expired quarantine entry not lifted"),
            }
        }
        if lifted > 0 {
            let applied = self.enforce();
            debug!(lifted, %applied, "expired quarantine entries lifted");
        }
        lifted
    }

    /// Lifts expired quarantine entries every second, for as long as the node runs.
    pub(crate) fn spawn_expiry(self: &Arc<Self>) {
        let access = Arc::downgrade(self);
        self.runtime.spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let Some(access) = access.upgrade() else { return };
                access.lift_expired();
            }
        });
    }

    /// Brings every live connection in line with the quarantine list as it is now: banned ones are
    /// disconnected, isolated ones restricted, released ones given normal service back.
    fn enforce(&self) -> Applied {
        let now = m2m_store::unix_ms(std::time::SystemTime::now());
        let mut applied = Applied::default();
        let mut banned = Vec::new();
        {
            let quarantine = self.quarantine();
            let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
            for c in live.values_mut() {
                let entry = quarantine.find(&c.client_id, c.username.as_deref(), c.address, now);
                let isolated_by = match entry {
                    Some(e) if e.mode == m2m_access::Mode::Ban => {
                        banned.push(c.client_id.clone());
                        continue;
                    }
                    Some(e) => Some(e.id),
                    None => None,
                };
                if isolated_by == c.isolated_by {
                    continue;
                }
                match isolated_by {
                    Some(_) if c.isolated_by.is_none() => applied.isolated += 1,
                    None => applied.released += 1,
                    Some(_) => {}
                }
                c.isolated_by = isolated_by;
                c.isolation.send_replace(isolated_by);
            }
        }
        applied.kicked = banned.len();
        self.end(banned);
        applied
    }

    /// The quarantine entry that applies to a client connecting now, if any.
    pub(crate) fn quarantined(
        &self,
        client_id: &str,
        username: Option<&str>,
        address: std::net::IpAddr,
    ) -> Option<QuarantineEntry> {
        let now = m2m_store::unix_ms(std::time::SystemTime::now());
        self.quarantine().find(client_id, username, address, now).cloned()
    }

    /// The permit of an isolated client: it may subscribe only under its repair namespace
    /// (`$quarantine/<client-id>/`) and publish nothing.
    pub(crate) fn isolated_permit(self: &Arc<Self>, client_id: Arc<str>, entry: u64) -> Arc<dyn Permit> {
        let prefix = m2m_access::repair_prefix(&client_id);
        Arc::new(IsolatedPermit { access: self.clone(), client_id, prefix, entry })
    }

    /// Whether the registry holds anything (and so passwords are checked and rules enforced).
    pub fn is_enabled(&self) -> bool {
        self.registry().is_enabled()
    }

    /// The registry, to read.
    pub fn registry(&self) -> RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The registry, to change; connections see the new rules at their next check.
    pub fn registry_mut(&self) -> RwLockWriteGuard<'_, Registry> {
        self.registry.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn acl(&self) -> Arc<Acl> {
        self.registry().acl()
    }

    /// Checks `username` and `password` against the registry. The argon2 verification runs on a
    /// blocking thread unless these credentials were verified against the same hash before.
    pub(crate) async fn check_password(
        &self,
        username: &str,
        password: Option<&[u8]>,
    ) -> Result<Identity, Refused> {
        let (phc, groups) = {
            let registry = self.registry();
            let Some(device) = registry.device(username) else { return Err(Refused::BadCredentials) };
            if !device.enabled {
                return Err(Refused::Disabled);
            }
            let groups: Arc<[Arc<str>]> = device.groups.iter().map(|g| Arc::from(g.as_str())).collect();
            (device.password_hash.clone(), groups)
        };
        let (Some(phc), Some(password)) = (phc, password) else { return Err(Refused::BadCredentials) };
        let ok = self.cache.contains(username, password, &phc) || {
            // The semaphore is never closed; a CONNECT that cannot have a slot in time is refused.
            let Ok(Ok(_slot)) = tokio::time::timeout(self.verify_wait, self.verifying.acquire()).await else {
                return Err(Refused::Busy);
            };
            let (owned, hash) = (password.to_vec(), phc.clone());
            let verified =
                tokio::task::spawn_blocking(move || m2m_access::verify_password(&owned, &hash)).await;
            let ok = verified.unwrap_or(false);
            if ok {
                self.cache.insert(username, password, &phc);
            }
            ok
        };
        if !ok {
            return Err(Refused::BadCredentials);
        }
        let name: Arc<str> = Arc::from(username);
        Ok(Identity { username: Some(name.clone()), device: Some(name), groups, rules: None })
    }

    /// Whether the registry holds a device of this id.
    pub(crate) fn has_device(&self, id: &str) -> bool {
        self.registry().device(id).is_some()
    }

    /// The identity a JSON Web Token (the CONNECT password) gives: its username, the groups of the
    /// registered device of that name if there is one, and the token's own rules.
    pub(crate) fn check_jwt(
        &self,
        jwt: &m2m_access::JwtConfig,
        password: Option<&[u8]>,
        client_id: &str,
    ) -> Result<Identity, Refused> {
        let token = password.and_then(|p| std::str::from_utf8(p).ok()).ok_or(Refused::BadCredentials)?;
        let now = m2m_store::unix_ms(std::time::SystemTime::now()) / 1000;
        let claims = m2m_access::verify_jwt(token, jwt, client_id, now).map_err(|e| {
            debug!(client_id, error = %e, "token refused");
            Refused::BadCredentials
        })?;
        let mut identity = match self.device_identity(&claims.username) {
            Ok(registered) if self.has_device(&claims.username) => registered,
            Ok(_) | Err(Refused::BadCredentials) => {
                Identity { username: Some(Arc::from(claims.username.as_str())), ..Identity::default() }
            }
            Err(refused) => return Err(refused),
        };
        if !claims.rules.is_empty() {
            let mut acl = Acl::new(m2m_access::Permission::Deny);
            acl.set_global_rules(claims.rules);
            identity.rules = Some(Arc::new(acl));
        }
        Ok(identity)
    }

    /// The identity of a client proven to be `name` (by a certificate the listener verified, a SCRAM
    /// exchange or a token): the registered device of that id; with an empty registry, just that name.
    pub(crate) fn device_identity(&self, name: &str) -> Result<Identity, Refused> {
        let registry = self.registry();
        let name_arc: Arc<str> = Arc::from(name);
        if !registry.is_enabled() {
            return Ok(Identity { username: Some(name_arc), ..Identity::default() });
        }
        let device = registry.device(name).ok_or(Refused::BadCredentials)?;
        if !device.enabled {
            return Err(Refused::Disabled);
        }
        let groups: Arc<[Arc<str>]> = device.groups.iter().map(|g| Arc::from(g.as_str())).collect();
        Ok(Identity { username: Some(name_arc.clone()), device: Some(name_arc), groups, rules: None })
    }

    /// The permit of a connection of `client_id` authenticated as `identity`.
    pub(crate) fn permit(self: &Arc<Self>, client_id: Arc<str>, identity: Identity) -> Arc<dyn Permit> {
        Arc::new(AclPermit { access: self.clone(), client_id, identity })
    }
}

/// Applies the registry's current rules to one connection.
#[derive(Debug)]
struct AclPermit {
    access: Arc<AccessControl>,
    client_id: Arc<str>,
    identity: Identity,
}

impl AclPermit {
    fn who(&self) -> Who<'_> {
        let mut who = Who::new(&self.client_id).with_groups(&self.identity.groups);
        if let Some(u) = &self.identity.username {
            who = who.with_username(u);
        }
        if let Some(d) = &self.identity.device {
            who = who.with_device(d);
        }
        who
    }

    fn refused(&self, what: &str, target: &str, decision: &dyn std::fmt::Display) {
        Metrics::add(&self.access.metrics.access_denied, 1);
        debug!(client_id = %self.client_id, what, target, %decision, "access denied");
        self.access.detectors.access_denied(&self.access, &self.client_id);
    }
}

impl AclPermit {
    /// Asks the token's own rules, then (for what they do not decide) the registry's; a refusal is
    /// counted and logged as `what` of `target`.
    fn decide(
        &self,
        what: &str,
        target: &str,
        check: impl for<'a, 'w> Fn(&'a Acl, &Who<'w>) -> Decision<'a>,
    ) -> bool {
        let who = self.who();
        let own = self.identity.rules.as_deref().map(|own| check(own, &who)).filter(|d| d.rule().is_some());
        let registry;
        let decision = match own {
            Some(decision) => decision,
            None => {
                registry = self.access.acl();
                check(&registry, &who)
            }
        };
        if !decision.is_allowed() {
            self.refused(what, target, &decision);
        }
        decision.is_allowed()
    }
}

impl Permit for AclPermit {
    fn may_publish(&self, topic: &TopicName, _size: usize) -> bool {
        self.decide("publish", topic.as_str(), |acl, who| acl.check_publish(who, topic))
    }

    fn may_subscribe(&self, subscription: &Subscription) -> bool {
        self.decide("subscribe", subscription.filter(), |acl, who| acl.check_subscribe(who, subscription))
    }
}

/// What an isolated client may do: subscribe under its repair namespace, nothing else.
#[derive(Debug)]
pub(crate) struct IsolatedPermit {
    access: Arc<AccessControl>,
    client_id: Arc<str>,
    prefix: String,
    entry: u64,
}

impl IsolatedPermit {
    /// Whether `subscription` is inside the repair namespace.
    pub(crate) fn in_namespace(prefix: &str, subscription: &Subscription) -> bool {
        matches!(subscription, Subscription::Plain(_)) && subscription.filter().starts_with(prefix)
    }

    fn refused(&self, what: &str, target: &str, size: usize) {
        Metrics::add(&self.access.metrics.access_denied, 1);
        debug!(client_id = %self.client_id, what, target, entry = self.entry, "refused: the client is isolated");
        self.access.refused(&self.client_id, what, target, size, self.entry);
    }
}

impl Permit for IsolatedPermit {
    fn may_publish(&self, topic: &TopicName, size: usize) -> bool {
        self.refused("PUBLISH", topic.as_str(), size);
        false
    }

    fn may_subscribe(&self, subscription: &Subscription) -> bool {
        let allowed = Self::in_namespace(&self.prefix, subscription);
        if !allowed {
            self.refused("SUBSCRIBE", subscription.filter(), 0);
        }
        allowed
    }
}

/// MQTT 5 enhanced authentication against the registry: `SCRAM-SHA-256` with a device's credential.
#[derive(Debug)]
pub(crate) struct RegistryAuth {
    pub(crate) access: Arc<AccessControl>,
}

impl crate::auth::Authenticator for RegistryAuth {
    fn begin(&self, method: &str, _client_id: &str) -> Option<Box<dyn crate::auth::AuthExchange>> {
        (method == m2m_access::SCRAM_SHA_256)
            .then(|| Box::new(ScramExchange { access: self.access.clone(), state: Scram::Start }) as Box<_>)
    }
}

#[derive(Debug)]
enum Scram {
    Start,
    Challenged(m2m_access::ScramServer),
    Done(String),
    Failed,
}

/// One SCRAM-SHA-256 exchange.
#[derive(Debug)]
struct ScramExchange {
    access: Arc<AccessControl>,
    state: Scram,
}

impl crate::auth::AuthExchange for ScramExchange {
    fn step(&mut self, data: Option<&[u8]>) -> crate::auth::AuthStep {
        use crate::auth::AuthStep;
        let data = data.unwrap_or_default();
        match std::mem::replace(&mut self.state, Scram::Failed) {
            Scram::Start => {
                let lookup = |user: &str| {
                    let registry = self.access.registry();
                    registry.device(user).filter(|d| d.enabled).and_then(|d| d.scram.clone())
                };
                match m2m_access::ScramServer::start(data, &m2m_access::scram_nonce(), lookup) {
                    Ok((server, first)) => {
                        self.state = Scram::Challenged(server);
                        AuthStep::Continue(bytes::Bytes::from(first))
                    }
                    Err(e) => {
                        debug!(error = %e, "SCRAM exchange refused");
                        AuthStep::Fail
                    }
                }
            }
            Scram::Challenged(server) => match server.finish(data) {
                Ok((user, last)) => {
                    self.state = Scram::Done(user);
                    AuthStep::Success(Some(bytes::Bytes::from(last)))
                }
                Err(e) => {
                    debug!(error = %e, "SCRAM exchange refused");
                    AuthStep::Fail
                }
            },
            Scram::Done(_) | Scram::Failed => AuthStep::Fail,
        }
    }

    fn authenticated_as(&self) -> Option<&str> {
        match &self.state {
            Scram::Done(user) => Some(user),
            _ => None,
        }
    }
}
