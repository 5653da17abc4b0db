//! Power cuts for integration tests, on LazyFS (the vendored copy in
//! `tools/lazyfs/`): a FUSE file system that keeps every write that was not
//! fsynced in its own cache and drops them all on command. What survives a
//! [`LazyFs::cut`] is exactly what the program made durable.
//!
//! Include it with `#[path = "support/lazyfs.rs"] mod lazyfs;`, then:
//!
//! ```ignore
//! if !lazyfs::should_run("my_test") {
//!     return; // skipped (not root, no /dev/fuse, ...), unless HEARTH_REQUIRE_POWERCUT=1
//! }
//! let tmp = tempfile::tempdir().unwrap(); // declared first, so it is dropped last
//! let fs = lazyfs::LazyFs::mount(tmp.path());
//! // ... write under fs.mnt(), kill -9 the writers ...
//! fs.cut();
//! // ... reopen under fs.mnt() and check ...
//! // dropping `fs` unmounts
//! ```
//!
//! Needs root and `/dev/fuse`. The first mount on a machine builds LazyFS into
//! `$HOME/.cache/lazyfs-build` (`tools/lazyfs/build.sh`: apt-get, cmake; a minute
//! or two); builds are serialized across threads and test binaries by a file lock.
#![allow(dead_code)] // each test file uses a part of it

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Set to `1` to turn a skip (no root, no FUSE) into a failure, e.g. in CI.
pub const REQUIRE_ENV: &str = "HEARTH_REQUIRE_POWERCUT";

/// LazyFS's cache, allocated up front (its whole size is resident) by every mount.
/// It holds everything written since the last cut, fsynced or not; once it is full
/// LazyFS writes straight to disk, so [`LazyFs::cut`] fails the test then. 256 MB is
/// over twenty times what `powercut.rs` writes between two cuts. Override with
/// `HEARTH_LAZYFS_CACHE` (e.g. "1gb").
pub const DEFAULT_CACHE: &str = "256mb";
/// The environment variable that overrides [`DEFAULT_CACHE`].
pub const CACHE_ENV: &str = "HEARTH_LAZYFS_CACHE";

/// The vendored LazyFS and its scripts.
pub fn tools_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/lazyfs")
}

/// Whether `name` is an executable on `PATH`.
fn on_path(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

/// `Ok` when LazyFS can be mounted here (root, `/dev/fuse`, `fusermount3` present or
/// installable with apt-get); otherwise why not.
pub fn available() -> Result<(), String> {
    if !cfg!(target_os = "linux") {
        return Err("LazyFS needs Linux".into());
    }
    #[allow(unsafe_code)]
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(format!("needs root to mount FUSE and install LazyFS (euid is {euid})"));
    }
    if !Path::new("/dev/fuse").exists() {
        return Err("/dev/fuse does not exist".into());
    }
    if !on_path("fusermount3") && !on_path("apt-get") {
        return Err("fusermount3 is not installed and apt-get is not there to install it".into());
    }
    if !on_path("bash") {
        return Err("bash is not installed".into());
    }
    let tools = tools_dir();
    if !tools.join("mount.sh").is_file() {
        return Err(format!("{} is missing", tools.join("mount.sh").display()));
    }
    Ok(())
}

/// Call first in a power-cut test: `true` when LazyFS is available. Otherwise print
/// "power-cut test skipped: <reason>" and return `false` (the test should return
/// and pass), or panic when `HEARTH_REQUIRE_POWERCUT=1`.
pub fn should_run(test: &str) -> bool {
    match available() {
        Ok(()) => true,
        Err(reason) => {
            if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
                panic!("power-cut test {test} cannot run ({REQUIRE_ENV}=1): {reason}");
            }
            eprintln!("power-cut test skipped: {reason} ({test}; set {REQUIRE_ENV}=1 to make this a failure)");
            false
        }
    }
}

fn script(name: &str) -> Command {
    let mut c = Command::new("bash");
    c.arg(tools_dir().join(name));
    c
}

fn run(mut cmd: Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n  stderr: {}\n  stdout: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end(),
            String::from_utf8_lossy(&out.stdout).trim_end()
        );
    }
    out
}

/// Build LazyFS once (a no-op when the binary is there), holding a lock so that
/// parallel tests and test binaries do not build over each other.
fn build() {
    let lock_path = std::env::temp_dir().join("hearth-lazyfs-build.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap_or_else(|e| panic!("open {}: {e}", lock_path.display()));
    lock.lock()
        .unwrap_or_else(|e| panic!("lock {}: {e}", lock_path.display()));
    run(script("build.sh"), "building LazyFS (tools/lazyfs/build.sh)");
    // The lock is released when `lock` is dropped.
}

/// A LazyFS mount at `base/mnt` over `base/root`, unmounted on drop.
pub struct LazyFs {
    mnt: PathBuf,
    root: PathBuf,
    /// The highest cache usage seen at a cut, in percent.
    peak_usage: Cell<f64>,
}

impl LazyFs {
    /// Mount at `base/mnt` over `base/root` (both created), building LazyFS first if
    /// needed. `base` must be a directory of this test alone (a temp dir): the
    /// control files go to `base/.lazyfs-mnt`. Keep `base` alive longer than the
    /// returned value. Panics when the mount fails.
    pub fn mount(base: &Path) -> LazyFs {
        let cache = std::env::var(CACHE_ENV).unwrap_or_else(|_| DEFAULT_CACHE.to_string());
        Self::mount_with_cache(base, &cache)
    }

    /// [`LazyFs::mount`] with a cache of this size ("256mb", "1gb"; see
    /// [`DEFAULT_CACHE`]).
    pub fn mount_with_cache(base: &Path, cache: &str) -> LazyFs {
        let mnt = base.join("mnt");
        let root = base.join("root");
        for d in [&mnt, &root] {
            std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
        }
        build();
        let fs = LazyFs {
            mnt,
            root,
            peak_usage: Cell::new(0.0),
        };
        // If this panics, dropping `fs` stops a LazyFS that started but did not mount.
        let mut cmd = script("mount.sh");
        cmd.arg(&fs.mnt).arg(&fs.root).arg(cache);
        run(cmd, &format!("mounting LazyFS at {}", fs.mnt.display()));
        fs
    }

    /// The mount point: write and read here.
    pub fn mnt(&self) -> &Path {
        &self.mnt
    }

    /// The directory under the mount: what was made durable (read it only after a
    /// [`LazyFs::cut`], or after dropping this).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A power cut: drop every write under [`LazyFs::mnt`] that was not fsynced.
    /// Stop the writers first (kill -9 and wait), so that nothing writes during
    /// the cut. Panics (with the script's stderr) if LazyFS does not confirm it,
    /// and if its cache was full: past that, LazyFS writes straight to disk, so
    /// unsynced writes would have survived (raise `HEARTH_LAZYFS_CACHE`).
    pub fn cut(&self) {
        let mut cmd = script("cut.sh");
        cmd.arg(&self.mnt);
        let out = run(cmd, &format!("power cut at {}", self.mnt.display()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let usage: f64 = stdout
            .lines()
            .find_map(|l| l.strip_prefix("cache usage before the cut: ")?.strip_suffix('%'))
            .and_then(|u| u.parse().ok())
            .unwrap_or_else(|| panic!("cut.sh printed no cache usage: {stdout:?}"));
        self.peak_usage.set(self.peak_usage.get().max(usage));
        assert!(
            usage < 99.0,
            "LazyFS's cache was full ({usage}%) at the cut at {}: writes past that went straight to \
             disk and survived it; raise {CACHE_ENV} (now {})",
            self.mnt.display(),
            std::env::var(CACHE_ENV).unwrap_or_else(|_| DEFAULT_CACHE.to_string())
        );
    }

    /// The highest cache usage seen at a cut so far, in percent: what was written
    /// between two cuts, against the cache size.
    pub fn peak_cache_usage(&self) -> f64 {
        self.peak_usage.get()
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        let mut cmd = script("umount.sh");
        cmd.arg(&self.mnt);
        match cmd.output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "unmounting LazyFS at {}: {} {}",
                self.mnt.display(),
                o.status,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("unmounting LazyFS at {}: {e}", self.mnt.display()),
        }
    }
}

/// fsync a directory, so that the entries created in it are durable.
pub fn sync_dir(dir: &Path) {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .unwrap_or_else(|e| panic!("fsync directory {}: {e}", dir.display()));
}
