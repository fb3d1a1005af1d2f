//! Tables of plain records kept for the layers above the broker: the device registry, access rules,
//! quarantine entries and the audit log. The store keeps their bytes; the owners encode them.

use crate::engine::Ks;

/// A table of records whose encoding belongs to its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// Registered devices, by device id.
    Devices,
    /// Device groups and their access rules, by group name.
    Groups,
    /// Quarantine entries, by entry id.
    Quarantine,
    /// The audit log, by a key that sorts in time order.
    Audit,
    /// Rules of the rules engine, by rule id.
    Rules,
    /// Messages waiting for another node of the mesh, by node id, run and number.
    Outbox,
    /// What the mesh remembers of other nodes: their filters, what was received from them.
    Mesh,
    /// Messages waiting for an uplink to an external broker, by uplink name and number.
    Uplink,
    /// The operators of the node's API and console (users with a role) and their API tokens.
    Operators,
}

impl Table {
    pub(crate) fn ks(self) -> Ks {
        match self {
            Table::Devices => Ks::Devices,
            Table::Groups => Ks::Groups,
            Table::Quarantine => Ks::Quarantine,
            Table::Audit => Ks::Audit,
            Table::Rules => Ks::Rules,
            Table::Outbox => Ks::Outbox,
            Table::Mesh => Ks::Mesh,
            Table::Uplink => Ks::Uplink,
            Table::Operators => Ks::Operators,
        }
    }
}
