//! Replays `fuzz/corpus/journal/` on stable through the same check the `journal`
//! fuzz target runs (`fuzz/src/journal.rs`). The seeds are written by the ignored
//! test below: `cargo test -p hearth-store --test fuzz_corpus -- --ignored`.

#[path = "../../fuzz/src/journal.rs"]
mod journal;

use std::path::{Path, PathBuf};

use hearth_core::{ChannelId, MessageId, Op, SecretKey};
use hearth_store::{JournalEntry, encode_journal_record};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/journal")
}

#[test]
fn journal_corpus_replays_cleanly() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus())
        .expect("fuzz/corpus/journal exists")
        .map(|e| e.expect("an entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "fuzz/corpus/journal has no inputs");
    for f in files {
        let data = std::fs::read(&f).expect("readable");
        if std::panic::catch_unwind(|| journal::check_journal(&data)).is_err() {
            panic!("{} fails the journal check", f.display());
        }
    }
}

#[test]
#[ignore = "writes the seed corpus"]
fn regenerate_journal_seeds() {
    let key = SecretKey::from_bytes(journal::KEY);
    let entry = |i: u8| JournalEntry::Op {
        channel: ChannelId([i; 32]),
        op: Op::ReadUpTo {
            msg: MessageId([i; 24]),
        },
    };
    let post = JournalEntry::Op {
        channel: ChannelId([1; 32]),
        op: Op::Post {
            id: MessageId([2; 24]),
            text: "hello".into(),
            reply_to: None,
        },
    };
    let mut two = encode_journal_record(&key, 7, 1, &[entry(1), post.clone()]).unwrap();
    two.extend(encode_journal_record(&key, 7, 2, &[entry(2)]).unwrap());
    let mut stale = two.clone();
    stale.extend(encode_journal_record(&key, 3, 9, &[entry(3)]).unwrap());
    let mut zeros = two.clone();
    zeros.extend([0u8; 64]);
    let mut torn = two.clone();
    torn.truncate(two.len() - 5);
    let mut flipped = two.clone();
    flipped[40] ^= 0x20;
    let channel = JournalEntry::Channel {
        id: ChannelId([5; 32]),
        key: [6; 32],
    };
    let seeds: [(&str, Vec<u8>); 6] = [
        ("valid-two-records", two),
        ("valid-then-stale-run", stale),
        ("valid-then-zeros", zeros),
        ("torn-tail", torn),
        ("bit-flipped", flipped),
        (
            "valid-channel-entry",
            encode_journal_record(&key, 1, 1, &[channel]).unwrap(),
        ),
    ];
    std::fs::create_dir_all(corpus()).unwrap();
    for (name, bytes) in seeds {
        std::fs::write(corpus().join(name), bytes).unwrap();
    }
}

#[path = "../../fuzz/src/log.rs"]
mod log;

fn log_corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/log_segment")
}

#[test]
fn log_segment_corpus_replays_cleanly() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(log_corpus())
        .expect("fuzz/corpus/log_segment exists")
        .map(|e| e.expect("an entry").path())
        .collect();
    files.sort();
    assert!(files.len() >= 4, "fuzz/corpus/log_segment has too few inputs");
    for f in files {
        let data = std::fs::read(&f).expect("readable");
        if std::panic::catch_unwind(|| log::check_log_segment(&data)).is_err() {
            panic!("{} fails the log segment check", f.display());
        }
    }
}

#[test]
#[ignore = "writes the seed corpus"]
fn regenerate_log_segment_seeds() {
    use hearth_store::{encode_log_record, log_kind, log_segment_head};
    let mut valid = log_segment_head(1).to_vec();
    encode_log_record(&mut valid, log_kind::IDENTITY, &[1; 40]);
    encode_log_record(&mut valid, log_kind::CHANNEL, &[2; 60]);
    encode_log_record(&mut valid, log_kind::COMMIT, &[4; 30]);
    encode_log_record(&mut valid, log_kind::ENTRY, &[3; 300]);
    encode_log_record(&mut valid, log_kind::COMMIT, &[4; 30]);
    let mut torn = valid.clone();
    torn.truncate(valid.len() - 7);
    let mut flipped = valid.clone();
    flipped[70] ^= 0x10;
    let mut unfinished = valid.clone();
    encode_log_record(&mut unfinished, log_kind::ENTRY, &[3; 50]);
    let mut bad_kind = log_segment_head(1).to_vec();
    encode_log_record(&mut bad_kind, 9, &[0; 8]);
    let seeds: [(&str, Vec<u8>); 6] = [
        ("valid-two-batches", valid),
        ("torn-tail", torn),
        ("bit-flipped", flipped),
        ("unfinished-batch", unfinished),
        ("unknown-kind", bad_kind),
        ("head-only", log_segment_head(1).to_vec()),
    ];
    std::fs::create_dir_all(log_corpus()).unwrap();
    for (name, bytes) in seeds {
        std::fs::write(log_corpus().join(name), bytes).unwrap();
    }
}
