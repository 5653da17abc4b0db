//! The checks of the `sync_request`, `sync_response`, `live_frames` and `ticket`
//! targets: the decoders of bytes a peer sends (sync frames, live stream frames)
//! and of text a user pastes (tickets).
//! Kept out of `lib.rs` (which hearth-core's tests include) because they need
//! hearth-sync; hearth-sync's `tests/fuzz_corpus.rs` includes this file, so it may
//! only use `hearth_sync` and `blake3`, never `libfuzzer-sys`.

use hearth_sync::live::{FeedTable, decode_ack, decode_push, encode_ack};
use hearth_sync::proto::{BATCH_ENTRIES, MAX_BITMAP, MAX_CERTS, MAX_CHANNELS, MAX_NOTICES, Request, Response};
use hearth_sync::ticket::{PREFIX, Ticket};

/// Decode a request frame body. On success it is within its count caps and
/// re-encodes to exactly the input: a frame has one encoding, so a peer cannot
/// make one request look like two (or slip bytes past a hash of the frame).
pub fn check_request(data: &[u8]) {
    let Ok(req) = Request::decode(data) else {
        return;
    };
    match &req {
        Request::Hello { summary, certs, .. } => {
            assert!(summary.len() <= MAX_CHANNELS, "Hello over the channel cap");
            assert!(certs.len() <= MAX_CERTS, "Hello over the certificate cap");
        }
        Request::Push { entries, .. } => assert!(entries.len() <= BATCH_ENTRIES, "Push over the entry cap"),
        Request::Grant { grants, .. } => assert!(grants.len() <= MAX_CHANNELS, "Grant over the channel cap"),
        Request::Revoke {
            notices,
            removals,
            drops,
        } => {
            assert!(
                notices.len() <= MAX_NOTICES && removals.len() <= MAX_NOTICES && drops.len() <= MAX_NOTICES,
                "Revoke over its caps"
            );
            assert!(removals.iter().all(|r| r.check().is_ok()), "a removal out of form");
        }
        _ => {}
    }
    let bytes = req.encode();
    assert!(
        bytes == data,
        "a request decodes from bytes that are not its encoding:\n input:      {data:02x?}\n re-encoded: {bytes:02x?}\n request: {req:?}",
    );
}

/// Decode a response frame body: within its caps, and re-encodes to the input.
pub fn check_response(data: &[u8]) {
    let Ok(resp) = Response::decode(data) else {
        return;
    };
    match &resp {
        Response::Hello {
            matched, differ, certs, ..
        } => {
            assert!(
                matched.len() <= MAX_BITMAP && differ.len() <= MAX_CHANNELS,
                "Hello over the channel cap"
            );
            assert!(certs.len() <= MAX_CERTS, "Hello over the certificate cap");
        }
        Response::Granted { vectors } => assert!(vectors.len() <= MAX_CHANNELS, "Granted over the channel cap"),
        Response::Entries { entries, .. } => assert!(entries.len() <= BATCH_ENTRIES, "Entries over the entry cap"),
        _ => {}
    }
    let bytes = resp.encode();
    assert!(
        bytes == data,
        "a response decodes from bytes that are not its encoding:\n input:      {data:02x?}\n re-encoded: {bytes:02x?}\n response: {resp:?}",
    );
}

/// Decode live stream frames ([`hearth_sync::live`]). `data` whole as a
/// receiver's answer: on success it re-encodes to the input. And as two
/// pusher frames read in turn with one feed table: a primer (its length in
/// the first two bytes, big-endian) and the rest, so that lean entries
/// reach the rebuild with a row to rebuild from. On success a frame gives
/// one channel's entries, within the entry cap, and every rebuilt entry
/// decodes as a whole entry of that channel.
pub fn check_live(data: &[u8]) {
    if let Ok(ack) = decode_ack(data) {
        assert_eq!(
            encode_ack(&ack),
            data,
            "a live answer decodes from bytes that are not its encoding"
        );
    }
    let mut table = FeedTable::default();
    let rest = match data {
        [a, b, rest @ ..] => {
            let n = usize::from(u16::from_be_bytes([*a, *b]));
            if rest.len() >= n {
                check_push(&mut table, &rest[..n]);
                &rest[n..]
            } else {
                rest
            }
        }
        _ => data,
    };
    check_push(&mut table, rest);
}

fn check_push(table: &mut FeedTable, frame: &[u8]) {
    let Ok(hearth_sync::live::Pushed { wire, entries, .. }) = decode_push(table, frame) else {
        return;
    };
    assert!(
        !entries.is_empty() && entries.len() <= BATCH_ENTRIES,
        "a live push outside its count caps"
    );
    for e in &entries {
        if let Ok(env) = hearth_core::Envelope::decode(e) {
            assert_eq!(env.header.wire, wire, "a live push of two channels");
        }
    }
}

/// Decode a ticket twice: `data` as the text a user pasted (when it is UTF-8),
/// and `data` as a ticket body given a valid checksum (see [`ticket_from_body`]).
/// On success the ticket prints back to the trimmed text and decodes to itself.
pub fn check_ticket(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        ticket_once(text);
    }
    ticket_once(&ticket_from_body(data));
}

fn ticket_once(text: &str) {
    let Ok(ticket) = Ticket::decode(text) else {
        return;
    };
    let again = ticket.to_string();
    assert_eq!(
        again,
        text.trim(),
        "a ticket decodes from text that is not its encoding"
    );
    assert_eq!(Ticket::decode(&again).expect("an encoded ticket decodes"), ticket);
}

/// The ticket text for a body (version byte and postcard), with its checksum.
/// The checksum only detects a bad copy (anyone can compute it), so a hostile
/// ticket always carries a valid one; fuzzing only raw text would stop at the
/// checksum and never reach the body decoder. The base32 here is written apart
/// from hearth-sync's, so each checks the other.
pub fn ticket_from_body(body: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut data = body.to_vec();
    data.extend_from_slice(&blake3::hash(body).as_bytes()[..4]);
    let mut text = String::from(PREFIX);
    for chunk in data.chunks(5) {
        let mut block = [0u8; 5];
        block[..chunk.len()].copy_from_slice(chunk);
        let n = block.iter().fold(0u64, |n, &b| (n << 8) | u64::from(b));
        let chars = (chunk.len() * 8).div_ceil(5);
        for i in 0..chars {
            text.push(char::from(ALPHABET[((n >> (35 - 5 * i)) & 31) as usize]));
        }
    }
    text
}
