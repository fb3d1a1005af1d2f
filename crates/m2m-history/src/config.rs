//! What the history keeps, and for how long.

use std::time::Duration;

use m2m_topic::TopicFilter;

/// How long the messages of some topics are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// The topics it applies to.
    pub filter: String,
    /// Messages older than this are deleted; `None`: no age limit.
    pub max_age: Option<Duration>,
    /// When these topics' messages take more than this on disk, the oldest are deleted; `None`: no
    /// size limit.
    pub max_bytes: Option<u64>,
}

/// What the history keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryConfig {
    /// Topic filters of the messages kept (`#` does not match `$SYS/...`: list `$SYS/#` to keep those).
    pub filters: Vec<String>,
    /// Retention of topics no entry of `retention` matches.
    pub max_age: Option<Duration>,
    /// See [`HistoryConfig::max_age`].
    pub max_bytes: Option<u64>,
    /// Retention per topic filter; the first that matches a topic applies.
    pub retention: Vec<Retention>,
    /// Messages waiting to be written at most; beyond it they are dropped and counted as a gap.
    pub queue_capacity: usize,
    /// A user property that carries the publisher's own timestamp (RFC 3339 or unix s/ms/µs).
    pub timestamp_property: Option<String>,
    /// A JSON field of the payload that carries the publisher's own timestamp (`payload.ts`).
    pub timestamp_field: Option<String>,
}

impl HistoryConfig {
    /// Default [`HistoryConfig::max_age`]: 7 days.
    pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 86_400);
    /// Default [`HistoryConfig::max_bytes`]: 1 GiB.
    pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;
    /// Default [`HistoryConfig::queue_capacity`].
    pub const DEFAULT_QUEUE: usize = 100_000;

    /// Validates the filters and the timestamp field.
    ///
    /// # Errors
    /// A message naming the bad setting.
    pub fn validate(&self) -> Result<(), String> {
        for f in self.filters.iter().chain(self.retention.iter().map(|r| &r.filter)) {
            TopicFilter::try_from(f.as_str()).map_err(|e| format!("history filter {f:?}: {e}"))?;
        }
        if let Some(f) = &self.timestamp_field {
            crate::FieldPath::parse(f)?;
        }
        if self.queue_capacity == 0 {
            return Err("history queue capacity must be at least 1".into());
        }
        Ok(())
    }
}

impl Default for HistoryConfig {
    /// Every topic but `$SYS`, kept 7 days and within 1 GiB.
    fn default() -> Self {
        Self {
            filters: vec!["#".into()],
            max_age: Some(Self::DEFAULT_MAX_AGE),
            max_bytes: Some(Self::DEFAULT_MAX_BYTES),
            retention: Vec::new(),
            queue_capacity: Self::DEFAULT_QUEUE,
            timestamp_property: None,
            timestamp_field: None,
        }
    }
}
