//! A channel exported, as JSON or as a plain automerge document, and a JSON
//! export imported back into a new channel. The schemas are in
//! docs/export.md; both carry every message of the channel (top-level and
//! replies, oldest first) with its author, time, text, thread, reactions,
//! edit and delete state.

use std::collections::BTreeMap;

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjType, ROOT, ScalarValue};
use hearth_core::{ChannelId, MessageId, UserId};
use serde::{Deserialize, Serialize};

use crate::{Error, Hearth, Result};

/// What [`Export::format`] says.
pub const EXPORT_FORMAT: &str = "hearth-export";
/// The version of the schema this build writes and reads.
pub const EXPORT_VERSION: u32 = 1;

/// A channel as exported (docs/export.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Export {
    /// Always [`EXPORT_FORMAT`].
    pub format: String,
    /// [`EXPORT_VERSION`].
    pub version: u32,
    /// The channel.
    pub channel: ExportChannel,
    /// Every message, oldest first (a reply after its root).
    pub messages: Vec<ExportMessage>,
}

/// The channel of an [`Export`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportChannel {
    /// Its id (64 hex digits).
    pub id: String,
    /// Its name.
    pub name: String,
    /// When it was exported (unix ms).
    pub exported_at_ms: u64,
    /// Display names of its members, by user id (64 hex digits).
    pub members: BTreeMap<String, String>,
}

/// One message of an [`Export`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportMessage {
    /// Its id (48 hex digits).
    pub id: String,
    /// Its author's user id (64 hex digits).
    pub author: String,
    /// When it was posted (unix ms, from its id's clock).
    pub time_ms: u64,
    /// Its text (edited, if it was); `None` once deleted or dropped.
    pub text: Option<String>,
    /// The root of its thread, for a reply.
    pub reply_to: Option<String>,
    /// Whether its author edited it.
    pub edited: bool,
    /// Whether it was deleted.
    pub deleted: bool,
    /// Who reacted with what: emoji to user ids.
    pub reactions: BTreeMap<String, Vec<String>>,
}

/// What [`Hearth::import_export`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// The new channel.
    pub channel: Option<ChannelId>,
    /// Messages posted (replies included; a deleted one is posted and deleted).
    pub messages: u64,
    /// Edited messages (posted, then edited to their text).
    pub edited: u64,
    /// Deleted messages (a tombstone, so that their replies keep their root).
    pub deleted: u64,
    /// Reactions of the importing user, made again.
    pub reactions: u64,
    /// Reactions of other users, which nobody can make in their name: left out.
    pub reactions_left_out: u64,
}

/// A typed error about bad input.
fn invalid(what: &str, detail: impl std::fmt::Display) -> Error {
    Error::Invalid {
        what: what.into(),
        detail: detail.to_string(),
    }
}

impl Export {
    /// The export as JSON (pretty-printed: meant to be read and diffed).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("an export encodes")
    }

    /// An export read from JSON, checked: its format, version, ids and
    /// threads (a reply's root must come before it).
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let e: Export = serde_json::from_slice(bytes).map_err(|e| invalid("export", e.to_string()))?;
        e.check()?;
        Ok(e)
    }

    /// The checks of [`Export::from_json`] (an export built in code is
    /// checked too before an import writes anything).
    pub fn check(&self) -> Result<()> {
        let e = self;
        if e.format != EXPORT_FORMAT {
            return Err(invalid(
                "export",
                format!("format {:?} is not {EXPORT_FORMAT:?}", e.format),
            ));
        }
        if e.version != EXPORT_VERSION {
            return Err(invalid(
                "export",
                format!("version {} (this build reads {EXPORT_VERSION})", e.version),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for m in &e.messages {
            m.id.parse::<MessageId>()
                .map_err(|err| invalid("export", format!("message id {:?}: {err}", m.id)))?;
            if let Some(root) = &m.reply_to
                && !seen.contains(root.as_str())
            {
                return Err(invalid(
                    "export",
                    format!("message {} replies to {root}, which does not come before it", m.id),
                ));
            }
            if !seen.insert(m.id.as_str()) {
                return Err(invalid("export", format!("message {} twice", m.id)));
            }
        }
        Ok(())
    }

    /// The export as a plain automerge document (docs/export.md): any
    /// automerge implementation loads it and reads every message.
    pub fn to_automerge(&self) -> Vec<u8> {
        let mut doc = AutoCommit::new();
        let put = |doc: &mut AutoCommit, obj: &automerge::ObjId, key: &str, v: ScalarValue| {
            doc.put(obj, key, v).expect("a fresh document takes it");
        };
        put(&mut doc, &ROOT, "format", EXPORT_FORMAT.into());
        put(&mut doc, &ROOT, "version", ScalarValue::Uint(u64::from(self.version)));
        let ch = doc.put_object(ROOT, "channel", ObjType::Map).expect("map");
        put(&mut doc, &ch, "id", self.channel.id.as_str().into());
        put(&mut doc, &ch, "name", self.channel.name.as_str().into());
        put(
            &mut doc,
            &ch,
            "exported_at_ms",
            ScalarValue::Uint(self.channel.exported_at_ms),
        );
        let members = doc.put_object(&ch, "members", ObjType::Map).expect("map");
        for (user, name) in &self.channel.members {
            put(&mut doc, &members, user, name.as_str().into());
        }
        let list = doc.put_object(ROOT, "messages", ObjType::List).expect("list");
        for (i, m) in self.messages.iter().enumerate() {
            let o = doc.insert_object(&list, i, ObjType::Map).expect("map");
            put(&mut doc, &o, "id", m.id.as_str().into());
            put(&mut doc, &o, "author", m.author.as_str().into());
            put(&mut doc, &o, "time_ms", ScalarValue::Uint(m.time_ms));
            put(
                &mut doc,
                &o,
                "text",
                m.text.as_deref().map_or(ScalarValue::Null, ScalarValue::from),
            );
            put(
                &mut doc,
                &o,
                "reply_to",
                m.reply_to.as_deref().map_or(ScalarValue::Null, ScalarValue::from),
            );
            put(&mut doc, &o, "edited", ScalarValue::Boolean(m.edited));
            put(&mut doc, &o, "deleted", ScalarValue::Boolean(m.deleted));
            let r = doc.put_object(&o, "reactions", ObjType::Map).expect("map");
            for (emoji, users) in &m.reactions {
                let l = doc.put_object(&r, emoji, ObjType::List).expect("list");
                for (j, u) in users.iter().enumerate() {
                    doc.insert(&l, j, u.as_str()).expect("a fresh list takes it");
                }
            }
        }
        doc.save()
    }
}

impl Hearth {
    /// Export a channel: every message, oldest first, with its author, time,
    /// text, thread, reactions and edit and delete state, and the channel's
    /// name and members. Write it with [`Export::to_json`] or
    /// [`Export::to_automerge`].
    pub async fn export(&self, channel: ChannelId) -> Result<Export> {
        let name = self
            .channels()
            .await?
            .into_iter()
            .find(|c| c.id == channel)
            .map(|c| c.name)
            .ok_or_else(|| Error::NotFound {
                what: "channel",
                id: channel.to_string(),
            })?;
        let members = self
            .members(channel)
            .await?
            .into_iter()
            .map(|(u, n)| (u.to_string(), n))
            .collect();
        let all = self.all_messages(channel).await?;
        let held: std::collections::HashSet<MessageId> = all.iter().map(|m| m.id).collect();
        let messages = all
            .into_iter()
            // A reply whose root a removal's cut hides goes out as a
            // top-level message: every reply_to names a message before it.
            .map(|mut m| {
                m.reply_to = m.reply_to.filter(|r| held.contains(r));
                m
            })
            .map(|m| ExportMessage {
                id: m.id.to_string(),
                author: m.author.to_string(),
                time_ms: m.id.timestamp().millis(),
                text: m.text,
                reply_to: m.reply_to.map(|r| r.to_string()),
                edited: m.edited,
                deleted: m.deleted,
                reactions: m
                    .reactions
                    .into_iter()
                    .map(|(e, users)| (e, users.iter().map(UserId::to_string).collect()))
                    .collect(),
            })
            .collect();
        Ok(Export {
            format: EXPORT_FORMAT.into(),
            version: EXPORT_VERSION,
            channel: ExportChannel {
                id: channel.to_string(),
                name,
                exported_at_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                members,
            },
            messages,
        })
    }

    /// Take an export back into a new channel named `name` (the export's
    /// name if `None`): every message posted again by this store's user, in
    /// order, replies in their threads; an edited one posted and edited to
    /// its text, a deleted one posted as a tombstone and deleted (so that
    /// its replies keep their root), this user's own reactions made again.
    /// New ids, times and author: nobody can write in another user's name,
    /// so the export itself is what keeps those.
    pub async fn import_export(&self, export: &Export, name: Option<&str>) -> Result<ImportReport> {
        export.check()?;
        let channel = self.create_channel(name.unwrap_or(&export.channel.name)).await?;
        let me = self.whoami().user.to_string();
        let mut report = ImportReport {
            channel: Some(channel),
            ..ImportReport::default()
        };
        let mut ids: BTreeMap<&str, MessageId> = BTreeMap::new();
        let mut doomed = Vec::new();
        for m in &export.messages {
            let text = m
                .text
                .as_deref()
                .unwrap_or(if m.deleted { "(deleted)" } else { "(dropped)" });
            let id = match &m.reply_to {
                Some(root) => {
                    let root = *ids
                        .get(root.as_str())
                        .ok_or_else(|| invalid("export", format!("{} replies to an unknown message", m.id)))?;
                    self.reply(root, text).await?
                }
                None => self.post(channel, text).await?,
            };
            ids.insert(m.id.as_str(), id);
            report.messages += 1;
            if m.deleted {
                // Deleted once its replies are in (a deleted root takes none).
                doomed.push(id);
                continue;
            }
            if m.edited {
                self.edit(id, text).await?;
                report.edited += 1;
            }
            for (emoji, users) in &m.reactions {
                for u in users {
                    if *u == me {
                        self.react(id, emoji).await?;
                        report.reactions += 1;
                    } else {
                        report.reactions_left_out += 1;
                    }
                }
            }
        }
        for id in doomed {
            self.delete(id).await?;
            report.deleted += 1;
        }
        Ok(report)
    }
}
