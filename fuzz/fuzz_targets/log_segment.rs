//! A feed-log segment: `hearth_store::decode_log_segment`.
#![no_main]

#[path = "../src/log.rs"]
mod log;

libfuzzer_sys::fuzz_target!(init: hearth_fuzz::init(), |data: &[u8]| log::check_log_segment(data));
