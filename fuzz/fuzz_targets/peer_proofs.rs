//! Relay certificates and removal notices (a relay takes them from the
//! members that configured it and keeps them): `RelayCert::decode` and
//! `verify`, `RemovalNotice::decode`. The check lives in `hearth_fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(init: hearth_fuzz::init(), |data: &[u8]| hearth_fuzz::check_peer_proofs(data));
