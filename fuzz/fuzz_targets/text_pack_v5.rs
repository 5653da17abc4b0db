//! Text packs (entry format 5): the plaintext a member sealed, decoded. The check lives in `hearth_fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(init: hearth_fuzz::init(), |data: &[u8]| hearth_fuzz::check_text_pack_v5(data));
