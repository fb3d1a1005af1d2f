//! What can go wrong with the store.

use std::path::PathBuf;
use std::sync::Arc;

/// An error of the store.
///
/// `Clone`, because one failed sync is reported to every writer waiting on it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store was written by a newer m2m whose format this build does not know.
    #[error(
        "the store has format version {found}, newer than version {supported} that this build supports; \
         run a newer m2m, or move the data directory aside to start with an empty store"
    )]
    FutureVersion {
        /// The version found on disk.
        found: u32,
        /// The highest version this build reads.
        supported: u32,
    },
    /// A file of the store cannot be read back: garbled or truncated bytes, or a record that does not decode.
    #[error(
        "store file {path} is corrupt: {detail}; to recover, move the data directory aside to start \
         with an empty store, or restore a backup",
        path = path.display()
    )]
    Corrupt {
        /// The file, or the directory holding the damaged files when the engine does not say which.
        path: PathBuf,
        /// What is wrong and where (keyspace, key).
        detail: String,
    },
    /// Another process has the store open.
    #[error("store at {path} is locked by another process", path = path.display())]
    Locked {
        /// The data directory.
        path: PathBuf,
    },
    /// An I/O error, such as a full disk.
    #[error("store i/o error")]
    Io(#[source] Arc<std::io::Error>),
    /// An error of the storage engine that is neither I/O nor corruption.
    #[error("storage engine error: {0}")]
    Engine(String),
    /// The store failed earlier (a write or sync error, e.g. a full disk) and accepts no writes until it
    /// has recovered by itself.
    #[error("store is unavailable after an earlier write failure")]
    Unavailable,
}

impl StoreError {
    /// Maps an engine error met while opening or reading the store at `path`: anything that is not
    /// I/O means the files do not read back.
    pub(crate) fn reading(e: fjall::Error, path: &std::path::Path) -> Self {
        match e {
            fjall::Error::Io(e) | fjall::Error::Storage(fjall::LsmError::Io(e)) => Self::Io(Arc::new(e)),
            fjall::Error::Locked => Self::Locked { path: path.to_owned() },
            fjall::Error::Poisoned => Self::Unavailable,
            e @ (fjall::Error::Storage(_)
            | fjall::Error::JournalRecovery(_)
            | fjall::Error::InvalidVersion(_)
            | fjall::Error::Decompress(_)
            | fjall::Error::InvalidTrailer
            | fjall::Error::InvalidTag(_)
            | fjall::Error::Unrecoverable) => {
                Self::Corrupt { path: path.to_owned(), detail: format!("{e:?}") }
            }
            e => Self::Engine(format!("{e:?}")),
        }
    }

    /// Maps an engine error met while writing or syncing.
    pub(crate) fn writing(e: fjall::Error) -> Self {
        match e {
            fjall::Error::Io(e) | fjall::Error::Storage(fjall::LsmError::Io(e)) => Self::Io(Arc::new(e)),
            fjall::Error::Poisoned => Self::Engine(
                "the engine failed earlier (a write, sync, flush or compaction) and refuses writes"
                    .to_owned(),
            ),
            e => Self::Engine(format!("{e:?}")),
        }
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(Arc::new(e))
    }
}
