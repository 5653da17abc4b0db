//! Channel keys: the random channel key and what derives from it.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::{ChannelId, WireId};
use crate::seal::{Purpose, derive};
use crate::secret::SecretKey;

/// A channel's keys. Holding them makes one a member: able to read and write.
#[derive(Clone, Debug)]
pub struct ChannelKeys {
    id: ChannelId,
    key: SecretKey,
    wire: WireId,
    feed: SecretKey,
    access: SecretKey,
}

impl ChannelKeys {
    /// Keys for a brand-new channel.
    pub fn generate() -> Result<Self> {
        Ok(Self::new(ChannelId::generate()?, SecretKey::generate()?))
    }

    /// Keys for a known channel id and key (from the store or an invite).
    pub fn new(id: ChannelId, key: SecretKey) -> Self {
        let wire = WireId(*derive(&key, Purpose::WireId).expose());
        let feed = derive(&key, Purpose::FeedBody);
        let access = derive(&key, Purpose::Access);
        ChannelKeys {
            id,
            key,
            wire,
            feed,
            access,
        }
    }

    /// The channel id.
    pub fn id(&self) -> ChannelId {
        self.id
    }

    /// The channel's name on the wire and in sled keys.
    pub fn wire(&self) -> WireId {
        self.wire
    }

    /// The key that seals feed entry bodies.
    pub fn feed_key(&self) -> &SecretKey {
        &self.feed
    }

    /// The access key: a peer proves it holds the channel with it (the sync
    /// protocol's Hello), and a relay its member trusts is granted it, so that
    /// the relay can check other members' proofs. It opens nothing.
    pub fn access(&self) -> &SecretKey {
        &self.access
    }

    /// The channel key itself (for invites and the local channel record).
    pub fn key(&self) -> &SecretKey {
        &self.key
    }
}

/// A channel as stored locally (sealed with the store's record key).
///
/// Version 1: `{ version, id, key }`. Version 2 adds the name the invite
/// gave the channel, shown until its own name arrives by sync.
#[derive(Serialize, Deserialize)]
pub struct ChannelRecord {
    /// Format version.
    pub version: u8,
    /// The channel id.
    pub id: ChannelId,
    /// The channel key.
    pub key: [u8; 32],
}

#[derive(Serialize, Deserialize)]
struct ChannelRecordV2 {
    version: u8,
    id: ChannelId,
    key: [u8; 32],
    invited_name: Option<String>,
}

/// The longest invited name kept (as the local name limit).
const MAX_INVITED_NAME: usize = 256;

impl ChannelRecord {
    const VERSION: u8 = 2;

    /// Encode a channel's keys.
    pub fn encode(keys: &ChannelKeys) -> Vec<u8> {
        Self::encode_named(keys, None)
    }

    /// Encode a channel's keys with the name its invite gave it.
    pub fn encode_named(keys: &ChannelKeys, invited_name: Option<&str>) -> Vec<u8> {
        let mut rec = ChannelRecordV2 {
            version: Self::VERSION,
            id: keys.id,
            key: *keys.key.expose(),
            invited_name: invited_name.map(str::to_string),
        };
        let out = postcard::to_stdvec(&rec).expect("channel record encodes");
        zeroize::Zeroize::zeroize(&mut rec.key);
        out
    }

    /// Decode a channel's keys.
    pub fn decode(bytes: &[u8]) -> Result<ChannelKeys> {
        Self::decode_named(bytes).map(|(k, _)| k)
    }

    /// Decode a channel's keys and the name its invite gave it.
    pub fn decode_named(bytes: &[u8]) -> Result<(ChannelKeys, Option<String>)> {
        let bad = |e: postcard::Error| Error::corrupted("channel record", e);
        let (id, mut key, name) = match bytes.first() {
            Some(1) => {
                let rec: ChannelRecord = postcard::from_bytes(bytes).map_err(bad)?;
                (rec.id, rec.key, None)
            }
            Some(2) => {
                let rec: ChannelRecordV2 = postcard::from_bytes(bytes).map_err(bad)?;
                if rec.invited_name.as_ref().is_some_and(|n| n.len() > MAX_INVITED_NAME) {
                    return Err(Error::corrupted("channel record", "invited name too long"));
                }
                (rec.id, rec.key, rec.invited_name)
            }
            other => {
                return Err(Error::UnsupportedFormat {
                    what: "channel record",
                    found: other.copied().unwrap_or(0),
                    expected: Self::VERSION,
                });
            }
        };
        let keys = ChannelKeys::new(id, SecretKey::from_bytes(key));
        zeroize::Zeroize::zeroize(&mut key);
        Ok((keys, name))
    }
}
