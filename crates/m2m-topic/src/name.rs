//! [`TopicName`]: the topic of a PUBLISH.

use std::sync::Arc;

use crate::limits::{check_name, Limits};
use crate::TopicError;

/// A topic name: the topic a PUBLISH is sent to (MQTT 5.0 §4.7, 3.1.1 §4.7).
///
/// Invariants, checked at construction: 1 to 65 535 bytes of UTF-8 (or fewer under [`Limits`]),
/// no U+0000, no `+` or `#`. Levels may be empty: `"a//b"`, `"/a"` and `"/"` are valid. Comparison is
/// exact and case sensitive. Cloning is cheap (a shared `Arc<str>`).
///
/// ```
/// use m2m_topic::TopicName;
///
/// let topic = TopicName::try_from("sensors/kitchen/temp")?;
/// assert_eq!(topic.levels().collect::<Vec<_>>(), ["sensors", "kitchen", "temp"]);
/// assert!(TopicName::try_from("sensors/+/temp").is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(Arc<str>);

impl TopicName {
    /// Validates `s` under the protocol rules and the broker's extra `limits`.
    ///
    /// # Errors
    /// [`TopicError::Empty`], [`TopicError::TooLong`], [`TopicError::TooManyLevels`],
    /// [`TopicError::NulCharacter`] or [`TopicError::WildcardInTopicName`].
    pub fn parse_with(s: &str, limits: &Limits) -> Result<Self, TopicError> {
        check_name(s, limits)?;
        Ok(Self(Arc::from(s)))
    }

    /// Like [`TopicName::parse_with`], keeping the given allocation (as decoded by the codec).
    ///
    /// # Errors
    /// As [`TopicName::parse_with`].
    pub fn parse_arc_with(s: Arc<str>, limits: &Limits) -> Result<Self, TopicError> {
        check_name(&s, limits)?;
        Ok(Self(s))
    }

    /// The topic as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared string, for callers that keep it without copying.
    pub fn as_arc(&self) -> &Arc<str> {
        &self.0
    }

    /// Turns the name back into its shared string.
    pub fn into_arc(self) -> Arc<str> {
        self.0
    }

    /// The levels between `/` separators, in order; empty levels included.
    pub fn levels(&self) -> std::str::Split<'_, char> {
        self.0.split('/')
    }

    /// Whether the name starts with `$` (such as `$SYS/...`): wildcard filters whose first level is
    /// `+` or `#` do not match it (MQTT 5.0 §4.7.2).
    pub fn is_system(&self) -> bool {
        self.0.starts_with('$')
    }

    /// Whether the name is in the node's own `$SYS` tree (`$SYS` or `$SYS/...`), which clients may
    /// not publish to; other `$` names (such as `$app/x`) belong to clients.
    pub fn is_sys(&self) -> bool {
        &*self.0 == "$SYS" || self.0.starts_with("$SYS/")
    }
}

impl TryFrom<&str> for TopicName {
    type Error = TopicError;

    fn try_from(s: &str) -> Result<Self, TopicError> {
        Self::parse_with(s, &Limits::PROTOCOL)
    }
}

impl TryFrom<Arc<str>> for TopicName {
    type Error = TopicError;

    fn try_from(s: Arc<str>) -> Result<Self, TopicError> {
        Self::parse_arc_with(s, &Limits::PROTOCOL)
    }
}

impl TryFrom<String> for TopicName {
    type Error = TopicError;

    fn try_from(s: String) -> Result<Self, TopicError> {
        Self::parse_arc_with(Arc::from(s), &Limits::PROTOCOL)
    }
}

crate::str_newtype_impls!(TopicName);

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Result<TopicName, TopicError> {
        TopicName::try_from(s)
    }

    #[test]
    fn names_from_the_spec_examples_are_valid() {
        for s in
            ["sport/tennis/player1", "/finance", "finance", "/", "a//b", "//", "Accounts payable", "$SYS/x"]
        {
            assert_eq!(name(s).map(|n| n.to_string()), Ok(s.to_owned()), "{s:?}");
        }
    }

    #[test]
    fn an_empty_name_is_rejected() {
        assert_eq!(name(""), Err(TopicError::Empty));
    }

    #[test]
    fn names_with_wildcards_are_rejected() {
        for s in ["sport/+", "sport/#", "#", "+", "a+b", "a#b"] {
            assert_eq!(name(s), Err(TopicError::WildcardInTopicName), "{s:?}");
        }
    }

    #[test]
    fn a_name_with_a_null_character_is_rejected() {
        assert_eq!(name("a/\0/b"), Err(TopicError::NulCharacter));
    }

    #[test]
    fn a_name_of_exactly_65535_bytes_is_valid_and_one_more_is_too_long() {
        assert!(name(&"a".repeat(65_535)).is_ok());
        assert_eq!(name(&"a".repeat(65_536)), Err(TopicError::TooLong { len: 65_536, max: 65_535 }));
    }

    #[test]
    fn names_are_case_sensitive_and_a_leading_slash_is_significant() {
        assert_ne!(name("ACCOUNTS").unwrap(), name("Accounts").unwrap());
        assert_ne!(name("/finance").unwrap(), name("finance").unwrap());
    }

    #[test]
    fn limits_reject_too_many_levels_and_too_many_bytes() {
        let limits = Limits { max_levels: 3, max_len: 10 };
        assert!(TopicName::parse_with("a/b/c", &limits).is_ok());
        assert_eq!(
            TopicName::parse_with("a/b/c/d", &limits),
            Err(TopicError::TooManyLevels { levels: 4, max: 3 })
        );
        assert_eq!(
            TopicName::parse_with("abcdefghijk", &limits),
            Err(TopicError::TooLong { len: 11, max: 10 })
        );
    }

    #[test]
    fn a_name_from_an_arc_keeps_the_same_allocation() {
        let arc: Arc<str> = Arc::from("a/b");
        let topic = TopicName::try_from(Arc::clone(&arc)).unwrap();
        assert!(Arc::ptr_eq(topic.as_arc(), &arc));
    }

    #[test]
    fn levels_include_empty_levels() {
        assert_eq!(name("/a//b/").unwrap().levels().collect::<Vec<_>>(), ["", "a", "", "b", ""]);
    }

    #[test]
    fn only_the_sys_tree_is_the_nodes_own() {
        for s in ["$SYS", "$SYS/broker/uptime"] {
            assert!(name(s).unwrap().is_sys(), "{s:?}");
        }
        for s in ["$app/x", "$SYSTEM/x", "SYS/x", "a/$SYS"] {
            assert!(!name(s).unwrap().is_sys(), "{s:?}");
        }
    }

    #[test]
    fn error_messages_are_lowercase() {
        assert_eq!(TopicError::WildcardInTopicName.to_string(), "topic name contains a wildcard character");
    }
}
