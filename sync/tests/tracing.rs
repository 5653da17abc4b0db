//! Tracing (issue 11): a sync session leaves an event with its peer, what
//! it moved (entries and their bytes) and how long it took, and a connection
//! is traced as it opens. No message text is traced.
//!
//! One test in its own binary: it installs the process's global subscriber,
//! since nodes and stores work on threads and tasks of their own.

use std::time::Duration;

#[path = "../../store/tests/support/capture.rs"]
mod capture;
mod support;
use capture::Captured;
use support::{converged, start_node_on, two_members};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_session_is_traced_with_its_peer_entries_bytes_and_time() {
    let out = Captured::install("hearth_sync=debug");

    let (_dirs, a, b, ch) = two_members().await;
    let secret_text = "meet at the usual place";
    for i in 0..5 {
        a.post(ch, &format!("{secret_text} {i}")).await.unwrap();
    }
    let (na, _) = start_node_on(a.clone(), &a.node_secret().await.unwrap(), "/ip4/127.0.0.1/tcp/0").await;
    let (nb, addr_b) = start_node_on(b.clone(), &b.node_secret().await.unwrap(), "/ip4/127.0.0.1/tcp/0").await;
    na.dial(addr_b.clone()).await.unwrap();
    assert!(converged(&[&a, &b], ch, Duration::from_secs(20)).await);
    let peer_b = addr_b.to_string().rsplit("/p2p/").next().unwrap().to_string();

    // A's session with B: it sent A's entries (the posts) and received
    // B's (its join), each with their bytes, and took its time.
    let field = |line: &str, name: &str| -> u64 {
        line.split(' ')
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let mut waited = 0;
    let lines = loop {
        let text = out.text();
        let sessions: Vec<&str> = text.lines().filter(|l| l.contains("sync session")).collect();
        let sent = sessions
            .iter()
            .any(|l| field(l, "sent") > 0 && field(l, "bytes_out") > 0);
        let received = sessions
            .iter()
            .any(|l| field(l, "received") > 0 && field(l, "bytes_in") > 0);
        if sent && received {
            assert!(sessions.iter().all(|l| l.contains("millis=")), "{text}");
            break text;
        }
        assert!(waited < 200, "no session moved entries both ways:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    };
    assert!(lines.contains(&format!("peer={peer_b}")), "{lines}");
    // The channel, by the first 8 bytes of its wire id; the worker's span
    // names the peer too.
    let wire = a.channel_keys(ch).await.unwrap().wire();
    let short: String = wire.0[..8].iter().map(|b| format!("{b:02x}")).collect();
    assert!(lines.contains(&format!("wires={short}")), "{lines}");
    assert!(lines.contains("peer{peer="), "{lines}");
    assert!(lines.contains("connection established"), "{lines}");
    assert!(!lines.contains(secret_text), "a message's text was traced");
    for n in [na, nb] {
        n.stop().await.unwrap();
    }
    a.close().await.unwrap();
    b.close().await.unwrap();
}
