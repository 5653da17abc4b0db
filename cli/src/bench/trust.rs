//! `hearth bench trust`: what removing a member costs the admin's device in a
//! channel of `--devices` member devices (issue 8: under 50 ms for 100).
//!
//! A removal writes the roster op and starts a key generation: a fresh key
//! sealed to the X25519 key of every device of the members left, written as
//! key packages, all durable before the call returns. Side by side in the
//! same run: the sealing alone (`KeyPackage::seal` for as many devices, the
//! floor any design pays), and a durable post in the same channel (what any
//! write costs here). Each removal takes one member away, so the devices left
//! shrink by one per round; the median round is reported. Then, as many
//! times, a member's node letting a new device in through an invite
//! (`Store::admit`: the checks, the durable join op, every key generation
//! sealed to the device).

use std::time::{Duration, Instant};

use anyhow::Result;
use hearth::core::{DeviceId, EntryBody, Envelope, EpochDoc, Identity, KeyPackage, Op};
use hearth::{Config, Hearth, KdfParams, Passphrase};
use serde_json::json;

/// Options of `hearth bench trust`.
#[derive(clap::Args, Debug, Clone)]
pub struct TrustArgs {
    /// Member devices in the channel (each of its own user).
    #[arg(long, default_value_t = 100)]
    pub devices: usize,
    /// Removals measured.
    #[arg(long, default_value_t = 15)]
    pub rounds: usize,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub async fn run(args: &TrustArgs, json_out: bool) -> Result<std::process::ExitCode> {
    let tmp = tempfile::tempdir()?;
    let pass = Passphrase::new("bench passphrase");
    let config = Config::default().with_kdf(KdfParams::INSECURE_FAST);
    let h = Hearth::create(tmp.path().join("admin"), &pass, "admin", config).await?;
    let ch = h.create_channel("big").await?;
    let keys = h.plumbing().store().channel_keys(ch).await?;
    let wire = keys.wire();
    // Member devices: each writes its display name (a signed entry with its
    // certificate chain), which the admin takes as sync would.
    let mut members = Vec::new();
    let mut entries = Vec::new();
    for i in 0..args.devices {
        let id = Identity::generate(&format!("member {i}"))?;
        let mut doc = EpochDoc::new(0, &id.device());
        let op = Op::SetName {
            name: format!("member {i}"),
        };
        let change = doc
            .apply_local(&id.user(), &id.device(), &[op], 0)?
            .expect("a name changes the document");
        let cert = id.device_cert().expect("a new identity has a certificate").clone();
        let (bytes, _) = Envelope::seal_v2(&keys, &id, 1, [0; 32], &EntryBody { epoch: 0, change }, 0, vec![cert])?;
        entries.push(bytes);
        members.push(id);
    }
    let report = h.plumbing().store().ingest(wire, entries).await?;
    anyhow::ensure!(
        report.accepted == args.devices,
        "members refused: {:?}",
        report.rejected
    );
    let rounds = args.rounds.min(args.devices.saturating_sub(1)).max(1);
    let (mut removal, mut seal_only, mut post) = (Vec::new(), Vec::new(), Vec::new());
    let mut left = args.devices;
    for round in 0..rounds {
        // The floor: sealing one key to as many devices as the rotation will.
        let recipients: Vec<(DeviceId, [u8; 32])> = members[round + 1..]
            .iter()
            .map(|m| (m.device(), m.device_keys().expect("keys").public().kx))
            .collect();
        let key = hearth::core::SecretKey::generate()?;
        let t = Instant::now();
        let p = KeyPackage::seal(&wire, &[(1, &key)], &recipients)?;
        seal_only.push(ms(t.elapsed()));
        drop(p);
        // A removal (with its rotation), durable.
        let t = Instant::now();
        h.remove_member(ch, members[round].user()).await?;
        removal.push(ms(t.elapsed()));
        left -= 1;
        // A post, durable, for scale.
        let t = Instant::now();
        h.post(ch, "a message").await?;
        post.push(ms(t.elapsed()));
    }
    // Letting a device in through an invite (what a member's node does for a
    // ticket holder): the checks, the durable join op, every key generation
    // sealed to the device.
    let invite = h.plumbing().store().create_invite(ch, None, 0).await?;
    let mut admit = Vec::new();
    for _ in 0..rounds {
        let id = Identity::generate("joiner")?;
        let req = hearth::store::JoinRequest {
            invite: invite.id,
            user: id.user(),
            chain: vec![id.device_cert().expect("a new identity has a certificate").clone()],
            sig: hearth::core::member::sign_join(&invite.secret, &invite.id, &id.user(), &id.device()),
        };
        let t = Instant::now();
        h.plumbing().store().admit(req).await?;
        admit.push(ms(t.elapsed()));
    }
    let generation = h.plumbing().store().channel_keys(ch).await?.current_generation();
    h.close().await?;
    let (r, s, p, a) = (median(removal), median(seal_only), median(post), median(admit));
    let out = json!({
        "devices": args.devices,
        "rounds": rounds,
        "devices_left_at_the_end": left,
        "generation_at_the_end": generation,
        "removal_with_rotation_ms_p50": r,
        "seal_only_ms_p50": s,
        "post_ms_p50": p,
        "removal_over_seal": r / s,
        "removal_over_post": r / p,
        "invite_admit_ms_p50": a,
        "admit_over_post": a / p,
        "target_ms": 50,
    });
    if json_out {
        println!("{out}");
    } else {
        println!(
            "removal with rotation, {} member devices: p50 {r:.2} ms (target < 50 ms)\n\
             sealing the key alone: p50 {s:.2} ms; removal / sealing = {:.2}\n\
             a durable post: p50 {p:.2} ms; removal / post = {:.2}\n\
             letting a device in through an invite (generation {generation}): p50 {a:.2} ms; / post = {:.2}",
            args.devices,
            r / s,
            r / p,
            a / p
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}
