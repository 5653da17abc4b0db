//! The JavaScript automerge, for integration tests: `tests/js/` is a Node
//! package that pins `@automerge/automerge` (package-lock.json) and holds
//! `read_export.mjs`, which loads an automerge export and prints what it
//! reads as a JSON export.
//!
//! Include it with `#[path = "support/node.rs"] mod node;`, then:
//!
//! ```ignore
//! if !node::should_run("my_test") {
//!     return; // skipped (no node, npm ci failed, ...), unless HEARTH_REQUIRE_JS=1
//! }
//! let out = node::read_export(&file);
//! ```
//!
//! Needs `node` (20 or newer) on `PATH`, and `npm` the first time: a clean
//! clone has no `tests/js/node_modules`, so the first test that asks runs
//! `npm ci` there (the npm registry, a few seconds).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Set to `1` to turn a skip (no node, no npm, `npm ci` failed) into a failure, e.g. in CI.
pub const REQUIRE_ENV: &str = "HEARTH_REQUIRE_JS";

/// The package whose reading is checked.
pub const PACKAGE: &str = "@automerge/automerge";

/// The Node package of the JavaScript checks.
pub fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

fn run(cmd: &mut Command) -> Result<Output, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        ));
    }
    Ok(out)
}

/// The version of [`PACKAGE`] in `lock` (a package-lock.json, or the
/// `node_modules/.package-lock.json` npm writes beside an install).
fn locked_version(lock: &Path) -> Option<String> {
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(lock).ok()?).ok()?;
    let version = &json["packages"][format!("node_modules/{PACKAGE}")]["version"];
    version.as_str().map(str::to_owned)
}

/// Install the pinned package with `npm ci` unless `node_modules` already
/// holds the version package-lock.json pins (a stale install is replaced:
/// `npm ci` starts from an empty `node_modules`).
fn install() -> Result<(), String> {
    let dir = js_dir();
    let pinned = locked_version(&dir.join("package-lock.json"))
        .ok_or_else(|| format!("{} pins no {PACKAGE}", dir.join("package-lock.json").display()))?;
    let installed = || locked_version(&dir.join("node_modules/.package-lock.json"));
    if installed().as_deref() == Some(pinned.as_str()) {
        return Ok(());
    }
    run(Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir))?;
    match installed() {
        Some(v) if v == pinned => Ok(()),
        other => Err(format!("npm ci installed {PACKAGE} {other:?}, not {pinned}")),
    }
}

/// `Ok` when `node` runs and the pinned package is installed (installing
/// it if it is not, once per test binary); otherwise why not.
pub fn available() -> Result<(), String> {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    READY
        .get_or_init(|| {
            run(Command::new("node").arg("--version"))?;
            install()
        })
        .clone()
}

/// Call first in a test that runs node: `true` when it can. Otherwise print
/// "JavaScript check skipped: <reason>" and return `false` (the test should
/// return and pass), or panic when `HEARTH_REQUIRE_JS=1`.
pub fn should_run(test: &str) -> bool {
    match available() {
        Ok(()) => true,
        Err(reason) => {
            if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
                panic!("JavaScript check {test} cannot run ({REQUIRE_ENV}=1): {reason}");
            }
            eprintln!("JavaScript check skipped: {reason} ({test}; set {REQUIRE_ENV}=1 to make this a failure)");
            false
        }
    }
}

/// `node tests/js/read_export.mjs FILE`: the export as the JavaScript
/// automerge reads it (JSON), or the script's reason for refusing it.
pub fn read_export(file: &Path) -> Result<Vec<u8>, String> {
    run(Command::new("node").arg(js_dir().join("read_export.mjs")).arg(file)).map(|out| out.stdout)
}
