//! The node's memory budget: bytes of messages waiting in the queues between the parts of a node
//! (connections' mailboxes, the history's write queue), charged when a message enters one and released
//! when it leaves; and the bytes of a large packet (over 64 KiB) being read, as they arrive.
//!
//! What happens at the limit is each part's choice, and always a defined, counted outcome: a QoS 0
//! delivery is dropped (`messages_dropped`), the history records a gap, a connection reading a large
//! packet is ended (DISCONNECT 0x97; the packet was not acknowledged, so a QoS 1/2 one is sent again).
//! QoS 1/2 deliveries are charged but never refused for the budget: each session bounds them
//! (`max_queued`) and holds back their publishers instead.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Bytes a message costs besides its payload and topic: the message, the delivery and the queue slot.
pub const MESSAGE_OVERHEAD: usize = 256;

/// The memory budget shared by the queues of one node.
#[derive(Debug, Default)]
pub struct MemoryBudget {
    /// 0: no limit (only counted).
    limit: usize,
    used: AtomicUsize,
    refused: AtomicU64,
}

impl MemoryBudget {
    /// A budget of `limit` bytes; 0 counts without limiting.
    pub fn new(limit: usize) -> Self {
        Self { limit, used: AtomicUsize::new(0), refused: AtomicU64::new(0) }
    }

    /// Charges `bytes` if they fit in what is left; `false` (counted as refused) if they do not.
    pub fn try_charge(&self, bytes: usize) -> bool {
        let before = self.used.fetch_add(bytes, Ordering::Relaxed);
        if self.limit > 0 && before.saturating_add(bytes) > self.limit {
            self.used.fetch_sub(bytes, Ordering::Relaxed);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Charges `bytes` whether or not they fit (what must not be refused still counts).
    pub fn charge(&self, bytes: usize) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Gives back `bytes` charged before.
    pub fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The limit in bytes (0: none).
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Charges refused since the start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_fit_until_the_limit_then_are_refused_and_counted_until_bytes_are_released() {
        let budget = MemoryBudget::new(100);
        assert!(budget.try_charge(60));
        assert!(!budget.try_charge(41), "61 + 41 > 100");
        assert_eq!((budget.used(), budget.refused()), (60, 1));
        assert!(budget.try_charge(40), "exactly the limit fits");
        budget.charge(10);
        assert_eq!(budget.used(), 110, "a forced charge may go over");
        assert!(!budget.try_charge(1));
        budget.release(110);
        assert!(budget.try_charge(100));
    }

    #[test]
    fn a_budget_of_zero_only_counts() {
        let budget = MemoryBudget::new(0);
        assert!(budget.try_charge(usize::MAX / 2));
        assert_eq!(budget.used(), usize::MAX / 2);
        assert_eq!(budget.refused(), 0);
    }
}
