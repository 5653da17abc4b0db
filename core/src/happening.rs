//! What a change says happened, in chat terms: the facts an app's events
//! report ([`crate::ChangeEffects::happenings`]). Posts are not here: a
//! change's posts are [`crate::ChangeEffects::posts`], with their thread
//! roots in [`crate::ChangeEffects::reply_roots`].

use crate::member::{Action, MemberBody};
use crate::{MessageId, UserId};

/// One chat-level fact a change states (its author is the change's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Happening {
    /// A message's text was replaced.
    Edited(MessageId),
    /// A message was deleted.
    Deleted(MessageId),
    /// A reaction was added (`added`) or taken back.
    Reacted {
        /// The message.
        msg: MessageId,
        /// The reaction.
        emoji: String,
        /// Added, or taken back.
        added: bool,
    },
    /// The author's read marker moved to a message.
    ReadUpTo(MessageId),
    /// The channel was named (created or renamed).
    Renamed(String),
    /// A user joined, or was added back (as a roster op says; the roster's
    /// fold may refuse the op, so a store checks the roster after).
    Joined(UserId),
    /// A user left or was removed (as the roster op says; see `Joined`).
    Left(UserId),
}

impl Happening {
    /// What a membership op written by `writer` says about who is in.
    pub fn of_member_op(writer: &UserId, body: &MemberBody) -> Option<Happening> {
        match &body.action {
            Action::Create => Some(Happening::Joined(*writer)),
            Action::Add { user, .. } | Action::Join { user, .. } => Some(Happening::Joined(*user)),
            Action::Remove { user, .. } | Action::RemoveSigned { user, .. } => Some(Happening::Left(*user)),
            _ => None,
        }
    }
}
