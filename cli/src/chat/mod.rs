//! `hearth chat`: a terminal chat client on a store (ratatui + crossterm).
//! Channels with unread counts, a channel's messages with reply counts and
//! reactions, a thread pane, edits and deletes shown as they come, and an
//! input line with commands (`/reply`, `/react`, `/edit`, `/delete`,
//! `/invite`, ...). It runs a sync node, so that two terminals chat live.
//!
//! - `input`: the input line, and what a typed line asks for.
//! - `app`: the screen's state; keys, answers and events fold in.
//! - `worker`: the store side, one action after another.
//! - `view`: drawing.
//! - `session`: the loop that joins them, over any terminal.

mod app;
mod input;
mod session;
mod view;
mod worker;

#[cfg(test)]
mod tests;

use std::process::ExitCode;

use anyhow::{Context, Result};
use hearth::Hearth;
use hearth::sync::NodeConfig;
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;

use crate::net::Serving;

pub use session::Chat;
use worker::Update;

/// `hearth chat`: run until the user quits.
pub async fn chat(h: &Hearth, config: Option<NodeConfig>, first: Option<&str>) -> Result<ExitCode> {
    let first = match first {
        Some(name) => Some(h.resolve_channel(name).await?),
        None => None,
    };
    // The node first: what it says before the screen is up goes to the
    // status line once it is.
    let mut said = Vec::new();
    let serving = match config {
        Some(config) => Some(crate::net::serve(h, config, |v| said.push(notice_of(&v))).await?),
        None => None,
    };
    let terminal = match ratatui::try_init() {
        Ok(t) => t,
        Err(e) => {
            // Raw mode may be on already.
            let _ = ratatui::try_restore();
            h.stop_sync().await;
            return Err(anyhow::Error::new(e).context("setting up the terminal"));
        }
    };
    // A paste arrives whole (its line breaks do not send it line by line).
    let _ = crossterm::execute!(std::io::stdout(), crossterm::event::EnableBracketedPaste);
    let node = serving.as_ref().map(|s| s.node.clone());
    let mut chat = Chat::new(h, node, terminal, first, view::Palette::from_env());
    let notices = chat.notices();
    for notice in said {
        let _ = notices.send(Update::Notice(notice));
    }
    let duties = serving.map(|s| tend_node(h, s, notices));
    // SIGTERM, SIGHUP and SIGINT end the chat as Ctrl-C does (raw mode
    // turns Ctrl-C into a key; a signal still comes from `kill`).
    let result = chat
        .run(crossterm::event::EventStream::new(), crate::net::hangup_signal())
        .await;
    let tickets = std::mem::take(&mut chat.app.tickets);
    let _ = crossterm::execute!(std::io::stdout(), crossterm::event::DisableBracketedPaste);
    let restored = ratatui::try_restore();
    // What was typed and queued is written before the store closes.
    let finished = chat.finish(FINISH).await;
    if let Some(d) = duties {
        d.abort();
    }
    h.stop_sync().await;
    for (name, ticket) in tickets {
        println!("invite to #{name}: {ticket}");
    }
    result?;
    restored.context("restoring the terminal")?;
    if !finished {
        anyhow::bail!("writes still queued after {} s were not made", FINISH.as_secs());
    }
    Ok(ExitCode::SUCCESS)
}

/// How long the writes queued when the chat ends get to be made.
const FINISH: std::time::Duration = std::time::Duration::from_secs(30);

/// Do the node's duties (`net::tend`: let pending invites in through peers
/// that connect, keep peers found), saying what came of them on the status
/// line.
fn tend_node(h: &Hearth, serving: Serving, notices: UnboundedSender<Update>) -> tokio::task::JoinHandle<()> {
    let h = h.clone();
    let Serving {
        node,
        mut events,
        addrs,
    } = serving;
    if let Some(a) = addrs.first() {
        let _ = notices.send(Update::Notice(format!("listening on {a}")));
    }
    tokio::spawn(async move {
        loop {
            let e = match events.recv().await {
                Ok(e) => e,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            };
            let notices = notices.clone();
            crate::net::tend(&h, &node, &e, &addrs, move |v| {
                let _ = notices.send(Update::Notice(notice_of(&v)));
            })
            .await;
        }
    })
}

/// A line for the status bar from a node's JSON notice.
fn notice_of(v: &Value) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    match v["event"].as_str() {
        Some("joined") => format!("joined #{}", s("name")),
        Some("invite_refused") => format!("the invite to #{} was refused: {}", s("name"), s("why")),
        Some("error") => s("error"),
        Some("listen_moved") => format!("listening elsewhere than last time: {}", s("error")),
        _ => v.to_string(),
    }
}
