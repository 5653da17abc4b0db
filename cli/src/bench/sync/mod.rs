//! `hearth bench sync`: Hearth's sync over libp2p side by side with the naive
//! baseline (one automerge document per channel, automerge's own sync protocol
//! over a plain TCP stream with length-prefixed frames), in one run, over
//! loopback only (mDNS stays off).
//!
//! Measured: catch-up of a fresh member that missed N messages (time and rate
//! from dial to every message present); bytes on the wire per message against
//! the sealed envelopes; remote apply (ingest) rate; live apply of one remote
//! message into a replica holding the whole history; reconnect of two replicas
//! already in sync over many channels (round trips and bytes, the libp2p
//! handshake apart); live delivery latency between two connected replicas.
//!
//! Bytes are counted by a TCP proxy on 127.0.0.1 that both sides, Hearth and
//! the baseline, go through: the dialer connects to the proxy, the proxy to
//! the listener, and every byte copied is counted per direction.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use automerge::sync::{self as am, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{AutoCommit, ChangeHash, ObjType, ROOT, ReadDoc, ScalarValue};
use hearth::core::{Vector, WireId};
use hearth::store::StoreEvent;
use hearth::sync::proto::{BATCH_BYTES, BATCH_ENTRIES};
use hearth::sync::{Multiaddr, NodeConfig, NodeEvent, PeerId};
use hearth::{ChannelId, Config, Hearth, KdfParams, MessageId, Passphrase, SyncHandle};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::sqlite::bench_text;
use super::{hearth_stream, percentile_us};
mod baseline;
mod hearth_side;
mod transport;

use baseline::*;
use hearth_side::*;
use transport::*;

/// Options of `hearth bench sync`.
#[derive(clap::Args, Debug, Clone)]
pub struct SyncArgs {
    /// Messages a fresh member has missed (catch-up test).
    #[arg(long, default_value_t = 10_000)]
    pub messages: usize,
    /// Also run the catch-up with 100,000 messages.
    #[arg(long)]
    pub full: bool,
    /// Channels both replicas share in the reconnect test.
    #[arg(long, default_value_t = 100)]
    pub channels: usize,
    /// Messages per channel in the reconnect test.
    #[arg(long, default_value_t = 20)]
    pub per_channel: usize,
    /// Live delivery samples.
    #[arg(long, default_value_t = 300)]
    pub samples: usize,
    /// Bytes of text per message.
    #[arg(long, default_value_t = 100)]
    pub text_len: usize,
    /// Working directory (default: a temporary one, removed afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Messages per epoch document in Hearth's stores (default: the store's).
    #[arg(long)]
    pub epoch_messages: Option<usize>,
    /// Apply every received entry on arrival (`Config::lazy_epochs` off), to
    /// compare with deferred epochs.
    #[arg(long)]
    pub eager: bool,
}

const PASS: &str = "bench passphrase";

/// The slowest live deliveries as JSON: `[{"sample": i, "us": t}, ...]`,
/// slowest first (the sample index says whether a slow one was the first
/// after a pause, or where in the run it fell).
fn slowest_json(slowest: &[(usize, f64)]) -> serde_json::Value {
    slowest.iter().map(|(i, us)| json!({"sample": i, "us": us})).collect()
}

/// Pause between live samples, so each one is a lone message.
const LIVE_GAP: Duration = Duration::from_millis(5);
/// How long any one wait may take before the bench gives up.
const PATIENCE: Duration = Duration::from_secs(600);

/// Where the bench's stores go, and how they are configured.
struct Root {
    dir: PathBuf,
    config: Config,
}

async fn create(root: &Root, name: &str) -> Result<Hearth> {
    let config = root.config.clone();
    Ok(Hearth::create(root.dir.join(name), &Passphrase::new(PASS), name, config).await?)
}

// ---------------------------------------------------------------- report

/// Run `hearth bench sync`: print one JSON object per metric with `--json`,
/// a table otherwise.
pub async fn run(args: &SyncArgs, json_out: bool) -> Result<std::process::ExitCode> {
    let tmp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    // Benches may lower the Argon2id cost: unlocking is not what is measured here.
    let mut config = Config::default().with_kdf(KdfParams::INSECURE_FAST);
    config = config.with_lazy_epochs(!args.eager);
    if let Some(n) = args.epoch_messages {
        config = config.with_epoch_messages(n);
    }
    let root = Root { dir, config };
    let say = |s: String| {
        if !json_out {
            eprintln!("{s}");
        }
    };
    let mut metrics = vec![json!({
        "metric": "setup",
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "text_len": args.text_len,
        "kdf": "KdfParams::INSECURE_FAST (bench only: unlock is not measured here)",
        "epoch_messages": root.config.epoch_messages,
        "lazy_epochs": root.config.lazy_epochs,
        "transport": "loopback; Hearth: libp2p TCP+noise+yamux; baseline: TCP, u32-length frames; both through a counting TCP proxy",
        "mdns": false,
    })];
    let mut sizes = vec![args.messages.max(1)];
    if args.full && !sizes.contains(&100_000) {
        sizes.push(100_000);
    }
    for (k, &n) in sizes.iter().enumerate() {
        // Live delivery runs once, on the first (smaller) history.
        let samples = if k == 0 { args.samples } else { 0 };
        say(format!("catch-up of {n} messages: Hearth"));
        let (h, h_live) = hearth_catchup(&root, n, args.text_len, samples, args.samples).await?;
        say(format!("catch-up of {n} messages: automerge baseline"));
        let (b, b_live) = am_catchup(n, args.text_len, samples, args.samples).await?;
        let nf = n as f64;
        metrics.push(json!({
            "metric": "catch_up", "messages": n,
            "hearth": {
                "secs": h.secs, "msgs_per_sec": nf / h.secs,
                "round_trips": h.round_trips, "entries_received": h.received,
                "writer_build_secs": h.build_secs, "first_page_secs": h.first_page_secs,
            },
            "automerge": {
                "secs": b.secs, "msgs_per_sec": nf / b.secs,
                "frames": b.frames, "sync_messages": b.messages,
                "writer_build_secs": b.build_secs,
            },
            "speedup": b.secs / h.secs,
            "target_secs_10k": 1.0,
        }));
        metrics.push(json!({
            "metric": "wire_bytes", "messages": n,
            "hearth": {
                "bytes": h.bytes.json(), "per_message": h.bytes.total() as f64 / nf,
                "entries": h.entries, "envelope_bytes": h.envelope_bytes,
                "envelope_per_message": h.envelope_bytes as f64 / nf,
                "wire_per_envelope_byte": h.bytes.total() as f64 / h.envelope_bytes as f64,
            },
            "automerge": {"bytes": b.bytes.json(), "per_message": b.bytes.total() as f64 / nf},
            "hearth_over_automerge": h.bytes.total() as f64 / b.bytes.total() as f64,
        }));
        metrics.push(json!({
            "metric": "remote_apply", "messages": n,
            "hearth": {
                "ingest_msgs_per_sec": nf / h.apply_secs,
                "ingest_entries": h.entries,
                "ingest_secs": h.apply_secs,
                "catch_up_msgs_per_sec": nf / h.secs,
            },
            "target_msgs_per_sec": 20_000,
        }));
        if args.samples > 0 {
            metrics.push(json!({
                "metric": "live_apply", "history": n, "samples": args.samples,
                "hearth": {
                    "p50_us": percentile_us(&h.live_apply, 0.5),
                    "p99_us": percentile_us(&h.live_apply, 0.99),
                    "what": "Store::ingest of one remote entry: verify, decrypt, apply, view, sled batch",
                },
                "automerge": {
                    "p50_us": percentile_us(&b.live_apply, 0.5),
                    "p99_us": percentile_us(&b.live_apply, 0.99),
                    "what": "apply_changes of one change, in memory",
                },
                "target_p99_us": 1000,
            }));
        }
        if let (Some(h), Some(b)) = (h_live, b_live) {
            metrics.push(json!({
                "metric": "live_delivery", "history": n, "samples": samples,
                "hearth": {
                    "p50_us": h.p50_us, "p99_us": h.p99_us,
                    "writer_durable_post_p50_us": h.other_p50_us,
                    "writer_durable_post_p99_us": h.other_p99_us,
                    "bytes_per_message": h.bytes_per_message,
                    "bytes": h.bytes.json(),
                    "slowest": slowest_json(&h.slowest),
                },
                "automerge": {
                    "p50_us": b.p50_us, "p99_us": b.p99_us,
                    "quiescent_p50_us": b.other_p50_us, "quiescent_p99_us": b.other_p99_us,
                    "bytes_per_message": b.bytes_per_message,
                    "bytes": b.bytes.json(),
                    "slowest": slowest_json(&b.slowest),
                },
            }));
        }
    }

    say(format!(
        "reconnect in sync: {} channels x {} messages",
        args.channels, args.per_channel
    ));
    let h = hearth_reconnect(&root, args.channels, args.per_channel, args.text_len).await?;
    let b = am_reconnect(args.channels, args.per_channel, args.text_len).await?;
    metrics.push(json!({
        "metric": "reconnect_in_sync", "channels": args.channels, "per_channel": args.per_channel,
        "hearth": {
            "round_trips": h.round_trips, "in_sync_at_hello": h.in_sync_at_hello,
            "session_bytes": h.session.json(),
            "on_connect_session_round_trips": h.first_session_round_trips,
            "connection_bytes_incl_handshake_and_on_connect_session": h.connection.json(),
            "idle_connect_bytes_libp2p_handshake_identify_empty_hello": h.idle_connect.json(),
        },
        "automerge": {
            "frames": b.frames, "sync_messages": b.messages, "bytes": b.bytes.json(),
            "first_sync_bytes": b.fresh_bytes.json(),
        },
        "target": "1 round trip, < 2 KB for 100 channels",
    }));

    if json_out {
        for m in &metrics {
            println!("{m}");
        }
    } else {
        print_table(&metrics);
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn print_table(metrics: &[Value]) {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let row = |name: &str, h: String, b: String, g: String| println!("{name:<46} {h:>14} {b:>14} {g:>8}");
    let setup = &metrics[0];
    println!(
        "hearth bench sync ({} cores, {}-byte messages, {}-message epochs, KDF INSECURE_FAST; loopback through a counting proxy, mDNS off)",
        setup["cores"], setup["text_len"], setup["epoch_messages"]
    );
    row("metric", "hearth".into(), "automerge".into(), "gain".into());
    for m in &metrics[1..] {
        let (h, b) = (&m["hearth"], &m["automerge"]);
        match m["metric"].as_str().unwrap_or("") {
            "catch_up" => {
                println!("catch-up of {} missed messages", m["messages"]);
                row(
                    "  dial to all present (ms)",
                    format!("{:.0}", f(&h["secs"]) * 1e3),
                    format!("{:.0}", f(&b["secs"]) * 1e3),
                    format!("{:.2}", f(&m["speedup"])),
                );
                row(
                    "  throughput (msg/s)",
                    format!("{:.0}", f(&h["msgs_per_sec"])),
                    format!("{:.0}", f(&b["msgs_per_sec"])),
                    String::new(),
                );
                row(
                    "  requests / non-empty frames",
                    h["round_trips"].to_string(),
                    b["frames"].to_string(),
                    String::new(),
                );
                row(
                    "  writer build (s)",
                    format!("{:.1}", f(&h["writer_build_secs"])),
                    format!("{:.1}", f(&b["writer_build_secs"])),
                    String::new(),
                );
            }
            "wire_bytes" => {
                row(
                    "  wire bytes, both ways (per message)",
                    format!("{:.0}", f(&h["per_message"])),
                    format!("{:.0}", f(&b["per_message"])),
                    format!("{:.2}", 1.0 / f(&m["hearth_over_automerge"])),
                );
                row(
                    "  wire bytes total",
                    h["bytes"]["total"].to_string(),
                    b["bytes"]["total"].to_string(),
                    String::new(),
                );
                row(
                    "  sealed envelope bytes (per message)",
                    format!("{:.0}", f(&h["envelope_per_message"])),
                    String::new(),
                    String::new(),
                );
                row(
                    "  wire / envelope bytes",
                    format!("{:.3}", f(&h["wire_per_envelope_byte"])),
                    String::new(),
                    String::new(),
                );
            }
            "remote_apply" => {
                row(
                    "  remote apply, ingest batches (msg/s)",
                    format!("{:.0}", f(&h["ingest_msgs_per_sec"])),
                    String::new(),
                    String::new(),
                );
            }
            "live_apply" => {
                println!(
                    "live apply of one remote message ({} samples, {} messages of history)",
                    m["samples"], m["history"]
                );
                for p in ["p50", "p99"] {
                    let k = format!("{p}_us");
                    row(
                        &format!("  ingest one entry, {p} (us)"),
                        format!("{:.0}", f(&h[&k])),
                        format!("{:.0}", f(&b[&k])),
                        format!("{:.2}", f(&b[&k]) / f(&h[&k])),
                    );
                }
            }
            "live_delivery" => {
                println!(
                    "live delivery ({} samples, {} messages of history)",
                    m["samples"], m["history"]
                );
                row(
                    "  post to received, p50 (us)",
                    format!("{:.0}", f(&h["p50_us"])),
                    format!("{:.0}", f(&b["p50_us"])),
                    format!("{:.2}", f(&b["p50_us"]) / f(&h["p50_us"])),
                );
                row(
                    "  post to received, p99 (us)",
                    format!("{:.0}", f(&h["p99_us"])),
                    format!("{:.0}", f(&b["p99_us"])),
                    format!("{:.2}", f(&b["p99_us"]) / f(&h["p99_us"])),
                );
                row(
                    "  of which durable post on writer, p50/p99",
                    format!(
                        "{:.0}/{:.0}",
                        f(&h["writer_durable_post_p50_us"]),
                        f(&h["writer_durable_post_p99_us"])
                    ),
                    String::new(),
                    String::new(),
                );
                row(
                    "  baseline to quiescence, p50/p99 (us)",
                    String::new(),
                    format!("{:.0}/{:.0}", f(&b["quiescent_p50_us"]), f(&b["quiescent_p99_us"])),
                    String::new(),
                );
                row(
                    "  wire bytes per live message",
                    format!("{:.0}", f(&h["bytes_per_message"])),
                    format!("{:.0}", f(&b["bytes_per_message"])),
                    String::new(),
                );
            }
            "reconnect_in_sync" => {
                println!(
                    "reconnect, already in sync ({} channels x {} messages)",
                    m["channels"], m["per_channel"]
                );
                row(
                    "  round trips / non-empty frames",
                    h["round_trips"].to_string(),
                    b["frames"].to_string(),
                    String::new(),
                );
                row(
                    "  bytes of the sync, both ways",
                    h["session_bytes"]["total"].to_string(),
                    b["bytes"]["total"].to_string(),
                    format!("{:.2}", f(&b["bytes"]["total"]) / f(&h["session_bytes"]["total"])),
                );
                row(
                    "  proxied connections (idle / reconnect)",
                    format!(
                        "{}/{}",
                        h["idle_connect_bytes_libp2p_handshake_identify_empty_hello"]["connections"],
                        h["connection_bytes_incl_handshake_and_on_connect_session"]["connections"]
                    ),
                    String::new(),
                    String::new(),
                );
                row(
                    "  libp2p handshake (idle connect), both ways",
                    h["idle_connect_bytes_libp2p_handshake_identify_empty_hello"]["total"].to_string(),
                    String::new(),
                    String::new(),
                );
                row(
                    "  connection so far (handshake + on-connect sync)",
                    h["connection_bytes_incl_handshake_and_on_connect_session"]["total"].to_string(),
                    String::new(),
                    String::new(),
                );
                row(
                    "  baseline first sync of all docs (bytes)",
                    String::new(),
                    b["first_sync_bytes"]["total"].to_string(),
                    String::new(),
                );
            }
            _ => {}
        }
    }
    println!("gain: > 1 means Hearth is faster or smaller than the baseline.");
}
