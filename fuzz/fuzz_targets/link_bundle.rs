//! Link bundles: `LinkBundle::open` (behind and in front of the AEAD). The check lives in `hearth_fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(init: hearth_fuzz::init(), |data: &[u8]| hearth_fuzz::check_link_bundle(data));
