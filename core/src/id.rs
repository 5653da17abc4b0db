//! Identifiers: users, devices, channels and messages.
//!
//! Every id has a fixed-width byte form (used in keys and on the wire) and a
//! lowercase-hex text form (used by the CLI and in documents).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::hlc::Timestamp;

/// Fill `buf` from the operating system's random source.
pub fn random_bytes(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|_| Error::Random)
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

pub(crate) fn to_hex(bytes: &[u8]) -> String {
    let mut s = vec![0u8; bytes.len() * 2];
    hex_into(bytes, &mut s);
    String::from_utf8(s).expect("hex is ASCII")
}

/// `bytes` in lower-case hex into `out` (twice as long), without a
/// `String`: for keys built many at a time (`crate::bulk`).
pub(crate) fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = HEX_DIGITS[(b >> 4) as usize];
        pair[1] = HEX_DIGITS[(b & 15) as usize];
    }
}

pub(crate) fn from_hex<const N: usize>(what: &'static str, s: &str) -> Result<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != N * 2 {
        return Err(Error::invalid(
            what,
            format!("expected {} hex digits, got {}", N * 2, b.len()),
        ));
    }
    let digit = |c: u8| -> Result<u8> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(Error::invalid(what, "not a hex digit")),
        }
    };
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (digit(b[2 * i])? << 4) | digit(b[2 * i + 1])?;
    }
    Ok(out)
}

/// Ids are raw bytes in binary formats (postcard: on disk and on the wire) and
/// lowercase hex in human-readable ones (JSON: the CLI, an app's API), so the
/// same text a user copies from `hearth log` works in an import file.
macro_rules! serde_bytes_or_hex {
    ($name:ident, $len:expr) => {
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.serialize_str(&to_hex(&self.0))
                } else {
                    self.0.serialize(s)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                if d.is_human_readable() {
                    let s = String::deserialize(d)?;
                    s.parse().map_err(serde::de::Error::custom)
                } else {
                    <[u8; $len]>::deserialize(d).map($name)
                }
            }
        }
    };
}

macro_rules! byte_id {
    ($(#[$doc:meta])* $name:ident, $len:expr, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub [u8; $len]);

        serde_bytes_or_hex!($name, $len);

        impl $name {
            /// Length of the byte form.
            pub const LEN: usize = $len;

            /// The byte form.
            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// The lowercase-hex text form.
            pub fn to_hex(&self) -> String {
                to_hex(&self.0)
            }

            /// Parse from a byte slice of exactly [`Self::LEN`] bytes.
            pub fn from_slice(b: &[u8]) -> Result<Self> {
                <[u8; $len]>::try_from(b)
                    .map($name)
                    .map_err(|_| Error::invalid($what, format!("expected {} bytes, got {}", $len, b.len())))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                from_hex::<$len>($what, s).map($name)
            }
        }
    };
}

byte_id!(
    /// A user identity: an ed25519 public key. All devices of a user share it.
    UserId, 32, "user id"
);
byte_id!(
    /// A device: 16 random bytes, also the device's automerge actor id, so two
    /// devices of one user never write under the same actor.
    DeviceId, 16, "device id"
);
byte_id!(
    /// A channel's public identity: 32 random bytes chosen at creation.
    ChannelId, 32, "channel id"
);
byte_id!(
    /// A channel's name on the wire and in sled keys: a keyed hash of the channel
    /// key, so whoever reads the disk or relays entries learns no channel name or id.
    WireId, 32, "wire id"
);

impl WireId {
    /// Its first 8 bytes in hex: how traces, logs and error messages name a
    /// channel's wire id (what peers and relays know it by) without the whole.
    pub fn short(&self) -> String {
        self.0[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl DeviceId {
    /// A fresh random device id.
    pub fn generate() -> Result<Self> {
        let mut b = [0u8; 16];
        random_bytes(&mut b)?;
        Ok(DeviceId(b))
    }
}

/// The 8-byte writer tag in message ids: a hash of the author and device.
///
/// A device id is 16 bytes its owner picks at will, so a plain device prefix would
/// prove nothing: a member could register a device with another's prefix and
/// create a message under their id. Binding the user (whose key signs the feed)
/// makes a collision cost about 2^64 work.
///
/// Every post's id is checked against it when a view is built, and a
/// channel's posts come from a few devices: the last few tags a thread
/// computed are kept (`WRITER_TAGS`), which saves the three blake3
/// compressions a tag costs on all but the first post of a device.
pub fn writer_tag(user: &UserId, device: &DeviceId) -> [u8; 8] {
    RECENT_TAGS.with(|recent| {
        let mut recent = recent.borrow_mut();
        if let Some((_, _, tag)) = recent.iter().find(|(u, d, _)| u == user && d == device) {
            return *tag;
        }
        let mut h = TAG_HASHER.clone();
        h.update(&user.0);
        h.update(&device.0);
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&h.finalize().as_bytes()[..8]);
        if recent.len() == WRITER_TAGS {
            recent.remove(0);
        }
        recent.push((*user, *device, tag));
        tag
    })
}

/// Writer tags a thread keeps ([`writer_tag`]).
const WRITER_TAGS: usize = 8;

thread_local! {
    static RECENT_TAGS: std::cell::RefCell<Vec<(UserId, DeviceId, [u8; 8])>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// The writer tag's keyed hasher, its context key derived once.
static TAG_HASHER: std::sync::LazyLock<blake3::Hasher> =
    std::sync::LazyLock::new(|| blake3::Hasher::new_derive_key("hearth v1 message writer tag"));

impl ChannelId {
    /// A fresh random channel id.
    pub fn generate() -> Result<Self> {
        let mut b = [0u8; 32];
        random_bytes(&mut b)?;
        Ok(ChannelId(b))
    }

    /// The 4-byte tag embedded in message ids, so a message id alone finds its channel.
    pub fn tag(&self) -> [u8; 4] {
        [self.0[0], self.0[1], self.0[2], self.0[3]]
    }
}

/// An epoch number: the shard of a channel a message lives in.
///
/// Epoch 0 holds the channel's metadata (name, members); messages start at epoch 1.
pub type Epoch = u32;

/// The metadata epoch of every channel.
pub const META_EPOCH: Epoch = 0;

/// A message id: 24 bytes that sort by time.
///
/// Layout (big-endian): `hlc u64 | epoch u32 | channel tag [4] | writer tag [8]`.
/// The HLC makes ids sort by time across devices; the epoch says which epoch
/// document holds the message (edits, reactions, deletes and replies go there);
/// the channel tag finds the channel from the id alone; the writer tag
/// ([`writer_tag`]) keeps two devices that tick the same HLC value apart and ties
/// the id to its author, so nobody else can create a message under it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(pub [u8; 24]);

serde_bytes_or_hex!(MessageId, 24);

impl MessageId {
    /// Length of the byte form.
    pub const LEN: usize = 24;

    /// Assemble an id from its parts; `writer` comes from [`writer_tag`].
    pub fn new(ts: Timestamp, epoch: Epoch, channel: &ChannelId, writer: [u8; 8]) -> Self {
        let mut b = [0u8; 24];
        b[..8].copy_from_slice(&ts.0.to_be_bytes());
        b[8..12].copy_from_slice(&epoch.to_be_bytes());
        b[12..16].copy_from_slice(&channel.tag());
        b[16..24].copy_from_slice(&writer);
        MessageId(b)
    }

    /// The writer tag of the id.
    pub fn writer(&self) -> [u8; 8] {
        self.0[16..24].try_into().expect("8 bytes")
    }

    /// The HLC timestamp of the message.
    pub fn timestamp(&self) -> Timestamp {
        Timestamp(u64::from_be_bytes(self.0[..8].try_into().expect("8 bytes")))
    }

    /// The epoch document that holds the message.
    pub fn epoch(&self) -> Epoch {
        u32::from_be_bytes(self.0[8..12].try_into().expect("4 bytes"))
    }

    /// The tag of the channel the message belongs to.
    pub fn channel_tag(&self) -> [u8; 4] {
        self.0[12..16].try_into().expect("4 bytes")
    }

    /// The lowercase-hex text form (48 digits).
    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", self.to_hex())
    }
}

impl FromStr for MessageId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let b = from_hex::<24>("message id", s)?;
        let id = MessageId(b);
        if id.epoch() == META_EPOCH {
            return Err(Error::invalid("message id", "epoch 0 holds no messages"));
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_id_round_trips_and_sorts_by_time() {
        let c = ChannelId([7; 32]);
        let d = writer_tag(&UserId([1; 32]), &DeviceId([9; 16]));
        let a = MessageId::new(Timestamp(5 << 16), 3, &c, d);
        let b = MessageId::new(Timestamp(6 << 16), 1, &c, d);
        assert!(a < b);
        assert_eq!(a.epoch(), 3);
        assert_eq!(a.timestamp(), Timestamp(5 << 16));
        assert_eq!(a.channel_tag(), [7; 4]);
        assert_eq!(a.to_hex().parse::<MessageId>().unwrap(), a);
    }

    #[test]
    fn ids_are_bytes_in_postcard_and_hex_in_json() {
        let id = MessageId::new(Timestamp(9 << 16), 2, &ChannelId([1; 32]), [3; 8]);
        assert_eq!(postcard::to_stdvec(&id).unwrap(), id.0.to_vec());
        assert_eq!(postcard::from_bytes::<MessageId>(&id.0).unwrap(), id);
        let json = format!("\"{}\"", id.to_hex());
        assert_eq!(serde_json::to_string(&id).unwrap(), json);
        assert_eq!(serde_json::from_str::<MessageId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<MessageId>("\"zz\"").is_err());
        let user = UserId([0xab; 32]);
        assert_eq!(
            postcard::from_bytes::<UserId>(&postcard::to_stdvec(&user).unwrap()).unwrap(),
            user
        );
    }

    /// The kept tags are the tags: ids written before the cache existed
    /// (every fixture) name their writer by the same bytes.
    #[test]
    fn kept_writer_tags_are_the_computed_ones() {
        let computed = |u: &UserId, d: &DeviceId| {
            let mut h = blake3::Hasher::new_derive_key("hearth v1 message writer tag");
            h.update(&u.0);
            h.update(&d.0);
            h.finalize().as_bytes()[..8].to_vec()
        };
        // More writers than kept, asked in an order that evicts and reuses.
        for round in 0..3u8 {
            for i in 0..(WRITER_TAGS as u8 + 3) {
                let (u, d) = (UserId([i; 32]), DeviceId([i.wrapping_mul(round + 1); 16]));
                assert_eq!(writer_tag(&u, &d).to_vec(), computed(&u, &d));
                assert_eq!(writer_tag(&u, &d).to_vec(), computed(&u, &d));
            }
        }
        assert_eq!(
            writer_tag(&UserId([1; 32]), &DeviceId([9; 16])),
            [255, 26, 204, 249, 191, 60, 115, 117],
            "a tag changed its bytes"
        );
    }

    #[test]
    fn bad_hex_is_a_typed_error() {
        assert!(matches!("zz".parse::<MessageId>(), Err(Error::Invalid { .. })));
        assert!(matches!(
            "00".repeat(24).parse::<MessageId>(),
            Err(Error::Invalid { .. })
        ));
        assert_ne!(
            writer_tag(&UserId([1; 32]), &DeviceId([9; 16])),
            writer_tag(&UserId([2; 32]), &DeviceId([9; 16]))
        );
        assert!(matches!(
            "0g".repeat(16).parse::<DeviceId>(),
            Err(Error::Invalid { .. })
        ));
    }
}
