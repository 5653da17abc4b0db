//! `Hearth::subscribe`: one stream of app-level events, for local writes
//! and peers' alike, with sync's own, and `Lagged` for a slow subscriber.

use std::time::Duration;

use futures::StreamExt;
use hearth::{Config, Event, Events, Hearth, KdfParams, NodeConfig, Passphrase};

type Res = Result<(), Box<dyn std::error::Error>>;

const T: Duration = Duration::from_secs(30);

fn config() -> Config {
    Config::default().with_kdf(KdfParams::INSECURE_FAST)
}

/// Events until `done` says the last one wanted came (or the time is up).
async fn until(events: &mut Events, mut done: impl FnMut(&Event) -> bool) -> Vec<Event> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + T;
    while let Ok(Some(e)) = tokio::time::timeout_at(deadline, events.next()).await {
        let last = done(&e);
        seen.push(e);
        if last {
            return seen;
        }
    }
    panic!("the event wanted never came; seen: {seen:#?}");
}

/// The events of one kind of write, without the fields that differ.
fn kinds(events: &[Event]) -> Vec<&'static str> {
    events
        .iter()
        .filter_map(|e| {
            Some(match e {
                Event::Message { .. } => "message",
                Event::Reply { .. } => "reply",
                Event::Edited { .. } => "edited",
                Event::Deleted { .. } => "deleted",
                Event::ReactionAdded { .. } => "reaction+",
                Event::ReactionRemoved { .. } => "reaction-",
                Event::ReadMarker { .. } => "read",
                Event::ChannelCreated { .. } => "created",
                Event::ChannelRenamed { .. } => "renamed",
                Event::MemberJoined { .. } => "joined",
                Event::MemberLeft { .. } => "left",
                _ => return None,
            })
        })
        .collect()
}

#[tokio::test]
async fn local_writes_are_events_in_order() -> Res {
    let dir = tempfile::tempdir()?;
    let pass = Passphrase::new("p");
    let h = Hearth::create(dir.path(), &pass, "alice", config()).await?;
    let me = h.whoami().user;
    let mut events = h.subscribe();
    let c = h.create_channel("general").await?;
    let root = h.post(c, "root").await?;
    let reply = h.reply(root, "a reply").await?;
    h.react(root, "👍").await?;
    h.unreact(root, "👍").await?;
    h.edit(root, "root, edited").await?;
    h.delete(reply).await?;
    h.mark_read(c, None).await?;
    h.rename_channel(c, "lunch").await?;
    let seen = until(&mut events, |e| matches!(e, Event::ChannelRenamed { .. })).await;
    assert_eq!(
        kinds(&seen),
        [
            "created",
            "joined",
            "message",
            "reply",
            "reaction+",
            "reaction-",
            "edited",
            "deleted",
            "read",
            "renamed"
        ],
        "{seen:#?}"
    );
    for e in &seen {
        match e {
            Event::ChannelCreated { channel, name, local } => {
                assert_eq!((*channel, name.as_deref(), *local), (c, Some("general"), true))
            }
            Event::MemberJoined { channel, user } => assert_eq!((*channel, *user), (c, me)),
            Event::Message { id, author, local, .. } => assert_eq!((*id, *author, *local), (root, me, true)),
            Event::Reply { id, root: r, .. } => assert_eq!((*id, *r), (reply, root)),
            Event::ReactionAdded { msg, emoji, user, .. } | Event::ReactionRemoved { msg, emoji, user, .. } => {
                assert_eq!((*msg, emoji.as_str(), *user), (root, "👍", me))
            }
            Event::Edited { msg, by, .. } => assert_eq!((*msg, *by), (root, me)),
            Event::Deleted { msg, .. } => assert_eq!(*msg, reply),
            Event::ReadMarker { up_to, user, .. } => assert_eq!((*up_to, *user), (reply, me)),
            Event::ChannelRenamed { name, .. } => assert_eq!(name, "lunch"),
            _ => {}
        }
    }

    // Roster changes: a user added, then removed.
    let carol = hearth::core::Identity::generate("carol")?.user();
    h.add_member(c, carol, hearth::Role::Member).await?;
    h.remove_member(c, carol).await?;
    let seen = until(
        &mut events,
        |e| matches!(e, Event::MemberLeft { user, .. } if *user == carol),
    )
    .await;
    assert!(
        seen.iter()
            .any(|e| matches!(e, Event::MemberJoined { user, .. } if *user == carol))
    );

    // The bulk path says what it took too, once it is durable.
    let ids = h
        .import_posts(
            c,
            (0..5)
                .map(|i| hearth::ImportPost {
                    text: format!("imported {i}"),
                    reply_to: (i == 4).then_some(root),
                })
                .collect(),
        )
        .await?;
    let seen = until(&mut events, |e| matches!(e, Event::Reply { id, .. } if *id == ids[4])).await;
    let posted: Vec<_> = seen
        .iter()
        .filter_map(|e| match e {
            Event::Message { id, .. } | Event::Reply { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(posted, ids);
    h.close().await?;
    // A subscription ends with its store.
    let rest = tokio::time::timeout(T, events.collect::<Vec<_>>()).await?;
    assert!(rest.len() < 10, "{rest:?}");
    Ok(())
}

#[tokio::test]
async fn a_peers_changes_are_the_same_events_and_sync_reports_itself() -> Res {
    let dir = tempfile::tempdir()?;
    let pass = Passphrase::new("p");
    let alice = Hearth::create(dir.path().join("a"), &pass, "alice", config()).await?;
    let bob = Hearth::create(dir.path().join("b"), &pass, "bob", config()).await?;
    let a_user = alice.whoami().user;
    let c = alice.create_channel("general").await?;
    let old = alice.post(c, "before bob came").await?;
    let a_node = alice
        .start_sync(NodeConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
            ..NodeConfig::default()
        })
        .await?;
    let addrs = a_node.wait_listening(T).await?;
    bob.join(&alice.invite(c, addrs.clone(), None, 0).await?).await?;
    // Subscribed before the node starts: its events come all the same.
    let mut events = bob.subscribe();
    let mut a_events = alice.subscribe();
    let b_node = bob.start_sync(NodeConfig::default()).await?;
    let peer = b_node.connect(&addrs, T).await?;
    b_node.sync_until_equal(peer, T).await?;
    // A batch's progress comes after its changes' events.
    let seen = until(
        &mut events,
        |e| matches!(e, Event::SyncProgress { channel, .. } if *channel == c),
    )
    .await;
    assert!(
        seen.iter()
            .any(|e| matches!(e, Event::Message { id, local: false, .. } if *id == old)),
        "{seen:#?}"
    );
    assert!(
        seen.iter()
            .any(|e| matches!(e, Event::PeerConnected { peer: p, .. } if *p == peer)),
        "{seen:#?}"
    );
    assert!(
        seen.iter()
            .any(|e| matches!(e, Event::ChannelCreated { channel, local: false, .. } if *channel == c)),
        "{seen:#?}"
    );
    let joined = until(
        &mut a_events,
        |e| matches!(e, Event::MemberJoined { user, .. } if *user == bob.whoami().user),
    )
    .await;
    assert!(!joined.is_empty());

    // Everything alice does now reaches bob as events of hers.
    let root = alice.post(c, "root").await?;
    let reply = alice.reply(root, "a reply").await?;
    alice.react(root, "🎉").await?;
    alice.edit(root, "root, edited").await?;
    alice.delete(reply).await?;
    alice.mark_read(c, None).await?;
    alice.rename_channel(c, "lunch").await?;
    // Entries of different epochs travel apart: wait for every kind.
    let mut wanted: Vec<&str> = vec!["message", "reply", "reaction+", "edited", "deleted", "read", "renamed"];
    until(&mut events, |e| {
        let by_alice = match e {
            Event::Message { local, author, .. } | Event::Reply { local, author, .. } => !local && *author == a_user,
            Event::Edited { local, by, .. } | Event::Deleted { local, by, .. } => !local && *by == a_user,
            Event::ReactionAdded { local, user, .. } | Event::ReadMarker { local, user, .. } => {
                !local && *user == a_user
            }
            Event::ChannelRenamed { local, name, .. } => !local && name == "lunch",
            _ => false,
        };
        if by_alice {
            let k = kinds(std::slice::from_ref(e));
            wanted.retain(|w| !k.contains(w));
        }
        wanted.is_empty()
    })
    .await;
    // Bob's device tells alice it holds her messages: a receipt event there.
    bob.plumbing().flush_receipts().await?;
    let seen = until(
        &mut a_events,
        |e| matches!(e, Event::Receipt { user, .. } if *user == bob.whoami().user),
    )
    .await;
    assert!(
        seen.iter()
            .any(|e| matches!(e, Event::SyncDone { .. }) || matches!(e, Event::Receipt { .. }))
    );

    // Bob's node goes: alice sees the peer lost.
    bob.stop_sync().await;
    until(
        &mut a_events,
        |e| matches!(e, Event::PeerLost { peer, .. } if *peer == b_node.peer_id()),
    )
    .await;
    alice.close().await?;
    bob.close().await?;
    Ok(())
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_is_told_it_lagged() -> Res {
    let dir = tempfile::tempdir()?;
    let pass = Passphrase::new("p");
    let h = Hearth::create(dir.path(), &pass, "alice", config()).await?;
    let c = h.create_channel("general").await?;
    let mut events = h.subscribe();
    // More events than a subscriber's queue holds, none read meanwhile.
    let mut taken = 0;
    while taken < 17_000 {
        let posts = (0..hearth::IMPORT_CHUNK.min(17_000 - taken))
            .map(|i| hearth::ImportPost {
                text: format!("m{i}"),
                reply_to: None,
            })
            .collect::<Vec<_>>();
        taken += h.import_posts(c, posts).await?.len();
    }
    let first = tokio::time::timeout(T, events.next()).await?.expect("an event");
    assert!(matches!(first, Event::Lagged { missed } if missed > 0), "{first:?}");
    // Then it goes on with what is still queued.
    let next = tokio::time::timeout(T, events.next()).await?.expect("an event");
    assert!(matches!(next, Event::Message { .. }), "{next:?}");
    h.close().await?;
    Ok(())
}
