//! [`HearthError`]: the one error of the bindings, and the parsing of what
//! foreign code passes in as text.

use std::str::FromStr;

/// What can go wrong, one variant per thing a caller can do about it.
///
/// It mirrors [`hearth::Error`] variant for variant; only the variant's
/// name and its message cross (a "flat" UniFFI error), so in Python each is
/// an exception class, `HearthError.WrongPassphrase` and so on, whose
/// `str()` says what happened. No message carries a secret or message text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
#[non_exhaustive]
pub enum HearthError {
    /// The passphrase does not unlock this store: ask again.
    #[error("{0}")]
    WrongPassphrase(String),
    /// Another process (or handle) has the store open: close it there first.
    #[error("{0}")]
    Locked(String),
    /// The directory holds no Hearth store: create one.
    #[error("{0}")]
    NotAStore(String),
    /// A store already exists where a new one was to be created: open it.
    #[error("{0}")]
    AlreadyExists(String),
    /// No such channel, message, member or device: re-read the list.
    #[error("{0}")]
    NotFound(String),
    /// A name or prefix matches more than one channel: use its id.
    #[error("{0}")]
    Ambiguous(String),
    /// Only a message's author may edit or delete it.
    #[error("{0}")]
    NotAuthor(String),
    /// The channel's roster (or the state of things) does not allow it.
    #[error("{0}")]
    NotAllowed(String),
    /// An input exceeds its size limit: shorten or split it.
    #[error("{0}")]
    TooLarge(String),
    /// An input is malformed or not acceptable: an id, an address or a peer
    /// id that does not parse, an empty text, a bad emoji.
    #[error("{0}")]
    Invalid(String),
    /// A ticket that does not parse, or of another kind than the call takes.
    #[error("{0}")]
    BadTicket(String),
    /// Stored bytes failed authentication or do not decode: run `verify`;
    /// [`crate::Hearth::repair`] rebuilds the database from the feed log.
    #[error("{0}")]
    Corrupted(String),
    /// A format version this build does not read: update Hearth.
    #[error("{0}")]
    UnsupportedFormat(String),
    /// The operating system reported an I/O error.
    #[error("{0}")]
    Io(String),
    /// A write failed to reach the disk earlier: reopen the store, which
    /// recovers every acknowledged write.
    #[error("{0}")]
    Poisoned(String),
    /// The store was closed.
    #[error("{0}")]
    Closed(String),
    /// The call needs sync running: [`crate::Hearth::start_sync`] first.
    #[error("{0}")]
    SyncNotRunning(String),
    /// Sync runs already for this store (one node a store).
    #[error("{0}")]
    SyncRunning(String),
    /// The network could not be set up (a listen address in use or invalid).
    #[error("{0}")]
    Network(String),
    /// No connection to that peer: dial it, or wait for it to come back.
    #[error("{0}")]
    NotConnected(String),
    /// What was waited for did not happen in time.
    #[error("{0}")]
    Timeout(String),
    /// Linking a device failed (declined, expired, used, unreachable).
    #[error("{0}")]
    Link(String),
    /// A member's node did not let this device in through an invite.
    #[error("{0}")]
    JoinRefused(String),
    /// An error of a newer hearth than these bindings know: its message says
    /// what happened.
    #[error("{0}")]
    Other(String),
    /// A bug in the bindings or in hearth (a call panicked): report it.
    #[error("{0}")]
    Internal(String),
}

/// A foreign callback ([`crate::LinkCodeListener`]) that raised.
impl From<uniffi::UnexpectedUniFFICallbackError> for HearthError {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> Self {
        HearthError::Internal(format!("the callback failed: {}", e.reason))
    }
}

impl From<hearth::Error> for HearthError {
    fn from(e: hearth::Error) -> Self {
        use hearth::Error as E;
        let message = e.to_string();
        match e {
            E::WrongPassphrase => HearthError::WrongPassphrase(message),
            E::Locked { .. } => HearthError::Locked(message),
            E::NotAStore { .. } => HearthError::NotAStore(message),
            E::AlreadyExists { .. } => HearthError::AlreadyExists(message),
            E::NotFound { .. } => HearthError::NotFound(message),
            E::Ambiguous { .. } => HearthError::Ambiguous(message),
            E::NotAuthor { .. } => HearthError::NotAuthor(message),
            E::NotAllowed { .. } => HearthError::NotAllowed(message),
            E::TooLarge { .. } => HearthError::TooLarge(message),
            E::Invalid { .. } => HearthError::Invalid(message),
            E::BadTicket { .. } => HearthError::BadTicket(message),
            E::Corrupted { .. } => HearthError::Corrupted(message),
            E::UnsupportedFormat { .. } => HearthError::UnsupportedFormat(message),
            E::Io(_) => HearthError::Io(message),
            E::Poisoned => HearthError::Poisoned(message),
            E::Closed => HearthError::Closed(message),
            E::SyncNotRunning => HearthError::SyncNotRunning(message),
            E::SyncRunning => HearthError::SyncRunning(message),
            E::Network(_) => HearthError::Network(message),
            E::NotConnected { .. } => HearthError::NotConnected(message),
            E::Timeout { .. } => HearthError::Timeout(message),
            E::Link(_) => HearthError::Link(message),
            E::JoinRefused(_) => HearthError::JoinRefused(message),
            // hearth::Error is non-exhaustive: a variant added later keeps its words.
            _ => HearthError::Other(message),
        }
    }
}

/// An id (channel, message, user, device) from its text form; a malformed
/// one is [`HearthError::Invalid`] naming which id.
pub(crate) fn parse_id<T>(text: &str) -> Result<T, HearthError>
where
    T: FromStr<Err = hearth::core::Error>,
{
    text.parse()
        .map_err(|e: hearth::core::Error| hearth::Error::from(e).into())
}

/// An optional id (see [`parse_id`]).
pub(crate) fn parse_opt_id<T>(text: Option<String>) -> Result<Option<T>, HearthError>
where
    T: FromStr<Err = hearth::core::Error>,
{
    text.as_deref().map(parse_id).transpose()
}

/// A multiaddress, such as `/ip4/127.0.0.1/tcp/0`.
pub(crate) fn parse_addr(text: &str) -> Result<hearth::Multiaddr, HearthError> {
    text.parse()
        .map_err(|e| HearthError::Invalid(format!("invalid address {text:?}: {e}")))
}

/// Every address of a list (see [`parse_addr`]).
pub(crate) fn parse_addrs(texts: &[String]) -> Result<Vec<hearth::Multiaddr>, HearthError> {
    texts.iter().map(|t| parse_addr(t)).collect()
}

/// A libp2p peer id, as [`crate::SyncHandle::peer_id`] gives it.
pub(crate) fn parse_peer(text: &str) -> Result<hearth::PeerId, HearthError> {
    text.parse()
        .map_err(|e| HearthError::Invalid(format!("invalid peer id {text:?}: {e}")))
}

/// A ticket (an invite), as [`crate::Hearth::invite`] gives it.
pub(crate) fn parse_ticket(text: &str) -> Result<hearth::Ticket, HearthError> {
    text.trim()
        .parse()
        .map_err(|e: hearth::sync::TicketError| hearth::Error::from(e).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_input_is_invalid_and_names_what() {
        let e = parse_id::<hearth::MessageId>("zz").unwrap_err();
        assert!(
            matches!(&e, HearthError::Invalid(m) if m.contains("message id")),
            "{e:?}"
        );
        let e = parse_id::<hearth::ChannelId>("").unwrap_err();
        assert!(
            matches!(&e, HearthError::Invalid(m) if m.contains("channel id")),
            "{e:?}"
        );
        assert!(matches!(parse_addr("/ip4/nope"), Err(HearthError::Invalid(_))));
        assert!(matches!(parse_peer("12D3"), Err(HearthError::Invalid(_))));
        assert!(matches!(parse_ticket("hearth:garbage"), Err(HearthError::BadTicket(_))));
        assert_eq!(parse_opt_id::<hearth::MessageId>(None), Ok(None));
    }

    #[test]
    fn each_variant_keeps_the_facades_message() {
        let e = HearthError::from(hearth::Error::WrongPassphrase);
        assert_eq!(e, HearthError::WrongPassphrase("wrong passphrase".into()));
        let e = HearthError::from(hearth::Error::NotFound {
            what: "channel",
            id: "abc".into(),
        });
        assert_eq!(e.to_string(), "unknown channel: abc");
    }
}
