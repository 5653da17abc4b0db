//! The error type of hearth-store.

use std::path::PathBuf;

/// What can go wrong opening, writing or reading a store. Every variant is
/// something a caller can act on; none carries secrets or message text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The passphrase does not unlock this store.
    #[error("wrong passphrase")]
    WrongPassphrase,
    /// Another process (or handle) has the store open.
    #[error("store at {path} is locked by another process")]
    Locked {
        /// The store directory.
        path: PathBuf,
    },
    /// The directory holds no Hearth store.
    #[error("no Hearth store at {path} (create one with `hearth init`)")]
    NotAStore {
        /// The directory.
        path: PathBuf,
    },
    /// A store already exists where a new one was to be created.
    #[error("a Hearth store already exists at {path}")]
    AlreadyExists {
        /// The directory.
        path: PathBuf,
    },
    /// Stored bytes failed authentication or do not decode.
    #[error("corrupted {what}: {detail}")]
    Corrupted {
        /// Which structure.
        what: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A format version this build does not read.
    #[error("unsupported {what} format version {found} (this build reads {expected})")]
    UnsupportedFormat {
        /// Which structure.
        what: String,
        /// Version found.
        found: u8,
        /// Version expected.
        expected: u8,
    },
    /// An input exceeds its size limit.
    #[error("{what} is too large: {size} bytes, the limit is {limit}")]
    TooLarge {
        /// Which input.
        what: String,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// An input is malformed or not acceptable.
    #[error("invalid {what}: {detail}")]
    Invalid {
        /// Which input.
        what: String,
        /// Why.
        detail: String,
    },
    /// No such channel or message.
    #[error("unknown {what}: {id}")]
    NotFound {
        /// "channel" or "message".
        what: &'static str,
        /// The id or name that was looked up.
        id: String,
    },
    /// A name or prefix matches more than one channel.
    #[error("{input:?} matches more than one channel; use the channel id")]
    Ambiguous {
        /// The name or prefix given.
        input: String,
    },
    /// Only a message's author may edit or delete it.
    #[error("only the author of a message may {action} it")]
    NotAuthor {
        /// "edit" or "delete".
        action: &'static str,
    },
    /// The channel's roster does not allow it (see `hearth_core::member`).
    #[error("not allowed to {action}: {why}")]
    NotAllowed {
        /// What was tried.
        action: String,
        /// Which rule forbids it.
        why: String,
    },
    /// The operating system reported an I/O error.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A write failed to reach the disk earlier; the store refuses further writes
    /// until it is reopened (which recovers every acknowledged write).
    #[error("the store stopped accepting writes after a disk error; reopen it")]
    Poisoned,
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
}

impl Error {
    pub(crate) fn corrupted(what: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        Error::Corrupted {
            what: what.into(),
            detail: detail.to_string(),
        }
    }

    pub(crate) fn invalid(what: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        Error::Invalid {
            what: what.into(),
            detail: detail.to_string(),
        }
    }
}

impl From<hearth_core::Error> for Error {
    fn from(e: hearth_core::Error) -> Self {
        use hearth_core::Error as C;
        match e {
            C::WrongPassphrase => Error::WrongPassphrase,
            C::Corrupted { what, detail } => Error::Corrupted {
                what: what.into(),
                detail,
            },
            C::UnsupportedFormat { what, found, expected } => Error::UnsupportedFormat {
                what: what.into(),
                found,
                expected,
            },
            C::TooLarge { what, size, limit } => Error::TooLarge {
                what: what.into(),
                size,
                limit,
            },
            C::Invalid { what, detail } => Error::Invalid {
                what: what.into(),
                detail,
            },
            other => Error::corrupted("document", other),
        }
    }
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Io(io) => Error::Io(io),
            other => Error::corrupted("sled database", other),
        }
    }
}

/// Result with hearth-store's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
