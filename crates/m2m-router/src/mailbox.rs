//! The queue of deliveries from the router to one connection.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use m2m_codec::{Packet, QoS};
use m2m_session::{Delivery, MemoryBudget};
use tokio::sync::Notify;

/// A bounded queue with one producer (the router) and one consumer (the connection).
///
/// Lighter than a channel for a connection that is mostly idle: an empty mailbox holds no buffer, and
/// the consumer takes a whole batch with one lock.
///
/// Besides deliveries it carries packets that are ready to send as they are: acknowledgements that
/// waited for the store to make a message durable. Those are few (bounded by the client's inflight
/// window) and never refused for lack of room.
#[derive(Debug)]
pub struct Mailbox {
    /// A std mutex: held only to push one item or to take a batch, never across an `.await`.
    queue: Mutex<Queues>,
    capacity: usize,
    ready: Notify,
    closed: AtomicBool,
    /// The node's memory budget, charged with every delivery waiting here.
    budget: Option<Arc<MemoryBudget>>,
}

/// Why [`Mailbox::try_push`] gave the delivery back.
#[derive(Debug)]
pub enum PushError {
    /// The mailbox holds `capacity` deliveries, or (QoS 0 only) the node's memory budget is spent.
    Full(Delivery),
    /// The connection is ending.
    Closed(Delivery),
}

#[derive(Debug, Default)]
struct Queues {
    deliveries: VecDeque<Delivery>,
    packets: Vec<Packet>,
    /// Bytes of `deliveries` charged to the budget.
    charged: usize,
}

impl Mailbox {
    /// An empty mailbox holding at most `capacity` deliveries.
    pub fn new(capacity: usize) -> Self {
        Self::with_budget(capacity, None)
    }

    /// An empty mailbox holding at most `capacity` deliveries, each charged to `budget` while it
    /// waits; a QoS 0 delivery that does not fit in the budget is refused as if the mailbox were full.
    pub fn with_budget(capacity: usize, budget: Option<Arc<MemoryBudget>>) -> Self {
        Self {
            queue: Mutex::new(Queues::default()),
            capacity: capacity.max(1),
            ready: Notify::new(),
            closed: AtomicBool::new(false),
            budget,
        }
    }

    /// Gives back the budget of the deliveries taken out.
    fn release(&self, queue: &mut Queues, taken: &VecDeque<Delivery>) {
        if let Some(budget) = &self.budget {
            let bytes = if queue.deliveries.is_empty() {
                queue.charged
            } else {
                taken.iter().map(|d| d.message.held_bytes()).sum::<usize>().min(queue.charged)
            };
            queue.charged -= bytes;
            budget.release(bytes);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queues> {
        // A panic while holding the lock cannot leave the queue half-changed (push and take are
        // single calls), so a poisoned lock is still usable.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a delivery unless the mailbox is full or closed.
    ///
    /// # Errors
    /// The delivery back, with the reason.
    pub fn try_push(&self, delivery: Delivery) -> Result<(), PushError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(PushError::Closed(delivery));
        }
        let mut queue = self.lock();
        if queue.deliveries.len() >= self.capacity {
            return Err(PushError::Full(delivery));
        }
        if let Some(budget) = &self.budget {
            let bytes = delivery.message.held_bytes();
            if delivery.qos == QoS::AtMostOnce {
                if !budget.try_charge(bytes) {
                    return Err(PushError::Full(delivery));
                }
            } else {
                budget.charge(bytes);
            }
            queue.charged += bytes;
        }
        let was_empty = queue.deliveries.is_empty();
        queue.deliveries.push_back(delivery);
        drop(queue);
        if was_empty {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Adds a packet to send as it is, whatever the number of deliveries waiting; `false` when the
    /// connection is ending (the client gets it again from its session on reconnect, if at all).
    pub fn push_packet(&self, packet: Packet) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        self.lock().packets.push(packet);
        self.ready.notify_one();
        true
    }

    /// Waits until a packet waits, or a delivery does and `deliveries` (the consumer has room) is set.
    ///
    /// # Cancel safety
    /// Cancel safe: a wake-up that is not awaited stays stored for the next call.
    pub async fn ready(&self, deliveries: bool) {
        loop {
            {
                let queue = self.lock();
                if !queue.packets.is_empty() || (deliveries && !queue.deliveries.is_empty()) {
                    return;
                }
            }
            self.ready.notified().await;
        }
    }

    /// Takes the packets waiting, oldest first.
    pub fn take_packets(&self) -> Vec<Packet> {
        let mut queue = self.lock();
        if queue.packets.is_empty() {
            return Vec::new();
        }
        std::mem::take(&mut queue.packets)
    }

    /// Takes up to `max` deliveries, oldest first.
    pub fn take(&self, max: usize) -> VecDeque<Delivery> {
        let mut queue = self.lock();
        let taken = if queue.deliveries.len() <= max {
            std::mem::take(&mut queue.deliveries)
        } else {
            queue.deliveries.drain(..max).collect()
        };
        self.release(&mut queue, &taken);
        taken
    }

    /// Deliveries waiting.
    pub fn len(&self) -> usize {
        self.lock().deliveries.len()
    }

    /// Whether no delivery is waiting.
    pub fn is_empty(&self) -> bool {
        self.lock().deliveries.is_empty()
    }

    /// Whether the connection has closed the mailbox.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Closes the mailbox and takes what is left; later pushes fail with [`PushError::Closed`].
    pub fn close(&self) -> VecDeque<Delivery> {
        self.closed.store(true, Ordering::Release);
        let mut queue = self.lock();
        let taken = std::mem::take(&mut queue.deliveries);
        self.release(&mut queue, &taken);
        taken
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.release(self.lock().charged);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use m2m_codec::QoS;
    use m2m_session::Message;
    use m2m_topic::TopicName;

    use super::*;

    fn delivery(n: u8) -> Delivery {
        let message =
            Message::new(TopicName::try_from("t").unwrap(), Bytes::from(vec![n]), QoS::AtLeastOnce, false);
        Delivery {
            message: Arc::new(message),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![],
            stored: None,
        }
    }

    #[test]
    fn a_full_mailbox_gives_the_delivery_back_and_keeps_order() {
        let m = Mailbox::new(2);
        m.try_push(delivery(1)).unwrap();
        m.try_push(delivery(2)).unwrap();
        assert!(matches!(m.try_push(delivery(3)), Err(PushError::Full(d)) if d.message.payload[0] == 3));
        let first = m.take(1);
        assert_eq!(first[0].message.payload[0], 1);
        let rest = m.take(10);
        assert_eq!(rest.iter().map(|d| d.message.payload[0]).collect::<Vec<_>>(), [2]);
        assert!(m.is_empty());
    }

    #[test]
    fn the_budget_refuses_qos0_deliveries_but_charges_and_keeps_qos1_ones() {
        let size = delivery(1).message.held_bytes();
        let budget = Arc::new(MemoryBudget::new(2 * size));
        let m = Mailbox::with_budget(10, Some(budget.clone()));
        let qos0 = |n| Delivery { qos: QoS::AtMostOnce, ..delivery(n) };
        m.try_push(qos0(1)).unwrap();
        m.try_push(qos0(2)).unwrap();
        assert!(matches!(m.try_push(qos0(3)), Err(PushError::Full(_))), "the budget is spent");
        m.try_push(delivery(4)).unwrap();
        assert_eq!(budget.used(), 3 * size, "QoS 1 is charged even over the budget");
        assert_eq!(m.take(1).len(), 1);
        assert_eq!(budget.used(), 2 * size);
        assert!(matches!(m.try_push(qos0(5)), Err(PushError::Full(_))));
        assert_eq!(m.take(10).len(), 2);
        assert_eq!(budget.used(), 0);
        m.try_push(qos0(6)).unwrap();
        m.try_push(delivery(7)).unwrap();
        assert_eq!(m.close().len(), 2);
        assert_eq!(budget.used(), 0, "closing gives everything back");
        let kept = Mailbox::with_budget(10, Some(budget.clone()));
        kept.try_push(delivery(8)).unwrap();
        drop(kept);
        assert_eq!(budget.used(), 0, "dropping gives everything back");
        assert_eq!(budget.refused(), 2);
    }

    #[test]
    fn a_closed_mailbox_refuses_pushes_and_returns_what_was_left() {
        let m = Mailbox::new(4);
        m.try_push(delivery(1)).unwrap();
        assert_eq!(m.close().len(), 1);
        assert!(m.is_closed());
        assert!(matches!(m.try_push(delivery(2)), Err(PushError::Closed(_))));
    }

    #[tokio::test]
    async fn ready_wakes_for_a_push_made_before_or_while_waiting() {
        let m = Arc::new(Mailbox::new(4));
        m.try_push(delivery(1)).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(1), m.ready(true)).await.unwrap();
        m.take(10);
        let waiter = tokio::spawn({
            let m = m.clone();
            async move { m.ready(true).await }
        });
        tokio::task::yield_now().await;
        m.try_push(delivery(2)).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn packets_wake_the_consumer_even_when_it_has_no_room_for_deliveries() {
        let m = Arc::new(Mailbox::new(1));
        m.try_push(delivery(1)).unwrap();
        let waiter = tokio::spawn({
            let m = m.clone();
            async move { m.ready(false).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "a delivery alone must not wake a consumer without room");
        assert!(m.push_packet(m2m_codec::Packet::PingResp));
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter).await.unwrap().unwrap();
        assert_eq!(m.take_packets(), vec![m2m_codec::Packet::PingResp]);
        assert_eq!(m.len(), 1, "deliveries are not refused for packets, nor taken with them");
        m.close();
        assert!(!m.push_packet(m2m_codec::Packet::PingResp));
    }
}
