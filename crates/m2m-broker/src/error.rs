//! Errors of the broker layer.

use m2m_codec::{DecodeError, EncodeError};

/// Why a node failed to start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The listener could not bind.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The store could not be opened (corrupt, from a newer version, locked, unreadable).
    #[error("cannot open the store: {0}")]
    Store(#[from] m2m_store::StoreError),
    /// A TLS listener's certificate, key or CA could not be used.
    #[error("cannot set up the TLS listener on {addr}")]
    Tls {
        /// The listener's address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: crate::tls::TlsError,
    },
    /// The device registry could not be read from the store.
    #[error("cannot read the device registry: {0}")]
    Registry(#[from] m2m_access::RegistryError),
    /// The quarantine list could not be read from the store.
    #[error("cannot read the quarantine list: {0}")]
    Quarantine(#[from] m2m_access::QuarantineError),
    /// The history cannot be opened (a bad setting, or a damaged record).
    #[error("history: {0}")]
    History(#[from] m2m_history::HistoryError),
}

/// Why one connection ended abnormally. Logged once at the task boundary; never ends the node.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectionError {
    #[error("socket error")]
    Io(#[from] std::io::Error),
    #[error("undecodable packet")]
    Decode(#[from] DecodeError),
    #[error("cannot encode packet")]
    Encode(#[from] EncodeError),
    #[error("peer closed the connection in the middle of a packet")]
    ClosedMidPacket,
    #[error("write timed out (slow or dead reader)")]
    WriteTimeout,
    #[error("a packet took too long to arrive")]
    PacketTimeout,
    #[error("no room left in the memory budget for the packet being read")]
    OverBudget,
}

/// Result of the broker layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;
