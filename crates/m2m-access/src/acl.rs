//! [`Acl`]: the compiled rule set, and the checks of one client's PUBLISH and SUBSCRIBE against it.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use m2m_topic::{Subscription, TopicName};

use crate::filter::{Identity, Value};
use crate::rule::Request;
use crate::{Permission, Rule};

/// The client a check is made for.
///
/// `client_id` and `username` are the values `%c` and `%u` stand for; `device` and `groups` select
/// the rules. All are borrowed, so building one per check costs nothing.
///
/// ```
/// use std::sync::Arc;
/// use m2m_access::Who;
///
/// let groups: [Arc<str>; 1] = [Arc::from("sensors")];
/// let who = Who::new("client-7").with_username("ann").with_device("dev-7").with_groups(&groups);
/// assert_eq!(who.device, Some("dev-7"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Who<'a> {
    /// The MQTT client id, substituted for `%c`.
    pub client_id: &'a str,
    /// The username of the CONNECT, substituted for `%u`; `None` if the client sent none, and then
    /// no rule holding `%u` applies to it.
    pub username: Option<&'a str>,
    /// The device registry id, which selects the device's own rules; it may differ from the client
    /// id. `None` for a client that is not a registered device: no device rules apply.
    pub device: Option<&'a str>,
    /// The device's groups, in the order their rules are evaluated; names without rules are skipped.
    pub groups: &'a [Arc<str>],
}

impl<'a> Who<'a> {
    /// A client with this id and no username, device or groups.
    pub fn new(client_id: &'a str) -> Self {
        Self { client_id, username: None, device: None, groups: &[] }
    }

    /// Sets the username.
    pub fn with_username(self, username: &'a str) -> Self {
        Self { username: Some(username), ..self }
    }

    /// Sets the device registry id.
    pub fn with_device(self, device: &'a str) -> Self {
        Self { device: Some(device), ..self }
    }

    /// Sets the groups, in evaluation order.
    pub fn with_groups(self, groups: &'a [Arc<str>]) -> Self {
        Self { groups, ..self }
    }

    fn identity(&self) -> Identity<'a> {
        Identity {
            client_id: Value::classify(Some(self.client_id)),
            username: Value::classify(self.username),
        }
    }
}

/// Where the deciding rule was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope<'a> {
    /// The rules of this device.
    Device(&'a str),
    /// The rules of this group.
    Group(&'a str),
    /// The rules that apply to every client.
    Global,
}

impl fmt::Display for Scope<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Device(id) => write!(f, "device {id:?}"),
            Self::Group(name) => write!(f, "group {name:?}"),
            Self::Global => f.write_str("global"),
        }
    }
}

/// What made a [`Decision`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecidedBy<'a> {
    /// The first rule that matched.
    Rule {
        /// Whose rules it is in.
        scope: Scope<'a>,
        /// Its position in that scope's rules, from 0.
        index: usize,
        /// The rule itself.
        rule: &'a Rule,
    },
    /// No rule matched; the [`Acl`]'s default permission applies.
    Default,
}

/// The outcome of a check: allow or deny, and why, for the caller to log and audit.
///
/// It borrows from the [`Acl`]; its [`Display`](fmt::Display) form is one line, e.g.
/// `allow by device "dev-7" rule 0 (allow publish devices/%c/#)` or `deny by default`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Decision<'a> {
    /// Allow or deny.
    pub permission: Permission,
    /// The rule that decided, or the default.
    pub by: DecidedBy<'a>,
}

impl<'a> Decision<'a> {
    /// Whether the request is granted.
    pub fn is_allowed(&self) -> bool {
        self.permission == Permission::Allow
    }

    /// The rule that decided, or `None` for the default.
    pub fn rule(&self) -> Option<&'a Rule> {
        match self.by {
            DecidedBy::Rule { rule, .. } => Some(rule),
            DecidedBy::Default => None,
        }
    }
}

impl fmt::Display for Decision<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.by {
            DecidedBy::Rule { scope, index, rule } => {
                write!(f, "{} by {scope} rule {index} ({rule})", self.permission)
            }
            DecidedBy::Default => write!(f, "{} by default", self.permission),
        }
    }
}

/// The compiled access rules of a node: per device, per group and global, and a default.
///
/// A check evaluates, in order, the device's own rules, the rules of each of its groups in the
/// order the client lists them, then the global rules; the first rule that matches decides, and
/// if none does the default permission applies ([`Permission::Deny`] for [`Acl::default`]). It
/// looks up one device and each listed group in a hash map and touches no other rules; filters were
/// split into levels when the rules were built.
///
/// ```
/// use std::sync::Arc;
/// use m2m_access::{Acl, Permission, Rule, Who};
/// use m2m_topic::{parse_subscription, TopicName};
///
/// let mut acl = Acl::new(Permission::Deny);
/// acl.set_device_rules("dev-7", ["allow both devices/%c/#".parse::<Rule>()?]);
/// acl.set_group_rules("sensors", ["allow subscribe commands/sensors/#".parse::<Rule>()?]);
/// acl.set_global_rules(["deny both $SYS/#".parse::<Rule>()?]);
///
/// let groups: [Arc<str>; 1] = [Arc::from("sensors")];
/// let who = Who::new("dev-7").with_device("dev-7").with_groups(&groups);
/// assert!(acl.check_publish(&who, &TopicName::try_from("devices/dev-7/temp")?).is_allowed());
/// assert!(acl.check_subscribe(&who, &parse_subscription("commands/sensors/+")?).is_allowed());
/// let denied = acl.check_publish(&who, &TopicName::try_from("devices/dev-8/temp")?);
/// assert_eq!(denied.to_string(), "deny by default");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Acl {
    /// Device registry id → its rules in order; no entry has an empty list.
    devices: HashMap<Arc<str>, Box<[Rule]>>,
    /// Group name → its rules in order; no entry has an empty list.
    groups: HashMap<Arc<str>, Box<[Rule]>>,
    /// Rules for every client, evaluated last.
    global: Box<[Rule]>,
    /// The permission when no rule matches.
    default: Permission,
}

impl Default for Acl {
    /// No rules, and everything denied.
    fn default() -> Self {
        Self::new(Permission::Deny)
    }
}

impl Acl {
    /// An empty rule set that decides `default` for everything.
    pub fn new(default: Permission) -> Self {
        Self { devices: HashMap::new(), groups: HashMap::new(), global: Box::default(), default }
    }

    /// The permission when no rule matches.
    pub fn default_permission(&self) -> Permission {
        self.default
    }

    /// Sets the permission when no rule matches.
    pub fn set_default_permission(&mut self, default: Permission) {
        self.default = default;
    }

    /// Replaces the rules of `device` (a device registry id); an empty list removes them.
    pub fn set_device_rules(&mut self, device: impl Into<Arc<str>>, rules: impl IntoIterator<Item = Rule>) {
        set_rules(&mut self.devices, device.into(), rules);
    }

    /// Removes the rules of `device`; returns whether it had any.
    pub fn remove_device_rules(&mut self, device: &str) -> bool {
        self.devices.remove(device).is_some()
    }

    /// Replaces the rules of `group`; an empty list removes them.
    pub fn set_group_rules(&mut self, group: impl Into<Arc<str>>, rules: impl IntoIterator<Item = Rule>) {
        set_rules(&mut self.groups, group.into(), rules);
    }

    /// Removes the rules of `group`; returns whether it had any.
    pub fn remove_group_rules(&mut self, group: &str) -> bool {
        self.groups.remove(group).is_some()
    }

    /// Replaces the rules that apply to every client.
    pub fn set_global_rules(&mut self, rules: impl IntoIterator<Item = Rule>) {
        self.global = rules.into_iter().collect();
    }

    /// The rules of `device`, empty if it has none.
    pub fn device_rules(&self, device: &str) -> &[Rule] {
        self.devices.get(device).map_or(&[], |rules| rules)
    }

    /// The rules of `group`, empty if it has none.
    pub fn group_rules(&self, group: &str) -> &[Rule] {
        self.groups.get(group).map_or(&[], |rules| rules)
    }

    /// The rules that apply to every client.
    pub fn global_rules(&self) -> &[Rule] {
        &self.global
    }

    /// The number of rules in all scopes.
    pub fn rule_count(&self) -> usize {
        let count =
            |map: &HashMap<Arc<str>, Box<[Rule]>>| map.values().map(|rules| rules.len()).sum::<usize>();
        count(&self.devices) + count(&self.groups) + self.global.len()
    }

    /// Decides whether `who` may publish to `topic`.
    ///
    /// A rule for publishing (or both) matches when its filter, placeholders substituted, matches
    /// `topic` as a subscription would: wildcards in the first level do not match `$` topics such as
    /// `$SYS/...`, so `allow publish #` does not grant them.
    pub fn check_publish(&self, who: &Who<'_>, topic: &TopicName) -> Decision<'_> {
        self.decide(who, Request::Publish(topic))
    }

    /// Decides whether `who` may subscribe to `subscription`; a shared subscription
    /// `$share/{group}/{filter}` is checked on its `{filter}`. Wrap a plain
    /// [`TopicFilter`](m2m_topic::TopicFilter) with `Subscription::from`.
    ///
    /// An allow rule matches when its filter covers the subscription: every topic the subscription
    /// can deliver is one the rule grants (`a/#` covers `a/+/b`, `a/#` and `a`; `a/+` does not cover
    /// `a/#`). A deny rule matches when the two filters overlap: some topic is matched by both (deny
    /// `a/b` refuses `a/#` and `+/b`). `$` topics are reached only by filters starting with that `$`
    /// level: `#` neither covers nor overlaps `$SYS/#`, while `allow subscribe $SYS/#` grants it.
    pub fn check_subscribe(&self, who: &Who<'_>, subscription: &Subscription) -> Decision<'_> {
        self.decide(who, Request::Subscribe(subscription.filter()))
    }

    fn decide(&self, who: &Who<'_>, request: Request<'_>) -> Decision<'_> {
        let ident = who.identity();
        let device = who
            .device
            .and_then(|device| self.devices.get_key_value(device))
            .map(|(id, rules)| (Scope::Device(id), rules));
        let groups = who
            .groups
            .iter()
            .filter_map(|group| self.groups.get_key_value(&**group))
            .map(|(name, rules)| (Scope::Group(name), rules));
        let scopes = device.into_iter().chain(groups).chain([(Scope::Global, &self.global)]);
        for (scope, rules) in scopes {
            for (index, rule) in rules.iter().enumerate() {
                if rule.decides(&ident, request) {
                    return Decision {
                        permission: rule.permission,
                        by: DecidedBy::Rule { scope, index, rule },
                    };
                }
            }
        }
        Decision { permission: self.default, by: DecidedBy::Default }
    }
}

fn set_rules(map: &mut HashMap<Arc<str>, Box<[Rule]>>, key: Arc<str>, rules: impl IntoIterator<Item = Rule>) {
    let rules: Box<[Rule]> = rules.into_iter().collect();
    if rules.is_empty() {
        map.remove(&key);
    } else {
        map.insert(key, rules);
    }
}

#[cfg(test)]
mod tests {
    use m2m_topic::{parse_subscription, TopicFilter};
    use proptest::prelude::*;

    use super::*;
    use crate::test_support;

    fn rules(lines: &[&str]) -> Vec<Rule> {
        lines.iter().map(|line| line.parse().unwrap()).collect()
    }

    fn topic(s: &str) -> TopicName {
        TopicName::try_from(s).unwrap()
    }

    fn sub(s: &str) -> Subscription {
        parse_subscription(s).unwrap()
    }

    fn global(default: Permission, lines: &[&str]) -> Acl {
        let mut acl = Acl::new(default);
        acl.set_global_rules(rules(lines));
        acl
    }

    fn can_publish(acl: &Acl, who: &Who<'_>, t: &str) -> bool {
        acl.check_publish(who, &topic(t)).is_allowed()
    }

    fn can_subscribe(acl: &Acl, who: &Who<'_>, s: &str) -> bool {
        acl.check_subscribe(who, &sub(s)).is_allowed()
    }

    #[test]
    fn client_id_and_username_placeholders_grant_each_client_its_own_topics() {
        let acl = global(Permission::Deny, &["allow both devices/%c/#", "allow publish users/%u-inbox/+"]);
        let ann = Who::new("c1").with_username("ann");
        let anonymous = Who::new("c2");
        // The matrix: (who, topic, may publish).
        for (who, t, allowed) in [
            (&ann, "devices/c1", true),
            (&ann, "devices/c1/temp", true),
            (&ann, "devices/c2/temp", false),
            (&ann, "users/ann-inbox/m1", true),
            (&ann, "users/ann-inbox", false),
            (&ann, "users/bob-inbox/m1", false),
            (&anonymous, "devices/c2/temp", true),
            (&anonymous, "devices/c1/temp", false),
            (&anonymous, "users/-inbox/m1", false),
            (&anonymous, "users/%u-inbox/m1", false),
        ] {
            assert_eq!(can_publish(&acl, who, t), allowed, "{} publishes {t}", who.client_id);
        }
        assert!(can_subscribe(&acl, &ann, "devices/c1/+"));
        assert!(!can_subscribe(&acl, &ann, "devices/+/temp"));
        assert!(!can_subscribe(&acl, &ann, "users/ann-inbox/+"), "publish-only rule");
    }

    #[test]
    fn deny_rules_with_placeholders_refuse_only_the_clients_own_topics() {
        let acl = global(Permission::Allow, &["deny publish devices/%c/config", "deny both users/%u/#"]);
        let ann = Who::new("c1").with_username("ann");
        assert!(!can_publish(&acl, &ann, "devices/c1/config"));
        assert!(can_publish(&acl, &ann, "devices/c2/config"));
        assert!(!can_publish(&acl, &ann, "users/ann/x"));
        assert!(can_publish(&acl, &ann, "users/bob/x"));
        assert!(!can_subscribe(&acl, &ann, "users/+/x"), "deny overlaps");
        assert!(can_subscribe(&acl, &ann, "users/bob/#"));
        // Without a username a `%u` rule does not apply, deny included.
        assert!(can_publish(&acl, &Who::new("c1"), "users/ann/x"));
    }

    #[test]
    fn rules_are_evaluated_device_then_groups_in_listed_order_then_global_and_the_first_match_wins() {
        let mut acl = Acl::new(Permission::Deny);
        acl.set_device_rules("d1", rules(&["deny publish a/secret", "allow publish a/own"]));
        acl.set_group_rules("g1", rules(&["allow publish a/#", "deny publish b/#"]));
        acl.set_group_rules("g2", rules(&["deny publish a/#", "allow publish b/#", "allow publish c"]));
        acl.set_global_rules(rules(&["allow publish #"]));
        let g12: [Arc<str>; 2] = [Arc::from("g1"), Arc::from("g2")];
        let g21: [Arc<str>; 2] = [Arc::from("g2"), Arc::from("g1")];
        let who12 = Who::new("x").with_device("d1").with_groups(&g12);
        let who21 = Who::new("x").with_device("d1").with_groups(&g21);

        let by = |who: &Who<'_>, t: &str| {
            let decision = acl.check_publish(who, &topic(t));
            match decision.by {
                DecidedBy::Rule { scope, index, .. } => {
                    (decision.permission, Some((scope.to_string(), index)))
                }
                DecidedBy::Default => (decision.permission, None),
            }
        };
        let deny = Permission::Deny;
        let allow = Permission::Allow;
        let at = |scope: &str, index| Some((scope.to_owned(), index));
        assert_eq!(by(&who12, "a/secret"), (deny, at("device \"d1\"", 0)), "device before groups");
        assert_eq!(by(&who12, "a/own"), (allow, at("device \"d1\"", 1)));
        assert_eq!(by(&who12, "a/x"), (allow, at("group \"g1\"", 0)));
        assert_eq!(by(&who21, "a/x"), (deny, at("group \"g2\"", 0)), "groups in the listed order");
        assert_eq!(by(&who12, "b/x"), (deny, at("group \"g1\"", 1)));
        assert_eq!(by(&who21, "b/x"), (allow, at("group \"g2\"", 1)));
        assert_eq!(by(&who12, "c"), (allow, at("group \"g2\"", 2)));
        assert_eq!(by(&who12, "z"), (allow, at("global", 0)), "global last");
        assert_eq!(by(&who12, "$SYS/x"), (deny, None), "`#` does not reach `$SYS`");

        // The device id selects the rules, not the client id; unknown groups are skipped.
        let stranger = Who::new("d1").with_groups(&g12);
        assert_eq!(by(&stranger, "a/secret"), (allow, at("group \"g1\"", 0)));
        let unknown: [Arc<str>; 1] = [Arc::from("nope")];
        assert_eq!(
            by(&Who::new("x").with_device("d9").with_groups(&unknown), "a/own"),
            (allow, at("global", 0))
        );
    }

    #[test]
    fn nothing_matching_falls_back_to_the_default() {
        let who = Who::new("c1");
        let deny = Acl::default();
        let decision = deny.check_publish(&who, &topic("a"));
        assert_eq!(
            (decision.permission, decision.by, decision.rule()),
            (Permission::Deny, DecidedBy::Default, None)
        );
        assert_eq!(decision.to_string(), "deny by default");

        let mut allow = global(Permission::Allow, &["deny subscribe a/#"]);
        assert!(can_publish(&allow, &who, "a/b"));
        assert!(!can_subscribe(&allow, &who, "a/b"));
        assert!(can_subscribe(&allow, &who, "b"));
        assert!(can_subscribe(&allow, &who, "$SYS/#"));
        allow.set_default_permission(Permission::Deny);
        assert!(!can_subscribe(&allow, &who, "b"));
    }

    #[test]
    fn sys_topics_need_a_rule_that_names_them() {
        let who = Who::new("c1");
        let acl = global(Permission::Deny, &["allow both #", "allow subscribe $SYS/broker/#"]);
        assert!(can_publish(&acl, &who, "a/b"));
        assert!(!can_publish(&acl, &who, "$SYS/broker/uptime"));
        assert!(!can_subscribe(&acl, &who, "$SYS/#"));
        assert!(can_subscribe(&acl, &who, "$SYS/broker/+"));
        assert!(can_subscribe(&acl, &who, "#"), "`#` does not deliver `$SYS` topics, so `#` covers it");
        assert!(!can_subscribe(&acl, &who, "$SYS/+/uptime"));

        let acl = global(Permission::Allow, &["deny subscribe #"]);
        assert!(can_subscribe(&acl, &who, "$SYS/#"), "`#` does not overlap `$SYS/#`");
        let acl = global(Permission::Allow, &["deny subscribe $SYS/#"]);
        assert!(!can_subscribe(&acl, &who, "$SYS/broker/+"));
        assert!(can_subscribe(&acl, &who, "#"));
        assert!(can_subscribe(&acl, &who, "+/broker"));
    }

    #[test]
    fn a_client_id_or_username_with_wildcards_or_slashes_never_widens_an_allow_rule() {
        let acl = global(Permission::Deny, &["allow both devices/%c/#", "allow both users/%u"]);
        for id in ["#", "+", "a/#", "a/b", "", "+/+"] {
            let who = Who::new(id).with_username(id);
            for t in ["devices/a/b", "devices/a", "devices/x/y", "users/a/b", "users/x"] {
                assert!(!can_publish(&acl, &who, t), "{id:?} publishes {t}");
            }
            for s in ["devices/#", "devices/a/#", "devices/+/b", "users/+", "#"] {
                assert!(!can_subscribe(&acl, &who, s), "{id:?} subscribes {s}");
            }
        }
        // A `$` value may not move a rule starting with a placeholder into the `$` topics.
        let acl = global(Permission::Deny, &["allow both %c/#"]);
        assert!(!can_publish(&acl, &Who::new("$SYS"), "$SYS/broker/uptime"));
        assert!(!can_subscribe(&acl, &Who::new("$SYS"), "$SYS/#"));
        assert!(can_publish(&acl, &Who::new("c1"), "c1/x"));
    }

    #[test]
    fn a_deny_rule_with_an_unsafe_value_refuses_everything_under_the_levels_before_the_placeholder() {
        let acl = global(Permission::Allow, &["deny both devices/%c/config", "deny publish %u/#"]);
        let odd = Who::new("a/b");
        assert!(!can_publish(&acl, &odd, "devices/a/b/config"), "its own config, literally");
        assert!(!can_publish(&acl, &odd, "devices/other/config"), "fails closed under `devices`");
        assert!(!can_subscribe(&acl, &odd, "devices/+/config"));
        assert!(can_publish(&acl, &odd, "sensors/t"));
        assert!(can_subscribe(&acl, &odd, "sensors/#"));
        // A placeholder in the first level leaves nothing to compare: every topic, `$` ones too.
        let empty_user = Who::new("c1").with_username("");
        assert!(!can_publish(&acl, &empty_user, "sensors/t"));
        assert!(!can_publish(&acl, &empty_user, "$app/x"));
        assert!(can_subscribe(&acl, &empty_user, "sensors/#"), "that rule is publish only");

        let decision = acl.check_publish(&odd, &topic("devices/x/config"));
        assert_eq!(decision.to_string(), "deny by global rule 0 (deny both devices/%c/config)");
    }

    #[test]
    fn subscriptions_are_granted_only_when_covered_and_refused_when_a_deny_overlaps() {
        let acl = global(
            Permission::Deny,
            &["deny subscribe a/secret", "allow subscribe a/#", "allow subscribe b/+"],
        );
        let who = Who::new("c1");
        for (s, allowed) in [
            ("a/+/b", true),
            ("a/x", true),
            ("a", true),
            ("a/#", false),
            ("a/+", false),
            ("+/secret", false),
            ("b/x", true),
            ("b/+", true),
            ("b/#", false),
            ("b", false),
            ("#", false),
        ] {
            assert_eq!(can_subscribe(&acl, &who, s), allowed, "{s}");
        }
    }

    #[test]
    fn shared_subscriptions_are_checked_on_their_inner_filter() {
        let acl = global(Permission::Deny, &["deny subscribe jobs/secret", "allow subscribe jobs/#"]);
        let who = Who::new("w1");
        assert!(can_subscribe(&acl, &who, "$share/workers/jobs/+/x"));
        assert!(!can_subscribe(&acl, &who, "$share/workers/jobs/#"));
        assert!(!can_subscribe(&acl, &who, "$share/jobs/other"));
        let decision = acl.check_subscribe(&who, &sub("$share/g/jobs/a"));
        assert_eq!(decision.to_string(), "allow by global rule 1 (allow subscribe jobs/#)");
    }

    #[test]
    fn a_plain_filter_can_be_checked_as_a_subscription() {
        let acl = global(Permission::Deny, &["allow subscribe a/#"]);
        let filter = TopicFilter::try_from("a/+").unwrap();
        assert!(acl.check_subscribe(&Who::new("c1"), &Subscription::from(filter)).is_allowed());
    }

    #[test]
    fn rules_can_be_replaced_removed_and_counted() {
        let mut acl = Acl::default();
        acl.set_device_rules("d1", rules(&["allow publish a", "allow publish b"]));
        acl.set_group_rules("g1", rules(&["allow publish c"]));
        acl.set_global_rules(rules(&["deny both #"]));
        assert_eq!(acl.rule_count(), 4);
        assert_eq!(acl.device_rules("d1").len(), 2);
        acl.set_device_rules("d1", rules(&["allow publish z"]));
        assert_eq!(acl.device_rules("d1"), rules(&["allow publish z"]).as_slice());
        acl.set_device_rules("d1", Vec::new());
        assert!(acl.device_rules("d1").is_empty());
        assert!(!acl.remove_device_rules("d1"));
        assert!(acl.remove_group_rules("g1"));
        assert!(acl.group_rules("g1").is_empty());
        assert_eq!(acl.global_rules().len(), 1);
        assert_eq!(acl.rule_count(), 1);
    }

    #[test]
    fn a_decision_names_its_rule() {
        let mut acl = Acl::default();
        acl.set_device_rules("dev-7", rules(&["allow publish devices/%c/#"]));
        let who = Who::new("dev-7").with_device("dev-7");
        let decision = acl.check_publish(&who, &topic("devices/dev-7/t"));
        assert_eq!(decision.to_string(), "allow by device \"dev-7\" rule 0 (allow publish devices/%c/#)");
        assert_eq!(decision.rule(), Some(&acl.device_rules("dev-7")[0]));
    }

    /// One device, three groups and global rules, all from the strategy.
    fn acl_of(device: Vec<Rule>, groups: Vec<Vec<Rule>>, global: Vec<Rule>, default: Permission) -> Acl {
        let mut acl = Acl::new(default);
        acl.set_device_rules("d", device);
        for (name, rules) in test_support::GROUPS.iter().zip(groups) {
            acl.set_group_rules(*name, rules);
        }
        acl.set_global_rules(global);
        acl
    }

    proptest! {
        /// With rules that apply to both, subscribing to a topic name is decided like publishing to
        /// it, by the same rule: cover and overlap of a filter without wildcards are both matching.
        #[test]
        fn subscribing_to_a_topic_name_is_decided_like_publishing_to_it(
            device in prop::collection::vec(test_support::both_rule(), 0..4),
            groups in prop::collection::vec(prop::collection::vec(test_support::both_rule(), 0..3), 3),
            global in prop::collection::vec(test_support::both_rule(), 0..3),
            default in test_support::permission(),
            client_id in test_support::value(),
            username in prop::option::of(test_support::value()),
            listed in test_support::groups(),
            t in test_support::topic(),
        ) {
            let acl = acl_of(device, groups, global, default);
            let who = Who { client_id: &client_id, username: username.as_deref(), device: Some("d"), groups: &listed };
            let published = acl.check_publish(&who, &t);
            let subscribed = acl.check_subscribe(&who, &Subscription::from(TopicFilter::from(t.clone())));
            prop_assert_eq!(published, subscribed);
        }

        /// Evaluation is a first-match scan over device, listed groups and global rules.
        #[test]
        fn a_decision_is_the_first_match_of_the_concatenated_rules(
            device in prop::collection::vec(test_support::rule(), 0..4),
            groups in prop::collection::vec(prop::collection::vec(test_support::rule(), 0..3), 3),
            global in prop::collection::vec(test_support::rule(), 0..3),
            default in test_support::permission(),
            client_id in test_support::value(),
            listed in test_support::groups(),
            t in test_support::topic(),
            s in test_support::filter(),
        ) {
            let acl = acl_of(device.clone(), groups.clone(), global.clone(), default);
            let who = Who { client_id: &client_id, username: None, device: Some("d"), groups: &listed };
            let mut all: Vec<&Rule> = device.iter().collect();
            for name in &listed {
                let i = test_support::GROUPS.iter().position(|g| **g == **name).unwrap();
                all.extend(&groups[i]);
            }
            all.extend(&global);
            let ident = who.identity();
            let expect = |request| all.iter().find(|r| r.decides(&ident, request)).map_or(default, |r| r.permission);
            prop_assert_eq!(acl.check_publish(&who, &t).permission, expect(Request::Publish(&t)));
            prop_assert_eq!(
                acl.check_subscribe(&who, &Subscription::from(s.clone())).permission,
                expect(Request::Subscribe(&s))
            );
        }
    }
}
