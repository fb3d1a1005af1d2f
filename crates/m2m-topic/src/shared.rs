//! Subscriptions: plain filters and shared subscriptions `$share/{group}/{filter}` (MQTT 5.0 §4.8.2).

use std::fmt;
use std::sync::Arc;

use crate::limits::{Limits, MAX_TOPIC_LEN};
use crate::{TopicError, TopicFilter};

const SHARE_PREFIX: &str = "$share/";

/// A shared subscription: the members of `group` receive the messages matching `filter` in turn,
/// one member per message (MQTT 5.0 §4.8.2).
///
/// [`SharedFilter::new`] and [`parse_subscription`] check that `group` is non-empty and contains no
/// `/`, `+` or `#`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SharedFilter {
    /// The ShareName; non-empty, no `/`, `+` or `#`.
    pub group: Arc<str>,
    /// The filter the group subscribes to.
    pub filter: TopicFilter,
}

impl SharedFilter {
    /// Builds a shared subscription after checking the group name.
    ///
    /// # Errors
    /// [`TopicError::InvalidSharedGroup`] if `group` is empty or contains `/`, `+` or `#`;
    /// [`TopicError::NulCharacter`] if it contains U+0000.
    pub fn new(group: &str, filter: TopicFilter) -> Result<Self, TopicError> {
        check_group(group)?;
        Ok(Self { group: Arc::from(group), filter })
    }

    /// The identity of this group of this filter, to key a round-robin cursor by.
    pub fn group_id(&self) -> SharedGroupId {
        SharedGroupId::new(&self.group, &self.filter)
    }
}

impl fmt::Display for SharedFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SHARE_PREFIX}{}/{}", self.group, self.filter)
    }
}

fn check_group(group: &str) -> Result<(), TopicError> {
    if group.contains('\0') {
        return Err(TopicError::NulCharacter);
    }
    if group.is_empty() || group.contains(['/', '+', '#']) {
        return Err(TopicError::InvalidSharedGroup);
    }
    Ok(())
}

/// The identity of one shared group on one filter: the string `$share/{group}/{filter}`.
///
/// [`SubscriptionTrie::match_topic`](crate::SubscriptionTrie::match_topic) hands it out with the
/// group's members so that the caller can keep a round-robin cursor per group; equal ids mean the
/// same group of the same filter, also after the group was emptied and filled again.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SharedGroupId {
    /// `$share/{group}/{filter}`.
    full: Arc<str>,
    /// Byte offset of the `/` between group and filter.
    group_end: usize,
}

impl SharedGroupId {
    fn new(group: &str, filter: &TopicFilter) -> Self {
        let full: Arc<str> = Arc::from(format!("{SHARE_PREFIX}{group}/{filter}"));
        Self { full, group_end: SHARE_PREFIX.len() + group.len() }
    }

    /// The whole `$share/{group}/{filter}` string.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The group name.
    pub fn group(&self) -> &str {
        &self.full[SHARE_PREFIX.len()..self.group_end]
    }

    /// The filter part.
    pub fn filter(&self) -> &str {
        &self.full[self.group_end + 1..]
    }
}

impl fmt::Debug for SharedGroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SharedGroupId").field(&self.as_str()).finish()
    }
}

impl fmt::Display for SharedGroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of a SUBSCRIBE: a plain filter or a shared subscription.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subscription {
    /// Every subscriber receives every matching message.
    Plain(TopicFilter),
    /// One member of the group receives each matching message.
    Shared(SharedFilter),
}

impl Subscription {
    /// Parses `s` as [`parse_subscription`] does, applying the broker's `limits` to the filter part.
    ///
    /// The protocol maximum of 65 535 bytes applies to the whole string.
    ///
    /// # Errors
    /// As [`parse_subscription`], plus [`TopicError::TooLong`] and [`TopicError::TooManyLevels`].
    pub fn parse_with(s: &str, limits: &Limits) -> Result<Self, TopicError> {
        match split_shared(s)? {
            Some((group, filter)) => Ok(Self::Shared(SharedFilter {
                group: Arc::from(group),
                filter: TopicFilter::parse_with(filter, limits)?,
            })),
            None => TopicFilter::parse_with(s, limits).map(Self::Plain),
        }
    }

    /// Like [`Subscription::parse_with`], keeping the given allocation for a plain filter.
    ///
    /// # Errors
    /// As [`Subscription::parse_with`].
    pub fn parse_arc_with(s: Arc<str>, limits: &Limits) -> Result<Self, TopicError> {
        match split_shared(&s)? {
            Some(_) => Self::parse_with(&s, limits),
            None => TopicFilter::parse_arc_with(s, limits).map(Self::Plain),
        }
    }

    /// The filter that selects the messages, shared or not.
    pub fn filter(&self) -> &TopicFilter {
        match self {
            Self::Plain(filter) => filter,
            Self::Shared(shared) => &shared.filter,
        }
    }

    /// The shared subscription, if this is one.
    pub fn shared(&self) -> Option<&SharedFilter> {
        match self {
            Self::Plain(_) => None,
            Self::Shared(shared) => Some(shared),
        }
    }

    /// Whether this is a shared subscription.
    pub fn is_shared(&self) -> bool {
        matches!(self, Self::Shared(_))
    }
}

/// Recognises `$share/{group}/{filter}`: `Ok(None)` for a plain filter, else the checked group and the
/// (not yet checked) filter part.
fn split_shared(s: &str) -> Result<Option<(&str, &str)>, TopicError> {
    let Some(rest) = s.strip_prefix(SHARE_PREFIX) else {
        return Ok(None);
    };
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong { len: s.len(), max: MAX_TOPIC_LEN });
    }
    let (group, filter) = rest.split_once('/').unwrap_or((rest, ""));
    check_group(group)?;
    if filter.is_empty() {
        return Err(TopicError::MissingSharedFilter);
    }
    Ok(Some((group, filter)))
}

/// Parses one SUBSCRIBE/UNSUBSCRIBE filter: `$share/{group}/{filter}` is a shared subscription
/// (MQTT 5.0 §4.8.2), anything else a plain [`TopicFilter`].
///
/// `$share` alone is a plain one-level filter. Whether shared subscriptions are allowed (they are not
/// part of MQTT 3.1.1) is the caller's decision.
///
/// ```
/// use m2m_topic::{parse_subscription, Subscription};
///
/// let Subscription::Shared(shared) = parse_subscription("$share/workers/jobs/+")? else { panic!() };
/// assert_eq!((&*shared.group, shared.filter.as_str()), ("workers", "jobs/+"));
/// assert!(parse_subscription("$share/workers").is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`TopicError::InvalidSharedGroup`] for an empty group or one with `+` or `#`,
/// [`TopicError::MissingSharedFilter`] when no filter follows the group, or the filter's own error.
pub fn parse_subscription(s: &str) -> Result<Subscription, TopicError> {
    Subscription::parse_with(s, &Limits::PROTOCOL)
}

impl TryFrom<&str> for Subscription {
    type Error = TopicError;

    fn try_from(s: &str) -> Result<Self, TopicError> {
        parse_subscription(s)
    }
}

impl TryFrom<Arc<str>> for Subscription {
    type Error = TopicError;

    fn try_from(s: Arc<str>) -> Result<Self, TopicError> {
        Self::parse_arc_with(s, &Limits::PROTOCOL)
    }
}

impl std::str::FromStr for Subscription {
    type Err = TopicError;

    fn from_str(s: &str) -> Result<Self, TopicError> {
        parse_subscription(s)
    }
}

impl From<TopicFilter> for Subscription {
    fn from(filter: TopicFilter) -> Self {
        Self::Plain(filter)
    }
}

impl From<SharedFilter> for Subscription {
    fn from(shared: SharedFilter) -> Self {
        Self::Shared(shared)
    }
}

impl fmt::Display for Subscription {
    /// The subscription as it appears on the wire.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Plain(filter) => filter.fmt(f),
            Self::Shared(shared) => shared.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_prefix_with_group_and_filter_is_a_shared_subscription() {
        let sub = parse_subscription("$share/consumer1/sport/tennis/+").unwrap();
        let shared = sub.shared().unwrap();
        assert_eq!(&*shared.group, "consumer1");
        assert_eq!(shared.filter.as_str(), "sport/tennis/+");
        assert_eq!(sub.filter().as_str(), "sport/tennis/+");
        assert_eq!(sub.to_string(), "$share/consumer1/sport/tennis/+");
    }

    #[test]
    fn a_shared_filter_may_be_a_bare_wildcard_or_start_with_a_slash() {
        assert_eq!(parse_subscription("$share/g/#").unwrap().filter().as_str(), "#");
        assert_eq!(parse_subscription("$share/g//finance").unwrap().filter().as_str(), "/finance");
        assert_eq!(parse_subscription("$share/g/$SYS/#").unwrap().filter().as_str(), "$SYS/#");
    }

    #[test]
    fn filters_without_the_share_prefix_are_plain() {
        for s in ["$share", "$shared/g/a", "share/g/a", "a/$share/g/b", "$SHARE/g/a"] {
            assert_eq!(
                parse_subscription(s),
                Ok(Subscription::Plain(TopicFilter::try_from(s).unwrap())),
                "{s}"
            );
        }
    }

    #[test]
    fn a_shared_subscription_without_a_filter_is_rejected() {
        assert_eq!(parse_subscription("$share/g"), Err(TopicError::MissingSharedFilter));
        assert_eq!(parse_subscription("$share/g/"), Err(TopicError::MissingSharedFilter));
    }

    #[test]
    fn an_empty_or_wildcard_group_is_rejected() {
        assert_eq!(parse_subscription("$share//x"), Err(TopicError::InvalidSharedGroup));
        assert_eq!(parse_subscription("$share/"), Err(TopicError::InvalidSharedGroup));
        assert_eq!(parse_subscription("$share/+/x"), Err(TopicError::InvalidSharedGroup));
        assert_eq!(parse_subscription("$share/g#/x"), Err(TopicError::InvalidSharedGroup));
        assert_eq!(parse_subscription("$share/a\0/x"), Err(TopicError::NulCharacter));
    }

    #[test]
    fn an_invalid_filter_after_the_group_is_rejected_with_its_own_error() {
        assert_eq!(parse_subscription("$share/g/a/#/b"), Err(TopicError::InvalidWildcard));
        assert_eq!(parse_subscription("$share/g/a\0"), Err(TopicError::NulCharacter));
    }

    #[test]
    fn limits_apply_to_the_filter_part_of_a_shared_subscription() {
        let limits = Limits { max_levels: 2, max_len: 100 };
        assert!(Subscription::parse_with("$share/group/a/b", &limits).is_ok());
        assert_eq!(
            Subscription::parse_with("$share/group/a/b/c", &limits),
            Err(TopicError::TooManyLevels { levels: 3, max: 2 })
        );
    }

    #[test]
    fn a_plain_subscription_from_an_arc_keeps_the_same_allocation() {
        let arc: Arc<str> = Arc::from("a/+");
        let Subscription::Plain(filter) = Subscription::try_from(Arc::clone(&arc)).unwrap() else {
            panic!("expected a plain filter")
        };
        assert!(Arc::ptr_eq(filter.as_arc(), &arc));
    }

    #[test]
    fn shared_filter_new_checks_the_group() {
        let filter = TopicFilter::try_from("a").unwrap();
        assert!(SharedFilter::new("g", filter.clone()).is_ok());
        assert_eq!(SharedFilter::new("a/b", filter), Err(TopicError::InvalidSharedGroup));
    }

    #[test]
    fn a_group_id_names_group_and_filter() {
        let shared = parse_subscription("$share/g1/a/+").unwrap().shared().cloned().unwrap();
        let id = shared.group_id();
        assert_eq!((id.as_str(), id.group(), id.filter()), ("$share/g1/a/+", "g1", "a/+"));
        assert_eq!(id, shared.group_id());
    }
}
