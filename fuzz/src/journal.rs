//! The check of the `journal` target: the store's write-ahead journal file.
//! Kept out of `lib.rs` (which hearth-core's tests include) because it needs
//! hearth-store; hearth-store's `tests/fuzz_corpus.rs` includes this file.

use hearth_core::SecretKey;
use hearth_store::{decode_journal, decode_journal_as_read};

/// The key the seed journals are sealed with.
pub const KEY: [u8; 32] = [0x4a; 32];

/// Decode a journal: never panics, returns records in strict sequence, never
/// claims more bytes than it was given, decoding its own readable prefix
/// gives the same records, and reading it as an open reads the file (4 KiB,
/// then more while the records go on) finds exactly what decoding it whole
/// does.
pub fn check_journal(data: &[u8]) {
    let key = SecretKey::from_bytes(KEY);
    let d = decode_journal(&key, data);
    assert!(d.valid_len <= data.len());
    for w in d.records.windows(2) {
        assert_eq!(w[0].seq + 1, w[1].seq, "records out of sequence");
    }
    assert_eq!(
        decode_journal_as_read(&key, data),
        d,
        "an open's reads find what a whole decode does"
    );
    let again = decode_journal(&key, &data[..d.valid_len]);
    assert_eq!(
        again.records, d.records,
        "the readable prefix decodes to the same records"
    );
}
