//! The check of the `journal` target: the store's write-ahead journal file.
//! Kept out of `lib.rs` (which hearth-core's tests include) because it needs
//! hearth-store; hearth-store's `tests/fuzz_corpus.rs` includes this file.

use hearth_core::SecretKey;
use hearth_store::decode_journal;

/// The key the seed journals are sealed with.
pub const KEY: [u8; 32] = [0x4a; 32];

/// Decode a journal: never panics, returns records in strict sequence, never
/// claims more bytes than it was given, and decoding its own readable prefix
/// gives the same records.
pub fn check_journal(data: &[u8]) {
    let key = SecretKey::from_bytes(KEY);
    let d = decode_journal(&key, data);
    assert!(d.valid_len <= data.len());
    for w in d.records.windows(2) {
        assert_eq!(w[0].seq + 1, w[1].seq, "records out of sequence");
    }
    let again = decode_journal(&key, &data[..d.valid_len]);
    assert_eq!(
        again.records, d.records,
        "the readable prefix decodes to the same records"
    );
}
