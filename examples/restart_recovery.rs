//! A restart-recovery harness to copy into your own tests: a writer process
//! is killed in the middle of its writes, the store is reopened, and
//! everything the writer had been told was stored must be there.
//!
//! ```sh
//! cargo run --example restart_recovery                 # kill -9 at random moments
//! cargo run --example restart_recovery -- group.applied  # crash at a named point
//! ```
//!
//! The writer is this program run again as a child. It prints the id of
//! each post once `post` has returned (durable: acknowledged); the parent
//! kills it (SIGKILL) after a random number of acknowledgements, or arms a
//! named crash point in it (`hearth::store::CRASH_POINTS`, cargo feature
//! `failpoints` of hearth-store, which the examples build with) so that it
//! aborts exactly there. Then the parent reopens the store and compares.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use hearth::{Config, Hearth, KdfParams, MessageId, Passphrase};

const ROUNDS: u32 = 5;

fn config() -> Config {
    // Fast to unlock, for a test; real stores keep the default cost.
    Config::default().with_kdf(KdfParams::INSECURE_FAST)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--writer") {
        return writer(&args[2], args.get(3)).await;
    }
    let point = args.get(1).cloned();
    if let Some(p) = &point
        && !hearth::store::CRASH_POINTS.contains(&p.as_str())
    {
        return Err(format!(
            "no crash point {p}; they are: {}",
            hearth::store::CRASH_POINTS.join(", ")
        )
        .into());
    }
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store");
    let pass = Passphrase::new("restart recovery");
    let h = Hearth::create(&store, &pass, "writer", config()).await?;
    h.create_channel("log").await?;
    h.close().await?;

    let mut acknowledged: Vec<MessageId> = Vec::new();
    for round in 1..=ROUNDS {
        // The writer, killed after a random number of acknowledgements (or
        // crashing at the point).
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--writer")
            .arg(&store)
            .args(point.as_deref().map(|p| format!("{p}:{}", round - 1)))
            .stdout(Stdio::piped())
            .spawn()?;
        let kill_after = 20 + (std::process::id() as usize * 7 + round as usize * 13) % 80;
        let out = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut this_round = 0;
        for line in out.lines() {
            let Some(id) = line?.strip_prefix("ack ").map(str::parse::<MessageId>) else {
                continue;
            };
            acknowledged.push(id?);
            this_round += 1;
            if point.is_none() && this_round == kill_after {
                child.kill()?; // SIGKILL: no destructor, no flush, no close
                break;
            }
        }
        let status = child.wait()?;
        println!("round {round}: {this_round} writes acknowledged, then the writer stopped ({status})");

        // Reopen and compare: every acknowledged write is there.
        let h = Hearth::open(&store, &pass, config()).await?;
        let log = h.resolve_channel("log").await?;
        let held: std::collections::BTreeSet<MessageId> =
            h.all_messages(log).await?.into_iter().map(|m| m.id).collect();
        let lost: Vec<&MessageId> = acknowledged.iter().filter(|id| !held.contains(id)).collect();
        if !lost.is_empty() {
            return Err(format!("round {round}: {} acknowledged writes lost: {lost:?}", lost.len()).into());
        }
        let report = h.verify().await?;
        if !report.is_clean() {
            return Err(format!("round {round}: verify found {:?}", report.problems).into());
        }
        println!(
            "round {round}: reopened; all {} acknowledged writes held ({} in all, {} replayed from the journal)",
            acknowledged.len(),
            held.len(),
            h.open_report().replayed_ops
        );
        h.close().await?;
    }
    Ok(())
}

/// The child: write until killed, printing each acknowledged id. With a
/// crash point (`NAME:SKIP`), abort at its `SKIP + 1`-th pass.
async fn writer(store: &str, point: Option<&String>) -> Result<(), Box<dyn std::error::Error>> {
    if let Some((name, skip)) = point.and_then(|p| p.rsplit_once(':')) {
        hearth::store::crash_at(name, skip.parse()?)?;
    }
    let h = Hearth::open(store, &Passphrase::new("restart recovery"), config()).await?;
    let log = h.resolve_channel("log").await?;
    let mut out = std::io::stdout().lock();
    for i in 0u64.. {
        let id = h.post(log, &format!("entry {i}")).await?;
        writeln!(out, "ack {id}")?;
        out.flush()?;
        // Now and then the other durable steps: a checkpoint, a compaction.
        if i % 25 == 24 {
            h.plumbing().checkpoint().await?;
        }
        if i % 60 == 59 {
            h.delete(id).await?;
            h.compact().await?;
        }
    }
    Ok(())
}
