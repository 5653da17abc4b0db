//! The store's journal file: `hearth_store::decode_journal`.
#![no_main]

#[path = "../src/journal.rs"]
mod journal;

libfuzzer_sys::fuzz_target!(init: hearth_fuzz::init(), |data: &[u8]| journal::check_journal(data));
