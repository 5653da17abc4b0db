//! Export (issue 9, item 6): a channel of two users (threads, reactions,
//! edits, deletes, a deleted root with a reply) exported as JSON and as a
//! plain automerge document. The JSON goes back into a new channel through
//! `import_export` and out again the same; the automerge document, loaded
//! with the automerge crate alone, says what `message` and `thread` say.

use std::collections::BTreeMap;

use automerge::{Automerge, ObjType, ReadDoc, ScalarValue, Value};
use hearth::core::Vector;
use hearth::{ChannelId, Config, Export, Hearth, KdfParams, MessageId, Passphrase};

fn config() -> Config {
    Config::default().with_kdf(KdfParams::INSECURE_FAST)
}

/// Move everything `from` holds of a channel that `to` lacks.
async fn pull(from: &Hearth, to: &Hearth, channel: ChannelId) {
    let wire = from.channel_keys(channel).await.unwrap().wire();
    loop {
        let have = to.vector(channel).await.unwrap_or_else(|_| Vector::default());
        let batch = from.entries_after(wire, have, 16 * 1024, 64).await.unwrap();
        if batch.entries.is_empty() {
            return;
        }
        let report = to.ingest(wire, batch.entries).await.unwrap();
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
    bob.join_channel(alice.channel_keys(general).await.unwrap())
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

fn string(doc: &Automerge, obj: &automerge::ObjId, key: &str) -> Option<String> {
    match doc.get(obj, key).unwrap() {
        Some((Value::Scalar(s), _)) => match s.as_ref() {
            ScalarValue::Str(t) => Some(t.to_string()),
            ScalarValue::Null => None,
            other => panic!("{key}: {other:?}"),
        },
        other => panic!("{key}: {other:?}"),
    }
}

#[tokio::test]
async fn an_automerge_export_loads_with_automerge_alone_and_says_what_the_store_says() {
    let c = chat().await;
    let bytes = c.alice.export(c.general).await.unwrap().to_automerge();
    let doc = Automerge::load(&bytes).unwrap();
    let root = automerge::ROOT;
    assert_eq!(string(&doc, &root, "format").as_deref(), Some("hearth-export"));
    let (Value::Object(ObjType::List), messages) = doc.get(&root, "messages").unwrap().unwrap() else {
        panic!("messages is a list");
    };
    assert_eq!(doc.length(&messages), 6);
    let mut replies: BTreeMap<MessageId, Vec<MessageId>> = BTreeMap::new();
    for i in 0..doc.length(&messages) {
        let (_, m) = doc.get(&messages, i).unwrap().unwrap();
        let id: MessageId = string(&doc, &m, "id").unwrap().parse().unwrap();
        let shown = c.bob.message(id).await.unwrap().message;
        assert_eq!(string(&doc, &m, "text"), shown.text);
        assert_eq!(string(&doc, &m, "author"), Some(shown.author.to_string()));
        let Some((Value::Scalar(t), _)) = doc.get(&m, "time_ms").unwrap() else {
            panic!("time_ms")
        };
        assert_eq!(t.as_ref(), &ScalarValue::Uint(id.timestamp().millis()));
        if let Some(r) = string(&doc, &m, "reply_to") {
            replies.entry(r.parse().unwrap()).or_default().push(id);
        }
        let (_, reactions) = doc.get(&m, "reactions").unwrap().unwrap();
        for (emoji, users) in &shown.reactions {
            let (_, list) = doc.get(&reactions, emoji.as_str()).unwrap().unwrap();
            assert_eq!(doc.length(&list), users.len(), "{emoji}");
        }
        assert_eq!(doc.keys(&reactions).count(), shown.reactions.len());
    }
    // Threads as `thread` gives them, replies in order.
    for (root_id, ids) in replies {
        let t = c.bob.thread(root_id).await.unwrap();
        let want: Vec<MessageId> = t.replies.iter().map(|m| m.id).collect();
        assert_eq!(ids, want);
    }
}
