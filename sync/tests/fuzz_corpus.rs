//! Replays the sync fuzz corpora on stable, through the same checks the
//! `sync_request`, `sync_response` and `ticket` fuzz targets run
//! (`fuzz/src/sync.rs`): each file of `fuzz/corpus/<target>/`, and of
//! `fuzz/artifacts/<target>/` when a local fuzz run left crashes there. A `crash-*`
//! input keeps its test red until the bug is fixed; then it stays as a regression
//! input.
//!
//! The seeds are written by the ignored test at the bottom:
//! `cargo test -p hearth-sync --test fuzz_corpus -- --ignored regenerate_seed_corpus`.

#[path = "../../fuzz/src/sync.rs"]
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

#[test]
fn sync_request() {
    replay("sync_request", checks::check_request);
}

#[test]
fn sync_response() {
    replay("sync_response", checks::check_response);
}

#[test]
fn live_frames() {
    replay("live_frames", checks::check_live);
}

#[test]
fn ticket() {
    replay("ticket", checks::check_ticket);
}

/// Writes the seed corpus: valid inputs made by the encoders, plus truncated,
/// altered and forged variants. Everything is fixed, so a rerun writes the same bytes.
#[test]
#[ignore = "rewrites the seed corpus in fuzz/corpus; run by hand with --ignored"]
fn regenerate_seed_corpus() {
    seeds::write_all();
}

mod seeds {
    use std::collections::BTreeMap;
    use std::fs;

    use hearth_core::{ChannelId, ChannelKeys, DeviceId, FeedPos, SecretKey, Vector, WireId};
    use hearth_sync::proto::{AccessBytes, ChannelDigest, Request, Response, VERSION};
    use hearth_sync::ticket::Ticket;
    use serde_bytes::ByteBuf;

    use super::checks::ticket_from_body;
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

    /// Whether the decoder of `target` accepts `data` (a ticket as text or as a body).
    fn accepted(target: &str, data: &[u8]) -> bool {
        match target {
            "sync_request" => Request::decode(data).is_ok(),
            "sync_response" => Response::decode(data).is_ok(),
            "live_frames" => live_valid(data),
            "ticket" => {
                std::str::from_utf8(data).is_ok_and(|t| Ticket::decode(t).is_ok())
                    || Ticket::decode(&ticket_from_body(data)).is_ok()
            }
            _ => unreachable!("no fuzz target {target}"),
        }
    }

    pub fn write_all() {
        requests();
        responses();
        live();
        tickets();
    }

    /// Whether a live seed decodes: as an answer, or as a primer and a push.
    fn live_valid(data: &[u8]) -> bool {
        use hearth_sync::live::{FeedTable, decode_ack, decode_push};
        if decode_ack(data).is_ok() {
            return true;
        }
        let n = usize::from(u16::from_be_bytes([data[0], data[1]]));
        let mut table = FeedTable::default();
        decode_push(&mut table, &data[2..2 + n]).is_ok() && decode_push(&mut table, &data[2 + n..]).is_ok()
    }

    /// Live stream seeds: a feed's first entry whole as the primer, then its
    /// next two lean (and broken variants); the answers.
    fn live() {
        use hearth_core::{ChannelKeys, EntryBody, Envelope, Identity, Nonces};
        use hearth_sync::live::{FeedTable, LiveAck, encode_ack, encode_push};
        let keys = ChannelKeys::generate().unwrap();
        let me = Identity::generate("seed").unwrap();
        let mut prev = [0; 32];
        let entries: Vec<ByteBuf> = (1..=3u8)
            .map(|i| {
                let body = EntryBody {
                    epoch: 2,
                    change: vec![i; 24],
                };
                let chain = if i == 1 {
                    vec![me.device_cert().unwrap().clone()]
                } else {
                    Vec::new()
                };
                let (bytes, hash) = Envelope::seal_v5(
                    &keys,
                    &me,
                    u64::from(i),
                    prev,
                    &body,
                    0,
                    chain,
                    &[],
                    Nonces::Counted([7; 15]),
                )
                .unwrap();
                prev = hash;
                ByteBuf::from(bytes)
            })
            .collect();
        let mut table = FeedTable::default();
        let primer = encode_push(&mut table, &entries[..1], false);
        let one = encode_push(&mut table.clone(), &entries[1..2], false);
        let lean = encode_push(&mut table, &entries[1..], true);
        let two = |a: &[u8], b: &[u8]| [&(a.len() as u16).to_be_bytes()[..], a, b].concat();
        write("live_frames", "valid-primer-then-one-lean", &two(&primer, &one));
        write("live_frames", "valid-primer-then-lean", &two(&primer, &lean));
        write("live_frames", "truncated-lean", &two(&primer, &lean[..lean.len() - 3]));
        let mut flipped = lean.clone();
        flipped[lean.len() / 2] ^= 0x10;
        write("live_frames", "flipped-lean", &two(&primer, &flipped));
        write("live_frames", "lean-without-primer", &two(&[], &lean));
        write("live_frames", "valid-took", &encode_ack(&LiveAck::Took(1)));
        write("live_frames", "valid-took-batch", &encode_ack(&LiveAck::Took(16)));
        write("live_frames", "took-none", &[0, 0]);
        let refused = LiveAck::Said(Response::Refused {
            reason: "unknown channel".into(),
        });
        write("live_frames", "valid-refused", &encode_ack(&refused));
        let ack = LiveAck::Said(Response::Ack {
            vector: vector(),
            accepted: 1,
            rejected: 1,
            reason: Some("a gap".into()),
        });
        write("live_frames", "valid-ack", &encode_ack(&ack));
        write("live_frames", "variant-2", &[2, 0]);
    }

    fn vector() -> Vector {
        let pos = |seq, h| FeedPos { seq, hash: [h; 32] };
        Vector(BTreeMap::from([
            (DeviceId([1; 16]), pos(3, 0xa1)),
            (DeviceId([2; 16]), pos(1, 0xb2)),
        ]))
    }

    fn entries() -> Vec<ByteBuf> {
        vec![ByteBuf::from(b"first entry".to_vec()), ByteBuf::from(vec![0; 40])]
    }

    /// A device's proof, a relay certificate and a removal, as peers send them.
    fn proofs() -> (
        hearth_core::peer::Who,
        hearth_core::peer::RelayCert,
        hearth_core::peer::RemovalNotice,
    ) {
        use hearth_core::peer::{Ends, RelayCert, RemovalNotice, Who, WhoRole};
        let id = hearth_core::Identity::generate("seed").unwrap();
        let keys = id.device_keys().unwrap();
        let chain = vec![id.device_cert().unwrap().clone()];
        let ends = Ends {
            requester: vec![0x11; 38],
            responder: vec![0x22; 38],
        };
        let who = Who::sign(keys, chain.clone(), WhoRole::Hello, &[0x4e; 16], &ends, &[]);
        let cert = RelayCert::sign(keys, chain, &[0x22; 38]);
        let removal = RemovalNotice {
            wire: WireId([5; 32]),
            user: hearth_core::UserId([0x7a; 32]),
            left: false,
            cuts: vec![(DeviceId([1; 16]), 4), (DeviceId([2; 16]), 0)],
            at: 12,
            back: false,
        };
        (who, cert, removal)
    }

    /// A notice of a removal by an admin's device (protocol 6).
    pub fn removed_notice() -> hearth_core::peer::RemovedNotice {
        use hearth_core::member::OpKey;
        let admin = hearth_core::Identity::generate("admin").unwrap();
        let (wire, user) = (WireId([5; 32]), hearth_core::UserId([0x7a; 32]));
        let op = OpKey {
            device: admin.device(),
            n: 3,
        };
        hearth_core::peer::RemovedNotice::sign(
            admin.device_keys().unwrap(),
            admin.device_chain().unwrap().to_vec(),
            wire,
            user,
            op,
        )
    }

    fn requests() {
        let (who, cert, removal) = proofs();
        let hello = Request::Hello {
            version: VERSION,
            nonce: [0x4e; 16],
            summary: vec![
                ChannelDigest {
                    tag: [1; 8],
                    digest: [2; 6],
                },
                ChannelDigest {
                    tag: [3; 8],
                    digest: [4; 6],
                },
            ],
            relay: false,
            who: Some(Box::new(who)),
            certs: vec![],
            want_chain: true,
        }
        .encode();
        let empty_hello = Request::Hello {
            version: VERSION,
            nonce: [0; 16],
            summary: vec![],
            relay: true,
            who: None,
            certs: vec![cert.clone()],
            want_chain: false,
        }
        .encode();
        let fetch = Request::Fetch {
            wire: WireId([5; 32]),
            have: vector(),
            max_bytes: 512 * 1024,
        }
        .encode();
        let push = Request::Push {
            wire: WireId([6; 32]),
            entries: entries(),
        }
        .encode();
        let grant = Request::Grant {
            grants: vec![(WireId([5; 32]), AccessBytes([0x6b; 32]))],
            cert: Some(cert),
        }
        .encode();
        let mut trailing = empty_hello.clone();
        trailing.push(0);
        // A Hello claiming u32::MAX digests: must fail without allocating them.
        let huge_count = [0, 1, 0xff, 0xff, 0xff, 0xff, 0x0f];
        let mut relay_2 = empty_hello.clone();
        *relay_2.last_mut().unwrap() = 2;

        write("sync_request", "valid-hello", &hello);
        write("sync_request", "valid-hello-empty-relay", &empty_hello);
        write("sync_request", "valid-fetch", &fetch);
        write("sync_request", "valid-push", &push);
        write("sync_request", "valid-grant", &grant);
        let join = Request::Join {
            invite: [0x1a; 16],
            user: hearth_core::UserId([0x2b; 32]),
            chain: vec![],
            sig: serde_bytes::ByteArray::new([0x3c; 64]),
        }
        .encode();
        write("sync_request", "valid-join", &join);
        let link = Request::Link {
            proof: [0x4d; 32],
            keys: hearth_core::device::DevicePublic {
                signing: [0x5e; 32],
                kx: [0x6f; 32],
            },
        }
        .encode();
        write("sync_request", "valid-link", &link);
        write("sync_request", "truncated-link", &link[..link.len() - 1]);
        let revoke = Request::Revoke {
            notices: vec![ByteBuf::from(vec![0x5d; 40]), ByteBuf::from(vec![0x6e; 3])],
            removals: vec![removal],
            drops: vec![hearth_core::peer::TextDrop {
                wire: WireId([0x11; 32]),
                device: DeviceId([0x22; 16]),
                seq: 3,
                entry: [0x33; 32],
                pack: Some(ByteBuf::from(vec![0x44; 60])),
            }],
        }
        .encode();
        write("sync_request", "valid-revoke", &revoke);
        write("sync_request", "truncated-revoke", &revoke[..revoke.len() - 2]);
        write("sync_request", "truncated-join", &join[..join.len() - 1]);
        write("sync_request", "truncated-grant", &grant[..grant.len() - 1]);
        write("sync_request", "truncated-fetch", &fetch[..fetch.len() - 1]);
        write("sync_request", "trailing-byte", &trailing);
        write("sync_request", "huge-count", &huge_count);
        write("sync_request", "bool-2", &relay_2);
        write("sync_request", "variant-9", &[9, 0]);
    }

    fn responses() {
        let (who, _, _) = proofs();
        let hello = Response::Hello {
            matched: ByteBuf::from(vec![0b101]),
            proof: [0x9f; 16],
            differ: vec![(2, vector())],
            relay: false,
            who: Some(Box::new(who)),
            certs: vec![],
            removed: vec![],
        }
        .encode();
        let told = Response::Hello {
            matched: ByteBuf::from(vec![0]),
            proof: [0x9f; 16],
            differ: vec![],
            relay: false,
            who: None,
            certs: vec![],
            removed: vec![removed_notice()],
        }
        .encode();
        write("sync_response", "valid-hello-told", &told);
        write("sync_response", "truncated-hello-told", &told[..told.len() - 5]);
        let granted = Response::Granted {
            vectors: vec![(WireId([8; 32]), vector()), (WireId([9; 32]), Vector::default())],
        }
        .encode();
        let entries_frame = Response::Entries {
            entries: entries(),
            more: true,
        }
        .encode();
        let ack = Response::Ack {
            vector: vector(),
            accepted: 1,
            rejected: 1,
            reason: Some("bad signature".into()),
        }
        .encode();
        let refused = Response::Refused { reason: "busy".into() }.encode();
        let mut bad_utf8 = refused.clone();
        *bad_utf8.last_mut().unwrap() = 0xff;

        write("sync_response", "valid-hello", &hello);
        write("sync_response", "valid-granted", &granted);
        write("sync_response", "valid-entries", &entries_frame);
        write("sync_response", "valid-ack", &ack);
        write("sync_response", "valid-refused", &refused);
        let joined = Response::Joined {
            sealed: ByteBuf::from(vec![0x77; 120]),
        }
        .encode();
        write("sync_response", "valid-joined", &joined);
        write("sync_response", "valid-noted", &Response::Noted { held: 300 }.encode());
        write("sync_response", "truncated-ack", &ack[..ack.len() - 3]);
        write("sync_response", "refused-bad-utf8", &bad_utf8);
        write("sync_response", "variant-9", &[9, 0]);
    }

    /// A link body written out by hand (see the layout in `sync/src/ticket.rs`).
    fn link_body(addrs: &[&str]) -> Vec<u8> {
        let mut body = vec![1, 1];
        body.extend_from_slice(&[0x5e; 32]);
        body.push(addrs.len() as u8);
        for a in addrs {
            body.push(a.len() as u8);
            body.extend_from_slice(a.as_bytes());
        }
        body
    }

    /// A link body with an end (variant 2), written out by hand.
    fn link_until_body(expires: u64, addrs: &[&str]) -> Vec<u8> {
        let mut body = vec![1, 2];
        body.extend_from_slice(&[0x5e; 32]);
        body.extend(postcard::to_stdvec(&expires).unwrap());
        body.push(addrs.len() as u8);
        for a in addrs {
            body.push(a.len() as u8);
            body.extend_from_slice(a.as_bytes());
        }
        body
    }

    fn invite_body(name: &str, addrs: &[&str]) -> Vec<u8> {
        let mut body = vec![1, 0];
        body.extend_from_slice(&[0x44; 32]);
        body.extend_from_slice(&[0x55; 32]);
        body.push(name.len() as u8);
        body.extend_from_slice(name.as_bytes());
        body.push(addrs.len() as u8);
        for a in addrs {
            body.push(a.len() as u8);
            body.extend_from_slice(a.as_bytes());
        }
        body
    }

    fn tickets() {
        let addrs = ["/ip4/192.168.1.20/tcp/4001", "/ip6/::1/udp/4001/quic-v1"];
        let keys = ChannelKeys::new(ChannelId([0x44; 32]), SecretKey::from_bytes([0x55; 32]));
        let invite = Ticket::invite(&keys, "general", addrs.iter().map(|a| a.parse().unwrap()).collect())
            .unwrap()
            .to_string();
        let link = Ticket::link(
            SecretKey::from_bytes([0x5e; 32]),
            vec![addrs[0].parse().unwrap()],
            1_800_000_000,
        )
        .unwrap()
        .to_string();
        let bare = Ticket::invite(&keys, "", vec![]).unwrap().to_string();
        let mut substituted = invite.clone().into_bytes();
        substituted[30] = if substituted[30] == b'a' { b'b' } else { b'a' };
        let mut version_2 = link_body(&addrs[..1]);
        version_2[0] = 2;
        let mut trailing = link_body(&addrs[..1]);
        trailing.push(0);

        write("ticket", "valid-invite", invite.as_bytes());
        let join = Ticket::join(
            ChannelId([0x44; 32]),
            "general",
            [0x1a; 16],
            SecretKey::from_bytes([0x66; 32]),
            Some(1_800_000_000),
            addrs.iter().map(|a| a.parse().unwrap()).collect(),
        )
        .unwrap()
        .to_string();
        write("ticket", "valid-join", join.as_bytes());
        let forever = Ticket::join(
            ChannelId([0x44; 32]),
            "",
            [0x1b; 16],
            SecretKey::from_bytes([0x67; 32]),
            None,
            vec![],
        )
        .unwrap()
        .to_string();
        write("ticket", "valid-join-forever-no-addrs", forever.as_bytes());
        write("ticket", "valid-link", link.as_bytes());
        write("ticket", "valid-invite-no-name-no-addrs", bare.as_bytes());
        write(
            "ticket",
            "valid-pasted-with-whitespace",
            format!("  {link}\r\n").as_bytes(),
        );
        write("ticket", "valid-body-invite", &invite_body("général", &addrs));
        write("ticket", "valid-body-link", &link_body(&addrs[..1]));
        write(
            "ticket",
            "valid-body-link-until",
            &link_until_body(1_800_000_000, &addrs[..1]),
        );
        write("ticket", "truncated", &invite.as_bytes()[..invite.len() - 4]);
        write("ticket", "substituted", &substituted);
        write(
            "ticket",
            "wrong-prefix",
            invite.replacen("hearth1", "hearth2", 1).as_bytes(),
        );
        write("ticket", "uppercase", invite.to_uppercase().as_bytes());
        write("ticket", "body-version-2", &version_2);
        write("ticket", "body-trailing-byte", &trailing);
        write("ticket", "body-bad-address", &link_body(&["/ip4/1.2.3/tcp/1"]));
        write(
            "ticket",
            "body-noncanonical-address",
            &link_body(&["/ip4/1.2.3.4/tcp/01"]),
        );
    }
}
