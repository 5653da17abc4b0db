//! Revocation notices (a relay takes them from any member that proved the
//! channel): `RevocationNotice::decode` and `verify`. The check lives in `hearth_fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(init: hearth_fuzz::init(), |data: &[u8]| hearth_fuzz::check_revocation_notice(data));
