//! The topic filters this node's sessions subscribe to, for the mesh: it asks other nodes for what
//! matches them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use m2m_topic::Subscription;
use tokio::sync::Notify;

/// Every filter with at least one subscriber on this node (shared subscriptions count by their
/// filter), `$` filters left out. The router updates it as subscriptions come and go; the lock is
/// taken only then, never on the message path.
#[derive(Debug, Default)]
pub struct Interest {
    counts: Mutex<HashMap<String, usize>>,
    changed: Notify,
    version: AtomicU64,
}

impl Interest {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a filter that is wanted whether or not a session subscribes to it (an uplink's routes),
    /// for as long as the node runs.
    pub fn add_filter(&self, filter: &str) {
        if let Ok(f) = m2m_topic::TopicFilter::try_from(filter) {
            self.add(&Subscription::Plain(f));
        }
    }

    /// A subscriber was added.
    pub(crate) fn add(&self, sub: &Subscription) {
        let Some(filter) = filter_of(sub) else { return };
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let n = counts.entry(filter.to_owned()).or_insert(0);
        *n += 1;
        if *n == 1 {
            drop(counts);
            self.bump();
        }
    }

    /// A subscriber was removed.
    pub(crate) fn remove(&self, sub: &Subscription) {
        let Some(filter) = filter_of(sub) else { return };
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(n) = counts.get_mut(filter) else { return };
        *n -= 1;
        if *n == 0 {
            counts.remove(filter);
            drop(counts);
            self.bump();
        }
    }

    fn bump(&self) {
        self.version.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_one();
    }

    /// The filters now, sorted, and the version they are of.
    pub fn snapshot(&self) -> (u64, Vec<String>) {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let version = self.version.load(Ordering::Acquire);
        let mut filters: Vec<String> = counts.keys().cloned().collect();
        drop(counts);
        filters.sort_unstable();
        (version, filters)
    }

    /// Waits until the set changes (returns at once if it changed since the last wait).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

fn filter_of(sub: &Subscription) -> Option<&str> {
    let filter = match sub {
        Subscription::Plain(f) => f.as_str(),
        Subscription::Shared(s) => s.filter.as_str(),
    };
    (!filter.starts_with('$')).then_some(filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(s: &str) -> Subscription {
        Subscription::try_from(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn a_filter_is_in_the_set_while_it_has_a_subscriber() {
        let interest = Interest::new();
        interest.add(&sub("a/+"));
        interest.add(&sub("$share/g/a/+"));
        interest.add(&sub("$SYS/#"));
        interest.add(&sub("b/#"));
        let (v1, filters) = interest.snapshot();
        assert_eq!(filters, ["a/+", "b/#"]);
        interest.remove(&sub("a/+"));
        assert_eq!(
            interest.snapshot(),
            (v1, vec!["a/+".to_owned(), "b/#".to_owned()]),
            "the shared one stays"
        );
        interest.remove(&sub("$share/g/a/+"));
        interest.remove(&sub("never/added"));
        let (v2, filters) = interest.snapshot();
        assert_eq!(filters, ["b/#"]);
        assert!(v2 > v1);
    }
}
