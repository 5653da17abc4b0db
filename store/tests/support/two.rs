//! What the store tests of two or more stores share: a fast config and
//! moving entries from one store to another.

use hearth_core::{ChannelId, KdfParams, WireId};
use hearth_store::{Config, Store};

/// A store config with a fast KDF.
pub fn config() -> Config {
    Config::default().with_kdf(KdfParams::INSECURE_FAST)
}

/// Every page of `channel`, newest first, `size` top-level messages each.
#[allow(dead_code)]
pub async fn pages(s: &Store, channel: ChannelId, size: usize) -> Vec<Vec<hearth_core::Message>> {
    let mut out = Vec::new();
    let mut before = None;
    loop {
        let page = s.page(channel, before, size).await.unwrap();
        let Some(oldest) = page.last() else { break };
        before = Some(oldest.id);
        out.push(page);
    }
    out
}

/// A member of `from`'s channel, made in `dir/name` with `config`, that
/// joined it and pulled all of it.
#[allow(dead_code)]
pub async fn member(dir: &std::path::Path, name: &str, from: &Store, channel: ChannelId, config: Config) -> Store {
    let s = Store::create(dir.join(name), &hearth_core::Passphrase::new("pw"), name, config)
        .await
        .unwrap();
    let keys = from.channel_keys(channel).await.unwrap();
    let wire = keys.wire();
    s.join_channel(keys).await.unwrap();
    pull(from, &s, wire, channel).await;
    s
}

/// Move everything `from` holds of a channel that `to` lacks.
pub async fn pull(from: &Store, to: &Store, wire: WireId, channel: ChannelId) {
    loop {
        let have = to.vector(channel).await.unwrap();
        let batch = from.entries_after(wire, have, 16 * 1024, 64).await.unwrap();
        if batch.entries.is_empty() {
            return;
        }
        let report = to.ingest(wire, batch.entries).await.unwrap();
        assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    }
}
