//! The checks behind Hearth's fuzz targets, one `check_*` function per decoder of
//! untrusted bytes.
//!
//! Each fuzz target in `fuzz_targets/` is one line that calls its check, and
//! `core/tests/fuzz_corpus.rs` replays every committed corpus and crash file through
//! the same functions on stable. The checks therefore live here, in one place.
//!
//! A check panics only when it finds a bug: a decoder that panics, or a property
//! that does not hold for something a decoder accepted. Rejecting input with an
//! error is always fine.
//!
//! This file is also compiled as a module of hearth-core's integration test (through
//! `#[path]`), so it may only use `hearth_core` and crates that hearth-core itself
//! depends on (`postcard`, `blake3`, `sha2`), never `libfuzzer-sys`.

use std::sync::OnceLock;

/// Run once before a target's first input: puts the default panic hook back.
///
/// libfuzzer-sys installs a hook that aborts on *every* panic, caught ones
/// included, and several decoders catch automerge's panics on purpose
/// (`decode_change`, `EpochDoc::load`, `EpochDoc::apply_remote`): under that
/// hook the `snapshot` target aborted on its own seed corpus and never fuzzed.
/// With the default hook a caught panic only prints; an uncaught one still
/// reaches libfuzzer-sys's wrapper, which aborts and saves the input.
#[allow(dead_code)] // the fuzz targets call it; the corpus replay (tests) does not
pub fn init() {
    drop(std::panic::take_hook());
}

use hearth_core::{
    ChannelId, ChannelKeys, ChannelRecord, DeviceId, Devices, Envelope, EpochDoc, Error, Identity, KdfParams,
    LinkBundle, Passphrase, SecretKey, StoreHeader, decode_change,
};

/// The passphrase the store header seeds were wrapped with.
pub const PASSPHRASE: &str = "fuzz corpus passphrase";

/// The device whose feed carries the change seeds (the author's device).
pub const AUTHOR_DEVICE: DeviceId = DeviceId([0x22; 16]);

/// The device a fresh or loaded epoch document writes as: not the author's, as for
/// a document that received the author's changes over sync.
pub const LOCAL_DEVICE: DeviceId = DeviceId([0x33; 16]);

/// The epoch of the change and snapshot seeds.
pub const EPOCH: u32 = 1;

/// The encoded author identity: `postcard(IdentityRecord)` written out by hand so
/// that the identity, and with it every seed, is the same on each regeneration.
fn author_record() -> Vec<u8> {
    let name = b"fuzz author";
    let mut rec = vec![1];
    rec.extend_from_slice(&[0x11; 32]);
    rec.extend_from_slice(&AUTHOR_DEVICE.0);
    rec.push(name.len() as u8);
    rec.extend_from_slice(name);
    rec
}

/// The fixed author of the envelope, change and snapshot seeds.
pub fn author() -> &'static Identity {
    static AUTHOR: OnceLock<Identity> = OnceLock::new();
    AUTHOR.get_or_init(|| Identity::decode(&author_record()).expect("the author record decodes"))
}

/// The fixed channel the envelope seeds were sealed for.
pub fn channel_keys() -> &'static ChannelKeys {
    static KEYS: OnceLock<ChannelKeys> = OnceLock::new();
    KEYS.get_or_init(|| ChannelKeys::new(ChannelId([0x44; 32]), SecretKey::from_bytes([0x55; 32])))
}

/// Signed feed headers vouch for the author's device, so views show what it wrote.
pub fn devices() -> Devices {
    Devices::from([(AUTHOR_DEVICE, author().user())])
}

/// A copy of `data` whose trailing blake3 checksum is recomputed, or `None` if it
/// is too short to hold one. The checksum only detects damage (anyone can compute
/// it), so a hostile header always carries a valid one; fuzzing only the raw bytes
/// would stop at the checksum and never reach the body decoder.
fn with_blake3_fixed(data: &[u8]) -> Option<Vec<u8>> {
    let body_len = data.len().checked_sub(32)?;
    let mut fixed = data.to_vec();
    let sum = blake3::hash(&data[..body_len]);
    fixed[body_len..].copy_from_slice(sum.as_bytes());
    Some(fixed)
}

/// Decode store header bytes. On success: `encode` round-trips to an equal header,
/// and unwrapping returns the key or a typed error (only for cheap KDF parameters,
/// so a hostile header cannot turn one input into seconds of Argon2).
pub fn check_store_header(data: &[u8]) {
    store_header_once(data);
    if let Some(fixed) = with_blake3_fixed(data)
        && fixed != data
    {
        store_header_once(&fixed);
    }
}

fn store_header_once(data: &[u8]) {
    let Ok(header) = StoreHeader::decode(data) else {
        return;
    };
    let again = StoreHeader::decode(&header.encode()).expect("an encoded header decodes");
    assert_eq!(again, header, "store header does not round-trip");
    let cheap = KdfParams::INSECURE_FAST;
    if header.kdf.m_kib <= cheap.m_kib && header.kdf.t <= cheap.t && header.kdf.p <= cheap.p {
        match header.unwrap(&Passphrase::new(PASSPHRASE)) {
            Ok(_) | Err(Error::WrongPassphrase | Error::Corrupted { .. } | Error::Invalid { .. }) => {}
            Err(e) => panic!("unwrap failed with an unexpected error: {e:?}"),
        }
    }
}

/// Decode a feed entry. On success: `verify` and `open` return without panicking,
/// and the entry re-encodes to exactly the input bytes. Entries are named by the
/// blake3 hash of their bytes (the feed chain, deduplication) while the signature
/// covers the decoded header, so two encodings of one entry must not both decode.
pub fn check_envelope(data: &[u8]) {
    // The header's first fields read alone (`peek_feed`) never panic, and
    // name what a full decode finds.
    let peeked = Envelope::peek_feed(data);
    let Ok(env) = Envelope::decode(data) else {
        return;
    };
    assert_eq!(
        peeked,
        Some((env.header.device, env.header.seq)),
        "the header read alone names another feed or position"
    );
    let verified = env.verify();
    let opened = env.open(channel_keys());
    let texts = env.open_texts(channel_keys());
    if env.pack.is_none() {
        assert!(texts.len() <= env.held_segments());
    }
    let bytes = env.encode();
    assert!(
        bytes == data,
        "an envelope decodes from bytes that are not its encoding \
         (verify: {verified:?}, open ok: {}):\n input:     {data:02x?}\n re-encoded: {bytes:02x?}",
        opened.is_ok(),
    );
    // What a holder may drop (segments, the body) changes neither the hash
    // nor whether the entry verifies.
    let hash = env.hash();
    let mut fewer = env.clone();
    let half: Vec<_> = env.segments.iter().take(env.segments.len() / 2).map(|s| s.id).collect();
    fewer.drop_segments(&half);
    // A member drops one text of a pack (sealed again), anyone the pack.
    let mut repacked = env.clone();
    let first = texts.first().map(|c| c.id());
    let _ = repacked.retain_texts(channel_keys(), |id| Some(*id) != first);
    let mut stripped = env.clone();
    stripped.strip_texts();
    assert!(!stripped.holds_texts());
    let mut stub = env.clone();
    stub.prune_body();
    for cut in [fewer, repacked, stripped, stub] {
        let again = Envelope::decode(&cut.encode()).expect("an entry with parts dropped decodes");
        assert_eq!(again.hash(), hash, "dropping a part changed the entry's hash");
        assert_eq!(
            again.verify().is_ok(),
            verified.is_ok(),
            "dropping a part changed the signature's verdict"
        );
    }
}

/// Decode a text pack's plaintext (what a member sealed: untrusted once
/// opened). What decodes seals into a pack again and opens to the same texts.
pub fn check_text_pack(data: &[u8]) {
    let Ok(texts) = hearth_core::content::decode_pack_plain(data) else {
        return;
    };
    match hearth_core::content::seal_pack(channel_keys(), 0, b"fuzz header", &texts).expect("a pack seals") {
        Some(p) => assert_eq!(
            hearth_core::content::open_pack(channel_keys(), 0, b"fuzz header", &p).expect("a sealed pack opens"),
            texts,
            "a pack does not open to what it sealed"
        ),
        None => assert!(texts.is_empty(), "texts without a pack"),
    }
}

/// A format 5 pack's plaintext (any member can seal one): one that decodes
/// seals and opens back to itself against its root, and dropping texts
/// keeps the root.
pub fn check_text_pack_v5(data: &[u8]) {
    use hearth_core::textpack::TextPack;
    let Ok(pack) = TextPack::decode_plain(data) else {
        return;
    };
    let Some(root) = pack.root() else {
        // A text with no key to check it by: nothing opens against it.
        return;
    };
    let key = channel_keys().sealing_key(0).expect("generation 0");
    let sealed = pack
        .seal(key, b"fuzz header", flate2::Compression::fast())
        .expect("a pack seals");
    let (back, _) = TextPack::open(channel_keys(), 0, b"fuzz header", &sealed, &root).expect("a sealed pack opens");
    assert!(back == pack, "a pack does not open to what it sealed");
    let fewer = pack.retain(|op| op % 2 == 0);
    assert_eq!(fewer.root(), Some(root), "dropping texts moved the root");
    assert!(fewer.held() <= pack.held());
}

/// Decode a change from the author's feed (as the author), apply it to a fresh epoch
/// document and view it. A document that accepted the change must also snapshot and
/// reload to the same view, since the store snapshots whatever sync delivered.
pub fn check_change(data: &[u8]) {
    // As the sealed body of a format 6 entry holds it: stripped of its
    // framing and actor, rebuilt for the entry's device.
    if let Ok(chunk) = hearth_core::unstrip_change(data, &AUTHOR_DEVICE.0) {
        check_change_chunk(&chunk);
    }
    check_change_chunk(data);
}

fn check_change_chunk(data: &[u8]) {
    let Ok(change) = decode_change(data, &AUTHOR_DEVICE, &author().user()) else {
        return;
    };
    let mut doc = EpochDoc::new(EPOCH, &LOCAL_DEVICE);
    if doc.apply_remote(vec![change]).is_err() {
        return;
    }
    let devices = devices();
    let view = doc.view(&devices);
    let snapshot = doc.save().expect("a document with no staged ops saves");
    let mut reloaded = EpochDoc::load(EPOCH, &snapshot, &LOCAL_DEVICE)
        .expect("the snapshot of a document that accepted a change loads");
    assert_eq!(reloaded.view(&devices), view, "view changed across save and load");
}

/// Two changes of the author's feed, one after the other: `leb128 length |
/// first | second`, each stripped as a format 6 entry holds it. Applied to a
/// fresh epoch document one call each, in order and in reverse order, and
/// in one call together: whatever it accepts must snapshot and reload to
/// the same view (a change whose ops overlap its predecessor's applied and
/// left the snapshot unloadable).
pub fn check_change_pair(data: &[u8]) {
    let Some((len, n)) = hearth_core::read_leb128(data) else {
        return;
    };
    let Some(split) = usize::try_from(len)
        .ok()
        .and_then(|l| l.checked_add(n))
        .filter(|&e| e <= data.len())
    else {
        return;
    };
    let decode = |bytes: &[u8]| {
        let chunk = hearth_core::unstrip_change(bytes, &AUTHOR_DEVICE.0).ok()?;
        decode_change(&chunk, &AUTHOR_DEVICE, &author().user()).ok()
    };
    let (Some(first), Some(second)) = (decode(&data[n..split]), decode(&data[split..])) else {
        return;
    };
    let devices = devices();
    let orders = [
        vec![vec![first.clone()], vec![second.clone()]],
        vec![vec![second.clone()], vec![first.clone()]],
        vec![vec![first, second]],
    ];
    for batches in orders {
        let mut doc = EpochDoc::new(EPOCH, &LOCAL_DEVICE);
        for batch in batches {
            if doc.apply_remote(batch).is_err() {
                break;
            }
        }
        if doc.is_broken() {
            continue;
        }
        let view = doc.view(&devices);
        let snapshot = doc.save().expect("a document with no staged ops saves");
        let mut reloaded = EpochDoc::load(EPOCH, &snapshot, &LOCAL_DEVICE)
            .expect("the snapshot of a document that accepted two changes loads");
        assert_eq!(reloaded.view(&devices), view, "view changed across save and load");
    }
}

/// Decode a fork proof (from a feed log, where a rebuild reads it back). On
/// success it re-encodes to exactly the input and its check names the feed
/// of both entries.
pub fn check_fork_proof(data: &[u8]) {
    let Ok((proof, fork)) = hearth_core::ForkProof::decode(data) else {
        return;
    };
    assert_eq!(
        proof.encode(),
        data,
        "a fork proof decodes from bytes that are not its encoding"
    );
    assert_eq!(proof.check().expect("a decoded proof checks"), fork);
    let first = Envelope::decode(&proof.first).expect("a checked proof's first entry decodes");
    assert_eq!((first.header.wire, first.header.device), (fork.wire, fork.device));
}

/// Decode a device certificate (it travels with feeds, from any peer). On
/// success it re-encodes to the input, and a chain of it alone either fails
/// to verify or certifies a device whose id is its key's (or a kept id, never
/// a keyed one, bound by the user key itself).
pub fn check_device_cert(data: &[u8]) {
    use hearth_core::device::{DeviceCert, Issuer, device_id_of, device_id_v2, is_keyed_id, verify_chain};
    let Ok(cert) = DeviceCert::decode(data) else {
        return;
    };
    assert_eq!(
        cert.encode(),
        data,
        "a certificate decodes from bytes that are not its encoding"
    );
    if let Ok(body) = verify_chain(std::slice::from_ref(&cert)) {
        assert_eq!(
            body.issuer,
            Issuer::User,
            "a lone certificate verified with a device as issuer"
        );
        if body.legacy {
            assert!(!is_keyed_id(&body.device), "a keyed id bound as a kept one");
        } else {
            assert!(body.device == device_id_of(&body.keys.signing) || body.device == device_id_v2(&body.keys.signing));
        }
    }
}

/// Decode a revocation notice (relays take them from members). On success
/// it re-encodes to the input; when it verifies, the revoking device is not
/// the revoked one and its chain verifies.
pub fn check_revocation_notice(data: &[u8]) {
    use hearth_core::member::RevocationNotice;
    let Ok(n) = RevocationNotice::decode(data) else {
        return;
    };
    assert_eq!(
        n.encode(),
        data,
        "a notice decodes from bytes that are not its encoding"
    );
    if let Ok(user) = n.verify() {
        let by = hearth_core::device::verify_chain(&n.by).expect("a verified notice's chain verifies");
        assert_eq!(by.user, user);
        assert_ne!(by.device, n.device, "a device revoked itself");
    }
}

/// Decode a relay certificate and a removal notice (relays take both from
/// peers and keep them): strict and canonical; a certificate that verifies
/// has a chain that verifies, of the user it names.
pub fn check_peer_proofs(data: &[u8]) {
    use hearth_core::peer::{RelayCert, RemovalNotice};
    if let Ok(c) = RelayCert::decode(data) {
        assert_eq!(
            c.encode(),
            data,
            "a relay certificate decodes from bytes that are not its encoding"
        );
        if let Ok(by) = c.verify() {
            let body = hearth_core::device::verify_chain(&c.chain).expect("a verified certificate's chain verifies");
            assert_eq!((body.user, body.device), (by.user, by.device));
        }
    }
    if let Ok(n) = RemovalNotice::decode(data) {
        assert_eq!(
            n.encode(),
            data,
            "a removal decodes from bytes that are not its encoding"
        );
        assert!(n.check().is_ok());
        for (d, upto) in &n.cuts {
            assert_eq!(n.cut(d), Some(*upto));
        }
    }
    if let Ok(d) = hearth_core::peer::TextDrop::decode(data) {
        assert_eq!(
            d.encode(),
            data,
            "a text drop decodes from bytes that are not its encoding"
        );
        // Applied to any bytes (as a relay applies it to a row): no panic.
        let _ = d.apply(data);
    }
    if let Ok(n) = RemovalNotice::decode_kept(data) {
        // What a relay reads from its own log and rows (format 7 too).
        assert!(n.check().is_ok());
        if RemovalNotice::decode(data).is_ok() {
            assert_eq!(n.encode(), data);
        }
    }
    if let Ok(n) = hearth_core::peer::RemovedNotice::decode(data) {
        assert_eq!(
            n.encode(),
            data,
            "a notice of a removal decodes from bytes that are not its encoding"
        );
        if let Ok(by) = n.verify() {
            assert_eq!(
                by.device, n.op.device,
                "a notice verifies for another device than its op's"
            );
        }
    }
}

/// Decode an identity record. On success it re-encodes to the same identity.
pub fn check_identity(data: &[u8]) {
    let Ok(id) = Identity::decode(data) else {
        return;
    };
    let again = Identity::decode(&id.encode()).expect("an encoded identity decodes");
    assert_eq!(again.user(), id.user());
    assert_eq!(again.device(), id.device());
    assert_eq!(again.name(), id.name());
    assert_eq!(again.former(), id.former());
}

/// Decode a channel record. On success it re-encodes to the same channel.
pub fn check_channel_record(data: &[u8]) {
    let Ok(keys) = ChannelRecord::decode(data) else {
        return;
    };
    let again = ChannelRecord::decode(&ChannelRecord::encode(&keys)).expect("an encoded channel record decodes");
    assert_eq!(again.id(), keys.id());
    assert_eq!(again.wire(), keys.wire());
}

/// A copy of `data` with the checksum of every automerge chunk recomputed (the
/// first four bytes of `sha256(type | leb128(len) | chunk data)`), or `None` if
/// nothing changed. As for the header, an attacker computes checksums at will;
/// without this the fuzzer would never get past the first chunk header.
fn with_automerge_checksums_fixed(data: &[u8]) -> Option<Vec<u8>> {
    use hearth_core::{CHUNK_MAGIC, chunk_checksum, read_leb128};

    let mut fixed = data.to_vec();
    let mut at = 0;
    while fixed.len() >= at + 9 && fixed[at..at + 4] == CHUNK_MAGIC {
        let kind = fixed[at + 8];
        let (len, leb_len) = read_leb128(&fixed[at + 9..])?;
        let start = at + 9 + leb_len;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        if end > fixed.len() {
            break;
        }
        let sum = chunk_checksum(kind, &fixed[start..end]);
        fixed[at + 4..at + 8].copy_from_slice(&sum);
        at = end;
    }
    (fixed != data).then_some(fixed)
}

/// Load an epoch snapshot and view it (also with its chunk checksums fixed).
pub fn check_snapshot(data: &[u8]) {
    snapshot_once(data);
    if let Some(fixed) = with_automerge_checksums_fixed(data) {
        snapshot_once(&fixed);
    }
}

fn snapshot_once(data: &[u8]) {
    if let Ok(mut doc) = EpochDoc::load(EPOCH, data, &LOCAL_DEVICE) {
        doc.view(&devices());
    }
}

/// The link secret the link bundle seeds are sealed under.
pub const LINK_SECRET: [u8; 32] = [0x5a; 32];

/// The key a link bundle is sealed with (as `hearth_core::LinkBundle` derives it).
pub fn link_bundle_key() -> SecretKey {
    SecretKey::from_bytes(*blake3::keyed_hash(&LINK_SECRET, b"hearth v1 link bundle key").as_bytes())
}

/// A link bundle: the input is the bundle's plaintext, sealed here under the
/// fixed link secret so that the fuzzer reaches the decoder behind the AEAD;
/// the input is also tried as sealed bytes as they arrive. Whatever opens
/// must seal and open again to the same bundle.
pub fn check_link_bundle(data: &[u8]) {
    let secret = SecretKey::from_bytes(LINK_SECRET);
    let _ = LinkBundle::open(&secret, data);
    let Ok(sealed) = hearth_core::seal(&link_bundle_key(), b"hearth v1 link bundle", data) else {
        return;
    };
    let Ok(bundle) = LinkBundle::open(&secret, &sealed) else {
        return;
    };
    let again = LinkBundle::open(&secret, &bundle.seal(&secret).expect("an opened bundle seals"))
        .expect("a sealed bundle opens");
    assert_eq!(again.chain, bundle.chain);
    assert_eq!(again.name, bundle.name);
    assert_eq!(
        again.channels.iter().map(|k| k.wire()).collect::<Vec<_>>(),
        bundle.channels.iter().map(|k| k.wire()).collect::<Vec<_>>()
    );
}

/// Membership ops and the roster fold: the input is a list of frames
/// `[author][device][n][len][body bytes; len]`, each decoded as a
/// [`hearth_core::MemberBody`] (authors and devices from small sets, so that
/// ops name each other). The fold must not panic, must not depend on the
/// order of the ops, and every op must end up standing, refused or waiting.
pub fn check_member_ops(data: &[u8]) {
    use hearth_core::member::{MemberOp, OpKey};
    use hearth_core::{MemberBody, Roster, UserId};
    let mut ops = Vec::new();
    let mut rest = data;
    while let [author, device, n, len, tail @ ..] = rest {
        let len = (*len as usize).min(tail.len());
        let (body, next) = tail.split_at(len);
        rest = next;
        let Ok(body) = MemberBody::decode(body) else {
            continue;
        };
        assert_eq!(
            MemberBody::decode(&body.encode()).expect("an encoded body decodes"),
            body
        );
        ops.push(MemberOp {
            key: OpKey {
                device: DeviceId([device % 4; 16]),
                n: u32::from(*n % 8),
            },
            author: UserId([author % 4; 32]),
            body,
        });
    }
    let roster = Roster::fold(ops.clone());
    let mut reversed = ops.clone();
    reversed.reverse();
    assert_eq!(
        Roster::fold(reversed),
        roster,
        "the roster depends on the order of its ops"
    );
    for user in roster.roles.keys() {
        assert!(!roster.removed.contains_key(user), "a user both named and removed");
    }
    for invite in roster.invites.values() {
        assert!(
            invite.uses == 0 || invite.used.len() <= invite.uses as usize,
            "an invite let in more users than its uses"
        );
    }
    if roster.genesis.is_some() {
        assert!(
            roster.roles.values().any(|r| *r == hearth_core::Role::Owner),
            "a started roster without an owner"
        );
    }
}

/// The device the key package seeds are sealed to (fixed keys).
pub fn fuzz_device_keys() -> hearth_core::device::DeviceKeys {
    let mut record = vec![1u8];
    record.extend([0x61; 32]);
    record.extend([0x62; 32]);
    hearth_core::device::DeviceKeys::decode(&record).expect("fixed device keys decode")
}

/// The wire id the key package seeds are sealed under.
pub const PACKAGE_WIRE: hearth_core::WireId = hearth_core::WireId([0x63; 32]);

/// Decode a key package; on success it re-encodes to the same package, and
/// what it opens for the fixed device is what it says it seals to it.
pub fn check_key_package(data: &[u8]) {
    use hearth_core::KeyPackage;
    let Ok(p) = KeyPackage::decode(data) else {
        return;
    };
    assert_eq!(KeyPackage::decode(&p.encode()).expect("an encoded package decodes"), p);
    let keys = fuzz_device_keys();
    let device = keys.device_id();
    for (generation, _) in p.open_for(&PACKAGE_WIRE, &device, &keys) {
        assert!(
            generation >= 1 && p.reaches(generation, &device),
            "opened a key not sealed to it"
        );
    }
}
