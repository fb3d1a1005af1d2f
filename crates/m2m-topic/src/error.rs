//! The one error type of this crate.

/// Why a string is not a valid topic name, topic filter or shared subscription.
///
/// A broker answers a bad PUBLISH topic with reason code 0x90 (Topic Name invalid) and a bad
/// SUBSCRIBE/UNSUBSCRIBE filter with 0x8F (Topic Filter invalid); [`TopicError::TooManyLevels`] and
/// [`TopicError::TooLong`] beyond the protocol maximum come from the broker's own [`Limits`](crate::Limits).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// The string is empty; MQTT requires at least one character (MQTT 5.0 §4.7.3).
    #[error("topic is empty")]
    Empty,
    /// The string is longer than the protocol maximum (65 535 bytes) or the configured limit.
    #[error("topic of {len} bytes exceeds the {max}-byte limit")]
    TooLong {
        /// Length of the rejected string in bytes.
        len: usize,
        /// The limit that was exceeded.
        max: usize,
    },
    /// The string has more levels than the configured limit.
    #[error("topic has {levels} levels, more than the limit of {max}")]
    TooManyLevels {
        /// Number of levels of the rejected string.
        levels: usize,
        /// The configured limit.
        max: usize,
    },
    /// The string contains U+0000, which MQTT strings must not contain (MQTT 5.0 §1.5.4).
    #[error("topic contains the null character")]
    NulCharacter,
    /// A topic name contains `+` or `#`, which only topic filters may contain (MQTT 5.0 §4.7.1).
    #[error("topic name contains a wildcard character")]
    WildcardInTopicName,
    /// A `+` or `#` in a filter is not a whole level, or `#` is not the last level (MQTT 5.0 §4.7.1).
    #[error("wildcard does not occupy a whole level or '#' is not the last level")]
    InvalidWildcard,
    /// The ShareName of `$share/{ShareName}/{filter}` is empty or contains `+` or `#` (MQTT 5.0 §4.8.2).
    #[error("shared subscription group name is empty or contains a wildcard")]
    InvalidSharedGroup,
    /// `$share/{ShareName}` is not followed by `/` and a non-empty topic filter (MQTT 5.0 §4.8.2).
    #[error("shared subscription has no topic filter after the group name")]
    MissingSharedFilter,
}
