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

/// Call first in a lab test: `true` when labs can run here (what they need
/// installed by then). Otherwise print why and return `false` (the test
/// should return and pass), or panic when `HEARTH_REQUIRE_NETLAB=1`.
pub fn should_run(test: &str) -> bool {
    let check = run(&["check"]);
    if !check.status.success() {
        let why = String::from_utf8_lossy(&check.stdout).trim().to_string();
        if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
            panic!("lab test {test} cannot run ({REQUIRE_ENV}=1): {why}");
        }
        eprintln!("lab test skipped: {why} ({test}; set {REQUIRE_ENV}=1 to make this a failure)");
        return false;
    }
    ok(&["install"]);
    true
}

/// A lab of namespaces `NAME-host`; removed on drop.
pub struct Lab {
    name: String,
}

impl Lab {
    /// Make a lab of `topology` (`["nat"]`, `["star", "20"]`), or `None` when
    /// labs cannot run here (the test should return).
    pub fn up(test: &str, topology: &[&str]) -> Option<Lab> {
        if !should_run(test) {
            return None;
        }
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

    /// Hold each packet the lab's router forwards `ms` milliseconds (0: no
    /// delay): an RTT of twice that between two hosts.
    pub fn delay(&self, ms: u32) {
        ok(&["delay", &self.name, &ms.to_string(), env!("CARGO_BIN_EXE_hearth")]);
    }

    /// Run `f` on a thread inside `host`'s network namespace (sockets it
    /// opens live there).
    pub fn in_host<T: Send>(&self, host: &str, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}-{host}", self.name);
        let netns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        std::thread::scope(|s| {
            s.spawn(move || {
                use std::os::fd::AsRawFd;
                // SAFETY: setns(2) on an open namespace file moves only this
                // thread (spawned for it, ended after `f`) into it.
                #[allow(unsafe_code)]
                let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("the lab thread")
        })
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
