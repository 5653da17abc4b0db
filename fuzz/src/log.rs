//! The check of the `log_segment` target: a segment of the feed log, the file
//! sled is rebuilt from. Kept out of `lib.rs` (which hearth-core's tests
//! include) because it needs hearth-store; hearth-store's
//! `tests/fuzz_corpus.rs` includes this file.

use hearth_store::{decode_log_segment, encode_log_record, log_segment_head};

/// Decode a segment: never panics, never claims bytes past the input, each
/// record ends after the previous one, and re-encoding what it read gives the
/// readable prefix of the input byte for byte.
pub fn check_log_segment(data: &[u8]) {
    let d = decode_log_segment(data, 1, 0);
    let mut again = log_segment_head(1).to_vec();
    let mut last = again.len() as u64;
    for r in &d.records {
        assert!(r.end > last && r.end as usize <= data.len(), "record ends out of order");
        last = r.end;
        encode_log_record(&mut again, r.kind, &r.body);
    }
    if !d.records.is_empty() {
        assert_eq!(&data[..again.len()], &again[..], "re-encoding gives the same bytes");
    }
    // Reading from a record boundary gives the records after it.
    if let Some(first) = d.records.first() {
        let tail = decode_log_segment(data, 1, first.end);
        assert_eq!(tail.records[..], d.records[1..]);
    }
}
