//! The one error type of the embedding API.

use std::path::PathBuf;

/// What can go wrong with a [`crate::Hearth`]: the store, a ticket, or sync.
///
/// Every variant says what to do about it; none carries secrets or message
/// text. The engine's and the node's own errors convert into it (`From`),
/// so an app matches on one enum.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The passphrase does not unlock this store: ask again.
    #[error("wrong passphrase")]
    WrongPassphrase,
    /// Another process (or handle) has the store open: close it there first.
    #[error("store at {path} is locked by another process")]
    Locked {
        /// The store directory.
        path: PathBuf,
    },
    /// The directory holds no Hearth store: create one.
    #[error("no Hearth store at {path} (create one with `hearth init`)")]
    NotAStore {
        /// The directory.
        path: PathBuf,
    },
    /// A store already exists where a new one was to be created: open it.
    #[error("a Hearth store already exists at {path}")]
    AlreadyExists {
        /// The directory.
        path: PathBuf,
    },
    /// No such channel, message, member or device: re-read the list.
    #[error("unknown {what}: {id}")]
    NotFound {
        /// "channel", "message", "member", "device".
        what: &'static str,
        /// The id or name that was looked up.
        id: String,
    },
    /// A name or prefix matches more than one channel: use its id.
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
    /// The channel's roster (or the state of things) does not allow it.
    #[error("not allowed to {action}: {why}")]
    NotAllowed {
        /// What was tried.
        action: String,
        /// Which rule forbids it.
        why: String,
    },
    /// An input exceeds its size limit: shorten or split it.
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
    /// A ticket that does not parse, or of another kind than the call takes.
    #[error("bad ticket: {detail}")]
    BadTicket {
        /// Why.
        detail: String,
    },
    /// Stored bytes failed authentication or do not decode: run `verify`;
    /// `repair` rebuilds the database from the feed log.
    #[error("corrupted {what}: {detail}")]
    Corrupted {
        /// Which structure.
        what: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A format version this build does not read: update Hearth.
    #[error("unsupported {what} format version {found} (this build reads {expected})")]
    UnsupportedFormat {
        /// Which structure.
        what: String,
        /// Version found.
        found: u8,
        /// Version expected.
        expected: u8,
    },
    /// The operating system reported an I/O error.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A write failed to reach the disk earlier; the store refuses further
    /// writes until it is reopened (which recovers every acknowledged write).
    #[error("the store stopped accepting writes after a disk error; reopen it")]
    Poisoned,
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
    /// The call needs sync running: [`crate::Hearth::start_sync`] first.
    #[error("sync is not running: start it first")]
    SyncNotRunning,
    /// Sync runs already for this store (one node a store).
    #[error("sync is already running for this store")]
    SyncRunning,
    /// The network could not be set up (a listen address in use or invalid).
    #[error("network setup failed: {0}")]
    Network(String),
    /// No connection to that peer: dial it, or wait for it to come back.
    #[error("not connected to {peer}")]
    NotConnected {
        /// The peer.
        peer: hearth_sync::PeerId,
    },
    /// What was waited for did not happen in time.
    #[error("timed out waiting for {what} after {after:?}")]
    Timeout {
        /// What was waited for.
        what: &'static str,
        /// How long.
        after: std::time::Duration,
    },
    /// Linking a device failed (declined, expired, used, unreachable).
    #[error("device link failed: {0}")]
    Link(String),
    /// A member's node did not let this device in through an invite.
    #[error("the invite was not taken: {0}")]
    JoinRefused(String),
}

/// A result with the embedding API's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<hearth_store::Error> for Error {
    fn from(e: hearth_store::Error) -> Self {
        use hearth_store::Error as S;
        match e {
            S::WrongPassphrase => Error::WrongPassphrase,
            S::Locked { path } => Error::Locked { path },
            S::NotAStore { path } => Error::NotAStore { path },
            S::AlreadyExists { path } => Error::AlreadyExists { path },
            S::Corrupted { what, detail } => Error::Corrupted { what, detail },
            S::UnsupportedFormat { what, found, expected } => Error::UnsupportedFormat { what, found, expected },
            S::TooLarge { what, size, limit } => Error::TooLarge { what, size, limit },
            S::Invalid { what, detail } => Error::Invalid { what, detail },
            S::NotFound { what, id } => Error::NotFound { what, id },
            S::Ambiguous { input } => Error::Ambiguous { input },
            S::NotAuthor { action } => Error::NotAuthor { action },
            S::NotAllowed { action, why } => Error::NotAllowed { action, why },
            S::Io(e) => Error::Io(e),
            S::Poisoned => Error::Poisoned,
            S::Closed => Error::Closed,
            // A variant added to the engine later: its own words.
            other => Error::Invalid {
                what: "request".into(),
                detail: other.to_string(),
            },
        }
    }
}

impl From<hearth_core::Error> for Error {
    fn from(e: hearth_core::Error) -> Self {
        hearth_store::Error::from(e).into()
    }
}

impl From<hearth_sync::NodeError> for Error {
    fn from(e: hearth_sync::NodeError) -> Self {
        use hearth_sync::NodeError as N;
        match e {
            N::Setup(why) => Error::Network(why),
            N::Stopped => Error::SyncNotRunning,
            N::NotConnected(peer) => Error::NotConnected { peer },
            N::Store(e) => e.into(),
            N::Link(why) => Error::Link(why),
            N::Join(why) => Error::JoinRefused(why),
            N::Timeout(what, after) => Error::Timeout { what, after },
            other => Error::Network(other.to_string()),
        }
    }
}

impl From<hearth_sync::TicketError> for Error {
    fn from(e: hearth_sync::TicketError) -> Self {
        Error::BadTicket { detail: e.to_string() }
    }
}
