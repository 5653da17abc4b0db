//! The network lab for tests (`tools/netlab/netlab.sh`): network namespaces a
//! test makes, uses and removes itself (on drop, also when it fails). Needs
//! root and nftables (installed with apt-get when missing). Without root a lab
//! test prints why and passes, unless `HEARTH_REQUIRE_NETLAB=1` (CI runs as
//! root and sets it, so there a lab that cannot run is a failure).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// Set to 1 to make a lab test fail instead of skipping.
pub const REQUIRE_ENV: &str = "HEARTH_REQUIRE_NETLAB";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/netlab/netlab.sh")
}

fn run(args: &[&str]) -> Output {
    Command::new("bash")
        .arg(script())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("netlab {args:?}: {e}"))
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "netlab {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A lab of namespaces `NAME-host`; removed on drop.
pub struct Lab {
    name: String,
}

impl Lab {
    /// Make a lab of `topology` (`["nat"]`, `["star", "20"]`), or `None` when
    /// labs cannot run here (the test should return).
    pub fn up(test: &str, topology: &[&str]) -> Option<Lab> {
        let check = run(&["check"]);
        if !check.status.success() {
            let why = String::from_utf8_lossy(&check.stdout).trim().to_string();
            if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
                panic!("lab test {test} cannot run ({REQUIRE_ENV}=1): {why}");
            }
            eprintln!("lab test skipped: {why} ({test}; set {REQUIRE_ENV}=1 to make this a failure)");
            return None;
        }
        ok(&["install"]);
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = std::process::id().wrapping_mul(64) ^ NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("l{:x}", n & 0x0fff_ffff);
        // A lab of that name left by a killed run of an earlier process.
        run(&["down", &name]);
        let lab = Lab { name };
        let mut args = vec!["up", lab.name.as_str()];
        args.extend_from_slice(topology);
        ok(&args);
        Some(lab)
    }

    /// The IPv4 address `host` is reached at (inside the lab).
    pub fn addr(&self, host: &str) -> String {
        ok(&["addr", &self.name, host])
    }

    /// `program` run inside `host`'s namespace.
    pub fn command(&self, host: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &format!("{}-{host}", self.name)]).arg(program);
        c
    }

    /// Drop `pct` percent of what the lab's router forwards.
    pub fn loss(&self, pct: u32) {
        ok(&["loss", &self.name, &pct.to_string()]);
    }

    /// Cut the hosts `a` from the hosts `b` (comma lists).
    pub fn partition(&self, a: &str, b: &str) {
        ok(&["partition", &self.name, a, b]);
    }

    /// End every partition.
    pub fn heal(&self) {
        ok(&["heal", &self.name]);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        run(&["down", &self.name]);
    }
}
