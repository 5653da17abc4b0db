//! Channel keys: the random channel key and what derives from it.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::{ChannelId, WireId};
use crate::seal::{Purpose, derive};
use crate::secret::SecretKey;

/// Most later key generations a channel record keeps.
pub const MAX_GENERATIONS: usize = 4096;

/// A channel's keys. Holding them makes one a member: able to read and write.
///
/// Generation 0 is the channel key: it names the channel (its wire id) and
/// gives its access key. Each rotation adds a later generation (a random
/// key, sealed to every member device: [`crate::KeyPackage`]); entries are
/// sealed under the newest generation held and name it in their header.
/// Two rotations to the same generation (concurrent) both stay: entries of
/// either open, and the one with the higher tag is written with.
#[derive(Clone, Debug)]
pub struct ChannelKeys {
    id: ChannelId,
    key: SecretKey,
    wire: WireId,
    feed: SecretKey,
    access: SecretKey,
    later: Vec<Generation>,
}

/// A later key generation.
#[derive(Clone, Debug)]
struct Generation {
    number: u32,
    key: SecretKey,
    feed: SecretKey,
    tag: [u8; 8],
}

impl Generation {
    fn new(number: u32, key: SecretKey) -> Self {
        let feed = derive(&key, Purpose::FeedBody);
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&derive(&key, Purpose::GenerationTag).expose()[..8]);
        Generation { number, key, feed, tag }
    }
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
            later: Vec::new(),
        }
    }

    /// Add a later key generation; false if it is held already, if the number
    /// is 0 (the channel key), or if the record would grow past
    /// [`MAX_GENERATIONS`].
    pub fn add_generation(&mut self, number: u32, key: SecretKey) -> bool {
        if number == 0 || self.later.len() >= MAX_GENERATIONS {
            return false;
        }
        let g = Generation::new(number, key);
        if self.later.iter().any(|h| h.number == number && h.tag == g.tag) {
            return false;
        }
        self.later.push(g);
        self.later.sort_by_key(|g| (g.number, g.tag));
        true
    }

    /// The newest generation held: entries are sealed under it.
    pub fn current_generation(&self) -> u32 {
        self.later.last().map_or(0, |g| g.number)
    }

    /// The key that seals entries of `generation` (of two keys of one
    /// generation, the one with the higher tag), if held.
    pub fn sealing_key(&self, generation: u32) -> Option<&SecretKey> {
        if generation == 0 {
            return Some(&self.feed);
        }
        self.later
            .iter()
            .rev()
            .find(|g| g.number == generation)
            .map(|g| &g.feed)
    }

    /// Every key that may open entries of `generation`.
    pub fn opening_keys(&self, generation: u32) -> Vec<&SecretKey> {
        if generation == 0 {
            return vec![&self.feed];
        }
        self.later
            .iter()
            .rev()
            .filter(|g| g.number == generation)
            .map(|g| &g.feed)
            .collect()
    }

    /// The later generations held: number and key (for the local record and
    /// for sealing to devices).
    pub fn generations(&self) -> Vec<(u32, &SecretKey)> {
        self.later.iter().map(|g| (g.number, &g.key)).collect()
    }

    /// Whether this exact key of `generation` is held.
    pub fn holds(&self, generation: u32, key: &SecretKey) -> bool {
        if generation == 0 {
            return self.key.expose() == key.expose();
        }
        self.later
            .iter()
            .any(|g| g.number == generation && g.key.expose() == key.expose())
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

/// Version 3 adds the later key generations.
#[derive(Serialize, Deserialize)]
struct ChannelRecordV3 {
    version: u8,
    id: ChannelId,
    key: [u8; 32],
    invited_name: Option<String>,
    generations: Vec<(u32, [u8; 32])>,
}

/// The longest invited name kept (as the local name limit).
const MAX_INVITED_NAME: usize = 256;

impl ChannelRecord {
    const VERSION: u8 = 3;

    /// Encode a channel's keys.
    pub fn encode(keys: &ChannelKeys) -> Vec<u8> {
        Self::encode_named(keys, None)
    }

    /// Encode a channel's keys with the name its invite gave it.
    pub fn encode_named(keys: &ChannelKeys, invited_name: Option<&str>) -> Vec<u8> {
        // A channel without later generations keeps the version 2 record, so
        // that stores and fixtures of format 5 and older read the same bytes.
        if keys.later.is_empty() {
            let mut rec = ChannelRecordV2 {
                version: 2,
                id: keys.id,
                key: *keys.key.expose(),
                invited_name: invited_name.map(str::to_string),
            };
            let out = postcard::to_stdvec(&rec).expect("channel record encodes");
            zeroize::Zeroize::zeroize(&mut rec.key);
            out
        } else {
            let mut rec = ChannelRecordV3 {
                version: Self::VERSION,
                id: keys.id,
                key: *keys.key.expose(),
                invited_name: invited_name.map(str::to_string),
                generations: keys.later.iter().map(|g| (g.number, *g.key.expose())).collect(),
            };
            let out = postcard::to_stdvec(&rec).expect("channel record encodes");
            zeroize::Zeroize::zeroize(&mut rec.key);
            for (_, k) in &mut rec.generations {
                zeroize::Zeroize::zeroize(k);
            }
            out
        }
    }

    /// Decode a channel's keys.
    pub fn decode(bytes: &[u8]) -> Result<ChannelKeys> {
        Self::decode_named(bytes).map(|(k, _)| k)
    }

    /// Decode a channel's keys and the name its invite gave it.
    pub fn decode_named(bytes: &[u8]) -> Result<(ChannelKeys, Option<String>)> {
        let bad = |e: postcard::Error| Error::corrupted("channel record", e);
        let (id, mut key, name, mut later) = match bytes.first() {
            Some(1) => {
                let rec: ChannelRecord = postcard::from_bytes(bytes).map_err(bad)?;
                (rec.id, rec.key, None, Vec::new())
            }
            Some(2) => {
                let rec: ChannelRecordV2 = postcard::from_bytes(bytes).map_err(bad)?;
                if rec.invited_name.as_ref().is_some_and(|n| n.len() > MAX_INVITED_NAME) {
                    return Err(Error::corrupted("channel record", "invited name too long"));
                }
                (rec.id, rec.key, rec.invited_name, Vec::new())
            }
            Some(3) => {
                let rec: ChannelRecordV3 = postcard::from_bytes(bytes).map_err(bad)?;
                if rec.invited_name.as_ref().is_some_and(|n| n.len() > MAX_INVITED_NAME) {
                    return Err(Error::corrupted("channel record", "invited name too long"));
                }
                if rec.generations.len() > MAX_GENERATIONS || rec.generations.iter().any(|(n, _)| *n == 0) {
                    return Err(Error::corrupted("channel record", "bad key generations"));
                }
                (rec.id, rec.key, rec.invited_name, rec.generations)
            }
            other => {
                return Err(Error::UnsupportedFormat {
                    what: "channel record",
                    found: other.copied().unwrap_or(0),
                    expected: Self::VERSION,
                });
            }
        };
        let mut keys = ChannelKeys::new(id, SecretKey::from_bytes(key));
        zeroize::Zeroize::zeroize(&mut key);
        for (n, k) in &mut later {
            keys.add_generation(*n, SecretKey::from_bytes(*k));
            zeroize::Zeroize::zeroize(k);
        }
        Ok((keys, name))
    }
}
