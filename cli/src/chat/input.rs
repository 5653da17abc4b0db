//! The input line of `hearth chat`: an editable line, and what a typed line
//! asks for (`/reply 3 text`, `/react 3 👍`, ...).

use unicode_width::UnicodeWidthChar;

/// The text being typed, with a cursor between characters.
#[derive(Debug, Default)]
pub struct Line {
    chars: Vec<char>,
    cursor: usize,
}

impl Line {
    /// The text.
    pub fn text(&self) -> String {
        self.chars.iter().collect()
    }

    /// Whether nothing is typed.
    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    /// Type `c` at the cursor.
    pub fn insert(&mut self, c: char) {
        self.chars.insert(self.cursor, c);
        self.cursor += 1;
    }

    /// Remove the character before the cursor.
    pub fn backspace(&mut self) {
        if self.cursor > 0 {
            self.cursor -= 1;
            self.chars.remove(self.cursor);
        }
    }

    /// Remove the character under the cursor.
    pub fn delete(&mut self) {
        if self.cursor < self.chars.len() {
            self.chars.remove(self.cursor);
        }
    }

    /// Move the cursor one character left.
    pub fn left(&mut self) {
        self.cursor = self.cursor.saturating_sub(1);
    }

    /// Move the cursor one character right.
    pub fn right(&mut self) {
        self.cursor = (self.cursor + 1).min(self.chars.len());
    }

    /// Move the cursor to the start.
    pub fn home(&mut self) {
        self.cursor = 0;
    }

    /// Move the cursor to the end.
    pub fn end(&mut self) {
        self.cursor = self.chars.len();
    }

    /// Clear the line, giving back what it held.
    pub fn take(&mut self) -> String {
        self.cursor = 0;
        std::mem::take(&mut self.chars).into_iter().collect()
    }

    /// Columns from the start of the line to the cursor.
    pub fn cursor_column(&self) -> usize {
        self.chars[..self.cursor].iter().map(|c| c.width().unwrap_or(0)).sum()
    }
}

/// A message as the user names it: the number shown before it (`#3` or `3`).
pub type Number = u32;

/// What a line typed in the input asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Typed {
    /// Plain text: a message in the channel, or a reply when a thread is open.
    Say(String),
    /// `/reply N TEXT`
    Reply(Number, String),
    /// `/thread N`: open the thread of a message.
    Thread(Number),
    /// `/close`: close the thread pane.
    Close,
    /// `/react N EMOJI`
    React(Number, String),
    /// `/unreact N EMOJI`
    Unreact(Number, String),
    /// `/edit N TEXT`
    Edit(Number, String),
    /// `/delete N`
    Delete(Number),
    /// `/invite [SPAN]`: a ticket for the open channel, letting people in
    /// for SPAN (`24h`) or until revoked.
    Invite(Option<std::time::Duration>),
    /// `/join TICKET`
    Join(String),
    /// `/create NAME`: a new channel.
    Create(String),
    /// `/rename NAME`: rename the open channel.
    Rename(String),
    /// `/help`
    Help,
    /// `/quit`
    Quit,
}

/// The commands, for `/help`.
pub const HELP: &[(&str, &str)] = &[
    ("TEXT", "post in the channel (a reply, when a thread is open)"),
    ("/reply N TEXT", "reply to message #N"),
    ("/thread N", "open the thread of #N (Esc closes it)"),
    ("/react N EMOJI", "react to #N (/unreact N EMOJI takes it back)"),
    ("/edit N TEXT", "replace the text of your message #N"),
    ("/delete N", "delete your message #N"),
    (
        "/invite [SPAN]",
        "an invite ticket for this channel (for 24h, 7d, ...; else until revoked)",
    ),
    ("/join TICKET", "join a channel from a ticket"),
    ("/create NAME", "a new channel"),
    ("/rename NAME", "rename this channel"),
    ("/quit", "leave (or Ctrl-C)"),
    ("Tab, Shift-Tab", "next, previous channel"),
    ("Up, Down, PgUp, PgDn", "scroll (older messages load at the top)"),
    ("//TEXT", "post TEXT that starts with a slash"),
];

/// Read a typed line. `Err` says how the command is used.
pub fn parse(line: &str) -> Result<Typed, String> {
    let line = line.trim();
    if let Some(rest) = line.strip_prefix("//") {
        return Ok(Typed::Say(format!("/{rest}")));
    }
    let Some(command) = line.strip_prefix('/') else {
        return Ok(Typed::Say(line.to_string()));
    };
    let (name, rest) = command.split_once(char::is_whitespace).unwrap_or((command, ""));
    let rest = rest.trim();
    let usage = |u: &str| Err(format!("usage: {u}"));
    // A message number, then (for most) the rest of the line.
    let numbered = |u: &str, need_rest: bool| -> Result<(Number, String), String> {
        let (n, text) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        let n = n.strip_prefix('#').unwrap_or(n);
        match n.parse::<Number>() {
            Ok(n) if !need_rest || !text.trim().is_empty() => Ok((n, text.trim().to_string())),
            _ => Err(format!("usage: {u}")),
        }
    };
    Ok(match name {
        "reply" | "r" => numbered("/reply N TEXT", true).map(|(n, t)| Typed::Reply(n, t))?,
        "thread" | "t" => match numbered("/thread N", false)? {
            (n, t) if t.is_empty() => Typed::Thread(n),
            _ => return usage("/thread N"),
        },
        "close" => Typed::Close,
        "react" => numbered("/react N EMOJI", true).map(|(n, e)| Typed::React(n, e))?,
        "unreact" => numbered("/unreact N EMOJI", true).map(|(n, e)| Typed::Unreact(n, e))?,
        "edit" => numbered("/edit N TEXT", true).map(|(n, t)| Typed::Edit(n, t))?,
        "delete" => match numbered("/delete N", false)? {
            (n, t) if t.is_empty() => Typed::Delete(n),
            _ => return usage("/delete N"),
        },
        "invite" if rest.is_empty() => Typed::Invite(None),
        "invite" => match crate::parse_span(rest) {
            Ok(span) => Typed::Invite(Some(span)),
            Err(_) => return usage("/invite [SPAN, e.g. 24h]"),
        },
        // A ticket copied off a screen may come in pieces: joined later.
        "join" if !rest.is_empty() => Typed::Join(rest.to_string()),
        "join" => return usage("/join TICKET"),
        "create" | "new" if !rest.is_empty() => Typed::Create(rest.to_string()),
        "create" | "new" => return usage("/create NAME"),
        "rename" if !rest.is_empty() => Typed::Rename(rest.to_string()),
        "rename" => return usage("/rename NAME"),
        "help" | "?" => Typed::Help,
        "quit" | "q" | "exit" => Typed::Quit,
        other => return Err(format!("no command /{other}: /help lists them")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_read_with_their_numbers_and_texts() {
        assert_eq!(parse("hello there"), Ok(Typed::Say("hello there".into())));
        assert_eq!(parse("//etc/hosts"), Ok(Typed::Say("/etc/hosts".into())));
        assert_eq!(parse("/reply 3 sure thing"), Ok(Typed::Reply(3, "sure thing".into())));
        assert_eq!(parse("/reply #12   spaced "), Ok(Typed::Reply(12, "spaced".into())));
        assert_eq!(parse("/react 4 👍"), Ok(Typed::React(4, "👍".into())));
        assert_eq!(parse("/unreact #4 :tada:"), Ok(Typed::Unreact(4, ":tada:".into())));
        assert_eq!(parse("/edit 2 fixed"), Ok(Typed::Edit(2, "fixed".into())));
        assert_eq!(parse("/delete 2"), Ok(Typed::Delete(2)));
        assert_eq!(parse("/thread 7"), Ok(Typed::Thread(7)));
        assert_eq!(parse("/invite"), Ok(Typed::Invite(None)));
        assert_eq!(
            parse("/invite 24h"),
            Ok(Typed::Invite(Some(std::time::Duration::from_secs(86_400))))
        );
        assert_eq!(parse("/join hearth1abc"), Ok(Typed::Join("hearth1abc".into())));
        assert_eq!(parse("/join hearth1 abc"), Ok(Typed::Join("hearth1 abc".into())));
        assert_eq!(parse("/create random"), Ok(Typed::Create("random".into())));
        assert_eq!(parse("/rename general chat"), Ok(Typed::Rename("general chat".into())));
        assert_eq!(parse("/quit"), Ok(Typed::Quit));
    }

    #[test]
    fn a_command_used_wrongly_says_how_it_is_used() {
        for (line, usage) in [
            ("/reply 3", "/reply N TEXT"),
            ("/reply x hi", "/reply N TEXT"),
            ("/react 3", "/react N EMOJI"),
            ("/delete", "/delete N"),
            ("/delete 3 4", "/delete N"),
            ("/thread -1", "/thread N"),
            ("/edit 99999999999 x", "/edit N TEXT"),
            ("/join", "/join TICKET"),
            ("/create", "/create NAME"),
            ("/invite now", "/invite [SPAN, e.g. 24h]"),
        ] {
            assert_eq!(parse(line), Err(format!("usage: {usage}")), "{line}");
        }
        assert!(parse("/frobnicate").unwrap_err().contains("/help"));
    }

    #[test]
    fn the_line_edits_at_its_cursor_and_counts_wide_characters() {
        let mut l = Line::default();
        for c in "héllo".chars() {
            l.insert(c);
        }
        l.left();
        l.left();
        l.backspace();
        assert_eq!(l.text(), "hélo");
        l.home();
        l.insert('👍');
        assert_eq!(l.cursor_column(), 2);
        l.end();
        l.delete();
        l.right();
        assert_eq!((l.text(), l.cursor_column()), ("👍hélo".to_string(), 6));
        assert_eq!(l.take(), "👍hélo");
        assert!(l.is_empty());
        l.backspace();
        assert_eq!(l.cursor_column(), 0);
    }
}
