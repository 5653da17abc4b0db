//! A backup file: `hearth_store::check_backup_bytes`.
#![no_main]

#[path = "../src/backup.rs"]
mod backup;

libfuzzer_sys::fuzz_target!(init: hearth_fuzz::init(), |data: &[u8]| backup::check_backup_file(data));
