//! Writing and reading messages: post, reply, react, edit, delete, mark
//! read; pages, threads, unread counts and receipts.

use crate::error::{HearthError, parse_id, parse_opt_id};
use crate::store::Hearth;
use crate::types::{LocatedMessage, Message, Receipts, Thread, messages};

#[uniffi::export]
impl Hearth {
    /// Post a top-level message in `channel`; returns its id once durable.
    pub async fn post(&self, channel: String, text: String) -> Result<String, HearthError> {
        let channel = parse_id(&channel)?;
        let id = self.run(move |h| async move { h.post(channel, &text).await }).await?;
        Ok(id.to_string())
    }

    /// Reply in the thread of message `to` (a reply to a reply joins the
    /// same thread); returns the reply's id once durable.
    pub async fn reply(&self, to: String, text: String) -> Result<String, HearthError> {
        let to = parse_id(&to)?;
        let id = self.run(move |h| async move { h.reply(to, &text).await }).await?;
        Ok(id.to_string())
    }

    /// Add this user's reaction to a message (once per emoji).
    pub async fn react(&self, msg: String, emoji: String) -> Result<(), HearthError> {
        let msg = parse_id(&msg)?;
        self.run(move |h| async move { h.react(msg, &emoji).await }).await
    }

    /// Take this user's reaction back.
    pub async fn unreact(&self, msg: String, emoji: String) -> Result<(), HearthError> {
        let msg = parse_id(&msg)?;
        self.run(move |h| async move { h.unreact(msg, &emoji).await }).await
    }

    /// Replace a message's text (its author only: [`HearthError::NotAuthor`]).
    pub async fn edit(&self, msg: String, text: String) -> Result<(), HearthError> {
        let msg = parse_id(&msg)?;
        self.run(move |h| async move { h.edit(msg, &text).await }).await
    }

    /// Delete a message (its author only): its text leaves every device's
    /// files once compacted; a tombstone keeps its place.
    pub async fn delete(&self, msg: String) -> Result<(), HearthError> {
        let msg = parse_id(&msg)?;
        self.run(move |h| async move { h.delete(msg).await }).await
    }

    /// Mark `channel` read up to message `up_to` (`None`: its newest).
    pub async fn mark_read(&self, channel: String, up_to: Option<String>) -> Result<(), HearthError> {
        let channel = parse_id(&channel)?;
        let up_to = parse_opt_id(up_to)?;
        self.run(move |h| async move { h.mark_read(channel, up_to).await })
            .await
    }

    /// The newest `limit` top-level messages of `channel` before message
    /// `before` (`None`: the newest), newest first, each with its reply count
    /// and reactions. Page back by passing the last one's id as `before`.
    pub async fn page(&self, channel: String, before: Option<String>, limit: u32) -> Result<Vec<Message>, HearthError> {
        let channel = parse_id(&channel)?;
        let before = parse_opt_id(before)?;
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let page = self
            .run(move |h| async move { h.page(channel, before, limit).await })
            .await?;
        Ok(messages(page))
    }

    /// The thread of a message: its root and its replies, oldest first.
    pub async fn thread(&self, msg: String) -> Result<Thread, HearthError> {
        let msg = parse_id(&msg)?;
        Ok(self.run(move |h| async move { h.thread(msg).await }).await?.into())
    }

    /// One message, with its channel.
    pub async fn message(&self, msg: String) -> Result<LocatedMessage, HearthError> {
        let msg = parse_id(&msg)?;
        Ok(self.run(move |h| async move { h.message(msg).await }).await?.into())
    }

    /// Every message of a channel, replies included, oldest first.
    pub async fn all_messages(&self, channel: String) -> Result<Vec<Message>, HearthError> {
        let channel = parse_id(&channel)?;
        let all = self.run(move |h| async move { h.all_messages(channel).await }).await?;
        Ok(messages(all))
    }

    /// Messages by others in `channel`, not deleted, newer than this user's
    /// read marker.
    pub async fn unread(&self, channel: String) -> Result<u64, HearthError> {
        let channel = parse_id(&channel)?;
        self.run(move |h| async move { h.unread(channel).await }).await
    }

    /// Who holds a message (delivery receipts of this user's devices and of
    /// the channel's members) and who has read it.
    pub async fn receipts(&self, msg: String) -> Result<Receipts, HearthError> {
        let msg = parse_id(&msg)?;
        Ok(self.run(move |h| async move { h.receipts(msg).await }).await?.into())
    }
}
