//! Invite and link tickets: the text a user copies from one device to another.
//!
//! An invite carries a channel's id and name, an invite id and the invite's
//! secret (no channel key: a member's node lets the holder in while the
//! invite is open, and seals the keys to the new device); an invite of
//! before invites ended carried the channel key itself. A link carries a
//! one-time secret that pairs a new device with an existing one. Both carry the addresses
//! where the issuing node listens.
//!
//! ```text
//! ticket   = "hearth1" base32(body | checksum)
//! body     = version u8 (= 1) | postcard(kind)
//! kind     = 0 Invite {channel [32], key [32], name str, addrs [str]}  (written before invites ended)
//!          | 1 Link   {secret [32], addrs [str]}            (written before links expired)
//!          | 2 Link   {secret [32], expires u64, addrs [str]} (expires: unix seconds)
//!          | 3 Join   {channel [32], name str, invite [16], secret [32], expires u64, addrs [str]}
//!                     (expires: unix seconds, 0 for never; shown, the roster enforces it)
//! checksum = blake3(body)[..4]
//! ```
//!
//! base32 is RFC 4648's alphabet in lowercase, without padding, so a ticket is a
//! single word a terminal or chat selects with one double click. The checksum
//! only catches a bad copy; it authenticates nothing. Addresses travel as their
//! text form, so a ticket never depends on multiaddr's binary codec.
//!
//! Decoding is strict: each ticket has exactly one text form, and anything else
//! (overlong varints, stray base32 bits, a multiaddr spelled unusually, trailing
//! bytes) is refused. The text is capped before it is decoded, and decoding
//! borrows from it, so a hostile ticket costs at most a few kilobytes.

use std::fmt;
use std::str::FromStr;

use hearth_core::{ChannelId, ChannelKeys, MAX_NAME_BYTES, SecretKey};
use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

/// What every ticket starts with: the app, and the text form's version.
pub const PREFIX: &str = "hearth1";
/// The body version this code writes and reads.
pub const VERSION: u8 = 1;
/// Longest ticket text, in bytes (after trimming whitespace).
pub const MAX_TEXT: usize = 8 * 1024;
/// Most addresses in one ticket.
pub const MAX_ADDRS: usize = 16;
/// Longest address, in bytes of its text form.
pub const MAX_ADDR_BYTES: usize = 256;

/// Bytes of blake3 checksum after the body.
const CHECKSUM: usize = 4;

/// A ticket: what it grants, and where to reach the node that issued it.
///
/// Build one with [`Ticket::invite`] or [`Ticket::link`], which check the caps
/// [`Ticket::decode`] enforces; a ticket built from the variants directly that
/// exceeds them still encodes, but does not decode.
///
/// The text form ([`Ticket::encode`], `Display`) contains the secret key in the
/// clear: it is meant to be shown to its owner and nobody else. `Debug` never
/// prints keys.
#[derive(Clone, PartialEq, Eq)]
pub enum Ticket {
    /// Join a channel through an invite: a member's node lets the holder in
    /// while the invite is open (see `hearth_store::Store::admit`).
    Join {
        /// The channel.
        channel: ChannelId,
        /// The channel's name at the time of the invite; may be empty.
        name: String,
        /// The invite's id.
        invite: [u8; 16],
        /// The invite's secret (it signs the holder's join).
        secret: SecretKey,
        /// When the invite ends (unix seconds), if it does. Shown to the
        /// holder; members check the end themselves.
        expires: Option<u64>,
        /// Where the inviting node listens.
        addrs: Vec<Multiaddr>,
    },
    /// Join a channel (a ticket of before invites ended): its key makes the
    /// holder a member.
    Invite {
        /// The channel.
        channel: ChannelId,
        /// The channel key.
        key: SecretKey,
        /// The channel's name at the time of the invite; may be empty.
        name: String,
        /// Where the inviting node listens.
        addrs: Vec<Multiaddr>,
    },
    /// Link a new device to this user: a one-time secret both sides prove.
    Link {
        /// A fresh 32-byte secret, good for one pairing.
        secret: SecretKey,
        /// Where the linking node listens.
        addrs: Vec<Multiaddr>,
        /// When the offer ends (unix seconds); `None` in a ticket written
        /// before links expired (the linking node ends its offer anyway).
        expires: Option<u64>,
    },
}

/// Why a ticket was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TicketError {
    /// The text does not start with [`PREFIX`]: not a Hearth ticket.
    #[error("not a Hearth ticket (it should start with \"{PREFIX}\")")]
    WrongPrefix,
    /// A character outside lowercase base32, or a length base32 cannot produce.
    #[error("the ticket contains characters that do not belong: copy it again")]
    BadEncoding,
    /// The checksum does not match: the text was altered or cut.
    #[error("the ticket is damaged or incomplete: copy it again")]
    BadChecksum,
    /// Written by a version of Hearth this one cannot read.
    #[error("ticket version {found} is not supported (this version of Hearth reads version {expected})")]
    UnsupportedVersion {
        /// The ticket's version.
        found: u8,
        /// The version this code reads.
        expected: u8,
    },
    /// Over one of the caps: text length, address count or length, name length.
    #[error("the ticket's {what} is {size}, over the limit of {limit}")]
    TooLarge {
        /// What is too large.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The cap.
        limit: usize,
    },
    /// The checksum holds but the content does not decode, or not canonically.
    #[error("malformed ticket: {0}")]
    Malformed(String),
}

/// The body after the version byte. Strings borrow from the decoded bytes so the
/// caps are checked before anything is copied out. The key bytes are wiped on drop.
#[derive(Serialize, Deserialize)]
enum Wire<'a> {
    Invite {
        channel: ChannelId,
        key: [u8; 32],
        name: &'a str,
        #[serde(borrow)]
        addrs: Vec<&'a str>,
    },
    Link {
        secret: [u8; 32],
        #[serde(borrow)]
        addrs: Vec<&'a str>,
    },
    LinkUntil {
        secret: [u8; 32],
        expires: u64,
        #[serde(borrow)]
        addrs: Vec<&'a str>,
    },
    Join {
        channel: ChannelId,
        name: &'a str,
        invite: [u8; 16],
        secret: [u8; 32],
        expires: u64,
        #[serde(borrow)]
        addrs: Vec<&'a str>,
    },
}

impl Drop for Wire<'_> {
    fn drop(&mut self) {
        match self {
            Wire::Invite { key, .. } => key.zeroize(),
            Wire::Link { secret, .. } | Wire::LinkUntil { secret, .. } | Wire::Join { secret, .. } => secret.zeroize(),
        }
    }
}

impl Ticket {
    /// An invite to the channel of `keys`, named `name`, reachable at `addrs`.
    pub fn invite(keys: &ChannelKeys, name: impl Into<String>, addrs: Vec<Multiaddr>) -> Result<Self, TicketError> {
        let ticket = Ticket::Invite {
            channel: keys.id(),
            key: keys.key().clone(),
            name: name.into(),
            addrs,
        };
        ticket.check_caps()?;
        Ok(ticket)
    }

    /// A ticket for invite `invite` (secret `secret`, ending at `expires`,
    /// unix seconds) of `channel`, named `name`, reachable at `addrs`.
    pub fn join(
        channel: ChannelId,
        name: impl Into<String>,
        invite: [u8; 16],
        secret: SecretKey,
        expires: Option<u64>,
        addrs: Vec<Multiaddr>,
    ) -> Result<Self, TicketError> {
        let ticket = Ticket::Join {
            channel,
            name: name.into(),
            invite,
            secret,
            expires: expires.filter(|&e| e != 0),
            addrs,
        };
        ticket.check_caps()?;
        Ok(ticket)
    }

    /// A link ticket for the one-time `secret`, reachable at `addrs`, good
    /// until `expires` (unix seconds).
    pub fn link(secret: SecretKey, addrs: Vec<Multiaddr>, expires: u64) -> Result<Self, TicketError> {
        let ticket = Ticket::Link {
            secret,
            addrs,
            expires: Some(expires),
        };
        ticket.check_caps()?;
        Ok(ticket)
    }

    /// When a link ticket's offer or an invite ends (unix seconds), if it says.
    pub fn expires(&self) -> Option<u64> {
        match self {
            Ticket::Link { expires, .. } | Ticket::Join { expires, .. } => *expires,
            Ticket::Invite { .. } => None,
        }
    }

    /// The channel's keys, for an invite of before invites ended.
    pub fn channel_keys(&self) -> Option<ChannelKeys> {
        match self {
            Ticket::Invite { channel, key, .. } => Some(ChannelKeys::new(*channel, key.clone())),
            Ticket::Link { .. } | Ticket::Join { .. } => None,
        }
    }

    /// The invite's id, for an invite that can end.
    pub fn invite_id(&self) -> Option<[u8; 16]> {
        match self {
            Ticket::Join { invite, .. } => Some(*invite),
            Ticket::Invite { .. } | Ticket::Link { .. } => None,
        }
    }

    /// Where the issuing node listens.
    pub fn addrs(&self) -> &[Multiaddr] {
        match self {
            Ticket::Invite { addrs, .. } | Ticket::Link { addrs, .. } | Ticket::Join { addrs, .. } => addrs,
        }
    }

    /// The text form: [`PREFIX`] and the base32 of body and checksum.
    pub fn encode(&self) -> String {
        let addrs: Vec<String> = self.addrs().iter().map(Multiaddr::to_string).collect();
        let addrs = addrs.iter().map(String::as_str).collect();
        let wire = match self {
            Ticket::Invite { channel, key, name, .. } => Wire::Invite {
                channel: *channel,
                key: *key.expose(),
                name,
                addrs,
            },
            Ticket::Join {
                channel,
                name,
                invite,
                secret,
                expires,
                ..
            } => Wire::Join {
                channel: *channel,
                name,
                invite: *invite,
                secret: *secret.expose(),
                expires: expires.unwrap_or(0),
                addrs,
            },
            Ticket::Link {
                secret, expires: None, ..
            } => Wire::Link {
                secret: *secret.expose(),
                addrs,
            },
            Ticket::Link {
                secret,
                expires: Some(expires),
                ..
            } => Wire::LinkUntil {
                secret: *secret.expose(),
                expires: *expires,
                addrs,
            },
        };
        // Reserve enough up front that the buffer holding the key never reallocates
        // (a reallocation would leave an unwiped copy behind). Over-long tickets
        // built by hand may still grow it; they do not decode anyway.
        let mut buf = Vec::with_capacity(MAX_TEXT);
        buf.push(VERSION);
        let mut body = Zeroizing::new(postcard::to_extend(&wire, buf).expect("tickets encode"));
        let sum = blake3::hash(&body);
        body.extend_from_slice(&sum.as_bytes()[..CHECKSUM]);
        let mut text = String::with_capacity(PREFIX.len() + base32_len(body.len()));
        text.push_str(PREFIX);
        base32_encode(&body, &mut text);
        text
    }

    /// Parse a ticket's text form; whitespace around it is ignored.
    pub fn decode(text: &str) -> Result<Self, TicketError> {
        let text = text.trim();
        if text.len() > MAX_TEXT {
            return Err(TicketError::TooLarge {
                what: "text length",
                size: text.len(),
                limit: MAX_TEXT,
            });
        }
        let b32 = text.strip_prefix(PREFIX).ok_or(TicketError::WrongPrefix)?;
        let data = Zeroizing::new(base32_decode(b32).ok_or(TicketError::BadEncoding)?);
        // A body holds at least its version byte.
        let body_len = data
            .len()
            .checked_sub(CHECKSUM)
            .filter(|&n| n > 0)
            .ok_or(TicketError::BadChecksum)?;
        let (body, sum) = data.split_at(body_len);
        if blake3::hash(body).as_bytes()[..CHECKSUM] != *sum {
            return Err(TicketError::BadChecksum);
        }
        if body[0] != VERSION {
            return Err(TicketError::UnsupportedVersion {
                found: body[0],
                expected: VERSION,
            });
        }
        let (wire, rest) =
            postcard::take_from_bytes::<Wire>(&body[1..]).map_err(|e| TicketError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(TicketError::Malformed("trailing bytes".into()));
        }
        let ticket = match &wire {
            Wire::Invite {
                channel,
                key,
                name,
                addrs,
            } => {
                check_name(name.len())?;
                Ticket::Invite {
                    channel: *channel,
                    key: SecretKey::from_bytes(*key),
                    name: (*name).to_owned(),
                    addrs: parse_addrs(addrs)?,
                }
            }
            Wire::Link { secret, addrs } => Ticket::Link {
                secret: SecretKey::from_bytes(*secret),
                addrs: parse_addrs(addrs)?,
                expires: None,
            },
            Wire::LinkUntil { secret, expires, addrs } => Ticket::Link {
                secret: SecretKey::from_bytes(*secret),
                addrs: parse_addrs(addrs)?,
                expires: Some(*expires),
            },
            Wire::Join {
                channel,
                name,
                invite,
                secret,
                expires,
                addrs,
            } => {
                check_name(name.len())?;
                Ticket::Join {
                    channel: *channel,
                    name: (*name).to_owned(),
                    invite: *invite,
                    secret: SecretKey::from_bytes(*secret),
                    expires: (*expires != 0).then_some(*expires),
                    addrs: parse_addrs(addrs)?,
                }
            }
        };
        // One ticket, one text: anything the encoder would not have written (an
        // overlong varint, stray bits in the last base32 character, an address
        // spelled differently from its canonical form) is refused.
        if *Zeroizing::new(ticket.encode()) != text {
            return Err(TicketError::Malformed("not in canonical form".into()));
        }
        Ok(ticket)
    }

    fn check_caps(&self) -> Result<(), TicketError> {
        if let Ticket::Invite { name, .. } | Ticket::Join { name, .. } = self {
            check_name(name.len())?;
        }
        check_addr_count(self.addrs().len())?;
        for a in self.addrs() {
            check_addr_len(a.to_string().len())?;
        }
        let size = Zeroizing::new(self.encode()).len();
        if size > MAX_TEXT {
            return Err(TicketError::TooLarge {
                what: "text length",
                size,
                limit: MAX_TEXT,
            });
        }
        Ok(())
    }
}

fn check_name(size: usize) -> Result<(), TicketError> {
    if size > MAX_NAME_BYTES {
        return Err(TicketError::TooLarge {
            what: "channel name",
            size,
            limit: MAX_NAME_BYTES,
        });
    }
    Ok(())
}

fn check_addr_count(size: usize) -> Result<(), TicketError> {
    if size > MAX_ADDRS {
        return Err(TicketError::TooLarge {
            what: "address count",
            size,
            limit: MAX_ADDRS,
        });
    }
    Ok(())
}

fn check_addr_len(size: usize) -> Result<(), TicketError> {
    if size > MAX_ADDR_BYTES {
        return Err(TicketError::TooLarge {
            what: "address length",
            size,
            limit: MAX_ADDR_BYTES,
        });
    }
    Ok(())
}

fn parse_addrs(addrs: &[&str]) -> Result<Vec<Multiaddr>, TicketError> {
    check_addr_count(addrs.len())?;
    for a in addrs {
        check_addr_len(a.len())?;
    }
    addrs
        .iter()
        .map(|a| Multiaddr::from_str(a).map_err(|e| TicketError::Malformed(format!("address {a:?}: {e}"))))
        .collect()
}

impl fmt::Display for Ticket {
    /// The text form, secret included (see [`Ticket::encode`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&Zeroizing::new(self.encode()))
    }
}

impl FromStr for Ticket {
    type Err = TicketError;

    fn from_str(s: &str) -> Result<Self, TicketError> {
        Ticket::decode(s)
    }
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ticket::Invite {
                channel, name, addrs, ..
            } => f
                .debug_struct("Invite")
                .field("channel", channel)
                .field("key", &"<redacted>")
                .field("name", name)
                .field("addrs", addrs)
                .finish(),
            Ticket::Link { addrs, expires, .. } => f
                .debug_struct("Link")
                .field("secret", &"<redacted>")
                .field("addrs", addrs)
                .field("expires", expires)
                .finish(),
            Ticket::Join {
                channel,
                name,
                invite,
                expires,
                addrs,
                ..
            } => f
                .debug_struct("Join")
                .field("channel", channel)
                .field("name", name)
                .field("invite", &hearth_core::member::invite_hex(invite))
                .field("secret", &"<redacted>")
                .field("expires", expires)
                .field("addrs", addrs)
                .finish(),
        }
    }
}

/// RFC 4648 base32, lowercase.
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

fn base32_len(bytes: usize) -> usize {
    (bytes * 8).div_ceil(5)
}

fn base32_encode(data: &[u8], out: &mut String) {
    let mut acc = 0u16;
    let mut bits = 0;
    for &b in data {
        acc = (acc << 8) | u16::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[usize::from((acc >> bits) & 31)]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[usize::from((acc << (5 - bits)) & 31)]));
    }
}

/// Strict unpadded decoding: `None` for a character outside the alphabet, a
/// length no byte string encodes to, or nonzero bits left over in the last
/// character (so each byte string has exactly one encoding).
fn base32_decode(text: &str) -> Option<Vec<u8>> {
    if matches!(text.len() % 8, 1 | 3 | 6) {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let mut acc = 0u16;
    let mut bits = 0;
    for c in text.bytes() {
        let v = match c {
            b'a'..=b'z' => c - b'a',
            b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        acc = ((acc << 5) | u16::from(v)) & 0x1fff;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    // The bits past the last whole byte must be zero padding.
    if acc & ((1 << bits) - 1) != 0 {
        out.zeroize();
        return None;
    }
    acc.zeroize();
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> Vec<Multiaddr> {
        vec![
            "/ip4/192.168.1.20/tcp/4001".parse().unwrap(),
            "/ip6/::1/udp/4001/quic-v1".parse().unwrap(),
            "/dns4/relay.example.org/tcp/443/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
                .parse()
                .unwrap(),
        ]
    }

    fn keys() -> ChannelKeys {
        ChannelKeys::new(ChannelId([0x42; 32]), SecretKey::from_bytes([0xab; 32]))
    }

    fn invite() -> Ticket {
        Ticket::invite(&keys(), "général 🔥", addrs()).unwrap()
    }

    fn link() -> Ticket {
        Ticket::link(SecretKey::from_bytes([0xcd; 32]), addrs(), 1_800_000_000).unwrap()
    }

    fn join(expires: Option<u64>) -> Ticket {
        Ticket::join(
            ChannelId([0x42; 32]),
            "général",
            [0x99; 16],
            SecretKey::from_bytes([0xef; 32]),
            expires,
            addrs(),
        )
        .unwrap()
    }

    #[test]
    fn base32_matches_rfc_4648_vectors() {
        let vectors = [
            ("", ""),
            ("f", "my"),
            ("fo", "mzxq"),
            ("foo", "mzxw6"),
            ("foob", "mzxw6yq"),
            ("fooba", "mzxw6ytb"),
            ("foobar", "mzxw6ytboi"),
        ];
        for (plain, coded) in vectors {
            let mut s = String::new();
            base32_encode(plain.as_bytes(), &mut s);
            assert_eq!(s, coded);
            assert_eq!(base32_len(plain.len()), coded.len());
            assert_eq!(base32_decode(coded).unwrap(), plain.as_bytes());
        }
        // "my" is "f"; "mz" leaves a set bit in the padding.
        assert_eq!(base32_decode("mz"), None);
        assert_eq!(base32_decode("MY"), None);
        assert_eq!(base32_decode("m"), None);
        assert_eq!(base32_decode("my="), None);
    }

    #[test]
    fn both_kinds_round_trip() {
        for t in [
            invite(),
            link(),
            Ticket::invite(&keys(), "", vec![]).unwrap(),
            join(Some(1_800_000_000)),
            join(None),
        ] {
            let text = t.to_string();
            assert!(text.starts_with(PREFIX));
            assert!(text.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
            let back: Ticket = text.parse().unwrap();
            assert_eq!(back, t);
            assert_eq!(back.to_string(), text);
        }
        let keys_back = invite().channel_keys().unwrap();
        assert_eq!(keys_back.id(), keys().id());
        assert_eq!(keys_back.wire(), keys().wire());
        assert!(link().channel_keys().is_none());
        assert_eq!(link().addrs(), addrs());
    }

    #[test]
    fn surrounding_whitespace_is_ignored() {
        let text = invite().to_string();
        assert_eq!(Ticket::decode(&format!("  {text}\r\n")).unwrap(), invite());
        let inner = format!("{} {}", &text[..20], &text[20..]);
        assert_eq!(Ticket::decode(&inner), Err(TicketError::BadEncoding));
    }

    #[test]
    fn every_single_character_substitution_is_refused() {
        let text = invite().to_string();
        let mut tried = 0;
        for (i, old) in text.char_indices() {
            for new in ['a', 'q', 'z', '2', '7', 'A', '1', '-'] {
                if new == old {
                    continue;
                }
                let mut bad = text.clone();
                bad.replace_range(i..i + 1, new.encode_utf8(&mut [0; 4]));
                assert!(
                    Ticket::decode(&bad).is_err(),
                    "substitution at {i} with {new:?} decodes"
                );
                tried += 1;
            }
        }
        assert!(tried > 500, "{tried} substitutions");
    }

    #[test]
    fn truncation_is_refused() {
        let text = link().to_string();
        for cut in PREFIX.len()..text.len() {
            let err = Ticket::decode(&text[..cut]).unwrap_err();
            assert!(
                matches!(err, TicketError::BadChecksum | TicketError::BadEncoding),
                "cut at {cut}: {err:?}"
            );
        }
        assert_eq!(Ticket::decode(""), Err(TicketError::WrongPrefix));
        assert_eq!(Ticket::decode(PREFIX), Err(TicketError::BadChecksum));
    }

    #[test]
    fn a_wrong_prefix_is_refused() {
        let text = invite().to_string();
        for bad in [
            text.replacen("hearth1", "hearth2", 1),
            text.replacen("hearth1", "", 1),
            text.to_uppercase(),
        ] {
            assert_eq!(Ticket::decode(&bad), Err(TicketError::WrongPrefix));
        }
    }

    /// A ticket whose body is `body`, with a valid checksum: what an attacker sends.
    fn forge(body: &[u8]) -> String {
        let mut data = body.to_vec();
        data.extend_from_slice(&blake3::hash(body).as_bytes()[..CHECKSUM]);
        let mut text = PREFIX.to_owned();
        base32_encode(&data, &mut text);
        text
    }

    #[test]
    fn forged_bodies_are_refused() {
        let valid = {
            let text = link().to_string();
            let data = base32_decode(&text[PREFIX.len()..]).unwrap();
            data[..data.len() - CHECKSUM].to_vec()
        };
        assert_eq!(Ticket::decode(&forge(&valid)).unwrap(), link());

        let mut version_2 = valid.clone();
        version_2[0] = 2;
        assert_eq!(
            Ticket::decode(&forge(&version_2)),
            Err(TicketError::UnsupportedVersion { found: 2, expected: 1 })
        );

        let mut trailing = valid.clone();
        trailing.push(0);
        assert!(matches!(
            Ticket::decode(&forge(&trailing)),
            Err(TicketError::Malformed(_))
        ));

        let mut kind_9 = valid.clone();
        kind_9[1] = 9;
        assert!(matches!(
            Ticket::decode(&forge(&kind_9)),
            Err(TicketError::Malformed(_))
        ));

        let link_with = |addrs: &[&str]| {
            let mut body = vec![VERSION, 1];
            body.extend_from_slice(&[7; 32]);
            body.push(addrs.len() as u8);
            for a in addrs {
                body.push(a.len() as u8);
                body.extend_from_slice(a.as_bytes());
            }
            forge(&body)
        };
        assert!(Ticket::decode(&link_with(&["/ip4/1.2.3.4/tcp/5"])).is_ok());
        assert!(matches!(
            Ticket::decode(&link_with(&["not an address"])),
            Err(TicketError::Malformed(_))
        ));
        // Parses, but is not how the address prints: two texts for one ticket.
        assert!(matches!(
            Ticket::decode(&link_with(&["/ip4/1.2.3.4/tcp/05"])),
            Err(TicketError::Malformed(_))
        ));
        assert!(matches!(
            Ticket::decode(&link_with(&["/ip4/1.2.3.4/tcp/5"; MAX_ADDRS + 1])),
            Err(TicketError::TooLarge {
                what: "address count",
                ..
            })
        ));

        // An overlong varint for the address count (1 as 0x81 0x00).
        let mut overlong = vec![VERSION, 1];
        overlong.extend_from_slice(&[7; 32]);
        overlong.extend_from_slice(&[0x81, 0x00, 1, b'/']);
        assert!(matches!(
            Ticket::decode(&forge(&overlong)),
            Err(TicketError::Malformed(_))
        ));
    }

    #[test]
    fn oversized_tickets_are_refused() {
        let long = format!("{PREFIX}{}", "a".repeat(MAX_TEXT));
        assert!(matches!(
            Ticket::decode(&long),
            Err(TicketError::TooLarge {
                what: "text length",
                ..
            })
        ));

        let name = "n".repeat(MAX_NAME_BYTES + 1);
        assert!(matches!(
            Ticket::invite(&keys(), name.clone(), vec![]),
            Err(TicketError::TooLarge { .. })
        ));
        let by_hand = Ticket::Invite {
            channel: keys().id(),
            key: keys().key().clone(),
            name,
            addrs: vec![],
        };
        assert!(matches!(
            Ticket::decode(&by_hand.to_string()),
            Err(TicketError::TooLarge {
                what: "channel name",
                ..
            })
        ));

        let many = vec!["/ip4/10.0.0.1/tcp/1".parse::<Multiaddr>().unwrap(); MAX_ADDRS + 1];
        assert!(matches!(
            Ticket::link(SecretKey::from_bytes([1; 32]), many, 1),
            Err(TicketError::TooLarge { .. })
        ));
        let dns = format!("/dns4/{}/tcp/1", "a".repeat(MAX_ADDR_BYTES));
        let long_addr = vec![dns.parse::<Multiaddr>().unwrap()];
        assert!(matches!(
            Ticket::link(SecretKey::from_bytes([1; 32]), long_addr.clone(), 1),
            Err(TicketError::TooLarge { .. })
        ));
        let by_hand = Ticket::Link {
            secret: SecretKey::from_bytes([1; 32]),
            addrs: long_addr,
            expires: None,
        };
        assert!(matches!(
            Ticket::decode(&by_hand.to_string()),
            Err(TicketError::TooLarge {
                what: "address length",
                ..
            })
        ));
    }

    #[test]
    fn link_tickets_carry_their_end_and_old_ones_still_read() {
        let t = link();
        assert_eq!(t.expires(), Some(1_800_000_000));
        assert_eq!(Ticket::decode(&t.to_string()).unwrap(), t);
        // Written before links expired: no end, still read, still one text.
        let old = Ticket::Link {
            secret: SecretKey::from_bytes([0xcd; 32]),
            addrs: addrs(),
            expires: None,
        };
        let text = old.to_string();
        assert_ne!(text, t.to_string());
        assert_eq!(Ticket::decode(&text).unwrap(), old);
        assert_eq!(invite().expires(), None);
    }

    #[test]
    fn an_invite_that_ends_carries_no_channel_key() {
        let t = join(Some(1_800_000_000));
        assert!(t.channel_keys().is_none(), "no key to join with");
        assert_eq!(t.invite_id(), Some([0x99; 16]));
        assert_eq!(t.expires(), Some(1_800_000_000));
        assert_eq!(join(None).expires(), None);
        assert_eq!(t.addrs(), addrs());
        assert_eq!(invite().invite_id(), None);
        // A zero end is "never", one text only.
        let zero = Ticket::join(
            ChannelId([1; 32]),
            "",
            [1; 16],
            SecretKey::from_bytes([2; 32]),
            Some(0),
            vec![],
        )
        .unwrap();
        assert_eq!(zero, join_none_of(&zero));
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        assert!(matches!(
            Ticket::join(
                ChannelId([1; 32]),
                long,
                [1; 16],
                SecretKey::from_bytes([2; 32]),
                None,
                vec![]
            ),
            Err(TicketError::TooLarge { .. })
        ));
    }

    fn join_none_of(t: &Ticket) -> Ticket {
        let back: Ticket = t.to_string().parse().unwrap();
        assert_eq!(back.expires(), None);
        back
    }

    #[test]
    fn debug_never_prints_keys() {
        for (t, hex) in [(invite(), "abab"), (link(), "cdcd"), (join(None), "efef")] {
            let debug = format!("{t:?} {:?}", Ticket::decode(&t.to_string()));
            assert!(!debug.contains(hex), "{debug}");
            assert!(!debug.to_lowercase().contains(&hex.repeat(2)), "{debug}");
            assert!(debug.contains("<redacted>"));
            assert!(!debug.contains(&t.to_string()[PREFIX.len()..]));
        }
        assert!(format!("{:?}", invite()).contains("général"));
    }
}
