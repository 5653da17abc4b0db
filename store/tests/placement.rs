//! The store thread's placement (`Config::place_store_thread`, issue 10):
//! while writers post, the store thread leaves each CPU in turn out of its
//! own affinity mask to time their fsyncs, then keeps its whole mask or all
//! of it but one CPU; turned off, it never changes its mask. The callers'
//! threads are never touched. (Which CPU it keeps out of is measured, and
//! what that is worth is a figure of `hearth bench`, not asserted here.)
//!
//! One test in its own binary: it finds the store thread by name among the
//! process's threads, so no other store may be open meanwhile.

use std::collections::BTreeSet;

use hearth_core::{KdfParams, Passphrase};
use hearth_store::{Config, Store};

/// CPUs in a `Cpus_allowed_list` such as `0-3,6`.
fn parse_list(list: &str) -> BTreeSet<usize> {
    let mut out = BTreeSet::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        out.extend(a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap());
    }
    out
}

/// The CPUs a thread (`task`) or the whole process (`None`) may run on.
fn allowed(task: Option<&str>) -> BTreeSet<usize> {
    let path = match task {
        Some(t) => format!("/proc/self/task/{t}/status"),
        None => "/proc/self/status".to_string(),
    };
    let status = std::fs::read_to_string(path).unwrap();
    let line = status.lines().find(|l| l.starts_with("Cpus_allowed_list:")).unwrap();
    parse_list(&line["Cpus_allowed_list:".len()..])
}

/// Thread ids of this process's threads named `name`.
fn threads(name: &str) -> BTreeSet<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| {
            let tid = e.ok()?.file_name().into_string().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).ok()?;
            (comm.trim() == name).then_some(tid)
        })
        .collect()
}

/// Open a store and post `posts` messages, one at a time; the store
/// thread's masks seen after each post, and the callers' threads' masks.
async fn masks_while_posting(dir: &std::path::Path, on: bool, posts: usize) -> (Vec<BTreeSet<usize>>, BTreeSet<usize>) {
    let before = threads("hearth-store");
    let config = Config::default()
        .with_kdf(KdfParams::INSECURE_FAST)
        .with_store_thread_placement(on);
    let s = Store::create(dir, &Passphrase::new("pw"), "alice", config)
        .await
        .unwrap();
    let mine: Vec<String> = threads("hearth-store").difference(&before).cloned().collect();
    assert_eq!(mine.len(), 1, "one new store thread");
    let ch = s.create_channel("general").await.unwrap();
    let mut seen = Vec::new();
    let mut callers = BTreeSet::new();
    for i in 0..posts {
        s.post(ch, &format!("message {i}")).await.unwrap();
        seen.push(allowed(Some(&mine[0])));
        callers.extend(allowed(None));
    }
    // Reads: the store thread's loop goes round without writes.
    for _ in 0..20 {
        s.page(ch, None, 10).await.unwrap();
        seen.push(allowed(Some(&mine[0])));
    }
    let newest = s.page(ch, None, 1).await.unwrap();
    assert_eq!(newest[0].text, Some(format!("message {}", posts - 1)));
    s.close().await.unwrap();
    (seen, callers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_thread_measures_where_to_run_and_leaves_the_callers_alone() {
    let all = allowed(None);
    if all.len() < 2 {
        eprintln!("skipped: this process may run on one CPU only; the store thread has nowhere to move");
        return;
    }
    if all.len() > 16 {
        eprintln!("skipped: the store thread does not measure with more than 16 CPUs");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();

    // On (the default): every CPU is left out in turn, twice, while the
    // writer posts; then it keeps all of them, or all but one.
    let (seen, callers) = masks_while_posting(&tmp.path().join("on"), true, 100 * all.len() + 200).await;
    assert_eq!(callers, all, "the callers' threads keep their masks");
    for cpu in &all {
        let without: BTreeSet<usize> = all.iter().copied().filter(|c| c != cpu).collect();
        assert!(seen.contains(&without), "CPU {cpu} was never left out: {seen:?}");
    }
    for m in &seen {
        assert!(
            m.is_subset(&all) && m.len() + 1 >= all.len(),
            "a mask outside the process's: {m:?}"
        );
    }
    let last = seen.last().unwrap();
    let settled = seen.iter().rev().take(100).all(|m| m == last);
    assert!(settled, "the mask settled for the last 100 posts: {seen:?}");

    // On, but a store only read (a channel made, a few posts): its
    // thread is not moved, which would cost it its caches for nothing.
    let (seen, _) = masks_while_posting(&tmp.path().join("read"), true, 4).await;
    assert!(seen.iter().all(|m| *m == all), "{seen:?}");

    // Off: the store thread's mask is never changed.
    let (seen, _) = masks_while_posting(&tmp.path().join("off"), false, 200).await;
    assert!(seen.iter().all(|m| *m == all), "{seen:?}");
}
