//! Automerge changes from a feed: `decode_change`, apply, view, snapshot. The check lives in `hearth_fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(
    // decode_change turns automerge's panics on malformed ops into errors with
    // catch_unwind. libfuzzer-sys's panic hook aborts even on a caught panic, so put
    // the default hook back: an uncaught panic still aborts (in libfuzzer-sys's
    // wrapper) and is reported as a crash.
    init: drop(std::panic::take_hook()),
    |data: &[u8]| hearth_fuzz::check_change(data)
);
