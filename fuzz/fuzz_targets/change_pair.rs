//! Two changes of one writer, applied in order, reversed and together: whatever an
//! epoch document accepts must snapshot and reload. The check lives in `hearth_fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(init: hearth_fuzz::init(), |data: &[u8]| hearth_fuzz::check_change_pair(data));
