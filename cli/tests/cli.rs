//! The `hearth` command-line contract, run against the real binary: exit codes
//! (0 ok, 1 error with one `error: ` line on stderr, 2 usage error), where the
//! passphrase comes from, a store locked by another process, and every command's
//! happy path with its `--json` output (one object per line for lists).
//!
//! Every command that opens a store pays one Argon2id derivation at the default
//! cost, so the scenarios share stores and stay under 60 invocations in all.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use hearth::MessageId;
use serde_json::Value;

#[path = "../../tests/support/answers.rs"]
mod answers;
use answers::copy_dir;

const PASS: &str = "cli test passphrase";

/// A `hearth --store DIR` command with no passphrase in its environment.
fn bare(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hearth"));
    c.arg("--store")
        .arg(dir)
        .env_remove("HEARTH_PASSPHRASE")
        .env_remove("HEARTH_NEW_PASSPHRASE");
    c.stdin(Stdio::null());
    c
}

/// The same with the store passphrase set.
fn hearth(dir: &Path) -> Command {
    let mut c = bare(dir);
    c.env("HEARTH_PASSPHRASE", PASS);
    c
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run hearth")
}

/// Run with `input` on standard input.
fn run_with_input(cmd: &mut Command, input: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hearth");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

/// Run, expect exit 0, return stdout.
fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?}: exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
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

/// Run, expect a usage error: exit 2, nothing on stdout.
fn usage(cmd: &mut Command) -> String {
    let out = run(cmd);
    let err = String::from_utf8(out.stderr).expect("utf-8 stderr");
    assert_eq!(out.status.code(), Some(2), "{cmd:?}: stderr: {err}");
    assert!(out.stdout.is_empty(), "{cmd:?}");
    assert!(err.starts_with("error: "), "{cmd:?}: {err:?}");
    err
}

fn json(s: &str) -> Value {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("not one JSON object: {s:?}: {e}"))
}

fn json_lines(s: &str) -> Vec<Value> {
    s.lines().map(json).collect()
}

fn id_of(v: &Value) -> MessageId {
    v["id"].as_str().expect("an id string").parse().expect("a message id")
}

fn init(dir: &Path, user: &str) {
    ok(hearth(dir).args(["init", "--user", user]));
}

fn store(tmp: &tempfile::TempDir) -> PathBuf {
    tmp.path().join("store")
}

/// A fresh store of `user` with a channel "general": its temporary
/// directory (removed on drop) and the store's path.
fn store_with_general(user: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = store(&tmp);
    init(&dir, user);
    ok(hearth(&dir).args(["channel", "create", "general"]));
    (tmp, dir)
}

#[test]
fn usage_errors_exit_2() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = store(&tmp);
    let zeros = "00".repeat(MessageId::LEN);
    assert!(usage(hearth(&dir).arg("frobnicate")).contains("frobnicate"));
    assert!(usage(hearth(&dir).args(["show", "not-an-id"])).contains("not-an-id"));
    usage(hearth(&dir).args(["react", "0123456789abcdef", "👍"]));
    usage(hearth(&dir).args(["edit", &zeros, "epoch 0 holds no messages"]));
    usage(hearth(&dir).arg("post"));
    usage(hearth(&dir).args(["post", "general", "text", "--stdin"]));
    usage(hearth(&dir).args(["log", "general", "--limit", "many"]));
    // None of them touched the directory.
    assert!(!dir.exists());
}

#[test]
fn completions_and_the_manual_page_need_no_store() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = store(&tmp);
    // Every subcommand is completed, in each shell's own form.
    let bash = ok(bare(&dir).args(["completions", "bash"]));
    assert!(bash.starts_with("_hearth()"), "{bash}");
    for sub in ["init", "post", "channel", "node", "completions", "man"] {
        assert!(bash.contains(sub), "bash completion lacks {sub}");
    }
    assert!(ok(bare(&dir).args(["completions", "zsh"])).starts_with("#compdef hearth"));
    assert!(ok(bare(&dir).args(["completions", "fish"])).contains("complete -c hearth"));
    assert!(usage(bare(&dir).args(["completions", "tcsh"])).contains("tcsh"));
    // The manual page: roff, named, with the commands.
    let man = ok(bare(&dir).arg("man"));
    assert!(man.contains(".TH hearth 1"), "{man}");
    assert!(man.contains(".SH SUBCOMMANDS") && man.contains("completions"), "{man}");
    // A reader that stops early is no error.
    let mut child = bare(&dir)
        .arg("man")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // None of them touched the store's directory.
    assert!(!dir.exists());
}

#[test]
fn passphrase_sources_and_their_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = store(&tmp);
    // Not a store yet: a clear error before any passphrase is used.
    assert!(fails(hearth(&dir).arg("stats")).contains("no Hearth store"));

    let created = json(&ok(hearth(&dir).args(["--json", "init", "--user", "pat"])));
    assert_eq!(created["name"], "pat");
    assert_eq!(created["user"].as_str().expect("user").len(), 64);
    assert!(created["device"].is_string() && created["dir"].is_string(), "{created}");
    assert!(fails(hearth(&dir).arg("init")).contains("already exists"));

    let none = fails(bare(&dir).arg("stats"));
    assert!(none.starts_with("error: no passphrase"), "{none}");
    assert!(
        none.contains("HEARTH_PASSPHRASE") && none.contains("--passphrase-file"),
        "{none}"
    );
    assert!(fails(bare(&dir).arg("stats").env("HEARTH_PASSPHRASE", "")).contains("empty"));
    assert!(fails(bare(&dir).arg("stats").env("HEARTH_PASSPHRASE", "not it")).contains("wrong passphrase"));

    let right = tmp.path().join("right");
    std::fs::write(&right, format!("{PASS}\nthe second line is ignored\n")).expect("write");
    let wrong = tmp.path().join("wrong");
    std::fs::write(&wrong, "not it\n").expect("write");
    let stats = json(&ok(bare(&dir)
        .arg("--passphrase-file")
        .arg(&right)
        .args(["--json", "stats"])));
    assert_eq!(stats["channels"], 0);
    assert!(fails(bare(&dir).arg("--passphrase-file").arg(&wrong).arg("stats")).contains("wrong passphrase"));
    assert!(
        fails(
            bare(&dir)
                .arg("--passphrase-file")
                .arg(tmp.path().join("missing"))
                .arg("stats")
        )
        .contains("passphrase file")
    );
    // HEARTH_PASSPHRASE wins over the file.
    ok(hearth(&dir).arg("--passphrase-file").arg(&wrong).arg("stats"));
}

#[test]
fn a_store_held_by_another_process_is_locked() {
    let (_tmp, dir) = store_with_general("lou");

    let mut holder = hearth(&dir)
        .args(["post", "general", "--stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the holder");
    let mut stdin = holder.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(holder.stdout.take().expect("stdout"));
    writeln!(stdin, "held").expect("write");
    stdin.flush().expect("flush");
    // Its first id proves it has the store open.
    let mut line = String::new();
    stdout.read_line(&mut line).expect("read the first id");
    let held: MessageId = line.trim().parse().expect("an id");

    let err = fails(hearth(&dir).arg("stats"));
    assert!(err.contains("locked"), "{err}");

    drop(stdin);
    let rest: Vec<String> = stdout.lines().map(|l| l.expect("line")).collect();
    assert!(rest.is_empty(), "{rest:?}");
    let status = holder.wait().expect("wait");
    assert!(status.success(), "the holder ends cleanly at end of input: {status}");
    let shown = json(&ok(hearth(&dir).args(["--json", "show", &held.to_hex()])));
    assert_eq!(shown["text"], "held");
}

#[test]
fn every_command_works_and_speaks_json() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = store(&tmp);
    init(&dir, "alice");
    let h = |args: &[&str]| ok(hearth(&dir).args(args));
    let hj = |args: &[&str]| ok(hearth(&dir).arg("--json").args(args));

    // Channels.
    let general = json(&hj(&["channel", "create", "general"]));
    assert_eq!(general["name"], "general");
    let general_id = general["id"].as_str().expect("id").to_string();
    let random_id = h(&["channel", "create", "random"]).trim().to_string();
    assert_eq!(random_id.len(), 64, "plain output is the channel id: {random_id}");
    assert_eq!(
        json(&hj(&["channel", "rename", &random_id[..8], "watercooler"]))["name"],
        "watercooler"
    );

    // Posts, replies, reactions, edits, deletes.
    let first = id_of(&json(&hj(&["post", "general", "hello world"])));
    let second: MessageId = h(&["post", &general_id, "second"])
        .trim()
        .parse()
        .expect("plain output is the id");
    let reply = id_of(&json(&hj(&[
        "post",
        "general",
        "a reply",
        "--reply-to",
        &first.to_hex(),
    ])));
    let reacted = json(&hj(&["react", &first.to_hex(), "👍"]));
    assert_eq!(
        (reacted["emoji"].as_str(), reacted["removed"].as_bool()),
        (Some("👍"), Some(false))
    );
    assert_eq!(json(&hj(&["edit", &second.to_hex(), "second, edited"]))["edited"], true);
    let typo = id_of(&json(&hj(&["post", "watercooler", "tpyo"])));
    assert_eq!(json(&hj(&["delete", &typo.to_hex()]))["deleted"], true);

    let shown = json(&hj(&["show", &first.to_hex()]));
    assert_eq!(shown["text"], "hello world");
    assert_eq!(shown["channel"], general_id.as_str());
    assert_eq!(shown["author_name"], "alice");
    assert_eq!(shown["reply_count"], 1);
    assert_eq!(shown["reactions"]["👍"], serde_json::json!(["alice"]));
    assert_eq!(shown["edited"], false);
    let deleted = json(&hj(&["show", &typo.to_hex()]));
    assert_eq!(
        (deleted["deleted"].as_bool(), deleted["text"].is_null()),
        (Some(true), true)
    );
    let plain = h(&["show", &second.to_hex()]);
    assert!(
        plain.contains("second, edited") && plain.contains("edited:   true"),
        "{plain}"
    );

    // Streaming posts: one id per line, in input order; empty lines are
    // skipped. The same through the bulk path (`--bulk`).
    let mut streamed = Vec::new();
    for (args, lines) in [
        (
            &["post", "general", "--stdin"][..],
            &b"stream 1\nstream 2\n\nstream 3\n"[..],
        ),
        (
            &["post", "general", "--stdin", "--bulk"][..],
            &b"stream 4\n\nstream 5\n"[..],
        ),
    ] {
        let mut child = hearth(&dir)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn");
        child.stdin.take().expect("stdin").write_all(lines).expect("write");
        let out = child.wait_with_output().expect("wait");
        assert!(out.status.success());
        streamed.extend(
            String::from_utf8(out.stdout)
                .expect("utf-8")
                .lines()
                .map(|l| l.parse::<MessageId>().expect("one id per line")),
        );
    }
    assert_eq!(streamed.len(), 5);
    assert!(streamed.windows(2).all(|w| w[0] < w[1]), "ids in input order");

    // Import: plain posts (replies by id are pinned in `import_reply_to_takes_a_printed_id`).
    let file = tmp.path().join("import.jsonl");
    std::fs::write(
        &file,
        "{\"text\": \"imported 1\"}\n\n{\"text\": \"imported 2\"}\n{\"text\": \"imported 3\"}\n",
    )
    .expect("write");
    let summary = json(&hj(&["import", "general", file.to_str().expect("utf-8 path")]));
    assert_eq!(summary["imported"], 3);

    // Log: top-level messages, newest first.
    let log = json_lines(&hj(&["log", "general", "--limit", "50"]));
    let texts: Vec<&str> = log.iter().map(|m| m["text"].as_str().expect("text")).collect();
    assert_eq!(
        texts,
        [
            "imported 3",
            "imported 2",
            "imported 1",
            "stream 5",
            "stream 4",
            "stream 3",
            "stream 2",
            "stream 1",
            "second, edited",
            "hello world"
        ]
    );
    assert_eq!(id_of(&log[8]), second);
    assert_eq!(log[8]["edited"], true);
    assert_eq!(
        json_lines(&hj(&[
            "log",
            "general",
            "--limit",
            "2",
            "--before",
            &streamed[2].to_hex()
        ]))
        .len(),
        2
    );

    // Thread: root then replies, oldest first, from the root or from a reply.
    let thread = json_lines(&hj(&["thread", &reply.to_hex()]));
    assert_eq!(thread.iter().map(id_of).collect::<Vec<_>>(), [first, reply]);
    assert_eq!(thread[1]["reply_to"], first.to_hex().as_str());

    // Channel list: one object per line, by name, with counts and unread counts
    // (one's own messages are never unread).
    let list = json_lines(&hj(&["channel", "list"]));
    assert_eq!(list.len(), 2);
    assert_eq!(
        (list[0]["name"].as_str(), list[0]["messages"].as_u64()),
        (Some("general"), Some(11))
    );
    assert_eq!(
        (list[1]["name"].as_str(), list[1]["messages"].as_u64()),
        (Some("watercooler"), Some(1))
    );
    assert!(list.iter().all(|c| c["unread"] == 0), "{list:?}");
    assert_eq!(list[1]["id"], random_id.as_str());
    let read = json(&hj(&["read", "general"]));
    assert_eq!(
        (read["channel"].as_str(), read["unread"].as_u64()),
        (Some(general_id.as_str()), Some(0))
    );

    // Stats and verify.
    let stats = json(&hj(&["stats"]));
    assert_eq!(
        (stats["channels"].as_u64(), stats["messages"].as_u64()),
        (Some(2), Some(12))
    );
    assert!(stats["disk_bytes"].as_u64().expect("disk_bytes") > 0);
    assert!(h(&["verify"]).contains("clean"));
    let report = json(&hj(&["verify"]));
    assert_eq!(report["problems"], serde_json::json!([]));
    assert_eq!(report["channels"], 2);

    // Passwd: the old passphrase stops working, the new one works.
    let changed = json(&ok(hearth(&dir)
        .args(["--json", "passwd"])
        .env("HEARTH_NEW_PASSPHRASE", "a new passphrase")));
    assert_eq!(changed["passphrase"], "changed");
    assert!(fails(hearth(&dir).arg("stats")).contains("wrong passphrase"));
    let shown = json(&ok(bare(&dir)
        .args(["--json", "show", &first.to_hex()])
        .env("HEARTH_PASSPHRASE", "a new passphrase")));
    assert_eq!(shown["text"], "hello world");

    // Passwd --rotate-key: a new master key (the passphrase may stay), the
    // store re-sealed, everything still there.
    let rotated = json(&ok(bare(&dir)
        .args(["--json", "passwd", "--rotate-key"])
        .env("HEARTH_PASSPHRASE", "a new passphrase")
        .env("HEARTH_NEW_PASSPHRASE", "a new passphrase")));
    assert_eq!(rotated["master_key"], "rotated");
    assert_eq!(rotated["verify_clean"], true);
    assert!(rotated["resealed"].as_u64() >= Some(3), "{rotated}");
    let shown = json(&ok(bare(&dir)
        .args(["--json", "show", &first.to_hex()])
        .env("HEARTH_PASSPHRASE", "a new passphrase")));
    assert_eq!(shown["text"], "hello world");
    let stats = json(&ok(bare(&dir)
        .args(["--json", "stats"])
        .env("HEARTH_PASSPHRASE", "a new passphrase")));
    assert_eq!(stats["messages"].as_u64(), Some(12));
}

/// `import` documents its lines as `{"text": .., "reply_to"?: ..}`, and ids are
/// printed as hex everywhere, so `reply_to` takes the hex id the CLI printed.
/// Regression: ids once had derived serde (a JSON array of bytes) and the hex id
/// was refused.
#[test]
fn import_reply_to_takes_a_printed_id() {
    let (tmp, dir) = store_with_general("ivy");
    let root: MessageId = ok(hearth(&dir).args(["post", "general", "root"]))
        .trim()
        .parse()
        .expect("id");
    let file = tmp.path().join("import.jsonl");
    let lines = format!(
        "{{\"text\": \"top\"}}\n{{\"text\": \"reply 1\", \"reply_to\": \"{root}\"}}\n{{\"text\": \"reply 2\", \"reply_to\": \"{root}\"}}\n"
    );
    std::fs::write(&file, lines).expect("write");
    let summary = json(&ok(hearth(&dir).args([
        "--json",
        "import",
        "general",
        file.to_str().expect("utf-8"),
    ])));
    assert_eq!(summary["imported"], 3);
    let thread = json_lines(&ok(hearth(&dir).args(["--json", "thread", &root.to_hex()])));
    let texts: Vec<&str> = thread.iter().map(|m| m["text"].as_str().expect("text")).collect();
    assert_eq!(texts, ["root", "reply 1", "reply 2"]);
}

/// `hearth import` goes through the bulk path in runs of what has been
/// read: a line that cannot be a post ends it, after everything before it
/// is stored; a reply to a message that is not there refuses its whole run.
#[test]
fn an_import_stops_at_a_bad_line_and_keeps_the_lines_before_it() {
    let (tmp, dir) = store_with_general("ivy");
    let import = |name: &str, lines: String| {
        let file = tmp.path().join(name);
        std::fs::write(&file, lines).expect("write");
        fails(hearth(&dir).args(["import", "general", file.to_str().expect("utf-8")]))
    };
    let count = || json_lines(&ok(hearth(&dir).args(["--json", "log", "general", "--limit", "100"]))).len();
    let err = import(
        "bad-json.jsonl",
        "{\"text\": \"a\"}\n{\"text\": \"b\"}\n{\"text\": \"c\"}\n{\"text\": \n{\"text\": \"d\"}\n".into(),
    );
    assert!(
        err.contains("line 4") && err.contains("(3 messages before it were stored)"),
        "{err}"
    );
    assert_eq!(count(), 3);
    let long = "x".repeat(hearth::MAX_TEXT_BYTES + 1);
    let err = import(
        "too-long.jsonl",
        format!("{{\"text\": \"e\"}}\n{{\"text\": \"f\"}}\n{{\"text\": \"{long}\"}}\n{{\"text\": \"g\"}}\n"),
    );
    assert!(err.contains("(2 messages before it were stored)"), "{err}");
    assert_eq!(count(), 5);
    // A reply to nothing, first in its run: the run is refused whole.
    let nowhere = format!("{:048x}", 1u128 << 100);
    let err = import(
        "reply-to-nothing.jsonl",
        format!("{{\"text\": \"h\", \"reply_to\": \"{nowhere}\"}}\n{{\"text\": \"i\"}}\n"),
    );
    assert!(err.contains("(0 messages were stored)"), "{err}");
    assert_eq!(count(), 5);
    let texts: Vec<String> = json_lines(&ok(hearth(&dir).args(["--json", "log", "general"])))
        .iter()
        .map(|m| m["text"].as_str().expect("text").to_string())
        .collect();
    assert_eq!(texts, ["f", "e", "c", "b", "a"]);
    ok(hearth(&dir).args(["verify"]));
}

#[test]
fn demo_runs_anywhere_and_ends_clean() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // The demo needs no store and no passphrase.
    let out = ok(bare(&tmp.path().join("unused")).arg("demo"));
    assert!(out.contains("clean"), "{out}");
    assert!(
        out.contains("watercooler") && out.contains("The release is on Friday."),
        "{out}"
    );
}

/// The database is derived state: after losing it the next command rebuilds
/// it from the feed log (saying so on stderr), and `hearth repair` rebuilds it
/// on demand and reports what it did.
#[test]
fn a_lost_database_is_rebuilt_and_repair_reports() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("s");
    ok(hearth(&dir).args(["init", "--user", "erin"]));
    ok(hearth(&dir).args(["channel", "create", "c"]));
    let id = ok(hearth(&dir).args(["post", "c", "kept through a rebuild"]));
    ok(hearth(&dir).args(["react", id.trim(), "👍"]));
    std::fs::remove_dir_all(dir.join("db")).expect("rm db");
    let out = run(hearth(&dir).args(["log", "c"]));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("kept through a rebuild"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rebuilt the database"), "{err}");
    let report = ok(hearth(&dir).args(["--json", "repair"]));
    let v: Value = serde_json::from_str(report.trim()).expect("json");
    assert!(v["open"]["rebuilt"].is_string(), "{v}");
    assert!(v["open"]["log_entries"].as_u64().expect("count") >= 2, "{v}");
    assert_eq!(v["verify"]["problems"].as_array().map(Vec::len), Some(0), "{v}");
    let show = ok(hearth(&dir).args(["show", id.trim()]));
    assert!(show.contains("kept through a rebuild") && show.contains("👍"), "{show}");
}

/// `hearth compact` after a delete: the deleted text's segment is dropped
/// from the entries, the log is rewritten, sled built afresh; what stays is
/// there and verify is clean.
#[test]
fn compact_drops_deleted_texts_and_keeps_the_rest() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("s");
    ok(hearth(&dir).args(["init", "--user", "erin"]));
    ok(hearth(&dir).args(["channel", "create", "c"]));
    let kept = ok(hearth(&dir).args(["post", "c", "this one stays"]));
    let gone = ok(hearth(&dir).args(["post", "c", "this one goes"]));
    ok(hearth(&dir).args(["delete", gone.trim()]));
    // Before the compaction the log still holds it: `verify --find` says so.
    let before = run_with_input(hearth(&dir).args(["verify", "--find"]), "this one goes\n");
    assert_eq!(before.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&before.stdout).contains("found in log"),
        "{before:?}"
    );
    let report = ok(hearth(&dir).args(["--json", "compact"]));
    let v: Value = serde_json::from_str(report.trim()).expect("json");
    assert_eq!(v["texts_dropped"], 1, "{v}");
    assert_eq!(v["entries_rewritten"], 1, "{v}");
    assert_eq!(v["verify_clean"], true, "{v}");
    for left in ["compact", "compacted", "compact.tmp", "log.old"] {
        assert!(!dir.join(left).exists(), "{left}");
    }
    let log = ok(hearth(&dir).args(["log", "c"]));
    assert!(
        log.contains("this one stays") && !log.contains("this one goes"),
        "{log}"
    );
    let show = ok(hearth(&dir).args(["show", kept.trim()]));
    assert!(show.contains("this one stays"), "{show}");
    let gone = run_with_input(hearth(&dir).args(["verify", "--find"]), "this one goes\n");
    assert_eq!(gone.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&gone.stdout).contains("found nowhere"),
        "{gone:?}"
    );
    let stays = run_with_input(hearth(&dir).args(["--json", "verify", "--find"]), "this one stays");
    assert_eq!(stays.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&stays.stdout).expect("json");
    assert!(!v["found"].as_array().expect("found").is_empty(), "{v}");
    // Nothing left to drop: a second compaction rewrites nothing.
    let again: Value = serde_json::from_str(ok(hearth(&dir).args(["--json", "compact"])).trim()).expect("json");
    assert_eq!(again["entries_rewritten"], 0, "{again}");
    ok(hearth(&dir).args(["verify"]));
}

/// `hearth channel retention CH SPAN|off`: older messages leave every read
/// and, once expired, their texts leave the store; the list shows it.
#[test]
fn channel_retention_expires_old_messages() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("s");
    ok(hearth(&dir).args(["init", "--user", "erin"]));
    ok(hearth(&dir).args(["channel", "create", "c"]));
    ok(hearth(&dir).args(["post", "c", "an old message"]));
    fails(hearth(&dir).args(["channel", "retention", "c", "soon"]));
    fails(hearth(&dir).args(["channel", "retention", "c", "0s"]));
    ok(hearth(&dir).args(["channel", "retention", "c", "1s"]));
    let list = json(&ok(hearth(&dir).args(["--json", "channel", "list"])));
    assert_eq!(list["retention_secs"], 1, "{list}");
    std::thread::sleep(std::time::Duration::from_millis(1300));
    ok(hearth(&dir).args(["post", "c", "a new message"]));
    let log = ok(hearth(&dir).args(["log", "c"]));
    assert!(
        log.contains("a new message") && !log.contains("an old message"),
        "{log}"
    );
    // Expired texts go at the next compaction (the store drops them first).
    ok(hearth(&dir).args(["compact"]));
    let found = run_with_input(hearth(&dir).args(["verify", "--find"]), "an old message\n");
    assert_eq!(found.status.code(), Some(0), "{found:?}");
    ok(hearth(&dir).args(["channel", "retention", "c", "off"]));
    let list = json(&ok(hearth(&dir).args(["--json", "channel", "list"])));
    assert!(list.get("retention_secs").is_none_or(|v| v.is_null()), "{list}");
}

/// `hearth backup FILE` writes a file only its owner reads, that
/// `backup --check` reads whole and `restore` turns into a store of the same
/// messages, as a new device; a damaged file fails the check with exit 1,
/// and a wrong passphrase is refused.
#[test]
fn backup_check_and_restore() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tmp");
    let (dir, back) = (tmp.path().join("s"), tmp.path().join("r"));
    let file = tmp.path().join("s.backup");
    ok(hearth(&dir).args(["init", "--user", "erin"]));
    ok(hearth(&dir).args(["channel", "create", "c"]));
    let first = ok(hearth(&dir).args(["post", "c", "kept in the backup"]));
    ok(hearth(&dir).args(["react", first.trim(), "👍"]));
    let gone = ok(hearth(&dir).args(["post", "c", "deleted before the backup"]));
    ok(hearth(&dir).args(["delete", gone.trim()]));
    let made = json(&ok(hearth(&dir).args(["--json", "backup"]).arg(&file)));
    assert!(made["bytes"].as_u64().is_some_and(|b| b > 0), "{made}");
    let mode = std::fs::metadata(&file).expect("the file").permissions().mode();
    assert_eq!(mode & 0o077, 0, "only its owner reads it: {mode:o}");
    let checked = json(&ok(hearth(&dir).args(["--json", "backup", "--check"]).arg(&file)));
    assert_eq!(checked["ok"], true, "{checked}");
    assert_eq!(checked["name"], "erin", "{checked}");

    let mut bytes = std::fs::read(&file).expect("read");
    let n = bytes.len();
    bytes[n - 40] ^= 1;
    let bad = tmp.path().join("bad.backup");
    std::fs::write(&bad, &bytes).expect("write");
    let out = run(hearth(&dir).args(["backup", "--check"]).arg(&bad));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a whole backup"),
        "{out:?}"
    );
    let wrong = run(bare(&back)
        .env("HEARTH_PASSPHRASE", "not the passphrase")
        .args(["restore"])
        .arg(&file));
    assert!(!wrong.status.success(), "{wrong:?}");
    assert!(!back.join("header").exists());

    let restored = json(&ok(hearth(&back).args(["--json", "restore"]).arg(&file)));
    assert_eq!(restored["verify_clean"], true, "{restored}");
    let log = ok(hearth(&back).args(["log", "c"]));
    assert!(log.contains("kept in the backup"), "{log}");
    // Not only hidden: no key from the passphrase opens it anywhere.
    let found = run_with_input(hearth(&back).args(["verify", "--find"]), "deleted before the backup\n");
    assert_eq!(found.status.code(), Some(0), "{found:?}");
    let show = ok(hearth(&back).args(["show", first.trim()]));
    assert!(show.contains("👍"), "{show}");
    // The restored device writes on, as the same user.
    ok(hearth(&back).args(["post", "c", "written after the restore"]));
    ok(hearth(&back).args(["verify"]));
}

/// `hearth export` writes a channel as JSON (owner-only) and as a plain
/// automerge document; `hearth import --new` takes the JSON back into a new
/// channel, whose own export has the same texts, threads and states; a file
/// that is no export is refused and creates nothing.
#[test]
fn export_and_import_round_trip() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("s");
    ok(hearth(&dir).args(["init", "--user", "erin"]));
    ok(hearth(&dir).args(["channel", "create", "c"]));
    let root = ok(hearth(&dir).args(["post", "c", "a root"])).trim().to_string();
    ok(hearth(&dir).args(["post", "c", "a reply", "--reply-to", &root]));
    ok(hearth(&dir).args(["react", &root, "👍"]));
    ok(hearth(&dir).args(["edit", &root, "a root, edited"]));
    let gone = ok(hearth(&dir).args(["post", "c", "a post that goes"]));
    ok(hearth(&dir).args(["delete", gone.trim()]));
    let json = tmp.path().join("c.json");
    ok(hearth(&dir).args(["export", "c", "--out", json.to_str().expect("utf-8")]));
    assert_eq!(
        std::fs::metadata(&json).expect("file").permissions().mode() & 0o777,
        0o600
    );
    let e: Value = serde_json::from_slice(&std::fs::read(&json).expect("read")).expect("json");
    assert_eq!(e["format"], "hearth-export");
    let messages = e["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 3, "{e}");
    assert_eq!(messages[0]["text"], "a root, edited");
    assert_eq!(messages[0]["edited"], true);
    assert_eq!(messages[1]["reply_to"], messages[0]["id"]);
    assert_eq!(messages[2]["deleted"], true);
    assert!(messages[2]["text"].is_null());
    let am = tmp.path().join("c.automerge");
    ok(hearth(&dir).args([
        "export",
        "c",
        "--format",
        "automerge",
        "--out",
        am.to_str().expect("utf-8"),
    ]));
    assert!(
        std::fs::read(&am).expect("read").starts_with(&[0x85, 0x6f, 0x4a, 0x83]),
        "automerge magic"
    );
    let r: Value = serde_json::from_str(
        ok(hearth(&dir).args(["--json", "import", "--new", "c2", json.to_str().expect("utf-8")])).trim(),
    )
    .expect("json");
    assert_eq!(
        (r["messages"].as_u64(), r["deleted"].as_u64(), r["reactions"].as_u64()),
        (Some(3), Some(1), Some(1))
    );
    let again: Value = serde_json::from_str(&ok(hearth(&dir).args(["export", "c2", "--out", "-"]))).expect("json");
    let texts = |v: &Value| -> Vec<(Value, bool, bool)> {
        v["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| {
                (
                    m["text"].clone(),
                    m["edited"].as_bool().unwrap_or(false),
                    m["reply_to"].is_null(),
                )
            })
            .collect()
    };
    assert_eq!(texts(&again), texts(&e));
    std::fs::write(tmp.path().join("bad.json"), "{\"format\": \"nope\"}").expect("write");
    let err = fails(hearth(&dir).args([
        "import",
        "--new",
        "c3",
        tmp.path().join("bad.json").to_str().expect("utf-8"),
    ]));
    assert!(err.contains("export"), "{err}");
    // Nothing created: the channels are c and c2 (names, not ids: an id's
    // hex digits may hold "c3").
    let names: Vec<String> = json_lines(&ok(hearth(&dir).args(["--json", "channel", "list"])))
        .iter()
        .map(|c| c["name"].as_str().expect("name").to_string())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(!names.iter().any(|n| n == "c3"), "{names:?}");
    ok(hearth(&dir).args(["verify"]));
}

/// `hearth migrate --check` on a store of format 8 says what the migration
/// would do and writes nothing; `hearth migrate` does it; then nothing is
/// left to do.
#[test]
fn migrate_check_then_migrate() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("alice");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/v8/alice");
    copy_dir(&fixture, &dir);
    let with = |args: &[&str]| {
        let out = run(bare(&dir).env("HEARTH_PASSPHRASE", "fixture passphrase").args(args));
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let now = hearth::STORE_FORMAT;
    let check = with(&["migrate", "--check"]);
    assert!(check.starts_with(&format!("store format 8 -> {now}:")), "{check}");
    let v: Value = serde_json::from_str(with(&["--json", "migrate", "--check"]).trim()).expect("json");
    assert_eq!(
        (v["from"].as_u64(), v["to"].as_u64(), v["migrated"].as_bool()),
        (Some(8), Some(u64::from(now)), Some(false))
    );
    let done = with(&["migrate"]);
    assert!(
        done.starts_with(&format!("migrated from format 8 to {now}")) && done.contains("verify: clean"),
        "{done}"
    );
    assert!(with(&["migrate", "--check"]).contains("nothing to migrate"));
}

/// `hearth device list` shows this device; `device revoke` refuses this
/// device and names that match nothing (the revocation itself, between two
/// devices, is shown by store/tests/members.rs).
#[test]
fn device_list_and_revoke_refusals() {
    let (_tmp, dir) = store_with_general("alice");
    let list = json_lines(&ok(hearth(&dir).args(["--json", "device", "list"])));
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["this"], true);
    let me = list[0]["device"].as_str().expect("device").to_string();
    let err = fails(hearth(&dir).args(["device", "revoke", &me[..8]]));
    assert!(err.contains("cannot revoke itself"), "{err}");
    let err = fails(hearth(&dir).args(["device", "revoke", "ffff0000"]));
    assert!(err.contains("no device of yours"), "{err}");
}

/// A store of format 6 (the `v6` fixture) moves its device to its keyed id
/// at its first open through the CLI: it says so once, `device list` shows
/// the old id as this device's former one, and that id cannot be revoked
/// from this device (it is this device).
#[test]
fn an_old_store_moves_to_its_keyed_device_id_and_lists_the_former_one() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("alice");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/v6/alice");
    copy_dir(&fixture, &dir);
    let open = |args: &[&str]| {
        let out = run(bare(&dir).env("HEARTH_PASSPHRASE", "fixture passphrase").args(args));
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8(out.stdout).expect("utf-8"),
            String::from_utf8(out.stderr).expect("utf-8"),
        )
    };
    let (stdout, stderr) = open(&["--json", "device", "list"]);
    assert!(stderr.contains("now writes under"), "{stderr}");
    let list = json_lines(&stdout);
    let this: Vec<&Value> = list.iter().filter(|d| d["this"] == true).collect();
    let former: Vec<&Value> = list.iter().filter(|d| d["former"] == true).collect();
    assert_eq!((this.len(), former.len()), (1, 1), "{list:?}");
    assert!(stderr.contains(former[0]["device"].as_str().expect("id")), "{stderr}");
    let (_, again) = open(&["device", "list"]);
    assert!(!again.contains("now writes under"), "moved once: {again}");
    let out = run(bare(&dir).env("HEARTH_PASSPHRASE", "fixture passphrase").args([
        "device",
        "revoke",
        &former[0]["device"].as_str().expect("id")[..12],
    ]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot revoke itself"), "{err}");
}
