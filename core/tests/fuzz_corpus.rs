//! Replays the fuzz corpora on stable, so CI covers every decoder of untrusted bytes
//! without nightly: each file of `fuzz/corpus/<target>/` (seeds, inputs the fuzzer
//! found, and `crash-*` reproducers of bugs it found), and of `fuzz/artifacts/<target>/`
//! when a local fuzz run left crashes there, goes through the same check the fuzz
//! target runs (`fuzz/src/lib.rs`). A `crash-*` input keeps its test red until the
//! bug is fixed; then it stays as a regression input.
//!
//! The seeds are written by the ignored test at the bottom:
//! `cargo test -p hearth-core --test fuzz_corpus -- --ignored regenerate_seed_corpus`.

#[path = "../../fuzz/src/lib.rs"]
mod checks;

use std::fs;
use std::panic;
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `dir`, sorted, without dotfiles; empty if `dir` does not exist.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    files.sort();
    files
}

fn replay(target: &str, check: fn(&[u8])) {
    let corpus = inputs(&fuzz_dir().join("corpus").join(target));
    assert!(!corpus.is_empty(), "fuzz/corpus/{target}/ has no inputs");
    let artifacts = inputs(&fuzz_dir().join("artifacts").join(target));
    let failed: Vec<String> = corpus
        .iter()
        .chain(&artifacts)
        .filter(|path| {
            let data = fs::read(path).expect("a readable corpus file");
            panic::catch_unwind(|| check(&data)).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{target}: {} of {} inputs fail their check (panics above):\n{}",
        failed.len(),
        corpus.len() + artifacts.len(),
        failed.join("\n"),
    );
}

macro_rules! replay_tests {
    ($($target:ident => $check:path),* $(,)?) => {
        $(
            #[test]
            fn $target() {
                replay(stringify!($target), $check);
            }
        )*
    };
}

replay_tests! {
    store_header => checks::check_store_header,
    envelope => checks::check_envelope,
    change => checks::check_change,
    identity => checks::check_identity,
    channel_record => checks::check_channel_record,
    snapshot => checks::check_snapshot,
    link_bundle => checks::check_link_bundle,
    fork_proof => checks::check_fork_proof,
    device_cert => checks::check_device_cert,
    member_ops => checks::check_member_ops,
    key_package => checks::check_key_package,
    revocation_notice => checks::check_revocation_notice,
    peer_proofs => checks::check_peer_proofs,
    text_pack => checks::check_text_pack,
    text_pack_v5 => checks::check_text_pack_v5,
    change_pair => checks::check_change_pair,
}

/// Writes the change pair seeds only.
#[test]
#[ignore = "writes the change_pair seeds; run by hand with --ignored"]
fn regenerate_change_pair_seeds() {
    seeds::write_change_pair_seeds();
}

/// Writes the relay certificate and removal seeds (sync protocol 5) and
/// the notices to the removed (protocol 6) only.
#[test]
#[ignore = "writes the peer_proofs seeds; run by hand with --ignored"]
fn regenerate_peer_proof_seeds() {
    seeds::write_peer_proofs();
}

/// Writes the seeds added with device-issued links (store format 8): the
/// link bundle seeds (version 2) and two identity records of version 4.
#[test]
#[ignore = "rewrites fuzz/corpus/link_bundle and two identity seeds; run by hand with --ignored"]
fn regenerate_link_seeds() {
    seeds::write_link_seeds();
}

/// Writes the membership op seeds only.
#[test]
#[ignore = "rewrites fuzz/corpus/member_ops and key_package; run by hand with --ignored"]
fn regenerate_member_seeds() {
    seeds::write_member_ops();
    seeds::write_key_packages();
}

/// Writes the device certificate seeds and the version 2 identity seeds only.
#[test]
#[ignore = "rewrites fuzz/corpus/device_cert, two identity, three envelope and two fork_proof seeds; run by hand with --ignored"]
fn regenerate_device_cert_seeds() {
    seeds::write_device_certs();
}

/// Writes the seeds added with keyed device ids (store format 7) only.
#[test]
#[ignore = "writes two device_cert, one identity and the revocation_notice seeds; run by hand with --ignored"]
fn regenerate_keyed_id_seeds() {
    seeds::write_keyed_id_seeds();
    seeds::write_revocation_notices();
}

/// Writes the seeds added with fork proofs and named channel records only
/// (the other seeds hold random nonces, so regenerating them all rewrites
/// every file).
#[test]
#[ignore = "rewrites fuzz/corpus/fork_proof and two channel_record seeds; run by hand with --ignored"]
fn regenerate_format_3_seeds() {
    seeds::write_fork_proofs();
}

/// Writes the format 3 entry seeds (store format 9: segments, a pruned body).
#[test]
#[ignore = "writes the envelope v3 seeds; run by hand with --ignored"]
fn regenerate_entry_v3_seeds() {
    seeds::write_entry_v3_seeds();
}

/// Writes the text pack seeds (plaintexts of format 4 packs).
#[test]
#[ignore = "writes the text_pack seeds; run by hand with --ignored"]
fn regenerate_text_pack_seeds() {
    seeds::write_text_pack_seeds();
}

/// Writes the format 5 pack and entry seeds (store format 13).
#[test]
#[ignore = "writes the text_pack_v5 and envelope v5 seeds; run by hand with --ignored"]
fn regenerate_v5_seeds() {
    seeds::write_v5_seeds();
}

/// Writes the format 6 entry seeds (store format 16: changes stripped of
/// their framing and actor; counted nonces) and stripped change seeds.
#[test]
#[ignore = "writes the envelope v6 and change stripped seeds; run by hand with --ignored"]
fn regenerate_v6_seeds() {
    seeds::write_v6_seeds();
}

/// Writes the format 4 entry seeds (store format 10: a pack of texts).
#[test]
#[ignore = "writes the envelope v4 seeds; run by hand with --ignored"]
fn regenerate_entry_v4_seeds() {
    seeds::write_entry_v4_seeds();
}

/// Writes the seed corpus: valid inputs made by the encoders, plus truncated and
/// bit-flipped variants. Envelopes and headers hold random nonces and salts, so a
/// rerun changes their bytes but not what they cover.
#[test]
#[ignore = "rewrites the seed corpus in fuzz/corpus; run by hand with --ignored"]
fn regenerate_seed_corpus() {
    seeds::write_all();
}

mod seeds {
    use std::fs;

    use hearth_core::{
        ChannelId, ChannelKeys, ChannelRecord, DeviceId, ENVELOPE_VERSION, EntryBody, EntryHeader, Envelope, EpochDoc,
        Identity, KdfParams, META_EPOCH, MessageId, Nonces, Op, Passphrase, SecretKey, StoreHeader, Timestamp,
        decode_change, writer_tag,
    };

    use super::checks::{AUTHOR_DEVICE, EPOCH, LOCAL_DEVICE, PASSPHRASE, author, channel_keys};
    use super::fuzz_dir;

    /// Seeds must stay small: libFuzzer mutates small inputs best, and they are committed.
    const MAX_SEED: usize = 8 * 1024;

    fn write(target: &str, name: &str, data: &[u8]) {
        assert!(data.len() < MAX_SEED, "{target}/{name} is {} bytes", data.len());
        assert!(
            !name.starts_with("valid-") || accepted(target, data),
            "{target}/{name} is named valid but does not decode"
        );
        let dir = fuzz_dir().join("corpus").join(target);
        fs::create_dir_all(&dir).expect("corpus directory");
        fs::write(dir.join(name), data).expect("corpus file");
    }

    /// Whether the decoder of `target` accepts `data` (an envelope must also verify).
    fn accepted(target: &str, data: &[u8]) -> bool {
        match target {
            "store_header" => StoreHeader::decode(data).is_ok(),
            "envelope" => Envelope::decode(data).is_ok_and(|e| e.verify().is_ok()),
            "change" => decode_change(data, &AUTHOR_DEVICE, &author().user()).is_ok(),
            "change_pair" => true,
            "identity" => Identity::decode(data).is_ok(),
            "channel_record" => ChannelRecord::decode(data).is_ok(),
            "snapshot" => EpochDoc::load(EPOCH, data, &LOCAL_DEVICE).is_ok(),
            "link_bundle" => true,
            "fork_proof" => hearth_core::ForkProof::decode(data).is_ok(),
            "device_cert" => hearth_core::device::DeviceCert::decode(data).is_ok(),
            "member_ops" => true,
            "text_pack" => hearth_core::content::decode_pack_plain(data).is_ok(),
            "text_pack_v5" => hearth_core::textpack::TextPack::decode_plain(data).is_ok(),
            "key_package" => hearth_core::KeyPackage::decode(data).is_ok(),
            "revocation_notice" => {
                hearth_core::member::RevocationNotice::decode(data).is_ok_and(|n| n.verify().is_ok())
            }
            "peer_proofs" => {
                hearth_core::peer::RelayCert::decode(data).is_ok_and(|c| c.verify().is_ok())
                    || hearth_core::peer::RemovalNotice::decode(data).is_ok()
                    || hearth_core::peer::RemovedNotice::decode(data).is_ok_and(|n| n.verify().is_ok())
                    || hearth_core::peer::TextDrop::decode(data).is_ok()
            }
            _ => unreachable!("no fuzz target {target}"),
        }
    }

    /// Two forks of the author's feed (same position; next position on
    /// another previous entry) and a chain that is no fork, plus variants.
    pub fn write_fork_proofs() {
        let keys = channel_keys();
        let me = author();
        let body = |b: u8| EntryBody {
            epoch: EPOCH,
            change: vec![b; 8],
        };
        let (one, h1) = Envelope::seal(keys, me, 1, [0; 32], &body(1)).expect("seal");
        let (other, h1b) = Envelope::seal(keys, me, 1, [0; 32], &body(2)).expect("seal");
        let (two, _) = Envelope::seal(keys, me, 2, h1, &body(3)).expect("seal");
        let (two_b, _) = Envelope::seal(keys, me, 2, h1b, &body(4)).expect("seal");
        let proof = |first: &[u8], second: &[u8]| {
            hearth_core::ForkProof {
                first: first.to_vec(),
                second: second.to_vec(),
                certs: Vec::new(),
            }
            .encode()
        };
        let same = proof(&one, &other);
        let next = proof(&one, &two_b);
        write("fork_proof", "valid-same-position", &same);
        write("fork_proof", "valid-next-position", &next);
        write("fork_proof", "chain-not-a-fork", &proof(&one, &two));
        write("fork_proof", "truncated", &same[..same.len() / 2]);
        write("fork_proof", "flipped-in-second", &flip(&next, next.len() - 10));
        let named = ChannelRecord::encode_named(keys, Some("general"));
        write("channel_record", "valid-v2-named", &named);
        write("channel_record", "valid-v2-unnamed", &ChannelRecord::encode(keys));
    }

    /// Rosters: a channel made, an admin named, a member removed, a
    /// concurrent removal and promotion, a cycle, and variants.
    pub fn write_member_ops() {
        use hearth_core::member::{MEMBER_BODY_VERSION, OpKey};
        use hearth_core::{MemberAction, MemberBody, Role, UserId};
        let frame = |author: u8, device: u8, n: u8, hlc: u64, parents: &[(u8, u32)], action: MemberAction| {
            let body = MemberBody {
                version: MEMBER_BODY_VERSION,
                hlc,
                parents: parents
                    .iter()
                    .map(|&(d, n)| OpKey {
                        device: DeviceId([d; 16]),
                        n,
                    })
                    .collect(),
                action,
            }
            .encode();
            let mut out = vec![author, device, n, body.len() as u8];
            out.extend(body);
            out
        };
        let user = |b: u8| UserId([b; 32]);
        let mut story = Vec::new();
        story.extend(frame(0, 0, 1, 10, &[], MemberAction::Create));
        story.extend(frame(
            0,
            0,
            2,
            11,
            &[(0, 1)],
            MemberAction::SetRole {
                user: user(1),
                role: Role::Admin,
            },
        ));
        story.extend(frame(
            1,
            1,
            1,
            12,
            &[(0, 2)],
            MemberAction::Remove {
                user: user(2),
                upto: vec![(DeviceId([2; 16]), 3)],
            },
        ));
        story.extend(frame(
            0,
            0,
            3,
            13,
            &[(1, 1)],
            MemberAction::Add {
                user: user(2),
                role: Role::Member,
            },
        ));
        write("member_ops", "valid-story", &story);
        let mut race = Vec::new();
        race.extend(frame(0, 0, 1, 10, &[], MemberAction::Create));
        race.extend(frame(
            0,
            0,
            2,
            11,
            &[(0, 1)],
            MemberAction::SetRole {
                user: user(1),
                role: Role::Admin,
            },
        ));
        race.extend(frame(
            0,
            0,
            3,
            30,
            &[(0, 2)],
            MemberAction::Remove {
                user: user(1),
                upto: vec![],
            },
        ));
        race.extend(frame(
            1,
            1,
            1,
            20,
            &[(0, 2)],
            MemberAction::SetRole {
                user: user(3),
                role: Role::Admin,
            },
        ));
        race.extend(frame(3, 3, 1, 21, &[(0, 1)], MemberAction::Create));
        write("member_ops", "valid-concurrent-removal", &race);
        // Invites: one opened, a join signed by its secret, a revocation, a
        // join after it (refused), and one past the end of another.
        let secret = hearth_core::SecretKey::from_bytes([0x5a; 32]);
        let key = hearth_core::member::invite_public(&secret);
        let join = |invite: [u8; 16], u: u8| {
            let (who, device) = (user(u), DeviceId([u; 16]));
            MemberAction::join(
                who,
                device,
                invite,
                hearth_core::member::sign_join(&secret, &invite, &who, &device),
            )
        };
        let (a, b) = ([0xa1; 16], [0xb2; 16]);
        let mut invites = Vec::new();
        invites.extend(frame(0, 0, 1, 10 << 16, &[], MemberAction::Create));
        let open = |id, expires, uses| MemberAction::Invite { id, key, expires, uses };
        invites.extend(frame(0, 0, 2, 11 << 16, &[(0, 1)], open(a, 0, 2)));
        invites.extend(frame(1, 1, 1, 12 << 16, &[(0, 2)], join(a, 5)));
        invites.extend(frame(
            0,
            0,
            3,
            13 << 16,
            &[(1, 1)],
            MemberAction::RevokeInvite { id: a },
        ));
        invites.extend(frame(0, 0, 4, 14 << 16, &[(0, 3)], join(a, 6)));
        invites.extend(frame(0, 0, 5, 15 << 16, &[(0, 4)], open(b, 15, 1)));
        invites.extend(frame(2, 2, 1, 16 << 16, &[(0, 5)], join(b, 7)));
        write("member_ops", "valid-invites", &invites);
        let mut cycle = Vec::new();
        cycle.extend(frame(2, 2, 1, 5, &[(2, 2)], MemberAction::Create));
        cycle.extend(frame(2, 2, 2, 5, &[(2, 1)], MemberAction::Create));
        write("member_ops", "cycle", &cycle);
        write("member_ops", "truncated", &story[..story.len() - 9]);
        write("member_ops", "flipped", &flip(&race, 30));
    }

    /// Key packages: two generations sealed to the fixed device and another,
    /// one to another device only, and variants.
    pub fn write_key_packages() {
        use hearth_core::device::DeviceKeys;
        use hearth_core::{KeyPackage, SecretKey};
        let me = super::checks::fuzz_device_keys();
        let other = DeviceKeys::generate().expect("keys");
        let wire = super::checks::PACKAGE_WIRE;
        let (k1, k2) = (SecretKey::from_bytes([0x71; 32]), SecretKey::from_bytes([0x72; 32]));
        let both = KeyPackage::seal(
            &wire,
            &[(1, &k1), (2, &k2)],
            &[(me.device_id(), me.public().kx), (other.device_id(), other.public().kx)],
        )
        .expect("seal")
        .encode();
        let not_mine = KeyPackage::seal(&wire, &[(3, &k1)], &[(other.device_id(), other.public().kx)])
            .expect("seal")
            .encode();
        write("key_package", "valid-two-generations", &both);
        write("key_package", "valid-for-another-device", &not_mine);
        write("key_package", "truncated", &both[..both.len() - 7]);
        write("key_package", "flipped-sealed-key", &flip(&both, both.len() - 20));
        write("key_package", "flipped-generation", &flip(&both, 2));
    }

    /// Certificates by a user and by a device, a kept (legacy) id, and variants.
    pub fn write_revocation_notices() {
        use hearth_core::member::{RevocationNotice, sign_revocation};
        let me = &Identity::generate("fuzz").expect("identity");
        let wire = channel_keys().wire();
        let other = Identity::new_device(&me.secret().expect("a user key"), "phone").expect("device");
        let notice = |by: &Identity, device: hearth_core::DeviceId, upto: u64| {
            RevocationNotice::new(
                wire,
                device,
                upto,
                vec![by.device_cert().expect("cert").clone()],
                sign_revocation(by.device_keys().expect("keys"), &wire, &device, upto),
            )
            .encode()
        };
        let good = notice(me, other.device(), 3);
        write("revocation_notice", "valid-by-a-sibling", &good);
        write(
            "revocation_notice",
            "revokes-itself",
            &notice(&other, other.device(), 1),
        );
        write("revocation_notice", "truncated", &good[..good.len() - 9]);
        write("revocation_notice", "flipped-signature", &flip(&good, good.len() - 5));
        write("revocation_notice", "flipped-upto", &flip(&good, 49));
    }

    /// A relay certificate, a removal and a leave, and variants.
    pub fn write_peer_proofs() {
        use hearth_core::peer::{RelayCert, RemovalNotice};
        let me = &Identity::generate("fuzz").expect("identity");
        let chain = vec![me.device_cert().expect("cert").clone()];
        let cert = RelayCert::sign(me.device_keys().expect("keys"), chain, &[0x22; 38]).encode();
        write("peer_proofs", "valid-relay-cert", &cert);
        write("peer_proofs", "relay-cert-truncated", &cert[..cert.len() - 9]);
        write(
            "peer_proofs",
            "relay-cert-flipped-signature",
            &flip(&cert, cert.len() - 5),
        );
        write("peer_proofs", "relay-cert-flipped-relay", &flip(&cert, 3));
        let removal = RemovalNotice {
            wire: channel_keys().wire(),
            user: me.user(),
            left: false,
            cuts: vec![(hearth_core::DeviceId([1; 16]), 7), (hearth_core::DeviceId([2; 16]), 0)],
            at: 1234,
            back: false,
        };
        let r = removal.encode();
        write("peer_proofs", "valid-removal", &r);
        let mut left = removal.clone();
        left.left = true;
        left.cuts.clear();
        write("peer_proofs", "valid-leave", &left.encode());
        let mut unsorted = removal.clone();
        unsorted.cuts.reverse();
        write("peer_proofs", "removal-cuts-unsorted", &unsorted.encode());
        write("peer_proofs", "removal-truncated", &r[..r.len() - 3]);
        let drop = hearth_core::peer::TextDrop {
            wire: channel_keys().wire(),
            device: me.device(),
            seq: 9,
            entry: [0x5a; 32],
            pack: Some(serde_bytes::ByteBuf::from(vec![0x6b; 48])),
        }
        .encode();
        write("peer_proofs", "valid-text-drop", &drop);
        write("peer_proofs", "text-drop-truncated", &drop[..drop.len() - 4]);
        let back = RemovalNotice {
            cuts: Vec::new(),
            back: true,
            ..removal.clone()
        };
        write("peer_proofs", "valid-added-back", &back.encode());
        let op = hearth_core::member::OpKey {
            device: me.device(),
            n: 2,
        };
        let wire = channel_keys().wire();
        let other = hearth_core::UserId([0x7a; 32]);
        let told = hearth_core::peer::RemovedNotice::sign(
            me.device_keys().expect("keys"),
            me.device_chain().expect("chain").to_vec(),
            wire,
            other,
            op,
        )
        .encode();
        write("peer_proofs", "valid-removed-notice", &told);
        write("peer_proofs", "removed-notice-flipped-op", &flip(&told, 32 + 32 + 3));
        write("peer_proofs", "removed-notice-truncated", &told[..told.len() - 7]);
    }

    pub fn write_keyed_id_seeds() {
        use hearth_core::device::{DeviceCert, DeviceKeys, device_id_v2};
        let user = ed25519_dalek::SigningKey::from_bytes(&[0x31; 32]);
        let a = DeviceKeys::generate().expect("keys");
        // A keyed id bound as a kept one: refused (squatting).
        let squat = DeviceCert::by_user(&user, a.device_id(), a.public(), 1_700_000_000_003, true).encode();
        // An id formats 4 to 6 derived: still verifies.
        let v2 = DeviceCert::by_user(
            &user,
            device_id_v2(&a.public().signing),
            a.public(),
            1_700_000_000_004,
            false,
        );
        write("device_cert", "squat-keyed-id-as-legacy", &squat);
        write("device_cert", "valid-v2-derived-id", &v2.encode());
        // An identity record of version 3 that moved from a kept id.
        let v1 = {
            #[derive(serde::Serialize)]
            struct V1 {
                version: u8,
                secret: [u8; 32],
                device: [u8; 16],
                name: String,
            }
            postcard::to_stdvec(&V1 {
                version: 1,
                secret: [0x31; 32],
                device: [0x22; 16],
                name: "moved".into(),
            })
            .expect("encodes")
        };
        let moved = Identity::decode(&v1).expect("v1").with_keyed_id().expect("moves");
        write("identity", "valid-v3-moved", &moved.encode());
    }

    pub fn write_device_certs() {
        use hearth_core::device::{DeviceCert, DeviceKeys};
        let user = ed25519_dalek::SigningKey::from_bytes(&[0x31; 32]);
        let (a, b) = (
            DeviceKeys::generate().expect("keys"),
            DeviceKeys::generate().expect("keys"),
        );
        let by_user = DeviceCert::by_user(&user, a.device_id(), a.public(), 1_700_000_000_000, false).encode();
        let legacy = DeviceCert::by_user(&user, DeviceId([0x22; 16]), b.public(), 1_700_000_000_001, true).encode();
        let ca = DeviceCert::decode(&by_user).expect("decodes");
        let by_device = DeviceCert::by_device(&a, &ca.body, b.public(), 1_700_000_000_002).encode();
        write("device_cert", "valid-by-user", &by_user);
        write("device_cert", "valid-legacy-id", &legacy);
        write("device_cert", "valid-by-device", &by_device);
        write("device_cert", "truncated", &by_user[..by_user.len() - 5]);
        write("device_cert", "flipped-signature", &flip(&by_user, by_user.len() - 3));
        write("device_cert", "flipped-device-id", &flip(&by_user, 40));
        let v2 = Identity::generate("fuzz").expect("identity").encode();
        write("identity", "valid-v2", &v2);
        write("identity", "flipped-v2-cert", &flip(&v2, v2.len() - 20));
        // Format 2 entries: the first of a feed with its chain, the next without.
        let me = Identity::generate("fuzz").expect("identity");
        let body = EntryBody {
            epoch: EPOCH,
            change: vec![5; 8],
        };
        let chain = vec![me.device_cert().expect("cert").clone()];
        let (first, h) = Envelope::seal_v2(channel_keys(), &me, 1, [0; 32], &body, 0, chain).expect("seal");
        let (next, _) = Envelope::seal_v2(channel_keys(), &me, 2, h, &body, 1, Vec::new()).expect("seal");
        write("envelope", "valid-v2-with-chain", &first);
        write("envelope", "v2-next-needs-the-feed-key", &next);
        write("envelope", "v2-flipped-in-chain", &flip(&first, 120));
        // A fork of format 2 entries without their chain, proved with it.
        let (next_b, _) = Envelope::seal_v2(
            channel_keys(),
            &me,
            2,
            h,
            &EntryBody {
                epoch: EPOCH,
                change: vec![6; 8],
            },
            1,
            Vec::new(),
        )
        .expect("seal");
        let proof = hearth_core::ForkProof {
            first: next.clone(),
            second: next_b,
            certs: vec![me.device_cert().expect("cert").clone()],
        }
        .encode();
        write("fork_proof", "valid-v2-with-chain", &proof);
        write("fork_proof", "v2-chain-truncated", &proof[..proof.len() - 30]);
    }

    fn flip(data: &[u8], at: usize) -> Vec<u8> {
        let mut b = data.to_vec();
        b[at] ^= 0x04;
        b
    }

    fn msg(n: u64) -> MessageId {
        let channel = channel_keys().id();
        MessageId::new(
            Timestamp::from_millis(1_700_000_000_000 + n),
            EPOCH,
            &channel,
            writer_tag(&author().user(), &AUTHOR_DEVICE),
        )
    }

    fn change(doc: &mut EpochDoc, device: &DeviceId, ops: &[Op]) -> Vec<u8> {
        doc.apply_local(&author().user(), device, ops, 1_700_000_000_000)
            .expect("ops apply")
            .expect("ops change the document")
    }

    fn post(n: u64, text: &str, reply_to: Option<MessageId>) -> Op {
        Op::Post {
            id: msg(n),
            text: text.into(),
            reply_to,
        }
    }

    pub fn write_all() {
        store_headers();
        let changes = changes();
        envelopes(&changes.first_post, &changes.second);
        identities();
        channel_records();
        snapshots();
        link_bundles();
    }

    fn link_bundles() {
        let secret = SecretKey::from_bytes(super::checks::LINK_SECRET);
        let laptop = Identity::new_device(&SecretKey::from_bytes([0x42; 32]), "fuzz author").expect("device");
        let phone = hearth_core::device::DeviceKeys::generate().expect("keys");
        let chain = laptop.certify_device(phone.public()).expect("a chain");
        let bundle = hearth_core::LinkBundle {
            chain: chain.clone(),
            name: "fuzz author".into(),
            channels: vec![
                channel_keys().clone(),
                ChannelKeys::new(ChannelId([9; 32]), SecretKey::from_bytes([8; 32])),
            ],
        };
        let sealed = bundle.seal(&secret).unwrap();
        let plain = hearth_core::open(
            &super::checks::link_bundle_key(),
            b"hearth v1 link bundle",
            &sealed,
            "seed",
        )
        .unwrap();
        write("link_bundle", "valid-plaintext", &plain);
        write("link_bundle", "sealed", &sealed);
        write("link_bundle", "truncated", &plain[..plain.len() - 3]);
        write("link_bundle", "version-1", &{
            let mut p = plain.clone();
            p[0] = 1;
            p
        });
        let empty = hearth_core::LinkBundle {
            chain: chain[1..].to_vec(),
            name: String::new(),
            channels: vec![],
        };
        let sealed = empty.seal(&secret).unwrap();
        let plain = hearth_core::open(
            &super::checks::link_bundle_key(),
            b"hearth v1 link bundle",
            &sealed,
            "seed",
        )
        .unwrap();
        write("link_bundle", "no-channels-empty-name", &plain);
    }

    fn store_headers() {
        let master = SecretKey::from_bytes([0x66; 32]);
        let pass = Passphrase::new(PASSPHRASE);
        let fast = StoreHeader::wrap(&master, &pass, KdfParams::INSECURE_FAST)
            .unwrap()
            .encode();
        let default = StoreHeader::wrap(&master, &pass, KdfParams::default())
            .unwrap()
            .encode();
        let other = StoreHeader::wrap(&master, &"another passphrase".into(), KdfParams::INSECURE_FAST)
            .unwrap()
            .encode();
        let mut version_2 = fast.clone();
        version_2[8] = 2;
        write("store_header", "valid-insecure-fast-kdf", &fast);
        write("store_header", "valid-default-kdf", &default);
        write("store_header", "valid-other-passphrase", &other);
        write("store_header", "truncated-checksum", &fast[..fast.len() - 1]);
        write("store_header", "bitflip-salt", &flip(&fast, 20));
        write("store_header", "version-2", &version_2);
        write("store_header", "magic-only", b"HEARTHHD");
    }

    struct Changes {
        first_post: Vec<u8>,
        second: Vec<u8>,
    }

    fn changes() -> Changes {
        let mut doc = EpochDoc::new(EPOCH, &AUTHOR_DEVICE);
        let first_post = change(&mut doc, &AUTHOR_DEVICE, &[post(1, "hello", None)]);
        let second = change(
            &mut doc,
            &AUTHOR_DEVICE,
            &[
                Op::React {
                    msg: msg(1),
                    emoji: "👍".into(),
                },
                Op::Edit {
                    msg: msg(1),
                    text: "hello, edited".into(),
                },
            ],
        );
        let mut many = EpochDoc::new(EPOCH, &AUTHOR_DEVICE);
        let many_ops = change(
            &mut many,
            &AUTHOR_DEVICE,
            &[
                post(1, "root", None),
                post(2, "a reply", Some(msg(1))),
                Op::React {
                    msg: msg(1),
                    emoji: ":tada:".into(),
                },
                Op::Edit {
                    msg: msg(2),
                    text: "an edited reply".into(),
                },
                Op::Delete { msg: msg(2) },
                Op::ReadUpTo { msg: msg(2) },
            ],
        );
        let mut long = EpochDoc::new(EPOCH, &AUTHOR_DEVICE);
        let text = "a long message that compresses well. ".repeat(60);
        let compressed = change(&mut long, &AUTHOR_DEVICE, &[post(1, &text, None)]);
        let mut meta = EpochDoc::new(META_EPOCH, &AUTHOR_DEVICE);
        let meta_change = change(
            &mut meta,
            &AUTHOR_DEVICE,
            &[
                Op::CreateChannel { name: "general".into() },
                Op::SetName { name: "Author".into() },
            ],
        );
        let mut other = EpochDoc::new(EPOCH, &LOCAL_DEVICE);
        let wrong_actor = change(&mut other, &LOCAL_DEVICE, &[Op::ReadUpTo { msg: msg(1) }]);

        write("change", "valid-first-post", &first_post);
        write("change", "valid-second-change-react-edit", &second);
        write("change", "valid-many-ops-reply-delete-read", &many_ops);
        write("change", "valid-compressed-long-post", &compressed);
        write("change", "valid-meta-channel-and-user-name", &meta_change);
        write("change", "wrong-actor", &wrong_actor);
        write("change", "truncated-first-post", &first_post[..first_post.len() - 3]);
        write("change", "bitflip-first-post", &flip(&first_post, first_post.len() - 6));
        Changes { first_post, second }
    }

    fn envelopes(first_change: &[u8], second_change: &[u8]) {
        let keys = channel_keys();
        let me = author();
        let first = EntryBody {
            epoch: EPOCH,
            change: first_change.to_vec(),
        };
        let (seq1, hash1) = Envelope::seal(keys, me, 1, [0; 32], &first).unwrap();
        let second = EntryBody {
            epoch: EPOCH,
            change: second_change.to_vec(),
        };
        let (seq2, _) = Envelope::seal(keys, me, 2, hash1, &second).unwrap();
        let stranger = ChannelKeys::new(ChannelId([0x77; 32]), SecretKey::from_bytes([0x88; 32]));
        let (other_channel, _) = Envelope::seal(&stranger, me, 1, [0; 32], &first).unwrap();
        let reencode = |edit: &dyn Fn(&mut EntryHeader)| {
            let mut env = Envelope::decode(&seq1).unwrap();
            edit(&mut env.header);
            postcard::to_stdvec(&env).unwrap()
        };
        let seq_zero = reencode(&|h| h.seq = 0);
        let version_2 = reencode(&|h| h.version = ENVELOPE_VERSION + 1);

        write("envelope", "valid-seq1", &seq1);
        write("envelope", "valid-seq2-chained", &seq2);
        write("envelope", "valid-other-channel", &other_channel);
        write("envelope", "truncated-signature", &seq1[..seq1.len() - 1]);
        write("envelope", "bitflip-sealed-body", &flip(&seq1, seq1.len() - 80));
        write("envelope", "bitflip-signature", &flip(&seq1, seq1.len() - 10));
        write("envelope", "seq-zero", &seq_zero);
        write("envelope", "version-2", &version_2);
    }

    /// Format 3 entries: with two texts beside the change, one dropped, the
    /// body pruned, and damaged variants.
    /// A device that writes the entry seeds, its chain and a body.
    fn seed_writer() -> (Identity, Vec<hearth_core::device::DeviceCert>, EntryBody) {
        let me = Identity::generate("fuzz").unwrap();
        let chain = vec![me.device_cert().unwrap().clone()];
        let body = EntryBody {
            epoch: EPOCH,
            change: vec![7; 24],
        };
        (me, chain, body)
    }

    pub fn write_entry_v3_seeds() {
        let keys = channel_keys();
        let (me, chain, body) = seed_writer();
        let texts = [
            hearth_core::Content::new(msg(1), "hello".into()).unwrap(),
            hearth_core::Content::new(msg(1), "hello, edited".into()).unwrap(),
        ];
        let (full, _) = Envelope::seal_v3(keys, &me, 1, [0; 32], &body, 0, chain, &texts).unwrap();
        let env = Envelope::decode(&full).unwrap();
        let mut one = env.clone();
        one.drop_segments(&[texts[0].id()]);
        let mut stub = env.clone();
        stub.prune_body();
        write("envelope", "valid-v3-two-segments", &full);
        write("envelope", "valid-v3-one-segment-dropped", &one.encode());
        write("envelope", "valid-v3-pruned-body", &stub.encode());
        write("envelope", "v3-flipped-in-segment", &flip(&full, full.len() - 20));
        write("envelope", "v3-truncated-segment", &full[..full.len() - 5]);
    }

    pub fn write_text_pack_seeds() {
        let texts: Vec<_> = (0..8u8)
            .map(|i| {
                hearth_core::Content::new(msg(1 + u64::from(i / 2)), format!("text {i} of the pack, ünïcode ✓"))
                    .unwrap()
            })
            .collect();
        let encoded = postcard::to_stdvec(&texts).unwrap();
        let mut plain = vec![0u8];
        plain.extend_from_slice(&encoded);
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut enc, &encoded).unwrap();
        let mut deflated = vec![1u8];
        deflated.extend(enc.finish().unwrap());
        let one = postcard::to_stdvec(&texts[..1]).unwrap();
        let mut single = vec![0u8];
        single.extend_from_slice(&one);
        write("text_pack", "valid-plain-eight", &plain);
        write("text_pack", "valid-deflated-eight", &deflated);
        write("text_pack", "valid-plain-one", &single);
        write("text_pack", "valid-empty", &[0, 0]);
        write("text_pack", "unknown-kind", &[7, 0]);
        write("text_pack", "deflate-garbage", &[1, 0xff, 0xfe, 0x00, 0x13]);
        write("text_pack", "truncated", &deflated[..deflated.len() - 3]);
        let mut trailing = plain.clone();
        trailing.push(0);
        write("text_pack", "trailing-byte", &trailing);
        // A count of 2^32 - 1 texts: refused without allocating them.
        write("text_pack", "huge-count", &[0, 0xff, 0xff, 0xff, 0xff, 0x0f]);
    }

    pub fn write_entry_v4_seeds() {
        let keys = channel_keys();
        let (me, chain, body) = seed_writer();
        let texts: Vec<_> = (0..6u8)
            .map(|i| hearth_core::Content::new(msg(1 + u64::from(i / 2)), format!("text {i} of the pack")).unwrap())
            .collect();
        let (full, _) = Envelope::seal_v4(keys, &me, 1, [0; 32], &body, 0, chain, &texts).unwrap();
        let env = Envelope::decode(&full).unwrap();
        let mut one = env.clone();
        one.retain_texts(keys, |id| *id != texts[0].id()).unwrap();
        let mut stripped = env.clone();
        stripped.strip_texts();
        let mut stub = env.clone();
        stub.prune_body();
        let (plain, _) = Envelope::seal_v4(keys, &me, 2, [1; 32], &body, 0, Vec::new(), &texts[..1]).unwrap();
        write("envelope", "valid-v4-packed", &full);
        write("envelope", "valid-v4-one-text-dropped", &one.encode());
        write("envelope", "valid-v4-no-pack", &stripped.encode());
        write("envelope", "valid-v4-pruned-body", &stub.encode());
        write("envelope", "v4-one-plain-text-unchained", &plain);
        write("envelope", "v4-flipped-in-pack", &flip(&full, full.len() - 20));
        write("envelope", "v4-truncated-pack", &full[..full.len() - 5]);
    }

    pub fn write_v5_seeds() {
        use hearth_core::textpack::TextPack;
        let texts: Vec<String> = (0..8u8).map(|i| format!("text {i} of the pack, ünïcode ✓")).collect();
        let pack = TextPack::new(
            texts
                .iter()
                .enumerate()
                .map(|(i, t)| (10 + 3 * i as u64, Some(t.as_str()))),
        )
        .unwrap();
        let plain = pack.encode_plain(flate2::Compression::none());
        let deflated = pack.encode_plain(flate2::Compression::default());
        assert_eq!((plain[0], deflated[0]), (0, 1));
        let dropped = pack
            .retain(|op| op != 13 && op != 22)
            .encode_plain(flate2::Compression::default());
        let one = TextPack::new([(7, Some("one"))])
            .unwrap()
            .encode_plain(flate2::Compression::default());
        let early = TextPack::new([(7, Some("kept")), (9, None)])
            .unwrap()
            .encode_plain(flate2::Compression::default());
        write("text_pack_v5", "valid-plain-eight", &plain);
        write("text_pack_v5", "valid-deflated-eight", &deflated);
        write("text_pack_v5", "valid-two-dropped", &dropped);
        write("text_pack_v5", "valid-one", &one);
        write("text_pack_v5", "valid-one-gone-before-sealing", &early);
        write("text_pack_v5", "unknown-kind", &[7, 0]);
        write("text_pack_v5", "deflate-garbage", &[1, 0xff, 0xfe, 0x00, 0x13]);
        write("text_pack_v5", "truncated", &deflated[..deflated.len() - 3]);
        let mut trailing = plain.clone();
        trailing.push(0);
        write("text_pack_v5", "trailing-byte", &trailing);
        // No seed, counts of 2^32 - 1 op steps: refused without allocating.
        write("text_pack_v5", "huge-count", &[0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f]);

        // Entries of format 5: a change that names its texts by slot.
        let keys = channel_keys();
        let (me, chain, _) = seed_writer();
        let mut doc = EpochDoc::new(EPOCH, &me.device());
        doc.set_slot_texts(true);
        let tag = hearth_core::writer_tag(&me.user(), &me.device());
        for i in 0..4u64 {
            let id = hearth_core::MessageId::new(hearth_core::Timestamp::from_millis(1000 + i), EPOCH, &keys.id(), tag);
            let op = hearth_core::Op::Post {
                id,
                text: format!("text {i} of the pack"),
                reply_to: None,
            };
            doc.stage(&me.user(), &me.device(), &op).unwrap();
        }
        let change = doc.commit(0).unwrap().unwrap();
        let texts = doc.take_texts();
        let body = EntryBody { epoch: EPOCH, change };
        let (full, _) = Envelope::seal_v5(keys, &me, 1, [0; 32], &body, 0, chain, &texts, Nonces::Random).unwrap();
        let env = Envelope::decode(&full).unwrap();
        let mut one = env.clone();
        one.retain_texts(keys, |id| *id != texts[0].id()).unwrap();
        let mut stub = env.clone();
        stub.prune_body();
        write("envelope", "valid-v5-packed", &full);
        write("envelope", "valid-v5-one-text-dropped", &one.encode());
        write("envelope", "valid-v5-pruned-body", &stub.encode());
        write("envelope", "v5-flipped-in-pack", &flip(&full, full.len() - 20));
        write("envelope", "v5-truncated-pack", &full[..full.len() - 5]);
    }

    /// Format 6 entries: a post's change stripped, with a pack, under
    /// counted nonces; and the stripped change alone (for the change
    /// target's unstripping).
    /// Two changes of the author, stripped, `leb128 length | first | second`:
    /// a post then a reaction to it, the reaction's ops numbered over the
    /// post's, and the post then an empty second change with a gap.
    pub fn write_change_pair_seeds() {
        let user = author().user();
        let mut doc = EpochDoc::new(EPOCH, &AUTHOR_DEVICE);
        let tag = writer_tag(&user, &AUTHOR_DEVICE);
        let id = MessageId::new(Timestamp::from_millis(1000), EPOCH, &channel_keys().id(), tag);
        let post = Op::Post {
            id,
            text: "the first".into(),
            reply_to: None,
        };
        doc.stage(&user, &AUTHOR_DEVICE, &post).unwrap();
        let first = doc.commit(0).unwrap().unwrap();
        let react = Op::React {
            msg: id,
            emoji: "👍".into(),
        };
        doc.stage(&user, &AUTHOR_DEVICE, &react).unwrap();
        let second = doc.commit(0).unwrap().unwrap();
        // The reaction's start op set to 1: over the post's ops.
        let overlapping = hearth_core::restamp_change(&second, &AUTHOR_DEVICE.0, None, Some(1)).unwrap();
        let strip = |c: &[u8]| hearth_core::strip_change(c, &AUTHOR_DEVICE.0).unwrap();
        let (first, second, overlapping) = (strip(&first), strip(&second), strip(&overlapping));
        let pair = |a: &[u8], b: &[u8]| [&hearth_core::write_leb128(a.len() as u64)[..], a, b].concat();
        write("change_pair", "valid-post-then-reaction", &pair(&first, &second));
        write(
            "change_pair",
            "crash-reaction-over-the-posts-ops",
            &pair(&first, &overlapping),
        );
        write(
            "change_pair",
            "crash-then-empty-with-a-gap",
            &pair(&first, &[0, 2, 9, 0, 0, 0, 0]),
        );
    }

    pub fn write_v6_seeds() {
        let keys = channel_keys();
        let (me, chain, _) = seed_writer();
        let mut doc = EpochDoc::new(EPOCH, &me.device());
        doc.set_slot_texts(true);
        let tag = hearth_core::writer_tag(&me.user(), &me.device());
        let id = hearth_core::MessageId::new(hearth_core::Timestamp::from_millis(1000), EPOCH, &keys.id(), tag);
        let op = hearth_core::Op::Post {
            id,
            text: "a text of a format 6 entry".into(),
            reply_to: None,
        };
        doc.stage(&me.user(), &me.device(), &op).unwrap();
        let change = doc.commit(0).unwrap().unwrap();
        let texts = doc.take_texts();
        let body = EntryBody { epoch: EPOCH, change };
        let (full, _) = Envelope::seal_v6(
            keys,
            &me,
            1,
            [0; 32],
            &body,
            0,
            chain,
            &texts,
            Nonces::Counted([0x33; 15]),
        )
        .unwrap();
        write("envelope", "valid-v6-stripped-change", &full);
        write("envelope", "v6-flipped-in-body", &flip(&full, full.len() - 200));
        // The change target unstrips its input for the author's device too.
        let user = author().user();
        let mut doc = EpochDoc::new(EPOCH, &AUTHOR_DEVICE);
        let tag = hearth_core::writer_tag(&user, &AUTHOR_DEVICE);
        let id = hearth_core::MessageId::new(hearth_core::Timestamp::from_millis(1000), EPOCH, &keys.id(), tag);
        let op = hearth_core::Op::Post {
            id,
            text: "by the author".into(),
            reply_to: None,
        };
        doc.stage(&user, &AUTHOR_DEVICE, &op).unwrap();
        let change = doc.commit(0).unwrap().unwrap();
        let stripped = hearth_core::strip_change(&change, &AUTHOR_DEVICE.0).unwrap();
        write("change", "stripped-by-author", &stripped);
    }

    pub fn write_link_seeds() {
        link_bundles();
        let laptop = Identity::generate("laptop").unwrap();
        let keys = hearth_core::device::DeviceKeys::generate().unwrap();
        let chain = laptop.certify_device(keys.public()).unwrap();
        let phone = Identity::linked(keys, chain, "phone").unwrap();
        write("identity", "valid-v4-user-key", &laptop.encode());
        write("identity", "valid-v4-linked", &phone.encode());
    }

    fn identities() {
        let valid = author().encode();
        let unicode = Identity::generate("Zoë 🔥 Ünïcode").unwrap().encode();
        let empty_name = Identity::generate("").unwrap().encode();
        let mut version_2 = valid.clone();
        version_2[0] = 2;
        // A name length of 2^32 - 1: must fail without allocating it.
        let mut huge_name = valid[..49].to_vec();
        huge_name.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        write("identity", "valid-author", &valid);
        write("identity", "valid-unicode-name", &unicode);
        write("identity", "valid-empty-name", &empty_name);
        write("identity", "version-2", &version_2);
        write("identity", "truncated-name", &valid[..valid.len() - 2]);
        write("identity", "huge-name-length", &huge_name);
    }

    fn channel_records() {
        let valid = ChannelRecord::encode(channel_keys());
        let mut version_2 = valid.clone();
        version_2[0] = 2;
        let mut trailing = valid.clone();
        trailing.extend_from_slice(b"trailing");
        write("channel_record", "valid-fixed-channel", &valid);
        write(
            "channel_record",
            "valid-random-channel",
            &ChannelRecord::encode(&ChannelKeys::generate().unwrap()),
        );
        write("channel_record", "version-2", &version_2);
        write("channel_record", "truncated-key", &valid[..valid.len() - 1]);
        write("channel_record", "trailing-bytes", &trailing);
    }

    fn snapshots() {
        let mut empty = EpochDoc::new(EPOCH, &AUTHOR_DEVICE);
        let mut doc = EpochDoc::new(EPOCH, &AUTHOR_DEVICE);
        change(
            &mut doc,
            &AUTHOR_DEVICE,
            &[post(1, "root", None), post(2, "a reply", Some(msg(1)))],
        );
        change(
            &mut doc,
            &AUTHOR_DEVICE,
            &[
                Op::React {
                    msg: msg(1),
                    emoji: "👍".into(),
                },
                Op::Edit {
                    msg: msg(1),
                    text: "root, edited".into(),
                },
                Op::ReadUpTo { msg: msg(2) },
            ],
        );
        let messages = doc.save().unwrap();
        let later = change(
            &mut doc,
            &AUTHOR_DEVICE,
            &[Op::Delete { msg: msg(2) }, post(3, "later", None)],
        );
        let mut doc_then_change = messages.clone();
        doc_then_change.extend_from_slice(&later);
        let mut meta = EpochDoc::new(META_EPOCH, &AUTHOR_DEVICE);
        change(
            &mut meta,
            &AUTHOR_DEVICE,
            &[
                Op::CreateChannel { name: "general".into() },
                Op::SetName { name: "Author".into() },
            ],
        );
        let meta = meta.save().unwrap();

        write("snapshot", "valid-empty-doc", &empty.save().unwrap());
        write("snapshot", "valid-messages-reply-react-edit-read", &messages);
        write("snapshot", "valid-doc-then-change", &doc_then_change);
        write("snapshot", "valid-meta-names", &meta);
        write("snapshot", "change-chunk-only", &later);
        write("snapshot", "truncated-messages", &messages[..messages.len() - 5]);
        write("snapshot", "bitflip-messages", &flip(&messages, messages.len() / 2));
    }
}
