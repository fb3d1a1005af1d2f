//! The admission gate: what a new TCP connection must get past before the node reads a byte from it.
//!
//! - Per address: at most `max_per_address` connections open at once, and new ones at most at
//!   `rate_per_address` a second (a token bucket holding `burst_per_address`). A connection over either
//!   is closed at once, before any handshake, and counted as rejected.
//! - Node-wide: at most `max_pending` connections between accept and a complete CONNECT (TLS and
//!   WebSocket handshakes included), and new connections at most at `accept_rate` a second. When the
//!   slots are taken or the rate is reached the listeners stop accepting for a while: new connections
//!   wait in the kernel's backlog rather than being refused.
//!
//! Loopback addresses are exempt from the per-address limits unless `exempt_loopback` is off: local
//! tools and bridges on the node itself are trusted as the anonymous policy trusts them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Addresses tracked at most; beyond that, addresses with no open connection and a full bucket are
/// forgotten first, and new addresses are refused while none can be.
const MAX_ADDRESSES: usize = 100_000;

/// The admission limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Admission {
    /// Connections one address may hold open at once; 0: no limit.
    pub max_per_address: usize,
    /// New connections an address may open a second, on average; 0: no limit.
    pub rate_per_address: f64,
    /// New connections an address may open at once before the rate applies.
    pub burst_per_address: f64,
    /// Connections in their handshake (accepted, CONNECT not yet complete) node-wide; 0: no limit.
    pub max_pending: usize,
    /// New connections accepted a second node-wide, on average; 0: no limit.
    pub accept_rate: f64,
    /// Loopback addresses are not held to the per-address limits, nor to the accept rate.
    pub exempt_loopback: bool,
}

impl Default for Admission {
    fn default() -> Self {
        Self {
            max_per_address: 1000,
            rate_per_address: 100.0,
            burst_per_address: 500.0,
            max_pending: 4096,
            accept_rate: 0.0,
            exempt_loopback: true,
        }
    }
}

/// Why a connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Turned {
    /// The address already holds `max_per_address` connections.
    TooMany,
    /// The address opens connections faster than its rate.
    TooFast,
}

impl Turned {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Turned::TooMany => "too many connections from this address",
            Turned::TooFast => "connections from this address arrive too fast",
        }
    }
}

#[derive(Debug)]
struct Address {
    open: usize,
    tokens: f64,
    at: Instant,
}

/// The gate shared by every listener of a node.
#[derive(Debug)]
pub(crate) struct Gate {
    limits: Admission,
    addresses: Mutex<HashMap<IpAddr, Address>>,
    pending: Option<Arc<Semaphore>>,
    /// The node-wide accept rate: when the next connection may be accepted.
    next_accept: Mutex<Instant>,
}

/// An admitted connection: holds its address's slot until dropped, and its handshake slot until
/// [`Ticket::connected`].
#[derive(Debug)]
pub(crate) struct Ticket {
    gate: Option<(Arc<Gate>, IpAddr)>,
    pending: Option<OwnedSemaphorePermit>,
}

impl Ticket {
    /// The CONNECT is complete: the handshake slot goes to the next connection.
    pub(crate) fn connected(&mut self) {
        self.pending = None;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some((gate, ip)) = self.gate.take() {
            gate.release(ip);
        }
    }
}

impl Gate {
    pub(crate) fn new(limits: Admission) -> Arc<Self> {
        let pending = (limits.max_pending > 0).then(|| Arc::new(Semaphore::new(limits.max_pending)));
        Arc::new(Self {
            limits,
            addresses: Mutex::new(HashMap::new()),
            pending,
            next_accept: Mutex::new(Instant::now()),
        })
    }

    /// Waits for a handshake slot (back-pressure on the listener), then admits or turns away a
    /// connection from `ip`.
    pub(crate) async fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, Turned> {
        let pending = match &self.pending {
            // The semaphore is never closed.
            Some(s) => s.clone().acquire_owned().await.ok(),
            None => None,
        };
        let exempt = self.limits.exempt_loopback && ip.is_loopback();
        if !exempt {
            if let Some(at) = self.accept_slot(Instant::now()) {
                tokio::time::sleep_until(at.into()).await;
            }
        }
        let limited = self.limits.max_per_address > 0 || self.limits.rate_per_address > 0.0;
        if exempt || !limited {
            return Ok(Ticket { gate: None, pending });
        }
        self.take(ip, Instant::now())?;
        Ok(Ticket { gate: Some((self.clone(), ip)), pending })
    }

    /// Reserves the next accept of the node-wide rate; when it is in the future, the time to wait
    /// until (the accept loop waits, so connections queue in the kernel's backlog).
    fn accept_slot(&self, now: Instant) -> Option<Instant> {
        if self.limits.accept_rate <= 0.0 {
            return None;
        }
        let gap = Duration::from_secs_f64(1.0 / self.limits.accept_rate);
        let mut next = self.next_accept.lock().unwrap_or_else(PoisonError::into_inner);
        // No credit is saved up: a burst after a quiet time is paced too.
        let at = (*next).max(now);
        *next = at + gap;
        (at > now).then_some(at)
    }

    /// Counts a new connection of `ip` at `now`, if its limits allow it.
    fn take(&self, ip: IpAddr, now: Instant) -> Result<(), Turned> {
        let limits = &self.limits;
        let mut all = self.addresses.lock().unwrap_or_else(PoisonError::into_inner);
        if all.len() >= MAX_ADDRESSES && !all.contains_key(&ip) {
            all.retain(|_, a| a.open > 0 || refill(limits, a, now) < limits.burst_per_address);
            if all.len() >= MAX_ADDRESSES {
                return Err(Turned::TooFast);
            }
        }
        let a = all.entry(ip).or_insert(Address { open: 0, tokens: limits.burst_per_address, at: now });
        if limits.max_per_address > 0 && a.open >= limits.max_per_address {
            return Err(Turned::TooMany);
        }
        if limits.rate_per_address > 0.0 {
            let tokens = refill(limits, a, now);
            if tokens < 1.0 {
                a.tokens = tokens;
                a.at = now;
                return Err(Turned::TooFast);
            }
            a.tokens = tokens - 1.0;
            a.at = now;
        }
        a.open += 1;
        Ok(())
    }

    fn release(&self, ip: IpAddr) {
        let mut all = self.addresses.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(a) = all.get_mut(&ip) {
            a.open = a.open.saturating_sub(1);
            let idle =
                a.open == 0 && refill(&self.limits, a, Instant::now()) >= self.limits.burst_per_address;
            if idle {
                all.remove(&ip);
            }
        }
    }

    /// Connections `ip` holds open, as counted by the gate (0 for exempt addresses).
    #[cfg(test)]
    fn open(&self, ip: IpAddr) -> usize {
        self.addresses.lock().unwrap_or_else(PoisonError::into_inner).get(&ip).map_or(0, |a| a.open)
    }
}

/// The tokens of `a`'s bucket at `now`, without taking any.
fn refill(limits: &Admission, a: &Address, now: Instant) -> f64 {
    if limits.rate_per_address <= 0.0 {
        return limits.burst_per_address;
    }
    let elapsed = now.saturating_duration_since(a.at).min(Duration::from_secs(3600));
    (a.tokens + elapsed.as_secs_f64() * limits.rate_per_address).min(limits.burst_per_address)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REMOTE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));
    const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 8));

    fn limits(max: usize, rate: f64, burst: f64) -> Admission {
        Admission {
            max_per_address: max,
            rate_per_address: rate,
            burst_per_address: burst,
            max_pending: 0,
            accept_rate: 0.0,
            exempt_loopback: true,
        }
    }

    #[test]
    fn the_node_wide_accept_rate_spaces_accepts_out() {
        let gate = Gate::new(Admission { accept_rate: 10.0, ..limits(0, 0.0, 0.0) });
        let t0 = Instant::now() + Duration::from_millis(1);
        assert_eq!(gate.accept_slot(t0), None, "the first is accepted at once");
        let second = gate.accept_slot(t0).unwrap();
        assert_eq!(second.duration_since(t0), Duration::from_millis(100));
        let third = gate.accept_slot(t0).unwrap();
        assert_eq!(third.duration_since(t0), Duration::from_millis(200));
        // After a quiet second, one comes at once and the next waits a gap again.
        let later = t0 + Duration::from_secs(2);
        assert_eq!(gate.accept_slot(later), None);
        assert!(gate.accept_slot(later).is_some());
    }

    #[tokio::test]
    async fn an_address_holds_at_most_its_share_and_gets_a_slot_back_when_one_closes() {
        let gate = Gate::new(limits(2, 0.0, 0.0));
        let a = gate.admit(REMOTE).await.unwrap();
        let _b = gate.admit(REMOTE).await.unwrap();
        assert_eq!(gate.admit(REMOTE).await.unwrap_err(), Turned::TooMany);
        assert!(gate.admit(OTHER).await.is_ok(), "another address has its own share");
        drop(a);
        assert_eq!(gate.open(REMOTE), 1);
        assert!(gate.admit(REMOTE).await.is_ok());
    }

    #[test]
    fn the_rate_allows_a_burst_then_refills_with_time() {
        let gate = Gate::new(limits(0, 10.0, 3.0));
        let t0 = Instant::now();
        for _ in 0..3 {
            gate.take(REMOTE, t0).unwrap();
        }
        assert_eq!(gate.take(REMOTE, t0), Err(Turned::TooFast));
        assert_eq!(gate.take(REMOTE, t0 + Duration::from_millis(50)), Err(Turned::TooFast));
        assert_eq!(gate.take(REMOTE, t0 + Duration::from_millis(110)), Ok(()), "0.1 s refills one token");
        assert_eq!(gate.take(REMOTE, t0 + Duration::from_millis(120)), Err(Turned::TooFast));
    }

    #[tokio::test]
    async fn loopback_is_exempt_unless_configured_otherwise() {
        let gate = Gate::new(limits(1, 0.0, 0.0));
        let local = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
        let _a = gate.admit(local).await.unwrap();
        assert!(gate.admit(local).await.is_ok());
        let strict = Gate::new(Admission { exempt_loopback: false, ..limits(1, 0.0, 0.0) });
        let _b = strict.admit(local).await.unwrap();
        assert_eq!(strict.admit(local).await.unwrap_err(), Turned::TooMany);
    }

    #[tokio::test]
    async fn handshake_slots_hold_back_accepts_until_a_connect_completes() {
        let gate = Gate::new(Admission { max_pending: 1, ..limits(0, 0.0, 0.0) });
        let mut first = gate.admit(REMOTE).await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(50), gate.admit(OTHER)).await;
        assert!(waiting.is_err(), "no slot while the first connection is in its handshake");
        first.connected();
        let second = tokio::time::timeout(Duration::from_secs(1), gate.admit(OTHER)).await;
        assert!(second.is_ok_and(|t| t.is_ok()));
    }

    #[test]
    fn forgotten_addresses_keep_the_table_bounded() {
        let gate = Gate::new(limits(0, 1.0, 1.0));
        let t0 = Instant::now();
        gate.take(REMOTE, t0).unwrap();
        gate.release(REMOTE);
        // The bucket is not full yet: the address is remembered, so it cannot reconnect at once.
        assert_eq!(gate.take(REMOTE, t0), Err(Turned::TooFast));
        let later = t0 + Duration::from_secs(2);
        assert_eq!(gate.take(REMOTE, later), Ok(()));
    }
}
