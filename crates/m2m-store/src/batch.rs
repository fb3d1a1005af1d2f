//! A batch of writes, committed atomically.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fjall::PersistMode;
use m2m_session::{Delivery, Message};

use crate::encoding::{
    client_prefix, encode_delivery, encode_flight, encode_incoming, encode_retained, encode_session,
    encode_will, incoming_key, seq_key, Clock,
};
use crate::engine::{Engine, Ks, META_ALIVE_AT};
use crate::error::StoreError;
use crate::record::{Phase, SessionRecord, WillRecord};
use crate::store::Shared;
use crate::table::Table;
use crate::unix_ms;

/// Sealed (full, not yet flushed) memtables in a keyspace at which a commit waits for the flushes.
///
/// The engine itself halts writers at 4, in a sleep loop that never ends if the flush failed; waiting
/// here first, one below, lets a commit give up with [`StoreError::Unavailable`] when the store fails.
const FLUSH_BACKLOG: usize = 3;

/// One write, in the order the caller made it.
enum Op {
    Put(Ks, Vec<u8>, Vec<u8>),
    Remove(Ks, Vec<u8>),
    /// Removes every key starting with the prefix, as found at commit.
    RemovePrefix(Ks, Vec<u8>),
}

/// Writes collected by the caller and committed together, atomically: after a crash either all of
/// them are there or none.
///
/// Within a batch, later writes to a key win over earlier ones, as if they had been committed one
/// after the other.
pub struct Batch {
    shared: Arc<Shared>,
    ops: Vec<Op>,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch").field("len", &self.ops.len()).finish()
    }
}

fn clock(now: Instant) -> Clock {
    Clock { now, wall_ms: unix_ms(SystemTime::now()) }
}

impl Batch {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared, ops: Vec::new() }
    }

    /// Stores (or replaces) the session of `record.client_id`.
    pub fn put_session(&mut self, record: &SessionRecord) {
        self.ops.push(Op::Put(Ks::Sessions, record.client_id.as_bytes().to_vec(), encode_session(record)));
    }

    /// Removes the session and everything of that client: deliveries, flight states, incoming ids and
    /// will.
    pub fn remove_session(&mut self, client_id: &str) {
        let prefix = client_prefix(client_id);
        self.ops.push(Op::Remove(Ks::Sessions, client_id.as_bytes().to_vec()));
        self.ops.push(Op::Remove(Ks::Wills, client_id.as_bytes().to_vec()));
        self.ops.push(Op::RemovePrefix(Ks::Deliveries, prefix.clone()));
        self.ops.push(Op::RemovePrefix(Ks::Flight, prefix.clone()));
        self.ops.push(Op::RemovePrefix(Ks::Incoming, prefix));
    }

    /// Stores one delivery of a session under `(client_id, seq)`.
    ///
    /// `now` pairs the message's `Instant`-based `expires_at` with the wall clock: the expiry is
    /// stored as unix milliseconds. `delivery.stored` is not stored (`seq` is).
    pub fn put_delivery(&mut self, client_id: &str, seq: u64, delivery: &Delivery, now: Instant) {
        self.ops.push(Op::Put(
            Ks::Deliveries,
            seq_key(client_id, seq),
            encode_delivery(delivery, clock(now)),
        ));
    }

    /// Records that the delivery `(client_id, seq)` is in flight with `packet_id`, at `phase`.
    pub fn set_flight(&mut self, client_id: &str, seq: u64, packet_id: u16, phase: Phase) {
        self.ops.push(Op::Put(Ks::Flight, seq_key(client_id, seq), encode_flight(packet_id, phase)));
    }

    /// Removes the delivery `(client_id, seq)` and its flight state.
    pub fn remove_delivery(&mut self, client_id: &str, seq: u64) {
        let key = seq_key(client_id, seq);
        self.ops.push(Op::Remove(Ks::Deliveries, key.clone()));
        self.ops.push(Op::Remove(Ks::Flight, key));
    }

    /// Records an incoming QoS 2 packet id, received and not yet released.
    pub fn put_incoming(&mut self, client_id: &str, packet_id: u16) {
        self.ops.push(Op::Put(Ks::Incoming, incoming_key(client_id, packet_id), encode_incoming()));
    }

    /// Forgets an incoming QoS 2 packet id (PUBREL received).
    pub fn remove_incoming(&mut self, client_id: &str, packet_id: u16) {
        self.ops.push(Op::Remove(Ks::Incoming, incoming_key(client_id, packet_id)));
    }

    /// Stores (or replaces) the retained message of `message.topic`; see [`Batch::put_delivery`] for
    /// `now`.
    pub fn put_retained(&mut self, message: &Message, now: Instant) {
        let topic = message.topic.as_str().as_bytes().to_vec();
        self.ops.push(Op::Put(Ks::Retained, topic, encode_retained(message, clock(now))));
    }

    /// Removes the retained message of `topic`.
    pub fn remove_retained(&mut self, topic: &str) {
        self.ops.push(Op::Remove(Ks::Retained, topic.as_bytes().to_vec()));
    }

    /// Stores (or replaces) the will of `client_id`; see [`Batch::put_delivery`] for `now`.
    pub fn put_will(&mut self, client_id: &str, will: &WillRecord, now: Instant) {
        self.ops.push(Op::Put(Ks::Wills, client_id.as_bytes().to_vec(), encode_will(will, clock(now))));
    }

    /// Removes the will of `client_id`.
    pub fn remove_will(&mut self, client_id: &str) {
        self.ops.push(Op::Remove(Ks::Wills, client_id.as_bytes().to_vec()));
    }

    /// Stores (or replaces) the record `key` of `table`.
    pub fn put_record(&mut self, table: Table, key: &[u8], value: Vec<u8>) {
        self.ops.push(Op::Put(table.ks(), key.to_vec(), value));
    }

    /// Removes the record `key` of `table`.
    pub fn remove_record(&mut self, table: Table, key: &[u8]) {
        self.ops.push(Op::Remove(table.ks(), key.to_vec()));
    }

    /// Records that the node was alive at `unix_ms` (a heartbeat, written every few seconds).
    pub fn set_alive(&mut self, unix_ms: u64) {
        self.ops.push(Op::Put(Ks::Meta, META_ALIVE_AT.to_vec(), unix_ms.to_be_bytes().to_vec()));
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The number of writes added (a removal of a session or a delivery counts as several).
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Writes the batch atomically to the journal (handed to the OS, not fsynced: see
    /// [`Store::on_durable`](crate::Store::on_durable)).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`], without writing, when the store is unhealthy; the write error
    /// (e.g. [`StoreError::Io`] for a full disk), which makes the store unhealthy.
    pub fn commit(self) -> Result<(), StoreError> {
        if self.ops.is_empty() {
            return Ok(());
        }
        let shared = self.shared;
        if !shared.is_healthy() {
            return Err(StoreError::Unavailable);
        }
        let engine = shared.engine().ok_or(StoreError::Unavailable)?;
        wait_for_flushes(&shared, &engine, &self.ops)?;
        let writes = resolve(&engine, self.ops)?;
        let mut batch = engine.db.batch();
        let (mut delta, mut puts, mut bytes) = (0i64, 0u64, 0u64);
        for (ks, key, value) in writes {
            if ks == Ks::Deliveries {
                match &value {
                    Some(v) => {
                        delta += 1;
                        puts += 1;
                        bytes += (key.len() + v.len()) as u64;
                    }
                    None => delta -= 1,
                }
            }
            match value {
                Some(value) => batch.insert(engine.ks(ks), key, value),
                None => batch.remove(engine.ks(ks), key),
            }
        }
        match batch.commit() {
            Ok(()) => {
                shared.committed.fetch_add(1, Ordering::Release);
                if delta != 0 || puts != 0 {
                    shared.deliveries.fetch_add(delta, Ordering::Relaxed);
                    shared.delivery_puts.fetch_add(puts, Ordering::Relaxed);
                    shared.delivery_bytes.fetch_add(bytes, Ordering::Relaxed);
                }
                Ok(())
            }
            Err(e) => {
                let e = StoreError::writing(e);
                shared.fault(&e);
                Err(e)
            }
        }
    }
}

/// Waits while a keyspace the batch writes to has a backlog of memtables to flush, giving up if the
/// store fails meanwhile (e.g. the flush hit a full disk).
fn wait_for_flushes(shared: &Shared, engine: &Engine, ops: &[Op]) -> Result<(), StoreError> {
    let mut seen = [false; Ks::ALL.len()];
    for op in ops {
        let (Op::Put(ks, ..) | Op::Remove(ks, _) | Op::RemovePrefix(ks, _)) = op;
        if std::mem::replace(&mut seen[ks.index()], true) {
            continue;
        }
        let keyspace = engine.ks(*ks);
        while keyspace.sealed_memtable_count() >= FLUSH_BACKLOG {
            if !shared.is_healthy() {
                return Err(StoreError::Unavailable);
            }
            // A failed flush poisons the engine; `persist` reports that without writing anything.
            if let Err(e) = engine.db.persist(PersistMode::Buffer) {
                let e = StoreError::writing(e);
                shared.fault(&e);
                return Err(e);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(())
}

/// One write to one key: a value, or `None` to remove it.
type Write = (Ks, Vec<u8>, Option<Vec<u8>>);

/// Turns the operations into one write per key: prefix removals become removals of the keys found on
/// disk and of the keys put earlier in the batch, and the last write to a key wins.
fn resolve(engine: &Engine, ops: Vec<Op>) -> Result<Vec<Write>, StoreError> {
    let mut writes: Vec<Write> = Vec::with_capacity(ops.len());
    for op in ops {
        match op {
            Op::Put(ks, key, value) => writes.push((ks, key, Some(value))),
            Op::Remove(ks, key) => writes.push((ks, key, None)),
            Op::RemovePrefix(ks, prefix) => {
                let earlier: Vec<Vec<u8>> = writes
                    .iter()
                    .filter(|(k, key, value)| *k == ks && value.is_some() && key.starts_with(&prefix))
                    .map(|(_, key, _)| key.clone())
                    .collect();
                writes.extend(earlier.into_iter().map(|key| (ks, key, None)));
                let keyspace = engine.ks(ks);
                for item in keyspace.prefix(&prefix) {
                    let key = item.key().map_err(|e| StoreError::reading(e, keyspace.path()))?;
                    writes.push((ks, key.to_vec(), None));
                }
            }
        }
    }
    if writes.len() < 2 {
        return Ok(writes);
    }
    // A stable sort keeps the batch order among writes to one key; keep the last of each run.
    writes.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let mut last: Vec<Write> = Vec::with_capacity(writes.len());
    for write in writes {
        match last.last_mut() {
            Some(prev) if prev.0 == write.0 && prev.1 == write.1 => *prev = write,
            _ => last.push(write),
        }
    }
    Ok(last)
}
