//! Drawing `hearth chat`: channels on the left, the open channel's messages,
//! the open thread on the right, the input line and the status bar.

use hearth::Message;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Position, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, List, ListItem, ListState, Paragraph, Wrap};
use unicode_width::UnicodeWidthChar;

use super::app::App;

/// The styles of the screen: colours, or with `NO_COLOR` set only bold,
/// dim and reversed.
#[derive(Clone, Copy, Debug)]
pub struct Palette {
    colour: bool,
}

impl Palette {
    /// Colours unless `NO_COLOR` is set (and not empty).
    pub fn from_env() -> Palette {
        Palette {
            colour: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        }
    }

    /// No colours.
    #[cfg(test)]
    pub fn plain() -> Palette {
        Palette { colour: false }
    }

    fn pick(self, colour: Style, plain: Style) -> Style {
        if self.colour { colour } else { plain }
    }

    fn me(self) -> Style {
        self.pick(Style::new().fg(Color::Green).bold(), Style::new().bold())
    }

    fn other(self) -> Style {
        self.pick(Style::new().fg(Color::Cyan).bold(), Style::new().bold())
    }

    fn number(self) -> Style {
        Style::new().add_modifier(Modifier::DIM)
    }

    fn faint(self) -> Style {
        Style::new().add_modifier(Modifier::DIM | Modifier::ITALIC)
    }

    fn extra(self) -> Style {
        self.pick(Style::new().fg(Color::Yellow), Style::new())
    }

    fn unread(self) -> Style {
        self.pick(Style::new().fg(Color::Yellow).bold(), Style::new().bold())
    }

    fn selected(self) -> Style {
        Style::new().add_modifier(Modifier::REVERSED)
    }

    fn failed(self) -> Style {
        self.pick(Style::new().fg(Color::Red).bold(), Style::new().bold())
    }
}

/// Draw the whole screen.
pub fn draw(app: &mut App, palette: Palette, frame: &mut Frame) {
    let [main, input, status] =
        Layout::vertical([Constraint::Fill(1), Constraint::Length(3), Constraint::Length(1)]).areas(frame.area());
    let side = (main.width / 4).clamp(12, 24);
    let (channels, body, thread) = if app.thread.is_some() {
        let [c, b, t] =
            Layout::horizontal([Constraint::Length(side), Constraint::Fill(3), Constraint::Fill(2)]).areas(main);
        (c, b, Some(t))
    } else {
        let [c, b] = Layout::horizontal([Constraint::Length(side), Constraint::Fill(1)]).areas(main);
        (c, b, None)
    };
    draw_channels(app, palette, frame, channels);
    draw_messages(app, palette, frame, body);
    if let Some(area) = thread {
        draw_thread(app, palette, frame, area);
    }
    draw_input(app, frame, input);
    draw_status(app, palette, frame, status);
    if let Some(popup) = &app.popup {
        let (area, block) = if popup.copyable {
            // The whole screen: a long ticket (many addresses) still fits.
            let area = frame.area();
            (area, Block::new().borders(Borders::TOP | Borders::BOTTOM))
        } else {
            (centered(frame.area(), 80, 60), Block::bordered())
        };
        frame.render_widget(Clear, area);
        frame.render_widget(
            Paragraph::new(popup.text.as_str())
                .wrap(Wrap { trim: false })
                .block(block.title(popup.title.as_str())),
            area,
        );
    }
}

fn draw_channels(app: &App, palette: Palette, frame: &mut Frame, area: Rect) {
    let items: Vec<ListItem> = app
        .channels
        .iter()
        .map(|c| {
            let mut spans = vec![Span::raw(format!("#{}", c.name))];
            if c.unread > 0 {
                spans.push(Span::styled(format!(" ({})", c.unread), palette.unread()));
            }
            ListItem::new(Line::from(spans))
        })
        .collect();
    let mut state =
        ListState::default().with_selected(app.current.and_then(|c| app.channels.iter().position(|i| i.id == c)));
    let list = List::new(items)
        .block(Block::bordered().title("Channels"))
        .highlight_style(palette.selected())
        .highlight_symbol("> ");
    frame.render_stateful_widget(list, area, &mut state);
}

/// A message as styled pieces: `#3 alice: text (edited)  ↳ 2  👍 1`.
fn message_spans(app: &App, palette: Palette, m: &Message) -> Vec<(String, Style)> {
    let mut out = Vec::new();
    let number = app.numbers.get(&m.id).map_or("#?".into(), |n| format!("#{n}"));
    out.push((format!("{number} "), palette.number()));
    let who = if m.author == app.me {
        palette.me()
    } else {
        palette.other()
    };
    out.push((app.name(&m.author), who));
    out.push((": ".into(), Style::new()));
    match &m.text {
        Some(t) => out.push((t.replace('\n', " "), Style::new())),
        None if m.dropped => out.push(("(text dropped)".into(), palette.faint())),
        None => out.push(("(deleted)".into(), palette.faint())),
    }
    if m.edited && !m.deleted {
        out.push((" (edited)".into(), palette.faint()));
    }
    if m.reply_count > 0 {
        out.push((format!("  ↳ {}", m.reply_count), palette.extra()));
    }
    for (emoji, users) in &m.reactions {
        out.push((format!("  {emoji} {}", users.len()), palette.extra()));
    }
    out
}

/// Styled pieces wrapped to `width` columns, at spaces where one is near;
/// lines after the first indented by two.
fn wrap(pieces: &[(String, Style)], width: usize) -> Vec<Line<'static>> {
    let width = width.max(4);
    let mut lines = Vec::new();
    let mut row: Vec<(char, Style)> = Vec::new();
    let mut used = 0;
    let flush = |row: &mut Vec<(char, Style)>, lines: &mut Vec<Line<'static>>| {
        let mut spans: Vec<Span<'static>> = Vec::new();
        for (c, style) in row.drain(..) {
            match spans.last_mut() {
                Some(s) if s.style == style => s.content.to_mut().push(c),
                _ => spans.push(Span::styled(c.to_string(), style)),
            }
        }
        lines.push(Line::from(spans));
    };
    for (text, style) in pieces {
        for c in text.chars() {
            let w = c.width().unwrap_or(0);
            if used + w > width && !row.is_empty() {
                // Break after the last space of the row when there is one
                // past the indent; else mid-word.
                let indent = if lines.is_empty() { 0 } else { 2 };
                let cut = row
                    .iter()
                    .rposition(|(c, _)| *c == ' ')
                    .filter(|&i| i > indent)
                    .map_or(row.len(), |i| i + 1);
                let mut rest: Vec<(char, Style)> = row.split_off(cut);
                let blanks = rest.iter().take_while(|(c, _)| *c == ' ').count();
                rest.drain(..blanks);
                flush(&mut row, &mut lines);
                row.push((' ', Style::new()));
                row.push((' ', Style::new()));
                row.extend(rest);
                used = row.iter().map(|(c, _)| c.width().unwrap_or(0)).sum();
            }
            row.push((c, *style));
            used += w;
        }
    }
    if !row.is_empty() {
        flush(&mut row, &mut lines);
    }
    lines
}

/// The last `height` of `lines`, `scroll` lines up from the end.
fn window(lines: Vec<Line<'static>>, height: usize, scroll: usize) -> Vec<Line<'static>> {
    let end = lines.len().saturating_sub(scroll);
    let start = end.saturating_sub(height);
    lines.into_iter().skip(start).take(end - start).collect()
}

/// `lines` at the bottom of `height` rows, next to the input line, as chats
/// show them.
fn bottom(mut lines: Vec<Line<'static>>, height: u16) -> Vec<Line<'static>> {
    let pad = (height as usize).saturating_sub(lines.len());
    lines.splice(0..0, std::iter::repeat_n(Line::default(), pad));
    lines
}

fn draw_messages(app: &mut App, palette: Palette, frame: &mut Frame, area: Rect) {
    let block = Block::bordered();
    let inner = block.inner(area);
    let width = inner.width as usize;
    let mut lines: Vec<Line<'static>> = Vec::new();
    if app.more {
        lines.push(Line::styled("(older messages above: scroll up)", palette.faint()));
    }
    for m in &app.messages {
        lines.extend(wrap(&message_spans(app, palette, m), width));
    }
    if app.messages.is_empty() && app.current.is_some() {
        lines.push(Line::styled("(no messages yet)", palette.faint()));
    }
    if app.current.is_none() {
        lines.push(Line::styled(
            "No channel yet: /create NAME, or /join TICKET.",
            palette.faint(),
        ));
    }
    app.lines_held = lines.len();
    app.rows_shown = inner.height as usize;
    // Scroll no further than the oldest line.
    app.scroll = app.scroll.min(lines.len().saturating_sub(inner.height as usize));
    let title = match app.channel_name() {
        Some(name) if app.scroll > 0 => format!("#{name} (scrolled up {}: Down returns)", app.scroll),
        Some(name) => format!("#{name}"),
        None => "hearth".into(),
    };
    let shown = window(lines, inner.height as usize, app.scroll);
    frame.render_widget(
        Paragraph::new(bottom(shown, inner.height)).block(block.title(title)),
        area,
    );
}

fn draw_thread(app: &App, palette: Palette, frame: &mut Frame, area: Rect) {
    let Some((root, thread)) = &app.thread else { return };
    let number = app.numbers.get(root).map_or("?".into(), |n| n.to_string());
    let block = Block::bordered().title(format!("Thread #{number}"));
    let inner = block.inner(area);
    let width = inner.width as usize;
    let lines = match thread {
        None => vec![Line::styled("reading...", palette.faint())],
        Some(t) => {
            let mut lines = wrap(&message_spans(app, palette, &t.root), width);
            if t.replies.is_empty() {
                lines.push(Line::styled("(no replies yet: type one)", palette.faint()));
            }
            for r in &t.replies {
                let mut pieces = vec![("  ".to_string(), Style::new())];
                pieces.extend(message_spans(app, palette, r));
                lines.extend(wrap(&pieces, width));
            }
            lines
        }
    };
    let shown = window(lines, inner.height as usize, 0);
    frame.render_widget(Paragraph::new(bottom(shown, inner.height)).block(block), area);
}

fn draw_input(app: &App, frame: &mut Frame, area: Rect) {
    let title = match (&app.thread, app.channel_name()) {
        (Some((root, _)), _) => format!(
            "Reply in thread #{} (Esc closes it)",
            app.numbers.get(root).map_or("?".into(), |n| n.to_string())
        ),
        (None, Some(name)) => format!("Message #{name}"),
        (None, None) => "Command (/help)".into(),
    };
    let block = Block::bordered().title(title);
    let inner = block.inner(area);
    // Keep the cursor in view: the line scrolls left as it grows.
    let column = app.input.cursor_column();
    let width = inner.width.max(1) as usize;
    let skip = (column + 1).saturating_sub(width);
    let text: String = {
        let mut cols = 0;
        app.input
            .text()
            .chars()
            .skip_while(|c| {
                cols += c.width().unwrap_or(0);
                cols <= skip
            })
            .collect()
    };
    frame.render_widget(Paragraph::new(text).block(block), area);
    if app.popup.is_none() {
        frame.set_cursor_position(Position::new(inner.x + (column - skip) as u16, inner.y));
    }
}

fn draw_status(app: &App, palette: Palette, frame: &mut Frame, area: Rect) {
    let me = app.name(&app.me);
    let peers = match app.peers.len() {
        1 => "1 peer".to_string(),
        n => format!("{n} peers"),
    };
    let line = match &app.notice {
        Some(n) => Line::from(vec![
            Span::raw(format!("{me} · {peers} · ")),
            Span::styled(n.text.clone(), if n.failed { palette.failed() } else { Style::new() }),
        ]),
        None => Line::from(format!("{me} · {peers} · Tab: next channel · /help · Ctrl-C quits")),
    };
    frame.render_widget(Paragraph::new(line), area);
}

/// A box of `percent_x` by `percent_y` of `area`, in its middle.
fn centered(area: Rect, percent_x: u16, percent_y: u16) -> Rect {
    let [_, mid, _] = Layout::vertical([
        Constraint::Percentage((100 - percent_y) / 2),
        Constraint::Percentage(percent_y),
        Constraint::Fill(1),
    ])
    .areas(area);
    let [_, mid, _] = Layout::horizontal([
        Constraint::Percentage((100 - percent_x) / 2),
        Constraint::Percentage(percent_x),
        Constraint::Fill(1),
    ])
    .areas(mid);
    mid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(lines: &[Line]) -> Vec<String> {
        lines.iter().map(|l| l.to_string()).collect()
    }

    #[test]
    fn long_messages_wrap_at_spaces_and_indent_what_follows() {
        let pieces = vec![
            ("#1 ".to_string(), Style::new()),
            ("ann: the quick brown fox jumps".to_string(), Style::new()),
        ];
        assert_eq!(
            text(&wrap(&pieces, 16)),
            ["#1 ann: the ", "  quick brown ", "  fox jumps"]
        );
        // A word longer than the width breaks where it must.
        let long = vec![("abcdefghijklmnopqrstuvwxyz".to_string(), Style::new())];
        assert_eq!(text(&wrap(&long, 10)), ["abcdefghij", "  klmnopqr", "  stuvwxyz"]);
        // Wide characters take two columns.
        let wide = vec![("👍👍👍👍👍👍".to_string(), Style::new())];
        assert_eq!(text(&wrap(&wide, 8)), ["👍👍👍👍", "  👍👍"]);
    }

    #[test]
    fn the_window_shows_the_newest_lines_unless_scrolled() {
        let lines: Vec<Line<'static>> = (0..10).map(|i| Line::from(i.to_string())).collect();
        assert_eq!(text(&window(lines.clone(), 3, 0)), ["7", "8", "9"]);
        assert_eq!(text(&window(lines.clone(), 3, 2)), ["5", "6", "7"]);
        assert_eq!(text(&window(lines.clone(), 3, 9)), ["0"]);
        assert_eq!(text(&window(lines, 20, 0)).len(), 10);
    }
}
