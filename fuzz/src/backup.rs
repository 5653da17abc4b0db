//! The check of the `backup` target: a backup file (`hearth backup`). Kept
//! out of `lib.rs` (which hearth-core's tests include) because it needs
//! hearth-store; hearth-store's `tests/fuzz_corpus.rs` includes this file.
//!
//! An input is a master key (32 bytes) and then a backup file sealed under
//! it, so that the seeds (real backups) reach past the chunk seal.

use hearth_core::SecretKey;
use hearth_store::check_backup_bytes;

/// Read a backup whole: never panics; what reads whole was read to its last
/// byte, and the same file cut by one byte does not read.
pub fn check_backup_file(data: &[u8]) {
    let Some((key, file)) = data.split_first_chunk::<32>() else {
        return;
    };
    let master = SecretKey::from_bytes(*key);
    if let Ok(info) = check_backup_bytes(&master, file) {
        assert_eq!(
            info.bytes,
            file.len() as u64,
            "a backup that reads whole is read to its end"
        );
        assert!(
            check_backup_bytes(&master, &file[..file.len() - 1]).is_err(),
            "a backup cut short reads whole"
        );
    }
}
