//! Automerge chunk framing, for changes that arrive compressed.
//!
//! ```text
//! chunk = magic [85 6f 4a 83] | checksum [4] | type u8 | leb128 length | data
//! type 0 = document, 1 = change, 2 = compressed change (data is DEFLATE of a
//! change's data), 3 = bundle
//! checksum = sha256(type | leb128 length | data)[..4], of the *uncompressed* data
//! ```
//!
//! automerge 0.12 inflates a compressed change with no limit (a 96 KiB entry
//! can carry gigabytes of zeros), and keeps the compressed bytes it was given
//! beside the ops it decoded: a crafted compressed change (trailing bytes
//! after the DEFLATE stream) applied fine and then left its epoch's snapshot
//! unloadable ("bad checksum"; fuzz/artifacts/change/crash-issue8-*). So a
//! compressed change is inflated here, under [`MAX_CHANGE_BYTES`] and with
//! nothing after the stream, and automerge only ever sees plain changes.

use std::borrow::Cow;
use std::io::Read;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The largest change accepted once inflated. Hearth closes a change after
/// about 40 KiB of staged text (store's entry budget), so an honest change is
/// far below this.
pub const MAX_CHANGE_BYTES: usize = 1024 * 1024;

/// The magic bytes that open every automerge chunk.
pub const CHUNK_MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
const MAGIC: [u8; 4] = CHUNK_MAGIC;
const TYPE_DOCUMENT: u8 = 0;
const TYPE_CHANGE: u8 = 1;
const TYPE_COMPRESSED: u8 = 2;

fn bad(why: &'static str) -> Error {
    Error::corrupted("automerge change", why)
}

/// The plain form of a change chunk: the bytes themselves if the chunk is not
/// compressed (automerge checks the rest), else the chunk inflated under
/// [`MAX_CHANGE_BYTES`], with its checksum checked against the inflated data.
pub fn plain_change(bytes: &[u8]) -> Result<Cow<'_, [u8]>> {
    if bytes.len() > MAX_CHANGE_BYTES {
        return Err(bad("too large"));
    }
    if bytes.len() < 9 || bytes[..4] != MAGIC {
        return Err(bad("not an automerge chunk"));
    }
    // automerge parses a chunk of any type in full before it says that it is
    // not a change, and a bundle chunk (type 3) of 231 bytes made it reserve
    // 2 GiB (fuzz/corpus/change/crash-bundle-delta-column-2gib): only change
    // chunks reach it.
    match bytes[8] {
        TYPE_CHANGE => return Ok(Cow::Borrowed(bytes)),
        TYPE_COMPRESSED => {}
        _ => return Err(bad("not a change chunk")),
    }
    let (len, leb) = read_leb128(&bytes[9..]).ok_or(bad("malformed chunk length"))?;
    let start = 9 + leb;
    if usize::try_from(len).ok() != Some(bytes.len() - start) {
        return Err(bad("chunk length does not match its bytes"));
    }
    let mut decoder = flate2::bufread::DeflateDecoder::new(&bytes[start..]);
    let mut data = Vec::new();
    (&mut decoder)
        .take(MAX_CHANGE_BYTES as u64 + 1)
        .read_to_end(&mut data)
        .map_err(|_| bad("compressed data does not inflate"))?;
    if data.len() > MAX_CHANGE_BYTES {
        return Err(bad("inflates beyond the size limit"));
    }
    if !decoder.into_inner().is_empty() {
        return Err(bad("bytes after the compressed data"));
    }
    let header = chunk_header(TYPE_CHANGE, &data);
    if header[4..8] != bytes[4..8] {
        return Err(bad("checksum does not match the inflated data"));
    }
    let mut plain = header;
    plain.extend_from_slice(&data);
    Ok(Cow::Owned(plain))
}

/// Changes larger than this are compressed ([`compress_change`]), as
/// automerge's own `Change::bytes` does.
pub const DEFLATE_MIN_SIZE: usize = 256;

/// The DEFLATE level of [`compress_change`]. automerge's `Change::bytes`
/// uses 6; 2 took a 200-post change (12.9 KB of op columns) down to 1,210
/// bytes in 27 µs against 1,150 in 50 to 70 µs (docs/reach.md), on the
/// path of the post that fills a lone writer's entry.
const CHANGE_LEVEL: u32 = 2;

thread_local! {
    /// One DEFLATE state per thread, reset for each change: a fresh one
    /// sets up (and faults in) a few hundred KiB each time.
    static DEFLATE: std::cell::RefCell<Option<flate2::Compress>> = const { std::cell::RefCell::new(None) };
}

/// A plain change chunk (`raw`) as a feed entry carries it: as it is up to
/// [`DEFLATE_MIN_SIZE`] bytes, else a compressed change chunk (type 2: its
/// data deflated, the checksum the plain chunk's). Every reader inflates it
/// ([`plain_change`]), so the DEFLATE stream need not be automerge's byte for
/// byte; it is the same for the same change (one level, a state reset for
/// each). `raw` not being a plain change chunk is a bug of the caller: it is
/// returned as it is.
pub fn compress_change(raw: &[u8]) -> Vec<u8> {
    if raw.len() <= DEFLATE_MIN_SIZE || raw.len() < 9 || raw[..4] != MAGIC || raw[8] != TYPE_CHANGE {
        return raw.to_vec();
    }
    let Some((_, leb)) = read_leb128(&raw[9..]) else {
        return raw.to_vec();
    };
    let data = &raw[9 + leb..];
    let mut deflated = Vec::with_capacity(data.len() / 4 + 64);
    let done = DEFLATE.with(|cell| {
        let mut cell = cell.borrow_mut();
        let c = cell.get_or_insert_with(|| flate2::Compress::new(flate2::Compression::new(CHANGE_LEVEL), false));
        c.reset();
        loop {
            deflated.reserve(data.len() / 4 + 64);
            let read = usize::try_from(c.total_in()).unwrap_or(usize::MAX);
            match c.compress_vec(
                &data[read.min(data.len())..],
                &mut deflated,
                flate2::FlushCompress::Finish,
            ) {
                Ok(flate2::Status::StreamEnd) => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    });
    if !done {
        return raw.to_vec();
    }
    let mut out = Vec::with_capacity(deflated.len() + 16);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&raw[4..8]);
    out.push(TYPE_COMPRESSED);
    out.extend_from_slice(&write_leb128(deflated.len() as u64));
    out.extend_from_slice(&deflated);
    out
}

/// An uncompressed change chunk by `actor` without what an entry of format
/// 6 rebuilds ([`unstrip_change`]): its magic, checksum, type and length
/// (the entry's body says its length), and its actor (the entry's device):
/// `leb128 deps count | deps | the rest after the actor`, 27 bytes fewer.
/// `None` for any other chunk (compressed, by another actor, malformed):
/// such a chunk is kept whole.
pub fn strip_change(chunk: &[u8], actor: &[u8; 16]) -> Option<Vec<u8>> {
    if chunk.len() < 9 || chunk[..4] != MAGIC || chunk[8] != TYPE_CHANGE {
        return None;
    }
    let (len, leb) = read_leb128(&chunk[9..])?;
    let data = &chunk[9 + leb..];
    if usize::try_from(len).ok()? != data.len() || chunk_checksum(TYPE_CHANGE, data) != chunk[4..8] {
        return None;
    }
    let (deps, n) = read_leb128(data)?;
    let deps_end = usize::try_from(deps).ok()?.checked_mul(32)?.checked_add(n)?;
    let after = data.get(deps_end..)?;
    let (&16, rest) = after.split_first()? else {
        return None;
    };
    if rest.get(..16)? != actor {
        return None;
    }
    Some([&data[..deps_end], &rest[16..]].concat())
}

/// The change chunk [`strip_change`] took `stripped` from, for `actor`.
/// Malformed bytes give a chunk automerge refuses, or an error here.
pub fn unstrip_change(stripped: &[u8], actor: &[u8; 16]) -> Result<Vec<u8>> {
    let (deps, n) = read_leb128(stripped).ok_or(bad("malformed dependency count"))?;
    let deps_end = usize::try_from(deps)
        .ok()
        .and_then(|d| d.checked_mul(32)?.checked_add(n))
        .filter(|&end| end <= stripped.len())
        .ok_or(bad("dependencies beyond the change"))?;
    if stripped.len() + 17 > MAX_CHANGE_BYTES {
        return Err(bad("too large"));
    }
    let mut data = Vec::with_capacity(stripped.len() + 17);
    data.extend_from_slice(&stripped[..deps_end]);
    data.push(16);
    data.extend_from_slice(actor);
    data.extend_from_slice(&stripped[deps_end..]);
    let mut chunk = chunk_header(TYPE_CHANGE, &data);
    chunk.extend_from_slice(&data);
    Ok(chunk)
}

/// `chunk`, an uncompressed change chunk by `actor`, with its seq and start
/// op set to `seq` and `start_op` (`None`: left as they were) and its
/// checksum made again: a change as a member that signs what it likes may
/// write it (tests and fuzz seeds craft hostile changes with it). `None`
/// for a chunk [`strip_change`] does not take.
pub fn restamp_change(chunk: &[u8], actor: &[u8; 16], seq: Option<u64>, start_op: Option<u64>) -> Option<Vec<u8>> {
    let stripped = strip_change(chunk, actor)?;
    let (deps, n) = read_leb128(&stripped)?;
    let at = usize::try_from(deps).ok()?.checked_mul(32)?.checked_add(n)?;
    let (old_seq, seq_len) = read_leb128(stripped.get(at..)?)?;
    let (old_start, start_len) = read_leb128(stripped.get(at + seq_len..)?)?;
    let mut out = stripped[..at].to_vec();
    out.extend_from_slice(&write_leb128(seq.unwrap_or(old_seq)));
    out.extend_from_slice(&write_leb128(start_op.unwrap_or(old_start)));
    out.extend_from_slice(&stripped[at + seq_len + start_len..]);
    unstrip_change(&out, actor).ok()
}

/// Check that `bytes` is a sequence of whole document (type 0) or change
/// (type 1 or 2) chunks, before automerge loads it as a document. automerge
/// parses every chunk in full, and a crafted bundle chunk (type 3) makes it
/// reserve gigabytes (see [`plain_change`]).
/// The error says what is wrong.
pub fn check_document_chunks(bytes: &[u8]) -> std::result::Result<(), &'static str> {
    let mut rest = bytes;
    if rest.is_empty() {
        return Err("empty");
    }
    while !rest.is_empty() {
        let bad = Err;
        if rest.len() < 9 || rest[..4] != MAGIC {
            return bad("not an automerge chunk");
        }
        if !matches!(rest[8], TYPE_DOCUMENT | TYPE_CHANGE | TYPE_COMPRESSED) {
            return bad("a chunk that is neither a document nor a change");
        }
        let Some((len, leb)) = read_leb128(&rest[9..]) else {
            return bad("malformed chunk length");
        };
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| (9 + leb).checked_add(len))
            .filter(|&end| end <= rest.len());
        let Some(end) = end else {
            return bad("chunk length beyond its bytes");
        };
        rest = &rest[end..];
    }
    Ok(())
}

/// magic | checksum | type | leb128 length, for `data` of chunk type `kind`.
fn chunk_header(kind: u8, data: &[u8]) -> Vec<u8> {
    let len = write_leb128(data.len() as u64);
    let mut out = Vec::with_capacity(9 + len.len() + data.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&chunk_checksum(kind, data));
    out.push(kind);
    out.extend_from_slice(&len);
    out
}

/// An automerge chunk's checksum: `sha256(type | leb128(len) | data)[..4]`.
pub fn chunk_checksum(kind: u8, data: &[u8]) -> [u8; 4] {
    let mut hasher = Sha256::new();
    hasher.update([kind]);
    hasher.update(write_leb128(data.len() as u64));
    hasher.update(data);
    let hash = hasher.finalize();
    [hash[0], hash[1], hash[2], hash[3]]
}

/// Read an unsigned LEB128 integer: its value and its length in bytes.
pub fn read_leb128(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, b) in bytes.iter().take(10).enumerate() {
        value |= u64::from(b & 0x7f).checked_shl(7 * i as u32)?;
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Write an unsigned LEB128 integer.
pub fn write_leb128(mut value: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(10);
    loop {
        let b = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn compressed(data: &[u8], trailing: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        let mut deflated = enc.finish().unwrap();
        deflated.extend_from_slice(trailing);
        let plain_header = chunk_header(TYPE_CHANGE, data);
        let len = write_leb128(deflated.len() as u64);
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&plain_header[4..8]);
        out.push(TYPE_COMPRESSED);
        out.extend_from_slice(&len);
        out.extend_from_slice(&deflated);
        out
    }

    /// A change compressed by [`compress_change`] inflates back to the
    /// plain chunk (through [`plain_change`] and through automerge itself),
    /// the same bytes each time whatever was compressed in between, and is
    /// smaller than automerge's own level-6 stream by at most a few percent;
    /// a change up to 256 bytes, or anything else, stays as it is.
    #[test]
    fn a_change_compressed_here_inflates_to_the_change() {
        use automerge::transaction::Transactable;
        let mut doc = automerge::AutoCommit::new().with_actor(automerge::ActorId::from(&[5u8; 16][..]));
        for i in 0..300 {
            doc.put(automerge::ROOT, format!("m:{i:040}"), i as i64).unwrap();
        }
        doc.commit();
        let mut change = doc.get_last_local_change().unwrap();
        let raw = change.raw_bytes().to_vec();
        let theirs = change.bytes().into_owned();
        let ours = compress_change(&raw);
        assert_eq!(ours[8], TYPE_COMPRESSED);
        assert_eq!(plain_change(&ours).unwrap().as_ref(), &raw[..]);
        assert_eq!(automerge::Change::try_from(&ours[..]).unwrap().hash(), change.hash());
        assert!(
            ours.len() * 100 <= theirs.len() * 115,
            "{} against {}",
            ours.len(),
            theirs.len()
        );
        assert_eq!(compress_change(&raw[..]), ours);
        let _ = compress_change(&theirs);
        assert_eq!(compress_change(&raw), ours, "the same after another input");
        for small in [
            &raw[..0],
            &raw[..100],
            b"not a chunk at all, but long enough to be compressed if it were",
        ] {
            assert_eq!(compress_change(small), small);
        }
        assert_eq!(compress_change(&theirs), theirs, "compressed already");
    }

    #[test]
    fn a_restamped_change_says_the_seq_and_start_op_it_was_given() {
        use automerge::transaction::Transactable;
        let actor = [5u8; 16];
        let mut doc = automerge::AutoCommit::new().with_actor(automerge::ActorId::from(&actor[..]));
        doc.put(automerge::ROOT, "k", "v").unwrap();
        doc.commit();
        let chunk = doc.get_last_local_change().unwrap().bytes().into_owned();
        assert_eq!(restamp_change(&chunk, &actor, None, None).unwrap(), chunk);
        // Numbers of one and of several leb128 bytes.
        for (seq, start) in [(7, 300), (200, 2)] {
            let bytes = restamp_change(&chunk, &actor, Some(seq), Some(start)).unwrap();
            let change = automerge::Change::try_from(&bytes[..]).unwrap();
            assert_eq!((change.seq(), change.start_op().get()), (seq, start));
        }
        assert!(restamp_change(&chunk, &[6; 16], None, Some(1)).is_none());
    }

    #[test]
    fn a_stripped_change_comes_back_as_the_chunk_automerge_wrote() {
        use automerge::transaction::Transactable;
        let actor = [5u8; 16];
        let mut doc = automerge::AutoCommit::new().with_actor(automerge::ActorId::from(&actor[..]));
        for i in 0..3 {
            doc.put(automerge::ROOT, format!("m:{i}"), "text").unwrap();
            doc.commit();
        }
        let chunk = doc.get_last_local_change().unwrap().bytes().into_owned();
        assert_eq!(chunk[8], TYPE_CHANGE);
        let stripped = strip_change(&chunk, &actor).unwrap();
        assert_eq!(
            chunk.len() - stripped.len(),
            4 + 4 + 1 + 1 + 17,
            "magic, checksum, type, length, actor"
        );
        let back = unstrip_change(&stripped, &actor).unwrap();
        assert_eq!(back, chunk);
        automerge::Change::try_from(&back[..]).unwrap();
        // Another actor's change, a compressed one and garbage stay whole;
        // a wrong actor rebuilds a change with another hash.
        assert!(strip_change(&chunk, &[6; 16]).is_none());
        assert!(strip_change(&compressed(&chunk[10..], b""), &actor).is_none());
        assert!(strip_change(b"not a chunk at all", &actor).is_none());
        let other = unstrip_change(&stripped, &[6; 16]).unwrap();
        assert_ne!(
            automerge::Change::try_from(&other[..]).unwrap().hash(),
            automerge::Change::try_from(&chunk[..]).unwrap().hash()
        );
        // Malformed stripped bytes are an error or a chunk automerge refuses.
        assert!(unstrip_change(&[], &actor).is_err());
        assert!(unstrip_change(&[3, 1, 2], &actor).is_err());
        for cut in 0..stripped.len() {
            if let Ok(c) = unstrip_change(&stripped[..cut], &actor) {
                assert!(automerge::Change::try_from(&c[..]).is_err(), "cut at {cut}");
            }
        }
    }

    #[test]
    fn a_compressed_chunk_inflates_to_its_plain_chunk() {
        let data = b"some change data ".repeat(40);
        let chunk = compressed(&data, b"");
        let plain = plain_change(&chunk).unwrap();
        let mut want = chunk_header(TYPE_CHANGE, &data);
        want.extend_from_slice(&data);
        assert_eq!(&*plain, &want[..]);
        // A plain chunk passes as it is.
        assert!(matches!(plain_change(&want).unwrap(), Cow::Borrowed(_)));
    }

    #[test]
    fn only_change_chunks_reach_automerge_as_changes() {
        let data = b"some change data";
        for kind in [TYPE_DOCUMENT, 3, 4, 0xff] {
            let mut chunk = chunk_header(kind, data);
            chunk.extend_from_slice(data);
            assert!(plain_change(&chunk).is_err(), "chunk type {kind}");
        }
        assert!(plain_change(b"not a chunk at all").is_err());
        assert!(plain_change(&MAGIC).is_err());
    }

    #[test]
    fn a_document_is_document_and_change_chunks_only() {
        let chunk = |kind: u8, data: &[u8]| {
            let mut c = chunk_header(kind, data);
            c.extend_from_slice(data);
            c
        };
        let mut doc = chunk(TYPE_DOCUMENT, b"doc");
        doc.extend(chunk(TYPE_CHANGE, b"change"));
        assert!(check_document_chunks(&doc).is_ok());
        let mut with_bundle = doc.clone();
        with_bundle.extend(chunk(3, b"bundle"));
        assert!(check_document_chunks(&with_bundle).is_err());
        let mut cut = doc.clone();
        cut.pop();
        assert!(check_document_chunks(&cut).is_err());
        assert!(check_document_chunks(b"").is_err());
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&[0, 0, 0, 0, TYPE_DOCUMENT]);
        huge.extend_from_slice(&write_leb128(u64::MAX));
        assert!(check_document_chunks(&huge).is_err());
    }

    #[test]
    fn bombs_trailing_bytes_and_bad_checksums_are_refused() {
        let bomb = compressed(&vec![0u8; MAX_CHANGE_BYTES + 1], b"");
        assert!(bomb.len() < 4096, "a small chunk that inflates beyond the cap");
        assert!(plain_change(&bomb).is_err());
        assert!(plain_change(&compressed(b"data", b"\x00junk")).is_err());
        let mut c = compressed(b"data data data", b"");
        c[5] ^= 1;
        assert!(plain_change(&c).is_err());
        let mut c = compressed(b"data data data", b"");
        c.pop();
        assert!(plain_change(&c).is_err());
    }
}
