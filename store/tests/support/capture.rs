//! A tracing subscriber that writes into memory, for the tests that look at
//! what is traced (shared by the store's and the sync crate's tests).
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

/// Everything the subscriber wrote.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Install the process's global subscriber, with `filter` (as
    /// `RUST_LOG` would give it), writing here. Once per test binary.
    pub fn install(filter: &str) -> Captured {
        let out = Captured::default();
        let writer = out.clone();
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        out
    }

    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    /// The lines written since the last call, kept in `all` too.
    pub fn take(&self, all: &mut String) -> String {
        let lines = String::from_utf8(std::mem::take(&mut *self.0.lock().unwrap())).unwrap();
        all.push_str(&lines);
        lines
    }
}
