//! Automerge changes from a feed: `decode_change`, apply, view, snapshot. The check lives in `hearth_fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(init: hearth_fuzz::init(), |data: &[u8]| hearth_fuzz::check_change(data));
