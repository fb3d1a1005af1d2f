//! The one error type of this crate: why a rule could not be built or parsed.

use m2m_topic::TopicError;

/// Why a string is not a valid [`Rule`](crate::Rule), [`RuleFilter`](crate::RuleFilter),
/// [`Permission`](crate::Permission) or [`Action`](crate::Action).
///
/// The message names the offending text; for [`AccessError::InvalidFilter`] the reason the filter is
/// invalid is the [`source`](std::error::Error::source) (print the chain, e.g. `{err:#}` with anyhow).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    /// The rule line is empty or only whitespace.
    #[error("rule is empty; expected `<allow|deny> <publish|subscribe|both> <topic filter>`")]
    EmptyRule,
    /// The first word is neither `allow` nor `deny`.
    #[error("unknown permission {0:?}; expected `allow` or `deny`")]
    UnknownPermission(String),
    /// The second word is not one of the action names.
    #[error("unknown action {0:?}; expected `publish`, `subscribe` or `both` (or `pub`, `sub`, `all`)")]
    UnknownAction(String),
    /// The rule has a permission but no action or no topic filter after it.
    #[error("rule {0:?} is incomplete; expected `<allow|deny> <publish|subscribe|both> <topic filter>`")]
    Incomplete(String),
    /// The filter is not a valid MQTT topic filter (with `%c` and `%u` taken as literal text).
    #[error("invalid topic filter {filter:?}")]
    InvalidFilter {
        /// The rejected filter.
        filter: String,
        /// What is wrong with it.
        #[source]
        source: TopicError,
    },
    /// The filter starts with `$share/`: rules name topics, and a shared subscription
    /// `$share/{group}/{filter}` is checked on its `{filter}`, so such a rule would never apply.
    #[error(
        "rule filter {0:?} names a shared subscription; write the filter after `$share/<group>/` instead"
    )]
    SharedSubscription(String),
    /// The filter starts or ends with whitespace, which the one-line rule form cannot express.
    #[error("rule filter {0:?} starts or ends with whitespace")]
    EdgeWhitespace(String),
}
