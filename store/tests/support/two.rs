//! What the store tests of two or more stores share: a fast config and
//! moving entries from one store to another.

use hearth_core::{ChannelId, KdfParams, WireId};
use hearth_store::{Config, Store};

/// A store config with a fast KDF.
pub fn config() -> Config {
    Config::default().with_kdf(KdfParams::INSECURE_FAST)
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
