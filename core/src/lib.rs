//! # hearth-core
//!
//! The pure core of Hearth, an encrypted local-first storage engine for chat apps:
//! ids and the hybrid logical clock, user operations, the channel document model
//! on automerge (channels sharded into epoch documents), crypto (Argon2id key
//! derivation, key wrapping, XChaCha20-Poly1305 sealing, ed25519 signatures) and
//! the byte formats (store header, feed envelopes).
//!
//! It does no I/O: every function maps bytes and values to bytes and values, so it
//! can be fuzzed and property-tested in isolation. Storage lives in `hearth-store`,
//! the embedding API in `hearth`.
//!
//! ```
//! use hearth_core::{ChannelKeys, EntryBody, Envelope, EpochDoc, Identity, MessageId, Op, Timestamp, Devices, writer_tag};
//!
//! let me = Identity::generate("alice")?;
//! let keys = ChannelKeys::generate()?;
//! let tag = writer_tag(&me.user(), &me.device());
//! let id = MessageId::new(Timestamp::from_millis(1_700_000_000_000), 1, &keys.id(), tag);
//! let mut doc = EpochDoc::new(1, &me.device());
//! let change = doc
//!     .apply_local(&me.user(), &me.device(), &[Op::Post { id, text: "hi".into(), reply_to: None }], 0)?
//!     .expect("a change");
//! // Seal the change into the first entry of this device's feed.
//! let (bytes, _hash) = Envelope::seal(&keys, &me, 1, [0; 32], &EntryBody { epoch: 1, change })?;
//! let env = Envelope::decode(&bytes)?;
//! env.verify()?;
//! assert_eq!(env.open(&keys)?.epoch, 1);
//! let devices = Devices::from([(me.device(), me.user())]);
//! assert_eq!(doc.view(&devices).get(&id).unwrap().text.as_deref(), Some("hi"));
//! # Ok::<(), hearth_core::Error>(())
//! ```
#![deny(missing_docs)]

pub mod bulk;
mod channel;
mod chunk;
pub mod content;
pub mod device;
mod doc;
mod envelope;
mod error;
mod fork;
mod happening;
mod header;
mod hlc;
mod id;
mod identity;
mod link;
pub mod member;
mod op;
pub mod peer;
pub mod rotation;
mod seal;
mod secret;
mod signer;
pub mod textpack;
mod vector;
mod view;

pub use channel::{ChannelKeys, ChannelRecord, MAX_GENERATIONS};
pub use chunk::{
    CHUNK_MAGIC, MAX_CHANGE_BYTES, chunk_checksum, plain_change, read_leb128, restamp_change, strip_change,
    unstrip_change, write_leb128,
};
pub use content::{Content, ContentId, Segment, Slotted};
pub use doc::{
    ChangeEffects, Cuts, Devices, EpochDoc, OpCut, SlotRef, decode_change, decode_change_effects, decode_change_posts,
};
pub use envelope::{
    ENVELOPE_V2, ENVELOPE_V3, ENVELOPE_V4, ENVELOPE_V5, ENVELOPE_V6, ENVELOPE_VERSION, EntryBody, EntryHash,
    EntryHeader, Envelope, LeanContext, MAX_ENTRY_BYTES, MAX_ENTRY_CERTS, MAX_ENTRY_SEGMENTS, Nonces,
};
pub use error::{Error, Result};
pub use fork::{Fork, ForkProof};
pub use happening::Happening;
pub use header::{HEADER_MAGIC, HEADER_MAX_LEN, HEADER_VERSION, KdfParams, StoreHeader};
pub use hlc::{Hlc, Timestamp};
pub use id::{ChannelId, DeviceId, Epoch, META_EPOCH, MessageId, UserId, WireId, random_bytes, writer_tag};
pub use identity::{Identity, verify_signature};
pub use link::{LinkBundle, MAX_LINK_BUNDLE, link_code, link_proof};
pub use member::{Action as MemberAction, MemberBody, OpKey, Role, Roster};
pub use op::{MAX_EMOJI_BYTES, MAX_NAME_BYTES, MAX_TEXT_BYTES, Op};
pub use rotation::{KeyPackage, PackagedKey};
pub use seal::{
    NONCE_PREFIX_LEN, NonceKind, Purpose, SEAL_OVERHEAD, counted_nonce, derive, open, seal, seal_with_nonce,
    seal_with_nonce_into,
};
pub use secret::{Passphrase, SecretKey};
pub use vector::{FeedPos, Missing, Vector};
pub use view::{EpochStats, EpochView, Message};
