//! Detectors: misbehaviour counted per client id or per address in fixed windows; a count that reaches
//! its threshold quarantines the culprit (through [`AccessControl::add_quarantine`], so it is audited
//! and acts on live connections at once), for a limited time.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use m2m_access::{Mode, Target};

use crate::access::AccessControl;

/// Keys one detector tracks at most; beyond that, stale windows are dropped first, then all.
const MAX_KEYS: usize = 100_000;

/// One detector's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetectorConfig {
    /// Off: nothing is counted.
    pub enabled: bool,
    /// Events within one window that trigger the quarantine.
    pub threshold: u32,
    /// The window.
    pub window: Duration,
    /// Ban or isolate.
    pub mode: Mode,
    /// How long the quarantine lasts.
    pub quarantine_for: Duration,
}

impl DetectorConfig {
    const fn new(threshold: u32, window_secs: u64, mode: Mode, quarantine_secs: u64) -> Self {
        Self {
            enabled: true,
            threshold,
            window: Duration::from_secs(window_secs),
            mode,
            quarantine_for: Duration::from_secs(quarantine_secs),
        }
    }
}

/// The publish budget of a connection: a token bucket of `rate` PUBLISHes a second holding at most
/// `burst`. A connection over it is not read from until it is within it again (back-pressure); one
/// that stays over it for `quarantine_after` is quarantined.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PublishBudget {
    /// Off: no limit.
    pub enabled: bool,
    /// PUBLISHes a second.
    pub rate: f64,
    /// The bucket's size: PUBLISHes a connection may send at once.
    pub burst: f64,
    /// How long a connection may stay over its budget before it is quarantined.
    pub quarantine_after: Duration,
    /// Ban or isolate.
    pub mode: Mode,
    /// How long the quarantine lasts.
    pub quarantine_for: Duration,
}

impl Default for PublishBudget {
    fn default() -> Self {
        Self {
            enabled: true,
            rate: 20_000.0,
            burst: 40_000.0,
            quarantine_after: Duration::from_secs(60),
            mode: Mode::Isolate,
            quarantine_for: Duration::from_secs(900),
        }
    }
}

/// One connection's bucket.
#[derive(Debug)]
pub(crate) struct Bucket {
    tokens: f64,
    at: Instant,
    over_since: Option<Instant>,
}

impl Bucket {
    pub(crate) fn new(budget: &PublishBudget, now: Instant) -> Self {
        Self { tokens: budget.burst, at: now, over_since: None }
    }

    /// Takes one PUBLISH out of the bucket. Over budget: how long to stop reading, and since when
    /// the connection has been over it.
    pub(crate) fn take(&mut self, budget: &PublishBudget, now: Instant) -> Option<(Duration, Instant)> {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * budget.rate;
        self.tokens = (self.tokens + refill).min(budget.burst) - 1.0;
        self.at = now;
        if self.tokens >= 0.0 {
            self.over_since = None;
            return None;
        }
        let since = *self.over_since.get_or_insert(now);
        Some((Duration::from_secs_f64(-self.tokens / budget.rate.max(f64::MIN_POSITIVE)), since))
    }
}

/// The detectors' settings. The defaults are conservative: a fleet reconnecting after a node restart,
/// or a client that mistypes its password a few times, does not trigger any.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectorsConfig {
    /// Authentication failures from one address (bad password, unknown certificate): ban the address.
    pub auth_failures: DetectorConfig,
    /// Successful CONNECTs of one client id (a device rebooting in a loop): ban the client id.
    pub flapping: DetectorConfig,
    /// Take-overs of one client id (two machines fighting over it): ban the client id.
    pub takeovers: DetectorConfig,
    /// Malformed packets and protocol violations from one address: ban the address.
    pub malformed: DetectorConfig,
    /// PUBLISH and SUBSCRIBE refused by the access rules for one client id: isolate it.
    pub access_denied: DetectorConfig,
    /// Each connection's publish budget.
    pub publish_rate: PublishBudget,
}

impl Default for DetectorsConfig {
    fn default() -> Self {
        Self {
            auth_failures: DetectorConfig::new(20, 60, Mode::Ban, 900),
            flapping: DetectorConfig::new(30, 60, Mode::Ban, 300),
            takeovers: DetectorConfig::new(10, 60, Mode::Ban, 900),
            malformed: DetectorConfig::new(10, 60, Mode::Ban, 900),
            access_denied: DetectorConfig::new(100, 60, Mode::Isolate, 900),
            publish_rate: PublishBudget::default(),
        }
    }
}

/// Counts per key in fixed windows.
#[derive(Debug)]
struct Counter<K> {
    config: DetectorConfig,
    counts: Mutex<HashMap<K, (Instant, u32)>>,
}

impl<K: Hash + Eq + Clone> Counter<K> {
    fn new(config: DetectorConfig) -> Self {
        Self { config, counts: Mutex::new(HashMap::new()) }
    }

    /// Counts one event for `key`; `true` exactly when the count reaches the threshold.
    fn hit(&self, key: &K, now: Instant) -> bool {
        if !self.config.enabled || self.config.threshold == 0 {
            return false;
        }
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.len() >= MAX_KEYS && !counts.contains_key(key) {
            let window = self.config.window;
            counts.retain(|_, (start, _)| now.duration_since(*start) < window);
            if counts.len() >= MAX_KEYS {
                counts.clear();
            }
        }
        let (start, n) = counts.entry(key.clone()).or_insert((now, 0));
        if now.duration_since(*start) >= self.config.window {
            *start = now;
            *n = 0;
        }
        *n += 1;
        *n == self.config.threshold
    }
}

/// The node's detectors; [`AccessControl`] owns them and passes itself in to quarantine.
#[derive(Debug)]
pub(crate) struct Detectors {
    auth_failures: Counter<IpAddr>,
    flapping: Counter<Arc<str>>,
    takeovers: Counter<Arc<str>>,
    malformed: Counter<IpAddr>,
    access_denied: Counter<Arc<str>>,
    pub(crate) publish_rate: PublishBudget,
}

impl Detectors {
    pub(crate) fn new(config: DetectorsConfig) -> Self {
        Self {
            auth_failures: Counter::new(config.auth_failures),
            flapping: Counter::new(config.flapping),
            takeovers: Counter::new(config.takeovers),
            malformed: Counter::new(config.malformed),
            access_denied: Counter::new(config.access_denied),
            publish_rate: config.publish_rate,
        }
    }

    fn fire(access: &AccessControl, name: &str, config: &DetectorConfig, target: Target, what: String) {
        let reason = format!("{what}: {} in {} s", config.threshold, config.window.as_secs());
        Self::quarantine(access, name, target, config.mode, config.quarantine_for, &reason);
    }

    /// Quarantines `target` for `duration`, as detector `name`.
    fn quarantine(
        access: &AccessControl,
        name: &str,
        target: Target,
        mode: Mode,
        duration: Duration,
        reason: &str,
    ) {
        let expires = m2m_store::unix_ms(std::time::SystemTime::now()) + duration.as_millis() as u64;
        let actor = format!("detector:{name}");
        if let Err(e) = access.add_quarantine(target, mode, reason, &actor, Some(expires)) {
            tracing::error!(detector = name, error = %e, "detector could not quarantine");
        }
    }

    /// A CONNECT from `address` refused for its credentials.
    pub(crate) fn auth_failure(&self, access: &AccessControl, address: IpAddr) {
        if self.auth_failures.hit(&address, Instant::now()) {
            let c = self.auth_failures.config;
            Self::fire(
                access,
                "auth_failures",
                &c,
                Target::Address(address.to_string()),
                "authentication failures".into(),
            );
        }
    }

    /// A malformed packet or protocol violation from `address`.
    pub(crate) fn malformed(&self, access: &AccessControl, address: IpAddr) {
        if self.malformed.hit(&address, Instant::now()) {
            let c = self.malformed.config;
            Self::fire(
                access,
                "malformed",
                &c,
                Target::Address(address.to_string()),
                "malformed packets".into(),
            );
        }
    }

    /// A successful CONNECT of `client_id`.
    pub(crate) fn connected(&self, access: &AccessControl, client_id: &Arc<str>) {
        if self.flapping.hit(client_id, Instant::now()) {
            let c = self.flapping.config;
            Self::fire(access, "flapping", &c, Target::ClientId(client_id.to_string()), "connections".into());
        }
    }

    /// A connection of `client_id` was taken over by another.
    pub(crate) fn taken_over(&self, access: &AccessControl, client_id: &Arc<str>) {
        if self.takeovers.hit(client_id, Instant::now()) {
            let c = self.takeovers.config;
            let what = "take-overs of the client id (two machines using it?)".into();
            Self::fire(access, "takeovers", &c, Target::ClientId(client_id.to_string()), what);
        }
    }

    /// `client_id` stayed over its publish budget for too long.
    pub(crate) fn over_budget(&self, access: &AccessControl, client_id: &Arc<str>) {
        let b = self.publish_rate;
        let reason = format!("over {} PUBLISH a second for {} s", b.rate, b.quarantine_after.as_secs());
        let target = Target::ClientId(client_id.to_string());
        Self::quarantine(access, "publish_rate", target, b.mode, b.quarantine_for, &reason);
    }

    /// A PUBLISH or SUBSCRIBE of `client_id` refused by the access rules.
    pub(crate) fn access_denied(&self, access: &AccessControl, client_id: &Arc<str>) {
        if self.access_denied.hit(client_id, Instant::now()) {
            let c = self.access_denied.config;
            Self::fire(
                access,
                "access_denied",
                &c,
                Target::ClientId(client_id.to_string()),
                "refused packets".into(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_fires_once_at_its_threshold_per_window() {
        let c = Counter::new(DetectorConfig::new(3, 10, Mode::Ban, 60));
        let t0 = Instant::now();
        let hits: Vec<bool> = (0..5).map(|_| c.hit(&"a", t0)).collect();
        assert_eq!(hits, [false, false, true, false, false]);
        assert!(!c.hit(&"b", t0), "keys are apart");
        let later = t0 + Duration::from_secs(10);
        let hits: Vec<bool> = (0..3).map(|_| c.hit(&"a", later)).collect();
        assert_eq!(hits, [false, false, true], "a new window counts again");
        let off =
            Counter::new(DetectorConfig { enabled: false, ..DetectorConfig::new(1, 10, Mode::Ban, 60) });
        assert!(!off.hit(&"a", t0));
    }
}
