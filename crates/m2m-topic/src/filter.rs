//! [`TopicFilter`]: the pattern of a subscription, and matching one topic name against it.

use std::sync::Arc;

use crate::limits::{check_filter, Limits};
use crate::{TopicError, TopicName};

/// A topic filter: the pattern of a SUBSCRIBE or UNSUBSCRIBE (MQTT 5.0 §4.7, 3.1.1 §4.7).
///
/// Invariants, checked at construction: 1 to 65 535 bytes of UTF-8 (or fewer under [`Limits`]),
/// no U+0000, `+` only as a whole level, `#` only as the whole last level. Levels may be empty.
/// A `$share/...` string is a valid plain filter too; use [`parse_subscription`](crate::parse_subscription)
/// to recognise shared subscriptions.
///
/// ```
/// use m2m_topic::{TopicFilter, TopicName};
///
/// let filter = TopicFilter::try_from("sport/tennis/+/#")?;
/// assert!(filter.matches(&TopicName::try_from("sport/tennis/player1")?));
/// assert!(TopicFilter::try_from("sport/tennis#").is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter(Arc<str>);

impl TopicFilter {
    /// Validates `s` under the protocol rules and the broker's extra `limits`.
    ///
    /// # Errors
    /// [`TopicError::Empty`], [`TopicError::TooLong`], [`TopicError::TooManyLevels`],
    /// [`TopicError::NulCharacter`] or [`TopicError::InvalidWildcard`].
    pub fn parse_with(s: &str, limits: &Limits) -> Result<Self, TopicError> {
        check_filter(s, limits)?;
        Ok(Self(Arc::from(s)))
    }

    /// Like [`TopicFilter::parse_with`], keeping the given allocation (as decoded by the codec).
    ///
    /// # Errors
    /// As [`TopicFilter::parse_with`].
    pub fn parse_arc_with(s: Arc<str>, limits: &Limits) -> Result<Self, TopicError> {
        check_filter(&s, limits)?;
        Ok(Self(s))
    }

    /// The filter as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared string, for callers that keep it without copying.
    pub fn as_arc(&self) -> &Arc<str> {
        &self.0
    }

    /// Turns the filter back into its shared string.
    pub fn into_arc(self) -> Arc<str> {
        self.0
    }

    /// The levels between `/` separators, in order; empty levels included, wildcards as `"+"`/`"#"`.
    pub fn levels(&self) -> std::str::Split<'_, char> {
        self.0.split('/')
    }

    /// Whether the filter contains `+` or `#`.
    pub fn has_wildcards(&self) -> bool {
        self.0.bytes().any(|b| b == b'+' || b == b'#')
    }

    /// Whether `topic` matches this filter (MQTT 5.0 §4.7.1–4.7.2).
    ///
    /// `+` matches exactly one level, an empty one included; `#` matches any number of levels,
    /// zero included, so `"a/#"` matches `"a"`; other levels compare exactly. A topic starting with
    /// `$` is not matched by a filter whose first level is `+` or `#`. This checks one pair; to match
    /// a topic against many filters use [`SubscriptionTrie`](crate::SubscriptionTrie), which agrees
    /// with this method.
    pub fn matches(&self, topic: &TopicName) -> bool {
        let filter = self.as_str();
        if topic.is_system() && filter.starts_with(['+', '#']) {
            return false;
        }
        let mut topic_levels = topic.levels();
        for level in filter.split('/') {
            match level {
                "#" => return true,
                "+" => {
                    if topic_levels.next().is_none() {
                        return false;
                    }
                }
                _ => {
                    if topic_levels.next() != Some(level) {
                        return false;
                    }
                }
            }
        }
        topic_levels.next().is_none()
    }
}

impl From<TopicName> for TopicFilter {
    /// A topic name is a filter without wildcards that matches only itself.
    fn from(name: TopicName) -> Self {
        Self(name.into_arc())
    }
}

impl TryFrom<&str> for TopicFilter {
    type Error = TopicError;

    fn try_from(s: &str) -> Result<Self, TopicError> {
        Self::parse_with(s, &Limits::PROTOCOL)
    }
}

impl TryFrom<Arc<str>> for TopicFilter {
    type Error = TopicError;

    fn try_from(s: Arc<str>) -> Result<Self, TopicError> {
        Self::parse_arc_with(s, &Limits::PROTOCOL)
    }
}

impl TryFrom<String> for TopicFilter {
    type Error = TopicError;

    fn try_from(s: String) -> Result<Self, TopicError> {
        Self::parse_arc_with(Arc::from(s), &Limits::PROTOCOL)
    }
}

crate::str_newtype_impls!(TopicFilter);

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::try_from(s).unwrap()
    }

    fn topic(s: &str) -> TopicName {
        TopicName::try_from(s).unwrap()
    }

    fn matches(f: &str, t: &str) -> bool {
        filter(f).matches(&topic(t))
    }

    #[test]
    fn filters_from_the_spec_examples_are_valid() {
        for s in [
            "sport/tennis/player1/#",
            "sport/#",
            "#",
            "sport/tennis/#",
            "+",
            "+/tennis/#",
            "sport/+/player1",
            "+/+",
            "/+",
            "/",
            "a//b",
            "$SYS/#",
            "$SYS/monitor/+",
            "Accounts payable",
            "$share",
        ] {
            assert_eq!(TopicFilter::try_from(s).map(|f| f.to_string()), Ok(s.to_owned()), "{s:?}");
        }
    }

    #[test]
    fn wildcards_that_are_not_whole_levels_are_rejected() {
        for s in
            ["sport/tennis#", "sport/tennis/#/ranking", "sport+", "#/a", "a/#/", "++", "a/+b/c", "##", "+#"]
        {
            assert_eq!(TopicFilter::try_from(s), Err(TopicError::InvalidWildcard), "{s:?}");
        }
    }

    #[test]
    fn an_empty_filter_and_a_filter_with_a_null_character_are_rejected() {
        assert_eq!(TopicFilter::try_from(""), Err(TopicError::Empty));
        assert_eq!(TopicFilter::try_from("a/\0"), Err(TopicError::NulCharacter));
    }

    #[test]
    fn a_filter_over_the_level_limit_is_rejected() {
        let limits = Limits { max_levels: 2, max_len: 65_535 };
        assert_eq!(
            TopicFilter::parse_with("a/+/#", &limits),
            Err(TopicError::TooManyLevels { levels: 3, max: 2 })
        );
        assert!(TopicFilter::parse_with("a/#", &limits).is_ok());
    }

    #[test]
    fn multi_level_wildcard_matches_the_parent_and_all_descendants() {
        assert!(matches("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(matches("sport/tennis/player1/#", "sport/tennis/player1/ranking"));
        assert!(matches("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon"));
        assert!(matches("sport/#", "sport"));
        assert!(matches("#", "sport/tennis"));
        assert!(matches("#", "/"));
        assert!(!matches("sport/tennis/player1/#", "sport/tennis"));
        assert!(!matches("sport/tennis/player1/#", "sport/tennis/player2"));
    }

    #[test]
    fn single_level_wildcard_matches_exactly_one_level_including_an_empty_one() {
        assert!(matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(matches("sport/tennis/+", "sport/tennis/player2"));
        assert!(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("sport/+", "sport/"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(matches("+", "finance"));
        assert!(matches("+/+/+", "//"));
        assert!(matches("+/#", "a"));
    }

    #[test]
    fn wildcards_at_the_first_level_do_not_match_topics_starting_with_a_dollar() {
        assert!(!matches("#", "$SYS/monitor/Clients"));
        assert!(!matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(!matches("+", "$SYS"));
        assert!(matches("$SYS/#", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/#", "$SYS"));
        assert!(matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
        assert!(matches("a/+", "a/$x"));
        assert!(matches("a/#", "a/$x"));
    }

    #[test]
    fn literal_levels_compare_exactly() {
        assert!(matches("Accounts payable", "Accounts payable"));
        assert!(!matches("ACCOUNTS", "Accounts"));
        assert!(!matches("/finance", "finance"));
        assert!(!matches("a/b", "a/b/"));
        assert!(!matches("a/b/", "a/b"));
        assert!(matches("a//b", "a//b"));
    }

    #[test]
    fn has_wildcards_sees_plus_and_hash() {
        assert!(filter("a/+/b").has_wildcards());
        assert!(filter("#").has_wildcards());
        assert!(!filter("a/b").has_wildcards());
    }

    /// An independent, recursive statement of the matching rules over level lists.
    fn reference(filter: &[&str], topic: &[&str]) -> bool {
        match (filter.split_first(), topic.split_first()) {
            (Some((&"#", _)), _) => true,
            (Some((&"+", f)), Some((_, t))) => reference(f, t),
            (Some((l, f)), Some((m, t))) => l == m && reference(f, t),
            (None, None) => true,
            _ => false,
        }
    }

    proptest! {
        #[test]
        fn matches_agrees_with_a_recursive_reference(
            f in crate::test_support::filter(),
            t in crate::test_support::topic(),
        ) {
            let fl: Vec<&str> = f.levels().collect();
            let tl: Vec<&str> = t.levels().collect();
            let dollar = tl[0].starts_with('$') && (fl[0] == "+" || fl[0] == "#");
            prop_assert_eq!(f.matches(&t), !dollar && reference(&fl, &tl));
        }
    }
}
