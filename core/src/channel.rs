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
        ChannelKeys { id, key, wire, feed }
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

    /// The channel key itself (for invites and the local channel record).
    pub fn key(&self) -> &SecretKey {
        &self.key
    }
}

/// A channel as stored locally (sealed with the store's record key).
#[derive(Serialize, Deserialize)]
pub struct ChannelRecord {
    /// Format version.
    pub version: u8,
    /// The channel id.
    pub id: ChannelId,
    /// The channel key.
    pub key: [u8; 32],
}

impl ChannelRecord {
    const VERSION: u8 = 1;

    /// Encode a channel's keys.
    pub fn encode(keys: &ChannelKeys) -> Vec<u8> {
        let rec = ChannelRecord {
            version: Self::VERSION,
            id: keys.id,
            key: *keys.key.expose(),
        };
        let out = postcard::to_stdvec(&rec).expect("channel record encodes");
        let mut rec = rec;
        zeroize::Zeroize::zeroize(&mut rec.key);
        out
    }

    /// Decode a channel's keys.
    pub fn decode(bytes: &[u8]) -> Result<ChannelKeys> {
        let mut rec: ChannelRecord = postcard::from_bytes(bytes).map_err(|e| Error::corrupted("channel record", e))?;
        if rec.version != Self::VERSION {
            return Err(Error::UnsupportedFormat {
                what: "channel record",
                found: rec.version,
                expected: Self::VERSION,
            });
        }
        let keys = ChannelKeys::new(rec.id, SecretKey::from_bytes(rec.key));
        zeroize::Zeroize::zeroize(&mut rec.key);
        Ok(keys)
    }
}
