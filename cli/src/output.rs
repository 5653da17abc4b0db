//! Printing: human-readable lines, or JSON with --json (one object per line).

use std::collections::BTreeMap;

use hearth::{Message, UserId};
use serde_json::{Value, json};

/// An error as one line (causes joined).
pub fn one_line(e: &anyhow::Error) -> String {
    let mut s = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
    }
    s.replace('\n', " ")
}

/// Names of users for display; unknown users show as a short id.
pub struct Names {
    pub names: BTreeMap<UserId, String>,
}

impl Names {
    pub fn of(&self, u: &UserId) -> String {
        match self.names.get(u) {
            Some(n) => n.clone(),
            None => u.to_hex()[..8].to_string(),
        }
    }
}

/// A message as JSON.
pub fn message_json(m: &Message, names: &Names) -> Value {
    let reactions: BTreeMap<&str, Vec<String>> = m
        .reactions
        .iter()
        .map(|(e, us)| (e.as_str(), us.iter().map(|u| names.of(u)).collect()))
        .collect();
    json!({
        "id": m.id.to_hex(),
        "author": m.author.to_hex(),
        "author_name": names.of(&m.author),
        "text": m.text,
        "reply_to": m.reply_to.map(|r| r.to_hex()),
        "edited": m.edited,
        "deleted": m.deleted,
        "dropped": m.dropped,
        "reply_count": m.reply_count,
        "reactions": reactions,
        "time_ms": m.id.timestamp().millis(),
    })
}

/// A message as one human-readable line.
pub fn message_line(m: &Message, names: &Names) -> String {
    let mut s = format!("{}  {}: ", m.id, names.of(&m.author));
    match &m.text {
        Some(t) => s.push_str(&t.replace('\n', " ")),
        None if m.dropped => s.push_str("(text dropped)"),
        None => s.push_str("(deleted)"),
    }
    if m.edited {
        s.push_str(" (edited)");
    }
    if m.reply_count > 0 {
        s.push_str(&format!(
            "  [{} repl{}]",
            m.reply_count,
            if m.reply_count == 1 { "y" } else { "ies" }
        ));
    }
    for (emoji, users) in &m.reactions {
        s.push_str(&format!("  {emoji} {}", users.len()));
    }
    s
}

/// Print one JSON value on its own line.
pub fn print_json(v: &Value) {
    println!("{v}");
}
