//! Size limits and the validation scans shared by names and filters.

use crate::TopicError;

/// The protocol maximum length of a topic name or filter in bytes: a UTF-8 string's length prefix is
/// a two-byte integer (MQTT 5.0 §1.5.4).
pub const MAX_TOPIC_LEN: usize = 65_535;

/// Extra limits a broker applies to topic names and filters, on top of the protocol's rules.
///
/// The protocol maximum of [`MAX_TOPIC_LEN`] bytes always applies, whatever `max_len` says.
/// [`Limits::default`] imposes nothing beyond the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limits {
    /// Maximum number of levels (one more than the number of `/`).
    pub max_levels: usize,
    /// Maximum length in bytes.
    pub max_len: usize,
}

impl Limits {
    /// Only the protocol's own limits: [`MAX_TOPIC_LEN`] bytes and any number of levels.
    pub const PROTOCOL: Self = Self { max_levels: usize::MAX, max_len: MAX_TOPIC_LEN };
}

impl Default for Limits {
    fn default() -> Self {
        Self::PROTOCOL
    }
}

/// Checks emptiness and length against both the protocol maximum and `limits`.
fn check_len(s: &str, limits: &Limits) -> Result<(), TopicError> {
    let len = s.len();
    if len == 0 {
        return Err(TopicError::Empty);
    }
    let max = limits.max_len.min(MAX_TOPIC_LEN);
    if len > max {
        return Err(TopicError::TooLong { len, max });
    }
    Ok(())
}

fn check_levels(levels: usize, limits: &Limits) -> Result<(), TopicError> {
    if levels > limits.max_levels {
        return Err(TopicError::TooManyLevels { levels, max: limits.max_levels });
    }
    Ok(())
}

/// Validates a topic name (MQTT 5.0 §4.7.3, §4.7.1): non-empty, no U+0000, no `+` or `#`.
pub(crate) fn check_name(s: &str, limits: &Limits) -> Result<(), TopicError> {
    check_len(s, limits)?;
    // `\0`, `/`, `+` and `#` are ASCII, so they never occur inside a multi-byte UTF-8 sequence and a
    // byte scan is exact.
    let mut levels = 1;
    for &b in s.as_bytes() {
        match b {
            0 => return Err(TopicError::NulCharacter),
            b'+' | b'#' => return Err(TopicError::WildcardInTopicName),
            b'/' => levels += 1,
            _ => {}
        }
    }
    check_levels(levels, limits)
}

/// Validates a topic filter (MQTT 5.0 §4.7.1): non-empty, no U+0000, `+` only as a whole level and
/// `#` only as the whole last level.
pub(crate) fn check_filter(s: &str, limits: &Limits) -> Result<(), TopicError> {
    check_len(s, limits)?;
    let bytes = s.as_bytes();
    let starts_level = |i: usize| i == 0 || bytes[i - 1] == b'/';
    let mut levels = 1;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            0 => return Err(TopicError::NulCharacter),
            b'/' => levels += 1,
            b'+' if !(starts_level(i) && bytes.get(i + 1).is_none_or(|&next| next == b'/')) => {
                return Err(TopicError::InvalidWildcard);
            }
            b'#' if !(starts_level(i) && i + 1 == bytes.len()) => return Err(TopicError::InvalidWildcard),
            _ => {}
        }
    }
    check_levels(levels, limits)
}

/// Splits off the first level: `"a/b/c"` gives `("a", Some("b/c"))`, `"a"` gives `("a", None)`.
#[inline]
pub(crate) fn split_level(s: &str) -> (&str, Option<&str>) {
    match s.split_once('/') {
        Some((level, rest)) => (level, Some(rest)),
        None => (s, None),
    }
}
