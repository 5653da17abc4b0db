//! Invites that end (issue 8, item 4), through the store: an admin opens an
//! invite, any member's store lets the holder of its secret in (writing the
//! join and sealing every key generation to the new device), within the
//! invite's uses and end and until it is revoked; nothing else gets in.

use std::time::Duration;

use hearth_core::{ChannelId, KdfParams, Passphrase, Role, SecretKey, WireId};
use hearth_store::{Config, Error, JoinRequest, Store};

fn config() -> Config {
    Config::default().with_kdf(KdfParams::INSECURE_FAST)
}

/// Move what `to` lacks of a channel.
async fn pull(from: &Store, to: &Store, wire: WireId, channel: ChannelId) {
    loop {
        let have = to.vector(channel).await.unwrap();
        let batch = from.entries_after(wire, have, 64 * 1024, 64).await.unwrap();
        if batch.entries.is_empty() {
            return;
        }
        let report = to.ingest(wire, batch.entries).await.unwrap();
        assert!(report.rejected.is_empty(), "{:?}", report.rejected);
        if report.accepted == 0 {
            return;
        }
    }
}

fn texts(page: Vec<hearth_core::Message>) -> Vec<String> {
    page.into_iter().filter_map(|m| m.text).rev().collect()
}

async fn store(dir: &tempfile::TempDir, name: &str) -> Store {
    Store::create(dir.path(), &Passphrase::new("pw"), name, config())
        .await
        .unwrap()
}

fn refused(r: Result<Vec<u8>, Error>, why: &str) {
    match r {
        Err(Error::NotAllowed { why: w, .. }) => assert_eq!(w, why),
        other => panic!("expected a refusal ({why}), got {:?}", other.map(|v| v.len())),
    }
}

/// Let `who` in through `invite` at `at`'s store.
async fn join(at: &Store, who: &Store, invite: [u8; 16], secret: &SecretKey) -> Result<ChannelId, Error> {
    let req = who.join_request(invite, secret).await?;
    let sealed = at.admit(req).await?;
    who.accept_invite(invite, sealed).await
}

#[tokio::test]
async fn an_invite_lets_in_within_its_uses_and_end_and_never_once_revoked() {
    let dirs: Vec<_> = (0..6).map(|_| tempfile::tempdir().unwrap()).collect();
    let alice = store(&dirs[0], "alice").await;
    let bob = store(&dirs[1], "bob").await;
    let carol = store(&dirs[2], "carol").await;
    let dave = store(&dirs[3], "dave").await;
    let eve = store(&dirs[4], "eve").await;
    let ch = alice.create_channel("general").await.unwrap();
    let wire = alice.channel_keys(ch).await.unwrap().wire();
    alice.post(ch, "before anyone joined").await.unwrap();
    let two = alice.create_invite(ch, None, 2).await.unwrap();
    assert_eq!((two.channel, two.name.as_str(), two.expires), (ch, "general", None));

    // Bob is let in by Alice's store: the channel answers to its name, and
    // its history arrives by sync; what he writes reaches Alice.
    assert_eq!(join(&alice, &bob, two.id, &two.secret).await.unwrap(), ch);
    assert_eq!(bob.resolve_channel("general").await.unwrap(), ch);
    pull(&alice, &bob, wire, ch).await;
    assert_eq!(texts(bob.page(ch, None, 10).await.unwrap()), ["before anyone joined"]);
    bob.post(ch, "bob here").await.unwrap();
    pull(&bob, &alice, wire, ch).await;
    assert_eq!(
        texts(alice.page(ch, None, 10).await.unwrap()),
        ["before anyone joined", "bob here"]
    );
    // Asking again (an answer lost on the way) is answered again, once counted.
    join(&alice, &bob, two.id, &two.secret).await.unwrap();

    // Any member lets a holder in: Carol through Bob's store.
    assert_eq!(join(&bob, &carol, two.id, &two.secret).await.unwrap(), ch);
    pull(&bob, &alice, wire, ch).await;
    pull(&alice, &carol, wire, ch).await;
    assert_eq!(carol.page(ch, None, 10).await.unwrap().len(), 2);
    let listed = alice.invites(ch).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].used, [bob.whoami().user, carol.whoami().user]);
    assert_eq!(listed[0].closed.as_deref(), Some("the invite is used up"));
    let roster = alice.roster(ch).await.unwrap();
    for s in [&bob, &carol] {
        let m = roster.members.iter().find(|m| m.user == s.whoami().user).unwrap();
        assert_eq!(m.role, Some(Role::Member));
    }

    // Used up: Dave is refused, on every member.
    let req = dave.join_request(two.id, &two.secret).await.unwrap();
    refused(alice.admit(req.clone()).await, "the invite is used up");
    refused(carol.admit(req).await, "the invite is used up");

    // Past its end.
    let brief = alice
        .create_invite(ch, Some(Duration::from_millis(1)), 0)
        .await
        .unwrap();
    assert!(brief.expires.is_some());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let req = dave.join_request(brief.id, &brief.secret).await.unwrap();
    refused(alice.admit(req).await, "the invite has expired");

    // Revoked (by an admin; a member may neither open nor revoke one).
    let open = alice.create_invite(ch, None, 0).await.unwrap();
    pull(&alice, &bob, wire, ch).await;
    assert!(matches!(
        bob.create_invite(ch, None, 0).await,
        Err(Error::NotAllowed { .. })
    ));
    assert!(matches!(
        bob.revoke_invite(ch, open.id).await,
        Err(Error::NotAllowed { .. })
    ));
    let prefix = &hearth_core::member::invite_hex(&open.id)[..8];
    assert_eq!(alice.resolve_invite(ch, prefix).await.unwrap(), open.id);
    alice.revoke_invite(ch, open.id).await.unwrap();
    let req = dave.join_request(open.id, &open.secret).await.unwrap();
    refused(alice.admit(req).await, "the invite was revoked");

    // Without the secret, with another user's certificate, or an invite no
    // roster here holds: nothing.
    let other = alice.create_invite(ch, None, 0).await.unwrap();
    let forged = dave
        .join_request(other.id, &SecretKey::from_bytes([3; 32]))
        .await
        .unwrap();
    refused(
        alice.admit(forged).await,
        "the join is not signed by the invite's secret",
    );
    let good = dave.join_request(other.id, &other.secret).await.unwrap();
    let stolen = JoinRequest {
        chain: vec![eve.device_cert().await.unwrap()],
        ..good.clone()
    };
    refused(alice.admit(stolen).await, "the device certificate is of another user");
    let unknown = JoinRequest {
        invite: [0xee; 16],
        ..good.clone()
    };
    assert!(matches!(
        alice.admit(unknown).await,
        Err(Error::NotFound { what: "invite", .. })
    ));
    // The answer opens only on the device it was sealed to.
    let sealed = alice.admit(good).await.unwrap();
    assert!(matches!(
        eve.accept_invite(other.id, sealed.clone()).await,
        Err(Error::Invalid { .. })
    ));
    assert_eq!(dave.accept_invite(other.id, sealed).await.unwrap(), ch);

    for s in [alice, bob, carol, dave, eve] {
        s.close().await.unwrap();
    }
}

#[tokio::test]
async fn a_joiner_after_rotations_gets_every_generation_and_keeps_them() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let alice = store(&dirs[0], "alice").await;
    let bob = store(&dirs[1], "bob").await;
    let carol = store(&dirs[2], "carol").await;
    let ch = alice.create_channel("general").await.unwrap();
    let wire = alice.channel_keys(ch).await.unwrap().wire();
    let invite = alice.create_invite(ch, None, 0).await.unwrap();
    join(&alice, &bob, invite.id, &invite.secret).await.unwrap();
    alice.post(ch, "under the first key").await.unwrap();
    pull(&alice, &bob, wire, ch).await;
    bob.post(ch, "bob, before his removal").await.unwrap();
    pull(&bob, &alice, wire, ch).await;
    // Removing Bob starts a new generation; he reads nothing after it.
    alice.remove_member(ch, bob.whoami().user).await.unwrap();
    alice.post(ch, "under the second key").await.unwrap();
    assert!(alice.channel_keys(ch).await.unwrap().current_generation() >= 1);

    // Carol joins afterwards: she gets both generations and reads it all.
    join(&alice, &carol, invite.id, &invite.secret).await.unwrap();
    pull(&alice, &carol, wire, ch).await;
    let want = ["under the first key", "bob, before his removal", "under the second key"];
    assert_eq!(texts(carol.page(ch, None, 10).await.unwrap()), want);
    carol.post(ch, "carol here").await.unwrap();
    pull(&carol, &alice, wire, ch).await;
    assert_eq!(texts(alice.page(ch, None, 10).await.unwrap()).len(), 4);

    // A removed user does not come back through an invite.
    let req = bob.join_request(invite.id, &invite.secret).await.unwrap();
    refused(
        alice.admit(req).await,
        "removed users come back only when an admin adds them",
    );

    // The generations were kept: after a reopen, and after a rebuild.
    let generations = carol.channel_keys(ch).await.unwrap().current_generation();
    carol.close().await.unwrap();
    let pass = Passphrase::new("pw");
    let carol = Store::open(dirs[2].path(), &pass, config()).await.unwrap();
    assert_eq!(carol.channel_keys(ch).await.unwrap().current_generation(), generations);
    assert_eq!(texts(carol.page(ch, None, 10).await.unwrap()).len(), 4);
    carol.close().await.unwrap();
    let carol = Store::repair(dirs[2].path(), &pass, config()).await.unwrap();
    assert_eq!(carol.channel_keys(ch).await.unwrap().current_generation(), generations);
    assert_eq!(texts(carol.page(ch, None, 10).await.unwrap()).len(), 4);
    assert!(carol.verify().await.unwrap().is_clean());
    for s in [alice, bob, carol] {
        s.close().await.unwrap();
    }
}
