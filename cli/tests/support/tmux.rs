//! tmux for end-to-end tests of `hearth chat`: detached sessions on a private
//! server (its socket in the test's own directory), keys sent, screens
//! captured. tmux is installed with apt-get when missing and the test runs as
//! root; otherwise a test prints why and passes, unless
//! `HEARTH_REQUIRE_TMUX=1` (CI sets it: there a test that cannot run fails).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Set to 1 to make a tmux test fail instead of skipping.
pub const REQUIRE_ENV: &str = "HEARTH_REQUIRE_TMUX";

fn has_tmux() -> bool {
    Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Call first: `true` when tmux can run here (installed by then). Otherwise
/// print why and return `false` (the test returns and passes), or panic
/// when `HEARTH_REQUIRE_TMUX=1`.
pub fn should_run(test: &str) -> bool {
    if has_tmux() {
        return true;
    }
    let why = if is_root() {
        let installed = Command::new("bash")
            .arg("-c")
            .arg(
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
                 apt-get install -y -qq -o DPkg::Lock::Timeout=300 tmux",
            )
            .output();
        match installed {
            Ok(o) if o.status.success() && has_tmux() => return true,
            Ok(o) => format!(
                "apt-get install tmux failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => format!("apt-get: {e}"),
        }
    } else {
        "tmux is not installed, and only root installs it".to_string()
    };
    if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
        panic!("tmux test {test} cannot run ({REQUIRE_ENV}=1): {why}");
    }
    eprintln!("tmux test skipped: {why} ({test}; set {REQUIRE_ENV}=1 to make this a failure)");
    false
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A private tmux server; killed on drop (also when the test fails).
pub struct Tmux {
    dir: PathBuf,
    socket: String,
}

impl Tmux {
    /// A server whose socket lives under `dir` (keep the path short: a
    /// socket path has about 100 bytes).
    pub fn new(dir: &Path) -> Tmux {
        Tmux {
            dir: dir.to_path_buf(),
            socket: format!("h{}", std::process::id()),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .env("TMUX_TMPDIR", &self.dir)
            .env_remove("TMUX")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("tmux {args:?}: {e}"))
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "tmux {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn status_file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.status"))
    }

    /// Start `argv` in a detached session `name` of `width` x `height`, with
    /// `env` set; the pane stays after the program ends (for what it said).
    pub fn start(&self, name: &str, (width, height): (u16, u16), env: &[(&str, &str)], argv: &[&str]) {
        let (w, h) = (width.to_string(), height.to_string());
        let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut args = vec!["new-session", "-d", "-s", name, "-x", &w, "-y", &h];
        for e in &env {
            args.extend(["-e", e.as_str()]);
        }
        // Under a shell that writes the exit status to a file: tmux 3.3
        // leaves `pane_dead_status` empty for a program that closed its
        // terminal before it ended.
        let status = self.status_file(name);
        let status = status.to_str().expect("a UTF-8 path");
        args.extend(["sh", "-c", r#"s="$1"; shift; "$@"; echo $? > "$s""#, "sh", status]);
        args.extend_from_slice(argv);
        // Set in the same call: a program that ends at once leaves its pane.
        args.extend([";", "set-option", "-t", name, "remain-on-exit", "on"]);
        self.ok(&args);
    }

    /// Type `text` literally, then Enter.
    pub fn type_line(&self, name: &str, text: &str) {
        self.ok(&["send-keys", "-t", name, "-l", "--", text]);
        self.key(name, "Enter");
    }

    /// Paste `text` as a terminal paste does: bracketed (the program sees
    /// one paste, line breaks and all) when it asked for bracketed paste.
    pub fn paste(&self, name: &str, text: &str) {
        self.ok(&["set-buffer", "-b", "test-paste", "--", text]);
        self.ok(&["paste-buffer", "-p", "-d", "-b", "test-paste", "-t", name]);
    }

    /// Press a key by tmux's name for it (Enter, Escape, C-c, Tab, ...).
    pub fn key(&self, name: &str, key: &str) {
        self.ok(&["send-keys", "-t", name, key]);
    }

    /// The visible screen.
    pub fn screen(&self, name: &str) -> String {
        self.ok(&["capture-pane", "-p", "-t", name])
    }

    /// Everything the pane printed, history included, lines it wrapped
    /// joined (what a program said as it died).
    pub fn history(&self, name: &str) -> String {
        self.ok(&["capture-pane", "-p", "-J", "-S", "-", "-t", name])
    }

    /// The program's exit status, once it ended.
    pub fn exit_status(&self, name: &str) -> Option<i32> {
        let text = std::fs::read_to_string(self.status_file(name)).ok()?;
        text.trim().parse().ok()
    }

    /// The screen once `pred` holds of it; a panic with the screen (and the
    /// pane's history, if the program ended) when `timeout` passes first.
    pub fn wait_for(&self, name: &str, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen(name);
            if pred(&screen) {
                return screen;
            }
            if let Some(status) = self.exit_status(name) {
                panic!(
                    "{name}: {what}: the program ended ({status}) first:\n{}",
                    self.history(name)
                );
            }
            if Instant::now() > deadline {
                panic!("{name}: {what}: not shown within {timeout:?}; the screen:\n{screen}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The exit status once the program ends (within `timeout`).
    pub fn wait_exit(&self, name: &str, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status(name) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not end within {timeout:?}:\n{}",
                self.screen(name)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}
