//! The network lab itself (`tools/netlab/netlab.sh`, issue 10): hosts behind
//! NAT routers reach a public relay, nothing reaches them unasked, and the
//! lab's loss and partitions cut what they say. Every address here lives in
//! namespaces the test makes and removes (root only: see `support/netlab.rs`).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[path = "support/netlab.rs"]
mod netlab;
#[path = "support/protocol.rs"]
mod protocol;
use netlab::Lab;

const PASS: &str = "netlab test passphrase";
const WAIT: Duration = Duration::from_secs(60);

/// `hearth --store DIR ARGS...` inside `host`'s namespace.
fn hearth(lab: &Lab, host: &str, dir: &Path, args: &[&str]) -> Command {
    let mut c = lab.command(host, env!("CARGO_BIN_EXE_hearth"));
    c.arg("--store").arg(dir).args(args).env("HEARTH_PASSPHRASE", PASS);
    c.stdin(Stdio::null());
    c
}

fn output(mut cmd: Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn ok(cmd: Command) -> String {
    let what = format!("{cmd:?}");
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A long-running `hearth` child whose JSON lines are read on a thread;
/// killed on drop.
struct Running {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    lines: Receiver<Value>,
    seen: Vec<Value>,
    /// A `hearth node`: every line and command is checked against the
    /// node protocol's schemas.
    protocol: bool,
}

impl Running {
    fn spawn(mut cmd: Command) -> Running {
        let protocol = cmd.get_args().any(|a| a == "node");
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        let out = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if let Ok(v) = serde_json::from_str(&line)
                    && tx.send(v).is_err()
                {
                    return;
                }
            }
        });
        Running {
            child,
            stdin,
            lines,
            seen: Vec::new(),
            protocol,
        }
    }

    /// One JSON command on the node's stdin (spawned with a piped stdin).
    fn send(&mut self, v: &Value) {
        use std::io::Write;
        if self.protocol {
            protocol::check_command(v);
        }
        let stdin = self.stdin.as_mut().expect("a piped stdin");
        writeln!(stdin, "{v}")
            .and_then(|()| stdin.flush())
            .expect("writing to a node");
    }

    /// The first event (seen before or coming) that `pred` accepts.
    fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return v.clone();
        }
        let deadline = Instant::now() + WAIT;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(v) => {
                    if self.protocol {
                        protocol::check_event(&v);
                    }
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("no {what}; seen: {:?}", self.seen);
    }

    /// Every event read so far, and those arriving within `d`.
    fn drain_for(&mut self, d: Duration) -> &[Value] {
        let deadline = Instant::now() + d;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(v) => self.seen.push(v),
                Err(_) => break,
            }
        }
        &self.seen
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Post `text` to "general" through a node's stdin; the new message's id.
fn posted(who: &mut Running, text: &str) -> String {
    who.send(&json!({"cmd": "post", "channel": "general", "text": text}));
    who.wait_for("the post", |e| e["event"] == "done" && e["cmd"] == "post")["id"]
        .as_str()
        .expect("an id")
        .to_string()
}

/// Wait until one of two nodes reports an event `pred` accepts.
fn either_sees(a: &mut Running, b: &mut Running, what: &str, pred: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + WAIT;
    while !a.drain_for(Duration::from_millis(100)).iter().any(&pred)
        && !b.drain_for(Duration::from_millis(100)).iter().any(&pred)
    {
        assert!(
            Instant::now() < deadline,
            "no {what}; one saw {:?}; the other saw {:?}",
            a.seen,
            b.seen
        );
    }
}

/// A post from each of two nodes reaches the other.
fn posts_cross(a: &mut Running, b: &mut Running, text: &str) {
    let from_a = posted(a, text);
    b.wait_for("the first node's post", |e| holds(e, &from_a));
    let from_b = posted(b, &format!("{text}, back"));
    a.wait_for("the second node's post", |e| holds(e, &from_b));
}

/// Whether a node event brought message `id`.
fn holds(e: &Value, id: &str) -> bool {
    (e["event"] == "message" || e["event"] == "reply") && e["id"] == id
}

fn listening(r: &mut Running) -> String {
    let v = r.wait_for("listening address", |e| e["event"] == "listening");
    v["addr"].as_str().expect("addr").to_string()
}

/// Whether `hearth sync` from `host` completes against `target` within a few
/// seconds (`--relay` or `--peer`).
fn syncs(lab: &Lab, host: &str, dir: &Path, how: &str, target: &str) -> bool {
    output(hearth(lab, host, dir, &["sync", how, target, "--timeout", "5"]))
        .status
        .success()
}

/// Two devices behind two NAT routers and a relay on the public side: each
/// device reaches the relay, which sees it at its router's public address;
/// neither device reaches the other, by its private address or by its
/// router's; total loss on the lab's router and a partition each cut a
/// device from the relay, and lifting them lets it through again.
#[test]
fn the_nat_lab_lets_devices_out_and_nothing_in() {
    let Some(lab) = Lab::up("the_nat_lab_lets_devices_out_and_nothing_in", &["nat"]) else {
        return;
    };
    assert_eq!(
        ["relay", "dev1", "dev2"].map(|h| lab.addr(h)),
        ["100.64.1.2", "10.1.0.2", "10.2.0.2"]
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let [r, a, b, c] = ["relay", "a", "b", "c"].map(|d| tmp.path().join(d));

    let mut relay = Running::spawn(hearth(
        &lab,
        "relay",
        &r,
        &["relay", "--listen", "/ip4/100.64.1.2/tcp/4003"],
    ));
    let relay_addr = listening(&mut relay);
    assert!(relay_addr.starts_with("/ip4/100.64.1.2/tcp/4003/p2p/"), "{relay_addr}");

    // Alice on dev1, Bob's node and Carol (who syncs while Bob's node runs) on dev2.
    for (dir, host, name) in [(&a, "dev1", "alice"), (&b, "dev2", "bob"), (&c, "dev2", "carol")] {
        ok(hearth(&lab, host, dir, &["init", "--user", name]));
        ok(hearth(&lab, host, dir, &["channel", "create", name]));
        ok(hearth(&lab, host, dir, &["post", name, "hello from behind a NAT"]));
    }
    let mut bob = Running::spawn(hearth(&lab, "dev2", &b, &["node", "--listen", "/ip4/0.0.0.0/tcp/4001"]));
    let bob_addr = listening(&mut bob);
    let bob_peer = bob_addr.split("/p2p/").nth(1).expect("a peer id").to_string();

    assert!(
        syncs(&lab, "dev1", &a, "--relay", &relay_addr),
        "dev1 cannot reach the relay"
    );
    let seen = relay.wait_for("dev1's connection", |e| e["event"] == "peer_connected");
    let from = seen["addr"].as_str().unwrap_or_default();
    assert!(
        from.starts_with("/ip4/100.64.2.2/tcp/"),
        "the relay saw dev1 at {from}, not at its NAT's address"
    );

    for addr in ["10.2.0.2", "100.64.3.2"] {
        let target = format!("/ip4/{addr}/tcp/4001/p2p/{bob_peer}");
        assert!(
            !syncs(&lab, "dev1", &a, "--peer", &target),
            "dev1 reached dev2 at {target}"
        );
    }
    assert!(
        !bob.drain_for(Duration::from_millis(200))
            .iter()
            .any(|e| e["event"] == "peer_connected"),
        "something reached dev2 from outside"
    );

    lab.loss(100);
    assert!(
        !syncs(&lab, "dev1", &a, "--relay", &relay_addr),
        "synced through total loss"
    );
    lab.loss(0);
    assert!(
        syncs(&lab, "dev1", &a, "--relay", &relay_addr),
        "no sync after the loss ended"
    );
    lab.partition("dev1", "relay");
    assert!(
        !syncs(&lab, "dev1", &a, "--relay", &relay_addr),
        "synced across a partition"
    );
    assert!(
        syncs(&lab, "dev2", &c, "--relay", &relay_addr),
        "the partition cut dev2 too"
    );
    lab.heal();
    assert!(
        syncs(&lab, "dev1", &a, "--relay", &relay_addr),
        "no sync after the partition healed"
    );
}

/// One TCP connection from `from` to `to`'s listener on port 7000: the time
/// its handshake and a one-byte echo took, or `None` if it did not connect
/// within two seconds.
fn round_trips(lab: &Lab, from: &str, to: &str) -> Option<(Duration, Duration)> {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    let target: SocketAddr = format!("{}:7000", lab.addr(to)).parse().expect("an address");
    let listener = lab.in_host(to, || TcpListener::bind("0.0.0.0:7000").expect("bind in the lab"));
    let echo = std::thread::spawn(move || {
        if let Ok((mut c, _)) = listener.accept() {
            let mut b = [0u8; 1];
            if c.read_exact(&mut b).is_ok() {
                let _ = c.write_all(&b);
            }
        }
    });
    let measured = lab.in_host(from, || {
        let t = Instant::now();
        let mut c = TcpStream::connect_timeout(&target, Duration::from_secs(2)).ok()?;
        let handshake = t.elapsed();
        c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let t = Instant::now();
        c.write_all(b"x").ok()?;
        let mut b = [0u8; 1];
        c.read_exact(&mut b).ok()?;
        Some((handshake, t.elapsed()))
    });
    if measured.is_none() {
        // Unblock the listener's accept: from inside its own host.
        let _ = lab.in_host(to, || TcpStream::connect("127.0.0.1:7000"));
    }
    echo.join().expect("the echo thread");
    measured
}

/// The star lab's delay (a TUN forwarder on its router, `hearth
/// lab-forward`): 50 ms each way makes every round trip at least 100 ms, and
/// ending it brings them back under that; loss and partitions still cut
/// what crosses the delayed router.
#[test]
fn the_star_lab_delays_drops_and_partitions() {
    let Some(lab) = Lab::up("the_star_lab_delays_drops_and_partitions", &["star", "3"]) else {
        return;
    };
    let (hs, echo) = round_trips(&lab, "h1", "h2").expect("h1 reaches h2");
    assert!(
        hs < Duration::from_millis(100) && echo < Duration::from_millis(100),
        "{hs:?} {echo:?}"
    );

    lab.delay(50);
    let (hs, echo) = round_trips(&lab, "h1", "h2").expect("h1 reaches h2 through the delay");
    let rtt = Duration::from_millis(100);
    assert!(hs >= rtt && echo >= rtt, "{hs:?} {echo:?}: not delayed");
    assert!(
        hs < Duration::from_secs(2) && echo < Duration::from_secs(2),
        "{hs:?} {echo:?}"
    );

    lab.partition("h1", "h2");
    assert_eq!(round_trips(&lab, "h1", "h2"), None, "crossed a partition");
    assert!(round_trips(&lab, "h1", "h3").is_some(), "the partition cut h3 too");
    lab.heal();
    lab.loss(100);
    assert_eq!(round_trips(&lab, "h3", "h2"), None, "crossed total loss");
    lab.loss(0);
    assert!(
        round_trips(&lab, "h1", "h2").is_some(),
        "no way through after the loss ended"
    );

    lab.delay(0);
    let (hs, echo) = round_trips(&lab, "h1", "h2").expect("h1 reaches h2 without the delay");
    assert!(hs < rtt && echo < rtt, "{hs:?} {echo:?}: still delayed");
}

/// `hearth --json lab ARGS...` as a user runs it (root); its report, or
/// `None` when labs cannot run here.
fn lab_report(test: &str, args: &[&str]) -> Option<Value> {
    if !netlab::should_run(test) {
        return None;
    }
    let out = output({
        let mut c = Command::new(env!("CARGO_BIN_EXE_hearth"));
        c.args(["--json", "lab"]).args(args).stdin(Stdio::null());
        c
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "hearth lab {args:?} failed ({}):\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}")))
}

/// The lab scenario of 100 ms RTT with 5% loss: three nodes converge, and no
/// message reaches another node sooner than half the RTT.
#[test]
fn nodes_converge_over_100ms_rtt_with_5pct_loss() {
    let Some(r) = lab_report(
        "nodes_converge_over_100ms_rtt_with_5pct_loss",
        &["--nodes", "3", "--rtt", "100ms", "--loss", "5%", "--messages", "4"],
    ) else {
        return;
    };
    assert_eq!((&r["converged"], &r["messages"]), (&json!(true), &json!(12)), "{r}");
    assert_eq!((&r["rtt_ms"], &r["loss_pct"]), (&json!(100), &json!(5)), "{r}");
    let p50 = r["delivery_p50_ms"].as_f64().expect("p50");
    assert!(p50 >= 50.0, "delivered in {p50} ms through a 100 ms RTT: {r}");
    // The posts started once the connections' first sessions had settled.
    assert!(r["settle_ms"].as_f64().is_some_and(|s| s > 0.0), "{r}");
    assert!(r["bytes"].as_u64() > Some(0) && r["packets"].as_u64() > Some(0), "{r}");
}

/// `hearth lab --nat`: four nodes, each behind a NAT of its own, with a
/// 50 ms RTT; each reaches node 1 through the lab's relay, punches a hole to
/// it, and all converge.
#[test]
fn the_lab_command_runs_nodes_behind_nats() {
    let Some(r) = lab_report(
        "the_lab_command_runs_nodes_behind_nats",
        &["--nodes", "4", "--nat", "--rtt", "50ms", "--messages", "3"],
    ) else {
        return;
    };
    assert_eq!((&r["converged"], &r["messages"]), (&json!(true), &json!(12)), "{r}");
    assert_eq!((&r["nat"], &r["direct"]), (&json!(true), &json!(3)), "{r}");
}

/// The lab scenario of 20 nodes: each posts twice, all 40 messages reach
/// all 20.
#[test]
fn twenty_nodes_converge() {
    let Some(r) = lab_report("twenty_nodes_converge", &["--nodes", "20", "--messages", "2"]) else {
        return;
    };
    assert_eq!(
        (&r["converged"], &r["messages"], &r["nodes"]),
        (&json!(true), &json!(40), &json!(20)),
        "{r}"
    );
}

/// The lab scenario of a partition that heals: Bob joins Alice's channel
/// through the lab; cut apart, each posts and neither receives the other's;
/// healed, both receive both posts, with nothing restarted.
#[test]
fn a_partition_heals_and_both_sides_converge() {
    let Some(lab) = Lab::up("a_partition_heals_and_both_sides_converge", &["star", "2"]) else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let [a, b] = ["a", "b"].map(|d| tmp.path().join(d));
    ok(hearth(&lab, "h1", &a, &["init", "--user", "alice"]));
    ok(hearth(&lab, "h1", &a, &["channel", "create", "general"]));
    ok(hearth(&lab, "h2", &b, &["init", "--user", "bob"]));
    let node = |host: &str, dir: &Path, extra: &[&str]| {
        let listen = format!("/ip4/{}/tcp/4000", lab.addr(host));
        let mut args = vec!["node", "--listen", listen.as_str()];
        args.extend_from_slice(extra);
        let mut c = hearth(&lab, host, dir, &args);
        c.stdin(Stdio::piped());
        Running::spawn(c)
    };
    let mut alice = node("h1", &a, &[]);
    let alice_addr = listening(&mut alice);
    alice.send(&json!({"cmd": "invite", "channel": "general"}));
    let ticket = alice.wait_for("a ticket", |e| e["event"] == "done" && e["cmd"] == "invite")["ticket"]
        .as_str()
        .expect("a ticket")
        .to_string();
    ok(hearth(&lab, "h2", &b, &["join", &ticket, "--timeout", "60"]));
    let mut bob = node("h2", &b, &["--peer", &alice_addr]);
    bob.wait_for("bob's connection", |e| e["event"] == "peer_connected");

    lab.partition("h1", "h2");
    let from_alice = posted(&mut alice, "alice, cut off");
    let from_bob = posted(&mut bob, "bob, cut off");
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !bob.drain_for(Duration::ZERO).iter().any(|e| holds(e, &from_alice)),
        "crossed the partition"
    );
    assert!(
        !alice.drain_for(Duration::ZERO).iter().any(|e| holds(e, &from_bob)),
        "crossed the partition"
    );

    lab.heal();
    bob.wait_for("alice's post after the heal", |e| holds(e, &from_alice));
    alice.wait_for("bob's post after the heal", |e| holds(e, &from_bob));
}

/// The lab scenario of reach (issue 10, item 1): Alice on dev1 and Bob on
/// dev2, each behind a NAT that lets nothing in unasked, and a public Hearth
/// relay that serves circuits. Alice listens through the relay; Bob joins by
/// her invite, whose address is her circuit, and his node dials her there;
/// DCUtR punches through both NATs, and with the relay killed their posts
/// still cross, so the connection they use is direct.
#[test]
fn devices_behind_two_nats_hole_punch_through_a_relay_and_sync() {
    let test = "devices_behind_two_nats_hole_punch_through_a_relay_and_sync";
    let Some(lab) = Lab::up(test, &["nat"]) else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let [r, a, b] = ["relay", "a", "b"].map(|d| tmp.path().join(d));
    let mut relay = Running::spawn(hearth(
        &lab,
        "relay",
        &r,
        &["relay", "--listen", "/ip4/100.64.1.2/tcp/4003"],
    ));
    let relay_addr = listening(&mut relay);

    ok(hearth(&lab, "dev1", &a, &["init", "--user", "alice"]));
    ok(hearth(&lab, "dev1", &a, &["channel", "create", "general"]));
    ok(hearth(&lab, "dev2", &b, &["init", "--user", "bob"]));
    let node = |host: &str, dir: &Path, extra: &[&str]| {
        let mut args = vec![
            "node",
            "--listen",
            "/ip4/0.0.0.0/tcp/4001",
            "--via",
            relay_addr.as_str(),
        ];
        args.extend_from_slice(extra);
        let mut c = hearth(&lab, host, dir, &args);
        c.stdin(Stdio::piped());
        Running::spawn(c)
    };
    let circuit_of = |who: &mut Running| -> String {
        who.wait_for("a reservation", |e| e["event"] == "reserved");
        who.wait_for("a circuit address", |e| {
            e["event"] == "listening" && e["addr"].as_str().is_some_and(|a| a.contains("/p2p-circuit/"))
        })["addr"]
            .as_str()
            .expect("addr")
            .to_string()
    };
    let mut alice = node("dev1", &a, &[]);
    let alice_circuit = circuit_of(&mut alice);
    assert!(alice_circuit.starts_with(&relay_addr), "{alice_circuit}");
    alice.send(&json!({"cmd": "invite", "channel": "general"}));
    let ticket = alice.wait_for("a ticket", |e| e["event"] == "done" && e["cmd"] == "invite")["ticket"]
        .as_str()
        .expect("a ticket")
        .to_string();
    ok(hearth(&lab, "dev2", &b, &["join", &ticket, "--timeout", "60"]));

    let mut bob = node("dev2", &b, &["--peer", &alice_circuit]);
    let punched = |e: &Value| e["event"] == "hole_punch" && e["direct"] == true;
    bob.wait_for("bob's relayed connection", |e| {
        e["event"] == "peer_connected" && e["addr"].as_str().is_some_and(|a| a.contains("/p2p-circuit/"))
    });
    either_sees(&mut alice, &mut bob, "a hole punch", punched);
    drop(relay);
    posts_cross(&mut alice, &mut bob, "straight through two NATs");
}

/// Discovery behind NATs (issue 10, item 2): Bob joins Alice's channel by
/// her invite, whose address is her circuit through relay 1. Then relay 1
/// is gone for good, and Alice listens through relay 2: every address Bob
/// holds for her is dead. Both bootstrap Hearth's DHT from relay 2; each
/// finds the other under their channel's discovery key, reaches it at its
/// new circuit address, and their posts cross.
#[test]
fn devices_behind_nats_find_each_other_again_through_the_dht() {
    let test = "devices_behind_nats_find_each_other_again_through_the_dht";
    let Some(lab) = Lab::up(test, &["nat"]) else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let [r1, r2, a, b] = ["relay1", "relay2", "a", "b"].map(|d| tmp.path().join(d));
    let relay = |dir: &Path, port: u16| {
        let listen = format!("/ip4/100.64.1.2/tcp/{port}");
        let mut r = Running::spawn(hearth(&lab, "relay", dir, &["relay", "--listen", &listen]));
        let addr = listening(&mut r);
        (r, addr)
    };
    let (relay1, relay1_addr) = relay(&r1, 4003);
    ok(hearth(&lab, "dev1", &a, &["init", "--user", "alice"]));
    ok(hearth(&lab, "dev1", &a, &["channel", "create", "general"]));
    ok(hearth(&lab, "dev2", &b, &["init", "--user", "bob"]));
    let node = |host: &str, dir: &Path, relay: &str, port: u16| {
        let listen = format!("/ip4/0.0.0.0/tcp/{port}");
        let args = ["node", "--listen", &listen, "--via", relay, "--bootstrap", relay];
        let mut c = hearth(&lab, host, dir, &args);
        c.stdin(Stdio::piped());
        Running::spawn(c)
    };
    let mut alice = node("dev1", &a, &relay1_addr, 4001);
    alice.wait_for("a circuit address", |e| {
        e["event"] == "listening" && e["addr"].as_str().is_some_and(|a| a.contains("/p2p-circuit/"))
    });
    alice.send(&json!({"cmd": "invite", "channel": "general"}));
    let ticket = alice.wait_for("a ticket", |e| e["event"] == "done" && e["cmd"] == "invite")["ticket"]
        .as_str()
        .expect("a ticket")
        .to_string();
    ok(hearth(&lab, "dev2", &b, &["join", &ticket, "--timeout", "60"]));
    drop(alice);
    drop(relay1);

    let (_relay2, relay2_addr) = relay(&r2, 4004);
    let mut alice = node("dev1", &a, &relay2_addr, 4002);
    let mut bob = node("dev2", &b, &relay2_addr, 4001);
    either_sees(&mut alice, &mut bob, "each other", |e| e["event"] == "discovered");
    posts_cross(&mut alice, &mut bob, "found again through the DHT");
}
