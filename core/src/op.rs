//! Operations: what a user does, before it becomes an automerge change.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::{DeviceId, Epoch, META_EPOCH, MessageId};
use crate::member::MemberBody;

/// Longest message text, in bytes. Keeps every feed entry far below sled's
/// 128 KiB blob threshold (DESIGN.md, durability).
pub const MAX_TEXT_BYTES: usize = 16 * 1024;
/// Longest channel or user name, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Longest reaction, in bytes (an emoji sequence or a short code like `:tada:`).
pub const MAX_EMOJI_BYTES: usize = 64;

/// One user action on a channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Name a new channel (metadata epoch).
    CreateChannel {
        /// The channel name.
        name: String,
    },
    /// Rename the channel (metadata epoch; last writer wins).
    Rename {
        /// The new name.
        name: String,
    },
    /// Set the author's display name in this channel (metadata epoch).
    SetName {
        /// The display name.
        name: String,
    },
    /// Post a message; a reply names the root of its thread.
    Post {
        /// The new message's id (its epoch is the root's epoch for a reply).
        id: MessageId,
        /// The text.
        text: String,
        /// The thread root, for a reply.
        reply_to: Option<MessageId>,
    },
    /// Add the author's reaction to a message.
    React {
        /// The message.
        msg: MessageId,
        /// The reaction.
        emoji: String,
    },
    /// Remove the author's reaction from a message.
    Unreact {
        /// The message.
        msg: MessageId,
        /// The reaction.
        emoji: String,
    },
    /// Replace the text of the author's own message.
    Edit {
        /// The message.
        msg: MessageId,
        /// The new text.
        text: String,
    },
    /// Delete the author's own message (a tombstone: its text leaves every view).
    Delete {
        /// The message.
        msg: MessageId,
    },
    /// Mark the channel read up to and including a message.
    ReadUpTo {
        /// The newest message read.
        msg: MessageId,
    },
    /// A membership change (metadata epoch): this device's `n`-th in the
    /// channel (see [`crate::member`]).
    Member {
        /// The op's number on this device.
        n: u32,
        /// What it says.
        body: MemberBody,
    },
    /// Channel keys sealed to member devices (metadata epoch): a rotation or a
    /// share, this device's `n`-th (see [`crate::rotation`]).
    Keys {
        /// The package's number on this device.
        n: u32,
        /// The sealed keys.
        package: crate::rotation::KeyPackage,
    },
    /// This device holds `author`'s feed up to its message `up_to` (a delivery
    /// receipt: every message of that device up to it has arrived here).
    Delivered {
        /// The writing device whose messages arrived.
        author: DeviceId,
        /// Its newest message held here.
        up_to: MessageId,
    },
    /// Keep the channel's messages `secs` seconds from their time, on every
    /// member's device; 0: for ever (metadata epoch; admins and owners, or
    /// any key holder of a channel without a roster; the setting of the
    /// latest clock `at` stands).
    SetRetention {
        /// Seconds a message is kept; 0: no retention.
        secs: u64,
        /// The writer's clock (HLC) when it was set.
        at: u64,
    },
}

fn check_name(what: &'static str, name: &str) -> Result<()> {
    if name.trim().is_empty() {
        return Err(Error::invalid(what, "empty"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(Error::TooLarge {
            what,
            size: name.len(),
            limit: MAX_NAME_BYTES,
        });
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid(what, "contains control characters"));
    }
    Ok(())
}

pub(crate) fn check_text(text: &str) -> Result<()> {
    if text.is_empty() {
        return Err(Error::invalid("message text", "empty"));
    }
    if text.len() > MAX_TEXT_BYTES {
        return Err(Error::TooLarge {
            what: "message text",
            size: text.len(),
            limit: MAX_TEXT_BYTES,
        });
    }
    Ok(())
}

impl Op {
    /// The epoch document this op belongs in: metadata ops go to epoch 0, message
    /// ops to the epoch of the message they create or target.
    pub fn epoch(&self) -> Epoch {
        match self {
            Op::CreateChannel { .. }
            | Op::Rename { .. }
            | Op::SetName { .. }
            | Op::Delivered { .. }
            | Op::Member { .. }
            | Op::Keys { .. }
            | Op::SetRetention { .. } => META_EPOCH,
            Op::Post { id, .. } => id.epoch(),
            Op::React { msg, .. }
            | Op::Unreact { msg, .. }
            | Op::Edit { msg, .. }
            | Op::Delete { msg }
            | Op::ReadUpTo { msg } => msg.epoch(),
        }
    }

    /// Check sizes and shapes; every op is validated before it is journaled.
    pub fn validate(&self) -> Result<()> {
        match self {
            Op::CreateChannel { name } | Op::Rename { name } => check_name("channel name", name),
            Op::SetName { name } => check_name("user name", name),
            Op::Post { id, text, reply_to } => {
                check_text(text)?;
                if let Some(root) = reply_to
                    && root.epoch() != id.epoch()
                {
                    return Err(Error::invalid("reply", "a reply lives in its root's epoch"));
                }
                Ok(())
            }
            Op::React { emoji, .. } | Op::Unreact { emoji, .. } => {
                if emoji.is_empty() || emoji.chars().any(|c| c.is_control() || c.is_whitespace()) {
                    return Err(Error::invalid(
                        "reaction",
                        "empty or contains spaces/control characters",
                    ));
                }
                if emoji.len() > MAX_EMOJI_BYTES {
                    return Err(Error::TooLarge {
                        what: "reaction",
                        size: emoji.len(),
                        limit: MAX_EMOJI_BYTES,
                    });
                }
                Ok(())
            }
            Op::Edit { text, .. } => check_text(text),
            Op::Member { n, body } => {
                if *n == 0 {
                    return Err(Error::invalid("membership op", "numbered from 1"));
                }
                body.validate()
            }
            Op::Keys { n, package } => {
                if *n == 0 {
                    return Err(Error::invalid("key package", "numbered from 1"));
                }
                package.validate()
            }
            Op::Delete { .. } | Op::ReadUpTo { .. } | Op::Delivered { .. } => Ok(()),
            Op::SetRetention { at, .. } if *at == 0 => Err(Error::invalid("retention", "no clock")),
            Op::SetRetention { .. } => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_and_empty_inputs_are_typed_errors() {
        let id: MessageId = format!("{:016x}00000001{:024x}", 1u64 << 20, 7u64).parse().unwrap();
        let big = "x".repeat(MAX_TEXT_BYTES + 1);
        assert!(matches!(
            Op::Post {
                id,
                text: big,
                reply_to: None
            }
            .validate(),
            Err(Error::TooLarge { .. })
        ));
        assert!(matches!(
            Op::Post {
                id,
                text: String::new(),
                reply_to: None
            }
            .validate(),
            Err(Error::Invalid { .. })
        ));
        assert!(matches!(
            Op::React {
                msg: id,
                emoji: "a b".into()
            }
            .validate(),
            Err(Error::Invalid { .. })
        ));
        assert!(matches!(
            Op::Rename { name: "\u{7}".into() }.validate(),
            Err(Error::Invalid { .. })
        ));
        assert!(
            Op::React {
                msg: id,
                emoji: "👍".into()
            }
            .validate()
            .is_ok()
        );
    }
}
