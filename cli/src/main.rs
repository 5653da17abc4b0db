//! The `hearth` command-line tool: a thin shell over the `hearth` crate. It parses
//! arguments, asks for the passphrase, calls the embedding API and prints.
//!
//! Exit status: 0 on success, 1 on an error (one line on stderr), 2 on a usage error.

mod bench;
mod chat;
mod commands;
mod demo;
mod lab;
mod net;
mod output;
mod pass;
mod progress;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hearth::MessageId;
use hearth::sync::Multiaddr;

/// Hearth: an encrypted, local-first chat store.
#[derive(Parser, Debug)]
#[command(name = "hearth", version, about)]
pub struct Cli {
    /// Store directory.
    #[arg(long, global = true, default_value = "./hearth-store")]
    pub store: PathBuf,
    /// Print machine-readable JSON (one object per line for lists).
    #[arg(long, global = true)]
    pub json: bool,
    /// Read the passphrase from this file (first line) when HEARTH_PASSPHRASE is unset.
    #[arg(long, global = true)]
    pub passphrase_file: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a store for a new user.
    Init {
        /// Display name.
        #[arg(long, default_value = "me")]
        user: String,
        /// Become a new device of an existing user, from the ticket `hearth link` printed there.
        #[arg(long, conflicts_with = "user")]
        link: Option<String>,
        /// With --link: how long to wait for the linking device (and its
        /// user's confirmation of the code), in seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Print a one-time ticket that makes a new device this user (`hearth init --link`),
    /// good for 10 minutes. When a device asks, both show a six-digit code: answer
    /// `y` on standard input (a line) only if they are the same.
    Link {
        /// Address to listen on while waiting (default: a free loopback TCP port).
        #[arg(long)]
        listen: Vec<Multiaddr>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Create, list or rename channels.
    #[command(subcommand)]
    Channel(ChannelCmd),
    /// A channel's roster: list, remove, change roles, add back, leave.
    #[command(subcommand)]
    Member(MemberCmd),
    /// This user's devices: list, revoke.
    #[command(subcommand)]
    Device(DeviceCmd),
    /// Post a message (prints its id once durable).
    Post {
        /// Channel id or name.
        channel: String,
        /// The text (omit with --stdin).
        #[arg(required_unless_present = "stdin", conflicts_with = "stdin")]
        text: Option<String>,
        /// Post one message per input line, printing each id once durable.
        #[arg(long)]
        stdin: bool,
        /// With --stdin: take the lines through the bulk path (no journal;
        /// runs of what has arrived, up to 16,384 lines, each run's ids
        /// printed once it is durable, a bad line refusing its run).
        #[arg(long, requires = "stdin")]
        bulk: bool,
        /// Reply in the thread of this message.
        #[arg(long)]
        reply_to: Option<MessageId>,
    },
    /// Add (or with --remove, remove) a reaction.
    React {
        /// The message.
        msg: MessageId,
        /// The reaction, e.g. 👍 or :tada:.
        emoji: String,
        /// Remove the reaction instead.
        #[arg(long)]
        remove: bool,
    },
    /// Edit one of your messages.
    Edit {
        /// The message.
        msg: MessageId,
        /// The new text.
        text: String,
    },
    /// Delete one of your messages.
    Delete {
        /// The message.
        msg: MessageId,
    },
    /// Mark a channel read (up to its newest message, or --up-to).
    Read {
        /// Channel id or name.
        channel: String,
        /// The newest message read.
        #[arg(long)]
        up_to: Option<MessageId>,
    },
    /// Show a channel's messages, newest first.
    Log {
        /// Channel id or name.
        channel: String,
        /// How many messages.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Only messages older than this one.
        #[arg(long)]
        before: Option<MessageId>,
    },
    /// Show a thread, oldest first.
    Thread {
        /// The root or any reply.
        msg: MessageId,
    },
    /// Show one message with reactions, edit state and replies.
    Show {
        /// The message.
        msg: MessageId,
    },
    /// Bulk-load JSON lines {"text": ..., "reply_to"?: ...} into a channel
    /// (through the bulk path, `Store::import_posts`);
    /// with --new, take a `hearth export --format json` file back into a new
    /// channel of that name.
    Import {
        /// Channel id or name (with --new: the new channel's name).
        channel: String,
        /// The file ("-" for standard input).
        file: PathBuf,
        /// Create the channel from an export (docs/export.md).
        #[arg(long)]
        new: bool,
    },
    /// Export a channel: every message with its thread, reactions, edit and
    /// delete state, author and time (docs/export.md).
    Export {
        /// Channel id or name.
        channel: String,
        /// json (readable, and `import --new` takes it back) or automerge (a
        /// plain document any automerge implementation loads).
        #[arg(long, value_enum, default_value_t = ExportFormat::Json)]
        format: ExportFormat,
        /// Where to write it ("-" for standard output).
        #[arg(long)]
        out: PathBuf,
    },
    /// Counts and sizes.
    Stats,
    /// Decrypt and check every record; exits 1 if anything is wrong.
    Verify {
        /// Instead: say where in the store's files a key from the passphrase
        /// still opens something holding the text read from standard input
        /// (its first line; not an argument, which shell history and the
        /// process list would keep); exits 1 if anywhere. After a delete and
        /// `compact`, nowhere.
        #[arg(long)]
        find: bool,
    },
    /// Rebuild the sled database from the feed log (an open does this on its
    /// own when sled is missing or damaged), then verify; prints what was done.
    Repair,
    /// Drop the bytes of deleted texts from every file of the store (a new
    /// feed log and a fresh sled, the journal's old records zeroed), with
    /// progress on a terminal, then verify. A store in use compacts itself
    /// (a delete schedules it); this one must not be open elsewhere.
    Compact,
    /// Write a backup of the store to FILE: one sealed file holding a
    /// consistent copy, taken while the store runs (reads and writes wait
    /// for a pause of milliseconds), with progress on a terminal. The
    /// passphrase of this moment opens it. A store a node is serving is
    /// backed up by that node: type `backup FILE` on its standard input.
    /// With --check, read FILE whole and say what it holds instead.
    Backup {
        /// The backup file (written as FILE.tmp, then renamed once durable).
        file: PathBuf,
        /// Check FILE (every chunk opens, in order, to its end) instead of
        /// writing one; exits 1 if it does not read whole.
        #[arg(long)]
        check: bool,
    },
    /// Restore a backup into the store directory (--store), which must not
    /// hold a store, under the passphrase of the moment of the backup. The
    /// store continues as a new device of the same user (its own device id
    /// and peer id): what the device backed up wrote since arrives by sync.
    Restore {
        /// The backup file.
        file: PathBuf,
    },
    /// Bring a store written by an older Hearth to this build's format (an
    /// open does it too); with --check, only say what that would do.
    Migrate {
        /// Say what a migration would do, and write nothing.
        #[arg(long)]
        check: bool,
    },
    /// Change the passphrase (new one from HEARTH_NEW_PASSPHRASE or a prompt).
    Passwd {
        /// Also replace the master key and re-seal the store under it, so that
        /// nothing stays readable with the old key or an old copy of the
        /// header. This device's peer id changes with it.
        #[arg(long)]
        rotate_key: bool,
    },
    /// Print an invite ticket for a channel (admins and owners): an invite's
    /// id and secret and this node's addresses, no channel key. Any member's
    /// node lets its holder in while the invite is open. `invite list CH`
    /// shows a channel's invites, `invite revoke CH ID` ends one.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Invite {
        /// list or revoke.
        #[command(subcommand)]
        cmd: Option<InviteCmd>,
        /// Channel id or name.
        #[arg(required = true)]
        channel: Option<String>,
        /// Addresses to put in the ticket (default: where the last `hearth node` listened).
        #[arg(long)]
        addr: Vec<Multiaddr>,
        /// How long the invite lets people in: 90s, 30m, 24h, 7d (default: until revoked).
        #[arg(long, value_parser = parse_span)]
        expires: Option<std::time::Duration>,
        /// How many users it lets in (default: any number).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        uses: Option<u32>,
    },
    /// Join a channel from an invite ticket, then try to sync with the inviter.
    Join {
        /// The ticket (`hearth1...`).
        ticket: String,
        /// How long to try to sync right away, in seconds.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// Run a sync node: JSON events on stdout, JSON-line commands on stdin.
    Node {
        /// Address to listen on, e.g. /ip4/0.0.0.0/tcp/4001 or /ip4/0.0.0.0/udp/4001/quic-v1
        /// (default: the last run's addresses and ports; the first time, a free loopback TCP port).
        #[arg(long)]
        listen: Vec<Multiaddr>,
        /// A peer to dial and keep dialing (ending in /p2p/<peer id>).
        #[arg(long)]
        peer: Vec<Multiaddr>,
        /// A relay to dial and keep dialing (ending in /p2p/<peer id>). It is
        /// trusted to carry every channel of this store: it gets their access
        /// keys, never their content keys.
        #[arg(long)]
        relay: Vec<Multiaddr>,
        /// A circuit relay to listen through (ending in /p2p/<relay id>): peers
        /// behind other NATs reach this node by its /p2p-circuit address, and
        /// a hole punch then makes the connection direct when the NATs allow it.
        /// The relay learns nothing of the channels. (A --relay that serves
        /// circuits is listened through too.)
        #[arg(long)]
        via: Vec<Multiaddr>,
        /// Serve circuits and AutoNAT checks to others (a node with a public
        /// address; its listen addresses are announced as its own), and the DHT.
        #[arg(long)]
        relay_server: bool,
        /// A node of Hearth's DHT to start from (ending in /p2p/<peer id>; a
        /// relay serves it): this node announces its channels there under
        /// rotating keys only members can compute, and finds their peers
        /// again when their addresses change. Peers found are kept.
        #[arg(long)]
        bootstrap: Vec<Multiaddr>,
        /// Neither announce nor look up channels in the DHT.
        #[arg(long)]
        no_discovery: bool,
        /// Send this device's new entries only once they are durable. By
        /// default they leave as soon as they are written, a disk sync
        /// sooner; after a power cut that may have lost some of them, the
        /// store then continues as a new device of the same user.
        #[arg(long)]
        no_send_early: bool,
        /// Find peers on the local network by mDNS (multicasts on your network interfaces).
        #[arg(long)]
        mdns: bool,
        /// Stop when standard input closes (for scripts).
        #[arg(long)]
        exit_on_eof: bool,
        /// Seconds between full reconciliations with each peer.
        #[arg(long, default_value_t = 30)]
        anti_entropy: u64,
    },
    /// Chat in the terminal: channels with unread counts, a channel's
    /// messages, a thread pane, reactions, edits and deletes as they come,
    /// and an input line with /reply, /react, /edit, /delete, /invite
    /// (/help lists them). It runs a sync node as `hearth node` does, so
    /// that two terminals (two devices, or two users) chat live.
    Chat {
        /// The channel to open first (id or name; default: the first).
        channel: Option<String>,
        /// Address to listen on (default: the last node's addresses and ports;
        /// the first time, a free loopback TCP port).
        #[arg(long)]
        listen: Vec<Multiaddr>,
        /// A peer to dial and keep dialing (ending in /p2p/<peer id>).
        #[arg(long)]
        peer: Vec<Multiaddr>,
        /// Run no node: this store only, nothing sent or received.
        #[arg(long, conflicts_with_all = ["listen", "peer"])]
        offline: bool,
        /// Write tracing to this file (RUST_LOG's filter, else info): the
        /// screen has no room for it.
        #[arg(long)]
        log: Option<PathBuf>,
    },
    /// Reconcile every shared channel with one peer; exit 0 once both hold the same entries.
    Sync {
        /// The peer's address (ending in /p2p/<peer id>): it is given only
        /// the channels it proves it holds.
        #[arg(long, required_unless_present = "relay", conflicts_with = "relay")]
        peer: Option<Multiaddr>,
        /// A relay to trust with every channel of this store (it gets their
        /// access keys, never their content keys), ending in /p2p/<peer id>.
        #[arg(long)]
        relay: Option<Multiaddr>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Run a relay in --store DIR: it keeps sealed entries for peers that are offline, without any key.
    Relay {
        /// Address to listen on.
        #[arg(long, required = true)]
        listen: Vec<Multiaddr>,
        /// Other relays or nodes to dial.
        #[arg(long)]
        peer: Vec<Multiaddr>,
        /// How long it keeps the texts of what it takes (30s, 10m, 12h,
        /// 30d) or `off`; the entries stay, their texts go.
        #[arg(long, default_value = "30d")]
        retention: String,
    },
    /// Run the demo in a temporary directory: no set-up needed.
    Demo,
    /// Print a completion script for SHELL (bash, zsh, fish, elvish,
    /// powershell): for example `hearth completions bash > /etc/bash_completion.d/hearth`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `hearth man | man -l -`.
    Man,
    /// Benchmark against the SQLite baseline.
    Bench(bench::BenchArgs),
    /// Run N nodes in network namespaces behind one router with an RTT and a
    /// loss, have them talk in one channel, and report convergence and bytes
    /// (root; tools/netlab/netlab.sh).
    Lab(lab::LabArgs),
    /// The network lab's delay: forward what a TUN device gives, later
    /// (run by tools/netlab/netlab.sh inside a lab's router; root).
    #[command(hide = true)]
    LabForward {
        /// The TUN device (made with `ip tuntap add mode tun`).
        #[arg(long)]
        tun: String,
        /// How long each packet waits, in milliseconds.
        #[arg(long)]
        delay_ms: u64,
    },
}

/// What `hearth export` writes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    /// JSON (docs/export.md).
    Json,
    /// A plain automerge document (docs/export.md).
    Automerge,
}

/// Channel commands.
#[derive(Subcommand, Debug)]
pub enum ChannelCmd {
    /// Create a channel.
    Create {
        /// Its name.
        name: String,
    },
    /// List channels with unread counts.
    List,
    /// Rename a channel.
    Rename {
        /// Channel id or name.
        channel: String,
        /// The new name.
        name: String,
    },
    /// How long the channel keeps messages on every member's device (admins
    /// and owners): older ones expire (hidden, their texts dropped, then
    /// compacted away).
    Retention {
        /// Channel id or name.
        channel: String,
        /// A span (30s, 10m, 12h, 30d), or `off`.
        keep: String,
    },
}

/// Device commands.
#[derive(Subcommand, Debug)]
pub enum DeviceCmd {
    /// List this user's devices known here (this one, and every one that
    /// wrote in a channel held here), with the channels that revoke each.
    List,
    /// Revoke another device of this user, in every channel: its later
    /// messages are not shown, each channel gets a new key it does not get,
    /// and it cannot write once it learns of it.
    Revoke {
        /// The device id, or a unique prefix of it (4 hex digits or more).
        device: String,
    },
}

/// `hearth invite` subcommands.
#[derive(Subcommand, Debug)]
pub enum InviteCmd {
    /// List a channel's invites: open ones, and ended ones with why.
    List {
        /// Channel id or name.
        channel: String,
    },
    /// End an invite: nobody joins through it any more (whoever it let in
    /// stays until removed: `hearth member remove`).
    Revoke {
        /// Channel id or name.
        channel: String,
        /// The invite's id, or a unique prefix of it (see `invite list`).
        invite: String,
    },
}

/// A span of time: a number and a unit (s, m, h or d).
pub(crate) fn parse_span(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (n, unit) = text.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and a unit, e.g. 24h"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    match n.checked_mul(secs) {
        Some(0) => Err("a span must last longer than nothing".into()),
        Some(s) => Ok(std::time::Duration::from_secs(s)),
        None => Err(format!("{text:?} is too long")),
    }
}

/// Roster commands. USER is a user id, a unique prefix of one (4 hex digits
/// or more), or a member's display name. A channel made before rosters has
/// none: the first of these that changes it makes you its owner.
#[derive(Subcommand, Debug)]
pub enum MemberCmd {
    /// List owners, admins, members (every writer not removed) and removed users.
    List {
        /// Channel id or name.
        channel: String,
    },
    /// Remove a user (admins remove members and admins, owners anyone but
    /// the last owner): their devices' later entries are refused.
    Remove {
        /// Channel id or name.
        channel: String,
        /// The user.
        user: String,
    },
    /// Give a user a role: owner, admin or member.
    Role {
        /// Channel id or name.
        channel: String,
        /// The user.
        user: String,
        /// owner, admin or member.
        role: hearth::Role,
    },
    /// Add a user (back) with a role (default member): undoes a removal.
    Add {
        /// Channel id or name.
        channel: String,
        /// The user.
        user: String,
        /// owner, admin or member.
        #[arg(long, default_value = "member")]
        role: hearth::Role,
    },
    /// Leave a channel (the last owner cannot): nothing more is written there.
    Leave {
        /// Channel id or name.
        channel: String,
    },
}

/// Tracing to stderr (or to `file`) when `RUST_LOG` asks for it (for
/// example `RUST_LOG=hearth_sync=info,hearth_store=debug`); off otherwise.
/// Colours only on a terminal, and never with `NO_COLOR` set. `hearth chat`
/// owns the terminal: its tracing goes to `--log FILE`, or nowhere.
fn install_tracing(command: &Command) {
    use std::io::IsTerminal;
    // `hearth chat --log FILE` asks for tracing: info unless RUST_LOG says.
    let default = match command {
        Command::Chat { log: Some(_), .. } => Some("info".to_string()),
        _ => None,
    };
    let spec = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .or(default);
    let filter = match spec {
        Some(spec) => match tracing_subscriber::EnvFilter::try_new(&spec) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("hearth: warning: RUST_LOG is not a filter ({e}); no tracing");
                return;
            }
        },
        None => return,
    };
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let fmt = tracing_subscriber::fmt().with_env_filter(filter);
    match command {
        Command::Chat { log: None, .. } => {}
        Command::Chat { log: Some(path), .. } => {
            let file = std::fs::OpenOptions::new().create(true).append(true).open(path);
            match file {
                Ok(file) => drop(fmt.with_writer(std::sync::Mutex::new(file)).with_ansi(false).try_init()),
                Err(e) => eprintln!("hearth: warning: {}: {e}; no tracing", path.display()),
            }
        }
        _ => drop(fmt.with_writer(std::io::stderr).with_ansi(colour).try_init()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    install_tracing(&cli.command);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let res = rt.block_on(commands::run(cli));
    // Everything that matters is done (the store is closed); a read of stdin
    // still blocked in the runtime's thread pool must not hold the exit.
    rt.shutdown_background();
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", output::one_line(&e));
            ExitCode::from(1)
        }
    }
}
