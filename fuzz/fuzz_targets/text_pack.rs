//! Text packs (entry format 4): the plaintext a member sealed, decoded. The check lives in `hearth_fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(init: hearth_fuzz::init(), |data: &[u8]| hearth_fuzz::check_text_pack(data));
