//! The error type of hearth-core.

/// What can go wrong in the pure core: decoding, authenticating and applying bytes.
///
/// Crypto variants never carry key material or plaintext.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The passphrase does not unwrap the store key (the header itself is intact).
    #[error("wrong passphrase")]
    WrongPassphrase,
    /// Bytes failed authentication (AEAD tag, signature or checksum) or do not decode.
    #[error("corrupted {what}: {detail}")]
    Corrupted {
        /// Which structure was being read.
        what: &'static str,
        /// A short description of the defect (never secret material).
        detail: String,
    },
    /// A format version this build does not understand.
    #[error("unsupported {what} format version {found} (this build reads {expected})")]
    UnsupportedFormat {
        /// Which structure carried the version.
        what: &'static str,
        /// The version found.
        found: u8,
        /// The version this build reads.
        expected: u8,
    },
    /// An input is larger than the limit for its kind.
    #[error("{what} is too large: {size} bytes, the limit is {limit}")]
    TooLarge {
        /// Which input.
        what: &'static str,
        /// Its size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// An input that is well-formed but not acceptable (empty text, bad emoji, bad id string...).
    #[error("invalid {what}: {detail}")]
    Invalid {
        /// Which input.
        what: &'static str,
        /// Why it is rejected.
        detail: String,
    },
    /// The automerge document refused an operation or a change.
    #[error("document error: {0}")]
    Document(String),
    /// The operating system's random source failed.
    #[error("random source failed")]
    Random,
}

impl Error {
    pub(crate) fn corrupted(what: &'static str, detail: impl std::fmt::Display) -> Self {
        Error::Corrupted {
            what,
            detail: detail.to_string(),
        }
    }

    pub(crate) fn invalid(what: &'static str, detail: impl std::fmt::Display) -> Self {
        Error::Invalid {
            what,
            detail: detail.to_string(),
        }
    }
}

impl From<automerge::AutomergeError> for Error {
    fn from(e: automerge::AutomergeError) -> Self {
        Error::Document(e.to_string())
    }
}

/// Result with hearth-core's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
