//! Access control for the broker: allow/deny rules per device, per group and for every client, checked
//! on each PUBLISH and SUBSCRIBE. Sans-IO: rules in, decisions out.
//!
//! # Layout
//! - [`Rule`]: `allow publish devices/%c/#` — a [`Permission`], an [`Action`] and a [`RuleFilter`],
//!   parsed from and displayed as one line of text.
//! - [`RuleFilter`]: an MQTT topic filter in which `%c` stands for the client id and `%u` for the
//!   username, anywhere inside a level; split into levels once, at construction.
//! - [`Acl`]: the compiled rule set (device id → rules, group → rules, global rules, a default) and
//!   its checks, [`Acl::check_publish`] and [`Acl::check_subscribe`], for a client described by a
//!   [`Who`]. They return a [`Decision`]: allow or deny, and the rule ([`DecidedBy`], [`Scope`] and
//!   index) or the default that decided, for the caller to log and audit.
//!
//! # Evaluation
//! The device's own rules, then the rules of each of its groups in the order the client lists them,
//! then the global rules; the **first matching rule wins**, and if none matches the default applies
//! (deny unless configured otherwise). A check looks up one device and its groups in hash maps and
//! scans only their rules and the global ones, without allocating.
//!
//! A PUBLISH rule matches when its filter matches the topic, as a subscription would (MQTT 5.0
//! §4.7). For a SUBSCRIBE, an **allow** rule matches when its filter *covers* the subscription
//! (every topic the subscription can deliver is granted) and a **deny** rule when the two filters
//! *overlap* (some topic would be delivered that the rule denies). So a subscription is granted only
//! if no earlier deny could leak through it and some allow grants all of it. A shared subscription
//! `$share/{group}/{filter}` is checked on `{filter}`. Wildcards in the first level do not reach `$`
//! topics, in all three relations: `allow both #` grants neither publishing to `$SYS/x` nor
//! subscribing to `$SYS/#`, and `deny subscribe #` does not refuse `$SYS/#`; rules for `$` topics
//! name their first level.
//!
//! # Substitution
//! Placeholder values come from the client, so they are checked before they are used:
//! - A rule holding `%u` does not apply (allow or deny) to a client without a username.
//! - A value is **unsafe** if it is empty or holds `+`, `#` or `/` (substituted, it would change the
//!   shape of the filter: a client id `a/#` must never widen a grant), or if it starts with `$` where
//!   the placeholder starts the filter (`%c/#` with client id `$SYS` would reach `$SYS/#`).
//! - An **allow** rule with an unsafe value does not apply: it grants nothing to that client.
//! - A **deny** rule with an unsafe value fails closed: it applies to every topic under the levels
//!   before its first placeholder level, whatever follows, `$` topics included when nothing precedes
//!   the placeholder. `deny both devices/%c/config` for client id `a/b` refuses all of `devices/#`
//!   (publish, and subscriptions overlapping it); `deny publish %u/#` with an empty username refuses
//!   every publish. That pattern contains every topic the rule could have denied under any reading
//!   of the value, so an odd identity never escapes a deny, at the price of being refused more.
//!
//! # The registry and passwords
//! [`Registry`] holds the devices (argon2id password hashes, groups, attributes, their own rules) and
//! the groups (rules), kept in the store's tables, and compiles them into an [`Acl`] that denies what
//! it does not grant once the registry holds anything. [`VerifiedCache`] spares a reconnecting device
//! the cost of an argon2 verification.
//!
//! # What this crate does not do
//! It does not restrict shared subscription group names; it does not log (the caller logs the [`Decision`]). Updating an [`Acl`]
//! takes `&mut self`: share it as an `Arc<Acl>` and swap in a new one on change.
//!
//! ```
//! use std::sync::Arc;
//! use m2m_access::{Acl, Permission, Rule, Who};
//! use m2m_topic::{parse_subscription, TopicName};
//!
//! let parse = |lines: &[&str]| lines.iter().map(|l| l.parse::<Rule>()).collect::<Result<Vec<_>, _>>();
//! let mut acl = Acl::new(Permission::Deny);
//! acl.set_group_rules("fleet", parse(&["deny subscribe devices/+/secrets", "allow both devices/%c/#"])?);
//! acl.set_global_rules(parse(&["allow subscribe broadcast/#"])?);
//!
//! let groups: [Arc<str>; 1] = [Arc::from("fleet")];
//! let who = Who::new("dev-1").with_device("dev-1").with_groups(&groups);
//! assert!(acl.check_publish(&who, &TopicName::try_from("devices/dev-1/temp")?).is_allowed());
//! assert!(!acl.check_publish(&who, &TopicName::try_from("devices/dev-2/temp")?).is_allowed());
//! assert!(acl.check_subscribe(&who, &parse_subscription("$share/g/broadcast/+")?).is_allowed());
//! assert!(!acl.check_subscribe(&who, &parse_subscription("devices/dev-1/#")?).is_allowed());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod acl;
mod audit;
mod error;
mod filter;
mod jwt;
mod operators;
mod password;
mod quarantine;
mod registry;
mod rule;
mod scram;

#[cfg(test)]
mod test_support;

pub use acl::{Acl, DecidedBy, Decision, Scope, Who};
pub use audit::{AuditEvent, AuditKey, AuditLog};
pub use error::AccessError;
pub use filter::RuleFilter;
pub use jwt::{verify as verify_jwt, JwtConfig, JwtError, JwtIdentity, JwtKey};
pub use operators::{
    change_summary, random_text, OperatorError, Operators, Role, TokenInfo, UserInfo, MIN_PASSWORD,
};
pub use password::{hash_password, verify_password, VerifiedCache};
pub use quarantine::{repair_prefix, Entry as QuarantineEntry, Mode, Quarantine, QuarantineError, Target};
pub use registry::{credentials, name_problem, Device, Group, NewDevice, Registry, RegistryError};
pub use rule::{Action, Permission, Rule};
pub use scram::{scram_nonce, ScramCredential, ScramError, ScramServer, SCRAM_SHA_256};

/// The error type of this crate.
pub type Error = AccessError;

/// A `Result` with this crate's [`Error`].
pub type Result<T, E = AccessError> = std::result::Result<T, E>;
