//! Export (issue 9, item 6): a channel of two users (threads, reactions,
//! edits, deletes, a deleted root with a reply) exported as JSON and as a
//! plain automerge document. The JSON goes back into a new channel through
//! `import_export` and out again the same; the automerge document, loaded
//! with the automerge crate alone and with the JavaScript automerge
//! (tests/js, run by node), says what `message`, `thread` and `members` say.

use std::collections::BTreeMap;

use automerge::transaction::Transactable;
use automerge::{AutoCommit, Automerge, ObjId, ObjType, Prop, ReadDoc, ScalarValue, Value};
use hearth::core::Vector;
use hearth::{
    ChannelId, Config, Export, ExportChannel, ExportMessage, Hearth, KdfParams, MessageId, Passphrase, UserId,
};

#[path = "support/node.rs"]
mod node;

fn config() -> Config {
    Config::default().with_kdf(KdfParams::INSECURE_FAST)
}

/// Move everything `from` holds of a channel that `to` lacks.
async fn pull(from: &Hearth, to: &Hearth, channel: ChannelId) {
    let wire = from.plumbing().store().channel_keys(channel).await.unwrap().wire();
    loop {
        let have = to
            .plumbing()
            .store()
            .vector(channel)
            .await
            .unwrap_or_else(|_| Vector::default());
        let batch = from
            .plumbing()
            .store()
            .entries_after(wire, have, 16 * 1024, 64)
            .await
            .unwrap();
        if batch.entries.is_empty() {
            return;
        }
        let report = to.plumbing().store().ingest(wire, batch.entries).await.unwrap();
        assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    }
}

struct Chat {
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    alice: Hearth,
    bob: Hearth,
    general: ChannelId,
    root: MessageId,
    doomed: MessageId,
    orphan: MessageId,
}

async fn chat() -> Chat {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pass = Passphrase::new("pw");
    let alice = Hearth::create(dirs.0.path(), &pass, "alice", config()).await.unwrap();
    let bob = Hearth::create(dirs.1.path(), &pass, "bob", config()).await.unwrap();
    let general = alice.create_channel("general").await.unwrap();
    bob.plumbing()
        .store()
        .join_channel(alice.plumbing().store().channel_keys(general).await.unwrap())
        .await
        .unwrap();
    let root = alice.post(general, "lunch?").await.unwrap();
    let doomed = alice.post(general, "a root that goes").await.unwrap();
    pull(&alice, &bob, general).await;
    let reply = bob.reply(root, "yes, 12:30 — ça marche 🍜").await.unwrap();
    let orphan = bob.reply(doomed, "a reply that stays").await.unwrap();
    bob.react(root, "🎉").await.unwrap();
    pull(&bob, &alice, general).await;
    alice.react(reply, "👍").await.unwrap();
    alice.react(root, "🎉").await.unwrap();
    alice.edit(root, "lunch at noon?").await.unwrap();
    alice.delete(doomed).await.unwrap();
    let gone = alice.post(general, "posted and deleted").await.unwrap();
    alice.delete(gone).await.unwrap();
    alice.post(general, "see you").await.unwrap();
    pull(&alice, &bob, general).await;
    Chat {
        _dirs: dirs,
        alice,
        bob,
        general,
        root,
        doomed,
        orphan,
    }
}

#[tokio::test]
async fn an_export_holds_every_message_with_its_thread_reactions_edits_and_deletes() {
    let c = chat().await;
    let e = c.alice.export(c.general).await.unwrap();
    assert_eq!((e.format.as_str(), e.version), ("hearth-export", 1));
    assert_eq!(e.channel.name, "general");
    assert_eq!(e.channel.members.len(), 2);
    assert_eq!(e.messages.len(), 6, "posts, replies and tombstones");
    // The same from either member.
    let from_bob = c.bob.export(c.general).await.unwrap();
    assert_eq!(from_bob.messages, e.messages);
    // Every message as `message` shows it, oldest first.
    let mut last = 0;
    for m in &e.messages {
        let id: MessageId = m.id.parse().unwrap();
        let shown = c.alice.message(id).await.unwrap().message;
        assert_eq!(m.author, shown.author.to_string());
        assert_eq!(m.text, shown.text);
        assert_eq!((m.edited, m.deleted), (shown.edited, shown.deleted));
        assert_eq!(m.reply_to, shown.reply_to.map(|r| r.to_string()));
        assert_eq!(m.reactions.len(), shown.reactions.len());
        assert!(m.time_ms >= last && m.time_ms > 1_700_000_000_000);
        last = m.time_ms;
    }
    let root = e.messages.iter().find(|m| m.id == c.root.to_string()).unwrap();
    assert_eq!(root.text.as_deref(), Some("lunch at noon?"));
    assert!(root.edited);
    assert_eq!(root.reactions["🎉"].len(), 2);
    let doomed = e.messages.iter().find(|m| m.id == c.doomed.to_string()).unwrap();
    assert!(doomed.deleted && doomed.text.is_none());
    let orphan = e.messages.iter().find(|m| m.id == c.orphan.to_string()).unwrap();
    assert_eq!(orphan.reply_to.as_deref(), Some(c.doomed.to_string().as_str()));
    // JSON round trip.
    assert_eq!(Export::from_json(&e.to_json()).unwrap(), e);
}

/// What an export says, without ids, authors and times: the shape an import
/// keeps (texts, threads, edit and delete state, the importer's reactions).
/// One message's shape: text, index of its root, edited, deleted, the
/// importer's reactions.
type Shape = (Option<String>, Option<usize>, bool, bool, Vec<String>);

fn shape(e: &Export, reactor: &str) -> Vec<Shape> {
    let index: BTreeMap<&str, usize> = e.messages.iter().enumerate().map(|(i, m)| (m.id.as_str(), i)).collect();
    e.messages
        .iter()
        .map(|m| {
            let mine: Vec<String> = m
                .reactions
                .iter()
                .filter(|(_, users)| users.iter().any(|u| u == reactor))
                .map(|(emoji, _)| emoji.clone())
                .collect();
            (
                m.text.clone(),
                m.reply_to.as_deref().map(|r| index[r]),
                m.edited,
                m.deleted,
                mine,
            )
        })
        .collect()
}

#[tokio::test]
async fn a_json_export_goes_back_into_a_new_channel() {
    let c = chat().await;
    let e = c.alice.export(c.general).await.unwrap();
    let json = e.to_json();
    let r = c
        .alice
        .import_export(&Export::from_json(&json).unwrap(), Some("general, restored"))
        .await
        .unwrap();
    assert_eq!((r.messages, r.edited, r.deleted), (6, 1, 2));
    // Alice's two reactions come back; Bob's cannot be made in his name.
    assert_eq!((r.reactions, r.reactions_left_out), (2, 1));
    let restored = r.channel.unwrap();
    assert_ne!(restored, c.general);
    let again = c.alice.export(restored).await.unwrap();
    assert_eq!(again.channel.name, "general, restored");
    let me = c.alice.whoami().user.to_string();
    assert_eq!(shape(&again, &me), shape(&e, &me));
    assert!(again.messages.iter().all(|m| m.author == me));
    assert!(c.alice.verify().await.unwrap().is_clean());
    // Bad inputs: typed errors, nothing created.
    let before = c.alice.channels().await.unwrap().len();
    for bad in [
        &b"not json"[..],
        br#"{"format":"other","version":1,"channel":{"id":"","name":"","exported_at_ms":0,"members":{}},"messages":[]}"#,
        br#"{"format":"hearth-export","version":9,"channel":{"id":"","name":"","exported_at_ms":0,"members":{}},"messages":[]}"#,
    ] {
        assert!(matches!(Export::from_json(bad), Err(hearth::Error::Invalid { .. })));
    }
    let mut backwards = e.clone();
    backwards.messages.reverse();
    assert!(matches!(
        Export::from_json(&backwards.to_json()),
        Err(hearth::Error::Invalid { .. })
    ));
    // An export built in code is checked before anything is written.
    assert!(matches!(
        c.alice.import_export(&backwards, None).await,
        Err(hearth::Error::Invalid { .. })
    ));
    assert_eq!(c.alice.channels().await.unwrap().len(), before);
}

/// The scalar at `prop` of `obj`; panics on anything else.
fn scalar(doc: &Automerge, obj: &ObjId, prop: impl Into<Prop>) -> ScalarValue {
    let prop = prop.into();
    match doc.get(obj, prop.clone()).unwrap() {
        Some((Value::Scalar(s), _)) => s.into_owned(),
        other => panic!("{prop}: {other:?}, not a scalar"),
    }
}

/// A string scalar, or null.
fn string(doc: &Automerge, obj: &ObjId, prop: impl Into<Prop>) -> Option<String> {
    match scalar(doc, obj, prop) {
        ScalarValue::Str(t) => Some(t.to_string()),
        ScalarValue::Null => None,
        other => panic!("{other:?}, not a string or null"),
    }
}

fn uint(doc: &Automerge, obj: &ObjId, prop: impl Into<Prop>) -> u64 {
    match scalar(doc, obj, prop) {
        ScalarValue::Uint(n) => n,
        other => panic!("{other:?}, not an unsigned integer"),
    }
}

fn boolean(doc: &Automerge, obj: &ObjId, prop: impl Into<Prop>) -> bool {
    match scalar(doc, obj, prop) {
        ScalarValue::Boolean(b) => b,
        other => panic!("{other:?}, not a boolean"),
    }
}

/// The object of type `ty` at `prop` of `obj`; panics on anything else.
fn object(doc: &Automerge, obj: &ObjId, prop: impl Into<Prop>, ty: ObjType) -> ObjId {
    let prop = prop.into();
    match doc.get(obj, prop.clone()).unwrap() {
        Some((Value::Object(t), id)) if t == ty => id,
        other => panic!("{prop}: {other:?}, not a {ty:?}"),
    }
}

/// A map of strings (display names by user id).
fn strings(doc: &Automerge, map: &ObjId) -> BTreeMap<String, String> {
    doc.keys(map)
        .map(|k| {
            let v = string(doc, map, k.as_str()).expect("a string");
            (k, v)
        })
        .collect()
}

/// The automerge export as the automerge crate reads it through the schema
/// of docs/export.md, and only through it: a value of another type panics.
fn read_automerge(bytes: &[u8]) -> Export {
    let doc = Automerge::load(bytes).unwrap();
    let root = automerge::ROOT;
    let channel = object(&doc, &root, "channel", ObjType::Map);
    let list = object(&doc, &root, "messages", ObjType::List);
    let messages = (0..doc.length(&list))
        .map(|i| {
            let m = object(&doc, &list, i, ObjType::Map);
            let r = object(&doc, &m, "reactions", ObjType::Map);
            let reactions = doc
                .keys(&r)
                .map(|emoji| {
                    let users = object(&doc, &r, emoji.as_str(), ObjType::List);
                    let users = (0..doc.length(&users)).map(|j| string(&doc, &users, j).expect("a user id"));
                    (emoji, users.collect())
                })
                .collect();
            ExportMessage {
                id: string(&doc, &m, "id").expect("an id"),
                author: string(&doc, &m, "author").expect("an author"),
                time_ms: uint(&doc, &m, "time_ms"),
                text: string(&doc, &m, "text"),
                reply_to: string(&doc, &m, "reply_to"),
                edited: boolean(&doc, &m, "edited"),
                deleted: boolean(&doc, &m, "deleted"),
                reactions,
            }
        })
        .collect();
    Export {
        format: string(&doc, &root, "format").expect("a format"),
        version: uint(&doc, &root, "version").try_into().unwrap(),
        channel: ExportChannel {
            id: string(&doc, &channel, "id").expect("an id"),
            name: string(&doc, &channel, "name").expect("a name"),
            exported_at_ms: uint(&doc, &channel, "exported_at_ms"),
            members: strings(&doc, &object(&doc, &channel, "members", ObjType::Map)),
        },
        messages,
    }
}

/// Notes in `out` that `what` reads `read` where the store says `store`.
fn same<T: PartialEq + std::fmt::Debug>(out: &mut Vec<String>, what: &str, read: T, store: T) {
    if read != store {
        out.push(format!("{what}: read {read:?}, the store says {store:?}"));
    }
}

/// Where an export, as some reader read it, disagrees with what `store`
/// answers about `channel` (`channels`, `members`, `message`, `thread`),
/// field by field: empty when it says what the store says. An export of
/// the channel is not consulted: the store's own answers are the truth.
async fn disagreements(store: &Hearth, channel: ChannelId, read: &Export) -> Vec<String> {
    let mut out = Vec::new();
    same(
        &mut out,
        "format",
        (read.format.as_str(), read.version),
        ("hearth-export", 1),
    );
    let info = store
        .channels()
        .await
        .unwrap()
        .into_iter()
        .find(|i| i.id == channel)
        .unwrap();
    same(&mut out, "channel id", read.channel.id.clone(), channel.to_string());
    same(&mut out, "channel name", &read.channel.name, &info.name);
    let members: BTreeMap<String, String> = store
        .members(channel)
        .await
        .unwrap()
        .into_iter()
        .map(|(u, n)| (u.to_string(), n))
        .collect();
    same(&mut out, "members", &read.channel.members, &members);
    same(&mut out, "message count", read.messages.len() as u64, info.messages);
    // Each root's replies as read, in order; a top-level message has a thread too.
    let mut threads: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut previous = None;
    for m in &read.messages {
        let Ok(id) = m.id.parse::<MessageId>() else {
            out.push(format!("message id {:?} is not an id", m.id));
            continue;
        };
        if previous.is_some_and(|p| p >= id) {
            out.push(format!("message {id} comes after a newer one"));
        }
        previous = Some(id);
        let shown = match store.message(id).await {
            Ok(located) => located.message,
            Err(e) => {
                out.push(format!("message {id}: {e}"));
                continue;
            }
        };
        let field = |name: &str| format!("message {id} {name}");
        same(&mut out, &field("author"), m.author.clone(), shown.author.to_string());
        same(&mut out, &field("time_ms"), m.time_ms, id.timestamp().millis());
        same(&mut out, &field("text"), &m.text, &shown.text);
        same(
            &mut out,
            &field("reply_to"),
            m.reply_to.clone(),
            shown.reply_to.map(|r| r.to_string()),
        );
        same(&mut out, &field("edited"), m.edited, shown.edited);
        same(&mut out, &field("deleted"), m.deleted, shown.deleted);
        // Who reacted is a set: the schema's lists in any order.
        let mut reactions = m.reactions.clone();
        reactions.values_mut().for_each(|users| users.sort());
        let shown_reactions: BTreeMap<String, Vec<String>> = shown
            .reactions
            .iter()
            .map(|(emoji, users)| (emoji.clone(), users.iter().map(UserId::to_string).collect()))
            .collect();
        same(&mut out, &field("reactions"), reactions, shown_reactions);
        let replies = threads.entry(m.reply_to.as_deref().unwrap_or(&m.id)).or_default();
        if m.reply_to.is_some() {
            replies.push(m.id.clone());
        }
    }
    for (root, replies) in threads {
        let Ok(root_id) = root.parse::<MessageId>() else {
            out.push(format!("thread root {root:?} is not an id"));
            continue;
        };
        match store.thread(root_id).await {
            Ok(t) => {
                let shown: Vec<String> = t.replies.iter().map(|r| r.id.to_string()).collect();
                same(&mut out, &format!("thread {root} replies"), replies, shown);
            }
            Err(e) => out.push(format!("thread {root}: {e}")),
        }
    }
    out
}

#[tokio::test]
async fn an_automerge_export_loads_with_automerge_alone_and_says_what_the_store_says() {
    let c = chat().await;
    let e = c.alice.export(c.general).await.unwrap();
    let read = read_automerge(&e.to_automerge());
    assert_eq!(read.messages.len(), 6);
    assert_eq!(disagreements(&c.bob, c.general, &read).await, Vec::<String>::new());
    assert_eq!(read, e);
}

/// A reader's mistake, and the field the comparison must name.
type Mistake = (&'static str, fn(&mut Export));

#[tokio::test]
async fn a_wrong_text_author_time_reply_or_reaction_is_a_disagreement() {
    let c = chat().await;
    let e = c.alice.export(c.general).await.unwrap();
    assert_eq!(disagreements(&c.bob, c.general, &e).await, Vec::<String>::new());
    // messages[0] is the edited root with two 🎉, messages[2] Bob's reply to it.
    let mistakes: [Mistake; 10] = [
        ("text", |e| e.messages[0].text = Some("lunch?".into())),
        ("author", |e| e.messages[0].author = e.messages[2].author.clone()),
        ("time_ms", |e| e.messages[0].time_ms += 1),
        ("reply_to", |e| e.messages[2].reply_to = None),
        ("replies", |e| e.messages[2].reply_to = Some(e.messages[1].id.clone())),
        ("reactions", |e| {
            e.messages[0].reactions.get_mut("🎉").unwrap().truncate(1)
        }),
        ("reactions", |e| {
            e.messages[2].reactions = e.messages[0].reactions.clone()
        }),
        ("edited", |e| e.messages[0].edited = false),
        ("deleted", |e| e.messages[1].deleted = false),
        ("message count", |e| e.messages.truncate(5)),
    ];
    for (field, mistake) in mistakes {
        let mut wrong = e.clone();
        mistake(&mut wrong);
        let found = disagreements(&c.bob, c.general, &wrong).await;
        assert!(found.iter().any(|d| d.contains(field)), "{field}: {found:?}");
    }
}

/// `file` as the JavaScript automerge reads it (tests/js/read_export.mjs).
fn read_with_javascript(file: &std::path::Path) -> Export {
    let json = node::read_export(file).unwrap_or_else(|why| panic!("{why}"));
    serde_json::from_slice(&json).unwrap()
}

#[tokio::test]
async fn the_javascript_automerge_reads_the_export() {
    if !node::should_run("the_javascript_automerge_reads_the_export") {
        return;
    }
    let c = chat().await;
    let e = c.alice.export(c.general).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("general.automerge");
    std::fs::write(&file, e.to_automerge()).unwrap();
    let read = read_with_javascript(&file);
    assert_eq!(read.messages.len(), 6);
    assert_eq!(disagreements(&c.bob, c.general, &read).await, Vec::<String>::new());
    assert_eq!(read, e);

    // What it prints is what the document says: a text changed in it is
    // read changed, and a value of another type than the schema's refused.
    let change = |f: &dyn Fn(&mut AutoCommit, &ObjId)| {
        let mut doc = AutoCommit::load(&e.to_automerge()).unwrap();
        let list = object(doc.document(), &automerge::ROOT, "messages", ObjType::List);
        let first = object(doc.document(), &list, 0, ObjType::Map);
        f(&mut doc, &first);
        std::fs::write(&file, doc.save()).unwrap();
    };
    change(&|doc, m| doc.put(m, "text", "lunch at one?").unwrap());
    let found = disagreements(&c.bob, c.general, &read_with_javascript(&file)).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("text") && found[0].contains("lunch at one?"),
        "{found:?}"
    );
    change(&|doc, m| doc.put(m, "time_ms", "noon").unwrap());
    let why = node::read_export(&file).unwrap_err();
    assert!(
        why.contains("messages[0].time_ms") && why.contains("not an unsigned integer"),
        "{why}"
    );
}
