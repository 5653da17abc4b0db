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

/// A chat screen on a store.
pub struct Chat<B: Backend> {
    /// The terminal drawn on.
    pub terminal: Terminal<B>,
    /// What it shows.
    pub app: App,
    palette: Palette,
    actions: mpsc::UnboundedSender<Action>,
    updates_in: mpsc::UnboundedSender<Update>,
    updates: mpsc::UnboundedReceiver<Update>,
    events: hearth::Events,
    worker: tokio::task::JoinHandle<()>,
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
        let _ = actions.send(app.refresh());
        Chat {
            terminal,
            app,
            palette,
            actions,
            updates_in,
            updates,
            events,
            worker,
        }
    }

    /// Where others (the node's duties) put notices for the status line.
    pub fn notices(&self) -> mpsc::UnboundedSender<Update> {
        self.updates_in.clone()
    }

    fn send(&self, action: Option<Action>) {
        if let Some(a) = action {
            let _ = self.actions.send(a);
        }
    }

    /// A key pressed.
    pub fn key(&mut self, key: KeyEvent) {
        let a = self.app.handle_key(key);
        self.send(a);
    }

    /// Apply the next answer of the worker or app event, waiting for one;
    /// `false` once neither can come any more.
    #[cfg(test)]
    pub async fn next(&mut self) -> bool {
        tokio::select! {
            Some(u) = self.updates.recv() => {
                let a = self.app.apply(u);
                self.send(a);
            }
            Some(e) = self.events.next() => {
                let a = self.app.on_event(e);
                self.send(a);
            }
            else => return false,
        }
        true
    }

    /// Apply what has come without waiting (a burst of events is drawn
    /// once).
    fn absorb(&mut self) {
        while let Ok(u) = self.updates.try_recv() {
            let a = self.app.apply(u);
            self.send(a);
        }
        while let Some(Some(e)) = self.events.next().now_or_never() {
            let a = self.app.on_event(e);
            self.send(a);
        }
    }

    /// Draw the screen.
    pub fn draw(&mut self) -> Result<(), B::Error> {
        let (app, palette) = (&mut self.app, self.palette);
        self.terminal.draw(|f| view::draw(app, palette, f))?;
        Ok(())
    }

    /// Run until the user quits or `keys` ends.
    pub async fn run<K>(&mut self, mut keys: K) -> anyhow::Result<()>
    where
        K: Stream<Item = io::Result<TermEvent>> + Unpin,
    {
        loop {
            self.draw()?;
            if self.app.quit {
                return Ok(());
            }
            tokio::select! {
                Some(u) = self.updates.recv() => {
                    let a = self.app.apply(u);
                    self.send(a);
                }
                Some(e) = self.events.next() => {
                    let a = self.app.on_event(e);
                    self.send(a);
                }
                k = keys.next() => match k {
                    Some(Ok(TermEvent::Key(key))) if key.is_press() => self.key(key),
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
