//! The audit log: who did what to the registry and the quarantine list, when and why, appended to the
//! store in time order and read back newest first.

use std::sync::atomic::{AtomicU64, Ordering};

use m2m_store::{Store, StoreError, Table};
use serde::{Deserialize, Serialize};

/// One audited event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// When (unix ms).
    pub at_ms: u64,
    /// Who: an operator's name, `cli`, `api`, or a detector.
    pub actor: String,
    /// What, e.g. `device.add`, `quarantine.add`, `quarantine.release`.
    pub action: String,
    /// On what: a device id, a group name, a quarantine entry.
    pub subject: String,
    /// Why, or the details.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// The audit log in the store's audit table. Keys are the time and a sequence number (16 bytes, big
/// endian), so they sort in the order events were appended.
#[derive(Debug)]
pub struct AuditLog {
    store: Option<Store>,
    seq: AtomicU64,
}

/// The position of an event in the log, for paging back from it.
pub type AuditKey = [u8; 16];

impl AuditLog {
    /// The log in `store` (without one, events are only logged by the caller).
    pub fn new(store: Option<Store>) -> Self {
        Self { store, seq: AtomicU64::new(0) }
    }

    /// Appends `event`.
    ///
    /// # Errors
    /// A store error.
    pub fn append(&self, event: &AuditEvent) -> Result<AuditKey, StoreError> {
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&event.at_ms.to_be_bytes());
        key[8..].copy_from_slice(&self.seq.fetch_add(1, Ordering::Relaxed).to_be_bytes());
        if let Some(store) = &self.store {
            let mut batch = store.batch();
            batch.put_record(Table::Audit, &key, serde_json::to_vec(event).unwrap_or_default());
            batch.commit()?;
        }
        Ok(key)
    }

    /// Up to `limit` events before `before` (from the newest if `None`), newest first. Records that do
    /// not decode are skipped.
    ///
    /// # Errors
    /// A store error.
    pub fn recent(
        &self,
        before: Option<&AuditKey>,
        limit: usize,
    ) -> Result<Vec<(AuditKey, AuditEvent)>, StoreError> {
        let Some(store) = &self.store else { return Ok(Vec::new()) };
        let records = store.records_before(Table::Audit, before.map(|k| &k[..]), limit)?;
        Ok(records
            .into_iter()
            .filter_map(|(k, v)| Some((AuditKey::try_from(&k[..]).ok()?, serde_json::from_slice(&v).ok()?)))
            .collect())
    }
}
