//! Sync response frames: `Response::decode`, caps, canonical encoding.
//! The check lives in `src/sync.rs`.
#![no_main]

#[path = "../src/sync.rs"]
#[allow(dead_code, reason = "each target calls one of the checks")]
mod sync;

libfuzzer_sys::fuzz_target!(init: hearth_fuzz::init(), |data: &[u8]| sync::check_response(data));
