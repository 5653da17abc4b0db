//! An early run's flag file and tmpfs mark: `decode_early_flag`,
//! `decode_early_mark`. The check lives in `fuzz/src/early.rs`.
#![no_main]

#[path = "../src/early.rs"]
mod early;

libfuzzer_sys::fuzz_target!(init: hearth_fuzz::init(), |data: &[u8]| early::check_early(data));
