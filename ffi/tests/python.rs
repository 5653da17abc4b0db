//! The bindings from Python: generate `hearth_ffi.py` from the library this
//! very build made, then run `tests/python/test_hearth.py` against it (a
//! store's life, typed errors, and an event from a second store over
//! loopback sync).
//!
//! Skipped with a note when there is no `python3`, unless
//! `HEARTH_REQUIRE_PYTHON=1`. `HEARTH_PYTHON` names another interpreter.
//! After a failure the generated module, the library and the outputs stay
//! in `<target>/tmp/python-<pid>/` to run again by hand.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

type Res = Result<(), Box<dyn std::error::Error>>;

const REQUIRE_ENV: &str = "HEARTH_REQUIRE_PYTHON";
/// The script has its own timeouts (30 s a wait); this is the backstop for
/// a hang they miss, so that `cargo test` never hangs.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(240);
const BINDGEN_TIMEOUT: Duration = Duration::from_secs(60);

/// The interpreter, or why there is none.
fn python() -> Result<String, String> {
    let python = std::env::var("HEARTH_PYTHON").unwrap_or_else(|_| "python3".into());
    match Command::new(&python).arg("--version").output() {
        Ok(o) if o.status.success() => Ok(python),
        Ok(o) => Err(format!("`{python} --version` failed: {}", o.status)),
        Err(e) => Err(format!("no `{python}`: {e}")),
    }
}

/// The library that `cargo test` built for this run.
///
/// It is in the test binary's own folder (`target/<profile>/deps`): cargo
/// copies it up to `target/<profile>/` only on `cargo build`, so the copy
/// there may be stale, and a stale library fails the module's checksums (or
/// lacks what was just added).
fn cdylib() -> Result<PathBuf, Box<dyn std::error::Error>> {
    let exe = std::env::current_exe()?;
    let deps = exe.parent().ok_or("the test binary has no folder")?;
    let name = format!(
        "{}hearth_ffi{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let lib = deps.join(name);
    if !lib.is_file() {
        return Err(format!("the cdylib was not built at {}", lib.display()).into());
    }
    Ok(lib)
}

/// What a child process did: its status (`None`: killed at the timeout),
/// its output and how long it ran.
struct Run {
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Run {
    fn report(&self, what: &str) -> String {
        format!(
            "{what}: {} after {:.1?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status
                .map_or_else(|| "killed at the timeout".to_string(), |s| s.to_string()),
            self.took,
            self.stdout,
            self.stderr
        )
    }

    fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

/// Run `cmd` with its output in files under `dir` (pipes could fill and
/// stall it while we wait), killing it after `timeout`.
fn run(mut cmd: Command, dir: &Path, name: &str, timeout: Duration) -> Result<Run, Box<dyn std::error::Error>> {
    let out = dir.join(format!("{name}.stdout"));
    let err = dir.join(format!("{name}.stderr"));
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(File::create(&out)?)
        .stderr(File::create(&err)?)
        .spawn()?;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if start.elapsed() > timeout {
            child.kill()?;
            child.wait()?;
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ok(Run {
        status,
        stdout: std::fs::read_to_string(out)?,
        stderr: std::fs::read_to_string(err)?,
        took: start.elapsed(),
    })
}

#[test]
fn python_drives_a_store_and_sync() -> Res {
    let python = match python() {
        Ok(p) => p,
        Err(why) => {
            if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
                panic!("the Python test cannot run ({REQUIRE_ENV}=1): {why}");
            }
            eprintln!("Python test skipped: {why} (set {REQUIRE_ENV}=1 to make this a failure)");
            return Ok(());
        }
    };
    let lib = cdylib()?;
    // A folder of this run's own: tests of several builds may run at once.
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("python-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;

    let mut generate = Command::new(env!("CARGO_BIN_EXE_uniffi-bindgen"));
    generate
        .args(["generate", "--language", "python", "--out-dir"])
        .arg(&out)
        .arg(&lib);
    let generated = run(generate, &out, "bindgen", BINDGEN_TIMEOUT)?;
    assert!(generated.succeeded(), "{}", generated.report("uniffi-bindgen"));
    assert!(
        out.join("hearth_ffi.py").is_file(),
        "no hearth_ffi.py in {}",
        out.display()
    );
    // The module loads the library from its own folder.
    std::fs::copy(&lib, out.join(lib.file_name().ok_or("no file name")?))?;

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/test_hearth.py");
    let mut test = Command::new(&python);
    test.arg("-u")
        .arg(&script)
        .env("PYTHONPATH", &out)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let ran = run(test, &out, "python", SCRIPT_TIMEOUT)?;
    assert!(ran.succeeded(), "{}", ran.report("tests/python/test_hearth.py"));
    println!("{}", ran.report("tests/python/test_hearth.py"));
    std::fs::remove_dir_all(&out)?;
    Ok(())
}
