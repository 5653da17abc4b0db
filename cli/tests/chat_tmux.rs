//! `hearth chat` end to end: two processes, each in its own tmux session
//! (a real terminal for crossterm), typed into with send-keys and read with
//! capture-pane. Ann invites with `/invite`, Bob joins with `/join` and the
//! ticket read off Ann's screen; then they chat live both ways.

#[path = "support/tmux.rs"]
mod support_tmux;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support_tmux::Tmux;

const T: Duration = Duration::from_secs(90);
const SIZE: (u16, u16) = (110, 30);

fn hearth(store: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .env("HEARTH_PASSPHRASE", "pw")
        .arg("--store")
        .arg(store)
        .args(args)
        .output()
        .expect("run hearth");
    assert!(
        out.status.success(),
        "hearth {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The ticket's rows on a screen showing `/invite`'s box, as a mouse
/// selection copies them: the first starts with `hearth1`, the rest are the
/// rows of letters and digits after it.
fn ticket_rows(screen: &str) -> Vec<&str> {
    let mut lines = screen.lines().skip_while(|l| !l.starts_with("hearth1"));
    let first = lines.next().expect("a ticket on the screen");
    let rest = lines.take_while(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric()));
    std::iter::once(first).chain(rest).collect()
}

/// The number the chat shows before a message: `#N` in the message pane's
/// part of the row, just before `author: text`.
fn number_of(screen: &str, author_text: &str) -> String {
    let row = row_with(screen, author_text);
    let before = &row[..row.find(author_text).expect("on the row")];
    let n = before.trim_end().rsplit('#').next().expect("a number");
    assert!(n.chars().all(|c| c.is_ascii_digit()) && !n.is_empty(), "{row}");
    n.to_string()
}

fn row_with<'a>(screen: &'a str, needle: &str) -> &'a str {
    screen
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no row with {needle:?} in\n{screen}"))
}

#[test]
fn two_chat_processes_invite_join_and_talk_live() {
    if !support_tmux::should_run("two_chat_processes_invite_join_and_talk_live") {
        return;
    }
    // Short: the tmux socket lives under it.
    let tmp = tempfile::Builder::new()
        .prefix("hc")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    hearth(&a, &["init", "--user", "ann"]);
    hearth(&b, &["init", "--user", "bob"]);
    hearth(&a, &["channel", "create", "general"]);
    hearth(&a, &["post", "general", "before the chat"]);

    let tmux = Tmux::new(tmp.path());
    let bin = env!("CARGO_BIN_EXE_hearth");
    let env = [("HEARTH_PASSPHRASE", "pw"), ("RUST_BACKTRACE", "1")];
    let (a_dir, b_dir) = (a.to_str().expect("a path"), b.to_str().expect("a path"));
    tmux.start("ann", SIZE, &env, &[bin, "--store", a_dir, "chat"]);
    tmux.start("bob", SIZE, &env, &[bin, "--store", b_dir, "chat"]);
    tmux.wait_for("ann", "ann's history and node", T, |s| {
        s.contains("#1 ann: before the chat") && s.contains("listening on /ip4/127.0.0.1/")
    });
    tmux.wait_for("bob", "bob's empty store", T, |s| s.contains("No channel yet"));

    tmux.type_line("ann", "/invite");
    let screen = tmux.wait_for("ann", "the invite", T, |s| s.contains("Invite to #general"));
    let rows = ticket_rows(&screen);
    let ticket: String = rows.concat();
    assert!(ticket.len() > 100 && rows.len() > 1, "{ticket}\n{screen}");
    tmux.key("ann", "Escape");
    tmux.wait_for("ann", "the invite box closed", T, |s| !s.contains("Invite to #general"));

    // Bob pastes the ticket's rows as copied off Ann's screen (a bracketed
    // paste, line breaks and all: nothing is sent before Enter); his node
    // dials Ann's, is let in through the invite, and the channel opens with
    // its history.
    tmux.paste("bob", &format!("/join {}", rows.join("\n")));
    let tail = &ticket[ticket.len() - 16..];
    tmux.wait_for("bob", "the pasted ticket's end in the input line", T, |s| {
        s.lines().any(|l| l.starts_with('│') && l.contains(tail))
    });
    tmux.key("bob", "Enter");
    let screen = tmux.wait_for("bob", "the joined channel", T, |s| {
        s.contains("ann: before the chat") && s.contains("1 peer")
    });
    assert!(screen.contains("Message #general"), "{screen}");

    tmux.type_line("bob", "hello from bob");
    let screen = tmux.wait_for("ann", "bob's message", T, |s| s.contains("bob: hello from bob"));
    let number = number_of(&screen, "bob: hello from bob");
    tmux.type_line("ann", &format!("/react {number} 👍"));
    tmux.type_line("ann", "/edit 1 before the chat, edited");
    tmux.type_line("ann", "/reply 1 a reply from ann");
    let screen = tmux.wait_for("bob", "ann's reaction, edit and reply", T, |s| {
        s.contains("hello from bob  👍 1") && s.contains("before the chat, edited (edited)  ↳ 1")
    });
    assert!(
        !screen.contains("a reply from ann"),
        "replies stay in their thread: {screen}"
    );
    tmux.type_line("bob", "/thread 1");
    tmux.wait_for("bob", "the thread pane", T, |s| {
        s.contains("Thread #1") && s.contains("ann: a reply from ann")
    });

    for name in ["ann", "bob"] {
        tmux.key(name, "C-c");
        assert_eq!(tmux.wait_exit(name, T), 0, "{}", tmux.history(name));
    }
    // The ticket made is printed whole once the screen is gone.
    let after = tmux.history("ann");
    assert!(after.contains(&format!("invite to #general: {ticket}")), "{after}");
    // What was typed is in the stores.
    let log = hearth(&a, &["log", "general"]);
    assert!(
        log.contains("ann: before the chat, edited") && log.contains("bob: hello from bob"),
        "{log}"
    );
    let log = hearth(&b, &["log", "general"]);
    assert!(log.contains("👍 1") && log.contains("[1 reply]"), "{log}");
}
