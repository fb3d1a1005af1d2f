//! Node-wide counters, shared by the router and every connection.
//!
//! Plain atomics with relaxed ordering: each counter is read on its own (for `$SYS` and metrics
//! endpoints), so no ordering between them is promised.

use std::sync::atomic::{AtomicU64, Ordering};

use m2m_codec::QoS;

/// Counters and gauges of one node.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Clients connected now.
    pub connections_current: AtomicU64,
    /// Connections accepted since start (CONNACK success).
    pub connections_total: AtomicU64,
    /// Connections refused or closed for bad input, protocol errors or limits.
    pub connections_rejected: AtomicU64,
    /// PUBLISH packets received from clients, by QoS (index 0, 1, 2); [`Metrics::received_total`]
    /// adds them up.
    pub messages_received_by_qos: [AtomicU64; 3],
    /// PUBLISH packets sent to clients, by QoS; [`Metrics::sent_total`] adds them up.
    pub messages_sent_by_qos: [AtomicU64; 3],
    /// Deliveries dropped: a full queue, an expired message, QoS 0 for an offline session.
    pub messages_dropped: AtomicU64,
    /// Bytes read from clients.
    pub bytes_received: AtomicU64,
    /// Bytes written to clients.
    pub bytes_sent: AtomicU64,
    /// Malformed packets and protocol violations seen.
    pub protocol_errors: AtomicU64,
    /// QoS 1/2 publishes refused because the store could not keep them (full disk, failed store).
    pub publishes_refused: AtomicU64,
    /// CONNECTs refused for bad credentials or a disabled device.
    pub auth_failures: AtomicU64,
    /// PUBLISHes and subscription filters refused by the access rules.
    pub access_denied: AtomicU64,
}

impl Metrics {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Subtracts one from a gauge.
    pub fn dec(counter: &AtomicU64) {
        counter.fetch_sub(1, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Counts a PUBLISH received from a client with `qos` (one atomic add: the totals are sums).
    pub fn received(&self, qos: QoS) {
        Self::add(&self.messages_received_by_qos[qos as usize], 1);
    }

    /// Counts a PUBLISH sent to a client with `qos`.
    pub fn sent(&self, qos: QoS) {
        Self::add(&self.messages_sent_by_qos[qos as usize], 1);
    }

    /// PUBLISH packets received from clients, every QoS.
    pub fn received_total(&self) -> u64 {
        self.messages_received_by_qos.iter().map(Self::get).sum()
    }

    /// PUBLISH packets sent to clients, every QoS.
    pub fn sent_total(&self) -> u64 {
        self.messages_sent_by_qos.iter().map(Self::get).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_qos_counters_add_up_to_the_totals() {
        let m = Metrics::default();
        m.received(QoS::AtMostOnce);
        m.received(QoS::ExactlyOnce);
        m.received(QoS::ExactlyOnce);
        m.sent(QoS::AtLeastOnce);
        let by_qos = |c: &[AtomicU64; 3]| c.iter().map(Metrics::get).collect::<Vec<_>>();
        assert_eq!(by_qos(&m.messages_received_by_qos), [1, 0, 2]);
        assert_eq!(m.received_total(), 3);
        assert_eq!(by_qos(&m.messages_sent_by_qos), [0, 1, 0]);
        assert_eq!(m.sent_total(), 1);
    }
}
