//! `hearth bench --json` and `hearth bench sync --json` keep their fields, so
//! that runs of different builds can be compared (issue 10): each is run at a
//! tiny size, and every figure the README's tables are read from must be
//! there, a number, and agree with the figures it is computed from.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn bench(args: &[&str], dir: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .arg("--dir")
        .arg(dir)
        .env_remove("HEARTH_PASSPHRASE")
        .output()
        .expect("run hearth bench");
    assert!(
        out.status.success(),
        "hearth bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// The number at `path` (dot-separated) in `v`.
fn number(v: &Value, path: &str) -> f64 {
    let mut at = v;
    for key in path.split('.') {
        at = at.get(key).unwrap_or_else(|| panic!("no `{path}` in {v}"));
    }
    at.as_f64().unwrap_or_else(|| panic!("`{path}` is not a number: {at}"))
}

fn positive(v: &Value, path: &str) -> f64 {
    let n = number(v, path);
    assert!(n > 0.0 && n.is_finite(), "`{path}` is {n}");
    n
}

#[test]
fn the_storage_bench_reports_every_figure_of_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(&["--messages", "16", "--big", "200"], dir.path());
    let r: Value = serde_json::from_str(out.trim()).expect("one JSON object");
    for writers in ["writes_1", "writes_8"] {
        let h = positive(&r, &format!("{writers}.hearth.msgs_per_sec"));
        let s = positive(&r, &format!("{writers}.sqlite.msgs_per_sec"));
        let ratio = positive(&r, &format!("{writers}.ratio"));
        assert!(
            (ratio - h / s).abs() < 1e-9 * ratio,
            "{writers}: {ratio} is not {h} / {s}"
        );
        for side in ["hearth", "sqlite"] {
            let p50 = positive(&r, &format!("{writers}.{side}.p50_us"));
            let p99 = positive(&r, &format!("{writers}.{side}.p99_us"));
            assert!(p50 <= p99, "{writers} {side}: p50 {p50} over p99 {p99}");
        }
    }
    // Each round's rates, and the floors taken in the same rounds: the
    // reported one-writer figures are the median rounds'.
    let rounds = &r["writes_1_rounds"];
    for side in ["hearth", "sqlite", "fdatasync_floor"] {
        let each: Vec<f64> = rounds[side]
            .as_array()
            .unwrap_or_else(|| panic!("no rounds of {side}"))
            .iter()
            .map(|x| x.as_f64().expect("a rate"))
            .collect();
        assert_eq!(each.len(), 3, "{side}: {each:?}");
        assert!(each.iter().all(|x| *x > 0.0), "{side}: {each:?}");
        let reported = match side {
            "fdatasync_floor" => number(&r, "fdatasync_floor.ops_per_sec"),
            _ => number(&r, &format!("writes_1.{side}.msgs_per_sec")),
        };
        let mut sorted = each.clone();
        sorted.sort_by(f64::total_cmp);
        assert_eq!(reported, sorted[1], "{side}: the median round of {each:?}");
    }
    // The direct floor where the file system takes direct I/O (here, unless
    // the temporary directory is on a tmpfs): null or a whole figure.
    if !r["direct_dsync_floor"].is_null() {
        positive(&r, "direct_dsync_floor.ops_per_sec");
        positive(&r, "direct_dsync_floor.p50_us");
    }
    positive(&r, "fdatasync_floor.p50_us");
    positive(&r, "stream_msgs_per_sec");
    assert_eq!(number(&r, "big.messages"), 200.0);
    for figure in [
        "big.hearth_build_secs",
        "big.hearth_bulk_msgs_per_sec",
        "big.sqlite_build_secs",
        "big.hearth_cold.unlock_ms",
        "big.hearth_cold.open_page_wall_ms",
        "big.hearth_cold.sled_open_ms",
        "big.hearth_cold.warm_page_p50_us",
        "big.hearth_cold.rss_mb",
        "big.sqlite_cold_fresh.open_page_ms",
        "big.sqlite_cold_open_newest_ms",
        "big.hearth_disk_bytes",
        "big.sqlite_disk_bytes",
    ] {
        positive(&r, figure);
    }
}

#[test]
fn the_sync_bench_reports_every_metric_of_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(
        &[
            "sync",
            "--messages",
            "200",
            "--channels",
            "4",
            "--per-channel",
            "4",
            "--samples",
            "20",
        ],
        dir.path(),
    );
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect();
    let metric = |name: &str| -> &Value {
        lines
            .iter()
            .find(|l| l["metric"] == name)
            .unwrap_or_else(|| panic!("no `{name}` metric in {out}"))
    };
    assert_eq!(metric("setup")["mdns"], false, "mDNS stays off in benchmarks");
    let c = metric("catch_up");
    assert_eq!(number(c, "messages"), 200.0);
    let (h, a) = (positive(c, "hearth.secs"), positive(c, "automerge.secs"));
    let speedup = positive(c, "speedup");
    assert!((speedup - a / h).abs() < 1e-6 * speedup, "{speedup} is not {a} / {h}");
    let w = metric("wire_bytes");
    let (h, a) = (positive(w, "hearth.per_message"), positive(w, "automerge.per_message"));
    assert!((number(w, "hearth_over_automerge") - h / a).abs() < 1e-6, "{w}");
    positive(metric("remote_apply"), "hearth.ingest_msgs_per_sec");
    for name in ["live_apply", "live_delivery"] {
        let m = metric(name);
        for side in ["hearth", "automerge"] {
            let p50 = positive(m, &format!("{side}.p50_us"));
            let p99 = positive(m, &format!("{side}.p99_us"));
            assert!(p50 <= p99, "{name} {side}: p50 {p50} over p99 {p99}");
        }
    }
    // The live message's wire bytes (the table's "wire bytes per live message").
    let live = metric("live_delivery");
    positive(live, "hearth.bytes_per_message");
    positive(live, "automerge.bytes_per_message");
    let r = metric("reconnect_in_sync");
    assert_eq!(number(r, "channels"), 4.0);
}
