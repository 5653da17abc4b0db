//! `hearth chat` driven in-process on ratatui's test backend: keys typed,
//! the screen read back, on real stores (two of them, syncing over
//! loopback, for what peers do).

use std::time::Duration;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use hearth::{Config, Hearth, KdfParams, NodeConfig, Passphrase};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::buffer::{Buffer, CellWidth};

use super::view::Palette;
use super::{Chat, tend_node};

const T: Duration = Duration::from_secs(60);
const W: u16 = 100;
const H: u16 = 24;

type Screen = Chat<TestBackend>;

async fn store(dir: &std::path::Path, name: &str) -> Hearth {
    let config = Config::default().with_kdf(KdfParams::INSECURE_FAST);
    Hearth::create(dir.join(name), &Passphrase::new("pw"), name, config)
        .await
        .expect("a store")
}

fn screen(h: &Hearth, node: Option<hearth::SyncHandle>) -> Screen {
    let terminal = Terminal::new(TestBackend::new(W, H)).expect("a test terminal");
    Chat::new(h, node, terminal, None, Palette::plain())
}

/// A store's chat with a node on loopback, its duties done as `hearth chat`
/// does them.
async fn online(h: &Hearth) -> (Screen, tokio::task::JoinHandle<()>) {
    let config = NodeConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("an address")],
        ..NodeConfig::default()
    };
    let serving = crate::net::serve(h, config, |v| panic!("the node said {v}"))
        .await
        .expect("a node");
    let node = serving.node.clone();
    let chat = screen(h, Some(node));
    let duties = tend_node(h, serving, chat.notices());
    (chat, duties)
}

/// The screen's text, a row each (a cell hidden behind a wide character
/// skipped, as a terminal shows it).
fn rows(buf: &Buffer) -> Vec<String> {
    let w = buf.area.width as usize;
    buf.content()
        .chunks(w)
        .map(|row| {
            let (mut s, mut skip) = (String::new(), 0u16);
            for c in row {
                if skip == 0 {
                    s.push_str(c.symbol());
                }
                skip = skip.max(c.cell_width()).saturating_sub(1);
            }
            s.trim_end().to_string()
        })
        .collect()
}

fn text(chat: &Screen) -> String {
    rows(chat.terminal.backend().buffer()).join("\n")
}

/// Draw until `pred` holds of the screen, taking in what comes meanwhile.
async fn until(chat: &mut Screen, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        chat.draw().expect("drawn");
        let shown = text(chat);
        if pred(&shown) {
            return shown;
        }
        match tokio::time::timeout_at(deadline, chat.next()).await {
            Ok(true) => {}
            Ok(false) | Err(_) => panic!("{what}: never shown; the screen:\n{shown}"),
        }
    }
}

/// Take in what comes until nothing asked of the worker is unanswered and
/// nothing new came for a moment.
async fn settle(chat: &mut Screen) {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        match tokio::time::timeout(Duration::from_millis(50), chat.next()).await {
            Ok(true) => {}
            Ok(false) => panic!("the chat's sources ended"),
            Err(_) if chat.idle() => return,
            Err(_) => {}
        }
        assert!(tokio::time::Instant::now() < deadline, "the worker never caught up");
    }
}

fn key(chat: &mut Screen, code: KeyCode) {
    chat.key(KeyEvent::new(code, KeyModifiers::NONE));
}

fn type_line(chat: &mut Screen, line: &str) {
    for c in line.chars() {
        key(chat, KeyCode::Char(c));
    }
    key(chat, KeyCode::Enter);
}

/// The screen row holding `needle`.
fn row_with<'a>(shown: &'a str, needle: &str) -> &'a str {
    shown
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no row with {needle:?} in\n{shown}"))
}

#[tokio::test]
async fn typed_posts_replies_reactions_edits_and_deletes_are_drawn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = store(dir.path(), "ann").await;
    h.create_channel("general").await.expect("a channel");
    h.create_channel("random").await.expect("a channel");
    let mut chat = screen(&h, None);
    let shown = until(&mut chat, "the channels", |s| {
        s.contains("#random") && s.contains("(no messages")
    })
    .await;
    assert!(row_with(&shown, "> #general").starts_with("│> #general"), "{shown}");
    assert!(shown.contains("Message #general"), "{shown}");

    type_line(&mut chat, "hello there");
    type_line(&mut chat, "second one");
    until(&mut chat, "two posts", |s| s.contains("#2 ann: second one")).await;
    type_line(&mut chat, "/reply 1 a reply");
    type_line(&mut chat, "/react 1 👍");
    type_line(&mut chat, "/edit 2 second, edited");
    let shown = until(&mut chat, "the reply count, the reaction and the edit", |s| {
        s.contains("↳ 1") && s.contains("👍 1") && s.contains("second, edited (edited)")
    })
    .await;
    assert!(row_with(&shown, "#1 ann: hello there").contains("↳ 1  👍 1"), "{shown}");

    // The thread pane: the root and its reply; plain text replies there.
    type_line(&mut chat, "/thread 1");
    let shown = until(&mut chat, "the thread pane", |s| {
        s.contains("Thread #1") && s.contains("#3 ann: a reply")
    })
    .await;
    assert!(shown.contains("Reply in thread #1"), "{shown}");
    type_line(&mut chat, "and another");
    until(&mut chat, "a reply typed in the thread", |s| {
        s.contains("#4 ann: and another") && s.contains("↳ 2")
    })
    .await;
    key(&mut chat, KeyCode::Esc);
    let shown = until(&mut chat, "the thread closed", |s| !s.contains("Thread #1")).await;
    assert!(shown.contains("Message #general"), "{shown}");

    type_line(&mut chat, "/delete 2");
    type_line(&mut chat, "/unreact 1 👍");
    let shown = until(&mut chat, "the delete and the reaction taken back", |s| {
        s.contains("#2 ann: (deleted)") && !s.contains("👍")
    })
    .await;
    assert!(!shown.contains("second, edited"), "{shown}");

    // The store holds what was typed.
    let general = h.resolve_channel("general").await.expect("general");
    let page = h.page(general, None, 10).await.expect("a page");
    let texts: Vec<_> = page.iter().map(|m| m.text.as_deref()).collect();
    assert_eq!(texts, [None, Some("hello there")]);
    assert_eq!(page[1].reply_count, 2);
    chat.terminal.backend_mut().assert_cursor_position((1, H - 3));
}

#[tokio::test]
async fn bad_commands_and_unknown_numbers_are_said_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = store(dir.path(), "ann").await;
    let mut chat = screen(&h, None);
    let shown = until(&mut chat, "no channel yet", |s| s.contains("No channel yet")).await;
    assert!(shown.contains("Command (/help)"), "{shown}");
    type_line(&mut chat, "hello?");
    until(&mut chat, "no channel to post in", |s| s.contains("no channel open")).await;
    type_line(&mut chat, "/create lunch");
    until(&mut chat, "the new channel open", |s| s.contains("Message #lunch")).await;
    for (line, said) in [
        ("/react 9 👍", "no message #9 here"),
        ("/reply 1", "usage: /reply N TEXT"),
        ("/frob", "no command /frob"),
        ("/join hearth1notaticket", "not a ticket"),
    ] {
        type_line(&mut chat, line);
        until(&mut chat, said, |s| s.lines().last().is_some_and(|l| l.contains(said))).await;
    }
    let lunch = h.resolve_channel("lunch").await.expect("lunch");
    type_line(&mut chat, "/rename lunch room");
    until(&mut chat, "the rename", |s| s.contains("#lunch room")).await;
    assert_eq!(h.channel(lunch).await.expect("lunch").name, "lunch room");
    assert!(h.page(lunch, None, 10).await.expect("a page").is_empty());

    type_line(&mut chat, "/help");
    let shown = until(&mut chat, "the help", |s| s.contains("Help (Esc closes)")).await;
    assert!(shown.contains("/react N EMOJI"), "{shown}");
    key(&mut chat, KeyCode::Esc);
    until(&mut chat, "the help closed", |s| !s.contains("Help (Esc closes)")).await;
    chat.key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
    assert!(chat.app.quit);
}

#[tokio::test]
async fn two_chats_over_loopback_invite_join_and_see_each_other_live() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ann, bob) = (store(dir.path(), "ann").await, store(dir.path(), "bob").await);
    let general = ann.create_channel("general").await.expect("a channel");
    ann.post(general, "before bob came").await.expect("a post");
    bob.create_channel("notes").await.expect("a channel");
    let (mut a, _ad) = online(&ann).await;
    let (mut b, _bd) = online(&bob).await;
    until(&mut a, "ann's history", |s| s.contains("#1 ann: before bob came")).await;

    // ann's /invite, typed into bob's /join: bob's node reaches ann's, is
    // let in, and the history comes.
    type_line(&mut a, "/invite");
    let shown = until(&mut a, "the ticket", |s| s.contains("Invite to #general")).await;
    let ticket = a.app.tickets.last().map(|(_, t)| t.clone()).expect("a ticket");
    assert!(shown.contains(&ticket[..40]), "{shown}");
    key(&mut a, KeyCode::Esc);
    until(&mut b, "bob's own channel", |s| s.contains("Message #notes")).await;
    type_line(&mut b, &format!("/join {ticket}"));
    // Not open on bob's screen: ann's message waits as unread.
    until(
        &mut b,
        "the joined channel in bob's list, unread, and ann's node",
        |s| s.lines().any(|l| l.starts_with("│  #general (1)")) && s.contains("1 peer"),
    )
    .await;
    key(&mut b, KeyCode::Tab);
    // Read once open.
    until(&mut b, "the history on bob's screen, read", |s| {
        s.contains("ann: before bob came") && !row_with(s, "> #general").contains("(1)")
    })
    .await;
    assert_eq!(bob.channel(general).await.expect("general").unread, 0);

    // Live both ways: a post, a reply, a reaction, an edit, a delete.
    type_line(&mut b, "hi ann, bob here");
    until(&mut a, "bob's post on ann's screen", |s| {
        s.contains("bob: hi ann, bob here")
    })
    .await;
    type_line(&mut a, "/react 1 🎉");
    type_line(&mut a, "/reply 1 glad you came");
    until(&mut b, "ann's reaction and reply count", |s| {
        row_with(s, "ann: before bob came").contains("↳ 1  🎉 1")
    })
    .await;
    type_line(&mut a, "/edit 1 before bob came (edited by ann)");
    until(&mut b, "ann's edit", |s| s.contains("(edited by ann) (edited)")).await;
    let bobs = b.app.numbers.get(&b.app.messages.last().expect("bob's post").id);
    type_line(&mut b, &format!("/delete {}", bobs.expect("a number")));
    until(&mut a, "bob's delete on ann's screen", |s| {
        s.contains("bob: (deleted)") && !s.contains("hi ann, bob here")
    })
    .await;
}

#[tokio::test]
async fn scrolling_past_the_top_reads_older_pages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = store(dir.path(), "ann").await;
    let c = h.create_channel("general").await.expect("a channel");
    let total = super::worker::PAGE + 50;
    let mut acks = Vec::new();
    for i in 0..total {
        acks.push(h.queue_post(c, &format!("message {i}"), None).await.expect("queued"));
    }
    for a in acks {
        a.await.expect("durable");
    }
    let mut chat = screen(&h, None);
    let shown = until(&mut chat, "the newest page", |s| {
        s.contains(&format!("message {}", total - 1))
    })
    .await;
    assert_eq!(chat.app.messages.len(), super::worker::PAGE, "{shown}");
    assert!(chat.app.more);
    // Up to the oldest line held, and past it: the page before comes.
    for _ in 0..total {
        if chat.app.messages.len() == total {
            break;
        }
        key(&mut chat, KeyCode::PageUp);
        chat.draw().expect("drawn");
        let _ = tokio::time::timeout(Duration::from_millis(50), chat.next()).await;
    }
    for _ in 0..(total / 2) {
        key(&mut chat, KeyCode::PageUp);
        chat.draw().expect("drawn");
    }
    let shown = text(&chat);
    assert!(row_with(&shown, "message 0").contains("ann: message 0"), "{shown}");
    assert!(!chat.app.more, "{shown}");
    assert!(shown.contains("scrolled up"), "{shown}");
    // Scrolled up, what comes (here from the store, as from a peer) is
    // added below what is held. (Typing a message returns to the newest.)
    h.post(c, "while scrolled up").await.expect("a post");
    settle(&mut chat).await;
    let held: Vec<_> = chat.app.messages.iter().filter_map(|m| m.text.clone()).collect();
    assert_eq!(held.len(), total + 1);
    assert_eq!(held.last().map(String::as_str), Some("while scrolled up"));
    // Down returns to the newest, and a page is all that is held again.
    for _ in 0..total {
        key(&mut chat, KeyCode::PageDown);
    }
    let shown = until(&mut chat, "back at the bottom", |s| {
        s.contains("ann: while scrolled up")
    })
    .await;
    settle(&mut chat).await;
    assert_eq!(chat.app.messages.len(), super::worker::PAGE, "{shown}");
    assert!(chat.app.more);
}

#[tokio::test]
async fn a_burst_of_events_makes_one_refresh_in_flight_and_one_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = store(dir.path(), "ann").await;
    let c = h.create_channel("general").await.expect("a channel");
    let mut chat = screen(&h, None);
    until(&mut chat, "the channel", |s| s.contains("Message #general")).await;
    settle(&mut chat).await;
    let before = chat.refreshes;
    // A catch-up's worth of events, as fast as they come.
    for _ in 0..10_000 {
        chat.on_event(hearth::Event::SyncProgress {
            channel: c,
            entries: 1,
            messages: 1,
        });
    }
    assert_eq!(chat.refreshes, before + 1, "one in flight; the rest wait for it");
    settle(&mut chat).await;
    assert_eq!(chat.refreshes, before + 2, "and one more once it ended");
}

#[tokio::test]
async fn numbers_reach_only_what_is_on_screen_and_pastes_are_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = store(dir.path(), "ann").await;
    h.create_channel("general").await.expect("a channel");
    h.create_channel("random").await.expect("a channel");
    let mut chat = screen(&h, None);
    until(&mut chat, "general", |s| s.contains("Message #general")).await;
    type_line(&mut chat, "in general");
    until(&mut chat, "the post", |s| s.contains("#1 ann: in general")).await;
    key(&mut chat, KeyCode::Tab);
    until(&mut chat, "random", |s| s.contains("Message #random")).await;
    // #1 is general's: not on this screen, so not reached from here.
    type_line(&mut chat, "/delete 1");
    until(&mut chat, "the refusal", |s| s.contains("no message #1 here")).await;
    // A paste's line breaks do not send it: it is one line until Enter.
    chat.app.paste("pasted\nin two lines");
    assert_eq!(chat.app.input.text(), "pasted in two lines");
    key(&mut chat, KeyCode::Enter);
    until(&mut chat, "the pasted post", |s| s.contains("ann: pasted in two lines")).await;
    let general = h.resolve_channel("general").await.expect("general");
    let page = h.page(general, None, 10).await.expect("a page");
    assert_eq!(page.len(), 1);
    assert!(!page[0].deleted, "general's message was not deleted from random");
}

#[tokio::test]
async fn writes_queued_when_the_chat_ends_are_made() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = store(dir.path(), "ann").await;
    let c = h.create_channel("general").await.expect("a channel");
    let mut chat = screen(&h, None);
    until(&mut chat, "general", |s| s.contains("Message #general")).await;
    // Typed faster than they are written, then Ctrl-C at once.
    for i in 0..100 {
        type_line(&mut chat, &format!("line {i}"));
    }
    chat.key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
    assert!(chat.app.quit);
    assert!(chat.finish(T).await, "the queued writes were made in time");
    let all = h.all_messages(c).await.expect("the messages");
    let texts: Vec<_> = all.iter().filter_map(|m| m.text.clone()).collect();
    assert_eq!(texts, (0..100).map(|i| format!("line {i}")).collect::<Vec<_>>());
}
