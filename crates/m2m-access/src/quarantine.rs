//! Quarantine: machines cut off until they are repaired. An entry matches a client by client id,
//! username, address (an IP or a CIDR block) or a regular expression on the client id, and either
//! bans it (refused at CONNECT) or isolates it (it may connect, but may only subscribe under its
//! repair namespace `$quarantine/<client-id>/#`; everything else it sends is refused). Entries carry a
//! reason, who made them, when, and an optional expiry after which they no longer apply.

use std::collections::BTreeMap;
use std::net::IpAddr;

use m2m_store::{Store, StoreError, Table};
use serde::{Deserialize, Serialize};

/// What an entry matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum Target {
    /// A client id, exactly.
    ClientId(String),
    /// A username, exactly.
    Username(String),
    /// An address or a block of them: `192.0.2.7`, `10.1.0.0/16`, `2001:db8::/32`.
    Address(String),
    /// A regular expression that must match the whole client id.
    Pattern(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::ClientId(c) => write!(f, "client id {c:?}"),
            Target::Username(u) => write!(f, "username {u:?}"),
            Target::Address(a) => write!(f, "address {a}"),
            Target::Pattern(p) => write!(f, "client ids matching {p:?}"),
        }
    }
}

/// What a matching client may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Refused at CONNECT (MQTT 5: 0x8A Banned; 3.1.1: return code 5).
    Ban,
    /// May connect, and may only subscribe under `$quarantine/<client-id>/#`.
    Isolate,
}

impl Mode {
    /// `ban` or `isolate`, as in configuration files, the CLI and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Ban => "ban",
            Mode::Isolate => "isolate",
        }
    }

    /// The mode named `ban` or `isolate`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "ban" => Some(Mode::Ban),
            "isolate" => Some(Mode::Isolate),
            _ => None,
        }
    }
}

/// One quarantine entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Its id, given when it is added.
    pub id: u64,
    /// What it matches.
    pub target: Target,
    /// Ban or isolate.
    pub mode: Mode,
    /// Why.
    pub reason: String,
    /// Who added it (an operator, or a detector).
    pub actor: String,
    /// When (unix ms).
    pub created_ms: u64,
    /// When it lifts itself (unix ms); `None`: until released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
}

/// What went wrong with a quarantine operation.
#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    /// The target is not valid (an empty id, a bad address or expression).
    #[error("invalid quarantine target: {0}")]
    InvalidTarget(String),
    /// No entry with that id.
    #[error("no quarantine entry {0}")]
    NotFound(u64),
    /// A stored entry does not decode.
    #[error("stored quarantine entry {key} does not decode: {detail}")]
    Decode {
        /// Its key.
        key: String,
        /// Why.
        detail: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A compiled target.
#[derive(Debug, Clone)]
enum Matcher {
    ClientId(String),
    Username(String),
    Block { network: IpAddr, prefix: u8 },
    Pattern(regex::Regex),
}

impl Matcher {
    fn new(target: &Target) -> Result<Self, QuarantineError> {
        let invalid = |why: String| QuarantineError::InvalidTarget(why);
        Ok(match target {
            Target::ClientId(id) if id.is_empty() => return Err(invalid("an empty client id".into())),
            Target::Username(u) if u.is_empty() => return Err(invalid("an empty username".into())),
            Target::ClientId(id) => Matcher::ClientId(id.clone()),
            Target::Username(u) => Matcher::Username(u.clone()),
            Target::Address(a) => {
                let (ip, prefix) = match a.split_once('/') {
                    Some((ip, p)) => (ip, Some(p)),
                    None => (a.as_str(), None),
                };
                let network: IpAddr =
                    ip.parse().map_err(|_| invalid(format!("{a:?} is not an IP address or CIDR block")))?;
                let max = if network.is_ipv4() { 32 } else { 128 };
                let prefix = match prefix {
                    None => max,
                    Some(p) => p
                        .parse::<u8>()
                        .ok()
                        .filter(|p| *p <= max)
                        .ok_or_else(|| invalid(format!("{a:?}: the prefix length must be 0 to {max}")))?,
                };
                Matcher::Block { network, prefix }
            }
            Target::Pattern(p) => Matcher::Pattern(
                regex::Regex::new(&format!("^(?:{p})$"))
                    .map_err(|e| invalid(format!("{p:?} is not a regular expression: {e}")))?,
            ),
        })
    }

    fn matches(&self, client_id: &str, username: Option<&str>, address: IpAddr) -> bool {
        match self {
            Matcher::ClientId(id) => id == client_id,
            Matcher::Username(u) => username == Some(u.as_str()),
            Matcher::Block { network, prefix } => in_block(address, *network, *prefix),
            Matcher::Pattern(re) => re.is_match(client_id),
        }
    }
}

/// Whether `address` is in `network/prefix` (IPv4-mapped IPv6 addresses count as IPv4).
fn in_block(address: IpAddr, network: IpAddr, prefix: u8) -> bool {
    let address = match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    };
    match (address, network) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// The quarantine list: in memory, written through to the store (if there is one).
#[derive(Debug, Default)]
pub struct Quarantine {
    store: Option<Store>,
    entries: BTreeMap<u64, (Entry, Matcher)>,
}

impl Quarantine {
    /// Reads the entries from `store` (none without one).
    ///
    /// # Errors
    /// A stored entry that does not decode or holds an invalid target; a store error.
    pub fn open(store: Option<Store>) -> Result<Self, QuarantineError> {
        let mut entries = BTreeMap::new();
        if let Some(store) = &store {
            for (key, value) in store.records(Table::Quarantine)? {
                let decode_error = |detail: String| QuarantineError::Decode {
                    key: String::from_utf8_lossy(&key).into_owned(),
                    detail,
                };
                let entry: Entry = serde_json::from_slice(&value).map_err(|e| decode_error(e.to_string()))?;
                let matcher = Matcher::new(&entry.target).map_err(|e| decode_error(e.to_string()))?;
                entries.insert(entry.id, (entry, matcher));
            }
        }
        Ok(Self { store, entries })
    }

    /// Adds an entry (its `id` is chosen here) and returns it.
    ///
    /// # Errors
    /// An invalid target; a store error.
    pub fn add(
        &mut self,
        target: Target,
        mode: Mode,
        reason: &str,
        actor: &str,
        now_ms: u64,
        expires_ms: Option<u64>,
    ) -> Result<Entry, QuarantineError> {
        let matcher = Matcher::new(&target)?;
        let id = self.entries.keys().next_back().map_or(1, |last| last + 1);
        let entry = Entry {
            id,
            target,
            mode,
            reason: reason.to_owned(),
            actor: actor.to_owned(),
            created_ms: now_ms,
            expires_ms,
        };
        if let Some(store) = &self.store {
            let mut batch = store.batch();
            batch.put_record(
                Table::Quarantine,
                &id.to_be_bytes(),
                serde_json::to_vec(&entry).unwrap_or_default(),
            );
            batch.commit()?;
        }
        self.entries.insert(id, (entry.clone(), matcher));
        Ok(entry)
    }

    /// Releases (removes) the entry `id`.
    ///
    /// # Errors
    /// No such entry; a store error.
    pub fn release(&mut self, id: u64) -> Result<Entry, QuarantineError> {
        if !self.entries.contains_key(&id) {
            return Err(QuarantineError::NotFound(id));
        }
        if let Some(store) = &self.store {
            let mut batch = store.batch();
            batch.remove_record(Table::Quarantine, &id.to_be_bytes());
            batch.commit()?;
        }
        self.entries.remove(&id).map(|(e, _)| e).ok_or(QuarantineError::NotFound(id))
    }

    /// Every entry, expired ones included, by id.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values().map(|(e, _)| e)
    }

    /// Whether the entry `id` matches this client (whatever its expiry).
    pub fn entry_matches(&self, id: u64, client_id: &str, username: Option<&str>, address: IpAddr) -> bool {
        self.entries.get(&id).is_some_and(|(_, m)| m.matches(client_id, username, address))
    }

    /// The entry that applies to this client at `now_ms`, if any: a ban before an isolation, then the
    /// oldest. Expired entries do not apply.
    pub fn find(
        &self,
        client_id: &str,
        username: Option<&str>,
        address: IpAddr,
        now_ms: u64,
    ) -> Option<&Entry> {
        let mut found: Option<&Entry> = None;
        for (entry, matcher) in self.entries.values() {
            if entry.expires_ms.is_some_and(|at| at <= now_ms)
                || !matcher.matches(client_id, username, address)
            {
                continue;
            }
            if entry.mode == Mode::Ban {
                return Some(entry);
            }
            found = found.or(Some(entry));
        }
        found
    }
}

/// The repair namespace of an isolated client: the only filters it may subscribe to start with this.
pub fn repair_prefix(client_id: &str) -> String {
    format!("$quarantine/{client_id}/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn targets_match_what_they_name() {
        let cases = [
            (Target::ClientId("c1".into()), ("c1", None, "10.0.0.1"), true),
            (Target::ClientId("c1".into()), ("c10", None, "10.0.0.1"), false),
            (Target::Username("u".into()), ("c", Some("u"), "10.0.0.1"), true),
            (Target::Username("u".into()), ("u", None, "10.0.0.1"), false),
            (Target::Address("10.1.0.0/16".into()), ("c", None, "10.1.200.3"), true),
            (Target::Address("10.1.0.0/16".into()), ("c", None, "10.2.0.1"), false),
            (Target::Address("10.1.0.0/16".into()), ("c", None, "::ffff:10.1.0.9"), true),
            (Target::Address("192.0.2.7".into()), ("c", None, "192.0.2.7"), true),
            (Target::Address("0.0.0.0/0".into()), ("c", None, "203.0.113.1"), true),
            (Target::Address("2001:db8::/32".into()), ("c", None, "2001:db8:1::1"), true),
            (Target::Address("2001:db8::/32".into()), ("c", None, "10.0.0.1"), false),
            (Target::Pattern("press-[0-9]+".into()), ("press-12", None, "10.0.0.1"), true),
            (Target::Pattern("press-[0-9]+".into()), ("press-12x", None, "10.0.0.1"), false),
        ];
        for (target, (c, u, a), want) in cases {
            let m = Matcher::new(&target).unwrap();
            assert_eq!(m.matches(c, u, ip(a)), want, "{target:?} vs {c} {u:?} {a}");
        }
    }

    #[test]
    fn bad_targets_are_named() {
        for (target, want) in [
            (Target::Address("10.0.0.0/33".into()), "prefix length must be 0 to 32"),
            (Target::Address("ten".into()), "not an IP address"),
            (Target::Pattern("(".into()), "not a regular expression"),
            (Target::ClientId(String::new()), "empty client id"),
        ] {
            let err = Matcher::new(&target).unwrap_err().to_string();
            assert!(err.contains(want), "{target:?}: {err}");
        }
    }

    #[test]
    fn a_ban_wins_expired_entries_lift_and_release_removes() {
        let mut q = Quarantine::default();
        let iso =
            q.add(Target::ClientId("c".into()), Mode::Isolate, "flapping", "detector", 0, None).unwrap();
        let any = ip("127.0.0.1");
        assert_eq!(q.find("c", None, any, 10).map(|e| e.mode), Some(Mode::Isolate));
        let ban =
            q.add(Target::Pattern("c|d".into()), Mode::Ban, "malicious", "operator", 5, Some(100)).unwrap();
        assert_eq!((iso.id, ban.id), (1, 2));
        assert_eq!(q.find("c", None, any, 50).map(|e| e.mode), Some(Mode::Ban));
        assert_eq!(q.find("c", None, any, 100).map(|e| e.mode), Some(Mode::Isolate), "the ban expired");
        assert!(q.find("d", None, any, 100).is_none());
        q.release(1).unwrap();
        assert!(q.find("c", None, any, 100).is_none());
        assert!(matches!(q.release(1), Err(QuarantineError::NotFound(1))));
    }
}
