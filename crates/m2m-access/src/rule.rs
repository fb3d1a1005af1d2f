//! [`Rule`]: one line of an access list, `allow publish devices/%c/#`, and its parts.

use std::fmt;
use std::str::FromStr;

use m2m_topic::{TopicFilter, TopicName};

use crate::filter::{Binding, Identity};
use crate::{AccessError, RuleFilter};

/// What a matching rule decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// The request is granted.
    Allow,
    /// The request is refused.
    Deny,
}

impl Permission {
    /// The word used in the rule text: `allow` or `deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }
}

impl FromStr for Permission {
    type Err = AccessError;

    /// Parses `allow` or `deny`, ignoring ASCII case.
    fn from_str(s: &str) -> Result<Self, AccessError> {
        if s.eq_ignore_ascii_case("allow") {
            Ok(Self::Allow)
        } else if s.eq_ignore_ascii_case("deny") {
            Ok(Self::Deny)
        } else {
            Err(AccessError::UnknownPermission(s.to_owned()))
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The requests a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// PUBLISH to a topic name.
    Publish,
    /// SUBSCRIBE to a topic filter.
    Subscribe,
    /// Both.
    Both,
}

impl Action {
    /// The canonical word used in the rule text: `publish`, `subscribe` or `both`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Subscribe => "subscribe",
            Self::Both => "both",
        }
    }

    /// Whether the action includes publishing.
    pub fn includes_publish(self) -> bool {
        matches!(self, Self::Publish | Self::Both)
    }

    /// Whether the action includes subscribing.
    pub fn includes_subscribe(self) -> bool {
        matches!(self, Self::Subscribe | Self::Both)
    }
}

impl FromStr for Action {
    type Err = AccessError;

    /// Parses `publish`/`pub`, `subscribe`/`sub` or `both`/`all`, ignoring ASCII case.
    fn from_str(s: &str) -> Result<Self, AccessError> {
        let is = |word: &str| s.eq_ignore_ascii_case(word);
        if is("publish") || is("pub") {
            Ok(Self::Publish)
        } else if is("subscribe") || is("sub") {
            Ok(Self::Subscribe)
        } else if is("both") || is("all") {
            Ok(Self::Both)
        } else {
            Err(AccessError::UnknownAction(s.to_owned()))
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One access rule: `permission` for `action` on the topics of `filter`.
///
/// The one-line text form is `<permission> <action> <filter>`, words separated by whitespace:
/// `allow publish devices/%c/#`, `deny subscribe #`, `allow both sensors/+/temp`. The filter is the
/// rest of the line with surrounding whitespace trimmed, so it may hold inner spaces (MQTT topics
/// may); keywords ignore ASCII case and `pub`, `sub` and `all` are accepted for the actions.
/// [`Display`](fmt::Display) writes the canonical form, which parses back to an equal rule.
///
/// ```
/// use m2m_access::{Action, Permission, Rule};
///
/// let rule: Rule = "allow pub devices/%c/#".parse()?;
/// assert_eq!((rule.permission, rule.action), (Permission::Allow, Action::Publish));
/// assert_eq!(rule.to_string(), "allow publish devices/%c/#");
/// assert!("allow publish a/#/b".parse::<Rule>().is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// What the rule decides when it matches.
    pub permission: Permission,
    /// Which requests it applies to.
    pub action: Action,
    /// The topics it applies to.
    pub filter: RuleFilter,
}

/// A request being checked: the topic of a PUBLISH or the (inner) filter of a SUBSCRIBE.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Request<'r> {
    Publish(&'r TopicName),
    Subscribe(&'r TopicFilter),
}

impl Rule {
    /// A rule from its parts.
    pub fn new(permission: Permission, action: Action, filter: RuleFilter) -> Self {
        Self { permission, action, filter }
    }

    /// Whether the rule decides `request` from the client `ident`.
    ///
    /// For a PUBLISH the filter must match the topic. For a SUBSCRIBE an allow rule must cover the
    /// subscription (grant every topic it can deliver) and a deny rule need only overlap it (refuse
    /// it if it could deliver any denied topic). Placeholder values that cannot be substituted
    /// safely make an allow rule inapplicable and a deny rule apply to everything under the levels
    /// before the placeholder; see the crate docs.
    #[inline]
    pub(crate) fn decides(&self, ident: &Identity<'_>, request: Request<'_>) -> bool {
        let wanted = match request {
            Request::Publish(_) => self.action.includes_publish(),
            Request::Subscribe(_) => self.action.includes_subscribe(),
        };
        if !wanted {
            return false;
        }
        let bound = match (self.filter.bind(ident), self.permission) {
            (Binding::Exact(bound), _) | (Binding::Unsafe(bound), Permission::Deny) => bound,
            (Binding::Missing, _) | (Binding::Unsafe(_), Permission::Allow) => return false,
        };
        match (request, self.permission) {
            (Request::Publish(topic), _) => bound.matches(topic),
            (Request::Subscribe(filter), Permission::Allow) => bound.covers(filter),
            (Request::Subscribe(filter), Permission::Deny) => bound.overlaps(filter),
        }
    }
}

impl FromStr for Rule {
    type Err = AccessError;

    fn from_str(line: &str) -> Result<Self, AccessError> {
        let line = line.trim();
        if line.is_empty() {
            return Err(AccessError::EmptyRule);
        }
        let incomplete = || AccessError::Incomplete(line.to_owned());
        // A missing word is reported after the words before it were found valid.
        let Some((permission, rest)) = line.split_once(char::is_whitespace) else {
            line.parse::<Permission>()?;
            return Err(incomplete());
        };
        let permission = permission.parse()?;
        let rest = rest.trim_start();
        let Some((action, filter)) = rest.split_once(char::is_whitespace) else {
            rest.parse::<Action>()?;
            return Err(incomplete());
        };
        Ok(Self { permission, action: action.parse()?, filter: RuleFilter::new(filter.trim())? })
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.permission, self.action, self.filter)
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use proptest::prelude::*;

    use super::*;

    fn rule(s: &str) -> Rule {
        s.parse().unwrap()
    }

    #[test]
    fn rules_parse_from_one_line() {
        let r = rule("allow publish devices/%c/#");
        assert_eq!(r.permission, Permission::Allow);
        assert_eq!(r.action, Action::Publish);
        assert_eq!(r.filter.as_str(), "devices/%c/#");
        assert_eq!(
            rule("deny subscribe #"),
            Rule::new(Permission::Deny, Action::Subscribe, "#".parse().unwrap())
        );
        assert_eq!(rule("allow both sensors/+/temp").action, Action::Both);
    }

    #[test]
    fn short_and_long_action_names_and_any_case_are_accepted() {
        for (word, action) in [
            ("pub", Action::Publish),
            ("publish", Action::Publish),
            ("sub", Action::Subscribe),
            ("subscribe", Action::Subscribe),
            ("both", Action::Both),
            ("all", Action::Both),
            ("PUB", Action::Publish),
            ("Subscribe", Action::Subscribe),
        ] {
            assert_eq!(rule(&format!("allow {word} a")).action, action, "{word}");
        }
        assert_eq!(rule("DENY all a").permission, Permission::Deny);
    }

    #[test]
    fn whitespace_around_and_between_words_is_ignored_and_inner_filter_spaces_are_kept() {
        let r = rule("  allow\t pub   Accounts payable/#  ");
        assert_eq!(r.filter.as_str(), "Accounts payable/#");
        assert_eq!(r.to_string(), "allow publish Accounts payable/#");
    }

    #[test]
    fn display_writes_the_canonical_form_that_parses_back() {
        for (text, canonical) in [
            ("allow pub devices/%c/#", "allow publish devices/%c/#"),
            ("deny sub #", "deny subscribe #"),
            ("Allow ALL users/%u-inbox", "allow both users/%u-inbox"),
            ("deny both $SYS/#", "deny both $SYS/#"),
        ] {
            let r = rule(text);
            assert_eq!(r.to_string(), canonical);
            assert_eq!(rule(canonical), r);
        }
    }

    #[test]
    fn error_messages_name_the_problem() {
        let err = |s: &str| s.parse::<Rule>().unwrap_err();
        assert_eq!(
            err("").to_string(),
            "rule is empty; expected `<allow|deny> <publish|subscribe|both> <topic filter>`"
        );
        assert_eq!(err("permit publish a"), AccessError::UnknownPermission("permit".into()));
        assert_eq!(
            err("permit publish a").to_string(),
            "unknown permission \"permit\"; expected `allow` or `deny`"
        );
        assert_eq!(
            err("allow read a").to_string(),
            "unknown action \"read\"; expected `publish`, `subscribe` or `both` (or `pub`, `sub`, `all`)"
        );
        assert_eq!(err("allow read"), AccessError::UnknownAction("read".into()));
        assert_eq!(err("allow"), AccessError::Incomplete("allow".into()));
        assert_eq!(err("allow publish").to_string(), "rule \"allow publish\" is incomplete; expected `<allow|deny> <publish|subscribe|both> <topic filter>`");
        assert_eq!(err("maybe"), AccessError::UnknownPermission("maybe".into()));

        let invalid = err("allow publish a/#/b");
        assert_eq!(invalid.to_string(), "invalid topic filter \"a/#/b\"");
        assert_eq!(
            invalid.source().map(ToString::to_string).as_deref(),
            Some("wildcard does not occupy a whole level or '#' is not the last level")
        );
        assert_eq!(
            err("allow publish a/\0").source().map(ToString::to_string).as_deref(),
            Some("topic contains the null character")
        );
        assert_eq!(
            err("allow subscribe $share/g/#").to_string(),
            "rule filter \"$share/g/#\" names a shared subscription; write the filter after `$share/<group>/` instead"
        );
    }

    #[test]
    fn permission_and_action_parse_and_display_on_their_own() {
        assert_eq!("deny".parse::<Permission>(), Ok(Permission::Deny));
        assert_eq!(Permission::Allow.to_string(), "allow");
        assert_eq!("all".parse::<Action>(), Ok(Action::Both));
        assert_eq!(Action::Subscribe.to_string(), "subscribe");
        assert!(Action::Both.includes_publish() && Action::Both.includes_subscribe());
        assert!(!Action::Publish.includes_subscribe() && !Action::Subscribe.includes_publish());
    }

    proptest! {
        #[test]
        fn every_rule_displays_as_text_that_parses_back_to_it(r in crate::test_support::rule()) {
            prop_assert_eq!(r.to_string().parse::<Rule>(), Ok(r));
        }
    }
}
