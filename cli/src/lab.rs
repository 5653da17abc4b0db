//! The network lab's delay (`hearth lab-forward`, run by
//! `tools/netlab/netlab.sh delay` inside the lab's router namespace).
//!
//! This kernel has no netem. The router instead routes what it forwards into
//! a TUN device (policy routing by input interface); this process reads each
//! packet, holds it for the delay and writes it back, and the kernel forwards
//! it on by its main table. One queue with one delay keeps packets in order.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// `TUNSETIFF`: `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// `struct ifreq` as `TUNSETIFF` reads it: a name and the flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _rest: [u8; 22],
}

/// Attach to the TUN device `name` (made by `ip tuntap add mode tun`).
fn open_tun(name: &str) -> Result<File> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        bail!("a device name is 1 to {} bytes", libc::IFNAMSIZ - 1);
    }
    let tun = File::options()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("opening /dev/net/tun")?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        _rest: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: `req` is a live, properly laid out `struct ifreq` for the
    // duration of the call, and `tun` an open descriptor of /dev/net/tun.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReq) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("attaching to {name}"));
    }
    Ok(tun)
}

/// Forward every packet `tun` gives back to it `delay` later, until the
/// device goes away (or the process is killed, as `netlab.sh` does).
pub fn forward(tun: &str, delay: Duration) -> Result<ExitCode> {
    let mut writer = open_tun(tun)?;
    let mut reader = writer.try_clone().context("a second handle on the device")?;
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while let Ok(n @ 1..) = reader.read(&mut buf) {
            if tx.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
                return;
            }
        }
    });
    for (due, packet) in rx {
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        // A packet the kernel refuses (no route any more) is lost, as on a wire.
        let _ = writer.write(&packet);
    }
    Ok(ExitCode::SUCCESS)
}

/// The lab's script, carried in the binary so that `hearth lab` runs from
/// anywhere.
const NETLAB: &str = include_str!("../../tools/netlab/netlab.sh");

/// The passphrase of the lab's throwaway stores.
const LAB_PASSPHRASE: &str = "hearth lab (throwaway stores)";

/// The TCP port every lab node listens on, at its own address.
const LAB_PORT: u16 = 4000;

/// Options of `hearth lab`.
#[derive(clap::Args, Debug)]
pub struct LabArgs {
    /// Nodes, each in a network namespace of its own, linked through one
    /// router (2 to 50).
    #[arg(long, default_value_t = 5)]
    pub nodes: usize,
    /// Round-trip time between two nodes: 100ms, 1s, or 0.
    #[arg(long, default_value = "0")]
    pub rtt: String,
    /// Share of the packets the router drops: 5% (or 5).
    #[arg(long, default_value = "0%")]
    pub loss: String,
    /// Messages each node posts.
    #[arg(long, default_value_t = 10)]
    pub messages: usize,
    /// The longest wait for every node to hold every message, in seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Each node behind a NAT router of its own (nothing reaches it unasked),
    /// and a public Hearth relay: the nodes listen through the relay, reach
    /// node 1 through it, and punch holes to direct connections (DCUtR).
    #[arg(long)]
    pub nat: bool,
}

/// `100ms`, `2s`, `0`: a duration of whole milliseconds or seconds.
fn parse_rtt(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (digits, scale) = if let Some(ms) = s.strip_suffix("ms") {
        (ms, 1)
    } else if let Some(secs) = s.strip_suffix('s') {
        (secs, 1000)
    } else if s == "0" {
        ("0", 1)
    } else {
        bail!("an RTT is 100ms, 1s or 0, not {s:?}");
    };
    let n: u64 = digits
        .trim()
        .parse()
        .with_context(|| format!("an RTT is 100ms, 1s or 0, not {s:?}"))?;
    let ms = n.checked_mul(scale).filter(|&ms| ms <= 20_000);
    ms.map(Duration::from_millis)
        .with_context(|| format!("an RTT of {s} is more than the lab's 20 s"))
}

/// `5%` or `5`: a whole percentage, 0 to 100.
fn parse_loss(s: &str) -> Result<u32> {
    let n: u32 = s
        .trim()
        .trim_end_matches('%')
        .parse()
        .with_context(|| format!("a loss is a whole percentage such as 5%, not {s:?}"))?;
    if n > 100 {
        bail!("a loss of {n}% is more than all");
    }
    Ok(n)
}

/// A lab made by the script; removed (with every process in it) on drop.
struct Lab {
    script: std::path::PathBuf,
    name: String,
}

impl Lab {
    fn run(&self, args: &[&str]) -> Result<String> {
        let out = std::process::Command::new("bash")
            .arg(&self.script)
            .args(args)
            .output()
            .context("running bash")?;
        if !out.status.success() {
            bail!(
                "netlab {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Bytes and packets the router forwarded so far (each hop counted once).
    fn forwarded(&self) -> Result<(u64, u64)> {
        let out = self.run(&["bytes", &self.name])?;
        let mut it = out.split_whitespace().map(str::parse::<u64>);
        match (it.next(), it.next()) {
            (Some(Ok(packets)), Some(Ok(bytes))) => Ok((packets, bytes)),
            _ => bail!("netlab bytes said {out:?}"),
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.run(&["down", &self.name]);
    }
}

/// A node running in the lab: its stdin, and its process.
struct LabNode {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
}

impl LabNode {
    fn send(&mut self, v: &serde_json::Value) -> Result<()> {
        let stdin = self.stdin.as_mut().context("the node's stdin is closed")?;
        writeln!(stdin, "{v}")
            .and_then(|()| stdin.flush())
            .context("writing to a node")
    }
}

impl Drop for LabNode {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a lab run measured.
#[derive(Debug, serde::Serialize)]
struct LabReport {
    nodes: usize,
    rtt_ms: u64,
    loss_pct: u32,
    messages: usize,
    converged: bool,
    /// From the first post to the last node holding the last message.
    convergence_ms: f64,
    /// From a post (durable on its author) to the event on another node.
    delivery_p50_ms: f64,
    delivery_p99_ms: f64,
    /// What the router forwarded while the nodes talked (every hop once:
    /// a message from node 2 to node 3 goes through node 1, the hub).
    bytes: u64,
    packets: u64,
    bytes_per_message: f64,
    /// Behind NATs (`--nat`).
    nat: bool,
    /// Nodes whose connection to node 1 a hole punch made direct (`--nat`;
    /// in a star every connection is direct).
    direct: usize,
    /// From every node connected to their first sessions settled (the
    /// posts start after it).
    settle_ms: f64,
}

/// `hearth lab`: N nodes in network namespaces behind one router with the
/// given RTT and loss, all members of one channel (node 1 its owner and the
/// How long the lab waits, once the nodes are in sync, for no session to end
/// before the posts start.
const SETTLE_QUIET: Duration = Duration::from_millis(1000);

/// hub every other node dials); each posts its messages, and the lab
/// reports when every node held every message and what crossed the router.
/// Root only (namespaces); everything stays inside the lab, which is removed
/// at the end.
pub async fn run(args: &LabArgs, json_out: bool) -> Result<ExitCode> {
    let rtt = parse_rtt(&args.rtt)?;
    let loss = parse_loss(&args.loss)?;
    if !(2..=50).contains(&args.nodes) {
        bail!("a lab has 2 to 50 nodes");
    }
    if args.messages == 0 || args.messages > 10_000 {
        bail!("each node posts 1 to 10,000 messages");
    }
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("netlab.sh");
    std::fs::write(&script, NETLAB)?;
    let probe = std::process::Command::new("bash").arg(&script).arg("check").output()?;
    if !probe.status.success() {
        bail!(
            "the lab cannot run here: {}",
            String::from_utf8_lossy(&probe.stdout).trim()
        );
    }
    let lab = Lab {
        script,
        name: format!("hl{:x}", std::process::id() & 0xff_ffff),
    };
    lab.run(&["install"])?;
    let _ = lab.run(&["down", &lab.name]);
    let topology = if args.nat { "nat" } else { "star" };
    lab.run(&["up", &lab.name, topology, &args.nodes.to_string()])?;

    // The stores, made here (a lab's shortcut: the members get the channel's
    // keys directly instead of through invites).
    let pass = hearth::Passphrase::new(LAB_PASSPHRASE);
    let config = hearth::Config::default().with_kdf(hearth::KdfParams::INSECURE_FAST);
    let stores: Vec<_> = (1..=args.nodes).map(|i| dir.path().join(format!("node{i}"))).collect();
    let owner = hearth::Hearth::create(&stores[0], &pass, "node1", config.clone()).await?;
    let channel = owner.create_channel("lab").await?;
    let keys = owner.plumbing().store().channel_keys(channel).await?;
    owner.close().await?;
    for (i, path) in stores.iter().enumerate().skip(1) {
        let h = hearth::Hearth::create(path, &pass, &format!("node{}", i + 1), config.clone()).await?;
        h.plumbing().store().join_channel_named(keys.clone(), "lab").await?;
        h.close().await?;
    }
    let exe = std::env::current_exe()?;
    lab.run(&[
        "delay",
        &lab.name,
        &(rtt.as_millis() / 2).to_string(),
        &exe.to_string_lossy(),
    ])?;
    lab.run(&["loss", &lab.name, &loss.to_string()])?;

    let (messages, timeout) = (args.messages, Duration::from_secs(args.timeout));
    let (nodes, rtt_ms, nat) = (args.nodes, rtt.as_millis() as u64, args.nat);
    // Interrupted (Ctrl-C), the lab still goes: its nodes with it.
    let (script, name) = (lab.script.clone(), lab.name.clone());
    let talk = tokio::task::spawn_blocking(move || {
        let r = converse(&lab, &exe, &stores, &channel.to_hex(), messages, timeout, nat);
        drop(lab);
        r
    });
    let report = tokio::select! {
        r = talk => r??,
        _ = tokio::signal::ctrl_c() => {
            drop(Lab { script, name });
            bail!("interrupted: the lab is removed");
        }
    };
    let report = LabReport {
        nodes,
        rtt_ms,
        loss_pct: loss,
        messages: nodes * messages,
        ..report
    };
    if json_out {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} nodes{}, RTT {} ms, loss {}%: {} messages {} in {:.0} ms",
            report.nodes,
            if report.nat {
                format!(
                    " behind NATs ({} of {} hole-punched to node 1)",
                    report.direct,
                    report.nodes - 1
                )
            } else {
                String::new()
            },
            report.rtt_ms,
            report.loss_pct,
            report.messages,
            if report.converged {
                "converged"
            } else {
                "did NOT converge"
            },
            report.convergence_ms
        );
        println!(
            "delivery p50 {:.1} ms, p99 {:.1} ms; the router forwarded {} bytes in {} packets ({:.0} bytes a message)",
            report.delivery_p50_ms, report.delivery_p99_ms, report.bytes, report.packets, report.bytes_per_message
        );
    }
    Ok(if report.converged {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Posted: message id to its author and when its post was done. Seen:
/// message id to when each node first held it.
type Posted = std::collections::HashMap<String, (usize, Instant)>;
type Seen = std::collections::HashMap<String, std::collections::HashMap<usize, Instant>>;

/// Record a session that left node `i` in sync with its peer.
fn note_in_sync(in_sync: &mut std::collections::HashSet<(usize, String)>, i: usize, v: &serde_json::Value) {
    if v["event"] == "synced"
        && v["in_sync"] == true
        && let Some(peer) = v["peer"].as_str()
    {
        in_sync.insert((i, peer.to_string()));
    }
}

/// Take one node event into what was posted and seen.
fn note(i: usize, at: Instant, v: &serde_json::Value, posted: &mut Posted, seen: &mut Seen) {
    if v["event"] == "done" && v["cmd"] == "post" {
        if let Some(id) = v["id"].as_str() {
            posted.insert(id.to_string(), (i, at));
            seen.entry(id.to_string()).or_default().insert(i, at);
        }
    } else if (v["event"] == "message" || v["event"] == "reply")
        && v["local"] == false
        && let Some(id) = v["id"].as_str()
    {
        seen.entry(id.to_string()).or_default().entry(i).or_insert(at);
    }
}

/// Start the nodes, wait until they are connected, have each post its
/// messages, and watch the events until every node holds every message.
fn converse(
    lab: &Lab,
    exe: &std::path::Path,
    stores: &[std::path::PathBuf],
    channel: &str,
    messages: usize,
    timeout: Duration,
    nat: bool,
) -> Result<LabReport> {
    use serde_json::{Value, json};
    use std::collections::HashSet;
    let (tx, events) = mpsc::channel::<(usize, Instant, Value)>();
    let mut nodes = Vec::new();
    let mut hub: Option<String> = None;
    // Behind NATs: the relay first, on the public side.
    let relay = if nat {
        let dir = stores[0].with_file_name("relay");
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", &format!("{}-relay", lab.name)])
            .arg(exe)
            .arg("--store")
            .arg(&dir)
            .args(["relay", "--listen", &format!("/ip4/100.64.1.2/tcp/{LAB_PORT}")])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting the lab's relay")?;
        let out = child.stdout.take().context("the relay's stdout")?;
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(out));
        let addr = loop {
            let line = lines.next().context("the relay never listened")??;
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && v["event"] == "listening"
                && let Some(a) = v["addr"].as_str()
            {
                break a.to_string();
            }
        };
        // Its later lines are not read: drained so that it never blocks.
        std::thread::spawn(move || lines.for_each(drop));
        Some((LabNode { child, stdin: None }, addr))
    } else {
        None
    };
    for (i, store) in stores.iter().enumerate() {
        let (host, listen) = if nat {
            (
                format!("{}-dev{}", lab.name, i + 1),
                format!("/ip4/0.0.0.0/tcp/{LAB_PORT}"),
            )
        } else {
            (
                format!("{}-h{}", lab.name, i + 1),
                format!("/ip4/10.9.{}.2/tcp/{LAB_PORT}", i + 1),
            )
        };
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &host])
            .arg(exe)
            .arg("--store")
            .arg(store)
            .args(["node", "--listen", &listen])
            .env("HEARTH_PASSPHRASE", LAB_PASSPHRASE)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        if let Some((_, relay)) = &relay {
            cmd.args(["--via", relay]);
        }
        if let Some(hub) = &hub {
            cmd.args(["--peer", hub]);
        }
        let mut child = cmd.spawn().context("starting a lab node")?;
        let stdin = child.stdin.take();
        let out = child.stdout.take().context("a node's stdout")?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(out)) {
                let Ok(line) = line else { return };
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && tx.send((i, Instant::now(), v)).is_err()
                {
                    return;
                }
            }
        });
        nodes.push(LabNode { child, stdin });
        if hub.is_none() {
            // The hub's address, before the others dial it.
            let deadline = Instant::now() + Duration::from_secs(30);
            while hub.is_none() {
                let left = deadline
                    .checked_duration_since(Instant::now())
                    .context("node 1 never listened")?;
                let (_, _, v) = events.recv_timeout(left).context("node 1 never listened")?;
                // Behind a NAT, only its circuit through the relay reaches it.
                let addr = v["addr"].as_str().filter(|a| !nat || a.contains("/p2p-circuit/"));
                if v["event"] == "listening" {
                    hub = addr.map(str::to_string);
                }
            }
        }
    }
    let n = stores.len();
    let deadline = Instant::now() + timeout;
    let next = |events: &mpsc::Receiver<(usize, Instant, Value)>| -> Option<(usize, Instant, Value)> {
        let left = deadline.checked_duration_since(Instant::now())?;
        events.recv_timeout(left).ok()
    };
    // Every node connected to the hub (behind NATs: each with a hole
    // punched to it, or 15 s gone by).
    let mut connected = HashSet::new();
    // Which node found itself in sync with which peer after a session.
    let mut in_sync: HashSet<(usize, String)> = HashSet::new();
    let mut direct = HashSet::new();
    let mut ids: Vec<Option<String>> = vec![None; n];
    let mut punched_at_hub = HashSet::new();
    let punch_deadline = Instant::now() + Duration::from_secs(15);
    while connected.len() < n - 1 || (nat && direct.len() < n - 1 && Instant::now() < punch_deadline) {
        let Some((i, _, v)) = (if connected.len() < n - 1 {
            Some(next(&events).context("the nodes did not all connect to node 1")?)
        } else {
            let left = punch_deadline.saturating_duration_since(Instant::now());
            events.recv_timeout(left).ok()
        }) else {
            break;
        };
        if v["event"] == "listening" && ids[i].is_none() {
            ids[i] = v["addr"]
                .as_str()
                .and_then(|a| a.rsplit("/p2p/").next())
                .map(str::to_string);
        }
        if i > 0 && v["event"] == "peer_connected" {
            connected.insert(i);
        }
        note_in_sync(&mut in_sync, i, &v);
        if v["event"] == "hole_punch" && v["direct"] == true {
            if i > 0 {
                direct.insert(i);
            } else if let Some(p) = v["peer"].as_str() {
                punched_at_hub.insert(p.to_string());
            }
        }
        for (j, id) in ids.iter().enumerate().skip(1) {
            if id.as_ref().is_some_and(|id| punched_at_hub.contains(id)) {
                direct.insert(j);
            }
        }
    }
    // The connections' first sessions settle before anyone posts: what is
    // measured is a live message, not a connection's setup (which, at 100
    // ms RTT, held the first posts back about half a second). Settled: each
    // node found itself in sync with node 1 after a session, and node 1 with
    // each of them (or 30 s gone by).
    let settle_start = Instant::now();
    let settle_deadline = settle_start + Duration::from_secs(30);
    let settled = |in_sync: &HashSet<(usize, String)>| {
        (1..n).all(|i| in_sync.iter().any(|(j, _)| *j == i)) && in_sync.iter().filter(|(j, _)| *j == 0).count() >= n - 1
    };
    // ... and then no session ended for SETTLE_QUIET (the sessions a
    // connection starts a moment later, the receipts of the first sync).
    let mut last_session = Instant::now();
    while !settled(&in_sync) || last_session.elapsed() < SETTLE_QUIET {
        let quiet_left = SETTLE_QUIET.saturating_sub(last_session.elapsed());
        let left = settle_deadline.saturating_duration_since(Instant::now());
        let wait = if settled(&in_sync) { quiet_left.min(left) } else { left };
        match events.recv_timeout(wait) {
            Ok((i, _, v)) if v["event"] == "synced" => {
                last_session = Instant::now();
                note_in_sync(&mut in_sync, i, &v);
            }
            Ok(_) => {}
            Err(_) if Instant::now() >= settle_deadline => break,
            Err(_) => {}
        }
    }
    let settle_ms = settle_start.elapsed().as_secs_f64() * 1e3;
    let (packets0, bytes0) = lab.forwarded()?;

    // Round by round, each node posts; a post counts from its `done`.
    let mut posted = Posted::new();
    let mut seen = Seen::new();
    let mut first_post = None;
    for round in 0..messages {
        for (i, node) in nodes.iter_mut().enumerate() {
            first_post.get_or_insert_with(Instant::now);
            node.send(&json!({"cmd": "post", "channel": channel, "text": format!("node {} says {round}", i + 1)}))?;
            loop {
                let (j, at, v) = next(&events).context("a node did not answer a post")?;
                let mine = j == i && v["event"] == "done" && v["cmd"] == "post";
                if j == i && v["event"] == "error" {
                    bail!("node {} refused a post: {v}", i + 1);
                }
                note(j, at, &v, &mut posted, &mut seen);
                if mine {
                    break;
                }
            }
        }
    }
    let total = n * messages;
    let complete = |seen: &Seen, posted: &Posted| {
        posted.len() == total && posted.keys().all(|id| seen.get(id).is_some_and(|s| s.len() == n))
    };
    let mut converged = complete(&seen, &posted);
    while !converged {
        let Some((j, at, v)) = next(&events) else { break };
        note(j, at, &v, &mut posted, &mut seen);
        converged = complete(&seen, &posted);
    }
    let (packets1, bytes1) = lab.forwarded()?;
    let start = first_post.unwrap_or_else(Instant::now);
    let last = seen.values().flat_map(|s| s.values()).max().copied().unwrap_or(start);
    let mut delivery: Vec<f64> = posted
        .iter()
        .flat_map(|(id, (author, at))| {
            seen.get(id)
                .into_iter()
                .flatten()
                .filter(move |(j, _)| *j != author)
                .map(move |(_, t)| t.saturating_duration_since(*at).as_secs_f64() * 1e3)
        })
        .collect();
    delivery.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        if delivery.is_empty() {
            f64::NAN
        } else {
            delivery[((delivery.len() - 1) as f64 * p).round() as usize]
        }
    };
    let bytes = bytes1.saturating_sub(bytes0);
    Ok(LabReport {
        nodes: n,
        rtt_ms: 0,
        loss_pct: 0,
        messages: total,
        converged,
        convergence_ms: last.saturating_duration_since(start).as_secs_f64() * 1e3,
        delivery_p50_ms: pct(0.5),
        delivery_p99_ms: pct(0.99),
        bytes,
        packets: packets1.saturating_sub(packets0),
        bytes_per_message: bytes as f64 / total as f64,
        nat,
        direct: if nat { direct.len() } else { n - 1 },
        settle_ms,
    })
}
