//! One `hearth chat` screen on a store: keys in, the worker's answers and
//! the app events folded in, drawn after each. Generic over the terminal,
//! so that tests drive it on ratatui's test backend.

use std::io;

use crossterm::event::{Event as TermEvent, KeyEvent};
use futures::{FutureExt, Stream, StreamExt};
use hearth::{ChannelId, Hearth, SyncHandle};
use ratatui::Terminal;
use ratatui::backend::Backend;
use tokio::sync::mpsc;

use super::app::App;
use super::view::{self, Palette};
use super::worker::{self, Action, Update};

/// Answers and events taken in at most between two draws.
const ABSORB: usize = 1024;

/// A chat screen on a store.
pub struct Chat<B: Backend> {
    /// The terminal drawn on.
    pub terminal: Terminal<B>,
    /// What it shows.
    pub app: App,
    palette: Palette,
    /// `None` once the chat ends: the worker finishes what was queued.
    actions: Option<mpsc::UnboundedSender<Action>>,
    updates_in: mpsc::UnboundedSender<Update>,
    updates: mpsc::UnboundedReceiver<Update>,
    events: hearth::Events,
    worker: tokio::task::JoinHandle<()>,
    /// A refresh is in flight: the next waits for its end.
    refreshing: bool,
    /// Something changed while one was in flight: one more when it ends.
    stale: bool,
    /// Refreshes handed to the worker so far.
    pub refreshes: u64,
}

impl<B: Backend> Drop for Chat<B> {
    fn drop(&mut self) {
        self.worker.abort();
    }
}

impl<B: Backend> Chat<B>
where
    B::Error: Send + Sync + 'static,
{
    /// A screen on `h` (and its running `node`, if any), opening `first`
    /// (else the first channel).
    pub fn new(
        h: &Hearth,
        node: Option<SyncHandle>,
        terminal: Terminal<B>,
        first: Option<ChannelId>,
        palette: Palette,
    ) -> Self {
        let events = h.subscribe();
        let (actions, actions_rx) = mpsc::unbounded_channel();
        let (updates_in, updates) = mpsc::unbounded_channel();
        let worker = tokio::spawn(worker::work(h.clone(), node, actions_rx, updates_in.clone()));
        let mut app = App::new(h.whoami().user, &h.whoami().name);
        app.current = first;
        let first = app.refresh();
        let mut chat = Chat {
            terminal,
            app,
            palette,
            actions: Some(actions),
            updates_in,
            updates,
            events,
            worker,
            refreshing: false,
            stale: false,
            refreshes: 0,
        };
        chat.send(Some(first));
        chat
    }

    /// End the chat: the writes already queued are done (within
    /// `timeout`), not dropped; `false` if they were not all done.
    pub async fn finish(mut self, timeout: std::time::Duration) -> bool {
        self.actions = None;
        if self.worker.is_finished() {
            return true;
        }
        tokio::time::timeout(timeout, &mut self.worker).await.is_ok()
    }

    /// Where others (the node's duties) put notices for the status line.
    pub fn notices(&self) -> mpsc::UnboundedSender<Update> {
        self.updates_in.clone()
    }

    /// Hand `action` to the worker. One refresh at a time: a catch-up's
    /// thousands of events make a few reads, and the worker's queue stays
    /// short.
    fn send(&mut self, action: Option<Action>) {
        let Some(a) = action else { return };
        if matches!(a, Action::Refresh { .. }) {
            if self.refreshing {
                self.stale = true;
                return;
            }
            self.refreshing = true;
            self.refreshes += 1;
        }
        if let Some(actions) = &self.actions {
            let _ = actions.send(a);
        }
    }

    /// Fold in one of the worker's answers.
    fn take(&mut self, update: Update) {
        if matches!(update, Update::Refreshed) {
            self.refreshing = false;
            if std::mem::take(&mut self.stale) {
                let a = self.app.refresh();
                self.send(Some(a));
            }
            return;
        }
        let a = self.app.apply(update);
        self.send(a);
    }

    /// Fold in an app event.
    pub fn on_event(&mut self, event: hearth::Event) {
        let a = self.app.on_event(event);
        self.send(a);
    }

    /// A key pressed.
    pub fn key(&mut self, key: KeyEvent) {
        let a = self.app.handle_key(key);
        self.send(a);
    }

    /// Nothing asked of the worker is unanswered.
    #[cfg(test)]
    pub fn idle(&self) -> bool {
        !self.refreshing && !self.stale && self.updates.is_empty()
    }

    /// Apply the next answer of the worker or app event, waiting for one;
    /// `false` once neither can come any more.
    #[cfg(test)]
    pub async fn next(&mut self) -> bool {
        tokio::select! {
            Some(u) = self.updates.recv() => self.take(u),
            Some(e) = self.events.next() => self.on_event(e),
            else => return false,
        }
        true
    }

    /// Apply what has come without waiting (a burst of events is drawn
    /// once).
    fn absorb(&mut self) {
        // Bounded, so that a flood of events still lets the screen draw
        // and the keys in.
        for _ in 0..ABSORB {
            let Ok(u) = self.updates.try_recv() else { break };
            self.take(u);
        }
        for _ in 0..ABSORB {
            let Some(Some(e)) = self.events.next().now_or_never() else {
                break;
            };
            self.on_event(e);
        }
    }

    /// Draw the screen.
    pub fn draw(&mut self) -> Result<(), B::Error> {
        let (app, palette) = (&mut self.app, self.palette);
        self.terminal.draw(|f| view::draw(app, palette, f))?;
        Ok(())
    }

    /// Run until the user quits, `keys` ends or `stop` (a signal) comes.
    pub async fn run<K>(&mut self, mut keys: K, stop: impl Future<Output = ()>) -> anyhow::Result<()>
    where
        K: Stream<Item = io::Result<TermEvent>> + Unpin,
    {
        let mut stop = std::pin::pin!(stop);
        loop {
            self.draw()?;
            if self.app.quit {
                return Ok(());
            }
            tokio::select! {
                () = &mut stop => return Ok(()),
                // The worker ends only with the chat, unless it failed.
                done = &mut self.worker => {
                    let why = done.err().map_or("it ended".to_string(), |e| e.to_string());
                    anyhow::bail!("the store side of the chat stopped: {why}");
                }
                Some(u) = self.updates.recv() => self.take(u),
                Some(e) = self.events.next() => self.on_event(e),
                k = keys.next() => match k {
                    Some(Ok(TermEvent::Key(key))) if key.is_press() => self.key(key),
                    Some(Ok(TermEvent::Paste(text))) => self.app.paste(&text),
                    // A resize, a release, a paste: drawn again.
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(anyhow::Error::new(e).context("reading the terminal")),
                    None => return Ok(()),
                },
            }
            self.absorb();
        }
    }
}
