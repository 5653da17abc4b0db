//! Channel rosters through the store (issue 8, items 2 and 3): the maker owns
//! a channel, admins manage members, a removed member's later entries are
//! held unapplied by every other member (taken out again where they were
//! applied first), the removed store cannot write, a removal rotates the
//! key, and a channel older than rosters is claimed by the first member who
//! manages it.

use hearth_core::{ChannelId, KdfParams, Passphrase, Role, UserId, WireId};
use hearth_store::{Config, Error, Refusal, Store};

fn config() -> Config {
    Config::default().with_kdf(KdfParams::INSECURE_FAST)
}

/// Move what `to` lacks of a channel; returns the refusals.
async fn pull(from: &Store, to: &Store, wire: WireId, channel: ChannelId) -> Vec<Refusal> {
    let mut refused = Vec::new();
    loop {
        let have = to.vector(channel).await.unwrap();
        let batch = from.entries_after(wire, have, 64 * 1024, 64).await.unwrap();
        if batch.entries.is_empty() {
            return refused;
        }
        let report = to.ingest(wire, batch.entries).await.unwrap();
        let stuck = report.accepted == 0;
        refused.extend(report.rejected.into_iter().map(|r| r.reason));
        if stuck {
            return refused;
        }
    }
}

fn texts(page: Vec<hearth_core::Message>) -> Vec<String> {
    page.into_iter().filter_map(|m| m.text).collect()
}

fn role_of(info: &hearth_store::RosterInfo, user: UserId) -> Option<Option<Role>> {
    info.members.iter().find(|m| m.user == user).map(|m| m.role)
}

#[tokio::test]
async fn admins_remove_members_whose_later_messages_are_hidden_everywhere() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let pass = Passphrase::new("pw");
    let alice = Store::create(dirs[0].path(), &pass, "alice", config()).await.unwrap();
    let bob = Store::create(dirs[1].path(), &pass, "bob", config()).await.unwrap();
    let carol = Store::create(dirs[2].path(), &pass, "carol", config()).await.unwrap();
    let (a, b, c) = (alice.whoami().user, bob.whoami().user, carol.whoami().user);
    let ch = alice.create_channel("general").await.unwrap();
    let keys = alice.channel_keys(ch).await.unwrap();
    let wire = keys.wire();
    bob.join_channel(keys.clone()).await.unwrap();
    carol.join_channel(keys).await.unwrap();
    let all = [&alice, &bob, &carol];
    let mesh = || async {
        for from in all {
            for to in all {
                if !std::ptr::eq(from, to) {
                    pull(from, to, wire, ch).await;
                }
            }
        }
    };
    mesh().await;
    let info = alice.roster(ch).await.unwrap();
    assert!(info.started);
    assert_eq!(role_of(&info, a), Some(Some(Role::Owner)));
    assert_eq!(role_of(&info, b), Some(Some(Role::Member)), "a writer is a member");

    // A member may not promote itself, nor remove others.
    let denied = bob.set_role(ch, b, Role::Admin).await.unwrap_err();
    assert!(matches!(denied, Error::NotAllowed { .. }), "{denied}");
    assert!(matches!(bob.remove_member(ch, c).await, Err(Error::NotAllowed { .. })));
    // The owner makes bob an admin; bob (resolving carol by name) removes carol.
    alice.set_role(ch, b, Role::Admin).await.unwrap();
    mesh().await;
    assert_eq!(bob.resolve_member(ch, "carol").await.unwrap(), c);
    assert_eq!(bob.resolve_member(ch, &c.to_hex()[..8]).await.unwrap(), c);
    assert!(matches!(
        bob.resolve_member(ch, "dave").await,
        Err(Error::NotFound { .. })
    ));
    carol.post(ch, "before the removal").await.unwrap();
    mesh().await;
    bob.remove_member(ch, c).await.unwrap();
    // Carol writes on before she learns of it. Alice, who has not heard of
    // the removal yet, takes her entry and shows it.
    carol.post(ch, "after the removal").await.unwrap();
    assert!(pull(&carol, &alice, wire, ch).await.is_empty());
    assert!(texts(alice.page(ch, None, 100).await.unwrap()).contains(&"after the removal".into()));
    // Bob, who removed her, takes it into her feed past the cut: applied (as
    // Alice did), not shown, and nobody is blamed.
    let wire_entries = carol
        .entries_after(wire, bob.vector(ch).await.unwrap(), usize::MAX, usize::MAX)
        .await
        .unwrap()
        .entries;
    let report = bob.ingest(wire, wire_entries).await.unwrap();
    assert!(report.rejected.is_empty() && report.cut == 1, "{report:?}");
    // Alice learns of the removal from Bob: the message leaves her views too.
    let bobs = bob.vector(ch).await.unwrap();
    assert!(pull(&bob, &alice, wire, ch).await.is_empty());
    // (Not equal vectors: delivery receipts come 250 ms after an ingest, so
    // on a slow machine either side may have written one since.)
    assert!(alice.vector(ch).await.unwrap().covers(&bobs));
    for s in [&alice, &bob] {
        let v = s.verify().await.unwrap();
        assert!(v.is_clean() && v.unopened == 0, "{v:?}");
        let texts: Vec<String> = s
            .page(ch, None, 100)
            .await
            .unwrap()
            .into_iter()
            .filter_map(|m| m.text)
            .collect();
        assert!(texts.contains(&"before the removal".to_string()));
        assert!(!texts.contains(&"after the removal".to_string()));
        assert_eq!(role_of(&s.roster(ch).await.unwrap(), c), Some(None), "removed");
    }
    // Carol, once she learns of it, cannot write there any more.
    pull(&bob, &carol, wire, ch).await;
    let err = carol.post(ch, "still here?").await.unwrap_err();
    assert!(matches!(err, Error::NotAllowed { .. }), "{err}");
    // The last owner can neither leave nor be removed; an admin may leave.
    assert!(matches!(alice.leave(ch).await, Err(Error::NotAllowed { .. })));
    assert!(matches!(bob.remove_member(ch, a).await, Err(Error::NotAllowed { .. })));
    bob.leave(ch).await.unwrap();
    assert!(matches!(bob.post(ch, "gone").await, Err(Error::NotAllowed { .. })));
    // The owner adds carol back: her new entries are taken again.
    pull(&bob, &alice, wire, ch).await;
    alice.add_member(ch, c, Role::Member).await.unwrap();
    pull(&alice, &carol, wire, ch).await;
    carol.post(ch, "back again").await.unwrap();
    // The cut goes with the removal: her whole feed is taken again, what she
    // wrote while removed included.
    assert!(pull(&carol, &alice, wire, ch).await.is_empty());
    let texts: Vec<String> = alice
        .page(ch, None, 100)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| m.text)
        .collect();
    assert!(texts.contains(&"back again".to_string()), "{texts:?}");
    assert_eq!(role_of(&alice.roster(ch).await.unwrap(), c), Some(Some(Role::Member)));
    for s in [alice, bob, carol] {
        s.close().await.unwrap();
    }
}

#[tokio::test]
async fn rosters_survive_a_reopen_and_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let pass = Passphrase::new("pw");
    let s = Store::create(dir.path(), &pass, "alice", config()).await.unwrap();
    let ch = s.create_channel("general").await.unwrap();
    let other = UserId([7; 32]);
    s.set_role(ch, other, Role::Admin).await.unwrap();
    let before = s.roster(ch).await.unwrap();
    s.close().await.unwrap();
    let s = Store::open(dir.path(), &pass, config()).await.unwrap();
    assert_eq!(s.roster(ch).await.unwrap(), before);
    s.close().await.unwrap();
    std::fs::remove_dir_all(dir.path().join("db")).unwrap();
    let s = Store::open(dir.path(), &pass, config()).await.unwrap();
    assert!(s.open_report().rebuilt.is_some());
    assert_eq!(s.roster(ch).await.unwrap(), before);
    assert_eq!(role_of(&before, other), Some(Some(Role::Admin)));
    s.close().await.unwrap();
}

/// Issue 8, item 3: removing a member starts a new key generation, sealed to
/// every device of the members left. Messages after it reach the others and
/// not the removed member, whose store (and whose keys, used directly)
/// opens none of them; a member offline during the rotation finds its key
/// when it comes back; a member who joins afterwards with the old ticket gets
/// the generation shared once its device is known.
#[tokio::test]
async fn a_removal_rotates_the_key_and_the_removed_reads_nothing_new() {
    let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let pass = Passphrase::new("pw");
    let mut stores = Vec::new();
    for (d, name) in dirs.iter().zip(["alice", "bob", "carol", "dave", "eve"]) {
        stores.push(Store::create(d.path(), &pass, name, config()).await.unwrap());
    }
    let [alice, bob, carol, dave, eve] = &stores[..] else {
        unreachable!()
    };
    let ch = alice.create_channel("general").await.unwrap();
    let keys = alice.channel_keys(ch).await.unwrap();
    let wire = keys.wire();
    for s in [bob, carol, dave] {
        s.join_channel(keys.clone()).await.unwrap();
        s.post(ch, "hello").await.unwrap();
        pull(s, alice, wire, ch).await;
    }
    for s in [bob, carol, dave] {
        pull(alice, s, wire, ch).await;
    }
    // Dave goes offline. Alice removes Carol: generation 1.
    alice.remove_member(ch, carol.whoami().user).await.unwrap();
    assert_eq!(alice.channel_keys(ch).await.unwrap().current_generation(), 1);
    alice.post(ch, "secret after the rotation").await.unwrap();
    assert!(pull(alice, bob, wire, ch).await.is_empty());
    assert_eq!(bob.channel_keys(ch).await.unwrap().current_generation(), 1);
    assert!(texts(bob.page(ch, None, 100).await.unwrap()).contains(&"secret after the rotation".into()));
    bob.post(ch, "bob, under generation 1").await.unwrap();
    assert!(pull(bob, alice, wire, ch).await.is_empty());
    assert!(texts(alice.page(ch, None, 100).await.unwrap()).contains(&"bob, under generation 1".into()));

    // Carol gets the removal and the package (sealed under generation 0),
    // but no key in it: she holds the later entries sealed, and they stay so.
    let alices = alice.vector(ch).await.unwrap();
    assert!(pull(alice, carol, wire, ch).await.is_empty());
    // (Not equal vectors: delivery receipts come 250 ms after an ingest.)
    assert!(carol.vector(ch).await.unwrap().covers(&alices));
    let v = carol.verify().await.unwrap();
    assert!(v.is_clean() && v.unopened == 2, "{v:?}");
    let carol_keys = carol.channel_keys(ch).await.unwrap();
    assert_eq!(carol_keys.current_generation(), 0);
    let page = texts(carol.page(ch, None, 100).await.unwrap());
    assert!(
        !page.iter().any(|t| t.contains("generation 1") || t.contains("secret")),
        "{page:?}"
    );
    // Her keys, used directly on every entry Alice holds, open none written
    // under generation 1.
    let all = alice
        .entries_after(wire, hearth_core::Vector::default(), usize::MAX, usize::MAX)
        .await
        .unwrap()
        .entries;
    let mut later = 0;
    for bytes in &all {
        let env = hearth_core::Envelope::decode(bytes).unwrap();
        if env.header.generation >= 1 {
            later += 1;
            assert!(env.open(&carol_keys).is_err());
        }
    }
    assert_eq!(later, 2, "Alice's and Bob's posts after the rotation");

    // Dave comes back: his key is in the package.
    assert!(pull(alice, dave, wire, ch).await.is_empty());
    assert_eq!(dave.channel_keys(ch).await.unwrap().current_generation(), 1);
    assert!(texts(dave.page(ch, None, 100).await.unwrap()).contains(&"secret after the rotation".into()));

    // Eve joins with the old ticket (generation 0 only) and writes; Alice
    // then owes her a share of generation 1, sent with the owed receipts.
    eve.join_channel(keys.clone()).await.unwrap();
    pull(alice, eve, wire, ch).await;
    assert_eq!(eve.channel_keys(ch).await.unwrap().current_generation(), 0);
    pull(eve, alice, wire, ch).await;
    alice.flush_receipts().await.unwrap();
    assert!(pull(alice, eve, wire, ch).await.is_empty());
    assert_eq!(eve.channel_keys(ch).await.unwrap().current_generation(), 1);
    assert!(texts(eve.page(ch, None, 100).await.unwrap()).contains(&"secret after the rotation".into()));
    // Shared once: a second flush owes nothing more.
    let before = alice.vector(ch).await.unwrap();
    alice.flush_receipts().await.unwrap();
    assert_eq!(alice.vector(ch).await.unwrap(), before);

    // Everything survives a reopen: the generations are in the channel record
    // and the log.
    let alice_dir = dirs[0].path().to_path_buf();
    for s in stores {
        s.close().await.unwrap();
    }
    let alice = Store::open(&alice_dir, &pass, config()).await.unwrap();
    assert_eq!(alice.channel_keys(ch).await.unwrap().current_generation(), 1);
    assert!(texts(alice.page(ch, None, 100).await.unwrap()).contains(&"bob, under generation 1".into()));
    let v = alice.verify().await.unwrap();
    assert!(v.is_clean(), "{v:?}");
    alice.close().await.unwrap();
    std::fs::remove_dir_all(alice_dir.join("db")).unwrap();
    let alice = Store::open(&alice_dir, &pass, config()).await.unwrap();
    assert!(alice.open_report().rebuilt.is_some());
    assert!(texts(alice.page(ch, None, 100).await.unwrap()).contains(&"bob, under generation 1".into()));
    alice.close().await.unwrap();
}

/// A tiny deterministic generator (xorshift), so each seed replays.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Removals, re-adds, role changes and posts by four stores, with partial
/// syncs in between, for several seeds; then every store syncs with every
/// other (owed receipts and key shares flushed) until nothing moves. Every
/// current member then has the same roster, the same key generations, opens
/// every entry it holds, and shows the same messages by current members.
#[tokio::test]
async fn concurrent_removals_adds_and_rotations_converge() {
    let (mut rotated, mut removed) = (0, 0);
    for seed in 1..=8u64 {
        let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
        let pass = Passphrase::new("pw");
        let mut stores = Vec::new();
        for (i, d) in dirs.iter().enumerate() {
            stores.push(
                Store::create(d.path(), &pass, &format!("u{i}"), config())
                    .await
                    .unwrap(),
            );
        }
        let ch = stores[0].create_channel("general").await.unwrap();
        let keys = stores[0].channel_keys(ch).await.unwrap();
        let wire = keys.wire();
        for s in &stores[1..] {
            s.join_channel(keys.clone()).await.unwrap();
            s.post(ch, "joined").await.unwrap();
            pull(s, &stores[0], wire, ch).await;
        }
        for s in &stores[1..] {
            pull(&stores[0], s, wire, ch).await;
        }
        stores[0]
            .set_role(ch, stores[1].whoami().user, Role::Admin)
            .await
            .unwrap();
        pull(&stores[0], &stores[1], wire, ch).await;
        let users: Vec<UserId> = stores.iter().map(|s| s.whoami().user).collect();
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut posted = 0;
        for step in 0..14 {
            let who = rng.below(4);
            let target = users[rng.below(4)];
            let s = &stores[who];
            // Refusals (not allowed, removed) are part of the game.
            let pick = rng.below(6);
            let _ = match pick {
                0 | 1 => s
                    .post(ch, &format!("seed {seed} step {step}"))
                    .await
                    .map(|_| posted += 1),
                2 => s.remove_member(ch, target).await,
                3 => s.add_member(ch, target, Role::Member).await,
                4 => s.set_role(ch, target, Role::Admin).await,
                _ => {
                    let to = rng.below(4);
                    if to != who {
                        pull(s, &stores[to], wire, ch).await;
                    }
                    Ok(())
                }
            };
        }
        for _ in 0..4 {
            for s in &stores {
                s.flush_receipts().await.unwrap();
            }
            for a in &stores {
                for b in &stores {
                    if !std::ptr::eq(a, b) {
                        pull(a, b, wire, ch).await;
                    }
                }
            }
        }
        // Current members by the owner's roster (the owner is never removed).
        let roster = stores[0].roster(ch).await.unwrap();
        let current: Vec<&Store> = stores
            .iter()
            .filter(|s| {
                roster
                    .members
                    .iter()
                    .any(|m| m.user == s.whoami().user && m.role.is_some())
            })
            .collect();
        assert!(current.len() >= 2, "seed {seed}: {roster:?}");
        let gens = |k: hearth_core::ChannelKeys| {
            let mut g: Vec<(u32, [u8; 32])> = k.generations().into_iter().map(|(n, k)| (n, *k.expose())).collect();
            g.sort();
            g
        };
        let first = gens(current[0].channel_keys(ch).await.unwrap());
        rotated += usize::from(!first.is_empty());
        removed += usize::from(current.len() < 4);
        let authors: Vec<UserId> = roster
            .members
            .iter()
            .filter(|m| m.role.is_some())
            .map(|m| m.user)
            .collect();
        let mine = |page: Vec<hearth_core::Message>| {
            let mut t: Vec<(String, String)> = page
                .into_iter()
                .filter(|m| authors.contains(&m.author))
                .filter_map(|m| m.text.map(|t| (m.author.to_hex(), t)))
                .collect();
            t.sort();
            t
        };
        let page = mine(current[0].page(ch, None, 1000).await.unwrap());
        for s in &current {
            assert_eq!(s.roster(ch).await.unwrap(), roster, "seed {seed}: rosters differ");
            assert_eq!(
                gens(s.channel_keys(ch).await.unwrap()),
                first,
                "seed {seed}: generations differ"
            );
            let v = s.verify().await.unwrap();
            assert!(v.is_clean() && v.unopened == 0, "seed {seed}: {v:?}");
            assert_eq!(
                mine(s.page(ch, None, 1000).await.unwrap()),
                page,
                "seed {seed}: messages differ"
            );
        }
        // What the owner writes now reaches no removed member.
        stores[0].post(ch, "final word").await.unwrap();
        for s in &stores[1..] {
            pull(&stores[0], s, wire, ch).await;
            let member = current.iter().any(|c| std::ptr::eq(*c, s));
            let t = texts(s.page(ch, None, 1000).await.unwrap());
            assert_eq!(t.contains(&"final word".to_string()), member, "seed {seed}: {t:?}");
        }
        for s in stores {
            s.close().await.unwrap();
        }
    }
    assert!(
        rotated >= 2 && removed >= 2,
        "the seeds exercise little: {rotated} {removed}"
    );
}

/// Issue 8, item 1: a device revoked from another device of its user is
/// left out of the key generation each of its channels starts, what it
/// writes past the revocation is not shown (also where it was shown before
/// the revocation arrived), and once it learns of it, it cannot write.
#[tokio::test]
async fn a_revoked_device_is_cut_and_left_out_of_the_next_key() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let pass = Passphrase::new("pw");
    let laptop = Store::create(dirs[0].path(), &pass, "alice", config()).await.unwrap();
    let ch = laptop.create_channel("general").await.unwrap();
    let keys = laptop.channel_keys(ch).await.unwrap();
    let wire = keys.wire();
    let phone_keys = hearth_core::device::DeviceKeys::generate().unwrap();
    let bundle = laptop.link_bundle(phone_keys.public()).await.unwrap();
    let phone = Store::create_linked(dirs[1].path(), &pass, phone_keys, &bundle, config())
        .await
        .unwrap();
    let bob = Store::create(dirs[2].path(), &pass, "bob", config()).await.unwrap();
    bob.join_channel(keys).await.unwrap();
    pull(&laptop, &phone, wire, ch).await;
    phone.post(ch, "from the phone").await.unwrap();
    bob.post(ch, "from bob").await.unwrap();
    for (a, b) in [(&phone, &laptop), (&bob, &laptop), (&laptop, &phone), (&laptop, &bob)] {
        pull(a, b, wire, ch).await;
    }
    let phone_id = phone.whoami().device;
    let listed = laptop.devices().await.unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(
        listed
            .iter()
            .any(|d| d.device == phone_id && !d.this && d.revoked_in == 0)
    );
    // A device cannot revoke itself.
    assert!(matches!(
        phone.revoke_device(phone_id).await,
        Err(Error::NotAllowed { .. })
    ));
    assert_eq!(laptop.revoke_device(phone_id).await.unwrap(), 1);
    assert_eq!(laptop.channel_keys(ch).await.unwrap().current_generation(), 1);
    assert!(
        laptop
            .devices()
            .await
            .unwrap()
            .iter()
            .any(|d| d.device == phone_id && d.revoked_in == 1)
    );
    // The phone writes on, unaware; Bob shows it until the revocation reaches him.
    phone.post(ch, "after the revocation").await.unwrap();
    pull(&phone, &bob, wire, ch).await;
    assert!(texts(bob.page(ch, None, 100).await.unwrap()).contains(&"after the revocation".into()));
    pull(&laptop, &bob, wire, ch).await;
    pull(&phone, &laptop, wire, ch).await;
    laptop.post(ch, "after the new key").await.unwrap();
    pull(&laptop, &bob, wire, ch).await;
    for s in [&laptop, &bob] {
        let t = texts(s.page(ch, None, 100).await.unwrap());
        assert!(!t.contains(&"after the revocation".into()), "{t:?}");
        assert!(t.contains(&"from the phone".into()) && t.contains(&"after the new key".into()));
    }
    // The phone gets the revocation and the package, with no key for it.
    pull(&laptop, &phone, wire, ch).await;
    assert_eq!(phone.channel_keys(ch).await.unwrap().current_generation(), 0);
    assert!(!texts(phone.page(ch, None, 100).await.unwrap()).contains(&"after the new key".into()));
    let err = phone.post(ch, "still here?").await.unwrap_err();
    assert!(
        matches!(&err, Error::NotAllowed { why, .. } if why.contains("revoked")),
        "{err}"
    );
    for s in [laptop, phone, bob] {
        s.close().await.unwrap();
    }
}

/// Issue 8, item 1: a linked device gets a chain issued by the device that
/// linked it, never the user key, and a revocation reaches every device
/// linked through the revoked one: those the revoker knows are named with
/// their own cut; one it never saw (linked by the stolen phone after) is
/// cut from its start on every member, is served nothing, and its own store
/// stops writing once it learns of the revocation. A device cannot revoke
/// one it was linked through.
#[tokio::test]
async fn a_device_linked_through_a_revoked_device_is_revoked_with_it() {
    use hearth_core::device::{DeviceKeys, issuers};
    let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let pass = Passphrase::new("pw");
    let laptop = Store::create(dirs[0].path(), &pass, "alice", config()).await.unwrap();
    let ch = laptop.create_channel("general").await.unwrap();
    let keys = laptop.channel_keys(ch).await.unwrap();
    let wire = keys.wire();
    let link = |by: Store, dir: std::path::PathBuf| {
        let pass = pass.clone();
        async move {
            let k = DeviceKeys::generate().unwrap();
            let bundle = by.link_bundle(k.public()).await.unwrap();
            Store::create_linked(dir, &pass, k, &bundle, config()).await.unwrap()
        }
    };
    let phone = link(laptop.clone(), dirs[1].path().into()).await;
    let tablet = link(phone.clone(), dirs[2].path().into()).await;
    let bob = Store::create(dirs[3].path(), &pass, "bob", config()).await.unwrap();
    bob.join_channel(keys).await.unwrap();
    bob.post(ch, "from bob").await.unwrap();
    pull(&bob, &laptop, wire, ch).await;
    // Chains: laptop <- phone <- tablet, one user.
    let (laptop_id, phone_id, tablet_id) = (laptop.whoami().device, phone.whoami().device, tablet.whoami().device);
    let tablet_chain = tablet.device_chain().await.unwrap();
    assert_eq!(tablet_chain.len(), 3);
    assert_eq!(
        issuers(&tablet_chain).iter().map(|(d, _)| *d).collect::<Vec<_>>(),
        vec![phone_id, laptop_id]
    );
    assert_eq!(tablet.whoami().user, laptop.whoami().user);
    for s in [&phone, &tablet] {
        pull(&laptop, s, wire, ch).await;
    }
    tablet.post(ch, "from the tablet").await.unwrap();
    phone.post(ch, "from the phone").await.unwrap();
    for s in [&phone, &tablet] {
        pull(s, &laptop, wire, ch).await;
        pull(s, &bob, wire, ch).await;
    }
    assert!(texts(bob.page(ch, None, 100).await.unwrap()).contains(&"from the tablet".into()));
    // Neither the tablet nor the phone may revoke a device it was linked through.
    for (s, d) in [(&tablet, phone_id), (&tablet, laptop_id), (&phone, laptop_id)] {
        let e = s.revoke_device(d).await.unwrap_err();
        assert!(
            matches!(&e, Error::NotAllowed { why, .. } if why.contains("linked through")),
            "{e}"
        );
    }
    // The phone is stolen: the thief links one more device the laptop never sees.
    let stray = link(phone.clone(), dirs[4].path().into()).await;
    pull(&laptop, &stray, wire, ch).await;
    let stray_id = stray.whoami().device;
    // The laptop revokes the phone: the tablet it knows goes with it.
    assert_eq!(laptop.revoke_device(phone_id).await.unwrap(), 1);
    let listed = laptop.devices().await.unwrap();
    for d in [phone_id, tablet_id] {
        assert!(listed.iter().any(|i| i.device == d && i.revoked_in == 1), "{listed:?}");
    }
    pull(&laptop, &bob, wire, ch).await;
    assert_eq!(
        bob.revocation_notices().await.unwrap().len(),
        2,
        "the phone and the tablet"
    );
    // The tablet and the stray write on, unaware; the stray (the thief's)
    // even removes Bob, as Alice (the owner) could, which seals a key of its
    // own to everyone it knows; then everyone syncs. Nobody takes that key
    // (else the laptop wrote under a key Bob does not hold).
    tablet.post(ch, "tablet after").await.unwrap();
    stray.post(ch, "stray after").await.unwrap();
    let bob_user = bob.whoami().user;
    stray.remove_member(ch, bob_user).await.unwrap();
    for s in [&tablet, &stray] {
        pull(s, &bob, wire, ch).await;
        pull(s, &laptop, wire, ch).await;
    }
    for s in [&laptop, &bob] {
        let t = texts(s.page(ch, None, 100).await.unwrap());
        assert!(
            t.contains(&"from the tablet".into()),
            "what it wrote before stays: {t:?}"
        );
        assert!(
            !t.contains(&"tablet after".into()) && !t.contains(&"stray after".into()),
            "{t:?}"
        );
        // The stray's removal of Bob does not count: its device was linked
        // through a revoked one.
        assert_eq!(
            role_of(&s.roster(ch).await.unwrap(), bob_user),
            Some(Some(Role::Member))
        );
    }
    bob.post(ch, "bob stays").await.unwrap();
    // Nobody serves the stray (its chain runs through the phone) or the tablet.
    for (who, store) in [(stray_id, &stray), (tablet_id, &tablet)] {
        let chain = store.device_chain().await.unwrap();
        let me = hearth_core::peer::Certifier {
            user: store.whoami().user,
            device: who,
            key: chain.last().unwrap().body.keys.signing,
            via: issuers(&chain),
        };
        for s in [&laptop, &bob] {
            assert!(s.serving(me.clone(), vec![wire]).await.unwrap().is_empty());
        }
    }
    // Once they learn of it, neither writes any more.
    for s in [&tablet, &stray] {
        pull(&laptop, s, wire, ch).await;
        let e = s.post(ch, "still here?").await.unwrap_err();
        assert!(
            matches!(&e, Error::NotAllowed { why, .. } if why.contains("revoked")),
            "{e}"
        );
    }
    // Another user cannot revoke Alice's devices: Bob's "revocation" of the
    // laptop counts nowhere (its store writes on, Bob's node serves it).
    bob.revoke_device(laptop_id).await.unwrap();
    pull(&bob, &laptop, wire, ch).await;
    laptop.post(ch, "the laptop, unmoved").await.unwrap();
    pull(&laptop, &bob, wire, ch).await;
    assert!(texts(bob.page(ch, None, 100).await.unwrap()).contains(&"the laptop, unmoved".into()));
    let chain = laptop.device_chain().await.unwrap();
    let the_laptop = hearth_core::peer::Certifier {
        user: laptop.whoami().user,
        device: laptop_id,
        key: chain.last().unwrap().body.keys.signing,
        via: Vec::new(),
    };
    assert_eq!(bob.serving(the_laptop, vec![wire]).await.unwrap(), vec![wire]);
    assert_eq!(
        bob.revocation_notices().await.unwrap().len(),
        2,
        "Bob's own is handed to no relay"
    );
    for s in [laptop, phone, tablet, stray, bob] {
        s.close().await.unwrap();
    }
}

/// Issue 8, item 2: a removed member is served its channel no more, so no
/// member's node can hand it the op that removes it; any member hands it
/// the removing admin's signed notice instead. Its store checks the notice
/// (signed by an admin by its own roster, of this user, this channel), keeps
/// it through a reopen and a rebuild, and writes there no more; until it is
/// added back and syncs the roster, which then decides. A notice signed by
/// a plain member, or naming another user, changes nothing.
#[tokio::test]
async fn a_removed_member_is_told_by_any_member_and_writes_no_more() {
    use hearth_core::member::OpKey;
    use hearth_core::peer::RemovedNotice;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let pass = Passphrase::new("pw");
    let alice = Store::create(dirs[0].path(), &pass, "alice", config()).await.unwrap();
    let bob = Store::create(dirs[1].path(), &pass, "bob", config()).await.unwrap();
    let carol_id = hearth_core::Identity::generate("carol").unwrap();
    let carol = Store::create_as(dirs[2].path(), &pass, carol_id.clone(), config())
        .await
        .unwrap();
    let ch = alice.create_channel("general").await.unwrap();
    let keys = alice.channel_keys(ch).await.unwrap();
    let wire = keys.wire();
    for s in [&bob, &carol] {
        s.join_channel(keys.clone()).await.unwrap();
        s.post(ch, "hi").await.unwrap();
        pull(s, &alice, wire, ch).await;
    }
    for s in [&bob, &carol] {
        pull(&alice, s, wire, ch).await;
    }
    let bob_user = bob.whoami().user;
    // A plain member (Carol) signs a "removal" of Bob: not an admin's.
    let op = OpKey {
        device: carol_id.device(),
        n: 9,
    };
    let forged = RemovedNotice::sign(
        carol_id.device_keys().unwrap(),
        carol_id.device_chain().unwrap().to_vec(),
        wire,
        bob_user,
        op,
    );
    assert!(
        forged.verify().is_ok(),
        "it verifies; only the roster says Carol is no admin"
    );
    assert_eq!(bob.take_told(vec![forged]).await.unwrap(), 0);
    bob.post(ch, "still a member").await.unwrap();

    // Alice removes Bob; Carol learns of it; Bob does not (he is served
    // nothing more), but Carol's store has the notice to hand him.
    alice.remove_member(ch, bob_user).await.unwrap();
    pull(&alice, &carol, wire, ch).await;
    assert!(carol.told(carol.whoami().user, vec![wire]).await.unwrap().is_empty());
    let notices = carol.told(bob_user, vec![wire]).await.unwrap();
    assert_eq!(notices.len(), 1);
    assert_eq!(alice.told(bob_user, vec![wire]).await.unwrap(), notices);
    // Carol's own store takes no notice that is not about her.
    assert_eq!(carol.take_told(notices.clone()).await.unwrap(), 0);
    carol.post(ch, "carol writes on").await.unwrap();
    // Bob takes it, once; then writes there no more.
    let mut events = bob.subscribe();
    assert_eq!(bob.take_told(notices.clone()).await.unwrap(), 1);
    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        seen.push(e);
    }
    assert!(
        seen.iter()
            .any(|e| matches!(e, hearth_store::StoreEvent::Roster { channel } if *channel == ch)),
        "{seen:?}"
    );
    assert_eq!(bob.take_told(notices.clone()).await.unwrap(), 1, "held already");
    let refused = |e: Error| matches!(&e, Error::NotAllowed { why, .. } if why.contains("removed"));
    assert!(refused(bob.post(ch, "told").await.unwrap_err()));
    // Through a reopen and a rebuild from the feed log.
    let dir = dirs[1].path().to_path_buf();
    bob.close().await.unwrap();
    let bob = Store::open(&dir, &pass, config()).await.unwrap();
    assert!(refused(bob.post(ch, "reopened").await.unwrap_err()));
    bob.close().await.unwrap();
    let bob = Store::repair(&dir, &pass, config()).await.unwrap();
    assert!(refused(bob.post(ch, "rebuilt").await.unwrap_err()));
    assert!(
        bob.verify().await.unwrap().is_clean(),
        "{:?}",
        bob.verify().await.unwrap()
    );
    // Added back: once Bob's store holds the roster (the removal and the
    // add), the roster decides, and he writes again.
    alice.add_member(ch, bob_user, Role::Member).await.unwrap();
    pull(&alice, &bob, wire, ch).await;
    bob.post(ch, "back").await.unwrap();
    // An admin cannot tell the owner (the last one) that she was removed:
    // the roster would not let an admin remove her.
    alice.set_role(ch, carol_id.user(), Role::Admin).await.unwrap();
    pull(&alice, &carol, wire, ch).await;
    pull(&alice, &bob, wire, ch).await;
    let alice_user = alice.whoami().user;
    let op = OpKey {
        device: carol_id.device(),
        n: 50,
    };
    let by_admin = RemovedNotice::sign(
        carol_id.device_keys().unwrap(),
        carol_id.device_chain().unwrap().to_vec(),
        wire,
        alice_user,
        op,
    );
    assert_eq!(alice.take_told(vec![by_admin]).await.unwrap(), 0);
    alice.post(ch, "the owner writes on").await.unwrap();
    // Nor can an admin make one up for Bob with an op number far ahead of
    // what is held (it would never be lifted).
    let far = OpKey {
        device: carol_id.device(),
        n: u32::MAX,
    };
    let made_up = RemovedNotice::sign(
        carol_id.device_keys().unwrap(),
        carol_id.device_chain().unwrap().to_vec(),
        wire,
        bob_user,
        far,
    );
    assert_eq!(bob.take_told(vec![made_up]).await.unwrap(), 0);
    bob.post(ch, "bob writes on").await.unwrap();
    for s in [alice, bob, carol] {
        s.close().await.unwrap();
    }
}

/// Issue 8, item 3, the concurrent window the other way: a member writes a
/// key package of its own (sealed to Carol, not to itself) just before its
/// removal reaches her; Carol takes that key. The first admin that sees the
/// package once the writer is removed owes a rotation (its writer knows the
/// key), so what Carol writes from then on is sealed under a generation the
/// removed member's key does not open.
#[tokio::test]
async fn a_removed_members_own_key_package_is_rotated_away() {
    use automerge::transaction::Transactable;
    use automerge::{ActorId, AutoCommit, ROOT, ScalarValue};
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let pass = Passphrase::new("pw");
    let alice = Store::create(dirs[0].path(), &pass, "alice", config()).await.unwrap();
    let carol = Store::create(dirs[1].path(), &pass, "carol", config()).await.unwrap();
    let ch = alice.create_channel("general").await.unwrap();
    let keys = alice.channel_keys(ch).await.unwrap();
    let wire = keys.wire();
    carol.join_channel(keys.clone()).await.unwrap();
    carol.post(ch, "hi").await.unwrap();
    pull(&carol, &alice, wire, ch).await;
    pull(&alice, &carol, wire, ch).await;
    // Mallory, a member that writes raw changes: a package of generation 1
    // with a key of her own, sealed to Carol's device only.
    let mallory = hearth_core::Identity::generate("mallory").unwrap();
    let mine = hearth_core::SecretKey::generate().unwrap();
    let carol_cert = carol.device_cert().await.unwrap();
    let package = hearth_core::KeyPackage::seal(
        &wire,
        &[(1, &mine)],
        &[(carol_cert.body.device, carol_cert.body.keys.kx)],
    )
    .unwrap();
    let mut doc = AutoCommit::new().with_actor(ActorId::from(&mallory.device().0[..]));
    doc.put(
        ROOT,
        format!("kp:{}:{}:1", mallory.user().to_hex(), mallory.device()),
        ScalarValue::Bytes(package.encode()),
    )
    .unwrap();
    doc.commit();
    let change = doc.get_last_local_change().unwrap().raw_bytes().to_vec();
    let body = hearth_core::EntryBody { epoch: 0, change };
    let (entry, _) = hearth_core::Envelope::seal_next(&keys, &mallory, 1, [0; 32], &body).unwrap();
    let r = carol.ingest(wire, vec![entry]).await.unwrap();
    assert_eq!(r.accepted, 1, "{r:?}");
    assert_eq!(
        carol.channel_keys(ch).await.unwrap().current_generation(),
        1,
        "Carol took it"
    );
    // Alice removes Mallory (not having seen the package), then syncs with Carol.
    alice.remove_member(ch, mallory.user()).await.unwrap();
    for _ in 0..3 {
        pull(&alice, &carol, wire, ch).await;
        pull(&carol, &alice, wire, ch).await;
        alice.flush_receipts().await.unwrap();
        carol.flush_receipts().await.unwrap();
    }
    let (ka, kc) = (
        alice.channel_keys(ch).await.unwrap(),
        carol.channel_keys(ch).await.unwrap(),
    );
    let g = ka.current_generation();
    assert!(g >= 2 && g == kc.current_generation(), "a rotation was owed: {g}");
    // What Carol writes now, Mallory's key does not open.
    carol.post(ch, "after").await.unwrap();
    let batch = carol
        .entries_after(wire, hearth_core::Vector::default(), 1 << 22, 10_000)
        .await
        .unwrap();
    let me = carol.whoami().device;
    let last = batch
        .entries
        .iter()
        .filter_map(|b| hearth_core::Envelope::decode(b).ok())
        .filter(|e| e.header.device == me)
        .max_by_key(|e| e.header.seq)
        .unwrap();
    assert!(last.header.generation >= 2, "{}", last.header.generation);
    let mut theirs = keys.clone();
    theirs.add_generation(1, mine.clone());
    assert!(last.open(&theirs).is_err());
    for s in [alice, carol] {
        s.close().await.unwrap();
    }
}

/// Two admins remove members at the same time: both start generation 1, with
/// different keys, each sealed to the member the other removed. Every member
/// gets both, and what was sealed under either is read by all; seeing a key
/// that reached a removed member, the admins rotate again, and from then on
/// all seal under one key that no removed member holds.
#[tokio::test]
async fn concurrent_rotations_keep_both_keys_and_agree_on_one() {
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let pass = Passphrase::new("pw");
    let mut stores = Vec::new();
    for (d, name) in dirs.iter().zip(["alice", "bob", "carol", "dave"]) {
        stores.push(Store::create(d.path(), &pass, name, config()).await.unwrap());
    }
    let [alice, bob, carol, dave] = &stores[..] else {
        unreachable!()
    };
    let ch = alice.create_channel("general").await.unwrap();
    let keys = alice.channel_keys(ch).await.unwrap();
    let wire = keys.wire();
    for s in [bob, carol, dave] {
        s.join_channel(keys.clone()).await.unwrap();
        s.post(ch, "hi").await.unwrap();
        pull(s, alice, wire, ch).await;
    }
    alice.set_role(ch, bob.whoami().user, Role::Admin).await.unwrap();
    for s in [bob, carol, dave] {
        pull(alice, s, wire, ch).await;
    }
    // Concurrently: Alice removes Carol, Bob removes Dave; each posts.
    alice.remove_member(ch, carol.whoami().user).await.unwrap();
    bob.remove_member(ch, dave.whoami().user).await.unwrap();
    alice.post(ch, "alice under her key").await.unwrap();
    bob.post(ch, "bob under his key").await.unwrap();
    let (ka, kb) = (
        alice.channel_keys(ch).await.unwrap(),
        bob.channel_keys(ch).await.unwrap(),
    );
    assert_eq!((ka.current_generation(), kb.current_generation()), (1, 1));
    assert_ne!(ka.sealing_key(1).unwrap().expose(), kb.sealing_key(1).unwrap().expose());
    for _ in 0..2 {
        pull(alice, bob, wire, ch).await;
        pull(bob, alice, wire, ch).await;
        alice.flush_receipts().await.unwrap();
        bob.flush_receipts().await.unwrap();
    }
    let (ka, kb) = (
        alice.channel_keys(ch).await.unwrap(),
        bob.channel_keys(ch).await.unwrap(),
    );
    assert_eq!(ka.opening_keys(1).len(), 2);
    // Each rotation reached the member the other removed: a rotation is owed,
    // and the admins make generation 2 (one key or two), which reaches neither.
    let g = ka.current_generation();
    assert!(g >= 2 && g == kb.current_generation(), "{g}");
    assert_eq!(ka.sealing_key(g).unwrap().expose(), kb.sealing_key(g).unwrap().expose());
    alice.post(ch, "alice after both").await.unwrap();
    bob.post(ch, "bob after both").await.unwrap();
    pull(alice, bob, wire, ch).await;
    pull(bob, alice, wire, ch).await;
    for s in [alice, bob] {
        let t = texts(s.page(ch, None, 100).await.unwrap());
        for want in [
            "alice under her key",
            "bob under his key",
            "alice after both",
            "bob after both",
        ] {
            assert!(t.contains(&want.to_string()), "{want}: {t:?}");
        }
        assert_eq!(s.verify().await.unwrap().unopened, 0);
    }
    // Both removed: neither opens what was written once both removals were
    // known (what was sealed in the window, under a key the concurrent
    // rotation gave one of them, is the window's cost).
    for s in [carol, dave] {
        pull(alice, s, wire, ch).await;
        let t = texts(s.page(ch, None, 100).await.unwrap());
        assert!(!t.iter().any(|t| t.contains("after both")), "{t:?}");
    }
    for s in stores {
        s.close().await.unwrap();
    }
}

/// What a removed member does past its cut to what was there before does
/// not show either: an edit (the message shows as before it, with an edit
/// made before the cut kept), a delete, a reaction, a rename of the channel,
/// a new display name. The same on a member that showed them before the
/// removal reached it, and after a reopen.
#[tokio::test]
async fn a_removed_members_edits_deletes_reactions_and_renames_past_the_cut_do_not_count() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let pass = Passphrase::new("pw");
    let alice = Store::create(dirs[0].path(), &pass, "alice", config()).await.unwrap();
    let bob = Store::create(dirs[1].path(), &pass, "bob", config()).await.unwrap();
    let carol = Store::create(dirs[2].path(), &pass, "carol", config()).await.unwrap();
    let b = bob.whoami().user;
    let ch = alice.create_channel("general").await.unwrap();
    let keys = alice.channel_keys(ch).await.unwrap();
    let wire = keys.wire();
    bob.join_channel(keys.clone()).await.unwrap();
    carol.join_channel(keys).await.unwrap();
    let hello = alice.post(ch, "alice's message").await.unwrap();
    pull(&alice, &bob, wire, ch).await;
    let mine = bob.post(ch, "bob's message").await.unwrap();
    let other = bob.post(ch, "bob's other message").await.unwrap();
    bob.edit(mine, "bob's message, edited").await.unwrap();
    bob.react(hello, "👍").await.unwrap();
    pull(&bob, &alice, wire, ch).await;
    pull(&alice, &carol, wire, ch).await;
    let before = |s: &Store| {
        let s = s.clone();
        async move {
            let page = s.page(ch, None, 10).await.unwrap();
            let by_id = |id| page.iter().find(|m| m.id == id).cloned();
            (
                by_id(hello).map(|m| m.reactions),
                by_id(mine).and_then(|m| m.text),
                by_id(other).map(|m| m.deleted),
                s.channel(ch).await.unwrap().name,
                s.members(ch).await.unwrap().get(&b).cloned(),
            )
        }
    };
    let want = before(&alice).await;
    assert_eq!(want.1.as_deref(), Some("bob's message, edited"));
    assert_eq!(want.3, "general");

    // Alice removes Bob; Bob, who has not heard, goes on.
    alice.remove_member(ch, b).await.unwrap();
    bob.edit(mine, "SPAM SPAM SPAM").await.unwrap();
    bob.delete(other).await.unwrap();
    bob.react(hello, "🤡").await.unwrap();
    bob.unreact(hello, "👍").await.unwrap();
    bob.rename_channel(ch, "pwned").await.unwrap();
    // Carol takes Bob's late entries before the removal, and shows them.
    pull(&bob, &carol, wire, ch).await;
    let shown = before(&carol).await;
    assert_eq!(shown.1.as_deref(), Some("SPAM SPAM SPAM"));
    assert_eq!(shown.3, "pwned");
    pull(&bob, &alice, wire, ch).await;
    pull(&alice, &carol, wire, ch).await;
    for s in [&alice, &carol] {
        let got = before(s).await;
        assert_eq!(got.1, want.1, "the edit past the cut does not show");
        assert_eq!(got.2, Some(false), "the delete past the cut does not count");
        assert_eq!(got.3, "general", "the rename past the cut does not count");
        assert_eq!(got.4, want.4);
        let reactions = got.0.unwrap();
        assert!(!reactions.contains_key("🤡"), "{reactions:?}");
        // An unreact is a deletion, which leaves nothing to tell its op by:
        // the reaction taken back past the cut is gone (docs/trust.md).
        assert!(!reactions.get("👍").is_some_and(|u| u.contains(&alice.whoami().user)));
    }
    let carol_view = before(&carol).await;
    carol.close().await.unwrap();
    let carol = Store::open(dirs[2].path(), &pass, config()).await.unwrap();
    assert_eq!(before(&carol).await, carol_view, "the same after a reopen");
    for s in [alice, bob, carol] {
        s.close().await.unwrap();
    }
}

/// `StoreEvent::Roster` (a sync node checks its peers again on it) comes
/// with new membership ops, local or remote, and not with the receipts and
/// names that share the metadata epoch with them.
#[tokio::test]
async fn a_roster_event_comes_with_membership_ops_only() {
    use hearth_store::StoreEvent;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pass = Passphrase::new("pw");
    let alice = Store::create(da.path(), &pass, "alice", config()).await.unwrap();
    let bob = Store::create(db.path(), &pass, "bob", config()).await.unwrap();
    let ch = alice.create_channel("general").await.unwrap();
    let keys = alice.channel_keys(ch).await.unwrap();
    let wire = keys.wire();
    bob.join_channel(keys).await.unwrap();
    let rosters = |rx: &mut tokio::sync::broadcast::Receiver<StoreEvent>| {
        std::iter::from_fn(|| rx.try_recv().ok())
            .filter(|e| matches!(e, StoreEvent::Roster { .. }))
            .count()
    };
    let mut at_bob = bob.subscribe();
    pull(&alice, &bob, wire, ch).await;
    assert_eq!(rosters(&mut at_bob), 1, "the roster's first op arrived");
    // Messages, then receipts and a name: metadata, but no roster op.
    alice.post(ch, "hello").await.unwrap();
    pull(&alice, &bob, wire, ch).await;
    bob.flush_receipts().await.unwrap();
    let mut at_alice = alice.subscribe();
    pull(&bob, &alice, wire, ch).await;
    assert_eq!(rosters(&mut at_alice), 0, "receipts are not roster ops");
    // A removal: an event where it is written, and where it arrives.
    alice.remove_member(ch, bob.whoami().user).await.unwrap();
    assert!(rosters(&mut at_alice) >= 1);
    let _ = rosters(&mut at_bob);
    pull(&alice, &bob, wire, ch).await;
    assert!(rosters(&mut at_bob) >= 1);
}
