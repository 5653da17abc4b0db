//! [`Hearth`]: a store opened with its passphrase; its life (create, open,
//! close), its channels and its upkeep. Messages are in `messages.rs`,
//! members and invites in `invites.rs`, sync in `sync.rs`: each file adds
//! its own exported `impl Hearth`.

use std::sync::Arc;
use std::time::Duration;

use crate::error::{HearthError, parse_id};
use crate::events::EventStream;
use crate::types::{ChannelInfo, Stats, StoreConfig, VerifyReport, Whoami};
use crate::{on_runtime, runtime};

/// A Hearth store, opened with its passphrase: the chat API.
///
/// Writes return once durable. Close it with [`Hearth::close`] when done,
/// which returns once the lock is released. A store only dropped (a
/// garbage-collected object) closes in the background, so an open of the
/// same directory right after may find it [`HearthError::Locked`].
#[derive(uniffi::Object)]
pub struct Hearth {
    inner: hearth::Hearth,
}

impl Hearth {
    /// Run `call` on the facade's handle as a task on the bindings' runtime.
    pub(crate) async fn run<T, F>(&self, call: impl FnOnce(hearth::Hearth) -> F) -> Result<T, HearthError>
    where
        T: Send + 'static,
        F: Future<Output = hearth::Result<T>> + Send + 'static,
    {
        let call = call(self.inner.clone());
        on_runtime(async move { Ok(call.await?) }).await
    }

    /// The facade's handle (for the other files' exports).
    pub(crate) fn inner(&self) -> &hearth::Hearth {
        &self.inner
    }

    /// Open or create on the bindings' runtime.
    async fn start<F>(open: F) -> Result<Arc<Self>, HearthError>
    where
        F: Future<Output = hearth::Result<hearth::Hearth>> + Send + 'static,
    {
        on_runtime(async move { Ok(Arc::new(Hearth { inner: open.await? })) }).await
    }
}

/// Whether `dir` holds a Hearth store.
#[uniffi::export]
pub fn exists(dir: String) -> bool {
    hearth::Hearth::exists(dir)
}

/// Told the code to show while this device is linked
/// ([`Hearth::create_linked`]); implemented in the foreign language.
#[uniffi::export(foreign)]
pub trait LinkCodeListener: Send + Sync {
    /// Show `code`: the linking device shows the same six digits, and its
    /// user confirms there that they match.
    fn show_code(&self, code: String) -> Result<(), HearthError>;
}

#[uniffi::export]
impl Hearth {
    /// Create a store in `dir` (created if missing) for a new user named
    /// `user_name`, its key sealed under `passphrase`.
    /// [`HearthError::AlreadyExists`] if there is one.
    #[uniffi::constructor]
    pub async fn create(
        dir: String,
        passphrase: String,
        user_name: String,
        config: StoreConfig,
    ) -> Result<Arc<Self>, HearthError> {
        Self::start(async move {
            let pass = hearth::Passphrase::new(passphrase);
            hearth::Hearth::create(dir, &pass, &user_name, config.into()).await
        })
        .await
    }

    /// Open the store in `dir`; writes acknowledged before a crash are
    /// recovered. [`HearthError::WrongPassphrase`] if `passphrase` does not
    /// unlock it, [`HearthError::NotAStore`] if there is none.
    #[uniffi::constructor]
    pub async fn open(dir: String, passphrase: String, config: StoreConfig) -> Result<Arc<Self>, HearthError> {
        Self::start(async move {
            let pass = hearth::Passphrase::new(passphrase);
            hearth::Hearth::open(dir, &pass, config.into()).await
        })
        .await
    }

    /// Create a store in `dir` for a new device of the user who made the
    /// link `ticket` ([`Hearth::link_ticket`] on one of their devices):
    /// reach that device, tell `show` the six-digit code to show (the
    /// other device shows the same, and its user confirms it there), then
    /// create the store as that user, with every channel joined (their
    /// history arrives by sync). [`HearthError::Link`] when the other
    /// device refuses or does not answer within `timeout`.
    #[uniffi::constructor]
    pub async fn create_linked(
        dir: String,
        passphrase: String,
        ticket: String,
        config: StoreConfig,
        timeout: Duration,
        show: Arc<dyn LinkCodeListener>,
    ) -> Result<Arc<Self>, HearthError> {
        let ticket = crate::error::parse_ticket(&ticket)?;
        let timeout = timeout.min(Duration::from_secs(24 * 3600));
        Self::start(async move {
            let pass = hearth::Passphrase::new(passphrase);
            hearth::Hearth::create_linked(dir, &pass, &ticket, config.into(), timeout, |code| {
                // What the listener does with it is the app's business; a
                // failure there does not stop the linking.
                let _ = show.show_code(code.to_string());
            })
            .await
        })
        .await
    }

    /// Open the store in `dir` after rebuilding its database from its feed
    /// log: the way out of [`HearthError::Corrupted`].
    #[uniffi::constructor]
    pub async fn repair(dir: String, passphrase: String, config: StoreConfig) -> Result<Arc<Self>, HearthError> {
        Self::start(async move {
            let pass = hearth::Passphrase::new(passphrase);
            hearth::Hearth::repair(dir, &pass, config.into()).await
        })
        .await
    }

    /// Close the store cleanly: stop its sync node, checkpoint, release the
    /// lock. Every call on it afterwards is [`HearthError::Closed`], and
    /// every [`EventStream`] ends.
    pub async fn close(&self) -> Result<(), HearthError> {
        self.run(|h| h.close()).await
    }

    /// Who this store belongs to.
    pub fn whoami(&self) -> Whoami {
        self.inner.whoami().into()
    }

    /// Every change from now on, local and from peers, and what sync does.
    /// Subscribe before starting sync to see its first events.
    pub fn subscribe(&self) -> Result<Arc<EventStream>, HearthError> {
        // The facade may spawn the task that forwards the sync node's events.
        let _runtime = runtime()?.enter();
        Ok(Arc::new(EventStream::new(self.inner.subscribe())))
    }

    /// Every channel: name, message and unread counts, newest message, read
    /// marker.
    pub async fn channels(&self) -> Result<Vec<ChannelInfo>, HearthError> {
        let list = self.run(|h| async move { h.channels().await }).await?;
        Ok(list.into_iter().map(ChannelInfo::from).collect())
    }

    /// One channel, by id.
    pub async fn channel(&self, channel: String) -> Result<ChannelInfo, HearthError> {
        let channel = parse_id(&channel)?;
        Ok(self.run(move |h| async move { h.channel(channel).await }).await?.into())
    }

    /// A channel's id by its id, a unique id prefix, or its name.
    pub async fn resolve_channel(&self, input: String) -> Result<String, HearthError> {
        let id = self.run(|h| async move { h.resolve_channel(&input).await }).await?;
        Ok(id.to_string())
    }

    /// Create a channel, owned by this user; returns its id.
    pub async fn create_channel(&self, name: String) -> Result<String, HearthError> {
        let id = self.run(|h| async move { h.create_channel(&name).await }).await?;
        Ok(id.to_string())
    }

    /// Rename a channel (admins and owners).
    pub async fn rename_channel(&self, channel: String, name: String) -> Result<(), HearthError> {
        let channel = parse_id(&channel)?;
        self.run(move |h| async move { h.rename_channel(channel, &name).await })
            .await
    }

    /// Leave a channel (the last owner cannot).
    pub async fn leave(&self, channel: String) -> Result<(), HearthError> {
        let channel = parse_id(&channel)?;
        self.run(move |h| async move { h.leave(channel).await }).await
    }

    /// How long a channel keeps messages (`None`: for ever); admins and
    /// owners set it, and every member's device expires them.
    pub async fn set_retention(&self, channel: String, keep: Option<Duration>) -> Result<(), HearthError> {
        let channel = parse_id(&channel)?;
        self.run(move |h| async move { h.set_retention(channel, keep).await })
            .await
    }

    /// Change the passphrase (only the wrapped key is rewritten).
    pub async fn change_passphrase(&self, new_passphrase: String) -> Result<(), HearthError> {
        self.run(|h| async move { h.change_passphrase(&hearth::Passphrase::new(new_passphrase)).await })
            .await
    }

    /// Counts and sizes of the whole store.
    pub async fn stats(&self) -> Result<Stats, HearthError> {
        Ok(self.run(|h| async move { h.stats().await }).await?.into())
    }

    /// Decrypt and check every record.
    pub async fn verify(&self) -> Result<VerifyReport, HearthError> {
        Ok(self.run(|h| async move { h.verify().await }).await?.into())
    }

    /// Drop the bytes of deleted texts from the store's files now (it also
    /// happens on its own); returns how many texts were dropped.
    pub async fn compact(&self) -> Result<u64, HearthError> {
        let report = self.run(|h| async move { h.compact().await }).await?;
        Ok(report.texts_dropped)
    }
}
