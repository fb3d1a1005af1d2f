//! Reading the whole store back at open, dropping what expired and what lost its owner.

use std::collections::HashMap;
use std::sync::Arc;

use fjall::PersistMode;

use crate::encoding::{
    decode_delivery, decode_flight, decode_incoming, decode_retained, decode_session, decode_will,
    parse_incoming_key, parse_seq_key, parse_str_key, show_key, Clock, Decoded, Malformed,
};
use crate::engine::{Engine, Ks, META_ALIVE_AT};
use crate::error::StoreError;
use crate::record::{Recovered, RecoveredSession, StoredDelivery};

/// Reads every record, deletes expired messages and orphans (deliveries, flight states and incoming
/// ids without a session, flight states without a delivery), and returns the rest.
pub(crate) fn recover(engine: &Engine, clock: Clock) -> Result<Recovered, StoreError> {
    let mut out = Recovered { next_seq: 1, ..Recovered::default() };
    let mut doomed: Vec<(Ks, fjall::UserKey)> = Vec::new();
    let mut by_client: HashMap<Arc<str>, usize> = HashMap::new();

    for_each(engine, Ks::Sessions, |key, value| {
        let client = parse_str_key(key)?;
        let record = decode_session(client, value)?;
        by_client.insert(record.client_id.clone(), out.sessions.len());
        out.sessions.push(RecoveredSession { record, deliveries: Vec::new(), incoming: Vec::new() });
        Ok(())
    })?;

    for_each(engine, Ks::Deliveries, |key, value| {
        let (client, seq) = parse_seq_key(key)?;
        out.next_seq = out.next_seq.max(seq.saturating_add(1));
        let Some(&i) = by_client.get(client) else {
            doomed.push((Ks::Deliveries, key.into()));
            return Ok(());
        };
        match decode_delivery(value, seq, clock)? {
            Decoded::Live(delivery) => {
                // Keys of one client are in sequence order, so each list stays sorted.
                out.sessions[i].deliveries.push(StoredDelivery { seq, delivery, flight: None });
            }
            Decoded::Expired => {
                doomed.push((Ks::Deliveries, key.into()));
                out.dropped_expired += 1;
            }
        }
        Ok(())
    })?;

    for_each(engine, Ks::Flight, |key, value| {
        let (client, seq) = parse_seq_key(key)?;
        let flight = decode_flight(value)?;
        let slot = by_client.get(client).and_then(|&i| {
            let deliveries = &mut out.sessions[i].deliveries;
            let at = deliveries.binary_search_by_key(&seq, |d| d.seq).ok()?;
            deliveries.get_mut(at)
        });
        match slot {
            Some(d) => d.flight = Some(flight),
            None => doomed.push((Ks::Flight, key.into())),
        }
        Ok(())
    })?;

    for_each(engine, Ks::Incoming, |key, value| {
        let (client, id) = parse_incoming_key(key)?;
        decode_incoming(value)?;
        match by_client.get(client) {
            Some(&i) => out.sessions[i].incoming.push(id),
            None => doomed.push((Ks::Incoming, key.into())),
        }
        Ok(())
    })?;

    for_each(engine, Ks::Retained, |key, value| {
        let topic = parse_str_key(key)?;
        match decode_retained(value, clock)? {
            Decoded::Live(message) if message.topic.as_str() == topic => out.retained.push(message),
            Decoded::Live(message) => {
                return Err(Malformed(format!("holds a message for topic {:?}", message.topic.as_str())));
            }
            Decoded::Expired => {
                doomed.push((Ks::Retained, key.into()));
                out.dropped_expired += 1;
            }
        }
        Ok(())
    })?;

    for_each(engine, Ks::Wills, |key, value| {
        let client = parse_str_key(key)?;
        out.wills.push((Arc::from(client), decode_will(value, clock)?));
        Ok(())
    })?;

    let meta = engine.ks(Ks::Meta);
    if let Some(v) = meta.get(META_ALIVE_AT).map_err(|e| StoreError::reading(e, meta.path()))? {
        let alive: [u8; 8] = v[..].try_into().map_err(|_| StoreError::Corrupt {
            path: meta.path().to_owned(),
            detail: format!("keyspace meta: the alive_at record has {} bytes, not 8", v.len()),
        })?;
        out.alive_at = Some(u64::from_be_bytes(alive));
    }

    if !doomed.is_empty() {
        tracing::debug!(
            records = doomed.len(),
            expired = out.dropped_expired,
            "deleting expired and orphaned records"
        );
        let mut batch = engine.db.batch();
        for (ks, key) in doomed {
            batch.remove(engine.ks(ks), key);
        }
        batch.commit().map_err(StoreError::writing)?;
        engine.db.persist(PersistMode::SyncData).map_err(StoreError::writing)?;
    }
    Ok(out)
}

/// Calls `f` with every record of `ks` in key order; a record `f` cannot read is
/// [`StoreError::Corrupt`] naming the keyspace and the key.
fn for_each(
    engine: &Engine,
    ks: Ks,
    mut f: impl FnMut(&[u8], &[u8]) -> Result<(), Malformed>,
) -> Result<(), StoreError> {
    let keyspace = engine.ks(ks);
    for item in keyspace.iter() {
        let (key, value) = item.into_inner().map_err(|e| match StoreError::reading(e, keyspace.path()) {
            StoreError::Corrupt { path, detail } => {
                StoreError::Corrupt { path, detail: format!("keyspace {}: {detail}", ks.name()) }
            }
            e => e,
        })?;
        f(&key, &value).map_err(|Malformed(why)| StoreError::Corrupt {
            path: keyspace.path().to_owned(),
            detail: format!("keyspace {}, key {}: {why}", ks.name(), show_key(&key)),
        })?;
    }
    Ok(())
}
