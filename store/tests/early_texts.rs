//! A feed entry's texts are deflated as they are staged
//! (`hearth_core::textpack::TextsDeflate`), and taken already deflated
//! when the entry is sealed if they are exactly the pack's texts. These
//! tests write what takes that path and what must not (a text deleted or
//! edited before its entry is sealed, more channels at once than there are
//! deflate states), then read every text back after a reopen: from the
//! packs on disk, not from memory.

use std::collections::HashMap;

use hearth_core::{ChannelId, KdfParams, MessageId, Passphrase};
use hearth_store::{Config, Store};

fn config() -> Config {
    Config::default().with_kdf(KdfParams::INSECURE_FAST)
}

/// A text of about 150 bytes that deflate can shorten (words repeat) and
/// that names its message.
fn text(channel: usize, i: usize) -> String {
    format!(
        "channel {channel} message {i}: {}",
        [
            "lorem ipsum dolor",
            "sit amet consectetur",
            "adipiscing elit sed",
            "do eiusmod"
        ]
        .iter()
        .cycle()
        .skip(i % 4)
        .take(2 + i % 5)
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
    )
}

/// Every message of `channel`, by id: its text and whether it is deleted.
/// Pages of more than a front page holds (100), so that each is computed
/// from the epochs, their texts from the packs.
async fn everything(s: &Store, channel: ChannelId) -> HashMap<MessageId, (Option<String>, bool)> {
    let mut all = HashMap::new();
    let mut before = None;
    loop {
        let page = s.page(channel, before, 150).await.unwrap();
        let Some(last) = page.last() else { break };
        before = Some(last.id);
        for m in page {
            all.insert(m.id, (m.text, m.deleted));
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn texts_deflated_as_staged_read_back_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let pass = Passphrase::new("pw");
    let s = Store::create(dir.path(), &pass, "alice", config()).await.unwrap();
    // Six channels written in turn: more than the engine keeps deflate
    // states for, so some entries take their texts early and some do not.
    let mut channels = Vec::new();
    for c in 0..6 {
        channels.push(s.create_channel(&format!("c{c}")).await.unwrap());
    }
    let mut want: Vec<HashMap<MessageId, (Option<String>, bool)>> = vec![HashMap::new(); 6];
    for i in 0..700 {
        // Channel 0 gets most: several full entries (40 KiB each).
        let c = if i % 2 == 0 { 0 } else { 1 + (i / 2) % 5 };
        let t = text(c, i);
        let id = s.post(channels[c], &t).await.unwrap();
        want[c].insert(id, (Some(t), false));
        // Between a text's staging and its entry's seal: a delete and an
        // edit, whose entries then hold other texts than were fed.
        if i % 97 == 3 {
            s.delete(id).await.unwrap();
            want[c].insert(id, (None, true));
        } else if i % 89 == 5 {
            let edited = format!("{} (edited)", text(c, i + 1));
            s.edit(id, &edited).await.unwrap();
            want[c].insert(id, (Some(edited), false));
        }
    }
    for (c, channel) in channels.iter().enumerate() {
        assert_eq!(everything(&s, *channel).await, want[c], "channel {c} before the reopen");
    }
    s.close().await.unwrap();

    let s = Store::open(dir.path(), &pass, config()).await.unwrap();
    for (c, channel) in channels.iter().enumerate() {
        let got = everything(&s, *channel).await;
        assert_eq!(got.len(), want[c].len(), "channel {c}");
        for (id, (text, deleted)) in &want[c] {
            let (got_text, got_deleted) = &got[id];
            assert_eq!(got_deleted, deleted, "channel {c}, {id}");
            if !deleted {
                assert_eq!(got_text, text, "channel {c}, {id}");
            }
        }
    }
    s.close().await.unwrap();
}
