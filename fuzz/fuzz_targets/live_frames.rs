//! Live stream frames: a pusher's (whole and lean entries, rebuilt with a
//! feed table) and a receiver's answer. The check lives in `src/sync.rs`.
#![no_main]

#[path = "../src/sync.rs"]
#[allow(dead_code, reason = "each target calls one of the checks")]
mod sync;

libfuzzer_sys::fuzz_target!(init: hearth_fuzz::init(), |data: &[u8]| sync::check_live(data));
