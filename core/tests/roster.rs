//! Convergence of channel rosters (issue 8, item 2): 3 to 5 replicas, each a
//! user of its own, write membership changes concurrently (each checked by the
//! writer's own roster first, as the store does), exchange them partially
//! and out of order, and finally exchange everything: every replica then has
//! the same roster, with one genesis and at least one owner, and every change
//! a replica made while it was allowed to is either standing or refused for a
//! reason the rules name.

use std::collections::BTreeSet;

use hearth_core::member::MEMBER_BODY_VERSION;
use hearth_core::{
    DeviceId, Devices, EpochDoc, Identity, META_EPOCH, MemberAction, MemberBody, Op, Role, Roster, UserId,
    decode_change,
};
use proptest::prelude::*;

struct Replica {
    user: UserId,
    device: DeviceId,
    doc: EpochDoc,
    known: BTreeSet<usize>,
    clock: u64,
}

/// One change: who wrote it and its bytes.
struct Change {
    device: DeviceId,
    user: UserId,
    bytes: Vec<u8>,
}

#[derive(Clone, Debug)]
enum Step {
    /// Replica `who` does something to user `target`.
    Act { who: usize, what: u8, target: usize },
    /// Replica `to` takes the changes of `from` it lacks, in a random order,
    /// some of them only.
    Pull {
        from: usize,
        to: usize,
        keep: u8,
        seed: u64,
    },
}

fn step(n: usize) -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..n, 0u8..5, 0..n).prop_map(|(who, what, target)| Step::Act { who, what, target }),
        2 => (0..n, 0..n, 1u8..=4, any::<u64>()).prop_map(|(from, to, keep, seed)| Step::Pull { from, to, keep, seed }),
    ]
}

fn roster(r: &Replica, devices: &Devices) -> Roster {
    r.doc.roster(devices)
}

fn write(r: &mut Replica, devices: &Devices, log: &mut Vec<Change>, action: MemberAction) {
    let now = roster(r, devices);
    if now.allows(&r.user, &action).is_err() {
        return;
    }
    r.clock += 1;
    let n = now.last_n.get(&r.device).copied().unwrap_or(0) + 1;
    let body = MemberBody {
        version: MEMBER_BODY_VERSION,
        hlc: r.clock,
        parents: now.heads.clone(),
        action,
    };
    let op = Op::Member { n, body };
    let bytes = r
        .doc
        .apply_local(&r.user, &r.device, &[op], 0)
        .expect("a local membership op applies")
        .expect("it changes the document");
    r.known.insert(log.len());
    log.push(Change {
        device: r.device,
        user: r.user,
        bytes,
    });
}

fn pull(to: &mut Replica, from_known: &BTreeSet<usize>, log: &[Change], keep: u8, seed: u64) {
    let mut missing: Vec<usize> = from_known.difference(&to.known).copied().collect();
    // A random order, and only some of them (automerge queues what lacks deps).
    let mut s = seed | 1;
    for i in (1..missing.len()).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        missing.swap(i, (s % (i as u64 + 1)) as usize);
    }
    let take = missing.len() * keep as usize / 4;
    let mut changes = Vec::new();
    for &i in &missing[..take] {
        let c = &log[i];
        changes.push(decode_change(&c.bytes, &c.device, &c.user).expect("a valid change decodes"));
        to.known.insert(i);
    }
    to.doc.apply_remote(changes).expect("applies");
}

fn run(n: usize, steps: Vec<Step>) {
    let ids: Vec<Identity> = (0..n)
        .map(|i| Identity::generate(&format!("u{i}")).expect("identity"))
        .collect();
    let devices: Devices = ids.iter().map(|i| (i.device(), i.user())).collect();
    let mut log: Vec<Change> = Vec::new();
    let mut replicas: Vec<Replica> = ids
        .iter()
        .map(|i| Replica {
            user: i.user(),
            device: i.device(),
            doc: EpochDoc::new(META_EPOCH, &i.device()),
            known: BTreeSet::new(),
            clock: 0,
        })
        .collect();
    // Replica 0 makes the channel; everyone starts from that.
    write(&mut replicas[0], &devices, &mut log, MemberAction::Create);
    let first = replicas[0].known.clone();
    for r in replicas.iter_mut().skip(1) {
        pull(r, &first, &log, 4, 1);
    }
    for s in steps {
        match s {
            Step::Act { who, what, target } => {
                let user = replicas[target].user;
                let cut = vec![(replicas[target].device, replicas[target].clock)];
                let action = match what {
                    0 => MemberAction::Add {
                        user,
                        role: Role::Member,
                    },
                    1 => MemberAction::Remove { user, upto: cut },
                    2 => MemberAction::SetRole {
                        user,
                        role: Role::Admin,
                    },
                    3 => MemberAction::SetRole {
                        user,
                        role: Role::Owner,
                    },
                    _ => MemberAction::SetRole {
                        user,
                        role: Role::Member,
                    },
                };
                write(&mut replicas[who], &devices, &mut log, action);
            }
            Step::Pull { from, to, keep, seed } if from != to => {
                let known = replicas[from].known.clone();
                pull(&mut replicas[to], &known, &log, keep, seed);
            }
            Step::Pull { .. } => {}
        }
    }
    let all: BTreeSet<usize> = (0..log.len()).collect();
    for r in replicas.iter_mut() {
        pull(r, &all, &log, 4, 7);
    }
    let rosters: Vec<Roster> = replicas.iter().map(|r| roster(r, &devices)).collect();
    for (i, r) in rosters.iter().enumerate() {
        assert_eq!(r, &rosters[0], "replica {i} differs");
    }
    let r = &rosters[0];
    assert!(r.is_started());
    assert!(r.waiting.is_empty(), "every parent is held: {:?}", r.waiting);
    assert!(
        r.roles.values().any(|role| *role == Role::Owner),
        "an owner stays: {r:?}"
    );
    let ops: usize = r.last_n.values().map(|n| *n as usize).sum();
    assert_eq!(ops, log.len(), "every op is in the history");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn rosters_converge(n in 3usize..=5, steps in prop::collection::vec(step(5), 1..60)) {
        let steps = steps
            .into_iter()
            .map(|s| match s {
                Step::Act { who, what, target } => Step::Act { who: who % n, what, target: target % n },
                Step::Pull { from, to, keep, seed } => Step::Pull { from: from % n, to: to % n, keep, seed },
            })
            .collect();
        run(n, steps);
    }
}
