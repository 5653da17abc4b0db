//! Stores written by earlier versions of Hearth must keep working.
//!
//! `tests/fixtures/<format>/` holds store directories made by the code of that
//! format, with `answers.json`: what that code answered about them (channels,
//! every page, thread and message, receipts, members). The test copies each
//! store, opens it with today's code (which migrates it), and asks the same
//! questions; then it opens it once more (a migrated store must open as it is).
//!
//! The `v1` stores were written by the code before Hearth kept its own feed
//! log (sled held everything): `alice` is a crash image (a non-empty journal
//! past sled's checkpoint, delivery receipts owed), with every kind of op,
//! several epochs, a joined channel and a linked device's feed; `alice-phone`
//! is that linked device, closed cleanly; `relay` is a relay directory
//! holding entries of two channels (opened, migrated and rebuilt by
//! sync/tests/relay.rs). The `v2` stores (written by the code of the feed
//! log, before devices had keys of their own) are the same scenario, with
//! the relay holding every entry of the three channels. The `v3` stores
//! (fork proofs, sealed clock row and store root; written before the sync
//! protocol asked peers to prove membership and relays kept access grants)
//! are the same scenario again, and so are the `v4` stores (devices with
//! keys of their own, written before entries were signed by them) and relay
//! (access grants), and the `v5` stores (entries signed by device keys,
//! written before channels had rosters), and the `v6` stores (rosters: an
//! admin, two invites, one revoked; written before devices moved to keyed
//! ids). Every device of them moves to its keyed id at its first open
//! (format 7): its answers are the same, its old id a former one. The `v7`
//! stores (keyed ids; written before sync protocol 5) open as they are; their
//! relay (format 6, before relay certificates and removals) is marked
//! format 7 and rebuilt by sync/tests/relay.rs. The `v8` stores (linked
//! devices without the user key, told removals; written before texts rode
//! in droppable segments, store format 9) open as they are: their documents
//! hold the texts themselves, and their devices write format 3 entries from
//! then on; their relay is of format 8.
//!
//! The `v16` stores hold entries of format 6 (their changes without the
//! chunk's framing and actor). The `v17` stores are of the format that may
//! hold the flag of a run that sent entries early; a test adds one to a
//! copy and sees the store reborn.
//!
//! Write the fixtures of a format only with the code of that format:
//! `HEARTH_WRITE_FIXTURES=v2 cargo test --test fixtures -- --ignored`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hearth::Passphrase;
use hearth::core::Vector;
use hearth::store::Store;
use hearth::sync::{RelayStore, Replica};
use serde_json::{Value, json};

#[path = "support/answers.rs"]
mod answers;
use answers::{
    FIXTURE_PASS, answers, assert_answers_as_written, copy_dir, feeds, fixture, fixture_answers, fixture_config, pull,
    this_device,
};

const STORES: [&str; 2] = ["alice", "alice-phone"];

/// A copy of fixture store `name` of `format`, opened: the temporary
/// directory (removed on drop), the store's directory in it, the store.
async fn open_copy(format: &str, name: &str) -> (tempfile::TempDir, PathBuf, Store) {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join(name);
    copy_dir(&fixture(format).join(name), &dir);
    let s = Store::open(&dir, &Passphrase::new(FIXTURE_PASS), fixture_config())
        .await
        .expect("open");
    (tmp, dir, s)
}

#[tokio::test]
async fn v1_stores_open_migrate_and_answer_the_same() {
    old_stores_open_migrate_and_answer_the_same("v1", 1).await;
}

#[tokio::test]
async fn v2_stores_open_migrate_and_answer_the_same() {
    old_stores_open_migrate_and_answer_the_same("v2", 2).await;
}

#[tokio::test]
async fn v3_stores_open_migrate_and_answer_the_same() {
    old_stores_open_migrate_and_answer_the_same("v3", 3).await;
}

#[tokio::test]
async fn v4_stores_open_migrate_and_answer_the_same() {
    old_stores_open_migrate_and_answer_the_same("v4", 4).await;
}

#[tokio::test]
async fn v5_stores_open_migrate_and_answer_the_same() {
    old_stores_open_migrate_and_answer_the_same("v5", 5).await;
}

#[tokio::test]
async fn v6_stores_open_migrate_and_answer_the_same() {
    old_stores_open_migrate_and_answer_the_same("v6", 6).await;
}

#[tokio::test]
async fn v7_stores_open_and_answer_the_same() {
    old_stores_open_migrate_and_answer_the_same("v7", 7).await;
}

#[tokio::test]
async fn v8_stores_open_and_answer_the_same() {
    old_stores_open_migrate_and_answer_the_same("v8", 8).await;
}

/// Format 9: entries of format 3, texts in segments (written by `9f7dfb9`).
#[tokio::test]
async fn v9_stores_open_and_answer_the_same() {
    old_stores_open_migrate_and_answer_the_same("v9", 9).await;
}

/// Format 10: entries of format 4, texts in packs (written by `f08ed70`).
#[tokio::test]
async fn v10_stores_open_and_answer_the_same() {
    old_stores_open_migrate_and_answer_the_same("v10", 10).await;
}

/// Format 11: restored devices' own network keys, text drops for relays
/// (written by `5c753c5`).
#[tokio::test]
async fn v11_stores_open_and_answer_the_same() {
    old_stores_open_migrate_and_answer_the_same("v11", 11).await;
}

/// Format 12: dead epochs and stubs, entries of format 4 (written by
/// `66d821a`).
#[tokio::test]
async fn v12_stores_open_and_answer_the_same() {
    old_stores_open_migrate_and_answer_the_same("v12", 12).await;
}

/// Format 13: entries of format 5, texts named by slot (written by
/// `d6f32f0`, the format's own code, ahead of the next format).
#[tokio::test]
async fn v13_stores_open_and_answer_the_same() {
    old_stores_open_migrate_and_answer_the_same("v13", 13).await;
}

/// Format 14: front pages (written by the commit that made the format):
/// `alice-phone`, closed cleanly, holds them, and its pages answer the same
/// from them.
#[tokio::test]
async fn v14_stores_open_and_answer_the_same() {
    old_stores_open_migrate_and_answer_the_same("v14", 14).await;
    let (_tmp, _, s) = open_copy("v14", "alice-phone").await;
    let at = s.find_text("from the phone").await.expect("find");
    assert!(at.iter().any(|w| w == "sled row front pages"), "{at:?}");
    s.close().await.expect("close");
}

#[tokio::test]
async fn v15_stores_open_and_answer_the_same() {
    old_stores_open_migrate_and_answer_the_same("v15", 15).await;
    // A store of format 15 closed cleanly (the phone): its open reads each
    // channel's summary copy, not one row per epoch; one of format 14 has
    // none to read until its first clean close.
    for (version, copies) in [("v15", true), ("v14", false)] {
        let (_tmp, dir, s) = open_copy(version, "alice-phone").await;
        let channels = s.channels().await.expect("channels").len() as u64;
        let read = s.open_report().summary_copies;
        assert_eq!(read, if copies { channels } else { 0 }, "{version}");
        s.close().await.expect("close");
        let s = Store::open(&dir, &Passphrase::new(FIXTURE_PASS), fixture_config())
            .await
            .expect("open");
        // Left for later by the open after a clean close, then read.
        assert_eq!(s.open_report().summary_copies, 0, "{version}, after a close");
        assert_eq!(
            s.stats().await.expect("stats").summary_copies,
            channels,
            "{version}, after a close"
        );
        assert!(s.verify().await.expect("verify").is_clean());
        s.close().await.expect("close");
    }
}

/// Format 16: entries of format 6, their changes without the chunk's
/// framing and actor (written by the commit that made the format). The
/// stores of format 15 hold entries of format 5 alone; both open, answer
/// the same, and their entries open to changes automerge takes.
#[tokio::test]
async fn v16_stores_open_and_answer_the_same() {
    old_stores_open_migrate_and_answer_the_same("v16", 16).await;
    for (version, format) in [("v16", hearth::core::ENVELOPE_V6), ("v15", hearth::core::ENVELOPE_V5)] {
        let (_tmp, _, s) = open_copy(version, "alice").await;
        let mut own = 0;
        for c in s.channels().await.expect("channels") {
            let keys = s.channel_keys(c.id).await.expect("keys");
            let all = s
                .entries_after(keys.wire(), Vector::default(), usize::MAX, usize::MAX)
                .await
                .expect("entries");
            for bytes in &all.entries {
                let env = hearth::core::Envelope::decode(bytes).expect("decode");
                if env.header.device != s.whoami().device || env.pruned.is_some() {
                    continue;
                }
                let body = env.open(&keys).expect("open");
                assert_eq!(body.epoch, env.header.epoch);
                hearth::core::decode_change(&body.change, &env.header.device, &env.header.user)
                    .expect("a change automerge takes");
                own += usize::from(env.header.version == format);
            }
        }
        assert!(own > 10, "{version}: {own} entries of this device in format {format}");
        s.close().await.expect("close");
    }
}

/// Format 17: the `early` file of a run that sends entries before they are
/// durable (written by the commit that made the format, as format 16's).
#[tokio::test]
async fn v17_stores_open_and_answer_the_same() {
    old_stores_open_migrate_and_answer_the_same("v17", 17).await;
}

/// A store of format 17 that holds the flag of an early run that ended
/// uncleanly, and whose mark is gone (the machine went down): it opens as a
/// new device of the same user, with the old id a former one, every message
/// as before, and writes on in a feed of its own. The flag is written here
/// as docs/format.md says it is.
#[tokio::test]
async fn a_store_left_by_an_unclean_early_run_opens_as_a_new_device() {
    let pass = Passphrase::new(FIXTURE_PASS);
    let (_plain_tmp, _, plain) = open_copy("v17", "alice").await;
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("alice");
    copy_dir(&fixture("v17").join("alice"), &dir);
    let old = plain.whoami().device;
    let mut flag = vec![1u8];
    flag.extend_from_slice(&[0x5a; 16]);
    flag.extend_from_slice(&old.0);
    std::fs::write(dir.join(hearth::store::EARLY_FILE), &flag).expect("flag");
    let s = Store::open(&dir, &pass, fixture_config()).await.expect("open");
    assert_eq!(s.open_report().reborn_from, Some(old));
    assert_ne!(s.whoami().device, old);
    assert_eq!(s.whoami().former.last(), Some(&old));
    assert_eq!(s.whoami().user, plain.whoami().user);
    assert!(!dir.join(hearth::store::EARLY_FILE).exists(), "the flag goes");
    let cert = s.device_cert().await.expect("a certificate");
    assert_eq!(cert.body.device, s.whoami().device);
    hearth::core::device::verify_chain(&s.device_chain().await.expect("chain")).expect("its chain verifies");
    for c in plain.channels().await.expect("channels") {
        assert_eq!(
            s.all_messages(c.id).await.expect("messages"),
            plain.all_messages(c.id).await.expect("messages"),
            "{}: the same messages",
            c.name
        );
    }
    let c = s.channels().await.expect("channels")[0].id;
    s.post(c, "after the rebirth").await.expect("post");
    assert_eq!(s.vector(c).await.expect("vector").seq(&s.whoami().device), 1);
    assert!(s.verify().await.expect("verify").is_clean());
    let reborn = s.whoami().clone();
    s.close().await.expect("close");
    // An open that reborn it and was cut short before the flag went leaves
    // the flag of the old device: the next open does not make it new again.
    std::fs::write(dir.join(hearth::store::EARLY_FILE), &flag).expect("flag");
    let s = Store::open(&dir, &pass, fixture_config()).await.expect("open");
    assert_eq!(s.open_report().reborn_from, None);
    assert_eq!((s.whoami().device, &s.whoami().former), (reborn.device, &reborn.former));
    assert!(!dir.join(hearth::store::EARLY_FILE).exists(), "the flag goes");
    s.close().await.expect("close");
    // It reopens as the new device, its identity rebuilt from the log too.
    let device = {
        let s = Store::open(&dir, &pass, fixture_config()).await.expect("reopen");
        assert_eq!(s.open_report().reborn_from, None);
        let d = s.whoami().device;
        s.close().await.expect("close");
        d
    };
    std::fs::remove_dir_all(dir.join("db")).expect("remove db");
    let s = Store::open(&dir, &pass, fixture_config()).await.expect("rebuild");
    assert!(s.open_report().rebuilt.is_some());
    assert_eq!(s.whoami().device, device);
    assert_eq!(s.whoami().former.last(), Some(&old));
    assert!(s.verify().await.expect("verify").is_clean());
    s.close().await.expect("close");
    plain.close().await.expect("close");
}

/// A text of format 9 rides in a segment of a format 3 entry: deleting its
/// message on today's code drops the segment from sled at once and from every
/// file at the next compaction, while the texts beside it stay.
#[tokio::test]
async fn a_format_9_segment_text_is_deleted_for_good() {
    let tmp = tempfile::tempdir().expect("tmp");
    let pass = Passphrase::new(FIXTURE_PASS);
    let dir = tmp.path().join("alice");
    copy_dir(&fixture("v9").join("alice"), &dir);
    let s = Store::open(&dir, &pass, fixture_config()).await.expect("open");
    // A message of the fixture's own, in a format 3 entry, and its segment.
    let mut found = None;
    for ch in s.channels().await.expect("channels") {
        let keys = s.channel_keys(ch.id).await.expect("keys");
        let all = s
            .entries_after(keys.wire(), Vector::default(), usize::MAX, usize::MAX)
            .await
            .expect("entries");
        for bytes in all.entries {
            let env = hearth::core::Envelope::decode(&bytes).expect("decode");
            if env.header.version != hearth::core::ENVELOPE_V3 || env.header.user != s.whoami().user {
                continue;
            }
            let hb = env.header.encode();
            for seg in env.segments.iter().filter(|x| x.sealed.is_some()) {
                let c = seg.open(&keys, env.header.generation, &hb).expect("opens");
                let m = s.message(c.msg).await.expect("message").message;
                if !m.deleted && m.text.as_deref() == Some(c.text.as_str()) && found.is_none() {
                    found = Some((ch.id, c.msg, seg.sealed.clone().expect("bytes")));
                }
            }
        }
    }
    let (channel, msg, needle) = found.expect("a text of the fixture in a format 3 segment");
    let before = s.page(channel, None, 500).await.expect("page");
    let parent = s.message(msg).await.expect("message").message.reply_to;
    s.delete(msg).await.expect("delete");
    let m = s.message(msg).await.expect("message").message;
    assert!(m.deleted && m.text.is_none());
    assert!(s.verify().await.expect("verify").is_clean());
    s.close().await.expect("close");
    Store::compact_dir(&dir, &pass, fixture_config())
        .await
        .expect("compact");
    assert!(!answers::holds(&dir, &needle), "the segment is gone from every file");
    let s = Store::open(&dir, &pass, fixture_config()).await.expect("reopen");
    let after = s.page(channel, None, 500).await.expect("page");
    assert_eq!(after.len(), before.len());
    for (a, b) in before.iter().zip(&after) {
        if a.id == msg {
            assert!(b.deleted && b.text.is_none());
        } else if Some(a.id) == parent {
            // A deleted reply is not counted.
            assert_eq!(b.reply_count + 1, a.reply_count);
        } else {
            assert_eq!(a, b, "every other message answers the same");
        }
    }
    assert!(s.verify().await.expect("verify").is_clean());
    s.close().await.expect("close");
}

/// Every file under `dir` with its bytes, to show that something wrote
/// nothing.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    answers::files(dir)
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n != "LOCK"))
        .map(|p| {
            let bytes = std::fs::read(&p).expect("read");
            (p, bytes)
        })
        .collect()
}

/// `migrate --check` on every fixture: the format it is in, the steps the
/// next open takes, and not one byte of the store written (sled is read from
/// a copy); after the open that migrates it, nothing is left to do. A wrong
/// passphrase is refused before anything is read.
#[tokio::test]
async fn a_migration_plan_says_what_an_open_would_do_and_writes_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let pass = Passphrase::new(FIXTURE_PASS);
    for number in 1..hearth::STORE_FORMAT {
        let format = format!("v{number}");
        let dir = tmp.path().join(&format);
        copy_dir(&fixture(&format).join("alice"), &dir);
        let before = snapshot(&dir);
        let plan = Store::migration_plan(&dir, &pass).await.expect("plan");
        assert_eq!((plan.from, plan.to), (Some(number), hearth::STORE_FORMAT), "{format}");
        assert!(!plan.steps.is_empty(), "{format}");
        assert_eq!(
            plan.steps.iter().any(|s| s.contains("feed log (log/) is written")),
            number == 1,
            "{format}"
        );
        assert_eq!(
            plan.steps.iter().any(|s| s.contains("keyed")) || plan.steps.iter().any(|s| s.contains("keys")),
            number < 7,
            "{format}"
        );
        assert!(snapshot(&dir) == before, "{format}: the check wrote to the store");
        let copies = || {
            std::fs::read_dir(std::env::temp_dir())
                .expect("temp dir")
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("hearth-migrate-check-"))
                .count()
        };
        assert_eq!(copies(), 0, "{format}: the copy of sled is left behind");
        assert!(matches!(
            Store::migration_plan(&dir, &Passphrase::new("wrong")).await,
            Err(hearth::store::Error::WrongPassphrase)
        ));
        Store::open(&dir, &pass, fixture_config())
            .await
            .expect("open")
            .close()
            .await
            .expect("close");
        let after = Store::migration_plan(&dir, &pass).await.expect("plan");
        assert_eq!(after.from, Some(hearth::STORE_FORMAT), "{format}");
        assert!(after.steps.is_empty(), "{format}: {:?}", after.steps);
    }
}

async fn old_stores_open_migrate_and_answer_the_same(format: &str, number: u8) {
    let tmp = tempfile::tempdir().expect("tmp");
    let pass = Passphrase::new(FIXTURE_PASS);
    // A store of today's format opens as it is.
    let migrated = (number != hearth::STORE_FORMAT).then_some(number);
    for name in STORES {
        let dir = tmp.path().join(name);
        copy_dir(&fixture(format).join(name), &dir);
        let expected = fixture_answers(format, name);
        let s = Store::open(&dir, &pass, fixture_config())
            .await
            .expect("open the old store");
        assert_eq!(s.open_report().migrated_from, migrated, "{name}: migrated");
        assert_eq!(s.open_report().rebuilt, None, "{name}: sled was fine");
        // The device has its own keys now (format 4), and writes under its
        // keyed id (format 7), certified by its user; the id its feeds were
        // written under is a former id.
        let old_device = expected["answers"]["device"].as_str().expect("device").to_string();
        let cert = s.device_cert().await.expect("a device certificate");
        assert_eq!((cert.body.device, cert.body.user), (s.whoami().device, s.whoami().user));
        assert!(!cert.body.legacy, "{name}: on its keyed id");
        assert!(hearth::core::device::is_keyed_id(&s.whoami().device), "{name}");
        let former: Vec<String> = s.whoami().former.iter().map(|d| d.to_string()).collect();
        if number < 7 {
            assert_eq!(former, vec![old_device.clone()], "{name}: the old id is a former one");
            assert_eq!(
                s.open_report().moved_from.map(|d| d.to_string()),
                Some(old_device.clone()),
                "{name}: moved at this open"
            );
        }
        // A device linked by another device (format 8) is certified by that
        // device's chain, then its own certificate.
        let chain = s.device_chain().await.expect("the chain");
        assert_eq!(chain.last(), Some(&cert), "{name}: the chain ends in its certificate");
        hearth::core::device::verify_chain(&chain).expect("the chain verifies");
        let held = assert_answers_as_written(&s, &expected, name).await;
        s.close().await.expect("close");
        // Migrated once: it opens as it is and answers the same.
        let s = Store::open(&dir, &pass, fixture_config()).await.expect("reopen");
        assert_eq!(s.open_report().migrated_from, None, "{name}: migrated once");
        assert_eq!(
            s.device_cert().await.expect("cert"),
            cert,
            "{name}: the same keys after a reopen"
        );
        // The keys are in the log: a rebuilt database has them too.
        s.close().await.expect("close");
        std::fs::remove_dir_all(dir.join("db")).expect("remove db");
        let s = Store::open(&dir, &pass, fixture_config()).await.expect("open rebuilt");
        assert!(s.open_report().rebuilt.is_some());
        assert_eq!(
            s.device_cert().await.expect("cert"),
            cert,
            "{name}: the same keys after a rebuild"
        );
        // What it owed it sent before the rebuild: nothing is owed again (a
        // rebuild once took what this device wrote under its former id for
        // another device's, and sent receipts for its own messages).
        s.flush_receipts().await.expect("receipts");
        assert_eq!(
            this_device(&answers(&s).await, &s),
            this_device(&expected["answers"], &s),
            "{name}: answers differ after a reopen"
        );
        assert_eq!(s.open_report().moved_from, None, "{name}: moved once");
        assert_eq!(feeds(&s).await, held, "{name}: feeds changed at a reopen");
        // It writes on, now signing with its device key (entry format 2): its
        // feed's first such entry carries the chain, and it all verifies.
        let c = s.channels().await.expect("channels")[0].id;
        s.post(c, "after the migration").await.expect("post");
        s.checkpoint().await.expect("checkpoint");
        let wire = s.channel_keys(c).await.expect("keys").wire();
        let mine = s
            .entries_after(wire, Vector::default(), usize::MAX, usize::MAX)
            .await
            .expect("entries")
            .entries
            .into_iter()
            .map(|e| hearth::core::Envelope::decode(&e).expect("decodes"))
            .filter(|e| e.header.device == s.whoami().device)
            .collect::<Vec<_>>();
        let first_v2 = mine
            .iter()
            .position(|e| e.header.version >= hearth::core::ENVELOPE_V2)
            .expect("a format 2 entry");
        assert_eq!(mine[first_v2].certs, chain, "{name}: the chain in the first");
        assert!(
            mine[first_v2 + 1..]
                .iter()
                .all(|e| e.header.version >= hearth::core::ENVELOPE_V2)
        );
        if number >= 6 {
            // Rosters (format 6): every channel has one from its creation; in
            // `general`, Bob made an admin, two invites, one of them revoked.
            let mut admins = Vec::new();
            for info in s.channels().await.expect("channels") {
                let r = s.roster(info.id).await.expect("roster");
                assert!(r.started, "{name}");
                let roles: Vec<_> = r.members.iter().filter_map(|m| m.role).collect();
                assert!(roles.contains(&hearth::core::Role::Owner), "{name}: {r:?}");
                if roles.contains(&hearth::core::Role::Admin) {
                    admins.push(info.id);
                }
            }
            // The `v6` scenario only (the `v7` stores were written by the
            // plain scenario of the fixture writer).
            if number == 6 {
                assert_eq!(admins.len(), 1, "{name}: one channel with an admin");
                let invites = s.invites(admins[0]).await.expect("invites");
                assert_eq!(invites.len(), 2, "{name}");
                // One revoked; the other open, or expired by now (it was
                // written with an expiry, which the clock reaches).
                assert_eq!(
                    invites
                        .iter()
                        .filter(|i| i.closed.as_deref() == Some("the invite was revoked"))
                        .count(),
                    1,
                    "{name}: {invites:?}"
                );
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("clock")
                    .as_millis() as u64;
                for i in invites
                    .iter()
                    .filter(|i| i.closed.as_deref() != Some("the invite was revoked"))
                {
                    let expired = i.expires.is_some_and(|e| e <= now);
                    assert_eq!(i.closed.is_some(), expired, "{name}: {i:?}");
                }
            }
            let v = s.verify().await.expect("verify");
            assert!(v.is_clean(), "{name}: {v:?}");
            s.close().await.expect("close");
            continue;
        }
        // A channel older than rosters has none: every writer is a member,
        // until one of them claims it by managing it.
        let roster = s.roster(c).await.expect("roster");
        assert!(!roster.started, "{name}: no roster in an old channel");
        assert!(
            roster
                .members
                .iter()
                .all(|m| m.role == Some(hearth::core::Role::Member)),
            "{name}: {roster:?}"
        );
        let other = roster
            .members
            .iter()
            .map(|m| m.user)
            .find(|u| *u != s.whoami().user)
            .expect("another writer");
        s.set_role(c, other, hearth::core::Role::Admin)
            .await
            .expect("claim and promote");
        let roster = s.roster(c).await.expect("roster");
        assert!(roster.started);
        let role = |u| roster.members.iter().find(|m| m.user == u).and_then(|m| m.role);
        assert_eq!(role(s.whoami().user), Some(hearth::core::Role::Owner));
        assert_eq!(role(other), Some(hearth::core::Role::Admin));
        let v = s.verify().await.expect("verify");
        assert!(v.is_clean(), "{name}: {v:?}");
        s.close().await.expect("close");
    }
}

/// A power cut can leave sled behind the log after the device got its keys
/// (format 4) and signed entries with them: the log, the source of truth,
/// holds the new identity, sled the old one. Opening again must take the
/// keys from the log, not make new ones that the entries would not verify
/// under (found by a power cut in a migration, cli/tests/powercut_sync.rs).
#[tokio::test]
async fn a_database_left_behind_the_new_device_keys_takes_them_from_the_log() {
    let tmp = tempfile::tempdir().expect("tmp");
    let pass = Passphrase::new(FIXTURE_PASS);
    let dir = tmp.path().join("alice");
    copy_dir(&fixture("v3").join("alice"), &dir);
    // sled as it was before this code opened the store.
    copy_dir(&dir.join("db"), &tmp.path().join("old-db"));
    let s = Store::open(&dir, &pass, fixture_config())
        .await
        .expect("open the old store");
    let cert = s.device_cert().await.expect("a device certificate");
    let c = s.channels().await.expect("channels")[0].id;
    s.post(c, "signed with the new key").await.expect("post");
    s.flush_receipts().await.expect("receipts");
    s.checkpoint().await.expect("checkpoint");
    let want = answers(&s).await;
    s.close().await.expect("close");
    // The power cut: sled loses all of it, the log keeps it.
    std::fs::remove_dir_all(dir.join("db")).expect("remove db");
    copy_dir(&tmp.path().join("old-db"), &dir.join("db"));
    let s = Store::open(&dir, &pass, fixture_config())
        .await
        .expect("open after the cut");
    assert_eq!(s.open_report().rebuilt, None, "sled opened and caught up");
    assert_eq!(
        s.device_cert().await.expect("cert"),
        cert,
        "the keys in the log, not new ones"
    );
    assert_eq!(answers(&s).await, want, "the same answers");
    s.post(c, "and on").await.expect("post");
    let v = s.verify().await.expect("verify");
    assert!(v.is_clean(), "{v:?}");
    s.close().await.expect("close");
}

/// Writes the fixtures of the current format (see the module docs). Only run
/// by hand, and only with the code of the format being written.
#[tokio::test]
#[ignore = "writes fixtures; run by hand with HEARTH_WRITE_FIXTURES=1"]
async fn write_fixtures() {
    let format = std::env::var("HEARTH_WRITE_FIXTURES").expect("HEARTH_WRITE_FIXTURES=<format>, e.g. v1");
    let out = fixture(&format);
    assert!(!out.exists(), "{} exists: fixtures are never rewritten", out.display());
    let tmp = tempfile::tempdir().expect("tmp");
    let pass = Passphrase::new(FIXTURE_PASS);
    // No checkpoint on its own and receipts that would gather for an hour: the
    // image taken below has a journal past sled's checkpoint and receipts owed.
    let slow = fixture_config()
        .with_checkpoint_interval(Duration::from_secs(3600))
        .with_receipt_delay(Duration::from_secs(3600));
    let alice = Store::create(tmp.path().join("alice"), &pass, "alice", slow.clone())
        .await
        .expect("alice");
    let bob = Store::create(tmp.path().join("bob"), &pass, "bob", fixture_config())
        .await
        .expect("bob");

    let general = alice.create_channel("general").await.expect("channel");
    let random = alice.create_channel("random").await.expect("channel");
    let mut roots = Vec::new();
    for i in 0..30 {
        roots.push(
            alice
                .post(general, &format!("general message {i}"))
                .await
                .expect("post"),
        );
    }
    let reply = alice.reply(roots[2], "a reply").await.expect("reply");
    alice.reply(reply, "a reply to the reply").await.expect("reply");
    alice.react(roots[3], "👍").await.expect("react");
    alice.react(roots[3], "🎉").await.expect("react");
    alice.unreact(roots[3], "🎉").await.expect("unreact");
    alice.edit(roots[4], "general message 4, edited").await.expect("edit");
    alice.delete(roots[5]).await.expect("delete");
    alice.mark_read(general, Some(roots[20])).await.expect("read");
    alice.rename_channel(random, "off-topic").await.expect("rename");
    alice.post(random, "random message").await.expect("post");

    // A channel Bob made and Alice joined; Bob's messages are owed receipts.
    let bobs = bob.create_channel("bobs").await.expect("channel");
    let b1 = bob.post(bobs, "bob's first").await.expect("post");
    bob.post(bobs, "bob's second").await.expect("post");
    alice
        .join_channel(bob.channel_keys(bobs).await.expect("keys"))
        .await
        .expect("join");
    pull(&bob, &alice, bobs).await;
    alice.reply(b1, "alice answers bob").await.expect("reply");
    alice.react(b1, "❤️").await.expect("react");
    // Bob is in general too: his reply there, and Alice's read marker.
    bob.join_channel(alice.channel_keys(general).await.expect("keys"))
        .await
        .expect("join");
    pull(&alice, &bob, general).await;
    bob.reply(roots[0], "bob in general").await.expect("reply");
    bob.react(roots[0], "👀").await.expect("react");
    pull(&bob, &alice, general).await;

    // A linked device of Alice's, whose feed Alice holds.
    let phone_keys = hearth::core::device::DeviceKeys::generate().unwrap();
    let bundle = alice.link_bundle(phone_keys.public()).await.unwrap();
    let phone = Store::create_linked(
        tmp.path().join("alice-phone"),
        &pass,
        phone_keys,
        &bundle,
        fixture_config(),
    )
    .await
    .expect("phone");
    pull(&alice, &phone, general).await;
    pull(&alice, &phone, random).await;
    pull(&alice, &phone, bobs).await;
    phone.post(general, "from the phone").await.expect("post");
    phone.react(roots[1], "📱").await.expect("react");
    pull(&phone, &alice, general).await;
    alice.checkpoint().await.expect("checkpoint");

    // Late writes: acknowledged (in the journal), not checkpointed.
    for i in 0..5 {
        alice.post(general, &format!("late message {i}")).await.expect("post");
    }
    alice.react(roots[6], "🔥").await.expect("react");

    // Let the last group close (it would on its own), then take the image.
    tokio::time::sleep(Duration::from_millis(100)).await;
    std::fs::create_dir_all(&out).expect("mkdir");
    // Alice as a SIGKILL would leave her now.
    copy_dir(&tmp.path().join("alice"), &out.join("alice"));
    // A relay that holds every entry of the three channels, granted them,
    // closed cleanly.
    {
        let relay = RelayStore::open(&out.join("relay")).expect("relay");
        for store in [&alice, &phone] {
            for info in store.channels().await.expect("channels") {
                let wire = store.channel_keys(info.id).await.expect("keys").wire();
                let all = store
                    .entries_after(wire, Vector::default(), usize::MAX, usize::MAX)
                    .await
                    .expect("entries");
                relay
                    .ingest(wire, all.entries)
                    .await
                    .expect("ingest")
                    .expect("relay ingest");
                // Granted by its member (relay format 4), as a configured relay is.
                let access = store.channel_keys(info.id).await.expect("keys").access().clone();
                relay
                    .grant(vec![(wire, access)])
                    .await
                    .expect("grant")
                    .expect("a relay takes grants");
            }
        }
        std::fs::write(
            out.join("relay.answers.json"),
            serde_json::to_string_pretty(&relay_holdings(&relay).await).expect("json"),
        )
        .expect("write relay answers");
    }
    let _ = std::fs::remove_file(out.join("relay").join("LOCK"));

    alice.close().await.expect("close");
    bob.close().await.expect("close");
    phone.close().await.expect("close");
    copy_dir(&tmp.path().join("alice-phone"), &out.join("alice-phone"));
    for name in ["alice", "alice-phone"] {
        let _ = std::fs::remove_file(out.join(name).join("LOCK"));
    }

    // What this code answers about each, opened from a copy.
    for name in STORES {
        let dir = tmp.path().join(format!("{name}-check"));
        copy_dir(&out.join(name), &dir);
        let s = Store::open(&dir, &pass, fixture_config())
            .await
            .expect("open the fixture");
        s.flush_receipts().await.expect("receipts");
        let journal = s.open_report().replayed_records;
        let value = json!({
            "format": format,
            "replayed_records": journal,
            "feeds": feeds(&s).await,
            "answers": answers(&s).await,
        });
        s.close().await.expect("close");
        std::fs::write(
            out.join(format!("{name}.answers.json")),
            serde_json::to_string_pretty(&value).expect("json"),
        )
        .expect("write answers");
    }
}

/// What a relay holds, per channel: its feeds, its entry count and a hash of
/// every entry in order (sync/tests/relay.rs computes the same).
async fn relay_holdings(relay: &RelayStore) -> Value {
    let mut out = serde_json::Map::new();
    for (wire, v) in relay.vectors().await.expect("vectors") {
        let all = relay
            .entries_after(wire, Vector::default(), usize::MAX, usize::MAX)
            .await
            .expect("entries")
            .expect("known channel");
        let mut h = blake3::Hasher::new();
        for e in &all.entries {
            h.update(e);
        }
        let feeds: serde_json::Map<String, Value> = v.0.iter().map(|(d, p)| (d.to_string(), json!(p.seq))).collect();
        let wire: String = wire.0.iter().map(|b| format!("{b:02x}")).collect();
        out.insert(
            wire,
            json!({"feeds": feeds, "entries": all.entries.len(), "blake3": h.finalize().to_hex().to_string()}),
        );
    }
    Value::Object(out)
}

/// Opens the `v6` stores (their devices move to keyed ids) and finds
/// `general`, the channel where Bob is an admin, and Bob.
async fn moved_v6(tmp: &Path) -> (Store, Store, hearth::ChannelId, hearth::UserId) {
    let pass = Passphrase::new(FIXTURE_PASS);
    let mut open = Vec::new();
    for name in STORES {
        let dir = tmp.join(name);
        copy_dir(&fixture("v6").join(name), &dir);
        let s = Store::open(&dir, &pass, fixture_config()).await.expect("open");
        assert!(s.open_report().moved_from.is_some(), "{name} moved");
        open.push(s);
    }
    let phone = open.pop().expect("phone");
    let alice = open.pop().expect("alice");
    for info in alice.channels().await.expect("channels") {
        let r = alice.roster(info.id).await.expect("roster");
        if let Some(bob) = r.members.iter().find(|m| m.role == Some(hearth::core::Role::Admin)) {
            return (alice, phone, info.id, bob.user);
        }
    }
    panic!("no channel with an admin");
}

fn texts(page: &[hearth::Message]) -> Vec<String> {
    page.iter().filter_map(|m| m.text.clone()).collect()
}

/// A key package written by a member who knew a device only by its former
/// id (before it moved to its keyed id) opens on that device.
#[tokio::test]
async fn a_moved_device_opens_keys_sealed_to_its_former_id() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (alice, phone, general, bob) = moved_v6(tmp.path()).await;
    // The phone has not seen Alice's new id: removing Bob rotates the key to
    // the devices it knows, Alice's under her former id.
    phone.remove_member(general, bob).await.expect("remove bob");
    let generations = phone.channel_keys(general).await.expect("keys").current_generation();
    assert!(generations >= 1, "the removal rotated the key");
    phone.post(general, "after the rotation").await.expect("post");
    pull(&phone, &alice, general).await;
    assert_eq!(
        alice.channel_keys(general).await.expect("keys").current_generation(),
        generations,
        "the package to the former id opened"
    );
    assert!(texts(&alice.page(general, None, 100).await.expect("page")).contains(&"after the rotation".to_string()));
    // Alice writes on under the new generation, as her new device; the phone reads it.
    alice.post(general, "alice, moved").await.expect("post");
    pull(&alice, &phone, general).await;
    assert!(texts(&phone.page(general, None, 100).await.expect("page")).contains(&"alice, moved".to_string()));
    for s in [alice, phone] {
        assert!(s.verify().await.expect("verify").is_clean());
        s.close().await.expect("close");
    }
}

/// A device revoked under its former id by a sibling that has not seen its
/// new one is revoked under both: it cannot write, what it writes under its
/// new id is not shown, and the next key does not reach it. A sibling that
/// knows both ids revokes both.
#[tokio::test]
async fn a_revocation_of_a_former_id_follows_the_key() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (alice, phone, general, _) = moved_v6(tmp.path()).await;
    let former = alice.whoami().former[0];
    assert!(phone.revoke_device(former).await.expect("revoke") >= 1);
    // Alice, unaware yet, writes under her new id.
    alice.post(general, "from the stolen laptop").await.expect("post");
    pull(&alice, &phone, general).await;
    let shown = texts(&phone.page(general, None, 100).await.expect("page"));
    assert!(!shown.contains(&"from the stolen laptop".to_string()), "{shown:?}");
    assert!(
        shown.contains(&"general message 1".to_string()),
        "what it wrote before stays"
    );
    // The phone's next post is under a key the laptop does not get.
    phone
        .post(general, "the laptop must not read this")
        .await
        .expect("post");
    pull(&phone, &alice, general).await;
    let seen = texts(&alice.page(general, None, 100).await.expect("page"));
    assert!(!seen.contains(&"the laptop must not read this".to_string()), "{seen:?}");
    let err = alice.post(general, "more").await.expect_err("revoked");
    assert!(err.to_string().contains("revoked"), "{err}");
    // The phone knows both ids now: a revocation names both.
    let listed = phone.devices().await.expect("devices");
    assert!(listed.iter().any(|d| d.device == alice.whoami().device));
    for s in [alice, phone] {
        s.close().await.expect("close");
    }
}
