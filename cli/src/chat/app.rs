//! The state of `hearth chat`'s screen, and how keys, the store's answers
//! and the app events change it. No I/O here: keys become [`Action`]s for
//! the worker, and its [`Update`]s and the [`hearth::Event`]s fold in.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use hearth::store::Thread;
use hearth::sync::PeerId;
use hearth::{ChannelId, ChannelInfo, Event, Message, MessageId, UserId};

use super::input::{self, Line, Number, Typed};
use super::worker::{Action, PAGE, Update};

/// Entries in one batch from peers that make a catch-up worth a notice.
const CATCH_UP: u64 = 64;

/// Messages a refresh reads beyond those held: what came since the last
/// one (more than that, and the held ones below the page stay as they were).
const REFRESH_SLACK: usize = 64;

/// Lines a Page Up or Page Down scrolls.
const PAGE_LINES: usize = 10;

/// A box over the screen until Esc or Enter: help, or an invite ticket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Popup {
    /// Its title.
    pub title: String,
    /// Its text (wrapped to the box).
    pub text: String,
    /// Text to copy (a ticket): the box spans the screen with no side
    /// borders, so that a terminal's selection takes the text alone.
    pub copyable: bool,
}

/// A line on the status bar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// What to say.
    pub text: String,
    /// A failure (shown in red, or bold without colours).
    pub failed: bool,
}

/// Numbers the user types for messages (`/reply 3`): given in the order
/// messages are first shown, and kept for the whole session, so that a
/// number never moves to another message while someone types it.
#[derive(Debug, Default)]
pub struct Numbers {
    of: HashMap<MessageId, Number>,
    ids: Vec<MessageId>,
}

impl Numbers {
    /// The number of `id`, given now if it has none.
    pub fn number(&mut self, id: MessageId) -> Number {
        *self.of.entry(id).or_insert_with(|| {
            self.ids.push(id);
            self.ids.len() as Number
        })
    }

    /// The number of `id`, if it has one.
    pub fn get(&self, id: &MessageId) -> Option<Number> {
        self.of.get(id).copied()
    }

    /// The message numbered `n`.
    pub fn id(&self, n: Number) -> Option<MessageId> {
        self.ids.get((n as usize).checked_sub(1)?).copied()
    }
}

/// Everything the screen shows.
#[derive(Debug)]
pub struct App {
    /// The local user.
    pub me: UserId,
    /// Channels, with unread counts.
    pub channels: Vec<ChannelInfo>,
    /// The open channel.
    pub current: Option<ChannelId>,
    /// Its messages held, oldest first.
    pub messages: Vec<Message>,
    /// Older ones exist that are not held.
    pub more: bool,
    /// The page before this message was asked for and has not come.
    loading_older: Option<MessageId>,
    /// The open thread's root, and the thread once read.
    pub thread: Option<(MessageId, Option<Thread>)>,
    /// Display names.
    pub names: BTreeMap<UserId, String>,
    /// Message numbers.
    pub numbers: Numbers,
    /// The input line.
    pub input: Line,
    /// Lines scrolled up from the newest.
    pub scroll: usize,
    /// Lines the message pane held at the last draw (set by the view).
    pub lines_held: usize,
    /// Rows the message pane showed at the last draw (set by the view).
    pub rows_shown: usize,
    /// The status line's notice.
    pub notice: Option<Notice>,
    /// The box over the screen.
    pub popup: Option<Popup>,
    /// Peers connected.
    pub peers: BTreeSet<PeerId>,
    /// The invite tickets made, with their channels' names (printed when
    /// the chat ends, for copying whole).
    pub tickets: Vec<(String, String)>,
    /// The user asked to leave.
    pub quit: bool,
}

impl App {
    /// A screen for the user `me`, `name`d.
    pub fn new(me: UserId, name: &str) -> App {
        App {
            me,
            channels: Vec::new(),
            current: None,
            messages: Vec::new(),
            more: false,
            loading_older: None,
            thread: None,
            names: BTreeMap::from([(me, name.to_string())]),
            numbers: Numbers::default(),
            input: Line::default(),
            scroll: 0,
            lines_held: 0,
            rows_shown: 0,
            notice: None,
            popup: None,
            peers: BTreeSet::new(),
            tickets: Vec::new(),
            quit: false,
        }
    }

    /// What to read again for the screen as it is now. At the newest
    /// messages, a page of them (older ones held are let go); scrolled up,
    /// as many as are held and what came since.
    pub fn refresh(&self) -> Action {
        let at_bottom = self.scroll == 0;
        Action::Refresh {
            channel: self.current,
            limit: if at_bottom {
                PAGE
            } else {
                (self.messages.len() + REFRESH_SLACK).max(PAGE)
            },
            thread: self.thread.as_ref().map(|(root, _)| *root),
            seen: at_bottom && self.popup.is_none(),
        }
    }

    /// A user's display name (a short id when unknown).
    pub fn name(&self, user: &UserId) -> String {
        match self.names.get(user) {
            Some(n) => n.clone(),
            None => user.to_hex()[..8].to_string(),
        }
    }

    /// The open channel's name.
    pub fn channel_name(&self) -> Option<&str> {
        let c = self.current?;
        self.channels.iter().find(|i| i.id == c).map(|i| i.name.as_str())
    }

    fn say(&mut self, text: impl Into<String>) {
        self.notice = Some(Notice {
            text: text.into(),
            failed: false,
        });
    }

    fn fail(&mut self, text: impl Into<String>) {
        self.notice = Some(Notice {
            text: text.into(),
            failed: true,
        });
    }

    /// Open `channel`: its messages are read.
    fn open(&mut self, channel: ChannelId) -> Action {
        if self.current != Some(channel) {
            self.current = Some(channel);
            self.messages.clear();
            self.more = false;
            self.loading_older = None;
            self.thread = None;
            self.scroll = 0;
        }
        self.refresh()
    }

    /// A key pressed.
    pub fn handle_key(&mut self, key: KeyEvent) -> Option<Action> {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Char('c') if ctrl => {
                self.quit = true;
                return None;
            }
            KeyCode::Char('d') if ctrl && self.input.is_empty() => {
                self.quit = true;
                return None;
            }
            _ => {}
        }
        if self.popup.is_some() {
            if matches!(key.code, KeyCode::Esc | KeyCode::Enter) {
                self.popup = None;
                // What was under it is seen now.
                return Some(self.refresh());
            }
            return None;
        }
        match key.code {
            KeyCode::Enter => {
                let line = self.input.take();
                if line.trim().is_empty() {
                    return None;
                }
                match input::parse(&line) {
                    Ok(typed) => return self.typed(typed),
                    Err(usage) => self.fail(usage),
                }
            }
            KeyCode::Tab => return self.step_channel(1),
            KeyCode::BackTab => return self.step_channel(-1),
            KeyCode::Char('n') if ctrl => return self.step_channel(1),
            KeyCode::Char('p') if ctrl => return self.step_channel(-1),
            KeyCode::Up => return self.scroll_up(1),
            KeyCode::PageUp => return self.scroll_up(PAGE_LINES),
            KeyCode::Down => return self.scroll_down(1),
            KeyCode::PageDown => return self.scroll_down(PAGE_LINES),
            KeyCode::Esc if self.thread.is_some() => self.thread = None,
            KeyCode::Esc => {
                self.input.take();
                self.notice = None;
            }
            KeyCode::Char('u') if ctrl => drop(self.input.take()),
            KeyCode::Char('a') if ctrl => self.input.home(),
            KeyCode::Char('e') if ctrl => self.input.end(),
            KeyCode::Char(c) if !ctrl => self.input.insert(c),
            KeyCode::Backspace => self.input.backspace(),
            KeyCode::Delete => self.input.delete(),
            KeyCode::Left => self.input.left(),
            KeyCode::Right => self.input.right(),
            KeyCode::Home => self.input.home(),
            KeyCode::End => self.input.end(),
            _ => {}
        }
        None
    }

    fn step_channel(&mut self, by: isize) -> Option<Action> {
        let n = self.channels.len();
        if n == 0 {
            return None;
        }
        let at = self
            .current
            .and_then(|c| self.channels.iter().position(|i| i.id == c))
            .unwrap_or(0);
        let next = (at as isize + by).rem_euclid(n as isize) as usize;
        let id = self.channels[next].id;
        Some(self.open(id))
    }

    fn scroll_up(&mut self, lines: usize) -> Option<Action> {
        self.scroll += lines;
        // Past the oldest line held: read the page before it.
        let top = self.scroll + self.rows_shown >= self.lines_held;
        if top && self.more && self.loading_older.is_none() {
            let (Some(channel), Some(oldest)) = (self.current, self.messages.first()) else {
                return None;
            };
            self.loading_older = Some(oldest.id);
            return Some(Action::Older {
                channel,
                before: oldest.id,
            });
        }
        None
    }

    fn scroll_down(&mut self, lines: usize) -> Option<Action> {
        let was = self.scroll;
        self.scroll = self.scroll.saturating_sub(lines);
        // Back at the newest: they are seen (and older ones let go).
        (was > 0 && self.scroll == 0).then(|| self.refresh())
    }

    /// Text pasted (bracketed paste): typed into the line, its line breaks
    /// as spaces, so that a paste never sends anything by itself.
    pub fn paste(&mut self, text: &str) {
        if self.popup.is_some() {
            return;
        }
        for c in text.chars() {
            self.input.insert(if c == '\n' || c == '\r' { ' ' } else { c });
        }
    }

    /// The message numbered `n` on the screen (the open channel's, or the
    /// open thread's), or a notice why there is none: a number seen in
    /// another channel does not reach into it.
    fn numbered(&mut self, n: Number) -> Option<MessageId> {
        let thread = self.thread.as_ref().and_then(|(_, t)| t.as_ref());
        let shown = |id: &MessageId| {
            self.messages.iter().any(|m| m.id == *id)
                || thread.is_some_and(|t| t.root.id == *id || t.replies.iter().any(|r| r.id == *id))
        };
        let id = self.numbers.id(n).filter(shown);
        if id.is_none() {
            self.fail(format!("no message #{n} here"));
        }
        id
    }

    fn typed(&mut self, typed: Typed) -> Option<Action> {
        let channel = self.current;
        let no_channel = "no channel open: /create NAME, or /join TICKET";
        Some(match typed {
            Typed::Say(text) => match (&self.thread, channel) {
                (Some((root, _)), _) => Action::Reply { to: *root, text },
                (None, Some(channel)) => {
                    self.scroll = 0;
                    Action::Post { channel, text }
                }
                (None, None) => {
                    self.fail(no_channel);
                    return None;
                }
            },
            Typed::Reply(n, text) => {
                let to = self.numbered(n)?;
                Action::Reply { to, text }
            }
            Typed::Thread(n) => {
                let root = self.numbered(n)?;
                // A reply's thread is its root's.
                let root = self.root_of(root);
                self.thread = Some((root, None));
                self.refresh()
            }
            Typed::Close => {
                self.thread = None;
                return None;
            }
            Typed::React(n, emoji) => Action::React {
                msg: self.numbered(n)?,
                emoji,
                remove: false,
            },
            Typed::Unreact(n, emoji) => Action::React {
                msg: self.numbered(n)?,
                emoji,
                remove: true,
            },
            Typed::Edit(n, text) => Action::Edit {
                msg: self.numbered(n)?,
                text,
            },
            Typed::Delete(n) => Action::Delete { msg: self.numbered(n)? },
            Typed::Invite(expires) => match channel {
                Some(channel) => Action::Invite { channel, expires },
                None => {
                    self.fail(no_channel);
                    return None;
                }
            },
            Typed::Join(ticket) => Action::Join(ticket),
            Typed::Create(name) => Action::Create(name),
            Typed::Rename(name) => match channel {
                Some(channel) => Action::Rename { channel, name },
                None => {
                    self.fail(no_channel);
                    return None;
                }
            },
            Typed::Help => {
                let width = input::HELP.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0);
                self.popup = Some(Popup {
                    title: "Help (Esc closes)".into(),
                    text: input::HELP
                        .iter()
                        .map(|(k, v)| format!("{k:width$}  {v}"))
                        .collect::<Vec<_>>()
                        .join("\n"),
                    copyable: false,
                });
                return None;
            }
            Typed::Quit => {
                self.quit = true;
                return None;
            }
        })
    }

    /// The root of `id`'s thread, when it is a reply held here.
    fn root_of(&self, id: MessageId) -> MessageId {
        let in_thread = self.thread.as_ref().and_then(|(_, t)| t.as_ref());
        in_thread
            .into_iter()
            .flat_map(|t| t.replies.iter())
            .chain(self.messages.iter())
            .find(|m| m.id == id)
            .and_then(|m| m.reply_to)
            .unwrap_or(id)
    }

    /// What the store answered; maybe something more to ask.
    pub fn apply(&mut self, update: Update) -> Option<Action> {
        match update {
            Update::Channels(channels) => {
                self.channels = channels;
                let open = self.current.filter(|c| self.channels.iter().any(|i| i.id == *c));
                if open.is_none() {
                    // None open yet, or the open one was left: the first.
                    self.current = None;
                    if let Some(first) = self.channels.first().map(|c| c.id) {
                        return Some(self.open(first));
                    }
                    self.messages.clear();
                }
            }
            Update::Names(names) => self.names.extend(names),
            Update::Page {
                channel,
                mut messages,
                before,
                more,
            } => {
                if Some(channel) != self.current {
                    return None;
                }
                messages.reverse();
                if let Some(before) = before {
                    // Only the page asked for, and only before what is
                    // still the oldest held (not after a channel switch).
                    if self.loading_older != Some(before) || self.messages.first().map(|m| m.id) != Some(before) {
                        return None;
                    }
                    self.loading_older = None;
                    for m in &messages {
                        self.numbers.number(m.id);
                    }
                    self.more = more;
                    messages.append(&mut self.messages);
                    self.messages = messages;
                    return None;
                }
                for m in &messages {
                    self.numbers.number(m.id);
                }
                // Scrolled up, those held older than the page stay (read
                // by scrolling up); at the newest, a page is all that is
                // held.
                let first = messages.first().map(|m| m.id);
                let kept: Vec<Message> = match first {
                    Some(first) if more && self.scroll > 0 => {
                        self.messages.drain(..).filter(|m| m.id < first).collect()
                    }
                    _ => Vec::new(),
                };
                if kept.is_empty() {
                    self.more = more;
                    self.loading_older = None;
                }
                self.messages = kept;
                self.messages.append(&mut messages);
            }
            Update::NoOlder(before) => {
                if self.loading_older == Some(before) {
                    self.loading_older = None;
                }
            }
            Update::Peers(peers) => self.peers = peers.into_iter().collect(),
            Update::Thread(thread) => {
                if let Some((root, shown)) = &mut self.thread
                    && *root == thread.root.id
                {
                    for m in &thread.replies {
                        self.numbers.number(m.id);
                    }
                    *shown = Some(thread);
                }
            }
            Update::Opened(channel) => return Some(self.open(channel)),
            Update::Ticket { name, ticket } => {
                self.popup = Some(Popup {
                    title: format!("Invite to #{name} (Esc closes)"),
                    text: format!(
                        "Anyone with this ticket can join #{name} while this invite is open \
                         (for the span given to /invite, or until `hearth invite revoke`, run \
                         once this chat ends); it holds no channel key. In another hearth \
                         chat: /join TICKET (it is printed whole when this chat ends too)\n\n{ticket}"
                    ),
                    copyable: true,
                });
                self.say(format!("invite to #{name} made (printed again when the chat ends)"));
                self.tickets.push((name, ticket));
            }
            Update::Notice(text) => self.say(text),
            Update::Failed(text) => self.fail(text),
            // The session keeps count of refreshes in flight.
            Update::Refreshed => {}
        }
        None
    }

    /// An app event; maybe the screen needs reading again.
    pub fn on_event(&mut self, event: Event) -> Option<Action> {
        match event {
            Event::PeerConnected { peer, .. } => {
                self.peers.insert(peer);
                None
            }
            Event::PeerLost { peer } => {
                self.peers.remove(&peer);
                None
            }
            Event::SyncProgress { entries, .. } => {
                // A catch-up, not the live trickle.
                if entries >= CATCH_UP {
                    self.say(format!("catching up: {entries} entries taken in"));
                }
                Some(self.refresh())
            }
            Event::SyncDone { .. } | Event::Receipt { .. } => None,
            Event::Lagged { .. } => Some(self.refresh()),
            // Messages, replies, edits, deletes, reactions, read markers,
            // channels and members, from here or from peers.
            _ => Some(self.refresh()),
        }
    }
}
