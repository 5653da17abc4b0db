//! The bulk path: many posts into one channel in one command
//! ([`Store::import_posts`](crate::Store::import_posts)), without the
//! journal and, for epochs it fills itself, without automerge's op set.
//!
//! A post through [`Write::Post`](crate::Write::Post) is journaled
//! (one record, fsynced with its group) and staged into its epoch's
//! document (about 15 µs of automerge's op set for the map and text slot
//! ops), then closed into a feed entry. An import has no one waiting on
//! each post: its posts go straight into feed entries, and it is durable
//! when the call returns (the feed log fdatasync'd once, at its end), so
//! it needs no journal. An epoch the import starts, or one whose every
//! entry this engine made through this path since (its [`BulkTail`] still
//! names the epoch's last entry), holds nothing but this device's chain of
//! changes: the next change is built from the posts alone
//! ([`hearth_core::bulk::posts_change`], the same bytes a document would
//! commit) and the epoch stays deferred (`Engine::deferred`), its entries
//! kept decoded for its first load, as a catch-up's are. Any other epoch
//! (one that existed before, or was loaded since) takes its posts through
//! the document as a write does.
//!
//! A crash during an import loses what it had not made durable (the call
//! never returned); what is in the log's durable part is whole entries in
//! feed order, taken again by the next open like any other.

use hearth_core::bulk::{ChangeTail, NewPost, posts_change};
use hearth_core::{ChannelId, EntryBody, Epoch, MessageId, Op, writer_tag};

use crate::engine::{CachedEntry, ENTRY_BUDGET, Engine, OP_ALLOWANCE, SEGMENT_ALLOWANCE, now_ms};
use crate::error::{Error, Result};

/// Most posts one [`Store::import_posts`](crate::Store::import_posts) call
/// takes into one store command (a longer list is cut into such calls).
pub const IMPORT_CHUNK: usize = 16 * 1024;

/// One post of a bulk import.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportPost {
    /// Its text.
    pub text: String,
    /// The message it replies to (of the same channel, there before the
    /// call).
    pub reply_to: Option<MessageId>,
}

/// Where this device's chain stands in an epoch the bulk path built, and
/// how many entries the epoch had then: valid while it still has that
/// many and is not loaded.
pub(crate) struct BulkTail {
    tail: ChangeTail,
    entries: u64,
}

/// The posts of one epoch waiting to be closed into an entry.
#[derive(Default)]
struct Open {
    posts: Vec<NewPost>,
    bytes: usize,
}

impl Engine {
    /// Take `posts` into `channel` in order, as [`Write::Post`]s would be,
    /// and give their ids. Every post is checked before anything is taken
    /// (an input error takes none); the posts are in the feed log and
    /// durable when this returns.
    pub(crate) fn import_posts(&mut self, channel: ChannelId, posts: Vec<ImportPost>) -> Result<Vec<MessageId>> {
        self.writable(&channel)?;
        // Check everything first: a text too long or a reply to nothing
        // takes no post at all.
        let mut roots = std::collections::HashMap::new();
        for p in &posts {
            hearth_core::bulk::check_text(&p.text)?;
            if let Some(parent) = p.reply_to
                && !roots.contains_key(&parent)
            {
                let located = self.get_message(&parent)?;
                if located.channel != channel {
                    return Err(Error::invalid("reply", "the message is in another channel"));
                }
                if located.message.deleted {
                    return Err(Error::invalid("reply", "the message was deleted"));
                }
                roots.insert(parent, located.message.reply_to.unwrap_or(parent));
            }
        }
        if self.identity.device_keys().is_none() || self.identity.device_chain().is_none() {
            return Err(Error::invalid(
                "bulk import",
                "this device has no signing keys yet (an older store: open it once to finish its migration)",
            ));
        }
        // From here on the engine changes: a failure leaves rows and staged
        // ops behind that the next group would write, so whatever it is, it
        // poisons the store (as a group that fails to close does), and the
        // next open starts from what is on disk.
        // Their events go out once they are durable, together, whichever
        // way each is taken (staged or built).
        let listening = self.chat.listening();
        let threads: Vec<Option<MessageId>> = if listening {
            posts.iter().map(|p| p.reply_to.map(|r| roots[&r])).collect()
        } else {
            Vec::new()
        };
        self.chat_muted = true;
        let taken = self.take_posts(channel, posts, &roots);
        self.chat_muted = false;
        let ids = taken.map_err(|e| match e {
            Error::Io(_) | Error::Corrupted { .. } | Error::UnsupportedFormat { .. } => e,
            other => Error::corrupted("bulk import", format!("failed half-way: {other}")),
        })?;
        if listening {
            let author = self.identity.user();
            self.chat
                .send(ids.iter().zip(threads).map(|(id, reply_to)| crate::ChatEvent::Posted {
                    channel,
                    id: *id,
                    author,
                    reply_to,
                    local: true,
                }));
        }
        Ok(ids)
    }

    /// [`Engine::import_posts`] once every post is checked: `roots` has the
    /// thread root of every message replied to.
    fn take_posts(
        &mut self,
        channel: ChannelId,
        posts: Vec<ImportPost>,
        roots: &std::collections::HashMap<MessageId, MessageId>,
    ) -> Result<Vec<MessageId>> {
        let tag = writer_tag(&self.identity.user(), &self.identity.device());
        let wire = self.channel(&channel)?.keys.wire();
        if let Some(k) = self.unfront_key(&wire) {
            self.batch.remove(&k[..]);
        }
        let mut open: std::collections::BTreeMap<Epoch, Open> = Default::default();
        let mut ids = Vec::with_capacity(posts.len());
        for p in posts {
            let root = p.reply_to.map(|parent| roots[&parent]);
            let epoch = match root {
                Some(r) => r.epoch(),
                None => self.top_epoch(self.channel(&channel)?),
            };
            // Top-level posts moved on to a new epoch: the ones before are
            // closed now (at most an entry's worth of posts waits per
            // epoch).
            if root.is_none() {
                let done: Vec<Epoch> = open.keys().copied().filter(|e| *e < epoch).collect();
                for e in done {
                    let o = open.remove(&e).expect("listed above");
                    self.bulk_entry(channel, e, &o.posts)?;
                }
            }
            let id = MessageId::new(self.hlc.tick(now_ms()), epoch, &channel, tag);
            ids.push(id);
            if !open.contains_key(&epoch) && !self.bulk_ready(channel, epoch)? {
                self.stage(
                    channel,
                    &Op::Post {
                        id,
                        text: p.text,
                        reply_to: root,
                    },
                )?;
                continue;
            }
            self.channels
                .get_mut(&channel)
                .expect("checked above")
                .count_post(epoch);
            let o = open.entry(epoch).or_default();
            o.bytes += OP_ALLOWANCE + p.text.len() + SEGMENT_ALLOWANCE;
            o.posts.push(NewPost { id, root, text: p.text });
            if o.bytes >= ENTRY_BUDGET {
                let o = open.remove(&epoch).expect("just used");
                self.bulk_entry(channel, epoch, &o.posts)?;
            }
        }
        for (e, o) in std::mem::take(&mut open) {
            self.bulk_entry(channel, e, &o.posts)?;
        }
        // The posts staged into documents, the rows and the log records:
        // one sled batch behind one log batch, then the log made durable.
        self.finish_batch(self.watermark)?;
        self.log.sync()?;
        self.own_unsynced = false;
        Ok(ids)
    }

    /// Whether the bulk path may build `epoch`'s next change from posts
    /// alone: a new epoch, or one it built whose tail is still its last
    /// entry and which nothing has loaded since.
    fn bulk_ready(&self, channel: ChannelId, epoch: Epoch) -> Result<bool> {
        let ch = self.channel(&channel)?;
        if self.epochs.contains_key(&(channel, epoch))
            || ch.dead.contains(&epoch)
            || ch.stubbed.contains(&epoch)
            || ch.cuts.contains_key(&epoch)
        {
            return Ok(false);
        }
        Ok(match ch.summaries.get(&epoch) {
            None => true,
            Some(s) => {
                self.deferred.contains(&(channel, epoch))
                    && self
                        .bulk_tails
                        .get(&(channel, epoch))
                        .is_some_and(|t| t.entries == s.entries)
            }
        })
    }

    /// Close `posts` into one entry of `epoch` (deferred, as a catch-up's),
    /// its rows into the current batch and its record into the log's.
    fn bulk_entry(&mut self, channel: ChannelId, epoch: Epoch, posts: &[NewPost]) -> Result<()> {
        let device = self.identity.device();
        let me = self.identity.user();
        let ch = self.channel(&channel)?;
        let tail = match (ch.summaries.get(&epoch), self.bulk_tails.get(&(channel, epoch))) {
            (None, _) => ChangeTail::new_document(),
            (Some(s), Some(t)) if t.entries == s.entries => t.tail.clone(),
            _ => return Err(Error::invalid("bulk import", "an epoch's chain moved under the import")),
        };
        let new = !ch.summaries.contains_key(&epoch);
        let built = posts_change(&device, &tail, posts)?;
        // Checked before the import took anything: never a format 1 entry.
        if self.identity.device_keys().is_none() || self.identity.device_chain().is_none() {
            return Err(Error::corrupted("bulk import", "the device's signing keys went away"));
        }
        let body = EntryBody {
            epoch,
            change: built.bytes,
        };
        let seq = self.append_own_entry(channel, epoch, body, &built.texts, None, None)?;
        let ch = self.channels.get_mut(&channel).expect("checked above");
        let s = ch.summaries.get_mut(&epoch).expect("counted by append_own_entry");
        s.count_posts(&me, &me, &built.effects);
        let entries = s.entries;
        self.put_summary(channel, epoch)?;
        self.deferred.insert((channel, epoch));
        self.bulk_tails.insert(
            (channel, epoch),
            BulkTail {
                tail: built.next,
                entries,
            },
        );
        self.cache_deferred(
            channel,
            epoch,
            new,
            vec![CachedEntry {
                device,
                user: me,
                seq,
                change: built.change,
                texts: built.texts,
                effects: built.effects,
            }],
        );
        Ok(())
    }
}
