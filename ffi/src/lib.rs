//! # hearth-ffi
//!
//! Foreign-language bindings of the [`hearth`] facade, made with
//! [UniFFI](https://mozilla.github.io/uniffi-rs/) (0.32) proc-macros: the
//! route matrix-rust-sdk and p2panda take to Kotlin and Swift. The crate
//! builds a C-ABI library (`libhearth_ffi.so`, `.dylib`, `.dll`) and the
//! `uniffi-bindgen` binary that generates Python, Kotlin or Swift for it from
//! the library itself (no UDL file, no `uniffi.toml`).
//!
//! It is not a second API: every call is one of [`hearth::Hearth`]'s, with
//! the types foreign code can hold. Ids, addresses and tickets cross as
//! their text forms and are parsed in the call, so a malformed one comes back
//! as [`HearthError::Invalid`] (or [`HearthError::BadTicket`]), never as a
//! crash. Durations cross as `timedelta` / `Duration`.
//!
//! **Async.** Every call that touches the store is `async` in the foreign
//! language (an `async def` in Python, driven by its asyncio loop). The
//! crate owns one multi-thread tokio runtime, started on first use: each
//! call runs there as a task, and the foreign side only awaits its end, so
//! hearth's own tasks (the store's actor, the sync node, libp2p) never run
//! on a foreign thread. [`EventStream::next`] is the exception: it is polled
//! where it is awaited, so that a cancelled `next()` (a timeout) loses no
//! event.
//!
//! **Objects.** [`Hearth`] is a store, opened with its passphrase
//! ([`Hearth::create`], [`Hearth::open`]); close it with [`Hearth::close`]
//! (there is no async destructor). [`SyncHandle`] drives its sync node;
//! [`EventStream`] yields its [`Event`]s.
//!
//! In Python (the generated module uses the standard library only; the
//! crate's README says how to generate it):
//!
//! ```python
//! import asyncio, tempfile, hearth_ffi as h
//!
//! async def main():
//!     with tempfile.TemporaryDirectory() as d:
//!         store = await h.Hearth.create(d, "correct horse", "alice", h.StoreConfig())
//!         general = await store.create_channel("general")
//!         root = await store.post(general, "lunch?")
//!         await store.reply(root, "yes, 12:30")
//!         await store.react(root, "👍")
//!         page = await store.page(general, None, 50)
//!         assert page[0].reply_count == 1
//!         await store.close()
//!
//! asyncio.run(main())
//! ```
//!
//! The same calls from Rust, through this crate's API (which is what the
//! bindings call):
//!
//! ```
//! # futures::executor::block_on(async {
//! use hearth_ffi::{Hearth, StoreConfig};
//!
//! let tmp = std::env::temp_dir().join(format!("hearth-ffi-doc-{}", std::process::id()));
//! let dir = tmp.to_string_lossy().into_owned();
//! // Tests may lower the Argon2id cost; real stores keep the default.
//! let config = StoreConfig { insecure_fast_kdf: true };
//! let store = Hearth::create(dir.clone(), "pass".into(), "alice".into(), config.clone()).await?;
//! let general = store.create_channel("general".into()).await?;
//! let root = store.post(general.clone(), "lunch?".into()).await?;
//! store.reply(root.clone(), "yes".into()).await?;
//! store.close().await?;
//!
//! let store = Hearth::open(dir, "pass".into(), config).await?;
//! let page = store.page(general, None, 10).await?;
//! assert_eq!((page[0].text.as_deref(), page[0].reply_count), (Some("lunch?"), 1));
//! assert!(matches!(
//!     store.post("not an id".into(), "hi".into()).await,
//!     Err(hearth_ffi::HearthError::Invalid(_))
//! ));
//! store.close().await?;
//! # std::fs::remove_dir_all(tmp)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
#![deny(missing_docs)]

use std::sync::OnceLock;

mod error;
mod events;
mod invites;
mod messages;
mod store;
mod sync;
mod types;

pub use error::HearthError;
pub use events::{Event, EventStream};
pub use store::{Hearth, LinkCodeListener, exists};
pub use sync::{SyncConfig, SyncHandle, SyncReport};
pub use types::{
    ChannelInfo, Delivery, Fork, JoinOutcome, JoinedChannel, LocatedMessage, Member, Message, PeerStatus, Problem,
    Reaction, Receipts, Refusal, Role, Stats, StoreConfig, Thread, VerifyReport, Whoami,
};

uniffi::setup_scaffolding!();

/// The bindings' runtime, or why it could not start.
///
/// One multi-thread runtime for the process, made on first use. Not
/// UniFFI's `async_runtime = "tokio"`: that polls each call on the foreign
/// thread and sends whatever it spawns to a one-thread fallback runtime, where
/// every store's actor and sync node would then share one thread.
pub(crate) fn runtime() -> Result<&'static tokio::runtime::Runtime, HearthError> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .thread_name("hearth-ffi")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| HearthError::Io(format!("the bindings' runtime did not start: {e}")))
}

/// Run `call` as a task on the bindings' runtime and wait for its end.
///
/// A call the foreign side stops waiting for (a cancelled coroutine) still
/// runs to its end: a write is never half-done because its caller left.
pub(crate) async fn on_runtime<T: Send + 'static>(
    call: impl Future<Output = Result<T, HearthError>> + Send + 'static,
) -> Result<T, HearthError> {
    runtime()?
        .spawn(call)
        .await
        .map_err(|e| HearthError::Internal(format!("the call did not finish: {e}")))?
}
