//! Fork proofs: `ForkProof::decode` (read back from a feed log). The check lives in `hearth_fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(init: hearth_fuzz::init(), |data: &[u8]| hearth_fuzz::check_fork_proof(data));
