//! The network commands of the real binary, with real processes on loopback:
//! `invite`/`join`/`sync` between two stores, `hearth node` driven through its
//! JSON-line stdin while a second node watches its JSON events, SIGKILL of a
//! `hearth sync` in the middle of a 3,000-message catch-up, and a keyless relay
//! that carries a channel between two devices that are never online together.
//!
//! Every child is owned by a [`Proc`] that kills it on drop and reads its stdout
//! on a thread, so a test that fails (or a command that hangs) ends with the
//! child's output in the panic message instead of a stuck test run. Every store
//! open pays one Argon2id derivation at the default cost, so the scenarios keep
//! the number of invocations modest.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[path = "support/protocol.rs"]
mod protocol;
#[path = "../../tests/support/rng.rs"]
mod rng;
use rng::Rng;

const PASS: &str = "sync cli test passphrase";
/// Where every node and relay listens: a free loopback TCP port.
const LOOPBACK: &str = "/ip4/127.0.0.1/tcp/0";
/// The longest wait for one expected event or one command. Generous: the
/// machine may be busy with other Argon2id derivations and builds.
const WAIT: Duration = Duration::from_secs(60);

/// A `hearth --store DIR` command with no passphrase in its environment.
fn bare(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hearth"));
    c.arg("--store")
        .arg(dir)
        .env_remove("HEARTH_PASSPHRASE")
        .env_remove("HEARTH_NEW_PASSPHRASE")
        .stdin(Stdio::null());
    c
}

/// The same with the store passphrase set.
fn hearth(dir: &Path) -> Command {
    let mut c = bare(dir);
    c.env("HEARTH_PASSPHRASE", PASS);
    c
}

/// Run to the end, killing the child if it takes longer than [`WAIT`].
fn run(cmd: &mut Command) -> Output {
    let mut p = Proc::spawn(&format!("{cmd:?}"), cmd.stdin(Stdio::null()));
    let status = p.wait(WAIT);
    p.drain();
    Output {
        status,
        stdout: p.seen.join("\n").into_bytes(),
        stderr: p.stderr().into_bytes(),
    }
}

/// Run, expect exit 0, return stdout.
fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// Run, expect exit 1 with exactly one `error: ` line on stderr; return that line.
fn fails(cmd: &mut Command) -> String {
    let out = run(cmd);
    let err = String::from_utf8(out.stderr).expect("utf-8 stderr");
    assert_eq!(out.status.code(), Some(1), "{cmd:?}: stderr: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{cmd:?}: expected one stderr line, got {err:?}");
    assert!(lines[0].starts_with("error: "), "{cmd:?}: {err:?}");
    lines[0].to_string()
}

fn json(s: &str) -> Value {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("not one JSON object: {s:?}: {e}"))
}

fn json_lines(s: &str) -> Vec<Value> {
    s.lines().map(json).collect()
}

/// `init` a store; returns the user id.
fn init(dir: &Path, name: &str) -> String {
    let v = json(&ok(hearth(dir).args(["--json", "init", "--user", name])));
    v["user"].as_str().expect("user id").to_string()
}

/// Decrypt and check every record of a store; returns its feed entry count.
fn verify_clean(dir: &Path) -> u64 {
    let report = json(&ok(hearth(dir).args(["--json", "verify"])));
    assert_eq!(report["problems"], json!([]), "{}: {report}", dir.display());
    report["entries"].as_u64().expect("entries")
}

fn texts(log: &[Value]) -> Vec<&str> {
    log.iter().map(|m| m["text"].as_str().unwrap_or("(deleted)")).collect()
}

/// A running `hearth` child. Its stdout is read line by line on a thread (every
/// line is kept for the failure message); it is killed if still running on drop.
struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Every stdout line read so far.
    seen: Vec<String>,
    /// Events read but not matched yet, oldest first.
    unmatched: VecDeque<Value>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<thread::JoinHandle<()>>,
    status: Option<ExitStatus>,
    /// A `hearth node`: every line and command is checked against the
    /// node protocol's schemas.
    protocol: bool,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let protocol = cmd.get_args().any(|a| a == "node");
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let stdin = child.stdin.take();
        let out = child.stdout.take().expect("piped stdout");
        let mut err = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let sink = stderr.clone();
        let readers = vec![
            thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { return };
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            }),
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = err.read(&mut buf) {
                    sink.lock().expect("stderr lock").extend_from_slice(&buf[..n]);
                }
            }),
        ];
        Proc {
            name: name.to_string(),
            child,
            stdin,
            lines,
            seen: Vec::new(),
            unmatched: VecDeque::new(),
            stderr,
            readers,
            status: None,
            protocol,
        }
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().expect("stderr lock")).into_owned()
    }

    /// What the child said so far, for a failure message.
    fn report(&self) -> String {
        format!(
            "{}:\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.name,
            self.seen.join("\n"),
            self.stderr()
        )
    }

    /// The next stdout line before `deadline`, or `None` at EOF or the deadline.
    fn next_line(&mut self, deadline: Instant) -> Option<String> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(line) => {
                self.seen.push(line.clone());
                if self.protocol
                    && let Ok(v) = serde_json::from_str::<Value>(&line)
                {
                    protocol::check_event(&v);
                }
                Some(line)
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => None,
        }
    }

    /// Forget the events printed so far (those of an earlier round).
    fn skip_pending(&mut self) {
        self.unmatched.clear();
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }

    /// The oldest unmatched event that satisfies `pred`, waiting up to [`WAIT`]
    /// for it (and then panicking, which kills the child). Events passed over
    /// stay for later calls: peers' events arrive in no fixed order.
    fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.unmatched.iter().position(&pred) {
            return self.unmatched.remove(i).expect("a valid index");
        }
        let deadline = Instant::now() + WAIT;
        while let Some(line) = self.next_line(deadline) {
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("{what}: not a JSON line: {line:?}: {e}\n{}", self.report()));
            if pred(&v) {
                return v;
            }
            self.unmatched.push_back(v);
        }
        panic!("{what}: not seen within {WAIT:?}\n{}", self.report())
    }

    /// The `listening` address a node or relay prints first.
    fn listening(&mut self) -> String {
        let v = self.wait_for("a listening address", |e| e["event"] == "listening");
        let addr = v["addr"].as_str().expect("addr").to_string();
        assert!(
            addr.starts_with("/ip4/127.0.0.1/tcp/") && addr.contains("/p2p/"),
            "{addr}"
        );
        addr
    }

    /// Wait until a node's main loop runs. `hearth node` prints its listening
    /// addresses before it installs its SIGINT/SIGTERM handlers, so a signal
    /// sent right after them kills it outright (no `stopped`, exit by signal).
    /// An answer to a stdin line proves that the loop, which polls the
    /// handlers together with stdin, has started.
    fn ready(&mut self) {
        let probe = r#"{"cmd": "ready?"}"#;
        self.send_line(probe);
        self.wait_for("the answer to a probe", |e| {
            e["event"] == "error" && e["input"] == probe
        });
    }

    fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("spawned with piped stdin");
        let sent = writeln!(stdin, "{line}").and_then(|()| stdin.flush());
        if let Err(e) = sent {
            panic!("write to {}: {e}\n{}", self.name, self.report());
        }
    }

    /// Send one JSON command to a node and return its `done` event.
    fn command(&mut self, cmd: Value) -> Value {
        if self.protocol {
            protocol::check_command(&cmd);
        }
        self.send_line(&cmd.to_string());
        let name = cmd["cmd"].clone();
        let done = self.wait_for(&format!("the result of {cmd}"), |e| {
            e["event"] == "done" || e["event"] == "error"
        });
        assert_eq!((&done["event"], &done["cmd"]), (&json!("done"), &name), "{cmd}");
        done
    }

    /// Wait for the exit, killing the child after `limit`.
    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                self.status = Some(s);
                return s;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.skip_pending();
                panic!("{} still running after {limit:?}\n{}", self.name, self.report());
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// After the exit: collect the rest of stdout and stderr.
    fn drain(&mut self) {
        for r in self.readers.drain(..) {
            r.join().expect("reader thread");
        }
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) has no memory effects; the child is not reaped yet (no
        // wait has returned for it), so its pid still names it.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig})");
    }

    /// SIGTERM a node or relay: it must print `stopped` last and exit 0.
    fn terminate(mut self) -> Vec<Value> {
        // Close stdin first: while it is open, a node prints `stopped` and then
        // never exits (`sigterm_stops_a_node_whose_stdin_is_still_open`).
        self.stdin.take();
        self.signal(libc::SIGTERM);
        let status = self.wait(WAIT);
        self.drain();
        assert!(status.success(), "{status}\n{}", self.report());
        let events: Vec<Value> = self.seen.iter().map(|l| json(l)).collect();
        if self.protocol {
            events.iter().for_each(protocol::check_event);
        }
        assert_eq!(
            events.last().map(|e| &e["event"]),
            Some(&json!("stopped")),
            "{}",
            self.report()
        );
        events
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether a node event is message `id` (a post or a reply) with `text`.
fn is_messages_with(e: &Value, id: &str, text: Option<&str>) -> bool {
    (e["event"] == "message" || e["event"] == "reply") && e["id"] == id && e["text"] == json!(text)
}

/// Start `hearth node` on `dir` with `args`; returns it, ready, and its address.
fn start_node(name: &str, dir: &Path, args: &[&str]) -> (Proc, String) {
    let mut p = Proc::spawn(name, hearth(dir).arg("node").args(args).stdin(Stdio::piped()));
    let addr = p.listening();
    p.ready();
    (p, addr)
}

/// A node is stopped by SIGTERM while a script still holds its stdin open, as
/// a supervisor or a terminal does. It fails today: the node prints `stopped`,
/// then hangs at exit in the runtime's shutdown, which waits for the blocking
/// read of stdin; a second SIGTERM or SIGINT does nothing.
#[test]
fn sigterm_stops_a_node_whose_stdin_is_still_open() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("store");
    init(&dir, "solo");
    let (mut node, _) = start_node("a node", &dir, &["--listen", LOOPBACK]);
    node.signal(libc::SIGTERM);
    let status = node.wait(Duration::from_secs(10));
    node.drain();
    assert!(status.success(), "{status}\n{}", node.report());
    assert_eq!(
        node.seen.last().map(|l| json(l)["event"].clone()),
        Some(json!("stopped"))
    );
}

/// A running node backs up the store it serves (`{"cmd":"backup"}`), and
/// writes on; `backup --check` reads the file; `restore` makes a new device
/// of the same user, whose node (a peer id of its own) syncs with the
/// original's: each receives what the other wrote after the backup, and
/// neither store finds a fork.
#[test]
fn a_node_backs_up_its_store_and_the_restored_device_syncs_with_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, r) = (tmp.path().join("alice"), tmp.path().join("restored"));
    let file = tmp.path().join("alice.backup");
    let alice = init(&a, "alice");
    ok(hearth(&a).args(["channel", "create", "general"]));
    ok(hearth(&a).args(["post", "general", "before the backup"]));
    let (mut an, addr) = start_node("alice's node", &a, &["--listen", LOOPBACK]);
    let done = an.command(json!({"cmd": "backup", "file": file}));
    assert!(done["bytes"].as_u64().is_some_and(|b| b > 0), "{done}");
    let after = an.command(json!({"cmd": "post", "channel": "general", "text": "after the backup"}));
    let after = after["id"].as_str().expect("id").to_string();

    let checked = json(&ok(hearth(&a).args(["--json", "backup", "--check"]).arg(&file)));
    assert_eq!(
        (&checked["ok"], &checked["user"]),
        (&json!(true), &json!(alice)),
        "{checked}"
    );
    let restored = json(&ok(hearth(&r).args(["--json", "restore"]).arg(&file)));
    assert_eq!(restored["verify_clean"], true, "{restored}");
    assert_eq!(restored["user"], alice.as_str());
    assert_ne!(restored["device"], restored["backed_up_device"], "{restored}");
    // Over an existing store: refused, and nothing changes.
    fails(hearth(&r).args(["restore"]).arg(&file));

    let (mut rn, _) = start_node("restored node", &r, &["--listen", LOOPBACK, "--peer", &addr]);
    rn.wait_for("the post written after the backup", |e| {
        is_messages_with(e, &after, Some("after the backup"))
    });
    let mine = rn.command(json!({"cmd": "post", "channel": "general", "text": "from the restored device"}));
    let mine = mine["id"].as_str().expect("id").to_string();
    let got = an.wait_for("the restored device's post", |e| {
        is_messages_with(e, &mine, Some("from the restored device"))
    });
    assert_eq!(got["author"], alice.as_str());
    for (node, dir) in [(an, &a), (rn, &r)] {
        let events = node.terminate();
        assert!(!events.iter().any(|e| e["event"] == "forked"), "{events:?}");
        verify_clean(dir);
        let report = json(&ok(hearth(dir).args(["--json", "verify"])));
        assert_eq!(report["forks"], json!([]), "{report}");
        let log = json_lines(&ok(hearth(dir).args(["--json", "log", "general"])));
        assert_eq!(
            texts(&log),
            ["from the restored device", "after the backup", "before the backup"],
            "{}",
            dir.display()
        );
    }
}

/// 1. The invite flow: a ticket carries the address of the last `hearth node`;
///    `join` syncs through it right away; `sync --peer` pushes a reply back.
#[test]
fn invite_join_then_sync_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b) = (tmp.path().join("alice"), tmp.path().join("bob"));
    init(&a, "alice");
    let bob = init(&b, "bob");
    ok(hearth(&a).args(["channel", "create", "general"]));
    let hello = "hello from alice, before any invite";
    let hello_id = ok(hearth(&a).args(["post", "general", hello])).trim().to_string();

    // A first run only to learn (and save) where the node listens.
    let (node, addr) = start_node("alice's first node", &a, &["--listen", LOOPBACK]);
    node.terminate();
    // Saved sealed: where the device listened is nobody else's business.
    let saved = std::fs::read(a.join("node.addrs")).expect("node.addrs");
    assert!(saved.starts_with(b"HEARTHSF"));
    let port_text = addr.split("/p2p/").next().expect("an address");
    assert!(!saved.windows(port_text.len()).any(|w| w == port_text.as_bytes()));
    let ticket = ok(hearth(&a).args(["invite", "general"])).trim().to_string();
    assert!(ticket.starts_with("hearth1"), "{ticket}");

    // The same port again, so that the ticket's address is still right; the
    // peer id comes from the store, so it is the same too.
    let port = addr.split("/p2p/").next().expect("an address");
    let (mut node, again) = start_node("alice's node", &a, &["--listen", port]);
    assert_eq!(again, addr);

    let joined = json(&ok(hearth(&b).args(["--json", "join", &ticket, "--timeout", "60"])));
    assert_eq!(joined["name"], "general", "{joined}");
    assert_eq!(joined["synced_with"], addr.as_str(), "{joined}");
    assert!(joined["received"].as_u64() >= Some(1), "{joined}");
    let log = json_lines(&ok(hearth(&b).args(["--json", "log", "general"])));
    assert_eq!(texts(&log), [hello]);
    assert_eq!(
        (&log[0]["id"], &log[0]["author_name"]),
        (&json!(hello_id), &json!("alice"))
    );

    let answer = "hi alice, bob here";
    let answer_id = ok(hearth(&b).args(["post", "general", answer])).trim().to_string();
    let synced = json(&ok(hearth(&b).args([
        "--json",
        "sync",
        "--peer",
        &addr,
        "--timeout",
        "60",
    ])));
    assert_eq!((&synced["event"], &synced["in_sync"]), (&json!("synced"), &json!(true)));
    assert!(synced["sent"].as_u64() >= Some(1), "{synced}");
    let got = node.wait_for("bob's answer", |e| is_messages_with(e, &answer_id, Some(answer)));
    assert_eq!(got["author"], bob.as_str());
    let receipt = node.wait_for("bob's delivery receipt", |e| {
        e["event"] == "receipt" && e["kind"] == "delivered" && e["user"] == bob.as_str()
    });
    assert_eq!(receipt["up_to"], hello_id.as_str());
    node.terminate();

    let shown = json(&ok(hearth(&a).args(["--json", "show", &hello_id])));
    let delivered = shown["delivered"].as_array().expect("delivered");
    assert!(delivered.iter().any(|d| d["user"] == bob.as_str()), "{shown}");
    let log = json_lines(&ok(hearth(&a).args(["--json", "log", "general"])));
    assert_eq!(texts(&log), [answer, hello]);

    // Tickets that are not tickets, damaged by one character, or cut short.
    let mid = ticket.len() / 2;
    let flipped = if &ticket[mid..=mid] == "a" { "b" } else { "a" };
    let damaged = format!("{}{flipped}{}", &ticket[..mid], &ticket[mid + 1..]);
    for bad in ["hearth1garbage!", &damaged, &ticket[..ticket.len() - 7], "not a ticket"] {
        let err = fails(hearth(&b).args(["join", bad, "--timeout", "5"]));
        assert!(err.contains("ticket"), "{bad}: {err}");
    }
}

/// A node started without `--listen` listens where its last run did, on the
/// same port: a ticket printed before a restart still reaches it. When the
/// port is taken meanwhile, the node takes another, says so, and keeps that
/// one from then on.
#[test]
fn a_node_restarted_without_listen_keeps_its_port_and_its_tickets() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b) = (tmp.path().join("alice"), tmp.path().join("bob"));
    init(&a, "alice");
    init(&b, "bob");
    ok(hearth(&a).args(["channel", "create", "general"]));
    let hello = "posted before the restart";
    ok(hearth(&a).args(["post", "general", hello]));

    let (node, addr) = start_node("alice's first run", &a, &[]);
    node.terminate();
    let ticket = ok(hearth(&a).args(["invite", "general"])).trim().to_string();
    // Kept sealed, as the other address lists are.
    let saved = std::fs::read(a.join("node.listen")).expect("node.listen");
    assert!(saved.starts_with(b"HEARTHSF"));

    let (node, again) = start_node("alice's second run", &a, &[]);
    assert_eq!(again, addr, "a restart without --listen moved the node");
    let joined = json(&ok(hearth(&b).args(["--json", "join", &ticket, "--timeout", "60"])));
    assert_eq!(joined["synced_with"], addr.as_str(), "{joined}");
    let log = json_lines(&ok(hearth(&b).args(["--json", "log", "general"])));
    assert_eq!(texts(&log), [hello]);
    node.terminate();

    // Someone else holds the port now.
    let port: u16 = addr
        .split("/tcp/")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .expect("a TCP port");
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind the node's old port");
    let mut node = Proc::spawn("alice's third run", hearth(&a).arg("node").stdin(Stdio::piped()));
    let moved = node.wait_for("the move", |e| e["event"] == "listen_moved");
    assert!(moved["error"].as_str().is_some_and(|e| !e.is_empty()), "{moved}");
    let third = node.listening();
    node.ready();
    assert_ne!(third, addr);
    node.terminate();
    drop(squatter);
    let (node, fourth) = start_node("alice's fourth run", &a, &[]);
    assert_eq!(fourth, third, "the port taken last time is not kept");
    node.terminate();
}

/// 2. `hearth node` as a scripting surface: every stdin command reaches the
///    other node as the matching event; bad input is reported and skipped.
#[test]
fn node_stdin_commands_reach_the_other_node() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b) = (tmp.path().join("alice"), tmp.path().join("bob"));
    let alice = init(&a, "alice");
    let bob = init(&b, "bob");
    ok(hearth(&a).args(["channel", "create", "general"]));
    // No address in the ticket: the nodes find each other through --peer.
    let ticket = ok(hearth(&a).args(["invite", "general"])).trim().to_string();
    let joined = json(&ok(hearth(&b).args(["--json", "join", &ticket, "--timeout", "0"])));
    assert_eq!(joined["synced_with"], Value::Null);

    let (mut an, addr) = start_node("alice's node", &a, &["--listen", LOOPBACK]);
    let (mut bn, _) = start_node("bob's node", &b, &["--listen", LOOPBACK, "--peer", &addr]);
    // Alice's side: bob's node may connect before it subscribes to its own
    // events, and then it never prints this `peer_connected`.
    an.wait_for("bob's connection", |e| e["event"] == "peer_connected");
    // The ticket holds no channel key: alice's node lets bob's device in.
    let joined = bn.wait_for("bob let in", |e| e["event"] == "joined");
    assert_eq!(joined["name"], "general", "{joined}");
    bn.wait_for("a sync", |e| {
        e["event"] == "synced" && e["in_sync"] == true && e["channels"] == 1
    });

    let first = an.command(json!({"cmd": "post", "channel": "general", "text": "first post"}));
    let first = first["id"].as_str().expect("id").to_string();
    let got = bn.wait_for("the post", |e| is_messages_with(e, &first, Some("first post")));
    assert_eq!(got["author"], alice.as_str());

    let reply = an.command(json!({"cmd": "reply", "to": first, "text": "a reply"}));
    let reply = reply["id"].as_str().expect("id").to_string();
    bn.wait_for("the reply", |e| is_messages_with(e, &reply, Some("a reply")));
    let second =
        an.command(json!({"cmd": "post", "channel": "general", "text": "replying by post", "reply_to": first}));
    let second = second["id"].as_str().expect("id").to_string();
    bn.wait_for("the reply by post", |e| {
        is_messages_with(e, &second, Some("replying by post"))
    });

    // A reaction, an edit or a delete that arrives prints no event (the node
    // reports new messages and receipts only), so a post after them marks the
    // moment they are in: one device's entries are applied in feed order.
    an.command(json!({"cmd": "react", "msg": first, "emoji": "👍"}));
    an.command(json!({"cmd": "edit", "msg": first, "text": "first post, edited"}));
    an.command(json!({"cmd": "delete", "msg": second}));
    let marker = an.command(json!({"cmd": "post", "channel": "general", "text": "after the changes"}));
    let marker = marker["id"].as_str().expect("id").to_string();
    bn.wait_for("the post after the changes", |e| {
        is_messages_with(e, &marker, Some("after the changes"))
    });
    an.command(json!({"cmd": "read", "channel": "general"}));
    let read = bn.wait_for("alice's read receipt", |e| {
        e["event"] == "read_marker" && e["local"] == false && e["user"] == alice.as_str()
    });
    assert_eq!(read["up_to"], marker.as_str());

    // The other way, then bad input: each line gets an error and the node goes on.
    let back = bn.command(json!({"cmd": "post", "channel": "general", "text": "bob answers"}));
    let back = back["id"].as_str().expect("id").to_string();
    let got = an.wait_for("bob's answer", |e| is_messages_with(e, &back, Some("bob answers")));
    assert_eq!(got["author"], bob.as_str());
    for bad in [
        "this is not json",
        r#"{"cmd": "fly", "to": "the moon"}"#,
        r#"{"cmd": "post", "channel": "general"}"#,
        r#"{"cmd": "edit", "msg": "not-an-id", "text": "x"}"#,
        r#"{"cmd": "post", "channel": "no-such-channel", "text": "x"}"#,
    ] {
        an.send_line(bad);
        let err = an.wait_for(bad, |e| e["event"] == "error" || e["event"] == "done");
        assert_eq!((&err["event"], &err["input"]), (&json!("error"), &json!(bad)), "{err}");
        assert!(err["error"].as_str().is_some_and(|s| !s.is_empty()), "{err}");
    }
    let alive = an.command(json!({"cmd": "post", "channel": "general", "text": "still alive"}));
    let alive = alive["id"].as_str().expect("id").to_string();
    bn.wait_for("the post after bad input", |e| {
        is_messages_with(e, &alive, Some("still alive"))
    });

    an.terminate();
    bn.terminate();
    verify_clean(&a);
    verify_clean(&b);
    let page = |dir: &Path| ok(hearth(dir).args(["--json", "log", "general", "--limit", "100"]));
    let (pa, pb) = (page(&a), page(&b));
    assert_eq!(pa, pb);
    let log = json_lines(&pa);
    assert_eq!(
        texts(&log),
        ["still alive", "bob answers", "after the changes", "first post, edited"]
    );
    assert_eq!(log[3]["reactions"], json!({"👍": ["alice"]}));
    // The deleted reply stays in the thread as a tombstone but is not counted.
    assert_eq!((&log[3]["edited"], &log[3]["reply_count"]), (&json!(true), &json!(1)));
    let thread = json_lines(&ok(hearth(&b).args(["--json", "thread", &first])));
    assert_eq!(texts(&thread), ["first post, edited", "a reply", "(deleted)"]);
    assert_eq!(thread[2]["deleted"], true);
}

const BULK: usize = 3000;
/// Posts per chunk: each chunk waits for its ids, so it becomes its own feed
/// entry (group commit) and the catch-up moves over a hundred entries in
/// several fetch batches, not a handful of entries in one.
const CHUNK: usize = 25;

/// The text of bulk post `n`: 300-odd bytes that do not compress, so that the
/// catch-up has megabytes to move and lasts long enough to be interrupted.
fn bulk_text(n: usize) -> String {
    let mut rng = Rng(n as u64);
    let noise: String = (0..20).map(|_| format!("{:016x}", rng.next())).collect();
    format!("bulk {n:05}: {noise}")
}

/// Post [`BULK`] messages through one `post --stdin`, a chunk at a time.
fn post_bulk(dir: &Path) {
    let mut p = Proc::spawn(
        "post --stdin",
        hearth(dir).args(["post", "general", "--stdin"]).stdin(Stdio::piped()),
    );
    let deadline = Instant::now() + WAIT;
    for start in (0..BULK).step_by(CHUNK) {
        let chunk: Vec<String> = (start..start + CHUNK).map(bulk_text).collect();
        p.send_line(&chunk.join("\n"));
        for _ in 0..CHUNK {
            if p.next_line(deadline).is_none() {
                panic!("no id for a bulk post\n{}", p.report());
            }
        }
    }
    p.stdin.take();
    let status = p.wait(WAIT);
    assert!(status.success(), "{status}\n{}", p.report());
}

/// Size and modification time of every file of a store's sled database: it
/// changes when an ingested batch is written.
fn db_stamp(store: &Path) -> Vec<(PathBuf, u64, Option<std::time::SystemTime>)> {
    let mut v: Vec<_> = files(&store.join("db"))
        .into_iter()
        .filter_map(|f| {
            let m = f.metadata().ok()?;
            Some((f, m.len(), m.modified().ok()))
        })
        .collect();
    v.sort();
    v
}

#[derive(Clone, Copy, Debug)]
enum Kill {
    /// This long after the spawn: while bob's store opens or the dial runs.
    Spawned(Duration),
    /// This long after alice's node sees bob connect: while they compare.
    Connected(Duration),
    /// This long after bob's database is first written once connected: while
    /// fetched batches are being stored.
    Writing(Duration),
}

/// 3. A catch-up killed at random moments: bob's store still opens and verifies,
///    and a later `sync` finishes the job.
#[test]
fn sigkill_during_catch_up_then_sync_completes() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b) = (tmp.path().join("alice"), tmp.path().join("bob"));
    init(&a, "alice");
    init(&b, "bob");
    ok(hearth(&a).args(["channel", "create", "general"]));
    post_bulk(&a);
    let ticket = ok(hearth(&a).args(["invite", "general"])).trim().to_string();
    ok(hearth(&b).args(["join", &ticket, "--timeout", "0"]));
    let joined = verify_clean(&b);
    eprintln!("set-up: {:?}", started.elapsed());

    let (mut node, addr) = start_node("alice's node", &a, &["--listen", LOOPBACK]);
    let mut rng = Rng(0x5359_4e43_4b49_4c4c);
    let mut ms = |below: u64| Duration::from_millis(rng.below_u64(below));
    let kills = [
        Kill::Spawned(ms(300)),
        Kill::Connected(ms(30)),
        Kill::Writing(ms(5)),
        Kill::Writing(ms(10)),
        Kill::Writing(ms(20)),
    ];
    let mut progress = vec![joined];
    // Rounds killed after bob connected, while the catch-up was under way.
    let mut killed_connected = 0;
    for (round, kill) in kills.into_iter().enumerate() {
        node.skip_pending();
        let mut sync = Proc::spawn(
            &format!("bob's sync, round {round}"),
            hearth(&b).args(["sync", "--peer", &addr, "--timeout", "60"]),
        );
        let delay = match kill {
            Kill::Spawned(d) => d,
            Kill::Connected(d) => {
                node.wait_for("bob connecting", |e| e["event"] == "peer_connected");
                d
            }
            Kill::Writing(d) => {
                node.wait_for("bob connecting", |e| e["event"] == "peer_connected");
                let before = db_stamp(&b);
                let deadline = Instant::now() + WAIT;
                while db_stamp(&b) == before && Instant::now() < deadline {
                    if sync.child.try_wait().expect("try_wait").is_some() {
                        break;
                    }
                    thread::sleep(Duration::from_millis(1));
                }
                d
            }
        };
        thread::sleep(delay);
        let outcome = match sync.child.try_wait().expect("try_wait") {
            Some(status) => {
                sync.status = Some(status);
                sync.drain();
                assert!(status.success(), "{status}\n{}", sync.report());
                "finished before the kill"
            }
            None => {
                sync.child.kill().expect("SIGKILL bob's sync");
                let status = sync.wait(WAIT);
                // It may have finished between the look and the kill.
                if status.success() {
                    "finished before the kill"
                } else {
                    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
                    "killed"
                }
            }
        };
        let entries = verify_clean(&b);
        eprintln!("round {round}: {kill:?}: {outcome}; bob holds {entries} entries");
        progress.push(entries);
        if outcome == "killed" && !matches!(kill, Kill::Spawned(_)) {
            killed_connected += 1;
        }
    }

    let synced = json(&ok(hearth(&b).args([
        "--json",
        "sync",
        "--peer",
        &addr,
        "--timeout",
        "60",
    ])));
    assert_eq!(synced["in_sync"], true, "{synced}");
    node.terminate();
    let total = verify_clean(&a);
    assert_eq!(verify_clean(&b), total);
    eprintln!("entries after the join and each round: {progress:?} of {total}");
    // Received entries are durable at bob's next checkpoint, so a kill in the
    // middle of the catch-up may leave none of them or some of them (both are
    // fine: the next sync asks again); what matters is that kills landed there.
    assert!(
        killed_connected > 0,
        "no kill landed after bob connected: {progress:?} of {total}"
    );

    let page = |dir: &Path| ok(hearth(dir).args(["--json", "log", "general", "--limit", "10000"]));
    let (pa, pb) = (page(&a), page(&b));
    assert_eq!(pa.lines().count(), BULK);
    assert!(pa == pb, "the logs differ after the final sync");
    assert_eq!(json(pa.lines().next().expect("a line"))["text"], bulk_text(BULK - 1));
    eprintln!("whole test: {:?}", started.elapsed());
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let path = e.expect("dir entry").path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// 4. A relay holds sealed entries without keys and hands them on: alice and
///    bob are never online at the same time.
#[test]
fn relay_carries_a_channel_between_devices_never_online_together() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b, c, r) = (
        tmp.path().join("alice"),
        tmp.path().join("bob"),
        tmp.path().join("carol"),
        tmp.path().join("relay"),
    );
    // A relay needs no passphrase.
    let mut relay = Proc::spawn("relay", bare(&r).args(["relay", "--listen", LOOPBACK]));
    let raddr = relay.listening();

    init(&a, "alice");
    init(&b, "bob");
    init(&c, "carol");
    ok(hearth(&a).args(["channel", "create", "general"]));
    // Bob is let in once by Alice's node (a ticket holds no channel key, and
    // a relay lets nobody in); after that they are never online together.
    let (mut an, _) = start_node("alice's node", &a, &["--listen", LOOPBACK]);
    let ticket = node_invite(&mut an, json!({}));
    let joined = json(&ok(hearth(&b).args(["--json", "join", &ticket, "--timeout", "60"])));
    assert_eq!(joined["pending"], false, "{joined}");
    an.terminate();
    let secrets = [
        "the relay must never see this: tangerine-47-zebra",
        "nor this one: quartz-otter-1911",
    ];
    for s in secrets {
        ok(hearth(&a).args(["post", "general", s]));
    }

    // A relay Alice does not trust (`--peer`) is given nothing.
    let untrusted = json(&ok(hearth(&a).args([
        "--json",
        "sync",
        "--peer",
        &raddr,
        "--timeout",
        "60",
    ])));
    assert_eq!(untrusted["sent"].as_u64(), Some(0), "{untrusted}");
    let up = json(&ok(hearth(&a).args([
        "--json",
        "sync",
        "--relay",
        &raddr,
        "--timeout",
        "60",
    ])));
    assert!(up["sent"].as_u64() >= Some(1), "{up}");
    // Alice is offline from here on: only the relay holds her entries. Bob
    // proves membership to the relay with the access key Alice granted it.
    let down = json(&ok(hearth(&b).args([
        "--json",
        "sync",
        "--peer",
        &raddr,
        "--timeout",
        "60",
    ])));
    assert!(down["received"].as_u64() >= Some(1), "{down}");
    let log = json_lines(&ok(hearth(&b).args(["--json", "log", "general"])));
    assert_eq!(texts(&log), [secrets[1], secrets[0]]);
    // The ticket gets Carol nothing from the relay: it lets nobody in.
    ok(hearth(&c).args(["join", &ticket, "--timeout", "0"]));
    let mut carol = Proc::spawn(
        "carol's sync with the relay",
        hearth(&c).args(["sync", "--peer", &raddr, "--timeout", "60"]),
    );
    assert!(carol.wait(WAIT).success(), "{}", carol.report());
    carol.drain();
    assert!(carol.stderr().contains("lets nobody in"), "{}", carol.report());
    let err = fails(hearth(&c).args(["log", "general"]));
    assert!(err.contains("let this device in"), "{err}");

    // And back: bob's answer reaches alice through the relay too.
    let answer = "bob's answer, also sealed: marmalade-2718";
    ok(hearth(&b).args(["post", "general", answer]));
    ok(hearth(&b).args(["sync", "--peer", &raddr, "--timeout", "60"]));
    ok(hearth(&a).args(["sync", "--peer", &raddr, "--timeout", "60"]));
    let log = json_lines(&ok(hearth(&a).args(["--json", "log", "general"])));
    assert_eq!(texts(&log), [answer, secrets[1], secrets[0]]);
    relay.terminate();

    let stored = files(&r);
    let bytes: u64 = stored.iter().map(|f| f.metadata().expect("metadata").len()).sum();
    assert!(bytes > 0, "the relay stored nothing");
    for f in &stored {
        let data = std::fs::read(f).expect("read a relay file");
        for s in secrets.iter().chain([&answer]) {
            assert!(
                !data.windows(s.len()).any(|w| w == s.as_bytes()),
                "{} holds plaintext {s:?}",
                f.display()
            );
        }
    }
}

/// Right after `join`, offline, the channel answers to the name its ticket
/// carried: not let in yet, it says so (it used to be "unknown channel");
/// once a member's node lets the device in, the channel's own name is used.
#[test]
fn a_joined_channel_answers_to_its_ticket_name_at_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b) = (tmp.path().join("alice"), tmp.path().join("bob"));
    init(&a, "alice");
    init(&b, "bob");
    ok(hearth(&a).args(["channel", "create", "general"]));
    let ticket = ok(hearth(&a).args(["invite", "general"])).trim().to_string();
    let joined = json(&ok(hearth(&b).args(["--json", "join", &ticket, "--timeout", "0"])));
    assert_eq!((&joined["name"], &joined["pending"]), (&json!("general"), &json!(true)));
    let err = fails(hearth(&b).args(["post", "general", "written before anyone let me in"]));
    assert!(err.contains("no member has let this device in yet"), "{err}");
    let list = json_lines(&ok(hearth(&b).args(["--json", "channel", "list"])));
    assert_eq!(list.len(), 1);
    assert_eq!(
        (&list[0]["name"], &list[0]["pending"]),
        (&json!("general"), &json!(true))
    );
    // The pending invite survives a reopen (kept sealed beside the store).
    let err = fails(hearth(&b).args(["log", "general"]));
    assert!(err.contains("no member has let this device in yet"), "{err}");

    // Renamed before Bob was let in: the channel's own name wins.
    ok(hearth(&a).args(["channel", "rename", "general", "lobby"]));
    let (an, addr) = start_node("alice's node", &a, &["--listen", LOOPBACK]);
    let (mut bn, _) = start_node("bob's node", &b, &["--listen", LOOPBACK, "--peer", &addr]);
    let joined = bn.wait_for("bob let in", |e| e["event"] == "joined");
    assert_eq!(joined["name"], "lobby", "{joined}");
    bn.wait_for("a sync that brings the channel", |e| {
        e["event"] == "synced" && e["in_sync"] == true && e["channels"] == 1
    });
    bn.terminate();
    an.terminate();
    let list = json_lines(&ok(hearth(&b).args(["--json", "channel", "list"])));
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(
        (&list[0]["name"], &list[0]["pending"]),
        (&json!("lobby"), &json!(false))
    );
    ok(hearth(&b).args(["post", "lobby", "let in"]));
    fails(hearth(&b).args(["post", "general", "the old name is gone"]));
}

/// `hearth link` and `init --link`: both devices show one code, and the new
/// device gets its keys only once the code is confirmed on the linking
/// device (a line on its stdin); a declined link leaves no store behind.
#[test]
fn linking_a_device_shows_one_code_on_both_and_waits_for_confirmation() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, phone, other) = (
        tmp.path().join("alice"),
        tmp.path().join("phone"),
        tmp.path().join("other"),
    );
    init(&a, "alice");
    ok(hearth(&a).args(["channel", "create", "general"]));
    ok(hearth(&a).args(["post", "general", "before the phone"]));
    let start = |dir: &Path| {
        let mut link = Proc::spawn(
            "link",
            hearth(&a)
                .args(["--json", "link", "--listen", LOOPBACK])
                .stdin(Stdio::piped()),
        );
        let ticket = link.wait_for("the ticket", |e| e["event"] == "link_ticket")["ticket"]
            .as_str()
            .expect("ticket")
            .to_string();
        let mut new = Proc::spawn("init --link", hearth(dir).args(["--json", "init", "--link", &ticket]));
        let shown = new.wait_for("the new device's code", |e| e["event"] == "link_code")["code"].clone();
        let asked = link.wait_for("the request", |e| e["event"] == "link_request")["code"].clone();
        assert_eq!(asked, shown, "both devices show the same code");
        assert!(shown.as_str().is_some_and(|c| c.len() == 7), "{shown}");
        (link, new)
    };

    let (mut link, mut new) = start(&phone);
    thread::sleep(Duration::from_millis(500));
    assert!(
        !phone.join("header").exists(),
        "the new device got its keys before the code was confirmed"
    );
    link.send_line("y");
    assert!(new.wait(WAIT).success(), "{}", new.report());
    new.drain();
    let created = json(new.seen.last().expect("a result line"));
    assert_eq!(created["channels"], 1, "{created}");
    assert!(link.wait(WAIT).success(), "{}", link.report());
    let log = json_lines(&ok(hearth(&phone).args(["--json", "log", "general"])));
    assert_eq!(texts(&log), ["before the phone"]);

    // Declined: nothing is sent, both sides say so, no store is made.
    let (mut link, mut new) = start(&other);
    link.send_line("n");
    assert!(!new.wait(WAIT).success());
    assert!(!link.wait(WAIT).success());
    link.drain();
    assert!(link.stderr().contains("declined"), "{}", link.report());
    assert!(!other.join("header").exists());
}

/// `hearth member`: the maker of a channel owns it, lists its roster, makes
/// a member an admin and removes them; the removed member's later post never
/// reaches the owner, whose node serves the removed member nothing more
/// (sync protocol 5: not even the removal; see docs/trust.md).
#[test]
fn member_list_role_and_remove_through_the_cli() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b) = (tmp.path().join("alice"), tmp.path().join("bob"));
    let alice = init(&a, "alice");
    let bob = init(&b, "bob");
    ok(hearth(&a).args(["channel", "create", "general"]));
    let (mut an, _) = start_node("alice's node", &a, &["--listen", LOOPBACK]);
    let ticket = node_invite(&mut an, json!({"uses": 1, "expires": "1h"}));
    ok(hearth(&b).args(["join", &ticket, "--timeout", "60"]));
    an.terminate();
    ok(hearth(&b).args(["post", "general", "before the removal"]));
    let sync = || {
        let (an, addr) = start_node("alice's node", &a, &["--listen", LOOPBACK]);
        let (mut bn, _) = start_node("bob's node", &b, &["--listen", LOOPBACK, "--peer", &addr]);
        bn.wait_for("a sync", |e| e["event"] == "synced");
        bn.terminate();
        an.terminate();
    };
    sync();
    let roster = json_lines(&ok(hearth(&a).args(["--json", "member", "list", "general"])));
    let role = |r: &[Value], user: &str| {
        r.iter()
            .find(|m| m["user"] == user)
            .map(|m| m["role"].as_str().expect("role").to_string())
    };
    assert_eq!(role(&roster, &alice).as_deref(), Some("owner"), "{roster:?}");
    assert_eq!(role(&roster, &bob).as_deref(), Some("member"), "{roster:?}");
    // Bob may not promote himself; Alice names him by name, then by prefix.
    let err = fails(hearth(&b).args(["member", "role", "general", "bob", "admin"]));
    assert!(err.contains("not allowed"), "{err}");
    ok(hearth(&a).args(["member", "role", "general", "bob", "admin"]));
    ok(hearth(&a).args(["member", "remove", "general", &bob[..12]]));
    let err = fails(hearth(&a).args(["member", "leave", "general"]));
    assert!(err.contains("last owner"), "{err}");
    ok(hearth(&b).args(["post", "general", "after the removal"]));
    sync();
    let log = json_lines(&ok(hearth(&a).args(["--json", "log", "general"])));
    assert_eq!(texts(&log), ["before the removal"]);
    // Alice writes on; Bob's node is served none of it.
    ok(hearth(&a).args(["post", "general", "after bob left"]));
    sync();
    let log = json_lines(&ok(hearth(&b).args(["--json", "log", "general"])));
    assert_eq!(texts(&log), ["after the removal", "before the removal"], "{log:?}");
}

/// Make an invite through a running node's stdin (the CLI cannot open the
/// store while the node holds it); returns the ticket.
fn node_invite(node: &mut Proc, extra: Value) -> String {
    let mut cmd = json!({"cmd": "invite", "channel": "general"});
    if let (Some(c), Some(e)) = (cmd.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    node.command(cmd)["ticket"].as_str().expect("a ticket").to_string()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `hearth --json join TICKET` that a member's node refused: it exits 1 and
/// says why on stdout.
fn refused_join(dir: &Path, ticket: &str) -> Value {
    let out = run(hearth(dir).args(["--json", "join", ticket, "--timeout", "60"]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&stdout);
    assert_eq!(v["pending"], true, "{v}");
    v
}

/// `hearth invite --uses/--expires`, `invite list`, `invite revoke`: a ticket
/// holds no channel key; alice's node lets in as many users as the invite
/// allows, until it ends or is revoked, and refuses the rest with why.
#[test]
fn invites_end_by_uses_expiry_and_revocation_through_the_cli() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = |n: &str| tmp.path().join(n);
    let (a, b, c, d) = (dir("alice"), dir("bob"), dir("carol"), dir("dave"));
    init(&a, "alice");
    let bob = init(&b, "bob");
    init(&c, "carol");
    init(&d, "dave");
    ok(hearth(&a).args(["channel", "create", "general"]));
    ok(hearth(&a).args(["post", "general", "welcome"]));
    // With the node stopped, the CLI makes the invites (the ticket carries
    // the address the last node listened on).
    let (an, addr) = start_node("alice's first node", &a, &["--listen", LOOPBACK]);
    an.terminate();
    let invite = |extra: &[&str]| {
        let mut args = vec!["--json", "invite", "general"];
        args.extend_from_slice(extra);
        json(&ok(hearth(&a).args(&args)))
    };
    let once = invite(&["--uses", "1", "--expires", "24h"]);
    let ticket = once["ticket"].as_str().expect("ticket").to_string();
    assert_eq!(once["uses"], 1, "{once}");
    assert!(once["expires"].as_u64().is_some(), "{once}");
    let open = invite(&[]);
    let open_ticket = open["ticket"].as_str().expect("ticket").to_string();
    let id = open["invite"].as_str().expect("invite id").to_string();
    let brief = invite(&["--expires", "1s"]);
    for (bad, why) in [(["--uses", "0"], "--uses"), (["--expires", "soon"], "unit")] {
        let out = run(hearth(&a).args(["invite", "general"]).args(bad));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {err}");
        assert!(err.contains(why), "{bad:?}: {err}");
    }

    // Bob uses the one-use invite; Carol, with the same ticket, is refused.
    let port = addr.split("/p2p/").next().expect("an address");
    let start = || start_node("alice's node", &a, &["--listen", port]).0;
    let an = start();
    let joined = json(&ok(hearth(&b).args(["--json", "join", &ticket, "--timeout", "60"])));
    assert_eq!(joined["pending"], false, "{joined}");
    let log = json_lines(&ok(hearth(&b).args(["--json", "log", "general"])));
    assert_eq!(texts(&log), ["welcome"]);
    let refused = refused_join(&c, &ticket);
    assert!(
        refused["refused"][0].as_str().is_some_and(|w| w.contains("used up")),
        "{refused}"
    );
    assert!(fails(hearth(&c).args(["log", "general"])).contains("let this device in"));
    an.terminate();

    let listed = json_lines(&ok(hearth(&a).args(["--json", "invite", "list", "general"])));
    assert_eq!(listed.len(), 3, "{listed:?}");
    let used = listed
        .iter()
        .find(|i| i["used"] == json!([bob]))
        .expect("the used invite");
    assert_eq!(used["closed"], "the invite is used up", "{listed:?}");

    // Revoked: nobody gets in any more. A member (bob) may not invite.
    assert!(fails(hearth(&b).args(["invite", "general"])).contains("only admins and owners invite"));
    ok(hearth(&a).args(["invite", "revoke", "general", &id[..8]]));
    let an = start();
    let refused = refused_join(&d, &open_ticket);
    assert!(
        refused["refused"][0].as_str().is_some_and(|w| w.contains("revoked")),
        "{refused}"
    );
    an.terminate();

    // Past its end: refused before anything is sent.
    let wait = brief["expires"].as_u64().expect("an end").saturating_sub(unix_now());
    thread::sleep(Duration::from_secs(wait + 1));
    let err = fails(hearth(&d).args(["join", brief["ticket"].as_str().expect("ticket"), "--timeout", "5"]));
    assert!(err.contains("expired"), "{err}");
}

/// The schemas the node's lines are checked against refuse what does not
/// follow them (so that passing the check means something).
#[test]
fn the_node_protocol_schemas_refuse_lines_that_break_them() {
    let id = "ab".repeat(24);
    let channel = "cd".repeat(32);
    let user = "ef".repeat(32);
    protocol::check_event(
        &json!({"event": "message", "channel": channel, "id": id, "author": user, "local": false, "text": "hi"}),
    );
    protocol::check_command(&json!({"cmd": "post", "channel": "general", "text": "hi"}));
    let refused = |f: fn()| std::panic::catch_unwind(f).is_err();
    assert!(refused(|| protocol::check_event(
        &json!({"event": "message", "id": "not hex"})
    )));
    assert!(refused(|| protocol::check_event(&json!({"event": "no such event"}))));
    assert!(refused(|| protocol::check_event(
        &json!({"event": "stopped", "extra": 1})
    )));
    assert!(refused(|| protocol::check_command(
        &json!({"cmd": "post", "text": "no channel"})
    )));
}
