//! The network lab itself (`tools/netlab/netlab.sh`, issue 10): hosts behind
//! NAT routers reach a public relay, nothing reaches them unasked, and the
//! lab's loss and partitions cut what they say. Every address here lives in
//! namespaces the test makes and removes (root only: see `support/netlab.rs`).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "support/netlab.rs"]
mod netlab;
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
    lines: Receiver<Value>,
    seen: Vec<Value>,
}

impl Running {
    fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        let out = child.stdout.take().expect("piped stdout");
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
            lines,
            seen: Vec::new(),
        }
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
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
