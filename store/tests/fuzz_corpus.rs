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

/// A record of exactly `want` bytes: a post whose text is as long as that
/// takes.
fn record_of_len(key: &SecretKey, seq: u64, want: usize) -> Vec<u8> {
    (0..want)
        .map(|n| {
            let post = JournalEntry::Op {
                channel: ChannelId([1; 32]),
                op: Op::Post {
                    id: MessageId([seq as u8; 24]),
                    text: "t".repeat(n),
                    reply_to: None,
                },
            };
            encode_journal_record(key, 7, seq, &[post]).unwrap()
        })
        .find(|r| r.len() == want)
        .expect("a record of that length")
}

#[test]
#[ignore = "writes seeds of the corpus"]
fn regenerate_journal_read_seeds() {
    // Records that end exactly where an open's first read of the journal
    // ends (4 KiB), then more; and a record whose first byte is the last
    // one of that read, and 0 (its length is 256): an open once took the
    // first for the end of the records, and the reader must not take the
    // second for zeros.
    let key = SecretKey::from_bytes(journal::KEY);
    let seeds = [
        ("records-up-to-the-first-read", 4096),
        ("zero-byte-at-the-first-read", 4095),
    ];
    for (name, at) in seeds {
        let mut bytes = Vec::new();
        let mut seq = 0;
        while at - bytes.len() > 400 {
            seq += 1;
            bytes.extend(record_of_len(&key, seq, 160));
        }
        seq += 1;
        bytes.extend(record_of_len(&key, seq, at - bytes.len()));
        if at % 4096 != 0 {
            seq += 1;
            bytes.extend(record_of_len(&key, seq, 260));
            assert_eq!(bytes[at], 0, "the length's low byte");
        }
        for _ in 0..3 {
            seq += 1;
            bytes.extend(record_of_len(&key, seq, 160));
        }
        assert_eq!(journal_records(&key, &bytes), seq as usize);
        std::fs::write(corpus().join(name), bytes).unwrap();
    }
}

/// How many records a whole decode finds.
fn journal_records(key: &SecretKey, bytes: &[u8]) -> usize {
    hearth_store::decode_journal(key, bytes).records.len()
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

#[path = "../../fuzz/src/backup.rs"]
mod backup;

fn backup_corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/backup")
}

#[test]
fn backup_corpus_replays_cleanly() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(backup_corpus())
        .expect("fuzz/corpus/backup exists")
        .map(|e| e.expect("an entry").path())
        .collect();
    files.sort();
    assert!(files.len() >= 4, "fuzz/corpus/backup has too few inputs");
    let mut whole = 0;
    for f in files {
        let data = std::fs::read(&f).expect("readable");
        if std::panic::catch_unwind(|| backup::check_backup_file(&data)).is_err() {
            panic!("{} fails the backup check", f.display());
        }
        let (key, file) = data.split_first_chunk::<32>().expect("a key");
        whole += usize::from(hearth_store::check_backup_bytes(&SecretKey::from_bytes(*key), file).is_ok());
    }
    assert!(
        whole >= 1,
        "no seed is a whole backup: the corpus would not reach past the seal"
    );
}

#[test]
#[ignore = "writes the seed corpus"]
fn regenerate_backup_seeds() {
    use hearth_core::{KdfParams, Passphrase, StoreHeader};
    use hearth_store::{Config, Store};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let pass = Passphrase::new("fuzz");
    let file = tmp.path().join("backup");
    rt.block_on(async {
        let config = Config::default().with_kdf(KdfParams::INSECURE_FAST);
        let s = Store::create(tmp.path().join("s"), &pass, "fuzz", config)
            .await
            .unwrap();
        let c = s.create_channel("c").await.unwrap();
        let m = s.post(c, "hello").await.unwrap();
        s.react(m, "👍").await.unwrap();
        let gone = s.post(c, "gone").await.unwrap();
        s.delete(gone).await.unwrap();
        s.backup(&file).await.unwrap();
        s.close().await.unwrap();
    });
    let bytes = std::fs::read(&file).unwrap();
    let header_len = u32::from_le_bytes(bytes[25..29].try_into().unwrap()) as usize;
    let master = StoreHeader::decode(&bytes[29..29 + header_len])
        .unwrap()
        .unwrap(&pass)
        .unwrap();
    let with_key = |file: &[u8]| [master.expose().as_slice(), file].concat();
    assert!(hearth_store::check_backup_bytes(&master, &bytes).is_ok());
    let mut flipped = bytes.clone();
    let n = flipped.len();
    flipped[n - 30] ^= 0x08;
    let seeds: [(&str, Vec<u8>); 5] = [
        ("valid-small-store", with_key(&bytes)),
        ("cut-short", with_key(&bytes[..bytes.len() - 100])),
        ("bit-flipped", with_key(&flipped)),
        ("head-only", with_key(&bytes[..29 + header_len])),
        ("wrong-key", [[7u8; 32].as_slice(), &bytes].concat()),
    ];
    std::fs::create_dir_all(backup_corpus()).unwrap();
    for (name, bytes) in seeds {
        std::fs::write(backup_corpus().join(name), bytes).unwrap();
    }
}

#[path = "../../fuzz/src/early.rs"]
mod early;

fn early_corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/early_files")
}

#[test]
fn early_files_corpus_replays_cleanly() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(early_corpus())
        .expect("fuzz/corpus/early_files exists")
        .map(|e| e.expect("an entry").path())
        .collect();
    files.sort();
    assert!(files.len() >= 4, "fuzz/corpus/early_files has too few inputs");
    for f in files {
        let data = std::fs::read(&f).expect("readable");
        if std::panic::catch_unwind(|| early::check_early(&data)).is_err() {
            panic!("{} fails the early files check", f.display());
        }
    }
}

#[test]
#[ignore = "writes the seed corpus"]
fn regenerate_early_files_seeds() {
    use hearth_core::{DeviceId, WireId};
    use hearth_store::{EarlyFlag, encode_early_flag, encode_early_slot};
    let flag = EarlyFlag {
        run: [3; 16],
        device: DeviceId([4; 16]),
    };
    let mut mark = encode_early_slot(&early::RUN, &WireId([1; 32]), 5).to_vec();
    mark.extend_from_slice(&encode_early_slot(&early::RUN, &WireId([2; 32]), 1 << 40));
    let mut flipped = mark.clone();
    flipped[33] ^= 4;
    let mut cut = mark.clone();
    cut.truncate(mark.len() - 9);
    let mut flag_v2 = encode_early_flag(&flag);
    flag_v2[0] = 2;
    let seeds: [(&str, Vec<u8>); 6] = [
        ("flag", encode_early_flag(&flag)),
        ("flag-unknown-version", flag_v2),
        ("mark-two-slots", mark),
        ("mark-bit-flipped", flipped),
        ("mark-cut", cut),
        (
            "mark-other-run",
            encode_early_slot(&[9; 16], &WireId([1; 32]), 5).to_vec(),
        ),
    ];
    std::fs::create_dir_all(early_corpus()).unwrap();
    for (name, bytes) in seeds {
        std::fs::write(early_corpus().join(name), bytes).unwrap();
    }
}
