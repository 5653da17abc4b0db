//! The check of the `early_files` target: the flag file an early run leaves
//! in the store directory and the mark it keeps on a tmpfs
//! (`store/src/early.rs`), both read by the open after an unclean shutdown.
//! Kept out of `lib.rs` (which hearth-core's tests include) because it needs
//! hearth-store; hearth-store's `tests/fuzz_corpus.rs` includes this file.

use hearth_store::{decode_early_flag, decode_early_mark, encode_early_flag, encode_early_slot};

/// The run of the mark half of an input.
pub const RUN: [u8; 16] = [7; 16];

/// Read the input as a flag and as a mark of run [`RUN`]: never panics; a
/// flag read back encodes to the bytes it was read from, and a mark read
/// back is its slots, byte for byte.
pub fn check_early(data: &[u8]) {
    if let Some(flag) = decode_early_flag(data) {
        let again = encode_early_flag(&flag);
        assert_eq!(&data[..again.len().min(data.len())], &again[..], "the flag re-encodes");
    }
    if let Some(slots) = decode_early_mark(&RUN, data) {
        let again: Vec<u8> = slots
            .iter()
            .flat_map(|(wire, seq)| encode_early_slot(&RUN, wire, *seq))
            .collect();
        assert_eq!(again, data, "a mark read back is its slots");
    }
}
