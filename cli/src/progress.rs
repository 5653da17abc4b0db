//! Progress bars on stderr for the CLI's long operations (an import, a
//! compaction, a backup, a restore, a catch-up from a peer). indicatif hides them when stderr is not
//! a terminal (or `TERM` is dumb), so pipes and files get only the results;
//! the templates use no colour, so `NO_COLOR` holds too.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressFinish, ProgressStyle};

/// A count of messages taken so far: `imported 12,000 messages (2s)`.
pub fn messages(what: &'static str) -> ProgressBar {
    // Cleared however it ends (an error after it is printed alone).
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_finish(ProgressFinish::AndClear);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} {human_pos} messages ({elapsed})").expect("a valid template"),
    );
    bar.set_message(what);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// A copy under way (a compaction's, a backup's, a restore's), redrawn
/// from its counters until the returned guard is dropped.
pub struct Copying {
    bar: ProgressBar,
    task: tokio::task::JoinHandle<()>,
}

impl Copying {
    /// Show `progress` as `what`.
    pub fn show(what: &'static str, progress: Arc<hearth::CompactProgress>) -> Copying {
        let bar =
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_finish(ProgressFinish::AndClear);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {human_pos} of about {human_len} rows ({percent}%, {elapsed})",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_message(what);
        let shown = bar.clone();
        let task = tokio::spawn(async move {
            loop {
                let total = progress.rows_total.load(Relaxed);
                if total > 0 {
                    shown.set_length(total);
                }
                shown.set_position(progress.rows_copied.load(Relaxed));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Copying { bar, task }
    }
}

impl Drop for Copying {
    fn drop(&mut self) {
        self.task.abort();
        self.bar.finish_and_clear();
    }
}

/// Messages arriving from peers (a catch-up), counted from the store's
/// sync progress events until the guard is dropped. Off a terminal nothing
/// is subscribed to (the store builds no events for nobody).
pub struct Receiving {
    bar: ProgressBar,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Receiving {
    /// Count what arrives into `h`.
    pub fn show(h: &hearth::Hearth) -> Receiving {
        let bar = messages("received");
        let task = (!bar.is_hidden()).then(|| {
            let mut events = h.subscribe();
            let shown = bar.clone();
            tokio::spawn(async move {
                while let Some(e) = futures::StreamExt::next(&mut events).await {
                    if let hearth::Event::SyncProgress { messages, .. } = e {
                        shown.inc(messages);
                    }
                }
            })
        });
        Receiving { bar, task }
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_hidden_off_a_terminal() {
        // Test output is captured (a pipe), as a script's stderr would be.
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            return;
        }
        let bar = messages("importing");
        bar.inc(5);
        assert!(bar.is_hidden());
        assert_eq!(bar.position(), 5);
        bar.finish_and_clear();
    }
}
